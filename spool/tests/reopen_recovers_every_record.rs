//! A spool reopened after a clean close recovers exactly the records appended to it.

mod common;

use common::{TempDir, accepted, files_with, history, replay};
use xshadow_core::store::Record;
use xshadow_spool::{Spool, SpoolOptions, open_read_only};

fn small_segments() -> SpoolOptions {
    SpoolOptions {
        segment_size: 2048,
        compact_ratio: 0,
    }
}

#[test]
fn records_written_over_several_segments_reopen_to_the_same_state() {
    let dir = TempDir::new("reopen");
    let records = history(1, 400);
    let (mut spool, state) = Spool::open(dir.path(), small_segments()).unwrap();
    assert_eq!(state, Default::default());
    for chunk in records.chunks(7) {
        spool.append(chunk).unwrap();
        spool.sync().unwrap();
    }
    assert_eq!(spool.state(), &replay(&records));
    let segments = spool.segments();
    assert!(segments.len() > 5, "{} segments", segments.len());
    assert_eq!(files_with(dir.path(), ".log"), segments);
    spool.close().unwrap();

    let (spool, state) = Spool::open(dir.path(), small_segments()).unwrap();
    assert_eq!(state, replay(&records));
    assert!(spool.recovery().is_clean());
    assert_eq!(spool.recovery().records, records.len());
    assert_eq!(spool.recovery().segments, segments);
    drop(spool);
    assert_eq!(open_read_only(dir.path()).unwrap().0, replay(&records));
}

#[test]
fn every_segment_holds_whole_records_within_the_segment_size() {
    let dir = TempDir::new("segment-size");
    let (mut spool, _) = Spool::open(dir.path(), small_segments()).unwrap();
    let records = history(2, 300);
    spool.append(&records).unwrap();
    // A record larger than a segment gets one of its own.
    spool.append(&[accepted(10_000, 5000)]).unwrap();
    spool.sync().unwrap();
    let segments = spool.segments();
    for (i, path) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let decoded = xshadow_core::store::decode(&bytes);
        assert_eq!(decoded.stop, xshadow_core::store::Stop::Clean);
        assert!(!decoded.records.is_empty(), "{path:?} is empty");
        if i + 1 < segments.len() {
            assert!(bytes.len() <= 2048, "{path:?} has {} bytes", bytes.len());
        }
    }
    let mut big = Vec::new();
    xshadow_core::store::encode(&accepted(10_000, 5000), &mut big);
    let last = std::fs::read(segments.last().unwrap()).unwrap();
    assert_eq!(last, big, "the large record is alone in the last segment");
}

#[test]
fn a_new_spool_has_no_database_id_until_the_node_persists_one() {
    let dir = TempDir::new("database-id");
    let (mut spool, state) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    assert_eq!(state.database_id, None);
    drop(spool);
    let (spool2, state) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    assert_eq!(state.database_id, None, "the spool never invents one");
    spool = spool2;
    spool
        .append(&[Record::DatabaseId {
            id: "AAECAwQFBgcICQoLDA0ODw==".into(),
        }])
        .unwrap();
    spool.close().unwrap();
    let (_spool, state) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    assert_eq!(
        state.database_id.as_deref(),
        Some("AAECAwQFBgcICQoLDA0ODw==")
    );
}

#[test]
fn appends_after_a_reopen_continue_the_same_journal() {
    let dir = TempDir::new("continue");
    let records = history(3, 200);
    let (first, second) = records.split_at(120);
    let (mut spool, _) = Spool::open(dir.path(), small_segments()).unwrap();
    spool.append(first).unwrap();
    spool.close().unwrap();
    let (mut spool, state) = Spool::open(dir.path(), small_segments()).unwrap();
    assert_eq!(state, replay(first));
    spool.append(second).unwrap();
    spool.close().unwrap();
    let (spool, state) = Spool::open(dir.path(), small_segments()).unwrap();
    assert_eq!(state, replay(&records));
    assert_eq!(spool.recovery().records, records.len());
}

#[test]
fn dropping_a_spool_writes_out_and_syncs_what_was_appended() {
    let dir = TempDir::new("drop");
    let (mut spool, _) = Spool::open(dir.path(), SpoolOptions::default()).unwrap();
    spool.append(&[accepted(1, 10), accepted(2, 20)]).unwrap();
    assert_eq!(spool.stats().syncs, 0);
    drop(spool);
    let (state, _) = open_read_only(dir.path()).unwrap();
    assert_eq!(state, replay(&[accepted(1, 10), accepted(2, 20)]));
}
