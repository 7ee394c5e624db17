//! `xshadow send`: an SMTP load generator with a progress bar and a final summary.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use xshadow_core::session::{
    ClientConfig, ClientEvent, ClientSession, Envelope, OutboundMessage, Recipient,
};
use xshadow_core::wire::path::{ForwardPath, Mailbox, ReversePath};
use xshadow_core::wire::{MailParams, RcptParams};

use crate::drive;

/// What to send.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The SMTP server.
    pub server: SocketAddr,
    /// How many messages.
    pub count: u64,
    /// Body size in bytes (headers included, approximately).
    pub size: usize,
    /// Parallel connections.
    pub concurrency: usize,
    /// Envelope sender.
    pub from: Mailbox<'static>,
    /// Envelope recipient.
    pub to: Mailbox<'static>,
    /// Messages per SMTP session.
    pub per_session: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// Tags every Message-ID, so several runs can be told apart.
    pub run_id: String,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct SendReport {
    /// Messages handed to the server.
    pub submitted: u64,
    /// Messages the server acknowledged with 250.
    pub accepted: u64,
    /// Messages refused or not acknowledged.
    pub failed: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The Message-IDs of the accepted messages.
    pub accepted_ids: Vec<String>,
}

/// Parses `local@domain` for `--from` / `--to`.
pub fn parse_mailbox(s: &str) -> Result<Mailbox<'static>, String> {
    let wire = format!("<{s}>");
    match xshadow_core::wire::path::parse_forward_path(&wire) {
        Ok((ForwardPath::Mailbox(m), "")) => Ok(m.into_owned()),
        _ => Err(format!("not an address: {s:?}")),
    }
}

/// The Message-ID of message `n` of run `run_id`.
pub fn message_id(run_id: &str, n: u64) -> String {
    format!("<{run_id}.{n}@xshadow-send>")
}

fn body(opts: &SendOptions, n: u64) -> Vec<u8> {
    let mut text = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: xshadow test message {n}\r\nMessage-ID: {}\r\nDate: {}\r\n\r\n",
        opts.from,
        opts.to,
        message_id(&opts.run_id, n),
        xshadow_core::dsn::rfc5322_date(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        ),
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrst\r\n";
    while text.len() < opts.size {
        text.extend_from_slice(line);
    }
    text
}

/// Sends `opts.count` messages over `opts.concurrency` connections.
pub async fn run(opts: SendOptions) -> io::Result<SendReport> {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let bar = if opts.progress {
        let bar = indicatif::ProgressBar::new(opts.count);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} messages, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let opts = Arc::new(opts);
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (opts, next, bar) = (opts.clone(), next.clone(), bar.clone());
        workers.push(tokio::spawn(async move {
            worker(&opts, &next, bar.as_ref()).await
        }));
    }
    let mut report = SendReport::default();
    for w in workers {
        let part = w.await.map_err(io::Error::other)??;
        report.submitted += part.submitted;
        report.accepted += part.accepted;
        report.failed += part.failed;
        report.accepted_ids.extend(part.accepted_ids);
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn worker(
    opts: &SendOptions,
    next: &AtomicU64,
    bar: Option<&indicatif::ProgressBar>,
) -> io::Result<SendReport> {
    let mut report = SendReport::default();
    loop {
        let first = next.fetch_add(opts.per_session as u64, Ordering::Relaxed);
        if first >= opts.count {
            return Ok(report);
        }
        let last = (first + opts.per_session as u64).min(opts.count);
        let now = std::time::Instant::now();
        let mut session = ClientSession::new(ClientConfig::new("xshadow-send.localhost"), now)
            .map_err(io::Error::other)?;
        for n in first..last {
            let envelope = Envelope {
                from: ReversePath::Mailbox(opts.from.clone()),
                params: MailParams::default(),
                recipients: [Recipient {
                    to: ForwardPath::Mailbox(opts.to.clone()),
                    params: RcptParams::default(),
                }]
                .into(),
            };
            let message = OutboundMessage {
                id: n,
                envelope: envelope.into(),
                body: body(opts, n).into(),
                shadow_id: None,
            };
            session
                .queue_message(message, now)
                .map_err(io::Error::other)?;
        }
        session.finish(false, now).map_err(io::Error::other)?;
        report.submitted += last - first;
        let events = match TcpStream::connect(opts.server).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                drive::run_client(stream, session, Duration::from_secs(300))
                    .await
                    .unwrap_or_default()
            }
            Err(err) => {
                tracing::warn!(%err, server = %opts.server, "connect failed");
                Vec::new()
            }
        };
        let mut accepted = 0;
        for e in events {
            if let ClientEvent::MessageAccepted { id, .. } = e {
                accepted += 1;
                report.accepted_ids.push(message_id(&opts.run_id, id));
            }
        }
        report.accepted += accepted;
        report.failed += (last - first) - accepted;
        if let Some(bar) = bar {
            bar.inc(last - first);
        }
    }
}
