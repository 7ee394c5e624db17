//! Wire codec benchmarks, named by scenario. Results and how to read them: BENCHMARKS.md.
//!
//! Each group holds our codec (`xshadow`) and, where it has an equivalent, smtp-proto 0.2
//! (`smtp-proto`) on the same input bytes, so the ratio is read from one run.
//!
//! - `commands/mix`: a client command stream with the shadow extensions (EHLO, MAIL with
//!   `SIZE BODY XSHADOW`, 5 RCPT, DATA, XQDISCARD 50, QUIT), framed and parsed. smtp-proto does
//!   not know XSHADOW= or XQDISCARD: it answers them with `UnsupportedParameter` (copying the
//!   parameter into a new `String`) and `UnknownCommand`, skipping the rest of the line, which
//!   is what it does in production; so on those two lines it does *less* work than we do.
//! - `commands/mix_rfc5321`: the same stream with XSHADOW= replaced by ENVID= (also xtext, same
//!   value) and XQDISCARD 50 by RSET, so both parsers accept and type every command: the
//!   like-for-like ratio.
//! - `replies/ehlo_12_lines`, `replies/xqdiscard_50_lines`: one reply read from a buffer and
//!   typed (EHLO keywords; the discard ids, checked as `Reply::xqdiscard_ids(50)` checks them).
//! - `body/*`: a ~1 MiB message of 76-byte text lines + CRLF, un-stuffed from its wire form
//!   (fed in 64 KiB reads into a reused `Vec`) and stuffed into a reused `Vec`.
//!
//! All inputs are checked once, before any timing, so that a side that silently fails fast
//! cannot win.
//!
//! Instruction counts: with `WIRE_BENCH_COUNT=<group>/<scenario>/<side>=<runs>` set, the binary
//! runs that one scenario `runs` times and exits, for `valgrind --tool=cachegrind` (see
//! BENCHMARKS.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use smtp_proto::request::receiver::{DataReceiver, RequestReceiver};
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EhloResponse, Request};
use xshadow::core::wire::reply::parse_reply;
use xshadow::core::wire::{Command, DotReader, EhloReply, Frame, LineReader, ReplyReader, body};

const OURS: &str = "xshadow";
const THEIRS: &str = "smtp-proto";

const GUID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

/// The size of one socket read fed to the body readers.
const READ_SIZE: usize = 64 * 1024;

const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// The client's side of one transaction, as one pipelined buffer of 10 commands.
fn command_stream(mail_params: &str, before_quit: &str) -> Vec<u8> {
    let mut s = String::new();
    s.push_str("EHLO client.example.com\r\n");
    s.push_str(&format!("MAIL FROM:<sender@example.com> {mail_params}\r\n"));
    for i in 1..=5 {
        s.push_str(&format!("RCPT TO:<recipient{i}@example.net>\r\n"));
    }
    s.push_str("DATA\r\n");
    s.push_str(before_quit);
    s.push_str("QUIT\r\n");
    s.into_bytes()
}

/// Frames every line of `stream` with [`LineReader`] and parses it with [`Command::parse`];
/// returns the commands parsed without error.
fn ours_commands(stream: &[u8]) -> usize {
    let mut reader = LineReader::default();
    let mut buf = stream;
    let mut ok = 0;
    loop {
        let (frame, consumed) = reader.read(buf);
        match frame {
            Frame::Line(line) => {
                let command = Command::parse(line);
                ok += usize::from(command.is_ok());
                black_box(&command);
            }
            Frame::TooLong => {}
            Frame::NeedMore => break,
        }
        buf = &buf[consumed..];
    }
    ok
}

/// The same stream through smtp-proto's framing ([`RequestReceiver::ingest`], which runs
/// `Request::parse` on the bytes in place); returns the requests parsed without error.
fn theirs_commands(stream: &[u8], receiver: &mut RequestReceiver) -> usize {
    let mut bytes = stream.iter();
    let mut ok = 0;
    while !bytes.as_slice().is_empty() {
        let request = receiver.ingest(&mut bytes);
        ok += usize::from(request.is_ok());
        black_box(&request);
    }
    ok
}

fn theirs_results(stream: &[u8]) -> Vec<Result<&'static str, smtp_proto::Error>> {
    let mut receiver = RequestReceiver::default();
    let mut bytes = stream.iter();
    let mut results = Vec::new();
    while !bytes.as_slice().is_empty() {
        results.push(receiver.ingest(&mut bytes).map(|r: Request<_>| r.name()));
    }
    results
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

const EHLO_REPLY: &[u8] = b"250-mx.example.com Hello client.example.com [192.0.2.1]\r\n\
250-PIPELINING\r\n\
250-SIZE 36700160\r\n\
250-8BITMIME\r\n\
250-ENHANCEDSTATUSCODES\r\n\
250-DSN\r\n\
250-STARTTLS\r\n\
250-CHUNKING\r\n\
250-BINARYMIME\r\n\
250-SMTPUTF8\r\n\
250-XSHADOW\r\n\
250 XSHADOWREQUEST\r\n";

/// `250-<id>` ... `250 <id>`, GUID-shaped ids.
fn discard_reply(ids: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..ids {
        let sep = if i + 1 == ids { ' ' } else { '-' };
        out.extend_from_slice(
            format!("250{sep}{i:08x}-4f89-41d3-9a0c-0305e82c3301\r\n").as_bytes(),
        );
    }
    out
}

/// Reads one EHLO reply and types its keywords; returns the number of keywords understood.
fn ours_ehlo(bytes: &[u8], reader: &mut ReplyReader) -> usize {
    let (reply, _) = reader.read(bytes).ok().flatten().expect("a whole reply");
    let ehlo = EhloReply::from_reply(&reply).expect("a positive EHLO reply");
    let k = &ehlo.keywords;
    let known = [
        k.pipelining,
        k.size.is_some(),
        k.eight_bit_mime,
        k.enhanced_status_codes,
        k.dsn,
        k.starttls,
        k.chunking,
        k.binary_mime,
        k.smtputf8,
        k.xshadow,
        k.xshadow_request,
    ];
    black_box(&ehlo);
    known.iter().filter(|&&b| b).count()
}

/// smtp-proto's EHLO reader; returns the number of capability bits set.
fn theirs_ehlo(bytes: &[u8]) -> usize {
    let ehlo = EhloResponse::parse(&mut bytes.iter()).expect("a positive EHLO reply");
    let n = ehlo.capabilities.count_ones() as usize;
    black_box(&ehlo);
    n
}

/// Reads one XQDISCARD reply and checks it against `max` = 50; returns the id count.
fn ours_discard(bytes: &[u8], reader: &mut ReplyReader) -> usize {
    let (reply, _) = reader.read(bytes).ok().flatten().expect("a whole reply");
    let ids = reply.xqdiscard_ids(50).expect("valid discard ids");
    black_box(ids);
    ids.len()
}

/// smtp-proto's generic reply reader (one `String`, lines joined by LF), then the checks of
/// `xqdiscard_ids`: code 250, at most 50 lines, none empty or longer than 255 bytes.
fn theirs_discard(bytes: &[u8], receiver: &mut ResponseReceiver) -> usize {
    receiver.reset();
    let response = receiver.parse(&mut bytes.iter()).expect("a whole reply");
    assert_eq!(response.code, 250);
    let mut n = 0;
    for id in response.message.split('\n') {
        assert!(!id.is_empty() && id.len() <= 255);
        n += 1;
    }
    assert!(n <= 50);
    black_box(&response);
    n
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// About 1 MiB of prose in 76-byte lines + CRLF (sentences, so dots also occur mid-line).
/// With `leading_dot`, every line starts with a dot.
fn message_body(leading_dot: bool) -> Vec<u8> {
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
        "Exchange",
        "redundancy",
        "heartbeat",
        "with",
        "for",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut out = Vec::with_capacity(MIB + 128);
    while out.len() + 78 <= MIB {
        let mut line = Vec::with_capacity(78);
        if leading_dot {
            line.push(b'.');
        }
        while line.len() < 76 {
            let r = next();
            let word = WORDS[(r % WORDS.len() as u64) as usize].as_bytes();
            line.extend_from_slice(word);
            line.push(if r % 9 == 0 { b'.' } else { b' ' });
        }
        line.truncate(76);
        line.extend_from_slice(b"\r\n");
        out.extend_from_slice(&line);
    }
    out
}

/// Un-stuffs `wire` in [`READ_SIZE`] reads into `out`; returns the body length once the
/// terminator is seen.
fn ours_unstuff(wire: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut reader = DotReader::new();
    for chunk in wire.chunks(READ_SIZE) {
        if reader.read(chunk, out).done {
            return out.len();
        }
    }
    panic!("no terminator")
}

/// smtp-proto's DATA receiver on the same reads.
fn theirs_unstuff(wire: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut receiver = DataReceiver::new();
    for chunk in wire.chunks(READ_SIZE) {
        if receiver.ingest(&mut chunk.iter(), out) {
            return out.len();
        }
    }
    panic!("no terminator")
}

// ---------------------------------------------------------------------------------------------
// Inputs, checked once
// ---------------------------------------------------------------------------------------------

struct Inputs {
    /// `commands/mix`.
    shadow: Vec<u8>,
    /// `commands/mix_rfc5321`.
    standard: Vec<u8>,
    discard: Vec<u8>,
    plain: Vec<u8>,
    wire_plain: Vec<u8>,
    wire_dotted: Vec<u8>,
}

impl Inputs {
    fn new() -> Self {
        let shadow = command_stream(
            &format!("SIZE=2048 BODY=8BITMIME XSHADOW={GUID}"),
            "XQDISCARD 50\r\n",
        );
        let standard = command_stream(&format!("SIZE=2048 BODY=8BITMIME ENVID={GUID}"), "RSET\r\n");
        let plain = message_body(false);
        let dotted = message_body(true);
        let mut wire_plain = Vec::new();
        body::stuff(&plain, &mut wire_plain);
        let mut wire_dotted = Vec::new();
        body::stuff(&dotted, &mut wire_dotted);
        let inputs = Self {
            shadow,
            standard,
            discard: discard_reply(50),
            plain,
            wire_plain,
            wire_dotted,
        };
        inputs.check(&dotted);
        inputs
    }

    /// What each side makes of the inputs.
    fn check(&self, dotted: &[u8]) {
        // Commands: we accept all 10 of both streams.
        assert_eq!(ours_commands(&self.shadow), 10);
        assert_eq!(ours_commands(&self.standard), 10);
        // smtp-proto refuses the two shadow lines and accepts the other 8...
        let theirs = theirs_results(&self.shadow);
        assert_eq!(theirs.len(), 10);
        assert!(
            matches!(&theirs[1], Err(smtp_proto::Error::UnsupportedParameter { param })
                if param.starts_with("XSHADOW=")),
            "{:?}",
            theirs[1]
        );
        assert_eq!(theirs[8], Err(smtp_proto::Error::UnknownCommand));
        assert_eq!(theirs.iter().filter(|r| r.is_ok()).count(), 8);
        // ... and all 10 of the standard stream.
        let theirs = theirs_results(&self.standard);
        assert_eq!(theirs.len(), 10);
        assert!(theirs.iter().all(Result::is_ok), "{theirs:?}");

        // Replies. smtp-proto knows 9 of the 11 EHLO keywords (not XSHADOW, XSHADOWREQUEST).
        let mut reader = ReplyReader::new();
        assert_eq!(ours_ehlo(EHLO_REPLY, &mut reader), 11);
        assert_eq!(theirs_ehlo(EHLO_REPLY), 9);
        assert_eq!(ours_discard(&self.discard, &mut reader), 50);
        let mut receiver = ResponseReceiver::default();
        assert_eq!(theirs_discard(&self.discard, &mut receiver), 50);
        let (reply, _) = parse_reply(&self.discard).unwrap().unwrap();
        receiver.reset();
        let response = receiver.parse(&mut self.discard.iter()).unwrap();
        assert_eq!(response.message.split('\n').next(), Some(&*reply.lines[0]));

        // Bodies: both un-stuff to the original body (with one known smtp-proto difference).
        assert_eq!(self.wire_plain.len(), self.plain.len() + 3);
        assert_eq!(self.wire_dotted.len(), dotted.len() + dotted.len() / 78 + 3);
        let mut out = Vec::new();
        for (wire, body) in [
            (&self.wire_plain, &self.plain[..]),
            (&self.wire_dotted, dotted),
        ] {
            ours_unstuff(wire, &mut out);
            assert_eq!(out, body);
            theirs_unstuff(wire, &mut out);
            if body[0] == b'.' {
                // smtp-proto does not un-stuff a dot on the first line of the message (its
                // state starts mid-line), so it keeps one extra dot there; the rest is equal.
                assert_eq!(out[0], b'.');
                assert_eq!(&out[1..], body);
            } else {
                assert_eq!(out, body);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario table, shared by criterion and the instruction-count mode
// ---------------------------------------------------------------------------------------------

type Routine<'a> = Box<dyn FnMut() -> usize + 'a>;

struct Bench<'a> {
    group: &'static str,
    scenario: &'static str,
    side: &'static str,
    throughput: Throughput,
    run: Routine<'a>,
}

impl Bench<'_> {
    fn id(&self) -> String {
        format!("{}/{}/{}", self.group, self.scenario, self.side)
    }
}

fn bench<'a>(
    group: &'static str,
    scenario: &'static str,
    side: &'static str,
    throughput: Throughput,
    run: Routine<'a>,
) -> Bench<'a> {
    Bench {
        group,
        scenario,
        side,
        throughput,
        run,
    }
}

fn benches(inputs: &Inputs) -> Vec<Bench<'_>> {
    let mut list = Vec::new();

    for (scenario, stream) in [("mix", &inputs.shadow), ("mix_rfc5321", &inputs.standard)] {
        let commands = Throughput::Elements(10);
        list.push(bench(
            "commands",
            scenario,
            OURS,
            commands.clone(),
            Box::new(move || ours_commands(black_box(stream))),
        ));
        let mut receiver = RequestReceiver::default();
        list.push(bench(
            "commands",
            scenario,
            THEIRS,
            commands,
            Box::new(move || theirs_commands(black_box(stream), &mut receiver)),
        ));
    }

    let ehlo = Throughput::Bytes(EHLO_REPLY.len() as u64);
    let mut reader = ReplyReader::new();
    list.push(bench(
        "replies",
        "ehlo_12_lines",
        OURS,
        ehlo.clone(),
        Box::new(move || ours_ehlo(black_box(EHLO_REPLY), &mut reader)),
    ));
    list.push(bench(
        "replies",
        "ehlo_12_lines",
        THEIRS,
        ehlo,
        Box::new(|| theirs_ehlo(black_box(EHLO_REPLY))),
    ));
    let discard = &inputs.discard;
    let bytes = Throughput::Bytes(discard.len() as u64);
    let mut reader = ReplyReader::new();
    list.push(bench(
        "replies",
        "xqdiscard_50_lines",
        OURS,
        bytes.clone(),
        Box::new(move || ours_discard(black_box(discard), &mut reader)),
    ));
    let mut receiver = ResponseReceiver::default();
    list.push(bench(
        "replies",
        "xqdiscard_50_lines",
        THEIRS,
        bytes,
        Box::new(move || theirs_discard(black_box(discard), &mut receiver)),
    ));

    for (scenario, wire) in [
        ("unstuff_1mib_plain", &inputs.wire_plain),
        ("unstuff_1mib_dot_heavy", &inputs.wire_dotted),
    ] {
        let bytes = Throughput::Bytes(wire.len() as u64);
        let mut out = Vec::with_capacity(2 * MIB);
        list.push(bench(
            "body",
            scenario,
            OURS,
            bytes.clone(),
            Box::new(move || ours_unstuff(black_box(wire), &mut out)),
        ));
        let mut out = Vec::with_capacity(2 * MIB);
        list.push(bench(
            "body",
            scenario,
            THEIRS,
            bytes,
            Box::new(move || theirs_unstuff(black_box(wire), &mut out)),
        ));
    }
    // smtp-proto has no DATA writer.
    let plain = &inputs.plain;
    let mut out = Vec::with_capacity(2 * MIB);
    list.push(bench(
        "body",
        "stuff_1mib_plain",
        OURS,
        Throughput::Bytes(plain.len() as u64),
        Box::new(move || {
            out.clear();
            body::stuff(black_box(plain), &mut out);
            out.len()
        }),
    ));
    list
}

fn main() {
    let inputs = Inputs::new();
    let mut list = benches(&inputs);

    if let Ok(spec) = std::env::var("WIRE_BENCH_COUNT") {
        let (id, runs) = spec.split_once('=').unwrap_or((&spec, "10000"));
        let runs: usize = runs.parse().expect("WIRE_BENCH_COUNT=<id>=<runs>");
        let Some(bench) = list.iter_mut().find(|b| b.id() == id) else {
            let ids: Vec<String> = list.iter().map(Bench::id).collect();
            panic!("no scenario {id}; known: {ids:?}");
        };
        let mut total = 0usize;
        for _ in 0..runs {
            total = total.wrapping_add((bench.run)());
        }
        println!("{id}: {runs} runs, checksum {total}");
        return;
    }

    // About 4 s per benchmark (1 s warm-up, 3 s measurement): 13 benchmarks, under a minute
    // and a half in all on the reference machine.
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .configure_from_args();
    for group_name in ["commands", "replies", "body"] {
        let mut group = criterion.benchmark_group(group_name);
        for bench in list.iter_mut().filter(|b| b.group == group_name) {
            group.throughput(bench.throughput.clone());
            let run = &mut bench.run;
            group.bench_function(BenchmarkId::new(bench.scenario, bench.side), |b| {
                b.iter(&mut *run)
            });
        }
        group.finish();
    }
    criterion.final_summary();
}
