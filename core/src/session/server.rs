//! The receiving side of one SMTP connection: [`ServerSession`].
//!
//! The session turns the client's bytes into replies and into [`ServerEvent`]s, and it waits
//! for the caller wherever a decision belongs to the caller: whether a sender or recipient is
//! accepted, whether a complete message is stored (the final 250 is sent only then, which is
//! how "durable before 250" and delayed acknowledgement work), whether a peer may shadow
//! through us and which discard ids to return.
//!
//! # Driving it
//!
//! Feed bytes with [`ServerSession::handle_input`], then drain
//! [`ServerSession::poll_transmit`] and [`ServerSession::poll_event`] until both return
//! `None`; answer each decision event with its method (for example
//! [`ServerSession::accept_rcpt`]) and drain again. Sleep until input arrives or
//! [`ServerSession::poll_timeout`]. Stop reading from the socket while
//! [`ServerSession::may_read`] is false: the session holds back pipelined commands while it
//! waits for a decision or while too many reply bytes are pending, so memory stays bounded.
//!
//! `handle_input` copies what it cannot handle yet (the commands and content pipelined behind
//! a MAIL or RCPT decision) into the session. A driver that answers decisions at once can
//! avoid that copy with [`ServerSession::handle_input_until_decision`]: it stops where a
//! decision is needed and says how many bytes it used; answer, drain, offer the rest, and hand
//! to `handle_input` only what is left behind a decision that must wait.
//!
//! # Pipelining
//!
//! Commands are executed strictly one after another; a command waiting for a decision holds
//! back every command after it. A pipelined batch therefore gets exactly the replies, in the
//! same order, that the same commands sent one by one would get.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ApiError, Envelope, FIVE_MINUTES, Recipient, Recipients};
use crate::wire::body::{BdatChunk, DotReader, MessageSize};
use crate::wire::command::{Command, CommandError};
use crate::wire::ehlo::{EhloKeywords, EhloReply, SizeLimit};
use crate::wire::line::{Frame, LineReader};
use crate::wire::params::BodyType;
use crate::wire::path::{ForwardPath, ReversePath};
use crate::wire::reply::{EnhancedStatus, Reply};

/// Which shadow-redundancy role the server offers in its EHLO reply (PROTOCOL.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShadowOffer {
    /// Neither keyword: XSHADOW and XQDISCARD get `502 5.3.3`.
    #[default]
    None,
    /// `XSHADOW`: we can be a primary for shadow servers.
    XShadow,
    /// `XSHADOWREQUEST`: peer mode; XSHADOW is accepted too (PROTOCOL.md §7).
    XShadowRequest,
}

/// Per-phase server timeouts (RFC 5321 §4.5.3.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// Waiting for the next command (5 minutes).
    pub command: Duration,
    /// Waiting for more of a message's content during DATA or BDAT (5 minutes).
    pub data: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        Self {
            command: FIVE_MINUTES,
            data: FIVE_MINUTES,
        }
    }
}

/// The phase a server timeout expired in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerPhase {
    /// Between commands.
    Command,
    /// Inside a message's content (DATA or a BDAT chunk).
    Data,
}

/// What a server offers and enforces. Shared by all sessions of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Our name, in the greeting and the EHLO reply.
    pub hostname: String,
    /// Longest command line, CRLF included (default 4096).
    pub max_line: usize,
    /// Largest message in bytes; advertised with SIZE and enforced (`552 5.3.4`).
    pub max_message_size: u64,
    /// Most recipients per message (`452 4.5.3` beyond).
    pub max_recipients: usize,
    /// Errors (5xx replies caused by the client) before `421` and close.
    pub max_errors: usize,
    /// Reply bytes waiting for `poll_transmit` beyond which no further command is executed.
    pub max_pending_output: usize,
    /// Offer PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// Offer CHUNKING and BINARYMIME (RFC 3030).
    pub chunking: bool,
    /// Offer SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// Offer 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// Offer DSN (RFC 3461).
    pub dsn: bool,
    /// Offer STARTTLS (the driver must then be able to start TLS).
    pub starttls: bool,
    /// Which shadow keyword to offer.
    pub shadow: ShadowOffer,
    /// Accept a bare LF as a command line end (never inside DATA). Off by default.
    pub lenient_line_ends: bool,
    /// Per-phase timeouts.
    pub timeouts: ServerTimeouts,
}

impl ServerConfig {
    /// A configuration with the defaults of PROTOCOL.md and RFC 5321 for `hostname`.
    pub fn new(hostname: impl Into<String>) -> Self {
        Self {
            hostname: hostname.into(),
            max_line: crate::wire::DEFAULT_MAX_LINE,
            max_message_size: 36_700_160,
            max_recipients: 1000,
            max_errors: 10,
            max_pending_output: 64 * 1024,
            pipelining: true,
            chunking: true,
            smtputf8: true,
            eight_bit_mime: true,
            dsn: true,
            starttls: false,
            shadow: ShadowOffer::None,
            lenient_line_ends: false,
            timeouts: ServerTimeouts::default(),
        }
    }
}

/// The shadow bookkeeping a received message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowTag {
    /// We are the primary: when the message is handled, queue a discard event with
    /// `discard_id` for `context` (PROTOCOL.md §4).
    Primary {
        /// The shadow server's context from XSHADOW.
        context: Arc<str>,
        /// The `XSHADOW=` id of the message.
        discard_id: Arc<str>,
    },
    /// Peer mode: this is a shadow copy we keep for `primary` (PROTOCOL.md §7).
    CopyFor {
        /// The primary's name from XSHADOWREQUEST.
        primary: Arc<str>,
        /// The primary's database id from XSHADOWREQUEST.
        database_id: Arc<str>,
        /// The `XSHADOW=` id of the message.
        discard_id: Arc<str>,
    },
}

/// A complete message, handed to the caller to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The EHLO / HELO name the client gave (shared by the session's messages).
    pub helo: Arc<str>,
    /// Sender, recipients and parameters; the `XSHADOW=` id is not among them but in `shadow`
    /// (it belongs to the hop the message came over).
    pub envelope: Envelope,
    /// The content, un-stuffed, exactly as the client meant it.
    pub body: Vec<u8>,
    /// Shadow bookkeeping, when the message came tagged with `XSHADOW=` on a shadowed session.
    pub shadow: Option<ShadowTag>,
    /// True when it came with BDAT rather than DATA.
    pub via_bdat: bool,
}

/// Why a session closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client said QUIT.
    Quit,
    /// The client closed the connection.
    PeerClosed,
    /// A timeout expired; `421 4.4.2` was sent.
    TimedOut(ServerPhase),
    /// Too many errors; `421 4.7.0` was sent.
    TooManyErrors,
    /// The client broke framing (a malformed BDAT size): the stream cannot be trusted.
    ProtocolError,
}

/// What the session needs the caller to know or decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A client said EHLO (`extended`) or HELO with this name; informational.
    Hello {
        /// The name given.
        domain: String,
        /// True for EHLO.
        extended: bool,
    },
    /// Decide on the sender in [`ServerSession::pending_envelope`]: `accept_mail` or
    /// `reject_mail`.
    MailFrom,
    /// Decide on the recipient in [`ServerSession::pending_recipient`]: `accept_rcpt` or
    /// `reject_rcpt`.
    RcptTo,
    /// A message is complete: take it with [`ServerSession::take_message`], store it
    /// durably, then `message_stored` (or `message_rejected`). The final reply waits for that
    /// call.
    MessageComplete,
    /// A shadow server introduced itself: `accept_xshadow(database_id)` or `reject_xshadow`.
    XShadow {
        /// The shadow context it gave.
        context: String,
    },
    /// A primary asks us to keep shadow copies (peer mode): `accept_shadow_request(context)`
    /// or `reject_shadow_request`.
    XShadowRequest {
        /// The primary's name.
        primary: String,
        /// The primary's database id.
        database_id: String,
    },
    /// The shadow asks for discard events: `answer_xqdiscard(ids)` with at most `max` ids,
    /// oldest first. The ids stay in doubt until [`ServerEvent::DiscardsConfirmed`].
    XqDiscard {
        /// The shadow context of this session.
        context: String,
        /// The most ids to return.
        max: u32,
    },
    /// The client sent another command after the last XQDISCARD reply with ids, so it read
    /// them: drop those events for good (PROTOCOL.md §5, ours).
    DiscardsConfirmed {
        /// The shadow context of this session.
        context: String,
    },
    /// `220 Ready to start TLS` is queued: write it, run the TLS handshake on this
    /// connection, then call `tls_established`.
    StartTls,
    /// A timeout expired; a `421` is queued and the session is closing.
    TimedOut(ServerPhase),
    /// The session is over: write what `poll_transmit` still has, then close.
    Closed(CloseReason),
}

/// The decision the session waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Nothing,
    Mail,
    Rcpt,
    Message,
    XShadow,
    XShadowRequest,
    XqDiscard { max: u32 },
    Tls,
}

impl Waiting {
    fn describe(self) -> &'static str {
        match self {
            Self::Nothing => "not waiting for a decision",
            Self::Mail => "waiting for a MAIL decision",
            Self::Rcpt => "waiting for a RCPT decision",
            Self::Message => "waiting for a message to be stored",
            Self::XShadow => "waiting for an XSHADOW decision",
            Self::XShadowRequest => "waiting for an XSHADOWREQUEST decision",
            Self::XqDiscard { .. } => "waiting for XQDISCARD ids",
            Self::Tls => "waiting for the TLS handshake",
        }
    }
}

/// How the client greeted us.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hello {
    None,
    Helo(Arc<str>),
    Ehlo(Arc<str>),
}

/// The shadow state of the session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shadow {
    None,
    /// XSHADOW was accepted: we are the primary for this context.
    Primary {
        context: Arc<str>,
    },
    /// XSHADOWREQUEST was accepted: we keep copies for this primary.
    CopyFor {
        primary: Arc<str>,
        database_id: Arc<str>,
    },
}

/// How incoming bytes are read.
#[derive(Debug)]
enum Mode {
    Commands,
    Data(DotReader),
    /// A BDAT chunk; `refusal` is the reply owed once its bytes were read and thrown away.
    Bdat {
        chunk: BdatChunk,
        refusal: Option<Reply<'static>>,
    },
}

/// A mail transaction in progress.
#[derive(Debug)]
struct Transaction {
    /// The envelope, without the `XSHADOW=` id (that is in `shadow`).
    envelope: Envelope,
    /// The message's shadow bookkeeping, made when MAIL is read.
    shadow: Option<ShadowTag>,
    pending_recipient: Option<Recipient>,
    body: Vec<u8>,
    size: MessageSize,
    /// A BDAT chunk was received: DATA is now out of sequence (and the message came by BDAT).
    bdat_started: bool,
}

/// The receiving side of one SMTP connection, as a pure state machine.
#[derive(Debug)]
pub struct ServerSession {
    config: std::sync::Arc<ServerConfig>,
    may_shadow: bool,
    tls_active: bool,
    hello: Hello,
    shadow: Shadow,
    transaction: Option<Transaction>,
    mode: Mode,
    waiting: Waiting,
    /// An XQDISCARD reply with ids was sent and not yet proven read.
    discards_in_doubt: bool,
    errors: usize,
    closed: bool,
    lines: LineReader,
    input: Vec<u8>,
    /// Bytes at the start of `input` already handled; `input` is empty when all are.
    input_at: usize,
    output: Vec<u8>,
    events: std::collections::VecDeque<ServerEvent>,
    now: Instant,
    last_activity: Instant,
}

fn enhanced(class: u8, subject: u16, detail: u16) -> Option<EnhancedStatus> {
    Some(EnhancedStatus::new(class, subject, detail))
}

fn reply(code: u16, status: Option<EnhancedStatus>, text: &'static str) -> Reply<'static> {
    Reply::new(code, status, text)
}

impl ServerSession {
    /// A session for a new connection; queues the `220` greeting. `may_shadow` says whether
    /// this peer may use XSHADOW / XSHADOWREQUEST (otherwise `550 5.7.1 Not authorized`).
    pub fn new(config: std::sync::Arc<ServerConfig>, may_shadow: bool, now: Instant) -> Self {
        let lines = LineReader::new(config.max_line).lenient(config.lenient_line_ends);
        let mut session = Self {
            config,
            may_shadow,
            tls_active: false,
            hello: Hello::None,
            shadow: Shadow::None,
            transaction: None,
            mode: Mode::Commands,
            waiting: Waiting::Nothing,
            discards_in_doubt: false,
            errors: 0,
            closed: false,
            lines,
            input: Vec::new(),
            input_at: 0,
            output: Vec::with_capacity(512),
            events: std::collections::VecDeque::new(),
            now,
            last_activity: now,
        };
        // `220 <hostname> ESMTP xshadow`, written without building a `Reply`.
        session.output.extend_from_slice(b"220 ");
        session
            .output
            .extend_from_slice(session.config.hostname.as_bytes());
        session.output.extend_from_slice(b" ESMTP xshadow\r\n");
        session
    }

    // ---- the driver's side -------------------------------------------------------------

    /// Takes bytes the client sent. Bytes that cannot be handled yet (pipelined commands
    /// behind a pending decision) are kept and handled later; stop reading while
    /// [`ServerSession::may_read`] is false to keep that bounded.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.now = now;
        if self.closed || data.is_empty() || self.waiting == Waiting::Tls {
            return;
        }
        self.last_activity = now;
        if self.input.is_empty() {
            let used = self.process(data);
            if self.keeps_input() {
                self.input.extend_from_slice(&data[used..]);
            }
        } else {
            // Handled bytes go before new ones are appended, so `input` stays bounded.
            self.input.drain(..self.input_at);
            self.input_at = 0;
            self.input.extend_from_slice(data);
            self.process_buffered();
        }
    }

    /// Takes bytes the client sent, but only up to where the session waits for a decision
    /// or for its replies to be drained; returns how many it used. Less than all only while
    /// [`ServerSession::may_read`] is false: the session keeps no copy of the rest. A caller
    /// that decides at once answers (or drains) and offers the rest again; bytes left behind a
    /// decision that is not made at once go to [`ServerSession::handle_input`], which keeps
    /// them. While the session still holds bytes from `handle_input`, these join them.
    pub fn handle_input_until_decision(&mut self, data: &[u8], now: Instant) -> usize {
        if !self.input.is_empty() || !self.keeps_input() {
            // Behind held bytes (order), or dropped as `handle_input` drops them.
            self.handle_input(data, now);
            return data.len();
        }
        self.now = now;
        if data.is_empty() {
            return 0;
        }
        self.last_activity = now;
        let used = self.process(data);
        if !self.keeps_input() {
            // Closed, or STARTTLS accepted: what followed is dropped, as `handle_input` does
            // (plaintext pipelined behind STARTTLS must not reach the TLS session).
            return data.len();
        }
        if self.waiting == Waiting::Nothing && self.output.len() < self.config.max_pending_output {
            // Stopped inside a command line: its start is kept, as `handle_input` keeps it.
            self.input.extend_from_slice(&data[used..]);
            return data.len();
        }
        used
    }

    /// The client closed its side of the connection.
    pub fn handle_eof(&mut self, now: Instant) {
        self.now = now;
        if !self.closed {
            self.close(CloseReason::PeerClosed);
        }
    }

    /// Fires an expired timer: `421 4.4.2` and close. Early calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        let phase = self.phase();
        let text = format!(
            "{} Timeout waiting for client, closing",
            self.config.hostname
        );
        self.send(&Reply::new(421, enhanced(4, 4, 2), text));
        self.events.push_back(ServerEvent::TimedOut(phase));
        self.close(CloseReason::TimedOut(phase));
    }

    /// When to call [`ServerSession::handle_timeout`]; `None` while the session waits for the
    /// caller (the client is then waiting for us) or is closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed || self.waiting != Waiting::Nothing {
            return None;
        }
        let timeout = match self.phase() {
            ServerPhase::Command => self.config.timeouts.command,
            ServerPhase::Data => self.config.timeouts.data,
        };
        Some(self.last_activity + timeout)
    }

    /// Appends pending reply bytes to `out`; returns how many, or `None` if there were none.
    /// Draining may let held-back pipelined commands run, so drain events again afterwards.
    #[must_use]
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> Option<usize> {
        if self.output.is_empty() {
            return None;
        }
        let n = self.output.len();
        out.append(&mut self.output);
        if !self.input.is_empty() {
            self.process_buffered();
        }
        Some(n)
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// False while input is being held back (a decision is pending, replies are piling up,
    /// or the session is closed): stop reading the socket until it is true again.
    pub fn may_read(&self) -> bool {
        !self.closed
            && self.waiting == Waiting::Nothing
            && self.output.len() < self.config.max_pending_output
            && self.input.len() - self.input_at < self.config.max_line.max(64 * 1024)
    }

    /// True once the session has closed (QUIT, timeout, too many errors, peer gone).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True after `tls_established`.
    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    /// The envelope being built: the sender while [`ServerEvent::MailFrom`] waits, and the
    /// accepted recipients so far (without the `XSHADOW=` id, see [`ReceivedMessage::shadow`]).
    pub fn pending_envelope(&self) -> Option<&Envelope> {
        self.transaction.as_ref().map(|t| &t.envelope)
    }

    /// The recipient [`ServerEvent::RcptTo`] asks about.
    pub fn pending_recipient(&self) -> Option<&Recipient> {
        self.transaction.as_ref()?.pending_recipient.as_ref()
    }

    /// Hands over the message [`ServerEvent::MessageComplete`] announced: once, between that
    /// event and `message_stored` / `message_rejected` (`None` otherwise).
    pub fn take_message(&mut self) -> Option<ReceivedMessage> {
        // The complete message stays in its transaction until now: one move, not three.
        if self.waiting != Waiting::Message {
            return None;
        }
        let t = self.transaction.take()?;
        let helo = match &self.hello {
            Hello::None => Arc::from(""),
            Hello::Helo(name) | Hello::Ehlo(name) => Arc::clone(name),
        };
        Some(ReceivedMessage {
            helo,
            envelope: t.envelope,
            body: t.body,
            shadow: t.shadow,
            via_bdat: t.bdat_started,
        })
    }

    /// The shadow context accepted with XSHADOW in this session, if any.
    pub fn shadow_context(&self) -> Option<&str> {
        match &self.shadow {
            Shadow::Primary { context } => Some(context),
            _ => None,
        }
    }

    // ---- decisions ---------------------------------------------------------------------

    fn expect(&self, want: Waiting, call: &'static str) -> Result<(), ApiError> {
        let same = std::mem::discriminant(&self.waiting) == std::mem::discriminant(&want);
        if same && !self.closed {
            Ok(())
        } else {
            let state = if self.closed {
                "closed"
            } else {
                self.waiting.describe()
            };
            Err(ApiError { call, state })
        }
    }

    /// Sends the reply that ends a decision and resumes held-back input.
    fn decided(&mut self, answer: &Reply<'_>, now: Instant) {
        self.send(answer);
        self.resume(now);
    }

    /// [`ServerSession::decided`] with a fixed reply, already in wire form.
    fn decided_with(&mut self, answer: &[u8], now: Instant) {
        self.output.extend_from_slice(answer);
        self.resume(now);
    }

    /// Ends the wait for a decision and handles held-back input.
    fn resume(&mut self, now: Instant) {
        self.now = now;
        self.last_activity = now;
        self.waiting = Waiting::Nothing;
        if !self.input.is_empty() {
            self.process_buffered();
        }
    }

    /// Accepts the sender: `250 2.1.0 Sender OK`.
    pub fn accept_mail(&mut self, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::Mail, "accept_mail")?;
        self.decided_with(SENDER_OK, now);
        Ok(())
    }

    /// Refuses the sender with `answer`; the transaction ends.
    pub fn reject_mail(&mut self, answer: Reply<'_>, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::Mail, "reject_mail")?;
        self.transaction = None;
        self.decided(&answer, now);
        Ok(())
    }

    /// Accepts the pending recipient: `250 2.1.5 Recipient OK`.
    pub fn accept_rcpt(&mut self, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::Rcpt, "accept_rcpt")?;
        if let Some(t) = self.transaction.as_mut()
            && let Some(r) = t.pending_recipient.take()
        {
            t.envelope.recipients.push(r);
        }
        self.decided_with(RECIPIENT_OK, now);
        Ok(())
    }

    /// Refuses the pending recipient with `answer` (for example `550 5.7.1 Relaying denied`).
    pub fn reject_rcpt(&mut self, answer: Reply<'_>, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::Rcpt, "reject_rcpt")?;
        if let Some(t) = self.transaction.as_mut() {
            t.pending_recipient = None;
        }
        self.decided(&answer, now);
        Ok(())
    }

    /// The message is stored durably: `250 2.6.0 Queued mail for delivery`.
    pub fn message_stored(&mut self, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::Message, "message_stored")?;
        self.transaction = None;
        self.decided_with(QUEUED, now);
        Ok(())
    }

    /// The message was not taken (for example `452 4.3.1 Insufficient system storage`).
    pub fn message_rejected(&mut self, answer: Reply<'_>, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::Message, "message_rejected")?;
        self.transaction = None;
        self.decided(&answer, now);
        Ok(())
    }

    /// Accepts the shadow server: `250 <database_id>` (PROTOCOL.md §3).
    pub fn accept_xshadow(&mut self, database_id: &str, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::XShadow, "accept_xshadow")?;
        self.decided(&Reply::xshadow_accepted(database_id), now);
        Ok(())
    }

    /// Refuses the shadow server with `answer`; the session goes on unshadowed.
    pub fn reject_xshadow(&mut self, answer: Reply<'_>, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::XShadow, "reject_xshadow")?;
        self.shadow = Shadow::None;
        self.decided(&answer, now);
        Ok(())
    }

    /// Accepts to keep copies for the requesting primary: `250 <our context>` (PROTOCOL.md §7).
    pub fn accept_shadow_request(&mut self, context: &str, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::XShadowRequest, "accept_shadow_request")?;
        self.decided(&Reply::xshadowrequest_accepted(context), now);
        Ok(())
    }

    /// Refuses to keep copies for the requesting primary.
    pub fn reject_shadow_request(
        &mut self,
        answer: Reply<'_>,
        now: Instant,
    ) -> Result<(), ApiError> {
        self.expect(Waiting::XShadowRequest, "reject_shadow_request")?;
        self.shadow = Shadow::None;
        self.decided(&answer, now);
        Ok(())
    }

    /// Answers XQDISCARD with these discard ids, oldest first: `251` when there are none,
    /// else a `250` list of at most `max` of them (PROTOCOL.md §5). Returns how many were
    /// sent; those stay in doubt until [`ServerEvent::DiscardsConfirmed`].
    pub fn answer_xqdiscard<S: AsRef<str>>(
        &mut self,
        ids: &[S],
        now: Instant,
    ) -> Result<usize, ApiError> {
        self.expect(Waiting::XqDiscard { max: 0 }, "answer_xqdiscard")?;
        let Waiting::XqDiscard { max } = self.waiting else {
            return Ok(0);
        };
        let take = ids.len().min(usize::try_from(max).unwrap_or(usize::MAX));
        let sent = &ids[..take];
        self.discards_in_doubt = !sent.is_empty();
        let answer = Reply::discard_ids(sent.iter().map(AsRef::as_ref));
        self.decided(&answer, now);
        Ok(take)
    }

    /// The TLS handshake after STARTTLS finished: the session starts over, before EHLO, and
    /// forgets its shadow state (RFC 3207; PROTOCOL.md §3).
    pub fn tls_established(&mut self, now: Instant) -> Result<(), ApiError> {
        self.expect(Waiting::Tls, "tls_established")?;
        self.tls_active = true;
        self.hello = Hello::None;
        self.shadow = Shadow::None;
        self.transaction = None;
        self.input.clear();
        self.input_at = 0;
        self.now = now;
        self.last_activity = now;
        self.waiting = Waiting::Nothing;
        Ok(())
    }

    // ---- the machine -------------------------------------------------------------------

    fn phase(&self) -> ServerPhase {
        match self.mode {
            Mode::Commands => ServerPhase::Command,
            Mode::Data(_) | Mode::Bdat { .. } => ServerPhase::Data,
        }
    }

    fn send(&mut self, answer: &Reply<'_>) {
        answer.write_to(&mut self.output);
    }

    fn close(&mut self, reason: CloseReason) {
        self.closed = true;
        if self.waiting != Waiting::Message {
            // A complete message stays until `take_message`: its event came before this one.
            self.transaction = None;
        }
        self.mode = Mode::Commands;
        self.input = Vec::new();
        self.input_at = 0;
        self.events.push_back(ServerEvent::Closed(reason));
    }

    fn process_buffered(&mut self) {
        let input = std::mem::take(&mut self.input);
        let start = std::mem::take(&mut self.input_at);
        let used = self.process(input.get(start..).unwrap_or_default());
        if !self.keeps_input() {
            return;
        }
        // Keep the allocation, and the bytes still to handle where they are: an offset
        // instead of moving them to the front (a pipelined body would move once per
        // decision).
        let mut input = input;
        let at = start + used;
        if at >= input.len() {
            input.clear();
        } else {
            self.input_at = at;
        }
        if !self.input.is_empty() {
            // Input that arrived while processing goes behind what is left.
            input.drain(..self.input_at);
            self.input_at = 0;
            input.append(&mut self.input);
        }
        self.input = input;
    }

    /// Handles as much of `buf` as the state allows; returns how many bytes were used.
    fn process(&mut self, buf: &[u8]) -> usize {
        let mut at = 0;
        while !self.closed
            && self.waiting == Waiting::Nothing
            && self.output.len() < self.config.max_pending_output
        {
            let rest = &buf[at..];
            let used = match &mut self.mode {
                Mode::Commands => {
                    let (frame, used) = self.lines.read(rest);
                    match frame {
                        Frame::NeedMore => {
                            at += used;
                            break;
                        }
                        Frame::TooLong => {
                            self.confirm_discards();
                            self.error(&Reply::line_too_long());
                        }
                        Frame::Line(line) => {
                            self.confirm_discards();
                            self.command(line);
                        }
                    }
                    used
                }
                Mode::Data(reader) => {
                    if rest.is_empty() {
                        break;
                    }
                    let Some(t) = self.transaction.as_mut() else {
                        self.mode = Mode::Commands;
                        continue;
                    };
                    let progress = reader.read(rest, &mut t.body);
                    if progress.done {
                        let over = reader.is_over_limit();
                        self.mode = Mode::Commands;
                        self.data_done(over);
                    }
                    progress.consumed
                }
                Mode::Bdat { chunk, refusal } => {
                    let (data, complete) = chunk.take(rest);
                    let used = data.len();
                    if refusal.is_none()
                        && let Some(t) = self.transaction.as_mut()
                    {
                        if !t.size.would_exceed(data.len() as u64) {
                            if t.body.capacity() - t.body.len() < data.len() {
                                // Room for the rest of the chunk, paid for by what came.
                                let rest = data.len() as u64 + chunk.remaining();
                                reserve_body(&mut t.body, rest, data.len(), t.size.limit());
                            }
                            t.body.extend_from_slice(data);
                        }
                        t.size.add(data.len() as u64);
                    }
                    if complete {
                        let (chunk, refusal) = (*chunk, refusal.take());
                        self.mode = Mode::Commands;
                        self.bdat_done(chunk, refusal);
                    } else if used == 0 {
                        break;
                    }
                    used
                }
            };
            at += used;
        }
        at
    }

    /// False once nothing more of this stream will be read: after close, and after
    /// STARTTLS, where pipelined plaintext must not survive into the TLS session.
    fn keeps_input(&self) -> bool {
        !self.closed && self.waiting != Waiting::Tls
    }

    fn confirm_discards(&mut self) {
        if std::mem::take(&mut self.discards_in_doubt)
            && let Shadow::Primary { context } = &self.shadow
        {
            let context = context.to_string();
            self.events
                .push_back(ServerEvent::DiscardsConfirmed { context });
        }
    }

    /// Sends an error reply caused by the client and counts it; too many close the session.
    fn error(&mut self, answer: &Reply<'_>) {
        self.send(answer);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            let text = format!("{} Too many errors, closing", self.config.hostname);
            self.send(&Reply::new(421, enhanced(4, 7, 0), text));
            self.close(CloseReason::TooManyErrors);
        }
    }

    fn wait(&mut self, waiting: Waiting, event: ServerEvent) {
        self.waiting = waiting;
        self.events.push_back(event);
    }

    fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    fn advertises_xshadow(&self) -> bool {
        self.config.shadow != ShadowOffer::None
    }

    /// Every command's transition, in one place.
    fn command(&mut self, line: &[u8]) {
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(err) => return self.refuse_malformed(&err),
        };
        match command {
            Command::Ehlo { domain } => self.hello(domain.into_owned(), true),
            Command::Helo { domain } => self.hello(domain.into_owned(), false),
            Command::Mail { from, mut params } => {
                if let Some(refusal) = self.mail_refusal(&from, &params) {
                    return self.error(&refusal);
                }
                // The `XSHADOW=` id is made shared once, for the tag, not owned for the
                // envelope first.
                let shadow = params.xshadow.take().and_then(|id| self.shadow_tag(&id));
                let size = MessageSize::new(self.config.max_message_size);
                self.transaction = Some(Transaction {
                    envelope: Envelope {
                        from: from.into_owned(),
                        params: params.into_owned(),
                        recipients: Recipients::new(),
                    },
                    shadow,
                    pending_recipient: None,
                    body: Vec::new(),
                    size,
                    bdat_started: false,
                });
                self.wait(Waiting::Mail, ServerEvent::MailFrom);
            }
            Command::Rcpt { to, params } => {
                if let Some(refusal) = self.rcpt_refusal(&to, &params) {
                    // Without a transaction this follows a refused MAIL in a pipeline
                    // (RFC 2920): expected, so it does not count toward `max_errors`.
                    if self.transaction.is_none() {
                        return self.send(&refusal);
                    }
                    return self.error(&refusal);
                }
                if let Some(t) = self.transaction.as_mut() {
                    t.pending_recipient = Some(Recipient {
                        to: to.into_owned(),
                        params: params.into_owned(),
                    });
                }
                self.wait(Waiting::Rcpt, ServerEvent::RcptTo);
            }
            Command::Data => match &self.transaction {
                // After a refused MAIL in a pipeline this is expected (RFC 2920): not an error.
                None => self.send(&reply(503, enhanced(5, 5, 1), "Need MAIL command")),
                Some(t)
                    if t.bdat_started || t.envelope.params.body == Some(BodyType::BinaryMime) =>
                {
                    self.error(&Reply::bad_sequence())
                }
                Some(t) if t.envelope.recipients.is_empty() => {
                    self.error(&reply(554, enhanced(5, 5, 1), "No valid recipients"))
                }
                Some(_) => {
                    if let Some(t) = self.transaction.as_mut() {
                        // The declared size, when given, saves growing the body step by step.
                        let hint = t.envelope.params.size.unwrap_or(0);
                        reserve_body(&mut t.body, hint, 0, self.config.max_message_size);
                    }
                    self.output.extend_from_slice(START_MAIL_INPUT);
                    self.mode = Mode::Data(DotReader::with_limit(self.config.max_message_size));
                }
            },
            Command::Bdat { size, last } => {
                let refusal = if !self.config.chunking {
                    Some(reply(502, enhanced(5, 5, 1), "Command not implemented"))
                } else {
                    match &self.transaction {
                        None => Some(reply(503, enhanced(5, 5, 1), "Need MAIL command")),
                        Some(t) if t.envelope.recipients.is_empty() => {
                            Some(reply(554, enhanced(5, 5, 1), "No valid recipients"))
                        }
                        Some(_) => None,
                    }
                };
                if let Some(t) = self.transaction.as_mut().filter(|_| refusal.is_none()) {
                    // Room is made as the chunk's bytes come (see `reserve_body`).
                    t.bdat_started = true;
                }
                let chunk = BdatChunk::new(size, last);
                self.mode = Mode::Bdat { chunk, refusal };
            }
            Command::Rset => {
                self.transaction = None;
                self.output.extend_from_slice(OK);
            }
            Command::Noop => self.output.extend_from_slice(OK),
            Command::Quit => {
                self.send(&reply(
                    221,
                    enhanced(2, 0, 0),
                    "Service closing transmission channel",
                ));
                self.close(CloseReason::Quit);
            }
            Command::Vrfy { .. } => self.send(&reply(
                252,
                enhanced(2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Help { .. } => self.send(&reply(
                214,
                enhanced(2, 0, 0),
                "EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS XSHADOW XQDISCARD",
            )),
            Command::StartTls => {
                if !self.config.starttls || self.tls_active {
                    self.error(&reply(502, enhanced(5, 5, 1), "Command not implemented"))
                } else if self.in_transaction() {
                    self.error(&Reply::bad_sequence())
                } else {
                    self.send(&reply(220, enhanced(2, 0, 0), "Ready to start TLS"));
                    // Anything pipelined behind STARTTLS was sent in the clear: it is dropped
                    // (see `keeps_input`).
                    self.waiting = Waiting::Tls;
                    self.events.push_back(ServerEvent::StartTls);
                }
            }
            Command::XShadow { context } => {
                if let Some(refusal) = self.xshadow_refusal(false) {
                    return self.error(&refusal);
                }
                let context = context.into_owned();
                self.shadow = Shadow::Primary {
                    context: context.as_str().into(),
                };
                self.wait(Waiting::XShadow, ServerEvent::XShadow { context });
            }
            Command::XShadowRequest {
                primary,
                database_id,
            } => {
                if let Some(refusal) = self.xshadow_refusal(true) {
                    return self.error(&refusal);
                }
                let (primary, database_id) = (primary.into_owned(), database_id.into_owned());
                self.shadow = Shadow::CopyFor {
                    primary: primary.as_str().into(),
                    database_id: database_id.as_str().into(),
                };
                self.wait(
                    Waiting::XShadowRequest,
                    ServerEvent::XShadowRequest {
                        primary,
                        database_id,
                    },
                );
            }
            Command::XqDiscard { max } => {
                if let Some(refusal) = self.xqdiscard_refusal() {
                    return self.error(&refusal);
                }
                if let Shadow::Primary { context } = &self.shadow {
                    let context = context.to_string();
                    self.wait(
                        Waiting::XqDiscard { max },
                        ServerEvent::XqDiscard { context, max },
                    );
                }
            }
            Command::Unknown { .. } => {
                self.error(&reply(500, enhanced(5, 5, 1), "Command unrecognized"))
            }
        }
    }

    /// A known verb with bad arguments: the shadow verbs check the session state first
    /// (PROTOCOL.md §3, §5, §7); BDAT without a usable size leaves the stream unframed.
    fn refuse_malformed(&mut self, err: &CommandError) {
        use crate::wire::command::Verb;
        let state_refusal = match err.verb {
            Some(Verb::XShadow) => self.xshadow_refusal(false),
            Some(Verb::XShadowRequest) => self.xshadow_refusal(true),
            Some(Verb::XqDiscard) => self.xqdiscard_refusal(),
            _ => None,
        };
        self.error(&state_refusal.unwrap_or_else(|| err.reply()));
        if err.verb == Some(Verb::Bdat) && !self.closed {
            self.close(CloseReason::ProtocolError);
        }
    }

    fn hello(&mut self, domain: String, extended: bool) {
        // EHLO and HELO end any transaction (RFC 5321 §4.1.4); shadow state stays (ours).
        self.transaction = None;
        // Both replies borrow the configured hostname (fields apart from the output).
        if extended {
            let mut reply = EhloReply::new(self.config.hostname.as_str());
            reply.keywords = self.keywords();
            reply.to_reply().write_to(&mut self.output);
        } else {
            Reply::new(250, None, self.config.hostname.as_str()).write_to(&mut self.output);
        }
        self.hello = if extended {
            Hello::Ehlo(domain.as_str().into())
        } else {
            Hello::Helo(domain.as_str().into())
        };
        self.events
            .push_back(ServerEvent::Hello { domain, extended });
    }

    fn keywords<'k>(&self) -> EhloKeywords<'k> {
        let c = &self.config;
        EhloKeywords {
            pipelining: c.pipelining,
            size: Some(SizeLimit::Max(c.max_message_size)),
            eight_bit_mime: c.eight_bit_mime,
            chunking: c.chunking,
            binary_mime: c.chunking,
            smtputf8: c.smtputf8,
            enhanced_status_codes: true,
            dsn: c.dsn,
            starttls: c.starttls && !self.tls_active,
            xshadow: c.shadow == ShadowOffer::XShadow,
            xshadow_request: c.shadow == ShadowOffer::XShadowRequest,
            other: Default::default(),
        }
    }

    /// PROTOCOL.md §3 (and §7 for XSHADOWREQUEST), in the table's order.
    fn xshadow_refusal(&self, request: bool) -> Option<Reply<'static>> {
        let already = match &self.shadow {
            Shadow::None => false,
            // Peer mode repeats XSHADOWREQUEST after RSET for each message (PROTOCOL.md §7).
            Shadow::CopyFor { .. } => !request,
            Shadow::Primary { .. } => true,
        };
        let advertised = if request {
            self.config.shadow == ShadowOffer::XShadowRequest
        } else {
            self.advertises_xshadow()
        };
        if already {
            Some(Reply::bad_sequence())
        } else if !matches!(self.hello, Hello::Ehlo(_)) {
            Some(Reply::send_ehlo_first())
        } else if self.in_transaction() {
            Some(Reply::bad_sequence())
        } else if !advertised {
            Some(Reply::command_not_implemented())
        } else if !self.may_shadow {
            Some(Reply::not_authorized())
        } else {
            None
        }
    }

    /// PROTOCOL.md §5, in the table's order.
    fn xqdiscard_refusal(&self) -> Option<Reply<'static>> {
        if !self.advertises_xshadow() {
            Some(Reply::command_not_implemented())
        } else if !matches!(self.shadow, Shadow::Primary { .. }) || self.in_transaction() {
            Some(Reply::bad_sequence())
        } else {
            None
        }
    }

    fn mail_refusal(
        &self,
        from: &ReversePath<'_>,
        params: &crate::wire::params::MailParams<'_>,
    ) -> Option<Reply<'static>> {
        let c = &self.config;
        if self.hello == Hello::None {
            return Some(reply(503, enhanced(5, 5, 1), "Send HELO or EHLO first"));
        }
        if self.in_transaction() {
            return Some(reply(503, enhanced(5, 5, 1), "Nested MAIL command"));
        }
        if params.xshadow.is_some() && self.shadow == Shadow::None {
            return Some(Reply::invalid_arguments());
        }
        if params.size.is_some_and(|size| size > c.max_message_size) {
            return Some(size_exceeded());
        }
        let unsupported = (params.body == Some(BodyType::BinaryMime) && !c.chunking)
            || (params.body == Some(BodyType::EightBitMime) && !c.eight_bit_mime)
            || (params.smtputf8 && !c.smtputf8)
            || ((params.ret.is_some() || params.envid.is_some()) && !c.dsn)
            || !params.other.is_empty();
        if unsupported {
            return Some(reply(555, enhanced(5, 5, 4), "Unsupported parameter"));
        }
        if from.mailbox().is_some_and(|m| m.needs_smtputf8()) && !params.smtputf8 {
            return Some(non_ascii_needs_smtputf8());
        }
        None
    }

    fn rcpt_refusal(
        &self,
        to: &ForwardPath<'_>,
        params: &crate::wire::params::RcptParams<'_>,
    ) -> Option<Reply<'static>> {
        let Some(t) = &self.transaction else {
            return Some(reply(503, enhanced(5, 5, 1), "Need MAIL command"));
        };
        if t.bdat_started {
            return Some(Reply::bad_sequence());
        }
        if t.envelope.recipients.len() >= self.config.max_recipients {
            return Some(reply(452, enhanced(4, 5, 3), "Too many recipients"));
        }
        let dsn = params.notify.is_some() || params.orcpt.is_some();
        if (dsn && !self.config.dsn) || !params.other.is_empty() {
            return Some(reply(555, enhanced(5, 5, 4), "Unsupported parameter"));
        }
        let utf8 = matches!(to, ForwardPath::Mailbox(m) if m.needs_smtputf8());
        if utf8 && !t.envelope.params.smtputf8 {
            return Some(non_ascii_needs_smtputf8());
        }
        None
    }

    /// The end of DATA: too big, or complete and handed to the caller.
    fn data_done(&mut self, over_limit: bool) {
        if over_limit {
            self.transaction = None;
            return self.send(&size_exceeded());
        }
        self.complete();
    }

    /// The end of one BDAT chunk.
    fn bdat_done(&mut self, chunk: BdatChunk, refusal: Option<Reply<'static>>) {
        if let Some(refusal) = refusal {
            if self.transaction.is_none() {
                return self.send(&refusal);
            }
            return self.error(&refusal);
        }
        let over = self
            .transaction
            .as_ref()
            .is_some_and(|t| t.size.is_over_limit());
        if !chunk.is_last() {
            // `250 2.0.0 <size> octets received`, without formatting a text per chunk.
            self.output.extend_from_slice(b"250 2.0.0 ");
            crate::wire::write_decimal(&mut self.output, chunk.size());
            return self.output.extend_from_slice(b" octets received\r\n");
        }
        if over {
            self.transaction = None;
            return self.send(&size_exceeded());
        }
        self.complete();
    }

    /// The shadow tag of a message sent with `XSHADOW=<discard_id>` in this session.
    fn shadow_tag(&self, discard_id: &str) -> Option<ShadowTag> {
        match &self.shadow {
            Shadow::None => None,
            Shadow::Primary { context } => Some(ShadowTag::Primary {
                context: context.clone(),
                discard_id: discard_id.into(),
            }),
            Shadow::CopyFor {
                primary,
                database_id,
            } => Some(ShadowTag::CopyFor {
                primary: primary.clone(),
                database_id: database_id.clone(),
                discard_id: discard_id.into(),
            }),
        }
    }

    /// The transaction's message is complete; it stays there until `take_message`.
    fn complete(&mut self) {
        if self.transaction.is_some() {
            self.wait(Waiting::Message, ServerEvent::MessageComplete);
        }
    }
}

/// The replies every accepted message gets, in wire form: fixed texts, so they are written
/// without building a [`Reply`] (a test checks each against what `Reply` writes).
const SENDER_OK: &[u8] = b"250 2.1.0 Sender OK\r\n";
const RECIPIENT_OK: &[u8] = b"250 2.1.5 Recipient OK\r\n";
const QUEUED: &[u8] = b"250 2.6.0 Queued mail for delivery\r\n";
const START_MAIL_INPUT: &[u8] = b"354 Start mail input; end with <CRLF>.<CRLF>\r\n";
const OK: &[u8] = b"250 2.0.0 OK\r\n";

/// Most bytes an announcement alone may reserve for a body: it costs the client nothing, so
/// it must not buy much memory. Beyond this, a body is reserved ahead by at most the bytes the
/// client has sent, so a session holds no more than about twice what was sent, plus this.
const MAX_BODY_RESERVE: u64 = 64 * 1024;

/// Makes room in `body` for `announced` more bytes (a declared SIZE, or the rest of a BDAT
/// chunk of which `arrived` bytes are in hand), within the message size limit and the larger
/// of [`MAX_BODY_RESERVE`] and what the client has sent (the body and `arrived`). The first
/// reservation adds [`TRACE_ROOM`]; on an empty body it is one allocation, no copy.
fn reserve_body(body: &mut Vec<u8>, announced: u64, arrived: usize, max_message_size: u64) {
    let held = body.len() as u64;
    let paid = held + arrived as u64;
    let room = max_message_size.saturating_sub(held);
    let trace = if body.is_empty() { TRACE_ROOM } else { 0 };
    let extra = announced.min(room).min(MAX_BODY_RESERVE.max(paid)) + trace;
    body.reserve(usize::try_from(extra).unwrap_or(0));
}

/// Room reserved beyond the body for the `Received:` header a relay puts in front of it, so
/// that adding it moves the bytes in place instead of copying them to a new buffer.
const TRACE_ROOM: u64 = 256;

fn size_exceeded() -> Reply<'static> {
    reply(
        552,
        enhanced(5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}

fn non_ascii_needs_smtputf8() -> Reply<'static> {
    reply(
        553,
        enhanced(5, 6, 7),
        "Non-ASCII addresses require SMTPUTF8",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_size_reserves_little_until_the_bytes_come() {
        let (limit, big) = (1 << 30, 1 << 29);
        // An announcement alone: at most MAX_BODY_RESERVE (and the trace room).
        let mut body = Vec::new();
        reserve_body(&mut body, big, 0, limit);
        let first = body.capacity() as u64;
        assert!(first >= MAX_BODY_RESERVE + TRACE_ROOM);
        assert!(first < 2 * MAX_BODY_RESERVE, "{first}");
        assert!(first <= 128 * 1024, "an announcement bought {first} bytes");
        // A small announcement reserves what it says.
        let mut small = Vec::new();
        reserve_body(&mut small, 1500, 0, limit);
        assert!(small.capacity() as u64 >= 1500 + TRACE_ROOM);
        assert!((small.capacity() as u64) < MAX_BODY_RESERVE);
        // With 200 KiB received, the next chunk may reserve as much again, not more.
        let mut held = vec![0u8; 200 * 1024];
        held.shrink_to_fit();
        reserve_body(&mut held, big, 0, limit);
        assert!(held.capacity() >= 400 * 1024);
        assert!(held.capacity() < 1024 * 1024, "{}", held.capacity());
        // Bytes in hand pay for their own room: a 100 KiB chunk that came whole gets it at once.
        let mut arrived = Vec::new();
        reserve_body(&mut arrived, 100 * 1024, 100 * 1024, limit);
        let whole = arrived.capacity() as u64;
        assert!(
            (100 * 1024 + TRACE_ROOM..128 * 1024).contains(&whole),
            "{whole}"
        );
        // Never beyond the message size limit.
        let mut capped = Vec::new();
        reserve_body(&mut capped, big, 0, 1000);
        assert!((capped.capacity() as u64) < MAX_BODY_RESERVE);
    }

    fn recipient(session: &ServerSession) -> String {
        match session.pending_recipient().map(|r| &r.to) {
            Some(ForwardPath::Mailbox(m)) => m.to_string(),
            other => panic!("no pending recipient: {other:?}"),
        }
    }

    #[test]
    fn the_fixed_replies_are_what_reply_writes() {
        let cases = [
            (SENDER_OK, reply(250, enhanced(2, 1, 0), "Sender OK")),
            (RECIPIENT_OK, reply(250, enhanced(2, 1, 5), "Recipient OK")),
            (
                QUEUED,
                reply(250, enhanced(2, 6, 0), "Queued mail for delivery"),
            ),
            (
                START_MAIL_INPUT,
                reply(354, None, "Start mail input; end with <CRLF>.<CRLF>"),
            ),
            (OK, reply(250, enhanced(2, 0, 0), "OK")),
        ];
        for (bytes, reply) in cases {
            assert_eq!(
                String::from_utf8_lossy(bytes),
                String::from_utf8_lossy(&reply.to_bytes())
            );
        }
        // A chunk that is not the last one.
        let config = Arc::new(ServerConfig::new("mx.example"));
        let mut session = ServerSession::new(config, false, Instant::now());
        session.output.clear();
        session.bdat_done(BdatChunk::new(1234, false), None);
        let want = Reply::new(250, enhanced(2, 0, 0), "1234 octets received").to_bytes();
        assert_eq!(session.output, want);
    }

    #[test]
    fn input_arriving_while_pipelined_commands_wait_is_handled_in_order() {
        let now = Instant::now();
        let config = std::sync::Arc::new(ServerConfig::new("mx.example"));
        let mut session = ServerSession::new(config, false, now);
        session.handle_input(b"EHLO c.example\r\n", now);
        let mut out = Vec::new();
        let _ = session.poll_transmit(&mut out);
        out.clear();
        session.handle_input(
            b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\n",
            now,
        );
        session.accept_mail(now).unwrap();
        assert_eq!(recipient(&session), "b@y.example");
        // New bytes arrive while the rest of the first batch still waits in the buffer.
        session.handle_input(b"RCPT TO:<d@y.example>\r\nDA", now);
        session.accept_rcpt(now).unwrap();
        assert_eq!(recipient(&session), "c@y.example");
        session.accept_rcpt(now).unwrap();
        assert_eq!(recipient(&session), "d@y.example");
        session.accept_rcpt(now).unwrap();
        session.handle_input(b"TA\r\n", now);
        let _ = session.poll_transmit(&mut out);
        let replies = String::from_utf8(out).unwrap();
        let codes: Vec<&str> = replies.lines().map(|l| &l[..3]).collect();
        assert_eq!(codes, ["250", "250", "250", "250", "354"]);
        let envelope = session.pending_envelope().unwrap();
        assert_eq!(envelope.recipients.len(), 3);
    }
}
