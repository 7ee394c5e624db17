//! hub -> edge -> sink on loopback, both nodes on the mio binding with temp spools: messages
//! submitted through the handle and over SMTP arrive byte-identical, the hub keeps shadow
//! copies while the edge holds them, and the copies drain to zero after a heartbeat.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use support::{Client, TempDir, body_for, envelope, eventually, fast_config, settings, spawn_sink};

/// Splits a delivered body into its trace header block and the rest.
fn strip_received(body: &[u8]) -> (usize, &[u8]) {
    let mut rest = body;
    let mut headers = 0;
    while rest.starts_with(b"Received:") {
        headers += 1;
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            rest = &rest[end..];
            if !rest.starts_with(b"\t") {
                break;
            }
        }
    }
    (headers, rest)
}

#[test]
fn messages_arrive_byte_identical_and_shadow_copies_drain_after_a_heartbeat() {
    let (open_sink, gate) = mpsc::channel();
    let (sink_addr, inbox) = spawn_sink(Some(gate));
    let (edge_spool, hub_spool) = (TempDir::new("edge"), TempDir::new("hub"));

    let mut edge_config = fast_config("edge.test");
    edge_config.next_hops = vec![sink_addr.to_string()];
    edge_config.offer_shadow = true;
    edge_config.shadow_peers = vec!["127.0.0.0/8".parse().unwrap()];
    let edge = xshadow_mio::start(settings(edge_config, edge_spool.path())).unwrap();

    let mut hub_config = fast_config("hub.test");
    hub_config.next_hops = vec![edge.local_addr().to_string()];
    hub_config.shadow_next_hops = true;
    let hub = xshadow_mio::start(settings(hub_config, hub_spool.path())).unwrap();
    assert_ne!(hub.database_id(), edge.database_id());

    let mut sent = Vec::new();
    for i in 0..5 {
        let body = body_for(&format!("handle-{i}"));
        hub.handle().submit(envelope("bob"), body.clone()).unwrap();
        sent.push(body);
    }
    // A large one, so that sockets fill up and writes are partial.
    let mut big = body_for("big");
    for i in 0..60_000 {
        big.extend_from_slice(format!(".{i:08} filler line to fill socket buffers\r\n").as_bytes());
    }
    hub.handle().submit(envelope("carol"), big.clone()).unwrap();
    sent.push(big);
    let mut client = Client::connect(hub.local_addr()).unwrap();
    assert!(
        client
            .command("EHLO client.test")
            .unwrap()
            .starts_with("250")
    );
    for i in 0..5 {
        let body = body_for(&format!("smtp-{i}"));
        let reply = client.send("bob", &body).unwrap();
        assert!(reply.starts_with("250"), "{reply}");
        sent.push(body);
    }
    assert!(client.command("QUIT").unwrap().starts_with("221"));

    // The sink is not answering yet: the edge holds every message, the hub a copy of each.
    let copies = |node: &xshadow_mio::RunningNode| {
        node.handle()
            .stats()
            .unwrap()
            .shadow_copies
            .values()
            .sum::<usize>()
    };
    assert!(
        eventually(Duration::from_secs(10), || copies(&hub) == sent.len()),
        "the hub keeps a copy of every message: {:?}",
        hub.handle().stats()
    );
    assert!(inbox.lock().unwrap().is_empty());

    open_sink.send(()).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || inbox.lock().unwrap().len()
            >= sent.len()),
        "every message arrived: {} of {}",
        inbox.lock().unwrap().len(),
        sent.len()
    );
    {
        let inbox = inbox.lock().unwrap();
        assert_eq!(inbox.len(), sent.len(), "no duplicates");
        let mut got: Vec<&[u8]> = inbox
            .iter()
            .map(|m| {
                let (headers, content) = strip_received(&m.body);
                assert_eq!(headers, 2, "one Received header per node");
                content
            })
            .collect();
        let mut want: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "the content arrives byte-identical");
    }

    // The edge owes the hub discard events; the next heartbeat's XQDISCARD collects them.
    assert!(
        eventually(Duration::from_secs(10), || copies(&hub) == 0),
        "the shadow copies drain: {:?}",
        hub.handle().stats()
    );
    assert!(eventually(Duration::from_secs(5), || {
        let stats = edge.handle().stats().unwrap();
        stats.discard_events.values().sum::<usize>() == 0 && stats.queued == 0
    }));
    assert_eq!(hub.handle().stats().unwrap().queued, 0);

    hub.handle().stop();
    hub.wait().unwrap();
    edge.handle().stop();
    edge.wait().unwrap();
}
