//! Node benchmarks: messages per second through an in-memory hub -> edge -> sink graph of real
//! `Node`s. Results and how to read them: BENCHMARKS.md.
//!
//! The graph is a small driver of the nodes' sans-IO interface, as a runtime binding drives
//! them, with everything instant: connections are in memory (a `Connect` is accepted on the
//! spot, bytes are delivered in order, and the buffers that carried them are reused for the
//! sink's and the client's output), every `Persist` is answered with `Persisted` as soon as
//! it is seen ("persisted instantly": the records are dropped, or with `_spool` encoded with
//! `store::encode` into a reused buffer), and the sink is a `ServerSession` that accepts
//! everything. Work is a FIFO queue of deliveries, closes, connects and persist answers; time
//! does not move, so no timer fires (no heartbeat is needed: every hub -> edge session ends
//! with XQDISCARD, which is what drains the hub's copies in steady state).
//!
//! Both nodes run the default `NodeConfig` except: `max_ack_delay` is 0 (250 as soon as the
//! message is persisted, also to a sender without XSHADOW; with the default delayed
//! acknowledgement every message of the `plain` side and of `smtp_*` would wait for the next
//! hop's 250 before the sender may send the next one), and `_1conn` sets
//! `max_connections_per_hop` to 1 (default 4).
//!
//! The graph lives across iterations, as a relay does. One iteration submits [`MESSAGES`]
//! messages on the hub and runs the queue until it is empty and the sink holds all of them:
//!
//! - `submit_*`: with `Node::submit` on the hub (the records of all messages go out before
//!   any answer comes back, so they share one hub -> edge session).
//! - `smtp_*`: with one `ClientSession` into the hub carrying all messages (pipelined; the
//!   client sends the next MAIL after the previous 250).
//! - side `xshadow`: the hub shadows through the edge (XSHADOW, `XSHADOW=` per message,
//!   XQDISCARD, shadow copies kept and discarded). Side `plain`: no shadowing anywhere.
//!
//! The check run before timing prints, per batch, how many sessions each hop opened and how
//! many records were persisted.
//!
//! Instruction counts: with `NODE_BENCH_COUNT=<group>/<scenario>/<side>=<runs>` set, the
//! binary runs that one scenario `runs` times (batches) and exits (see BENCHMARKS.md).

mod common;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use xshadow::core::Bytes;
use xshadow::core::node::{ConnId, Input, Node, NodeConfig, NodeEvent, Output};
use xshadow::core::session::{
    ClientConfig, ClientEvent, ClientSession, OutboundMessage, ServerConfig, ServerSession,
};
use xshadow::core::store;

use common::{
    CountingAlloc, KIB, Seen, answer_sink_events, count_allocations, envelope, message_body, on_cpu,
};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Messages per iteration.
const MESSAGES: usize = 100;

const UNIX_START: u64 = 1_796_400_103_000;

const HUB: usize = 0;
const EDGE: usize = 1;
const SINK: usize = 2;
const CLIENT: usize = 3;

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

fn ip(host: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, (host + 1) as u8))
}

// ---------------------------------------------------------------------------------------------
// The graph
// ---------------------------------------------------------------------------------------------

/// The driver's own maps, with a cheap hash (their keys are small integers), so that the
/// driver's bookkeeping stays out of the way of what is measured.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<MixHasher>>;

#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One end of an in-memory connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct End {
    host: usize,
    conn: u64,
}

struct Sink {
    config: Arc<ServerConfig>,
    sessions: FastMap<u64, ServerSession>,
    next_conn: u64,
}

enum Host {
    Node(Box<Node>),
    Sink(Sink),
    Client(Option<Box<ClientSession>>),
}

enum Ev {
    Deliver { from: usize, to: End, data: Vec<u8> },
    Closed { to: End },
    Connected { host: usize, conn: ConnId },
    Persisted { host: usize, token: u64 },
}

/// What went through the graph, counted on the way.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Counters {
    /// Messages the sink stored, and their bytes.
    sunk: usize,
    sunk_bytes: usize,
    /// Messages the SMTP client got a 250 for.
    acknowledged: usize,
    /// `Connect` outputs, per host.
    connects: [usize; 3],
    /// `Persist` outputs and records, per host.
    persists: [usize; 3],
    records: [usize; 3],
    /// Node events of interest.
    shadowed: usize,
    discarded: usize,
    delivered: usize,
    /// Bytes of encoded records (with `spool`).
    spooled: usize,
}

struct Graph {
    now: Instant,
    hosts: Vec<Host>,
    links: FastMap<End, End>,
    queue: VecDeque<Ev>,
    /// Encode every persisted record (what a spool does before its write).
    spool: Option<Vec<u8>>,
    counters: Counters,
    client_config: ClientConfig,
    next_client_conn: u64,
    /// Delivered transmit buffers, emptied, for the sink's and the client's next output (the
    /// driver's own allocations stay out of what is measured).
    buffers: Vec<Vec<u8>>,
}

/// Spare transmit buffers kept at most.
const SPARE_BUFFERS: usize = 16;

impl Graph {
    /// hub -> edge -> sink; the hub shadows through the edge when `shadow`.
    fn new(shadow: bool, spool: bool, max_conns: Option<usize>, now: Instant) -> Self {
        let mut hub = NodeConfig::new("hub.example");
        hub.next_hops = vec!["edge1.example".into()];
        hub.shadow_next_hops = shadow;
        let mut edge = NodeConfig::new("edge1.example");
        edge.next_hops = vec!["sink.example".into()];
        edge.offer_shadow = shadow;
        edge.shadow_peers = vec![format!("{}/32", ip(HUB)).parse().expect("network")];
        for config in [&mut hub, &mut edge] {
            // 250 once persisted, also to senders without XSHADOW (see the module docs).
            config.max_ack_delay = Duration::ZERO;
            // Time is frozen here, so a lingering session would never end (and the hub would
            // never ask XQDISCARD): sessions end once idle; messages that arrive while a
            // session is still sending join it.
            config.session_linger = Duration::ZERO;
            if let Some(max) = max_conns {
                config.max_connections_per_hop = max;
            }
        }
        let mut graph = Self {
            now,
            hosts: vec![
                Host::Node(Box::new(Node::new(hub, 1, now, UNIX_START))),
                Host::Node(Box::new(Node::new(edge, 2, now, UNIX_START))),
                Host::Sink(Sink {
                    config: Arc::new(ServerConfig::new("sink.example")),
                    sessions: FastMap::default(),
                    next_conn: 1,
                }),
                Host::Client(None),
            ],
            links: FastMap::default(),
            queue: VecDeque::new(),
            spool: spool.then(Vec::new),
            counters: Counters::default(),
            client_config: ClientConfig::new("client.example"),
            next_client_conn: 1,
            buffers: Vec::new(),
        };
        graph.drain_node(HUB);
        graph.drain_node(EDGE);
        graph.run();
        graph
    }

    fn host_of(name: &str) -> usize {
        match name {
            "edge1.example" => EDGE,
            "sink.example" => SINK,
            _ => panic!("no host {name}"),
        }
    }

    fn node(&mut self, host: usize) -> &mut Node {
        match &mut self.hosts[host] {
            Host::Node(node) => node,
            _ => panic!("host {host} is not a node"),
        }
    }

    /// One batch with `Node::submit`: returns the messages that reached the sink.
    fn submit_batch(&mut self, body: &[u8], n: usize) -> usize {
        let before = self.counters.sunk;
        let now = self.now;
        for _ in 0..n {
            let _ = self.node(HUB).submit(envelope(), body, now);
            self.drain_node(HUB);
        }
        self.run();
        self.counters.sunk - before
    }

    /// One batch with an SMTP client into the hub: returns the messages that reached the sink.
    fn smtp_batch(&mut self, messages: &[OutboundMessage]) -> usize {
        let before = self.counters.sunk;
        let now = self.now;
        let mut client = ClientSession::new(self.client_config.clone(), now).expect("config");
        for m in messages {
            client.queue_message(m.clone(), now).expect("open");
        }
        client.finish(false, now).expect("open");
        self.hosts[CLIENT] = Host::Client(Some(Box::new(client)));
        let conn = self.next_client_conn;
        self.next_client_conn += 1;
        let hub_conn = self.node(HUB).accept(ip(CLIENT), now);
        let a = End { host: CLIENT, conn };
        let b = End {
            host: HUB,
            conn: hub_conn.0,
        };
        self.links.insert(a, b);
        self.links.insert(b, a);
        self.drain_node(HUB);
        self.run();
        self.counters.sunk - before
    }

    /// Works the queue until nothing is left.
    fn run(&mut self) {
        let mut steps = 0usize;
        while let Some(ev) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 10_000_000, "the graph never settles (livelock)");
            self.event(ev);
        }
    }

    fn event(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver { from, to, data } => {
                // Bytes for a connection closed on the way are lost with it.
                if self.links.contains_key(&to) {
                    self.deliver(to, &data);
                }
                // A node's buffer goes back to it (as a binding that has written it does).
                match &mut self.hosts[from] {
                    Host::Node(node) => node.recycle(data),
                    _ => self.recycle(data),
                }
            }
            Ev::Closed { to } => match &mut self.hosts[to.host] {
                Host::Node(node) => {
                    node.handle_input(Input::Closed(ConnId(to.conn)), now);
                    self.drain_node(to.host);
                }
                Host::Sink(sink) => {
                    if let Some(mut s) = sink.sessions.remove(&to.conn) {
                        s.handle_eof(now);
                    }
                }
                Host::Client(Some(client)) => {
                    client.handle_close(now);
                    self.drain_client();
                }
                Host::Client(None) => {}
            },
            Ev::Connected { host, conn } => {
                self.node(host).handle_input(Input::Connected(conn), now);
                self.drain_node(host);
            }
            Ev::Persisted { host, token } => {
                self.node(host).handle_input(Input::Persisted(token), now);
                self.drain_node(host);
            }
        }
    }

    /// Hands bytes to the receiving end of a live connection.
    fn deliver(&mut self, to: End, data: &[u8]) {
        let now = self.now;
        match &mut self.hosts[to.host] {
            Host::Node(node) => {
                node.handle_input(Input::Received(ConnId(to.conn), data), now);
                self.drain_node(to.host);
            }
            Host::Sink(_) => self.drain_sink(to.conn, data),
            Host::Client(Some(client)) => {
                client.handle_input(data, now);
                self.drain_client();
            }
            Host::Client(None) => {}
        }
    }

    /// Keeps a delivered buffer for the next output of the sink or the client.
    fn recycle(&mut self, mut data: Vec<u8>) {
        if self.buffers.len() < SPARE_BUFFERS {
            data.clear();
            self.buffers.push(data);
        }
    }

    /// An empty buffer for output, reused when one is spare.
    fn buffer(&mut self) -> Vec<u8> {
        self.buffers.pop().unwrap_or_default()
    }

    /// Moves every output of a node into the graph.
    fn drain_node(&mut self, host: usize) {
        while let Some(output) = self.node(host).poll_output() {
            match output {
                Output::Transmit { conn, data } => self.transmit(host, conn.0, data),
                Output::Close(conn) => self.close(host, conn.0),
                Output::Connect { conn, to } => {
                    self.counters.connects[host] += 1;
                    self.connect(host, conn, Self::host_of(&to));
                }
                Output::Persist { token, records } => {
                    self.counters.persists[host] += 1;
                    self.counters.records[host] += records.len();
                    if let Some(buf) = self.spool.as_mut() {
                        buf.clear();
                        for r in &records {
                            store::encode(r, buf);
                        }
                        self.counters.spooled += buf.len();
                    }
                    black_box(&records);
                    self.queue.push_back(Ev::Persisted { host, token });
                }
                Output::Event(event) => match event {
                    NodeEvent::Shadowed { .. } => self.counters.shadowed += 1,
                    NodeEvent::Discarded { .. } => self.counters.discarded += 1,
                    NodeEvent::Delivered { .. } => self.counters.delivered += 1,
                    NodeEvent::Deferred { .. }
                    | NodeEvent::Bounced { .. }
                    | NodeEvent::Resubmitted { .. }
                    | NodeEvent::AutoDiscarded { .. }
                    | NodeEvent::HeartbeatFailed { .. } => {
                        panic!("host {host}: unexpected {event:?}")
                    }
                    _ => {}
                },
            }
        }
    }

    /// Feeds `input` to one sink session and answers every decision at once, then moves its
    /// output. The session reads up to each decision (`handle_input_until_decision`) and
    /// gets the rest once it is answered, so it keeps no copy of pipelined bytes.
    fn drain_sink(&mut self, conn: u64, input: &[u8]) {
        let now = self.now;
        let mut data = self.buffer();
        let Host::Sink(sink) = &mut self.hosts[SINK] else {
            unreachable!()
        };
        let Some(s) = sink.sessions.get_mut(&conn) else {
            self.recycle(data);
            return;
        };
        let counters = &mut self.counters;
        let mut closed = false;
        // The sink offers no XSHADOW: only messages to count.
        let mut answer = |s: &mut ServerSession| {
            let drained = answer_sink_events(s, "", now, |seen| {
                if let Seen::Message(message) = seen {
                    counters.sunk += 1;
                    counters.sunk_bytes += message.body.len();
                }
            });
            closed |= drained.closed;
            drained.events
        };
        let mut rest = input;
        while !rest.is_empty() {
            let used = s.handle_input_until_decision(rest, now);
            rest = &rest[used..];
            if !rest.is_empty() && !answer(s) {
                // No question to answer: drain the replies, or let the session keep the rest.
                if s.poll_transmit(&mut data).is_none() {
                    s.handle_input(rest, now);
                    break;
                }
            }
        }
        loop {
            let mut moved = s.poll_transmit(&mut data).is_some();
            moved |= answer(s);
            if !moved {
                break;
            }
        }
        if closed {
            sink.sessions.remove(&conn);
        }
        if data.is_empty() {
            self.recycle(data);
        } else {
            self.transmit(SINK, conn, data);
        }
        if closed {
            self.close(SINK, conn);
        }
    }

    fn drain_client(&mut self) {
        let mut data = self.buffer();
        let Host::Client(Some(client)) = &mut self.hosts[CLIENT] else {
            self.recycle(data);
            return;
        };
        let _ = client.poll_transmit(&mut data);
        let mut closed = false;
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::MessageAccepted { .. } => self.counters.acknowledged += 1,
                ClientEvent::MessageFailed { .. } | ClientEvent::MessageDeferred { .. } => {
                    panic!("the hub did not take a message: {event:?}")
                }
                ClientEvent::Closed { .. } => closed = true,
                _ => {}
            }
        }
        let conn = self.next_client_conn - 1;
        if data.is_empty() {
            self.recycle(data);
        } else {
            self.transmit(CLIENT, conn, data);
        }
        if closed {
            self.hosts[CLIENT] = Host::Client(None);
            self.close(CLIENT, conn);
        }
    }

    fn transmit(&mut self, host: usize, conn: u64, data: Vec<u8>) {
        match self.links.get(&End { host, conn }) {
            Some(&to) => self.queue.push_back(Ev::Deliver {
                from: host,
                to,
                data,
            }),
            None => self.recycle(data),
        }
    }

    fn close(&mut self, host: usize, conn: u64) {
        if let Some(to) = self.links.remove(&End { host, conn }) {
            self.links.remove(&to);
            self.queue.push_back(Ev::Closed { to });
        }
    }

    /// Opens `from`'s connection `conn` to `to`: accepted at once, greeting queued.
    fn connect(&mut self, from: usize, conn: ConnId, to: usize) {
        let now = self.now;
        let peer_conn = match &mut self.hosts[to] {
            Host::Node(node) => node.accept(ip(from), now).0,
            Host::Sink(sink) => {
                let c = sink.next_conn;
                sink.next_conn += 1;
                let session = ServerSession::new(sink.config.clone(), false, now);
                sink.sessions.insert(c, session);
                c
            }
            Host::Client(_) => panic!("clients do not listen"),
        };
        let a = End {
            host: from,
            conn: conn.0,
        };
        let b = End {
            host: to,
            conn: peer_conn,
        };
        self.links.insert(a, b);
        self.links.insert(b, a);
        self.queue.push_back(Ev::Connected { host: from, conn });
        match to {
            SINK => self.drain_sink(peer_conn, &[]),
            _ => self.drain_node(to),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Entry {
    Submit,
    Smtp,
}

struct Scenario {
    name: &'static str,
    side: &'static str,
    entry: Entry,
    shadow: bool,
    spool: bool,
    /// `max_connections_per_hop` of both nodes, when not the default (4).
    max_conns: Option<usize>,
    body: Vec<u8>,
    /// For `Entry::Smtp`.
    messages: Vec<OutboundMessage>,
}

impl Scenario {
    fn new(
        name: &'static str,
        entry: Entry,
        size: usize,
        shadow: bool,
        spool: bool,
        max_conns: Option<usize>,
    ) -> Self {
        let body = message_body(size);
        let shared = Bytes::from(body.clone());
        let messages = (0..MESSAGES as u64)
            .map(|id| OutboundMessage {
                id,
                envelope: envelope().into(),
                body: shared.clone(),
                shadow_id: None,
            })
            .collect();
        Self {
            name,
            side: if shadow { "xshadow" } else { "plain" },
            entry,
            shadow,
            spool,
            max_conns,
            body,
            messages,
        }
    }

    fn graph(&self, now: Instant) -> Graph {
        Graph::new(self.shadow, self.spool, self.max_conns, now)
    }

    fn batch(&self, graph: &mut Graph) -> usize {
        match self.entry {
            Entry::Submit => graph.submit_batch(&self.body, MESSAGES),
            Entry::Smtp => graph.smtp_batch(&self.messages),
        }
    }

    /// Runs a few batches on a fresh graph and checks that they arrive, with the shadow
    /// bookkeeping in a steady state; prints what one batch costs in sessions and records.
    fn check(&self, now: Instant) {
        let mut graph = self.graph(now);
        let warm = 5;
        for _ in 0..warm {
            assert_eq!(
                self.batch(&mut graph),
                MESSAGES,
                "{}/{}",
                self.name,
                self.side
            );
        }
        let before = graph.counters.clone();
        assert_eq!(self.batch(&mut graph), MESSAGES);
        let c = &graph.counters;
        let body = self.body.len();
        // Every message reached the sink once, with the hub's and the edge's Received headers.
        assert!(c.sunk_bytes - before.sunk_bytes > MESSAGES * body);
        if self.entry == Entry::Smtp {
            assert_eq!(c.acknowledged - before.acknowledged, MESSAGES);
        }
        let (shadowed, discarded) = (c.shadowed - before.shadowed, c.discarded - before.discarded);
        if self.shadow {
            assert_eq!(shadowed, MESSAGES, "every message shadowed");
            assert!(discarded > 0, "copies are discarded in steady state");
        } else {
            assert_eq!(shadowed + discarded, 0);
        }
        let copies = match &graph.hosts[HUB] {
            Host::Node(hub) => hub.shadow_queues().total(),
            _ => unreachable!(),
        };
        assert!(copies <= 2 * MESSAGES, "copies pile up: {copies}");
        for host in [HUB, EDGE] {
            if let Host::Node(node) = &graph.hosts[host] {
                let stats = node.stats();
                assert_eq!((stats.queued, stats.in_flight), (0, 0), "host {host} idle");
            }
        }
        eprintln!(
            "{}/{}: per batch of {MESSAGES}: sessions hub->edge {}, edge->sink {}; \
             persists hub {} ({} records), edge {} ({} records); copies held after: {copies}; \
             discarded {discarded}",
            self.name,
            self.side,
            c.connects[HUB] - before.connects[HUB],
            c.connects[EDGE] - before.connects[EDGE],
            c.persists[HUB] - before.persists[HUB],
            c.records[HUB] - before.records[HUB],
            c.persists[EDGE] - before.persists[EDGE],
            c.records[EDGE] - before.records[EDGE],
        );
    }
}

/// The instruction-count mode's loop, on its own so that callgrind can collect only inside
/// it (`--toggle-collect=node::count_runs`), leaving out the checks and the setup.
#[inline(never)]
fn count_runs(scenario: &Scenario, graph: &mut Graph, runs: usize) -> usize {
    let mut total = 0usize;
    for _ in 0..runs {
        total = total.wrapping_add(scenario.batch(graph));
    }
    total
}

fn main() {
    let now = Instant::now();
    let scenarios = [
        Scenario::new("submit_1kib", Entry::Submit, KIB, false, false, None),
        Scenario::new("submit_1kib", Entry::Submit, KIB, true, false, None),
        Scenario::new(
            "submit_1kib_1conn",
            Entry::Submit,
            KIB,
            true,
            false,
            Some(1),
        ),
        Scenario::new("submit_1kib_spool", Entry::Submit, KIB, true, true, None),
        Scenario::new("smtp_1kib", Entry::Smtp, KIB, true, false, None),
        Scenario::new("submit_100kib", Entry::Submit, 100 * KIB, true, false, None),
    ];
    for scenario in &scenarios {
        scenario.check(now);
    }

    if let Ok(spec) = std::env::var("NODE_BENCH_COUNT") {
        let (id, runs) = spec.split_once('=').unwrap_or((&spec, "100"));
        let runs: usize = runs.parse().expect("NODE_BENCH_COUNT=<id>=<runs>");
        let Some(scenario) = scenarios
            .iter()
            .find(|s| format!("node/{}/{}", s.name, s.side) == id)
        else {
            panic!("no scenario {id}");
        };
        let mut graph = scenario.graph(now);
        // One batch first: the graph's sessions and tables are warm, as in the timed runs.
        scenario.batch(&mut graph);
        let (cpu, wall) = (on_cpu(), Instant::now());
        let total = count_runs(scenario, &mut graph, runs);
        let (wall, cpu) = (wall.elapsed(), on_cpu().zip(cpu).map(|(b, a)| b - a));
        let rate = total as f64 / cpu.unwrap_or(wall).as_secs_f64();
        // One more batch with allocations counted (apart from the timed runs: counting costs).
        let (sent, allocations) = count_allocations(|| scenario.batch(&mut graph));
        let per_message = allocations as f64 / sent.max(1) as f64;
        println!(
            "{id}: {runs} runs, checksum {total}, wall {wall:?}, on cpu {cpu:?}, {rate:.0} msg/s on cpu, {per_message:.1} allocations/msg"
        );
        return;
    }

    // 1 s warm-up and 3 s measurement per benchmark: 6 benchmarks, about 30 s in all.
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    let mut group = criterion.benchmark_group("node");
    // Iterations of milliseconds: flat sampling keeps to 3 s.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(MESSAGES as u64));
    for scenario in &scenarios {
        let mut graph = scenario.graph(now);
        group.bench_function(BenchmarkId::new(scenario.name, scenario.side), |b| {
            b.iter(|| scenario.batch(black_box(&mut graph)))
        });
    }
    group.finish();
    criterion.final_summary();
}
