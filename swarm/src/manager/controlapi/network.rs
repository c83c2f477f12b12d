//! Networks in the control API: spec checks and the address decisions of `network create` (subnet, gateway,
//! VNI), made on the view the creating write reads so that two creates cannot take the same subnet or VNI.

use super::validate::is_object_name;
use crate::api::{new_id, Network, NetworkSpec, INGRESS_NETWORK_NAME, OVERLAY_DRIVER};
use crate::manager::ipam::{self, DefaultPools, IpamError};
use crate::manager::store::MemoryStore;
use std::collections::BTreeSet;
use tonic::Status;

/// Why a network cannot be created or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// The name is not a valid object name.
    #[error(
        "invalid network name {0:?}: a network name must be 1 to 63 letters, digits, '-' or '_', starting and \
         ending with a letter or digit"
    )]
    InvalidName(String),
    /// A driver other than overlay.
    #[error("network driver {0:?} is not supported in a swarm: only \"overlay\" networks can be created")]
    UnsupportedDriver(String),
    /// A label key that cannot be written `k=v`.
    #[error("invalid label key {0:?}: must be non-empty, without '=' or whitespace")]
    InvalidLabel(String),
    /// `--gateway` without `--subnet`.
    #[error("a gateway can only be given with a subnet (--subnet)")]
    GatewayWithoutSubnet,
    /// The name is taken.
    #[error("network with name {0} already exists")]
    NameTaken(String),
    /// A second routing-mesh network.
    #[error("ingress network already present: {0}")]
    IngressExists(String),
    /// The routing-mesh network is removed only with the swarm.
    #[error("{0} is a pre-defined network and cannot be removed")]
    Predefined(String),
    /// Addresses could not be given.
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

impl From<NetworkError> for Status {
    fn from(e: NetworkError) -> Status {
        match e {
            NetworkError::NameTaken(_) | NetworkError::IngressExists(_) => Status::already_exists(e.to_string()),
            NetworkError::Predefined(_) => Status::permission_denied(e.to_string()),
            NetworkError::Ipam(IpamError::PoolsExhausted | IpamError::VnisExhausted) => {
                Status::resource_exhausted(e.to_string())
            }
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

/// Checks a spec and fills what has a default (the driver).
pub fn check_spec(spec: &mut NetworkSpec) -> Result<(), NetworkError> {
    let name = &spec.annotations.name;
    if !is_object_name(name) {
        return Err(NetworkError::InvalidName(name.clone()));
    }
    if spec.driver.is_empty() {
        spec.driver = OVERLAY_DRIVER.into();
    }
    if spec.driver != OVERLAY_DRIVER {
        return Err(NetworkError::UnsupportedDriver(spec.driver.clone()));
    }
    if let Some(k) =
        spec.annotations.labels.keys().find(|k| k.is_empty() || k.contains('=') || k.chars().any(char::is_whitespace))
    {
        return Err(NetworkError::InvalidLabel(k.clone()));
    }
    if let Some(ipam) = &spec.ipam {
        if ipam.subnet.is_empty() && !ipam.gateway.is_empty() {
            return Err(NetworkError::GatewayWithoutSubnet);
        }
    }
    Ok(())
}

/// The network `spec` becomes in `view`: a new id, its subnet (the one asked for, refused if it overlaps another
/// network's, or the next free one of `pools`), its gateway and the lowest free VNI.
pub fn allocate(view: &MemoryStore, mut spec: NetworkSpec, pools: &DefaultPools) -> Result<Network, NetworkError> {
    check_spec(&mut spec)?;
    let name = &spec.annotations.name;
    if view.network_by_name(name).is_some() {
        return Err(NetworkError::NameTaken(name.clone()));
    }
    if spec.ingress {
        if let Some(n) = view.networks().find(|n| n.spec.ingress) {
            return Err(NetworkError::IngressExists(n.spec.annotations.name.clone()));
        }
    }
    // Subnets of stored networks were checked when they were created; one that no longer parses is skipped.
    let used: Vec<(&str, ipnet::Ipv4Net)> = view
        .networks()
        .filter_map(|n| Some((n.spec.annotations.name.as_str(), ipam::parse_subnet(&n.subnet).ok()?)))
        .collect();
    let asked = spec.ipam.as_ref().filter(|i| !i.subnet.is_empty());
    let subnet = match asked {
        Some(i) => {
            let subnet = ipam::parse_subnet(&i.subnet)?;
            ipam::check_free(&subnet, used.iter().copied())?;
            subnet
        }
        None => pools.next_free(&used.iter().map(|(_, s)| *s).collect::<Vec<_>>())?,
    };
    let gateway = ipam::gateway(&subnet, asked.map(|i| i.gateway.as_str()).unwrap_or(""))?;
    let vni = ipam::next_vni(&view.networks().map(|n| n.vni).collect::<BTreeSet<_>>())?;
    Ok(Network {
        id: new_id(),
        meta: Default::default(),
        spec,
        vni,
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
    })
}

/// The default address pools from `swarm init`'s flags (empty / 0: 10.0.0.0/8 in /24s).
pub fn pools(cidrs: &[String], mask_len: u32) -> Result<DefaultPools, IpamError> {
    let mask = if mask_len == 0 { 24 } else { u8::try_from(mask_len).unwrap_or(u8::MAX) };
    DefaultPools::new(cidrs, mask)
}

/// The default address pools the cluster was initialised with.
pub fn pools_of(cluster: &crate::api::Cluster) -> Result<DefaultPools, NetworkError> {
    Ok(pools(&cluster.default_address_pool, cluster.subnet_size)?)
}

/// The routing-mesh network `swarm init` creates: the first subnet of the pools.
pub fn ingress_spec() -> NetworkSpec {
    NetworkSpec {
        annotations: crate::api::Annotations { name: INGRESS_NETWORK_NAME.into(), labels: Default::default() },
        driver: OVERLAY_DRIVER.into(),
        ipam: None,
        attachable: false,
        internal: false,
        ingress: true,
    }
}

/// Refuses to remove the routing-mesh network.
pub fn check_removable(n: &Network) -> Result<(), NetworkError> {
    if n.spec.ingress {
        return Err(NetworkError::Predefined(n.spec.annotations.name.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::control::{CreateNetworkRequest, GetRequest, ListNetworksRequest};
    use crate::api::{Annotations, IpamConfig};
    use crate::manager::controlapi::ControlApi;
    use crate::manager::store::{Store, StoreError};
    use crate::transport::control::control_server::Control;
    use tonic::{Code, Request};

    fn spec(name: &str, subnet: &str, gateway: &str) -> NetworkSpec {
        NetworkSpec {
            annotations: Annotations { name: name.into(), labels: Default::default() },
            driver: String::new(),
            ipam: (!subnet.is_empty() || !gateway.is_empty())
                .then(|| IpamConfig { subnet: subnet.into(), gateway: gateway.into() }),
            ..Default::default()
        }
    }

    /// A store holding the ingress network, as `swarm init` leaves it.
    async fn initialized() -> (Store, ControlApi) {
        let store = Store::in_memory();
        store
            .update(|tx| {
                let n = allocate(tx.view(), ingress_spec(), &DefaultPools::default())?;
                tx.create(n);
                Ok::<_, Status>(())
            })
            .await
            .unwrap();
        (store.clone(), ControlApi::with_store(store))
    }

    async fn create(api: &ControlApi, s: NetworkSpec) -> Result<Network, Status> {
        api.create_network(Request::new(CreateNetworkRequest { spec: s })).await.map(|r| r.into_inner())
    }

    #[tokio::test]
    async fn networks_get_the_next_free_subnet_a_gateway_and_their_own_vni() {
        let (store, api) = initialized().await;
        let ingress = store.view(|v| v.network_by_name("ingress").cloned()).unwrap();
        assert_eq!((ingress.subnet.as_str(), ingress.gateway.as_str(), ingress.vni), ("10.0.0.0/24", "10.0.0.1", 4096));

        let a = create(&api, spec("front", "", "")).await.unwrap();
        assert_eq!((a.subnet.as_str(), a.gateway.as_str(), a.vni), ("10.0.1.0/24", "10.0.1.1", 4097));
        assert_eq!(a.spec.driver, "overlay", "the driver defaults to overlay");
        let b = create(&api, spec("back", "10.0.2.0/23", "10.0.3.254")).await.unwrap();
        assert_eq!((b.subnet.as_str(), b.gateway.as_str(), b.vni), ("10.0.2.0/23", "10.0.3.254", 4098));
        let c = create(&api, spec("third", "", "")).await.unwrap();
        assert_eq!(c.subnet, "10.0.4.0/24", "the pool skips a user subnet");

        let listed = api.list_networks(Request::new(ListNetworksRequest::default())).await.unwrap().into_inner();
        assert_eq!(listed.networks.len(), 4);
        let got = api.get_network(Request::new(GetRequest { id_or_name: "back".into() })).await.unwrap().into_inner();
        assert_eq!(got.id, b.id);
        let prefix = &a.id[..12];
        let got = api.get_network(Request::new(GetRequest { id_or_name: prefix.into() })).await.unwrap();
        assert_eq!(got.into_inner().id, a.id, "found by id prefix");

        // A removed network's subnet and VNI are free again.
        api.remove_network(Request::new(GetRequest { id_or_name: "front".into() })).await.unwrap();
        let d = create(&api, spec("fourth", "", "")).await.unwrap();
        assert_eq!((d.subnet.as_str(), d.vni), ("10.0.1.0/24", 4097));
    }

    #[tokio::test]
    async fn bad_networks_change_nothing() {
        let (store, api) = initialized().await;
        create(&api, spec("front", "10.10.0.0/16", "")).await.unwrap();
        let before = store.view(|v| v.objects().collect::<Vec<_>>());

        let cases: Vec<(NetworkSpec, Code, &str)> = vec![
            (spec("front", "", ""), Code::AlreadyExists, "network with name front already exists"),
            (
                spec("other", "10.10.5.0/24", ""),
                Code::InvalidArgument,
                "Pool overlaps with other one on this address space: 10.10.5.0/24 overlaps network front \
                 (10.10.0.0/16)",
            ),
            (
                spec("other", "10.0.0.0/20", ""),
                Code::InvalidArgument,
                "Pool overlaps with other one on this address space: 10.0.0.0/20 overlaps network ingress \
                 (10.0.0.0/24)",
            ),
            (spec("other", "10.20.0.0/16", "10.21.0.1"), Code::InvalidArgument, "invalid gateway 10.21.0.1"),
            (spec("other", "", "10.21.0.1"), Code::InvalidArgument, "a gateway can only be given with a subnet"),
            (spec("other", "10.20.0.1/16", ""), Code::InvalidArgument, "host bits are set"),
            (spec("_not_valid", "", ""), Code::InvalidArgument, "invalid network name \"_not_valid\""),
            (spec(&"n".repeat(64), "", ""), Code::InvalidArgument, "must be 1 to 63 letters"),
            (
                NetworkSpec { driver: "bridge".into(), ..spec("other", "", "") },
                Code::InvalidArgument,
                "network driver \"bridge\" is not supported",
            ),
            (
                NetworkSpec { ingress: true, ..spec("ingress2", "", "") },
                Code::AlreadyExists,
                "ingress network already present",
            ),
        ];
        for (s, code, msg) in cases {
            let name = s.annotations.name.clone();
            let e = create(&api, s).await.unwrap_err();
            assert_eq!(e.code(), code, "{name}: {}", e.message());
            assert!(e.message().contains(msg), "{name}: {:?} lacks {msg:?}", e.message());
        }
        let mut labelled = spec("other", "", "");
        labelled.annotations.labels.insert("a b".into(), "x".into());
        assert_eq!(create(&api, labelled).await.unwrap_err().code(), Code::InvalidArgument);

        let rm = |key: &str| api.remove_network(Request::new(GetRequest { id_or_name: key.into() }));
        let e = rm("ingress").await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::PermissionDenied, "ingress is a pre-defined network and cannot be removed")
        );
        let e = rm("nope").await.unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::NotFound, "network nope not found"));
        assert_eq!(store.view(|v| v.objects().collect::<Vec<_>>()), before, "refused calls changed the store");

        rm("front").await.unwrap();
        assert!(store.view(|v| v.network_by_name("front").is_none()));
        assert_eq!(rm("front").await.unwrap_err().code(), Code::NotFound, "removed once");
    }

    #[test]
    fn the_cluster_s_pools_give_the_subnets() {
        let mut cluster: crate::api::Cluster = serde_json::from_value(serde_json::json!({
            "id": "c1", "spec": {"name": "default"},
            "root_ca": {"ca_cert_pem": "", "ca_cert_digest": "", "join_tokens": {"worker": "", "manager": ""}}
        }))
        .unwrap();
        cluster.default_address_pool = vec!["192.168.0.0/16".into()];
        cluster.subnet_size = 26;
        let pools = pools_of(&cluster).unwrap();
        let view = MemoryStore::new();
        let n = allocate(&view, ingress_spec(), &pools).unwrap();
        assert_eq!((n.subnet.as_str(), n.gateway.as_str()), ("192.168.0.0/26", "192.168.0.1"));
        cluster.subnet_size = 0;
        assert_eq!(pools_of(&cluster).unwrap().next_free(&[]).unwrap().to_string(), "192.168.0.0/24", "/24 by default");
    }

    #[tokio::test]
    async fn the_store_refuses_a_second_network_of_the_same_name() {
        let store = Store::in_memory();
        let mk = |id: &str| Network {
            id: id.into(),
            meta: Default::default(),
            spec: spec("dup", "", ""),
            vni: 4096,
            subnet: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
        };
        store
            .update(|tx| {
                tx.create(mk("a"));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let e = store
            .update(|tx| {
                tx.create(mk("b"));
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("network dup already exists"), "{e}");
    }
}
