//! The sink on the async-std / smol ecosystem: the crates `xshadow-async-std` uses (async-io's
//! reactor and timers, async-net sockets) with one task per connection on
//! `async-global-executor`, the executor behind `async_std::task::spawn`. The Maildir write
//! and its fsyncs run on that executor's blocking pool (`spawn_blocking`, which is
//! `blocking::unblock`), never on an executor thread.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use async_global_executor::{spawn, spawn_blocking};
use async_io::Timer;
use async_net::{TcpListener, TcpStream};
use futures_lite::future::pending;
use futures_lite::{AsyncReadExt, AsyncWriteExt, FutureExt};
use xshadow_core::session::ServerSession;

use super::{ACCEPT_PAUSE, Maildir};
use crate::drive;

/// Binds `listen` (the socket is served once [`serve`] runs).
pub async fn bind(listen: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(listen).await
}

/// Accepts SMTP on `listener` until dropped, one task per connection, delivering into
/// `maildir`. Run it on the global executor (`async_global_executor::spawn`); dropping that
/// task stops accepting.
pub async fn serve(listener: TcpListener, maildir: Maildir, name: String) -> io::Result<()> {
    let config = Arc::new(super::sink_config(&name));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                Timer::after(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let session = ServerSession::new(config.clone(), false, Instant::now());
        let (maildir, name) = (maildir.clone(), name.clone());
        spawn(async move {
            if let Err(err) = connection(stream, session, maildir, name).await {
                tracing::debug!(%peer, %err, "sink session ended with an error");
            }
        })
        .detach();
    }
}

/// What woke a connection task.
enum Wake {
    Read(io::Result<usize>),
    Timeout,
}

/// One session: the drain rule, then a read (while the session may read) raced against its
/// timer.
async fn connection(
    mut stream: TcpStream,
    mut session: ServerSession,
    maildir: Maildir,
    name: String,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        while let Some(message) = drive::drain_as_sink(&mut session, &mut out)? {
            let (maildir, name) = (maildir.clone(), name.clone());
            let result = spawn_blocking(move || maildir.deliver(&message, &name).map(|_| ())).await;
            drive::stored(&mut session, result)?;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if session.is_closed() {
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        let (may_read, deadline) = (session.may_read(), session.poll_timeout());
        let read = async {
            if may_read {
                Wake::Read(stream.read(&mut buf).await)
            } else {
                pending().await
            }
        };
        let timer = async {
            match deadline {
                Some(at) => Timer::at(at).await,
                None => pending().await,
            };
            Wake::Timeout
        };
        let woke = read.or(timer).await;
        let now = Instant::now();
        match woke {
            Wake::Read(Ok(0) | Err(_)) => session.handle_eof(now),
            Wake::Read(Ok(n)) => session.handle_input(&buf[..n], now),
            Wake::Timeout => session.handle_timeout(now),
        }
    }
}
