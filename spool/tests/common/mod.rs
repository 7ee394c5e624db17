//! Helpers shared by the spool's integration tests: temporary directories and records.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use xshadow_core::session::{Envelope, Recipient};
use xshadow_core::shadow::MessageId;
use xshadow_core::store::{PrimaryFor, Record, StoreState};
use xshadow_core::wire::Command;

/// A directory under the system temp dir, unique to this test, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, not yet created, directory path named after `name`.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "xshadow-spool-{name}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The envelope every test message has.
pub fn envelope() -> Envelope {
    let Ok(Command::Mail { from, params }) = Command::parse(b"MAIL FROM:<alice@example.com>")
    else {
        panic!("MAIL line");
    };
    let Ok(Command::Rcpt { to, params: rcpt }) = Command::parse(b"RCPT TO:<bob@example.net>")
    else {
        panic!("RCPT line");
    };
    Envelope {
        from: from.into_owned(),
        params: params.into_owned(),
        recipients: [Recipient {
            to: to.into_owned(),
            params: rcpt.into_owned(),
        }]
        .into(),
    }
}

/// An `Accepted` record of message `id` with a body of `size` bytes.
pub fn accepted(id: u64, size: usize) -> Record {
    Record::Accepted {
        id: MessageId(id),
        at_ms: 1_700_000_000_000 + id,
        envelope: envelope().into(),
        body: vec![b'x'; size].into(),
        primary_for: None,
    }
}

/// A plausible node history of `count` records: messages accepted, shadowed, resubmitted and
/// done, discard events queued and forgotten, a database id first.
pub fn history(seed: u64, count: usize) -> Vec<Record> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut records = vec![Record::DatabaseId {
        id: "3q2+7wAAAAAAAAAAAAAAAA==".into(),
    }];
    let mut next_id = 1u64;
    let mut live: Vec<u64> = Vec::new();
    let mut events: Vec<(String, String)> = Vec::new();
    while records.len() < count {
        let record = match rng.u8(0..10) {
            0..=3 => {
                let id = next_id;
                next_id += 1;
                live.push(id);
                let primary_for = rng.bool().then(|| PrimaryFor {
                    context: format!("hub{}", rng.u8(0..3)).into(),
                    discard_id: format!("d{id}").into(),
                });
                Record::Accepted {
                    id: MessageId(id),
                    at_ms: 1_700_000_000_000 + id,
                    envelope: envelope().into(),
                    body: vec![rng.u8(..); rng.usize(0..300)].into(),
                    primary_for,
                }
            }
            4 if !live.is_empty() => Record::Shadowed {
                id: MessageId(live[rng.usize(0..live.len())]),
                primary: format!("edge{}", rng.u8(0..2)).into(),
                shadow_id: format!("s{}", rng.u32(..)).into(),
                database_id: "AAAAAAAAAAAAAAAAAAAAAA==".into(),
                at_ms: rng.u64(0..1_000_000),
            },
            5 if !live.is_empty() => Record::Resubmitted {
                id: MessageId(live[rng.usize(0..live.len())]),
            },
            6 | 7 if !live.is_empty() => Record::Done {
                id: MessageId(live.swap_remove(rng.usize(0..live.len()))),
            },
            8 => {
                let event = (format!("Hub{}", rng.u8(0..3)), format!("e{}", rng.u32(..)));
                events.push(event.clone());
                Record::DiscardQueued {
                    context: event.0.into(),
                    discard_id: event.1.into(),
                    at_ms: rng.u64(0..1_000_000),
                }
            }
            9 if !events.is_empty() => {
                let n = rng.usize(1..=events.len().min(3));
                let forgotten = (0..n)
                    .map(|_| events.swap_remove(rng.usize(0..events.len())))
                    .map(|(context, id)| (context.into(), id.into()))
                    .collect();
                Record::DiscardsForgotten { events: forgotten }
            }
            _ => continue,
        };
        records.push(record);
    }
    records
}

/// The state `records` replay to.
pub fn replay(records: &[Record]) -> StoreState {
    StoreState::replay(records)
}

/// Where each whole frame of an encoded record buffer ends.
pub fn frame_ends(buf: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = 0;
    while let Some(len) = buf.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
        at += 8 + len;
        if at > buf.len() {
            break;
        }
        ends.push(at);
    }
    ends
}

/// The journal files of `dir` with extension `ext` (`log`, `snap`), sorted.
pub fn files_with(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read the spool directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}
