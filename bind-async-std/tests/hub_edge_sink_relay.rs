//! A hub shadowing through an edge to a sink, on loopback with real spools, under async-std's
//! executor and under smol's: messages submitted locally and over SMTP arrive byte-identical,
//! the hub's shadow copies drain after a heartbeat, and a graceful stop exits.

mod support;

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use support::{
    ASYNC_STD, Runtime, SMOL, Sink, TempDir, body, envelope, eventually, fast_config, loopback,
    smtp_send, start, tag_of, within, without_trace,
};

async fn shadow_copies(node: &xshadow_async_std::NodeHandle) -> usize {
    let stats = node.stats().await.expect("running");
    stats.shadow_copies.values().sum()
}

async fn relay(rt: Runtime) -> io::Result<()> {
    let spools = [TempDir::new("edge"), TempDir::new("hub")];
    // The sink's port is open from the start but nobody accepts until the hub holds its
    // copies, so the shadow copies are seen before they drain.
    let sink_listener = std::net::TcpListener::bind(loopback())?;
    let sink_addr = sink_listener.local_addr()?;
    let sink = Sink::default();

    let mut c = fast_config("edge.test");
    c.next_hops = vec![sink_addr.to_string()];
    c.offer_shadow = true;
    c.shadow_peers = vec!["127.0.0.0/8".parse().expect("network")];
    let edge = start(c, loopback(), &spools[0].0).await?;
    let mut c = fast_config("hub.test");
    c.next_hops = vec![edge.local_addr().to_string()];
    c.shadow_next_hops = true;
    let hub = start(c, loopback(), &spools[1].0).await?;
    let hub_database_id = hub.database_id().to_owned();
    let (hub_handle, edge_handle) = (hub.handle(), edge.handle());

    let mut sent = BTreeMap::new();
    for i in 0..5 {
        let tag = format!("{}-local{i}", rt.name);
        let content = body(&tag);
        hub_handle.submit(envelope(), content.clone()).await?;
        sent.insert(tag, content);
    }
    let mut sessions = Vec::new();
    for session in ["a", "b"] {
        let bodies: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                let tag = format!("{}-smtp{session}{i}", rt.name);
                let content = body(&tag);
                sent.insert(tag, content.clone());
                content
            })
            .collect();
        sessions.push((rt.spawn)(Box::pin(smtp_send(hub.local_addr(), bodies))));
    }
    for session in sessions {
        within(20, "an SMTP submission", session).await?;
    }

    let total = sent.len();
    eventually(
        20,
        "the hub holds a shadow copy of every message",
        || async { shadow_copies(&hub_handle).await == total },
    )
    .await;
    sink.serve(sink_listener);
    eventually(20, "every message reaches the sink", || async {
        sink.count() >= total
    })
    .await;
    let delivered = sink.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), total, "no duplicates");
    let mut seen = BTreeMap::new();
    for content in &delivered {
        let tag = tag_of(content).expect("a tagged message");
        let original = sent.get(&tag).expect("a message we sent");
        assert!(
            without_trace(content) == original.as_slice(),
            "{tag} arrived changed"
        );
        *seen.entry(tag).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");

    eventually(
        10,
        "the hub's shadow copies drain after a heartbeat",
        || async { shadow_copies(&hub_handle).await == 0 },
    )
    .await;
    eventually(10, "the edge owes no discard events", || async {
        let stats = edge_handle.stats().await.expect("running");
        stats.discard_events.values().sum::<usize>() == 0 && stats.queued == 0
    })
    .await;

    let stopping = Instant::now();
    hub_handle.stop();
    edge_handle.stop();
    within(10, "the hub stops", hub.wait()).await?;
    within(10, "the edge stops", edge.wait()).await?;
    // Idle nodes have no sessions to wait for: they stop well before the 2 s grace ends.
    let took = stopping.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(hub_handle.submit(envelope(), body("late")).await.is_err());

    // The spool was flushed and unlocked: the hub comes back with its database id.
    let hub = start(fast_config("hub.test"), loopback(), &spools[1].0).await?;
    assert_eq!(hub.database_id(), hub_database_id);
    let stats = hub.handle().stats().await?;
    assert_eq!((stats.queued, stats.in_flight), (0, 0));
    hub.handle().stop();
    within(10, "the restarted hub stops", hub.wait()).await
}

#[test]
fn messages_arrive_byte_identical_and_shadow_copies_drain_under_async_std() {
    (ASYNC_STD.block_on)(Box::pin(relay(ASYNC_STD))).unwrap();
}

#[test]
fn messages_arrive_byte_identical_and_shadow_copies_drain_under_smol() {
    (SMOL.block_on)(Box::pin(relay(SMOL))).unwrap();
}
