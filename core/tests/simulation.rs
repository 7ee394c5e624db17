//! The deterministic fault simulation (issue 4): a world on virtual time where everything
//! that can go wrong is chosen by a seed, and the central promise is checked for every seed:
//! **a message acknowledged by any node is delivered at least once.**
//!
//! # The world
//!
//! Submitting clients (real `ClientSession`s) send 2 to 30 tagged messages, each to one to three
//! recipients, to a hub; the hub shadows through two or three edges (`XSHADOW`, `XQDISCARD`),
//! the edges relay to a final sink (a plain `ServerSession` that stores everything). Every node
//! is the real [`Node`], driven only through its sans-IO interface by `support::World`: bytes,
//! persist records (kept as encoded bytes on a virtual disk), timers. Clients retry, in a new
//! session, every message they did not get a 250 for, as real senders do. The seed also picks
//! the knobs: XQDISCARD max (50, or 1 to 3 so replies come in several rounds), messages per
//! session, connections per hop, DATA or BDAT, small memory budgets (`452 4.3.1`), a delayed
//! acknowledgement at the hub (PROTOCOL.md section 8), and a sink that defers some recipients
//! (`451`), so edges split messages and owe the discard only when every recipient is handled.
//!
//! # Faults (all chosen by the seed, all within the fault window)
//!
//! - Connection faults at every protocol step: a share of new connections carries a fault that
//!   strikes at its n-th delivered fragment (both directions counted, so before or after the
//!   final dot, between XQDISCARD rounds, in the middle of a multi-line reply when transmits
//!   are fragmented): the connection is cut after the fragment, or the fragment is lost with
//!   the connection (a 250 that never arrives: the RFC 1047 sync gap), or it stalls silently
//!   and both ends must time out. The run reports where they struck.
//! - Latency with jitter (FIFO per direction), transmits split into fragments, slow syncs.
//! - Partitions (hub | edge, edge | sink, an isolated edge), some longer than
//!   `resubmit_after`; open connections across them are cut or stall. The sink going down.
//! - Crash and restart of the hub or an edge, at a random time or right after one of its next
//!   steps: a machine crash (what was on the wire is lost) or a process kill (what it sent still
//!   arrives). The node comes back from its disk: everything synced plus a random prefix of
//!   what was written and not yet reported durable (so the last record may be torn).
//! - An edge restarting with an empty store (a new database id).
//!
//! At the end of the window every partition heals, the sink comes back, connections stop
//! failing and planned crashes are called off; crashed nodes restart on schedule. The world then
//! runs to quiescence: no event, no timer anywhere.
//!
//! # What is checked, per seed
//!
//! - **Lost = 0**: every message a client got 250 for reaches the sink at least once for each
//!   of its recipients. Every message gets its 250 in the end (the clients retry until it
//!   does), and no bounce is made.
//! - **Unexplained duplicates = 0.** A sink copy names its path in its `Received` headers (the
//!   hub's message id, the edge and the edge's message id; a message split for retried
//!   recipients keeps its body, so it is counted as the message it came from), so duplicates
//!   are judged hop by hop and recipient by recipient. At each hop, the copies one sender's
//!   message turned into (distinct messages at the next hop, or copies at the sink) may exceed
//!   one only by the number of *explaining incidents* recorded for that message at that sender:
//!   - an **in-doubt transfer**: the message's body reached the receiver, then a fault (a cut, a
//!     lost fragment, a stall, a crash of either end) ended the connection before the sender
//!     read the final reply to that body (replies are counted on the wire: one per command of
//!     the pipelined batch that carried the body). A transfer left in doubt by a connection
//!     that ended *without* a fault (the receiver closed it) explains nothing;
//!   - a **requeue after a crash**: the restarted sender found the message queued in its
//!     records (the record that it was passed on had not reached the disk);
//!   - a **resubmission** by the hub (`NodeEvent::Resubmitted`), itself checked below.
//! - **Drained**: at quiescence every node is up with no queued or in-flight message, no shadow
//!   copy, no discard event and no connection; no client has work left.
//! - **Resubmission timing** (R = `resubmit_after`, I = `heartbeat_interval`), from the
//!   journal of events, faults and XQDISCARD replies seen on the wire:
//!   - `PrimaryUnreachable` comes no earlier than R after the later of the last XQDISCARD reply
//!     the hub read from that edge and the moment its copies for the edge started to be held
//!     (relaxed after a hub restart, see `EARLY_AFTER_RESTART`: a core bug), and no later than
//!     R + I (+ the time a failing heartbeat takes to fail: a session timeout and a few
//!     latencies) after the later of that reply, the start of holding and the hub's restart.
//!     While the hub holds copies for an edge it never goes past that deadline without a new
//!     XQDISCARD reply or a resubmission.
//!   - `DatabaseIdChanged` only for copies made before the edge got a new store; the hub never
//!     reads an XQDISCARD reply from an edge while it holds copies under that edge's previous
//!     store; and when no other fault touches the hub or the edge around the restart, the copies
//!     go within one heartbeat interval (+ the few latencies of the handshake) of the edge
//!     coming back.
//!   - Never `ProtocolBreach` (no fault corrupts bytes).
//! - **Determinism**: the same seed gives the same trace hash (every output, event and fault
//!   folded in order); the sweep runs every eighth seed twice.
//!
//! # Running it
//!
//! `cargo test` runs seeds `0..2000` on every core. Environment variables:
//! - `SIM_SEEDS=<n>` runs `n` seeds (`SIM_FIRST=<k>` starts at `k`), e.g.
//!   `SIM_SEEDS=100000 cargo test --release -p xshadow-core --test simulation -- --nocapture`;
//! - `SIM_SEED=<s>` runs one seed and prints its scenario and a trace of everything that
//!   happened (the replay of a failure).
//!
//! A failing seed is printed with its reasons and the command that replays it.
//!
//! [`Node`]: xshadow_core::node::Node

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{
    CrashPlan, Entry, FaultKind, Host, LinkFaults, MsgKey, World, fast_config, node_id_in, tag_of,
};
use xshadow_core::node::{NodeConfig, NodeEvent, ResubmitReason};
use xshadow_core::session::{ClientConfig, ClientTimeouts, ServerConfig, ServerTimeouts};

const HEARTBEAT: Duration = Duration::from_millis(200);
const RESUBMIT_AFTER: Duration = Duration::from_millis(1000);
const AUTO_DISCARD: Duration = Duration::from_secs(10);
/// Every client and server phase timeout: what a stalled connection costs.
const SESSION_TIMEOUT: Duration = Duration::from_millis(100);
const LATENCY: Duration = Duration::from_millis(1);
const MAX_JITTER_MS: u64 = 4;
/// How long after the fault window the world may take to settle (virtual time).
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
const DEFAULT_SEEDS: u64 = 2000;
/// How much earlier than R after its restart a hub may resubmit the copies it recovered: none
/// (the node starts each primary's heartbeat schedule at its restart; see `unreachable_timing`).
const EARLY_AFTER_RESTART: Duration = Duration::ZERO;
const REPLAY: &str = "cargo test -p xshadow-core --test simulation -- --nocapture every_acknowledged_message_reaches_the_sink_under_faults";

/// A fault the seed scheduled, applied at its time.
#[derive(Debug, Clone)]
enum Scheduled {
    Crash {
        node: String,
        torn: usize,
        down: Duration,
        /// A process kill: what it sent still arrives.
        flush: bool,
    },
    /// Crash (or wipe) the node after its next `steps` steps.
    CrashAfter {
        node: String,
        steps: u64,
        plan: CrashPlan,
    },
    Wipe {
        edge: String,
        down: Duration,
    },
    Partition {
        a: String,
        b: String,
        stall: bool,
    },
    Heal {
        a: String,
        b: String,
    },
    SinkDown,
    SinkUp,
    /// The end of the fault window: everything heals, connections stop failing.
    FaultsEnd,
}

/// A seed's world, ready to run, and its fault schedule.
struct Scenario {
    world: World,
    hub: usize,
    edges: Vec<usize>,
    window: Duration,
    schedule: Vec<(Duration, Scheduled)>,
}

fn node_config(name: &str) -> NodeConfig {
    let mut c = fast_config(name);
    c.shadow.heartbeat_interval = HEARTBEAT;
    c.shadow.resubmit_after = RESUBMIT_AFTER;
    c.shadow.auto_discard = AUTO_DISCARD;
    c.client.timeouts = ClientTimeouts::uniform(SESSION_TIMEOUT);
    c.server.timeouts = ServerTimeouts {
        command: SESSION_TIMEOUT,
        data: SESSION_TIMEOUT,
    };
    c
}

fn scenario(seed: u64) -> Scenario {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ms = |rng: &mut fastrand::Rng, lo: u64, hi: u64| Duration::from_millis(rng.u64(lo..=hi));
    let mut world = World::with_seed(rng.u64(..));
    world.latency = LATENCY;
    world.jitter = Duration::from_millis(rng.u64(0..=MAX_JITTER_MS));
    world.sync_delay = Duration::from_millis(rng.u64(1..=3));
    world.fragment = rng.bool();
    let chance = [0.0, 0.05, 0.15, 0.3][rng.usize(..4)];
    world.link_faults = (chance > 0.0).then(|| LinkFaults {
        chance,
        max_fragment: rng.u32(4..=40),
        weights: [4, 4, 2],
    });
    // Half the seeds: the sink defers some recipients (451), so edges split messages.
    if rng.bool() {
        world.sink_defers_rcpt = rng.f64() * 0.3;
    }
    // A quarter: small memory budgets (452 4.3.1 beyond them).
    let tight = rng.u8(..4) == 0;
    let budget = |rng: &mut fastrand::Rng| {
        if tight && rng.bool() {
            rng.usize(1500..=6000)
        } else {
            usize::MAX / 2
        }
    };

    let mut sink = ServerConfig::new("sink");
    sink.chunking = rng.bool();
    sink.timeouts = ServerTimeouts {
        command: SESSION_TIMEOUT,
        data: SESSION_TIMEOUT,
    };
    world.add_sink_with("sink", sink);
    let edge_names: Vec<String> = (1..=2 + usize::from(rng.u8(..4) == 0))
        .map(|i| format!("edge{i}"))
        .collect();
    let mut edges = Vec::new();
    for name in &edge_names {
        let mut c = node_config(name);
        c.next_hops = vec!["sink".into()];
        c.offer_shadow = true;
        c.shadow_peers = vec!["127.0.0.0/8".parse().expect("network")];
        c.server.chunking = rng.bool();
        c.max_messages_per_session = rng.usize(1..=5);
        c.memory_budget = budget(&mut rng);
        edges.push(world.add_node(name, c, rng.u64(..)));
    }
    let mut c = node_config("hub");
    c.next_hops = edge_names.clone();
    c.shadow_next_hops = true;
    c.client.xqdiscard_max = if rng.bool() { 50 } else { rng.u32(1..=3) };
    c.max_messages_per_session = rng.usize(1..=5);
    c.max_connections_per_hop = rng.usize(1..=3);
    c.server.chunking = rng.bool();
    c.memory_budget = budget(&mut rng);
    // A third: the hub holds its 250 to clients (which do not shadow) until the message moved
    // on (PROTOCOL.md section 8); the clients wait longer for it.
    let ack_delay = if rng.u8(..3) == 0 {
        ms(&mut rng, 20, 300)
    } else {
        Duration::ZERO
    };
    c.max_ack_delay = ack_delay;
    let hub = world.add_node("hub", c, rng.u64(..));

    let window = Duration::from_millis(rng.u64(1500..=4000));
    let mut tag = 0;
    let mut total = 0;
    for _ in 0..rng.usize(1..=3) {
        let n = rng.usize(2..=10).min(30 - total);
        if n == 0 {
            break;
        }
        total += n;
        let messages: Vec<(u64, Vec<String>)> = (0..n)
            .map(|_| {
                tag += 1;
                let mut to = vec!["bob", "carol", "dave"];
                rng.shuffle(&mut to);
                to.truncate(rng.usize(1..=3));
                (tag, to.into_iter().map(String::from).collect())
            })
            .collect();
        let mut config = ClientConfig::new("client.example");
        config.timeouts = ClientTimeouts::uniform(SESSION_TIMEOUT);
        config.timeouts.data_end += ack_delay;
        let start = world.now + ms(&mut rng, 0, window.as_millis() as u64 * 3 / 4);
        let retry = ms(&mut rng, 20, 200);
        world.add_retrying_client("hub", &messages, start, config, Some(retry));
    }

    let mut schedule = Vec::new();
    let span = window.as_millis() as u64;
    // What survives of the writes not yet synced: often nothing or a torn record, else a
    // random prefix of them.
    let torn = |rng: &mut fastrand::Rng| {
        if rng.bool() {
            rng.usize(0..=64)
        } else {
            rng.usize(0..=3000)
        }
    };
    for _ in 0..rng.usize(0..=5) {
        let at = ms(&mut rng, 0, span - 1);
        let edge = edge_names[rng.usize(..edge_names.len())].clone();
        let heal_at = (at + ms(&mut rng, 100, 2500)).min(window);
        let crash = |rng: &mut fastrand::Rng, node: String, down: Duration, wipe: bool| {
            let torn = torn(rng);
            let flush = rng.bool();
            if rng.bool() {
                let plan = CrashPlan {
                    torn,
                    downtime: down,
                    flush,
                    wipe,
                    on_persist: rng.bool(),
                };
                let steps = rng.u64(1..=80);
                Scheduled::CrashAfter { node, steps, plan }
            } else if wipe {
                Scheduled::Wipe { edge: node, down }
            } else {
                Scheduled::Crash {
                    node,
                    torn,
                    down,
                    flush,
                }
            }
        };
        match rng.u8(..8) {
            0 => {
                let down = ms(&mut rng, 5, 800);
                schedule.push((at, crash(&mut rng, "hub".into(), down, false)));
            }
            1 | 2 => {
                let down = ms(&mut rng, 5, 1500);
                schedule.push((at, crash(&mut rng, edge, down, false)));
            }
            3 => {
                let down = ms(&mut rng, 5, 600);
                schedule.push((at, crash(&mut rng, edge, down, true)));
            }
            4 | 7 => {
                let stall = rng.bool();
                let mut pairs = vec![("hub".to_owned(), edge.clone())];
                if rng.bool() {
                    pairs.push((edge.clone(), "sink".to_owned()));
                }
                for (a, b) in pairs {
                    schedule.push((
                        at,
                        Scheduled::Partition {
                            a: a.clone(),
                            b: b.clone(),
                            stall,
                        },
                    ));
                    schedule.push((heal_at, Scheduled::Heal { a, b }));
                }
            }
            5 => {
                schedule.push((
                    at,
                    Scheduled::Partition {
                        a: edge.clone(),
                        b: "sink".into(),
                        stall: rng.bool(),
                    },
                ));
                schedule.push((
                    heal_at,
                    Scheduled::Heal {
                        a: edge,
                        b: "sink".into(),
                    },
                ));
            }
            _ => {
                schedule.push((at, Scheduled::SinkDown));
                schedule.push((heal_at, Scheduled::SinkUp));
            }
        }
    }
    // A quarter of the seeds: a crash storm, short crashes and kills right after random steps
    // of the hub or an edge, while messages flow.
    if rng.u8(..4) == 0 {
        for _ in 0..rng.usize(3..=8) {
            let at = ms(&mut rng, 0, span - 1);
            let node = if rng.bool() {
                "hub".to_owned()
            } else {
                edge_names[rng.usize(..edge_names.len())].clone()
            };
            let plan = CrashPlan {
                torn: torn(&mut rng),
                downtime: ms(&mut rng, 5, 200),
                flush: rng.bool(),
                wipe: false,
                on_persist: rng.bool(),
            };
            let steps = rng.u64(1..=30);
            schedule.push((at, Scheduled::CrashAfter { node, steps, plan }));
        }
    }
    schedule.push((window, Scheduled::FaultsEnd));
    schedule.sort_by_key(|(at, _)| *at);
    Scenario {
        world,
        hub,
        edges,
        window,
        schedule,
    }
}

fn apply(world: &mut World, fault: &Scheduled) {
    match fault {
        Scheduled::Crash {
            node,
            torn,
            down,
            flush: false,
        } => world.crash(node, *torn, *down),
        Scheduled::Crash {
            node, torn, down, ..
        } => world.kill(node, *torn, *down),
        Scheduled::CrashAfter { node, steps, plan } => world.crash_after_steps(node, *steps, *plan),
        Scheduled::Wipe { edge, down } => world.wipe(edge, *down),
        Scheduled::Partition { a, b, stall } => world.partition(a, b, *stall),
        Scheduled::Heal { a, b } => world.heal(a, b),
        Scheduled::SinkDown => world.set_down("sink", true),
        Scheduled::SinkUp => world.set_down("sink", false),
        Scheduled::FaultsEnd => {
            world.link_faults = None;
            world.disarm();
            let blocked: Vec<(usize, usize)> = world.blocked.iter().copied().collect();
            for (a, b) in blocked {
                let (a, b) = (world.name_of(a), world.name_of(b));
                world.heal(&a, &b);
            }
            world.set_down("sink", false);
        }
    }
}

/// What one seed did and what was wrong with it.
#[derive(Debug, Default, Clone)]
struct Report {
    seed: u64,
    hash: u64,
    messages: usize,
    acknowledged: usize,
    copies: usize,
    duplicates: usize,
    faults: BTreeMap<String, usize>,
    strikes: BTreeMap<String, u64>,
    /// Node events by kind.
    events: BTreeMap<String, u64>,
    resubmitted: BTreeMap<String, usize>,
    auto_discarded: usize,
    /// Transfers left in doubt by connections the receiver closed without a fault.
    doubts_without_fault: u64,
    unreachable_checked: usize,
    /// Latest PrimaryUnreachable resubmission relative to R after its reference.
    unreachable_latest: Duration,
    database_checked: usize,
    database_latest: Duration,
    virtual_time: Duration,
    steps: u64,
    failures: Vec<String>,
}

fn run_seed(seed: u64, log: bool) -> (Report, Option<Vec<String>>) {
    let Scenario {
        mut world,
        hub,
        edges,
        window,
        schedule,
    } = scenario(seed);
    if log {
        let mut lines = vec![format!(
            "seed {seed}: window {} ms, latency {:?} + up to {:?}, syncs {:?}, fragments {}, \
             connection faults {:?}, sink defers a RCPT with chance {:.2}",
            window.as_millis(),
            world.latency,
            world.jitter,
            world.sync_delay,
            world.fragment,
            world.link_faults,
            world.sink_defers_rcpt,
        )];
        for h in &world.hosts {
            match h {
                Host::Node(n) => lines.push(format!(
                    "  {}: next hops {:?}, xqdiscard max {}, messages per session {}, \
                     connections per hop {}, memory budget {}, ack delay {:?}",
                    n.name,
                    n.config.next_hops,
                    n.config.client.xqdiscard_max,
                    n.config.max_messages_per_session,
                    n.config.max_connections_per_hop,
                    n.config.memory_budget,
                    n.config.max_ack_delay
                )),
                Host::Client(c) => lines.push(format!(
                    "  client: at {:?} ms, messages {:?}",
                    c.next_attempt.map(|t| world.ms(t)),
                    c.messages
                )),
                Host::Sink(_) => {}
            }
        }
        for (at, fault) in &schedule {
            lines.push(format!("  at {} ms: {fault:?}", at.as_millis()));
        }
        world.log = Some(lines);
    }
    let start = world.now;
    for (at, fault) in &schedule {
        world.run_until(start + *at);
        apply(&mut world, fault);
    }
    let settled = world.run_to_quiescence(start + window + SETTLE_LIMIT);
    let mut report = check(&world, hub, &edges, settled);
    report.seed = seed;
    report.hash = world.trace.0;
    report.strikes = world.ledger.strikes.clone();
    report.doubts_without_fault = world
        .ledger
        .in_doubt_without_fault
        .values()
        .map(|n| u64::from(*n))
        .sum();
    for (_, entry) in &world.ledger.journal {
        if let Entry::Event { event, .. } = entry {
            let text = format!("{event:?}");
            let kind = text.split([' ', '{']).next().unwrap_or_default().to_owned();
            *report.events.entry(kind).or_insert(0) += 1;
        }
    }
    report.virtual_time = world.now - start;
    report.steps = world.steps;
    (report, world.log.take())
}

/// One delivery at the sink (a copy, for one of its recipients) and the path its Received
/// headers name.
struct Path {
    tag: u64,
    to: String,
    hub_id: u64,
    edge: MsgKey,
}

fn check(world: &World, hub: usize, edges: &[usize], settled: bool) -> Report {
    let mut r = Report::default();
    let fail = |r: &mut Report, why: String| r.failures.push(why);
    if !settled {
        fail(&mut r, "the world did not settle".into());
    }

    // The ledger per message and recipient.
    let mut submitted: BTreeMap<u64, (usize, Vec<String>)> = BTreeMap::new();
    let mut acknowledged = BTreeSet::new();
    for (host, h) in world.hosts.iter().enumerate() {
        if let Host::Client(c) = h {
            for (tag, to) in &c.messages {
                submitted.insert(*tag, (host, to.clone()));
            }
            acknowledged.extend(c.acknowledged.iter().copied());
            if c.session.is_some() || c.next_attempt.is_some() {
                fail(&mut r, format!("client {host} still has work"));
            }
        }
    }
    r.messages = submitted.len();
    r.acknowledged = acknowledged.len();
    let hub_name = world.name_of(hub);
    let mut paths = Vec::new();
    for copy in &world.sink("sink").copies {
        if copy.null_sender {
            fail(&mut r, "a bounce reached the sink".into());
            continue;
        }
        let edge_name = world.name_of(copy.from_host);
        let (Some(tag), Some(hub_id), Some(edge_id)) = (
            tag_of(&copy.body),
            node_id_in(&copy.body, &hub_name),
            node_id_in(&copy.body, &edge_name),
        ) else {
            fail(
                &mut r,
                format!("a sink copy from {edge_name} names no full path"),
            );
            continue;
        };
        r.copies += 1;
        for to in &copy.recipients {
            if !submitted
                .get(&tag)
                .is_some_and(|(_, want)| want.contains(to))
            {
                fail(&mut r, format!("message {tag} reached the sink for {to}"));
            }
            paths.push(Path {
                tag,
                to: to.clone(),
                hub_id,
                edge: MsgKey {
                    host: copy.from_host,
                    epoch: copy.from_epoch,
                    id: edge_id,
                },
            });
        }
    }
    let mut per_recipient: BTreeMap<(u64, &str), usize> = BTreeMap::new();
    for p in &paths {
        *per_recipient.entry((p.tag, &p.to)).or_insert(0) += 1;
    }
    r.duplicates = paths.len() - per_recipient.len();
    for (tag, (_, to)) in &submitted {
        if !acknowledged.contains(tag) {
            fail(&mut r, format!("message {tag} never got its 250"));
            continue;
        }
        for to in to {
            if !per_recipient.contains_key(&(*tag, to.as_str())) {
                fail(
                    &mut r,
                    format!("LOST: message {tag} got 250 and never reached the sink for {to}"),
                );
            }
        }
    }

    // Duplicates, hop by hop and recipient by recipient.
    let ledger = &world.ledger;
    let count = |map: &BTreeMap<MsgKey, u32>, key: &MsgKey| map.get(key).copied().unwrap_or(0);
    let hub_epoch = match &world.hosts[hub] {
        Host::Node(n) => n.store_epoch,
        _ => 0,
    };
    let hub_key = |id: u64| MsgKey {
        host: hub,
        epoch: hub_epoch,
        id,
    };
    // Resubmissions, by the message the body came with (the hub's Received header).
    let mut resubmissions: BTreeMap<u64, u32> = BTreeMap::new();
    for (_, entry) in &ledger.journal {
        if let Entry::Event {
            host,
            event: NodeEvent::Resubmitted { id, .. },
        } = entry
            && *host == hub
        {
            let header = ledger.header_id.get(&hub_key(id.0)).copied();
            *resubmissions.entry(header.unwrap_or(id.0)).or_insert(0) += 1;
        }
    }
    let mut edge_copies: BTreeMap<(MsgKey, &str), u32> = BTreeMap::new();
    let mut hub_fanout: BTreeMap<(u64, &str), BTreeSet<MsgKey>> = BTreeMap::new();
    let mut tag_fanout: BTreeMap<(u64, &str), BTreeSet<u64>> = BTreeMap::new();
    for p in &paths {
        *edge_copies.entry((p.edge, &p.to)).or_insert(0) += 1;
        hub_fanout
            .entry((p.hub_id, &p.to))
            .or_default()
            .insert(p.edge);
        tag_fanout
            .entry((p.tag, &p.to))
            .or_default()
            .insert(p.hub_id);
    }
    for ((key, to), n) in &edge_copies {
        let allowed = count(&ledger.in_doubt, key) + count(&ledger.requeued, key);
        if n - 1 > allowed {
            fail(
                &mut r,
                format!(
                    "UNEXPLAINED: {} message {} (store {}) reached the sink for {to} {n} times; \
                     in-doubt transfers {} (and {} without a fault), requeues {}",
                    world.name_of(key.host),
                    key.id,
                    key.epoch,
                    count(&ledger.in_doubt, key),
                    count(&ledger.in_doubt_without_fault, key),
                    count(&ledger.requeued, key)
                ),
            );
        }
    }
    for ((id, to), next) in &hub_fanout {
        let key = hub_key(*id);
        let resubmitted = resubmissions.get(id).copied().unwrap_or(0);
        let allowed = count(&ledger.in_doubt, &key) + count(&ledger.requeued, &key) + resubmitted;
        let n = next.len() as u32;
        if n - 1 > allowed {
            fail(
                &mut r,
                format!(
                    "UNEXPLAINED: hub message {id} reached the sink for {to} through {n} edge \
                     messages; in-doubt {} (and {} without a fault), requeues {}, resubmissions \
                     {resubmitted}",
                    count(&ledger.in_doubt, &key),
                    count(&ledger.in_doubt_without_fault, &key),
                    count(&ledger.requeued, &key)
                ),
            );
        }
    }
    for ((tag, to), next) in &tag_fanout {
        let key = MsgKey {
            host: submitted.get(tag).map_or(usize::MAX, |(h, _)| *h),
            epoch: 0,
            id: *tag,
        };
        let n = next.len() as u32;
        if n - 1 > count(&ledger.in_doubt, &key) {
            fail(
                &mut r,
                format!(
                    "UNEXPLAINED: message {tag} reached the sink for {to} through {n} hub \
                     messages; in-doubt submissions {} (and {} without a fault)",
                    count(&ledger.in_doubt, &key),
                    count(&ledger.in_doubt_without_fault, &key)
                ),
            );
        }
    }

    // Drained.
    for (host, h) in world.hosts.iter().enumerate() {
        let Host::Node(n) = h else { continue };
        let Some(node) = n.node.as_ref() else {
            fail(&mut r, format!("{} is down at the end", n.name));
            continue;
        };
        let s = node.stats();
        let copies: usize = s.shadow_copies.values().sum();
        let events: usize = s.discard_events.values().sum();
        if s.queued + s.in_flight + copies + events + s.connections > 0 {
            fail(
                &mut r,
                format!(
                    "{} not drained: queued {}, in flight {}, shadow copies {copies}, \
                     discard events {events}, connections {}",
                    world.name_of(host),
                    s.queued,
                    s.in_flight,
                    s.connections
                ),
            );
        }
    }
    if world.open_ends() > 0 {
        fail(
            &mut r,
            format!("{} connection ends still open", world.open_ends()),
        );
    }

    check_journal(world, hub, edges, &mut r);
    r
}

/// What the hub's side of one edge looks like while walking the journal.
#[derive(Default, Clone)]
struct EdgeView {
    /// The edge's store: bumped when it restarts with a new one.
    epoch: u32,
    /// Copies the hub holds for it.
    copies: usize,
    /// Since when the hub holds copies for it (in this hub life: recovered copies from the
    /// restart).
    holding_since: Option<Instant>,
    /// Since when the hub holds copies for it, across hub restarts.
    holding_since_any: Option<Instant>,
    /// The hub holds copies for it that it recovered from its records at its last restart.
    recovered: bool,
    last_reply_this_life: Option<Instant>,
    last_reply: Option<Instant>,
    overdue_reported: bool,
}

/// Copies of an edge's previous store, to be resubmitted after it came back with a new one.
struct StoreChange {
    edge: usize,
    at: Instant,
    old: BTreeSet<u64>,
    done: Option<Instant>,
    /// The hub crashed before they went.
    spoiled: bool,
}

fn check_journal(world: &World, hub: usize, edges: &[usize], r: &mut Report) {
    let max_latency = world.latency + world.jitter;
    let unreachable_slack = SESSION_TIMEOUT + max_latency * 10;
    let database_slack = max_latency * 10;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut view: BTreeMap<usize, EdgeView> =
        edges.iter().map(|e| (*e, EdgeView::default())).collect();
    let edge_of = |name: &str| world.names.get(name).copied();
    let mut held: BTreeMap<u64, usize> = BTreeMap::new();
    let mut made_in: BTreeMap<u64, u32> = BTreeMap::new();
    let mut hub_up = true;
    let mut hub_life = world.start;
    let mut changes: Vec<StoreChange> = Vec::new();
    let mut last_unreachable: BTreeSet<(Instant, usize)> = BTreeSet::new();
    let deadline = |v: &EdgeView, hub_life: Instant| {
        let since = [v.holding_since, v.last_reply_this_life, Some(hub_life)]
            .into_iter()
            .flatten()
            .max()?;
        Some(since + RESUBMIT_AFTER + HEARTBEAT + unreachable_slack)
    };
    let end = world.now;
    let entries = world.ledger.journal.iter().map(|(at, e)| (*at, Some(e)));
    for (at, entry) in entries.chain(std::iter::once((end, None))) {
        if hub_up {
            for (edge, v) in &mut view {
                if v.copies > 0
                    && !v.overdue_reported
                    && let Some(due) = deadline(v, hub_life)
                    && at > due
                {
                    v.overdue_reported = true;
                    r.failures.push(format!(
                        "the hub held {} copies for {} past {:.1} ms without an XQDISCARD reply \
                         or a resubmission",
                        v.copies,
                        world.name_of(*edge),
                        ms(due - world.start)
                    ));
                }
            }
        }
        let Some(entry) = entry else { break };
        match entry {
            Entry::Fault { kind, a, b } => {
                *r.faults.entry(format!("{kind:?}")).or_insert(0) += 1;
                if *kind == FaultKind::Crash && *a == hub && *b == hub {
                    hub_up = false;
                    held.clear();
                    for v in view.values_mut() {
                        v.copies = 0;
                        v.holding_since = None;
                    }
                    // `holding_since_any` survives: recovered copies were held all along.
                    for c in &mut changes {
                        if c.done.is_none() {
                            c.spoiled = true;
                        }
                    }
                }
            }
            Entry::Restart {
                host,
                new_store,
                copies,
            } => {
                if *host == hub {
                    hub_up = true;
                    hub_life = at;
                    for v in view.values_mut() {
                        v.last_reply_this_life = None;
                        v.overdue_reported = false;
                    }
                    for (id, primary) in copies {
                        let Some(edge) = edge_of(primary) else {
                            continue;
                        };
                        held.insert(*id, edge);
                        let v = view.entry(edge).or_default();
                        v.copies += 1;
                        v.holding_since = Some(at);
                    }
                    for v in view.values_mut() {
                        v.recovered = v.copies > 0;
                        if v.copies == 0 {
                            v.holding_since_any = None;
                        } else if v.holding_since_any.is_none() {
                            v.holding_since_any = Some(at);
                        }
                    }
                } else if *new_store && let Some(v) = view.get_mut(host) {
                    v.epoch += 1;
                    if !hub_up {
                        continue;
                    }
                    let old: BTreeSet<u64> = held
                        .iter()
                        .filter(|(id, e)| **e == *host && made_in.get(id) < Some(&v.epoch))
                        .map(|(id, _)| *id)
                        .collect();
                    if !old.is_empty() {
                        changes.push(StoreChange {
                            edge: *host,
                            at,
                            old,
                            done: None,
                            spoiled: false,
                        });
                    }
                }
            }
            Entry::Contact { shadow, primary } => {
                if *shadow != hub {
                    continue;
                }
                let Some(v) = view.get_mut(primary) else {
                    continue;
                };
                v.last_reply = Some(at);
                v.last_reply_this_life = Some(at);
                v.overdue_reported = false;
                let stale = held
                    .iter()
                    .filter(|(id, e)| **e == *primary && made_in.get(id) < Some(&v.epoch))
                    .count();
                if stale > 0 {
                    r.failures.push(format!(
                        "at {:.1} ms the hub read an XQDISCARD reply from {} while holding \
                         {stale} copies under its previous store",
                        ms(at - world.start),
                        world.name_of(*primary)
                    ));
                }
            }
            Entry::Event { host, event } if *host == hub => match event {
                NodeEvent::Shadowed { id, primary, .. } => {
                    let Some(edge) = edge_of(primary) else {
                        continue;
                    };
                    let v = view.entry(edge).or_default();
                    held.insert(id.0, edge);
                    made_in.insert(id.0, v.epoch);
                    if v.copies == 0 {
                        v.holding_since = Some(at);
                        v.holding_since_any = Some(at);
                    }
                    v.copies += 1;
                }
                NodeEvent::Discarded { id, primary }
                | NodeEvent::AutoDiscarded { id, primary }
                | NodeEvent::Resubmitted { id, primary, .. } => {
                    let Some(edge) = edge_of(primary) else {
                        continue;
                    };
                    if let NodeEvent::AutoDiscarded { .. } = event {
                        r.auto_discarded += 1;
                    }
                    if let NodeEvent::Resubmitted { reason, .. } = event {
                        *r.resubmitted.entry(format!("{reason:?}")).or_insert(0) += 1;
                        let v = &view[&edge];
                        match reason {
                            ResubmitReason::ProtocolBreach => r.failures.push(format!(
                                "hub message {} resubmitted for a protocol breach of {primary}",
                                id.0
                            )),
                            ResubmitReason::DatabaseIdChanged => {
                                if made_in.get(&id.0) >= Some(&v.epoch) {
                                    r.failures.push(format!(
                                        "at {:.1} ms hub message {} resubmitted for a database \
                                         id change, but {primary} has the store it was made in",
                                        ms(at - world.start),
                                        id.0
                                    ));
                                }
                            }
                            ResubmitReason::PrimaryUnreachable => {
                                if last_unreachable.insert((at, edge)) {
                                    unreachable_timing(world, v, at, hub_life, &deadline, r);
                                }
                            }
                        }
                    }
                    if held.remove(&id.0).is_some() {
                        let v = view.entry(edge).or_default();
                        v.copies = v.copies.saturating_sub(1);
                        if v.copies == 0 {
                            v.holding_since = None;
                            v.holding_since_any = None;
                            v.recovered = false;
                        }
                    }
                    for c in &mut changes {
                        if c.old.remove(&id.0) && c.old.is_empty() && c.done.is_none() {
                            c.done = Some(at);
                        }
                    }
                }
                _ => {}
            },
            Entry::Event { .. } => {}
        }
    }

    // Database id changes: within one heartbeat when nothing else went wrong around them.
    for c in &changes {
        if c.spoiled {
            continue;
        }
        let Some(done) = c.done else {
            r.failures.push(format!(
                "copies of {}'s previous store (it came back at {:.1} ms) were never resubmitted",
                world.name_of(c.edge),
                ms(c.at - world.start)
            ));
            continue;
        };
        let window_end = c.at + HEARTBEAT + database_slack;
        let troubled = world.ledger.journal.iter().any(|(at, e)| {
            *at >= c.at.checked_sub(HEARTBEAT).unwrap_or(c.at)
                && *at <= window_end
                && matches!(e, Entry::Fault { a, b, .. }
                    if [*a, *b].contains(&hub) || [*a, *b].contains(&c.edge))
        }) || partitioned_at(world, hub, c.edge, c.at);
        if troubled {
            continue;
        }
        r.database_checked += 1;
        let took = done - c.at;
        r.database_latest = r.database_latest.max(took);
        if done > window_end {
            r.failures.push(format!(
                "{} came back with a new store at {:.1} ms; its old copies went only at \
                 {:.1} ms ({:.1} ms later, more than one heartbeat interval)",
                world.name_of(c.edge),
                ms(c.at - world.start),
                ms(done - world.start),
                ms(took)
            ));
        }
    }
}

/// Whether `a` and `b` were partitioned at `at` (from the journal).
fn partitioned_at(world: &World, a: usize, b: usize, at: Instant) -> bool {
    let pair = (a.min(b), a.max(b));
    let mut blocked = false;
    for (t, e) in &world.ledger.journal {
        if *t > at {
            break;
        }
        if let Entry::Fault { kind, a, b } = e
            && (*a.min(b), *a.max(b)) == pair
        {
            match kind {
                FaultKind::Partition => blocked = true,
                FaultKind::Heal => blocked = false,
                _ => {}
            }
        }
    }
    blocked
}

fn unreachable_timing(
    world: &World,
    v: &EdgeView,
    at: Instant,
    hub_life: Instant,
    deadline: &dyn Fn(&EdgeView, Instant) -> Option<Instant>,
    r: &mut Report,
) {
    let ms = |t: Instant| (t - world.start).as_secs_f64() * 1000.0;
    r.unreachable_checked += 1;
    // A hub that restarted with copies from its records forgot its last contact, counts the
    // heartbeat that fell due while it was down as failed at once and keeps that slot's grid:
    // it resubmits as early as R - 2I after the restart (core bug, shown by
    // `a_restarted_hub_resubmits_no_earlier_than_resubmit_after_its_last_contact`; set
    // `EARLY_AFTER_RESTART` to zero once it is fixed).
    let reference = [v.last_reply, v.holding_since_any]
        .into_iter()
        .flatten()
        .max();
    let relaxed = v.recovered && reference.is_none_or(|r| r <= hub_life);
    let earliest = if relaxed {
        Some(hub_life.max(reference.unwrap_or(hub_life)) + RESUBMIT_AFTER - EARLY_AFTER_RESTART)
    } else {
        reference.map(|r| r + RESUBMIT_AFTER)
    };
    if let Some(earliest) = earliest
        && at < earliest
    {
        r.failures.push(format!(
            "at {:.1} ms copies were resubmitted as unreachable before {:.1} ms (last XQDISCARD \
             reply {:?} ms, holding since {:?} ms, hub up since {:.1} ms)",
            ms(at),
            ms(earliest),
            v.last_reply.map(ms),
            v.holding_since_any.map(ms),
            ms(hub_life)
        ));
    }
    if let Some(due) = deadline(v, hub_life) {
        let since = [v.holding_since, v.last_reply_this_life, Some(hub_life)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(hub_life);
        r.unreachable_latest = r
            .unreachable_latest
            .max(at.saturating_duration_since(since + RESUBMIT_AFTER));
        if at > due {
            r.failures.push(format!(
                "at {:.1} ms copies were resubmitted as unreachable after the deadline {:.1} ms",
                ms(at),
                ms(due)
            ));
        }
    }
}

/// Totals over many seeds.
#[derive(Default)]
struct Totals {
    seeds: u64,
    messages: u64,
    acknowledged: u64,
    copies: u64,
    duplicates: u64,
    faults: BTreeMap<String, u64>,
    strikes: BTreeMap<String, u64>,
    events: BTreeMap<String, u64>,
    resubmitted: BTreeMap<String, u64>,
    auto_discarded: u64,
    doubts_without_fault: u64,
    unreachable_checked: u64,
    unreachable_latest: Duration,
    database_checked: u64,
    database_latest: Duration,
    virtual_time: Duration,
    /// The seeds that took the most steps.
    heaviest: Vec<(u64, u64)>,
    failed: Vec<(u64, Vec<String>)>,
    nondeterministic: Vec<u64>,
}

fn add_all<K: Ord + Clone>(to: &mut BTreeMap<K, u64>, from: impl IntoIterator<Item = (K, u64)>) {
    for (k, n) in from {
        *to.entry(k).or_insert(0) += n;
    }
}

impl Totals {
    fn add(&mut self, r: &Report) {
        self.seeds += 1;
        self.messages += r.messages as u64;
        self.acknowledged += r.acknowledged as u64;
        self.copies += r.copies as u64;
        self.duplicates += r.duplicates as u64;
        add_all(
            &mut self.faults,
            r.faults.iter().map(|(k, n)| (k.clone(), *n as u64)),
        );
        add_all(
            &mut self.strikes,
            r.strikes.iter().map(|(k, n)| (k.clone(), *n)),
        );
        add_all(
            &mut self.events,
            r.events.iter().map(|(k, n)| (k.clone(), *n)),
        );
        add_all(
            &mut self.resubmitted,
            r.resubmitted.iter().map(|(k, n)| (k.clone(), *n as u64)),
        );
        self.auto_discarded += r.auto_discarded as u64;
        self.doubts_without_fault += r.doubts_without_fault;
        self.unreachable_checked += r.unreachable_checked as u64;
        self.unreachable_latest = self.unreachable_latest.max(r.unreachable_latest);
        self.database_checked += r.database_checked as u64;
        self.database_latest = self.database_latest.max(r.database_latest);
        self.virtual_time += r.virtual_time;
        self.heaviest.push((r.steps, r.seed));
        self.heaviest.sort_unstable_by(|a, b| b.cmp(a));
        self.heaviest.truncate(5);
        if !r.failures.is_empty() {
            self.failed.push((r.seed, r.failures.clone()));
        }
    }

    fn merge(&mut self, other: Self) {
        self.seeds += other.seeds;
        self.messages += other.messages;
        self.acknowledged += other.acknowledged;
        self.copies += other.copies;
        self.duplicates += other.duplicates;
        add_all(&mut self.faults, other.faults);
        add_all(&mut self.strikes, other.strikes);
        add_all(&mut self.events, other.events);
        add_all(&mut self.resubmitted, other.resubmitted);
        self.auto_discarded += other.auto_discarded;
        self.doubts_without_fault += other.doubts_without_fault;
        self.unreachable_checked += other.unreachable_checked;
        self.unreachable_latest = self.unreachable_latest.max(other.unreachable_latest);
        self.database_checked += other.database_checked;
        self.database_latest = self.database_latest.max(other.database_latest);
        self.virtual_time += other.virtual_time;
        self.heaviest.extend(other.heaviest);
        self.heaviest.sort_unstable_by(|a, b| b.cmp(a));
        self.heaviest.truncate(5);
        self.failed.extend(other.failed);
        self.nondeterministic.extend(other.nondeterministic);
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs one seed, catching a panic as a failure; checks determinism when `twice`.
fn run_checked(seed: u64, twice: bool) -> (Report, bool) {
    let run = |seed| catch_unwind(AssertUnwindSafe(|| run_seed(seed, false).0));
    let report = match run(seed) {
        Ok(r) => r,
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Report {
                seed,
                failures: vec![format!("panicked: {why}")],
                ..Report::default()
            }
        }
    };
    let same = !twice
        || report.failures.iter().any(|f| f.starts_with("panicked"))
        || run(seed).is_ok_and(|again| again.hash == report.hash);
    (report, same)
}

fn sweep(first: u64, count: u64) -> Totals {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = AtomicU64::new(first);
    let totals = Mutex::new(Totals::default());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut mine = Totals::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        break;
                    }
                    // Every eighth seed runs twice to compare trace hashes.
                    let (report, same) = run_checked(seed, seed.is_multiple_of(8));
                    mine.add(&report);
                    if !same {
                        mine.nondeterministic.push(seed);
                    }
                }
                totals.lock().expect("no poisoned lock").merge(mine);
            });
        }
    });
    let mut totals = totals.into_inner().expect("no poisoned lock");
    totals.failed.sort_by_key(|(seed, _)| *seed);
    totals.nondeterministic.sort_unstable();
    totals
}

fn replay_one(seed: u64) {
    let (report, log) = run_seed(seed, true);
    for line in log.unwrap_or_default() {
        println!("{line}");
    }
    println!("{report:#?}");
    let (_, same) = run_checked(seed, true);
    assert!(same, "seed {seed}: the same seed gave another trace hash");
    assert!(
        report.failures.is_empty(),
        "seed {seed} failed: {:#?}",
        report.failures
    );
}

#[test]
fn every_acknowledged_message_reaches_the_sink_under_faults() {
    if let Some(seed) = env_u64("SIM_SEED") {
        return replay_one(seed);
    }
    let first = env_u64("SIM_FIRST").unwrap_or(0);
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let began = Instant::now();
    let t = sweep(first, count);
    let took = began.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "simulation: seeds {first}..{} in {:.2} s ({:.0} seeds/s), {:.0} s of virtual time\n  \
         messages {}, acknowledged {}, stored by the sink {}, duplicate deliveries to a \
         recipient {} (each explained unless listed below)\n  faults {:?}\n  connection faults struck at {:?}\n  node events {:?}\n  resubmissions {:?}, auto-discarded copies {}, transfers left in doubt without a fault {}\n  \
         unreachable resubmissions checked {} (latest {:.1} ms after R), database id changes \
         checked {} (slowest {:.1} ms)\n  heaviest seeds (steps, seed) {:?}\n  failing seeds {}, \
         nondeterministic seeds {:?}",
        first + count,
        took.as_secs_f64(),
        t.seeds as f64 / took.as_secs_f64(),
        t.virtual_time.as_secs_f64(),
        t.messages,
        t.acknowledged,
        t.copies,
        t.duplicates,
        t.faults,
        t.strikes,
        t.events,
        t.resubmitted,
        t.auto_discarded,
        t.doubts_without_fault,
        t.unreachable_checked,
        ms(t.unreachable_latest),
        t.database_checked,
        ms(t.database_latest),
        t.heaviest,
        t.failed.len(),
        t.nondeterministic,
    );
    for (seed, why) in t.failed.iter().take(30) {
        println!("seed {seed} failed:");
        for w in why {
            println!("    {w}");
        }
        println!("  replay: SIM_SEED={seed} {REPLAY}");
    }
    assert!(
        t.failed.is_empty() && t.nondeterministic.is_empty(),
        "{} of {} seeds failed (first: {:?}); replay one with SIM_SEED=<seed> {REPLAY}",
        t.failed.len() + t.nondeterministic.len(),
        t.seeds,
        t.failed.first().map(|(s, _)| s)
    );
}

/// Seeds that failed in long runs (`SIM_SEEDS=100000`), run on every `cargo test`:
/// - 37492: a message session to edge1 failed while a heartbeat's XQDISCARD loop with it was
///   still going (max 2 ids per reply); the failure counted against the heartbeat in flight and
///   resubmitted edge1's copies moments after its last reply. Fixed: every XQDISCARD reply is
///   a successful contact.
const ONCE_FAILED: &[u64] = &[37492];

#[test]
fn seeds_that_once_failed_pass() {
    for &seed in ONCE_FAILED {
        let (report, _) = run_checked(seed, true);
        assert!(
            report.failures.is_empty(),
            "seed {seed} failed: {:#?}\n  replay: SIM_SEED={seed} {REPLAY}",
            report.failures
        );
    }
}

/// Two runs of a seed give one trace hash (and two seeds two), and a world without any fault
/// delivers every message exactly once and leaves nothing in doubt.
#[test]
fn a_seed_replays_to_the_same_trace_and_a_run_without_faults_has_no_duplicate() {
    let (first, _) = run_seed(7, false);
    let (again, _) = run_seed(7, false);
    assert_eq!(first.hash, again.hash, "seed 7 replays identically");
    assert_ne!(first.hash, run_seed(8, false).0.hash, "seeds differ");

    let mut world = World::with_seed(1);
    support::hub_and_two_edges(&mut world);
    let messages: Vec<(u64, Vec<String>)> = (1..=12).map(|t| (t, vec!["bob".into()])).collect();
    let config = ClientConfig::new("client.example");
    world.add_retrying_client("hub", &messages, world.now, config, Some(HEARTBEAT));
    let limit = world.now + SETTLE_LIMIT;
    assert!(world.run_to_quiescence(limit), "settles");
    let delivered = world.delivered("sink");
    assert_eq!(delivered.len(), 12);
    assert!(delivered.values().all(|n| *n == 1), "{delivered:?}");
    let ledger = &world.ledger;
    assert!(ledger.in_doubt.is_empty() && ledger.in_doubt_without_fault.is_empty());
    assert!(ledger.requeued.is_empty());
}

/// Regression (found by the simulation, fixed in the node): a hub that restarts forgets when it last heard from a primary, counts
/// the heartbeat that fell due while it was down as failed at once, and keeps that slot's grid.
/// Copies of a primary that dies right after a successful heartbeat are then resubmitted
/// `resubmit_after - heartbeat_interval` (or down to `- 2 * heartbeat_interval`) after the
/// restart: less than `resubmit_after` after the last successful contact (PROTOCOL.md §6,
/// issue 4: "within [resubmit_after, resubmit_after + heartbeat_interval] of the last
/// successful contact").
#[test]
fn a_restarted_hub_resubmits_no_earlier_than_resubmit_after_its_last_contact() {
    let mut world = World::new();
    support::hub_and_two_edges(&mut world);
    let (hub, edge1) = (world.names["hub"], world.names["edge1"]);
    // The sink is down: edge1 keeps the message, the hub its copy, and heartbeats succeed.
    world.set_down("sink", true);
    world.add_client("hub", &[(1, "bob")]);
    let replies = |w: &World| {
        w.ledger
            .journal
            .iter()
            .filter(|(_, e)| {
                matches!(e, Entry::Contact { shadow, primary } if *shadow == hub && *primary == edge1)
            })
            .count()
    };
    let t = world.now + Duration::from_secs(1);
    world.run_until(t);
    let seen = replies(&world);
    while replies(&world) == seen {
        let t = world.now + Duration::from_micros(100);
        world.run_until(t);
    }
    let last_contact = world.now;
    // Right after that XQDISCARD reply the hub crashes for 10 ms, and edge1 is gone for good.
    world.crash("hub", 0, Duration::from_millis(10));
    world.partition("hub", "edge1", false);
    let t = world.now + Duration::from_secs(3);
    world.run_until(t);
    let resubmitted = world
        .node_host("hub")
        .events
        .iter()
        .find(|(_, e)| {
            matches!(
                e,
                NodeEvent::Resubmitted {
                    reason: ResubmitReason::PrimaryUnreachable,
                    ..
                }
            )
        })
        .map(|(at, _)| *at)
        .expect("the copy was resubmitted");
    let after = resubmitted - last_contact;
    assert!(
        after >= RESUBMIT_AFTER,
        "resubmitted {} ms after the last successful contact, before resubmit_after ({} ms)",
        after.as_millis(),
        RESUBMIT_AFTER.as_millis()
    );
}

/// Regression (found by the simulation, fixed in the node): a shadow confirms an XQDISCARD reply (its next command, QUIT or
/// XQDISCARD, is what makes the primary forget the events) before the records that drop its
/// copies are durable. If it dies in between, the copies come back from its records while the
/// primary has forgotten their events: nothing can discard them any more, they are held (and
/// heartbeated for) until auto-discard, and resubmitted, duplicating delivered messages, if the
/// primary later looks dead or changes its database id (PROTOCOL.md §5, "no lost
/// notifications").
#[test]
fn a_discard_the_hub_confirmed_survives_a_hub_crash() {
    let mut world = World::new();
    support::hub_and_two_edges(&mut world);
    world.add_client("hub", &[(1, "bob")]);
    let discarded = |w: &World| {
        w.node_host("hub")
            .events
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Discarded { .. }))
    };
    let give_up = world.now + Duration::from_secs(5);
    while !discarded(&world) {
        assert!(world.now < give_up, "the copy was never discarded");
        let t = world.now + Duration::from_micros(100);
        world.run_until(t);
    }
    assert_eq!(world.delivered("sink").get(&1), Some(&1));
    // The hub's process dies right after the step that read the discard id and said QUIT:
    // the QUIT still reaches edge1, the record dropping the copy was not synced yet.
    world.kill("hub", 0, Duration::from_millis(10));
    let t = world.now + Duration::from_secs(3);
    world.run_until(t);
    assert!(
        world.node("edge1").discard_ledger().is_empty(),
        "edge1 forgot the event: ledger {} (in doubt {}), hub {:?}, events {:?}",
        world.node("edge1").discard_ledger().total(),
        world.node("edge1").discard_ledger().in_doubt_on(0),
        world.node("hub").stats(),
        world
            .node_host("hub")
            .events
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        world.node("hub").shadow_queues().total(),
        0,
        "the hub holds a copy of a delivered message that no XQDISCARD can drop any more: {:?}",
        world
            .node_host("hub")
            .events
            .iter()
            .map(|(t, e)| format!("{:?} {e}", *t - world.start))
            .collect::<Vec<_>>()
    );
}

/// Regression (found by the simulation, fixed in the node): a server under backpressure refuses MAIL with `452 4.3.1`; the
/// RCPTs and the DATA a pipelining client sent behind it (RFC 2920) then get `503`, and
/// `ServerSession` counts each of those as the client's error. After a few refused messages it
/// says `421 Too many errors` and closes. A hub sending to an edge that is short of memory
/// loses its session that way, before the XQDISCARD that would have counted as contact: a
/// failed heartbeat toward resubmitting the copies of an edge that is alive.
#[test]
fn a_pipelining_client_is_not_disconnected_for_the_replies_that_follow_a_refused_mail() {
    use std::sync::Arc;
    use xshadow_core::session::{ServerEvent, ServerSession};
    use xshadow_core::wire::{EnhancedStatus, Reply};

    let now = Instant::now();
    let mut server = ServerSession::new(Arc::new(ServerConfig::new("edge1")), true, now);
    let mut replies = Vec::new();
    let mut feed = |server: &mut ServerSession, bytes: &[u8]| {
        server.handle_input(bytes, now);
        loop {
            let mut moved = server.poll_transmit(&mut replies).is_some();
            while let Some(event) = server.poll_event() {
                moved = true;
                if let ServerEvent::MailFrom = event {
                    let busy = Reply::new(
                        452,
                        Some(EnhancedStatus::new(4, 3, 1)),
                        "Insufficient system storage",
                    );
                    server.reject_mail(busy, now).unwrap();
                }
            }
            if !moved {
                break;
            }
        }
    };
    feed(&mut server, b"EHLO hub\r\n");
    for _ in 0..4 {
        feed(
            &mut server,
            b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n\
              RCPT TO:<carol@example.net>\r\nDATA\r\n",
        );
    }
    let text = String::from_utf8_lossy(&replies);
    assert!(
        !server.is_closed() && !text.contains("421"),
        "the server hung up on a well-behaved pipelining client:\n{text}"
    );
}
