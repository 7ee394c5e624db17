//! Small drivers for one SMTP session over one TCP connection, used by the `sink`, `send`
//! and `demo` commands (the relay nodes themselves run on the bindings): the sink's protocol
//! decisions and drain step, shared by its three runtimes ([`crate::sink`]), and the tokio
//! drivers of a sink session and of a client session.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use xshadow_core::session::{
    ClientEvent, ClientSession, ReceivedMessage, ServerEvent, ServerSession,
};
use xshadow_core::wire::Reply;

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Answers a final destination's decisions: every sender and recipient is accepted, shadow
/// requests are refused (a sink is nobody's primary). Returns a complete message, which the
/// caller stores and then confirms with [`stored`].
pub fn answer_as_sink(
    session: &mut ServerSession,
    event: ServerEvent,
) -> io::Result<Option<Box<ReceivedMessage>>> {
    let now = std::time::Instant::now();
    match event {
        ServerEvent::MailFrom => session.accept_mail(now).map_err(io::Error::other)?,
        ServerEvent::RcptTo => session.accept_rcpt(now).map_err(io::Error::other)?,
        ServerEvent::MessageComplete(message) => return Ok(Some(message)),
        ServerEvent::XShadow { .. } => session
            .reject_xshadow(Reply::command_not_implemented(), now)
            .map_err(io::Error::other)?,
        ServerEvent::XShadowRequest { .. } => session
            .reject_shadow_request(Reply::command_not_implemented(), now)
            .map_err(io::Error::other)?,
        ServerEvent::XqDiscard { .. } => {
            let none: [&str; 0] = [];
            session
                .answer_xqdiscard(&none, now)
                .map_err(io::Error::other)?;
        }
        _ => {}
    }
    Ok(None)
}

/// Tells the session whether the message it handed over was stored: 250, or a temporary
/// failure the client will retry.
pub fn stored(session: &mut ServerSession, result: io::Result<()>) -> io::Result<()> {
    let now = std::time::Instant::now();
    match result {
        Ok(()) => session.message_stored(now).map_err(io::Error::other),
        Err(err) => {
            tracing::error!(%err, "could not store a message");
            let status = Some(xshadow_core::wire::EnhancedStatus::new(4, 3, 0));
            let reply = Reply::new(451, status, "Local error in processing");
            session
                .message_rejected(reply, now)
                .map_err(io::Error::other)
        }
    }
}

/// The drain rule for a sink's session: moves its replies into `out` and answers its
/// decisions until it has nothing more, or until it hands over a complete message. The caller
/// then stores the message, reports the outcome with [`stored`] and calls this again; until
/// then the session waits (it neither reads nor times out).
pub fn drain_as_sink(
    session: &mut ServerSession,
    out: &mut Vec<u8>,
) -> io::Result<Option<Box<ReceivedMessage>>> {
    loop {
        let mut moved = session.poll_transmit(out).is_some();
        while let Some(event) = session.poll_event() {
            moved = true;
            if let Some(message) = answer_as_sink(session, event)? {
                return Ok(Some(message));
            }
        }
        if !moved {
            return Ok(None);
        }
    }
}

/// Runs a final-destination server session on `stream` until it closes; `store` is called
/// for every complete message (the 250 waits for it).
pub async fn serve<F, Fut>(
    mut stream: TcpStream,
    mut session: ServerSession,
    mut store: F,
) -> io::Result<()>
where
    F: FnMut(Box<ReceivedMessage>) -> Fut,
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
