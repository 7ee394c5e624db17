//! Bad input to the `xshadow` command: unknown flags, bad addresses, durations, routes or
//! configurations, an unwritable spool or Maildir, a port in use. Each is one line on stderr
//! naming the problem and exit code 2, never a panic, and nothing keeps running.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::Duration;

const XSHADOW: &str = env!("CARGO_BIN_EXE_xshadow");

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(XSHADOW)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("xshadow starts");
    // A bad input must end the process by itself; give it a while, then stop it.
    for _ in 0..200 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "xshadow {args:?} kept running on bad input; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Exit code 2 and exactly one line on stderr that contains `expect`.
fn refused(args: &[&str], expect: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr:?}");
    assert!(lines[0].starts_with("xshadow: "), "{args:?}: {stderr:?}");
    assert!(
        lines[0].contains(expect),
        "{args:?}: {expect:?} not in {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xshadow-bad-input-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn edge(spool: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "edge",
        "--name",
        "edge.test",
        "--listen",
        "127.0.0.1:0",
        "--spool",
        spool,
        "--relay",
        "127.0.0.1:9",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn refused_edge(spool: &str, extra: &[&str], expect: &str) {
    let args = edge(spool, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, expect);
}

#[test]
fn usage_errors_are_one_line_and_exit_code_2() {
    let dir = scratch("usage");
    let spool = dir.join("spool");
    let spool = spool.to_str().unwrap();
    refused_edge(spool, &["--bogus"], "--bogus");
    refused(&["frobnicate"], "frobnicate");
    refused(&["edge", "--name", "e"], "--listen <LISTEN>");
    refused(
        &[
            "edge", "--name", "e", "--listen", "nowhere", "--spool", spool, "--relay", "x:1",
        ],
        "nowhere",
    );
    refused_edge(spool, &["--heartbeat", "5 parsecs"], "--heartbeat");
    refused_edge(spool, &["--route", "a.test"], "not DOMAINS=HOPS");
    refused_edge(spool, &["--shadow-peers", "10.0.0.0/99"], "bad prefix");
    refused(
        &["send", "--server", "127.0.0.1:25", "--count", "many"],
        "--count",
    );
    assert!(!std::path::Path::new(spool).exists(), "nothing was created");
}

#[test]
fn a_configuration_the_node_cannot_run_with_is_refused() {
    let dir = scratch("config");
    let spool = dir.join("spool");
    let spool = spool.to_str().unwrap();
    refused_edge(spool, &["--heartbeat", "0s"], "shadow.heartbeat_interval");
    refused_edge(
        spool,
        &["--max-message-size", "0"],
        "server.max_message_size",
    );
    let args = [
        "edge",
        "--name",
        "two words",
        "--listen",
        "127.0.0.1:0",
        "--spool",
        spool,
        "--relay",
        "127.0.0.1:9",
    ];
    refused(&args, "name");
}

#[test]
fn an_unwritable_spool_or_maildir_and_a_port_in_use_are_one_line_and_exit_code_2() {
    let dir = scratch("io");
    // A path below a regular file cannot be created, whoever runs the test.
    let file = dir.join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let below = file.join("spool");
    refused_edge(below.to_str().unwrap(), &[], "spool");
    let maildir = file.join("maildir");
    refused(
        &[
            "sink",
            "--listen",
            "127.0.0.1:0",
            "--maildir",
            maildir.to_str().unwrap(),
        ],
        "maildir",
    );
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let spool = dir.join("spool");
    let args = [
        "edge",
        "--name",
        "edge.test",
        "--listen",
        &addr,
        "--spool",
        spool.to_str().unwrap(),
        "--relay",
        "127.0.0.1:9",
    ];
    refused(&args, &addr);
    let maildir = dir.join("maildir");
    refused(
        &[
            "sink",
            "--listen",
            &addr,
            "--maildir",
            maildir.to_str().unwrap(),
        ],
        &addr,
    );
}
