//! `Node` as a stateful target: a node (a hub shadowing through two edges, an edge offering
//! XSHADOW, one that does both, or one without next hops) fed an `arbitrary` script of
//! operations, as a driver would: connections accepted from a few peers (a relay client, a
//! shadow peer, a stranger, IPv6 and IPv4-mapped loopback), bytes on them (raw, remapped into
//! command or reply lines, canned protocol steps, discard ids echoing the `XSHADOW=` ids the
//! node sent), peers closing, results for the node's `Connect`s (up or failed, in any order),
//! `Persisted` for its tokens (out of order, late, never, or unknown), local submissions, and
//! virtual time advanced to fire timers.
//!
//! Input: `arbitrary` decodes the node's configuration, then up to 256 operations.
//!
//! Invariants: nothing panics (the node's own `debug_assert`s included: it never answers a
//! question its sessions did not ask); bytes are fed only while `may_read` says so; each step
//! emits a bounded number of outputs (at most 4096) and bytes (at most 4 MiB); `Connect`
//! names a new connection to a configured next hop; `Transmit` goes only to a connection that
//! is open (an outbound one once connected); `Close` comes once per connection and nothing
//! after it; `Persist` tokens are new and increasing, and no batch is empty; a peer's close
//! is answered with `Close` in the same step; after `handle_timeout(now)` the timers due at
//! `now` are handled within a few calls (no timer stays due: a driver would spin); early or
//! repeated `handle_timeout` calls are harmless.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use xshadow_core::node::{ConnId, Input, Node, NodeConfig, Output};
use xshadow_core::session::{Envelope, Recipient};
use xshadow_core::wire::{ForwardPath, MailParams, Mailbox, RcptParams, ReversePath};
use xshadow_fuzz::{alphabet, remap};

/// The most operations per run.
const MAX_OPS: usize = 256;
/// The most connections open at once (every timer call visits each).
const MAX_OPEN: usize = 24;
/// The most outputs one call may produce.
const MAX_OUTPUTS_PER_STEP: usize = 4096;
/// The most bytes one call may transmit.
const MAX_BYTES_PER_STEP: usize = 4 << 20;

#[derive(Debug, Arbitrary)]
enum Role {
    /// Next hops edge1 and edge2, shadowed through.
    Hub,
    /// Next hop sink; offers XSHADOW to 127/8 and 10/8.
    Edge,
    /// Next hop edge1, shadowed through; offers XSHADOW to 10/8.
    Both,
    /// No next hop: every message bounces.
    Lonely,
}

#[derive(Debug, Arbitrary)]
struct Setup {
    role: Role,
    /// Timers of a test world (200 ms heartbeats, 100 ms retries) instead of the defaults.
    fast: bool,
    /// Delayed acknowledgement of 30 s (PROTOCOL.md §8) instead of none.
    delayed_ack: bool,
    /// A memory budget of a few KiB.
    small_budget: bool,
    /// One message per session, one session per hop.
    narrow: bool,
    /// Small server limits (line, size, recipients, errors).
    small_limits: bool,
    /// A route sends `example.net` (every recipient the script names) to its own hop.
    routed: bool,
    /// Outbound sessions end as soon as they are idle instead of lingering.
    no_linger: bool,
    seed: u64,
}

#[derive(Debug, Arbitrary)]
enum Peer {
    /// 127.0.0.1: may relay (and shadow through an edge).
    Loopback,
    /// 10.0.0.7: a shadow peer of an edge.
    Shadow,
    /// 192.0.2.1: neither.
    Stranger,
    /// ::1.
    Ipv6,
    /// ::ffff:127.0.0.1.
    Mapped,
}

#[derive(Debug, Arbitrary)]
enum Bytes {
    Raw(Vec<u8>),
    /// Remapped into client command tokens.
    Commands(Vec<u8>),
    /// Remapped into server reply tokens.
    Replies(Vec<u8>),
    /// A canned step of a client's session (see `CLIENT`).
    Client(u8),
    /// A canned server reply (see `SERVER`).
    Server(u8),
    /// `250-` lines naming the last `n` XSHADOW= ids the node sent (then `250 ` ...).
    DiscardIds(u8),
}

#[derive(Debug, Arbitrary)]
enum Advance {
    Millis(u16),
    Secs(u16),
    Hours(u8),
    /// To `poll_timeout()`.
    ToNext,
}

#[derive(Debug, Arbitrary)]
enum Op {
    Accept(Peer),
    Send { conn: u8, bytes: Bytes },
    Close { conn: u8 },
    Connected { which: u8 },
    ConnectFailed { which: u8 },
    Persisted { which: u8 },
    PersistAll,
    PersistUnknown(u64),
    Submit { recipients: u8, big: bool },
    Timeout(Advance),
}

/// Canned client steps, in the order of a shadowed session.
const CLIENT: &[&[u8]] = &[
    b"EHLO hub1.example\r\n",
    b"XSHADOW aHViMS5leGFtcGxl\r\n",
    b"MAIL FROM:<alice@example.org> XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n\
      RCPT TO:<bob@example.net>\r\nDATA\r\n",
    b"Subject: hi\r\n\r\nHello\r\n.\r\n",
    b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.net>\r\n\
      BDAT 5 LAST\r\nhello",
    b"XQDISCARD 50\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"MAIL FROM:<> \r\nRCPT TO:<postmaster>\r\nDATA\r\n",
    b"EHLO hub1.example\r\nXSHADOW aHViMS5leGFtcGxl\r\nXQDISCARD 1\r\nNOOP\r\n",
];

/// Canned server replies, in the order of a shadowed session with pipelining and CHUNKING.
const SERVER: &[&[u8]] = &[
    b"220 edge1.example ESMTP xshadow\r\n",
    b"250-edge1.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 36700160\r\n250 XSHADOW\r\n",
    b"250 X+QUj+rOf0ag5pssHT5PUA==\r\n",
    b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.6.0 Queued mail for delivery\r\n",
    b"251 OK, no discard events\r\n",
    b"221 2.0.0 Bye\r\n",
    b"250-edge1.example\r\n250 XSHADOW\r\n",
    b"354 Start mail input\r\n",
    b"250 2.6.0 Queued mail for delivery\r\n",
    b"250 NEW+database+id==\r\n",
    b"421 4.4.2 Closing\r\n",
    b"451 4.3.0 Try again later\r\n",
    b"550 5.1.1 No such user\r\n",
    b"250-edge1.example\r\n250 PIPELINING\r\n",
    b"502 5.3.3 Command not implemented\r\n",
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let mut world = World::new(&setup);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        world.op(op);
    }
    world.finish();
});

fn config(setup: &Setup) -> NodeConfig {
    let net = |s: &str| s.parse().expect("a valid network");
    let mut c = match setup.role {
        Role::Hub => {
            let mut c = NodeConfig::new("hub1.example");
            c.next_hops = vec!["edge1".into(), "edge2".into()];
            c.shadow_next_hops = true;
            c
        }
        Role::Edge => {
            let mut c = NodeConfig::new("edge1.example");
            c.next_hops = vec!["sink".into()];
            c.offer_shadow = true;
            c.shadow_peers = vec![net("127.0.0.0/8"), net("10.0.0.0/8")];
            c
        }
        Role::Both => {
            let mut c = NodeConfig::new("mid.example");
            c.next_hops = vec!["edge1".into()];
            c.shadow_next_hops = true;
            c.offer_shadow = true;
            c.shadow_peers = vec![net("10.0.0.0/8")];
            c
        }
        Role::Lonely => NodeConfig::new("alone.example"),
    };
    if setup.fast {
        c.shadow.heartbeat_interval = Duration::from_millis(200);
        c.shadow.resubmit_after = Duration::from_millis(1000);
        c.shadow.auto_discard = Duration::from_secs(3600);
        c.retry.first = Duration::from_millis(100);
        c.retry.max = Duration::from_millis(400);
        c.retry.lifetime = Duration::from_secs(3600);
    }
    c.max_ack_delay = if setup.delayed_ack {
        Duration::from_secs(30)
    } else {
        Duration::ZERO
    };
    if setup.small_budget {
        c.memory_budget = 4096;
    }
    if setup.narrow {
        c.max_messages_per_session = 1;
        c.max_connections_per_hop = 1;
    }
    if setup.routed {
        c.routes = vec![
            "example.net,*.example.net=routed"
                .parse()
                .expect("a valid route"),
        ];
    }
    if setup.no_linger {
        c.session_linger = Duration::ZERO;
    }
    if setup.small_limits {
        c.server.max_line = 80;
        c.server.max_message_size = 300;
        c.server.max_recipients = 2;
        c.server.max_errors = 3;
        c.server.max_pending_output = 200;
    }
    c
}

/// What the driver knows of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Inbound,
    /// Asked for with `Connect`, no result reported yet.
    Connecting,
    Outbound,
    /// Failed or reported closed by the driver; the node's `Close` may still come.
    Gone,
}

struct World {
    node: Node,
    now: Instant,
    hops: Vec<String>,
    conns: BTreeMap<ConnId, Conn>,
    /// Connections the node closed with `Output::Close`.
    closed: BTreeSet<ConnId>,
    tokens: Vec<u64>,
    last_token: u64,
    /// XSHADOW= ids the node sent to its next hops, oldest first.
    shadow_ids: Vec<String>,
}

impl World {
    fn new(setup: &Setup) -> Self {
        let config = config(setup);
        let hops: Vec<String> = config
            .next_hops
            .iter()
            .chain(config.routes.iter().flat_map(|r| &r.next_hops))
            .cloned()
            .collect();
        let now = Instant::now();
        let node = Node::new(config, setup.seed, now, 1_700_000_000_000);
        let mut world = Self {
            node,
            now,
            hops,
            conns: BTreeMap::new(),
            closed: BTreeSet::new(),
            tokens: Vec::new(),
            last_token: 0,
            shadow_ids: Vec::new(),
        };
        world.drain("new");
        world
    }

    /// The open connection `pick` names among those in `states`.
    fn pick(&self, pick: u8, states: &[Conn]) -> Option<ConnId> {
        let open: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(c, s)| states.contains(s) && !self.closed.contains(c))
            .map(|(c, _)| *c)
            .collect();
        (!open.is_empty()).then(|| open[usize::from(pick) % open.len()])
    }

    fn op(&mut self, op: Op) {
        match op {
            Op::Accept(peer) => {
                let open = self
                    .conns
                    .keys()
                    .filter(|c| !self.closed.contains(c))
                    .count();
                if open >= MAX_OPEN {
                    return;
                }
                let ip = match peer {
                    Peer::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Peer::Shadow => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
                    Peer::Stranger => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                    Peer::Ipv6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
                    Peer::Mapped => IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
                };
                let conn = self.node.accept(ip, self.now);
                assert!(!self.conns.contains_key(&conn), "accept reused {conn:?}");
                self.conns.insert(conn, Conn::Inbound);
                self.drain("accept");
            }
            Op::Send { conn, bytes } => {
                let Some(conn) = self.pick(conn, &[Conn::Inbound, Conn::Outbound]) else {
                    return;
                };
                if !self.node.may_read(conn) {
                    return;
                }
                let data = self.bytes(bytes);
                self.now += Duration::from_micros(10);
                self.node
                    .handle_input(Input::Received(conn, &data), self.now);
                self.drain("received");
            }
            Op::Close { conn } => {
                let Some(conn) = self.pick(conn, &[Conn::Inbound, Conn::Outbound]) else {
                    return;
                };
                self.conns.insert(conn, Conn::Gone);
                self.node.handle_input(Input::Closed(conn), self.now);
                self.drain("closed");
                assert!(
                    self.closed.contains(&conn),
                    "the peer closed {conn:?} and the node did not close it"
                );
            }
            Op::Connected { which } => {
                let Some(conn) = self.pick(which, &[Conn::Connecting]) else {
                    return;
                };
                self.conns.insert(conn, Conn::Outbound);
                self.node.handle_input(Input::Connected(conn), self.now);
                self.drain("connected");
            }
            Op::ConnectFailed { which } => {
                let Some(conn) = self.pick(which, &[Conn::Connecting]) else {
                    return;
                };
                self.conns.insert(conn, Conn::Gone);
                self.node.handle_input(Input::ConnectFailed(conn), self.now);
                self.drain("connect failed");
                assert!(
                    self.closed.contains(&conn),
                    "a failed connect left {conn:?} open"
                );
            }
            Op::Persisted { which } => {
                if self.tokens.is_empty() {
                    return;
                }
                let token = self.tokens.remove(usize::from(which) % self.tokens.len());
                self.node.handle_input(Input::Persisted(token), self.now);
                self.drain("persisted");
            }
            Op::PersistAll => {
                for token in std::mem::take(&mut self.tokens) {
                    self.node.handle_input(Input::Persisted(token), self.now);
                    self.drain("persisted");
                }
            }
            Op::PersistUnknown(token) => {
                if self.tokens.contains(&token) || token <= self.last_token {
                    // Known or already reported: a driver never reports those twice.
                    return;
                }
                self.node.handle_input(Input::Persisted(token), self.now);
                self.drain("unknown token");
            }
            Op::Submit { recipients, big } => {
                let recipients = (0..recipients % 4)
                    .map(|i| Recipient {
                        to: ForwardPath::Mailbox(Mailbox::new(format!("r{i}"), "example.net")),
                        params: RcptParams::default(),
                    })
                    .collect();
                let envelope = Envelope {
                    from: ReversePath::Mailbox(Mailbox::new("alice", "example.org")),
                    params: MailParams::default(),
                    recipients,
                };
                let body = if big {
                    b"0123456789abcdef0123456789abcdef0123456789abcdef012345678\r\n".repeat(100)
                } else {
                    b"Subject: hi\r\n\r\nHello\r\n".to_vec()
                };
                let _ = self.node.submit(envelope, &body, self.now);
                self.drain("submit");
            }
            Op::Timeout(advance) => {
                let next = self.node.poll_timeout();
                self.now = match advance {
                    Advance::Millis(ms) => self.now + Duration::from_millis(u64::from(ms)),
                    Advance::Secs(s) => self.now + Duration::from_secs(u64::from(s)),
                    Advance::Hours(h) => self.now + Duration::from_secs(3600 * u64::from(h % 73)),
                    Advance::ToNext => next.map_or(self.now, |t| t.max(self.now)),
                };
                self.timers();
            }
        }
    }

    /// Fires the timers due now; a timer that stays due after a few calls would make a
    /// driver spin.
    fn timers(&mut self) {
        for _ in 0..8 {
            self.node.handle_timeout(self.now);
            self.drain("timeout");
            if self.node.poll_timeout().is_none_or(|t| t > self.now) {
                return;
            }
        }
        panic!(
            "a timer stays due: poll_timeout {:?} <= now {:?} after 8 handle_timeout calls",
            self.node.poll_timeout(),
            self.now
        );
    }

    fn bytes(&self, bytes: Bytes) -> Vec<u8> {
        match bytes {
            Bytes::Raw(b) => b,
            Bytes::Commands(b) => remap(&b, alphabet::COMMAND),
            Bytes::Replies(b) => remap(&b, alphabet::REPLY),
            Bytes::Client(i) => CLIENT[usize::from(i) % CLIENT.len()].to_vec(),
            Bytes::Server(i) => SERVER[usize::from(i) % SERVER.len()].to_vec(),
            Bytes::DiscardIds(n) => {
                let n = usize::from(n % 64).min(self.shadow_ids.len());
                let ids = &self.shadow_ids[self.shadow_ids.len() - n..];
                if ids.is_empty() {
                    return b"251 OK, no discard events\r\n".to_vec();
                }
                let mut out = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    let sep = if i + 1 == ids.len() { " " } else { "-" };
                    out.extend_from_slice(format!("250{sep}{id}\r\n").as_bytes());
                }
                out
            }
        }
    }

    /// Drains the node's outputs after one call and checks each.
    fn drain(&mut self, call: &str) {
        let mut outputs = 0;
        let mut bytes = 0;
        while let Some(output) = self.node.poll_output() {
            outputs += 1;
            assert!(
                outputs <= MAX_OUTPUTS_PER_STEP,
                "more than {MAX_OUTPUTS_PER_STEP} outputs after {call}"
            );
            match output {
                Output::Transmit { conn, data } => {
                    assert!(!data.is_empty(), "an empty Transmit");
                    assert!(
                        !self.closed.contains(&conn),
                        "Transmit to {conn:?} after Close"
                    );
                    let state = self.conns.get(&conn).copied();
                    assert!(
                        matches!(state, Some(Conn::Inbound | Conn::Outbound | Conn::Gone)),
                        "Transmit to {conn:?} in state {state:?}"
                    );
                    bytes += data.len();
                    assert!(bytes <= MAX_BYTES_PER_STEP, "over 4 MiB sent after {call}");
                    if state != Some(Conn::Inbound) {
                        self.note_shadow_ids(&data);
                    }
                }
                Output::Connect { conn, to } => {
                    assert!(self.hops.contains(&to), "Connect to {to:?}, not a next hop");
                    assert!(!self.conns.contains_key(&conn), "Connect reused {conn:?}");
                    self.conns.insert(conn, Conn::Connecting);
                }
                Output::Close(conn) => {
                    assert!(self.conns.contains_key(&conn), "Close of unknown {conn:?}");
                    assert!(self.closed.insert(conn), "{conn:?} closed twice");
                    assert!(!self.node.may_read(conn), "may_read on closed {conn:?}");
                }
                Output::Persist { token, records } => {
                    assert!(!records.is_empty(), "an empty Persist batch");
                    assert!(
                        token > self.last_token,
                        "token {token} after {}",
                        self.last_token
                    );
                    self.last_token = token;
                    self.tokens.push(token);
                }
                Output::Event(event) => {
                    assert!(!event.to_string().is_empty());
                }
            }
        }
        let stats = self.node.stats();
        assert!(stats.connections <= self.conns.len());
    }

    /// Remembers the `XSHADOW=` ids in bytes the node sent to a next hop.
    fn note_shadow_ids(&mut self, data: &[u8]) {
        const KEY: &[u8] = b" XSHADOW=";
        let mut at = 0;
        while let Some(found) = data[at..].windows(KEY.len()).position(|w| w == KEY) {
            let start = at + found + KEY.len();
            let end = data[start..]
                .iter()
                .position(|&b| b == b' ' || b == b'\r')
                .map_or(data.len(), |n| start + n);
            if let Ok(id) = std::str::from_utf8(&data[start..end]) {
                self.shadow_ids.push(id.to_owned());
            }
            at = end;
        }
    }

    /// The end of the run: everything persisted, time moved on, every peer gone.
    fn finish(&mut self) {
        for token in std::mem::take(&mut self.tokens) {
            self.node.handle_input(Input::Persisted(token), self.now);
            self.drain("persisted");
        }
        self.now += Duration::from_secs(600);
        self.timers();
        let open: Vec<(ConnId, Conn)> = self
            .conns
            .iter()
            .filter(|(c, _)| !self.closed.contains(c))
            .map(|(c, s)| (*c, *s))
            .collect();
        for (conn, state) in open {
            let input = match state {
                Conn::Connecting => Input::ConnectFailed(conn),
                _ => Input::Closed(conn),
            };
            self.node.handle_input(input, self.now);
            self.drain("closing all");
        }
    }
}
