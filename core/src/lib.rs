//! xshadow-core: SMTP and Microsoft Exchange shadow redundancy (XSHADOW / XQDISCARD) as pure
//! state machines.
//!
//! This crate performs no I/O, reads no clock, starts no thread and draws no randomness of its
//! own. Bytes, time (`now: Instant`) and seeds are arguments; replies, records to persist and
//! events are outputs the caller pulls. That makes every behaviour deterministic and testable
//! on virtual time, and lets the same logic run under tokio, async-std or a blocking loop.
//!
//! # The drain rule
//!
//! Every driver of a state machine in this crate follows one rule: *after any call that
//! changes the state, drain every `poll_*` method until it returns `None`, then sleep until
//! `poll_timeout()` or the next input.* Polling more often than needed is always harmless;
//! polling less may leave output waiting but never loses it.
//!
//! # Layers
//!
//! - [`wire`]: bytes to typed values and back: commands, replies, EHLO keywords, paths,
//!   parameters, line framing and the body codecs (dot-stuffing, BDAT chunks).
//! - [`session`]: one SMTP connection on each side, [`session::ServerSession`] and
//!   [`session::ClientSession`], with the XSHADOW / XQDISCARD rules.
//! - [`shadow`]: the redundancy bookkeeping: [`shadow::ShadowQueues`] (copies a sender keeps
//!   per primary, heartbeats, resubmission) and [`shadow::DiscardLedger`] (discard events a
//!   primary owes its shadows).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dsn;
pub mod node;
pub mod session;
pub mod shadow;
pub mod store;
pub mod wire;

/// The buffer type of message bodies: shared, sliced and handed on without copying.
pub use bytes::Bytes;
