//! The runtime bindings behind one face ([`Binding`]), a scripted client on blocking
//! loopback sockets that runs a [`Scenario`] against any of them, and the mixed deployment
//! (whose final destination is an `xshadow sink --runtime async-std` process).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xshadow::core::node::{NodeConfig, NodeEvent};
use xshadow_spool::binding::Settings;

use super::sink::TcpSink;
use super::{Outcome, SEED, Scenario, Step, count_replies, normalize};
#[cfg(all(feature = "mio", feature = "async-std"))]
use crate::common::{Runtime as ProcRuntime, Scratch, read_files, start_xshadow_sink, wait_for};

/// How long any one wait may take before the test fails (generous: CI machines are slow).
const PATIENCE: Duration = Duration::from_secs(30);

/// A node started on some binding, reduced to what the scenarios need.
pub struct Started {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database id as the binding reports it.
    pub database_id: String,
    /// Stops it gracefully and waits until it has stopped.
    pub stop: Box<dyn FnOnce() -> io::Result<()>>,
}

/// One runtime binding (and executor) the scenarios run on.
pub struct Binding {
    /// For messages.
    pub name: &'static str,
    /// Starts a node with these settings.
    pub start: fn(Settings) -> io::Result<Started>,
}

/// Every binding this build has.
pub const BINDINGS: &[Binding] = &[
    Binding {
        name: "tokio",
        start: start_tokio,
    },
    #[cfg(feature = "mio")]
    Binding {
        name: "mio",
        start: start_mio,
    },
    #[cfg(feature = "async-std")]
    Binding {
        name: "async-std (async-std executor)",
        start: |s| start_async_std(s, async_std::task::block_on),
    },
    #[cfg(feature = "async-std")]
    Binding {
        name: "async-std (smol executor)",
        start: |s| start_async_std(s, smol::block_on),
    },
];

fn tokio_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn start_tokio(settings: Settings) -> io::Result<Started> {
    let rt = tokio_runtime()?;
    let node = rt.block_on(xshadow::tokio::start(settings))?;
    Ok(Started {
        addr: node.local_addr(),
        database_id: node.database_id().to_owned(),
        stop: Box::new(move || {
            node.handle().stop();
            let result = rt.block_on(node.wait());
            rt.shutdown_timeout(Duration::from_secs(1));
            result
        }),
    })
}

#[cfg(feature = "mio")]
fn start_mio(settings: Settings) -> io::Result<Started> {
    let node = xshadow::mio::start(settings)?;
    Ok(Started {
        addr: node.local_addr(),
        database_id: node.database_id().to_owned(),
        stop: Box::new(move || {
            node.handle().stop();
            node.wait()
        }),
    })
}

/// A future the async-std binding returns, boxed so one `block_on` type fits both executors.
#[cfg(feature = "async-std")]
type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

#[cfg(feature = "async-std")]
fn start_async_std(
    settings: Settings,
    block_on: fn(BoxFuture<io::Result<()>>) -> io::Result<()>,
) -> io::Result<Started> {
    let started = Arc::new(Mutex::new(None));
    let slot = started.clone();
    block_on(Box::pin(async move {
        let node = xshadow::async_std::start(settings).await?;
        *slot.lock().unwrap() = Some(node);
        Ok(())
    }))?;
    let node = started.lock().unwrap().take().expect("started");
    Ok(Started {
        addr: node.local_addr(),
        database_id: node.database_id().to_owned(),
        stop: Box::new(move || {
            node.handle().stop();
            block_on(Box::pin(node.wait()))
        }),
    })
}

/// Waits until `check` holds, polling every 10 ms, failing after [`PATIENCE`].
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    wait_for(what, PATIENCE, Duration::from_millis(10), || {
        check().then_some(())
    });
}

/// Settings on loopback with a fixed seed, short grace and connect timeouts, and a hook
/// that appends every event to `events`.
fn settings(config: NodeConfig, spool: &Path, events: &Arc<Mutex<Vec<NodeEvent>>>) -> Settings {
    let seen = events.clone();
    let mut s = Settings::new(config, "127.0.0.1:0".parse().expect("addr"), spool.into())
        .with_seed(SEED)
        .with_event_hook(move |e| seen.lock().unwrap().push(e.clone()));
    s.grace = Duration::from_secs(2);
    s.connect_timeout = Duration::from_secs(5);
    s
}

/// Reads from `client` into `into` until `done` holds (or the peer closed, when
/// `until_close`).
fn read_until(
    client: &mut TcpStream,
    into: &mut Vec<u8>,
    until_close: bool,
    done: impl Fn(&[u8]) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 4096];
    while !done(into) {
        assert!(
            Instant::now() < deadline,
            "timed out; the client read so far:\n{}",
            String::from_utf8_lossy(into)
        );
        match client.read(&mut buf) {
            Ok(0) if until_close => return,
            Ok(0) => panic!(
                "the server closed early; the client read:\n{}",
                String::from_utf8_lossy(into)
            ),
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if until_close && e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) => panic!("client read: {e}"),
        }
    }
}

/// Runs `scenario` against an edge on `binding` whose next hop is a [`TcpSink`].
pub fn run(binding: &Binding, scenario: &Scenario) -> Outcome {
    let sink = TcpSink::start();
    let hop = sink.addr().to_string();
    let dir = Scratch::new(binding.name);
    let events = Arc::new(Mutex::new(Vec::new()));
    let config = (scenario.config)(&hop);
    let node = (binding.start)(settings(config, &dir.path, &events))
        .unwrap_or_else(|e| panic!("{}: start: {e}", binding.name));
    let mut client = TcpStream::connect(node.addr).expect("connect to the node");
    client
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let mut received = Vec::new();
    for step in &scenario.steps {
        match step {
            Step::Send(bytes, replies) => {
                let want = count_replies(&received) + replies;
                client.write_all(bytes.as_bytes()).expect("client write");
                read_until(&mut client, &mut received, false, |r| {
                    count_replies(r) >= want
                });
            }
            Step::AwaitEvent(what, matches) => {
                eventually(what, || events.lock().unwrap().iter().any(matches));
            }
            Step::AwaitClose => read_until(&mut client, &mut received, true, |_| false),
        }
    }
    let messages = scenario.sink_messages;
    eventually("the sink's sessions", || {
        sink.with_log(|l| l.messages.len() >= messages && l.open == 0)
    });
    (node.stop)().unwrap_or_else(|e| panic!("{}: stop: {e}", binding.name));
    let sessions = sink.with_log(|l| l.sessions.clone());
    drop(sink);
    let events = std::mem::take(&mut *events.lock().unwrap());
    normalize(
        Outcome {
            database_id: node.database_id,
            replies: received,
            sink: sessions,
            events,
        },
        &hop,
    )
}

/// The mixed deployment: a tokio hub shadows through a mio edge, whose next hop is a node on
/// the async-std binding, which delivers to an `xshadow sink --runtime async-std` process
/// (async-net sockets on the async-std executor, writing a Maildir). The async-std node's
/// event hook shows it relayed each message once. Every message must be in the sink's
/// Maildir exactly once, as submitted, the sink must stop with status 0 on SIGTERM, and the
/// hub's shadow copies must drain to zero once the edge has passed the messages on
/// (heartbeats every 300 ms).
#[cfg(all(feature = "mio", feature = "async-std"))]
pub fn mixed_deployment() {
    use xshadow::core::session::{Envelope, Recipient};
    use xshadow::core::wire::path::{ForwardPath, Mailbox, ReversePath};
    use xshadow::core::wire::{MailParams, RcptParams};

    const MESSAGES: usize = 5;
    let quick = |name: &str, next_hop: String| {
        let mut c = NodeConfig::new(name);
        c.next_hops = vec![next_hop];
        c.max_ack_delay = Duration::ZERO;
        c.retry.first = Duration::from_millis(200);
        c.retry.max = Duration::from_secs(1);
        c.session_linger = Duration::from_millis(200);
        c
    };
    // The final destination is a real `xshadow sink --runtime async-std` process.
    let scratch = Scratch::new_in_memory("mixed-sink");
    let maildir = scratch.join("maildir");
    let (mut sink, sink_addr) = start_xshadow_sink(&scratch, &maildir, ProcRuntime::AsyncStd);
    let new = maildir.join("new");
    let (last_dir, edge_dir, hub_dir) = (
        Scratch::new("mixed-last"),
        Scratch::new("mixed-edge"),
        Scratch::new("mixed-hub"),
    );
    let (last_events, edge_events, hub_events) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );

    let mut s = settings(
        quick("last.test", sink_addr.to_string()),
        &last_dir.path,
        &last_events,
    );
    s.seed = Some(SEED ^ 1);
    let last = start_async_std(s, async_std::task::block_on).expect("async-std node");

    let mut c = quick("edge.test", last.addr.to_string());
    c.offer_shadow = true;
    c.shadow_peers = vec![super::loopback_net()];
    let mut s = settings(c, &edge_dir.path, &edge_events);
    s.seed = Some(SEED ^ 2);
    let edge = start_mio(s).expect("mio edge");

    let mut c = quick("hub.test", edge.addr.to_string());
    c.shadow_next_hops = true;
    c.shadow.heartbeat_interval = Duration::from_millis(300);
    let mut s = settings(c, &hub_dir.path, &hub_events);
    s.seed = Some(SEED ^ 3);
    let rt = tokio_runtime().expect("tokio runtime");
    let hub = rt.block_on(xshadow::tokio::start(s)).expect("tokio hub");
    let handle = hub.handle();

    for i in 0..MESSAGES {
        let envelope = Envelope {
            from: ReversePath::Mailbox(Mailbox::new("alice", "example.org")),
            params: MailParams::default(),
            recipients: [Recipient {
                to: ForwardPath::Mailbox(Mailbox::new(format!("bob{i}"), "example.net")),
                params: RcptParams::default(),
            }]
            .into(),
        };
        let body = format!("Subject: mixed {i}\r\nX-Tag: mixed-{i}\r\n\r\n.a dot for {i}\r\n");
        rt.block_on(handle.submit(envelope, body.into_bytes()))
            .expect("submit to the hub");
    }

    eventually("every message in the sink's Maildir", || {
        read_files(&new).len() >= MESSAGES
    });
    eventually("the hub's shadow copies to drain", || {
        let stats = rt.block_on(handle.stats()).expect("hub stats");
        stats.queued == 0
            && stats.in_flight == 0
            && stats.shadow_copies.values().sum::<usize>() == 0
    });
    // The edge's discard events were all read and confirmed.
    eventually("the edge's discard events to be confirmed", || {
        let confirmed: usize = edge_events
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                NodeEvent::DiscardsConfirmed { count } => *count,
                _ => 0,
            })
            .sum();
        confirmed == MESSAGES
    });

    hub.handle().stop();
    rt.block_on(hub.wait()).expect("hub stops");
    (edge.stop)().expect("edge stops");
    (last.stop)().expect("async-std node stops");

    let messages: Vec<Vec<u8>> = read_files(&new).into_iter().map(|(_, m)| m).collect();
    sink.signal("TERM");
    let status = sink.wait_exit(PATIENCE).expect("the sink exits on SIGTERM");
    assert!(status.success(), "the sink exited with {status}");
    for i in 0..MESSAGES {
        let tag = format!("X-Tag: mixed-{i}\r\n");
        let copies = messages
            .iter()
            .filter(|m| String::from_utf8_lossy(m).contains(&tag))
            .count();
        assert_eq!(copies, 1, "message {i} reached the sink {copies} times");
        assert!(
            messages
                .iter()
                .any(|m| String::from_utf8_lossy(m)
                    .ends_with(&format!("\r\n\r\n.a dot for {i}\r\n"))),
            "message {i}'s leading dot is in the Maildir as submitted, after three hops"
        );
    }
    assert_eq!(messages.len(), MESSAGES, "one Maildir file per message");

    let count = |events: &Mutex<Vec<NodeEvent>>, f: fn(&NodeEvent) -> bool| {
        events.lock().unwrap().iter().filter(|e| f(e)).count()
    };
    let hub_events = &*hub_events;
    assert_eq!(
        count(hub_events, |e| matches!(e, NodeEvent::Shadowed { .. })),
        MESSAGES,
        "the hub kept a shadow copy of each message: {:?}",
        hub_events.lock().unwrap()
    );
    assert_eq!(
        count(hub_events, |e| matches!(e, NodeEvent::Discarded { .. })),
        MESSAGES,
        "the edge's discard events dropped each copy: {:?}",
        hub_events.lock().unwrap()
    );
    assert_eq!(
        count(hub_events, |e| matches!(
            e,
            NodeEvent::Resubmitted { .. } | NodeEvent::AutoDiscarded { .. }
        )),
        0,
        "nothing was resubmitted: {:?}",
        hub_events.lock().unwrap()
    );
    assert_eq!(
        count(&edge_events, |e| matches!(
            e,
            NodeEvent::DiscardQueued { .. }
        )),
        MESSAGES
    );
    assert_eq!(
        count(&last_events, |e| matches!(e, NodeEvent::Received { .. })),
        MESSAGES,
        "the async-std node took each message once"
    );
    assert_eq!(
        count(&last_events, |e| matches!(e, NodeEvent::Delivered { .. })),
        MESSAGES,
        "the async-std node delivered each message once"
    );
}
