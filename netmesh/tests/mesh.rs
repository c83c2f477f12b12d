//! The modules together, as the engine will use them: a container on host A finds service `web` by name
//! through its embedded DNS, connects to the VIP, and its connections are spread over the service's two tasks
//! on host B across the VXLAN overlay. Needs root, nft and conntrack.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::{a_records, eventually, query, request, serve, underlay, unique_prefix, Guard};
use hickory_proto::rr::RecordType;
use netmesh::dns::{DnsServer, Records};
use netmesh::lb::Balancer;
use netmesh::overlay::{self, mac_for_ip, Attachment, Host, Network, RemoteEndpoint};

const NET: &str = "meshnet0123456789";
const GW: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 100);

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 60, 0, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_name_to_vip_to_tasks_on_another_host() {
    let p = unique_prefix("ms");
    let mut g = Guard::default();
    let (ha, hb) = (g.netns(&format!("{p}hosta")), g.netns(&format!("{p}hostb")));
    let (client, t1, t2) = (g.netns(&format!("{p}client")), g.netns(&format!("{p}t1")), g.netns(&format!("{p}t2")));
    let (ua, ub) = (Ipv4Addr::new(192, 168, 60, 1), Ipv4Addr::new(192, 168, 60, 2));
    underlay(&ha, &hb, ua, ub);
    let host_a = Host { netns: Some(ha.clone()), prefix: format!("{p}a-") };
    let host_b = Host { netns: Some(hb.clone()), prefix: format!("{p}b-") };
    for h in [host_a.clone(), host_b.clone()] {
        g.defer(move || {
            let _ = netmesh::cleanup_all(&h);
        });
    }
    let (ha2, hb2, c2, t1b, t2b) = (host_a.clone(), host_b.clone(), client.clone(), t1.clone(), t2.clone());
    tokio::task::spawn_blocking(move || {
        for (h, local) in [(&ha2, ua), (&hb2, ub)] {
            overlay::ensure_network(h, &Network { id: NET.into(), vni: 6000, local, gateway: Some((GW, 24)) }).unwrap();
        }
        let attach = |h: &Host, ns: &PathBuf, n: u8| {
            let a = Attachment {
                netns: ns.clone(),
                ip: ip(n),
                prefix_len: 24,
                default_route: Some(GW),
                ifname: "eth0".into(),
            };
            overlay::attach(h, NET, &a).unwrap();
        };
        attach(&ha2, &c2, 2);
        attach(&hb2, &t1b, 3);
        attach(&hb2, &t2b, 4);
        let remote = |n: u8, host| RemoteEndpoint { ip: ip(n), mac: mac_for_ip(ip(n)), host };
        overlay::reconcile_remotes(&ha2, NET, &[remote(3, ub), remote(4, ub)]).unwrap();
        overlay::reconcile_remotes(&hb2, NET, &[remote(2, ua)]).unwrap();
        serve(t1b, SocketAddr::from((ip(3), 80)), "t1");
        serve(t2b, SocketAddr::from((ip(4), 80)), "t2");
        Balancer::new(c2).set(BTreeMap::from([(VIP, vec![ip(3), ip(4)])])).unwrap();
    })
    .await
    .unwrap();

    let records = Records::new();
    records.set_service(NET, "web", &[], Some(VIP), vec![ip(3), ip(4)]);
    let _dns = DnsServer::start(&client, records, vec![NET.into()], &[]).await.unwrap();

    let c = client.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(a_records(&query(&c, "web", RecordType::A, false)), vec![VIP], "web → VIP");
        assert_eq!(a_records(&query(&c, "tasks.web", RecordType::A, false)), vec![ip(3), ip(4)]);
        // The first connection also resolves the tasks' MACs over the overlay (proxy ARP).
        eventually("first connection to the VIP", Duration::from_secs(10), || request(&c, SocketAddr::from((VIP, 80))));
        let mut seen: HashMap<String, usize> = HashMap::new();
        for i in 0..40 {
            let r = request(&c, SocketAddr::from((VIP, 80))).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            *seen.entry(r).or_default() += 1;
        }
        assert_eq!(seen.get("t1").zip(seen.get("t2")), Some((&20, &20)), "spread over both tasks: {seen:?}");
    })
    .await
    .unwrap();
}
