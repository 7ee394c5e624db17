//! The node's sending side in the deterministic world: routes by recipient domain, sessions
//! that carry every message that arrives while they are open, messages that wait for a next
//! hop to come back, and the heartbeat failures the node reports.

mod support;

use std::time::Duration;

use support::{World, fast_config};
use xshadow_core::node::{NodeConfig, NodeEvent, ResubmitReason, Route};
use xshadow_core::session::ClientConfig;

/// sink-a and sink-b; an edge routing `a.test` to sink-a and everything else to sink-b; a hub
/// shadowing through the edge.
fn routed_world() -> World {
    let mut world = World::new();
    world.add_sink("sink-a");
    world.add_sink("sink-b");
    let mut edge = fast_config("edge");
    edge.next_hops = vec!["sink-b".into()];
    edge.routes = vec!["a.test,*.a.test=sink-a".parse().unwrap()];
    edge.offer_shadow = true;
    edge.shadow_peers = vec!["127.0.0.0/8".parse().unwrap()];
    world.add_node("edge", edge, 3);
    let mut hub = fast_config("hub");
    hub.next_hops = vec!["edge".into()];
    hub.shadow_next_hops = true;
    world.add_node("hub", hub, 7);
    world
}

fn stored_recipients(world: &World, sink: &str) -> Vec<Vec<String>> {
    world
        .sink(sink)
        .copies
        .iter()
        .map(|c| c.recipients.clone())
        .collect()
}

#[test]
fn recipients_of_two_domains_go_to_their_routes_and_the_shadow_hears_once_both_are_handled() {
    let mut world = routed_world();
    let sink_b = world.names["sink-b"];
    world.down.insert(sink_b);
    let to = vec![
        "bob@a.test".to_owned(),
        "carol@b.test".to_owned(),
        "dave@mx.a.test".to_owned(),
    ];
    let client = world.add_retrying_client(
        "hub",
        &[(1, to)],
        world.now,
        ClientConfig::new("client.example"),
        None,
    );
    let t = world.now + Duration::from_secs(2);
    world.run_until(t);
    assert_eq!(world.client(client).acknowledged, [1]);
    assert_eq!(
        stored_recipients(&world, "sink-a"),
        [vec!["bob".to_owned(), "dave".to_owned()]],
        "a.test and its subdomains went to sink-a, in one message"
    );
    assert!(world.sink("sink-b").copies.is_empty());
    // carol is still queued at the edge: the hub keeps its copy through many heartbeats.
    assert_eq!(world.node("hub").shadow_queues().copies("edge"), 1);
    assert_eq!(world.node("edge").stats().queued, 1);
    assert!(world.node("edge").discard_ledger().is_empty());

    world.down.remove(&sink_b);
    let t = world.now + Duration::from_secs(3);
    world.run_until(t);
    assert_eq!(
        stored_recipients(&world, "sink-b"),
        [vec!["carol".to_owned()]]
    );
    assert_eq!(world.sink("sink-a").copies.len(), 1, "nothing sent twice");
    assert_eq!(
        world.node("hub").shadow_queues().total(),
        0,
        "the discard came once every recipient was handled"
    );
    assert!(world.node("edge").discard_ledger().is_empty());
    assert_eq!(world.node("edge").stats().queued, 0);
}

#[test]
fn a_domain_no_route_serves_bounces_when_there_is_no_default_next_hop() {
    let mut world = World::new();
    world.add_sink("sink-a");
    let mut edge = fast_config("edge");
    edge.routes = vec![Route {
        domains: vec!["a.test".into()],
        next_hops: vec!["sink-a".into()],
    }];
    world.add_node("edge", edge, 3);
    let to = vec!["bob@a.test".to_owned(), "carol@elsewhere.test".to_owned()];
    world.add_retrying_client(
        "edge",
        &[(1, to)],
        world.now,
        ClientConfig::new("client.example"),
        None,
    );
    let t = world.now + Duration::from_secs(2);
    world.run_until(t);
    let copies = &world.sink("sink-a").copies;
    let delivered: Vec<_> = copies.iter().filter(|c| !c.null_sender).collect();
    let bounces: Vec<_> = copies.iter().filter(|c| c.null_sender).collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].recipients, ["bob"]);
    // The bounce to alice@example.org has no route either: it is dropped as a failed bounce.
    assert!(bounces.is_empty());
    let bounced = world
        .node_host("edge")
        .events
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Bounced { reason, .. } if reason.contains("no next hop")))
        .count();
    assert!(
        bounced >= 1,
        "carol's recipient bounced for want of a route"
    );
    assert_eq!(world.node("edge").stats().queued, 0);
}

/// An edge relaying to a sink; the client submits `count` messages, one new session each,
/// `spacing` apart. Returns the world and how many connections the sink saw.
fn spaced_submissions(count: u64, spacing: Duration, linger: Duration) -> (World, u64) {
    let mut world = World::new();
    world.add_sink("sink");
    let mut hub = fast_config("hub");
    hub.next_hops = vec!["sink".into()];
    hub.session_linger = linger;
    hub.max_ack_delay = Duration::ZERO;
    world.add_node("hub", hub, 7);
    for n in 0..count {
        let at = world.now + spacing * u32::try_from(n).unwrap();
        world.add_retrying_client(
            "hub",
            &[(n + 1, vec!["bob".to_owned()])],
            at,
            ClientConfig::new("client.example"),
            None,
        );
    }
    let t = world.now + spacing * u32::try_from(count).unwrap() + Duration::from_secs(3);
    world.run_until(t);
    assert_eq!(world.delivered("sink").len(), count as usize);
    let sessions = world.sink("sink").next_conn - 1;
    (world, sessions)
}

#[test]
fn a_lingering_session_carries_messages_that_arrive_while_it_is_open() {
    let spacing = Duration::from_millis(50);
    let (_, at_once) = spaced_submissions(10, spacing, Duration::ZERO);
    let (world, lingering) = spaced_submissions(10, spacing, Duration::from_millis(500));
    assert_eq!(
        at_once, 10,
        "without lingering, every message needs its own session"
    );
    assert_eq!(lingering, 1, "one session carried all ten");
    assert_eq!(world.node("hub").stats().connections, 0, "and it ended");
}

/// 40 messages arrive at an edge one by one over one session; how many sessions carry them on
/// to the sink with this linger.
fn onward_sessions(linger: Duration) -> u64 {
    let mut world = World::new();
    world.add_sink("sink");
    let mut edge = fast_config("edge");
    edge.next_hops = vec!["sink".into()];
    edge.session_linger = linger;
    world.add_node("edge", edge, 3);
    let msgs: Vec<(u64, &str)> = (1..=40).map(|i| (i, "bob")).collect();
    world.add_client("edge", &msgs);
    let t = world.now + Duration::from_secs(3);
    world.run_until(t);
    assert_eq!(world.delivered("sink").len(), 40);
    assert_eq!(
        world.node("edge").stats().connections,
        0,
        "every session ended"
    );
    world.sink("sink").next_conn - 1
}

#[test]
fn messages_that_arrive_while_a_session_sends_join_it() {
    let at_once = onward_sessions(Duration::ZERO);
    assert!(
        at_once < 40,
        "a message arriving before the session finished the previous one joins it ({at_once} sessions)"
    );
    let default = onward_sessions(NodeConfig::new("x").session_linger);
    assert_eq!(
        default, 1,
        "with the default linger one session carries all 40"
    );
}

/// hub -> edge -> sink, the hub shadowing through the edge; `tune` adjusts the hub.
fn hub_edge_sink(tune: impl FnOnce(&mut NodeConfig)) -> World {
    let mut world = World::new();
    world.add_sink("sink");
    let mut edge = fast_config("edge");
    edge.next_hops = vec!["sink".into()];
    edge.offer_shadow = true;
    edge.shadow_peers = vec!["127.0.0.0/8".parse().unwrap()];
    world.add_node("edge", edge, 3);
    let mut hub = fast_config("hub");
    hub.next_hops = vec!["edge".into()];
    hub.shadow_next_hops = true;
    tune(&mut hub);
    world.add_node("hub", hub, 7);
    world
}

/// Reproduces what stalled the crash run: the edge goes down, a message reaches the hub and
/// fails to connect, the edge comes back. The message goes as soon as a heartbeat finds the
/// edge up, not after the retry backoff (a minute here).
#[test]
fn a_message_that_found_its_hop_down_goes_as_soon_as_the_hop_is_seen_up_again() {
    let mut world = hub_edge_sink(|hub| {
        hub.retry.first = Duration::from_secs(60);
        hub.retry.max = Duration::from_secs(3600);
        // M1's session ends at once, so M2 needs a new connection.
        hub.session_linger = Duration::ZERO;
    });
    // M1 stays on the edge (its sink is down), so the hub holds a copy and heartbeats.
    world.set_down("sink", true);
    world.add_client("hub", &[(1, "bob")]);
    let t = world.now + Duration::from_millis(200);
    world.run_until(t);
    assert_eq!(world.node("hub").shadow_queues().copies("edge"), 1);
    // The edge is unreachable when M2 arrives.
    world.set_down("edge", true);
    world.add_client("hub", &[(2, "bob")]);
    let t = world.now + Duration::from_millis(300);
    world.run_until(t);
    assert_eq!(world.node("hub").stats().queued, 1, "M2 waits at the hub");
    world.set_down("edge", false);
    world.set_down("sink", false);
    let back = world.now;
    let t = world.now + Duration::from_secs(2);
    world.run_until(t);
    let delivered = world.delivered("sink");
    assert_eq!(
        delivered.keys().copied().collect::<Vec<_>>(),
        [1, 2],
        "M2 went within 2 s of the edge coming back, not after the 60 s backoff"
    );
    let m2 = world
        .sink("sink")
        .copies
        .iter()
        .find(|c| support::tag_of(&c.body) == Some(2))
        .unwrap();
    assert!(
        m2.at - back <= Duration::from_millis(500),
        "one heartbeat after"
    );
}

#[test]
fn each_counted_heartbeat_failure_is_reported_once_with_its_count() {
    let threshold = fast_config("hub").shadow.failure_threshold();
    let mut world = hub_edge_sink(|_| {});
    world.set_down("sink", true);
    let msgs: Vec<(u64, &str)> = (1..=3).map(|i| (i, "bob")).collect();
    world.add_client("hub", &msgs);
    let t = world.now + Duration::from_millis(150);
    world.run_until(t);
    assert_eq!(world.node("hub").shadow_queues().copies("edge"), 3);
    // The edge dies for good; more mail for it keeps failing to connect between heartbeats.
    world.crash("edge", 0, Duration::from_secs(3600));
    let more: Vec<(u64, &str)> = (4..=6).map(|i| (i, "bob")).collect();
    world.add_client("hub", &more);
    let t = world.now + Duration::from_secs(3);
    world.run_until(t);
    let events = &world.node_host("hub").events;
    let counts: Vec<u64> = events
        .iter()
        .filter_map(|(_, e)| match e {
            NodeEvent::HeartbeatFailed { failures, .. } => Some(*failures),
            _ => None,
        })
        .collect();
    assert_eq!(
        counts,
        (1..=threshold).collect::<Vec<_>>(),
        "one report per counted failure, up to the threshold"
    );
    let resubmitted = events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                NodeEvent::Resubmitted {
                    reason: ResubmitReason::PrimaryUnreachable,
                    ..
                }
            )
        })
        .count();
    assert_eq!(resubmitted, 3);
}
