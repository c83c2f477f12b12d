//! The allocator: the stage between NEW and PENDING, leader-only. It gives every node its address on the
//! `ingress` network (the host side of the routing mesh), every service its endpoint (a VIP per attached
//! network, plus `ingress` when it publishes a port there; its published ports, dynamic ones decided), and every
//! NEW task an address per network (its spec's, then `ingress` when its service publishes in ingress mode) and
//! the service's endpoint, then moves it to PENDING. Decisions are made on the view each write reads, from what
//! the store holds (`addresses.rs`), so nothing is lost across leader changes.
//!
//! A task that cannot be given what it needs (no free address, its service's port taken) stays NEW with the
//! reason in `status.err`, so the scheduler, which places only PENDING tasks, never places it without its
//! attachments; it is retried whenever addresses or ports may have been freed.

pub mod addresses;
pub mod ports;

use crate::api::{
    Endpoint, EndpointMode, NetworkAttachment, Node, Object, PublishMode, Service, Task, TaskState, Timestamp,
    VirtualIp,
};
use crate::manager::orchestrator::reconcile_loop;
use crate::manager::store::{
    ChangeToTask, Event, EventAction, MemoryStore, Planned, Store, StoreError, MAX_TASKS_PER_PROPOSAL,
};
use addresses::Addresses;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long nodes wait for an ingress address once the ingress network was found full.
const INGRESS_FULL_RETRY: Duration = Duration::from_secs(5);

/// The status message of a task waiting for its network resources.
pub const MSG_WAITING: &str = "pending task allocation";

pub struct Allocator {
    store: Store,
    /// Per network, where the next address hand-out starts (released addresses come back last).
    cursors: Mutex<HashMap<String, u32>>,
    /// Until when nodes are not offered an ingress address (the ingress network was full).
    nodes_wait: Mutex<Option<std::time::Instant>>,
}

impl Allocator {
    pub fn new(store: Store) -> Self {
        Allocator { store, cursors: Mutex::default(), nodes_wait: Mutex::default() }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        reconcile_loop(
            "allocator",
            &self.store.clone(),
            &shutdown,
            Duration::from_millis(5),
            Duration::from_secs(5),
            wakes,
            || self.pass(),
        )
        .await
    }

    async fn pass(&self) -> Result<(), StoreError> {
        loop {
            let (plain, more) = self
                .store
                .update(|tx| {
                    crate::manager::long_step(|| {
                        let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
                        let mut wait = self.nodes_wait.lock().unwrap_or_else(|e| e.into_inner());
                        let try_nodes = wait.is_none_or(|until| std::time::Instant::now() >= until);
                        let p = plan_with(tx.view(), Timestamp::now(), &mut cursors, MAX_TASKS_PER_PROPOSAL, try_nodes);
                        if p.ingress_full {
                            *wait = Some(std::time::Instant::now() + INGRESS_FULL_RETRY);
                        }
                        for n in p.nodes {
                            tx.update(n);
                        }
                        for s in p.services {
                            tx.update(s);
                        }
                        for t in p.allocated {
                            tx.update(t);
                        }
                        Ok::<_, StoreError>((p.plain, p.more))
                    })
                })
                .await?;
            // Tasks that need nothing are written apart, a stale one skipped rather than failing the batch (a
            // busy cluster without networks moves its tasks as before).
            self.store.update_tasks_bounded(&plain).await?;
            if !more {
                return Ok(());
            }
        }
    }
}

/// Whether a store change can give the allocator work: a NEW task, something that frees addresses or ports
/// (a deleted task holding addresses, a deleted service), a service whose endpoint may need (re)allocating, a
/// node or a network.
fn wakes(ev: &Event) -> bool {
    match &ev.object {
        Object::Task(t) => {
            t.status.state == TaskState::New || (ev.action == EventAction::Delete && !t.networks.is_empty())
        }
        Object::Service(s) => ev.action == EventAction::Delete || needs_endpoint(s) || s.endpoint.is_some(),
        Object::Node(n) => ev.action == EventAction::Create || n.attachments.is_empty(),
        Object::Network(_) => true,
        Object::Cluster(_) | Object::Secret(_) | Object::Config(_) => false,
    }
}

/// What one allocation write holds, decided on one view.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Nodes given their ingress address.
    pub nodes: Vec<Node>,
    /// Services given a new endpoint.
    pub services: Vec<Service>,
    /// Tasks given addresses (now PENDING), or left NEW with a new reason.
    pub allocated: Vec<Task>,
    /// NEW tasks that need no network resource, to move to PENDING, written in many proposals: those whose service
    /// stopped needing an endpoint after they were made NEW, and those an older release made (tasks that need
    /// nothing are created PENDING, see [`pending_at_creation`]).
    pub plain: Vec<Planned<ToPending>>,
    /// Whether tasks or nodes were left for another write (more than `max_tasks` needed addresses).
    pub more: bool,
    /// Whether a node found the ingress network full.
    pub ingress_full: bool,
}

/// A NEW task that needs no network resource, kept until it is written as PENDING (not a copy of the task).
#[derive(Debug)]
pub(crate) struct ToPending {
    endpoint: Option<Endpoint>,
    at: Timestamp,
}

impl ChangeToTask for ToPending {
    fn apply(&self, t: &mut Task) {
        t.networks.clear();
        to_pending(t, self.endpoint.clone(), self.at);
    }
}

/// A NEW task given what it needs, ready for the scheduler.
fn to_pending(t: &mut Task, endpoint: Option<Endpoint>, now: Timestamp) {
    t.endpoint = endpoint;
    t.status.state = TaskState::Pending;
    t.status.message = "pending task scheduling".into();
    t.status.err.clear();
    t.status.timestamp = now;
}

/// Makes a task of `s` PENDING as it is created when it needs nothing from the allocator (no network, no
/// endpoint): the allocator's NEW → PENDING write would change nothing else, and it was one of the four writes
/// each task took to RUNNING. Other tasks stay NEW for the allocator.
pub(crate) fn pending_at_creation(s: &Service, t: &mut Task) {
    if !needs_endpoint(s) {
        to_pending(t, None, t.status.timestamp);
    }
}

/// Whether `s` needs an endpoint at all: it attaches to a network or says how it is reached.
fn needs_endpoint(s: &Service) -> bool {
    !s.spec.task_template.networks.is_empty() || !s.spec.endpoint_spec.is_default()
}

fn publishes_ingress(e: &Endpoint) -> bool {
    e.ports.iter().any(|p| p.publish_mode == PublishMode::Ingress)
}

/// The networks `s` gets a VIP on: its own, then `ingress` when it publishes there; none with dnsrr.
fn vip_networks(s: &Service, ingress: Option<&str>) -> Vec<String> {
    if s.spec.endpoint_spec.mode == EndpointMode::Dnsrr {
        return vec![];
    }
    let mut nets: Vec<String> = s.spec.task_template.networks.iter().map(|a| a.target.clone()).collect();
    if s.spec.endpoint_spec.ports.iter().any(|p| p.publish_mode == PublishMode::Ingress) {
        nets.extend(ingress.map(String::from));
    }
    nets
}

/// Whether `s`'s endpoint is the one its spec asks for.
fn endpoint_current(s: &Service, ingress: Option<&str>) -> bool {
    match &s.endpoint {
        None => !needs_endpoint(s),
        Some(e) => {
            needs_endpoint(s)
                && e.spec == s.spec.endpoint_spec
                && e.ports.len() == e.spec.ports.len()
                && e.virtual_ips
                    .iter()
                    .map(|v| v.network_id.as_str())
                    .eq(vip_networks(s, ingress).iter().map(String::as_str))
        }
    }
}

/// `s`'s endpoint for its spec: its ports decided and a VIP per network, keeping the VIPs it has on networks
/// it stays on. `None` when it needs none.
fn endpoint_for(
    view: &MemoryStore,
    s: &Service,
    ingress: Option<&str>,
    addrs: &mut Addresses,
) -> Result<Option<Endpoint>, String> {
    if !needs_endpoint(s) {
        return Ok(None);
    }
    let ports = ports::allocate(view, s).map_err(|e| e.to_string())?;
    let held: Vec<&VirtualIp> = s.endpoint.iter().flat_map(|e| e.virtual_ips.iter()).collect();
    let mut vips = Vec::new();
    let mut fresh: Vec<VirtualIp> = Vec::new();
    for net in vip_networks(s, ingress) {
        match held.iter().find(|v| v.network_id == net) {
            Some(v) => vips.push((*v).clone()),
            None => match addrs.allocate(&net) {
                Ok(addr) => {
                    let v = VirtualIp { network_id: net, addr };
                    fresh.push(v.clone());
                    vips.push(v);
                }
                Err(e) => {
                    fresh.iter().for_each(|v| addrs.release(&v.network_id, &v.addr));
                    return Err(e.to_string());
                }
            },
        }
    }
    Ok(Some(Endpoint { spec: s.spec.endpoint_spec.clone(), ports, virtual_ips: vips }))
}

/// `t`'s attachments: one address per network of its spec, then `ingress` when its service publishes there.
fn attachments_for(
    t: &Task,
    endpoint: Option<&Endpoint>,
    ingress: Option<&str>,
    addrs: &mut Addresses,
) -> Result<Vec<NetworkAttachment>, String> {
    let mut wanted: Vec<(String, Vec<String>)> =
        t.spec.networks.iter().map(|a| (a.target.clone(), a.aliases.clone())).collect();
    if let (Some(ing), true) = (ingress, endpoint.is_some_and(publishes_ingress)) {
        wanted.push((ing.to_string(), vec![]));
    }
    let mut out: Vec<NetworkAttachment> = Vec::with_capacity(wanted.len());
    for (network_id, aliases) in wanted {
        match addrs.allocate(&network_id) {
            Ok(addr) => out.push(NetworkAttachment { network_id, addresses: vec![addr], aliases }),
            Err(e) => {
                for a in &out {
                    a.addresses.iter().for_each(|c| addrs.release(&a.network_id, c));
                }
                return Err(e.to_string());
            }
        }
    }
    Ok(out)
}

/// What to write on `view` at `now`: node ingress addresses, service endpoints, and live NEW tasks of existing
/// services (at most `max_tasks` of those needing addresses). A task whose service is gone is left for the
/// reaper, and one no longer desired running is never scheduled.
#[cfg(test)]
pub(crate) fn plan(view: &MemoryStore, now: Timestamp, cursors: &mut HashMap<String, u32>, max_tasks: usize) -> Plan {
    plan_with(view, now, cursors, max_tasks, true)
}

/// [`plan`], giving nodes their ingress address only when `try_nodes` (not while the ingress network is known
/// to be full: trying would read every task's addresses on every pass).
pub(crate) fn plan_with(
    view: &MemoryStore,
    now: Timestamp,
    cursors: &mut HashMap<String, u32>,
    max_tasks: usize,
    try_nodes: bool,
) -> Plan {
    let mut p = Plan::default();
    let ingress = view.networks().find(|n| n.spec.ingress).map(|n| n.id.clone());
    let ingress = ingress.as_deref();
    // Loaded only when something needs an address: a cluster without networks never reads every task here.
    let mut addrs: Option<Addresses> = None;

    if let (Some(ing), true) = (ingress, try_nodes) {
        for n in view.nodes().filter(|n| !n.attachments.iter().any(|a| a.network_id == ing)) {
            if p.nodes.len() >= max_tasks {
                p.more = true;
                break;
            }
            let a = addrs.get_or_insert_with(|| Addresses::from_view(view, cursors));
            match a.allocate(ing) {
                Ok(addr) => {
                    let mut n = n.clone();
                    n.attachments.push(NetworkAttachment {
                        network_id: ing.into(),
                        addresses: vec![addr],
                        aliases: vec![],
                    });
                    p.nodes.push(n);
                }
                Err(e) => {
                    // The others would fail the same way.
                    tracing::warn!(node.id = %n.id, error = %e, "no ingress address for the node");
                    p.ingress_full = true;
                    break;
                }
            }
        }
    }

    // Each service's endpoint as it will be after this write, or why it cannot be.
    let mut endpoints: HashMap<&str, Result<Option<Endpoint>, String>> = HashMap::new();
    for s in view.services() {
        if endpoint_current(s, ingress) {
            continue;
        }
        let a = addrs.get_or_insert_with(|| Addresses::from_view(view, cursors));
        let r = endpoint_for(view, s, ingress, a);
        match &r {
            Ok(e) => {
                tracing::info!(service.id = %s.id, "service endpoint allocated");
                let mut s = s.clone();
                s.endpoint = e.clone();
                p.services.push(s);
            }
            Err(e) => tracing::debug!(service.id = %s.id, reason = %e, "service endpoint not allocated"),
        }
        endpoints.insert(&s.id, r);
    }

    for t in view.tasks_by_state(TaskState::New) {
        if t.desired_state > TaskState::Running {
            continue;
        }
        let Some(s) = view.service(&t.service_id) else { continue };
        let endpoint = match endpoints.get(s.id.as_str()) {
            Some(Ok(e)) => e.as_ref(),
            Some(Err(reason)) => {
                if t.status.err != *reason {
                    let mut t = t.clone();
                    t.status.err = reason.clone();
                    t.status.message = MSG_WAITING.into();
                    p.allocated.push(t);
                }
                continue;
            }
            None => s.endpoint.as_ref(),
        };
        let needs = !t.spec.networks.is_empty() || endpoint.is_some_and(publishes_ingress);
        if !needs {
            let endpoint = endpoint.cloned();
            p.plain.push(Planned::on(t, ToPending { endpoint, at: now }));
            continue;
        }
        if p.allocated.len() >= max_tasks {
            p.more = true;
            continue;
        }
        let mut next = t.clone();
        to_pending(&mut next, endpoint.cloned(), now);
        let a = addrs.get_or_insert_with(|| Addresses::from_view(view, cursors));
        match attachments_for(t, endpoint, ingress, a) {
            Ok(nets) => {
                next.networks = nets;
                p.allocated.push(next);
            }
            Err(reason) => {
                if t.status.err != reason {
                    tracing::info!(task.id = %t.id, %reason, "task waits for network resources");
                    let mut t = t.clone();
                    t.status.err = reason;
                    t.status.message = MSG_WAITING.into();
                    p.allocated.push(t);
                }
            }
        }
    }
    if let Some(a) = &addrs {
        *cursors = a.cursors();
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{service, task};
    use std::time::{Instant, SystemTime};

    fn new_task(id: &str, service_id: &str, slot: u64) -> Task {
        let mut t = task(id, service_id, slot);
        t.status.state = TaskState::New;
        t.status.message = "created".into();
        t
    }

    /// Service `s1`; NEW tasks `t1` (of s1), `gone` (of a deleted service), `stopping` (desired SHUTDOWN); and
    /// `waiting` and `later` (of s1, already PENDING and ASSIGNED).
    fn objects() -> Vec<Object> {
        let mut stopping = new_task("stopping", "s1", 3);
        stopping.desired_state = TaskState::Shutdown;
        let mut later = task("later", "s1", 2);
        later.node_id = "n1".into();
        later.status.state = TaskState::Assigned;
        vec![
            service("s1", "web", 3).into(),
            new_task("t1", "s1", 1).into(),
            new_task("gone", "deleted", 1).into(),
            stopping.into(),
            task("waiting", "s1", 4).into(),
            later.into(),
        ]
    }

    #[test]
    fn new_tasks_of_existing_services_become_pending_and_nothing_else_changes() {
        let view = MemoryStore::from_objects(objects());
        let now = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000));
        let p = plan(&view, now, &mut HashMap::new(), 10);
        assert!(p.nodes.is_empty() && p.services.is_empty() && p.allocated.is_empty() && !p.more);
        let moved: Vec<Task> = p.plain.iter().map(|c| c.changed(view.task(c.task_id()).unwrap())).collect();

        let mut want = view.task("t1").unwrap().clone();
        want.status.state = TaskState::Pending;
        want.status.message = "pending task scheduling".into();
        want.status.timestamp = now;
        assert_eq!(moved, vec![want], "only t1 moves, and only its status");
    }

    #[tokio::test]
    async fn a_pass_of_the_running_allocator_writes_the_same() {
        let store = Store::in_memory();
        store
            .update(|tx| {
                for o in objects() {
                    tx.create(o);
                }
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
        let before = store.view(|v| v.tasks().cloned().collect::<Vec<_>>());
        let shutdown = CancellationToken::new();
        tokio::spawn(Allocator::new(store.clone()).run(shutdown.clone()));

        let deadline = Instant::now() + Duration::from_secs(5);
        while store.view(|v| v.task("t1").unwrap().status.state) != TaskState::Pending {
            assert!(Instant::now() < deadline, "t1 not PENDING within 5s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.cancel();
        // One pass moves every task it will: the others are as they were.
        for t in before.iter().filter(|t| t.id != "t1") {
            let now = store.view(|v| v.task(&t.id).cloned()).unwrap();
            assert_eq!(now, *t, "{} changed", t.id);
        }
    }

    // Networks: `ingress` 10.0.0.0/24 and `front` 10.0.1.0/29 (five usable addresses: .2–.6).
    fn network(id: &str, name: &str, subnet: &str, ingress: bool) -> crate::api::Network {
        let gateway = subnet.replace(".0/", ".1/");
        crate::api::Network {
            id: id.into(),
            meta: Default::default(),
            spec: crate::api::NetworkSpec {
                annotations: crate::api::Annotations { name: name.into(), labels: Default::default() },
                ingress,
                ..Default::default()
            },
            vni: 4096,
            subnet: subnet.into(),
            gateway: gateway.split('/').next().unwrap().into(),
        }
    }

    fn on_front(mut s: Service, alias: &str) -> Service {
        s.spec.task_template.networks = vec![crate::api::NetworkAttachmentConfig {
            target: "front".into(),
            aliases: vec![alias.into()].into_iter().filter(|a: &String| !a.is_empty()).collect(),
        }];
        s
    }

    fn published(mut s: Service, published: u16, target: u16) -> Service {
        s.spec.endpoint_spec.ports =
            vec![crate::api::PortConfig { target_port: target, published_port: published, ..Default::default() }];
        s
    }

    fn networked_task(id: &str, s: &Service, slot: u64) -> Task {
        let mut t = new_task(id, &s.id, slot);
        t.spec = s.spec.task_template.clone().into();
        t
    }

    /// Runs passes as the running allocator would (each on the store left by the last) until nothing is left.
    fn settle(objects: Vec<Object>, cursors: &mut HashMap<String, u32>) -> MemoryStore {
        let mut view = MemoryStore::from_objects(objects);
        for i in 0..10 {
            let p = plan(&view, Timestamp::now(), cursors, 2);
            let done = !p.more;
            let ops: Vec<crate::manager::store::Op> = p
                .nodes
                .into_iter()
                .map(Object::from)
                .chain(p.services.into_iter().map(Object::from))
                .chain(p.allocated.into_iter().map(Object::from))
                .chain(p.plain.iter().map(|c| c.changed(view.task(c.task_id()).unwrap()).into()))
                .map(crate::manager::store::Op::update)
                .collect();
            if !ops.is_empty() {
                view.apply(100 + i, &crate::manager::store::Proposal { ops, timestamp: Timestamp::now() }).unwrap();
            }
            if done {
                return view;
            }
        }
        panic!("allocation did not settle");
    }

    fn addrs(t: &Task) -> Vec<(String, String)> {
        t.networks.iter().map(|a| (a.network_id.clone(), a.addresses.join(","))).collect()
    }

    #[test]
    fn services_get_a_vip_per_network_tasks_an_address_each_and_nodes_their_ingress_address() {
        let web = published(on_front(service("s1", "web", 2), "www"), 0, 80);
        let mut dns = on_front(service("s2", "dns", 1), "");
        dns.spec.endpoint_spec.mode = EndpointMode::Dnsrr;
        let objects = vec![
            network("ing", "ingress", "10.0.0.0/24", true).into(),
            network("front", "front", "10.0.1.0/24", false).into(),
            crate::testing::node("n1", "h1").into(),
            web.clone().into(),
            dns.clone().into(),
            networked_task("w1", &web, 1).into(),
            networked_task("w2", &web, 2).into(),
            networked_task("d1", &dns, 1).into(),
        ];
        let v = settle(objects, &mut HashMap::new());
        let n1 = v.node("n1").unwrap();
        assert_eq!(n1.attachments[0].network_id, "ing");
        assert_eq!(n1.attachments[0].addresses, vec!["10.0.0.2/24".to_string()], "the node's ingress address");

        let e = v.service("s1").unwrap().endpoint.clone().unwrap();
        let vips: Vec<(&str, &str)> = e.virtual_ips.iter().map(|v| (v.network_id.as_str(), v.addr.as_str())).collect();
        assert_eq!(vips, vec![("front", "10.0.1.2/24"), ("ing", "10.0.0.3/24")], "a VIP per network, ingress last");
        assert_eq!(e.ports[0].published_port, 30000, "the lowest dynamic port");
        let d = v.service("s2").unwrap().endpoint.clone().unwrap();
        assert!(d.virtual_ips.is_empty(), "no VIP with dnsrr");

        let w1 = v.task("w1").unwrap();
        assert_eq!(w1.status.state, TaskState::Pending);
        assert_eq!(w1.endpoint.as_ref(), Some(&e), "the task carries the service's endpoint");
        assert_eq!(w1.networks[0].aliases, vec!["www".to_string()], "aliases copied");
        let mut all: Vec<(String, String)> =
            ["w1", "w2", "d1"].iter().flat_map(|t| addrs(v.task(t).unwrap())).collect();
        all.sort();
        let distinct: std::collections::BTreeSet<&(String, String)> = all.iter().collect();
        assert_eq!(distinct.len(), 5, "w1, w2 on front and ingress, d1 on front only, all different: {all:?}");
        assert_eq!(addrs(v.task("d1").unwrap()).len(), 1);
        assert!(addrs(w1).iter().map(|(n, _)| n.as_str()).eq(["front", "ing"]));
    }

    #[test]
    fn a_full_network_leaves_the_task_new_with_the_reason_until_an_address_is_freed() {
        let web = on_front(service("s1", "web", 6), "");
        let mut objects: Vec<Object> = vec![network("front", "front", "10.0.1.0/29", false).into(), web.clone().into()];
        // The VIP takes .2; tasks get .3 to .6; the fifth task finds none.
        for i in 1..=5 {
            objects.push(networked_task(&format!("t{i}"), &web, i).into());
        }
        let mut cursors = HashMap::new();
        let v = settle(objects, &mut cursors);
        let t5 = v.task("t5").unwrap();
        assert_eq!(t5.status.state, TaskState::New);
        assert_eq!(t5.status.message, MSG_WAITING);
        assert_eq!(t5.status.err, "no available IP address on network front (subnet 10.0.1.0/29)");
        assert!(t5.networks.is_empty());
        // Another pass changes nothing (the reason is written once).
        assert!(plan(&v, Timestamp::now(), &mut cursors, 10).allocated.is_empty());

        // t2 ends: its address stays held while the task exists, and is free once the task is deleted.
        let mut objects: Vec<Object> = v.objects().collect();
        let t2 = v.task("t2").unwrap().clone();
        let freed = addrs(&t2)[0].1.clone();
        objects.retain(|o| !matches!(o, Object::Task(t) if t.id == "t2"));
        let v = settle(objects, &mut cursors);
        let t5 = v.task("t5").unwrap();
        assert_eq!(t5.status.state, TaskState::Pending);
        assert!(t5.status.err.is_empty());
        assert_eq!(addrs(t5)[0].1, freed, "the only free address");
    }

    #[test]
    fn a_released_address_is_reused_last_even_by_a_new_leader() {
        let web = on_front(service("s1", "web", 3), "");
        let objects: Vec<Object> = vec![
            network("front", "front", "10.0.1.0/24", false).into(),
            web.clone().into(),
            networked_task("t1", &web, 1).into(),
            networked_task("t2", &web, 2).into(),
        ];
        let mut cursors = HashMap::new();
        let v = settle(objects, &mut cursors);
        assert_eq!(addrs(v.task("t1").unwrap())[0].1, "10.0.1.3/24");
        // t1 is deleted, t3 comes: it gets .5, not t1's .3.
        let mut objects: Vec<Object> = v.objects().filter(|o| !matches!(o, Object::Task(t) if t.id == "t1")).collect();
        objects.push(networked_task("t3", &web, 3).into());
        let v = settle(objects.clone(), &mut cursors);
        assert_eq!(addrs(v.task("t3").unwrap())[0].1, "10.0.1.5/24");
        // A new leader (no cursors) also continues after the highest held address.
        let v = settle(objects, &mut HashMap::new());
        assert_eq!(addrs(v.task("t3").unwrap())[0].1, "10.0.1.5/24");
    }

    #[test]
    fn an_update_reallocates_the_endpoint_keeping_what_still_applies() {
        let web = published(on_front(service("s1", "web", 1), ""), 0, 80);
        let objects: Vec<Object> = vec![
            network("ing", "ingress", "10.0.0.0/24", true).into(),
            network("front", "front", "10.0.1.0/24", false).into(),
            network("back", "back", "10.0.2.0/24", false).into(),
            web.clone().into(),
        ];
        let mut cursors = HashMap::new();
        let v = settle(objects, &mut cursors);
        let before = v.service("s1").unwrap().endpoint.clone().unwrap();

        // Add network `back` and a second port.
        let mut s = v.service("s1").unwrap().clone();
        s.spec
            .task_template
            .networks
            .push(crate::api::NetworkAttachmentConfig { target: "back".into(), aliases: vec![] });
        s.spec.endpoint_spec.ports.push(crate::api::PortConfig { target_port: 443, ..Default::default() });
        let mut objects: Vec<Object> = v.objects().filter(|o| !matches!(o, Object::Service(_))).collect();
        objects.push(s.into());
        let v = settle(objects, &mut cursors);
        let after = v.service("s1").unwrap().endpoint.clone().unwrap();
        assert_eq!(after.virtual_ips[0], before.virtual_ips[0], "front's VIP kept");
        assert_eq!(after.virtual_ips[1].network_id, "back");
        assert_eq!(after.virtual_ips[2], before.virtual_ips[1], "ingress VIP kept");
        let ports: Vec<u16> = after.ports.iter().map(|p| p.published_port).collect();
        assert_eq!(ports, vec![30000, 30001], "the first port kept, the new one the next free");

        // Switched to dnsrr without ports: no VIPs at all.
        let mut s = v.service("s1").unwrap().clone();
        s.spec.endpoint_spec = crate::api::EndpointSpec { mode: EndpointMode::Dnsrr, ports: vec![] };
        let mut objects: Vec<Object> = v.objects().filter(|o| !matches!(o, Object::Service(_))).collect();
        objects.push(s.into());
        let v = settle(objects, &mut cursors);
        let e = v.service("s1").unwrap().endpoint.clone().unwrap();
        assert!(e.virtual_ips.is_empty() && e.ports.is_empty());
    }

    #[test]
    fn a_port_taken_by_another_service_keeps_the_tasks_new_with_docker_s_reason() {
        let web = published(service("s1", "web", 1), 8080, 80);
        let mut late = published(service("s2", "late", 1), 8080, 80);
        late.spec.task_template.container.image = "other".into();
        let objects: Vec<Object> = vec![
            network("ing", "ingress", "10.0.0.0/24", true).into(),
            web.clone().into(),
            networked_task("w1", &web, 1).into(),
        ];
        let v = settle(objects, &mut HashMap::new());
        assert_eq!(v.task("w1").unwrap().status.state, TaskState::Pending);
        // `late` slipped past the control API's check (two concurrent creates).
        let mut objects: Vec<Object> = v.objects().collect();
        objects.push(late.clone().into());
        objects.push(networked_task("l1", &late, 1).into());
        let v = settle(objects, &mut HashMap::new());
        let l1 = v.task("l1").unwrap();
        assert_eq!(l1.status.state, TaskState::New);
        assert_eq!(l1.status.err, "port '8080' is already in use by service 'web' (s1) as an ingress port");
        assert!(v.service("s2").unwrap().endpoint.is_none());
    }

    #[test]
    fn nodes_take_ingress_addresses_until_the_network_is_full() {
        let mut objects: Vec<Object> = vec![network("ing", "ingress", "10.0.0.0/29", true).into()];
        for i in 1..=6 {
            objects.push(crate::testing::node(&format!("n{i}"), &format!("h{i}")).into());
        }
        let view = MemoryStore::from_objects(objects);
        let p = plan(&view, Timestamp::now(), &mut HashMap::new(), 10);
        let got: Vec<&str> = p.nodes.iter().map(|n| n.attachments[0].addresses[0].as_str()).collect();
        assert_eq!(got, vec!["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]);
        assert!(p.ingress_full, "the sixth node finds none");
        let p = plan_with(&view, Timestamp::now(), &mut HashMap::new(), 10, false);
        assert!(p.nodes.is_empty() && !p.ingress_full, "not tried while known full");
    }
}
