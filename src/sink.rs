//! `xshadow sink`: a final destination that accepts any recipient and writes each message to
//! a Maildir, durably, before it says 250.
//!
//! The sink runs on the runtime `--runtime` names, each driving the same [`ServerSession`]
//! with the same decisions ([`xshadow_core::session::sink`], [`drive::drain_as_sink`]) and the same
//! [`Maildir`]:
//! - tokio ([`serve`]): one task per connection; the Maildir write on `spawn_blocking`;
//! - async-std (`on_async_std`, feature `async-std`): async-io/async-net sockets, one task
//!   per connection on `async-global-executor`; the Maildir write on its blocking pool;
//! - mio (`on_mio`, feature `mio`): one thread with a `mio::Poll` loop over non-blocking
//!   sockets; the Maildir writes on a few delivery threads that wake the loop when done.
//!
//! On every runtime the 250 is sent only after the message is renamed into `new/` and the
//! directory is synced.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use xshadow_core::dsn::rfc5322_date;
use xshadow_core::session::{ReceivedMessage, ServerConfig, ServerSession};
use xshadow_core::wire::path::ForwardPath;

use crate::drive;
use crate::runtime::Runtime;

#[cfg(feature = "async-std")]
pub mod on_async_std;
#[cfg(feature = "mio")]
pub mod on_mio;

pub(crate) use xshadow_spool::binding::ACCEPT_PAUSE;

/// A Maildir (`tmp/`, `new/`, `cur/`) that messages are delivered into.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    counter: Arc<AtomicU64>,
}

impl Maildir {
    /// Creates the Maildir's folders if needed.
    pub fn create(root: &Path) -> io::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        // Refuse an unwritable directory now rather than at the first message.
        let probe = root.join("tmp").join(".probe");
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)?;
        Ok(Self {
            root: root.to_owned(),
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Delivers one message: trace headers, then the content exactly as received. Written to
    /// `tmp/`, synced, renamed into `new/`, directory synced.
    pub fn deliver(&self, message: &ReceivedMessage, by: &str) -> io::Result<PathBuf> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}.M{}P{}Q{n}.{by}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id()
        );
        let tmp = self.root.join("tmp").join(&name);
        let new = self.root.join("new").join(&name);
        let mut file = std::fs::File::create(&tmp)?;
        let from = message
            .envelope
            .from
            .mailbox()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut head = format!("Return-Path: <{from}>\r\n");
        for r in &message.envelope.recipients {
            if let ForwardPath::Mailbox(m) = &r.to {
                head.push_str(&format!("Delivered-To: {m}\r\n"));
            }
        }
        let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        head.push_str(&format!(
            "Received: from {} by {by} (xshadow sink); {}\r\n",
            message.helo,
            rfc5322_date(ms)
        ));
        file.write_all(head.as_bytes())?;
        file.write_all(&message.body)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &new)?;
        std::fs::File::open(self.root.join("new"))?.sync_all()?;
        Ok(new)
    }
}

fn sink_config(name: &str) -> ServerConfig {
    let mut config = ServerConfig::new(name);
    config.max_message_size = 100 * 1024 * 1024;
    config
}

/// Accepts SMTP on `listener` forever, delivering into `maildir`.
pub async fn serve(listener: TcpListener, maildir: Maildir, name: String) -> io::Result<()> {
    let config = Arc::new(sink_config(&name));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of descriptors, say: the sink goes on once some are free.
                tracing::warn!(%err, "accept failed; trying again shortly");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let session = ServerSession::new(config.clone(), false, std::time::Instant::now());
        let maildir = maildir.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let result = drive::serve(stream, session, |message| {
                let maildir = maildir.clone();
                let name = name.clone();
                async move {
                    tokio::task::spawn_blocking(move || maildir.deliver(&message, &name))
                        .await
                        .map_err(io::Error::other)?
                        .map(|_| ())
                }
            })
            .await;
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "sink session ended with an error");
            }
        });
    }
}

/// Binds and runs a sink on `runtime` until the process ends or this future is dropped, which
/// stops accepting. Sessions still open then end with it on mio (its loop is the only thing
/// serving them); on tokio and async-std their tasks run on until the process exits.
pub async fn run(listen: SocketAddr, dir: &Path, runtime: Runtime) -> io::Result<()> {
    let maildir = Maildir::create(dir)?;
    let name = "sink.localhost".to_owned();
    match runtime {
        Runtime::Tokio => {
            let listener = TcpListener::bind(listen).await?;
            tracing::info!(addr = %listener.local_addr()?, maildir = %dir.display(), "sink listening");
            serve(listener, maildir, name).await
        }
        #[cfg(feature = "async-std")]
        Runtime::AsyncStd => {
            let listener = on_async_std::bind(listen).await?;
            tracing::info!(addr = %listener.local_addr()?, maildir = %dir.display(), %runtime, "sink listening");
            // Dropping the task (this future was dropped) ends the accept loop.
            async_global_executor::spawn(on_async_std::serve(listener, maildir, name)).await
        }
        #[cfg(feature = "mio")]
        Runtime::Mio => {
            let sink = on_mio::MioSink::bind(listen)?;
            tracing::info!(addr = %sink.local_addr()?, maildir = %dir.display(), %runtime, "sink listening");
            // The loop blocks its thread: stop it when this future is dropped, or the process
            // could not end (tokio waits for its blocking threads).
            let _stop = StopOnDrop(sink.stopper());
            tokio::task::spawn_blocking(move || sink.run(maildir, name))
                .await
                .map_err(io::Error::other)?
        }
        #[allow(unreachable_patterns)]
        other => Err(crate::runtime::not_built(other)),
    }
}

/// Stops the mio sink's loop when dropped.
#[cfg(feature = "mio")]
struct StopOnDrop(on_mio::Stopper);

#[cfg(feature = "mio")]
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}
