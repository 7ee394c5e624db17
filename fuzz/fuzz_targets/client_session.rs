//! `ClientSession` against an arbitrary server: replies as raw bytes at split points derived
//! from the input, and remapped into whole reply lines and reply fragments (`REPLIES` below);
//! a few queued messages (bodies with dots, bare LFs, NULs, 8-bit bytes, no final CRLF;
//! recipients none to three; shadow ids missing, empty, over-long or needing xtext),
//! `finish(query_discards)`, `discard_more` answered either way, timers and `handle_close`.
//!
//! Input: byte 0 picks the configuration (shadow context, `xqdiscard_max` 1/2/50/1000,
//! `max_line` 512 or 4096, whether `finish` and the messages come at once or by control
//! byte, timeouts of 0 to 2 s), byte 1 the number of messages (`% 5`), then one byte per
//! message says what it is like, then a byte `n` and `n` control bytes (one per driver step:
//! feed a piece, feed until the session writes or says something, feed one line, queue,
//! finish, discard_more, timer, close, switch to a line at a time), then the server's wire.
//! Once the control bytes run out the driver feeds the rest, asks for more discard ids
//! twice, and finally reports the connection closed.
//!
//! Invariants: nothing panics; everything the client writes is, read as a server reads it,
//! command lines that `Command::parse` accepts (no over-long line, nothing after QUIT, EHLO
//! or QUIT first), DATA bodies after a 3xx that un-stuff to the message body (or to
//! nothing), and `BDAT <len> LAST` chunks that are the body byte for byte; `XSHADOW=` goes with a message
//! exactly when the session is shadowed and its id is usable, and carries that id; every
//! queued message gets exactly one outcome (accepted, failed or deferred) before `Closed`,
//! and only queued ones do; a message is reported accepted only after a 2xx to its end of
//! data (unless the session was torn down in the same call, when its unsent bytes are
//! dropped); exactly one `Closed`, and no byte or event after it; `discard_more` succeeds
//! exactly when `DiscardIds { more_possible: true }` is unanswered; an expired timer ends the
//! session, an early one changes nothing; calls after `finish` or `Closed` are refused; the
//! heap the session holds after each drain is bounded by one partial reply, one read, the
//! largest reply and the messages, never by the bytes fed.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use xshadow_core::session::{
    ClientConfig, ClientEvent, ClientSession, ClientTimeouts, Envelope, OutboundMessage, Recipient,
};
use xshadow_core::wire::reply::DEFAULT_MAX_REPLY_LINES;
use xshadow_core::wire::{
    Command, DotReader, ForwardPath, Frame, LineReader, MailParams, Mailbox, RcptParams,
    ReplyReader, ReversePath,
};
use xshadow_fuzz::session::{
    Controls, CountingAllocator, live, take_byte, take_bytes, take_controls,
};
use xshadow_fuzz::{hash, remap, split};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Whole reply lines and fragments of them: what the remapped wire is made of.
const REPLIES: &[&[u8]] = &[
    b"220 edge1.example ESMTP xshadow\r\n",
    b"220 ",
    b"250-edge1.example\r\n",
    b"250-PIPELINING\r\n",
    b"250-CHUNKING\r\n",
    b"250-BINARYMIME\r\n",
    b"250-8BITMIME\r\n",
    b"250-SMTPUTF8\r\n",
    b"250-SIZE 36700160\r\n",
    b"250-SIZE 100\r\n",
    b"250-ENHANCEDSTATUSCODES\r\n",
    b"250-XSHADOWREQUEST\r\n",
    b"250 XSHADOW\r\n",
    b"250 XSHADOW\r\n",
    b"250 X+QUj+rOf0ag5pssHT5PUA==\r\n",
    b"250 2.1.0 Sender OK\r\n",
    b"250 2.1.5 Recipient OK\r\n",
    b"250 2.6.0 Queued mail for delivery\r\n",
    b"250 2.0.0 OK\r\n",
    b"250 2.0.0 OK\r\n",
    b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
    b"354 go\r\n",
    b"251 OK, no discard events\r\n",
    b"251 OK, no discard events\r\n",
    b"250-3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n",
    b"250 9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01\r\n",
    b"250 \r\n",
    b"221 2.0.0 Bye\r\n",
    b"421 4.4.2 Timeout, closing\r\n",
    b"451 4.3.0 Try again later\r\n",
    b"452 4.5.3 Too many recipients\r\n",
    b"500 5.5.1 Command unrecognized\r\n",
    b"502 5.3.3 Command not implemented\r\n",
    b"503 5.5.1 Bad sequence\r\n",
    b"550 5.1.1 No such user\r\n",
    b"554 5.7.1 No\r\n",
    b"250-",
    b"250 ",
    b"354 ",
    b"421 ",
    b"550 ",
    b"2.1.0 ",
    b"5.5.1 ",
    b"XSHADOW",
    b"PIPELINING",
    b"CHUNKING",
    b"\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"-",
    b"x",
    b"\xff",
];

fuzz_target!(|data: &[u8]| {
    let (cfg, rest) = take_byte(data);
    let (count, rest) = take_byte(rest);
    let (specs, rest) = take_bytes(rest, usize::from(count % 5));
    let (ctl, wire) = take_controls(rest);
    let seed = hash(data);
    run(cfg, specs, ctl, wire, seed);
    run(cfg, specs, ctl, &remap(wire, REPLIES), seed);
});

const CONTEXT: &str = "aHViMS5leGFtcGxl";

fn config(cfg: u8, seed: u64) -> ClientConfig {
    let mut c = ClientConfig::new("hub1.example");
    if cfg & 1 != 0 {
        c.shadow_context = Some(CONTEXT.to_owned());
    }
    c.xqdiscard_max = [1, 2, 50, 1000][usize::from(cfg >> 1 & 3)];
    c.max_line = if cfg & 8 != 0 { 512 } else { 4096 };
    if cfg & 64 != 0 {
        c.timeouts = ClientTimeouts::uniform(Duration::from_secs(seed % 3));
    }
    c
}

/// A message made from one spec byte: body (bits 0-2), recipients (3-4), shadow id (5-6),
/// null sender (7). Ids start at 1; local parts carry the id so the wire names the message.
fn message(id: u64, spec: u8) -> OutboundMessage {
    let body: Vec<u8> = match spec & 7 {
        0 => Vec::new(),
        1 => b"Subject: hi\r\n\r\nHello\r\n".to_vec(),
        2 => b".\r\n..\r\n.x\r\n\r\n.\r\nend\r\n".to_vec(),
        3 => b"no final line end.".to_vec(),
        4 => b"a\x00b\nc\rd\r\n".to_vec(),
        5 => "Subject: caf\u{e9}\r\n\r\n\u{fc}ber\r\n"
            .as_bytes()
            .to_vec(),
        6 => b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n".repeat(80),
        _ => b"\r\n.\r\nMAIL FROM:<evil@example>\r\n".to_vec(),
    };
    let to = |k: u64| -> Recipient {
        let local = if k == 2 && spec & 1 != 0 {
            format!("\u{fc}{id}")
        } else {
            format!("r{id}")
        };
        Recipient {
            to: ForwardPath::Mailbox(Mailbox::new(local, "example.net")),
            params: RcptParams::default(),
        }
    };
    let recipients = (0..u64::from(spec >> 3 & 3)).map(to).collect();
    let shadow_id = match spec >> 5 & 3 {
        0 => None,
        1 => Some(format!("00000000-0000-4000-8000-{id:012}")),
        2 if id.is_multiple_of(2) => Some(String::new()),
        2 => Some("x".repeat(256)),
        _ if id.is_multiple_of(2) => Some(format!("{id}+a=b\u{e9}")),
        _ => Some("y".repeat(255)),
    };
    let from = if spec & 128 != 0 {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(Mailbox::new(format!("m{id}"), "example.org"))
    };
    OutboundMessage {
        id,
        envelope: Envelope {
            from,
            params: MailParams::default(),
            recipients,
        }
        .into(),
        body: body.into(),
        shadow_id: shadow_id.map(Into::into),
    }
}

/// The id in a local part such as `m3`, `r3` or `ü3`.
fn id_of(local: &str) -> Option<u64> {
    local
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// What the client wrote, in order; each item gets one reply (the greeting is reply 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Ehlo,
    Helo,
    XShadow,
    Mail,
    Rcpt,
    Data,
    /// The DATA body and its terminator, for this message.
    Body(Option<u64>),
    /// `BDAT <len> LAST` and its bytes, for this message.
    Bdat(Option<u64>),
    Rset,
    XqDiscard,
    Quit,
}

/// Where the reading of the client's output stands.
#[derive(Debug)]
enum Reading {
    Lines,
    /// After DATA: a body follows only if its reply is a 3xx.
    AfterData(usize),
    Body(DotReader, Vec<u8>),
    Bdat {
        left: usize,
        got: Vec<u8>,
    },
}

/// The client's output read as a server reads it, and the server's replies as the client
/// reads them.
struct Wire {
    buf: Vec<u8>,
    lines: LineReader,
    reading: Reading,
    items: Vec<Item>,
    /// Codes of the replies read, in order: reply 0 is the greeting, reply i + 1 answers
    /// item i.
    codes: Vec<u16>,
    replies: ReplyReader,
    inbuf: Vec<u8>,
    reply_error: bool,
    /// The longest unfinished reply and the largest reply seen, in bytes.
    max_partial: usize,
    max_reply: usize,
    /// The message the current transaction carries.
    current: Option<u64>,
}

impl Wire {
    fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            lines: LineReader::new(max_line),
            reading: Reading::Lines,
            items: Vec::new(),
            codes: Vec::new(),
            replies: ReplyReader::with_limits(max_line, DEFAULT_MAX_REPLY_LINES),
            inbuf: Vec::new(),
            reply_error: false,
            max_partial: 0,
            max_reply: 0,
            current: None,
        }
    }

    /// The server's bytes, read as the client reads them.
    fn replies(&mut self, bytes: &[u8]) {
        if self.reply_error {
            return;
        }
        self.inbuf.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            match self.replies.read(&self.inbuf[at..]) {
                Ok(Some((reply, used))) => {
                    self.codes.push(reply.code);
                    self.max_reply = self.max_reply.max(used);
                    at += used;
                }
                Ok(None) => break,
                Err(_) => {
                    self.reply_error = true;
                    break;
                }
            }
        }
        self.inbuf.drain(..at);
        self.max_partial = self.max_partial.max(self.inbuf.len());
    }

    fn reply_to(&self, item: usize) -> Option<u16> {
        self.codes.get(item + 1).copied()
    }

    /// The client's bytes, read as a server reads them.
    fn commands(&mut self, out: &[u8], s: &ClientSession, messages: &[OutboundMessage]) {
        assert!(
            self.items.last() != Some(&Item::Quit) || out.is_empty(),
            "bytes after QUIT: {out:?}"
        );
        self.buf.extend_from_slice(out);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            match &mut self.reading {
                Reading::Lines => {
                    let (frame, used) = self.lines.read(rest);
                    let line = match frame {
                        Frame::NeedMore => {
                            at += used;
                            break;
                        }
                        Frame::TooLong => panic!("the client wrote an over-long line"),
                        Frame::Line(line) => line.to_vec(),
                    };
                    at += used;
                    self.command(&line, s, messages);
                }
                Reading::AfterData(i) => match self.codes.get(*i + 1).copied() {
                    None => {
                        assert!(
                            rest.is_empty(),
                            "bytes after DATA before its reply: {rest:?}"
                        );
                        break;
                    }
                    Some(code) if (300..400).contains(&code) => {
                        self.reading = Reading::Body(DotReader::new(), Vec::new());
                    }
                    Some(_) => self.reading = Reading::Lines,
                },
                Reading::Body(reader, body) => {
                    let progress = reader.read(rest, body);
                    at += progress.consumed;
                    if !progress.done {
                        break;
                    }
                    let body = std::mem::take(body);
                    if !body.is_empty() {
                        let m = self
                            .current
                            .and_then(|id| messages.iter().find(|m| m.id == id))
                            .expect("a DATA body for no known message");
                        let mut want = m.body.to_vec();
                        if !want.is_empty() && !want.ends_with(b"\r\n") {
                            want.extend_from_slice(b"\r\n");
                        }
                        assert_eq!(body, want, "DATA carried another body");
                    }
                    self.items.push(Item::Body(self.current));
                    self.reading = Reading::Lines;
                }
                Reading::Bdat { left, got } => {
                    let take = (*left).min(rest.len());
                    got.extend_from_slice(&rest[..take]);
                    *left -= take;
                    at += take;
                    if *left > 0 {
                        break;
                    }
                    let m = self
                        .current
                        .and_then(|id| messages.iter().find(|m| m.id == id))
                        .expect("a BDAT chunk for no known message");
                    assert_eq!(got[..], m.body[..], "BDAT carried another body");
                    self.items.push(Item::Bdat(self.current));
                    self.reading = Reading::Lines;
                }
            }
        }
        self.buf.drain(..at);
    }

    fn command(&mut self, line: &[u8], s: &ClientSession, messages: &[OutboundMessage]) {
        let command = Command::parse(line).unwrap_or_else(|e| {
            panic!(
                "the client wrote {:?}, which does not parse: {e:?}",
                String::from_utf8_lossy(line)
            )
        });
        if self.items.is_empty() {
            // EHLO, or QUIT after a refused greeting.
            assert!(
                matches!(command, Command::Ehlo { .. } | Command::Quit),
                "first command {command:?}"
            );
        }
        let item = match command {
            Command::Ehlo { .. } => Item::Ehlo,
            Command::Helo { .. } => Item::Helo,
            Command::XShadow { context } => {
                assert_eq!(context, CONTEXT);
                Item::XShadow
            }
            Command::Mail { from, params } => {
                self.current = from.mailbox().and_then(|m| id_of(m.local_part()));
                if let Some(id) = self.current {
                    let m = messages
                        .iter()
                        .find(|m| m.id == id)
                        .expect("MAIL for no message");
                    let usable = m
                        .shadow_id
                        .as_ref()
                        .filter(|id| !id.is_empty() && id.len() <= 255);
                    let want = usable.filter(|_| s.is_shadowed());
                    assert_eq!(
                        params.xshadow.as_deref(),
                        want.map(|w| &**w),
                        "XSHADOW= on message {id}"
                    );
                }
                Item::Mail
            }
            Command::Rcpt { to, .. } => {
                if let ForwardPath::Mailbox(m) = &to
                    && self.current.is_none()
                {
                    self.current = id_of(m.local_part());
                }
                Item::Rcpt
            }
            Command::Data => {
                self.reading = Reading::AfterData(self.items.len());
                Item::Data
            }
            Command::Bdat { size, last } => {
                assert!(last, "BDAT without LAST");
                self.reading = Reading::Bdat {
                    left: usize::try_from(size).expect("a sane BDAT size"),
                    got: Vec::new(),
                };
                return;
            }
            Command::Rset => Item::Rset,
            Command::XqDiscard { .. } => Item::XqDiscard,
            Command::Quit => Item::Quit,
            other => panic!("the client wrote {other:?}"),
        };
        if item == Item::Rset {
            self.current = None;
        }
        self.items.push(item);
    }

    /// Heap bytes the reading itself holds (not the session's).
    fn heap(&self) -> usize {
        let reading = match &self.reading {
            Reading::Body(_, body) => body.capacity(),
            Reading::Bdat { got, .. } => got.capacity(),
            _ => 0,
        };
        self.buf.capacity()
            + self.inbuf.capacity()
            + self.items.capacity() * size_of::<Item>()
            + self.codes.capacity() * size_of::<u16>()
            + reading
    }

    /// True when the end of data of message `id` got a 2xx.
    fn taken(&self, id: u64) -> bool {
        self.items.iter().enumerate().any(|(i, item)| {
            matches!(item, Item::Body(Some(x)) | Item::Bdat(Some(x)) if *x == id)
                && self.reply_to(i).is_some_and(|c| (200..300).contains(&c))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Failed,
    Deferred,
}

struct Driver<'a> {
    s: ClientSession,
    now: Instant,
    wire: Wire,
    /// The server's bytes, fed from `at` on, a piece or a line at a time.
    input: &'a [u8],
    at: usize,
    /// Where each piece of `split` ends.
    ends: Vec<usize>,
    /// Feed a line at a time once the control bytes run out (control byte 15).
    line_mode: bool,
    messages: Vec<OutboundMessage>,
    queued: usize,
    outcomes: Vec<Option<Outcome>>,
    /// (message id, call number) of each MessageAccepted.
    accepted: Vec<(u64, usize)>,
    finished: bool,
    more_pending: bool,
    more_rounds: usize,
    closed: usize,
    closed_call: usize,
    sealed: bool,
    calls: usize,
    /// The largest input handed over in one call.
    max_fed: usize,
    baseline: isize,
    /// What the harness itself held on the heap at the baseline.
    harness: usize,
    drained_bytes: usize,
    drained_events: usize,
}

/// The most driver steps per run.
const MAX_STEPS: usize = 2048;

fn run(cfg: u8, specs: &[u8], mut ctl: Controls<'_>, wire: &[u8], seed: u64) {
    let config = config(cfg, seed);
    let max_line = config.max_line;
    let messages: Vec<OutboundMessage> = specs
        .iter()
        .zip(1..)
        .map(|(&spec, id)| message(id, spec))
        .collect();
    let ends = split(wire, seed)
        .iter()
        .scan(0, |end, piece| {
            *end += piece.len();
            Some(*end)
        })
        .collect();
    let start = Instant::now();
    let mut d = Driver {
        s: ClientSession::new(config, start).expect("a valid configuration"),
        now: start,
        wire: Wire::new(max_line),
        input: wire,
        at: 0,
        ends,
        line_mode: false,
        outcomes: vec![None; messages.len()],
        messages,
        queued: 0,
        accepted: Vec::new(),
        finished: false,
        more_pending: false,
        more_rounds: 0,
        closed: 0,
        closed_call: 0,
        sealed: false,
        calls: 0,
        max_fed: 0,
        baseline: 0,
        harness: 0,
        drained_bytes: 0,
        drained_events: 0,
    };
    d.wire.buf.reserve(64 * 1024);
    d.wire.inbuf.reserve(64 * 1024);
    d.harness = d.harness_heap();
    d.baseline = live();
    d.drain();
    if cfg & 128 == 0 {
        while d.queued < d.messages.len() {
            d.queue();
        }
    }
    if cfg & 16 == 0 {
        d.finish(cfg & 32 != 0);
    }
    for _ in 0..MAX_STEPS {
        if d.closed > 0 {
            break;
        }
        let Some(b) = ctl.next() else {
            if d.more_pending {
                d.discard_more(d.more_rounds < 2);
            } else if d.at < d.input.len() {
                if d.line_mode {
                    d.feed_line();
                } else {
                    d.feed();
                }
            } else {
                break;
            }
            continue;
        };
        let flavour = b >> 4;
        match b % 16 {
            0..=5 => d.feed(),
            6 => d.feed_until_something(),
            7 => d.feed_line(),
            8 => d.queue(),
            9 => d.finish(flavour & 1 != 0),
            10 => d.discard_more(flavour & 1 != 0),
            11 | 12 => d.timeout(flavour),
            13 if flavour < 4 => d.close(),
            14 => d.drain(),
            _ => d.line_mode = true,
        }
    }
    if d.closed == 0 {
        d.close();
    }
    d.after_close();
}

impl Driver<'_> {
    fn feed(&mut self) {
        let end = self.ends.iter().copied().find(|&e| e > self.at);
        self.feed_to(end.unwrap_or(self.input.len()));
    }

    /// Feeds the server's next line (through its LF).
    fn feed_line(&mut self) {
        let rest = &self.input[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |n| n + 1);
        self.feed_to(self.at + end);
    }

    fn feed_to(&mut self, end: usize) {
        let piece = &self.input[self.at..end];
        if piece.is_empty() {
            return;
        }
        self.at = end;
        self.max_fed = self.max_fed.max(piece.len());
        self.now += Duration::from_micros(1);
        if self.closed == 0 {
            self.wire.replies(piece);
        }
        self.calls += 1;
        self.s.handle_input(piece, self.now);
        self.drain();
    }

    /// Feeds piece after piece until the session writes or says something.
    fn feed_until_something(&mut self) {
        while self.at < self.input.len() && self.closed == 0 {
            self.feed();
            if self.drained_bytes > 0 || self.drained_events > 0 {
                break;
            }
        }
    }

    fn queue(&mut self) {
        let Some(msg) = self.messages.get(self.queued).cloned() else {
            return;
        };
        self.calls += 1;
        match self.s.queue_message(msg, self.now) {
            Ok(()) => {
                assert!(
                    !self.finished && self.closed == 0,
                    "queue_message after finish"
                );
                self.queued += 1;
            }
            // Refused once finished, closed or quitting (the caller cannot see quitting).
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        self.drain();
    }

    fn finish(&mut self, query: bool) {
        self.calls += 1;
        match self.s.finish(query, self.now) {
            Ok(()) => {
                assert!(!self.finished && self.closed == 0, "finish accepted twice");
                self.finished = true;
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        self.drain();
    }

    fn discard_more(&mut self, more: bool) {
        self.calls += 1;
        let result = self.s.discard_more(more, self.now);
        assert_eq!(
            result.is_ok(),
            self.more_pending,
            "discard_more gave {result:?} with more_possible pending: {}",
            self.more_pending
        );
        if result.is_ok() {
            self.more_pending = false;
            self.more_rounds += 1;
        }
        self.drain();
        if result.is_err() {
            assert_eq!(
                (self.drained_bytes, self.drained_events),
                (0, 0),
                "a refused discard_more changed the session"
            );
        }
    }

    fn timeout(&mut self, flavour: u8) {
        let deadline = self.s.poll_timeout();
        self.now = match (flavour % 4, deadline) {
            (0, _) => self.now + Duration::from_millis(u64::from(flavour) * 7),
            (1, _) => self.now + Duration::from_secs(u64::from(flavour) * 60),
            (2, Some(d)) => d.max(self.now),
            (3, Some(d)) => self
                .now
                .max(d.checked_sub(Duration::from_nanos(1)).unwrap_or(d)),
            _ => self.now + Duration::from_secs(3600),
        };
        self.calls += 1;
        self.s.handle_timeout(self.now);
        self.drain();
        match deadline {
            Some(d) if self.now >= d => {
                assert_eq!(self.closed, 1, "an expired timer did not end the session");
            }
            _ => assert_eq!(
                (self.drained_bytes, self.drained_events),
                (0, 0),
                "an early handle_timeout changed the session"
            ),
        }
    }

    fn close(&mut self) {
        self.now += Duration::from_millis(1);
        self.calls += 1;
        self.s.handle_close(self.now);
        self.drain();
        assert_eq!(self.closed, 1, "handle_close did not end the session");
    }

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
                self.wire.commands(&out, &self.s, &self.messages);
            }
            drop(out);
            while let Some(event) = self.s.poll_event() {
                moved = true;
                assert!(
                    !self.sealed && self.closed == 0,
                    "event after Closed: {event:?}"
                );
                self.drained_events += 1;
                self.event(event);
            }
            if !moved {
                break;
            }
        }
        if self.closed > 0 {
            self.sealed = true;
        } else {
            self.check_memory();
        }
    }

    fn outcome(&mut self, id: u64, outcome: Outcome) {
        let i = usize::try_from(id - 1).expect("small ids");
        assert!(i < self.queued, "an outcome for message {id}, never queued");
        assert_eq!(
            self.outcomes[i], None,
            "message {id}: {outcome:?} after {:?}",
            self.outcomes[i]
        );
        self.outcomes[i] = Some(outcome);
    }

    fn event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::MessageAccepted {
                id,
                shadowed,
                shadow_id,
                reply,
                ..
            } => {
                assert!(reply.is_positive(), "accepted with {reply:?}");
                assert_eq!(shadowed, shadow_id.is_some());
                assert!(!shadowed || self.s.is_shadowed());
                self.accepted.push((id, self.calls));
                self.outcome(id, Outcome::Accepted);
            }
            ClientEvent::MessageFailed {
                id, reply, local, ..
            } => {
                assert!(local || !reply.is_positive(), "failed with {reply:?}");
                self.outcome(id, Outcome::Failed);
            }
            ClientEvent::MessageDeferred { id, .. } => self.outcome(id, Outcome::Deferred),
            ClientEvent::DiscardIds { ids, more_possible } => {
                assert!(!self.more_pending);
                assert!(ids.len() <= 1000);
                self.more_pending = more_possible;
            }
            ClientEvent::Closed { .. } => {
                assert!(self.s.is_closed());
                self.closed += 1;
                self.closed_call = self.calls;
                self.more_pending = false;
                for (i, o) in self.outcomes.iter().take(self.queued).enumerate() {
                    assert!(o.is_some(), "message {} has no outcome at Closed", i + 1);
                }
            }
            ClientEvent::ShadowAccepted { database_id } => {
                assert!(!database_id.is_empty() && database_id.len() <= 255);
            }
            ClientEvent::Capabilities { .. }
            | ClientEvent::ShadowRefused { .. }
            | ClientEvent::ShadowNotOffered
            | ClientEvent::DiscardRefused { .. }
            | ClientEvent::ProtocolBreach { .. } => {}
        }
    }

    fn harness_heap(&self) -> usize {
        self.wire.heap() + self.accepted.capacity() * size_of::<(u64, usize)>()
    }

    fn check_memory(&self) {
        let harness = self.harness_heap() as isize - self.harness as isize;
        let held = usize::try_from(live() - self.baseline - harness).unwrap_or(0);
        let bodies: usize = self.messages.iter().map(|m| m.body.len()).sum();
        let bound = 4 * (self.wire.max_partial + self.max_fed)
            + 4 * self.wire.max_reply
            + self.messages.len() * (8 * 1024 + 4 * bodies)
            + 64 * 1024;
        assert!(
            held <= bound,
            "the session holds {held} bytes (bound {bound})"
        );
    }

    fn after_close(&mut self) {
        assert_eq!(self.closed, 1, "one Closed event");
        for (id, call) in &self.accepted {
            assert!(
                self.wire.taken(*id) || *call == self.closed_call,
                "message {id} reported accepted without a 2xx to its end of data"
            );
        }
        assert!(self.s.is_closed());
        assert_eq!(self.s.poll_timeout(), None);
        self.now += Duration::from_secs(1);
        self.s.handle_input(b"250 OK\r\n", self.now);
        self.s.handle_close(self.now);
        self.s
            .handle_timeout(self.now + Duration::from_secs(86_400));
        let msg = self
            .messages
            .first()
            .cloned()
            .unwrap_or_else(|| message(99, 9));
        assert!(self.s.queue_message(msg, self.now).is_err());
        assert!(self.s.finish(true, self.now).is_err());
        assert!(self.s.discard_more(true, self.now).is_err());
        self.drain();
        assert_eq!((self.drained_bytes, self.drained_events), (0, 0));
    }
}
