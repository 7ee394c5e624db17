//! Small drivers for one SMTP session over one TCP connection, used by the `sink`, `send`
//! and `demo` commands (the relay nodes themselves run on the bindings): the sink's drain step
//! (its protocol decisions are core's [`sink`]), shared by its three runtimes
//! ([`crate::sink`]), and the tokio drivers of a sink session and of a client session.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use xshadow_core::session::{ClientEvent, ClientSession, ReceivedMessage, ServerSession, sink};

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// The drain rule for a sink's session ([`sink::drain`]): the destination's decisions are
/// core's; this adds the clock and maps the caller's bugs to I/O errors.
pub fn drain_as_sink(
    session: &mut ServerSession,
    out: &mut Vec<u8>,
) -> io::Result<Option<ReceivedMessage>> {
    sink::drain(session, out, std::time::Instant::now()).map_err(io::Error::other)
}

/// Tells the session whether the message it handed over was stored ([`sink::stored`]: 250,
/// or a temporary failure the client will retry); a failure is logged.
pub fn stored(session: &mut ServerSession, result: io::Result<()>) -> io::Result<()> {
    if let Err(err) = &result {
        tracing::error!(%err, "could not store a message");
    }
    sink::stored(session, result.is_ok(), std::time::Instant::now()).map_err(io::Error::other)
}

/// Runs a final-destination server session on `stream` until it closes; `store` is called
/// for every complete message (the 250 waits for it).
pub async fn serve<F, Fut>(
    mut stream: TcpStream,
    mut session: ServerSession,
    mut store: F,
) -> io::Result<()>
where
    F: FnMut(ReceivedMessage) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>>,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        while let Some(message) = drain_as_sink(&mut session, &mut out)? {
            let result = store(message).await;
            stored(&mut session, result)?;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if session.is_closed() {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        tokio::select! {
            read = stream.read(&mut buf), if session.may_read() => match read {
                Ok(0) | Err(_) => session.handle_eof(std::time::Instant::now()),
                Ok(n) => session.handle_input(&buf[..n], std::time::Instant::now()),
            },
            () = sleep_until(session.poll_timeout()) => session.handle_timeout(std::time::Instant::now()),
        }
    }
}

/// Runs a client session on `stream` until it closes; returns its events in order.
pub async fn run_client(
    mut stream: TcpStream,
    mut session: ClientSession,
    idle_limit: Duration,
) -> io::Result<Vec<ClientEvent>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut events = Vec::new();
    loop {
        let _ = session.poll_transmit(&mut out);
        while let Some(event) = session.poll_event() {
            if let ClientEvent::DiscardIds {
                more_possible: true,
                ..
            } = &event
            {
                // A load generator keeps no shadow copies: no more ids are wanted.
                let _ = session.discard_more(false, std::time::Instant::now());
            }
            events.push(event);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
            continue;
        }
        if session.is_closed() {
            let _ = stream.shutdown().await;
            return Ok(events);
        }
        let deadline = session
            .poll_timeout()
            .map(|d| d.min(std::time::Instant::now() + idle_limit));
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => session.handle_close(std::time::Instant::now()),
                Ok(n) => session.handle_input(&buf[..n], std::time::Instant::now()),
            },
            () = sleep_until(deadline) => session.handle_timeout(std::time::Instant::now()),
        }
    }
}
