//! `xshadow sink` on every runtime (`--runtime tokio|mio|async-std`): each message is one file
//! in the Maildir's `new/`, byte-identical to what the client meant after the sink's trace
//! headers, and already there when the client reads its 250; several connections at once,
//! pipelined transactions, a dot-leading body, 8-bit bytes and a body larger than any read
//! buffer; SIGTERM stops the sink with exit status 0 even with a session open.

#[macro_use]
mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{
    Runtime, Scratch, Smtp, describe_difference, find, read_files, start_xshadow_sink, stuff,
};

/// How long any one reply may take (generous: CI machines are slow).
const PATIENCE: Duration = Duration::from_secs(30);
/// Connections that send pipelined batches at the same time.
const CONNECTIONS: usize = 4;
/// Messages in each connection's batch.
const PER_CONNECTION: usize = 5;
const FROM: &str = "alice@example.org";

/// The trace headers the sink writes before the content, up to the date of its `Received:`.
fn trace_prefix(from: &str, to: &[&str]) -> Vec<u8> {
    let mut head = format!("Return-Path: <{from}>\r\n");
    for r in to {
        head.push_str(&format!("Delivered-To: {r}\r\n"));
    }
    head.push_str("Received: from client.test by sink.localhost (xshadow sink); ");
    head.into_bytes()
}

/// Checks one Maildir file: the trace headers, then exactly `content`.
fn assert_stored(file: &[u8], from: &str, to: &[&str], content: &[u8], what: &str) {
    let prefix = trace_prefix(from, to);
    assert!(
        file.starts_with(&prefix),
        "{what}: the file does not start with the trace headers: {:?}",
        String::from_utf8_lossy(&file[..file.len().min(300)])
    );
    let date_end = find(&file[prefix.len()..], b"\r\n").expect("the Received line ends") + 2;
    let rest = &file[prefix.len() + date_end..];
    assert!(
        rest == content,
        "{what}: {}",
        describe_difference(content, rest)
    );
}

/// The one file in `new/` that contains `tag`, or a panic naming how many there are.
fn file_with(new: &Path, tag: &str) -> Vec<u8> {
    let mut hits: Vec<Vec<u8>> = read_files(new)
        .into_iter()
        .filter(|(_, bytes)| find(bytes, tag.as_bytes()).is_some())
        .map(|(_, bytes)| bytes)
        .collect();
    assert_eq!(hits.len(), 1, "files in new/ with {tag:?}");
    hits.pop().expect("one file")
}

/// A message whose lines start with dots (one is a lone dot, one two dots).
fn dotted(tag: &str) -> Vec<u8> {
    format!(
        "Subject: dots\r\nX-Tag: {tag}\r\n\r\n.leading dot\r\n.\r\n..two dots\r\nnot . a dot\r\n. \r\n"
    )
    .into_bytes()
}

/// A message with 8-bit bytes in its body (not UTF-8 either), a bare CR and a NUL.
fn eight_bit(tag: &str) -> Vec<u8> {
    let mut m = format!("Subject: 8bit\r\nX-Tag: {tag}\r\n\r\n").into_bytes();
    m.extend_from_slice(b"caf\xc3\xa9 \xff\xfe\x80 latin-1 \xe9t\xe9\r\nbare\rCR and \x00 NUL\r\n");
    m.extend_from_slice(".\u{2603} dot then snowman\r\n".as_bytes());
    m
}

/// A message larger than any read buffer, with a dot-leading line every few lines.
fn large(tag: &str) -> Vec<u8> {
    let mut m = format!("Subject: large\r\nX-Tag: {tag}\r\n\r\n").into_bytes();
    for i in 0..4000u32 {
        if i.is_multiple_of(7) {
            m.extend_from_slice(format!(".{i} starts with a dot\r\n").as_bytes());
        } else {
            m.extend_from_slice(
                format!("line {i} \u{20ac} with some more text here\r\n").as_bytes(),
            );
        }
    }
    m
}

/// Reads `n` replies, asserting each one's code.
fn expect_replies(smtp: &mut Smtp, codes: &[u16], what: &str) {
    for &code in codes {
        let reply = smtp.reply().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(reply.code, code, "{what}: {reply:?}");
    }
}

/// One connection's batch, pipelined: each write carries a message's content and the next
/// transaction's MAIL, RCPT and DATA. After every 250 for a message its file is in `new/`.
fn pipelined_batch(addr: SocketAddr, new: &Path, conn: usize) -> Vec<(String, Vec<u8>)> {
    let mut smtp = Smtp::connect(addr, PATIENCE).expect("connect");
    assert!(
        smtp.ehlo.iter().any(|l| l.contains("PIPELINING")),
        "{:?}",
        smtp.ehlo
    );
    let to = format!("bob{conn}@example.net");
    let envelope = format!("MAIL FROM:<{FROM}>\r\nRCPT TO:<{to}>\r\nDATA\r\n");
    let messages: Vec<(String, Vec<u8>)> = (0..PER_CONNECTION)
        .map(|i| {
            let tag = format!("batch-{conn}-{i}");
            let content = match i % 3 {
                0 => dotted(&tag),
                1 => eight_bit(&tag),
                _ if i == 2 && conn.is_multiple_of(2) => large(&tag),
                _ => format!("X-Tag: {tag}\r\n\r\nplain {i}\r\n").into_bytes(),
            };
            (tag, content)
        })
        .collect();
    smtp.send_raw(envelope.as_bytes()).expect("send");
    expect_replies(&mut smtp, &[250, 250, 354], "the first transaction");
    for (i, (tag, content)) in messages.iter().enumerate() {
        let mut write = stuff(content);
        let last = i + 1 == messages.len();
        write.extend_from_slice(if last {
            b"QUIT\r\n"
        } else {
            envelope.as_bytes()
        });
        smtp.send_raw(&write).expect("send");
        expect_replies(&mut smtp, &[250], tag);
        // The 250 is only sent once the file is in new/.
        assert_stored(&file_with(new, tag), FROM, &[&to], content, tag);
        if last {
            expect_replies(&mut smtp, &[221], "QUIT");
        } else {
            expect_replies(&mut smtp, &[250, 250, 354], "the next transaction");
        }
    }
    messages
}

fn sink_stores_every_message_before_its_250(runtime: Runtime) {
    let scratch = Scratch::new_in_memory(&format!("sink-{runtime}"));
    let maildir = scratch.join("maildir");
    let (mut sink, addr) = start_xshadow_sink(&scratch, &maildir, runtime);
    let (new, tmp) = (maildir.join("new"), maildir.join("tmp"));

    // One at a time: after each 250 the file is in new/ and nothing is left in tmp/.
    let mut smtp = Smtp::connect(addr, PATIENCE).expect("connect");
    let singles = [
        (
            "single-dots",
            dotted("single-dots"),
            vec!["bob@example.net"],
        ),
        (
            "single-8bit",
            eight_bit("single-8bit"),
            vec!["carol@example.net"],
        ),
        (
            "single-two-rcpts",
            dotted("single-two-rcpts"),
            vec!["dave@example.net", "erin@example.net"],
        ),
    ];
    for (tag, content, to) in &singles {
        let before = read_files(&new).len();
        let reply = smtp.command(&format!("MAIL FROM:<{FROM}>")).expect("MAIL");
        assert_eq!(reply.code, 250, "{reply:?}");
        for r in to {
            let reply = smtp.command(&format!("RCPT TO:<{r}>")).expect("RCPT");
            assert_eq!(reply.code, 250, "{reply:?}");
        }
        let reply = smtp.command("DATA").expect("DATA");
        assert_eq!(reply.code, 354, "{reply:?}");
        smtp.send_raw(&stuff(content)).expect("content");
        expect_replies(&mut smtp, &[250], tag);
        assert_eq!(
            read_files(&new).len(),
            before + 1,
            "{tag}: one file per message"
        );
        assert!(
            read_files(&tmp).is_empty(),
            "{tag}: tmp/ is empty after the 250"
        );
        assert_stored(&file_with(&new, tag), FROM, to, content, tag);
    }
    smtp.quit();

    // Several connections at once, each a pipelined batch.
    let batches: Vec<Vec<(String, Vec<u8>)>> = std::thread::scope(|s| {
        let new = &new;
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|conn| s.spawn(move || pipelined_batch(addr, new, conn)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a batch connection"))
            .collect()
    });

    // One file per message, each byte-identical after the trace headers.
    let files = read_files(&new);
    assert_eq!(
        files.len(),
        singles.len() + CONNECTIONS * PER_CONNECTION,
        "one file per message"
    );
    for (conn, batch) in batches.iter().enumerate() {
        let to = format!("bob{conn}@example.net");
        for (tag, content) in batch {
            assert_stored(&file_with(&new, tag), FROM, &[&to], content, tag);
        }
    }
    assert!(read_files(&tmp).is_empty(), "tmp/ is empty");

    // SIGTERM with a session open and one half-sent: the sink stops with status 0.
    let mut idle = Smtp::connect(addr, PATIENCE).expect("connect");
    let reply = idle.command(&format!("MAIL FROM:<{FROM}>")).expect("MAIL");
    assert_eq!(reply.code, 250, "{reply:?}");
    let mut half = TcpStream::connect(addr).expect("connect");
    half.write_all(b"EHLO half").expect("a partial line");
    sink.signal("TERM");
    let status = sink
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the {runtime} sink did not exit after SIGTERM"));
    assert!(status.success(), "the {runtime} sink exited with {status}");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "nothing accepts on {addr} after the stop"
    );
    assert_eq!(read_files(&new).len(), files.len(), "nothing else arrived");
}

on_every_runtime!(
    sink_stores_every_message_before_its_250 =>
    sink_stores_every_message_before_its_250_on_tokio,
    sink_stores_every_message_before_its_250_on_mio,
    sink_stores_every_message_before_its_250_on_async_std,
);

on_every_runtime!(
    connections_waiting_while_the_sink_is_out_of_descriptors_are_served_once_some_free =>
    connections_waiting_while_out_of_descriptors_are_served_on_tokio,
    connections_waiting_while_out_of_descriptors_are_served_on_mio,
    connections_waiting_while_out_of_descriptors_are_served_on_async_std,
);

/// The sink runs with few file descriptors; more clients connect than it can accept. Once the
/// first ones hang up, the ones left waiting in the listen queue are greeted, although no new
/// connection arrives (edge-triggered readiness gives no second event: the sink must retry
/// `accept` by itself after it failed).
fn connections_waiting_while_the_sink_is_out_of_descriptors_are_served_once_some_free(
    runtime: Runtime,
) {
    let scratch = Scratch::new(&format!("sink-nofile-{runtime}"));
    let maildir = scratch.join("maildir");
    let (_sink, addr) = common::start_server(
        "xshadow sink",
        &scratch.join("sink.log"),
        Some("sink listening"),
        |port| {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c")
                .arg(format!(
                    "ulimit -n 64 && exec \"$0\" sink --listen {} --maildir \"$1\" --runtime {}",
                    common::loopback(port),
                    runtime.arg()
                ))
                .arg(env!("CARGO_BIN_EXE_xshadow"))
                .arg(&maildir);
            cmd
        },
    );
    common::Crowd::connect(addr, "sink").free_some_and_greet_the_rest(PATIENCE);
}
