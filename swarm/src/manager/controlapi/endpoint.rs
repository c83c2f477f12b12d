//! A service's networks and published ports in the control API: the checks that need only the spec, and those
//! that read the store (network names resolved to ids, ports other services publish), made on the view the
//! writing transaction reads.

use super::validate::InvalidSpec;
use crate::api::{EndpointMode, EndpointSpec, PublishMode, ServiceSpec};
use crate::manager::allocator::ports::ingress_port_user;
use crate::manager::store::MemoryStore;
use std::collections::BTreeSet;
use tonic::Status;

/// Docker's refusal of an ingress port on a DNS round-robin service.
pub const DNSRR_WITH_INGRESS: &str = "port published with ingress mode can't be used with dnsrr mode";

/// Checks the ports of `spec` alone: target ports in 1–65535, no published port/protocol twice, no ingress
/// port with `--endpoint-mode dnsrr`.
pub fn check_ports(spec: &EndpointSpec) -> Result<(), InvalidSpec> {
    let mut published = BTreeSet::new();
    for p in &spec.ports {
        if p.target_port == 0 {
            return Err(InvalidSpec("invalid port: the target port must be between 1 and 65535".into()));
        }
        if p.published_port != 0 && !published.insert((p.published_port, p.protocol)) {
            return Err(InvalidSpec(format!(
                "duplicate published ports provided: {}/{} is published twice",
                p.published_port,
                p.protocol.name()
            )));
        }
        if spec.mode == EndpointMode::Dnsrr && p.publish_mode == PublishMode::Ingress {
            return Err(InvalidSpec(DNSRR_WITH_INGRESS.into()));
        }
    }
    Ok(())
}

/// Resolves the networks of `spec` (names, ids or id prefixes) to ids in `target`, refusing unknown networks,
/// the ingress network and a network listed twice; and refuses ingress ports another service than `service_id`
/// publishes already.
pub fn resolve(view: &MemoryStore, spec: &mut ServiceSpec, service_id: &str) -> Result<(), Status> {
    let mut seen = BTreeSet::new();
    for a in &mut spec.task_template.networks {
        let n = super::find_network(view, &a.target).map_err(|e| {
            if e.code() == tonic::Code::NotFound {
                Status::not_found(format!("network {} not found", a.target))
            } else {
                e
            }
        })?;
        if n.spec.ingress {
            return Err(Status::invalid_argument(format!(
                "service cannot be explicitly attached to the ingress network {:?}",
                n.spec.annotations.name
            )));
        }
        if !seen.insert(n.id.clone()) {
            return Err(Status::invalid_argument(format!(
                "network {} is attached more than once",
                n.spec.annotations.name
            )));
        }
        for alias in &a.aliases {
            if !super::validate::is_dns_label(alias) && !alias.split('.').all(super::validate::is_dns_label) {
                return Err(Status::invalid_argument(format!("invalid network alias {alias:?}: not a DNS name")));
            }
        }
        a.target = n.id.clone();
    }
    for p in spec.endpoint_spec.ports.iter().filter(|p| p.publish_mode == PublishMode::Ingress && p.published_port != 0)
    {
        if let Some(other) = ingress_port_user(view, p.published_port, p.protocol, service_id) {
            return Err(Status::invalid_argument(format!(
                "port '{}' is already in use by service '{}' ({}) as an ingress port",
                p.published_port, other.spec.annotations.name, other.id
            )));
        }
    }
    Ok(())
}

/// Refuses to remove a network services use, naming them.
pub fn check_unused(view: &MemoryStore, network: &crate::api::Network) -> Result<(), Status> {
    let users: Vec<&str> = view
        .services()
        .filter(|s| s.spec.task_template.networks.iter().any(|a| a.target == network.id))
        .map(|s| s.spec.annotations.name.as_str())
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "network {} is in use by service {}",
        network.spec.annotations.name,
        users.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::{CreateNetworkRequest, CreateServiceRequest, GetRequest, UpdateServiceRequest};
    use crate::api::{Annotations, NetworkAttachmentConfig, NetworkSpec, PortConfig, Service};
    use crate::manager::controlapi::{network, ControlApi};
    use crate::manager::store::Store;
    use crate::transport::control::control_server::Control;
    use tonic::{Code, Request};

    fn attach(target: &str) -> NetworkAttachmentConfig {
        NetworkAttachmentConfig { target: target.into(), aliases: vec![] }
    }

    fn port(published: u16, target: u16) -> PortConfig {
        PortConfig { target_port: target, published_port: published, ..Default::default() }
    }

    /// The ingress network, network `front`, and service `web` on `front` publishing 8080.
    async fn setup() -> (Store, ControlApi, Service) {
        let store = Store::in_memory();
        store
            .update(|tx| {
                let n = network::allocate(tx.view(), network::ingress_spec(), &Default::default())?;
                tx.create(n);
                Ok::<_, Status>(())
            })
            .await
            .unwrap();
        let api = ControlApi::with_store(store.clone());
        let spec = NetworkSpec {
            annotations: Annotations { name: "front".into(), labels: Default::default() },
            ..Default::default()
        };
        api.create_network(Request::new(CreateNetworkRequest { spec })).await.unwrap();
        let mut spec = crate::testing::service("x", "web", 1).spec;
        spec.task_template.networks = vec![attach("front")];
        spec.endpoint_spec.ports = vec![port(8080, 80)];
        let web = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap().into_inner();
        (store, api, web)
    }

    #[tokio::test]
    async fn network_names_are_stored_as_ids() {
        let (store, _, web) = setup().await;
        let front = store.view(|v| v.network_by_name("front").unwrap().id.clone());
        assert_eq!(web.spec.task_template.networks, vec![attach(&front)]);
    }

    #[tokio::test]
    async fn refused_network_and_port_specs_change_nothing() {
        let (store, api, web) = setup().await;
        let before = store.view(|v| v.objects().collect::<Vec<_>>());
        let with = |f: &dyn Fn(&mut crate::api::ServiceSpec)| {
            let mut spec = crate::testing::service("y", "api", 1).spec;
            f(&mut spec);
            spec
        };
        let ingress_id = store.view(|v| v.network_by_name("ingress").unwrap().id.clone());
        let cases: Vec<(crate::api::ServiceSpec, Code, String)> = vec![
            (
                with(&|s| s.task_template.networks = vec![attach("nope")]),
                Code::NotFound,
                "network nope not found".into(),
            ),
            (
                with(&|s| s.task_template.networks = vec![attach("ingress")]),
                Code::InvalidArgument,
                "service cannot be explicitly attached to the ingress network \"ingress\"".into(),
            ),
            (
                with(&|s| s.task_template.networks = vec![attach(&ingress_id)]),
                Code::InvalidArgument,
                "service cannot be explicitly attached to the ingress network \"ingress\"".into(),
            ),
            (
                with(&|s| s.task_template.networks = vec![attach("front"), attach("front")]),
                Code::InvalidArgument,
                "network front is attached more than once".into(),
            ),
            (with(&|s| s.endpoint_spec.ports = vec![port(8081, 0)]), Code::InvalidArgument, "target port".into()),
            (
                with(&|s| s.endpoint_spec.ports = vec![port(8081, 80), port(8081, 81)]),
                Code::InvalidArgument,
                "duplicate published ports provided: 8081/tcp is published twice".into(),
            ),
            (
                with(&|s| s.endpoint_spec.ports = vec![port(8080, 80)]),
                Code::InvalidArgument,
                format!("port '8080' is already in use by service 'web' ({}) as an ingress port", web.id),
            ),
            (
                with(&|s| {
                    s.endpoint_spec.mode = crate::api::EndpointMode::Dnsrr;
                    s.endpoint_spec.ports = vec![port(8081, 80)];
                }),
                Code::InvalidArgument,
                DNSRR_WITH_INGRESS.into(),
            ),
        ];
        for (spec, code, msg) in cases {
            let e = api.create_service(Request::new(CreateServiceRequest { spec })).await.unwrap_err();
            assert_eq!(e.code(), code, "{}", e.message());
            assert!(e.message().contains(&msg), "{:?} lacks {msg:?}", e.message());
        }
        // The same refusals on update.
        let mut spec = web.spec.clone();
        spec.task_template.networks.push(attach("nope"));
        let e = api
            .update_service(Request::new(UpdateServiceRequest {
                id: web.id.clone(),
                version: web.meta.version,
                spec,
                rollback: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(e.message(), "network nope not found");
        // A service may keep its own port on update.
        let mut spec = web.spec.clone();
        spec.endpoint_spec.ports.push(port(0, 443));

        let e = api.remove_network(Request::new(GetRequest { id_or_name: "front".into() })).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "network front is in use by service web"));
        assert_eq!(store.view(|v| v.objects().collect::<Vec<_>>()), before, "refused calls changed the store");

        let s = api
            .update_service(Request::new(UpdateServiceRequest {
                id: web.id.clone(),
                version: web.meta.version,
                spec,
                rollback: false,
            }))
            .await
            .expect("a service keeps its own published port");
        assert_eq!(s.into_inner().spec.endpoint_spec.ports.len(), 2);
        api.remove_service(Request::new(GetRequest { id_or_name: "web".into() })).await.unwrap();
        api.remove_network(Request::new(GetRequest { id_or_name: "front".into() })).await.expect("unused now");
    }
}
