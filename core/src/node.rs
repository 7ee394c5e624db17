//! [`Node`]: one relay node — message queue, next hops, SMTP sessions by connection, all timers,
//! and both redundancy roles at once (shadow for its next hops, primary for its senders).
//!
//! A hub and an edge are the same `Node` with different configuration: a hub's next hops are
//! edges it shadows through (`shadow_next_hops`), an edge's next hop is its relay and it offers
//! XSHADOW to its senders (`offer_shadow`).
//!
//! # Driving it
//!
//! Feed [`Input`]s with [`Node::handle_input`] (new connections with [`Node::accept`], local
//! messages with [`Node::submit`]), call [`Node::handle_timeout`] when [`Node::poll_timeout`]
//! says, and after every call drain [`Node::poll_output`] until it returns `None`:
//!
//! - [`Output::Transmit`]: write these bytes to the connection.
//! - [`Output::Connect`]: open a connection to that next hop, then report
//!   [`Input::Connected`] or [`Input::ConnectFailed`].
//! - [`Output::Close`]: close the connection (after writing what was transmitted before).
//! - [`Output::Persist`]: append the records to durable storage, in order, and report
//!   [`Input::Persisted`] with the token once they are durable. The node acts on a change
//!   (says 250, drops a copy, forgets an event) only after that.
//! - [`Output::Event`]: a state change for logs and metrics.
//!
//! # How messages leave
//!
//! Each message goes to the first next hop that is up on its route ([`NodeConfig::routes`] by
//! recipient domain, else [`NodeConfig::next_hops`]). A hop's sessions take every message that
//! comes while they are open and end once idle for [`NodeConfig::session_linger`], with
//! XQDISCARD when shadowed. A message that finds every hop of its route down waits until one is
//! seen up again (any session's EHLO, heartbeats included), not for a retry backoff. An
//! XQDISCARD reply on one connection may name a message whose 250 is still on its way on
//! another: that 250 then keeps no copy.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use smallvec::SmallVec;
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
// Keys here are the node's own small counters (message, connection and batch numbers), never
// a peer's input: a fast non-keyed hash is safe.
use rustc_hash::FxHashMap as HashMap;

use crate::dsn::{self, FailedRecipient};
use crate::session::client::{ClientEvent, DiscardIdList, RecipientOutcome};
use crate::session::server::ServerEvent;
use crate::session::{
    ClientConfig, ClientSession, Envelope, OutboundMessage, Recipient, Recipients, ServerConfig,
    ServerSession, ShadowOffer, ShadowTag,
};
use crate::shadow::{DiscardLedger, HeartbeatFailure, MessageId, ShadowConfig, ShadowQueues};
use crate::store::{PrimaryFor, Record, Records, StoreState};
use crate::wire::params::{MailParams, RcptParams};
use crate::wire::path::{ForwardPath, ReversePath};
use crate::wire::reply::{EnhancedStatus, Reply};

/// Messages a session may have outstanding before the node opens another connection to the
/// same hop (when `max_connections_per_hop` allows).
const SESSION_DEPTH: usize = 16;

/// How many transmit buffers [`Node::recycle`] keeps, and the largest it keeps.
const SPARE_BUFFERS: usize = 16;
const SPARE_BUFFER_MAX: usize = 64 * 1024;

/// A connection, inbound or outbound, named by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// An IP network such as `127.0.0.0/8` or `::1/128`, for authorization lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length in bits.
    pub prefix: u8,
}

impl IpNet {
    /// True when `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    /// Parses `ADDR/PREFIX` or a bare address (a host network).
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("bad address in {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix in {s:?}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// Next hops for the recipients of some domains.
///
/// A node checks its routes in order for each recipient's domain; recipients no route serves
/// go to [`NodeConfig::next_hops`]. A message whose recipients need different routes is sent
/// route by route: the recipients of one route first, the rest as a follow-up message that
/// carries the discard obligation, so a shadow hears only once every recipient is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Domain patterns: `example.com` (that domain), `*.example.com` (any of its subdomains,
    /// not itself) or `*` (any domain). Matching ignores ASCII case and a trailing dot.
    pub domains: Vec<String>,
    /// The next hops for those domains, in order of preference.
    pub next_hops: Vec<String>,
}

impl Route {
    /// True when this route serves recipients in `domain`.
    #[must_use]
    pub fn serves(&self, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.domains.iter().any(|pattern| {
            let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
            if pattern == "*" {
                return true;
            }
            match pattern.strip_prefix("*.") {
                Some(parent) => {
                    domain.len() > parent.len() + 1 && {
                        let (sub, tail) = domain.split_at(domain.len() - parent.len());
                        sub.ends_with('.') && tail.eq_ignore_ascii_case(parent)
                    }
                }
                None => domain.eq_ignore_ascii_case(pattern),
            }
        })
    }
}

impl std::str::FromStr for Route {
    type Err = String;

    /// Parses `PATTERN[,PATTERN...]=HOP[,HOP...]`, such as `example.com,*.example.com=10.0.0.5:25`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (domains, hops) = s
            .split_once('=')
            .ok_or_else(|| format!("route {s:?} is not DOMAINS=HOPS"))?;
        let list = |part: &str| -> Vec<String> {
            part.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (domains, next_hops) = (list(domains), list(hops));
        if domains.is_empty() {
            return Err(format!("route {s:?} names no domain"));
        }
        if next_hops.is_empty() {
            return Err(format!("route {s:?} names no next hop"));
        }
        if let Some(bad) = domains.iter().find(|d| {
            let d = d.strip_prefix("*.").unwrap_or(d);
            d.is_empty() || (d != "*" && d.contains(|c: char| c == '*' || c.is_whitespace()))
        }) {
            return Err(format!("bad domain pattern {bad:?} in route {s:?}"));
        }
        Ok(Self { domains, next_hops })
    }
}

/// How undelivered messages are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry (doubles each time).
    pub first: Duration,
    /// Longest delay between retries.
    pub max: Duration,
    /// Age after which an undelivered message bounces.
    pub lifetime: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(60),
            max: Duration::from_secs(3600),
            lifetime: Duration::from_secs(2 * 24 * 3600),
        }
    }
}

/// Everything a node needs to know to run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Our name (greeting, EHLO, Received headers); the shadow context is derived from it.
    pub name: String,
    /// What the SMTP server offers and enforces (its `hostname` and `shadow` are set from
    /// `name` and `offer_shadow`).
    pub server: ServerConfig,
    /// Client-side settings for sessions to next hops (`hostname` and `shadow_context` are set
    /// by the node).
    pub client: ClientConfig,
    /// Next hops (addresses the driver can connect to), in order of preference, for every
    /// recipient no entry of `routes` serves.
    pub next_hops: Vec<String>,
    /// Next hops for particular recipient domains, checked in order before `next_hops`.
    pub routes: Vec<Route>,
    /// Ask next hops to be our primaries (XSHADOW) and keep shadow copies: a hub.
    pub shadow_next_hops: bool,
    /// Offer XSHADOW to senders: an edge.
    pub offer_shadow: bool,
    /// Peers that may use XSHADOW with us (and relay).
    pub shadow_peers: Vec<IpNet>,
    /// Peers that may relay through us.
    pub relay_clients: Vec<IpNet>,
    /// Heartbeat interval, resubmission threshold and auto-discard (PROTOCOL.md §6).
    pub shadow: ShadowConfig,
    /// Delayed acknowledgement for senders without XSHADOW (PROTOCOL.md §8); zero is off.
    pub max_ack_delay: Duration,
    /// Retry schedule and lifetime of undelivered messages.
    pub retry: RetryPolicy,
    /// Bytes of message bodies the node keeps queued before refusing new messages with
    /// `452 4.3.1`.
    pub memory_budget: usize,
    /// Most messages sent in one outbound session.
    pub max_messages_per_session: usize,
    /// Most concurrent outbound message sessions per next hop.
    pub max_connections_per_hop: usize,
    /// How long an outbound session with nothing left to send stays open for more messages
    /// before it ends (with XQDISCARD when it is shadowed, then QUIT); zero ends it at once.
    pub session_linger: Duration,
}

impl NodeConfig {
    /// A configuration with the defaults of PROTOCOL.md §6 for a node called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            server: ServerConfig::new(name.clone()),
            client: ClientConfig::new(name.clone()),
            name,
            next_hops: Vec::new(),
            routes: Vec::new(),
            shadow_next_hops: false,
            offer_shadow: false,
            shadow_peers: Vec::new(),
            relay_clients: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            shadow: ShadowConfig::default(),
            max_ack_delay: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            memory_budget: 512 * 1024 * 1024,
            max_messages_per_session: 100,
            max_connections_per_hop: 4,
            session_linger: Duration::from_secs(1),
        }
    }

    /// The shadow context we give our primaries: base64 of our name, as Exchange does.
    pub fn shadow_context(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.name.as_bytes())
    }

    /// The server settings the node runs with: `server`, named `name`, offering XSHADOW when
    /// `offer_shadow`.
    pub fn server_config(&self) -> ServerConfig {
        let mut server = self.server.clone();
        server.hostname = self.name.clone();
        server.shadow = if self.offer_shadow {
            ShadowOffer::XShadow
        } else {
            ShadowOffer::None
        };
        server
    }

    /// The client settings of sessions to next hops: `client`, named `name`, asking XSHADOW
    /// with our context when `shadow_next_hops`.
    pub fn client_config(&self) -> ClientConfig {
        let mut client = self.client.clone();
        client.hostname = self.name.clone();
        client.shadow_context = self.shadow_next_hops.then(|| self.shadow_context());
        client
    }
}

/// A [`NodeConfig`] that cannot run: which setting, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig {
    /// The setting, as its field path (`server.max_line`).
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for InvalidConfig {}

impl NodeConfig {
    /// Checks the settings a node cannot run with (a name that cannot go on the wire, limits
    /// of zero, a route without hops...). Bindings refuse to start a node that fails this.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |setting: &'static str, reason: &str| {
            Err(InvalidConfig {
                setting,
                reason: reason.to_owned(),
            })
        };
        if let Err(e) = self.client_config().validate() {
            let setting = match e {
                crate::session::ConfigError::Hostname => "name",
                crate::session::ConfigError::ShadowContext => "name (shadow context)",
                crate::session::ConfigError::XqdiscardMax => "client.xqdiscard_max",
                crate::session::ConfigError::MaxLine => "client.max_line",
            };
            return bad(setting, &e.to_string());
        }
        let server = &self.server_config();
        if server.max_line < 512 {
            return bad("server.max_line", "must be at least 512 (RFC 5321)");
        }
        if server.max_pending_output == 0 {
            return bad(
                "server.max_pending_output",
                "must be above 0, or the server never reads a command",
            );
        }
        if server.max_recipients == 0 {
            return bad("server.max_recipients", "must be at least 1");
        }
        if server.max_message_size == 0 {
            return bad("server.max_message_size", "must be at least 1");
        }
        if self.shadow.heartbeat_interval.is_zero() {
            return bad("shadow.heartbeat_interval", "must be above zero");
        }
        if self.retry.first.is_zero() || self.retry.max < self.retry.first {
            return bad("retry", "first must be above zero and max at least first");
        }
        if self.max_messages_per_session == 0 || self.max_connections_per_hop == 0 {
            return bad(
                "max_messages_per_session / max_connections_per_hop",
                "must be at least 1",
            );
        }
        if let Some(r) = self
            .routes
            .iter()
            .find(|r| r.domains.is_empty() || r.next_hops.is_empty())
        {
            return bad(
                "routes",
                &format!("a route needs domains and next hops: {r:?}"),
            );
        }
        Ok(())
    }
}

/// What happened, for the node to react to.
#[derive(Debug)]
pub enum Input<'a> {
    /// An outbound connection from [`Output::Connect`] is up.
    Connected(ConnId),
    /// An outbound connection from [`Output::Connect`] could not be made.
    ConnectFailed(ConnId),
    /// Bytes arrived on a connection.
    Received(ConnId, &'a [u8]),
    /// The peer closed the connection, or it failed.
    Closed(ConnId),
    /// The records of the `Persist` output with this token are durable.
    Persisted(u64),
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Write these bytes to the connection.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// The bytes, in order after earlier transmits.
        data: Vec<u8>,
    },
    /// Open a connection to `to` (one of the configured next hops) named `conn`.
    Connect {
        /// The name the node gives the connection.
        conn: ConnId,
        /// The next hop's address as configured.
        to: String,
    },
    /// Close the connection once the bytes already transmitted are written.
    Close(ConnId),
    /// Make these records durable, in order, then report [`Input::Persisted`] with `token`.
    Persist {
        /// Names this batch.
        token: u64,
        /// The records, in order (one is kept inline).
        records: Records,
    },
    /// A state change, for logs and metrics.
    Event(NodeEvent),
}

/// Why copies were resubmitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResubmitReason {
    /// The primary missed heartbeats for the whole resubmit interval.
    PrimaryUnreachable,
    /// The primary came back with a different database id: it lost its queue.
    DatabaseIdChanged,
    /// The primary broke the shadow protocol.
    ProtocolBreach,
}

/// A state change of a message or of the redundancy bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A message was accepted from a sender (or submitted locally) and persisted.
    Received {
        /// Our id for it.
        id: MessageId,
        /// Sender, recipients and parameters (shared with the queued message).
        envelope: Arc<Envelope>,
        /// Body size in bytes.
        size: usize,
        /// The sender's shadow context when we are its primary for this message.
        primary_for: Option<Arc<str>>,
    },
    /// The message was handed to a session to a next hop (an attempt starts).
    Sent {
        /// The message.
        id: MessageId,
        /// The next hop.
        hop: Arc<str>,
        /// Which attempt this is, from 1.
        attempt: u32,
    },
    /// A next hop took the message and we keep a shadow copy.
    Shadowed {
        /// The message.
        id: MessageId,
        /// The primary holding it.
        primary: Arc<str>,
        /// The XSHADOW= id it was sent with.
        shadow_id: Arc<str>,
    },
    /// A next hop took the message; it is no longer ours.
    Delivered {
        /// The message.
        id: MessageId,
        /// The next hop.
        hop: Arc<str>,
    },
    /// Delivery failed for now; it is queued again.
    Deferred {
        /// The message.
        id: MessageId,
        /// When it is tried again.
        retry_in: Duration,
        /// Why, in a few words.
        reason: String,
    },
    /// The message (or some of its recipients) failed permanently; a bounce was queued unless
    /// the sender was null.
    Bounced {
        /// The message.
        id: MessageId,
        /// The bounce's id, if one was made.
        bounce: Option<MessageId>,
        /// Why.
        reason: String,
    },
    /// The primary passed the message on: our shadow copy was dropped.
    Discarded {
        /// The message.
        id: MessageId,
        /// The primary.
        primary: Arc<str>,
    },
    /// A shadow copy outlived the auto-discard interval and was dropped.
    AutoDiscarded {
        /// The message.
        id: MessageId,
        /// The primary.
        primary: Arc<str>,
    },
    /// Shadow copies became deliveries again: we took the primary role back.
    Resubmitted {
        /// The message.
        id: MessageId,
        /// The primary that failed.
        primary: Arc<str>,
        /// Why.
        reason: ResubmitReason,
    },
    /// A discard event is owed to a shadow server.
    DiscardQueued {
        /// The shadow's context.
        context: Arc<str>,
        /// The message's XSHADOW= id.
        discard_id: Arc<str>,
    },
    /// A shadow confirmed reading discard events; they are gone.
    DiscardsConfirmed {
        /// How many.
        count: usize,
    },
    /// A heartbeat (or session) to a primary failed.
    HeartbeatFailed {
        /// The primary.
        primary: Arc<str>,
        /// Consecutive failures now.
        failures: u64,
    },
}

impl std::fmt::Display for NodeEvent {
    /// One log line: what happened, then its ids as `key=value`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Received {
                id,
                envelope,
                size,
                primary_for,
            } => {
                write!(f, "received id={} from=<", id.0)?;
                if let Some(m) = envelope.from.mailbox() {
                    write!(f, "{m}")?;
                }
                write!(f, "> recipients={} size={size}", envelope.recipients.len())?;
                if let Some(context) = primary_for {
                    write!(f, " primary_for={context}")?;
                }
                Ok(())
            }
            Self::Shadowed {
                id,
                primary,
                shadow_id,
            } => {
                write!(
                    f,
                    "shadowed id={} primary={primary} shadow_id={shadow_id}",
                    id.0
                )
            }
            Self::Delivered { id, hop } => write!(f, "delivered id={} hop={hop}", id.0),
            Self::Deferred {
                id,
                retry_in,
                reason,
            } => {
                write!(
                    f,
                    "deferred id={} retry_in={retry_in:?} reason={reason:?}",
                    id.0
                )
            }
            Self::Bounced { id, bounce, reason } => {
                write!(f, "bounced id={}", id.0)?;
                if let Some(b) = bounce {
                    write!(f, " bounce={}", b.0)?;
                }
                write!(f, " reason={reason:?}")
            }
            Self::Discarded { id, primary } => write!(f, "discarded id={} primary={primary}", id.0),
            Self::AutoDiscarded { id, primary } => {
                write!(f, "auto-discarded id={} primary={primary}", id.0)
            }
            Self::Resubmitted {
                id,
                primary,
                reason,
            } => {
                write!(
                    f,
                    "resubmitted id={} primary={primary} reason={reason:?}",
                    id.0
                )
            }
            Self::DiscardQueued {
                context,
                discard_id,
            } => {
                write!(
                    f,
                    "discard-queued context={context} discard_id={discard_id}"
                )
            }
            Self::DiscardsConfirmed { count } => write!(f, "discards-confirmed count={count}"),
            Self::Sent { id, hop, attempt } => {
                write!(f, "sent id={} hop={hop} attempt={attempt}", id.0)
            }
            Self::HeartbeatFailed { primary, failures } => {
                write!(f, "heartbeat-failed primary={primary} failures={failures}")
            }
        }
    }
}

impl NodeEvent {
    /// True for events an operator should notice (copies resubmitted or auto-discarded,
    /// heartbeats failing, bounces).
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Self::Resubmitted { .. }
                | Self::AutoDiscarded { .. }
                | Self::HeartbeatFailed { .. }
                | Self::Bounced { .. }
        )
    }
}

/// A snapshot of a node's queues, for `xshadow queue` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages waiting for a next hop (including ones waiting to be persisted).
    pub queued: usize,
    /// Messages being sent.
    pub in_flight: usize,
    /// Shadow copies per primary.
    pub shadow_copies: BTreeMap<String, usize>,
    /// Discard events owed, per shadow context.
    pub discard_events: BTreeMap<String, usize>,
    /// Bytes of bodies held.
    pub queued_bytes: usize,
    /// Open connections.
    pub connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MessageState {
    /// Waiting for its `Accepted` record to be durable.
    Persisting,
    /// Waiting to be sent (in `queue` or a hop's backlog).
    Queued,
    /// Attached to an outbound connection.
    InFlight(ConnId),
    /// A primary took it; we keep the copy.
    Shadowed { primary: Arc<str> },
}

#[derive(Debug)]
struct Message {
    at: Instant,
    /// Shared with its `Accepted` record and with the sessions that carry it.
    envelope: Arc<Envelope>,
    body: Bytes,
    primary_for: Option<PrimaryFor>,
    state: MessageState,
    attempts: u32,
    /// A primary that failed with this message: prefer another hop.
    avoid: Option<Arc<str>>,
    /// The route it is being sent on (index into `routes`; `routes.len()` is `next_hops`).
    route: usize,
    /// The `XSHADOW=` id of the attempt in flight (lowercase), when we shadow.
    shadow_id: Option<Arc<str>>,
    /// The primary reported this attempt's id in an XQDISCARD reply on another connection
    /// before its 250 reached us here: once the 250 comes, there is no copy to keep.
    discarded_early: bool,
}

#[derive(Debug)]
struct Inbound {
    session: ServerSession,
    may_relay: bool,
    /// The name given in EHLO/HELO (shared with the trace of each message).
    helo: Arc<str>,
    /// The peer's address as text, for the trace of each message.
    peer: Arc<str>,
    /// A message waiting for its delayed acknowledgement.
    delayed_ack: Option<MessageId>,
}

#[derive(Debug)]
struct Outbound {
    hop: Arc<str>,
    /// `None` until connected.
    session: Option<ClientSession>,
    /// Messages given to this session that it has not settled yet, in the order given.
    messages: Vec<MessageId>,
    /// How many messages were given to this session in all.
    carried: usize,
    /// Since when it has had nothing to send (for `session_linger`).
    idle_since: Option<Instant>,
    heartbeat: bool,
    database_id: Option<Arc<str>>,
    discard_answered: bool,
    /// Output held back until the records dropping discarded copies are durable: the next
    /// command tells the primary it may forget the events (PROTOCOL.md §5, ours).
    hold: bool,
}

#[derive(Debug)]
enum Conn {
    Inbound(Box<Inbound>),
    Outbound(Box<Outbound>),
}

#[derive(Debug, Default)]
struct Hop {
    backlog: VecDeque<MessageId>,
    conns: BTreeSet<ConnId>,
    failures: u32,
    down_until: Option<Instant>,
}

/// What to do once a Persist batch is durable.
#[derive(Debug)]
enum AfterPersist {
    /// A received message: acknowledge it on its connection (maybe delayed), queue it.
    Acknowledge { conn: Option<ConnId>, id: MessageId },
    /// Copies dropped after XQDISCARD are durably gone: the session may send its next command.
    Release { conn: ConnId },
}

/// One relay node as a pure state machine. See the module documentation.
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    server_config: Arc<ServerConfig>,
    /// The settings of every outbound session ([`NodeConfig::client_config`]).
    client_config: ClientConfig,
    rng: fastrand::Rng,
    database_id: String,
    anchor: (Instant, u64),
    /// The last `unix_ms` answer: a step asks it for the same instant several times.
    last_unix_ms: Cell<(Instant, u64)>,
    now: Instant,
    next_conn: u64,
    next_message: u64,
    next_token: u64,
    conns: HashMap<ConnId, Conn>,
    /// For each connection with a timer (session timeouts, the end of a linger), a time no
    /// later than it, so idle connections cost nothing in `poll_timeout` and
    /// `handle_timeout`. An entry may be early (see `refresh_deadline`), never late.
    deadlines: BTreeSet<(Instant, ConnId)>,
    /// The entry of each connection in `deadlines`.
    deadline_of: HashMap<ConnId, Instant>,
    messages: HashMap<MessageId, Message>,
    queue: BTreeSet<(Instant, MessageId)>,
    /// Entries of `queue` that wait only because no next hop of their route was up: they go
    /// as soon as one is seen up again.
    parked: BTreeSet<(Instant, MessageId)>,
    hops: BTreeMap<Arc<str>, Hop>,
    shadow: ShadowQueues,
    ledger: DiscardLedger,
    /// What to do once each Persist batch is durable, by its token (ascending).
    persisting: VecDeque<(u64, AfterPersist)>,
    batch: Records,
    batch_after: Vec<AfterPersist>,
    /// Messages in the backlogs of all hops together.
    backlogged: usize,
    /// An empty list kept for `flush_batch`.
    spare_after: Vec<AfterPersist>,
    /// Transmit buffers the driver gave back ([`Node::recycle`]).
    spare_buffers: Vec<Vec<u8>>,
    delayed_acks: BTreeSet<(Instant, MessageId)>,
    ack_conn: HashMap<MessageId, ConnId>,
    outputs: VecDeque<Output>,
    queued_bytes: usize,
    /// Messages in flight by the `XSHADOW=` id of their attempt (lowercase).
    in_flight_shadow: HashMap<Arc<str>, MessageId>,
    /// The date text of Received headers, remade once a second.
    dates: dsn::DateCache,
    /// Connections pumped or relieved of a message since `end_idle_sessions` last ran: the
    /// only ones that can have become idle (time alone ends a linger through `deadlines`,
    /// whose connections `handle_timeout` pumps).
    touched: SmallVec<[ConnId; 8]>,
}

fn status(class: u8, subject: u16, detail: u16) -> Option<EnhancedStatus> {
    Some(EnhancedStatus::new(class, subject, detail))
}

fn insufficient_storage() -> Reply<'static> {
    Reply::new(452, status(4, 3, 1), "Insufficient system storage")
}

impl Node {
    /// A node with a new, empty store: creates the database id and emits its record first.
    /// `seed` drives every id the node makes; `unix_ms` is the wall clock at `now`.
    pub fn new(config: NodeConfig, seed: u64, now: Instant, unix_ms: u64) -> Self {
        Self::recover(config, StoreState::default(), seed, now, unix_ms)
    }

    /// Rebuilds a node from the state its records describe (after a restart or crash):
    /// queued messages and messages that were in flight are queued again, shadow copies and
    /// discard events come back with their ages. A store without a database id gets one.
    pub fn recover(
        config: NodeConfig,
        state: StoreState,
        seed: u64,
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        let mut node = Self {
            server_config: Arc::new(config.server_config()),
            client_config: config.client_config(),
            rng: fastrand::Rng::with_seed(seed),
            database_id: String::new(),
            anchor: (now, unix_ms),
            last_unix_ms: Cell::new((now, unix_ms)),
            now,
            next_conn: 1,
            next_message: state.next_message_id.max(1),
            next_token: 1,
            conns: HashMap::default(),
            deadlines: BTreeSet::new(),
            deadline_of: HashMap::default(),
            messages: HashMap::default(),
            queue: BTreeSet::new(),
            parked: BTreeSet::new(),
            hops: config
                .next_hops
                .iter()
                .chain(config.routes.iter().flat_map(|r| &r.next_hops))
                .map(|h| (Arc::from(h.as_str()), Hop::default()))
                .collect(),
            shadow: ShadowQueues::new(config.shadow),
            ledger: DiscardLedger::new(config.shadow.auto_discard),
            persisting: VecDeque::new(),
            batch: Records::new(),
            batch_after: Vec::new(),
            backlogged: 0,
            spare_buffers: Vec::new(),
            spare_after: Vec::new(),
            delayed_acks: BTreeSet::new(),
            ack_conn: HashMap::default(),
            outputs: VecDeque::new(),
            queued_bytes: 0,
            in_flight_shadow: HashMap::default(),
            dates: dsn::DateCache::default(),
            touched: SmallVec::new(),
            config,
        };
        match state.database_id {
            Some(id) => node.database_id = id,
            None => {
                let mut bytes = [0u8; 16];
                node.rng.fill(&mut bytes);
                node.database_id = base64::engine::general_purpose::STANDARD.encode(bytes);
                node.batch.push(Record::DatabaseId {
                    id: node.database_id.clone(),
                });
            }
        }
        for event in &state.discard_events {
            let at = node.instant_of(event.at_ms);
            node.ledger.restore(&event.context, &event.discard_id, at);
        }
        for (id, stored) in state.messages {
            let at = node.instant_of(stored.at_ms);
            node.queued_bytes += stored.body.len();
            let mut message = Message {
                at,
                envelope: stored.envelope,
                body: stored.body,
                primary_for: stored.primary_for,
                state: MessageState::Queued,
                attempts: 0,
                avoid: None,
                route: 0,
                shadow_id: None,
                discarded_early: false,
            };
            if let Some(copy) = stored.shadow {
                let added = node.instant_of(copy.at_ms);
                let resubmit = node.shadow.add_copy(
                    &copy.primary,
                    id,
                    &copy.shadow_id,
                    &copy.database_id,
                    added,
                );
                let primary = node.hop_name(&copy.primary);
                message.state = MessageState::Shadowed {
                    primary: Arc::clone(&primary),
                };
                node.messages.insert(id, message);
                node.resubmit(&primary, resubmit, ResubmitReason::DatabaseIdChanged);
            } else {
                node.messages.insert(id, message);
                node.queue.insert((now, id));
            }
        }
        // The last contact with each primary was not persisted: count the restart as one, so
        // resubmission waits a full resubmit interval of failed heartbeats from now.
        let primaries: Vec<String> = node.shadow.primaries().map(str::to_owned).collect();
        for primary in primaries {
            node.shadow.heartbeat_succeeded(&primary, now);
        }
        node.flush_batch();
        node
    }

    /// The database id of this node's store (returned in every XSHADOW reply).
    pub fn database_id(&self) -> &str {
        &self.database_id
    }

    /// A new inbound connection from `peer`; returns its name. The greeting is queued.
    pub fn accept(&mut self, peer: IpAddr, now: Instant) -> ConnId {
        self.now = now;
        let conn = self.new_conn();
        let may_shadow = self.config.shadow_peers.iter().any(|n| n.contains(peer));
        let may_relay = may_shadow || self.config.relay_clients.iter().any(|n| n.contains(peer));
        let session = ServerSession::new(self.server_config.clone(), may_shadow, now);
        self.conns.insert(
            conn,
            Conn::Inbound(Box::new(Inbound {
                session,
                may_relay,
                helo: Arc::from(""),
                peer: Arc::from(peer.to_string()),
                delayed_ack: None,
            })),
        );
        self.pump(conn);
        self.finish_step();
        conn
    }

    /// A message submitted locally (not over SMTP); it is persisted, then queued.
    pub fn submit(&mut self, envelope: Envelope, body: &[u8], now: Instant) -> MessageId {
        self.now = now;
        let id = self.new_message_id();
        let unix_ms = self.unix_ms(now);
        let trace = dsn::Trace {
            by: &self.config.name,
            helo: "localhost",
            peer: "local submission",
            id: id.0,
            for_one: None,
            date: self.dates.get(unix_ms),
        };
        let body = Bytes::from(dsn::prepend_received(&trace, body));
        self.accept_message(id, Arc::new(envelope), body, None, None);
        self.finish_step();
        id
    }

    /// Reacts to one input.
    pub fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        self.now = now;
        match input {
            Input::Received(conn, data) => match self.conns.get_mut(&conn) {
                Some(Conn::Inbound(_)) => self.receive_inbound(conn, data, now),
                Some(Conn::Outbound(c)) => {
                    if let Some(s) = c.session.as_mut() {
                        s.handle_input(data, now);
                    }
                }
                None => {}
            },
            Input::Connected(conn) => self.connected(conn),
            Input::ConnectFailed(conn) => self.connect_failed(conn),
            Input::Closed(conn) => match self.conns.get_mut(&conn) {
                Some(Conn::Inbound(c)) => c.session.handle_eof(now),
                Some(Conn::Outbound(c)) => match c.session.as_mut() {
                    Some(s) => s.handle_close(now),
                    None => self.connect_failed(conn),
                },
                None => {}
            },
            Input::Persisted(token) => {
                // Entries are in token order; answers usually come in that order too.
                let at = self.persisting.partition_point(|(t, _)| *t < token);
                while self.persisting.get(at).is_some_and(|(t, _)| *t == token) {
                    if let Some((_, after)) = self.persisting.remove(at) {
                        self.after_persist(after);
                    }
                }
            }
        }
        if let Input::Received(conn, _) | Input::Closed(conn) = input {
            self.pump(conn);
        }
        self.finish_step();
    }

    /// Fires every timer due at `now`. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let due: Vec<ConnId> = self
            .deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, c)| *c)
            .collect();
        for conn in due {
            // The entry may be older than the connection's timer (see `refresh_deadline`):
            // unfiled here, `pump` files the timer the connection has now.
            if let Some(t) = self.deadline_of.remove(&conn) {
                self.deadlines.remove(&(t, conn));
            }
            match self.conns.get_mut(&conn) {
                Some(Conn::Inbound(c)) => c.session.handle_timeout(now),
                Some(Conn::Outbound(c)) => {
                    if let Some(s) = c.session.as_mut() {
                        s.handle_timeout(now);
                    }
                }
                None => continue,
            }
            self.pump(conn);
        }
        while let Some(&(due, id)) = self.delayed_acks.first() {
            if due > now {
                break;
            }
            self.delayed_acks.remove(&(due, id));
            self.release_ack(id);
        }
        for (primary, id) in self.shadow.expire(now) {
            self.batch.push(Record::Done { id });
            self.forget_message(id);
            let primary = self.hop_name(&primary);
            self.outputs
                .push_back(Output::Event(NodeEvent::AutoDiscarded { id, primary }));
        }
        let expired = self.ledger.expire(now);
        if !expired.is_empty() {
            self.batch
                .push(Record::DiscardsForgotten { events: expired });
        }
        while let Some(primary) = self.shadow.poll_heartbeat(now) {
            let primary = self.hop_name(&primary);
            self.open_session(&primary, true);
        }
        self.finish_step();
    }

    /// When [`Node::handle_timeout`] should be called next: never later than a timer, but
    /// sometimes before one (a connection's timer that moved later wakes the node once at its
    /// old time, for nothing).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self.deadlines.first().map(|(t, _)| *t).into_iter();
        let queue = self.queue.first().map(|(t, _)| *t);
        let acks = self.delayed_acks.first().map(|(t, _)| *t);
        sessions
            .chain(
                [
                    queue,
                    acks,
                    self.shadow.poll_timeout(),
                    self.ledger.poll_timeout(),
                ]
                .into_iter()
                .flatten(),
            )
            .min()
    }

    /// False while the node holds back input on this connection (a pipelined command waits
    /// for a decision, such as a message waiting to be persisted before its 250): stop reading
    /// the socket until it is true again, so memory stays bounded. Unknown connections: false.
    pub fn may_read(&self, conn: ConnId) -> bool {
        match self.conns.get(&conn) {
            Some(Conn::Inbound(c)) => c.session.may_read(),
            Some(Conn::Outbound(_)) => true,
            None => false,
        }
    }

    /// The next thing the driver must do, if any.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Gives back the buffer of a [`Output::Transmit`] once its bytes are written (optional):
    /// the node fills it again instead of allocating one. A few modest buffers are kept; the
    /// rest are dropped.
    pub fn recycle(&mut self, mut buffer: Vec<u8>) {
        if self.spare_buffers.len() < SPARE_BUFFERS && buffer.capacity() <= SPARE_BUFFER_MAX {
            buffer.clear();
            self.spare_buffers.push(buffer);
        }
    }

    /// A snapshot of the queues.
    pub fn stats(&self) -> NodeStats {
        let mut stats = NodeStats {
            queued_bytes: self.queued_bytes,
            connections: self.conns.len(),
            ..NodeStats::default()
        };
        for m in self.messages.values() {
            match m.state {
                MessageState::Persisting | MessageState::Queued => stats.queued += 1,
                MessageState::InFlight(_) => stats.in_flight += 1,
                MessageState::Shadowed { .. } => {}
            }
        }
        for primary in self.shadow.primaries() {
            stats
                .shadow_copies
                .insert(primary.to_owned(), self.shadow.copies(primary));
        }
        for context in self.ledger.contexts() {
            stats.discard_events.insert(
                context.to_owned(),
                self.ledger.pending(context) + self.ledger.in_doubt(context),
            );
        }
        stats
    }

    /// The shadow bookkeeping (copies held per primary).
    pub fn shadow_queues(&self) -> &ShadowQueues {
        &self.shadow
    }

    /// The discard events owed to shadows.
    pub fn discard_ledger(&self) -> &DiscardLedger {
        &self.ledger
    }

    // ---- plumbing ----------------------------------------------------------------------

    fn new_conn(&mut self) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        conn
    }

    fn new_message_id(&mut self) -> MessageId {
        let id = MessageId(self.next_message);
        self.next_message += 1;
        id
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let (last, last_ms) = self.last_unix_ms.get();
        if last == now {
            return last_ms;
        }
        let (at, ms) = self.anchor;
        let delta = now.saturating_duration_since(at).as_millis();
        let unix_ms = ms.saturating_add(u64::try_from(delta).unwrap_or(u64::MAX));
        self.last_unix_ms.set((now, unix_ms));
        unix_ms
    }

    fn instant_of(&self, unix_ms: u64) -> Instant {
        let (at, ms) = self.anchor;
        let back = Duration::from_millis(ms.saturating_sub(unix_ms));
        at.checked_sub(back).unwrap_or(at)
    }

    /// A version-4 GUID in Exchange's lowercase hyphenated form, from the node's generator.
    fn new_shadow_id(&mut self) -> Arc<str> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut b = [0u8; 16];
        self.rng.fill(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let mut text = [0u8; 36];
        let mut at = 0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                text[at] = b'-';
                at += 1;
            }
            text[at] = HEX[usize::from(byte >> 4)];
            text[at + 1] = HEX[usize::from(byte & 0x0f)];
            at += 2;
        }
        // Hex digits and hyphens: ASCII, so always UTF-8.
        std::str::from_utf8(&text).map_or_else(|_| Arc::from(""), Arc::from)
    }

    /// Ends a state change: emits the batched records as one Persist, moves queued messages
    /// onto next hops.
    fn finish_step(&mut self) {
        self.dispatch();
        self.flush_batch();
    }

    fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            // Nothing to wait for. What these steps add to `batch_after` waits for the next
            // flush; the two lists swap so that neither is allocated again (0.5 to 2 fewer
            // allocations per message in the node bench).
            let mut now = std::mem::take(&mut self.spare_after);
            std::mem::swap(&mut now, &mut self.batch_after);
            for after in now.drain(..) {
                self.after_persist(after);
            }
            self.spare_after = now;
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        let records = std::mem::take(&mut self.batch);
        self.persisting
            .extend(self.batch_after.drain(..).map(|after| (token, after)));
        self.outputs.push_back(Output::Persist { token, records });
    }

    /// Drains one connection's session: bytes out, events handled, close when it is over.
    fn pump(&mut self, conn: ConnId) {
        self.pump_session(conn);
        self.refresh_deadline(conn);
        self.touch(conn);
    }

    /// Notes that `conn` may have run out of work: `end_idle_sessions` looks at it.
    fn touch(&mut self, conn: ConnId) {
        if !self.touched.contains(&conn) {
            self.touched.push(conn);
        }
    }

    /// Files `conn`'s next timer in `deadlines` (none once it is gone).
    fn refresh_deadline(&mut self, conn: ConnId) {
        let linger = self.config.session_linger;
        let next = match self.conns.get(&conn) {
            Some(Conn::Inbound(c)) => c.session.poll_timeout(),
            Some(Conn::Outbound(c)) => {
                let idle = c.messages.is_empty()
                    && c.session
                        .as_ref()
                        .is_some_and(ClientSession::accepts_messages);
                let ends = c
                    .idle_since
                    .filter(|_| idle)
                    .and_then(|t| t.checked_add(linger));
                let reply = c.session.as_ref().and_then(ClientSession::poll_timeout);
                match (ends, reply) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            None => None,
        };
        let Some(next) = next else {
            // An entry filed earlier stays: it wakes `handle_timeout` once, for nothing.
            return;
        };
        let old = self.deadline_of.get(&conn).copied();
        if old.is_some_and(|old| old <= next) {
            // Most changes move a timer later (each command restarts its reply timeout): the
            // earlier entry stays filed, and when it fires `handle_timeout` files the real
            // one. Ordered-set updates happen only when a timer moves earlier.
            return;
        }
        if let Some(old) = old {
            self.deadlines.remove(&(old, conn));
        }
        self.deadlines.insert((next, conn));
        self.deadline_of.insert(conn, next);
    }

    fn pump_session(&mut self, conn: ConnId) {
        for _ in 0..10_000 {
            let mut progressed = false;
            // Events first: handling one may hold this connection's output back (see
            // `Outbound::hold`), and that must happen before the bytes behind it are taken.
            loop {
                let event = match self.conns.get_mut(&conn) {
                    Some(Conn::Inbound(c)) => c.session.poll_event().map(Ok),
                    Some(Conn::Outbound(c)) => c
                        .session
                        .as_mut()
                        .and_then(ClientSession::poll_event)
                        .map(Err),
                    None => None,
                };
                match event {
                    Some(Ok(e)) => self.server_event(conn, e),
                    Some(Err(e)) => self.client_event(conn, e),
                    None => break,
                }
                progressed = true;
            }
            // Bytes for this connection join its Transmit when that is the last output still
            // waiting (one write, one read at the peer, one buffer), else start a new one.
            let mut fresh = self.spare_buffers.pop().unwrap_or_default();
            let data = match self.outputs.back_mut() {
                Some(Output::Transmit { conn: c, data }) if *c == conn => data,
                _ => &mut fresh,
            };
            let before = data.len();
            let closed = match self.conns.get_mut(&conn) {
                Some(Conn::Inbound(c)) => {
                    let _ = c.session.poll_transmit(data);
                    c.session.is_closed()
                }
                Some(Conn::Outbound(c)) => match c.session.as_mut() {
                    Some(s) => {
                        if !c.hold {
                            let _ = s.poll_transmit(data);
                        }
                        // Closed while holding output: the peer went away (or the session
                        // failed), so nothing held can be sent any more; close now.
                        s.is_closed()
                    }
                    None => false,
                },
                None => return,
            };
            if data.len() > before {
                progressed = true;
            }
            if !fresh.is_empty() {
                self.outputs
                    .push_back(Output::Transmit { conn, data: fresh });
            } else if fresh.capacity() > 0 {
                self.spare_buffers.push(fresh);
            }
            if !progressed {
                if closed {
                    self.close_conn(conn);
                }
                return;
            }
        }
    }

    fn close_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(t) = self.deadline_of.remove(&conn) {
            self.deadlines.remove(&(t, conn));
        }
        self.outputs.push_back(Output::Close(conn));
        match c {
            Conn::Inbound(c) => {
                self.ledger.connection_lost(conn.0);
                if let Some(id) = c.delayed_ack {
                    self.ack_conn.remove(&id);
                }
            }
            Conn::Outbound(c) => {
                if let Some(hop) = self.hops.get_mut(&c.hop) {
                    hop.conns.remove(&conn);
                }
                // Anything the session did not report is retried, never dropped. A message
                // that never reached the hop (no connection) goes again at once: to another
                // hop of its route, or as soon as one is up.
                let offered = c.session.is_some();
                for id in c.messages {
                    if matches!(self.messages.get(&id).map(|m| &m.state), Some(MessageState::InFlight(x)) if *x == conn)
                    {
                        if offered {
                            self.defer(id, "connection closed");
                        } else {
                            self.requeue(id, Duration::ZERO, "next hop unreachable");
                        }
                    }
                }
            }
        }
    }

    // ---- the receiving side ----------------------------------------------------------

    /// Hands an inbound connection's bytes to its session without the session copying what
    /// is pipelined behind a decision: it reads up to each decision, the decision is answered
    /// here (MAIL and RCPT on the spot) and the rest is offered again. What waits behind a
    /// decision that is not made at once (a message until it is persisted) is kept by the
    /// session, as `handle_input` keeps it.
    fn receive_inbound(&mut self, conn: ConnId, mut data: &[u8], now: Instant) {
        while let Some(Conn::Inbound(c)) = self.conns.get_mut(&conn) {
            let used = c.session.handle_input_until_decision(data, now);
            data = &data[used..];
            if data.is_empty() {
                return;
            }
            let mut answered = false;
            while let Some(Conn::Inbound(c)) = self.conns.get_mut(&conn)
                && let Some(event) = c.session.poll_event()
            {
                self.server_event(conn, event);
                answered = true;
            }
            if answered {
                continue;
            }
            if used > 0 {
                // Stopped with no question: its replies piled up. Move them out, read on.
                self.pump_session(conn);
            } else if let Some(Conn::Inbound(c)) = self.conns.get_mut(&conn) {
                c.session.handle_input(data, now);
                return;
            }
        }
    }

    fn server_event(&mut self, conn: ConnId, event: ServerEvent) {
        let now = self.now;
        let over_budget = self.queued_bytes >= self.config.memory_budget;
        let Some(Conn::Inbound(c)) = self.conns.get_mut(&conn) else {
            return;
        };
        let s = &mut c.session;
        let result = match event {
            ServerEvent::Hello { domain, .. } => {
                c.helo = domain.into();
                Ok(())
            }
            ServerEvent::MailFrom if over_budget => s.reject_mail(insufficient_storage(), now),
            ServerEvent::MailFrom => s.accept_mail(now),
            ServerEvent::RcptTo if c.may_relay => s.accept_rcpt(now),
            ServerEvent::RcptTo => {
                s.reject_rcpt(Reply::new(550, status(5, 7, 1), "Relaying denied"), now)
            }
            ServerEvent::XShadow { .. } => s.accept_xshadow(&self.database_id, now),
            ServerEvent::XShadowRequest { .. } => {
                s.reject_shadow_request(Reply::command_not_implemented(), now)
            }
            ServerEvent::XqDiscard { context, max } => {
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                let ids = self.ledger.take_for_reply(&context, max, conn.0, now);
                s.answer_xqdiscard(&ids, now).map(|_| ())
            }
            ServerEvent::DiscardsConfirmed { .. } => {
                let events = self.ledger.confirm(conn.0);
                if !events.is_empty() {
                    self.outputs
                        .push_back(Output::Event(NodeEvent::DiscardsConfirmed {
                            count: events.len(),
                        }));
                    self.batch.push(Record::DiscardsForgotten { events });
                }
                Ok(())
            }
            ServerEvent::MessageComplete => match s.take_message() {
                Some(message)
                    if self.queued_bytes.saturating_add(message.body.len())
                        <= self.config.memory_budget =>
                {
                    let (helo, peer) = (Arc::clone(&c.helo), Arc::clone(&c.peer));
                    self.receive(conn, message, &helo, &peer);
                    Ok(())
                }
                _ => s.message_rejected(insufficient_storage(), now),
            },
            ServerEvent::StartTls => {
                // STARTTLS is not offered by nodes yet; a session never asks.
                Ok(())
            }
            ServerEvent::TimedOut(_) | ServerEvent::Closed(_) => Ok(()),
        };
        debug_assert!(
            result.is_ok(),
            "node answered a question the session did not ask: {result:?}"
        );
    }

    fn receive(
        &mut self,
        conn: ConnId,
        message: crate::session::ReceivedMessage,
        helo: &str,
        peer: &str,
    ) {
        let id = self.new_message_id();
        let one = match message.envelope.recipients.as_slice() {
            [only] => Some(&only.to),
            _ => None,
        };
        let unix_ms = self.unix_ms(self.now);
        let trace = dsn::Trace {
            by: &self.config.name,
            helo,
            peer,
            id: id.0,
            for_one: one,
            date: self.dates.get(unix_ms),
        };
        let body = Bytes::from(dsn::insert_received(&trace, message.body));
        let primary_for = match message.shadow {
            Some(ShadowTag::Primary {
                context,
                discard_id,
            }) => Some(PrimaryFor {
                context,
                discard_id,
            }),
            _ => None,
        };
        let mut envelope = message.envelope;
        // The XSHADOW= id belongs to the hop it came over; ours are made per attempt.
        envelope.params.xshadow = None;
        self.accept_message(id, Arc::new(envelope), body, primary_for, Some(conn));
    }

    /// Persists a new message; it is acknowledged and queued once durable.
    fn accept_message(
        &mut self,
        id: MessageId,
        envelope: Arc<Envelope>,
        body: Bytes,
        primary_for: Option<PrimaryFor>,
        conn: Option<ConnId>,
    ) {
        let at_ms = self.unix_ms(self.now);
        self.queued_bytes += body.len();
        self.batch.push(Record::Accepted {
            id,
            at_ms,
            envelope: Arc::clone(&envelope),
            body: body.clone(),
            primary_for: primary_for.clone(),
        });
        self.batch_after
            .push(AfterPersist::Acknowledge { conn, id });
        self.messages.insert(
            id,
            Message {
                at: self.now,
                envelope,
                body,
                primary_for,
                state: MessageState::Persisting,
                attempts: 0,
                avoid: None,
                route: 0,
                shadow_id: None,
                discarded_early: false,
            },
        );
    }

    fn after_persist(&mut self, after: AfterPersist) {
        match after {
            AfterPersist::Release { conn } => {
                if let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn) {
                    o.hold = false;
                    self.pump(conn);
                }
            }
            AfterPersist::Acknowledge { conn, id } => {
                let Some(m) = self.messages.get_mut(&id) else {
                    return;
                };
                if m.state == MessageState::Persisting {
                    m.state = MessageState::Queued;
                    self.queue.insert((self.now, id));
                }
                let event = NodeEvent::Received {
                    id,
                    envelope: Arc::clone(&m.envelope),
                    size: m.body.len(),
                    primary_for: m.primary_for.as_ref().map(|p| p.context.clone()),
                };
                let delay = m.primary_for.is_none() && !self.config.max_ack_delay.is_zero();
                self.outputs.push_back(Output::Event(event));
                let Some(conn) = conn else {
                    return;
                };
                let Some(Conn::Inbound(c)) = self.conns.get_mut(&conn) else {
                    return;
                };
                if delay {
                    c.delayed_ack = Some(id);
                    self.ack_conn.insert(id, conn);
                    self.delayed_acks
                        .insert((self.now + self.config.max_ack_delay, id));
                } else {
                    let _ = c.session.message_stored(self.now);
                    self.pump(conn);
                }
            }
        }
    }

    /// Sends the held-back 250 for `id` (delayed acknowledgement, PROTOCOL.md §8).
    fn release_ack(&mut self, id: MessageId) {
        let Some(conn) = self.ack_conn.remove(&id) else {
            return;
        };
        if let Some(Conn::Inbound(c)) = self.conns.get_mut(&conn) {
            c.delayed_ack = None;
            let _ = c.session.message_stored(self.now);
            self.pump(conn);
        }
    }

    // ---- the sending side ------------------------------------------------------------

    /// Moves due messages onto next hops, opens sessions for them, and ends sessions that
    /// have nothing left to send.
    fn dispatch(&mut self) {
        while let Some(&(due, id)) = self.queue.first() {
            if due > self.now {
                break;
            }
            self.queue.pop_first();
            if !self.parked.is_empty() {
                self.parked.remove(&(due, id));
            }
            let Some(m) = self.messages.get(&id) else {
                continue;
            };
            if m.state != MessageState::Queued {
                continue;
            }
            if m.envelope.recipients.is_empty() {
                // Only a local submission can lack recipients: nothing to deliver.
                self.batch.push(Record::Done { id });
                self.forget_message(id);
                self.outputs.push_back(Output::Event(NodeEvent::Bounced {
                    id,
                    bounce: None,
                    reason: "the message has no recipients".into(),
                }));
                continue;
            }
            if self.now.saturating_duration_since(m.at) >= self.config.retry.lifetime {
                self.fail_permanently(id, "4.4.7", "message expired: no next hop took it in time");
                continue;
            }
            let route = m
                .envelope
                .recipients
                .first()
                .map_or(self.config.routes.len(), |r| self.route_of(&r.to));
            match self.choose_hop(route, m.avoid.as_deref()) {
                Ok(hop) => {
                    if let Some(m) = self.messages.get_mut(&id) {
                        m.route = route;
                    }
                    if let Some(h) = self.hops.get_mut(&*hop) {
                        h.backlog.push_back(id);
                        self.backlogged += 1;
                    }
                }
                Err(Some(retry_at)) => {
                    self.queue.insert((retry_at, id));
                    self.parked.insert((retry_at, id));
                }
                Err(None) => {
                    self.fail_permanently(id, "5.4.4", "no next hop serves the recipient's domain");
                }
            }
        }
        debug_assert_eq!(
            self.backlogged,
            self.hops.values().map(|h| h.backlog.len()).sum::<usize>(),
            "the backlog count drifted from the backlogs"
        );
        // Hops with a backlog, in name order (found one at a time: `fill_hop` changes them).
        let mut last: Option<Arc<str>> = None;
        while self.backlogged > 0 {
            let mut rest = match &last {
                None => self.hops.range::<str, _>(..),
                Some(k) => self
                    .hops
                    .range::<str, _>((Bound::Excluded(&**k), Bound::Unbounded)),
            };
            let Some(hop) = rest
                .find(|(_, h)| !h.backlog.is_empty())
                .map(|(name, _)| Arc::clone(name))
            else {
                break;
            };
            self.fill_hop(&hop);
            last = Some(hop);
        }
        self.end_idle_sessions();
    }

    /// The route serving `to` (an index into `routes`; `routes.len()` means `next_hops`).
    fn route_of(&self, to: &ForwardPath<'_>) -> usize {
        let routes = &self.config.routes;
        match to {
            ForwardPath::Mailbox(m) if !routes.is_empty() => routes
                .iter()
                .position(|r| r.serves(m.domain()))
                .unwrap_or(routes.len()),
            _ => routes.len(),
        }
    }

    /// The node's shared name for hop `name` (a next hop, or a primary known from the store).
    fn hop_name(&self, name: &str) -> Arc<str> {
        self.hops
            .get_key_value(name)
            .map_or_else(|| Arc::from(name), |(k, _)| Arc::clone(k))
    }

    /// The next hops of a route, in order of preference.
    fn route_hops(&self, route: usize) -> &[String] {
        self.config
            .routes
            .get(route)
            .map_or(&self.config.next_hops, |r| &r.next_hops)
    }

    /// The positions in `m`'s envelope of the recipients its current route serves (the ones a
    /// session sends), or `None` when that is all of them.
    fn sent_recipients(&self, m: &Message) -> Option<Vec<usize>> {
        if self.config.routes.is_empty() {
            return None;
        }
        let all = &m.envelope.recipients;
        let served: Vec<usize> = (0..all.len())
            .filter(|&i| self.route_of(&all[i].to) == m.route)
            .collect();
        (served.len() < all.len()).then_some(served)
    }

    /// The first next hop of `route` that is up, preferring one other than `avoid`; else when
    /// one is up again (`Err(Some)`), or `Err(None)` when the route has none.
    fn choose_hop(&self, route: usize, avoid: Option<&str>) -> Result<Arc<str>, Option<Instant>> {
        let up = |name: &String| {
            self.hops
                .get_key_value(name.as_str())
                .filter(|(_, h)| h.down_until.is_none_or(|t| t <= self.now))
                .map(|(name, _)| name)
        };
        let hops = self.route_hops(route);
        if let Some(hop) = hops.iter().filter_map(up).find(|h| Some(&***h) != avoid) {
            return Ok(Arc::clone(hop));
        }
        if let Some(hop) = hops.iter().find_map(up) {
            return Ok(Arc::clone(hop));
        }
        Err(hops
            .iter()
            .filter_map(|h| self.hops.get(h.as_str()).and_then(|h| h.down_until))
            .min())
    }

    /// Gives a hop's backlog to its sessions: each message to the open session with the fewest
    /// messages outstanding; a new session opens while every open one has `SESSION_DEPTH` or
    /// more and the hop has room for another connection.
    fn fill_hop(&mut self, hop: &Arc<str>) {
        let max_msgs = self.config.max_messages_per_session.max(1);
        let max_conns = self.config.max_connections_per_hop.max(1);
        loop {
            let Some(h) = self.hops.get(&**hop) else {
                return;
            };
            if h.backlog.is_empty() {
                return;
            }
            let mut best: Option<(usize, ConnId)> = None;
            let mut sessions = 0;
            for &c in &h.conns {
                let Some(Conn::Outbound(o)) = self.conns.get(&c) else {
                    continue;
                };
                if o.heartbeat {
                    continue;
                }
                sessions += 1;
                let open = o
                    .session
                    .as_ref()
                    .is_none_or(ClientSession::accepts_messages);
                if open && o.carried < max_msgs && best.is_none_or(|(n, _)| o.messages.len() < n) {
                    best = Some((o.messages.len(), c));
                }
            }
            let may_open = sessions < max_conns;
            let (conn, room) = match best {
                Some((n, c)) if n < SESSION_DEPTH => (c, SESSION_DEPTH - n),
                Some((_, c)) if !may_open => (c, usize::MAX),
                _ if may_open => (self.open_session(hop, false), SESSION_DEPTH),
                _ => return,
            };
            let mut given = SmallVec::<[MessageId; SESSION_DEPTH]>::new();
            if let (Some(h), Some(Conn::Outbound(o))) =
                (self.hops.get_mut(&**hop), self.conns.get_mut(&conn))
            {
                let room = room.min(max_msgs - o.carried);
                while given.len() < room {
                    let Some(id) = h.backlog.pop_front() else {
                        break;
                    };
                    self.backlogged -= 1;
                    if let Some(m) = self.messages.get_mut(&id) {
                        m.state = MessageState::InFlight(conn);
                        o.messages.push(id);
                        o.carried += 1;
                        o.idle_since = None;
                        given.push(id);
                    }
                }
            }
            if given.is_empty() {
                return;
            }
            let connected =
                matches!(self.conns.get(&conn), Some(Conn::Outbound(o)) if o.session.is_some());
            if connected {
                for id in given {
                    self.offer(conn, id);
                }
                self.pump(conn);
            }
        }
    }

    /// Hands one message to a connected session (with a fresh `XSHADOW=` id when we shadow).
    fn offer(&mut self, conn: ConnId, id: MessageId) {
        let now = self.now;
        let shadow_id = self.config.shadow_next_hops.then(|| self.new_shadow_id());
        let Some(m) = self.messages.get(&id) else {
            return;
        };
        let envelope = match self.sent_recipients(m) {
            None => Arc::clone(&m.envelope),
            Some(served) => Arc::new(Envelope {
                from: m.envelope.from.clone(),
                params: m.envelope.params.clone(),
                recipients: served
                    .iter()
                    .map(|&i| m.envelope.recipients[i].clone())
                    .collect(),
            }),
        };
        let msg = OutboundMessage {
            id: id.0,
            envelope,
            body: m.body.clone(),
            shadow_id: shadow_id.clone(),
        };
        if let Some(m) = self.messages.get_mut(&id) {
            m.attempts += 1;
            if let Some(sid) = shadow_id {
                self.in_flight_shadow.insert(sid.clone(), id);
                m.shadow_id = Some(sid);
            }
        }
        let attempt = self.messages.get(&id).map_or(0, |m| m.attempts);
        if let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn)
            && let Some(s) = o.session.as_mut()
        {
            if s.queue_message(msg, now).is_ok() {
                self.outputs.push_back(Output::Event(NodeEvent::Sent {
                    id,
                    hop: o.hop.clone(),
                    attempt,
                }));
            } else {
                // The session is ending after all: the message goes back to the queue.
                if let Some(i) = o.messages.iter().position(|x| *x == id) {
                    o.messages.remove(i);
                }
                self.requeue(id, Duration::ZERO, "session ending");
            }
        }
    }

    /// Ends message sessions that have nothing left to send: at once, or after
    /// `session_linger` without new work. Heartbeat sessions end as soon as they connect.
    fn end_idle_sessions(&mut self) {
        let now = self.now;
        let linger = self.config.session_linger;
        let max_msgs = self.config.max_messages_per_session.max(1);
        if self.touched.is_empty() {
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        // In connection order, whatever order they were touched in.
        touched.sort_unstable();
        let (mut ending, mut lingering) = (
            SmallVec::<[ConnId; 4]>::new(),
            SmallVec::<[ConnId; 4]>::new(),
        );
        for &conn in &touched {
            let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn) else {
                continue;
            };
            let Some(s) = o.session.as_ref() else {
                continue;
            };
            if o.heartbeat || !o.messages.is_empty() || !s.accepts_messages() {
                continue;
            }
            let started = o.idle_since.is_none();
            let since = *o.idle_since.get_or_insert(now);
            let full = o.carried >= max_msgs;
            if full || since.checked_add(linger).is_none_or(|t| t <= now) {
                ending.push(conn);
            } else if started {
                lingering.push(conn);
            }
        }

        for conn in lingering {
            self.refresh_deadline(conn);
        }
        for conn in ending {
            if let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn)
                && let Some(s) = o.session.as_mut()
            {
                o.idle_since = None;
                let _ = s.finish(self.config.shadow_next_hops, now);
            }
            self.pump(conn);
        }
    }

    fn open_session(&mut self, hop: &Arc<str>, heartbeat: bool) -> ConnId {
        let conn = self.new_conn();
        self.conns.insert(
            conn,
            Conn::Outbound(Box::new(Outbound {
                hop: Arc::clone(hop),
                session: None,
                messages: Vec::new(),
                carried: 0,
                idle_since: None,
                heartbeat,
                database_id: None,
                discard_answered: false,
                hold: false,
            })),
        );
        self.hops
            .entry(Arc::clone(hop))
            .or_default()
            .conns
            .insert(conn);
        self.outputs.push_back(Output::Connect {
            conn,
            to: hop.to_string(),
        });
        conn
    }

    fn connected(&mut self, conn: ConnId) {
        let now = self.now;
        let config = self.client_config.clone();
        let (ids, heartbeat) = match self.conns.get(&conn) {
            Some(Conn::Outbound(o)) if o.session.is_none() => (o.messages.clone(), o.heartbeat),
            _ => return,
        };
        let session = match ClientSession::new(config, now) {
            Ok(s) => s,
            Err(_) => {
                // A configuration the client refuses cannot send anything: treat as a failed
                // connection so the messages are retried elsewhere.
                return self.connect_failed(conn);
            }
        };
        if let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn) {
            o.session = Some(session);
        }
        for id in ids {
            self.offer(conn, id);
        }
        if heartbeat
            && let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn)
            && let Some(s) = o.session.as_mut()
        {
            let _ = s.finish(true, now);
        }
        // A message session ends once it has nothing left (`end_idle_sessions`).
        self.pump(conn);
    }

    fn connect_failed(&mut self, conn: ConnId) {
        let hop = match self.conns.get(&conn) {
            Some(Conn::Outbound(o)) => o.hop.clone(),
            _ => return,
        };
        self.hop_failed(&hop);
        self.heartbeat_failed(&hop);
        self.close_conn(conn);
    }

    fn hop_failed(&mut self, hop: &str) {
        let now = self.now;
        let first = self.config.retry.first;
        if let Some(h) = self.hops.get_mut(hop) {
            h.failures = h.failures.saturating_add(1);
            let backoff = first
                .saturating_mul(1 << h.failures.min(6).saturating_sub(1))
                .min(self.config.retry.max);
            h.down_until = Some(now + backoff);
            // Its waiting messages try another hop.
            let backlog: Vec<MessageId> = h.backlog.drain(..).collect();
            self.backlogged -= backlog.len();
            for id in backlog {
                self.queue.insert((now, id));
            }
        }
    }

    /// `hop` answered EHLO: it is up. Messages that were waiting for a hop of their route to
    /// come back go at once.
    fn hop_succeeded(&mut self, hop: &str) {
        let Some(h) = self.hops.get_mut(hop) else {
            return;
        };
        let was_down = h.failures > 0 || h.down_until.is_some();
        h.failures = 0;
        h.down_until = None;
        if was_down {
            let now = self.now;
            for entry in std::mem::take(&mut self.parked) {
                self.queue.remove(&entry);
                self.queue.insert((now, entry.1));
            }
        }
    }

    /// A contact with `hop` failed: counts as a failed heartbeat only when one was due (or in
    /// flight), and resubmits its copies once the threshold is reached.
    fn heartbeat_failed(&mut self, hop: &Arc<str>) {
        let (failures, copies) = match self.shadow.heartbeat_failed(hop, self.now) {
            HeartbeatFailure::Ignored => return,
            HeartbeatFailure::Counted { failures } => (failures, Vec::new()),
            HeartbeatFailure::Resubmit { failures, copies } => (failures, copies),
        };
        self.outputs
            .push_back(Output::Event(NodeEvent::HeartbeatFailed {
                primary: Arc::clone(hop),
                failures,
            }));
        self.resubmit(hop, copies, ResubmitReason::PrimaryUnreachable);
    }

    fn client_event(&mut self, conn: ConnId, event: ClientEvent) {
        let now = self.now;
        let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn) else {
            return;
        };
        let hop = o.hop.clone();
        match event {
            ClientEvent::Capabilities { .. } => self.hop_succeeded(&hop),
            ClientEvent::ShadowAccepted { database_id } => {
                o.database_id = Some(database_id.as_str().into());
                let resubmit = self.shadow.observe_database_id(&hop, &database_id);
                self.resubmit(&hop, resubmit, ResubmitReason::DatabaseIdChanged);
            }
            ClientEvent::ShadowRefused { .. } | ClientEvent::ShadowNotOffered => {}
            ClientEvent::MessageAccepted {
                id,
                shadowed,
                shadow_id,
                recipients,
                ..
            } => {
                let copy = shadow_id.filter(|_| shadowed).map(|s| {
                    let database_id = o.database_id.clone().unwrap_or_else(|| Arc::from(""));
                    (s, database_id)
                });
                self.settle(MessageId(id), &hop, None, copy, recipients);
            }
            ClientEvent::MessageFailed {
                id,
                reply,
                permanent,
                recipients,
                ..
            } => {
                self.settle(
                    MessageId(id),
                    &hop,
                    Some((&reply, permanent)),
                    None,
                    recipients,
                );
            }
            ClientEvent::MessageDeferred { id, failure, .. } => {
                // The session failed, not the message: the first time, it goes again at once
                // (to another hop while this one is down); after that with the usual backoff,
                // so a message that breaks every session cannot keep a hop busy.
                let id = MessageId(id);
                let why = format!("{failure:?}");
                match self.messages.get_mut(&id) {
                    Some(m) if m.attempts <= 1 && matches!(m.state, MessageState::InFlight(_)) => {
                        m.avoid = Some(hop);
                        self.requeue(id, Duration::ZERO, &why);
                    }
                    _ => self.defer(id, &why),
                }
            }
            ClientEvent::DiscardIds { ids, more_possible } => {
                o.discard_answered = true;
                self.note_early_discards(&hop, &ids);
                // Any XQDISCARD reply proves the primary is there, also one of a loop that
                // goes on: a failure of another session meanwhile must not count against it.
                self.shadow.heartbeat_succeeded(&hop, now);
                let discarded = self.shadow.discard(&hop, &ids);
                if !discarded.dropped.is_empty() {
                    if let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn) {
                        o.hold = true;
                    }
                    self.batch_after.push(AfterPersist::Release { conn });
                }
                for id in discarded.dropped {
                    self.batch.push(Record::Done { id });
                    self.forget_message(id);
                    self.outputs.push_back(Output::Event(NodeEvent::Discarded {
                        id,
                        primary: hop.clone(),
                    }));
                }
                if more_possible {
                    let more = self.shadow.holds_copies(&hop);
                    if let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn)
                        && let Some(s) = o.session.as_mut()
                    {
                        let _ = s.discard_more(more, now);
                    }
                }
            }
            ClientEvent::DiscardRefused { .. } => self.heartbeat_failed(&hop),
            ClientEvent::ProtocolBreach { .. } => {
                let resubmit = self.shadow.protocol_breach(&hop);
                self.resubmit(&hop, resubmit, ResubmitReason::ProtocolBreach);
            }
            ClientEvent::Closed { failure } => {
                let answered = o.discard_answered;
                if answered {
                    self.shadow.heartbeat_succeeded(&hop, now);
                } else if self.config.shadow_next_hops {
                    self.heartbeat_failed(&hop);
                }
                if failure.is_some() {
                    self.hop_failed(&hop);
                }
            }
        }
    }

    /// Settles one message after a next hop's verdict. Each recipient is either taken by the
    /// hop, to be retried, or failed for good: the retried ones travel on as a new message (with
    /// the discard obligation, so the shadow that sent it hears only when all are handled), the
    /// failed ones bounce, the taken ones become a shadow copy or are done.
    ///
    /// `whole` is the message-level refusal when the hop did not take the message at all.
    fn settle(
        &mut self,
        id: MessageId,
        hop: &Arc<str>,
        whole: Option<(&Reply<'_>, bool)>,
        copy: Option<(Arc<str>, Arc<str>)>,
        refused: Vec<RecipientOutcome>,
    ) {
        let Some(m) = self.messages.get(&id) else {
            return;
        };
        if !matches!(m.state, MessageState::InFlight(_)) {
            return;
        }
        // Recipients of other routes were not sent: they travel on like retried ones.
        let sent = self.sent_recipients(m);
        let discarded_early = m.discarded_early;
        self.land(id);
        let Some(m) = self.messages.get(&id) else {
            return;
        };
        // `taken`: `None` when the hop took every recipient (the common case, no copying).
        let (taken, retry, bounced) = if whole.is_none() && refused.is_empty() && sent.is_none() {
            (None, Recipients::new(), Vec::new())
        } else {
            #[derive(Clone)]
            enum Verdict {
                Taken,
                Retry,
                Failed(FailedRecipient),
            }
            let failed = |to: &crate::wire::path::ForwardPath<'static>, reply: &Reply<'_>| {
                Verdict::Failed(FailedRecipient {
                    to: to.clone(),
                    status: enhanced_text(reply, "5.0.0"),
                    diagnostic: reply.to_string().trim_end().to_owned(),
                })
            };
            let was_sent = |i: usize| sent.as_ref().is_none_or(|s| s.binary_search(&i).is_ok());
            let mut verdicts: Vec<Verdict> = m
                .envelope
                .recipients
                .iter()
                .enumerate()
                .map(|(i, r)| match whole {
                    _ if !was_sent(i) => Verdict::Retry,
                    None => Verdict::Taken,
                    Some((reply, true)) => failed(&r.to, reply),
                    Some((_, false)) => Verdict::Retry,
                })
                .collect();
            for r in &refused {
                let index = match &sent {
                    None => Some(r.index),
                    Some(s) => s.get(r.index).copied(),
                };
                if let Some(v) = index.and_then(|i| verdicts.get_mut(i)) {
                    *v = if r.permanent {
                        failed(&r.to, &r.reply)
                    } else {
                        Verdict::Retry
                    };
                }
            }
            let pick = |want: fn(&Verdict) -> bool| -> Recipients {
                m.envelope
                    .recipients
                    .iter()
                    .zip(&verdicts)
                    .filter(|(_, v)| want(v))
                    .map(|(r, _)| r.clone())
                    .collect()
            };
            let taken = pick(|v| matches!(v, Verdict::Taken));
            let retry = pick(|v| matches!(v, Verdict::Retry));
            let bounced: Vec<FailedRecipient> = verdicts
                .iter()
                .filter_map(|v| match v {
                    Verdict::Failed(f) => Some(f.clone()),
                    _ => None,
                })
                .collect();
            (Some(taken), retry, bounced)
        };
        let any_taken = taken
            .as_ref()
            .map_or(!m.envelope.recipients.is_empty(), |t| !t.is_empty());
        if !any_taken && bounced.is_empty() {
            let why = whole.map_or_else(String::new, |(r, _)| r.to_string().trim_end().to_owned());
            return self.defer(id, &why);
        }
        let mut primary_for = m.primary_for.clone();
        if !retry.is_empty() {
            let envelope = Envelope {
                from: m.envelope.from.clone(),
                params: m.envelope.params.clone(),
                recipients: retry,
            };
            let (body, attempts) = (m.body.clone(), m.attempts);
            let rest = self.new_message_id();
            self.accept_message(rest, Arc::new(envelope), body, primary_for.take(), None);
            if let Some(r) = self.messages.get_mut(&rest) {
                r.attempts = attempts;
            }
        }
        if !bounced.is_empty() {
            self.bounce(id, &bounced);
        }
        if let Some(pf) = primary_for {
            self.owe_discard(pf);
        }
        match copy.filter(|_| any_taken) {
            Some(_) if discarded_early => {
                // The primary handled it already (its XQDISCARD reply outran this 250).
                self.batch.push(Record::Done { id });
                self.forget_message(id);
                self.outputs.push_back(Output::Event(NodeEvent::Discarded {
                    id,
                    primary: Arc::clone(hop),
                }));
            }
            Some((shadow_id, database_id)) => {
                let at_ms = self.unix_ms(self.now);
                self.batch.push(Record::Shadowed {
                    id,
                    primary: Arc::clone(hop),
                    shadow_id: Arc::clone(&shadow_id),
                    database_id: Arc::clone(&database_id),
                    at_ms,
                });
                if let Some(m) = self.messages.get_mut(&id) {
                    m.state = MessageState::Shadowed {
                        primary: Arc::clone(hop),
                    };
                    m.primary_for = None;
                    if let Some(taken) = taken {
                        Arc::make_mut(&mut m.envelope).recipients = taken;
                    }
                }
                let resubmit = self
                    .shadow
                    .add_copy(hop, id, &shadow_id, &database_id, self.now);
                self.outputs.push_back(Output::Event(NodeEvent::Shadowed {
                    id,
                    primary: Arc::clone(hop),
                    shadow_id,
                }));
                self.resubmit(hop, resubmit, ResubmitReason::DatabaseIdChanged);
            }
            None => {
                self.batch.push(Record::Done { id });
                self.forget_message(id);
                if any_taken {
                    self.outputs.push_back(Output::Event(NodeEvent::Delivered {
                        id,
                        hop: Arc::clone(hop),
                    }));
                }
            }
        }
        self.release_ack(id);
    }

    /// Queues a discard event for the shadow that sent us a message we have now handled.
    fn owe_discard(&mut self, pf: PrimaryFor) {
        let at_ms = self.unix_ms(self.now);
        self.ledger
            .record_shared(&pf.context, Arc::clone(&pf.discard_id), self.now);
        self.outputs
            .push_back(Output::Event(NodeEvent::DiscardQueued {
                context: pf.context.clone(),
                discard_id: pf.discard_id.clone(),
            }));
        self.batch.push(Record::DiscardQueued {
            context: pf.context,
            discard_id: pf.discard_id,
            at_ms,
        });
    }

    /// Try again later, with exponential backoff; bounce once the lifetime is over.
    fn defer(&mut self, id: MessageId, why: &str) {
        let Some(m) = self.messages.get(&id) else {
            return;
        };
        let exp = m.attempts.saturating_sub(1).min(16);
        let delay = self
            .config
            .retry
            .first
            .saturating_mul(1u32 << exp)
            .min(self.config.retry.max);
        self.requeue(id, delay, why);
    }

    /// A message in flight goes back to the queue, due after `delay`.
    fn requeue(&mut self, id: MessageId, delay: Duration, why: &str) {
        match self.messages.get(&id) {
            Some(m) if matches!(m.state, MessageState::InFlight(_)) => {}
            _ => return,
        }
        self.land(id);
        if let Some(m) = self.messages.get_mut(&id) {
            m.state = MessageState::Queued;
        }
        self.queue.insert((self.now + delay, id));
        self.outputs.push_back(Output::Event(NodeEvent::Deferred {
            id,
            retry_in: delay,
            reason: why.to_owned(),
        }));
        // The next hop is in retry: a held-back acknowledgement goes out now (PROTOCOL.md §8).
        self.release_ack(id);
    }

    /// Ids of an XQDISCARD reply from `hop` that name an attempt still waiting for its 250 on
    /// another connection to `hop` (the replies of two connections may arrive in either
    /// order): that message needs no copy once its 250 comes.
    fn note_early_discards(&mut self, hop: &str, ids: &DiscardIdList) {
        if self.in_flight_shadow.is_empty() {
            return;
        }
        for sid in ids {
            // Ours are lowercase; a primary may answer in either case.
            let found = if sid.bytes().any(|b| b.is_ascii_uppercase()) {
                self.in_flight_shadow.get(sid.to_ascii_lowercase().as_str())
            } else {
                self.in_flight_shadow.get(sid)
            };
            let Some(&id) = found else {
                continue;
            };
            let Some(m) = self.messages.get_mut(&id) else {
                continue;
            };
            if let MessageState::InFlight(conn) = m.state
                && matches!(self.conns.get(&conn), Some(Conn::Outbound(o)) if *o.hop == *hop)
            {
                m.discarded_early = true;
            }
        }
    }

    /// A message in flight leaves its session's list of outstanding messages.
    fn land(&mut self, id: MessageId) {
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        m.discarded_early = false;
        if let Some(sid) = m.shadow_id.take() {
            self.in_flight_shadow.remove(&sid);
        }
        let MessageState::InFlight(conn) = &m.state else {
            return;
        };
        let conn = *conn;
        if let Some(Conn::Outbound(o)) = self.conns.get_mut(&conn)
            && let Some(i) = o.messages.iter().position(|x| *x == id)
        {
            o.messages.remove(i);
            self.touch(conn);
        }
    }

    /// The message failed for good without a next hop's verdict (expired, no route): bounce
    /// every recipient and forget it.
    fn fail_permanently(&mut self, id: MessageId, status: &str, diagnostic: &str) {
        let Some(m) = self.messages.get(&id) else {
            return;
        };
        let failed: Vec<FailedRecipient> = m
            .envelope
            .recipients
            .iter()
            .map(|r| FailedRecipient {
                to: r.to.clone(),
                status: status.to_owned(),
                diagnostic: diagnostic.to_owned(),
            })
            .collect();
        if let Some(pf) = m.primary_for.clone() {
            self.owe_discard(pf);
        }
        self.bounce(id, &failed);
        self.batch.push(Record::Done { id });
        self.forget_message(id);
        self.release_ack(id);
    }

    fn bounce(&mut self, id: MessageId, failed: &[FailedRecipient]) {
        let Some(m) = self.messages.get(&id) else {
            return;
        };
        let unix_ms = self.unix_ms(self.now);
        let seed = self.rng.u64(..);
        let made = dsn::bounce(
            &self.config.name,
            &m.envelope,
            &m.body,
            failed,
            seed,
            unix_ms,
        );
        let reason = failed
            .first()
            .map(|f| f.diagnostic.clone())
            .unwrap_or_default();
        let bounce = made.map(|(to, body)| {
            let envelope = Envelope {
                from: ReversePath::Null,
                params: MailParams::default(),
                recipients: [Recipient {
                    to,
                    params: RcptParams::default(),
                }]
                .into(),
            };
            let bid = self.new_message_id();
            self.accept_message(bid, Arc::new(envelope), body.into(), None, None);
            bid
        });
        self.outputs
            .push_back(Output::Event(NodeEvent::Bounced { id, bounce, reason }));
    }

    /// Copies whose primary failed become deliveries again, avoiding that primary.
    fn resubmit(
        &mut self,
        primary: &Arc<str>,
        ids: Vec<crate::shadow::MessageId>,
        reason: ResubmitReason,
    ) {
        for id in ids {
            let Some(m) = self.messages.get_mut(&id) else {
                continue;
            };
            m.state = MessageState::Queued;
            m.avoid = Some(Arc::clone(primary));
            self.queue.insert((self.now, id));
            self.batch.push(Record::Resubmitted { id });
            self.outputs
                .push_back(Output::Event(NodeEvent::Resubmitted {
                    id,
                    primary: Arc::clone(primary),
                    reason,
                }));
        }
    }

    fn forget_message(&mut self, id: MessageId) {
        if let Some(m) = self.messages.remove(&id) {
            self.queued_bytes = self.queued_bytes.saturating_sub(m.body.len());
        }
    }
}

fn enhanced_text(reply: &Reply<'_>, fallback: &str) -> String {
    reply
        .enhanced
        .map_or_else(|| fallback.to_owned(), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_serves_its_domain_its_subdomains_or_everything_as_its_patterns_say() {
        let route: Route = "example.com, *.corp.example=mx1:25,mx2:25".parse().unwrap();
        assert_eq!(route.next_hops, ["mx1:25", "mx2:25"]);
        assert!(route.serves("example.com"));
        assert!(route.serves("EXAMPLE.com."));
        assert!(!route.serves("sub.example.com"), "a bare domain is exact");
        assert!(route.serves("a.corp.example"));
        assert!(route.serves("x.y.CORP.example"));
        assert!(
            !route.serves("corp.example"),
            "a wildcard is for subdomains only"
        );
        assert!(!route.serves("evilcorp.example"));
        assert!(!route.serves("[192.0.2.1]"));
        let any: Route = "*=smarthost:587".parse().unwrap();
        assert!(any.serves("anything.test") && any.serves("[192.0.2.1]"));
    }

    #[test]
    fn a_malformed_route_is_refused_with_a_reason() {
        for (text, why) in [
            ("example.com", "not DOMAINS=HOPS"),
            ("=mx:25", "names no domain"),
            ("example.com=", "names no next hop"),
            ("ex*ample.com=mx:25", "bad domain pattern"),
            ("*.=mx:25", "bad domain pattern"),
        ] {
            let err = text.parse::<Route>().unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn only_the_connections_whose_timer_is_due_time_out() {
        let t0 = Instant::now();
        let mut config = NodeConfig::new("edge.example");
        config.server.timeouts.command = Duration::from_secs(10);
        let mut node = Node::new(config, 1, t0, 1_796_400_103_000);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let conns: Vec<ConnId> = (0..1000)
            .map(|i| node.accept(peer, t0 + Duration::from_millis(i)))
            .collect();
        while node.poll_output().is_some() {}
        assert_eq!(node.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        // A command on the first connection pushes its timer back.
        node.handle_input(
            Input::Received(conns[0], b"NOOP\r\n"),
            t0 + Duration::from_secs(1),
        );
        while node.poll_output().is_some() {}
        // Its old entry stays filed (timers that move later are not refiled): one early
        // wake-up, which closes nothing and files the timer the connection has now.
        assert_eq!(node.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        node.handle_timeout(t0 + Duration::from_secs(10));
        assert!(
            std::iter::from_fn(|| node.poll_output()).all(|out| !matches!(out, Output::Close(_))),
            "nothing is due at 10 s"
        );
        assert_eq!(
            node.poll_timeout(),
            Some(t0 + Duration::from_secs(10) + Duration::from_millis(1))
        );
        node.handle_timeout(t0 + Duration::from_millis(10_005));
        let mut closed = Vec::new();
        while let Some(out) = node.poll_output() {
            if let Output::Close(c) = out {
                closed.push(c);
            }
        }
        assert_eq!(
            closed,
            conns[1..=5],
            "the five whose timer ran out, and no other"
        );
        assert_eq!(node.stats().connections, 995);
        assert_eq!(
            node.poll_timeout(),
            Some(t0 + Duration::from_secs(10) + Duration::from_millis(6))
        );
        // The first connection's timer was refiled at its true time, 11 s, when every other
        // one has run out too.
        node.handle_timeout(t0 + Duration::from_millis(10_999));
        assert!(
            std::iter::from_fn(|| node.poll_output())
                .all(|out| !matches!(out, Output::Close(c) if c == conns[0])),
            "the first connection still has a millisecond"
        );
        assert_eq!(node.poll_timeout(), Some(t0 + Duration::from_secs(11)));
        node.handle_timeout(t0 + Duration::from_secs(11));
        let closed: Vec<ConnId> = std::iter::from_fn(|| node.poll_output())
            .filter_map(|out| match out {
                Output::Close(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(closed, [conns[0]]);
        assert_eq!(node.stats().connections, 0);
    }

    #[test]
    fn a_recycled_buffer_carries_the_next_transmit() {
        let t0 = Instant::now();
        let mut node = Node::new(NodeConfig::new("edge.example"), 1, t0, 1_796_400_103_000);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let kept = Vec::with_capacity(4096);
        let address = kept.as_ptr();
        node.recycle(kept);
        // Too big to keep: dropped.
        node.recycle(Vec::with_capacity(SPARE_BUFFER_MAX + 1));
        node.accept(peer, t0);
        let greeting = std::iter::from_fn(|| node.poll_output())
            .find_map(|out| match out {
                Output::Transmit { data, .. } => Some(data),
                _ => None,
            })
            .expect("a greeting");
        assert!(greeting.starts_with(b"220 "));
        assert_eq!(
            greeting.as_ptr(),
            address,
            "the greeting is written into the given buffer"
        );
        assert!(node.spare_buffers.is_empty());
    }

    #[test]
    fn shadow_ids_are_lowercase_version_4_guids() {
        let t0 = Instant::now();
        let mut node = Node::new(NodeConfig::new("hub.example"), 9, t0, 0);
        let mut seen = BTreeSet::new();
        for _ in 0..1000 {
            let id = node.new_shadow_id();
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(
                id.bytes()
                    .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            );
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "RFC 4122 variant: {id}"
            );
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn a_configuration_a_node_cannot_run_with_names_the_setting() {
        assert_eq!(NodeConfig::new("edge.example").validate(), Ok(()));
        type Spoil = Box<dyn Fn(&mut NodeConfig)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("name", Box::new(|c| c.name = "two words".into())),
            ("server.max_line", Box::new(|c| c.server.max_line = 100)),
            (
                "server.max_pending_output",
                Box::new(|c| c.server.max_pending_output = 0),
            ),
            (
                "server.max_recipients",
                Box::new(|c| c.server.max_recipients = 0),
            ),
            (
                "shadow.heartbeat_interval",
                Box::new(|c| c.shadow.heartbeat_interval = Duration::ZERO),
            ),
            ("retry", Box::new(|c| c.retry.max = Duration::from_secs(1))),
            (
                "routes",
                Box::new(|c| {
                    c.routes.push(Route {
                        domains: vec!["a.test".into()],
                        next_hops: vec![],
                    })
                }),
            ),
        ];
        for (setting, spoil) in cases {
            let mut config = NodeConfig::new("edge.example");
            spoil(&mut config);
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }
}
