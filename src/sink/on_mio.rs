//! The sink on a single-threaded mio event loop, like `xshadow-mio`: one thread owns the
//! listener and every non-blocking socket and follows the drain rule for each session, then
//! blocks in [`mio::Poll::poll`] until a socket is ready, a delivery finished (a
//! [`mio::Waker`]) or the earliest session timer is due.
//!
//! The Maildir writes run on a few delivery threads, not on the loop: a sink's 250 waits for
//! the fsync anyway, but one session's slow fsync must not stall the other sessions' I/O.
//! While its message is being delivered a session is not read (it waits for the decision,
//! like the other runtimes' sinks).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use xshadow_core::session::{ReceivedMessage, ServerConfig, ServerSession};

use super::{ACCEPT_PAUSE, Maildir};
use crate::drive;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Connections get tokens from here on, never reused.
const FIRST_CONN: usize = 2;
/// Threads writing messages into the Maildir.
const DELIVERY_THREADS: usize = 4;
/// Unwritten reply bytes beyond which a connection is not read until its peer catches up.
const HIGH_WATER: usize = 64 * 1024;

/// A bound sink, not running yet.
pub struct MioSink {
    poll: Poll,
    listener: TcpListener,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
}

/// Ends a running [`MioSink`]'s loop from any thread.
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    /// Asks the loop to stop: it returns at its next wake-up, which ends the sessions still
    /// open with it (no more accepting, no more serving).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

impl MioSink {
    /// Binds `listen` and sets up the poll.
    pub fn bind(listen: SocketAddr) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Self {
            poll,
            listener,
            waker,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops the loop.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs the loop on the calling thread until stopped, delivering into `maildir`.
    pub fn run(self, maildir: Maildir, name: String) -> io::Result<()> {
        let (done_tx, done) = mpsc::channel();
        let jobs = start_delivery(&maildir, &name, &self.waker, &done_tx)?;
        let mut driver = Driver {
            config: Arc::new(super::sink_config(&name)),
            poll: self.poll,
            listener: self.listener,
            conns: HashMap::new(),
            next: FIRST_CONN,
            jobs,
            done,
            accept_again: None,
            buf: vec![0; 64 * 1024],
        };
        driver.run(&self.stop)
    }
}

/// A message for the delivery threads, from the connection with this token.
struct Job(Token, ReceivedMessage);

/// Starts the delivery threads; they end once the returned sender is dropped.
fn start_delivery(
    maildir: &Maildir,
    name: &str,
    waker: &Arc<Waker>,
    done: &Sender<(Token, io::Result<()>)>,
) -> io::Result<Sender<Job>> {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..DELIVERY_THREADS {
        let (queue, maildir, name) = (queue.clone(), maildir.clone(), name.to_owned());
        let (done, waker) = (done.clone(), waker.clone());
        std::thread::Builder::new()
            .name(format!("sink-delivery-{i}"))
            .spawn(move || {
                loop {
                    let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(Job(token, message)) = job else {
                        return;
                    };
                    let result = maildir.deliver(&message, &name).map(|_| ());
                    if done.send((token, result)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
    }
    Ok(jobs)
}

/// One connection: its socket, its session and the replies the socket has not taken yet.
struct Conn {
    stream: TcpStream,
    session: ServerSession,
    out: Vec<u8>,
    written: usize,
    /// Its message is with the delivery threads: the session waits for the outcome.
    storing: bool,
    /// The peer closed its side.
    eof: bool,
}

impl Conn {
    fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// Drains the session, writes, reads, until the socket or the session says wait.
    /// `Ok(false)` once the connection is done.
    fn advance(&mut self, token: Token, buf: &mut [u8], jobs: &Sender<Job>) -> io::Result<bool> {
        loop {
            if !self.storing
                && let Some(message) = drive::drain_as_sink(&mut self.session, &mut self.out)?
            {
                self.storing = true;
                jobs.send(Job(token, message))
                    .map_err(|_| io::Error::other("the delivery threads are gone"))?;
            }
            self.flush()?;
            if self.session.is_closed() {
                if self.pending() == 0 {
                    let _ = self.stream.shutdown(Shutdown::Write);
                    return Ok(false);
                }
                return Ok(true);
            }
            // mio's readiness is edge-triggered: whoever stops reading here must read again
            // when the reason is gone (a delivery finished, a write drained, a timer fired);
            // every such path comes back through this function.
            if self.storing || self.eof || !self.session.may_read() || self.pending() >= HIGH_WATER
            {
                return Ok(true);
            }
            match self.stream.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    self.session.handle_eof(Instant::now());
                }
                Ok(n) => self.session.handle_input(&buf[..n], Instant::now()),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Writes what the socket takes now.
    fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        }
        Ok(())
    }
}

struct Driver {
    config: Arc<ServerConfig>,
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<Token, Conn>,
    next: usize,
    jobs: Sender<Job>,
    done: Receiver<(Token, io::Result<()>)>,
    /// When to try `accept` again after it failed (say, out of file descriptors): readiness
    /// is edge-triggered, so connections already waiting would get no new event.
    accept_again: Option<Instant>,
    buf: Vec<u8>,
}

impl Driver {
    fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        while !stop.load(Ordering::SeqCst) {
            // A linear scan for the earliest timer: a sink has few sessions, and each loop
            // turn touches them anyway when they are busy.
            let now = Instant::now();
            let timeout = self
                .conns
                .values()
                .filter_map(|c| c.session.poll_timeout())
                .chain(self.accept_again)
                .min()
                .map(|at| at.saturating_duration_since(now));
            match self.poll.poll(&mut events, timeout) {
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                result => result?,
            }
            if self.accept_again.is_some_and(|t| t <= Instant::now()) {
                self.accept_all();
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    token => self.step(token),
                }
            }
            while let Ok((token, result)) = self.done.try_recv() {
                let Some(c) = self.conns.get_mut(&token) else {
                    continue;
                };
                c.storing = false;
                match drive::stored(&mut c.session, result) {
                    Ok(()) => self.step(token),
                    Err(err) => self.drop_conn(token, &err),
                }
            }
            let now = Instant::now();
            let due: Vec<Token> = self
                .conns
                .iter()
                .filter(|(_, c)| c.session.poll_timeout().is_some_and(|at| at <= now))
                .map(|(token, _)| *token)
                .collect();
            for token in due {
                if let Some(c) = self.conns.get_mut(&token) {
                    c.session.handle_timeout(now);
                }
                self.step(token);
            }
        }
        tracing::info!("sink stopped: no more connections accepted");
        Ok(())
    }

    fn accept_all(&mut self) {
        self.accept_again = None;
        loop {
            match self.listener.accept() {
                Ok((mut stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let token = Token(self.next);
                    self.next += 1;
                    // Always both: edge-triggered writable events are rare and harmless, and
                    // this spares re-registering whenever replies are left unwritten.
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(err) = self.poll.registry().register(&mut stream, token, interest) {
                        tracing::warn!(%err, "cannot register a connection");
                        continue;
                    }
                    let session = ServerSession::new(self.config.clone(), false, Instant::now());
                    let conn = Conn {
                        stream,
                        session,
                        out: Vec::new(),
                        written: 0,
                        storing: false,
                        eof: false,
                    };
                    self.conns.insert(token, conn);
                    self.step(token);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(err) => {
                    tracing::warn!(%err, "accept failed; trying again shortly");
                    self.accept_again = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Moves one connection on; removes it once it is done or broken.
    fn step(&mut self, token: Token) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        match c.advance(token, &mut self.buf, &self.jobs) {
            Ok(true) => {}
            Ok(false) => self.remove(token),
            Err(err) => self.drop_conn(token, &err),
        }
    }

    fn drop_conn(&mut self, token: Token, err: &io::Error) {
        tracing::debug!(%err, "sink session ended with an error");
        self.remove(token);
    }

    fn remove(&mut self, token: Token) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }
}
