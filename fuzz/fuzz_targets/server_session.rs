//! `ServerSession` driven the way a real driver drives it: client bytes at split points derived
//! from the input, fed only while `may_read()`; every output and event drained after each
//! call; each decision answered (accept, refuse with some reply, discard ids — none, a few,
//! more than `max`, long ones — store or refuse a message), sometimes late, sometimes after a
//! wrong decision method; virtual time advanced and `handle_timeout` called; `handle_eof`.
//!
//! Input: byte 0 picks the configuration (shadow offer, chunking, small limits, may_shadow,
//! lenient line ends, STARTTLS, short timeouts), byte 1 the length `n` of the control stream
//! that follows (one byte per driver step: feed a piece / feed until the session stops
//! reading / answer / wrong call / timeout / EOF, and the flavour of each), the rest is the client's wire: fed raw, then remapped into whole
//! SMTP command lines and fragments (`SESSION` below). Once the control bytes run out the
//! driver feeds, accepts every decision and finally closes. Odd feed flavours use
//! `handle_input_until_decision` (answering where it stops, or handing the rest to
//! `handle_input`), even ones `handle_input`.
//!
//! Invariants: nothing panics; a wrong decision method returns an `ApiError` (and the right
//! one succeeds); every byte written reads as whole replies; `answer_xqdiscard` returns
//! min(ids, max) and the next reply is `251` or a `250` of that many lines; a decision event
//! never arrives while another is unanswered; once drained with no decision pending the
//! session takes input (`may_read()`), unless closed; an expired timer closes the session and
//! an early one changes nothing; `take_message` hands a `MessageComplete`'s message over
//! once, and its body never exceeds `max_message_size`; exactly one `Closed`, and nothing
//! (no byte, no event) after it; the heap the session holds
//! after each drain stays under a bound made of its limits (the input window
//! `max(max_line, 64 KiB)` plus one read, `max_pending_output` plus one reply, the message
//! size limit and the recipients), never of the bytes fed (up to 256 KiB per run).
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use xshadow_core::session::server::{ServerTimeouts, ShadowOffer};
use xshadow_core::session::{Envelope, Recipient, ServerConfig, ServerEvent, ServerSession};
use xshadow_core::wire::{EnhancedStatus, Reply, ReplyReader};
use xshadow_fuzz::session::{Controls, CountingAllocator, live, take_byte, take_controls};
use xshadow_fuzz::{hash, remap, split};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Whole command lines, body fragments and pieces of lines: what the remapped wire is made of.
const SESSION: &[&[u8]] = &[
    b"EHLO hub1.example\r\n",
    b"EHLO hub1.example\r\n",
    b"HELO hub1.example\r\n",
    b"XSHADOW aHViMS5leGFtcGxl\r\n",
    b"XSHADOW aHViMS5leGFtcGxl\r\n",
    b"XSHADOW\r\n",
    b"XSHADOWREQUEST hub1.example X+QUj+rOf0ag5pssHT5PUA==\r\n",
    b"XQDISCARD 50\r\n",
    b"XQDISCARD 1\r\n",
    b"XQDISCARD 4294967295\r\n",
    b"XQDISCARD 0\r\n",
    b"MAIL FROM:<alice@example.org>\r\n",
    b"MAIL FROM:<alice@example.org>\r\n",
    b"MAIL FROM:<alice@example.org> SIZE=2048 XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n",
    b"MAIL FROM:<> XSHADOW=9b2e7c10\r\n",
    b"MAIL FROM:<a@b> BODY=BINARYMIME\r\n",
    b"MAIL FROM:<a@b> SIZE=18446744073709551615\r\n",
    b"MAIL FROM:<\xc3\xa9@b> SMTPUTF8\r\n",
    b"RCPT TO:<bob@example.net>\r\n",
    b"RCPT TO:<bob@example.net>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"RCPT TO:<c@d> NOTIFY=NEVER ORCPT=rfc822;c@d\r\n",
    b"DATA\r\n",
    b"DATA\r\n",
    b"Subject: x\r\n",
    b"\r\n",
    b"\r\n.\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n",
    b"\n.\n",
    b"x",
    b"BDAT 0 LAST\r\n",
    b"BDAT 5\r\n",
    b"BDAT 5 LAST\r\n",
    b"BDAT 18446744073709551615\r\n",
    b"BDAT x\r\n",
    b"hello",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY bob\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"QUIT\r\n",
    b"FOO\r\n",
    b"\r",
    b"\n",
    b" ",
    b"\x00",
    b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

/// The most client bytes one run feeds (pieces fed repeatedly count each time).
const FEED_CAP: usize = 256 * 1024;
/// The most driver steps per run.
const MAX_STEPS: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let (cfg, rest) = take_byte(data);
    let (ctl, wire) = take_controls(rest);
    let seed = hash(data);
    run(cfg, ctl, wire, seed);
    run(cfg, ctl, &remap(wire, SESSION), seed);
});

fn config(cfg: u8, seed: u64) -> ServerConfig {
    let mut c = ServerConfig::new("edge1.example");
    c.shadow = match cfg & 3 {
        0 => ShadowOffer::None,
        2 => ShadowOffer::XShadowRequest,
        _ => ShadowOffer::XShadow,
    };
    c.chunking = cfg & 4 == 0;
    if cfg & 8 != 0 {
        c.max_line = 3 + (seed % 200) as usize;
        c.max_message_size = (seed >> 8) % 300;
        c.max_recipients = ((seed >> 16) % 4) as usize;
        c.max_errors = ((seed >> 20) % 6) as usize;
        // 0 would never read at all (a session that only times out): not worth fuzzing.
        c.max_pending_output = 1 + ((seed >> 24) % 600) as usize;
    }
    c.lenient_line_ends = cfg & 32 != 0;
    c.starttls = cfg & 64 != 0;
    c.pipelining = cfg & 128 == 0;
    c.smtputf8 = seed & (1 << 40) == 0;
    c.dsn = seed & (1 << 41) == 0;
    if seed & (1 << 42) != 0 {
        c.timeouts = ServerTimeouts {
            command: Duration::from_millis((seed >> 44) % 3),
            data: Duration::from_secs((seed >> 48) % 3),
        };
    }
    c
}

/// The decision the session waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Mail,
    Rcpt,
    Message,
    XShadow,
    XShadowRequest,
    XqDiscard(u32),
    Tls,
}

struct Driver<'a> {
    s: ServerSession,
    config: Arc<ServerConfig>,
    now: Instant,
    pieces: Vec<&'a [u8]>,
    next_piece: usize,
    pending: Option<Decision>,
    /// Lines of the reply `answer_xqdiscard` must have written next (0: a `251`).
    expect_discard_reply: Option<usize>,
    closed: usize,
    /// Closed was seen and everything after it drained: nothing more may come.
    sealed: bool,
    fed: usize,
    max_piece: usize,
    largest_answer: usize,
    baseline: isize,
    /// Bytes and events of the last drain.
    drained_bytes: usize,
    drained_events: usize,
}

fn run(cfg: u8, mut ctl: Controls<'_>, wire: &[u8], seed: u64) {
    let config = Arc::new(config(cfg, seed));
    let may_shadow = cfg & 16 == 0;
    let pieces = split(wire, seed >> 3);
    let max_piece = pieces.iter().map(|p| p.len()).max().unwrap_or(0);
    let start = Instant::now();
    let baseline = live();
    let s = ServerSession::new(config.clone(), may_shadow, start);
    let mut d = Driver {
        s,
        config,
        now: start,
        pieces,
        next_piece: 0,
        pending: None,
        expect_discard_reply: None,
        closed: 0,
        sealed: false,
        fed: 0,
        max_piece,
        largest_answer: 0,
        baseline,
        drained_bytes: 0,
        drained_events: 0,
    };
    d.drain();
    for _ in 0..MAX_STEPS {
        if d.closed > 0 {
            break;
        }
        let Some(b) = ctl.next() else {
            // Out of control bytes: a plain driver that accepts everything.
            if d.pending.is_some() {
                d.answer(1);
            } else if d.next_piece < d.pieces.len() {
                d.feed(1);
            } else {
                break;
            }
            continue;
        };
        match b % 16 {
            0..=4 => d.feed(b >> 4),
            5..=8 => d.feed_until_stopped(),
            9..=11 => d.answer(b >> 4),
            12 => d.wrong_call(b >> 4),
            13 | 14 => d.timeout(b >> 4),
            _ if b >> 4 < 2 => d.eof(),
            _ => d.answer(b >> 4),
        }
    }
    if d.closed == 0 {
        d.eof();
    }
    assert_eq!(d.closed, 1, "one Closed event");
    d.after_close();
}

impl Driver<'_> {
    /// Feeds the next piece, `repeat` times when the flavour asks, while the session reads.
    fn feed(&mut self, flavour: u8) {
        let Some(&piece) = self.pieces.get(self.next_piece) else {
            return;
        };
        if !self.s.may_read() {
            return;
        }
        self.next_piece += 1;
        let repeat = match flavour {
            0..=11 => 1,
            12 => 2,
            13 => 16,
            14 => 256,
            _ => 4096,
        };
        for _ in 0..repeat {
            if self.closed > 0 || !self.s.may_read() || self.fed + piece.len() > FEED_CAP {
                break;
            }
            self.now += Duration::from_micros(1);
            self.fed += piece.len();
            if flavour % 2 == 1 {
                self.offer(piece, flavour);
            } else {
                self.s.handle_input(piece, self.now);
            }
            self.drain();
            if piece.is_empty() {
                break;
            }
        }
    }

    /// Feeds `piece` with `handle_input_until_decision`, as a caller that decides at once:
    /// wherever it stops, drain and (when `flavour` says so) answer, then offer the rest; what
    /// is left behind a decision not answered at once goes to `handle_input`.
    fn offer(&mut self, piece: &[u8], flavour: u8) {
        let mut rest = piece;
        loop {
            let used = self.s.handle_input_until_decision(rest, self.now);
            assert!(used <= rest.len(), "used {used} of {}", rest.len());
            rest = &rest[used..];
            if rest.is_empty() {
                return;
            }
            assert!(
                !self.s.may_read(),
                "stopped {} bytes early while reading",
                rest.len()
            );
            self.drain();
            let answered = self.pending.is_some() && flavour & 2 != 0;
            if answered {
                self.answer(flavour >> 2);
            }
            if !answered && !self.s.may_read() {
                self.s.handle_input(rest, self.now);
                return;
            }
        }
    }

    /// Feeds piece after piece while the session reads (until a decision, close or the end).
    fn feed_until_stopped(&mut self) {
        while self.next_piece < self.pieces.len() && self.closed == 0 && self.s.may_read() {
            self.feed(0);
        }
    }

    /// Drains replies and events until both are empty, then checks what the session holds.
    fn drain(&mut self) {
        self.drained_bytes = 0;
        self.drained_events = 0;
        loop {
            let mut out = Vec::new();
            let sent = self.s.poll_transmit(&mut out);
            let mut moved = sent.is_some();
            if let Some(n) = sent {
                assert!(!self.sealed, "output after Closed: {out:?}");
                assert!(
                    n > 0 && n == out.len(),
                    "poll_transmit said {n} for {}",
                    out.len()
                );
                self.drained_bytes += n;
                self.check_replies(&out);
            }
            drop(out);
            while let Some(event) = self.s.poll_event() {
                moved = true;
                assert!(!self.sealed, "event after Closed: {event:?}");
                self.drained_events += 1;
                self.event(event);
            }
            if !moved {
                break;
            }
        }
        if self.closed > 0 {
            self.sealed = true;
            return;
        }
        assert!(
            self.s.may_read() || self.pending.is_some(),
            "drained, no decision pending, yet the session does not read"
        );
        self.check_memory();
    }

    fn event(&mut self, event: ServerEvent) {
        let decision = match &event {
            ServerEvent::MailFrom => {
                assert!(
                    self.s.pending_envelope().is_some(),
                    "MailFrom without envelope"
                );
                Some(Decision::Mail)
            }
            ServerEvent::RcptTo => {
                assert!(
                    self.s.pending_recipient().is_some(),
                    "RcptTo without recipient"
                );
                Some(Decision::Rcpt)
            }
            ServerEvent::MessageComplete => {
                let m = self
                    .s
                    .take_message()
                    .expect("MessageComplete hands over a message");
                assert!(
                    self.s.take_message().is_none(),
                    "a message handed over twice"
                );
                assert!(
                    m.body.len() as u64 <= self.config.max_message_size,
                    "a body of {} bytes over the limit {}",
                    m.body.len(),
                    self.config.max_message_size
                );
                assert!(
                    !m.envelope.recipients.is_empty(),
                    "a message without recipients"
                );
                assert!(self.config.chunking || !m.via_bdat, "BDAT without CHUNKING");
                Some(Decision::Message)
            }
            ServerEvent::XShadow { .. } => {
                assert!(self.config.shadow != ShadowOffer::None);
                Some(Decision::XShadow)
            }
            ServerEvent::XShadowRequest { .. } => {
                assert_eq!(self.config.shadow, ShadowOffer::XShadowRequest);
                Some(Decision::XShadowRequest)
            }
            ServerEvent::XqDiscard { max, .. } => {
                assert!(
                    self.s.shadow_context().is_some(),
                    "XqDiscard while not primary"
                );
                Some(Decision::XqDiscard(*max))
            }
            ServerEvent::StartTls => {
                assert!(self.config.starttls);
                Some(Decision::Tls)
            }
            ServerEvent::Closed(_) => {
                assert!(self.s.is_closed());
                self.closed += 1;
                self.pending = None;
                None
            }
            ServerEvent::Hello { .. }
            | ServerEvent::DiscardsConfirmed { .. }
            | ServerEvent::TimedOut(_) => None,
        };
        if let Some(decision) = decision {
            assert!(
                self.pending.is_none(),
                "{decision:?} asked while {:?} is unanswered",
                self.pending
            );
            self.pending = Some(decision);
        }
    }

    /// Every byte written must read as whole replies.
    fn check_replies(&mut self, out: &[u8]) {
        let mut reader = ReplyReader::with_limits(usize::MAX, usize::MAX);
        let mut at = 0;
        while at < out.len() {
            match reader.read(&out[at..]) {
                Ok(Some((reply, used))) => {
                    if let Some(lines) = self.expect_discard_reply.take() {
                        if lines == 0 {
                            assert_eq!(reply.code, 251, "no ids must be a 251: {reply:?}");
                        } else {
                            assert_eq!(reply.code, 250, "{reply:?}");
                            assert_eq!(reply.lines.len(), lines, "ids sent != ids counted");
                        }
                    }
                    at += used;
                }
                Ok(None) => panic!("a partial reply written: {:?}", &out[at..]),
                Err(e) => panic!("an unreadable reply written ({e:?}): {:?}", &out[at..]),
            }
        }
    }

    fn check_memory(&self) {
        let held = usize::try_from(live() - self.baseline).unwrap_or(0);
        let c = &self.config;
        let window = c.max_line.max(64 * 1024) + self.max_piece;
        let replies = c.max_pending_output + 64 * 1024 + self.largest_answer;
        let body = usize::try_from(c.max_message_size)
            .unwrap_or(usize::MAX)
            .min(self.fed);
        let recipients = c.max_recipients.min(self.fed / 8 + 1);
        let per_recipient = 2 * size_of::<Recipient>() + 4 * c.max_line;
        let bound = 2 * window
            + 2 * replies
            + 2 * body
            + recipients * per_recipient
            + size_of::<Envelope>()
            + 16 * c.max_line
            + 64 * 1024;
        assert!(
            held <= bound,
            "the session holds {held} bytes (bound {bound}) after {} bytes fed",
            self.fed
        );
    }

    fn refusal(flavour: u8) -> Reply<'static> {
        let e = |a, b, c| Some(EnhancedStatus::new(a, b, c));
        match flavour % 6 {
            0 => Reply::new(550, e(5, 7, 1), "Relaying denied"),
            1 => Reply::new(451, e(4, 3, 0), "Try again later"),
            2 => Reply::new(452, e(4, 3, 1), "Insufficient system storage"),
            3 => Reply::multiline(554, e(5, 7, 0), ["Refused", "for", "reasons"]),
            4 => Reply::new(553, None, ""),
            _ => Reply::new(421, e(4, 3, 2), "Shutting down"),
        }
    }

    fn database_id(flavour: u8) -> String {
        match flavour % 4 {
            0 => "a".repeat(255),
            1 => "b".repeat(256),
            _ => "X+QUj+rOf0ag5pssHT5PUA==".to_owned(),
        }
    }

    fn discard_ids(flavour: u8, max: u32) -> Vec<String> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let guid = |i: usize| format!("00000000-0000-4000-8000-{i:012}");
        let n = match flavour % 8 {
            0 => 0,
            1 => 1,
            2 => 3,
            3 => max.min(1100),
            4 => max.saturating_add(1).min(1100),
            5 => max.saturating_add(7).min(1100),
            6 => 2,
            _ => 1100,
        };
        (0..n)
            .map(|i| match (flavour / 8) % 3 {
                0 => guid(i),
                1 => format!("{i}{}", "x".repeat(254)),
                _ => format!("{i}{}", "y".repeat(300)),
            })
            .collect()
    }

    /// Answers the pending decision, if any, with the method that fits it.
    fn answer(&mut self, flavour: u8) {
        let Some(decision) = self.pending else {
            return;
        };
        let accept = !flavour.is_multiple_of(4);
        let now = self.now;
        let s = &mut self.s;
        let result = match decision {
            Decision::Mail if accept => s.accept_mail(now),
            Decision::Mail => s.reject_mail(Self::refusal(flavour / 4), now),
            Decision::Rcpt if accept => s.accept_rcpt(now),
            Decision::Rcpt => s.reject_rcpt(Self::refusal(flavour / 4), now),
            Decision::Message if accept => s.message_stored(now),
            Decision::Message => s.message_rejected(Self::refusal(flavour / 4), now),
            Decision::XShadow if accept => s.accept_xshadow(&Self::database_id(flavour / 4), now),
            Decision::XShadow => s.reject_xshadow(Self::refusal(flavour / 4), now),
            Decision::XShadowRequest if accept => {
                s.accept_shadow_request(&Self::database_id(flavour / 4), now)
            }
            Decision::XShadowRequest => s.reject_shadow_request(Self::refusal(flavour / 4), now),
            Decision::XqDiscard(max) => {
                let ids = Self::discard_ids(flavour, max);
                self.largest_answer = self
                    .largest_answer
                    .max(ids.iter().map(|i| i.len() + 6).sum::<usize>());
                let sent = s.answer_xqdiscard(&ids, now);
                let want = ids.len().min(usize::try_from(max).unwrap_or(usize::MAX));
                assert_eq!(
                    sent,
                    Ok(want),
                    "answer_xqdiscard with {} ids, max {max}",
                    ids.len()
                );
                self.expect_discard_reply = Some(want);
                Ok(())
            }
            Decision::Tls => s.tls_established(now),
        };
        assert_eq!(result, Ok(()), "the right answer to {decision:?} failed");
        self.pending = None;
        self.drain();
        assert!(
            self.expect_discard_reply.is_none(),
            "answer_xqdiscard wrote no reply"
        );
    }

    /// Calls a decision method that does not fit what the session waits for: an `ApiError`.
    fn wrong_call(&mut self, which: u8) {
        let now = self.now;
        let fits = match which % 12 {
            0 | 1 => self.pending == Some(Decision::Mail),
            2 | 3 => self.pending == Some(Decision::Rcpt),
            4 | 5 => self.pending == Some(Decision::Message),
            6 | 7 => self.pending == Some(Decision::XShadow),
            8 | 9 => self.pending == Some(Decision::XShadowRequest),
            10 => matches!(self.pending, Some(Decision::XqDiscard(_))),
            _ => self.pending == Some(Decision::Tls),
        };
        if fits {
            return;
        }
        let s = &mut self.s;
        let refusal = Reply::new(550, None, "no");
        let err = match which % 12 {
            0 => s.accept_mail(now),
            1 => s.reject_mail(refusal, now),
            2 => s.accept_rcpt(now),
            3 => s.reject_rcpt(refusal, now),
            4 => s.message_stored(now),
            5 => s.message_rejected(refusal, now),
            6 => s.accept_xshadow("X+QUj+rOf0ag5pssHT5PUA==", now),
            7 => s.reject_xshadow(refusal, now),
            8 => s.accept_shadow_request("aHViMS5leGFtcGxl", now),
            9 => s.reject_shadow_request(refusal, now),
            10 => s
                .answer_xqdiscard(&["3f2504e0-4f89-41d3-9a0c-0305e82c3301"], now)
                .map(|_| ()),
            _ => s.tls_established(now),
        };
        let err = err.expect_err("a decision method that does not fit the state succeeded");
        assert!(!err.to_string().is_empty());
        self.drain();
        assert_eq!(
            (self.drained_bytes, self.drained_events),
            (0, 0),
            "a refused call changed the session"
        );
    }

    /// Advances virtual time and fires the timer: an expired one closes the session, an early
    /// one does nothing.
    fn timeout(&mut self, flavour: u8) {
        let deadline = self.s.poll_timeout();
        if self.pending.is_some() {
            assert_eq!(deadline, None, "a timer while the client waits for us");
        }
        self.now = match (flavour % 4, deadline) {
            (0, _) => self.now + Duration::from_millis(u64::from(flavour) * 7),
            (1, _) => self.now + Duration::from_secs(u64::from(flavour) * 40),
            (2, Some(d)) => d.max(self.now),
            (3, Some(d)) => self
                .now
                .max(d.checked_sub(Duration::from_nanos(1)).unwrap_or(d)),
            _ => self.now + Duration::from_secs(3600),
        };
        self.s.handle_timeout(self.now);
        self.drain();
        match deadline {
            Some(d) if self.now >= d => {
                assert_eq!(self.closed, 1, "an expired timer did not close the session");
                assert!(self.drained_bytes > 0, "no 421 on timeout");
            }
            _ => assert_eq!(
                (self.drained_bytes, self.drained_events),
                (0, 0),
                "an early handle_timeout changed the session"
            ),
        }
    }

    fn eof(&mut self) {
        self.now += Duration::from_millis(1);
        self.s.handle_eof(self.now);
        self.drain();
        assert_eq!(self.closed, 1, "EOF did not close the session");
    }

    /// After Closed: no input, timer, EOF or decision gets anything out of the session.
    fn after_close(&mut self) {
        assert!(self.s.is_closed() && !self.s.may_read());
        assert_eq!(self.s.poll_timeout(), None);
        self.now += Duration::from_secs(1);
        self.s.handle_input(b"NOOP\r\nQUIT\r\n", self.now);
        self.s
            .handle_timeout(self.now + Duration::from_secs(86_400));
        self.s.handle_eof(self.now);
        for which in 0..12 {
            self.pending = None;
            self.wrong_call(which);
        }
        self.drain();
        assert_eq!((self.drained_bytes, self.drained_events), (0, 0));
    }
}
