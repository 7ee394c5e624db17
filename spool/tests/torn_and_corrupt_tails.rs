//! A journal cut short or damaged recovers exactly the whole, valid records before the damage.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{TempDir, files_with, frame_ends, history, replay};
use xshadow_core::store::{Record, Stop};
use xshadow_spool::{Spool, SpoolOptions, open_read_only};

fn options() -> SpoolOptions {
    SpoolOptions {
        segment_size: 2048,
        compact_ratio: 0,
    }
}

/// A record appended after recovery, to show appends continue from a clean point.
fn marker() -> Record {
    Record::DiscardQueued {
        context: "after-recovery".into(),
        discard_id: "marker".into(),
        at_ms: 1,
    }
}

/// Writes `records` to a fresh spool in `dir` (synced in groups, as the writer would) and
/// returns its segment files.
fn write_journal(dir: &Path, records: &[Record]) -> Vec<PathBuf> {
    let (mut spool, _) = Spool::open(dir, options()).unwrap();
    for group in records.chunks(5) {
        spool.append(group).unwrap();
        spool.sync().unwrap();
    }
    let segments = spool.segments();
    spool.close().unwrap();
    segments
}

/// How many records are in the segments before `segment`.
fn records_before(segments: &[PathBuf], segment: &Path) -> usize {
    segments
        .iter()
        .take_while(|s| s.as_path() != segment)
        .map(|s| frame_ends(&fs::read(s).unwrap()).len())
        .sum()
}

#[test]
fn a_last_segment_cut_at_every_byte_of_its_last_records_recovers_the_records_before_the_cut() {
    let dir = TempDir::new("cut");
    let records = history(11, 120);
    let segments = write_journal(dir.path(), &records);
    assert!(segments.len() >= 3);
    let last = segments.last().unwrap().clone();
    let original = fs::read(&last).unwrap();
    let ends = frame_ends(&original);
    assert_eq!(ends.last(), Some(&original.len()));
    let before = records_before(&segments, &last);
    assert_eq!(before + ends.len(), records.len());
    // Every byte offset from the start of the third-last record to the end of the segment.
    let first_cut = if ends.len() > 3 {
        ends[ends.len() - 4]
    } else {
        0
    };
    let mut cuts = 0;
    for cut in first_cut..=original.len() {
        fs::write(&last, &original[..cut]).unwrap();
        let whole = before + ends.iter().take_while(|&&end| end <= cut).count();
        let expected = replay(&records[..whole]);

        let (state, recovery) = open_read_only(dir.path()).unwrap();
        assert_eq!(state, expected, "read-only, cut at {cut}");
        assert_eq!(
            fs::metadata(&last).unwrap().len(),
            cut as u64,
            "read-only truncates nothing"
        );
        let torn = !ends.contains(&cut) && cut != 0;
        assert_eq!(recovery.is_clean(), !torn, "cut at {cut}");

        let (mut spool, state) = Spool::open(dir.path(), options()).unwrap();
        assert_eq!(state, expected, "cut at {cut}");
        assert_eq!(spool.recovery().records, whole);
        if let Some(damage) = &spool.recovery().damage {
            assert_eq!(damage.stop, Stop::TornTail, "cut at {cut}");
            assert_eq!(damage.segment, last);
            assert_eq!(damage.file_len, cut as u64);
            assert!(damage.ignored.is_empty());
        }
        spool.append(&[marker()]).unwrap();
        spool.close().unwrap();
        let mut with_marker = records[..whole].to_vec();
        with_marker.push(marker());
        let (state, recovery) = open_read_only(dir.path()).unwrap();
        assert_eq!(state, replay(&with_marker), "appended after a cut at {cut}");
        assert!(recovery.is_clean());
        cuts += 1;
    }
    assert!(cuts > 100, "{cuts} cuts");
    fs::write(&last, &original).unwrap();
    assert!(
        files_with(dir.path(), ".corrupt").is_empty(),
        "a torn tail is not corruption"
    );
}

#[test]
fn a_corrupt_checksum_in_the_last_segment_recovers_the_records_before_it() {
    let dir = TempDir::new("checksum");
    let records = history(12, 120);
    let segments = write_journal(dir.path(), &records);
    let last = segments.last().unwrap().clone();
    let original = fs::read(&last).unwrap();
    let ends = frame_ends(&original);
    let before = records_before(&segments, &last);
    let starts: Vec<usize> = std::iter::once(0)
        .chain(ends[..ends.len() - 1].iter().copied())
        .collect();
    for (i, &start) in starts.iter().enumerate() {
        for byte in start + 4..start + 8 {
            let mut damaged = original.clone();
            damaged[byte] ^= 0x40;
            fs::write(&last, &damaged).unwrap();
            let expected = replay(&records[..before + i]);
            assert_eq!(open_read_only(dir.path()).unwrap().0, expected);

            let (spool, state) = Spool::open(dir.path(), options()).unwrap();
            assert_eq!(state, expected, "checksum byte {byte} of record {i}");
            let damage = spool.recovery().damage.clone().unwrap();
            assert_eq!(damage.stop, Stop::Corrupt { offset: start });
            assert_eq!(damage.valid_len, start as u64);
            drop(spool);
            assert_eq!(
                fs::read(&last).unwrap(),
                &original[..start],
                "truncated to the clean point"
            );
            let aside = PathBuf::from(format!("{}.corrupt", last.display()));
            assert_eq!(
                fs::read(&aside).unwrap(),
                &damaged[start..],
                "the corrupt tail is kept"
            );
            fs::remove_file(aside).unwrap();
        }
    }
}

#[test]
fn a_corrupt_record_in_an_earlier_segment_sets_the_later_segments_aside() {
    let dir = TempDir::new("middle");
    let records = history(13, 200);
    let segments = write_journal(dir.path(), &records);
    assert!(segments.len() >= 4);
    let damaged = &segments[1];
    let bytes = fs::read(damaged).unwrap();
    let ends = frame_ends(&bytes);
    let start = ends[1];
    let mut broken = bytes.clone();
    broken[start + 9] ^= 0xff; // inside the payload: the checksum no longer matches
    fs::write(damaged, &broken).unwrap();
    let expected = replay(&records[..records_before(&segments, damaged) + 2]);

    let (state, recovery) = open_read_only(dir.path()).unwrap();
    assert_eq!(state, expected);
    let damage = recovery.damage.unwrap();
    assert_eq!(damage.ignored, segments[2..]);

    let (mut spool, state) = Spool::open(dir.path(), options()).unwrap();
    assert_eq!(state, expected);
    for later in &segments[2..] {
        assert!(!later.exists());
        assert!(PathBuf::from(format!("{}.ignored", later.display())).exists());
    }
    // Appends go on in the damaged segment, and new segments get fresh numbers.
    assert_eq!(spool.segments().last(), Some(damaged));
    spool.append(&history(14, 60)).unwrap();
    let new_segments = spool.segments();
    spool.close().unwrap();
    let mut all = records[..records_before(&segments, damaged) + 2].to_vec();
    all.extend(history(14, 60));
    assert_eq!(open_read_only(dir.path()).unwrap().0, replay(&all));
    let last_old = segments.last().unwrap();
    assert!(new_segments.last().unwrap() > last_old, "{new_segments:?}");
}

#[test]
fn a_zero_filled_tail_reads_as_the_end_of_the_journal() {
    let dir = TempDir::new("zeros");
    let records = history(15, 50);
    let segments = write_journal(dir.path(), &records);
    let last = segments.last().unwrap();
    let mut bytes = fs::read(last).unwrap();
    let len = bytes.len();
    bytes.extend_from_slice(&[0; 4096]);
    fs::write(last, &bytes).unwrap();
    let (spool, state) = Spool::open(dir.path(), options()).unwrap();
    assert_eq!(state, replay(&records));
    drop(spool);
    assert_eq!(fs::metadata(last).unwrap().len(), len as u64);
}
