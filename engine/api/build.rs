//! Generates the `shoal.Engine` client and server. Messages are the serde types of `src/wire.rs` (and the control
//! API's `Empty`), carried by swarm's MessagePack codec like the cluster services.

use tonic_build::manual::{Builder, Method, Service};

/// How a method streams: (client streams, server streams).
const UNARY: (bool, bool) = (false, false);
const UPLOAD: (bool, bool) = (true, false);
const DOWNLOAD: (bool, bool) = (false, true);

fn main() {
    let empty = "swarm::api::control::Empty";
    let methods = [
        ("info", "Info", empty, "crate::InfoResponse", UNARY),
        ("version", "Version", empty, "crate::VersionResponse", UNARY),
        ("swarm_init", "SwarmInit", "crate::SwarmInitRequest", "crate::SwarmInitResponse", UNARY),
        ("swarm_leave", "SwarmLeave", "crate::SwarmLeaveRequest", empty, UNARY),
        ("swarm_join", "SwarmJoin", "crate::SwarmJoinRequest", "crate::SwarmJoinResponse", UNARY),
        (
            "swarm_rotate_join_token",
            "SwarmRotateJoinToken",
            "crate::RotateJoinTokenRequest",
            "crate::RotateJoinTokenResponse",
            UNARY,
        ),
        ("swarm_unlock", "SwarmUnlock", "crate::SwarmUnlockRequest", empty, UNARY),
        ("swarm_unlock_key", "SwarmUnlockKey", empty, "crate::SwarmUnlockKeyResponse", UNARY),
        ("image_load", "ImageLoad", "crate::ImageLoadChunk", "crate::ImageLoadResponse", UPLOAD),
        ("image_list", "ImageList", empty, "crate::ImageListResponse", UNARY),
        ("image_remove", "ImageRemove", "crate::ImageRemoveRequest", empty, UNARY),
        ("image_pull", "ImagePull", "crate::ImagePullRequest", "crate::ImagePullProgress", DOWNLOAD),
        ("image_push", "ImagePush", "crate::ImagePushRequest", "crate::ImagePullProgress", DOWNLOAD),
        ("image_tag", "ImageTag", "crate::ImageTagRequest", empty, UNARY),
        ("image_inspect", "ImageInspect", "crate::ImageInspectRequest", "crate::ImageInspect", UNARY),
        ("registry_login", "RegistryLogin", "crate::RegistryLoginRequest", "crate::RegistryLoginResponse", UNARY),
        (
            "distribution_inspect",
            "DistributionInspect",
            "crate::DistributionInspectRequest",
            "crate::DistributionInspectResponse",
            UNARY,
        ),
    ];
    let mut engine = Service::builder().name("Engine").package("shoal");
    for (name, route, input, output, (client_streaming, server_streaming)) in methods {
        let mut m = Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("swarm::transport::WireCodec");
        if client_streaming {
            m = m.client_streaming();
        }
        if server_streaming {
            m = m.server_streaming();
        }
        engine = engine.method(m.build());
    }
    Builder::new().compile(&[engine.build()]);
    println!("cargo:rerun-if-changed=build.rs");
}
