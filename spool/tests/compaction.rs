//! Compaction keeps the state, removes dead segments, and is safe to cut at any step.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TempDir, accepted, files_with, history, replay};
use xshadow_core::shadow::MessageId;
use xshadow_core::store::Record;
use xshadow_spool::{Completion, Completions, Spool, SpoolOptions, open_read_only};

fn compacting() -> SpoolOptions {
    SpoolOptions {
        segment_size: 4096,
        compact_ratio: 2,
    }
}

/// Message i is accepted, and message i - 5 is done, in each step: five live messages at most.
fn sliding_window(steps: u64) -> Vec<Vec<Record>> {
    (1..=steps)
        .map(|i| {
            let mut records = vec![accepted(i, 200)];
            if i > 5 {
                records.push(Record::Done {
                    id: MessageId(i - 5),
                });
            }
            records
        })
        .collect()
}

#[test]
fn compaction_at_rollover_keeps_the_state_and_removes_dead_segments() {
    let dir = TempDir::new("rollover");
    let (mut spool, _) = Spool::open(dir.path(), compacting()).unwrap();
    let steps = sliding_window(2000);
    for group in steps.chunks(10) {
        spool.append(&group.concat()).unwrap();
        spool.sync().unwrap();
    }
    let all: Vec<Record> = steps.concat();
    let stats = spool.stats();
    assert!(stats.compactions > 50, "{stats:?}");
    assert!(stats.bytes > 400_000, "{stats:?}");
    assert!(
        spool.journal_bytes() < 3 * 4096,
        "{}",
        spool.journal_bytes()
    );
    assert_eq!(spool.state(), &replay(&all));
    let files = spool.segments();
    assert!(files.len() <= 3, "{files:?}");
    spool.close().unwrap();
    let mut on_disk = files_with(dir.path(), ".log");
    on_disk.extend(files_with(dir.path(), ".snap"));
    on_disk.sort();
    assert_eq!(on_disk, files, "every dead segment is gone");
    assert!(files_with(dir.path(), ".tmp").is_empty());

    let (spool, state) = Spool::open(dir.path(), compacting()).unwrap();
    assert_eq!(state, replay(&all));
    assert_eq!(state.next_message_id, 2001);
    assert_eq!(state.messages.len(), 5);
    assert!(
        spool.recovery().segments[0]
            .to_string_lossy()
            .ends_with(".snap")
    );
}

#[test]
fn compaction_of_a_varied_history_keeps_the_state_at_every_reopen() {
    let dir = TempDir::new("varied");
    let records = history(21, 3000);
    for (i, chunk) in records.chunks(500).enumerate() {
        let (mut spool, state) = Spool::open(dir.path(), compacting()).unwrap();
        assert_eq!(state, replay(&records[..i * 500]), "reopen {i}");
        for group in chunk.chunks(9) {
            spool.append(group).unwrap();
            spool.sync().unwrap();
        }
        spool.close().unwrap();
    }
    let (spool, state) = Spool::open(dir.path(), compacting()).unwrap();
    assert_eq!(state, replay(&records));
    // Compaction keeps the journal within the ratio of the live bytes (plus the segments
    // appended since the last rollover check).
    let mut live = Vec::new();
    for record in state.live_records() {
        xshadow_core::store::encode(&record, &mut live);
    }
    let appended: usize = records
        .iter()
        .map(|r| {
            let mut buf = Vec::new();
            xshadow_core::store::encode(r, &mut buf);
            buf.len()
        })
        .sum();
    let journal = spool.journal_bytes();
    assert!(
        journal <= 2 * live.len() as u64 + 4 * 4096,
        "journal {journal}, live {}, appended {appended}",
        live.len()
    );
    assert!(
        spool.recovery().segments[0]
            .to_string_lossy()
            .ends_with(".snap")
    );
}

#[test]
fn an_explicit_compaction_leaves_one_snapshot_of_the_live_records() {
    let dir = TempDir::new("explicit");
    let options = SpoolOptions {
        segment_size: 4096,
        compact_ratio: 0,
    };
    let records = history(22, 600);
    let (mut spool, _) = Spool::open(dir.path(), options).unwrap();
    spool.append(&records).unwrap();
    assert!(spool.segments().len() > 5);
    spool.compact().unwrap();
    let segments = spool.segments();
    assert_eq!(segments.len(), 2, "{segments:?}");
    let snapshot = fs::read(&segments[0]).unwrap();
    let decoded = xshadow_core::store::decode(&snapshot);
    assert_eq!(decoded.records, replay(&records).live_records());
    assert_eq!(spool.state(), &replay(&records));
    spool.append(&[accepted(9999, 1)]).unwrap();
    spool.close().unwrap();
    let mut all = records.clone();
    all.push(accepted(9999, 1));
    assert_eq!(open_read_only(dir.path()).unwrap().0, replay(&all));
}

#[test]
fn a_compaction_of_a_fully_dead_journal_keeps_the_database_id_and_the_used_ids() {
    let dir = TempDir::new("all-dead");
    let (mut spool, _) = Spool::open(dir.path(), compacting()).unwrap();
    let mut records = vec![Record::DatabaseId { id: "db".into() }];
    for id in 1..=100 {
        records.push(accepted(id, 100));
        records.push(Record::Done { id: MessageId(id) });
    }
    spool.append(&records).unwrap();
    spool.compact().unwrap();
    spool.close().unwrap();
    let (state, recovery) = open_read_only(dir.path()).unwrap();
    assert_eq!(state, replay(&records));
    assert_eq!(state.database_id.as_deref(), Some("db"));
    assert_eq!(state.next_message_id, 101);
    assert!(state.messages.is_empty());
    assert_eq!(
        recovery.records, 2,
        "the database id and the next message id"
    );
}

#[test]
fn a_compaction_cut_before_its_rename_leaves_the_old_journal() {
    let dir = TempDir::new("cut-before-rename");
    let records = history(23, 400);
    let (mut spool, _) = Spool::open(dir.path(), compacting()).unwrap();
    spool.append(&records).unwrap();
    let segments = spool.segments();
    spool.close().unwrap();
    // A snapshot half written when the crash came.
    let live = replay(&records).live_records();
    let mut bytes = Vec::new();
    for record in &live {
        xshadow_core::store::encode(record, &mut bytes);
    }
    let temporary = dir.path().join("99999999.snap.tmp");
    fs::write(&temporary, &bytes[..bytes.len() / 2]).unwrap();

    assert_eq!(open_read_only(dir.path()).unwrap().0, replay(&records));
    let (spool, state) = Spool::open(dir.path(), compacting()).unwrap();
    assert_eq!(state, replay(&records));
    assert_eq!(spool.segments(), segments);
    assert!(!temporary.exists(), "the leftover is removed");
}

#[test]
fn a_compaction_cut_after_its_rename_recovers_from_the_snapshot_alone() {
    let dir = TempDir::new("cut-after-rename");
    // Discard events and shadow copies: replaying them twice would show.
    let records = history(24, 400);
    let options = SpoolOptions {
        segment_size: 4096,
        compact_ratio: 0,
    };
    let (mut spool, _) = Spool::open(dir.path(), options).unwrap();
    spool.append(&records).unwrap();
    spool.sync().unwrap();
    let old: Vec<(std::path::PathBuf, Vec<u8>)> = spool
        .segments()
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    spool.compact().unwrap();
    spool.close().unwrap();
    // The crash came before the old segments were removed.
    for (path, bytes) in &old {
        fs::write(path, bytes).unwrap();
    }
    assert!(!replay(&records).discard_events.is_empty());
    assert_eq!(open_read_only(dir.path()).unwrap().0, replay(&records));
    let (spool, state) = Spool::open(dir.path(), options).unwrap();
    assert_eq!(state, replay(&records));
    for (path, _) in &old {
        assert!(!path.exists(), "{path:?} superseded by the snapshot");
    }
    assert_eq!(spool.segments().len(), 2);
}

#[test]
fn a_read_only_open_during_constant_compaction_sees_a_prefix_of_the_journal() {
    let dir = TempDir::new("reader-vs-compaction");
    let options = SpoolOptions {
        segment_size: 2048,
        compact_ratio: 2,
    };
    let (spool, _) = Spool::open(dir.path(), options).unwrap();
    let handle = spool
        .spawn(Completions::callback(|c| {
            assert!(matches!(c, Completion::Persisted(_)));
        }))
        .unwrap();
    let done = AtomicBool::new(false);
    let reads = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                let (state, _) = open_read_only(dir.path()).unwrap();
                let ids: Vec<u64> = state.messages.keys().map(|id| id.0).collect();
                if let (Some(&first), Some(&last)) = (ids.first(), ids.last()) {
                    assert_eq!(
                        last - first + 1,
                        ids.len() as u64,
                        "not contiguous: {ids:?}"
                    );
                    assert!(ids.len() <= 6 && ids.len() as u64 >= last.min(5), "{ids:?}");
                    assert_eq!(state.next_message_id, last + 1);
                }
                reads += 1;
            }
            reads
        });
        for (token, step) in sliding_window(3000).into_iter().enumerate() {
            handle.persist(token as u64, step).unwrap();
            if token.is_multiple_of(16) {
                std::thread::yield_now();
            }
        }
        let spool = handle.shutdown().unwrap();
        assert!(spool.stats().compactions > 20, "{:?}", spool.stats());
        done.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(reads > 0);
}
