//! xshadow-async-std: runs an xshadow relay [`Node`] on the async-std / smol ecosystem.
//!
//! async-std is discontinued upstream (RUSTSEC-2025-0052; its README points to smol). This
//! binding therefore uses only the pieces async-std and smol share: `async-io` (the reactor
//! and timers), `async-net` sockets, `async-channel` and `futures-lite`. Its tasks run on
//! `async-global-executor` (the executor behind `async_std::task::spawn`), whose worker
//! threads start on first use: the node runs the same whether the caller is driven by
//! `async_std::task::block_on`, `smol::block_on` or smol's executor.
//!
//! The binding owns sockets, the timer and the spool thread, and nothing else: every protocol
//! decision is the core's. One task owns the node and follows the drain rule literally; one
//! task per connection moves bytes between the socket and the node.
//!
//! [`Settings`] is the type every binding takes (from [`xshadow_spool::binding`]): its
//! `on_event` hook sees each of the node's events in order, and its `seed` fixes the ids the
//! node makes (tests); by default the seed comes from the operating system.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use xshadow_core::node::NodeConfig;
//! let mut config = NodeConfig::new("edge1.example");
//! config.next_hops = vec!["127.0.0.1:2526".into()];
//! let settings = xshadow_async_std::Settings::new(
//!     config,
//!     "127.0.0.1:2525".parse().unwrap(),
//!     "/var/spool/xshadow".into(),
//! );
//! let node = xshadow_async_std::start(settings).await?;
//! node.handle().stop();
//! node.wait().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_global_executor::{Task, spawn, spawn_blocking};
use async_io::Timer;
use async_net::{TcpListener, TcpStream};
use futures_lite::future::pending;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use xshadow_core::node::{ConnId, Input, Node, NodeStats, Output};
use xshadow_core::session::Envelope;
use xshadow_core::shadow::MessageId;
use xshadow_spool::binding::{self, ACCEPT_PAUSE, open_node, spool_failed, stopped};
pub use xshadow_spool::binding::{EventHook, Settings};
use xshadow_spool::{Completion, Completions, SpoolHandle};

/// How long a connection task waits for its peer's close after the node closed it.
const LINGER: Duration = Duration::from_millis(50);

/// Everything the node task hears about, in arrival order.
enum ToNode {
    Submit(Box<(Envelope, Vec<u8>)>, Sender<MessageId>),
    Stats(Sender<NodeStats>),
    Stop,
    Connected(ConnId, TcpStream),
    ConnectFailed(ConnId),
    Received(ConnId, Vec<u8>),
    Closed(ConnId),
    Spool(Completion),
}

/// What the node task tells a connection task.
enum ToConn {
    Data(Vec<u8>),
    Close,
}

/// A handle to submit messages to, inspect or stop a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    inbox: Sender<ToNode>,
}

impl NodeHandle {
    /// Submits a message locally; resolves to its id once the node has taken it (its record
    /// is on its way to the spool; it is queued once persisted).
    pub async fn submit(&self, envelope: Envelope, body: Vec<u8>) -> io::Result<MessageId> {
        let (tx, rx) = async_channel::bounded(1);
        let message = Box::new((envelope, body));
        self.ask(ToNode::Submit(message, tx), rx).await
    }

    /// A snapshot of the node's queues.
    pub async fn stats(&self) -> io::Result<NodeStats> {
        let (tx, rx) = async_channel::bounded(1);
        self.ask(ToNode::Stats(tx), rx).await
    }

    /// Asks for a graceful stop: no new connections, sessions finish within the grace
    /// period, the spool is flushed.
    pub fn stop(&self) {
        let _ = self.inbox.try_send(ToNode::Stop);
    }

    async fn ask<T>(&self, request: ToNode, reply: Receiver<T>) -> io::Result<T> {
        self.inbox.send(request).await.map_err(|_| stopped())?;
        reply.recv().await.map_err(|_| stopped())
    }
}

/// A node running on the global executor (see the crate documentation).
pub struct RunningNode {
    handle: NodeHandle,
    /// `None` only after `wait` or `abort` took it.
    task: Option<Task<io::Result<()>>>,
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

    /// Waits until the node has stopped.
    pub async fn wait(mut self) -> io::Result<()> {
        match self.task.take() {
            Some(task) => task.await,
            None => Ok(()),
        }
    }

    /// Kills the node at once, as a crash would: no goodbye to peers (their connections
    /// drop). What the spool had synced survives.
    pub fn abort(mut self) {
        // Dropping an async-task `Task` cancels it.
        drop(self.task.take());
    }
}

impl Drop for RunningNode {
    /// Dropping the value without `wait` or `abort` leaves the node running, as tokio does.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.detach();
        }
    }
}

/// Opens the spool, recovers the node from it, binds the listener and starts the node task.
pub async fn start(settings: Settings) -> io::Result<RunningNode> {
    let (spool, node) = open_node(&settings, Instant::now())?;
    let listen = settings.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let local_addr = listener.local_addr()?;
    let database_id = node.database_id().to_owned();
    let (inbox, inbox_rx) = async_channel::unbounded();
    let completions = inbox.clone();
    let spool = spool.spawn(Completions::callback(move |c| {
        let _ = completions.try_send(ToNode::Spool(c));
    }))?;
    let driver = Driver {
        node,
        settings,
        spool: Some(spool),
        conns: HashMap::new(),
        paused: HashSet::new(),
        tasks: Vec::new(),
        inbox: inbox.clone(),
        requests: inbox_rx,
        stopping: None,
    };
    Ok(RunningNode {
        handle: NodeHandle { inbox },
        task: Some(spawn(driver.run(listener))),
        local_addr,
        database_id,
    })
}

/// What woke the node task.
enum Wake {
    Message(ToNode),
    Accepted(io::Result<(TcpStream, SocketAddr)>),
    Timeout,
}

/// The node task's side of one connection.
struct ConnIo {
    to_conn: Sender<ToConn>,
    /// One token per read the connection's reader may do: the node sends one after each
    /// read unless it is holding input back (`Node::may_read`).
    reads: Sender<()>,
}

/// The node task's state. Dropping it (an abort) cancels every connection task.
struct Driver {
    node: Node,
    settings: Settings,
    spool: Option<SpoolHandle>,
    conns: HashMap<ConnId, ConnIo>,
    /// Connections whose reader waits until the node may read again.
    paused: HashSet<ConnId>,
    tasks: Vec<Task<()>>,
    inbox: Sender<ToNode>,
    requests: Receiver<ToNode>,
    /// Set once a stop was asked: the moment the grace period ends.
    stopping: Option<Instant>,
}

impl Drop for Driver {
    /// Answers what is still queued (by dropping its reply channels): `submit` and `stats`
    /// calls fail instead of waiting for a node that is gone.
    fn drop(&mut self) {
        self.requests.close();
        while self.requests.try_recv().is_ok() {}
    }
}

impl Driver {
    async fn run(mut self, listener: TcpListener) -> io::Result<()> {
        let mut listener = Some(listener);
        // Set after a failed accept: no accepting until then.
        let mut accept_paused: Option<Instant> = None;
        let requests = self.requests.clone();
        loop {
            self.drain()?;
            if self.stopping.is_some() {
                listener = None;
            }
            if let Some(end) = self.stopping
                && (self.conns.is_empty() || Instant::now() >= end)
            {
                break;
            }
            accept_paused = accept_paused.filter(|t| *t > Instant::now());
            let deadline = [self.node.poll_timeout(), self.stopping, accept_paused]
                .into_iter()
                .flatten()
                .min();
            let message = async { requests.recv().await.map_or(Wake::Timeout, Wake::Message) };
            let paused = accept_paused.is_some();
            let accept = async {
                match (&listener, paused) {
                    (Some(l), false) => Wake::Accepted(l.accept().await),
                    _ => pending().await,
                }
            };
            let timer = async {
                match deadline {
                    Some(d) => Timer::at(d).await,
                    None => pending().await,
                };
                Wake::Timeout
            };
            // `race` polls in random order, so no source starves the others under load.
            let wake = if deadline.is_some_and(|d| d <= Instant::now()) {
                Wake::Timeout
            } else {
                message.race(accept).race(timer).await
            };
            match wake {
                Wake::Message(message) => self.handle(message)?,
                Wake::Accepted(Ok((stream, peer))) => {
                    let _ = stream.set_nodelay(true);
                    let conn = self.node.accept(peer.ip(), Instant::now());
                    self.spawn_io(conn, stream);
                }
                Wake::Accepted(Err(err)) => {
                    tracing::warn!(%err, "accept failed; pausing accepts");
                    accept_paused = Some(Instant::now() + ACCEPT_PAUSE);
                }
                Wake::Timeout => self.node.handle_timeout(Instant::now()),
            }
        }
        for io in self.conns.values() {
            let _ = io.to_conn.try_send(ToConn::Close);
        }
        // Connection tasks write what they were given, then end (each within `LINGER`).
        let tasks = std::mem::take(&mut self.tasks);
        let finished = async {
            for task in tasks {
                task.await;
            }
        };
        let limit = async {
            Timer::after(LINGER * 4).await;
        };
        finished.or(limit).await;
        if let Some(spool) = self.spool.take() {
            let flush =
                move || -> io::Result<()> { spool.shutdown().map_err(io::Error::other)?.close() };
            spawn_blocking(flush).await?;
        }
        tracing::info!("stopped");
        Ok(())
    }

    fn handle(&mut self, message: ToNode) -> io::Result<()> {
        let now = Instant::now();
        match message {
            ToNode::Submit(message, reply) => {
                let (envelope, body) = *message;
                let _ = reply.try_send(self.node.submit(envelope, &body, now));
            }
            ToNode::Stats(reply) => {
                let _ = reply.try_send(self.node.stats());
            }
            ToNode::Stop => {
                let grace = self.settings.grace;
                self.stopping.get_or_insert(now + grace);
                tracing::info!("stopping: no new connections, sessions finish");
            }
            ToNode::Connected(conn, stream) => {
                let _ = stream.set_nodelay(true);
                self.spawn_io(conn, stream);
                self.node.handle_input(Input::Connected(conn), now);
            }
            ToNode::ConnectFailed(conn) => self.node.handle_input(Input::ConnectFailed(conn), now),
            ToNode::Received(conn, data) => {
                self.node.handle_input(Input::Received(conn, &data), now);
                self.resume_reading(conn);
            }
            ToNode::Closed(conn) => self.node.handle_input(Input::Closed(conn), now),
            ToNode::Spool(Completion::Persisted(token)) => {
                self.node.handle_input(Input::Persisted(token), now);
            }
            ToNode::Spool(Completion::Failed(err)) => return Err(spool_failed(&err)),
        }
        Ok(())
    }

    fn spawn_io(&mut self, conn: ConnId, stream: TcpStream) {
        let (to_conn, from_node) = async_channel::unbounded();
        let (reads, may_read) = async_channel::unbounded();
        let _ = reads.try_send(());
        self.conns.insert(conn, ConnIo { to_conn, reads });
        let inbox = self.inbox.clone();
        self.spawn(connection(conn, stream, inbox, from_node, may_read));
    }

    /// Lets a connection's reader read again once the node takes input from it.
    fn resume_reading(&mut self, conn: ConnId) {
        match self.conns.get(&conn) {
            Some(io) if self.node.may_read(conn) => {
                let _ = io.reads.try_send(());
                self.paused.remove(&conn);
            }
            Some(_) => {
                self.paused.insert(conn);
            }
            None => {
                self.paused.remove(&conn);
            }
        }
    }

    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(spawn(task));
    }

    /// The drain rule: act on every output until the node has none.
    fn drain(&mut self) -> io::Result<()> {
        for conn in self.paused.clone() {
            self.resume_reading(conn);
        }
        while let Some(output) = self.node.poll_output() {
            match output {
                Output::Transmit { conn, data } => {
                    if let Some(io) = self.conns.get(&conn) {
                        let _ = io.to_conn.try_send(ToConn::Data(data));
                    }
                }
                Output::Close(conn) => {
                    if let Some(io) = self.conns.remove(&conn) {
                        let _ = io.to_conn.try_send(ToConn::Close);
                    }
                }
                Output::Connect { conn, to } => {
                    let inbox = self.inbox.clone();
                    let limit = self.settings.connect_timeout;
                    self.spawn(async move {
                        let connect = async { TcpStream::connect(to.as_str()).await };
                        let timeout = async {
                            Timer::after(limit).await;
                            Err(io::Error::from(io::ErrorKind::TimedOut))
                        };
                        let message = match connect.or(timeout).await {
                            Ok(stream) => ToNode::Connected(conn, stream),
                            Err(err) => {
                                tracing::debug!(%to, %err, "connect failed");
                                ToNode::ConnectFailed(conn)
                            }
                        };
                        let _ = inbox.send(message).await;
                    });
                }
                Output::Persist { token, records } => {
                    binding::persist(self.spool.as_ref(), token, records)?;
                }
                Output::Event(event) => self.settings.report(&event),
            }
        }
        Ok(())
    }
}

/// Moves bytes between one socket and the node task.
async fn connection(
    conn: ConnId,
    stream: TcpStream,
    to_node: Sender<ToNode>,
    from_node: Receiver<ToConn>,
    may_read: Receiver<()>,
) {
    let mut reader = stream.clone();
    let read_to_node = to_node.clone();
    let mut read = spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        // Once the node is done with the connection (no more tokens), report it closed.
        while may_read.recv().await.is_ok() {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    if read_to_node
                        .send(ToNode::Received(conn, data))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = read_to_node.send(ToNode::Closed(conn)).await;
    });
    let mut writer = stream;
    while let Ok(message) = from_node.recv().await {
        match message {
            ToConn::Data(data) => {
                if writer.write_all(&data).await.is_err() {
                    break;
                }
            }
            ToConn::Close => {
                let _ = writer.shutdown(Shutdown::Write);
                break;
            }
        }
    }
    // The node is done with this connection: stop reading too, once the peer had a moment
    // to close its side.
    let read_ended = async {
        (&mut read).await;
        true
    };
    let linger = async {
        Timer::after(LINGER).await;
        false
    };
    if !read_ended.or(linger).await {
        drop(read);
        let _ = to_node.send(ToNode::Closed(conn)).await;
    }
}
