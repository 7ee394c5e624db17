//! The `xshadow` command: run a hub, an edge or a sink, generate load, inspect a spool, or run
//! the demo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use xshadow::runtime::{AnyNode, NodeSettings, Runtime};
use xshadow::{demo, send, sink};
use xshadow_core::node::{IpNet, NodeConfig, Route};

#[derive(Parser)]
#[command(
    name = "xshadow",
    version,
    about = "SMTP relay with Exchange shadow redundancy (XSHADOW / XQDISCARD)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge: the primary for its senders, relaying to its next hop.
    Edge {
        #[command(flatten)]
        node: NodeArgs,
        /// Next hop (smart host or final destination), host:port; repeat for failover. Needed
        /// unless every recipient domain has a `--route`.
        #[arg(long = "relay", required_unless_present = "routes")]
        relays: Vec<String>,
    },
    /// Run a hub: relays through its edges and keeps shadow copies until they report.
    Hub {
        #[command(flatten)]
        node: NodeArgs,
        /// An edge, host:port; repeat for more. Needed unless every recipient domain has a
        /// `--route`.
        #[arg(long = "edge", required_unless_present = "routes")]
        edges: Vec<String>,
    },
    /// Run a final destination that writes every message to a Maildir.
    Sink {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// The Maildir.
        #[arg(long)]
        maildir: PathBuf,
        /// Which runtime serves the connections.
        #[arg(long, value_enum, default_value_t)]
        runtime: Runtime,
    },
    /// Send test messages and report the rate.
    Send {
        /// The SMTP server, host:port.
        #[arg(long)]
        server: SocketAddr,
        /// How many messages.
        #[arg(long)]
        count: u64,
        /// Message size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Parallel connections.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Envelope sender.
        #[arg(long, default_value = "sender@example.org", value_parser = send::parse_mailbox)]
        from: xshadow_core::wire::Mailbox<'static>,
        /// Envelope recipient.
        #[arg(long, default_value = "recipient@example.net", value_parser = send::parse_mailbox)]
        to: xshadow_core::wire::Mailbox<'static>,
    },
    /// Print what a spool holds (works while its node runs).
    Queue {
        /// The spool directory.
        #[arg(long)]
        spool: PathBuf,
    },
    /// Run a sink, two edges and a hub in one process, crash an edge, show nothing is lost.
    Demo {
        /// How many messages to send.
        #[arg(long, default_value_t = 1000)]
        messages: u64,
        /// Which runtime the nodes run on.
        #[arg(long, value_enum, default_value_t)]
        runtime: Runtime,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// This node's name (greeting, EHLO, Received headers, shadow context).
    #[arg(long)]
    name: String,
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Spool directory (created if missing).
    #[arg(long)]
    spool: PathBuf,
    /// Peers that may use XSHADOW with this node (and relay), CIDR list.
    #[arg(long, value_delimiter = ',', value_parser = parse_net)]
    shadow_peers: Vec<IpNet>,
    /// Peers that may relay, CIDR list (default: loopback).
    #[arg(long, value_delimiter = ',', value_parser = parse_net, default_values = ["127.0.0.0/8", "::1/128"])]
    relay_clients: Vec<IpNet>,
    /// Heartbeat interval.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// How long a primary may be unreachable before its copies are resubmitted.
    #[arg(long, default_value = "3h", value_parser = humantime::parse_duration)]
    resubmit_after: Duration,
    /// Lifetime of a shadow copy and of an unfetched discard event.
    #[arg(long, default_value = "2d", value_parser = humantime::parse_duration)]
    auto_discard: Duration,
    /// Delayed acknowledgement for senders without XSHADOW (0s = off).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_ack_delay: Duration,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 36_700_160)]
    max_message_size: u64,
    /// Next hops for some recipient domains, checked in order before the default ones:
    /// `DOMAIN[,DOMAIN...]=HOST:PORT[,HOST:PORT...]`; `*.example.com` matches its subdomains,
    /// `*` any domain. Repeat for more routes.
    #[arg(long = "route", value_name = "DOMAINS=HOPS", value_parser = parse_route)]
    routes: Vec<Route>,
    /// First retry delay of an undelivered message (doubles per attempt).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    retry_first: Duration,
    /// Longest delay between retries of an undelivered message.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    retry_max: Duration,
    /// Age after which an undelivered message bounces.
    #[arg(long, default_value = "2d", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    /// How long an idle outbound session stays open for more messages (0s: end at once).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    session_linger: Duration,
    /// Which runtime the node runs on.
    #[arg(long, value_enum, default_value_t)]
    runtime: Runtime,
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse()
}

fn parse_route(s: &str) -> Result<Route, String> {
    s.parse()
}

impl NodeArgs {
    fn config(&self) -> NodeConfig {
        let mut c = NodeConfig::new(self.name.clone());
        c.shadow_peers = self.shadow_peers.clone();
        c.relay_clients = self.relay_clients.clone();
        c.shadow.heartbeat_interval = self.heartbeat;
        c.shadow.resubmit_after = self.resubmit_after;
        c.shadow.auto_discard = self.auto_discard;
        c.max_ack_delay = self.max_ack_delay;
        c.server.max_message_size = self.max_message_size;
        c.routes = self.routes.clone();
        c.retry.first = self.retry_first;
        c.retry.max = self.retry_max.max(self.retry_first);
        c.retry.lifetime = self.lifetime;
        c.session_linger = self.session_linger;
        c
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version go to stdout with exit code 0, as usual.
        Err(err) if !err.use_stderr() => err.exit(),
        // A usage error is one line and exit code 2, like every other bad input.
        Err(err) => {
            // Clap's message runs until the blank line before its usage text.
            let text = err.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            return fail(message.strip_prefix("error: ").unwrap_or(&message));
        }
    };
    // The demo prints its own story; nodes log every message state change.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "error"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(&format!("cannot start the runtime: {err}")),
    };
    runtime.block_on(run(cli.command))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("xshadow: {message}");
    ExitCode::from(2)
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Edge { node, relays } => {
            let mut config = node.config();
            config.next_hops = relays;
            config.offer_shadow = true;
            run_node(config, &node).await
        }
        Command::Hub { node, edges } => {
            let mut config = node.config();
            config.next_hops = edges;
            config.shadow_next_hops = true;
            run_node(config, &node).await
        }
        Command::Sink {
            listen,
            maildir,
            runtime,
        } => {
            tokio::select! {
                result = sink::run(listen, &maildir, runtime) => match result {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => fail(&format!("sink on {listen} with {}: {err}", maildir.display())),
                },
                () = shutdown_signal() => ExitCode::SUCCESS,
            }
        }
        Command::Send {
            server,
            count,
            size,
            concurrency,
            from,
            to,
        } => {
            let options = send::SendOptions {
                server,
                count,
                size,
                concurrency,
                from,
                to,
                per_session: 100,
                progress: true,
                run_id: format!("{:x}", fastrand::u64(..)),
            };
            match send::run(options).await {
                Ok(r) => {
                    let secs = r.elapsed.as_secs_f64();
                    println!(
                        "messages {}  accepted {}  failed {}  seconds {secs:.2}  msg/s {:.0}",
                        r.submitted,
                        r.accepted,
                        r.failed,
                        r.accepted as f64 / secs.max(1e-9)
                    );
                    if r.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(err) => fail(&format!("send to {server}: {err}")),
            }
        }
        Command::Queue { spool } => match print_queue(&spool) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&format!("cannot read the spool {}: {err}", spool.display())),
        },
        Command::Demo { messages, runtime } => match demo::run(messages, runtime).await {
            Ok(report) => {
                println!("{report}");
                if report.lost == 0 {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("xshadow: {} acknowledged messages were lost", report.lost);
                    ExitCode::from(1)
                }
            }
            Err(err) => fail(&format!("demo: {err}")),
        },
    }
}

async fn run_node(config: NodeConfig, args: &NodeArgs) -> ExitCode {
    if let Err(err) = config.validate() {
        return fail(&format!("{}: bad configuration: {err}", args.name));
    }
    let settings = NodeSettings::new(config, args.listen, args.spool.clone());
    let node = match AnyNode::start(args.runtime, settings).await {
        Ok(node) => node,
        Err(err) => {
            return fail(&format!(
                "cannot start {} on {} with spool {}: {err}",
                args.name,
                args.listen,
                args.spool.display()
            ));
        }
    };
    tracing::info!(
        name = args.name,
        addr = %node.local_addr(),
        database_id = node.database_id(),
        runtime = %args.runtime,
        "listening"
    );
    let stop = node.stopper();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop();
    });
    match node.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&format!("{}: {err}", args.name)),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_queue(dir: &Path) -> std::io::Result<()> {
    let (state, _) = xshadow_spool::open_read_only(dir).map_err(std::io::Error::other)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let age = |at_ms: u64| {
        humantime::format_duration(Duration::from_secs(now_ms.saturating_sub(at_ms) / 1000))
    };
    println!(
        "database id: {}",
        state.database_id.as_deref().unwrap_or("(none yet)")
    );
    let queued = state
        .messages
        .values()
        .filter(|m| m.shadow.is_none())
        .count();
    println!("queued (waiting or in flight): {queued}");
    let mut copies: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for m in state.messages.values() {
        if let Some(copy) = &m.shadow {
            copies.entry(&*copy.primary).or_default().push(copy.at_ms);
        }
    }
    println!(
        "shadow copies: {}",
        copies.values().map(Vec::len).sum::<usize>()
    );
    for (primary, ats) in &copies {
        let oldest = ats.iter().min().copied().unwrap_or(now_ms);
        println!("  {primary}: {} (oldest {})", ats.len(), age(oldest));
    }
    let mut events: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for e in &state.discard_events {
        let entry = events
            .entry(e.context.to_ascii_lowercase())
            .or_insert((0, e.at_ms));
        entry.0 += 1;
        entry.1 = entry.1.min(e.at_ms);
    }
    println!("discard events: {}", state.discard_events.len());
    for (context, (n, oldest)) in &events {
        println!("  {context}: {n} (oldest {})", age(*oldest));
    }
    Ok(())
}
