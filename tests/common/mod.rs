//! Shared helpers of the integration tests: real processes (the `xshadow` binary, Postfix's
//! `smtp-sink`, an `aiosmtpd` peer) on free loopback ports, each killed and reaped when its
//! guard drops (also when the test fails), a small std::net SMTP client, and readers for the
//! Maildir, dump directories and `xshadow queue`.
//!
//! The `xshadow` processes run on the runtime binding a test names ([`Runtime`]); the
//! [`on_every_runtime!`] macro makes one `#[test]` per binding out of one scenario function, so
//! a failure names the runtime. Declare the module with `#[macro_use] mod common;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `xshadow` binary under test.
pub const XSHADOW: &str = env!("CARGO_BIN_EXE_xshadow");

/// The Python scripts of the tests.
pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("peers")
        .join(name)
}

/// The venv with aiosmtpd that `scripts/test-deps.sh` makes.
pub fn peers_python() -> PathBuf {
    let venv = std::env::var_os("XSHADOW_PEERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers-venv"));
    venv.join("bin").join("python")
}

pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
pub const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

/// Whether the real peers are installed; if not, fails with what to run, unless
/// `XSHADOW_SKIP_PEERS=1` asks to skip (then returns false and the test returns early).
pub fn require_peers() -> bool {
    let mut missing = Vec::new();
    for tool in [SMTP_SINK, SMTP_SOURCE] {
        if !Path::new(tool).exists() {
            missing.push(tool.to_owned());
        }
    }
    if Command::new("swaks")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        missing.push("swaks".into());
    }
    let aiosmtpd = Command::new(peers_python())
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !aiosmtpd {
        missing.push(format!("aiosmtpd in {}", peers_python().display()));
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("XSHADOW_SKIP_PEERS").as_deref() == Ok("1") {
        eprintln!("skipped: missing {missing:?} (XSHADOW_SKIP_PEERS=1)");
        return false;
    }
    panic!(
        "missing real peers {missing:?}: run `bash scripts/test-deps.sh` (as root, on Debian), \
         or set XSHADOW_SKIP_PEERS=1 to skip these tests"
    );
}

/// A scratch directory under cargo's target tmp dir, removed on drop unless the test failed
/// (then its path is printed, with the logs of the processes).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        fs::create_dir_all(&path).expect("create the scratch directory");
        Self { path }
    }

    /// A scratch directory in memory (/dev/shm) where there is one: for many small files
    /// that were fsynced, which this machine's disk (mounted with `discard`) deletes slowly.
    pub fn new_in_memory(tag: &str) -> Self {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return Self::new(tag);
        }
        let path = shm.join(format!(
            "xshadow-test-{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        fs::create_dir_all(&path).expect("create the scratch directory");
        Self { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("XSHADOW_KEEP_SCRATCH").is_some() {
            eprintln!("scratch directory kept: {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    pub pid: u32,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`. The process gets SIGKILL if
    /// the test thread that started it goes away without dropping the guard (the test binary
    /// killed): `prctl(PR_SET_PDEATHSIG)` through a python3 `exec` shim, which keeps the pid.
    pub fn spawn(name: &str, cmd: Command, log: &Path) -> io::Result<Self> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut cmd = with_parent_death_signal(cmd);
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1");
        let child = cmd.spawn()?;
        let pid = child.id();
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            pid,
        })
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, `KILL`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Waits up to `limit` for it to exit by itself; `None` if it did not.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
    }
}

const PDEATHSIG_SHIM: &str = "import ctypes, os, sys\n\
ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)\n\
if os.getppid() != int(sys.argv[1]): os._exit(1)\n\
os.execvp(sys.argv[2], sys.argv[2:])\n";

/// `cmd`, run through the PR_SET_PDEATHSIG shim.
fn with_parent_death_signal(cmd: Command) -> Command {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    // The interpreter itself, not a pyenv shim script that starts slowly.
    let python = PYTHON.get_or_init(|| {
        Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "python3".to_owned())
    });
    let mut shim = Command::new(python);
    shim.arg("-c")
        .arg(PDEATHSIG_SHIM)
        .arg(std::process::id().to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => shim.env(k, v),
            None => shim.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        shim.current_dir(dir);
    }
    shim
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `addr` accepts a connection while `proc` still runs, and `ready` (if any)
/// appears in its log. Errors if it exits first or `limit` passes.
pub fn wait_ready(
    proc: &mut Proc,
    addr: SocketAddr,
    ready: Option<&str>,
    limit: Duration,
) -> io::Result<()> {
    let end = Instant::now() + limit;
    loop {
        if !proc.running() {
            return Err(io::Error::other(format!(
                "{} exited before listening on {addr}:\n{}",
                proc.name,
                proc.log_tail(20)
            )));
        }
        let logged = ready.is_none_or(|r| proc.log_text().contains(r));
        if logged && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // A process that failed to bind exits at once: look once more.
            std::thread::sleep(Duration::from_millis(30));
            if proc.running() {
                return Ok(());
            }
            continue;
        }
        if Instant::now() >= end {
            return Err(io::Error::other(format!(
                "{} did not listen on {addr} within {limit:?}:\n{}",
                proc.name,
                proc.log_tail(20)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a server on a free port (tries a few ports if one is taken meanwhile).
pub fn start_server(
    name: &str,
    log: &Path,
    ready: Option<&str>,
    make: impl Fn(u16) -> Command,
) -> (Proc, SocketAddr) {
    let mut last = None;
    for _ in 0..5 {
        let port = free_port();
        let mut proc = Proc::spawn(name, make(port), log).expect("spawn");
        match wait_ready(&mut proc, loopback(port), ready, Duration::from_secs(30)) {
            Ok(()) => return (proc, loopback(port)),
            Err(err) => last = Some(err),
        }
    }
    panic!("could not start {name}: {last:?}");
}

/// Restarts a server on a known port (after a crash), retrying while the port is busy.
pub fn restart_server(
    name: &str,
    log: &Path,
    addr: SocketAddr,
    ready: Option<&str>,
    cmd: impl Fn() -> Command,
) -> Proc {
    let mut last = None;
    for _ in 0..50 {
        let mut proc = Proc::spawn(name, cmd(), log).expect("spawn");
        match wait_ready(&mut proc, addr, ready, Duration::from_secs(30)) {
            Ok(()) => return proc,
            Err(err) => {
                last = Some(err);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    panic!("could not restart {name} on {addr}: {last:?}");
}

/// A runtime binding of the `xshadow` command: what `--runtime` selects for `edge`, `hub` and
/// `sink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtime {
    #[default]
    Tokio,
    Mio,
    AsyncStd,
}

impl Runtime {
    /// The value of `--runtime`.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Tokio => "tokio",
            Self::Mio => "mio",
            Self::AsyncStd => "async-std",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.arg())
    }
}

/// Three tests that run the scenario function `$scenario(Runtime)` on tokio, mio and
/// async-std, under the three names given (`…_on_tokio`, `…_on_mio`, `…_on_async_std`).
/// Attributes before the scenario (`#[ignore = "…"]`) go on all three. The mio and async-std
/// tests exist when the package is built with that binding (`--all-features` builds all).
#[allow(unused_macros)]
macro_rules! on_every_runtime {
    ($(#[$attr:meta])* $scenario:ident => $tokio:ident, $mio:ident, $async_std:ident $(,)?) => {
        $(#[$attr])*
        #[test]
        fn $tokio() {
            $scenario(common::Runtime::Tokio)
        }

        $(#[$attr])*
        #[cfg(feature = "mio")]
        #[test]
        fn $mio() {
            $scenario(common::Runtime::Mio)
        }

        $(#[$attr])*
        #[cfg(feature = "async-std")]
        #[test]
        fn $async_std() {
            $scenario(common::Runtime::AsyncStd)
        }
    };
}

/// Command lines of the `xshadow` nodes.
pub struct NodeOpts {
    pub heartbeat: &'static str,
    pub max_ack_delay: &'static str,
    pub resubmit_after: &'static str,
    /// First retry delay and longest one (`--retry-first`, `--retry-max`).
    pub retry: (&'static str, &'static str),
    pub runtime: Runtime,
}

impl Default for NodeOpts {
    fn default() -> Self {
        Self {
            heartbeat: "300ms",
            max_ack_delay: "0s",
            resubmit_after: "3h",
            // A message whose session broke twice waits for its retry: seconds, not minutes,
            // so the crash runs drain while the test waits.
            retry: ("1s", "4s"),
            runtime: Runtime::Tokio,
        }
    }
}

impl NodeOpts {
    /// The defaults on `runtime`.
    pub fn on(runtime: Runtime) -> Self {
        Self {
            runtime,
            ..Self::default()
        }
    }
}

fn node_common(cmd: &mut Command, name: &str, port: u16, spool: &Path, o: &NodeOpts) {
    cmd.args(["--name", name])
        .args(["--listen", &loopback(port).to_string()])
        .arg("--spool")
        .arg(spool)
        .args(["--heartbeat", o.heartbeat])
        .args(["--max-ack-delay", o.max_ack_delay])
        .args(["--resubmit-after", o.resubmit_after])
        .args(["--retry-first", o.retry.0, "--retry-max", o.retry.1])
        .args(["--runtime", o.runtime.arg()]);
}

/// `xshadow edge` relaying to `relay`, accepting XSHADOW from loopback.
pub fn edge_cmd(name: &str, port: u16, spool: &Path, relay: SocketAddr, o: &NodeOpts) -> Command {
    let mut cmd = Command::new(XSHADOW);
    cmd.arg("edge");
    node_common(&mut cmd, name, port, spool, o);
    cmd.args(["--relay", &relay.to_string()])
        .args(["--shadow-peers", "127.0.0.0/8"]);
    cmd
}

/// `xshadow hub` relaying through `edges`.
pub fn hub_cmd(name: &str, port: u16, spool: &Path, edges: &[SocketAddr], o: &NodeOpts) -> Command {
    let mut cmd = Command::new(XSHADOW);
    cmd.arg("hub");
    node_common(&mut cmd, name, port, spool, o);
    for e in edges {
        cmd.args(["--edge", &e.to_string()]);
    }
    cmd
}

pub const NODE_READY: &str = "listening";

/// Panics unless `proc`'s log shows a node or sink that started on `runtime`: the line the
/// command logs once it listens names the runtime (`runtime=mio`); tokio's sink line names
/// none, so for tokio it is enough that no other runtime is named.
pub fn assert_runs_on(proc: &Proc, runtime: Runtime) {
    let log = proc.log_text();
    let listening = log
        .lines()
        .find(|l| l.contains("listening"))
        .unwrap_or_else(|| panic!("{} logged no \"listening\" line:\n{log}", proc.name));
    let named = [Runtime::Tokio, Runtime::Mio, Runtime::AsyncStd]
        .into_iter()
        .filter(|r| listening.contains(&format!("runtime={}", r.arg())))
        .collect::<Vec<_>>();
    let ok = match runtime {
        Runtime::Tokio => named.is_empty() || named == [Runtime::Tokio],
        other => named == [other],
    };
    assert!(
        ok,
        "{} should run on {runtime}, its log says: {listening}",
        proc.name
    );
}

/// `xshadow sink --runtime RUNTIME` into `maildir`.
pub fn start_xshadow_sink(
    scratch: &Scratch,
    maildir: &Path,
    runtime: Runtime,
) -> (Proc, SocketAddr) {
    let (proc, addr) = start_server(
        "xshadow sink",
        &scratch.join("sink.log"),
        Some("sink listening"),
        |port| {
            let mut cmd = Command::new(XSHADOW);
            cmd.arg("sink")
                .args(["--listen", &loopback(port).to_string()])
                .arg("--maildir")
                .arg(maildir)
                .args(["--runtime", runtime.arg()]);
            cmd
        },
    );
    assert_runs_on(&proc, runtime);
    (proc, addr)
}

/// Starts `xshadow edge` or `xshadow hub` (`make(port)`, from [`edge_cmd`] or [`hub_cmd`]) on
/// a free port, waits until it listens and checks that it runs on `runtime`.
pub fn start_node(
    name: &str,
    log: &Path,
    runtime: Runtime,
    make: impl Fn(u16) -> Command,
) -> (Proc, SocketAddr) {
    let (proc, addr) = start_server(name, log, Some(NODE_READY), make);
    assert_runs_on(&proc, runtime);
    (proc, addr)
}

/// Postfix's `smtp-sink`, dumping every transaction into `dir` (world-writable: it runs as
/// nobody).
pub fn start_smtp_sink(scratch: &Scratch, dir: &Path) -> (Proc, SocketAddr) {
    fs::create_dir_all(dir).expect("dump dir");
    make_world_writable(dir);
    let template = format!("{}/%M.", dir.display());
    start_server("smtp-sink", &scratch.join("smtp-sink.log"), None, |port| {
        let mut cmd = Command::new(SMTP_SINK);
        cmd.args(["-u", "nobody", "-d", &template])
            .arg(loopback(port).to_string())
            .arg("100");
        cmd
    })
}

/// The aiosmtpd peer (tests/peers/aiosmtpd_sink.py) storing into `dir/new`.
pub fn start_aiosmtpd(scratch: &Scratch, dir: &Path) -> (Proc, SocketAddr) {
    start_server(
        "aiosmtpd",
        &scratch.join("aiosmtpd.log"),
        Some("READY"),
        |port| {
            let mut cmd = Command::new(peers_python());
            cmd.arg("-u")
                .arg(peer_script("aiosmtpd_sink.py"))
                .args(["--listen", &loopback(port).to_string()])
                .arg("--dir")
                .arg(dir);
            cmd
        },
    )
}

pub fn make_world_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).expect("chmod 777");
}

// ---- reading what arrived --------------------------------------------------------------

/// Every regular file directly in `dir` (sorted by name), with its bytes.
pub fn read_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file()
            && let Ok(bytes) = fs::read(&p)
        {
            out.push((p, bytes));
        }
    }
    out.sort();
    out
}

/// The bytes from the first occurrence of `marker` to the end.
pub fn from_marker<'a>(file: &'a [u8], marker: &[u8]) -> Option<&'a [u8]> {
    find(file, marker).map(|at| &file[at..])
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    // std's substring search is optimised even in test builds.
    if let (Ok(h), Ok(n)) = (std::str::from_utf8(hay), std::str::from_utf8(needle)) {
        return h.find(n);
    }
    let first = needle[0];
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if hay.len() - at < needle.len() {
            return None;
        }
        if &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The part of `file` before `marker`: the trace headers the relays prepended.
pub fn before_marker<'a>(file: &'a [u8], marker: &[u8]) -> &'a [u8] {
    match find(file, marker) {
        Some(at) => &file[..at],
        None => file,
    }
}

/// A short, printable description of where two byte strings first differ.
pub fn describe_difference(expected: &[u8], got: &[u8]) -> String {
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    let show = |b: &[u8]| {
        let from = at.saturating_sub(40);
        let to = (at + 40).min(b.len());
        format!("{:?}", String::from_utf8_lossy(&b[from.min(b.len())..to]))
    };
    format!(
        "expected {} bytes, got {}; first difference at byte {at}: expected …{}…, got …{}…",
        expected.len(),
        got.len(),
        show(expected),
        show(got)
    )
}

/// What `xshadow queue --spool DIR` prints, parsed.
#[derive(Debug, Clone, Default)]
pub struct QueueView {
    pub queued: u64,
    pub copies: u64,
    pub copies_by_primary: HashMap<String, u64>,
    pub discard_events: u64,
    pub database_id: String,
    pub text: String,
}

pub fn queue(spool: &Path) -> QueueView {
    let out = Command::new(XSHADOW)
        .arg("queue")
        .arg("--spool")
        .arg(spool)
        .env("NO_COLOR", "1")
        .output()
        .expect("run xshadow queue");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "xshadow queue --spool {} failed: {}{}",
        spool.display(),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v = QueueView {
        text: text.clone(),
        ..QueueView::default()
    };
    let mut section = "";
    for line in text.lines() {
        let num = |l: &str| {
            l.rsplit(':')
                .next()
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        if let Some(id) = line.strip_prefix("database id: ") {
            v.database_id = id.trim().to_owned();
        } else if line.starts_with("queued") {
            v.queued = num(line);
        } else if line.starts_with("shadow copies:") {
            v.copies = num(line);
            section = "copies";
        } else if line.starts_with("discard events:") {
            v.discard_events = num(line);
            section = "events";
        } else if let Some(rest) = line.strip_prefix("  ")
            && section == "copies"
        {
            // "  PRIMARY: N (oldest AGE)"
            if let Some((primary, tail)) = rest.rsplit_once(": ") {
                let n = tail
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                v.copies_by_primary.insert(primary.to_owned(), n);
            }
        }
    }
    v
}

/// Polls `check` every `every` until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

// ---- a small SMTP client ---------------------------------------------------------------

/// One SMTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// A blocking SMTP client over std::net.
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub ehlo: Vec<String>,
}

impl Smtp {
    /// Connects, reads the greeting and says EHLO.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let mut s = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            ehlo: Vec::new(),
        };
        let greeting = s.reply()?;
        if greeting.code != 220 {
            return Err(io::Error::other(format!("greeting {greeting:?}")));
        }
        let ehlo = s.command("EHLO client.test")?;
        if ehlo.code != 250 {
            return Err(io::Error::other(format!("EHLO {ehlo:?}")));
        }
        s.ehlo = ehlo.lines;
        Ok(s)
    }

    pub fn reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            let more = text.as_bytes().get(3) == Some(&b'-');
            lines.push(text);
            if !more {
                break;
            }
        }
        let code = lines[0]
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad reply {lines:?}")))?;
        Ok(Reply { code, lines })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// MAIL, RCPT, DATA and the stuffed content; the reply that decided the transaction
    /// (after a refused MAIL or RCPT the transaction is reset).
    pub fn send_message(&mut self, from: &str, to: &str, content: &[u8]) -> io::Result<Reply> {
        let mail = self.command(&format!("MAIL FROM:<{from}>"))?;
        if mail.code != 250 {
            return Ok(mail);
        }
        let rcpt = self.command(&format!("RCPT TO:<{to}>"))?;
        if rcpt.code != 250 {
            self.command("RSET")?;
            return Ok(rcpt);
        }
        let data = self.command("DATA")?;
        if data.code != 354 {
            return Ok(data);
        }
        self.writer.write_all(&stuff(content))?;
        self.reply()
    }

    pub fn quit(mut self) {
        let _ = self.command("QUIT");
    }
}

/// RFC 5321 §4.5.2 transparency: a dot at a line start (message start or after CRLF) is
/// doubled; the content is ended with CRLF if needed and the terminator.
pub fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    let mut line_start = true;
    let mut prev = 0u8;
    for &b in content {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = prev == b'\r' && b == b'\n';
        prev = b;
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Reads a whole file, for tests that compare.
pub fn read(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    v
}

/// Clients of a server that runs with few file descriptors (`ulimit -n 64`).
pub struct Crowd {
    /// Greeted at once.
    pub served: Vec<TcpStream>,
    /// Left in the listen queue: no greeting yet.
    pub waiting: Vec<TcpStream>,
}

/// True when `stream` reads a `220` greeting within 200 ms.
pub fn greeted(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(n) if n >= 4 && buf.starts_with(b"220 "))
}

impl Crowd {
    /// Connects 100 clients, far more than 64 descriptors' worth, and sorts them; panics
    /// unless some are served and some wait.
    pub fn connect(addr: SocketAddr, server: &str) -> Self {
        let (mut served, mut waiting) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let mut c = TcpStream::connect(addr).expect("the kernel queues the connection");
            if greeted(&mut c) {
                served.push(c);
            } else {
                waiting.push(c);
            }
        }
        assert!(!served.is_empty(), "the {server} serves some at all");
        assert!(
            !waiting.is_empty(),
            "with 64 descriptors some clients must wait (served {})",
            served.len()
        );
        Self { served, waiting }
    }

    /// The served clients hang up; panics unless every waiting one is greeted within
    /// `patience`.
    pub fn free_some_and_greet_the_rest(self, patience: Duration) {
        drop(self.served);
        let deadline = Instant::now() + patience;
        let mut left = self.waiting;
        while !left.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} waiting clients never greeted after others hung up",
                left.len()
            );
            left.retain_mut(|c| !greeted(c));
        }
    }
}
