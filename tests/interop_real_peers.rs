//! Interop with real SMTP software: Python's `smtplib` and raw pipelined / BDAT sockets
//! submit to `xshadow hub`; `xshadow edge` relays to `aiosmtpd`, Postfix's `smtp-sink` and
//! `xshadow sink`; Postfix's `smtp-source` and `swaks` send to an edge. The content that
//! arrives (after the trace headers the relays prepend) is compared byte for byte with what
//! was sent. Needs `scripts/test-deps.sh`. Every scenario runs with the `xshadow` processes on
//! each runtime binding (`--runtime tokio|mio|async-std`): one test per runtime.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const FROM: &str = "alice@example.org";
const TO: &str = "bob@example.net";

/// One test message: its content and which submitters can send it unchanged.
struct Payload {
    id: String,
    kind: &'static str,
    content: Vec<u8>,
    /// Only CRLF line ends: smtplib sends it unchanged (it rewrites bare CR and LF).
    smtplib_safe: bool,
    eight_bit: bool,
}

fn marker(id: &str) -> Vec<u8> {
    format!("X-Xshadow-Test: {id}\r\n").into_bytes()
}

fn head(id: &str, subject: &str) -> Vec<u8> {
    let mut h = marker(id);
    h.extend_from_slice(
        format!("From: <{FROM}>\r\nTo: <{TO}>\r\nSubject: {subject}\r\nMessage-ID: <{id}@interop.test>\r\n\r\n").as_bytes(),
    );
    h
}

fn dots(id: &str) -> Payload {
    let mut c = head(id, "leading dots");
    c.extend_from_slice(b".\r\n..\r\n.hidden line\r\n...three dots\r\n . space then dot\r\n. \r\n.\r\n.. \r\nmiddle . dot\r\n.\r\n");
    Payload {
        id: id.to_owned(),
        kind: "dots",
        content: c,
        smtplib_safe: true,
        eight_bit: false,
    }
}

/// "SMTP smuggling" sequences: none of them ends DATA; a server that took one as the end
/// would see the MAIL/RCPT/DATA after it as a second, smuggled message.
fn smuggling(id: &str) -> Payload {
    let mut c = head(id, "smuggling attempts");
    c.extend_from_slice(b"bare LF dot CRLF:\n.\r\n");
    c.extend_from_slice(b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled body 1\r\n");
    c.extend_from_slice(b"bare LF dot bare LF:\n.\n");
    c.extend_from_slice(b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled body 2\r\n");
    c.extend_from_slice(b"bare CR dot CRLF:\r.\r\n");
    c.extend_from_slice(b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled body 3\r\n");
    c.extend_from_slice(b"CRLF dot bare LF:\r\n.\n");
    c.extend_from_slice(b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled body 4\r\n");
    c.extend_from_slice(b"CRLF dot bare CR:\r\n.\rx\r\n");
    c.extend_from_slice(b"end of the real message\r\n");
    Payload {
        id: id.to_owned(),
        kind: "smuggling",
        content: c,
        smtplib_safe: false,
        eight_bit: false,
    }
}

fn long_lines(id: &str, longest: usize) -> Payload {
    let mut c = head(id, "long lines");
    for len in [998, 999, 4096, 10_000, 100_000] {
        if len > longest {
            continue;
        }
        let mut line: Vec<u8> = (0..len)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
            .collect();
        line[0] = b'.'; // a long line that also needs stuffing
        c.extend_from_slice(&line);
        c.extend_from_slice(b"\r\n");
    }
    c.extend_from_slice(b"short last line\r\n");
    Payload {
        id: id.to_owned(),
        kind: "long",
        content: c,
        smtplib_safe: true,
        eight_bit: false,
    }
}

fn eight_bit(id: &str) -> Payload {
    let mut c = head(id, "8-bit");
    c.extend_from_slice("UTF-8: Grüße aus Köln, 日本語, emoji 📨\r\n".as_bytes());
    let high: Vec<u8> = (0x80u8..=0xFF).collect();
    c.extend_from_slice(b"every high byte: ");
    c.extend_from_slice(&high);
    c.extend_from_slice(b"\r\n.\xe9 dot then Latin-1\r\n\xff\xfe\r\n");
    Payload {
        id: id.to_owned(),
        kind: "8bit",
        content: c,
        smtplib_safe: true,
        eight_bit: true,
    }
}

/// A hub → edge → destination chain.
struct Chain {
    hub: SocketAddr,
    edge: SocketAddr,
    _procs: Vec<Proc>,
}

fn chain(scratch: &Scratch, tag: &str, destination: SocketAddr, runtime: Runtime) -> Chain {
    // Default delayed acknowledgement (30s): the hub answers a sender once the edge took the
    // message, which is at once here.
    let opts = NodeOpts {
        max_ack_delay: "30s",
        ..NodeOpts::on(runtime)
    };
    let edge_spool = scratch.join(&format!("{tag}-edge-spool"));
    let (edge, edge_addr) = start_node(
        &format!("{tag} edge"),
        &scratch.join(&format!("{tag}-edge.log")),
        runtime,
        |p| {
            edge_cmd(
                &format!("edge.{tag}.test"),
                p,
                &edge_spool,
                destination,
                &opts,
            )
        },
    );
    let hub_spool = scratch.join(&format!("{tag}-hub-spool"));
    let (hub, hub_addr) = start_node(
        &format!("{tag} hub"),
        &scratch.join(&format!("{tag}-hub.log")),
        runtime,
        |p| {
            hub_cmd(
                &format!("hub.{tag}.test"),
                p,
                &hub_spool,
                &[edge_addr],
                &opts,
            )
        },
    );
    Chain {
        hub: hub_addr,
        edge: edge_addr,
        _procs: vec![edge, hub],
    }
}

/// Runs tests/peers/submit.py in `mode` with these payloads; all must be accepted.
fn submit(scratch: &Scratch, server: SocketAddr, mode: &str, payloads: &[&Payload]) {
    let mut files = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let path = scratch.join(&format!("submit-{mode}-{i}-{}.eml", p.kind));
        std::fs::write(&path, &p.content).expect("write payload");
        files.push(path);
    }
    let out = Command::new("python3")
        .arg(peer_script("submit.py"))
        .args([
            "--server",
            &server.to_string(),
            "--from",
            FROM,
            "--to",
            TO,
            "--mode",
            mode,
        ])
        .args(&files)
        .output()
        .expect("run python3 submit.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "submit.py --mode {mode} to {server} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("OK ")).count(),
        payloads.len(),
        "{stdout}"
    );
}

/// Everything the submitters send through a chain, keyed by marker id (smtplib rewrites bare
/// CR and LF, so the smuggling sequences go raw only).
fn submissions(dest: &str, longest: usize) -> Vec<(&'static str, Payload)> {
    let id = |mode: &str, kind: &str| format!("{dest}-{mode}-{kind}");
    vec![
        ("smtplib", dots(&id("smtplib", "dots"))),
        ("smtplib", long_lines(&id("smtplib", "long"), longest)),
        ("smtplib8bit", eight_bit(&id("smtplib8bit", "8bit"))),
        ("pipelined", dots(&id("pipelined", "dots"))),
        ("pipelined", long_lines(&id("pipelined", "long"), longest)),
        ("pipelined", eight_bit(&id("pipelined", "8bit"))),
        ("bdat", dots(&id("bdat", "dots"))),
        ("bdat", long_lines(&id("bdat", "long"), longest)),
        ("bdat", eight_bit(&id("bdat", "8bit"))),
        ("pipelined", smuggling(&id("pipelined", "smuggling"))),
        ("bdat", smuggling(&id("bdat", "smuggling"))),
    ]
}

fn submit_all(scratch: &Scratch, hub: SocketAddr, subs: &[(&'static str, Payload)]) {
    for mode in ["smtplib", "smtplib8bit", "pipelined", "bdat"] {
        let batch: Vec<&Payload> = subs
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, p)| p)
            .collect();
        if mode.starts_with("smtplib") {
            assert!(
                batch
                    .iter()
                    .all(|p| p.smtplib_safe && (p.eight_bit == (mode == "smtplib8bit")))
            );
        }
        submit(scratch, hub, mode, &batch);
    }
}

/// Checks the trace headers in front of a message's content: the edge's Received header,
/// then the hub's, then (right before the content) nothing else.
fn check_trace(trace: &[u8], tag: &str, line_end: &str) {
    let trace = String::from_utf8_lossy(trace);
    let edge_at = trace
        .find(&format!("by edge.{tag}.test (xshadow)"))
        .unwrap_or_else(|| panic!("no Received by the edge in {trace:?}"));
    let hub_at = trace
        .find(&format!("by hub.{tag}.test (xshadow)"))
        .unwrap_or_else(|| panic!("no Received by the hub in {trace:?}"));
    assert!(
        edge_at < hub_at,
        "the edge's Received header must come first: {trace:?}"
    );
    assert_eq!(
        trace.matches("(xshadow)").count(),
        2,
        "one Received header per node: {trace:?}"
    );
    assert!(trace.ends_with(line_end), "{trace:?}");
}

/// No file anywhere in `files` comes from the smuggled MAIL FROM.
fn assert_nothing_smuggled(files: &[(PathBuf, Vec<u8>)]) {
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        let before_content = text.split("X-Xshadow-Test: ").next().unwrap_or("");
        assert!(
            !before_content.contains("smuggled@evil.example")
                && !text.starts_with("Subject: smuggled"),
            "a smuggled message arrived: {}:\n{text}",
            path.display()
        );
    }
}

on_every_runtime!(
    submissions_reach_aiosmtpd =>
    smtplib_pipelined_and_bdat_submissions_reach_aiosmtpd_through_hub_and_edge_byte_identical_on_tokio,
    smtplib_pipelined_and_bdat_submissions_reach_aiosmtpd_through_hub_and_edge_byte_identical_on_mio,
    smtplib_pipelined_and_bdat_submissions_reach_aiosmtpd_through_hub_and_edge_byte_identical_on_async_std,
);

fn submissions_reach_aiosmtpd(runtime: Runtime) {
    if !require_peers() {
        return;
    }
    let scratch = Scratch::new(&format!("interop-aiosmtpd-{runtime}"));
    let store = scratch.join("aiosmtpd");
    let (_peer, peer_addr) = start_aiosmtpd(&scratch, &store);
    let c = chain(&scratch, "aio", peer_addr, runtime);
    // aiosmtpd keeps RFC 5321's line limit (998 octets + CRLF; 1001 with a stuffed dot).
    let subs = submissions("aio", 998);
    submit_all(&scratch, c.hub, &subs);

    let new = store.join("new");
    wait_for(
        "aiosmtpd to store every message",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let f: Vec<_> = read_files(&new)
                .into_iter()
                .filter(|(p, _)| p.extension().is_some_and(|e| e == "eml"))
                .collect();
            (f.len() >= subs.len()).then_some(f)
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let files: Vec<_> = read_files(&new)
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    assert_eq!(
        files.len(),
        subs.len(),
        "one message per submission, nothing smuggled"
    );
    for (mode, p) in &subs {
        let m = marker(&p.id);
        let hits: Vec<_> = files
            .iter()
            .filter(|(_, b)| find(b, &m).is_some())
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{mode} {}: found {} times",
            p.kind,
            hits.len()
        );
        let (path, bytes) = hits[0];
        let got = from_marker(bytes, &m).unwrap();
        assert!(
            got == &p.content[..],
            "{mode} {} ({}): {}",
            p.kind,
            path.display(),
            describe_difference(&p.content, got)
        );
        check_trace(before_marker(bytes, &m), "aio", "\r\n");
        // The envelope went through too.
        let meta = std::fs::read_to_string(path.with_extension("json")).expect("envelope");
        assert!(
            meta.contains(&format!("\"mail_from\": \"{FROM}\""))
                && meta.contains(&format!("[\"{TO}\"]")),
            "{meta}"
        );
        if p.eight_bit {
            assert!(
                meta.contains("BODY=8BITMIME"),
                "8-bit content must be relayed with BODY=8BITMIME: {meta}"
            );
        }
    }
    assert_nothing_smuggled(&files);
}

/// smtp-sink's dump (`-d`) is the content as text lines ending in LF, followed by an empty
/// line: CRLF and a bare LF both end a line, and a bare CR is dropped.
fn as_smtp_sink_dump(content: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = content.iter().copied().filter(|&b| b != b'\r').collect();
    out.push(b'\n');
    out
}

/// Waits until `list` gives at least `n` files whose sizes stopped changing (smtp-sink
/// writes a dump while the transaction runs).
fn settled_files(
    what: &str,
    n: usize,
    mut list: impl FnMut() -> Vec<(PathBuf, Vec<u8>)>,
) -> Vec<(PathBuf, Vec<u8>)> {
    let mut last: Option<Vec<(PathBuf, usize)>> = None;
    wait_for(
        what,
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let files = list();
            let sizes: Vec<(PathBuf, usize)> =
                files.iter().map(|(p, b)| (p.clone(), b.len())).collect();
            let settled = files.len() >= n && last.as_ref() == Some(&sizes);
            last = Some(sizes);
            settled.then_some(files)
        },
    )
}

on_every_runtime!(
    submissions_reach_smtp_sink =>
    smtplib_pipelined_and_bdat_submissions_reach_postfix_smtp_sink_through_hub_and_edge_intact_on_tokio,
    smtplib_pipelined_and_bdat_submissions_reach_postfix_smtp_sink_through_hub_and_edge_intact_on_mio,
    smtplib_pipelined_and_bdat_submissions_reach_postfix_smtp_sink_through_hub_and_edge_intact_on_async_std,
);

fn submissions_reach_smtp_sink(runtime: Runtime) {
    if !require_peers() {
        return;
    }
    let scratch = Scratch::new(&format!("interop-smtp-sink-{runtime}"));
    let dump = scratch.join("dump");
    let (_peer, peer_addr) = start_smtp_sink(&scratch, &dump);
    let c = chain(&scratch, "pfx", peer_addr, runtime);
    let subs = submissions("pfx", 100_000);
    submit_all(&scratch, c.hub, &subs);

    // smtp-sink writes a dump file while the transaction runs: wait until each has its
    // complete content.
    let expected: Vec<(String, Vec<u8>, Vec<u8>)> = subs
        .iter()
        .map(|(mode, p)| {
            let m = format!("X-Xshadow-Test: {}\n", p.id).into_bytes();
            (
                format!("{mode} {}", p.kind),
                m,
                as_smtp_sink_dump(&p.content),
            )
        })
        .collect();
    let files = wait_for(
        "smtp-sink to dump every message",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let files = read_files(&dump);
            let complete = expected.iter().all(|(_, m, want)| {
                files
                    .iter()
                    .any(|(_, b)| from_marker(b, m).is_some_and(|got| got.len() >= want.len()))
            });
            (complete && files.len() >= subs.len()).then_some(files)
        },
    );
    assert_eq!(
        files.len(),
        subs.len(),
        "one dump per submission, nothing smuggled: {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    for (what, m, want) in &expected {
        let hits: Vec<_> = files.iter().filter(|(_, b)| find(b, m).is_some()).collect();
        assert_eq!(hits.len(), 1, "{what}: found {} times", hits.len());
        let (path, bytes) = hits[0];
        let got = from_marker(bytes, m).unwrap();
        assert!(
            got == &want[..],
            "{what} ({}): {}",
            path.display(),
            describe_difference(want, got)
        );
        let trace = before_marker(bytes, m);
        let text = String::from_utf8_lossy(trace);
        assert!(text.contains(&format!("X-Mail-Args: <{FROM}>")), "{text}");
        assert!(text.contains("X-Helo-Args: edge.pfx.test"), "{text}");
        check_trace(trace, "pfx", "\n");
    }
    assert_nothing_smuggled(&files);
}

on_every_runtime!(
    submissions_reach_the_xshadow_sink =>
    smtplib_pipelined_and_bdat_submissions_reach_the_xshadow_sink_through_hub_and_edge_byte_identical_on_tokio,
    smtplib_pipelined_and_bdat_submissions_reach_the_xshadow_sink_through_hub_and_edge_byte_identical_on_mio,
    smtplib_pipelined_and_bdat_submissions_reach_the_xshadow_sink_through_hub_and_edge_byte_identical_on_async_std,
);

fn submissions_reach_the_xshadow_sink(runtime: Runtime) {
    if !require_peers() {
        return;
    }
    let scratch = Scratch::new(&format!("interop-xsink-{runtime}"));
    let maildir = scratch.join("maildir");
    let (_sink, sink_addr) = start_xshadow_sink(&scratch, &maildir, runtime);
    let c = chain(&scratch, "xs", sink_addr, runtime);
    let subs = submissions("xs", 100_000);
    submit_all(&scratch, c.hub, &subs);
    let new = maildir.join("new");
    let files = wait_for(
        "the sink to deliver every message",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            let f = read_files(&new);
            (f.len() >= subs.len()).then_some(f)
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let files_now = read_files(&new);
    assert_eq!(
        files_now.len(),
        files.len(),
        "nothing smuggled in after the expected messages"
    );
    for (mode, p) in &subs {
        let m = marker(&p.id);
        let hits: Vec<_> = files
            .iter()
            .filter(|(_, b)| find(b, &m).is_some())
            .collect();
        assert_eq!(hits.len(), 1, "{mode} {}", p.kind);
        let (path, bytes) = hits[0];
        let got = from_marker(bytes, &m).unwrap();
        assert!(
            got == &p.content[..],
            "{mode} {} ({}): {}",
            p.kind,
            path.display(),
            describe_difference(&p.content, got)
        );
        let trace = before_marker(bytes, &m);
        assert!(
            trace.starts_with(
                format!(
                    "Return-Path: <{FROM}>\r\nDelivered-To: {TO}\r\nReceived: from edge.xs.test by "
                )
                .as_bytes()
            )
        );
        check_trace(trace, "xs", "\r\n");
    }
    assert_nothing_smuggled(&files);
}

/// Runs smtp-source; it must exit 0.
fn smtp_source(args: &[&str], server: SocketAddr) {
    let out = Command::new(SMTP_SOURCE)
        .args(args)
        .arg(server.to_string())
        .output()
        .expect("run smtp-source");
    assert!(
        out.status.success(),
        "smtp-source {args:?} {server}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (envelope sender, content) of every message aiosmtpd stored.
fn aiosmtpd_messages(store: &Path) -> Vec<(String, Vec<u8>)> {
    read_files(&store.join("new"))
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "eml"))
        .map(|(p, bytes)| {
            let meta = std::fs::read_to_string(p.with_extension("json")).unwrap_or_default();
            let from = meta
                .split("\"mail_from\": \"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("")
                .to_owned();
            (from, bytes)
        })
        .collect()
}

fn body_of(content: &[u8]) -> &[u8] {
    let at = find(content, b"\r\n\r\n").expect("a header/body separator");
    &content[at + 4..]
}

on_every_runtime!(
    smtp_source_sessions_arrive_at_aiosmtpd =>
    smtp_source_sessions_to_an_edge_all_arrive_at_aiosmtpd_with_identical_bodies_on_tokio,
    smtp_source_sessions_to_an_edge_all_arrive_at_aiosmtpd_with_identical_bodies_on_mio,
    smtp_source_sessions_to_an_edge_all_arrive_at_aiosmtpd_with_identical_bodies_on_async_std,
);

fn smtp_source_sessions_arrive_at_aiosmtpd(runtime: Runtime) {
    if !require_peers() {
        return;
    }
    let scratch = Scratch::new(&format!("interop-smtp-source-{runtime}"));
    let store = scratch.join("aiosmtpd");
    let (_peer, peer_addr) = start_aiosmtpd(&scratch, &store);
    let opts = NodeOpts::on(runtime);
    let spool = scratch.join("edge-spool");
    let (_edge, edge_addr) = start_node("edge", &scratch.join("edge.log"), runtime, |p| {
        edge_cmd("edge.src.test", p, &spool, peer_addr, &opts)
    });
    // References straight to aiosmtpd, then the same through the edge: 4 parallel sessions
    // of one message each, and 2 sessions that keep the connection for 10 messages (-d).
    for (from, size) in [
        ("ref5k@example.org", "5000"),
        ("ref100k@example.org", "100000"),
    ] {
        smtp_source(&["-m", "1", "-l", size, "-f", from, "-t", TO], peer_addr);
    }
    smtp_source(
        &[
            "-s",
            "4",
            "-m",
            "40",
            "-l",
            "5000",
            "-f",
            "relay5k@example.org",
            "-t",
            TO,
        ],
        edge_addr,
    );
    smtp_source(
        &[
            "-d",
            "-s",
            "2",
            "-m",
            "20",
            "-l",
            "100000",
            "-f",
            "relay100k@example.org",
            "-t",
            TO,
        ],
        edge_addr,
    );

    let messages = wait_for(
        "62 messages at aiosmtpd",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let m = aiosmtpd_messages(&store);
            (m.len() >= 62).then_some(m)
        },
    );
    assert_eq!(messages.len(), 62);
    for (reference, relayed, count) in [
        ("ref5k@example.org", "relay5k@example.org", 40),
        ("ref100k@example.org", "relay100k@example.org", 20),
    ] {
        let want = messages
            .iter()
            .find(|(f, _)| f == reference)
            .map(|(_, c)| body_of(c).to_vec())
            .expect("reference");
        let got: Vec<_> = messages.iter().filter(|(f, _)| f == relayed).collect();
        assert_eq!(got.len(), count, "{relayed}");
        let mut ids = std::collections::HashSet::new();
        for (_, content) in got {
            let text = String::from_utf8_lossy(content);
            assert!(
                text.starts_with("Received: from "),
                "the edge's Received header comes first"
            );
            assert_eq!(text.matches("by edge.src.test (xshadow)").count(), 1);
            assert!(text.contains(&format!("\r\nFrom: <{relayed}>\r\n")));
            let id = text
                .lines()
                .find(|l| l.starts_with("Message-Id: "))
                .expect("smtp-source's Message-Id")
                .to_owned();
            assert!(ids.insert(id), "each message once");
            let body = body_of(content);
            assert!(
                body == &want[..],
                "{relayed}: {}",
                describe_difference(&want, body)
            );
        }
    }
}

on_every_runtime!(
    swaks_submission_arrives_at_the_xshadow_sink =>
    swaks_pipelined_submission_to_an_edge_arrives_at_the_xshadow_sink_byte_identical_on_tokio,
    swaks_pipelined_submission_to_an_edge_arrives_at_the_xshadow_sink_byte_identical_on_mio,
    swaks_pipelined_submission_to_an_edge_arrives_at_the_xshadow_sink_byte_identical_on_async_std,
);

fn swaks_submission_arrives_at_the_xshadow_sink(runtime: Runtime) {
    if !require_peers() {
        return;
    }
    let scratch = Scratch::new(&format!("interop-swaks-{runtime}"));
    let maildir = scratch.join("maildir");
    let (_sink, sink_addr) = start_xshadow_sink(&scratch, &maildir, runtime);
    let opts = NodeOpts::on(runtime);
    let spool = scratch.join("edge-spool");
    let (_edge, edge_addr) = start_node("edge", &scratch.join("edge.log"), runtime, |p| {
        edge_cmd("edge.swaks.test", p, &spool, sink_addr, &opts)
    });
    // swaks takes a last line of a single dot as the end of its data: end with text.
    let mut swaks_dots = dots("swaks-dots");
    swaks_dots.content.extend_from_slice(b"end\r\n");
    let mut payloads = vec![
        swaks_dots,
        long_lines("swaks-long", 10_000),
        eight_bit("swaks-8bit"),
    ];
    for p in &mut payloads {
        let path = scratch.join(&format!("swaks-{}.eml", p.kind));
        // swaks ends the data with a line end of its own: give it the content without its
        // last CRLF.
        std::fs::write(&path, &p.content[..p.content.len() - 2]).unwrap();
        let out = Command::new("swaks")
            .args([
                "--server",
                &edge_addr.to_string(),
                "--from",
                FROM,
                "--to",
                TO,
                "--helo",
                "swaks.test",
                "--pipeline",
                "--silent",
                "2",
            ])
            .arg("--data")
            .arg(format!("@{}", path.display()))
            .output()
            .expect("run swaks");
        assert!(
            out.status.success(),
            "swaks {}: {}{}",
            p.kind,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let files = wait_for(
        "the sink to deliver the swaks messages",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let f = read_files(&maildir.join("new"));
            (f.len() >= payloads.len()).then_some(f)
        },
    );
    assert_eq!(files.len(), payloads.len());
    for p in &payloads {
        let m = marker(&p.id);
        let (_, bytes) = files
            .iter()
            .find(|(_, b)| find(b, &m).is_some())
            .unwrap_or_else(|| panic!("{} not delivered", p.kind));
        let got = from_marker(bytes, &m).unwrap();
        assert!(
            got == &p.content[..],
            "swaks {}: {}",
            p.kind,
            describe_difference(&p.content, got)
        );
        let trace = String::from_utf8_lossy(before_marker(bytes, &m));
        assert!(
            trace.contains(
                "Received: from swaks.test (127.0.0.1)\r\n\tby edge.swaks.test (xshadow)"
            ),
            "{trace}"
        );
    }
}

/// What one peer holds: (file, bytes) of every stored message.
fn peer_files(kind: &str, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    match kind {
        "aiosmtpd" => read_files(&dir.join("new"))
            .into_iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == "eml"))
            .collect(),
        _ => read_files(dir),
    }
}

/// The content as the peer stores it.
fn as_stored(kind: &str, content: &[u8]) -> Vec<u8> {
    match kind {
        "aiosmtpd" => content.to_vec(),
        _ => as_smtp_sink_dump(content),
    }
}

fn stored_marker(kind: &str, id: &str) -> Vec<u8> {
    match kind {
        "aiosmtpd" => marker(id),
        _ => format!("X-Xshadow-Test: {id}\n").into_bytes(),
    }
}

on_every_runtime!(
    smuggling_attempts_arrive_intact_and_alone =>
    smuggling_attempts_reach_aiosmtpd_and_smtp_sink_intact_through_edge_and_hub_and_never_as_a_second_message_on_tokio,
    smuggling_attempts_reach_aiosmtpd_and_smtp_sink_intact_through_edge_and_hub_and_never_as_a_second_message_on_mio,
    smuggling_attempts_reach_aiosmtpd_and_smtp_sink_intact_through_edge_and_hub_and_never_as_a_second_message_on_async_std,
);

fn smuggling_attempts_arrive_intact_and_alone(runtime: Runtime) {
    if !require_peers() {
        return;
    }
    let scratch = Scratch::new(&format!("interop-smuggling-{runtime}"));
    let aio_dir = scratch.join("aiosmtpd");
    let pfx_dir = scratch.join("dump");
    let (_aio, aio_addr) = start_aiosmtpd(&scratch, &aio_dir);
    let (_pfx, pfx_addr) = start_smtp_sink(&scratch, &pfx_dir);
    for (kind, dir, addr) in [
        ("aiosmtpd", &aio_dir, aio_addr),
        ("smtp-sink", &pfx_dir, pfx_addr),
    ] {
        let tag = if kind == "aiosmtpd" { "smaio" } else { "smpfx" };
        let c = chain(&scratch, tag, addr, runtime);
        // Straight to the edge (it relays by DATA: the peer offers no CHUNKING) and through
        // the hub, by pipelined DATA and by BDAT.
        let direct = [
            smuggling(&format!("{tag}-edge-pipelined")),
            smuggling(&format!("{tag}-edge-bdat")),
        ];
        let via_hub = [
            smuggling(&format!("{tag}-hub-pipelined")),
            smuggling(&format!("{tag}-hub-bdat")),
        ];
        submit(&scratch, c.edge, "pipelined", &[&direct[0]]);
        submit(&scratch, c.edge, "bdat", &[&direct[1]]);
        submit(&scratch, c.hub, "pipelined", &[&via_hub[0]]);
        submit(&scratch, c.hub, "bdat", &[&via_hub[1]]);
        // Four submissions, four messages at the peer, each intact, and none smuggled.
        let files = settled_files(&format!("4 messages at {kind}"), 4, || {
            peer_files(kind, dir)
        });
        std::thread::sleep(Duration::from_millis(300));
        let files_now = peer_files(kind, dir);
        assert_eq!(
            files_now.len(),
            4,
            "{kind}: one message per submission: {:?}",
            files_now.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert_nothing_smuggled(&files_now);
        assert_eq!(files.len(), files_now.len());
        for p in direct.iter().chain(&via_hub) {
            let m = stored_marker(kind, &p.id);
            let want = as_stored(kind, &p.content);
            let (_, bytes) = files_now
                .iter()
                .find(|(_, b)| find(b, &m).is_some())
                .unwrap_or_else(|| panic!("{kind}: {} missing", p.id));
            let got = from_marker(bytes, &m).unwrap();
            assert!(
                got == &want[..],
                "{kind} {}: {}",
                p.id,
                describe_difference(&want, got)
            );
        }
    }
}
