//! `xshadow demo`: the whole promise in one process. A sink, two edges and a hub on free
//! loopback ports with temporary spools; N messages sent to the hub; edge 1 crashes in the
//! middle; the hub takes the primary role back and resubmits through edge 2. Prints what
//! was submitted, acknowledged, delivered, duplicated and lost.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::runtime::{AnyNode, NodeSettings, Runtime};
use tokio::net::TcpListener;
use xshadow_core::node::NodeConfig;

use crate::send::{self, SendOptions};
use crate::sink::{self, Maildir};

/// What the demo saw.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Messages sent to the hub.
    pub submitted: u64,
    /// Messages the hub acknowledged.
    pub acknowledged: u64,
    /// Acknowledged messages found in the sink at least once.
    pub delivered: u64,
    /// Extra copies in the sink (at-least-once, never lost).
    pub duplicates: u64,
    /// Acknowledged messages missing from the sink.
    pub lost: u64,
    /// Wall time.
    pub seconds: f64,
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "xshadow-demo-{}-{}-{tag}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn demo_config(name: &str) -> NodeConfig {
    let mut c = NodeConfig::new(name);
    c.shadow.heartbeat_interval = Duration::from_millis(500);
    c.shadow.resubmit_after = Duration::from_secs(3);
    c.retry.first = Duration::from_millis(200);
    c.retry.max = Duration::from_secs(2);
    c.max_ack_delay = Duration::ZERO;
    c
}

async fn start_node(runtime: Runtime, config: NodeConfig, spool: &Path) -> io::Result<AnyNode> {
    let mut settings = NodeSettings::new(config, loopback(), spool.to_owned());
    settings.grace = Duration::from_secs(2);
    settings.connect_timeout = Duration::from_secs(2);
    AnyNode::start(runtime, settings).await
}

/// Counts, per Message-ID, the copies in a Maildir's `new/`.
pub fn count_delivered(maildir: &Path) -> io::Result<HashMap<String, u64>> {
    let mut counts = HashMap::new();
    for entry in std::fs::read_dir(maildir.join("new"))? {
        let text = std::fs::read(entry?.path())?;
        let text = String::from_utf8_lossy(&text);
        if let Some(line) = text
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        {
            *counts.entry(line[11..].trim().to_owned()).or_insert(0) += 1;
        }
    }
    Ok(counts)
}

/// Runs the demo with `messages` messages.
pub async fn run(messages: u64, runtime: Runtime) -> io::Result<DemoReport> {
    let started = Instant::now();
    let maildir_dir = TempDir::new("maildir")?;
    let spools = [
        TempDir::new("edge1")?,
        TempDir::new("edge2")?,
        TempDir::new("hub")?,
    ];
    let maildir = Maildir::create(&maildir_dir.0)?;
    let sink_listener = TcpListener::bind(loopback()).await?;
    let sink_addr = sink_listener.local_addr()?;
    let sink_task = tokio::spawn(sink::serve(sink_listener, maildir, "sink.demo".into()));

    let mut edges = Vec::new();
    for (i, name) in ["edge1.demo", "edge2.demo"].into_iter().enumerate() {
        let mut c = demo_config(name);
        c.next_hops = vec![sink_addr.to_string()];
        c.offer_shadow = true;
        c.shadow_peers = vec!["127.0.0.0/8".parse().map_err(io::Error::other)?];
        edges.push(start_node(runtime, c, &spools[i].0).await?);
    }
    let mut hub_config = demo_config("hub.demo");
    hub_config.next_hops = edges.iter().map(|e| e.local_addr().to_string()).collect();
    hub_config.shadow_next_hops = true;
    let hub = start_node(runtime, hub_config, &spools[2].0).await?;
    println!(
        "runtime {runtime}: sink {sink_addr}, edge1 {}, edge2 {}, hub {}",
        edges[0].local_addr(),
        edges[1].local_addr(),
        hub.local_addr()
    );

    // Send in two halves; edge 1 crashes between them, while it still holds messages.
    let run_id = format!("demo{:x}", fastrand::u64(..));
    let options = |count: u64, tag: &str| SendOptions {
        server: hub.local_addr(),
        count,
        size: 1024,
        concurrency: 4,
        from: send::parse_mailbox("alice@example.org").expect("valid"),
        to: send::parse_mailbox("bob@example.net").expect("valid"),
        per_session: 50,
        progress: false,
        run_id: format!("{run_id}{tag}"),
    };
    let first = send::run(options(messages / 2, "a")).await?;
    let edge1 = edges.remove(0);
    let stats = hub.stats().await?;
    println!(
        "crashing edge1 now: the hub holds {} shadow copies",
        stats.shadow_copies.values().sum::<usize>()
    );
    edge1.abort();
    let second = send::run(options(messages - messages / 2, "b")).await?;
    let acknowledged: Vec<String> = first
        .accepted_ids
        .into_iter()
        .chain(second.accepted_ids)
        .collect();

    // Wait for every acknowledged message to arrive: edge 1's share comes back only when the
    // hub gives up on it (resubmit_after of failed heartbeats) and resubmits through edge 2.
    println!(
        "sent {} messages; waiting for the hub to take edge1's copies back (resubmit after 3s)",
        acknowledged.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts;
    let mut last_print = Instant::now();
    loop {
        counts = count_delivered(&maildir_dir.0)?;
        let missing = acknowledged
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .count();
        let stats = hub.stats().await?;
        let copies: usize = stats.shadow_copies.values().sum();
        if last_print.elapsed() >= Duration::from_secs(1) {
            println!(
                "  {:>4.1}s: {} delivered, {missing} not yet, hub holds {copies} shadow copies {:?}",
                started.elapsed().as_secs_f64(),
                acknowledged.len() - missing,
                stats.shadow_copies
            );
            last_print = Instant::now();
        }
        if (missing == 0 && copies == 0) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = acknowledged
        .iter()
        .filter(|id| counts.contains_key(*id))
        .count() as u64;
    let duplicates = acknowledged
        .iter()
        .filter_map(|id| counts.get(id))
        .map(|n| n.saturating_sub(1))
        .sum();
    let report = DemoReport {
        submitted: first.submitted + second.submitted,
        acknowledged: acknowledged.len() as u64,
        delivered,
        duplicates,
        lost: acknowledged.len() as u64 - delivered,
        seconds: started.elapsed().as_secs_f64(),
    };
    hub.stop();
    hub.wait().await?;
    for edge in edges {
        edge.stop();
        edge.wait().await?;
    }
    sink_task.abort();
    Ok(report)
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| submitted | acknowledged | delivered | duplicates | lost | seconds |"
        )?;
        writeln!(
            f,
            "|-----------|--------------|-----------|------------|------|---------|"
        )?;
        write!(
            f,
            "| {:>9} | {:>12} | {:>9} | {:>10} | {:>4} | {:>7.1} |",
            self.submitted,
            self.acknowledged,
            self.delivered,
            self.duplicates,
            self.lost,
            self.seconds
        )
    }
}
