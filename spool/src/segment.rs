//! Segment file names, directory listing and directory sync.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// File name extension of an append segment.
const LOG: &str = "log";
/// File name extension of a snapshot segment (written whole by compaction, then renamed).
const SNAPSHOT: &str = "snap";
/// Suffix of a snapshot being written; never read by recovery.
pub(crate) const TEMPORARY_SUFFIX: &str = ".tmp";
/// Suffix given to segments recovery did not read because an earlier one was damaged.
pub(crate) const IGNORED_SUFFIX: &str = ".ignored";
/// Suffix of the copy of a corrupt segment tail, kept for inspection.
pub(crate) const CORRUPT_SUFFIX: &str = ".corrupt";

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Records appended as they were persisted (`NNNNNNNN.log`).
    Log,
    /// The live records of the whole state, replacing every segment before it (`NNNNNNNN.snap`).
    Snapshot,
}

/// A segment's name: its sequence number and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentName {
    /// Position in the journal; every file of a spool has its own.
    pub seq: u64,
    /// Log or snapshot.
    pub kind: Kind,
}

impl SegmentName {
    /// An append segment.
    pub fn log(seq: u64) -> Self {
        Self {
            seq,
            kind: Kind::Log,
        }
    }

    /// A snapshot segment.
    pub fn snapshot(seq: u64) -> Self {
        Self {
            seq,
            kind: Kind::Snapshot,
        }
    }

    /// The file name, e.g. `00000001.log`.
    pub fn file_name(self) -> String {
        let ext = match self.kind {
            Kind::Log => LOG,
            Kind::Snapshot => SNAPSHOT,
        };
        format!("{:08}.{ext}", self.seq)
    }
}

/// The segment files of a spool directory, sorted out.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// What recovery reads, in order: the newest snapshot (if any), then every log after it.
    pub chain: Vec<SegmentName>,
    /// Segments older than the newest snapshot: left behind by a compaction cut short.
    pub superseded: Vec<SegmentName>,
    /// Snapshots that were still being written (`*.snap.tmp`).
    pub temporary: Vec<String>,
    /// The highest sequence number any file of the directory uses (0 when none does).
    pub max_seq: u64,
}

/// The sequence number a spool file name starts with (`00000007.log`, `00000007.log.ignored`).
fn seq_of(name: &str) -> Option<u64> {
    let (stem, _) = name.split_once('.')?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Lists and sorts the spool files in `dir`; other files are left alone.
pub(crate) fn list(dir: &Path) -> io::Result<Listing> {
    let mut listing = Listing::default();
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(seq) = seq_of(&name) else {
            continue;
        };
        listing.max_seq = listing.max_seq.max(seq);
        if name == SegmentName::log(seq).file_name() {
            segments.push(SegmentName::log(seq));
        } else if name == SegmentName::snapshot(seq).file_name() {
            segments.push(SegmentName::snapshot(seq));
        } else if name.ends_with(TEMPORARY_SUFFIX) {
            listing.temporary.push(name);
        }
    }
    segments.sort_by_key(|s| s.seq);
    let base = segments
        .iter()
        .rposition(|s| s.kind == Kind::Snapshot)
        .unwrap_or(0);
    listing.chain = segments.split_off(base);
    listing.superseded = segments;
    Ok(listing)
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The length of the frame at the start of `buf`, which `decode` has already validated.
pub(crate) fn frame_len(buf: &[u8]) -> u64 {
    buf.first_chunk::<4>()
        .map_or(0, |len| u64::from(u32::from_le_bytes(*len)) + 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_eight_digit_sequence_numbers_with_their_kind() {
        assert_eq!(SegmentName::log(1).file_name(), "00000001.log");
        assert_eq!(SegmentName::snapshot(42).file_name(), "00000042.snap");
        assert_eq!(
            SegmentName::log(123_456_789_012).file_name(),
            "123456789012.log"
        );
    }

    #[test]
    fn sequence_numbers_are_read_from_every_spool_file_name() {
        assert_eq!(seq_of("00000007.log"), Some(7));
        assert_eq!(seq_of("00000007.log.ignored"), Some(7));
        assert_eq!(seq_of("00000009.snap.tmp"), Some(9));
        assert_eq!(seq_of("LOCK"), None);
        assert_eq!(seq_of(".log"), None);
        assert_eq!(seq_of("x1.log"), None);
    }
}
