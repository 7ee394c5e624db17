//! Hub -> edge -> sink with the real Node, in a deterministic in-memory world: messages are
//! delivered, shadow copies drain through XQDISCARD, and a dead edge's copies are resubmitted
//! through the other edge.

mod support;

use std::time::Duration;

use support::{World, hub_and_two_edges};
use xshadow_core::node::{NodeEvent, ResubmitReason};

#[test]
fn messages_reach_the_sink_and_shadow_copies_drain_after_a_heartbeat() {
    let mut world = World::new();
    hub_and_two_edges(&mut world);
    let msgs: Vec<(u64, &str)> = (1..=20).map(|i| (i, "bob")).collect();
    let client = world.add_client("hub", &msgs);
    let end = world.now + Duration::from_secs(5);
    world.run_until(end);
    assert_eq!(world.client(client).acknowledged.len(), 20);
    let delivered = world.delivered("sink");
    assert_eq!(delivered.len(), 20, "every message arrived: {delivered:?}");
    assert!(
        delivered.values().all(|&n| n == 1),
        "no duplicates without faults"
    );
    let hub = world.node("hub");
    assert_eq!(hub.shadow_queues().total(), 0, "copies were discarded");
    let shadowed = world
        .node_host("hub")
        .events
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Shadowed { .. }))
        .count();
    let discarded = world
        .node_host("hub")
        .events
        .iter()
        .filter(|(_, e)| matches!(e, NodeEvent::Discarded { .. }))
        .count();
    assert_eq!((shadowed, discarded), (20, 20));
    for edge in ["edge1", "edge2"] {
        assert!(
            world.node(edge).discard_ledger().is_empty(),
            "{edge} owes nothing"
        );
    }
    assert_eq!(world.node("hub").stats().queued, 0);
}

#[test]
fn a_dead_edge_copies_are_resubmitted_through_the_other_edge() {
    let mut world = World::new();
    hub_and_two_edges(&mut world);
    // The sink is unreachable at first, so edge1 holds the messages and the hub the copies.
    let sink = world.names["sink"];
    world.down.insert(sink);
    let msgs: Vec<(u64, &str)> = (1..=5).map(|i| (i, "bob")).collect();
    let client = world.add_client("hub", &msgs);
    let t = world.now + Duration::from_millis(100);
    world.run_until(t);
    assert_eq!(world.client(client).acknowledged.len(), 5);
    let copies = world.node("hub").stats().shadow_copies;
    assert_eq!(copies.get("edge1"), Some(&5), "{copies:?}");
    // edge1 dies for good (well past resubmit_after); the sink comes back.
    world.crash("edge1", 0, Duration::from_secs(3600));
    world.down.remove(&sink);
    let t = world.now + Duration::from_secs(3);
    world.run_until(t);
    let resubmitted = world
        .node_host("hub")
        .events
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
    assert_eq!(resubmitted, 5);
    let delivered = world.delivered("sink");
    assert_eq!(
        delivered.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "nothing lost"
    );
    assert_eq!(world.node("hub").shadow_queues().copies("edge1"), 0);
}

#[test]
fn an_edge_that_comes_back_empty_gets_its_copies_resubmitted_at_once() {
    let mut world = World::new();
    hub_and_two_edges(&mut world);
    let sink = world.names["sink"];
    world.down.insert(sink);
    let msgs: Vec<(u64, &str)> = (1..=3).map(|i| (i, "bob")).collect();
    world.add_client("hub", &msgs);
    let t = world.now + Duration::from_millis(100);
    world.run_until(t);
    // edge1 loses its disk and restarts quickly with a new database id.
    world.wipe("edge1", Duration::from_millis(50));
    world.down.remove(&sink);
    let t = world.now + Duration::from_secs(2);
    world.run_until(t);
    let events = &world.node_host("hub").events;
    let changed = events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                NodeEvent::Resubmitted {
                    reason: ResubmitReason::DatabaseIdChanged,
                    ..
                }
            )
        })
        .count();
    assert_eq!(changed, 3);
    assert_eq!(world.delivered("sink").len(), 3);
}

#[test]
fn a_crashed_hub_recovers_its_queue_and_copies_from_its_records() {
    let mut world = World::new();
    hub_and_two_edges(&mut world);
    let sink = world.names["sink"];
    world.down.insert(sink);
    let msgs: Vec<(u64, &str)> = (1..=4).map(|i| (i, "bob")).collect();
    let client = world.add_client("hub", &msgs);
    let t = world.now + Duration::from_millis(100);
    world.run_until(t);
    assert_eq!(world.client(client).acknowledged.len(), 4);
    world.crash("hub", 5, Duration::from_millis(10));
    let t = world.now + Duration::from_millis(50);
    world.run_until(t);
    assert_eq!(
        world.node("hub").shadow_queues().total(),
        4,
        "copies came back from the records"
    );
    world.down.remove(&sink);
    let t = world.now + Duration::from_secs(3);
    world.run_until(t);
    assert_eq!(world.delivered("sink").len(), 4);
    assert_eq!(world.node("hub").shadow_queues().total(), 0);
}
