//! Shadow redundancy bookkeeping, free of sessions, I/O and clocks (PROTOCOL.md §1, §5, §6).
//!
//! - [`ShadowQueues`]: the sending side (the shadow server, a hub). After a primary says 250
//!   to a message sent with `XSHADOW=<id>`, the copy waits here until the primary reports it
//!   with XQDISCARD, the copy ages past auto-discard, or the primary is given up on (failed
//!   heartbeats, a changed database id, a protocol breach) and the copy is resubmitted.
//! - [`DiscardLedger`]: the receiving side (the primary server, an edge). Discard events per
//!   shadow context, handed out by XQDISCARD, kept *in doubt* until the client's next command
//!   proves the reply arrived.
//!
//! Both are plain data structures: every method that depends on time takes `now: Instant`,
//! `poll_timeout()` says when to call `expire` (and, for the queues, `poll_heartbeat`) next,
//! and every method that gives up a copy or an event returns it, so the caller can persist the
//! change and resubmit. Nothing is dropped silently. Iteration order never depends on a hash
//! seed, so a simulation that drives them is deterministic.

pub mod ledger;
pub mod queues;

pub use ledger::DiscardLedger;
pub use queues::{Discarded, HeartbeatFailure, HeldCopy, ShadowConfig, ShadowQueues};

use std::borrow::Cow;

/// A node-local message identity: the handle a node uses for a message in its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

/// `s` with ASCII letters lowered, borrowed when it already is (the common case).
fn ascii_lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// `s` with ASCII letters lowered: borrowed when it already is, else lowered into `scratch`
/// (reused, so no allocation once it is large enough).
fn lowercase_into<'a>(s: &'a str, scratch: &'a mut String) -> &'a str {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        scratch.clear();
        scratch.push_str(s);
        scratch.make_ascii_lowercase();
        scratch
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercasing_borrows_when_nothing_changes() {
        assert!(matches!(ascii_lowercase("hub1.example"), Cow::Borrowed(_)));
        assert_eq!(ascii_lowercase("Hub1.EXAMPLE"), "hub1.example");
        assert_eq!(ascii_lowercase("ÄB"), "Äb");
    }

    #[test]
    fn lowercasing_into_scratch_reuses_it() {
        let mut scratch = String::from("left over, longer than the input");
        assert_eq!(lowercase_into("hub1.example", &mut scratch), "hub1.example");
        assert_eq!(lowercase_into("Hub1.EXAMPLE", &mut scratch), "hub1.example");
        assert_eq!(lowercase_into("ÄB", &mut scratch), "Äb");
        assert_eq!(scratch, "Äb");
    }
}
