//! A deterministic world for Node tests: nodes, a final sink and submitting clients on virtual
//! time, joined by in-memory connections. Every byte, record and timer goes through the
//! nodes' public sans-IO interface, exactly as a runtime binding drives them.
//!
//! Faults are methods and knobs:
//! - [`World::crash`] (a machine) and [`World::kill`] (a process, whose last bytes still
//!   arrive), now or at a node's n-th step ([`World::crash_after_steps`]): a node loses its
//!   memory and its unsynced writes but a prefix of them (maybe torn mid-record), and restarts
//!   later from the records on its disk; [`World::wipe`] restarts it with an empty store (a new
//!   database id).
//! - [`World::partition`]: two hosts cannot connect, and their open connections are cut or
//!   stall; [`World::down`]: nobody can connect to a host.
//! - [`World::link_faults`]: each new connection may carry a planned fault that strikes at its
//!   n-th delivered fragment (both directions counted): the connection is cut after it, the
//!   fragment is lost with the connection (a reply that never arrives: the RFC 1047 gap), or the
//!   connection stalls silently and both ends must time out.
//! - [`World::jitter`] and [`World::fragment`]: random latency (FIFO per direction, as TCP) and
//!   transmits split at random points.
//!
//! The world also keeps what a simulation needs to judge the outcome ([`Ledger`]): which
//! transfers were in doubt when their connection ended, which messages a restarted node found
//! queued in its records, and when a shadow last read an XQDISCARD reply from a primary. Every
//! output and fault is folded into a trace hash, so two runs of one seed can be compared.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem;
use xshadow_core::node::{ConnId, Input, Node, NodeConfig, NodeEvent, NodeStats, Output};
use xshadow_core::session::{
    ClientConfig, ClientEvent, ClientSession, Envelope, OutboundMessage, Recipient, ServerConfig,
    ServerEvent, ServerSession,
};
use xshadow_core::store::{self, Record, StoreState};
use xshadow_core::wire::path::{ForwardPath, Mailbox, ReversePath};
use xshadow_core::wire::{EnhancedStatus, MailParams, RcptParams, Reply};

/// One end of a connection: the host, the host's incarnation (a restarted node's old
/// connections are dead) and the host's name for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct End {
    pub host: usize,
    pub life: u32,
    pub conn: u64,
}

/// What a host is.
pub enum Host {
    Node(Box<NodeHost>),
    Sink(SinkHost),
    Client(Box<ClientHost>),
}

/// One incarnation of a node: from (re)start to crash.
#[derive(Debug, Clone)]
pub struct Life {
    pub started: Instant,
    pub crashed: Option<Instant>,
    /// It started with a new store (first start, a wipe, or nothing durable yet).
    pub empty_store: bool,
    /// What it recovered from its records.
    pub recovered: NodeStats,
}

pub struct NodeHost {
    pub name: String,
    pub config: NodeConfig,
    /// `None` while crashed.
    pub node: Option<Node>,
    /// Durable bytes (the spool), as encoded records.
    pub disk: Vec<u8>,
    /// Persist batches written but not yet reported durable: lost or torn on a crash.
    pub unsynced: Vec<(u64, Vec<u8>)>,
    /// Every event the node emitted, with its virtual time.
    pub events: Vec<(Instant, NodeEvent)>,
    /// Restarts so far: the current incarnation.
    pub restarts: u32,
    /// New stores so far (wipes, or restarts before anything was durable): message ids and
    /// database ids of different store epochs are unrelated.
    pub store_epoch: u32,
    /// Every incarnation, oldest first.
    pub lives: Vec<Life>,
    /// Steps left before a planned crash.
    pub crash_plan: Option<(u64, CrashPlan)>,
    /// Persist outputs so far.
    pub persists: u64,
    seed: u64,
    /// Finds `\tby <name> (xshadow) with ESMTP id `: this node's message id in a body.
    marker: memmem::Finder<'static>,
}

/// A crash planned at a node's step (see [`World::crash_after_steps`]).
#[derive(Debug, Clone, Copy)]
pub struct CrashPlan {
    /// Bytes of the unsynced writes that survive (a prefix, maybe torn mid-record).
    pub torn: usize,
    pub downtime: Duration,
    /// A process kill (what was sent still arrives) rather than a machine crash.
    pub flush: bool,
    /// Come back with an empty store.
    pub wipe: bool,
    /// Count only the steps that wrote records (the moments between a write and its sync).
    pub on_persist: bool,
}

/// One message the sink stored.
#[derive(Debug, Clone)]
pub struct SinkCopy {
    pub body: Vec<u8>,
    /// The host that sent it and that host's store epoch.
    pub from_host: usize,
    pub from_epoch: u32,
    /// Sent with the null reverse-path (a bounce).
    pub null_sender: bool,
    /// The local parts of the recipients it was stored for.
    pub recipients: Vec<String>,
    pub at: Instant,
}

pub struct SinkHost {
    pub sessions: BTreeMap<u64, ServerSession>,
    pub config: Arc<ServerConfig>,
    pub next_conn: u64,
    /// Every message the sink stored, in arrival order.
    pub copies: Vec<SinkCopy>,
}

pub struct ClientHost {
    pub server: usize,
    pub config: ClientConfig,
    /// (tag, recipient local parts) of every message it submits.
    pub messages: Vec<(u64, Vec<String>)>,
    pub session: Option<Box<ClientSession>>,
    /// Name of the current (or last) connection.
    pub conn: u64,
    /// Message tags the server acknowledged (250 to the end of data).
    pub acknowledged: Vec<u64>,
    /// Outcomes other than 250 (refused or deferred), one per attempt.
    pub refused: Vec<u64>,
    /// Retry the unacknowledged messages this long after a session ends; `None`: one attempt.
    pub retry: Option<Duration>,
    /// When the next session starts.
    pub next_attempt: Option<Instant>,
    pub attempts: u32,
}

impl ClientHost {
    /// Tags not acknowledged yet.
    pub fn pending(&self) -> Vec<u64> {
        self.messages
            .iter()
            .map(|(t, _)| *t)
            .filter(|t| !self.acknowledged.contains(t))
            .collect()
    }
}

/// A fault planned on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkFault {
    /// The fragment is delivered, then both ends see the connection close.
    Cut,
    /// The fragment is lost and both ends see the connection close.
    Drop,
    /// The fragment and everything after it are lost; neither end is told (half-open).
    Stall,
}

/// How new connections get planned faults.
#[derive(Debug, Clone, Copy)]
pub struct LinkFaults {
    /// Chance that a new connection carries a fault.
    pub chance: f64,
    /// It strikes at a delivered fragment drawn from `1..=max_fragment`.
    pub max_fragment: u32,
    /// Relative weights of cut, drop and stall.
    pub weights: [u32; 3],
}

/// A message as one sender knows it: a client's tag, or a node's message id within one store
/// epoch of that node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgKey {
    pub host: usize,
    pub epoch: u32,
    pub id: u64,
}

/// What kind of fault a journal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A connection was cut (after a fragment, or by a partition).
    Cut,
    /// A fragment was lost with its connection.
    Drop,
    /// A connection stalled (half-open).
    Stall,
    Crash,
    /// The crashed node will come back with an empty store.
    Wipe,
    Partition,
    Heal,
    Down,
    Up,
}

/// One thing that happened, in the order the world saw it.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A node emitted an event.
    Event { host: usize, event: NodeEvent },
    /// A complete XQDISCARD reply (`251`, or a `250` list's last line) from `primary` reached
    /// `shadow` (just before the shadow read it).
    Contact { shadow: usize, primary: usize },
    /// A fault between hosts `a` and `b` (the same host for crashes, wipes, down and up).
    Fault { kind: FaultKind, a: usize, b: usize },
    /// A node came back: with a new store (`new_store`: a new database id and message ids),
    /// holding these shadow copies (message id, primary) from its records.
    Restart {
        host: usize,
        new_store: bool,
        copies: Vec<(u64, String)>,
    },
}

/// What the world saw that explains duplicates and timings.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Transfers in doubt: the message's body reached the receiver and the connection ended
    /// before the sender sent anything more on it (so it may not have read the final reply).
    pub in_doubt: BTreeMap<MsgKey, u32>,
    /// Transfers left in doubt by a connection that ended without any fault (the receiver
    /// closed it, say after `421 Too many errors`): they explain no duplicate.
    pub in_doubt_without_fault: BTreeMap<MsgKey, u32>,
    /// A restarted node found the message queued in its records (it may have passed it on
    /// before the crash without the record of that being durable).
    pub requeued: BTreeMap<MsgKey, u32>,
    /// Everything that happened, in order, with its virtual time.
    pub journal: Vec<(Instant, Entry)>,
    /// The id in a node's own Received header of the body of each message the node accepted
    /// (a message it split off for recipients to retry keeps the body, so the header names the
    /// message it came from).
    pub header_id: BTreeMap<MsgKey, u64>,
    /// Where planned connection faults struck: what the fragment held.
    pub strikes: BTreeMap<String, u64>,
}

/// What a fragment holds, for the tally of where faults struck: a reply code (`250-` for a
/// line of a multi-line reply), a command, the end of a message, or the middle of something.
pub fn fragment_label(data: &[u8]) -> String {
    let code = data.get(..4).filter(|c| {
        (b'2'..=b'5').contains(&c[0])
            && c[1..3].iter().all(u8::is_ascii_digit)
            && b" -".contains(&c[3])
    });
    let mut label = match code {
        Some(code) => {
            // The code, and the enhanced status of a single-line reply (`250 2.6.0`: the
            // final reply to a message).
            let enhanced = data
                .get(4..9)
                .filter(|e| code[3] == b' ' && e[1] == b'.' && e[0].is_ascii_digit());
            let mut label = String::from_utf8_lossy(code).trim_end().to_owned();
            if let Some(e) = enhanced {
                label.push(' ');
                label.push_str(&String::from_utf8_lossy(e));
            }
            label
        }
        None => {
            let word: String = data
                .iter()
                .take_while(|b| b.is_ascii_uppercase())
                .map(|b| char::from(*b))
                .collect();
            match word.as_str() {
                "EHLO" | "HELO" | "XSHADOW" | "MAIL" | "RCPT" | "DATA" | "BDAT" | "RSET"
                | "QUIT" | "XQDISCARD" | "NOOP" => word,
                _ => "middle".to_owned(),
            }
        }
    };
    if data.ends_with(b"\r\n.\r\n") {
        label.push_str(" +end of data");
    }
    label
}

/// A live connection.
struct Wire {
    /// The end that connected.
    a: End,
    /// The end that accepted.
    b: End,
    /// The connecting host's store epoch.
    a_epoch: u32,
    plan: Option<(u32, LinkFault)>,
    stalled: bool,
    /// A fault (a cut, a lost fragment, a stall, a crash of either end) hit it.
    faulted: bool,
    /// Time of the last delivery scheduled a->b and b->a (FIFO, as TCP).
    last_at: [Instant; 2],
    /// Bodies delivered to `b` whose sender has not sent anything since.
    pending: Vec<MsgKey>,
    /// Replies `a` still awaits for its last batch with a body; the last is the final reply.
    awaiting: usize,
    /// Watch b->a for XQDISCARD replies (a shadow talking to a primary).
    watch: bool,
    /// Bytes b->a not yet read as whole reply lines.
    replies: Vec<u8>,
}

enum Ev {
    Deliver {
        wire: u64,
        to: End,
        data: Vec<u8>,
        /// Bodies whose last bytes are in this fragment.
        carries: Vec<MsgKey>,
    },
    Closed {
        to: End,
    },
    Connected {
        from: End,
        wire: u64,
    },
    ConnectFailed {
        from: End,
    },
    Persisted {
        host: usize,
        life: u32,
        token: u64,
    },
    Restart {
        host: usize,
    },
}

/// FNV-1a, 64 bits: the trace hash.
#[derive(Debug, Clone, Copy)]
pub struct TraceHash(pub u64);

impl TraceHash {
    fn mix(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn mix_u64(&mut self, v: u64) {
        self.mix(&v.to_le_bytes());
    }
}

pub struct World {
    pub now: Instant,
    pub start: Instant,
    pub hosts: Vec<Host>,
    pub names: BTreeMap<String, usize>,
    /// Each end of a live connection: its peer and the connection.
    links: BTreeMap<End, (End, u64)>,
    wires: BTreeMap<u64, Wire>,
    next_wire: u64,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    /// Least latency of a delivery.
    pub latency: Duration,
    /// Up to this much more, drawn per fragment.
    pub jitter: Duration,
    /// Time from Persist to Persisted.
    pub sync_delay: Duration,
    /// Split transmits into up to three fragments at random points.
    pub fragment: bool,
    /// Planned faults on new connections; `None`: none.
    pub link_faults: Option<LinkFaults>,
    /// Chance that a sink answers a RCPT with `451 4.3.0` (the recipient is retried later).
    pub sink_defers_rcpt: f64,
    /// Hosts that cannot be reached (connects fail).
    pub down: BTreeSet<usize>,
    /// Pairs of hosts that cannot reach each other (smaller index first).
    pub blocked: BTreeSet<(usize, usize)>,
    pub rng: fastrand::Rng,
    pub ledger: Ledger,
    pub trace: TraceHash,
    /// Lines describing every step, when set (for replaying one seed).
    pub log: Option<Vec<String>>,
    pub steps: u64,
    pub max_steps: u64,
    unix_start: u64,
    /// Each host's next timer, refreshed whenever the host was touched.
    timers: Vec<Option<Instant>>,
    tag_finder: memmem::Finder<'static>,
}

pub const UNIX_START: u64 = 1_796_400_103_000;

/// A message body that names itself, so the sink's copies can be counted per message.
pub fn body_for(tag: u64) -> Vec<u8> {
    format!("Subject: message {tag}\r\nX-Test-Id: {tag}\r\n\r\nbody of {tag}\r\n.leading dot\r\n")
        .into_bytes()
}

const TAG_MARKER: &[u8] = b"X-Test-Id: ";

/// Reads the X-Test-Id back out of a stored body.
pub fn tag_of(body: &[u8]) -> Option<u64> {
    let at = memmem::find(body, TAG_MARKER)? + TAG_MARKER.len();
    parse_digits(&body[at..])
}

fn parse_digits(bytes: &[u8]) -> Option<u64> {
    let digits: &[u8] = &bytes[..bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len())];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn parse_hex16(bytes: &[u8]) -> Option<u64> {
    let hex = bytes.get(..16)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// The message id node `name` gave the message, from its Received header in `body`.
pub fn node_id_in(body: &[u8], name: &str) -> Option<u64> {
    let marker = node_marker(name);
    let at = memmem::find(body, &marker)? + marker.len();
    parse_hex16(&body[at..])
}

fn node_marker(name: &str) -> Vec<u8> {
    format!("\tby {name} (xshadow) with ESMTP id ").into_bytes()
}

/// How many replies a sender awaits after a transmit that carries a body: one per command
/// line of a pipelined `MAIL`, `RCPT`..., `BDAT ... LAST` batch, or the one final reply to a
/// DATA body. The last of them is the final reply to the message.
fn replies_awaited(data: &[u8]) -> usize {
    let bdat = if data.starts_with(b"BDAT ") {
        Some(0)
    } else {
        memmem::find(data, b"\r\nBDAT ").map(|at| at + 2)
    };
    match bdat {
        Some(at) => memmem::find_iter(&data[..at], b"\r\n").count() + 1,
        None => 1,
    }
}

fn is_guid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// A seed for incarnation `life` of a node first seeded with `seed`.
fn life_seed(seed: u64, life: u32) -> u64 {
    let mut h = TraceHash(0xcbf2_9ce4_8422_2325);
    h.mix_u64(seed);
    h.mix_u64(u64::from(life));
    h.0
}

pub fn envelope(to: &str) -> Envelope {
    envelope_to(&[to])
}

/// From alice@example.org to each `local@example.net` (or to `local@domain` as given).
pub fn envelope_to<S: AsRef<str>>(to: &[S]) -> Envelope {
    Envelope {
        from: ReversePath::Mailbox(Mailbox::new("alice", "example.org")),
        params: MailParams::default(),
        recipients: to
            .iter()
            .map(|to| {
                let (local, domain) = to
                    .as_ref()
                    .split_once('@')
                    .unwrap_or((to.as_ref(), "example.net"));
                Recipient {
                    to: ForwardPath::Mailbox(Mailbox::new(local, domain)),
                    params: RcptParams::default(),
                }
            })
            .collect(),
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// An empty world: fixed 1 ms latency, 2 ms syncs, no faults.
    pub fn new() -> Self {
        Self::with_seed(0)
    }

    /// An empty world whose random choices (jitter, fragments, link faults) come from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        let now = Instant::now();
        Self {
            now,
            start: now,
            hosts: Vec::new(),
            names: BTreeMap::new(),
            links: BTreeMap::new(),
            wires: BTreeMap::new(),
            next_wire: 1,
            queue: BTreeMap::new(),
            seq: 0,
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            sync_delay: Duration::from_millis(2),
            fragment: false,
            link_faults: None,
            sink_defers_rcpt: 0.0,
            down: BTreeSet::new(),
            blocked: BTreeSet::new(),
            rng: fastrand::Rng::with_seed(seed),
            ledger: Ledger::default(),
            trace: TraceHash(0xcbf2_9ce4_8422_2325),
            log: None,
            steps: 0,
            max_steps: 50_000_000,
            unix_start: UNIX_START,
            timers: Vec::new(),
            tag_finder: memmem::Finder::new(TAG_MARKER).into_owned(),
        }
    }

    fn ip(host: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, (host + 1) as u8))
    }

    /// Virtual milliseconds since the start, for reports.
    pub fn ms(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64() * 1000.0
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.log.is_some() {
            let line = format!("{:10.3} {}", self.ms(self.now), what());
            if let Some(log) = self.log.as_mut() {
                log.push(line);
            }
        }
    }

    fn record_fault(&mut self, kind: FaultKind, a: usize, b: usize) {
        self.trace.mix(format!("{kind:?} {a} {b}").as_bytes());
        if self.log.is_some() {
            let (na, nb) = (self.name_of(a), self.name_of(b));
            self.note(|| format!("FAULT {kind:?} {na} {nb}"));
        }
        self.ledger
            .journal
            .push((self.now, Entry::Fault { kind, a, b }));
    }

    pub fn add_node(&mut self, name: &str, config: NodeConfig, seed: u64) -> usize {
        let host = self.hosts.len();
        let node = Node::new(config.clone(), seed, self.now, self.unix_start);
        let recovered = node.stats();
        self.hosts.push(Host::Node(Box::new(NodeHost {
            name: name.to_owned(),
            config,
            node: Some(node),
            disk: Vec::new(),
            unsynced: Vec::new(),
            events: Vec::new(),
            restarts: 0,
            store_epoch: 0,
            lives: vec![Life {
                started: self.now,
                crashed: None,
                empty_store: true,
                recovered,
            }],
            crash_plan: None,
            persists: 0,
            seed,
            marker: memmem::Finder::new(&node_marker(name)).into_owned(),
        })));
        self.timers.push(None);
        self.names.insert(name.to_owned(), host);
        self.drain(host);
        host
    }

    pub fn add_sink(&mut self, name: &str) -> usize {
        let mut config = ServerConfig::new(name);
        config.chunking = true;
        self.add_sink_with(name, config)
    }

    pub fn add_sink_with(&mut self, name: &str, config: ServerConfig) -> usize {
        let host = self.hosts.len();
        self.hosts.push(Host::Sink(SinkHost {
            sessions: BTreeMap::new(),
            config: Arc::new(config),
            next_conn: 1,
            copies: Vec::new(),
        }));
        self.timers.push(None);
        self.names.insert(name.to_owned(), host);
        host
    }

    /// A client that connects to `server` now and submits `messages` (tag, recipient) in one
    /// session, without retrying.
    pub fn add_client(&mut self, server: &str, messages: &[(u64, &str)]) -> usize {
        let config = ClientConfig::new("client.example");
        let messages: Vec<(u64, Vec<String>)> = messages
            .iter()
            .map(|(t, to)| (*t, vec![(*to).to_owned()]))
            .collect();
        let host = self.add_retrying_client(server, &messages, self.now, config, None);
        if let Host::Client(c) = &mut self.hosts[host] {
            c.next_attempt = None;
        }
        self.start_attempt(host);
        host
    }

    /// A client that connects to `server` at `at` and submits `messages` (tag, recipients);
    /// with `retry`, it submits the ones not acknowledged again in a new session that long
    /// after each session ends, until every one got its 250.
    pub fn add_retrying_client(
        &mut self,
        server: &str,
        messages: &[(u64, Vec<String>)],
        at: Instant,
        config: ClientConfig,
        retry: Option<Duration>,
    ) -> usize {
        let host = self.hosts.len();
        self.hosts.push(Host::Client(Box::new(ClientHost {
            server: self.names[server],
            config,
            messages: messages.to_vec(),
            session: None,
            conn: 0,
            acknowledged: Vec::new(),
            refused: Vec::new(),
            retry,
            next_attempt: Some(at),
            attempts: 0,
        })));
        self.timers.push(Some(at));
        host
    }

    pub fn node(&self, name: &str) -> &Node {
        match &self.hosts[self.names[name]] {
            Host::Node(n) => n.node.as_ref().expect("node is up"),
            _ => panic!("{name} is not a node"),
        }
    }

    pub fn node_host(&self, name: &str) -> &NodeHost {
        match &self.hosts[self.names[name]] {
            Host::Node(n) => n,
            _ => panic!("{name} is not a node"),
        }
    }

    pub fn sink(&self, name: &str) -> &SinkHost {
        match &self.hosts[self.names[name]] {
            Host::Sink(s) => s,
            _ => panic!("{name} is not a sink"),
        }
    }

    pub fn client(&self, host: usize) -> &ClientHost {
        match &self.hosts[host] {
            Host::Client(c) => c,
            _ => panic!("not a client"),
        }
    }

    pub fn name_of(&self, host: usize) -> String {
        match &self.hosts[host] {
            Host::Node(n) => n.name.clone(),
            _ => self
                .names
                .iter()
                .find(|(_, h)| **h == host)
                .map_or_else(|| format!("client{host}"), |(n, _)| n.clone()),
        }
    }

    /// `name/life:conn`, for the log.
    pub fn end_name(&self, end: End) -> String {
        format!("{}/{}:{}", self.name_of(end.host), end.life, end.conn)
    }

    fn life(&self, host: usize) -> u32 {
        match &self.hosts[host] {
            Host::Node(n) => n.restarts,
            _ => 0,
        }
    }

    fn store_epoch(&self, host: usize) -> u32 {
        match &self.hosts[host] {
            Host::Node(n) => n.store_epoch,
            _ => 0,
        }
    }

    /// The end is of the host's current incarnation, which is up.
    fn is_current(&self, end: End) -> bool {
        match &self.hosts[end.host] {
            Host::Node(n) => n.node.is_some() && n.restarts == end.life,
            _ => true,
        }
    }

    fn is_crashed(&self, host: usize) -> bool {
        matches!(&self.hosts[host], Host::Node(n) if n.node.is_none())
    }

    fn pair(a: usize, b: usize) -> (usize, usize) {
        (a.min(b), a.max(b))
    }

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn delay(&mut self) -> Duration {
        let jitter = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        if jitter == 0 {
            self.latency
        } else {
            self.latency + Duration::from_nanos(self.rng.u64(0..=jitter))
        }
    }

    /// Opens a connection from `from` (its end named `from.conn`) to host `to`.
    fn open(&mut self, from: End, to: usize) {
        let at = self.now + self.latency;
        if self.down.contains(&to)
            || self.is_crashed(to)
            || self.blocked.contains(&Self::pair(from.host, to))
        {
            self.push(at, Ev::ConnectFailed { from });
            return;
        }
        let peer_conn = match &mut self.hosts[to] {
            Host::Node(n) => {
                let node = n.node.as_mut().expect("checked up");
                node.accept(Self::ip(from.host), self.now).0
            }
            Host::Sink(s) => {
                let c = s.next_conn;
                s.next_conn += 1;
                s.sessions
                    .insert(c, ServerSession::new(s.config.clone(), false, self.now));
                c
            }
            Host::Client(_) => panic!("clients do not listen"),
        };
        let b = End {
            host: to,
            life: self.life(to),
            conn: peer_conn,
        };
        let plan = match self.link_faults {
            Some(f) if self.rng.f64() < f.chance => {
                let n = self.rng.u32(1..=f.max_fragment.max(1));
                let total: u32 = f.weights.iter().sum::<u32>().max(1);
                let mut pick = self.rng.u32(0..total);
                let mut kind = LinkFault::Cut;
                for (k, w) in [LinkFault::Cut, LinkFault::Drop, LinkFault::Stall]
                    .into_iter()
                    .zip(f.weights)
                {
                    if pick < w {
                        kind = k;
                        break;
                    }
                    pick -= w;
                }
                Some((n, kind))
            }
            _ => None,
        };
        let watch = matches!(
            (&self.hosts[from.host], &self.hosts[to]),
            (Host::Node(a), Host::Node(_)) if a.config.shadow_next_hops
        );
        let wire = self.next_wire;
        self.next_wire += 1;
        self.wires.insert(
            wire,
            Wire {
                a: from,
                b,
                a_epoch: self.store_epoch(from.host),
                plan,
                stalled: false,
                faulted: false,
                last_at: [at, at],
                pending: Vec::new(),
                awaiting: 0,
                watch,
                replies: Vec::new(),
            },
        );
        self.links.insert(from, (b, wire));
        self.links.insert(b, (from, wire));
        if self.log.is_some() {
            let (x, y) = (self.end_name(from), self.end_name(b));
            self.note(|| format!("connect #{wire} {x} -> {y}, planned fault {plan:?}"));
        }
        self.push(at, Ev::Connected { from, wire });
        self.drain(to);
    }

    /// Moves every pending output of a host into the world.
    fn drain(&mut self, host: usize) {
        let persists = |w: &Self| match &w.hosts[host] {
            Host::Node(n) => n.persists,
            _ => 0,
        };
        let before = persists(self);
        self.drain_outputs(host);
        self.refresh_timer(host);
        let wrote = persists(self) > before;
        let due = match &mut self.hosts[host] {
            Host::Node(n) if n.node.is_some() => match &mut n.crash_plan {
                Some((steps, plan)) if wrote || !plan.on_persist => {
                    *steps -= 1;
                    (*steps == 0).then_some(*plan)
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(plan) = due {
            if plan.wipe {
                self.wipe_host(host, plan.downtime, plan.flush);
            } else {
                self.crash_host(host, plan.torn, plan.downtime, plan.flush);
            }
        }
    }

    fn refresh_timer(&mut self, host: usize) {
        self.timers[host] = match &self.hosts[host] {
            Host::Node(n) => n.node.as_ref().and_then(Node::poll_timeout),
            Host::Sink(s) => s
                .sessions
                .values()
                .filter_map(ServerSession::poll_timeout)
                .min(),
            Host::Client(c) => [
                c.session.as_ref().and_then(|s| s.poll_timeout()),
                c.next_attempt,
            ]
            .into_iter()
            .flatten()
            .min(),
        };
    }

    fn drain_outputs(&mut self, host: usize) {
        loop {
            let mut outputs = Vec::new();
            let now = self.now;
            match &mut self.hosts[host] {
                Host::Node(n) => {
                    let Some(node) = n.node.as_mut() else { return };
                    while let Some(o) = node.poll_output() {
                        outputs.push(o);
                    }
                }
                Host::Sink(s) => {
                    let mut stored = Vec::new();
                    for (&c, session) in s.sessions.iter_mut() {
                        let mut data = Vec::new();
                        loop {
                            let mut moved = session.poll_transmit(&mut data).is_some();
                            while let Some(e) = session.poll_event() {
                                moved = true;
                                match e {
                                    ServerEvent::MailFrom => session.accept_mail(now).unwrap(),
                                    ServerEvent::RcptTo => {
                                        if self.sink_defers_rcpt > 0.0
                                            && self.rng.f64() < self.sink_defers_rcpt
                                        {
                                            let later = Reply::new(
                                                451,
                                                Some(EnhancedStatus::new(4, 3, 0)),
                                                "Try again later",
                                            );
                                            session.reject_rcpt(later, now).unwrap();
                                        } else {
                                            session.accept_rcpt(now).unwrap();
                                        }
                                    }
                                    ServerEvent::MessageComplete => {
                                        let m =
                                            session.take_message().expect("the complete message");
                                        let null = matches!(m.envelope.from, ReversePath::Null);
                                        let to = m
                                            .envelope
                                            .recipients
                                            .iter()
                                            .map(|r| match &r.to {
                                                ForwardPath::Mailbox(m) => {
                                                    m.local_part().to_owned()
                                                }
                                                ForwardPath::Postmaster => "postmaster".into(),
                                            })
                                            .collect::<Vec<_>>();
                                        stored.push((c, m.body, null, to));
                                        session.message_stored(now).unwrap();
                                    }
                                    ServerEvent::Closed(_) => {
                                        outputs.push(Output::Close(ConnId(c)));
                                    }
                                    _ => {}
                                }
                            }
                            if !moved {
                                break;
                            }
                        }
                        if !data.is_empty() {
                            outputs.push(Output::Transmit {
                                conn: ConnId(c),
                                data,
                            });
                        }
                    }
                    s.sessions.retain(|_, session| !session.is_closed());
                    for (c, body, null_sender, recipients) in stored {
                        let me = End {
                            host,
                            life: 0,
                            conn: c,
                        };
                        let (from_host, from_epoch) = match self.links.get(&me) {
                            Some((peer, wire)) => {
                                (peer.host, self.wires.get(wire).map_or(0, |w| w.a_epoch))
                            }
                            None => (usize::MAX, 0),
                        };
                        self.trace.mix(&body);
                        if let Host::Sink(s) = &mut self.hosts[host] {
                            s.copies.push(SinkCopy {
                                body,
                                from_host,
                                from_epoch,
                                null_sender,
                                recipients,
                                at: now,
                            });
                        }
                    }
                }
                Host::Client(c) => {
                    let Some(session) = c.session.as_mut() else {
                        return;
                    };
                    let mut data = Vec::new();
                    let _ = session.poll_transmit(&mut data);
                    if !data.is_empty() {
                        outputs.push(Output::Transmit {
                            conn: ConnId(c.conn),
                            data,
                        });
                    }
                    while let Some(e) = session.poll_event() {
                        match e {
                            ClientEvent::MessageAccepted { id, .. } => c.acknowledged.push(id),
                            ClientEvent::MessageFailed { id, .. }
                            | ClientEvent::MessageDeferred { id, .. } => c.refused.push(id),
                            ClientEvent::Closed { .. } => {
                                outputs.push(Output::Close(ConnId(c.conn)));
                            }
                            _ => {}
                        }
                    }
                    if session.is_closed() {
                        c.session = None;
                        if let Some(retry) = c.retry
                            && !c.pending().is_empty()
                        {
                            c.next_attempt = Some(now + retry);
                        }
                    }
                }
            }
            if outputs.is_empty() {
                return;
            }
            for o in outputs {
                self.output(host, o);
            }
        }
    }

    /// Bodies in `data` sent by `host`: a client's tags, a node's own message ids.
    fn bodies_in(&self, host: usize, data: &[u8]) -> Vec<MsgKey> {
        let (finder, epoch, node) = match &self.hosts[host] {
            Host::Node(n) => (&n.marker, n.store_epoch, true),
            Host::Client(_) => (&self.tag_finder, 0, false),
            Host::Sink(_) => return Vec::new(),
        };
        let len = finder.needle().len();
        finder
            .find_iter(data)
            .filter_map(|at| {
                let rest = &data[at + len..];
                if node {
                    parse_hex16(rest)
                } else {
                    parse_digits(rest)
                }
            })
            .map(|id| MsgKey { host, epoch, id })
            .collect()
    }

    fn output(&mut self, host: usize, output: Output) {
        let me = End {
            host,
            life: self.life(host),
            conn: 0,
        };
        self.trace
            .mix_u64(self.now.duration_since(self.start).as_nanos() as u64);
        self.trace.mix_u64(host as u64);
        match output {
            Output::Transmit { conn, data } => {
                let me = End { conn: conn.0, ..me };
                self.trace.mix_u64(conn.0);
                self.trace.mix(&data);
                self.transmit(me, data);
            }
            Output::Close(conn) => {
                self.trace.mix(b"close");
                self.trace.mix_u64(conn.0);
                self.close(End { conn: conn.0, ..me });
            }
            Output::Connect { conn, to } => {
                self.trace.mix(b"connect");
                self.trace.mix_u64(conn.0);
                self.trace.mix(to.as_bytes());
                let target = self.names[&to];
                self.open(End { conn: conn.0, ..me }, target);
            }
            Output::Persist { token, records } => {
                let mut bytes = Vec::new();
                for r in &records {
                    store::encode(r, &mut bytes);
                    if let Record::Accepted { id, body, .. } = r
                        && let Host::Node(n) = &self.hosts[host]
                        && let Some(at) = n.marker.find(body)
                        && let Some(header) = parse_hex16(&body[at + n.marker.needle().len()..])
                    {
                        let key = MsgKey {
                            host,
                            epoch: n.store_epoch,
                            id: id.0,
                        };
                        self.ledger.header_id.insert(key, header);
                    }
                }
                self.trace.mix_u64(token);
                self.trace.mix(&bytes);
                if let Host::Node(n) = &mut self.hosts[host] {
                    n.unsynced.push((token, bytes));
                    n.persists += 1;
                }
                let sync = self.now + self.sync_delay;
                self.push(
                    sync,
                    Ev::Persisted {
                        host,
                        life: me.life,
                        token,
                    },
                );
            }
            Output::Event(e) => {
                let text = format!("{e:?}");
                self.trace.mix(text.as_bytes());
                if self.log.is_some() {
                    let name = self.name_of(host);
                    self.note(|| format!("{name} event {text}"));
                }
                if let Host::Node(n) = &mut self.hosts[host] {
                    n.events.push((self.now, e.clone()));
                }
                self.ledger
                    .journal
                    .push((self.now, Entry::Event { host, event: e }));
            }
        }
    }

    fn transmit(&mut self, me: End, data: Vec<u8>) {
        let Some(&(to, wire)) = self.links.get(&me) else {
            return;
        };
        let carries = self.bodies_in(me.host, &data);
        let Some(w) = self.wires.get_mut(&wire) else {
            return;
        };
        if w.stalled {
            return;
        }
        let dir = usize::from(me != w.a);
        if dir == 0 {
            // The sender moved on: it read the final reply of every body it sent before.
            w.pending.clear();
            if !carries.is_empty() {
                w.awaiting = replies_awaited(&data);
            }
        }
        if self.log.is_some() {
            let who = self.end_name(me);
            let shown = String::from_utf8_lossy(&data[..data.len().min(60)]).into_owned();
            self.note(|| format!("send #{wire} {who} {} bytes {shown:?}", data.len()));
        }
        let mut cuts = Vec::new();
        if self.fragment && data.len() > 1 {
            for _ in 0..self.rng.usize(0..3) {
                cuts.push(self.rng.usize(1..data.len()));
            }
            cuts.sort_unstable();
            cuts.dedup();
        }
        cuts.push(data.len());
        let mut from = 0;
        let last = cuts.len() - 1;
        let mut carries = Some(carries);
        for (i, cut) in cuts.into_iter().enumerate() {
            let delay = self.delay();
            let Some(w) = self.wires.get_mut(&wire) else {
                return;
            };
            let at = (self.now + delay).max(w.last_at[dir]);
            w.last_at[dir] = at;
            let piece = data[from..cut].to_vec();
            from = cut;
            let carries = if i == last {
                carries.take().unwrap_or_default()
            } else {
                Vec::new()
            };
            self.push(
                at,
                Ev::Deliver {
                    wire,
                    to,
                    data: piece,
                    carries,
                },
            );
        }
    }

    /// The transfers still pending on `wire` are in doubt.
    fn settle_pending(&mut self, wire: u64) {
        if let Some(w) = self.wires.get_mut(&wire) {
            for key in std::mem::take(&mut w.pending) {
                if w.faulted {
                    *self.ledger.in_doubt.entry(key).or_insert(0) += 1;
                } else {
                    *self.ledger.in_doubt_without_fault.entry(key).or_insert(0) += 1;
                }
            }
        }
    }

    /// Takes one end off its connection: nothing reaches it any more. Once the connecting end
    /// is gone no final reply can reach it, so what it was waiting for is in doubt; once both
    /// ends are gone the connection is forgotten.
    fn remove_end(&mut self, end: End) -> Option<(End, u64)> {
        let (peer, wire) = self.links.remove(&end)?;
        if self.wires.get(&wire).is_some_and(|w| w.a == end) {
            self.settle_pending(wire);
        }
        if !self.links.contains_key(&peer) {
            self.settle_pending(wire);
            self.wires.remove(&wire);
        }
        Some((peer, wire))
    }

    /// Tells `peer` that the other end of `wire` closed, after the bytes already on their way
    /// to it (FIFO); nothing when the connection stalled.
    fn close_towards(&mut self, peer: End, wire: u64) {
        let Some((stalled, last)) = self
            .wires
            .get(&wire)
            .map(|w| (w.stalled, w.last_at[usize::from(peer == w.a)]))
        else {
            return;
        };
        if stalled {
            return;
        }
        let delay = self.delay();
        let at = (self.now + delay).max(last);
        self.push(at, Ev::Closed { to: peer });
    }

    /// A host closed its end (normally, as far as it knows): what it sent is still delivered,
    /// then the peer sees the close.
    fn close(&mut self, me: End) {
        if let Some((peer, wire)) = self.remove_end(me)
            && self.links.contains_key(&peer)
        {
            self.close_towards(peer, wire);
        }
    }

    /// Ends a connection abnormally: both ends see it close, or (`stall`) neither does and
    /// nothing more gets through.
    fn break_wire(&mut self, wire: u64, kind: FaultKind) {
        let Some(w) = self.wires.get(&wire) else {
            return;
        };
        let (a, b) = (w.a, w.b);
        self.record_fault(kind, a.host, b.host);
        if let Some(w) = self.wires.get_mut(&wire) {
            w.faulted = true;
        }
        self.settle_pending(wire);
        if kind == FaultKind::Stall {
            if let Some(w) = self.wires.get_mut(&wire) {
                w.stalled = true;
            }
            return;
        }
        // Reset: what is on its way in either direction is lost; both ends hear of it.
        for end in [a, b] {
            if self.remove_end(end).is_some() {
                let delay = self.delay();
                self.push(self.now + delay, Ev::Closed { to: end });
            }
        }
    }

    /// Runs until `until` or until nothing is left to do.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            self.steps += 1;
            assert!(
                self.steps < self.max_steps,
                "the world never settles (livelock)"
            );
            let next_event = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self.next_timer();
            let next = [next_event, next_timer].into_iter().flatten().min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.now = self.now.max(until);
                return;
            };
            self.now = self.now.max(next);
            if next_event == Some(next) {
                let (_, ev) = self.queue.pop_first().expect("peeked");
                self.event(ev);
            } else {
                self.fire_timers();
            }
        }
    }

    /// Runs until nothing is left to do (no event, no timer; `now` stays at the last thing
    /// done) or until `limit`; true when idle.
    pub fn run_to_quiescence(&mut self, limit: Instant) -> bool {
        loop {
            let next_event = self.queue.keys().next().map(|(t, _)| *t);
            let next = [next_event, self.next_timer()].into_iter().flatten().min();
            match next {
                None => return true,
                Some(t) if t > limit => {
                    self.run_until(limit);
                    return false;
                }
                Some(t) => self.run_until(t),
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        for host in 0..self.hosts.len() {
            if self.timers[host].is_none_or(|t| t > now) {
                continue;
            }
            let mut start = false;
            match &mut self.hosts[host] {
                Host::Node(n) => {
                    if let Some(node) = n.node.as_mut()
                        && node.poll_timeout().is_some_and(|t| t <= now)
                    {
                        node.handle_timeout(now);
                    }
                }
                Host::Sink(s) => {
                    for session in s.sessions.values_mut() {
                        session.handle_timeout(now);
                    }
                }
                Host::Client(c) => {
                    if let Some(s) = c.session.as_mut() {
                        s.handle_timeout(now);
                    }
                    if c.session.is_none() && c.next_attempt.is_some_and(|t| t <= now) {
                        c.next_attempt = None;
                        start = true;
                    }
                }
            }
            self.drain(host);
            if start {
                self.start_attempt(host);
            }
        }
    }

    /// A client opens a new session for every message not acknowledged yet.
    fn start_attempt(&mut self, host: usize) {
        let now = self.now;
        let Host::Client(c) = &mut self.hosts[host] else {
            return;
        };
        let pending = c.pending();
        if pending.is_empty() {
            return;
        }
        let mut session = ClientSession::new(c.config.clone(), now).expect("valid client config");
        for (tag, to) in &c.messages {
            if pending.contains(tag) {
                let msg = OutboundMessage {
                    id: *tag,
                    envelope: envelope_to(to).into(),
                    body: body_for(*tag).into(),
                    shadow_id: None,
                };
                session.queue_message(msg, now).expect("session open");
            }
        }
        session.finish(false, now).expect("session open");
        c.session = Some(Box::new(session));
        c.conn += 1;
        c.attempts += 1;
        let (conn, server) = (c.conn, c.server);
        self.open(
            End {
                host,
                life: 0,
                conn,
            },
            server,
        );
        self.drain(host);
    }

    fn event(&mut self, ev: Ev) {
        let now = self.now;
        let host = match &ev {
            Ev::Deliver { to, .. } | Ev::Closed { to } => to.host,
            Ev::Connected { from, .. } | Ev::ConnectFailed { from } => from.host,
            Ev::Persisted { host, .. } | Ev::Restart { host } => *host,
        };
        match ev {
            Ev::Restart { host } => return self.restart(host),
            Ev::Deliver {
                wire,
                to,
                data,
                carries,
            } => {
                // Bytes for a connection that died on the way are lost with it.
                let stalled = self.wires.get(&wire).is_none_or(|w| w.stalled);
                if stalled || !self.links.contains_key(&to) || !self.is_current(to) {
                    return;
                }
                let Some(w) = self.wires.get_mut(&wire) else {
                    return;
                };
                let mut strike = None;
                if let Some((n, kind)) = w.plan.as_mut() {
                    *n -= 1;
                    if *n == 0 {
                        strike = Some(*kind);
                        w.plan = None;
                    }
                }
                if let Some(kind) = strike {
                    let label = format!("{kind:?} {}", fragment_label(&data));
                    *self.ledger.strikes.entry(label).or_insert(0) += 1;
                }
                match strike {
                    Some(LinkFault::Drop) => return self.break_wire(wire, FaultKind::Drop),
                    Some(LinkFault::Stall) => return self.break_wire(wire, FaultKind::Stall),
                    _ => {}
                }
                let mut contact = None;
                if to == w.b {
                    w.pending.extend(carries);
                } else {
                    w.replies.extend_from_slice(&data);
                    while let Some(end) = memmem::find(&w.replies, b"\r\n") {
                        let line = &w.replies[..end];
                        let last_line = line.get(3).is_none_or(|b| *b == b' ');
                        if last_line && w.awaiting > 0 {
                            w.awaiting -= 1;
                            if w.awaiting == 0 {
                                // The final reply reached the sender: nothing is in doubt.
                                w.pending.clear();
                            }
                        }
                        if w.watch
                            && (line.starts_with(b"251 ")
                                || (line.starts_with(b"250 ") && is_guid(&line[4..])))
                        {
                            contact = Some(Entry::Contact {
                                shadow: w.a.host,
                                primary: w.b.host,
                            });
                        }
                        w.replies.drain(..end + 2);
                    }
                }
                if let Some(entry) = contact {
                    self.ledger.journal.push((now, entry));
                }
                match &mut self.hosts[to.host] {
                    Host::Node(n) => {
                        if let Some(node) = n.node.as_mut() {
                            node.handle_input(Input::Received(ConnId(to.conn), &data), now);
                        }
                    }
                    Host::Sink(s) => {
                        if let Some(session) = s.sessions.get_mut(&to.conn) {
                            session.handle_input(&data, now);
                        }
                    }
                    Host::Client(c) => {
                        if let Some(s) = c.session.as_mut()
                            && c.conn == to.conn
                        {
                            s.handle_input(&data, now);
                        }
                    }
                }
                self.drain(to.host);
                if strike == Some(LinkFault::Cut) {
                    self.break_wire(wire, FaultKind::Cut);
                }
                return;
            }
            Ev::Closed { to } => {
                // A reset already took the end off; a close after data takes it off now.
                let _ = self.remove_end(to);
                if !self.is_current(to) {
                    return;
                }
                match &mut self.hosts[to.host] {
                    Host::Node(n) => {
                        if let Some(node) = n.node.as_mut() {
                            node.handle_input(Input::Closed(ConnId(to.conn)), now);
                        }
                    }
                    Host::Sink(s) => {
                        if let Some(mut session) = s.sessions.remove(&to.conn) {
                            session.handle_eof(now);
                        }
                    }
                    Host::Client(c) => {
                        if let Some(s) = c.session.as_mut()
                            && c.conn == to.conn
                        {
                            s.handle_close(now);
                        }
                    }
                }
            }
            Ev::Connected { from, wire } => {
                if !self.is_current(from) {
                    return;
                }
                // The peer may have died (or the connection broken) since the accept.
                let input = if self.wires.contains_key(&wire) && self.links.contains_key(&from) {
                    Input::Connected(ConnId(from.conn))
                } else {
                    Input::Closed(ConnId(from.conn))
                };
                match &mut self.hosts[from.host] {
                    Host::Node(n) => {
                        if let Some(node) = n.node.as_mut() {
                            node.handle_input(input, now);
                        }
                    }
                    Host::Client(c) => {
                        if matches!(input, Input::Closed(_))
                            && let Some(s) = c.session.as_mut()
                            && c.conn == from.conn
                        {
                            s.handle_close(now);
                        }
                    }
                    Host::Sink(_) => {}
                }
            }
            Ev::ConnectFailed { from } => {
                if !self.is_current(from) {
                    return;
                }
                match &mut self.hosts[from.host] {
                    Host::Node(n) => {
                        if let Some(node) = n.node.as_mut() {
                            node.handle_input(Input::ConnectFailed(ConnId(from.conn)), now);
                        }
                    }
                    Host::Client(c) => {
                        if let Some(s) = c.session.as_mut()
                            && c.conn == from.conn
                        {
                            s.handle_close(now);
                        }
                    }
                    Host::Sink(_) => {}
                }
            }
            Ev::Persisted { host, life, token } => {
                if let Host::Node(n) = &mut self.hosts[host] {
                    if n.restarts != life {
                        return;
                    }
                    let Some(node) = n.node.as_mut() else { return };
                    // Group commit: everything written up to this batch is now durable.
                    let Some(pos) = n.unsynced.iter().position(|(t, _)| *t == token) else {
                        return;
                    };
                    for (t, bytes) in n.unsynced.drain(..=pos) {
                        n.disk.extend_from_slice(&bytes);
                        node.handle_input(Input::Persisted(t), now);
                    }
                }
            }
        }
        self.drain(host);
    }

    /// Crashes a node's machine: its memory is gone, its unsynced writes are lost but their
    /// first `torn` bytes (records written but never reported durable may survive, and the
    /// last one may be torn), its connections drop with whatever was on its way
    /// to or from it. It restarts after `downtime`.
    pub fn crash(&mut self, name: &str, torn: usize, downtime: Duration) {
        self.crash_host(self.names[name], torn, downtime, false);
    }

    /// Kills a node's process: as [`World::crash`], but what it had already sent still
    /// arrives (the kernel flushes it) before its peers see the connections close.
    pub fn kill(&mut self, name: &str, torn: usize, downtime: Duration) {
        self.crash_host(self.names[name], torn, downtime, true);
    }

    /// Crashes (`flush`: kills) a node right after its `steps`-th step from now (a step: it
    /// handled one input, timer or connection, and its outputs went out); with `wipe`, it
    /// comes back with an empty store.
    pub fn crash_after_steps(&mut self, name: &str, steps: u64, plan: CrashPlan) {
        if let Host::Node(n) = &mut self.hosts[self.names[name]] {
            n.crash_plan = Some((steps.max(1), plan));
        }
    }

    /// Cancels every planned crash.
    pub fn disarm(&mut self) {
        for h in &mut self.hosts {
            if let Host::Node(n) = h {
                n.crash_plan = None;
            }
        }
    }

    fn crash_host(&mut self, host: usize, torn: usize, downtime: Duration, flush: bool) {
        let now = self.now;
        if let Host::Node(n) = &mut self.hosts[host] {
            if n.node.take().is_none() {
                return;
            }
            let mut keep = torn;
            for (_, bytes) in n.unsynced.drain(..) {
                let take = keep.min(bytes.len());
                n.disk.extend_from_slice(&bytes[..take]);
                keep -= take;
            }
            n.crash_plan = None;
            if let Some(life) = n.lives.last_mut() {
                life.crashed = Some(now);
            }
        }
        self.refresh_timer(host);
        self.record_fault(FaultKind::Crash, host, host);
        let ends: Vec<End> = self
            .links
            .keys()
            .filter(|e| e.host == host)
            .copied()
            .collect();
        for end in ends {
            if let Some(w) = self
                .links
                .get(&end)
                .and_then(|(_, wire)| self.wires.get_mut(wire))
            {
                w.faulted = true;
            }
            let Some((peer, wire)) = self.remove_end(end) else {
                continue;
            };
            if !self.links.contains_key(&peer) {
                continue;
            }
            if flush {
                self.close_towards(peer, wire);
            } else if !self.wires.get(&wire).is_some_and(|w| w.stalled) {
                let _ = self.remove_end(peer);
                let delay = self.delay();
                self.push(now + delay, Ev::Closed { to: peer });
            }
        }
        self.push(now + downtime, Ev::Restart { host });
    }

    fn restart(&mut self, host: usize) {
        let now = self.now;
        let unix = self.unix_start + (now - self.start).as_millis() as u64;
        let Host::Node(n) = &mut self.hosts[host] else {
            return;
        };
        let decoded = store::decode(&n.disk);
        // A torn tail is cut off before appending again, as the spool does.
        n.disk.truncate(decoded.valid_len);
        let state = StoreState::replay(&decoded.records);
        // A store without its database id is a new store: new id, message ids from 1 again.
        let new_store = state.database_id.is_none();
        if new_store {
            n.store_epoch += 1;
        }
        let mut copies = Vec::new();
        for (id, m) in &state.messages {
            match &m.shadow {
                Some(copy) => copies.push((id.0, copy.primary.to_string())),
                None => {
                    // Keyed by the message its body came with (its own Received header).
                    let header = n
                        .marker
                        .find(&m.body)
                        .and_then(|at| parse_hex16(&m.body[at + n.marker.needle().len()..]))
                        .unwrap_or(id.0);
                    let key = MsgKey {
                        host,
                        epoch: n.store_epoch,
                        id: header,
                    };
                    *self.ledger.requeued.entry(key).or_insert(0) += 1;
                }
            }
        }
        n.restarts += 1;
        let seed = life_seed(n.seed, n.restarts);
        let node = Node::recover(n.config.clone(), state, seed, now, unix);
        n.lives.push(Life {
            started: now,
            crashed: None,
            empty_store: new_store,
            recovered: node.stats(),
        });
        n.node = Some(node);
        let name = n.name.clone();
        self.note(|| format!("restart {name}"));
        self.trace.mix(b"restart");
        self.trace.mix_u64(host as u64);
        self.ledger.journal.push((
            now,
            Entry::Restart {
                host,
                new_store,
                copies,
            },
        ));
        self.drain(host);
    }

    /// Crashes a node and brings it back with an empty store (a new database id).
    pub fn wipe(&mut self, name: &str, downtime: Duration) {
        self.wipe_host(self.names[name], downtime, false);
    }

    fn wipe_host(&mut self, host: usize, downtime: Duration, flush: bool) {
        self.crash_host(host, 0, downtime, flush);
        self.record_fault(FaultKind::Wipe, host, host);
        if let Host::Node(n) = &mut self.hosts[host] {
            n.disk.clear();
        }
    }

    /// `a` and `b` cannot connect to each other until [`World::heal`]; their open connections
    /// stall (half-open, `stall`) or are cut.
    pub fn partition(&mut self, a: &str, b: &str, stall: bool) {
        let (ha, hb) = (self.names[a], self.names[b]);
        self.blocked.insert(Self::pair(ha, hb));
        self.record_fault(FaultKind::Partition, ha, hb);
        let wires: Vec<u64> = self
            .wires
            .iter()
            .filter(|(_, w)| Self::pair(w.a.host, w.b.host) == Self::pair(ha, hb) && !w.stalled)
            .map(|(id, _)| *id)
            .collect();
        for wire in wires {
            let kind = if stall {
                FaultKind::Stall
            } else {
                FaultKind::Cut
            };
            self.break_wire(wire, kind);
        }
    }

    /// Ends the partition between `a` and `b`.
    pub fn heal(&mut self, a: &str, b: &str) {
        let (ha, hb) = (self.names[a], self.names[b]);
        if self.blocked.remove(&Self::pair(ha, hb)) {
            self.record_fault(FaultKind::Heal, ha, hb);
        }
    }

    /// Nobody can connect to `name` (`true`) or everybody can again.
    pub fn set_down(&mut self, name: &str, down: bool) {
        let host = self.names[name];
        let changed = if down {
            self.down.insert(host)
        } else {
            self.down.remove(&host)
        };
        if changed {
            let kind = if down { FaultKind::Down } else { FaultKind::Up };
            self.record_fault(kind, host, host);
        }
    }

    /// How many copies of each tagged message reached the sink.
    pub fn delivered(&self, sink: &str) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for copy in &self.sink(sink).copies {
            if let Some(tag) = tag_of(&copy.body) {
                *counts.entry(tag).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Decoded records on a node's disk.
    pub fn records(&self, name: &str) -> Vec<Record> {
        store::decode(&self.node_host(name).disk).records
    }

    /// Open connection ends.
    pub fn open_ends(&self) -> usize {
        self.links.len()
    }
}

/// A hub and edge configuration for tests: timers in milliseconds.
pub fn fast_config(name: &str) -> NodeConfig {
    let mut c = NodeConfig::new(name);
    c.shadow.heartbeat_interval = Duration::from_millis(200);
    c.shadow.resubmit_after = Duration::from_millis(1000);
    c.shadow.auto_discard = Duration::from_secs(3600);
    c.retry.first = Duration::from_millis(100);
    c.retry.max = Duration::from_millis(400);
    c.retry.lifetime = Duration::from_secs(3600);
    c.max_ack_delay = Duration::ZERO;
    c.relay_clients = vec!["127.0.0.0/8".parse().unwrap()];
    c
}

/// hub -> (edge1, edge2) -> sink, the hub shadowing through the edges.
pub fn hub_and_two_edges(world: &mut World) {
    world.add_sink("sink");
    for edge in ["edge1", "edge2"] {
        let mut c = fast_config(edge);
        c.next_hops = vec!["sink".into()];
        c.offer_shadow = true;
        c.shadow_peers = vec!["127.0.0.0/8".parse().unwrap()];
        world.add_node(edge, c, edge.len() as u64);
    }
    let mut c = fast_config("hub");
    c.next_hops = vec!["edge1".into(), "edge2".into()];
    c.shadow_next_hops = true;
    world.add_node("hub", c, 7);
}
