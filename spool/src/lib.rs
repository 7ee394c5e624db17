//! xshadow-spool: the durable journal of an xshadow node (DESIGN.md §6), on `std::fs` only.
//!
//! A node emits `Output::Persist { token, records }` and acts on those records only after the
//! driver feeds back `Input::Persisted(token)`. This crate is what makes that promise true on
//! disk: a segmented, append-only journal of [`xshadow_core::store`] records, group-committed
//! on its own thread, recovered after a crash up to the last whole record, and compacted so
//! that it stays near the size of what is still live.
//!
//! # Using it
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::mpsc;
//! use xshadow_spool::{Completion, Completions, Spool, SpoolOptions};
//!
//! let (spool, state) = Spool::open("/var/spool/xshadow", SpoolOptions::default())?;
//! // Node::new(config, state, ...) — it emits a DatabaseId record first if `state` has none.
//! # let _ = state;
//! let (tx, rx) = mpsc::channel();
//! let handle = spool.spawn(Completions::channel(tx).with_wake(|| { /* wake the event loop */ }))?;
//! // for every Output::Persist { token, records }:
//! # let (token, records) = (1, Vec::new());
//! handle.persist(token, records)?;
//! // in the event loop:
//! for completion in rx.try_iter() {
//!     match completion {
//!         Completion::Persisted(token) => { /* node.handle_input(Input::Persisted(token), now) */ }
//!         Completion::Failed(error) => return Err(error.into()), // fatal: stop the node
//!     }
//! }
//! let spool = handle.shutdown()?; // commits what is queued, syncs
//! # drop(spool);
//! # Ok(()) }
//! ```
//!
//! [`binding`] holds what the runtime bindings share: their `Settings`, opening the spool
//! and recovering the node from it, and where the node's events go.
//!
//! `xshadow queue` reads a spool with [`open_read_only`], which takes no lock and changes
//! nothing, so it works while the node runs.
//!
//! # Files
//!
//! ```text
//! DIR/LOCK              held (flock) by the one open Spool; holds its process id
//! DIR/00000001.log      log segments: encoded records, appended, in order
//! DIR/00000002.log
//! DIR/00000003.snap     snapshot segment: the live records of the whole state at a compaction;
//!                       recovery starts at the newest snapshot and ignores older segments
//! DIR/00000004.log      the segment being appended to
//! DIR/00000005.snap.tmp a snapshot being written (removed by the next open if left over)
//! DIR/N.log.ignored     a segment after a damaged one, set aside by recovery (never read)
//! DIR/N.log.corrupt     the corrupt tail cut off a damaged segment, kept for inspection
//! ```
//!
//! Every file's sequence number is above all those before it. A segment holds whole records
//! (the `store` frames, length + CRC32C + payload, back to back) and nothing else; a new one
//! starts when the next record would take the current one past
//! [`SpoolOptions::segment_size`].
//!
//! # The database id
//!
//! The database id is created with the spool and kept in it, but the spool does not invent
//! it: when the recovered state has none (a new spool), `Node::new` draws one from its seeded
//! generator and emits `Record::DatabaseId` first in its first `Persist`; the spool persists it
//! like any other record, and from then on every recovery (and every snapshot, whose live
//! records begin with it) returns it. Randomness stays an argument of the core; the spool
//! stays a journal of what the core decided.
//!
//! # Why nothing acknowledged is lost (`kill -9` at any moment)
//!
//! - **Acknowledged means synced.** The writer reports `Persisted(token)` only after the
//!   `fdatasync` that covers the token's records returned Ok, together with an `fsync` of the
//!   directory when a segment was created since the last one. An I/O error is fatal and
//!   reported; it is never turned into a success.
//! - **Only the last segment can have a torn tail.** Before a new segment is created the full
//!   one is synced (data and directory), so after a crash every segment but the last is whole.
//!   Recovery stops at the first torn or bad-checksum record, keeps every record before it
//!   (all acknowledged records are before it: they were synced, and nothing after them was
//!   acknowledged unless it was synced too), truncates that segment to its last whole record
//!   so appends continue cleanly, and does not read later segments: the state must be the
//!   replay of a *prefix* of the journal, and records after a hole would be applied without
//!   records they were written after. (Later segments behind a damaged one mean the disk lost
//!   synced data, which no journal can repair; they are set aside, not deleted.)
//! - **Compaction never has a moment without a complete journal.** It syncs what is appended,
//!   writes the live records of the whole state (`StoreState::live_records`, which puts each
//!   message's `Accepted` before its `Shadowed`; copying an old segment's records forward
//!   instead could reorder them) to `N.snap.tmp`, `fsync`s it, renames it to `N.snap` and
//!   `fsync`s the directory, and only then removes the older segments. Before the rename is
//!   durable the old segments are the journal; after it the snapshot is, and it replays to
//!   exactly the same state. The rename is atomic, so recovery sees either no snapshot or a
//!   complete one; leftovers of a compaction cut short are removed by the next open.
//! - **One writer.** The `LOCK` file is held for the spool's life, so a second process (or a
//!   second `Spool` in this one) cannot append behind the first one's back. The kernel drops
//!   the lock when the process dies, so a crashed node restarts without manual cleanup.
//!
//! # Compaction
//!
//! The spool keeps a mirror of the state (every appended record is applied to a
//! [`StoreState`](xshadow_core::store::StoreState)) with the encoded size of each live
//! message. At each segment rollover, when the journal holds more than
//! [`SpoolOptions::compact_ratio`] times the bytes of the live records, it writes a snapshot
//! and removes every older segment — which deletes the segments whose records are all dead,
//! and rewrites the few live records of the old ones. Writing costs at most
//! `1 / (ratio - 1)` extra per byte appended; the disk holds at most about `ratio` times the
//! live state plus a segment. Compaction runs on the writer thread, delaying the group commit
//! behind it for as long as writing the live state takes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod binding;
mod error;
mod recovery;
mod segment;
mod spool;
mod writer;

pub use error::SpoolError;
pub use recovery::{Damage, Recovery, open_read_only};
pub use spool::{LOCK_FILE, Spool, SpoolOptions, SpoolStats};
pub use writer::{Completion, Completions, SpoolHandle};
