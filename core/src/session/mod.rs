//! One SMTP connection as a pure state machine on each side.
//!
//! - [`ServerSession`]: the receiving side. Bytes in with `handle_input`, replies out with
//!   `poll_transmit`, decisions out with `poll_event` (answered by method calls such as
//!   `accept_rcpt` or `message_stored`), timers with `poll_timeout` / `handle_timeout`.
//! - [`ClientSession`]: the sending side. Messages in, commands out, outcomes as events.
//!
//! Both follow the crate's drain rule (see the crate documentation): after any call that
//! changes the state, drain `poll_transmit` and `poll_event` until they return `None`, then
//! wait for input or `poll_timeout()`.

pub mod client;
pub mod server;
pub mod sink;

use std::fmt;
use std::time::Duration;

use smallvec::SmallVec;

use crate::wire::params::{MailParams, RcptParams};
use crate::wire::path::{ForwardPath, ReversePath};

pub use client::{
    Breach, ClientConfig, ClientEvent, ClientPhase, ClientSession, ClientTimeouts, ConfigError,
    DiscardIdIter, DiscardIdList, OutboundMessage, RecipientOutcome, SessionFailure,
};
pub use server::{
    ReceivedMessage, ServerConfig, ServerEvent, ServerPhase, ServerSession, ServerTimeouts,
    ShadowOffer, ShadowTag,
};

/// The envelope of one message: sender, recipients and their parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path of MAIL FROM.
    pub from: ReversePath<'static>,
    /// The MAIL parameters (SIZE, BODY, SMTPUTF8, DSN, XSHADOW).
    pub params: MailParams<'static>,
    /// The accepted recipients, in order.
    pub recipients: Recipients,
}

/// The recipients of an envelope: one is kept inline, in the envelope's own allocation
/// (most messages have one; a message with more spills to the heap).
pub type Recipients = SmallVec<[Recipient; 1]>;

/// One recipient of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward-path of RCPT TO.
    pub to: ForwardPath<'static>,
    /// The RCPT parameters (NOTIFY, ORCPT).
    pub params: RcptParams<'static>,
}

/// A call that does not fit the session's current state: the caller's bug, never the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiError {
    /// The method that was called.
    pub call: &'static str,
    /// What the session was doing instead.
    pub state: &'static str,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} called while the session is {}",
            self.call, self.state
        )
    }
}

impl std::error::Error for ApiError {}

/// Five minutes: the RFC 5321 §4.5.3.2 default for most phases.
pub(crate) const FIVE_MINUTES: Duration = Duration::from_secs(300);
