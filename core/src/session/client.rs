//! The sending side of one SMTP connection, [`ClientSession`], as a pure state machine.
//!
//! The session waits for the greeting, says EHLO (HELO when EHLO is refused with a 5xx),
//! negotiates `XSHADOW <context>` when it was configured with a shadow context and the peer
//! offers XSHADOW or XSHADOWREQUEST (PROTOCOL.md §2, §3, §7), then sends every queued
//! [`OutboundMessage`] in order: MAIL (with SIZE, BODY, SMTPUTF8 and `XSHADOW=<id>` as the
//! peer's keywords and the session allow), RCPT for each recipient, then DATA and the
//! dot-stuffed body, or `BDAT <len> LAST` and the raw body when the peer offers CHUNKING. With
//! PIPELINING, MAIL, every RCPT and DATA (or BDAT and the body) go out as one batch whose
//! replies are matched in order (RFC 2920). After [`ClientSession::finish`] it asks
//! `XQDISCARD <max>` when that was asked for and the session is shadowed (PROTOCOL.md §5),
//! then QUITs.
//!
//! Everything the session learns comes out of [`ClientSession::poll_event`] as a
//! [`ClientEvent`]: the peer's keywords, the shadow negotiation, one outcome per message
//! (accepted, failed or deferred), the discard ids, protocol breaches, and a last
//! [`ClientEvent::Closed`]. Every queued message gets exactly one outcome before `Closed`; a
//! message whose final reply was not received is never reported accepted.
//!
//! All transitions live in one function, `ClientSession::transition`, a match over the state
//! and the input (a reply, a malformed reply, the peer closing, a timer, or new work from the
//! caller); the replies inside a mail transaction are matched to their step, in order, by its
//! helper `transaction_reply`. Every other function only writes commands or events.
//!
//! Decisions this module makes (the server side must match them):
//! - RSET is sent, as its own round trip, before the next MAIL or XQDISCARD after any message
//!   that was not accepted once its MAIL was (RFC 5321 leaves the transaction open then).
//! - XSHADOW, XQDISCARD, RSET and QUIT are never pipelined; EHLO waits for the greeting.
//! - The next MAIL waits for the final reply of the previous message.
//! - A 421 reply to anything but QUIT ends the session at once, without QUIT.
//! - A protocol breach while commands and replies are still in step (a bad XSHADOW or
//!   XQDISCARD reply) ends with QUIT; a malformed or unexpected reply line closes at once.
//! - The caller's `XSHADOW=` and `SIZE=` parameters are replaced: `XSHADOW=` is sent only on
//!   a shadowed session, from [`OutboundMessage::shadow_id`]; `SIZE=` only when offered, with
//!   the body's length.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::mem;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use memchr::{memchr, memchr2_iter};

use super::{ApiError, Envelope, FIVE_MINUTES};
use crate::wire::body;
use crate::wire::command::{Command, write_mail, write_rcpt};
use crate::wire::ehlo::{EhloKeywords, EhloReply, SizeLimit};
use crate::wire::params::BodyType;
use crate::wire::path::{ForwardPath, Mailbox};
use crate::wire::reply::{DEFAULT_MAX_REPLY_LINES, ReplyError, ReplyReader, ShadowReplyError};
use crate::wire::{DEFAULT_MAX_LINE, EnhancedStatus, MAX_SHADOW_FIELD, Reply};

/// What the client is waiting for; a timeout or a closed connection names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientPhase {
    /// The 220 greeting.
    Greeting,
    /// The reply to EHLO.
    Ehlo,
    /// The reply to HELO (after EHLO was refused); timed with the EHLO timeout.
    Helo,
    /// The reply to `XSHADOW <context>`.
    XShadow,
    /// The reply to MAIL.
    Mail,
    /// The reply to a RCPT.
    Rcpt,
    /// The 354 reply to DATA.
    DataInit,
    /// The caller taking the message body from `poll_transmit` (RFC 5321 "data block").
    DataBlock,
    /// The final reply to the end of the message (after the DATA terminator or BDAT LAST).
    DataEnd,
    /// The reply to RSET.
    Rset,
    /// The reply to `XQDISCARD <max>`.
    XqDiscard,
    /// The reply to QUIT.
    Quit,
    /// Nothing: the session was waiting for the caller (more messages, `finish`,
    /// `discard_more`).
    Idle,
}

impl ClientPhase {
    /// A short lowercase name (`greeting`, `data-end`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::Helo => "helo",
            Self::XShadow => "xshadow",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::DataInit => "data-init",
            Self::DataBlock => "data-block",
            Self::DataEnd => "data-end",
            Self::Rset => "rset",
            Self::XqDiscard => "xqdiscard",
            Self::Quit => "quit",
            Self::Idle => "idle",
        }
    }
}

impl fmt::Display for ClientPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long the client waits in each phase (RFC 5321 §4.5.3.2 defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// Waiting for the greeting: 5 minutes.
    pub greeting: Duration,
    /// Waiting for the EHLO or HELO reply: 5 minutes.
    pub ehlo: Duration,
    /// Waiting for the XSHADOW reply: 5 minutes.
    pub xshadow: Duration,
    /// Waiting for the MAIL reply: 5 minutes.
    pub mail: Duration,
    /// Waiting for each RCPT reply: 5 minutes.
    pub rcpt: Duration,
    /// Waiting for the 354 reply to DATA: 2 minutes.
    pub data_init: Duration,
    /// Waiting for the caller to take the body from `poll_transmit`: 3 minutes.
    pub data_block: Duration,
    /// Waiting for the final reply after the body (DATA or BDAT LAST): 10 minutes.
    pub data_end: Duration,
    /// Waiting for the RSET reply: 5 minutes.
    pub rset: Duration,
    /// Waiting for the XQDISCARD reply: 5 minutes.
    pub xqdiscard: Duration,
    /// Waiting for the QUIT reply: 5 minutes.
    pub quit: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            greeting: FIVE_MINUTES,
            ehlo: FIVE_MINUTES,
            xshadow: FIVE_MINUTES,
            mail: FIVE_MINUTES,
            rcpt: FIVE_MINUTES,
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
            rset: FIVE_MINUTES,
            xqdiscard: FIVE_MINUTES,
            quit: FIVE_MINUTES,
        }
    }
}

impl ClientTimeouts {
    /// The same timeout for every phase (handy for tests on virtual time).
    pub const fn uniform(timeout: Duration) -> Self {
        Self {
            greeting: timeout,
            ehlo: timeout,
            xshadow: timeout,
            mail: timeout,
            rcpt: timeout,
            data_init: timeout,
            data_block: timeout,
            data_end: timeout,
            rset: timeout,
            xqdiscard: timeout,
            quit: timeout,
        }
    }

    /// The timeout of `phase`; `None` for [`ClientPhase::Idle`], which has no timer.
    pub fn get(&self, phase: ClientPhase) -> Option<Duration> {
        Some(match phase {
            ClientPhase::Greeting => self.greeting,
            ClientPhase::Ehlo | ClientPhase::Helo => self.ehlo,
            ClientPhase::XShadow => self.xshadow,
            ClientPhase::Mail => self.mail,
            ClientPhase::Rcpt => self.rcpt,
            ClientPhase::DataInit => self.data_init,
            ClientPhase::DataBlock => self.data_block,
            ClientPhase::DataEnd => self.data_end,
            ClientPhase::Rset => self.rset,
            ClientPhase::XqDiscard => self.xqdiscard,
            ClientPhase::Quit => self.quit,
            ClientPhase::Idle => return None,
        })
    }
}

/// How a [`ClientSession`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Our name, sent with EHLO / HELO: 1 to 255 bytes, no space or control character.
    pub hostname: String,
    /// `Some(context)` to shadow through the peer when it offers XSHADOW or XSHADOWREQUEST:
    /// 1 to 255 bytes, no space or control character.
    pub shadow_context: Option<String>,
    /// The `<max>` sent with XQDISCARD: 1 to 1000 (default 50).
    pub xqdiscard_max: u32,
    /// The longest reply line read and command line written, CRLF included (at least 512).
    pub max_line: usize,
    /// The timeout of each phase.
    pub timeouts: ClientTimeouts,
}

impl ClientConfig {
    /// A configuration with our EHLO name, no shadowing and the defaults for the rest.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            shadow_context: None,
            xqdiscard_max: 50,
            max_line: DEFAULT_MAX_LINE,
            timeouts: ClientTimeouts::default(),
        }
    }

    /// Checks every field; [`ClientSession::new`] refuses a configuration that fails this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_token(&self.hostname) {
            return Err(ConfigError::Hostname);
        }
        if self.shadow_context.as_deref().is_some_and(|c| !is_token(c)) {
            return Err(ConfigError::ShadowContext);
        }
        let max = usize::try_from(self.xqdiscard_max).unwrap_or(usize::MAX);
        if max == 0 || max > DEFAULT_MAX_REPLY_LINES {
            return Err(ConfigError::XqdiscardMax);
        }
        if self.max_line < 512 {
            return Err(ConfigError::MaxLine);
        }
        Ok(())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::new("localhost")
    }
}

/// True for 1 to 255 bytes without spaces or control characters: safe as a command argument.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_SHADOW_FIELD
        && !value.contains(|c: char| c.is_control() || c.is_whitespace())
}

/// A [`ClientConfig`] field that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The hostname is empty, over 255 bytes, or holds a space or control character.
    Hostname,
    /// The shadow context is empty, over 255 bytes, or holds a space or control character.
    ShadowContext,
    /// `xqdiscard_max` is 0 or over 1000.
    XqdiscardMax,
    /// `max_line` is below the RFC 5321 minimum of 512.
    MaxLine,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hostname => {
                "hostname must be 1 to 255 bytes without spaces or control characters"
            }
            Self::ShadowContext => {
                "shadow context must be 1 to 255 bytes without spaces or control characters"
            }
            Self::XqdiscardMax => "xqdiscard_max must be from 1 to 1000",
            Self::MaxLine => "max_line must be at least 512",
        })
    }
}

impl std::error::Error for ConfigError {}

/// One message to send over the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// The caller's handle, echoed in the message's outcome event.
    pub id: u64,
    /// Sender, recipients and parameters (SIZE and XSHADOW are set by the session); shared,
    /// so that a node hands its queued envelope over without copying it.
    pub envelope: Arc<Envelope>,
    /// The message, not dot-stuffed, normally ending in CRLF.
    pub body: Bytes,
    /// The `XSHADOW=` id to tag the message with when the session is shadowed.
    pub shadow_id: Option<Arc<str>>,
}

/// The ids of one XQDISCARD reply, oldest first, kept in one buffer: no allocation per id.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DiscardIdList {
    /// The ids one after the other.
    text: String,
    /// Where each id ends in `text`.
    ends: Vec<usize>,
}

impl DiscardIdList {
    /// An empty list.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id` at the end.
    pub fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len());
    }

    /// How many ids there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id at `index`, if there is one.
    #[must_use]
    pub fn get(&self, index: usize) -> Option<&str> {
        let end = *self.ends.get(index)?;
        let start = match index.checked_sub(1) {
            Some(before) => *self.ends.get(before)?,
            None => 0,
        };
        self.text.get(start..end)
    }

    /// The ids, oldest first.
    #[must_use]
    pub fn iter(&self) -> DiscardIdIter<'_> {
        DiscardIdIter {
            text: &self.text,
            ends: self.ends.iter(),
            start: 0,
        }
    }
}

/// The ids of a [`DiscardIdList`], oldest first.
#[derive(Debug, Clone)]
pub struct DiscardIdIter<'a> {
    text: &'a str,
    ends: std::slice::Iter<'a, usize>,
    start: usize,
}

impl<'a> Iterator for DiscardIdIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let end = *self.ends.next()?;
        let id = self.text.get(self.start..end).unwrap_or_default();
        self.start = end;
        Some(id)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
    }
}

impl ExactSizeIterator for DiscardIdIter<'_> {}

impl fmt::Debug for DiscardIdList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a DiscardIdList {
    type Item = &'a str;
    type IntoIter = DiscardIdIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<S: AsRef<str>> FromIterator<S> for DiscardIdList {
    fn from_iter<I: IntoIterator<Item = S>>(ids: I) -> Self {
        let mut list = Self::new();
        for id in ids {
            list.push(id.as_ref());
        }
        list
    }
}

/// A recipient the peer refused, with its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// Its position in the envelope's recipients.
    pub index: usize,
    /// The recipient.
    pub to: ForwardPath<'static>,
    /// The peer's reply to its RCPT.
    pub reply: Reply<'static>,
    /// True for a 5xx reply (do not retry), false for a 4xx one.
    pub permanent: bool,
}

/// How the peer broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// A reply line that could not be read (bad code, bare LF, too long...).
    MalformedReply(ReplyError),
    /// A bad reply to XSHADOW (empty or over-long database id) or XQDISCARD (no ids, an
    /// empty or over-long id, more ids than asked for, an unexpected code).
    ShadowReply(ShadowReplyError),
    /// A reply that makes no sense here: a 3xx to anything but DATA, a 2xx to DATA, or a
    /// reply when no command was outstanding.
    UnexpectedReply {
        /// What the client was waiting for ([`ClientPhase::Idle`]: nothing).
        phase: ClientPhase,
        /// The reply code.
        code: u16,
    },
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MalformedReply(e) => write!(f, "malformed reply: {e}"),
            Self::ShadowReply(e) => write!(f, "bad shadow reply: {e}"),
            Self::UnexpectedReply { phase, code } => {
                write!(f, "unexpected reply {code} in phase {phase}")
            }
        }
    }
}

/// Why a session ended before its work was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionFailure {
    /// A phase's timer expired.
    Timeout {
        /// The phase that timed out.
        phase: ClientPhase,
    },
    /// The peer closed the connection.
    ConnectionClosed {
        /// What the client was waiting for.
        phase: ClientPhase,
    },
    /// The peer said 421: it is closing the connection.
    ServiceClosing {
        /// The 421 reply.
        reply: Reply<'static>,
    },
    /// The greeting was not 2xx.
    GreetingRefused {
        /// The greeting.
        reply: Reply<'static>,
    },
    /// EHLO got a 4xx, or HELO (after EHLO got a 5xx) was refused.
    HelloRefused {
        /// The refusal.
        reply: Reply<'static>,
    },
    /// The peer broke the protocol (also reported by [`ClientEvent::ProtocolBreach`]).
    ProtocolBreach {
        /// What was wrong.
        breach: Breach,
    },
}

impl fmt::Display for SessionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { phase } => write!(f, "timed out in phase {phase}"),
            Self::ConnectionClosed { phase } => {
                write!(f, "connection closed by the peer in phase {phase}")
            }
            Self::ServiceClosing { reply } => write!(f, "peer closing: {}", reply.text()),
            Self::GreetingRefused { reply } => {
                write!(f, "greeting refused: {} {}", reply.code, reply.text())
            }
            Self::HelloRefused { reply } => {
                write!(f, "EHLO/HELO refused: {} {}", reply.code, reply.text())
            }
            Self::ProtocolBreach { breach } => write!(f, "protocol breach: {breach}"),
        }
    }
}

/// What the session tells its caller, in order, through [`ClientSession::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The peer answered EHLO (or HELO: `extended` false and no keywords).
    Capabilities {
        /// The peer's name from the first reply line (may be empty).
        domain: String,
        /// The service extensions it offers.
        keywords: EhloKeywords<'static>,
        /// True after EHLO, false after the HELO fallback.
        extended: bool,
    },
    /// The peer accepted `XSHADOW <context>`: messages sent with a shadow id are now shadowed.
    ShadowAccepted {
        /// The primary's database id (compare with the last one seen for this primary).
        database_id: String,
    },
    /// The peer refused XSHADOW: the session carries on without shadowing.
    ShadowRefused {
        /// The refusal.
        reply: Reply<'static>,
    },
    /// We wanted to shadow but the peer offers neither XSHADOW nor XSHADOWREQUEST.
    ShadowNotOffered,
    /// The peer took responsibility for the message (2xx to its end of data).
    MessageAccepted {
        /// The message's handle.
        id: u64,
        /// True when it was sent with `XSHADOW=` on a shadowed session: keep the shadow copy.
        shadowed: bool,
        /// The shadow id it was sent with (`Some` exactly when `shadowed`).
        shadow_id: Option<Arc<str>>,
        /// The final reply.
        reply: Reply<'static>,
        /// The recipients the peer refused (the others were accepted).
        recipients: Vec<RecipientOutcome>,
    },
    /// The message was refused: MAIL, every RCPT, DATA or its end was refused, or it could
    /// not be sent to this peer at all (`local`).
    MessageFailed {
        /// The message's handle.
        id: u64,
        /// The refusal (made up locally when `local`).
        reply: Reply<'static>,
        /// True when retrying cannot help (5xx); recipients listed have their own verdict.
        permanent: bool,
        /// True when the message was never sent: the reply was made by this session.
        local: bool,
        /// The recipients the peer refused with their own reply; the others share `reply`.
        recipients: Vec<RecipientOutcome>,
    },
    /// The session ended before the message's final reply: it was not delivered; retry it.
    MessageDeferred {
        /// The message's handle.
        id: u64,
        /// Why the session ended.
        failure: SessionFailure,
        /// Recipients already refused in this attempt.
        recipients: Vec<RecipientOutcome>,
    },
    /// The reply to XQDISCARD: ids of messages the primary passed on (their shadow copies
    /// can go), oldest first.
    DiscardIds {
        /// The discard ids (possibly none).
        ids: DiscardIdList,
        /// True when as many ids came as were asked for: answer with `discard_more`.
        more_possible: bool,
    },
    /// The peer refused XQDISCARD (4xx/5xx): a failed heartbeat, not a breach.
    DiscardRefused {
        /// The refusal.
        reply: Reply<'static>,
    },
    /// The peer broke the protocol; the primary must be treated as failed (PROTOCOL.md §5).
    ProtocolBreach {
        /// What was wrong.
        breach: Breach,
    },
    /// The session is over (always the last event); the caller closes the connection.
    Closed {
        /// `None` when it ended normally (QUIT answered, or closed after QUIT).
        failure: Option<SessionFailure>,
    },
}

/// One step of a mail transaction whose reply is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Mail,
    Rcpt(usize),
    Data,
    /// The end of the DATA body (the terminator).
    Body,
    /// `BDAT <len> LAST` with the body.
    Bdat,
}

impl Step {
    fn phase(self) -> ClientPhase {
        match self {
            Self::Mail => ClientPhase::Mail,
            Self::Rcpt(_) => ClientPhase::Rcpt,
            Self::Data => ClientPhase::DataInit,
            Self::Body | Self::Bdat => ClientPhase::DataEnd,
        }
    }
}

/// The message being sent and what its replies said so far.
#[derive(Debug)]
struct Transaction {
    msg: OutboundMessage,
    /// Sent with `XSHADOW=`.
    shadowed: bool,
    pipelined: bool,
    chunking: bool,
    /// The MAIL and RCPT command lines, CRLFs included.
    lines: Vec<u8>,
    /// `ends[0]`: end of MAIL in `lines`; `ends[i + 1]`: end of RCPT `i`.
    ends: Vec<usize>,
    /// Replies still to come, in order.
    awaiting: VecDeque<Step>,
    mail_ok: bool,
    accepted: usize,
    refused: Vec<RecipientOutcome>,
    /// The outcome event was emitted.
    done: bool,
    /// The outcome was MessageAccepted.
    succeeded: bool,
}

/// Where the session is.
#[derive(Debug)]
enum State {
    Greeting,
    Ehlo,
    Helo,
    XShadow,
    /// Nothing outstanding: waiting for the caller.
    Ready,
    Rset,
    Mail(Box<Transaction>),
    XqDiscard,
    /// Waiting for `discard_more`.
    DiscardMore,
    Quit,
    Closed,
}

impl State {
    fn phase(&self) -> Option<ClientPhase> {
        Some(match self {
            Self::Greeting => ClientPhase::Greeting,
            Self::Ehlo => ClientPhase::Ehlo,
            Self::Helo => ClientPhase::Helo,
            Self::XShadow => ClientPhase::XShadow,
            Self::Rset => ClientPhase::Rset,
            Self::Mail(t) => return t.awaiting.front().map(|s| s.phase()),
            Self::XqDiscard => ClientPhase::XqDiscard,
            Self::Quit => ClientPhase::Quit,
            Self::Ready | Self::DiscardMore | Self::Closed => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Greeting => "waiting for the greeting",
            Self::Ehlo | Self::Helo => "saying hello",
            Self::XShadow => "negotiating XSHADOW",
            Self::Ready => "idle",
            Self::Rset => "resetting",
            Self::Mail(_) => "sending a message",
            Self::XqDiscard => "querying discard events",
            Self::DiscardMore => "waiting for discard_more",
            Self::Quit => "quitting",
            Self::Closed => "closed",
        }
    }
}

/// Something that moves the machine. A reply borrows the received bytes; it is copied only
/// where an event or a failure keeps it.
#[derive(Debug)]
enum Input<'r> {
    Reply(Reply<'r>),
    BadReply(ReplyError),
    /// A reply that came while the command it would answer was still waiting in our output,
    /// never sent: the peer answered ahead, and whatever it "accepted" it never received.
    ReplyAhead(u16),
    PeerClosed,
    Timeout(ClientPhase),
    /// The caller queued a message or called `finish`.
    Work,
    DiscardMore(bool),
}

/// The class of a reply code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Positive,
    Intermediate,
    Transient,
    Permanent,
}

fn class(reply: &Reply<'_>) -> Class {
    match reply.code {
        200..=299 => Class::Positive,
        300..=399 => Class::Intermediate,
        400..=499 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// The sending side of one SMTP connection: messages in, commands out, outcomes as events.
///
/// Drive it by the crate's drain rule: after `new` and after every `handle_*`,
/// `queue_message`, `finish` or `discard_more` call, drain `poll_transmit` and `poll_event`
/// until they return `None`, then wait for input or `poll_timeout()`. Once `is_closed()`
/// (after [`ClientEvent::Closed`]), send what `poll_transmit` still gives and close.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    reader: ReplyReader,
    /// Received bytes not yet read as a whole reply (at most one partial reply).
    inbuf: Vec<u8>,
    /// Bytes to transmit.
    out: Vec<u8>,
    /// Bytes handed out by `poll_transmit` so far.
    drained: u64,
    /// Value of `drained` once the last body written has been handed out.
    body_end: u64,
    /// The data-block deadline while a body waits in `out`.
    body_block: Option<Instant>,
    /// The reply deadline of the current phase.
    deadline: Option<(Instant, ClientPhase)>,
    events: VecDeque<ClientEvent>,
    queue: VecDeque<OutboundMessage>,
    /// `Some(query_discards)` once `finish` was called.
    finishing: Option<bool>,
    keywords: Option<EhloKeywords<'static>>,
    database_id: Option<String>,
    rset_pending: bool,
    /// The last finished transaction, its body let go, kept with its buffers so that the
    /// next message allocates neither the box nor the buffers.
    spare: Option<Box<Transaction>>,
    /// Why the session is quitting early, reported with `Closed`.
    failure: Option<SessionFailure>,
}

impl ClientSession {
    /// A session on a freshly opened connection, waiting for the peer's greeting.
    pub fn new(config: ClientConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let reader = ReplyReader::with_limits(config.max_line, DEFAULT_MAX_REPLY_LINES);
        let mut session = Self {
            config,
            state: State::Greeting,
            reader,
            inbuf: Vec::new(),
            out: Vec::new(),
            drained: 0,
            body_end: 0,
            body_block: None,
            deadline: None,
            events: VecDeque::new(),
            queue: VecDeque::new(),
            finishing: None,
            keywords: None,
            database_id: None,
            rset_pending: false,
            spare: None,
            failure: None,
        };
        session.rearm(None, false, now);
        Ok(session)
    }

    /// Queues a message; messages are sent in the order queued. Refused once `finish` was
    /// called or the session is ending.
    pub fn queue_message(&mut self, msg: OutboundMessage, now: Instant) -> Result<(), ApiError> {
        self.check_open("queue_message")?;
        self.queue.push_back(msg);
        self.step(Input::Work, now);
        Ok(())
    }

    /// Says no more messages will come: after the last one, `XQDISCARD <max>` when
    /// `query_discards` and the session is shadowed, then QUIT. A session with no messages
    /// and `finish(true)` is a heartbeat.
    pub fn finish(&mut self, query_discards: bool, now: Instant) -> Result<(), ApiError> {
        self.check_open("finish")?;
        self.finishing = Some(query_discards);
        self.step(Input::Work, now);
        Ok(())
    }

    /// Answers [`ClientEvent::DiscardIds`] with `more_possible`: `true` asks XQDISCARD again
    /// (we still hold shadow copies for this peer), `false` QUITs.
    pub fn discard_more(&mut self, more: bool, now: Instant) -> Result<(), ApiError> {
        if !matches!(self.state, State::DiscardMore) {
            return Err(ApiError {
                call: "discard_more",
                state: self.state.name(),
            });
        }
        self.step(Input::DiscardMore(more), now);
        Ok(())
    }

    /// Feeds bytes received from the peer.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if matches!(self.state, State::Closed) {
            return;
        }
        if self.inbuf.is_empty() {
            // The usual case: whole replies read straight from `bytes`, only a partial one kept.
            let used = self.read_replies(bytes, now);
            if !matches!(self.state, State::Closed) {
                self.inbuf
                    .extend_from_slice(bytes.get(used..).unwrap_or_default());
            }
            return;
        }
        let mut inbuf = mem::take(&mut self.inbuf);
        inbuf.extend_from_slice(bytes);
        let used = self.read_replies(&inbuf, now);
        if !matches!(self.state, State::Closed) {
            // Keep the allocation for the rest of the partial reply.
            inbuf.drain(..used.min(inbuf.len()));
            self.inbuf = inbuf;
        }
    }

    /// Reads and handles every whole reply at the start of `buf`; returns the bytes used.
    fn read_replies(&mut self, buf: &[u8], now: Instant) -> usize {
        let mut pos = 0;
        while !matches!(self.state, State::Closed) {
            match self.reader.read(buf.get(pos..).unwrap_or_default()) {
                Ok(Some((reply, used))) => {
                    pos += used;
                    // Only a 421 may come unasked; any other reply while our output has not
                    // been taken by `poll_transmit` answers something the peer cannot have
                    // seen. Taking it for an acceptance could lose a message.
                    if !self.out.is_empty() && reply.code != 421 {
                        self.step(Input::ReplyAhead(reply.code), now);
                        break;
                    }
                    self.step(Input::Reply(reply), now);
                }
                Ok(None) => break,
                Err(error) => {
                    self.step(Input::BadReply(error), now);
                    break;
                }
            }
        }
        pos
    }

    /// The peer closed the connection (or it broke).
    pub fn handle_close(&mut self, now: Instant) {
        self.step(Input::PeerClosed, now);
    }

    /// Expires the timer due at `now`, if any; early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.body_block
            && now >= at
        {
            self.body_block = None;
            self.step(Input::Timeout(ClientPhase::DataBlock), now);
            return;
        }
        if let Some((at, phase)) = self.deadline
            && now >= at
        {
            self.step(Input::Timeout(phase), now);
        }
    }

    /// When to call `handle_timeout` next; `None` while waiting only for the caller.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reply = self.deadline.map(|(at, _)| at);
        match (reply, self.body_block) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Appends the bytes to send to `out` and returns how many; `None` when nothing is
    /// pending. Something is pending after a state change that wrote a command or a body.
    #[must_use]
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> Option<usize> {
        if self.out.is_empty() {
            return None;
        }
        let n = self.out.len();
        if out.is_empty() {
            mem::swap(out, &mut self.out);
        } else {
            out.extend_from_slice(&self.out);
            self.out.clear();
        }
        self.drained = self.drained.saturating_add(n as u64);
        if self.drained >= self.body_end {
            self.body_block = None;
        }
        Some(n)
    }

    /// The next event; `None` when there is none until the next state change.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// True while [`ClientSession::queue_message`] would take another message (not finished,
    /// not ending or closed).
    #[must_use]
    pub fn accepts_messages(&self) -> bool {
        self.check_open("accepts_messages").is_ok()
    }

    /// True once the session is over: close the connection after the last `poll_transmit`.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True once the peer accepted XSHADOW in this session.
    pub fn is_shadowed(&self) -> bool {
        self.database_id.is_some()
    }

    /// The primary's database id, once XSHADOW was accepted.
    pub fn database_id(&self) -> Option<&str> {
        self.database_id.as_deref()
    }

    /// The peer's keywords, once it answered EHLO or HELO.
    pub fn peer_keywords(&self) -> Option<&EhloKeywords<'static>> {
        self.keywords.as_ref()
    }

    fn check_open(&self, call: &'static str) -> Result<(), ApiError> {
        let state = match self.state {
            State::Closed | State::Quit => self.state.name(),
            _ if self.finishing.is_some() => "finished",
            _ => return Ok(()),
        };
        Err(ApiError { call, state })
    }

    /// Runs one transition and re-arms the reply timer when the awaited reply changed.
    fn step(&mut self, input: Input<'_>, now: Instant) {
        let before = self.state.phase();
        let was_reply = matches!(input, Input::Reply(_));
        let state = mem::replace(&mut self.state, State::Closed);
        self.state = self.transition(state, input, now);
        self.rearm(before, was_reply, now);
    }

    fn rearm(&mut self, before: Option<ClientPhase>, was_reply: bool, now: Instant) {
        let Some(phase) = self.state.phase() else {
            self.deadline = None;
            return;
        };
        if was_reply || before != Some(phase) || self.deadline.is_none() {
            self.deadline = self
                .config
                .timeouts
                .get(phase)
                .and_then(|d| now.checked_add(d))
                .map(|at| (at, phase));
        }
    }

    /// Every transition of the session: the state it goes to from `state` on `input`.
    fn transition(&mut self, state: State, input: Input<'_>, now: Instant) -> State {
        match (state, input) {
            (State::Closed, _) => State::Closed,

            // QUIT is out: whatever comes ends the session.
            (State::Quit, Input::Reply(_) | Input::PeerClosed) => {
                let failure = self.failure.take();
                self.close(failure)
            }
            (State::Quit, Input::Timeout(phase)) => {
                let failure = self
                    .failure
                    .take()
                    .or(Some(SessionFailure::Timeout { phase }));
                self.close(failure)
            }
            (State::Quit, Input::BadReply(error)) => {
                let breach = Breach::MalformedReply(error);
                self.emit(ClientEvent::ProtocolBreach { breach });
                let failure = self
                    .failure
                    .take()
                    .or(Some(SessionFailure::ProtocolBreach { breach }));
                self.close(failure)
            }
            (State::Quit, Input::Work | Input::DiscardMore(_)) => State::Quit,

            // Failures that end any other state at once.
            (state, Input::BadReply(error)) => self.breach(state, Breach::MalformedReply(error)),
            (state, Input::ReplyAhead(code)) => self.unexpected(state, code),
            (state, Input::PeerClosed) => {
                let phase = state.phase().unwrap_or(ClientPhase::Idle);
                self.abort(state, SessionFailure::ConnectionClosed { phase })
            }
            (state, Input::Timeout(phase)) => self.abort(state, SessionFailure::Timeout { phase }),
            (state, Input::Reply(reply)) if reply.code == 421 => {
                let reply = reply.into_owned();
                self.abort(state, SessionFailure::ServiceClosing { reply })
            }

            // Greeting and hello.
            (State::Greeting, Input::Reply(reply)) => match class(&reply) {
                Class::Positive => {
                    Command::Ehlo {
                        domain: Cow::Borrowed(self.config.hostname.as_str()),
                    }
                    .write_to(&mut self.out);
                    State::Ehlo
                }
                Class::Intermediate => self.unexpected(State::Greeting, reply.code),
                Class::Transient | Class::Permanent => {
                    let reply = reply.into_owned();
                    self.quit(State::Greeting, SessionFailure::GreetingRefused { reply })
                }
            },
            (State::Ehlo, Input::Reply(reply)) => match class(&reply) {
                Class::Positive => self.hello_done(&reply, true, now),
                Class::Permanent => {
                    Command::Helo {
                        domain: Cow::Borrowed(self.config.hostname.as_str()),
                    }
                    .write_to(&mut self.out);
                    State::Helo
                }
                Class::Transient => {
                    let reply = reply.into_owned();
                    self.quit(State::Ehlo, SessionFailure::HelloRefused { reply })
                }
                Class::Intermediate => self.unexpected(State::Ehlo, reply.code),
            },
            (State::Helo, Input::Reply(reply)) => match class(&reply) {
                Class::Positive => self.hello_done(&reply, false, now),
                Class::Transient | Class::Permanent => {
                    let reply = reply.into_owned();
                    self.quit(State::Helo, SessionFailure::HelloRefused { reply })
                }
                Class::Intermediate => self.unexpected(State::Helo, reply.code),
            },

            // XSHADOW <context> (PROTOCOL.md §3).
            (State::XShadow, Input::Reply(reply)) => {
                match reply.xshadow_database_id().map(|id| id.map(str::to_owned)) {
                    Ok(Some(database_id)) => {
                        self.database_id = Some(database_id.clone());
                        self.emit(ClientEvent::ShadowAccepted { database_id });
                        self.proceed(now)
                    }
                    Ok(None) => {
                        let reply = reply.into_owned();
                        self.emit(ClientEvent::ShadowRefused { reply });
                        self.proceed(now)
                    }
                    Err(error) => {
                        let breach = Breach::ShadowReply(error);
                        self.emit(ClientEvent::ProtocolBreach { breach });
                        self.quit(State::XShadow, SessionFailure::ProtocolBreach { breach })
                    }
                }
            }

            // Between messages.
            (State::Ready, Input::Work) => self.proceed(now),
            (State::Rset, Input::Reply(reply)) => match class(&reply) {
                Class::Intermediate => self.unexpected(State::Rset, reply.code),
                _ => {
                    self.rset_pending = false;
                    self.proceed(now)
                }
            },
            (State::Mail(t), Input::Reply(reply)) => self.transaction_reply(t, reply, now),

            // XQDISCARD <max> (PROTOCOL.md §5).
            (State::XqDiscard, Input::Reply(reply)) => {
                let max = self.config.xqdiscard_max;
                let ids = reply
                    .xqdiscard_ids(max)
                    .map(|ids| ids.iter().collect::<DiscardIdList>());
                match ids {
                    Ok(ids) => {
                        let more_possible =
                            u32::try_from(ids.len()).is_ok_and(|n| n == max) && max > 0;
                        self.emit(ClientEvent::DiscardIds { ids, more_possible });
                        if more_possible {
                            State::DiscardMore
                        } else {
                            self.send_quit()
                        }
                    }
                    Err(error) if !error.is_breach() => {
                        let reply = reply.into_owned();
                        self.emit(ClientEvent::DiscardRefused { reply });
                        self.send_quit()
                    }
                    Err(error) => {
                        let breach = Breach::ShadowReply(error);
                        self.emit(ClientEvent::ProtocolBreach { breach });
                        self.quit(State::XqDiscard, SessionFailure::ProtocolBreach { breach })
                    }
                }
            }
            (State::DiscardMore, Input::DiscardMore(true)) => {
                Command::XqDiscard {
                    max: self.config.xqdiscard_max,
                }
                .write_to(&mut self.out);
                State::XqDiscard
            }
            (State::DiscardMore, Input::DiscardMore(false)) => self.send_quit(),

            // A reply with no command outstanding.
            (state @ (State::Ready | State::DiscardMore), Input::Reply(reply)) => {
                self.unexpected(state, reply.code)
            }

            // New work while busy: picked up when the current round trip ends.
            (state, Input::Work | Input::DiscardMore(_)) => state,
        }
    }

    /// A reply to one step of the mail transaction.
    fn transaction_reply(
        &mut self,
        mut t: Box<Transaction>,
        reply: Reply<'_>,
        now: Instant,
    ) -> State {
        let Some(step) = t.awaiting.pop_front() else {
            return self.unexpected(State::Mail(t), reply.code);
        };
        let class = class(&reply);
        let unexpected = match step {
            Step::Data => class == Class::Positive,
            _ => class == Class::Intermediate,
        };
        if unexpected {
            let breach = Breach::UnexpectedReply {
                phase: step.phase(),
                code: reply.code,
            };
            return self.breach(State::Mail(t), breach);
        }
        match step {
            Step::Mail => {
                if class == Class::Positive {
                    t.mail_ok = true;
                    if !t.pipelined {
                        self.write_rcpt(&mut t, 0);
                    }
                } else {
                    self.report_failed(&mut t, reply);
                }
            }
            Step::Rcpt(i) => {
                if class == Class::Positive {
                    t.accepted += 1;
                } else if t.mail_ok {
                    let to = t
                        .msg
                        .envelope
                        .recipients
                        .get(i)
                        .map_or(ForwardPath::Postmaster, |r| r.to.clone());
                    t.refused.push(RecipientOutcome {
                        index: i,
                        to,
                        permanent: class == Class::Permanent,
                        reply: reply.clone().into_owned(),
                    });
                }
                if t.mail_ok && !t.done {
                    if i + 1 < t.msg.envelope.recipients.len() {
                        if !t.pipelined {
                            self.write_rcpt(&mut t, i + 1);
                        }
                    } else if t.accepted == 0 {
                        self.report_failed(&mut t, reply);
                    } else if !t.pipelined {
                        self.write_data(&mut t, now);
                    }
                }
            }
            Step::Data => {
                if class == Class::Intermediate {
                    if t.done || t.accepted == 0 {
                        // 354 with nothing to deliver: end the empty message (RFC 2920 §3.1).
                        self.out.extend_from_slice(b".\r\n");
                    } else {
                        body::stuff(&t.msg.body, &mut self.out);
                        self.mark_body(now);
                    }
                    t.awaiting.push_back(Step::Body);
                } else if !t.done {
                    self.report_failed(&mut t, reply);
                }
            }
            Step::Body | Step::Bdat => {
                if class == Class::Positive {
                    if !t.done {
                        self.report_accepted(&mut t, reply);
                    }
                } else if !t.done {
                    self.report_failed(&mut t, reply);
                }
            }
        }
        if !t.awaiting.is_empty() {
            return State::Mail(t);
        }
        if !t.done {
            let reply = Reply::new(
                451,
                Some(EnhancedStatus::new(4, 5, 0)),
                "Transaction ended without a final reply",
            );
            self.emit(ClientEvent::MessageFailed {
                id: t.msg.id,
                reply,
                permanent: false,
                local: true,
                recipients: mem::take(&mut t.refused),
            });
        }
        self.body_block = None;
        self.rset_pending = t.mail_ok && !t.succeeded;
        // The body goes now (an empty `Bytes` does not allocate); the envelope, shared
        // with the caller and small, goes when the next message takes the box.
        t.msg.body = Bytes::new();
        t.msg.shadow_id = None;
        self.spare = Some(t);
        self.proceed(now)
    }

    /// After EHLO or HELO: records the keywords, then XSHADOW or the first message.
    fn hello_done(&mut self, reply: &Reply<'_>, extended: bool, now: Instant) -> State {
        let (domain, keywords) = if extended {
            match EhloReply::from_reply(reply) {
                Ok(ehlo) => (ehlo.domain.into_owned(), ehlo.keywords.into_owned()),
                Err(_) => {
                    // No domain on the first line: keep the keywords anyway.
                    let mut keywords = EhloKeywords::default();
                    for line in reply.lines.iter().skip(1) {
                        keywords.add_line(Cow::Owned(line.to_string()));
                    }
                    (String::new(), keywords)
                }
            }
        } else {
            let text = reply.text();
            let domain = text.split_once(' ').map_or(text, |(d, _)| d);
            (domain.to_owned(), EhloKeywords::default())
        };
        let accepts_xshadow = keywords.accepts_xshadow();
        self.keywords = Some(keywords.clone());
        self.emit(ClientEvent::Capabilities {
            domain,
            keywords,
            extended,
        });
        if let Some(context) = &self.config.shadow_context {
            if accepts_xshadow {
                Command::XShadow {
                    context: Cow::Borrowed(context.as_str()),
                }
                .write_to(&mut self.out);
                return State::XShadow;
            }
            self.emit(ClientEvent::ShadowNotOffered);
        }
        self.proceed(now)
    }

    /// With nothing outstanding: RSET, the next message, XQDISCARD, QUIT, or wait.
    fn proceed(&mut self, now: Instant) -> State {
        while let Some(msg) = self.queue.pop_front() {
            if self.rset_pending {
                self.queue.push_front(msg);
                return self.send_rset();
            }
            match self.prepare(msg) {
                Ok(t) => return self.start(t, now),
                Err((id, reply)) => self.emit(ClientEvent::MessageFailed {
                    id,
                    permanent: reply.is_permanent(),
                    reply,
                    local: true,
                    recipients: Vec::new(),
                }),
            }
        }
        match self.finishing {
            None => State::Ready,
            Some(true) if self.database_id.is_some() => {
                if self.rset_pending {
                    return self.send_rset();
                }
                Command::XqDiscard {
                    max: self.config.xqdiscard_max,
                }
                .write_to(&mut self.out);
                State::XqDiscard
            }
            Some(_) => self.send_quit(),
        }
    }

    /// Builds the MAIL and RCPT lines for the peer, or the local refusal of a message that
    /// cannot be sent to it.
    fn prepare(&mut self, msg: OutboundMessage) -> Result<Box<Transaction>, (u64, Reply<'static>)> {
        let id = msg.id;
        let fail = |code: u16, status: (u8, u16, u16), text: &'static str| {
            let enhanced = EnhancedStatus::new(status.0, status.1, status.2);
            Err((id, Reply::new(code, Some(enhanced), text)))
        };
        let empty = EhloKeywords::default();
        let kw = self.keywords.as_ref().unwrap_or(&empty);
        let envelope = &msg.envelope;
        if envelope.recipients.is_empty() {
            return fail(554, (5, 5, 1), "No valid recipients");
        }
        let len = msg.body.len() as u64;
        if let Some(limit) = kw.size.and_then(SizeLimit::limit)
            && len > limit
        {
            return fail(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            );
        }
        // Borrowed from the message: the lines are written here and the values not kept.
        let mut params = envelope.params.reborrow();
        params.size = kw.size.map(|_| len);
        let needs_utf8 = envelope.from.mailbox().is_some_and(Mailbox::needs_smtputf8)
            || envelope
                .recipients
                .iter()
                .any(|r| matches!(&r.to, ForwardPath::Mailbox(m) if m.needs_smtputf8()));
        if needs_utf8 {
            if !kw.smtputf8 {
                return fail(
                    553,
                    (5, 6, 7),
                    "Non-ASCII address needs SMTPUTF8, which the peer does not offer",
                );
            }
            params.smtputf8 = true;
        }
        let (binary, eight_bit) = body_kind(&msg.body);
        let can_binary = kw.binary_mime && kw.chunking;
        if binary && can_binary {
            params.body = Some(BodyType::BinaryMime);
        } else if eight_bit && kw.eight_bit_mime && params.body != Some(BodyType::BinaryMime) {
            params.body = Some(BodyType::EightBitMime);
        }
        if params.body == Some(BodyType::BinaryMime) && !can_binary {
            return fail(
                554,
                (5, 6, 3),
                "BINARYMIME needs BINARYMIME and CHUNKING, which the peer does not offer",
            );
        }
        params.xshadow = None;
        if self.database_id.is_some()
            && let Some(shadow_id) = &msg.shadow_id
        {
            if shadow_id.is_empty() || shadow_id.len() > MAX_SHADOW_FIELD {
                return Err((id, Reply::invalid_arguments()));
            }
            params.xshadow = Some(Cow::Borrowed(&**shadow_id));
        }
        let shadowed = params.xshadow.is_some();
        let mut spare = self.spare.take();
        let (mut lines, mut ends, mut awaiting) = match spare.as_mut() {
            Some(t) => (
                mem::take(&mut t.lines),
                mem::take(&mut t.ends),
                mem::take(&mut t.awaiting),
            ),
            None => Default::default(),
        };
        lines.clear();
        lines.reserve(64 * (1 + envelope.recipients.len()));
        ends.clear();
        awaiting.clear();
        ends.reserve(1 + envelope.recipients.len());
        write_mail(&mut lines, &envelope.from, &params);
        drop(params);
        lines.extend_from_slice(b"\r\n");
        self.check_line(&lines, 0).map_err(|reply| (id, reply))?;
        ends.push(lines.len());
        for recipient in &envelope.recipients {
            let start = lines.len();
            write_rcpt(&mut lines, &recipient.to, &recipient.params);
            lines.extend_from_slice(b"\r\n");
            self.check_line(&lines, start)
                .map_err(|reply| (id, reply))?;
            ends.push(lines.len());
        }
        let t = Transaction {
            msg,
            shadowed,
            pipelined: kw.pipelining,
            chunking: kw.chunking,
            lines,
            ends,
            awaiting,
            mail_ok: false,
            accepted: 0,
            refused: Vec::new(),
            done: false,
            succeeded: false,
        };
        Ok(match spare {
            Some(mut boxed) => {
                *boxed = t;
                boxed
            }
            None => Box::new(t),
        })
    }

    /// Refuses a command line (from `start` to the end of `lines`) that is too long or holds
    /// a CR or LF before its final CRLF: it is never written.
    fn check_line(&self, lines: &[u8], start: usize) -> Result<(), Reply<'static>> {
        let line = lines.get(start..).unwrap_or_default();
        if line.len() > self.config.max_line {
            return Err(Reply::line_too_long());
        }
        let inner = line.strip_suffix(b"\r\n").unwrap_or(line);
        if memchr2_iter(b'\r', b'\n', inner).next().is_some() {
            return Err(Reply::invalid_arguments());
        }
        Ok(())
    }

    /// Writes the start of a transaction: MAIL alone, or the whole batch when pipelining.
    fn start(&mut self, mut t: Box<Transaction>, now: Instant) -> State {
        t.awaiting.push_back(Step::Mail);
        if t.pipelined {
            // The lines, DATA or BDAT, and with BDAT the body: one allocation.
            let body = if t.chunking { t.msg.body.len() } else { 0 };
            self.out.reserve(t.lines.len() + body + 32);
            self.out.extend_from_slice(&t.lines);
            let n = t.msg.envelope.recipients.len();
            t.awaiting.extend((0..n).map(Step::Rcpt));
            self.write_data(&mut t, now);
        } else {
            let mail_end = t.ends.first().copied().unwrap_or(0);
            self.out
                .extend_from_slice(t.lines.get(..mail_end).unwrap_or_default());
        }
        State::Mail(t)
    }

    /// Writes RCPT `i` (without pipelining) and awaits its reply.
    fn write_rcpt(&mut self, t: &mut Transaction, i: usize) {
        let start = t.ends.get(i).copied().unwrap_or(0);
        let end = t.ends.get(i + 1).copied().unwrap_or(start);
        self.out
            .extend_from_slice(t.lines.get(start..end).unwrap_or_default());
        t.awaiting.push_back(Step::Rcpt(i));
    }

    /// Writes DATA, or BDAT with the whole body, and awaits its reply.
    fn write_data(&mut self, t: &mut Transaction, now: Instant) {
        if t.chunking {
            self.out.reserve(t.msg.body.len() + 32);
            Command::Bdat {
                size: t.msg.body.len() as u64,
                last: true,
            }
            .write_to(&mut self.out);
            self.out.extend_from_slice(&t.msg.body);
            self.mark_body(now);
            t.awaiting.push_back(Step::Bdat);
        } else {
            Command::Data.write_to(&mut self.out);
            t.awaiting.push_back(Step::Data);
        }
    }

    /// A body was just written: the caller must take it within the data-block timeout.
    fn mark_body(&mut self, now: Instant) {
        self.body_end = self.drained.saturating_add(self.out.len() as u64);
        self.body_block = now.checked_add(self.config.timeouts.data_block);
    }

    fn report_accepted(&mut self, t: &mut Transaction, reply: Reply<'_>) {
        t.done = true;
        t.succeeded = true;
        // The transaction is over: its shadow id moves into the event.
        let shadow_id = if t.shadowed {
            t.msg.shadow_id.take()
        } else {
            None
        };
        self.emit(ClientEvent::MessageAccepted {
            id: t.msg.id,
            shadowed: t.shadowed,
            shadow_id,
            reply: reply.into_owned(),
            recipients: mem::take(&mut t.refused),
        });
    }

    /// Reports the message refused by `reply`; when every recipient was refused, it is
    /// permanent only if every refusal was.
    fn report_failed(&mut self, t: &mut Transaction, reply: Reply<'_>) {
        t.done = true;
        let recipients = mem::take(&mut t.refused);
        let all_refused = t.mail_ok && t.accepted == 0 && !recipients.is_empty();
        let permanent = if all_refused {
            recipients.iter().all(|r| r.permanent)
        } else {
            reply.is_permanent()
        };
        self.emit(ClientEvent::MessageFailed {
            id: t.msg.id,
            reply: reply.into_owned(),
            permanent,
            local: false,
            recipients,
        });
    }

    fn send_rset(&mut self) -> State {
        Command::Rset.write_to(&mut self.out);
        State::Rset
    }

    fn send_quit(&mut self) -> State {
        Command::Quit.write_to(&mut self.out);
        State::Quit
    }

    /// Ends the session in step with the peer: defers what is left, sends QUIT.
    fn quit(&mut self, state: State, failure: SessionFailure) -> State {
        self.defer_all(state, &failure);
        self.failure = Some(failure);
        self.send_quit()
    }

    /// Ends the session at once: defers what is left, drops unsent output, closes.
    fn abort(&mut self, state: State, failure: SessionFailure) -> State {
        self.defer_all(state, &failure);
        self.out.clear();
        self.close(Some(failure))
    }

    fn breach(&mut self, state: State, breach: Breach) -> State {
        self.emit(ClientEvent::ProtocolBreach { breach });
        self.abort(state, SessionFailure::ProtocolBreach { breach })
    }

    fn unexpected(&mut self, state: State, code: u16) -> State {
        let phase = state.phase().unwrap_or(ClientPhase::Idle);
        self.breach(state, Breach::UnexpectedReply { phase, code })
    }

    fn close(&mut self, failure: Option<SessionFailure>) -> State {
        self.body_block = None;
        self.emit(ClientEvent::Closed { failure });
        State::Closed
    }

    /// Reports every unfinished message (the one in flight, then the queue) as deferred.
    fn defer_all(&mut self, state: State, failure: &SessionFailure) {
        if let State::Mail(mut t) = state
            && !t.done
        {
            self.emit(ClientEvent::MessageDeferred {
                id: t.msg.id,
                failure: failure.clone(),
                recipients: mem::take(&mut t.refused),
            });
        }
        while let Some(msg) = self.queue.pop_front() {
            self.emit(ClientEvent::MessageDeferred {
                id: msg.id,
                failure: failure.clone(),
                recipients: Vec::new(),
            });
        }
    }

    fn emit(&mut self, event: ClientEvent) {
        self.events.push_back(event);
    }
}

/// Whether a body needs BINARYMIME (a NUL byte) and whether it has 8-bit bytes. Bare CR and
/// bare LF do not call for it: DATA and BDAT carry them unchanged, and marking such a message
/// BINARYMIME would make every later hop without CHUNKING refuse it.
fn body_kind(body: &[u8]) -> (bool, bool) {
    (memchr(0, body).is_some(), !body.is_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Recipient;
    use crate::wire::params::{MailParams, RcptParams};
    use crate::wire::path::ReversePath;
    use proptest::prelude::*;

    const CONTEXT: &str = "aHViMS5leGFtcGxl";
    const DBID: &str = "X+QUj+rOf0ag5pssHT5PUA==";
    const GUID1: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    const GUID2: &str = "9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01";
    /// A small 7-bit body of 22 bytes.
    const BODY: &[u8] = b"Subject: hi\r\n\r\nHello\r\n";

    #[test]
    fn a_discard_id_list_gives_back_its_ids_in_order() {
        let list: DiscardIdList = [GUID1, "x", GUID2].into_iter().collect();
        assert_eq!(list.len(), 3);
        assert!(!list.is_empty());
        assert_eq!(list.iter().collect::<Vec<_>>(), [GUID1, "x", GUID2]);
        assert_eq!(list.iter().len(), 3);
        assert_eq!(
            (list.get(0), list.get(1), list.get(2)),
            (Some(GUID1), Some("x"), Some(GUID2))
        );
        assert_eq!(list.get(3), None);
        assert_eq!(
            format!("{list:?}"),
            format!("[{GUID1:?}, \"x\", {GUID2:?}]")
        );
        let empty = DiscardIdList::new();
        assert!(empty.is_empty());
        assert_eq!(empty.iter().next(), None);
        assert_ne!(empty, list);
    }

    /// The EHLO reply of PROTOCOL.md §9: pipelining and XSHADOW.
    const EHLO_XSHADOW: &str = "
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250 XSHADOW";

    /// An EHLO reply with XSHADOW and nothing else: one command per round trip.
    const EHLO_XSHADOW_ONLY: &str = "
        S: 250-edge1.example
        S: 250 XSHADOW";

    /// An EHLO reply with pipelining and no shadow keyword.
    const EHLO_PIPELINING: &str = "
        S: 250-edge1.example
        S: 250 PIPELINING";

    /// What a server says to a shadowed session after the greeting, from EHLO to XSHADOW.
    fn shadowed_start(ehlo: &str) -> String {
        format!(
            "
            S: 220 edge1.example ESMTP xshadow
            C: EHLO hub1.example
            {ehlo}
            C: XSHADOW {CONTEXT}
            S: 250 {DBID}"
        )
    }

    fn config(shadow: bool) -> ClientConfig {
        let mut config = ClientConfig::new("hub1.example");
        config.shadow_context = shadow.then(|| CONTEXT.to_owned());
        config
    }

    /// Timeouts of 1 to 11 seconds, a different one per phase.
    fn distinct_timeouts() -> ClientTimeouts {
        let s = Duration::from_secs;
        ClientTimeouts {
            greeting: s(1),
            ehlo: s(2),
            xshadow: s(3),
            mail: s(4),
            rcpt: s(5),
            data_init: s(6),
            data_block: s(7),
            data_end: s(8),
            rset: s(9),
            xqdiscard: s(10),
            quit: s(11),
        }
    }

    fn mailbox(address: &str) -> Mailbox<'static> {
        let (local, domain) = address.rsplit_once('@').unwrap();
        Mailbox::new(local, domain)
    }

    fn message(id: u64, to: &[&str], body: &[u8], shadow_id: Option<&str>) -> OutboundMessage {
        OutboundMessage {
            id,
            envelope: Envelope {
                from: ReversePath::Mailbox(mailbox("alice@example.org")),
                params: MailParams::default(),
                recipients: to
                    .iter()
                    .map(|to| Recipient {
                        to: ForwardPath::Mailbox(mailbox(to)),
                        params: RcptParams::default(),
                    })
                    .collect(),
            }
            .into(),
            body: Bytes::copy_from_slice(body),
            shadow_id: shadow_id.map(Arc::from),
        }
    }

    /// A session to play a transcript against: its configuration, the messages queued at
    /// the start, and whether `finish` is called at the start (`Some(query_discards)`).
    struct Setup {
        config: ClientConfig,
        messages: Vec<OutboundMessage>,
        finish: Option<bool>,
    }

    impl Setup {
        fn new(config: ClientConfig, messages: Vec<OutboundMessage>, finish: bool) -> Self {
            Self {
                config,
                messages,
                finish: Some(finish),
            }
        }
    }

    /// One line of a transcript.
    enum Line<'a> {
        /// `S: text`: bytes the server sends (text + CRLF, or `{name}`: raw bytes).
        Server(Vec<u8>),
        /// `C: text`: bytes the client must have sent (text + CRLF, or `{name}`: raw bytes).
        Client(Vec<u8>),
        /// `@action`: `close`, `timeout <secs>` (the deadline must be that far away),
        /// `discard_more yes|no`.
        Act(&'a str),
    }

    fn parse_script<'a>(script: &'a str, raw: &[(&str, &[u8])]) -> Vec<Line<'a>> {
        let bytes = |text: &str| -> Vec<u8> {
            match text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(name) => raw
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("no raw bytes named {name}"))
                    .1
                    .to_vec(),
                None => format!("{text}\r\n").into_bytes(),
            }
        };
        script
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.is_empty())
            .map(|l| {
                if let Some(text) = l.strip_prefix("S: ") {
                    Line::Server(bytes(text))
                } else if let Some(text) = l.strip_prefix("C: ") {
                    Line::Client(bytes(text))
                } else if let Some(action) = l.strip_prefix('@') {
                    Line::Act(action)
                } else {
                    panic!("bad transcript line {l:?}")
                }
            })
            .collect()
    }

    /// A session being driven by a transcript.
    struct Player {
        session: ClientSession,
        now: Instant,
        bytewise: bool,
        sent: Vec<u8>,
        events: Vec<ClientEvent>,
    }

    impl Player {
        fn drain(&mut self) {
            while self.session.poll_transmit(&mut self.sent).is_some() {}
            while let Some(event) = self.session.poll_event() {
                self.events.push(event);
            }
        }

        fn feed(&mut self, bytes: &[u8]) {
            if self.bytewise {
                for &b in bytes {
                    self.session.handle_input(&[b], self.now);
                    self.drain();
                }
            } else if !bytes.is_empty() {
                self.session.handle_input(bytes, self.now);
                self.drain();
            }
        }

        fn check(&mut self, expected: &mut Vec<u8>) {
            self.drain();
            assert!(
                self.sent == *expected,
                "the client sent\n{}\nbut the transcript says\n{}",
                String::from_utf8_lossy(&self.sent),
                String::from_utf8_lossy(expected)
            );
            self.sent.clear();
            expected.clear();
        }

        fn act(&mut self, action: &str) {
            match action.split_once(' ').unwrap_or((action, "")) {
                ("close", _) => self.session.handle_close(self.now),
                ("timeout", secs) => {
                    let at = self.session.poll_timeout().expect("a timer is running");
                    let secs: u64 = secs.parse().unwrap();
                    assert_eq!(at - self.now, Duration::from_secs(secs), "timer length");
                    // Early calls are harmless.
                    self.session.handle_timeout(self.now);
                    self.drain();
                    assert!(!self.session.is_closed());
                    self.now = at;
                    self.session.handle_timeout(self.now);
                }
                ("discard_more", answer) => {
                    self.session
                        .discard_more(answer == "yes", self.now)
                        .unwrap();
                }
                _ => panic!("unknown action {action:?}"),
            }
            self.drain();
        }
    }

    fn play(
        setup: &Setup,
        script: &str,
        raw: &[(&str, &[u8])],
        bytewise: bool,
    ) -> Vec<ClientEvent> {
        let now = Instant::now();
        let mut session = ClientSession::new(setup.config.clone(), now).unwrap();
        for msg in &setup.messages {
            session.queue_message(msg.clone(), now).unwrap();
        }
        if let Some(query_discards) = setup.finish {
            session.finish(query_discards, now).unwrap();
        }
        let mut player = Player {
            session,
            now,
            bytewise,
            sent: Vec::new(),
            events: Vec::new(),
        };
        let mut expected = Vec::new();
        let mut pending = Vec::new();
        for line in parse_script(script, raw) {
            match line {
                Line::Server(bytes) => {
                    player.check(&mut expected);
                    pending.extend_from_slice(&bytes);
                }
                Line::Client(bytes) => {
                    player.feed(&mem::take(&mut pending));
                    expected.extend_from_slice(&bytes);
                }
                Line::Act(action) => {
                    player.feed(&mem::take(&mut pending));
                    player.check(&mut expected);
                    player.act(action);
                }
            }
        }
        player.feed(&pending);
        player.check(&mut expected);
        player.events
    }

    /// Plays a transcript with the server's bytes fed a group at a time, then one byte at a
    /// time; both must send the same bytes and give the same events, which are returned.
    fn transcript_with(setup: &Setup, script: &str, raw: &[(&str, &[u8])]) -> Vec<ClientEvent> {
        let whole = play(setup, script, raw, false);
        let bytewise = play(setup, script, raw, true);
        assert_eq!(whole, bytewise, "fed whole and byte by byte");
        whole
    }

    fn transcript(setup: &Setup, script: &str) -> Vec<ClientEvent> {
        transcript_with(setup, script, &[("body", BODY)])
    }

    fn last(events: &[ClientEvent]) -> &ClientEvent {
        events.last().expect("some event")
    }

    fn closed_ok() -> ClientEvent {
        ClientEvent::Closed { failure: None }
    }

    fn reply(code: u16, status: Option<(u8, u16, u16)>, text: &str) -> Reply<'static> {
        let status = status.map(|(c, s, d)| EnhancedStatus::new(c, s, d));
        Reply::new(code, status, text.to_owned())
    }

    fn refused(
        index: usize,
        to: &str,
        code: u16,
        status: (u8, u16, u16),
        text: &str,
    ) -> RecipientOutcome {
        RecipientOutcome {
            index,
            to: ForwardPath::Mailbox(mailbox(to)),
            reply: reply(code, Some(status), text),
            permanent: code >= 500,
        }
    }

    /// A body of exactly `len` bytes of short CRLF-ended lines.
    fn body_of_len(len: usize) -> Vec<u8> {
        let mut body =
            b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: shadow\r\n\r\n".to_vec();
        while body.len() + 64 <= len {
            body.extend_from_slice(&[b'a'; 62]);
            body.extend_from_slice(b"\r\n");
        }
        let rest = len - body.len();
        body.extend(std::iter::repeat_n(b'b', rest.saturating_sub(2)));
        body.extend_from_slice(&b"\r\n"[..rest.min(2)]);
        assert_eq!(body.len(), len);
        body
    }

    #[test]
    fn the_protocol_example_session_is_sent_byte_for_byte() {
        let body = body_of_len(2048);
        let setup = Setup::new(
            config(true),
            vec![message(1, &["bob@example.net"], &body, Some(GUID1))],
            true,
        );
        let script = format!(
            "
            S: 220 edge1.example ESMTP xshadow
            C: EHLO hub1.example
            {EHLO_XSHADOW}
            C: XSHADOW aHViMS5leGFtcGxl
            S: 250 X+QUj+rOf0ag5pssHT5PUA==
            C: MAIL FROM:<alice@example.org> SIZE=2048 XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301
            C: RCPT TO:<bob@example.net>
            C: DATA
            S: 250 2.1.0 Sender OK
            S: 250 2.1.5 Recipient OK
            S: 354 Start mail input; end with <CRLF>.<CRLF>
            C: {{body}}
            C: .
            S: 250 2.6.0 Queued mail for delivery
            C: XQDISCARD 50
            S: 251 OK, no discard events
            C: QUIT
            S: 221 2.0.0 Service closing transmission channel"
        );
        let events = transcript_with(&setup, &script, &[("body", &body)]);
        let keywords = EhloKeywords {
            pipelining: true,
            size: Some(SizeLimit::Max(36_700_160)),
            eight_bit_mime: true,
            enhanced_status_codes: true,
            xshadow: true,
            ..EhloKeywords::default()
        };
        assert_eq!(
            events,
            [
                ClientEvent::Capabilities {
                    domain: "edge1.example".into(),
                    keywords,
                    extended: true,
                },
                ClientEvent::ShadowAccepted {
                    database_id: DBID.into()
                },
                ClientEvent::MessageAccepted {
                    id: 1,
                    shadowed: true,
                    shadow_id: Some(GUID1.into()),
                    reply: reply(250, Some((2, 6, 0)), "Queued mail for delivery"),
                    recipients: vec![],
                },
                ClientEvent::DiscardIds {
                    ids: DiscardIdList::new(),
                    more_possible: false
                },
                closed_ok(),
            ]
        );
    }

    #[test]
    fn a_heartbeat_asks_for_discard_ids_and_quits() {
        let setup = Setup::new(config(true), vec![], true);
        let script = format!(
            "{}
            C: XQDISCARD 50
            S: 250-{GUID1}
            S: 250 {GUID2}
            C: QUIT
            S: 221 2.0.0 Service closing transmission channel",
            shadowed_start(EHLO_XSHADOW)
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[1..],
            [
                ClientEvent::ShadowAccepted {
                    database_id: DBID.into()
                },
                ClientEvent::DiscardIds {
                    ids: [GUID1, GUID2].into_iter().collect(),
                    more_possible: false
                },
                closed_ok(),
            ]
        );
    }

    #[test]
    fn xshadow_refused_carries_on_without_shadowing() {
        for refusal in [
            "502 5.3.3 Command not implemented",
            "550 5.7.1 Not authorized",
        ] {
            let setup = Setup::new(
                config(true),
                vec![message(1, &["bob@example.net"], BODY, Some(GUID1))],
                true,
            );
            let script = format!(
                "
                S: 220 edge1.example
                C: EHLO hub1.example
                {EHLO_XSHADOW}
                C: XSHADOW {CONTEXT}
                S: {refusal}
                C: MAIL FROM:<alice@example.org> SIZE=22
                C: RCPT TO:<bob@example.net>
                C: DATA
                S: 250 2.1.0 Sender OK
                S: 250 2.1.5 Recipient OK
                S: 354 go ahead
                C: {{body}}
                C: .
                S: 250 2.6.0 Queued
                C: QUIT
                S: 221 2.0.0 Bye"
            );
            let events = transcript(&setup, &script);
            let (code, text) = refusal.split_at(3);
            let wire = format!("{code}{text}\r\n");
            let refused = crate::wire::reply::parse_reply(wire.as_bytes())
                .unwrap()
                .unwrap()
                .0
                .into_owned();
            assert_eq!(
                events[1..],
                [
                    ClientEvent::ShadowRefused { reply: refused },
                    ClientEvent::MessageAccepted {
                        id: 1,
                        shadowed: false,
                        shadow_id: None,
                        reply: reply(250, Some((2, 6, 0)), "Queued"),
                        recipients: vec![],
                    },
                    closed_ok(),
                ]
            );
        }
    }

    #[test]
    fn a_peer_without_xshadow_gets_no_xshadow_and_no_xqdiscard() {
        let setup = Setup::new(
            config(true),
            vec![message(1, &["bob@example.net"], BODY, Some(GUID1))],
            true,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go ahead
            C: {{body}}
            C: .
            S: 250 queued
            C: QUIT
            S: 221 bye"
        );
        let events = transcript(&setup, &script);
        assert_eq!(events[1], ClientEvent::ShadowNotOffered);
        assert!(matches!(
            events[2],
            ClientEvent::MessageAccepted {
                shadowed: false,
                ..
            }
        ));
    }

    #[test]
    fn xshadowrequest_in_ehlo_is_enough_to_send_xshadow() {
        let setup = Setup::new(config(true), vec![], true);
        let ehlo = "S: 250-edge1.example
                    S: 250 XSHADOWREQUEST";
        let script = format!(
            "{}
            C: XQDISCARD 50
            S: 251 OK, no discard events
            C: QUIT
            S: 221 bye",
            shadowed_start(ehlo)
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[2],
            ClientEvent::DiscardIds {
                ids: DiscardIdList::new(),
                more_possible: false
            }
        );
    }

    fn breach_event(error: ShadowReplyError) -> ClientEvent {
        ClientEvent::ProtocolBreach {
            breach: Breach::ShadowReply(error),
        }
    }

    fn breach_failure(error: ShadowReplyError) -> SessionFailure {
        SessionFailure::ProtocolBreach {
            breach: Breach::ShadowReply(error),
        }
    }

    #[test]
    fn an_empty_or_over_long_database_id_is_a_breach_and_the_session_quits() {
        let long = "x".repeat(256);
        for (line, error) in [
            ("250".to_owned(), ShadowReplyError::EmptyDatabaseId),
            (
                format!("250 {long}"),
                ShadowReplyError::DatabaseIdTooLong { len: 256 },
            ),
        ] {
            let setup = Setup::new(
                config(true),
                vec![message(7, &["bob@example.net"], BODY, Some(GUID1))],
                true,
            );
            let script = format!(
                "
                S: 220 edge1.example
                C: EHLO hub1.example
                {EHLO_XSHADOW}
                C: XSHADOW {CONTEXT}
                S: {line}
                C: QUIT
                S: 221 bye"
            );
            let events = transcript(&setup, &script);
            assert_eq!(
                events[1..],
                [
                    breach_event(error),
                    ClientEvent::MessageDeferred {
                        id: 7,
                        failure: breach_failure(error),
                        recipients: vec![],
                    },
                    ClientEvent::Closed {
                        failure: Some(breach_failure(error))
                    },
                ]
            );
        }
    }

    #[test]
    fn a_database_id_of_255_bytes_is_accepted() {
        let id = "y".repeat(255);
        let setup = Setup::new(config(true), vec![], false);
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_XSHADOW}
            C: XSHADOW {CONTEXT}
            S: 250 {id} more text
            C: QUIT
            S: 221 bye"
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[1],
            ClientEvent::ShadowAccepted {
                database_id: id.clone()
            }
        );
    }

    fn config_max(max: u32) -> ClientConfig {
        let mut config = config(true);
        config.xqdiscard_max = max;
        config
    }

    #[test]
    fn a_full_xqdiscard_reply_waits_for_discard_more_then_asks_again() {
        let setup = Setup::new(config_max(2), vec![], true);
        let script = format!(
            "{}
            C: XQDISCARD 2
            S: 250-{GUID1}
            S: 250 {GUID2}
            @discard_more yes
            C: XQDISCARD 2
            S: 250 third-id
            C: QUIT
            S: 221 bye",
            shadowed_start(EHLO_XSHADOW)
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[2..],
            [
                ClientEvent::DiscardIds {
                    ids: [GUID1, GUID2].into_iter().collect(),
                    more_possible: true
                },
                ClientEvent::DiscardIds {
                    ids: ["third-id"].into_iter().collect(),
                    more_possible: false
                },
                closed_ok(),
            ]
        );
    }

    #[test]
    fn discard_more_false_quits() {
        let setup = Setup::new(config_max(1), vec![], true);
        let script = format!(
            "{}
            C: XQDISCARD 1
            S: 250 {GUID1}
            @discard_more no
            C: QUIT
            S: 221 bye",
            shadowed_start(EHLO_XSHADOW)
        );
        let events = transcript(&setup, &script);
        assert_eq!(*last(&events), closed_ok());
    }

    #[test]
    fn malformed_xqdiscard_replies_are_breaches_then_quit() {
        let cases = [
            (
                "S: 250-a\nS: 250",
                ShadowReplyError::EmptyDiscardId { line: 2 },
            ),
            ("S: 250", ShadowReplyError::EmptyDiscardId { line: 1 }),
            (
                "S: 250-a\nS: 250-b\nS: 250 c",
                ShadowReplyError::TooManyDiscardIds { max: 2, got: 3 },
            ),
            (
                "S: 252 what",
                ShadowReplyError::UnexpectedCode { code: 252 },
            ),
        ];
        for (lines, error) in cases {
            let setup = Setup::new(config_max(2), vec![], true);
            let script = format!(
                "{}
                C: XQDISCARD 2
                {lines}
                C: QUIT
                S: 221 bye",
                shadowed_start(EHLO_XSHADOW)
            );
            let events = transcript(&setup, &script);
            assert_eq!(
                events[2..],
                [
                    breach_event(error),
                    ClientEvent::Closed {
                        failure: Some(breach_failure(error))
                    },
                ],
                "{lines}"
            );
        }
    }

    #[test]
    fn an_over_long_discard_id_is_a_breach() {
        let long = "z".repeat(256);
        let setup = Setup::new(config(true), vec![], true);
        let script = format!(
            "{}
            C: XQDISCARD 50
            S: 250-ok
            S: 250 {long}
            C: QUIT
            S: 221 bye",
            shadowed_start(EHLO_XSHADOW)
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[2],
            breach_event(ShadowReplyError::DiscardIdTooLong { line: 2, len: 256 })
        );
    }

    #[test]
    fn a_refused_xqdiscard_is_a_failed_heartbeat_not_a_breach() {
        let setup = Setup::new(config(true), vec![], true);
        let script = format!(
            "{}
            C: XQDISCARD 50
            S: 503 5.5.1 Bad sequence of commands
            C: QUIT
            S: 221 bye",
            shadowed_start(EHLO_XSHADOW)
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[2..],
            [
                ClientEvent::DiscardRefused {
                    reply: Reply::bad_sequence()
                },
                closed_ok()
            ]
        );
    }

    #[test]
    fn without_pipelining_each_command_waits_for_its_reply() {
        let setup = Setup::new(
            config(true),
            vec![message(
                3,
                &["bob@example.net", "carol@example.net"],
                BODY,
                Some(GUID1),
            )],
            false,
        );
        let script = format!(
            "{}
            C: MAIL FROM:<alice@example.org> XSHADOW={GUID1}
            S: 250 2.1.0 ok
            C: RCPT TO:<bob@example.net>
            S: 250 2.1.5 ok
            C: RCPT TO:<carol@example.net>
            S: 250 2.1.5 ok
            C: DATA
            S: 354 go ahead
            C: {{body}}
            C: .
            S: 250 2.6.0 queued
            C: QUIT
            S: 221 bye",
            shadowed_start(EHLO_XSHADOW_ONLY)
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[2],
            ClientEvent::MessageAccepted {
                id: 3,
                shadowed: true,
                shadow_id: Some(GUID1.into()),
                reply: reply(250, Some((2, 6, 0)), "queued"),
                recipients: vec![],
            }
        );
    }

    #[test]
    fn with_chunking_the_body_goes_raw_after_bdat_last_in_the_pipelined_batch() {
        let setup = Setup::new(
            config(false),
            vec![message(
                1,
                &["bob@example.net"],
                b".starts with a dot",
                None,
            )],
            false,
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250-edge1.example
            S: 250-PIPELINING
            S: 250 CHUNKING
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: BDAT 18 LAST
            C: {raw}
            S: 250 2.1.0 ok
            S: 250 2.1.5 ok
            S: 250 2.6.0 queued
            C: QUIT
            S: 221 bye";
        let events = transcript_with(&setup, script, &[("raw", b".starts with a dot")]);
        assert!(matches!(
            events[1],
            ClientEvent::MessageAccepted { id: 1, .. }
        ));
    }

    #[test]
    fn with_chunking_and_no_pipelining_bdat_waits_for_the_rcpt_replies() {
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bob@example.net"], BODY, None)],
            false,
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250-edge1.example
            S: 250 CHUNKING
            C: MAIL FROM:<alice@example.org>
            S: 250 2.1.0 ok
            C: RCPT TO:<bob@example.net>
            S: 250 2.1.5 ok
            C: BDAT 22 LAST
            C: {body}
            S: 250 2.6.0 queued
            C: QUIT
            S: 221 bye";
        let events = transcript(&setup, script);
        assert!(matches!(
            events[1],
            ClientEvent::MessageAccepted { id: 1, .. }
        ));
    }

    #[test]
    fn a_binary_body_goes_as_binarymime_when_offered() {
        let body: &[u8] = b"a\nb\0c\r\n";
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bob@example.net"], body, None)],
            false,
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250-edge1.example
            S: 250-PIPELINING
            S: 250-BINARYMIME
            S: 250 CHUNKING
            C: MAIL FROM:<alice@example.org> BODY=BINARYMIME
            C: RCPT TO:<bob@example.net>
            C: BDAT 7 LAST
            C: {raw}
            S: 250 ok
            S: 250 ok
            S: 250 queued
            C: QUIT
            S: 221 bye";
        transcript_with(&setup, script, &[("raw", body)]);
    }

    #[test]
    fn an_eight_bit_body_goes_as_8bitmime_when_offered() {
        let body = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bob@example.net"], body, None)],
            false,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250-edge1.example
            S: 250-SIZE
            S: 250 8BITMIME
            C: MAIL FROM:<alice@example.org> SIZE={} BODY=8BITMIME
            S: 250 ok
            C: RCPT TO:<bob@example.net>
            S: 250 ok
            C: DATA
            S: 354 go
            C: {{raw}}
            C: .
            S: 250 queued
            C: QUIT
            S: 221 bye",
            body.len()
        );
        transcript_with(&setup, &script, &[("raw", body)]);
    }

    #[test]
    fn leading_dots_in_the_body_are_doubled_and_the_end_gets_its_crlf() {
        let body: &[u8] = b".leading\r\n..two\r\nmid.dle\r\n.";
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bob@example.net"], body, None)],
            false,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            C: ..leading
            C: ...two
            C: mid.dle
            C: ..
            C: .
            S: 250 queued
            C: QUIT
            S: 221 bye"
        );
        transcript(&setup, &script);
    }

    #[test]
    fn ehlo_refused_with_5xx_falls_back_to_helo() {
        let setup = Setup::new(
            config(true),
            vec![message(1, &["bob@example.net"], BODY, Some(GUID1))],
            true,
        );
        let script = "
            S: 220 old.example ESMTP
            C: EHLO hub1.example
            S: 502 5.5.2 Command not recognized
            C: HELO hub1.example
            S: 250 old.example Hello hub1.example
            C: MAIL FROM:<alice@example.org>
            S: 250 ok
            C: RCPT TO:<bob@example.net>
            S: 250 ok
            C: DATA
            S: 354 go
            C: {body}
            C: .
            S: 250 queued
            C: QUIT
            S: 221 bye";
        let events = transcript(&setup, script);
        assert_eq!(
            events[..2],
            [
                ClientEvent::Capabilities {
                    domain: "old.example".into(),
                    keywords: EhloKeywords::default(),
                    extended: false,
                },
                ClientEvent::ShadowNotOffered,
            ]
        );
        assert!(matches!(
            events[2],
            ClientEvent::MessageAccepted {
                shadowed: false,
                ..
            }
        ));
    }

    #[test]
    fn ehlo_answered_421_fails_the_session_and_defers_the_message() {
        let setup = Setup::new(
            config(true),
            vec![message(1, &["bob@example.net"], BODY, None)],
            true,
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 421 4.3.2 Shutting down";
        let events = transcript(&setup, script);
        let failure = SessionFailure::ServiceClosing {
            reply: reply(421, Some((4, 3, 2)), "Shutting down"),
        };
        assert_eq!(
            events,
            [
                ClientEvent::MessageDeferred {
                    id: 1,
                    failure: failure.clone(),
                    recipients: vec![],
                },
                ClientEvent::Closed {
                    failure: Some(failure)
                },
            ]
        );
    }

    #[test]
    fn a_refused_greeting_quits_and_defers() {
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bob@example.net"], BODY, None)],
            false,
        );
        let script = "
            S: 554 5.7.1 Go away
            C: QUIT
            S: 221 bye";
        let events = transcript(&setup, script);
        let failure = SessionFailure::GreetingRefused {
            reply: reply(554, Some((5, 7, 1)), "Go away"),
        };
        assert_eq!(
            *last(&events),
            ClientEvent::Closed {
                failure: Some(failure)
            }
        );
        assert!(matches!(
            events[0],
            ClientEvent::MessageDeferred { id: 1, .. }
        ));
    }

    #[test]
    fn recipients_refused_450_and_550_are_listed_as_temporary_and_permanent() {
        let setup = Setup::new(
            config(false),
            vec![message(
                1,
                &["bob@example.net", "carol@example.net", "dave@example.net"],
                BODY,
                None,
            )],
            false,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: RCPT TO:<carol@example.net>
            C: RCPT TO:<dave@example.net>
            C: DATA
            S: 250 2.1.0 ok
            S: 250 2.1.5 ok
            S: 450 4.2.1 Mailbox busy
            S: 550 5.1.1 Unknown user
            S: 354 go
            C: {{body}}
            C: .
            S: 250 2.6.0 queued
            C: QUIT
            S: 221 bye"
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[1],
            ClientEvent::MessageAccepted {
                id: 1,
                shadowed: false,
                shadow_id: None,
                reply: reply(250, Some((2, 6, 0)), "queued"),
                recipients: vec![
                    refused(1, "carol@example.net", 450, (4, 2, 1), "Mailbox busy"),
                    refused(2, "dave@example.net", 550, (5, 1, 1), "Unknown user"),
                ],
            }
        );
    }

    #[test]
    fn all_recipients_refused_with_pipelining_sends_no_body_and_resets_before_the_next_message() {
        let setup = Setup::new(
            config(false),
            vec![
                message(1, &["carol@example.net", "dave@example.net"], BODY, None),
                message(2, &["bob@example.net"], BODY, None),
            ],
            false,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<carol@example.net>
            C: RCPT TO:<dave@example.net>
            C: DATA
            S: 250 2.1.0 ok
            S: 450 4.2.1 Mailbox busy
            S: 550 5.1.1 Unknown user
            S: 554 5.5.1 No valid recipients
            C: RSET
            S: 250 2.0.0 ok
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 354 go
            C: {{body}}
            C: .
            S: 250 queued
            C: QUIT
            S: 221 bye"
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[1],
            ClientEvent::MessageFailed {
                id: 1,
                reply: reply(550, Some((5, 1, 1)), "Unknown user"),
                permanent: false,
                local: false,
                recipients: vec![
                    refused(0, "carol@example.net", 450, (4, 2, 1), "Mailbox busy"),
                    refused(1, "dave@example.net", 550, (5, 1, 1), "Unknown user"),
                ],
            }
        );
        assert!(matches!(
            events[2],
            ClientEvent::MessageAccepted { id: 2, .. }
        ));
    }

    #[test]
    fn a_354_after_every_recipient_was_refused_gets_a_lone_dot() {
        let setup = Setup::new(
            config(false),
            vec![message(1, &["carol@example.net"], BODY, None)],
            false,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<carol@example.net>
            C: DATA
            S: 250 ok
            S: 550 5.1.1 Unknown user
            S: 354 go
            C: .
            S: 554 5.5.1 No valid recipients
            C: QUIT
            S: 221 bye"
        );
        let events = transcript(&setup, &script);
        assert!(matches!(
            events[1],
            ClientEvent::MessageFailed {
                id: 1,
                permanent: true,
                ..
            }
        ));
    }

    #[test]
    fn a_refused_mail_from_fails_the_message_without_rset() {
        let setup = Setup::new(
            config(false),
            vec![
                message(1, &["bob@example.net"], BODY, None),
                message(2, &["bob@example.net"], BODY, None),
            ],
            false,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: DATA
            S: 550 5.7.1 Sender rejected
            S: 503 5.5.1 Bad sequence of commands
            S: 503 5.5.1 Bad sequence of commands
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: DATA
            S: 451 4.3.0 Try later
            S: 503 5.5.1 Bad sequence of commands
            S: 503 5.5.1 Bad sequence of commands
            C: QUIT
            S: 221 bye"
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[1..3],
            [
                ClientEvent::MessageFailed {
                    id: 1,
                    reply: reply(550, Some((5, 7, 1)), "Sender rejected"),
                    permanent: true,
                    local: false,
                    recipients: vec![],
                },
                ClientEvent::MessageFailed {
                    id: 2,
                    reply: reply(451, Some((4, 3, 0)), "Try later"),
                    permanent: false,
                    local: false,
                    recipients: vec![],
                },
            ]
        );
    }

    #[test]
    fn a_refused_end_of_data_fails_the_message_and_resets_before_xqdiscard() {
        let setup = Setup::new(
            config(true),
            vec![message(1, &["bob@example.net"], BODY, Some(GUID1))],
            true,
        );
        let script = format!(
            "{}
            C: MAIL FROM:<alice@example.org> XSHADOW={GUID1}
            S: 250 ok
            C: RCPT TO:<bob@example.net>
            S: 250 ok
            C: DATA
            S: 354 go
            C: {{body}}
            C: .
            S: 554 5.6.0 Content rejected
            C: RSET
            S: 250 ok
            C: XQDISCARD 50
            S: 251 OK, no discard events
            C: QUIT
            S: 221 bye",
            shadowed_start(EHLO_XSHADOW_ONLY)
        );
        let events = transcript(&setup, &script);
        assert!(matches!(
            events[2],
            ClientEvent::MessageFailed {
                id: 1,
                permanent: true,
                local: false,
                ..
            }
        ));
    }

    #[test]
    fn a_421_mid_session_defers_the_message_in_flight_and_the_queue() {
        let setup = Setup::new(
            config(true),
            vec![
                message(1, &["bob@example.net"], BODY, Some(GUID1)),
                message(2, &["bob@example.net"], BODY, Some(GUID2)),
            ],
            true,
        );
        let script = format!(
            "{}
            C: MAIL FROM:<alice@example.org> SIZE=22 XSHADOW={GUID1}
            C: RCPT TO:<bob@example.net>
            C: DATA
            S: 250 2.1.0 ok
            S: 421 4.4.2 Closing connection",
            shadowed_start(EHLO_XSHADOW)
        );
        let events = transcript(&setup, &script);
        let failure = SessionFailure::ServiceClosing {
            reply: reply(421, Some((4, 4, 2)), "Closing connection"),
        };
        assert_eq!(
            events[2..],
            [
                ClientEvent::MessageDeferred {
                    id: 1,
                    failure: failure.clone(),
                    recipients: vec![],
                },
                ClientEvent::MessageDeferred {
                    id: 2,
                    failure: failure.clone(),
                    recipients: vec![],
                },
                ClientEvent::Closed {
                    failure: Some(failure)
                },
            ]
        );
    }

    #[test]
    fn a_message_whose_final_reply_never_came_is_deferred_not_accepted() {
        let setup = Setup::new(
            config(false),
            vec![message(
                1,
                &["bob@example.net", "carol@example.net"],
                BODY,
                None,
            )],
            false,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: RCPT TO:<carol@example.net>
            C: DATA
            S: 250 ok
            S: 250 ok
            S: 550 5.1.1 Unknown user
            S: 354 go
            C: {{body}}
            C: .
            @close"
        );
        let events = transcript(&setup, &script);
        let failure = SessionFailure::ConnectionClosed {
            phase: ClientPhase::DataEnd,
        };
        assert_eq!(
            events[1..],
            [
                ClientEvent::MessageDeferred {
                    id: 1,
                    failure: failure.clone(),
                    recipients: vec![refused(
                        1,
                        "carol@example.net",
                        550,
                        (5, 1, 1),
                        "Unknown user"
                    )],
                },
                ClientEvent::Closed {
                    failure: Some(failure)
                },
            ]
        );
    }

    #[test]
    fn every_phase_timeout_names_its_phase() {
        let start = shadowed_start(EHLO_XSHADOW_ONLY);
        let mail = format!("{start}\nC: MAIL FROM:<alice@example.org>");
        let rcpt = format!("{mail}\nS: 250 ok\nC: RCPT TO:<bob@example.net>");
        let data = format!("{rcpt}\nS: 250 ok\nC: DATA");
        let body = format!("{data}\nS: 354 go\nC: {{body}}\nC: .");
        let cases = [
            (String::new(), ClientPhase::Greeting, 1),
            (
                "S: 220 hi\nC: EHLO hub1.example".to_owned(),
                ClientPhase::Ehlo,
                2,
            ),
            (
                "S: 220 hi\nC: EHLO hub1.example\nS: 500 no\nC: HELO hub1.example".to_owned(),
                ClientPhase::Helo,
                2,
            ),
            (
                format!(
                    "S: 220 hi\nC: EHLO hub1.example\n{EHLO_XSHADOW_ONLY}\nC: XSHADOW {CONTEXT}"
                ),
                ClientPhase::XShadow,
                3,
            ),
            (mail, ClientPhase::Mail, 4),
            (rcpt.clone(), ClientPhase::Rcpt, 5),
            (data, ClientPhase::DataInit, 6),
            (body.clone(), ClientPhase::DataEnd, 8),
            (format!("{rcpt}\nS: 550 no\nC: RSET"), ClientPhase::Rset, 9),
            (
                format!("{body}\nS: 250 queued\nC: XQDISCARD 50"),
                ClientPhase::XqDiscard,
                10,
            ),
            (
                format!("{body}\nS: 250 queued\nC: XQDISCARD 50\nS: 251 none\nC: QUIT"),
                ClientPhase::Quit,
                11,
            ),
        ];
        for (script, phase, secs) in cases {
            let mut config = config(true);
            config.timeouts = distinct_timeouts();
            let messages = if phase == ClientPhase::Rset {
                vec![
                    message(1, &["bob@example.net"], BODY, None),
                    message(2, &["bob@example.net"], BODY, None),
                ]
            } else {
                vec![message(1, &["bob@example.net"], BODY, None)]
            };
            let setup = Setup::new(config, messages, true);
            let events = transcript(&setup, &format!("{script}\n@timeout {secs}"));
            assert_eq!(
                *last(&events),
                ClientEvent::Closed {
                    failure: Some(SessionFailure::Timeout { phase })
                },
                "{phase}"
            );
            let deferred = events
                .iter()
                .any(|e| matches!(e, ClientEvent::MessageDeferred { .. }));
            let finished = matches!(phase, ClientPhase::XqDiscard | ClientPhase::Quit);
            assert_eq!(deferred, !finished, "{phase}");
        }
    }

    #[test]
    fn a_body_left_in_the_session_times_out_in_the_data_block_phase() {
        let mut config = config(false);
        config.timeouts = distinct_timeouts();
        let t0 = Instant::now();
        let mut session = ClientSession::new(config, t0).unwrap();
        session
            .queue_message(message(1, &["bob@example.net"], BODY, None), t0)
            .unwrap();
        session.finish(false, t0).unwrap();
        let mut sent = Vec::new();
        for reply in [
            &b"220 hi\r\n"[..],
            b"250-edge1.example\r\n250 CHUNKING\r\n",
            b"250 ok\r\n",
        ] {
            session.handle_input(reply, t0);
            while session.poll_transmit(&mut sent).is_some() {}
        }
        session.handle_input(b"250 ok\r\n", t0);
        // BDAT and the body wait in the session: the caller is not taking them.
        assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(7)));
        session.handle_timeout(t0 + Duration::from_secs(7));
        let events: Vec<_> = std::iter::from_fn(|| session.poll_event()).collect();
        assert_eq!(
            *last(&events),
            ClientEvent::Closed {
                failure: Some(SessionFailure::Timeout {
                    phase: ClientPhase::DataBlock
                })
            }
        );
        assert!(matches!(
            events[1],
            ClientEvent::MessageDeferred { id: 1, .. }
        ));
    }

    #[test]
    fn once_the_body_is_taken_only_the_data_end_timer_runs() {
        let mut config = config(false);
        config.timeouts = distinct_timeouts();
        let t0 = Instant::now();
        let mut session = ClientSession::new(config, t0).unwrap();
        session
            .queue_message(message(1, &["bob@example.net"], BODY, None), t0)
            .unwrap();
        let mut out = Vec::new();
        for reply in [
            &b"220 hi\r\n"[..],
            b"250-edge1.example\r\n250 CHUNKING\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
        ] {
            session.handle_input(reply, t0);
            while session.poll_transmit(&mut out).is_some() {}
        }
        assert!(out.ends_with(BODY));
        assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(8)));
    }

    #[test]
    fn an_address_that_needs_smtputf8_fails_locally_when_it_is_not_offered() {
        let setup = Setup::new(
            config(false),
            vec![
                message(1, &["bj\u{f8}rn@example.net"], BODY, None),
                message(2, &["bob@example.net"], BODY, None),
            ],
            false,
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250 edge1.example
            C: MAIL FROM:<alice@example.org>
            S: 250 ok
            C: RCPT TO:<bob@example.net>
            S: 250 ok
            C: DATA
            S: 354 go
            C: {body}
            C: .
            S: 250 queued
            C: QUIT
            S: 221 bye";
        let events = transcript(&setup, script);
        assert!(matches!(
            &events[1],
            ClientEvent::MessageFailed {
                id: 1,
                reply: Reply { code: 553, .. },
                permanent: true,
                local: true,
                ..
            }
        ));
        assert!(matches!(
            events[2],
            ClientEvent::MessageAccepted { id: 2, .. }
        ));
    }

    #[test]
    fn an_address_that_needs_smtputf8_gets_it_when_offered() {
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bj\u{f8}rn@example.net"], BODY, None)],
            false,
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250-edge1.example
            S: 250 SMTPUTF8
            C: MAIL FROM:<alice@example.org> SMTPUTF8
            S: 250 ok
            C: RCPT TO:<bj\u{f8}rn@example.net>
            S: 250 ok
            C: DATA
            S: 354 go
            C: {body}
            C: .
            S: 250 queued
            C: QUIT
            S: 221 bye";
        transcript(&setup, script);
    }

    #[test]
    fn a_body_over_the_announced_size_fails_locally() {
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bob@example.net"], BODY, None)],
            false,
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250-edge1.example
            S: 250 SIZE 10
            C: QUIT
            S: 221 bye";
        let events = transcript(&setup, script);
        assert!(matches!(
            &events[1],
            ClientEvent::MessageFailed {
                reply: Reply { code: 552, .. },
                local: true,
                permanent: true,
                ..
            }
        ));
    }

    #[test]
    fn an_address_with_a_line_break_is_never_written() {
        let mut evil = message(1, &["bob@example.net"], BODY, None);
        Arc::make_mut(&mut evil.envelope).recipients[0].to =
            ForwardPath::Mailbox(Mailbox::new("bob>\r\nRCPT TO:<eve", "example.net"));
        let setup = Setup::new(config(false), vec![evil], false);
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: QUIT
            S: 221 bye"
        );
        let events = transcript(&setup, &script);
        assert_eq!(
            events[1],
            ClientEvent::MessageFailed {
                id: 1,
                reply: Reply::invalid_arguments(),
                permanent: true,
                local: true,
                recipients: vec![],
            }
        );
    }

    #[test]
    fn a_malformed_reply_line_is_a_breach_that_closes_at_once() {
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bob@example.net"], BODY, None)],
            false,
        );
        let script = format!(
            "
            S: 220 edge1.example
            C: EHLO hub1.example
            {EHLO_PIPELINING}
            C: MAIL FROM:<alice@example.org>
            C: RCPT TO:<bob@example.net>
            C: DATA
            S: 2x0 what"
        );
        let events = transcript(&setup, &script);
        let breach = Breach::MalformedReply(ReplyError::BadCode { line: 1 });
        let failure = SessionFailure::ProtocolBreach { breach };
        assert_eq!(
            events[1..],
            [
                ClientEvent::ProtocolBreach { breach },
                ClientEvent::MessageDeferred {
                    id: 1,
                    failure: failure.clone(),
                    recipients: vec![],
                },
                ClientEvent::Closed {
                    failure: Some(failure)
                },
            ]
        );
    }

    #[test]
    fn a_354_to_mail_is_an_unexpected_reply() {
        let setup = Setup::new(
            config(false),
            vec![message(1, &["bob@example.net"], BODY, None)],
            false,
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250 edge1.example
            C: MAIL FROM:<alice@example.org>
            S: 354 go";
        let events = transcript(&setup, script);
        assert_eq!(
            events[1],
            ClientEvent::ProtocolBreach {
                breach: Breach::UnexpectedReply {
                    phase: ClientPhase::Mail,
                    code: 354
                }
            }
        );
    }

    #[test]
    fn a_reply_while_idle_is_a_breach_and_a_421_while_idle_is_a_closing_peer() {
        let setup = Setup {
            config: config(false),
            messages: vec![],
            finish: None,
        };
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250 edge1.example
            S: 250 surprise";
        let events = transcript(&setup, script);
        assert_eq!(
            events[1],
            ClientEvent::ProtocolBreach {
                breach: Breach::UnexpectedReply {
                    phase: ClientPhase::Idle,
                    code: 250
                }
            }
        );
        let script = "
            S: 220 edge1.example
            C: EHLO hub1.example
            S: 250 edge1.example
            S: 421 4.4.2 Idle too long";
        let events = transcript(&setup, script);
        assert!(matches!(
            last(&events),
            ClientEvent::Closed {
                failure: Some(SessionFailure::ServiceClosing { .. })
            }
        ));
    }

    #[test]
    fn a_reply_to_a_command_not_yet_sent_is_a_breach_not_an_acceptance() {
        let t0 = Instant::now();
        let mut session = ClientSession::new(config(false), t0).unwrap();
        session
            .queue_message(message(1, &["bob@example.net"], BODY, None), t0)
            .unwrap();
        session.finish(false, t0).unwrap();
        // A peer that answers everything at once, before it could have read any of it.
        session.handle_input(
            b"220 x\r\n250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n250 ok\r\n",
            t0,
        );
        let events: Vec<_> = std::iter::from_fn(|| session.poll_event()).collect();
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ClientEvent::MessageAccepted { .. })),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::MessageDeferred { id: 1, .. }))
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::ProtocolBreach { .. }))
        );
    }

    #[test]
    fn a_message_queued_while_idle_is_sent_at_once() {
        let t0 = Instant::now();
        let mut session = ClientSession::new(config(false), t0).unwrap();
        let mut out = Vec::new();
        for reply in [&b"220 hi\r\n"[..], b"250 edge1.example\r\n"] {
            session.handle_input(reply, t0);
            while session.poll_transmit(&mut out).is_some() {}
        }
        assert_eq!(out, b"EHLO hub1.example\r\n");
        assert_eq!(session.poll_timeout(), None, "no timer while idle");
        out.clear();
        session
            .queue_message(message(1, &["bob@example.net"], BODY, None), t0)
            .unwrap();
        while session.poll_transmit(&mut out).is_some() {}
        assert_eq!(out, b"MAIL FROM:<alice@example.org>\r\n");
        assert_eq!(session.poll_timeout(), Some(t0 + FIVE_MINUTES));
    }

    #[test]
    fn calls_that_do_not_fit_the_state_are_api_errors() {
        let t0 = Instant::now();
        let mut session = ClientSession::new(config(true), t0).unwrap();
        assert_eq!(
            session.discard_more(true, t0),
            Err(ApiError {
                call: "discard_more",
                state: "waiting for the greeting"
            })
        );
        session.finish(true, t0).unwrap();
        let msg = message(1, &["bob@example.net"], BODY, None);
        assert_eq!(
            session.queue_message(msg.clone(), t0),
            Err(ApiError {
                call: "queue_message",
                state: "finished"
            })
        );
        assert_eq!(
            session.finish(false, t0),
            Err(ApiError {
                call: "finish",
                state: "finished"
            })
        );
        session.handle_close(t0);
        assert!(session.is_closed());
        assert_eq!(
            session.queue_message(msg, t0),
            Err(ApiError {
                call: "queue_message",
                state: "closed"
            })
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mut bad = config(true);
        bad.shadow_context = Some("two words".into());
        assert_eq!(
            ClientSession::new(bad, Instant::now()).err(),
            Some(ConfigError::ShadowContext)
        );
        let mut bad = config(true);
        bad.shadow_context = Some("x".repeat(256));
        assert_eq!(bad.validate(), Err(ConfigError::ShadowContext));
        let mut bad = config(false);
        bad.hostname = "hub\r\nQUIT".into();
        assert_eq!(bad.validate(), Err(ConfigError::Hostname));
        for max in [0, 1001] {
            assert_eq!(config_max(max).validate(), Err(ConfigError::XqdiscardMax));
        }
        let mut bad = config(false);
        bad.max_line = 100;
        assert_eq!(bad.validate(), Err(ConfigError::MaxLine));
        assert_eq!(ClientConfig::default().validate(), Ok(()));
    }

    #[test]
    fn default_timeouts_follow_rfc_5321() {
        let t = ClientTimeouts::default();
        assert_eq!(t.greeting, Duration::from_secs(300));
        assert_eq!(t.mail, Duration::from_secs(300));
        assert_eq!(t.rcpt, Duration::from_secs(300));
        assert_eq!(t.data_init, Duration::from_secs(120));
        assert_eq!(t.data_block, Duration::from_secs(180));
        assert_eq!(t.data_end, Duration::from_secs(600));
        assert_eq!(t.get(ClientPhase::Idle), None);
    }

    /// One thing a fuzzing peer does.
    #[derive(Debug, Clone)]
    enum Op {
        Reply(u16, Vec<&'static str>),
        Raw(Vec<u8>),
        Timeout,
        DiscardMore(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let code = prop::sample::select(vec![
            220u16, 221, 250, 251, 252, 354, 421, 450, 451, 500, 502, 503, 550, 554,
        ]);
        let line = prop::sample::select(vec![
            "edge1.example",
            "PIPELINING",
            "XSHADOW",
            "CHUNKING",
            "SIZE 30",
            "8BITMIME",
            "2.1.0 ok",
            GUID1,
            "",
            " ",
        ]);
        let raw = prop::collection::vec(
            prop_oneof![
                Just(b'\r'),
                Just(b'\n'),
                Just(b'-'),
                Just(b' '),
                b'0'..=b'9',
                any::<u8>()
            ],
            0..16,
        );
        prop_oneof![
            6 => (code, prop::collection::vec(line, 1..4)).prop_map(|(c, l)| Op::Reply(c, l)),
            1 => raw.prop_map(Op::Raw),
            1 => Just(Op::Timeout),
            1 => any::<bool>().prop_map(Op::DiscardMore),
        ]
    }

    proptest! {
        #[test]
        fn any_peer_behaviour_ends_with_one_outcome_per_message_and_one_closed(
            ops in prop::collection::vec(op(), 0..40),
        ) {
            let mut now = Instant::now();
            let mut session = ClientSession::new(config_max(2), now).unwrap();
            let ids = [1u64, 2, 3];
            session.queue_message(message(1, &["bob@example.net"], BODY, Some(GUID1)), now).unwrap();
            session
                .queue_message(message(2, &["bob@example.net", "carol@example.net"], b"x\n\0\xff", None), now)
                .unwrap();
            session.queue_message(message(3, &["bj\u{f8}rn@example.net"], BODY, Some(GUID2)), now).unwrap();
            session.finish(true, now).unwrap();
            let mut events = Vec::new();
            let mut out = Vec::new();
            for op in ops {
                match op {
                    Op::Reply(code, lines) => {
                        let reply = Reply::multiline(code, None, lines);
                        session.handle_input(&reply.to_bytes(), now);
                    }
                    Op::Raw(bytes) => session.handle_input(&bytes, now),
                    Op::Timeout => {
                        if let Some(at) = session.poll_timeout() {
                            now = now.max(at);
                            session.handle_timeout(now);
                        }
                    }
                    Op::DiscardMore(more) => {
                        let _ = session.discard_more(more, now);
                    }
                }
                while session.poll_transmit(&mut out).is_some() {}
                events.extend(std::iter::from_fn(|| session.poll_event()));
            }
            session.handle_close(now);
            events.extend(std::iter::from_fn(|| session.poll_event()));
            prop_assert!(session.is_closed());
            let closed = events.iter().filter(|e| matches!(e, ClientEvent::Closed { .. })).count();
            prop_assert_eq!(closed, 1);
            let ends_closed = matches!(events.last(), Some(ClientEvent::Closed { .. }));
            prop_assert!(ends_closed);
            for id in ids {
                let outcomes = events
                    .iter()
                    .filter(|e| matches!(e,
                        ClientEvent::MessageAccepted { id: i, .. }
                        | ClientEvent::MessageFailed { id: i, .. }
                        | ClientEvent::MessageDeferred { id: i, .. } if *i == id))
                    .count();
                prop_assert_eq!(outcomes, 1, "message {} in {:?}", id, events);
            }
        }
    }
}
