//! Shadow redundancy with real processes: `xshadow hub` → `xshadow edge` → `xshadow sink`,
//! watched through `xshadow queue` on the live spools. Every scenario runs with the processes
//! on each runtime binding (`--runtime tokio|mio|async-std`): one test per runtime.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;

const FROM: &str = "alice@example.org";
const TO: &str = "bob@example.net";

fn message(tag: &str, n: usize) -> Vec<u8> {
    format!(
        "Message-ID: <{tag}.{n}@shadow.test>\r\nFrom: <{FROM}>\r\nTo: <{TO}>\r\nSubject: shadow {n}\r\n\r\nbody of message {n}\r\n.leading dot\r\n"
    )
    .into_bytes()
}

/// Sends `count` messages over one connection; every one must be accepted.
fn send_all(addr: std::net::SocketAddr, tag: &str, count: usize) {
    let mut smtp = Smtp::connect(addr, Duration::from_secs(30)).expect("connect to the hub");
    for n in 0..count {
        let reply = smtp.send_message(FROM, TO, &message(tag, n)).expect("send");
        assert_eq!(reply.code, 250, "message {n}: {reply:?}");
    }
    smtp.quit();
}

/// Message-IDs in a Maildir's new/, with how often each arrived.
fn delivered(maildir: &std::path::Path) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for (_, bytes) in read_files(&maildir.join("new")) {
        let text = String::from_utf8_lossy(&bytes);
        if let Some(line) = text.lines().find(|l| l.starts_with("Message-ID: ")) {
            *counts.entry(line[12..].trim().to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

on_every_runtime!(
    copies_are_held_while_the_edge_cannot_deliver_and_dropped_at_the_next_heartbeat =>
    the_hub_holds_shadow_copies_while_the_edge_cannot_deliver_and_none_after_the_next_heartbeat_on_tokio,
    the_hub_holds_shadow_copies_while_the_edge_cannot_deliver_and_none_after_the_next_heartbeat_on_mio,
    the_hub_holds_shadow_copies_while_the_edge_cannot_deliver_and_none_after_the_next_heartbeat_on_async_std,
);

fn copies_are_held_while_the_edge_cannot_deliver_and_dropped_at_the_next_heartbeat(
    runtime: Runtime,
) {
    let scratch = Scratch::new(&format!("shadow-e2e-{runtime}"));
    let maildir = scratch.join("maildir");
    let (sink, sink_addr) = start_xshadow_sink(&scratch, &maildir, runtime);
    let opts = NodeOpts::on(runtime); // 300ms heartbeats, no delayed acks
    let edge_spool = scratch.join("edge-spool");
    let (mut edge, edge_addr) = start_node("edge", &scratch.join("edge.log"), runtime, |p| {
        edge_cmd("edge1.test", p, &edge_spool, sink_addr, &opts)
    });
    let hub_spool = scratch.join("hub-spool");
    let (mut hub, hub_addr) = start_node("hub", &scratch.join("hub.log"), runtime, |p| {
        hub_cmd("hub.test", p, &hub_spool, &[edge_addr], &opts)
    });

    // The edge's next hop is frozen (SIGSTOP): the kernel still accepts the edge's
    // connection, but nothing is delivered, so the edge keeps the messages and the hub its
    // copies.
    sink.signal("STOP");
    const N: usize = 30;
    send_all(hub_addr, "frozen", N);
    let hub_view = wait_for(
        "the hub to hold a shadow copy of every message",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let v = queue(&hub_spool);
            (v.copies == N as u64).then_some(v)
        },
    );
    let primary = edge_addr.to_string();
    assert_eq!(
        hub_view.copies_by_primary.get(&primary),
        Some(&(N as u64)),
        "copies per primary:\n{}",
        hub_view.text
    );
    assert_eq!(
        hub_view.queued, 0,
        "the hub handed everything to the edge:\n{}",
        hub_view.text
    );
    let edge_view = queue(&edge_spool);
    assert_eq!(
        edge_view.queued, N as u64,
        "the edge still holds every message:\n{}",
        edge_view.text
    );
    assert_eq!(edge_view.copies, 0);

    // Several heartbeats later the copies are still there: the edge has not delivered.
    std::thread::sleep(Duration::from_millis(1500));
    let v = queue(&hub_spool);
    assert_eq!(
        v.copies, N as u64,
        "copies must stay while the primary holds the messages:\n{}",
        v.text
    );
    assert!(delivered(&maildir).is_empty());

    // Thaw the sink: the edge delivers, queues discard events, and the next heartbeat's
    // XQDISCARD lets the hub drop its copies.
    sink.signal("CONT");
    let thawed = Instant::now();
    let counts = wait_for(
        "every message in the Maildir",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let c = delivered(&maildir);
            (c.len() == N).then_some(c)
        },
    );
    let all_delivered = thawed.elapsed();
    for n in 0..N {
        assert_eq!(
            counts.get(&format!("<frozen.{n}@shadow.test>")),
            Some(&1),
            "message {n} exactly once"
        );
    }
    let gone = wait_for(
        "the hub to discard its copies",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let v = queue(&hub_spool);
            (v.copies == 0).then_some(thawed.elapsed())
        },
    );
    eprintln!(
        "delivered {N} after {all_delivered:?}, copies gone after {gone:?} (heartbeat 300ms)"
    );
    assert!(
        gone < all_delivered + Duration::from_secs(3),
        "the copies outlived delivery by more than a few heartbeats: {gone:?} vs {all_delivered:?}"
    );
    let edge_view = wait_for(
        "the edge's queue and discard events to empty",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let v = queue(&edge_spool);
            (v.queued == 0 && v.discard_events == 0).then_some(v)
        },
    );
    assert_eq!(edge_view.copies, 0);

    // Each node prepended one Received header, and the sink its trace headers; the content
    // after them is what was sent.
    for (path, bytes) in read_files(&maildir.join("new")) {
        let marker = b"Message-ID: <frozen.";
        let content = from_marker(&bytes, marker)
            .unwrap_or_else(|| panic!("{} has no marker", path.display()));
        let n: usize = String::from_utf8_lossy(&content[marker.len()..])
            .split('@')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("message number");
        assert_eq!(
            content,
            &message("frozen", n)[..],
            "{}",
            describe_difference(&message("frozen", n), content)
        );
        let trace = String::from_utf8_lossy(before_marker(&bytes, marker)).into_owned();
        assert!(
            trace.starts_with(&format!(
                "Return-Path: <{FROM}>\r\nDelivered-To: {TO}\r\nReceived: from edge1.test by "
            )),
            "{trace}"
        );
        assert_eq!(
            trace.matches("by edge1.test (xshadow)").count(),
            1,
            "{trace}"
        );
        assert_eq!(trace.matches("by hub.test (xshadow)").count(), 1, "{trace}");
    }

    // SIGTERM: both nodes stop gracefully with exit code 0.
    hub.signal("TERM");
    edge.signal("TERM");
    let hub_status = hub
        .wait_exit(Duration::from_secs(20))
        .expect("the hub exits on SIGTERM");
    let edge_status = edge
        .wait_exit(Duration::from_secs(20))
        .expect("the edge exits on SIGTERM");
    assert!(hub_status.success(), "hub: {hub_status:?}");
    assert!(edge_status.success(), "edge: {edge_status:?}");
    drop(sink);
}

on_every_runtime!(
    copies_of_a_dead_edge_are_resubmitted_through_another =>
    the_hub_resubmits_the_copies_of_an_edge_that_stays_dead_through_another_edge_on_tokio,
    the_hub_resubmits_the_copies_of_an_edge_that_stays_dead_through_another_edge_on_mio,
    the_hub_resubmits_the_copies_of_an_edge_that_stays_dead_through_another_edge_on_async_std,
);

fn copies_of_a_dead_edge_are_resubmitted_through_another(runtime: Runtime) {
    let scratch = Scratch::new(&format!("shadow-resubmit-{runtime}"));
    let maildir = scratch.join("maildir");
    let (sink, sink_addr) = start_xshadow_sink(&scratch, &maildir, runtime);
    let opts = NodeOpts {
        resubmit_after: "2s",
        ..NodeOpts::on(runtime)
    };
    let (spool1, spool2, hub_spool) = (
        scratch.join("edge1-spool"),
        scratch.join("edge2-spool"),
        scratch.join("hub-spool"),
    );
    let (mut edge1, edge1_addr) = start_node("edge1", &scratch.join("edge1.log"), runtime, |p| {
        edge_cmd("edge1.test", p, &spool1, sink_addr, &opts)
    });
    let (_edge2, edge2_addr) = start_node("edge2", &scratch.join("edge2.log"), runtime, |p| {
        edge_cmd("edge2.test", p, &spool2, sink_addr, &opts)
    });
    let (_hub, hub_addr) = start_node("hub", &scratch.join("hub.log"), runtime, |p| {
        hub_cmd("hub.test", p, &hub_spool, &[edge1_addr, edge2_addr], &opts)
    });

    // The hub prefers edge1; with the sink frozen, edge1 holds everything and the hub the
    // copies. Then edge1 dies for good (kill -9) with every message in it.
    sink.signal("STOP");
    const N: usize = 20;
    send_all(hub_addr, "orphan", N);
    wait_for(
        "the hub's copies on edge1",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let v = queue(&hub_spool);
            (v.copies_by_primary.get(&edge1_addr.to_string()) == Some(&(N as u64))).then_some(())
        },
    );
    edge1.kill9();
    let killed = Instant::now();
    sink.signal("CONT");

    // After resubmit-after (2s) of failed heartbeats the hub takes the primary role back and
    // sends its copies through edge2.
    let counts = wait_for(
        "every message through edge2",
        Duration::from_secs(40),
        Duration::from_millis(100),
        || {
            let c = delivered(&maildir);
            (c.len() == N).then_some(c)
        },
    );
    eprintln!(
        "resubmitted and delivered {} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    // The hub counts resubmit-after from its last successful contact with edge1, which came
    // up to one heartbeat (300 ms) before the kill: that is the earliest allowed.
    assert!(
        killed.elapsed() >= Duration::from_millis(2000 - 300),
        "resubmitted before resubmit-after from the last contact"
    );
    for n in 0..N {
        assert_eq!(counts.get(&format!("<orphan.{n}@shadow.test>")), Some(&1));
    }
    for (_, bytes) in read_files(&maildir.join("new")) {
        let trace = String::from_utf8_lossy(before_marker(&bytes, b"Message-ID: "));
        assert!(trace.contains("by edge2.test (xshadow)"), "{trace}");
    }
    wait_for(
        "the hub's copies to go",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let v = queue(&hub_spool);
            (v.copies == 0 && v.queued == 0).then_some(())
        },
    );
}
