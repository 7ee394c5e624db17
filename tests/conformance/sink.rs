//! The capturing sink every scenario's edge relays to: a tiny SMTP server written for this
//! test (no xshadow code), as a pure byte machine ([`SinkSession`]) that the in-memory driver
//! feeds directly and [`TcpSink`] serves on loopback with one blocking thread per connection.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the sink says first.
pub const GREETING: &[u8] = b"220 sink.test ESMTP conformance sink\r\n";

/// One SMTP session of the sink: bytes in, replies out, everything it read kept.
#[derive(Default)]
pub struct SinkSession {
    /// Every byte the client sent, in order.
    pub transcript: Vec<u8>,
    /// The content of each message (still dot-stuffed, without the final `.`).
    pub messages: Vec<Vec<u8>>,
    /// Unprocessed input: a partial command line, or DATA content.
    pending: Vec<u8>,
    in_data: bool,
    /// The client said QUIT and got its 221.
    pub closed: bool,
}

impl SinkSession {
    /// Takes bytes from the client and returns the replies to send back.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        self.transcript.extend_from_slice(data);
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        while !self.closed {
            if self.in_data {
                // Only CRLF.CRLF ends the content (the 354 counts as the CRLF before a dot
                // on the first line).
                let end = if self.pending.starts_with(b".\r\n") {
                    Some((0, 3))
                } else {
                    find(&self.pending, b"\r\n.\r\n").map(|i| (i + 2, i + 5))
                };
                let Some((content, consumed)) = end else {
                    break;
                };
                self.messages.push(self.pending[..content].to_vec());
                self.pending.drain(..consumed);
                self.in_data = false;
                out.extend_from_slice(b"250 2.0.0 Stored\r\n");
                continue;
            }
            let Some(i) = find(&self.pending, b"\r\n") else {
                break;
            };
            let line: Vec<u8> = self.pending.drain(..i + 2).take(i).collect();
            let verb = line
                .split(|&b| b == b' ' || b == b':')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let reply: &[u8] = match verb.as_slice() {
                b"EHLO" => b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
                b"HELO" => b"250 sink.test\r\n",
                b"MAIL" => b"250 2.1.0 Sender OK\r\n",
                b"RCPT" => b"250 2.1.5 Recipient OK\r\n",
                b"DATA" => {
                    self.in_data = true;
                    b"354 End data with <CRLF>.<CRLF>\r\n"
                }
                b"RSET" | b"NOOP" => b"250 2.0.0 OK\r\n",
                b"QUIT" => {
                    self.closed = true;
                    b"221 2.0.0 Bye\r\n"
                }
                _ => b"500 5.5.2 Unknown command\r\n",
            };
            out.extend_from_slice(reply);
        }
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a [`TcpSink`] saw.
#[derive(Default)]
pub struct SinkLog {
    /// Transcripts of the sessions that ended, in the order they ended.
    pub sessions: Vec<Vec<u8>>,
    /// Every message content, in the order they were stored.
    pub messages: Vec<Vec<u8>>,
    /// Sessions still open.
    pub open: usize,
}

/// A [`SinkSession`] per connection on a loopback listener. Stopped (threads joined) on drop.
pub struct TcpSink {
    addr: SocketAddr,
    log: Arc<Mutex<SinkLog>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpSink {
    /// Listens on 127.0.0.1, any free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the sink");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("sink address");
        let log = Arc::new(Mutex::new(SinkLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        log2.lock().unwrap().open += 1;
                        let (log, stop) = (log2.clone(), stop2.clone());
                        conns.push(std::thread::spawn(move || serve(stream, &log, &stop)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("sink accept: {e}"),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Self {
            addr,
            log,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads what it saw so far.
    pub fn with_log<T>(&self, f: impl FnOnce(&SinkLog) -> T) -> T {
        f(&self.log.lock().unwrap())
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn serve(mut stream: TcpStream, log: &Mutex<SinkLog>, stop: &AtomicBool) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut session = SinkSession::default();
    let mut buf = [0u8; 16 * 1024];
    let mut ok = stream.write_all(GREETING).is_ok();
    while ok && !session.closed && !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let stored = session.messages.len();
                let reply = session.feed(&buf[..n]);
                // A message counts once it is stored, before the client hears 250.
                log.lock()
                    .unwrap()
                    .messages
                    .extend(session.messages[stored..].iter().cloned());
                ok = stream.write_all(&reply).is_ok();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    let mut log = log.lock().unwrap();
    log.open -= 1;
    log.sessions.push(session.transcript);
}
