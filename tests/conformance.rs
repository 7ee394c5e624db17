//! One set of SMTP scenarios, run against every runtime binding (tokio, mio, async-std under
//! async-std's and under smol's executor) and against a pure in-memory driver of `Node`: the
//! replies the client reads, the bytes the next hop reads and the node's events (seen through
//! `Settings::on_event`) must be the same everywhere. The bindings own sockets, timers and the
//! spool and nothing else, so any difference is a binding bug.
//!
//! What is normalized, because it legitimately differs between runs (see [`normalize`]):
//! - the date in each `Received:` header (the wall clock);
//! - the next hop's address in `NodeEvent::Sent` and `NodeEvent::Delivered` (each run has its
//!   own sink port; the in-memory driver has none).
//!
//! Nothing else: every node starts from an empty spool with the same seed ([`SEED`]), so the
//! database id in the XSHADOW reply and every id the node makes are the same on every
//! driver, and the client's peer address is 127.0.0.1 on all of them.
//!
//! Plus a mixed deployment: a tokio hub shadowing through a mio edge whose next hop is an
//! async-std node, which delivers to an `xshadow sink --runtime async-std` process (the
//! command's own binary, from `tests/common`); its Maildir must hold each message once, as
//! submitted.

#![forbid(unsafe_code)]

mod common;

use common::find;
#[path = "conformance/memory.rs"]
mod memory;
#[path = "conformance/runtimes.rs"]
mod runtimes;
#[path = "conformance/sink.rs"]
mod sink;

use std::time::Duration;

use xshadow::core::node::{IpNet, NodeConfig, NodeEvent};

/// The seed of every node in the scenarios.
pub const SEED: u64 = 0x5eed_c0ff_ee05;

/// One thing the scripted client does.
pub enum Step {
    /// Write these bytes (maybe several pipelined commands, maybe nothing), then read until
    /// this many more complete replies arrived.
    Send(&'static str, usize),
    /// Wait until the node emitted an event (named for messages) that the function accepts.
    AwaitEvent(&'static str, fn(&NodeEvent) -> bool),
    /// Read until the server closes the connection.
    AwaitClose,
}

/// A scripted session against an edge whose next hop is the capturing sink.
pub struct Scenario {
    /// The edge's configuration, given its next hop's address.
    pub config: fn(&str) -> NodeConfig,
    /// What the client does, from the moment it connected.
    pub steps: Vec<Step>,
    /// Messages the sink must have stored (and sessions ended) before the run ends.
    pub sink_messages: usize,
}

/// What one run produced, normalized.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The node's database id.
    pub database_id: String,
    /// Every byte the client read.
    pub replies: Vec<u8>,
    /// Every byte the sink read, per session, in the order the sessions ended.
    pub sink: Vec<Vec<u8>>,
    /// The node's events, in order.
    pub events: Vec<NodeEvent>,
}

/// Complete replies in `bytes`: lines whose code is followed by a space or nothing.
pub fn count_replies(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| line.ends_with(b"\r"))
        .filter(|line| line.len() == 4 || line.get(3) == Some(&b' '))
        .count()
}

/// Masks what differs between runs for legitimate reasons (see the file's documentation).
pub fn normalize(mut outcome: Outcome, hop: &str) -> Outcome {
    for event in &mut outcome.events {
        if let NodeEvent::Delivered { hop: h, .. } | NodeEvent::Sent { hop: h, .. } = event
            && &**h == hop
        {
            *h = "<next hop>".into();
        }
    }
    for session in &mut outcome.sink {
        *session = mask_received_dates(session);
    }
    outcome
}

/// Replaces the date that ends each `Received: ... (xshadow) ...;` header with `<date>`.
fn mask_received_dates(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = find(rest, b"(xshadow) with ESMTP id ") {
        let Some(semi) = find(&rest[at..], b";\r\n\t") else {
            break;
        };
        let date_start = at + semi + 4;
        let Some(date_len) = find(&rest[date_start..], b"\r\n") else {
            break;
        };
        out.extend_from_slice(&rest[..date_start]);
        out.extend_from_slice(b"<date>");
        rest = &rest[date_start + date_len..];
    }
    out.extend_from_slice(rest);
    out
}

fn loopback_net() -> IpNet {
    "127.0.0.0/8".parse().expect("a network")
}

/// An edge that offers XSHADOW to loopback and relays to `hop`, with no delayed
/// acknowledgement (its timing is not what these scenarios compare) and short timers.
fn edge(hop: &str) -> NodeConfig {
    let mut c = NodeConfig::new("edge.test");
    c.next_hops = vec![hop.to_owned()];
    c.offer_shadow = true;
    c.shadow_peers = vec![loopback_net()];
    c.max_ack_delay = Duration::ZERO;
    c.retry.first = Duration::from_millis(200);
    // Outbound sessions still linger for more work before QUIT, only not for long.
    c.session_linger = Duration::from_millis(200);
    c
}

/// The same edge for a stranger: nobody may shadow or relay through it.
fn closed_edge(hop: &str) -> NodeConfig {
    let mut c = edge(hop);
    c.shadow_peers.clear();
    c.relay_clients.clear();
    c
}

fn is_discard_queued(e: &NodeEvent) -> bool {
    matches!(e, NodeEvent::DiscardQueued { .. })
}

fn is_discards_confirmed(e: &NodeEvent) -> bool {
    matches!(e, NodeEvent::DiscardsConfirmed { .. })
}

/// A body whose lines begin with dots, as the client sends it (dot-stuffed, terminated).
const STUFFED_BODY: &str = "Subject: conformance\r\nX-Tag: scripted\r\n\r\n..leading dot\r\n..\r\n...two dots\r\nend\r\n.\r\n";

fn scripted() -> Scenario {
    Scenario {
        config: edge,
        steps: vec![
            Step::Send("", 1),
            Step::Send("EHLO client.test\r\n", 1),
            Step::Send("XSHADOW Y2xpZW50LnRlc3Q=\r\n", 1),
            Step::Send(
                "MAIL FROM:<alice@example.org> XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n",
                1,
            ),
            Step::Send("RCPT TO:<bob@example.net>\r\n", 1),
            Step::Send("DATA\r\n", 1),
            Step::Send(STUFFED_BODY, 1),
            // The edge delivers to the sink on its own time; wait for it so that XQDISCARD's
            // answer does not depend on a race.
            Step::AwaitEvent("DiscardQueued", is_discard_queued),
            Step::Send("XQDISCARD 50\r\n", 1),
            Step::Send("QUIT\r\n", 1),
            Step::AwaitClose,
        ],
        sink_messages: 1,
    }
}

fn pipelined() -> Scenario {
    Scenario {
        config: edge,
        steps: vec![
            Step::Send("", 1),
            Step::Send("EHLO client.test\r\n", 1),
            Step::Send("XSHADOW Y2xpZW50LnRlc3Q=\r\n", 1),
            Step::Send(
                "MAIL FROM:<carol@example.org> SIZE=120 XSHADOW=9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01\r\n\
                 RCPT TO:<dave@example.net>\r\n\
                 RCPT TO:<no domain>\r\n\
                 RCPT TO:<erin@example.net>\r\n\
                 DATA\r\n",
                5,
            ),
            Step::Send("Subject: pipelined\r\n\r\n.\r\n", 1),
            Step::AwaitEvent("DiscardQueued", is_discard_queued),
            Step::Send("NOOP\r\nXQDISCARD 50\r\nQUIT\r\n", 3),
            Step::AwaitClose,
        ],
        sink_messages: 1,
    }
}

fn refused() -> Scenario {
    Scenario {
        config: closed_edge,
        steps: vec![
            Step::Send("", 1),
            Step::Send("XQDISCARD 50\r\n", 1),
            Step::Send("EHLO client.test\r\n", 1),
            Step::Send("XSHADOW Y2xpZW50LnRlc3Q=\r\n", 1),
            Step::Send(
                "MAIL FROM:<mallory@example.org> XSHADOW=0e5b6b4e-1c55-4f3c-9d1e-2b7a5d8c9f00\r\n",
                1,
            ),
            Step::Send("MAIL FROM:<mallory@example.org>\r\n", 1),
            Step::Send("RCPT TO:<victim@example.net>\r\n", 1),
            Step::Send("DATA\r\n", 1),
            Step::Send("FROB the widget\r\n", 1),
            Step::Send("RSET\r\nQUIT\r\n", 2),
            Step::AwaitClose,
        ],
        sink_messages: 0,
    }
}

/// Runs `scenario` on the in-memory driver and on every binding; each must match the first.
fn same_everywhere(scenario: &Scenario) -> Outcome {
    let reference = memory::run(scenario);
    for binding in runtimes::BINDINGS {
        let outcome = runtimes::run(binding, scenario);
        if outcome != reference {
            panic!(
                "{} differs from the in-memory driver\n--- memory ---\n{}\n--- {} ---\n{}",
                binding.name,
                show(&reference),
                binding.name,
                show(&outcome)
            );
        }
    }
    reference
}

/// An outcome as readable text, for failure messages.
fn show(o: &Outcome) -> String {
    let mut s = format!(
        "database id: {}\nreplies:\n{}",
        o.database_id,
        String::from_utf8_lossy(&o.replies)
    );
    for (i, session) in o.sink.iter().enumerate() {
        s += &format!("sink session {i}:\n{}", String::from_utf8_lossy(session));
    }
    for e in &o.events {
        s += &format!("event: {e:?}\n");
    }
    s
}

fn replies(o: &Outcome) -> Vec<String> {
    String::from_utf8_lossy(&o.replies)
        .split("\r\n")
        .map(str::to_owned)
        .collect()
}

#[test]
fn scripted_shadow_session_is_identical_on_every_runtime() {
    let o = same_everywhere(&scripted());
    let r = replies(&o);
    assert!(r.contains(&format!("250 {}", o.database_id)), "{r:?}");
    assert!(r.iter().any(|l| l.starts_with("354 ")), "{r:?}");
    assert!(
        r.contains(&"250 3f2504e0-4f89-41d3-9a0c-0305e82c3301".to_owned()),
        "XQDISCARD returns the delivered message's id: {r:?}"
    );
    assert!(r.iter().any(|l| l.starts_with("221 ")), "{r:?}");
    assert_eq!(o.sink.len(), 1, "one session to the sink");
    let sink = String::from_utf8_lossy(&o.sink[0]);
    assert!(sink.starts_with("EHLO edge.test\r\n"), "{sink}");
    assert!(sink.contains("RCPT TO:<bob@example.net>"), "{sink}");
    assert!(
        sink.contains("\r\n..leading dot\r\n..\r\n...two dots\r\nend\r\n.\r\n"),
        "the body reaches the sink dot-stuffed again: {sink}"
    );
    assert!(sink.ends_with("QUIT\r\n"), "{sink}");
    let kinds: Vec<&str> = o.events.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "Received",
            "Sent",
            "DiscardQueued",
            "Delivered",
            "DiscardsConfirmed"
        ],
        "{:?}",
        o.events
    );
}

#[test]
fn pipelined_shadow_session_is_identical_on_every_runtime() {
    let o = same_everywhere(&pipelined());
    let r = replies(&o);
    assert!(
        r.contains(&"250 9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01".to_owned()),
        "{r:?}"
    );
    assert!(
        r.iter().filter(|l| l.starts_with("5")).count() == 1,
        "exactly the bad recipient is refused: {r:?}"
    );
    let sink = String::from_utf8_lossy(&o.sink[0]);
    assert!(
        sink.contains("RCPT TO:<dave@example.net>") && sink.contains("RCPT TO:<erin@example.net>"),
        "{sink}"
    );
    assert!(o.events.iter().any(is_discards_confirmed), "{:?}", o.events);
}

#[test]
fn refused_commands_are_identical_on_every_runtime() {
    let o = same_everywhere(&refused());
    let r = replies(&o);
    assert!(
        r.iter().any(|l| l.starts_with("550 5.7.1")),
        "XSHADOW and relaying are refused to a stranger: {r:?}"
    );
    assert!(r.iter().any(|l| l.starts_with("500 ")), "{r:?}");
    assert!(o.sink.is_empty(), "nothing is relayed");
    assert!(o.events.is_empty(), "{:?}", o.events);
}

fn kind(e: &NodeEvent) -> &'static str {
    match e {
        NodeEvent::Received { .. } => "Received",
        NodeEvent::Sent { .. } => "Sent",
        NodeEvent::Shadowed { .. } => "Shadowed",
        NodeEvent::Delivered { .. } => "Delivered",
        NodeEvent::Deferred { .. } => "Deferred",
        NodeEvent::Bounced { .. } => "Bounced",
        NodeEvent::Discarded { .. } => "Discarded",
        NodeEvent::AutoDiscarded { .. } => "AutoDiscarded",
        NodeEvent::Resubmitted { .. } => "Resubmitted",
        NodeEvent::DiscardQueued { .. } => "DiscardQueued",
        NodeEvent::DiscardsConfirmed { .. } => "DiscardsConfirmed",
        NodeEvent::HeartbeatFailed { .. } => "HeartbeatFailed",
    }
}

#[cfg(all(feature = "mio", feature = "async-std"))]
#[test]
fn tokio_hub_shadows_through_a_mio_edge_to_an_async_std_node() {
    runtimes::mixed_deployment();
}
