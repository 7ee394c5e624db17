//! The reference driver: one `Node` driven directly, with no sockets, no threads and no
//! spool — byte pipes between the scripted client, the node and [`SinkSession`]s, records
//! "persisted" as soon as the node asks, and a virtual clock that moves only when nothing
//! else can happen. It follows the core's drain rule literally, like a binding.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use xshadow::core::node::{ConnId, Input, Node, NodeConfig, NodeEvent, Output};

use super::sink::{GREETING, SinkSession};
use super::{Outcome, SEED, Scenario, Step, count_replies, normalize};

/// What the node must have answered to.
enum Pending {
    Connected(ConnId),
    Received(ConnId, Vec<u8>),
    Closed(ConnId),
    Persisted(u64),
}

struct Memory {
    node: Node,
    now: Instant,
    client: ConnId,
    /// Bytes the client wrote that the node has not taken yet (it may hold input back).
    client_out: Vec<u8>,
    /// Bytes the node sent the client.
    client_in: Vec<u8>,
    client_closed: bool,
    sinks: BTreeMap<ConnId, SinkSession>,
    /// Transcripts of sink sessions that ended, in the order they ended.
    sink_sessions: Vec<Vec<u8>>,
    sink_messages: usize,
    inputs: VecDeque<Pending>,
    events: Vec<NodeEvent>,
}

/// Runs `scenario` against a node driven in memory.
pub fn run(scenario: &Scenario) -> Outcome {
    let hop = "sink.test:25";
    let config: NodeConfig = (scenario.config)(hop);
    let now = Instant::now();
    let node = Node::new(config, SEED, now, xshadow_spool::binding::unix_ms());
    let mut m = Memory {
        node,
        now,
        client: ConnId(0),
        client_out: Vec::new(),
        client_in: Vec::new(),
        client_closed: false,
        sinks: BTreeMap::new(),
        sink_sessions: Vec::new(),
        sink_messages: 0,
        inputs: VecDeque::new(),
        events: Vec::new(),
    };
    m.settle();
    m.client = m.node.accept(IpAddr::V4(Ipv4Addr::LOCALHOST), m.now);
    for step in &scenario.steps {
        match step {
            Step::Send(bytes, replies) => {
                let want = count_replies(&m.client_in) + replies;
                m.client_out.extend_from_slice(bytes.as_bytes());
                m.run_until("replies", |m| count_replies(&m.client_in) >= want);
            }
            Step::AwaitEvent(what, matches) => {
                m.run_until(what, |m| m.events.iter().any(matches));
            }
            Step::AwaitClose => m.run_until("the close", |m| m.client_closed),
        }
    }
    let messages = scenario.sink_messages;
    m.run_until("the sink's sessions", |m| {
        m.sink_messages >= messages && m.sinks.is_empty()
    });
    normalize(
        Outcome {
            database_id: m.node.database_id().to_owned(),
            replies: m.client_in,
            sink: m.sink_sessions,
            events: m.events,
        },
        hop,
    )
}

impl Memory {
    /// Settles, then moves the clock to the node's next timer, until `done` holds.
    fn run_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..10_000 {
            self.settle();
            if done(self) {
                return;
            }
            match self.node.poll_timeout() {
                Some(at) => {
                    self.now = self.now.max(at);
                    self.node.handle_timeout(self.now);
                }
                None => break,
            }
        }
        panic!("the in-memory node never got to {what}");
    }

    /// Everything that can happen without the clock moving: the drain rule, then the
    /// pending inputs one at a time (each followed by a drain), then due timers.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut busy = false;
            while let Some(output) = self.node.poll_output() {
                busy = true;
                self.output(output);
            }
            if let Some(input) = self.inputs.pop_front() {
                let now = self.now;
                match input {
                    Pending::Connected(c) => self.node.handle_input(Input::Connected(c), now),
                    Pending::Received(c, data) => {
                        self.node.handle_input(Input::Received(c, &data), now);
                    }
                    Pending::Closed(c) => self.node.handle_input(Input::Closed(c), now),
                    Pending::Persisted(t) => self.node.handle_input(Input::Persisted(t), now),
                }
                continue;
            }
            if !self.client_out.is_empty() && !self.client_closed && self.node.may_read(self.client)
            {
                let data = std::mem::take(&mut self.client_out);
                self.node
                    .handle_input(Input::Received(self.client, &data), self.now);
                continue;
            }
            if self.node.poll_timeout().is_some_and(|t| t <= self.now) {
                self.node.handle_timeout(self.now);
                while let Some(output) = self.node.poll_output() {
                    busy = true;
                    self.output(output);
                }
            }
            if !busy && self.inputs.is_empty() {
                return;
            }
        }
        panic!("the in-memory node does not settle");
    }

    fn output(&mut self, output: Output) {
        match output {
            Output::Transmit { conn, data } if conn == self.client => {
                self.client_in.extend_from_slice(&data);
            }
            Output::Transmit { conn, data } => {
                if let Some(sink) = self.sinks.get_mut(&conn) {
                    let stored = sink.messages.len();
                    let reply = sink.feed(&data);
                    self.sink_messages += sink.messages.len() - stored;
                    let closed = sink.closed;
                    if !reply.is_empty() {
                        self.inputs.push_back(Pending::Received(conn, reply));
                    }
                    if closed {
                        self.end_sink(conn);
                        self.inputs.push_back(Pending::Closed(conn));
                    }
                }
            }
            Output::Close(conn) if conn == self.client => self.client_closed = true,
            Output::Close(conn) => self.end_sink(conn),
            Output::Connect { conn, .. } => {
                self.sinks.insert(conn, SinkSession::default());
                self.inputs.push_back(Pending::Connected(conn));
                self.inputs
                    .push_back(Pending::Received(conn, GREETING.to_vec()));
            }
            Output::Persist { token, .. } => self.inputs.push_back(Pending::Persisted(token)),
            Output::Event(event) => self.events.push(event),
        }
    }

    fn end_sink(&mut self, conn: ConnId) {
        if let Some(sink) = self.sinks.remove(&conn) {
            self.sink_sessions.push(sink.transcript);
        }
    }
}
