//! Helpers for the mio binding's tests: temp spools, a blocking std::net sink, a scripted
//! SMTP client, node configurations with millisecond timers.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xshadow_core::node::NodeConfig;
use xshadow_core::session::{
    Envelope, ReceivedMessage, Recipient, ServerConfig, ServerSession, sink,
};
use xshadow_core::wire::{ForwardPath, MailParams, Mailbox, RcptParams, ReversePath};
use xshadow_mio::Settings;

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "xshadow-mio-test-{}-{}-{tag}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A loopback address nobody listens on (connections to it are refused).
pub fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).unwrap();
    listener.local_addr().unwrap()
}

/// A node configuration with millisecond timers, as the core's simulation uses.
pub fn fast_config(name: &str) -> NodeConfig {
    let mut c = NodeConfig::new(name);
    c.shadow.heartbeat_interval = Duration::from_millis(200);
    c.shadow.resubmit_after = Duration::from_secs(30);
    c.retry.first = Duration::from_millis(100);
    c.retry.max = Duration::from_millis(400);
    c.max_ack_delay = Duration::ZERO;
    c
}

pub fn settings(config: NodeConfig, spool: &Path) -> Settings {
    let mut s = Settings::new(config, loopback(), spool.to_owned());
    s.grace = Duration::from_secs(2);
    s.connect_timeout = Duration::from_secs(2);
    s
}

pub fn envelope(to: &str) -> Envelope {
    Envelope {
        from: ReversePath::Mailbox(Mailbox::new("alice", "example.org")),
        params: MailParams::default(),
        recipients: [Recipient {
            to: ForwardPath::Mailbox(Mailbox::new(to, "example.net")),
            params: RcptParams::default(),
        }]
        .into(),
    }
}

/// A message that names itself, with a line that needs dot-stuffing.
pub fn body_for(tag: &str) -> Vec<u8> {
    format!("Subject: {tag}\r\nX-Test-Id: {tag}\r\n\r\nbody of {tag}\r\n.leading dot\r\n..two\r\n")
        .into_bytes()
}

/// Polls `check` every 20 ms until it is true or `limit` passed.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a test sink received.
pub type Inbox = Arc<Mutex<Vec<ReceivedMessage>>>;

/// A final destination on std::net: one thread per connection drives a `ServerSession` and
/// keeps every message. It starts accepting when `gate` yields (or at once without one);
/// until then connections wait in the listen backlog without a greeting.
pub fn spawn_sink(gate: Option<Receiver<()>>) -> (SocketAddr, Inbox) {
    let listener = TcpListener::bind(loopback()).unwrap();
    let addr = listener.local_addr().unwrap();
    let inbox = Inbox::default();
    let kept = inbox.clone();
    let config = Arc::new(ServerConfig::new("sink.test"));
    std::thread::spawn(move || {
        if let Some(gate) = gate {
            let _ = gate.recv();
        }
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let session = ServerSession::new(config.clone(), false, Instant::now());
            let kept = kept.clone();
            std::thread::spawn(move || serve(stream, session, &kept));
        }
    });
    (addr, inbox)
}

/// Drives one server session over a blocking socket, following the drain rule.
fn serve(mut stream: TcpStream, mut session: ServerSession, inbox: &Inbox) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        // The drain rule, with a destination's answers (core's `session::sink`).
        while let Ok(Some(message)) = sink::drain(&mut session, &mut out, Instant::now()) {
            inbox.lock().unwrap().push(message);
            let _ = sink::stored(&mut session, true, Instant::now());
        }
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
        if session.is_closed() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => session.handle_eof(Instant::now()),
            Ok(n) => session.handle_input(&buf[..n], Instant::now()),
        }
    }
}

/// A scripted SMTP client over a blocking socket.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects and reads the greeting.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut client = Self { stream, reader };
        let greeting = client.reply()?;
        assert!(greeting.starts_with("220"), "{greeting}");
        Ok(client)
    }

    /// Reads one (possibly multi-line) reply; returns its last line.
    pub fn reply(&mut self) -> io::Result<String> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(line);
            }
        }
    }

    /// Sends a command line and reads the reply.
    pub fn command(&mut self, line: &str) -> io::Result<String> {
        self.stream.write_all(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// Sends one message with DATA (dot-stuffed here); returns the final reply.
    pub fn send(&mut self, to: &str, body: &[u8]) -> io::Result<String> {
        let r = self.command("MAIL FROM:<alice@example.org>")?;
        assert!(r.starts_with("250"), "MAIL: {r}");
        let r = self.command(&format!("RCPT TO:<{to}@example.net>"))?;
        assert!(r.starts_with("250"), "RCPT: {r}");
        let r = self.command("DATA")?;
        assert!(r.starts_with("354"), "DATA: {r}");
        let mut data = Vec::new();
        for line in body.split_inclusive(|b| *b == b'\n') {
            if line.starts_with(b".") {
                data.push(b'.');
            }
            data.extend_from_slice(line);
        }
        data.extend_from_slice(b".\r\n");
        self.stream.write_all(&data)?;
        self.reply()
    }
}
