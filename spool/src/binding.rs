//! What every runtime binding shares, kept here so that each binding is only its runtime's
//! sockets, timers and tasks: how to run a node ([`Settings`]), opening its spool and
//! recovering the node from it ([`open_node`]), the wall clock ([`unix_ms`]) and where a
//! node's events go ([`Settings::report`]).
//!
//! The bindings re-export [`Settings`] and [`EventHook`] (`xshadow_tokio::Settings`,
//! `xshadow_mio::Settings`, `xshadow_async_std::Settings` are this type), so one value runs a
//! node on any of them.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xshadow_core::node::{Node, NodeConfig, NodeEvent};

use crate::{Spool, SpoolHandle, SpoolOptions};

/// A function called with every event a node emits, in order, on the binding's node task or
/// thread (keep it short: the node waits for it).
pub type EventHook = Arc<dyn Fn(&NodeEvent) + Send + Sync>;

/// How to run a node, whatever the runtime.
#[derive(Clone)]
pub struct Settings {
    /// The node's configuration; its `next_hops` are socket addresses (`host:port`).
    pub node: NodeConfig,
    /// Where to listen for SMTP.
    pub listen: SocketAddr,
    /// The spool directory.
    pub spool: PathBuf,
    /// How long sessions may run on after a stop before the node exits anyway.
    pub grace: Duration,
    /// How long an outbound connect may take.
    pub connect_timeout: Duration,
    /// Called for every event the node emits, in order, besides the log line it gets.
    pub on_event: Option<EventHook>,
    /// The seed of the node's generator (shadow GUIDs, a new spool's database id); `None`
    /// draws one from the operating system's randomness.
    pub seed: Option<u64>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("node", &self.node)
            .field("listen", &self.listen)
            .field("spool", &self.spool)
            .field("grace", &self.grace)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "on_event",
                &self.on_event.as_ref().map(|_| "Fn(&NodeEvent)"),
            )
            .field("seed", &self.seed)
            .finish()
    }
}

impl Settings {
    /// Settings with a 10 s grace period, a 30 s connect timeout, no event hook and a seed
    /// from the operating system.
    pub fn new(node: NodeConfig, listen: SocketAddr, spool: PathBuf) -> Self {
        Self {
            node,
            listen,
            spool,
            grace: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            on_event: None,
            seed: None,
        }
    }

    /// These settings with `hook` called for every event.
    #[must_use]
    pub fn with_event_hook(mut self, hook: impl Fn(&NodeEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }

    /// These settings with a fixed generator seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The seed to start the node with: the configured one, or a fresh random one.
    pub fn node_seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| fastrand::u64(..))
    }

    /// Logs one line for `event` (a warning when [`NodeEvent::is_warning`]) and hands it to
    /// the event hook; bindings call it for every `Output::Event`, in order.
    pub fn report(&self, event: &NodeEvent) {
        if event.is_warning() {
            tracing::warn!("{event}");
        } else {
            tracing::info!("{event}");
        }
        if let Some(hook) = &self.on_event {
            hook(event);
        }
    }
}

/// How long a server (node or sink, on any runtime) stops accepting after `accept` failed,
/// out of file descriptors say: retrying at once would spin, and connections wait in the
/// listen queue meanwhile.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The wall clock in milliseconds since the Unix epoch (0 before 1970), as `Node` takes it.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Opens the spool of `settings` and rebuilds the node from its records at `now` (the
/// binding's clock), seeded by [`Settings::node_seed`]. The spool is not writing yet: spawn it.
/// A configuration that fails [`NodeConfig::validate`] is refused (`InvalidInput`).
pub fn open_node(settings: &Settings, now: Instant) -> io::Result<(Spool, Node)> {
    settings
        .node
        .validate()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let (spool, state) =
        Spool::open(&settings.spool, SpoolOptions::default()).map_err(io::Error::other)?;
    let node = Node::recover(
        settings.node.clone(),
        state,
        settings.node_seed(),
        now,
        unix_ms(),
    );
    Ok((spool, node))
}

/// Hands a node's `Output::Persist` to the spool writer; an error once the spool is closed
/// (the node must stop: nothing more may be acknowledged).
pub fn persist(
    spool: Option<&SpoolHandle>,
    token: u64,
    records: xshadow_core::store::Records,
) -> io::Result<()> {
    match spool {
        Some(spool) => spool.persist(token, records).map_err(io::Error::other),
        None => Err(io::Error::other("spool closed")),
    }
}

/// The error a handle's calls return once its node has stopped.
pub fn stopped() -> io::Error {
    io::Error::other("the node has stopped")
}

/// The error a node stops with when its spool failed (logged once here): nothing more is
/// acknowledged.
pub fn spool_failed(err: &impl fmt::Display) -> io::Error {
    tracing::error!(%err, "the spool failed: stopping without acknowledging anything more");
    io::Error::other(format!("spool: {err}"))
}
