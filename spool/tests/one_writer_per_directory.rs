//! The lock file lets one spool write a directory; read-only opens need no lock.

mod common;

use common::{TempDir, accepted, replay};
use xshadow_spool::{LOCK_FILE, Spool, SpoolError, SpoolOptions, open_read_only};

#[test]
fn a_second_open_of_a_locked_directory_fails_with_an_error_naming_it() {
    let dir = TempDir::new("locked");
    let (_spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let error = Spool::open(dir.path(), SpoolOptions::default()).unwrap_err();
    let SpoolError::Locked {
        dir: locked,
        holder,
    } = &error
    else {
        panic!("not a lock error: {error}");
    };
    assert_eq!(locked, dir.path());
    assert_eq!(*holder, Some(std::process::id()));
    let message = error.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("already in use"), "{message}");
    assert!(dir.path().join(LOCK_FILE).exists());
}

#[test]
fn the_directory_opens_again_once_the_spool_is_dropped() {
    let dir = TempDir::new("relock");
    let (mut spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    spool.append(&[accepted(1, 3)]).unwrap();
    drop(spool);
    let (_spool, state) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    assert_eq!(state, replay(&[accepted(1, 3)]));
}

#[test]
fn a_read_only_open_reads_the_state_while_a_writer_holds_the_lock_and_changes_nothing() {
    let dir = TempDir::new("read-only");
    let (mut spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    spool.append(&[accepted(1, 100), accepted(2, 200)]).unwrap();
    spool.sync().unwrap();
    // A record cut short, as if the writer were in the middle of writing it.
    let segment = spool.segments().pop().unwrap();
    let before = std::fs::read(&segment).unwrap();
    let mut partial = Vec::new();
    xshadow_core::store::encode(&accepted(3, 300), &mut partial);
    let mut torn = before.clone();
    torn.extend_from_slice(&partial[..partial.len() / 2]);
    std::fs::write(&segment, &torn).unwrap();

    let (state, recovery) = open_read_only(dir.path()).unwrap();
    assert_eq!(state, replay(&[accepted(1, 100), accepted(2, 200)]));
    assert!(!recovery.is_clean());
    assert_eq!(std::fs::read(&segment).unwrap(), torn, "nothing truncated");
    std::fs::write(&segment, &before).unwrap();
    // The writer still holds the lock.
    assert!(matches!(
        Spool::open(dir.path(), SpoolOptions::default()),
        Err(SpoolError::Locked { .. })
    ));
    drop(spool);
}

#[test]
fn a_read_only_open_of_a_missing_directory_fails_and_creates_nothing() {
    let dir = TempDir::new("missing");
    let error = open_read_only(dir.path()).unwrap_err();
    assert!(matches!(error, SpoolError::Io { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string())
    );
    assert!(!dir.path().exists());
}

#[test]
fn an_empty_directory_reads_as_an_empty_state() {
    let dir = TempDir::new("empty");
    std::fs::create_dir_all(dir.path()).unwrap();
    let (state, recovery) = open_read_only(dir.path()).unwrap();
    assert_eq!(state, Default::default());
    assert!(recovery.is_clean() && recovery.segments.is_empty());
}
