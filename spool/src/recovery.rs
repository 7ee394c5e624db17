//! Reading a spool back: the state mirror, the segment scan and the read-only open.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use xshadow_core::shadow::MessageId;
use xshadow_core::store::{Record, Stop, StoreState, decode, encode};

use crate::error::SpoolError;
use crate::segment::{self, SegmentName};

/// What recovery found: the segments read, the records recovered and where it stopped early.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The segment files whose records count, in journal order.
    pub segments: Vec<PathBuf>,
    /// How many records were read from them.
    pub records: usize,
    /// Where reading stopped before the end of the journal, if it did.
    pub damage: Option<Damage>,
}

impl Recovery {
    /// True when every segment was read to its end.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.damage.is_none()
    }
}

/// A torn or corrupt record that ended recovery: its segment and what was left unread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment holding the torn or corrupt record.
    pub segment: PathBuf,
    /// Bytes of that segment before the record: its records up to here count.
    pub valid_len: u64,
    /// The segment's length on disk when it was read.
    pub file_len: u64,
    /// Why reading stopped: a write cut short ([`Stop::TornTail`]) or a damaged record.
    pub stop: Stop,
    /// Later segments that were not read (a writable open renames them to `<name>.ignored`).
    pub ignored: Vec<PathBuf>,
}

/// The spool's copy of the node's durable state, with the encoded size of each live message.
///
/// Every appended record is applied to it, so it is what a recovery would rebuild from
/// everything appended so far; compaction writes its `live_records()`.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    /// The state the records replay to.
    pub state: StoreState,
    /// Framed bytes of each live message's `Accepted` and `Shadowed` records.
    sizes: HashMap<MessageId, (u64, u64)>,
    /// The sum of `sizes`.
    message_bytes: u64,
}

impl Mirror {
    /// Applies `record`, whose frame is `len` bytes long.
    pub fn apply(&mut self, record: &Record, len: u64) {
        match record {
            Record::Accepted { id, .. } => {
                if let Some((accepted, shadowed)) = self.sizes.insert(*id, (len, 0)) {
                    self.message_bytes -= accepted + shadowed;
                }
                self.message_bytes += len;
            }
            Record::Shadowed { id, .. } => {
                if let Some((_, shadowed)) = self.sizes.get_mut(id) {
                    self.message_bytes = self.message_bytes - *shadowed + len;
                    *shadowed = len;
                }
            }
            Record::Resubmitted { id } => {
                if let Some((_, shadowed)) = self.sizes.get_mut(id) {
                    self.message_bytes -= *shadowed;
                    *shadowed = 0;
                }
            }
            Record::Done { id } => {
                if let Some((accepted, shadowed)) = self.sizes.remove(id) {
                    self.message_bytes -= accepted + shadowed;
                }
            }
            Record::DatabaseId { .. }
            | Record::DiscardQueued { .. }
            | Record::DiscardsForgotten { .. }
            | Record::NextMessageId { .. } => {}
        }
        self.state.apply(record);
    }

    /// The encoded size of `state.live_records()` (give or take a `NextMessageId`).
    pub fn live_bytes(&self) -> u64 {
        let mut scratch = Vec::new();
        if let Some(id) = &self.state.database_id {
            encode(&Record::DatabaseId { id: id.clone() }, &mut scratch);
        }
        encode(
            &Record::NextMessageId {
                next: self.state.next_message_id,
            },
            &mut scratch,
        );
        for event in &self.state.discard_events {
            encode(
                &Record::DiscardQueued {
                    context: event.context.clone(),
                    discard_id: event.discard_id.clone(),
                    at_ms: event.at_ms,
                },
                &mut scratch,
            );
        }
        self.message_bytes + scratch.len() as u64
    }
}

/// What reading a segment chain gave.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The recovered state.
    pub mirror: Mirror,
    /// The segments whose records count and their valid lengths, in order (the damaged one last).
    pub read: Vec<(SegmentName, u64)>,
    /// The stop, the damaged segment's length on disk and the segments after it.
    pub damage: Option<(Stop, u64, Vec<SegmentName>)>,
    /// How many records were read.
    pub records: usize,
}

impl Scan {
    /// The public report of this scan of `dir`.
    pub fn recovery(&self, dir: &Path) -> Recovery {
        let path = |name: &SegmentName| dir.join(name.file_name());
        Recovery {
            segments: self.read.iter().map(|(name, _)| path(name)).collect(),
            records: self.records,
            damage: self.damage.as_ref().and_then(|(stop, file_len, ignored)| {
                let (name, valid_len) = self.read.last()?;
                Some(Damage {
                    segment: path(name),
                    valid_len: *valid_len,
                    file_len: *file_len,
                    stop: *stop,
                    ignored: ignored.iter().map(path).collect(),
                })
            }),
        }
    }
}

/// Reads the segments of `chain` in order, stopping at the first torn or corrupt record.
///
/// Records after that one, in its segment or in later ones, are not applied: the state must be
/// the replay of a prefix of the journal, and records after a hole were written after records
/// that are now missing (a `Done` whose `Accepted` is lost is harmless, but a `Shadowed` or a
/// `DiscardsForgotten` applied without what came before it makes a state that never existed).
pub(crate) fn scan(dir: &Path, chain: &[SegmentName]) -> io::Result<Scan> {
    let mut scan = Scan::default();
    for (i, name) in chain.iter().enumerate() {
        let buf = fs::read(dir.join(name.file_name()))?;
        let decoded = decode(&buf);
        let mut offset = 0;
        for record in &decoded.records {
            let len = segment::frame_len(buf.get(offset..).unwrap_or_default());
            scan.mirror.apply(record, len);
            offset += usize::try_from(len).unwrap_or(usize::MAX);
        }
        debug_assert_eq!(offset, decoded.valid_len);
        scan.records += decoded.records.len();
        scan.read.push((*name, decoded.valid_len as u64));
        if decoded.stop != Stop::Clean {
            let ignored = chain.get(i + 1..).unwrap_or_default().to_vec();
            scan.damage = Some((decoded.stop, buf.len() as u64, ignored));
            break;
        }
    }
    Ok(scan)
}

/// How often a read-only open starts over when a compaction removed a segment under it.
const READ_ONLY_ATTEMPTS: usize = 16;

/// Reads a spool's state without taking its lock and without changing any file.
///
/// Safe while a node runs on the directory (for `xshadow queue`): it reads the segments the
/// writer has written so far, stopping at a record still being written as at a torn tail, so
/// it sees a prefix of the journal — possibly with records not yet synced. When a compaction
/// removes a segment while it reads, it starts over from the new snapshot.
pub fn open_read_only(dir: impl AsRef<Path>) -> Result<(StoreState, Recovery), SpoolError> {
    let dir = dir.as_ref();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listing = segment::list(dir).map_err(SpoolError::io(dir))?;
        match scan(dir, &listing.chain) {
            Ok(scan) => {
                let recovery = scan.recovery(dir);
                return Ok((scan.mirror.state, recovery));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < READ_ONLY_ATTEMPTS => {}
            Err(e) => return Err(SpoolError::io(dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {

    use xshadow_core::store::PrimaryFor;

    use super::*;

    fn framed(record: &Record) -> u64 {
        let mut buf = Vec::new();
        encode(record, &mut buf);
        buf.len() as u64
    }

    fn encoded_len(records: &[Record]) -> u64 {
        records.iter().map(framed).sum()
    }

    #[test]
    fn the_mirror_counts_the_bytes_of_the_live_records() {
        let envelope = || {
            let Ok(xshadow_core::wire::Command::Mail { from, params }) =
                xshadow_core::wire::Command::parse(b"MAIL FROM:<a@b.example>")
            else {
                panic!("MAIL line");
            };
            xshadow_core::session::Envelope {
                from: from.into_owned(),
                params: params.into_owned(),
                recipients: Default::default(),
            }
        };
        let accepted = |id: u64, size: usize| Record::Accepted {
            id: MessageId(id),
            at_ms: id,
            envelope: envelope().into(),
            body: vec![7u8; size].into(),
            primary_for: id.is_multiple_of(2).then(|| PrimaryFor {
                context: "hub".into(),
                discard_id: format!("d{id}").into(),
            }),
        };
        let shadowed = |id: u64| Record::Shadowed {
            id: MessageId(id),
            primary: "edge".into(),
            shadow_id: format!("s{id}").into(),
            database_id: "db".into(),
            at_ms: 5,
        };
        let history = [
            Record::DatabaseId { id: "db".into() },
            accepted(1, 100),
            accepted(2, 10),
            shadowed(1),
            shadowed(1),
            accepted(3, 1000),
            Record::DiscardQueued {
                context: "Hub".into(),
                discard_id: "x".into(),
                at_ms: 1,
            },
            Record::Resubmitted { id: MessageId(1) },
            shadowed(2),
            Record::Done { id: MessageId(3) },
            accepted(2, 50),
            shadowed(9),
            Record::Done { id: MessageId(8) },
            Record::DiscardQueued {
                context: "hub".into(),
                discard_id: "y".into(),
                at_ms: 2,
            },
            Record::DiscardsForgotten {
                events: vec![("HUB".into(), "x".into())],
            },
        ];
        let mut mirror = Mirror::default();
        for (i, record) in history.iter().enumerate() {
            mirror.apply(record, framed(record));
            let live = mirror.state.live_records();
            let mut expected = encoded_len(&live);
            if !live
                .iter()
                .any(|r| matches!(r, Record::NextMessageId { .. }))
            {
                expected += framed(&Record::NextMessageId {
                    next: mirror.state.next_message_id,
                });
            }
            assert_eq!(mirror.live_bytes(), expected, "after record {i}");
            assert_eq!(mirror.state, StoreState::replay(&history[..=i]));
        }
    }
}
