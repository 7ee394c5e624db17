//! Session benchmarks, named by scenario. Results and how to read them: BENCHMARKS.md.
//!
//! - `session/*`: messages per second through an in-memory `ClientSession` <-> `ServerSession`
//!   pair. One iteration is one whole session: both sessions created, greeting, EHLO, (XSHADOW),
//!   [`MESSAGES`] messages of one recipient each, (XQDISCARD), QUIT, until both sides are
//!   closed. The server's caller answers every decision at once (accept the sender and the
//!   recipient, "stored" for every message, XSHADOW accepted, XQDISCARD answered with no ids:
//!   `251`). Pipelining is offered, so each message goes out as one MAIL + RCPT + DATA batch
//!   (or MAIL + RCPT + `BDAT <len> LAST` + body); the client sends the next MAIL only after
//!   the previous message's final reply, as `ClientSession` always does.
//!   - `bdat_*`: the server offers CHUNKING (the default), so the body goes raw with BDAT.
//!   - `data_*`: CHUNKING off: DATA, the body dot-stuffed by the client and un-stuffed by
//!     the server.
//!   - side `plain`: no shadowing. Side `xshadow`: the client has a shadow context and the
//!     server offers XSHADOW: one more round trip (`XSHADOW <context>`) before the first
//!     message, `XSHADOW=<guid>` on every MAIL, `XQDISCARD 50` before QUIT.
//! - `idle/*`: what one drain of an idle state machine costs (str0m PR #1011: idle polls are
//!   most polls). A session: `poll_timeout` + `poll_transmit` + `poll_event`, after EHLO (and
//!   XSHADOW) with nothing to do. A `Node`: `poll_timeout` + `poll_output`, holding 0, 10 000
//!   or 100 000 shadow copies (recovered from records with `Node::recover`), or with 1 000
//!   idle inbound sessions. The copies rows must not grow with the copies.
//!
//! Every scenario is run once and checked before any timing (every message accepted, shadowed
//! exactly on the `xshadow` side, bodies delivered intact, DATA or BDAT as named).
//!
//! Instruction counts: with `SESSION_BENCH_COUNT=<group>/<scenario>/<side>=<runs>` set, the
//! binary runs that one scenario `runs` times and exits, for `valgrind --tool=cachegrind` or
//! `--tool=callgrind` (see BENCHMARKS.md).

mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use xshadow::core::Bytes;
use xshadow::core::node::{Node, NodeConfig};
use xshadow::core::session::{
    ClientConfig, ClientEvent, ClientSession, OutboundMessage, ServerConfig, ServerSession,
    ShadowOffer,
};
use xshadow::core::shadow::MessageId;
use xshadow::core::store::{StoreState, StoredCopy, StoredMessage};

use common::{KIB, Seen, answer_sink_events, envelope, message_body, on_cpu};

/// Messages per session (per iteration).
const MESSAGES: usize = 100;

const DBID: &str = "X+QUj+rOf0ag5pssHT5PUA==";
const CONTEXT: &str = "aHViMS5leGFtcGxl";

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// A version-4-shaped GUID, as `Node` makes them for `XSHADOW=`.
fn shadow_id(i: u64) -> String {
    format!("3f2504e0-4f89-41d3-9a0c-{i:012x}")
}

/// One session's worth of work: configurations and the messages to send.
struct Scenario {
    name: &'static str,
    side: &'static str,
    client: ClientConfig,
    server: Arc<ServerConfig>,
    messages: Vec<OutboundMessage>,
    /// What the check expects: BDAT (else DATA), shadowed.
    bdat: bool,
    shadow: bool,
}

impl Scenario {
    fn new(name: &'static str, size: usize, bdat: bool, shadow: bool) -> Self {
        let mut client = ClientConfig::new("hub1.example");
        client.shadow_context = shadow.then(|| CONTEXT.to_owned());
        let mut server = ServerConfig::new("edge1.example");
        server.chunking = bdat;
        server.shadow = if shadow {
            ShadowOffer::XShadow
        } else {
            ShadowOffer::None
        };
        let body = Bytes::from(message_body(size));
        let messages = (0..MESSAGES as u64)
            .map(|id| OutboundMessage {
                id,
                envelope: envelope().into(),
                body: body.clone(),
                // As a Node does: a shadow id only when it shadows through the next hop.
                shadow_id: shadow.then(|| shadow_id(id).into()),
            })
            .collect();
        Self {
            name,
            side: if shadow { "xshadow" } else { "plain" },
            client,
            server: Arc::new(server),
            messages,
            bdat,
            shadow,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pair
// ---------------------------------------------------------------------------------------------

/// What one session did, counted on the way (cheap enough to count in every timed run).
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    accepted: usize,
    shadowed: usize,
    stored: usize,
    stored_bytes: usize,
    via_bdat: usize,
    tagged: usize,
    xshadow_asked: usize,
    xqdiscard_asked: usize,
}

/// Buffers reused from session to session, as a driver reuses its socket buffers.
#[derive(Default)]
struct Buffers {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
}

/// Runs one whole session of `scenario` through a new client/server pair, answering every
/// decision at once; `keep` collects the stored bodies (only for the check).
fn run_session(
    scenario: &Scenario,
    bufs: &mut Buffers,
    now: Instant,
    mut keep: Option<&mut Vec<Vec<u8>>>,
) -> Tally {
    let mut tally = Tally::default();
    let mut client = ClientSession::new(scenario.client.clone(), now).expect("valid config");
    let mut server = ServerSession::new(scenario.server.clone(), true, now);
    for message in &scenario.messages {
        client
            .queue_message(message.clone(), now)
            .expect("session open");
    }
    client.finish(true, now).expect("session open");

    let max_steps = 20 * MESSAGES + 100;
    for _ in 0..max_steps {
        if client.is_closed() && server.is_closed() {
            return tally;
        }
        let mut moved = false;
        if client.poll_transmit(&mut bufs.c2s).is_some() {
            server.handle_input(&bufs.c2s, now);
            bufs.c2s.clear();
            moved = true;
        }
        let drained = answer_sink_events(&mut server, DBID, now, |seen| match seen {
            Seen::Message(message) => {
                tally.stored += 1;
                tally.stored_bytes += message.body.len();
                tally.via_bdat += usize::from(message.via_bdat);
                tally.tagged += usize::from(message.shadow.is_some());
                if let Some(keep) = keep.as_deref_mut() {
                    keep.push(message.body.clone());
                }
            }
            Seen::XShadow => tally.xshadow_asked += 1,
            Seen::XqDiscard => tally.xqdiscard_asked += 1,
        });
        moved |= drained.events;
        if server.poll_transmit(&mut bufs.s2c).is_some() {
            client.handle_input(&bufs.s2c, now);
            bufs.s2c.clear();
            moved = true;
        }
        while let Some(event) = client.poll_event() {
            moved = true;
            match event {
                ClientEvent::MessageAccepted { shadowed, .. } => {
                    tally.accepted += 1;
                    tally.shadowed += usize::from(shadowed);
                }
                ClientEvent::MessageFailed { .. } | ClientEvent::MessageDeferred { .. } => {
                    panic!("a message was not accepted: {event:?}")
                }
                ClientEvent::DiscardIds {
                    more_possible: true,
                    ..
                } => client.discard_more(false, now).expect("asked"),
                _ => {}
            }
        }
        if !moved {
            if server.is_closed() {
                client.handle_close(now);
            } else if client.is_closed() {
                server.handle_eof(now);
            } else {
                panic!("deadlock: both sides wait and nothing moves");
            }
        }
    }
    panic!("no end after {max_steps} steps (livelock)");
}

/// Runs `scenario` once and checks what arrived.
fn check(scenario: &Scenario, now: Instant) {
    let mut bodies = Vec::new();
    let tally = run_session(scenario, &mut Buffers::default(), now, Some(&mut bodies));
    let n = scenario.messages.len();
    let shadowed = if scenario.shadow { n } else { 0 };
    let size = scenario.messages[0].body.len();
    assert_eq!(
        tally,
        Tally {
            accepted: n,
            shadowed,
            stored: n,
            stored_bytes: n * size,
            via_bdat: if scenario.bdat { n } else { 0 },
            tagged: shadowed,
            xshadow_asked: usize::from(scenario.shadow),
            xqdiscard_asked: usize::from(scenario.shadow),
        },
        "{}/{}",
        scenario.name,
        scenario.side
    );
    assert!(
        bodies.iter().all(|b| **b == *scenario.messages[0].body),
        "bodies changed in transit"
    );
}

// ---------------------------------------------------------------------------------------------
// Idle state machines
// ---------------------------------------------------------------------------------------------

/// A pair after greeting, EHLO and (with `shadow`) XSHADOW, with nothing queued: both idle.
fn idle_pair(shadow: bool, now: Instant) -> (ClientSession, ServerSession) {
    let scenario = Scenario::new("idle", KIB, true, shadow);
    let mut client = ClientSession::new(scenario.client.clone(), now).expect("valid config");
    let mut server = ServerSession::new(scenario.server.clone(), true, now);
    let mut buf = Vec::new();
    loop {
        let mut moved = false;
        if client.poll_transmit(&mut buf).is_some() {
            server.handle_input(&buf, now);
            buf.clear();
            moved = true;
        }
        moved |= answer_sink_events(&mut server, DBID, now, |_| {}).events;
        if server.poll_transmit(&mut buf).is_some() {
            client.handle_input(&buf, now);
            buf.clear();
            moved = true;
        }
        while client.poll_event().is_some() {
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(client.is_shadowed(), shadow);
    assert!(client.peer_keywords().is_some(), "EHLO answered");
    assert!(!client.is_closed() && !server.is_closed());
    (client, server)
}

/// A hub holding `copies` shadow copies for one edge, rebuilt from its records (as after a
/// restart), with every output drained: nothing to do until the next heartbeat.
fn node_with_copies(copies: u64, now: Instant) -> Node {
    let mut config = NodeConfig::new("hub.example");
    config.next_hops = vec!["edge1.example".into()];
    config.shadow_next_hops = true;
    let body = Bytes::from(message_body(KIB));
    let unix_ms = 1_796_400_103_000;
    let mut state = StoreState {
        database_id: Some("aHViZGF0YWJhc2VpZDAwMQ==".into()),
        messages: BTreeMap::new(),
        discard_events: Vec::new(),
        next_message_id: copies + 1,
    };
    for i in 1..=copies {
        let id = MessageId(i);
        state.messages.insert(
            id,
            StoredMessage {
                id,
                at_ms: unix_ms,
                envelope: envelope().into(),
                body: body.clone(),
                primary_for: None,
                shadow: Some(StoredCopy {
                    primary: "edge1.example".into(),
                    shadow_id: shadow_id(i).into(),
                    database_id: DBID.into(),
                    at_ms: unix_ms,
                }),
            },
        );
    }
    let mut node = Node::recover(config, state, 7, now, unix_ms);
    while node.poll_output().is_some() {}
    assert_eq!(node.shadow_queues().total() as u64, copies);
    assert_eq!(node.stats().queued, 0);
    if copies > 0 {
        assert!(node.poll_timeout().is_some_and(|t| t > now), "heartbeat");
    }
    node
}

/// An edge with `conns` inbound sessions that were greeted and said nothing since.
fn node_with_idle_conns(conns: usize, now: Instant) -> Node {
    let mut config = NodeConfig::new("edge1.example");
    config.next_hops = vec!["sink.example".into()];
    config.offer_shadow = true;
    let mut node = Node::new(config, 7, now, 1_796_400_103_000);
    for i in 0..conns {
        let peer = IpAddr::V4(Ipv4Addr::new(127, 1, (i >> 8) as u8, i as u8));
        let _ = node.accept(peer, now);
    }
    while node.poll_output().is_some() {}
    assert_eq!(node.stats().connections, conns);
    node
}

// ---------------------------------------------------------------------------------------------
// The scenario table, shared by criterion and the instruction-count mode
// ---------------------------------------------------------------------------------------------

type Routine<'a> = Box<dyn FnMut() -> usize + 'a>;

struct Bench<'a> {
    group: &'static str,
    scenario: String,
    side: &'static str,
    throughput: Option<Throughput>,
    run: Routine<'a>,
}

impl Bench<'_> {
    fn id(&self) -> String {
        format!("{}/{}/{}", self.group, self.scenario, self.side)
    }
}

fn benches(scenarios: &[Scenario], now: Instant) -> Vec<Bench<'_>> {
    let mut list = Vec::new();
    for scenario in scenarios {
        let mut bufs = Buffers::default();
        list.push(Bench {
            group: "session",
            scenario: scenario.name.to_owned(),
            side: scenario.side,
            throughput: Some(Throughput::Elements(scenario.messages.len() as u64)),
            run: Box::new(move || run_session(black_box(scenario), &mut bufs, now, None).accepted),
        });
    }

    for shadow in [false, true] {
        let side = if shadow { "xshadow" } else { "plain" };
        let (mut client, mut server) = idle_pair(shadow, now);
        let mut buf = Vec::new();
        list.push(Bench {
            group: "idle",
            scenario: "server_session".into(),
            side,
            throughput: None,
            run: Box::new(move || {
                let server = black_box(&mut server);
                let t = server.poll_timeout();
                let n = server.poll_transmit(&mut buf);
                let e = server.poll_event();
                usize::from(t.is_some()) + n.unwrap_or(0) + usize::from(e.is_some())
            }),
        });
        let mut buf = Vec::new();
        list.push(Bench {
            group: "idle",
            scenario: "client_session".into(),
            side,
            throughput: None,
            run: Box::new(move || {
                let client = black_box(&mut client);
                let t = client.poll_timeout();
                let n = client.poll_transmit(&mut buf);
                let e = client.poll_event();
                usize::from(t.is_some()) + n.unwrap_or(0) + usize::from(e.is_some())
            }),
        });
    }

    for copies in [0, 10_000, 100_000] {
        let mut node = node_with_copies(copies, now);
        list.push(Bench {
            group: "idle",
            scenario: format!("node_{copies}_copies"),
            side: "xshadow",
            throughput: None,
            run: Box::new(move || {
                let node = black_box(&mut node);
                let t = node.poll_timeout();
                let o = node.poll_output();
                usize::from(t.is_some()) + usize::from(o.is_some())
            }),
        });
    }
    let mut node = node_with_idle_conns(1_000, now);
    list.push(Bench {
        group: "idle",
        scenario: "node_1000_idle_sessions".into(),
        side: "xshadow",
        throughput: None,
        run: Box::new(move || {
            let node = black_box(&mut node);
            let t = node.poll_timeout();
            let o = node.poll_output();
            usize::from(t.is_some()) + usize::from(o.is_some())
        }),
    });
    list
}

/// The instruction-count mode's loop, on its own so that callgrind can collect only inside
/// it (`--toggle-collect=session::count_runs`), leaving out the checks and the setup.
#[inline(never)]
fn count_runs(run: &mut Routine<'_>, runs: usize) -> usize {
    let mut total = 0usize;
    for _ in 0..runs {
        total = total.wrapping_add(run());
    }
    total
}

fn main() {
    let now = Instant::now();
    let mut scenarios = Vec::new();
    for (name, size, bdat) in [
        ("bdat_1kib", KIB, true),
        ("bdat_100kib", 100 * KIB, true),
        ("data_1kib", KIB, false),
        ("data_100kib", 100 * KIB, false),
    ] {
        for shadow in [false, true] {
            scenarios.push(Scenario::new(name, size, bdat, shadow));
        }
    }
    for scenario in &scenarios {
        check(scenario, now);
    }
    let mut list = benches(&scenarios, now);

    if let Ok(spec) = std::env::var("SESSION_BENCH_COUNT") {
        let (id, runs) = spec.split_once('=').unwrap_or((&spec, "1000"));
        let runs: usize = runs.parse().expect("SESSION_BENCH_COUNT=<id>=<runs>");
        let Some(bench) = list.iter_mut().find(|b| b.id() == id) else {
            let ids: Vec<String> = list.iter().map(Bench::id).collect();
            panic!("no scenario {id}; known: {ids:?}");
        };
        let (cpu, wall) = (on_cpu(), Instant::now());
        let total = count_runs(&mut bench.run, runs);
        let (wall, cpu) = (wall.elapsed(), on_cpu().zip(cpu).map(|(b, a)| b - a));
        let per_run = cpu.unwrap_or(wall) / u32::try_from(runs.max(1)).unwrap_or(u32::MAX);
        println!(
            "{id}: {runs} runs, checksum {total}, wall {wall:?}, on cpu {cpu:?}, {per_run:?} per run"
        );
        return;
    }

    // 1 s warm-up and 3 s measurement per benchmark: 16 benchmarks, about 75 s in all on the
    // reference machine (plus the checks and building the 100 000-copy node).
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    for group_name in ["session", "idle"] {
        let mut group = criterion.benchmark_group(group_name);
        if group_name == "session" {
            // Iterations of milliseconds (100 KiB bodies): flat sampling keeps to 3 s.
            group.sampling_mode(SamplingMode::Flat);
        }
        for bench in list.iter_mut().filter(|b| b.group == group_name) {
            if let Some(throughput) = &bench.throughput {
                group.throughput(throughput.clone());
            }
            let run = &mut bench.run;
            group.bench_function(BenchmarkId::new(&bench.scenario, bench.side), |b| {
                b.iter(&mut *run)
            });
        }
        group.finish();
    }
    criterion.final_summary();
}
