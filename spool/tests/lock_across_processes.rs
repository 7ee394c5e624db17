//! A spool's lock holds against another process, and is free once the holder drops it.
//!
//! In a test binary of its own: while the child process is being started it holds copies of
//! the parent's descriptors (until its exec closes them), so a test in the same binary that
//! drops a spool and opens the directory again could find the lock still held.

mod common;

use common::TempDir;
use xshadow_spool::{Spool, SpoolError, SpoolOptions};

/// Set in the child process of the test below: the directory it tries to open.
const CHILD_DIR: &str = "XSHADOW_SPOOL_TEST_CHILD_DIR";

#[test]
fn another_process_cannot_open_a_locked_directory() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        // The child: report the open's outcome through the exit code and stderr.
        match Spool::open(&dir, SpoolOptions::default()) {
            Err(error @ SpoolError::Locked { .. }) => {
                eprintln!("child: {error}");
                std::process::exit(3);
            }
            Err(error) => panic!("child: {error}"),
            Ok(_) => std::process::exit(4),
        }
    }
    let dir = TempDir::new("other-process");
    let child = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "another_process_cannot_open_a_locked_directory",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .output()
            .unwrap()
    };
    let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let output = child();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("by process {}", std::process::id())),
        "{stderr}"
    );
    drop(spool);
    assert_eq!(
        child().status.code(),
        Some(4),
        "unlocked once the holder is gone"
    );
}
