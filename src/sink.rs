//! `xshadow sink`: a final destination that accepts any recipient and writes each message to
//! a Maildir, durably, before it says 250.

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
        let (stream, peer) = listener.accept().await?;
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

/// Accepts SMTP on `listener` forever with one thread per connection and no async runtime
/// (the sink of `--runtime mio`).
pub fn serve_blocking(
    listener: std::net::TcpListener,
    maildir: Maildir,
    name: String,
) -> io::Result<()> {
    let config = Arc::new(sink_config(&name));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let session = ServerSession::new(config.clone(), false, std::time::Instant::now());
        let (maildir, name) = (maildir.clone(), name.clone());
        std::thread::spawn(move || {
            let result = drive::serve_blocking(stream, session, |message| {
                maildir.deliver(message, &name).map(|_| ())
            });
            if let Err(err) = result {
                tracing::debug!(%err, "sink session ended with an error");
            }
        });
    }
    Ok(())
}

/// Binds and runs a sink on `runtime` until the process ends.
pub async fn run(
    listen: SocketAddr,
    dir: &Path,
    runtime: crate::runtime::Runtime,
) -> io::Result<()> {
    let maildir = Maildir::create(dir)?;
    let name = "sink.localhost".to_owned();
    match runtime {
        crate::runtime::Runtime::Tokio => {
            let listener = TcpListener::bind(listen).await?;
            tracing::info!(addr = %listener.local_addr()?, maildir = %dir.display(), "sink listening");
            serve(listener, maildir, name).await
        }
        // Neither mio nor async-std needs more than blocking sockets to write a Maildir: the
        // sink runs one thread per connection, without any async runtime.
        crate::runtime::Runtime::Mio | crate::runtime::Runtime::AsyncStd => {
            let listener = std::net::TcpListener::bind(listen)?;
            tracing::info!(addr = %listener.local_addr()?, maildir = %dir.display(), %runtime, "sink listening");
            tokio::task::spawn_blocking(move || serve_blocking(listener, maildir, name))
                .await
                .map_err(io::Error::other)?
        }
    }
}
