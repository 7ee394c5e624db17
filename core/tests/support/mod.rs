//! A deterministic world for Node tests: nodes, a final sink and submitting clients on virtual
//! time, joined by in-memory connections. Every byte, record and timer goes through the
//! nodes' public sans-IO interface, exactly as a runtime binding drives them.
//!
//! Faults are methods: crash a node (it restarts later from the records it had persisted,
//! with a torn tail), cut a connection, partition a host.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xshadow_core::node::{ConnId, Input, Node, NodeConfig, NodeEvent, Output};
use xshadow_core::session::{
    ClientConfig, ClientEvent, ClientSession, Envelope, OutboundMessage, Recipient, ServerConfig,
    ServerEvent, ServerSession,
};
use xshadow_core::store::{self, Record, StoreState};
use xshadow_core::wire::path::{ForwardPath, Mailbox, ReversePath};
use xshadow_core::wire::{MailParams, RcptParams};

/// Where a connection's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct End {
    pub host: usize,
    pub conn: u64,
}

/// What a host is.
pub enum Host {
    Node(Box<NodeHost>),
    Sink(SinkHost),
    Client(ClientHost),
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
    pub events: Vec<NodeEvent>,
    pub restarts: u32,
}

pub struct SinkHost {
    pub sessions: BTreeMap<u64, ServerSession>,
    pub config: Arc<ServerConfig>,
    pub next_conn: u64,
    /// Every message body the sink stored, in arrival order.
    pub received: Vec<Vec<u8>>,
}

pub struct ClientHost {
    pub session: Option<Box<ClientSession>>,
    /// Message ids the hub acknowledged (250 to the end of data).
    pub acknowledged: Vec<u64>,
    pub refused: Vec<u64>,
}

enum Ev {
    Deliver {
        to: End,
        data: Vec<u8>,
    },
    Closed {
        to: End,
    },
    Connected {
        host: usize,
        conn: ConnId,
        peer: usize,
    },
    ConnectFailed {
        host: usize,
        conn: ConnId,
    },
    Persisted {
        host: usize,
        token: u64,
    },
    Restart {
        host: usize,
    },
}

pub struct World {
    pub now: Instant,
    pub start: Instant,
    pub hosts: Vec<Host>,
    pub names: BTreeMap<String, usize>,
    /// Each end of a live connection and its peer.
    pub links: BTreeMap<End, End>,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    pub latency: Duration,
    pub sync_delay: Duration,
    /// Hosts that cannot be reached (connects fail).
    pub down: BTreeSet<usize>,
    pub steps: u64,
    unix_start: u64,
}

pub const UNIX_START: u64 = 1_796_400_103_000;

/// A message body that names itself, so the sink's copies can be counted per message.
pub fn body_for(tag: u64) -> Vec<u8> {
    format!("Subject: message {tag}\r\nX-Test-Id: {tag}\r\n\r\nbody of {tag}\r\n.leading dot\r\n")
        .into_bytes()
}

/// Reads the X-Test-Id back out of a stored body.
pub fn tag_of(body: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(body);
    let at = text.find("X-Test-Id: ")?;
    text[at + 11..].split("\r\n").next()?.parse().ok()
}

pub fn envelope(to: &str) -> Envelope {
    Envelope {
        from: ReversePath::Mailbox(Mailbox::new("alice", "example.org")),
        params: MailParams::default(),
        recipients: vec![Recipient {
            to: ForwardPath::Mailbox(Mailbox::new(to.to_owned(), "example.net")),
            params: RcptParams::default(),
        }],
    }
}

impl World {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            now,
            start: now,
            hosts: Vec::new(),
            names: BTreeMap::new(),
            links: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            latency: Duration::from_millis(1),
            sync_delay: Duration::from_millis(2),
            down: BTreeSet::new(),
            steps: 0,
            unix_start: UNIX_START,
        }
    }

    fn ip(host: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, (host + 1) as u8))
    }

    pub fn add_node(&mut self, name: &str, config: NodeConfig, seed: u64) -> usize {
        let host = self.hosts.len();
        let node = Node::new(config.clone(), seed, self.now, self.unix_start);
        self.hosts.push(Host::Node(Box::new(NodeHost {
            name: name.to_owned(),
            config,
            node: Some(node),
            disk: Vec::new(),
            unsynced: Vec::new(),
            events: Vec::new(),
            restarts: 0,
        })));
        self.names.insert(name.to_owned(), host);
        self.drain(host);
        host
    }

    pub fn add_sink(&mut self, name: &str) -> usize {
        let host = self.hosts.len();
        let mut config = ServerConfig::new(name);
        config.chunking = true;
        self.hosts.push(Host::Sink(SinkHost {
            sessions: BTreeMap::new(),
            config: Arc::new(config),
            next_conn: 1,
            received: Vec::new(),
        }));
        self.names.insert(name.to_owned(), host);
        host
    }

    /// A client that connects to `server` and submits `messages` (tag, recipient) in one
    /// session.
    pub fn add_client(&mut self, server: &str, messages: &[(u64, &str)]) -> usize {
        let host = self.hosts.len();
        let mut session =
            ClientSession::new(ClientConfig::new("client.example"), self.now).unwrap();
        for (tag, to) in messages {
            let msg = OutboundMessage {
                id: *tag,
                envelope: envelope(to),
                body: body_for(*tag).into(),
                shadow_id: None,
            };
            session.queue_message(msg, self.now).unwrap();
        }
        session.finish(false, self.now).unwrap();
        self.hosts.push(Host::Client(ClientHost {
            session: Some(Box::new(session)),
            acknowledged: Vec::new(),
            refused: Vec::new(),
        }));
        let to = self.names[server];
        self.open(host, 1, to);
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

    fn push(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    /// Opens a connection from `from` (its end named `conn`) to host `to`.
    fn open(&mut self, from: usize, conn: u64, to: usize) {
        let at = self.now + self.latency;
        if self.down.contains(&to) || self.is_crashed(to) {
            self.push(
                at,
                Ev::ConnectFailed {
                    host: from,
                    conn: ConnId(conn),
                },
            );
            return;
        }
        let peer_conn = match &mut self.hosts[to] {
            Host::Node(n) => {
                let node = n.node.as_mut().expect("checked up");
                node.accept(Self::ip(from), self.now).0
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
        let a = End { host: from, conn };
        let b = End {
            host: to,
            conn: peer_conn,
        };
        self.links.insert(a, b);
        self.links.insert(b, a);
        self.push(
            at,
            Ev::Connected {
                host: from,
                conn: ConnId(conn),
                peer: to,
            },
        );
        self.drain(to);
    }

    fn is_crashed(&self, host: usize) -> bool {
        matches!(&self.hosts[host], Host::Node(n) if n.node.is_none())
    }

    /// Moves every pending output of a host into the world.
    fn drain(&mut self, host: usize) {
        loop {
            let mut outputs = Vec::new();
            match &mut self.hosts[host] {
                Host::Node(n) => {
                    let Some(node) = n.node.as_mut() else { return };
                    while let Some(o) = node.poll_output() {
                        outputs.push(o);
                    }
                }
                Host::Sink(s) => {
                    let now = self.now;
                    for (&c, session) in s.sessions.iter_mut() {
                        let mut data = Vec::new();
                        loop {
                            let mut moved = session.poll_transmit(&mut data).is_some();
                            while let Some(e) = session.poll_event() {
                                moved = true;
                                match e {
                                    ServerEvent::MailFrom => session.accept_mail(now).unwrap(),
                                    ServerEvent::RcptTo => session.accept_rcpt(now).unwrap(),
                                    ServerEvent::MessageComplete(m) => {
                                        s.received.push(m.body.clone());
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
                }
                Host::Client(c) => {
                    let Some(session) = c.session.as_mut() else {
                        return;
                    };
                    let mut data = Vec::new();
                    let _ = session.poll_transmit(&mut data);
                    if !data.is_empty() {
                        outputs.push(Output::Transmit {
                            conn: ConnId(1),
                            data,
                        });
                    }
                    while let Some(e) = session.poll_event() {
                        match e {
                            ClientEvent::MessageAccepted { id, .. } => c.acknowledged.push(id),
                            ClientEvent::MessageFailed { id, .. }
                            | ClientEvent::MessageDeferred { id, .. } => c.refused.push(id),
                            ClientEvent::Closed { .. } => outputs.push(Output::Close(ConnId(1))),
                            _ => {}
                        }
                    }
                    if session.is_closed() {
                        c.session = None;
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

    fn output(&mut self, host: usize, output: Output) {
        let at = self.now + self.latency;
        match output {
            Output::Transmit { conn, data } => {
                if let Some(&to) = self.links.get(&End { host, conn: conn.0 }) {
                    self.push(at, Ev::Deliver { to, data });
                }
            }
            Output::Close(conn) => {
                if let Some(to) = self.links.remove(&End { host, conn: conn.0 }) {
                    self.links.remove(&to);
                    self.push(at, Ev::Closed { to });
                }
            }
            Output::Connect { conn, to } => {
                let target = self.names[&to];
                self.open(host, conn.0, target);
            }
            Output::Persist { token, records } => {
                let mut bytes = Vec::new();
                for r in &records {
                    store::encode(r, &mut bytes);
                }
                if let Host::Node(n) = &mut self.hosts[host] {
                    n.unsynced.push((token, bytes));
                }
                let sync = self.now + self.sync_delay;
                self.push(sync, Ev::Persisted { host, token });
            }
            Output::Event(e) => {
                if let Host::Node(n) = &mut self.hosts[host] {
                    n.events.push(e);
                }
            }
        }
    }

    /// Runs until `until` or until nothing is left to do.
    pub fn run_until(&mut self, until: Instant) {
        loop {
            self.steps += 1;
            assert!(
                self.steps < 50_000_000,
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
                let (key, ev) = self.queue.pop_first().expect("peeked");
                let _ = key;
                self.event(ev);
            } else {
                self.fire_timers();
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        self.hosts
            .iter()
            .filter_map(|h| match h {
                Host::Node(n) => n.node.as_ref().and_then(Node::poll_timeout),
                Host::Sink(s) => s
                    .sessions
                    .values()
                    .filter_map(ServerSession::poll_timeout)
                    .min(),
                Host::Client(c) => c.session.as_ref().and_then(|s| s.poll_timeout()),
            })
            .min()
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        for host in 0..self.hosts.len() {
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
                }
            }
            self.drain(host);
        }
    }

    fn event(&mut self, ev: Ev) {
        let now = self.now;
        let host = match &ev {
            Ev::Deliver { to, .. } | Ev::Closed { to } => to.host,
            Ev::Connected { host, .. }
            | Ev::ConnectFailed { host, .. }
            | Ev::Persisted { host, .. }
            | Ev::Restart { host } => *host,
        };
        match ev {
            Ev::Restart { host } => return self.restart(host),
            Ev::Deliver { to, data } => {
                // Bytes for a connection that died on the way are lost with it.
                if !self.links.contains_key(&to) {
                    return;
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
                        if let Some(s) = c.session.as_mut() {
                            s.handle_input(&data, now);
                        }
                    }
                }
            }
            Ev::Closed { to } => match &mut self.hosts[to.host] {
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
                    if let Some(s) = c.session.as_mut() {
                        s.handle_close(now);
                    }
                }
            },
            Ev::Connected { host, conn, peer } => {
                // The peer may have died between accept and now.
                if self.is_crashed(peer) || !self.links.contains_key(&End { host, conn: conn.0 }) {
                    self.links.remove(&End { host, conn: conn.0 });
                    return self.event(Ev::ConnectFailed { host, conn });
                }
                if let Host::Node(n) = &mut self.hosts[host]
                    && let Some(node) = n.node.as_mut()
                {
                    node.handle_input(Input::Connected(conn), now);
                }
            }
            Ev::ConnectFailed { host, conn } => match &mut self.hosts[host] {
                Host::Node(n) => {
                    if let Some(node) = n.node.as_mut() {
                        node.handle_input(Input::ConnectFailed(conn), now);
                    }
                }
                Host::Client(c) => {
                    if let Some(s) = c.session.as_mut() {
                        s.handle_close(now);
                    }
                }
                Host::Sink(_) => {}
            },
            Ev::Persisted { host, token } => {
                if let Host::Node(n) = &mut self.hosts[host] {
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

    /// Crashes a node: its memory is gone, unsynced writes are lost except `torn` bytes of the
    /// first one (a torn tail), its connections drop. It restarts after `downtime`.
    pub fn crash(&mut self, name: &str, torn: usize, downtime: Duration) {
        let host = self.names[name];
        if let Host::Node(n) = &mut self.hosts[host] {
            if n.node.take().is_none() {
                return;
            }
            if let Some((_, bytes)) = n.unsynced.first() {
                let keep = torn.min(bytes.len().saturating_sub(1));
                let tail = bytes[..keep].to_vec();
                n.disk.extend_from_slice(&tail);
            }
            n.unsynced.clear();
        }
        let ends: Vec<(End, End)> = self
            .links
            .iter()
            .filter(|(a, _)| a.host == host)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (a, b) in ends {
            self.links.remove(&a);
            self.links.remove(&b);
            let at = self.now + self.latency;
            self.push(at, Ev::Closed { to: b });
        }
        let at = self.now + downtime;
        self.push(at, Ev::Restart { host });
    }

    fn restart(&mut self, host: usize) {
        let now = self.now;
        let unix = self.unix_start + (now - self.start).as_millis() as u64;
        if let Host::Node(n) = &mut self.hosts[host] {
            let decoded = store::decode(&n.disk);
            // A torn tail is cut off before appending again, as the spool does.
            n.disk.truncate(decoded.valid_len);
            let state = StoreState::replay(&decoded.records);
            n.restarts += 1;
            let seed = 1000 + u64::from(n.restarts);
            n.node = Some(Node::recover(n.config.clone(), state, seed, now, unix));
        }
        self.drain(host);
    }

    /// Crashes a node and brings it back with an empty store (a new database id).
    pub fn wipe(&mut self, name: &str, downtime: Duration) {
        self.crash(name, 0, downtime);
        if let Host::Node(n) = &mut self.hosts[self.names[name]] {
            n.disk.clear();
        }
    }

    /// How many copies of each tagged message reached the sink.
    pub fn delivered(&self, sink: &str) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for body in &self.sink(sink).received {
            if let Some(tag) = tag_of(body) {
                *counts.entry(tag).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Decoded records on a node's disk.
    pub fn records(&self, name: &str) -> Vec<Record> {
        store::decode(&self.node_host(name).disk).records
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
