//! Generates the gRPC clients and servers of the cluster's services. Messages are plain serde types (see
//! `src/api/{control,dispatch,ca}.rs`) carried by a MessagePack codec (`transport::WireCodec`), so there is one definition of every type.

use tonic_build::manual::{Builder, Method, Service};

struct M {
    name: &'static str,
    route: &'static str,
    input: &'static str,
    output: &'static str,
    client_streaming: bool,
    server_streaming: bool,
}

const fn unary(name: &'static str, route: &'static str, input: &'static str, output: &'static str) -> M {
    M { name, route, input, output, client_streaming: false, server_streaming: false }
}

const fn server_stream(name: &'static str, route: &'static str, input: &'static str, output: &'static str) -> M {
    M { name, route, input, output, client_streaming: false, server_streaming: true }
}

fn service(name: &str, methods: &[M]) -> Service {
    let mut b = Service::builder().name(name).package("shoal");
    for m in methods {
        let mut mb = Method::builder()
            .name(m.name)
            .route_name(m.route)
            .input_type(m.input)
            .output_type(m.output)
            .codec_path("crate::transport::WireCodec");
        if m.client_streaming {
            mb = mb.client_streaming();
        }
        if m.server_streaming {
            mb = mb.server_streaming();
        }
        b = b.method(mb.build());
    }
    b.build()
}

fn main() {
    let control = service(
        "Control",
        &[
            unary(
                "create_service",
                "CreateService",
                "crate::api::control::CreateServiceRequest",
                "crate::api::Service",
            ),
            unary("get_service", "GetService", "crate::api::control::GetRequest", "crate::api::Service"),
            unary(
                "update_service",
                "UpdateService",
                "crate::api::control::UpdateServiceRequest",
                "crate::api::Service",
            ),
            unary("remove_service", "RemoveService", "crate::api::control::GetRequest", "crate::api::control::Empty"),
            unary(
                "list_services",
                "ListServices",
                "crate::api::control::ListServicesRequest",
                "crate::api::control::ListServicesResponse",
            ),
            unary("get_node", "GetNode", "crate::api::control::GetRequest", "crate::api::Node"),
            unary("list_nodes", "ListNodes", "crate::api::control::Empty", "crate::api::control::ListNodesResponse"),
            unary("update_node", "UpdateNode", "crate::api::control::UpdateNodeRequest", "crate::api::Node"),
            unary("remove_node", "RemoveNode", "crate::api::control::RemoveNodeRequest", "crate::api::control::Empty"),
            unary("get_task", "GetTask", "crate::api::control::GetRequest", "crate::api::Task"),
            unary(
                "list_tasks",
                "ListTasks",
                "crate::api::control::ListTasksRequest",
                "crate::api::control::ListTasksResponse",
            ),
            unary("get_cluster", "GetCluster", "crate::api::control::Empty", "crate::api::control::GetClusterResponse"),
            unary(
                "update_cluster",
                "UpdateCluster",
                "crate::api::control::UpdateClusterRequest",
                "crate::api::control::GetClusterResponse",
            ),
            unary(
                "create_network",
                "CreateNetwork",
                "crate::api::control::CreateNetworkRequest",
                "crate::api::Network",
            ),
            unary("get_network", "GetNetwork", "crate::api::control::GetRequest", "crate::api::Network"),
            unary(
                "list_networks",
                "ListNetworks",
                "crate::api::control::ListNetworksRequest",
                "crate::api::control::ListNetworksResponse",
            ),
            unary("remove_network", "RemoveNetwork", "crate::api::control::GetRequest", "crate::api::control::Empty"),
            // Secrets and configs (`secret …`, `config …`).
            unary("create_secret", "CreateSecret", "crate::api::control::CreateSecretRequest", "crate::api::Secret"),
            unary("get_secret", "GetSecret", "crate::api::control::GetRequest", "crate::api::Secret"),
            unary(
                "list_secrets",
                "ListSecrets",
                "crate::api::control::ListSecretsRequest",
                "crate::api::control::ListSecretsResponse",
            ),
            unary("update_secret", "UpdateSecret", "crate::api::control::UpdateSecretRequest", "crate::api::Secret"),
            unary("remove_secret", "RemoveSecret", "crate::api::control::GetRequest", "crate::api::control::Empty"),
            unary(
                "rotate_secret",
                "RotateSecret",
                "crate::api::control::RotateSecretRequest",
                "crate::api::control::RotateSecretResponse",
            ),
            unary("create_config", "CreateConfig", "crate::api::control::CreateConfigRequest", "crate::api::Config"),
            unary("get_config", "GetConfig", "crate::api::control::GetRequest", "crate::api::Config"),
            unary(
                "list_configs",
                "ListConfigs",
                "crate::api::control::ListSecretsRequest",
                "crate::api::control::ListConfigsResponse",
            ),
            unary("update_config", "UpdateConfig", "crate::api::control::UpdateConfigRequest", "crate::api::Config"),
            unary("remove_config", "RemoveConfig", "crate::api::control::GetRequest", "crate::api::control::Empty"),
            server_stream(
                "subscribe_logs",
                "SubscribeLogs",
                "crate::api::logs::SubscribeLogsRequest",
                "crate::api::logs::SubscribeLogsMessage",
            ),
        ],
    );
    let dispatcher = service(
        "Dispatcher",
        &[
            server_stream(
                "session",
                "Session",
                "crate::api::dispatch::SessionRequest",
                "crate::api::dispatch::SessionMessage",
            ),
            unary(
                "heartbeat",
                "Heartbeat",
                "crate::api::dispatch::HeartbeatRequest",
                "crate::api::dispatch::HeartbeatResponse",
            ),
            server_stream(
                "assignments",
                "Assignments",
                "crate::api::dispatch::AssignmentsRequest",
                "crate::api::dispatch::AssignmentsMessage",
            ),
            unary(
                "update_task_status",
                "UpdateTaskStatus",
                "crate::api::dispatch::UpdateTaskStatusRequest",
                "crate::api::control::Empty",
            ),
            server_stream("logs", "Logs", "crate::api::logs::LogsSessionRequest", "crate::api::logs::LogSubscription"),
            unary("publish_logs", "PublishLogs", "crate::api::logs::PublishLogsRequest", "crate::api::control::Empty"),
            // A follower manager forwards its `Control.SubscribeLogs` here, to the leader's broker.
            server_stream(
                "subscribe_logs",
                "SubscribeLogs",
                "crate::api::logs::SubscribeLogsRequest",
                "crate::api::logs::SubscribeLogsMessage",
            ),
        ],
    );
    let node_ca = service(
        "NodeCA",
        &[
            unary(
                "get_root_ca_certificate",
                "GetRootCACertificate",
                "crate::api::control::Empty",
                "crate::api::ca::GetRootCaCertificateResponse",
            ),
            unary(
                "issue_node_certificate",
                "IssueNodeCertificate",
                "crate::api::ca::IssueNodeCertificateRequest",
                "crate::api::ca::IssueNodeCertificateResponse",
            ),
            unary(
                "node_certificate_status",
                "NodeCertificateStatus",
                "crate::api::control::Empty",
                "crate::api::ca::NodeCertificateStatusResponse",
            ),
            unary(
                "renew_node_certificate",
                "RenewNodeCertificate",
                "crate::api::ca::RenewNodeCertificateRequest",
                "crate::api::ca::IssueNodeCertificateResponse",
            ),
            unary("get_data_key", "GetDataKey", "crate::api::control::Empty", "crate::api::ca::DataKeyResponse"),
        ],
    );
    // Manager to manager: openraft's RPCs, forwarded proposals and membership changes.
    let raft = service(
        "Raft",
        &[
            unary(
                "append_entries",
                "AppendEntries",
                "crate::manager::raft::wire::AppendEntriesRequest",
                "crate::manager::raft::wire::AppendEntriesReply",
            ),
            unary("vote", "Vote", "crate::manager::raft::wire::VoteRequest", "crate::manager::raft::wire::VoteReply"),
            unary(
                "install_snapshot",
                "InstallSnapshot",
                "crate::manager::raft::wire::SnapshotChunk",
                "crate::manager::raft::wire::InstallSnapshotReply",
            ),
            unary(
                "propose",
                "Propose",
                "crate::manager::raft::wire::ProposeRequest",
                "crate::manager::raft::wire::ProposeReply",
            ),
            unary(
                "join",
                "Join",
                "crate::manager::raft::wire::JoinRequest",
                "crate::manager::raft::wire::MembershipReply",
            ),
            unary(
                "leave",
                "Leave",
                "crate::manager::raft::wire::LeaveRequest",
                "crate::manager::raft::wire::MembershipReply",
            ),
        ],
    );
    Builder::new().compile(&[control, dispatcher, node_ca, raft]);
    println!("cargo:rerun-if-changed=build.rs");
}
