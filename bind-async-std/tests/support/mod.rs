//! Test support: the two executors, a std::net sink driven by a `ServerSession`, a scripted
//! SMTP client on `async-net`, temporary directories and polling helpers.
#![allow(dead_code)]

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_io::Timer;
use async_net::TcpStream;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use xshadow_async_std::{RunningNode, Settings};
use xshadow_core::node::NodeConfig;
use xshadow_core::session::{Envelope, Recipient, ServerConfig, ServerSession, sink};
use xshadow_core::wire::params::{MailParams, RcptParams};
use xshadow_core::wire::path::{ForwardPath, Mailbox, ReversePath};

/// A boxed task, as both executors spawn it.
pub type BoxTask = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// An executor the scenarios run under: how to block on the test and spawn into it.
#[derive(Clone, Copy)]
pub struct Runtime {
    /// For messages.
    pub name: &'static str,
    /// Spawns a task on this executor; the result resolves with the task.
    pub spawn: fn(BoxTask) -> BoxTask,
    /// Runs a future to completion on this executor.
    pub block_on: fn(BoxTask) -> io::Result<()>,
}

/// async-std's executor: `async_std::task::{block_on, spawn}`.
pub const ASYNC_STD: Runtime = Runtime {
    name: "async-std",
    spawn: |task| Box::pin(async_std::task::spawn(task)),
    block_on: async_std::task::block_on,
};

/// smol's executor: `smol::{block_on, spawn}`.
pub const SMOL: Runtime = Runtime {
    name: "smol",
    spawn: |task| Box::pin(smol::spawn(task)),
    block_on: smol::block_on,
};

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "xshadow-async-std-{}-{:016x}-{tag}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 127.0.0.1, any port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Fast timers: heartbeats every 200 ms, quick retries, no delayed acknowledgement.
pub fn fast_config(name: &str) -> NodeConfig {
    let mut c = NodeConfig::new(name);
    c.shadow.heartbeat_interval = Duration::from_millis(200);
    c.shadow.resubmit_after = Duration::from_secs(60);
    c.retry.first = Duration::from_millis(100);
    c.retry.max = Duration::from_millis(400);
    c.max_ack_delay = Duration::ZERO;
    c
}

/// Starts a node on loopback with a short grace period.
pub async fn start(
    config: NodeConfig,
    listen: SocketAddr,
    spool: &Path,
) -> io::Result<RunningNode> {
    let mut settings = Settings::new(config, listen, spool.to_owned());
    settings.grace = Duration::from_secs(2);
    settings.connect_timeout = Duration::from_secs(2);
    xshadow_async_std::start(settings).await
}

/// Sleeps on the async-io timer.
pub async fn sleep(ms: u64) {
    Timer::after(Duration::from_millis(ms)).await;
}

/// Fails with `what` when `future` takes longer than `secs`.
pub async fn within<T>(secs: u64, what: &str, future: impl Future<Output = T>) -> T {
    let expired = async {
        Timer::after(Duration::from_secs(secs)).await;
        panic!("timed out after {secs}s: {what}");
    };
    future.or(expired).await
}

/// Polls `check` every 20 ms until it is true, for at most `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(secs, what, async {
        while !check().await {
            sleep(20).await;
        }
    })
    .await;
}

/// alice@example.org to bob@example.net.
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

/// A message body that exercises the framing: leading dots, a lone dot line, long lines,
/// and (for every fifth) more than one socket read worth of content.
pub fn body(tag: &str) -> Vec<u8> {
    let mut b = format!(
        "Message-ID: <{tag}@test>\r\nSubject: {tag}\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n\
         a line\r\n. dot space\r\n"
    )
    .into_bytes();
    let lines = if tag.ends_with('0') { 4000 } else { 3 };
    for i in 0..lines {
        b.extend_from_slice(format!("{tag} line {i} {}\r\n", "x".repeat(i % 90)).as_bytes());
    }
    b
}

/// The Message-ID tag of a delivered body.
pub fn tag_of(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().find(|l| l.starts_with("Message-ID: <"))?;
    Some(
        line["Message-ID: <".len()..]
            .trim_end_matches("@test>")
            .to_owned(),
    )
}

/// A delivered body without the `Received:` trace headers the relays put in front.
pub fn without_trace(body: &[u8]) -> &[u8] {
    let mut rest = body;
    while rest.starts_with(b"Received:") {
        loop {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a whole header line");
            rest = &rest[end + 2..];
            if !rest.starts_with(b"\t") && !rest.starts_with(b" ") {
                break;
            }
        }
    }
    rest
}

/// A final destination on std::net threads, driven by the core's `ServerSession`.
#[derive(Clone, Default)]
pub struct Sink {
    /// Bodies of the messages stored, in order.
    pub delivered: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Sink {
    /// Serves SMTP on `listener` from a new thread (a thread per connection).
    pub fn serve(&self, listener: TcpListener) {
        let sink = self.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let sink = sink.clone();
                std::thread::spawn(move || sink.session(stream));
            }
        });
    }

    /// How many messages arrived.
    pub fn count(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }

    fn session(&self, mut stream: std::net::TcpStream) {
        let config = Arc::new(ServerConfig::new("sink.test"));
        let mut session = ServerSession::new(config, false, Instant::now());
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // The drain rule, with a destination's answers (core's `session::sink`).
            while let Some(message) = sink::drain(&mut session, &mut out, Instant::now())
                .expect("the sink answers what it is asked")
            {
                self.delivered.lock().unwrap().push(message.body);
                sink::stored(&mut session, true, Instant::now()).expect("a message to store");
            }
            if stream.write_all(&out).is_err() {
                return;
            }
            out.clear();
            if session.is_closed() {
                return;
            }
            let now = Instant::now();
            let wait = session.poll_timeout().map(|d| {
                d.saturating_duration_since(now)
                    .max(Duration::from_millis(1))
            });
            let _ = stream.set_read_timeout(wait);
            match stream.read(&mut buf) {
                Ok(0) => session.handle_eof(Instant::now()),
                Ok(n) => session.handle_input(&buf[..n], Instant::now()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    session.handle_timeout(Instant::now())
                }
                Err(_) => session.handle_eof(Instant::now()),
            }
        }
    }
}

/// Reads one (possibly multi-line) reply and returns its code.
pub async fn reply(stream: &mut TcpStream, pending: &mut Vec<u8>) -> io::Result<u16> {
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = pending.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = pending.drain(..end + 2).collect();
            if line.len() >= 4 && line[3] == b' ' {
                let code = std::str::from_utf8(&line[..3])
                    .ok()
                    .and_then(|c| c.parse().ok());
                return code.ok_or_else(|| io::Error::other("bad reply"));
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Sends one command (or the message content) and checks the reply code.
pub async fn step(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    send: &[u8],
    want: u16,
) -> io::Result<()> {
    stream.write_all(send).await?;
    let got = reply(stream, pending).await?;
    if got != want {
        let what = String::from_utf8_lossy(&send[..send.len().min(40)]);
        return Err(io::Error::other(format!(
            "{what:?}: got {got}, wanted {want}"
        )));
    }
    Ok(())
}

/// Sends `bodies` to `server` in one SMTP session (DATA, dot-stuffed), checking every reply.
pub async fn smtp_send(server: SocketAddr, bodies: Vec<Vec<u8>>) -> io::Result<()> {
    let mut stream = TcpStream::connect(server).await?;
    let mut pending = Vec::new();
    let s = &mut stream;
    let p = &mut pending;
    if reply(s, p).await? != 220 {
        return Err(io::Error::other("no greeting"));
    }
    step(s, p, b"EHLO client.test\r\n", 250).await?;
    for body in bodies {
        send_message(s, p, &body).await?;
    }
    step(s, p, b"QUIT\r\n", 221).await
}

/// One MAIL / RCPT / DATA transaction on an open session, the content dot-stuffed.
pub async fn send_message(s: &mut TcpStream, p: &mut Vec<u8>, body: &[u8]) -> io::Result<()> {
    step(s, p, b"MAIL FROM:<alice@example.org>\r\n", 250).await?;
    step(s, p, b"RCPT TO:<bob@example.net>\r\n", 250).await?;
    step(s, p, b"DATA\r\n", 354).await?;
    step(s, p, &dot_stuffed(body), 250).await
}

/// The DATA content for `body`: lines starting with a dot get another, then `.` CRLF.
pub fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(body.len() + 64);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    data.extend_from_slice(b".\r\n");
    data
}
