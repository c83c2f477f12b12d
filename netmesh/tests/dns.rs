//! Embedded DNS tests: a server bound on 127.0.0.11:53 inside a "container" namespace, queried from a thread
//! inside it over UDP and TCP; forwarding goes to a second server acting as the upstream resolver. Needs root.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{a_records, message, query, unique_prefix, Guard};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use netmesh::dns::{DnsServer, Records, DNS_ADDR};
use netmesh::netns;

async fn ask(ns: &Path, name: &str, qtype: RecordType, tcp: bool) -> Message {
    let (ns, name) = (ns.to_path_buf(), name.to_string());
    tokio::task::spawn_blocking(move || query(&ns, &name, qtype, tcp)).await.unwrap()
}

/// An "upstream" resolver on the test process's loopback, knowing `example.test`.
fn upstream() -> (DnsServer, SocketAddr) {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).unwrap();
    let records = Records::new();
    records.set("public", "example.test", vec![Ipv4Addr::new(192, 0, 2, 7)]);
    (DnsServer::serve(udp, tcp, records, vec!["public".into()], &[]).unwrap(), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_resolves_services_tasks_and_forwards_the_rest() {
    let mut g = Guard::default();
    let ns = g.netns(&format!("{}dns", unique_prefix("dn")));
    let (_up, up_addr) = upstream();
    let records = Records::new();
    let vip = Ipv4Addr::new(10, 0, 1, 2);
    let tasks = vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4), Ipv4Addr::new(10, 0, 1, 5)];
    records.set_service("net1", "web", &["www"], Some(vip), tasks.clone());
    records.set_service("net2", "db", &[], None, vec![Ipv4Addr::new(10, 0, 2, 9)]);
    let server = DnsServer::start(&ns, records.clone(), vec!["net1".into()], &[up_addr]).await.unwrap();

    let m = ask(&ns, "web", RecordType::A, false).await;
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(a_records(&m), vec![vip], "service name → VIP");
    assert_eq!(a_records(&ask(&ns, "WWW.", RecordType::A, false).await), vec![vip], "alias, any case");
    assert_eq!(a_records(&ask(&ns, "tasks.web", RecordType::A, false).await), tasks, "tasks.<service> → every task");
    assert_eq!(a_records(&ask(&ns, "web", RecordType::A, true).await), vec![vip], "same over TCP");
    let m = ask(&ns, "web", RecordType::AAAA, false).await;
    assert_eq!(
        (m.response_code(), m.answers().len()),
        (ResponseCode::NoError, 0),
        "AAAA of a known name is empty NOERROR"
    );

    // Runtime update: scale down and move the VIP; the next query sees it.
    records.set_service("net1", "web", &["www"], Some(Ipv4Addr::new(10, 0, 1, 200)), tasks[..1].to_vec());
    assert_eq!(a_records(&ask(&ns, "web", RecordType::A, false).await), vec![Ipv4Addr::new(10, 0, 1, 200)]);
    assert_eq!(a_records(&ask(&ns, "tasks.web", RecordType::A, false).await), tasks[..1].to_vec());

    for unknown in ["nosuch", "tasks.nosuch", "db"] {
        let m = ask(&ns, unknown, RecordType::A, false).await;
        assert_eq!(
            m.response_code(),
            ResponseCode::NXDomain,
            "{unknown} (db is on a network this container is not on)"
        );
    }
    server.set_networks(vec!["net1".into(), "net2".into()]);
    assert_eq!(
        a_records(&ask(&ns, "db", RecordType::A, false).await),
        vec![Ipv4Addr::new(10, 0, 2, 9)],
        "dnsrr: task IPs"
    );

    let m = ask(&ns, "example.test", RecordType::A, false).await;
    assert_eq!(m.response_code(), ResponseCode::NoError, "forwarded name");
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(192, 0, 2, 7)], "answer from the upstream resolver");

    records.remove_service("net1", "web", &["www"]);
    assert_eq!(ask(&ns, "web", RecordType::A, false).await.response_code(), ResponseCode::NXDomain, "removed service");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_rate_from_a_container() {
    let mut g = Guard::default();
    let ns = g.netns(&format!("{}dnsq", unique_prefix("dq")));
    let records = Records::new();
    records.set_service("n", "svc", &[], Some(Ipv4Addr::new(10, 9, 0, 2)), vec![Ipv4Addr::new(10, 9, 0, 3)]);
    let _server = DnsServer::start(&ns, records, vec!["n".into()], &[]).await.unwrap();
    let n = 2000;
    let lat = tokio::task::spawn_blocking(move || {
        netns::run_in(Some(&ns), || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.connect((DNS_ADDR, 53)).unwrap();
            let q = message("svc", RecordType::A);
            let mut buf = [0u8; 512];
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                s.send(&q).unwrap();
                let len = s.recv(&mut buf).expect("answer");
                lat.push(t.elapsed());
                assert_eq!(a_records(&Message::from_vec(&buf[..len]).unwrap()), vec![Ipv4Addr::new(10, 9, 0, 2)]);
            }
            lat
        })
        .unwrap()
    })
    .await
    .unwrap();
    let total: Duration = lat.iter().sum();
    let mut sorted = lat.clone();
    sorted.sort();
    println!(
        "dns: {n} sequential queries, {:.0} queries/s, p50 {:?}, p99 {:?} (debug build)",
        n as f64 / total.as_secs_f64(),
        sorted[n / 2],
        sorted[n * 99 / 100]
    );
    assert_eq!(lat.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_frees_the_address_for_the_next_server() {
    let mut g = Guard::default();
    let ns = g.netns(&format!("{}dnss", unique_prefix("ds")));
    let records = Records::new();
    records.set("n", "a", vec![Ipv4Addr::new(10, 8, 0, 2)]);
    let first = DnsServer::start(&ns, records.clone(), vec!["n".into()], &[]).await.unwrap();
    assert_eq!(first.addr(), SocketAddr::from((DNS_ADDR, 53)));
    let err = DnsServer::start(&ns, records.clone(), vec!["n".into()], &[]).await.err().expect("second bind");
    assert!(err.to_string().starts_with("dns server on 127.0.0.11:53: bind udp:"), "{err}");
    first.stop().await;
    let second = DnsServer::start(&ns, records, vec!["n".into()], &[]).await.unwrap();
    assert_eq!(a_records(&ask(&ns, "a", RecordType::A, false).await), vec![Ipv4Addr::new(10, 8, 0, 2)]);
    drop(second);
}
