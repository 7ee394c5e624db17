//! What the session and node benches share: the test message and envelope, the sink side of
//! an SMTP session (a `ServerSession` whose every decision is answered at once), and the
//! on-CPU clock of their instruction-count modes. Each bench declares it with `mod common;`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use xshadow::core::session::{Envelope, ReceivedMessage, Recipient, ServerEvent, ServerSession};
use xshadow::core::wire::path::{ForwardPath, Mailbox, ReversePath};
use xshadow::core::wire::{MailParams, RcptParams};

pub const KIB: usize = 1024;

/// A message of exactly `size` bytes: a few header lines, then prose in 76-byte lines + CRLF
/// (sentences, so dots occur mid-line), ending in CRLF.
pub fn message_body(size: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "relay",
        "shadow",
        "message",
        "queue",
        "is",
        "redundant",
        "until",
        "discard",
        "server",
        "primary",
        "delivered",
        "and",
        "of",
        "a",
        "to",
        "copy",
        "mail",
        "transport",
    ];
    let mut out = b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n\
Subject: benchmark message\r\nMessage-ID: <bench@example.org>\r\n\r\n"
        .to_vec();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    while out.len() < size {
        let room = (size - out.len()).min(78);
        let mut line = Vec::with_capacity(78);
        while line.len() + 2 < room {
            let r = next();
            line.extend_from_slice(WORDS[(r % WORDS.len() as u64) as usize].as_bytes());
            line.push(if r % 9 == 0 { b'.' } else { b' ' });
        }
        line.truncate(room.saturating_sub(2));
        line.extend_from_slice(b"\r\n");
        out.extend_from_slice(&line);
    }
    assert_eq!(out.len(), size);
    out
}

/// alice@example.org to bob@example.net, no parameters.
pub fn envelope() -> Envelope {
    Envelope {
        from: ReversePath::Mailbox(Mailbox::new("alice", "example.org")),
        params: MailParams::default(),
        recipients: [Recipient {
            to: ForwardPath::Mailbox(Mailbox::new("bob", "example.net")),
            params: RcptParams::default(),
        }]
        .into(),
    }
}

/// What a sink session showed while [`answer_sink_events`] drained it.
pub enum Seen<'a> {
    /// A complete message, already answered as stored.
    Message(&'a ReceivedMessage),
    /// An `XSHADOW` command, accepted.
    XShadow,
    /// An `XQDISCARD` command, answered with no ids.
    XqDiscard,
}

/// What one [`answer_sink_events`] call found.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinkDrain {
    /// Some event came out.
    pub events: bool,
    /// The session reported that it closed.
    pub closed: bool,
}

/// Drains the events of a sink's `ServerSession` and answers every decision at once: the
/// sender and the recipient accepted, every complete message "stored", `XSHADOW` accepted with
/// `database_id`, `XQDISCARD` answered with no ids (`251`). `seen` hears of each message and
/// shadow command before it is answered.
#[inline]
pub fn answer_sink_events(
    server: &mut ServerSession,
    database_id: &str,
    now: Instant,
    mut seen: impl FnMut(Seen<'_>),
) -> SinkDrain {
    let mut drain = SinkDrain::default();
    while let Some(event) = server.poll_event() {
        drain.events = true;
        let answered = match event {
            ServerEvent::MailFrom => server.accept_mail(now),
            ServerEvent::RcptTo => server.accept_rcpt(now),
            ServerEvent::MessageComplete => {
                if let Some(message) = server.take_message() {
                    seen(Seen::Message(&message));
                    black_box(&message);
                }
                server.message_stored(now)
            }
            ServerEvent::XShadow { .. } => {
                seen(Seen::XShadow);
                server.accept_xshadow(database_id, now)
            }
            ServerEvent::XqDiscard { .. } => {
                seen(Seen::XqDiscard);
                server.answer_xqdiscard::<&str>(&[], now).map(drop)
            }
            ServerEvent::Closed(_) => {
                drain.closed = true;
                Ok(())
            }
            _ => Ok(()),
        };
        answered.expect("the sink's session asked for this decision");
    }
    drain
}

/// Time this thread spent on a CPU (Linux `/proc/thread-self/schedstat`), so that the
/// instruction-count modes also give a rate that does not count time spent descheduled while
/// other processes load the machine.
pub fn on_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The global allocator of the benches: the system's, plus a count of allocations that the
/// instruction-count modes switch on around their runs (off, it costs one relaxed load).
#[allow(dead_code, reason = "only the node bench counts allocations")]
pub struct CountingAlloc;

#[allow(dead_code, reason = "only the node bench counts allocations")]
static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
#[allow(dead_code, reason = "only the node bench counts allocations")]
static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call is passed to `System` unchanged; the counter touches no memory it hands
// out.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is `System`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is `System`'s.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[allow(dead_code, reason = "only the node bench counts allocations")]
fn count_one() {
    use std::sync::atomic::Ordering::Relaxed;
    if COUNTING.load(Relaxed) {
        ALLOCATIONS.fetch_add(1, Relaxed);
    }
}

/// Runs `f` with allocations counted: its result and how many allocations and reallocations
/// it made.
#[allow(dead_code, reason = "only the node bench counts allocations")]
pub fn count_allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let before = ALLOCATIONS.load(Relaxed);
    COUNTING.store(true, Relaxed);
    let out = f();
    COUNTING.store(false, Relaxed);
    (out, ALLOCATIONS.load(Relaxed) - before)
}
