//! xshadow-mio: runs an xshadow relay [`Node`] on a single-threaded blocking mio event loop.
//!
//! No async runtime: one thread owns the node, the listener and every socket, and follows the
//! drain rule literally — after any input, drain [`Node::poll_output`] until it returns `None`,
//! then block in [`mio::Poll::poll`] until a socket is ready, a [`mio::Waker`] fires (a spool
//! completion or a request from a [`NodeHandle`]) or [`Node::poll_timeout`] is due. Sockets
//! are non-blocking; what a socket cannot take now waits in the connection's write buffer.
//!
//! [`Settings`] is the type every binding takes (from [`xshadow_spool::binding`]): its
//! `on_event` hook sees each of the node's events in order, and its `seed` fixes the ids the
//! node makes (tests); by default the seed comes from the operating system.
//!
//! ```no_run
//! use xshadow_core::node::NodeConfig;
//! let mut config = NodeConfig::new("edge1.example");
//! config.next_hops = vec!["127.0.0.1:2526".into()];
//! let listen = "127.0.0.1:2525".parse().unwrap();
//! let node = xshadow_mio::start(xshadow_mio::Settings::new(config, listen, "/var/spool/xshadow".into()))?;
//! node.handle().stop();
//! node.wait()?;
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use xshadow_core::node::{ConnId, Input, Node, NodeStats, Output};
use xshadow_core::session::Envelope;
use xshadow_core::shadow::MessageId;
use xshadow_spool::binding::ACCEPT_PAUSE;
use xshadow_spool::binding::{self, open_node, spool_failed, stopped};
pub use xshadow_spool::binding::{EventHook, Settings};
use xshadow_spool::{Completion, Completions, SpoolHandle};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connection `ConnId(n)` is registered as `Token(n + FIRST_CONN)`.
const FIRST_CONN: usize = 2;
/// Unwritten bytes on a connection beyond which it is not read until the peer catches up.
const HIGH_WATER: usize = 1024 * 1024;

/// Requests to the event loop.
enum Request {
    Submit(Box<(Envelope, Vec<u8>)>, Sender<MessageId>),
    Stats(Sender<NodeStats>),
    Stop,
    Abort,
}

/// A handle to submit messages to, inspect or stop a running node. Cheap to clone; its
/// methods block until the event loop answered.
#[derive(Clone)]
pub struct NodeHandle {
    requests: Sender<Request>,
    waker: Arc<Waker>,
}

impl NodeHandle {
    fn send(&self, request: Request) -> io::Result<()> {
        self.requests.send(request).map_err(|_| stopped())?;
        self.waker.wake()
    }

    /// Submits a message locally; returns its id once the node has queued it for persisting.
    pub fn submit(&self, envelope: Envelope, body: Vec<u8>) -> io::Result<MessageId> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Submit(Box::new((envelope, body)), tx))?;
        rx.recv().map_err(|_| stopped())
    }

    /// A snapshot of the node's queues.
    pub fn stats(&self) -> io::Result<NodeStats> {
        let (tx, rx) = mpsc::channel();
        self.send(Request::Stats(tx))?;
        rx.recv().map_err(|_| stopped())
    }

    /// Asks for a graceful stop: no new connections, sessions finish within the grace
    /// period, the spool is flushed.
    pub fn stop(&self) {
        let _ = self.send(Request::Stop);
    }
}

/// A node whose spool is open and whose listener is bound, not running yet.
pub struct BoundNode {
    driver: Driver,
    handle: NodeHandle,
    local_addr: SocketAddr,
    database_id: String,
}

impl BoundNode {
    /// The address the node listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The spool's database id (what XSHADOW replies carry).
    pub fn database_id(&self) -> &str {
        &self.database_id
    }

    /// A handle to the node (its requests are answered once it runs).
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Runs the event loop on the calling thread until the node stops.
    pub fn run(self) -> io::Result<()> {
        self.driver.run()
    }

    /// Runs the event loop on a new thread.
    pub fn start(self) -> io::Result<RunningNode> {
        let Self {
            driver,
            handle,
            local_addr,
            database_id,
        } = self;
        let thread = std::thread::Builder::new()
            .name("xshadow-mio".into())
            .spawn(move || driver.run())?;
        Ok(RunningNode {
            handle,
            thread,
            local_addr,
            database_id,
        })
    }
}

/// A node running on its own thread.
pub struct RunningNode {
    handle: NodeHandle,
    thread: JoinHandle<io::Result<()>>,
    local_addr: SocketAddr,
    database_id: String,
}

impl RunningNode {
    /// The address the node listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The spool's database id (what XSHADOW replies carry).
    pub fn database_id(&self) -> &str {
        &self.database_id
    }

    /// A handle to the node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Blocks until the node has stopped.
    pub fn wait(self) -> io::Result<()> {
        self.thread
            .join()
            .map_err(|_| io::Error::other("the node thread panicked"))?
    }

    /// Stops the loop at once, as a crash would: sessions are not finished and peers see
    /// their connections drop. Returns once the sockets are closed and the spool's lock is
    /// released (its writer only finishes records already handed to it; nothing more is
    /// acknowledged).
    pub fn abort(self) {
        let _ = self.handle.send(Request::Abort);
        let _ = self.thread.join();
    }
}

/// Opens the spool, recovers the node from it and binds the listener; nothing runs yet.
pub fn bind(settings: Settings) -> io::Result<BoundNode> {
    let (spool, node) = open_node(&settings, Instant::now())?;
    let mut listener = TcpListener::bind(settings.listen).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot listen on {}: {err}", settings.listen),
        )
    })?;
    let local_addr = listener.local_addr()?;
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let database_id = node.database_id().to_owned();
    let (done_tx, completions) = mpsc::channel();
    let spool_waker = Arc::clone(&waker);
    let spool = spool.spawn(Completions::channel(done_tx).with_wake(move || {
        let _ = spool_waker.wake();
    }))?;
    let (requests, request_rx) = mpsc::channel();
    let driver = Driver {
        node,
        settings,
        poll,
        listener: Some(listener),
        spool: Some(spool),
        completions,
        requests: request_rx,
        conns: HashMap::new(),
        connects: BTreeSet::new(),
        resume: Vec::new(),
        stopping: None,
        accept_again: None,
        buf: vec![0; 64 * 1024],
    };
    Ok(BoundNode {
        driver,
        handle: NodeHandle { requests, waker },
        local_addr,
        database_id,
    })
}

/// Opens the spool, recovers the node, binds the listener and runs the loop on a new thread.
pub fn start(settings: Settings) -> io::Result<RunningNode> {
    bind(settings)?.start()
}

/// Runs a node on the calling thread until it stops (use [`bind`] to keep a handle first).
pub fn run(settings: Settings) -> io::Result<()> {
    bind(settings)?.run()
}

fn token_of(conn: ConnId) -> Token {
    Token(usize::try_from(conn.0).expect("connection ids fit in usize") + FIRST_CONN)
}

fn conn_of(token: Token) -> ConnId {
    ConnId((token.0 - FIRST_CONN) as u64)
}

/// One socket and the bytes the node transmitted that it has not taken yet.
struct Conn {
    stream: TcpStream,
    out: Vec<u8>,
    written: usize,
    /// An outbound connect in progress, until this deadline.
    connecting: Option<Instant>,
    /// The node closed it: shut it down once `out` is written.
    closing: bool,
    /// The peer closed its side; nothing more to read.
    eof: bool,
    /// Not read while `out` is above [`HIGH_WATER`].
    paused: bool,
    interest: Interest,
}

impl Conn {
    fn new(stream: TcpStream, connecting: Option<Instant>, interest: Interest) -> Self {
        Self {
            stream,
            out: Vec::new(),
            written: 0,
            connecting,
            closing: false,
            eof: false,
            paused: false,
            interest,
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.written
    }
}

struct Driver {
    node: Node,
    settings: Settings,
    poll: Poll,
    listener: Option<TcpListener>,
    spool: Option<SpoolHandle>,
    completions: Receiver<Completion>,
    requests: Receiver<Request>,
    conns: HashMap<ConnId, Conn>,
    /// Connect deadlines (stale entries are skipped).
    connects: BTreeSet<(Instant, ConnId)>,
    /// Paused connections whose write buffer drained: read them again.
    resume: Vec<ConnId>,
    /// Set once a stop was asked: the moment the grace period ends.
    stopping: Option<Instant>,
    /// When to try `accept` again after it failed (say, out of file descriptors): readiness
    /// is edge-triggered, so connections already waiting would get no new event.
    accept_again: Option<Instant>,
    buf: Vec<u8>,
}

impl Driver {
    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            while let Some(conn) = self.resume.pop() {
                self.read(conn)?;
            }
            self.drain()?;
            let now = Instant::now();
            if let Some(end) = self.stopping
                && (self.conns.is_empty() || now >= end)
            {
                break;
            }
            let connect = self.connects.first().map(|(t, _)| *t);
            let deadline = [
                self.node.poll_timeout(),
                self.stopping,
                connect,
                self.accept_again,
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = deadline.map(|d| d.saturating_duration_since(now));
            match self.poll.poll(&mut events, timeout) {
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                result => result?,
            }
            if self.accept_again.is_some_and(|t| t <= Instant::now()) {
                self.accept_all()?;
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all()?,
                    WAKER => {}
                    token => self.ready(conn_of(token))?,
                }
            }
            while let Ok(done) = self.completions.try_recv() {
                match done {
                    Completion::Persisted(token) => self.input(Input::Persisted(token))?,
                    Completion::Failed(err) => return Err(spool_failed(&err)),
                }
            }
            while let Ok(request) = self.requests.try_recv() {
                match request {
                    Request::Submit(message, reply) => {
                        let (envelope, body) = *message;
                        let id = self.node.submit(envelope, &body, Instant::now());
                        self.drain()?;
                        let _ = reply.send(id);
                    }
                    Request::Stats(reply) => {
                        let _ = reply.send(self.node.stats());
                    }
                    Request::Stop => self.begin_stop(),
                    Request::Abort => {
                        tracing::warn!("aborted");
                        return Ok(());
                    }
                }
            }
            let now = Instant::now();
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.node.handle_timeout(now);
                self.drain()?;
            }
            self.expire_connects(now)?;
        }
        self.conns.clear();
        if let Some(spool) = self.spool.take() {
            spool.shutdown().map_err(io::Error::other)?.close()?;
        }
        tracing::info!("stopped");
        Ok(())
    }

    fn begin_stop(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
            self.stopping = Some(Instant::now() + self.settings.grace);
            tracing::info!("stopping: no new connections, sessions finish");
        }
    }

    /// Feeds one input, then follows the drain rule.
    fn input(&mut self, input: Input<'_>) -> io::Result<()> {
        self.node.handle_input(input, Instant::now());
        self.drain()
    }

    /// The drain rule: act on every output until the node has none.
    fn drain(&mut self) -> io::Result<()> {
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Transmit { conn, data } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.out.extend_from_slice(&data);
                        self.flush(conn);
                    }
                    // Copied out: the node may fill the buffer again.
                    self.node.recycle(data);
                }
                Output::Close(conn) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.closing = true;
                        self.flush(conn);
                    }
                }
                Output::Connect { conn, to } => self.connect(conn, &to),
                Output::Persist { token, records } => {
                    binding::persist(self.spool.as_ref(), token, records)?;
                }
                Output::Event(event) => self.settings.report(&event),
            }
        }
        Ok(())
    }

    fn accept_all(&mut self) -> io::Result<()> {
        self.accept_again = None;
        while let Some(listener) = &self.listener {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let now = Instant::now();
                    let conn = self.node.accept(peer.ip(), now);
                    let registered = self.poll.registry().register(
                        &mut stream,
                        token_of(conn),
                        Interest::READABLE,
                    );
                    match registered {
                        Ok(()) => {
                            let c = Conn::new(stream, None, Interest::READABLE);
                            self.conns.insert(conn, c);
                        }
                        Err(err) => {
                            tracing::warn!(%err, "cannot register a connection");
                            self.node.handle_input(Input::Closed(conn), now);
                        }
                    }
                    self.drain()?;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(err) => {
                    tracing::warn!(%err, "accept failed; trying again shortly");
                    self.accept_again = Some(Instant::now() + ACCEPT_PAUSE);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Starts a non-blocking connect; its result arrives as a socket event.
    fn connect(&mut self, conn: ConnId, to: &str) {
        let now = Instant::now();
        let started = to
            .to_socket_addrs()
            .and_then(|mut addrs| {
                addrs
                    .next()
                    .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "no address"))
            })
            .and_then(TcpStream::connect)
            .and_then(|mut stream| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                self.poll
                    .registry()
                    .register(&mut stream, token_of(conn), interest)?;
                Ok(stream)
            });
        match started {
            Ok(stream) => {
                let deadline = now + self.settings.connect_timeout;
                let interest = Interest::READABLE | Interest::WRITABLE;
                self.conns
                    .insert(conn, Conn::new(stream, Some(deadline), interest));
                self.connects.insert((deadline, conn));
            }
            Err(err) => {
                tracing::debug!(to, %err, "connect failed");
                self.node.handle_input(Input::ConnectFailed(conn), now);
            }
        }
    }

    fn expire_connects(&mut self, now: Instant) -> io::Result<()> {
        while let Some(&(deadline, conn)) = self.connects.first() {
            if deadline > now {
                break;
            }
            self.connects.remove(&(deadline, conn));
            if self
                .conns
                .get(&conn)
                .is_some_and(|c| c.connecting == Some(deadline))
            {
                self.remove(conn);
                self.input(Input::ConnectFailed(conn))?;
            }
        }
        Ok(())
    }

    /// A socket event: finish a connect, write what is pending, read what arrived.
    fn ready(&mut self, conn: ConnId) -> io::Result<()> {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if let Some(deadline) = c.connecting {
            match connect_result(&c.stream) {
                None => return Ok(()),
                Some(Ok(())) => {
                    c.connecting = None;
                    let _ = c.stream.set_nodelay(true);
                    self.connects.remove(&(deadline, conn));
                    self.update_interest(conn);
                    self.input(Input::Connected(conn))?;
                }
                Some(Err(err)) => {
                    tracing::debug!(%err, "connect failed");
                    self.connects.remove(&(deadline, conn));
                    self.remove(conn);
                    return self.input(Input::ConnectFailed(conn));
                }
            }
        }
        self.flush(conn);
        self.read(conn)?;
        self.drain()
    }

    /// Reads until the socket has nothing more (or the write buffer is too full).
    fn read(&mut self, conn: ConnId) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.read_into(conn, &mut buf);
        self.buf = buf;
        result
    }

    fn read_into(&mut self, conn: ConnId, buf: &mut [u8]) -> io::Result<()> {
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return Ok(());
            };
            if c.closing || c.eof || c.connecting.is_some() {
                return Ok(());
            }
            if c.pending() >= HIGH_WATER {
                c.paused = true;
                return Ok(());
            }
            match c.stream.read(buf) {
                Ok(0) => {
                    // Keep the socket: the node may still have replies to write, then it
                    // closes the connection.
                    c.eof = true;
                    return self.input(Input::Closed(conn));
                }
                Ok(n) => self.input(Input::Received(conn, &buf[..n]))?,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.remove(conn);
                    return self.input(Input::Closed(conn));
                }
            }
        }
    }

    /// Writes what the socket takes; keeps the rest and asks to hear when it is writable.
    /// A broken connection is removed and reported closed (the caller drains).
    fn flush(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.connecting.is_some() {
            if c.closing {
                self.remove(conn);
            }
            return;
        }
        let mut broken = false;
        while c.written < c.out.len() {
            match c.stream.write(&c.out[c.written..]) {
                Ok(0) => broken = true,
                Ok(n) => c.written += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => broken = true,
            }
            if broken {
                break;
            }
        }
        if c.written == c.out.len() {
            c.out.clear();
            c.written = 0;
        }
        if broken {
            self.remove(conn);
            self.node.handle_input(Input::Closed(conn), Instant::now());
        } else if c.closing && c.out.is_empty() {
            let _ = c.stream.shutdown(Shutdown::Write);
            self.remove(conn);
        } else {
            if c.paused && c.pending() < HIGH_WATER {
                c.paused = false;
                self.resume.push(conn);
            }
            self.update_interest(conn);
        }
    }

    /// Registers for WRITABLE while something is waiting to be written (or connecting).
    fn update_interest(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let wanted = if c.connecting.is_some() || c.pending() > 0 {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if wanted != c.interest {
            c.interest = wanted;
            if let Err(err) = self
                .poll
                .registry()
                .reregister(&mut c.stream, token_of(conn), wanted)
            {
                tracing::warn!(%err, "cannot reregister a connection");
            }
        }
    }

    fn remove(&mut self, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(&conn) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}

/// The outcome of a non-blocking connect: `None` while it is still in progress.
fn connect_result(stream: &TcpStream) -> Option<io::Result<()>> {
    match stream.take_error() {
        Ok(Some(err)) | Err(err) => return Some(Err(err)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(err) if err.kind() == ErrorKind::NotConnected => None,
        Err(err) => Some(Err(err)),
    }
}
