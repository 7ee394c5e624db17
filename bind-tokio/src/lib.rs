//! xshadow-tokio: runs an xshadow relay [`Node`] on tokio.
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
//! let node = xshadow_tokio::start(xshadow_tokio::Settings::new(config, "127.0.0.1:2525".parse().unwrap(), "/var/spool/xshadow".into())).await?;
//! node.handle().stop();
//! node.wait().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use xshadow_core::node::{ConnId, Input, Node, NodeStats, Output};
use xshadow_core::session::Envelope;
use xshadow_core::shadow::MessageId;
use xshadow_spool::binding::{self, ACCEPT_PAUSE, open_node, spool_failed, stopped};
pub use xshadow_spool::binding::{EventHook, Settings};
use xshadow_spool::{Completion, Completions, SpoolHandle};

/// Requests to a running node.
enum Request {
    Submit(Box<(Envelope, Vec<u8>)>, oneshot::Sender<MessageId>),
    Stats(oneshot::Sender<NodeStats>),
    Stop,
}

/// What connection tasks tell the node task.
enum FromConn {
    Connected(ConnId, TcpStream),
    ConnectFailed(ConnId),
    Received(ConnId, Vec<u8>),
    Closed(ConnId),
}

/// What the node task tells a connection task.
enum ToConn {
    Data(Vec<u8>),
    Close,
}

/// A handle to submit messages to, inspect or stop a running node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    requests: mpsc::UnboundedSender<Request>,
}

impl NodeHandle {
    /// Submits a message locally; resolves to its id once the node has taken it (its record
    /// is on its way to the spool; it is queued once persisted).
    pub async fn submit(&self, envelope: Envelope, body: Vec<u8>) -> io::Result<MessageId> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Submit(Box::new((envelope, body)), tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// A snapshot of the node's queues.
    pub async fn stats(&self) -> io::Result<NodeStats> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Stats(tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Asks for a graceful stop: no new connections, sessions finish within the grace
    /// period, the spool is flushed.
    pub fn stop(&self) {
        let _ = self.requests.send(Request::Stop);
    }
}

/// A node running on the current tokio runtime.
pub struct RunningNode {
    handle: NodeHandle,
    task: JoinHandle<io::Result<()>>,
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
    pub async fn wait(self) -> io::Result<()> {
        self.task.await.map_err(io::Error::other)?
    }

    /// Kills the node at once, as a crash would: no flush, no goodbye to peers (their
    /// connections drop). What the spool had synced survives.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Opens the spool, recovers the node from it, binds the listener and starts the node task.
pub async fn start(settings: Settings) -> io::Result<RunningNode> {
    let (spool, node) = open_node(&settings, Instant::now().into_std())?;
    let listener = TcpListener::bind(settings.listen).await?;
    let local_addr = listener.local_addr()?;
    let database_id = node.database_id().to_owned();
    let (persisted_tx, persisted_rx) = mpsc::unbounded_channel();
    let spool = spool.spawn(Completions::callback(move |c| {
        let _ = persisted_tx.send(c);
    }))?;
    let (requests, request_rx) = mpsc::unbounded_channel();
    let driver = Driver {
        node,
        settings,
        spool: Some(spool),
        persisted: persisted_rx,
        conns: HashMap::new(),
        paused: HashSet::new(),
        tasks: Vec::new(),
        from_conns: mpsc::unbounded_channel(),
        stopping: None,
    };
    let task = tokio::spawn(driver.run(listener, request_rx));
    Ok(RunningNode {
        handle: NodeHandle { requests },
        task,
        local_addr,
        database_id,
    })
}

/// The node task's side of one connection.
struct ConnIo {
    to_conn: mpsc::UnboundedSender<ToConn>,
    /// One permit per read the connection's reader may do: the node hands one back after
    /// each read unless it is holding input back (`Node::may_read`).
    reads: Arc<Semaphore>,
}

struct Driver {
    node: Node,
    settings: Settings,
    spool: Option<SpoolHandle>,
    persisted: mpsc::UnboundedReceiver<Completion>,
    conns: HashMap<ConnId, ConnIo>,
    /// Connections whose reader waits until the node may read again.
    paused: HashSet<ConnId>,
    tasks: Vec<JoinHandle<()>>,
    from_conns: (
        mpsc::UnboundedSender<FromConn>,
        mpsc::UnboundedReceiver<FromConn>,
    ),
    /// Set once a stop was asked: the moment the grace period ends.
    stopping: Option<Instant>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Connection tasks die with the node (an abort is a crash: peers see their
        // connections drop).
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Driver {
    async fn run(
        mut self,
        listener: TcpListener,
        mut requests: mpsc::UnboundedReceiver<Request>,
    ) -> io::Result<()> {
        let mut listener = Some(listener);
        // Set after a failed accept: no accepting until then.
        let mut accept_paused: Option<Instant> = None;
        loop {
            self.drain()?;
            if let Some(end) = self.stopping
                && (self.conns.is_empty() || Instant::now() >= end)
            {
                break;
            }
            let deadline = self.node.poll_timeout().map(Instant::from_std);
            accept_paused = accept_paused.filter(|t| *t > Instant::now());
            let deadline = [deadline, self.stopping, accept_paused]
                .into_iter()
                .flatten()
                .min();
            let accepting = listener.is_some() && accept_paused.is_none();
            tokio::select! {
                accepted = async { listener.as_ref().expect("guarded").accept().await }, if accepting => {
                    match accepted {
                        Ok((stream, peer)) => self.accepted(stream, peer),
                        Err(err) => {
                            tracing::warn!(%err, "accept failed; pausing accepts");
                            accept_paused = Some(Instant::now() + ACCEPT_PAUSE);
                        }
                    }
                }
                Some(msg) = self.from_conns.1.recv() => self.handle_conn_message(msg),
                Some(done) = self.persisted.recv() => match done {
                    Completion::Persisted(token) => self.node.handle_input(Input::Persisted(token), Instant::now().into_std()),
                    Completion::Failed(err) => return Err(spool_failed(&err)),
                },
                Some(request) = requests.recv() => match request {
                    Request::Submit(message, reply) => {
                        let (envelope, body) = *message;
                        let id = self.node.submit(envelope, &body, Instant::now().into_std());
                        let _ = reply.send(id);
                    }
                    Request::Stats(reply) => {
                        let _ = reply.send(self.node.stats());
                    }
                    Request::Stop => {
                        listener = None;
                        self.stopping = Some(Instant::now() + self.settings.grace);
                        tracing::info!("stopping: no new connections, sessions finish");
                    }
                },
                () = sleep_until(deadline) => self.node.handle_timeout(Instant::now().into_std()),
            }
        }
        for io in self.conns.values() {
            let _ = io.to_conn.send(ToConn::Close);
        }
        // Let connection tasks write what they still hold (a last 221) before they are
        // dropped with the driver.
        let deadline = Instant::now() + Duration::from_millis(200);
        for task in &mut self.tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        if let Some(spool) = self.spool.take() {
            spool.shutdown().map_err(io::Error::other)?.close()?;
        }
        tracing::info!("stopped");
        Ok(())
    }

    fn accepted(&mut self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let conn = self.node.accept(peer.ip(), Instant::now().into_std());
        self.spawn_io(conn, stream);
    }

    fn spawn_io(&mut self, conn: ConnId, stream: TcpStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        let reads = Arc::new(Semaphore::new(1));
        self.conns.insert(
            conn,
            ConnIo {
                to_conn: tx,
                reads: reads.clone(),
            },
        );
        let to_node = self.from_conns.0.clone();
        self.tasks.retain(|t| !t.is_finished());
        self.tasks
            .push(tokio::spawn(connection(conn, stream, to_node, rx, reads)));
    }

    /// Lets a connection's reader read again once the node takes input from it.
    fn resume_reading(&mut self, conn: ConnId) {
        match self.conns.get(&conn) {
            Some(io) if self.node.may_read(conn) => {
                io.reads.add_permits(1);
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

    fn handle_conn_message(&mut self, msg: FromConn) {
        let now = Instant::now().into_std();
        match msg {
            FromConn::Connected(conn, stream) => {
                let _ = stream.set_nodelay(true);
                self.spawn_io(conn, stream);
                self.node.handle_input(Input::Connected(conn), now);
            }
            FromConn::ConnectFailed(conn) => {
                self.node.handle_input(Input::ConnectFailed(conn), now)
            }
            FromConn::Received(conn, data) => {
                self.node.handle_input(Input::Received(conn, &data), now);
                self.resume_reading(conn);
            }
            FromConn::Closed(conn) => {
                self.node.handle_input(Input::Closed(conn), now);
            }
        }
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
                        let _ = io.to_conn.send(ToConn::Data(data));
                    }
                }
                Output::Close(conn) => {
                    if let Some(io) = self.conns.remove(&conn) {
                        let _ = io.to_conn.send(ToConn::Close);
                    }
                }
                Output::Connect { conn, to } => {
                    let to_node = self.from_conns.0.clone();
                    let limit = self.settings.connect_timeout;
                    self.tasks.push(tokio::spawn(async move {
                        let result =
                            tokio::time::timeout(limit, TcpStream::connect(to.as_str())).await;
                        let msg = match result {
                            Ok(Ok(stream)) => FromConn::Connected(conn, stream),
                            Ok(Err(err)) => {
                                tracing::debug!(%to, %err, "connect failed");
                                FromConn::ConnectFailed(conn)
                            }
                            Err(_) => FromConn::ConnectFailed(conn),
                        };
                        let _ = to_node.send(msg);
                    }));
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Moves bytes between one socket and the node task.
async fn connection(
    conn: ConnId,
    stream: TcpStream,
    to_node: mpsc::UnboundedSender<FromConn>,
    mut from_node: mpsc::UnboundedReceiver<ToConn>,
    reads: Arc<Semaphore>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let read_to_node = to_node.clone();
    let mut read = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reads.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if read_to_node
                        .send(FromConn::Received(conn, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = read_to_node.send(FromConn::Closed(conn));
    });
    while let Some(msg) = from_node.recv().await {
        match msg {
            ToConn::Data(data) => {
                if writer.write_all(&data).await.is_err() {
                    break;
                }
            }
            ToConn::Close => {
                let _ = writer.shutdown().await;
                break;
            }
        }
    }
    // The node is done with this connection: stop reading too.
    if tokio::time::timeout(Duration::from_millis(50), &mut read)
        .await
        .is_err()
    {
        read.abort();
        let _ = to_node.send(FromConn::Closed(conn));
    }
}
