//! The writer thread: one sync for everything queued meanwhile, every token reported once,
//! and only once its records are on disk.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use common::{TempDir, accepted, replay};
use xshadow_core::shadow::MessageId;
use xshadow_spool::{Completion, Completions, Spool, SpoolOptions, open_read_only};

#[test]
fn concurrent_persists_share_syncs_and_every_token_is_reported_once_after_its_records_are_on_disk()
{
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 500;
    let dir = TempDir::new("group-commit");
    let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();

    // Tokens reported in the current group, and every token reported so far.
    let group = Arc::new(Mutex::new(Vec::<u64>::new()));
    let seen = Arc::new(Mutex::new(BTreeSet::<u64>::new()));
    let checked_groups = Arc::new(Mutex::new(0u64));
    let completions = {
        let group = Arc::clone(&group);
        let seen = Arc::clone(&seen);
        Completions::callback(move |completion| {
            let Completion::Persisted(token) = completion else {
                panic!("{completion:?}");
            };
            assert!(
                seen.lock().unwrap().insert(token),
                "token {token} reported twice"
            );
            group.lock().unwrap().push(token);
        })
    }
    .with_wake({
        let group = Arc::clone(&group);
        let dir = dir.path().to_path_buf();
        let checked_groups = Arc::clone(&checked_groups);
        move || {
            // After each group: every token just reported has its record in the files.
            let (state, _) = open_read_only(&dir).unwrap();
            for token in group.lock().unwrap().drain(..) {
                assert!(
                    state.messages.contains_key(&MessageId(token)),
                    "token {token} reported before its record was written"
                );
            }
            *checked_groups.lock().unwrap() += 1;
        }
    });
    let handle = spool.spawn(completions).unwrap();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let handle = &handle;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    let token = thread * PER_THREAD + i + 1;
                    handle.persist(token, vec![accepted(token, 1024)]).unwrap();
                }
            });
        }
    });
    let spool = handle.shutdown().unwrap();
    let stats = spool.stats();
    let total = THREADS * PER_THREAD;
    assert_eq!(*seen.lock().unwrap(), (1..=total).collect::<BTreeSet<_>>());
    assert_eq!(stats.tokens, total);
    assert_eq!(stats.records, total);
    assert_eq!(
        stats.syncs,
        *checked_groups.lock().unwrap(),
        "one sync per group"
    );
    assert!(
        stats.syncs * 4 < total,
        "{} syncs for {total} records",
        stats.syncs
    );
    eprintln!(
        "{total} records, {} syncs: {:.4} syncs per record",
        stats.syncs,
        stats.syncs as f64 / total as f64
    );
    drop(spool);
    let (state, _) = open_read_only(dir.path()).unwrap();
    assert_eq!(state.messages.len() as u64, total);
}

#[test]
fn a_group_takes_everything_queued_while_the_previous_sync_ran() {
    let dir = TempDir::new("whole-backlog");
    let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (report_tx, report_rx) = mpsc::channel();
    let handle = spool
        .spawn(Completions::callback(move |completion| {
            if let Completion::Persisted(0) = completion {
                // Hold the writer after the first group until everything else is queued.
                entered_tx.send(()).unwrap();
                gate_rx.recv().unwrap();
            }
            report_tx.send(completion).unwrap();
        }))
        .unwrap();
    handle.persist(0, vec![accepted(1000, 10)]).unwrap();
    entered_rx.recv().unwrap();
    for token in 1..=1000 {
        handle.persist(token, vec![accepted(token, 10)]).unwrap();
    }
    gate_tx.send(()).unwrap();
    let spool = handle.shutdown().unwrap();
    assert_eq!(spool.stats().syncs, 2, "the whole backlog in one sync");
    let reported: Vec<u64> = report_rx
        .try_iter()
        .map(|c| match c {
            Completion::Persisted(token) => token,
            Completion::Failed(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(reported, (0..=1000).collect::<Vec<_>>(), "in queue order");
}

#[test]
fn shutdown_commits_everything_already_queued_and_the_channel_reports_it() {
    let dir = TempDir::new("shutdown");
    let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let (tx, rx) = mpsc::channel();
    let wakes = Arc::new(Mutex::new(0));
    let handle = spool
        .spawn(Completions::channel(tx).with_wake({
            let wakes = Arc::clone(&wakes);
            move || *wakes.lock().unwrap() += 1
        }))
        .unwrap();
    let records: Vec<_> = (1..=300).map(|id| accepted(id, 100)).collect();
    for (token, record) in records.iter().enumerate() {
        handle.persist(token as u64, vec![record.clone()]).unwrap();
    }
    let spool = handle.shutdown().unwrap();
    let syncs = spool.stats().syncs;
    drop(spool);
    let tokens: Vec<u64> = rx
        .iter()
        .map(|c| match c {
            Completion::Persisted(token) => token,
            Completion::Failed(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(tokens, (0..300).collect::<Vec<_>>());
    assert_eq!(*wakes.lock().unwrap(), syncs, "one wake per group");
    assert_eq!(open_read_only(dir.path()).unwrap().0, replay(&records));
}

#[test]
fn dropping_the_handle_shuts_down_cleanly_and_releases_the_lock() {
    let dir = TempDir::new("drop-handle");
    let (spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    let (tx, rx) = mpsc::channel();
    let handle = spool.spawn(Completions::channel(tx)).unwrap();
    handle.persist(7, vec![accepted(7, 7)]).unwrap();
    drop(handle);
    assert!(matches!(rx.recv().unwrap(), Completion::Persisted(7)));
    let (_spool, state) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    assert_eq!(state, replay(&[accepted(7, 7)]));
}
