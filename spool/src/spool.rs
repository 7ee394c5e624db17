//! [`Spool`]: the journal on disk, opened for writing by one owner at a time.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use xshadow_core::store::{Record, Stop, StoreState, encode};

use crate::error::SpoolError;
use crate::recovery::{Mirror, Recovery, scan};
use crate::segment::{self, CORRUPT_SUFFIX, IGNORED_SUFFIX, Kind, SegmentName, TEMPORARY_SUFFIX};

/// The name of the lock file in a spool directory.
pub const LOCK_FILE: &str = "LOCK";

/// Buffered record bytes are written to the segment file once they reach this size.
const WRITE_BUFFER: usize = 256 * 1024;

/// How a [`Spool`] cuts and compacts its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// A new segment starts when the next record would take the current one past this size (a
    /// record larger than this gets a segment of its own).
    pub segment_size: u64,
    /// At each segment rollover, compact when the segments hold more than this many times the
    /// bytes of the live records; 0 turns automatic compaction off.
    pub compact_ratio: u64,
}

impl Default for SpoolOptions {
    /// 64 MiB segments; compact when the journal is four times the live state.
    fn default() -> Self {
        Self {
            segment_size: 64 * 1024 * 1024,
            compact_ratio: 4,
        }
    }
}

/// Counters shared between a spool and its handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub file_syncs: AtomicU64,
    pub tokens: AtomicU64,
    pub compactions: AtomicU64,
}

/// What a spool has done since it was opened (for "syncs per message" and the like).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended.
    pub records: u64,
    /// Encoded record bytes appended.
    pub bytes: u64,
    /// Group commits: `fdatasync`s of the journal by [`Spool::sync`].
    pub syncs: u64,
    /// Every `fsync`/`fdatasync` issued: group commits, rollovers, directories, snapshots.
    pub file_syncs: u64,
    /// Tokens reported persisted by the writer thread.
    pub tokens: u64,
    /// Compactions done.
    pub compactions: u64,
}

impl Counters {
    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// The counters' current values.
    pub fn snapshot(&self) -> SpoolStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SpoolStats {
            records: get(&self.records),
            bytes: get(&self.bytes),
            syncs: get(&self.syncs),
            file_syncs: get(&self.file_syncs),
            tokens: get(&self.tokens),
            compactions: get(&self.compactions),
        }
    }
}

/// The segment records are appended to.
#[derive(Debug)]
struct Current {
    name: SegmentName,
    file: File,
    /// Bytes in the segment, including those still buffered.
    len: u64,
}

/// A spool directory opened for writing: append records, sync them, compact.
///
/// Holds the directory's `LOCK` file for its whole life. Dropping it writes out buffered
/// records and syncs them, ignoring errors; call [`Spool::close`] to see them. After any I/O
/// error the spool refuses further work: drop it and open the directory again, which recovers
/// exactly what reached the disk.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    _lock: File,
    mirror: Mirror,
    /// Segments before the current one, with their sizes, in order.
    sealed: Vec<(SegmentName, u64)>,
    current: Current,
    buf: Vec<u8>,
    /// Records were appended since the last `fdatasync` of the current segment.
    unsynced: bool,
    /// A segment was created, renamed or removed since the directory was last synced.
    dir_dirty: bool,
    /// An I/O error happened: the files may not match the mirror any more.
    broken: bool,
    max_seq: u64,
    counters: Arc<Counters>,
    recovery: Recovery,
    /// Test hook: the next sync fails.
    #[cfg(test)]
    pub(crate) fail_next_sync: bool,
}

impl Spool {
    /// Opens (creating it if missing) and locks the spool in `dir`, and recovers its state.
    ///
    /// Recovery reads the newest snapshot, then every log segment after it, in order, each
    /// with [`xshadow_core::store::decode`], and stops at the first torn or corrupt record
    /// (see [`Recovery`]). The damaged segment is truncated to its last whole record so that
    /// appends continue from a clean point; a corrupt (not merely torn) tail is first copied to
    /// `<segment>.corrupt`, and later segments, which are not read, are renamed to
    /// `<segment>.ignored`, so nothing is destroyed that an operator might want to look at.
    ///
    /// The returned state has no database id when the spool is new: the spool never invents
    /// one. The node does (`Node::new` draws it and puts a `Record::DatabaseId` first in its
    /// first `Persist`), and from then on it lives in the spool like any record.
    pub fn open(
        dir: impl AsRef<Path>,
        options: SpoolOptions,
    ) -> Result<(Self, StoreState), SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(SpoolError::io(&dir))?;
        let lock = lock(&dir)?;
        let listing = segment::list(&dir).map_err(SpoolError::io(&dir))?;
        let scan = scan(&dir, &listing.chain).map_err(SpoolError::io(&dir))?;
        let recovery = scan.recovery(&dir);
        let path = |name: SegmentName| dir.join(name.file_name());

        // A compaction cut short: its temporary snapshot, or the segments it replaced.
        for name in &listing.temporary {
            remove(&dir.join(name)).map_err(SpoolError::io(dir.join(name)))?;
        }
        for &name in &listing.superseded {
            remove(&path(name)).map_err(SpoolError::io(path(name)))?;
        }
        if let (Some((stop, _, ignored)), Some(&(damaged, valid_len))) =
            (&scan.damage, scan.read.last())
        {
            set_aside_damage(&dir, damaged, valid_len, *stop, ignored)?;
        }

        let mut sealed = scan.read;
        let mut max_seq = listing.max_seq;
        let current = match sealed.last() {
            Some(&(name, len)) if name.kind == Kind::Log => {
                sealed.pop();
                let file = OpenOptions::new()
                    .append(true)
                    .open(path(name))
                    .map_err(SpoolError::io(path(name)))?;
                Current { name, file, len }
            }
            _ => {
                max_seq += 1;
                let name = SegmentName::log(max_seq);
                let file = create_log(&path(name)).map_err(SpoolError::io(path(name)))?;
                Current { name, file, len: 0 }
            }
        };
        segment::sync_dir(&dir).map_err(SpoolError::io(&dir))?;
        let state = scan.mirror.state.clone();
        let spool = Self {
            dir,
            options,
            _lock: lock,
            mirror: scan.mirror,
            sealed,
            current,
            buf: Vec::new(),
            unsynced: false,
            dir_dirty: false,
            broken: false,
            max_seq,
            counters: Arc::default(),
            recovery,
            #[cfg(test)]
            fail_next_sync: false,
        };
        Ok((spool, state))
    }

    /// The spool directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options it was opened with.
    #[must_use]
    pub fn options(&self) -> SpoolOptions {
        self.options
    }

    /// What recovery found when the spool was opened.
    #[must_use]
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The state every record appended so far replays to (synced or not).
    #[must_use]
    pub fn state(&self) -> &StoreState {
        &self.mirror.state
    }

    /// The segment files of the journal, in order (the one appended to last).
    #[must_use]
    pub fn segments(&self) -> Vec<PathBuf> {
        self.sealed
            .iter()
            .map(|(name, _)| *name)
            .chain([self.current.name])
            .map(|name| self.dir.join(name.file_name()))
            .collect()
    }

    /// Bytes in the journal's segments, including records not yet written out.
    #[must_use]
    pub fn journal_bytes(&self) -> u64 {
        self.sealed.iter().map(|(_, len)| len).sum::<u64>() + self.current.len
    }

    /// Counters since the spool was opened.
    #[must_use]
    pub fn stats(&self) -> SpoolStats {
        self.counters.snapshot()
    }

    pub(crate) fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Appends `records`, in order, to the journal (buffered: durable after [`Spool::sync`]).
    ///
    /// May start a new segment (syncing the full one first) and compact.
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        self.usable()?;
        let result = self.append_records(records);
        self.broken |= result.is_err();
        result
    }

    /// Writes out buffered records and `fdatasync`s them, with the directory if a segment was
    /// created since the last sync. Everything appended before is durable once it returns Ok.
    pub fn sync(&mut self) -> io::Result<()> {
        self.usable()?;
        let result = self.sync_all_pending();
        self.broken |= result.is_err();
        result
    }

    /// Replaces the whole journal with one snapshot segment of the live records.
    ///
    /// Automatic at segment rollovers (see [`SpoolOptions::compact_ratio`]); callable any time.
    pub fn compact(&mut self) -> io::Result<()> {
        self.usable()?;
        let result = self.seal_current().and_then(|()| self.write_snapshot());
        self.broken |= result.is_err();
        result
    }

    /// Syncs and closes the spool (releasing its lock), reporting any error.
    pub fn close(mut self) -> io::Result<()> {
        self.sync()
    }

    fn usable(&self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other(format!(
                "spool {} is unusable after an earlier I/O error; open it again",
                self.dir.display()
            )));
        }
        Ok(())
    }

    fn append_records(&mut self, records: &[Record]) -> io::Result<()> {
        for record in records {
            let start = self.buf.len();
            encode(record, &mut self.buf);
            let len = (self.buf.len() - start) as u64;
            if self.current.len > 0
                && self.current.len.saturating_add(len) > self.options.segment_size
            {
                let record_bytes = self.buf.split_off(start);
                self.roll_over()?;
                self.buf = record_bytes;
            }
            self.current.len += len;
            self.unsynced = true;
            self.mirror.apply(record, len);
            Counters::bump(&self.counters.bytes, len);
            if self.buf.len() >= WRITE_BUFFER {
                self.write_out()?;
            }
        }
        Counters::bump(&self.counters.records, records.len() as u64);
        Ok(())
    }

    fn write_out(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.current.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn sync_all_pending(&mut self) -> io::Result<()> {
        self.write_out()?;
        if self.unsynced {
            #[cfg(test)]
            if std::mem::take(&mut self.fail_next_sync) {
                return Err(io::Error::other("injected sync failure"));
            }
            self.current.file.sync_data()?;
            self.unsynced = false;
            Counters::bump(&self.counters.syncs, 1);
            Counters::bump(&self.counters.file_syncs, 1);
        }
        self.sync_dir_if_dirty()
    }

    fn sync_dir_if_dirty(&mut self) -> io::Result<()> {
        if self.dir_dirty {
            segment::sync_dir(&self.dir)?;
            self.dir_dirty = false;
            Counters::bump(&self.counters.file_syncs, 1);
        }
        Ok(())
    }

    /// Makes the current segment and the directory durable and moves the segment to `sealed`
    /// (the caller starts the next one). Every segment before a new one is durable first, so
    /// that a torn record can only be in the last segment after a crash.
    fn seal_current(&mut self) -> io::Result<()> {
        self.write_out()?;
        if self.unsynced {
            self.current.file.sync_data()?;
            self.unsynced = false;
            Counters::bump(&self.counters.file_syncs, 1);
        }
        self.sync_dir_if_dirty()?;
        self.sealed.push((self.current.name, self.current.len));
        self.current.len = 0;
        Ok(())
    }

    /// The current segment is full: seal it, then compact or start the next log segment.
    fn roll_over(&mut self) -> io::Result<()> {
        self.seal_current()?;
        let journal = self.journal_bytes();
        let ratio = self.options.compact_ratio;
        if ratio > 0 && journal > ratio.saturating_mul(self.mirror.live_bytes()) {
            self.write_snapshot()
        } else {
            self.start_log()
        }
    }

    fn start_log(&mut self) -> io::Result<()> {
        self.max_seq += 1;
        let name = SegmentName::log(self.max_seq);
        let file = create_log(&self.dir.join(name.file_name()))?;
        self.current = Current { name, file, len: 0 };
        self.dir_dirty = true;
        Ok(())
    }

    /// Compaction, with everything appended so far sealed and durable:
    ///
    /// 1. write the live records to `<n>.snap.tmp` (n above every sequence number in use) and
    ///    `fsync` it;
    /// 2. rename it to `<n>.snap` and `fsync` the directory: from here on recovery starts at
    ///    this snapshot and ignores every older segment;
    /// 3. remove the older segments, start log segment n + 1, `fsync` the directory.
    ///
    /// A crash before step 2 is durable leaves the old segments as the journal (a leftover
    /// temporary file is removed by the next open); a crash after it leaves a complete snapshot
    /// that replays to the same state, and older segments that the next open removes.
    fn write_snapshot(&mut self) -> io::Result<()> {
        debug_assert!(self.buf.is_empty() && !self.unsynced && self.current.len == 0);
        self.max_seq += 1;
        let name = SegmentName::snapshot(self.max_seq);
        let path = self.dir.join(name.file_name());
        let temporary = self
            .dir
            .join(format!("{}{TEMPORARY_SUFFIX}", name.file_name()));
        let mut out = BufWriter::with_capacity(
            WRITE_BUFFER,
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temporary)?,
        );
        let mut len = 0u64;
        let mut scratch = Vec::new();
        for record in self.mirror.state.live_records() {
            scratch.clear();
            encode(&record, &mut scratch);
            out.write_all(&scratch)?;
            len += scratch.len() as u64;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temporary, &path)?;
        segment::sync_dir(&self.dir)?;
        Counters::bump(&self.counters.file_syncs, 2);

        for (old, _) in std::mem::take(&mut self.sealed) {
            remove(&self.dir.join(old.file_name()))?;
        }
        self.sealed.push((name, len));
        self.start_log()?;
        self.sync_dir_if_dirty()?;
        Counters::bump(&self.counters.compactions, 1);
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.broken {
            let _ = self.sync_all_pending();
        }
    }
}

/// Opens and locks `dir/LOCK`, writing our process id in it for the error of a second opener.
///
/// The lock is `flock`-style (`File::try_lock`): held per open file, so a second `Spool` in
/// the same process is refused like another process, and released by the kernel when the
/// holder exits, however it exits. The file itself stays.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(SpoolError::io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(SpoolError::Locked {
                dir: dir.to_path_buf(),
                holder: holder.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(SpoolError::io(path)(e)),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(SpoolError::io(&path))?;
    Ok(file)
}

/// Truncates the damaged segment to `valid_len` (durably), keeping a corrupt tail aside, and
/// renames the segments after it out of the journal.
fn set_aside_damage(
    dir: &Path,
    damaged: SegmentName,
    valid_len: u64,
    stop: Stop,
    ignored: &[SegmentName],
) -> Result<(), SpoolError> {
    let path = dir.join(damaged.file_name());
    let io = || SpoolError::io(&path);
    if let Stop::Corrupt { .. } = stop {
        let bytes = fs::read(&path).map_err(io())?;
        let tail = bytes
            .get(usize::try_from(valid_len).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        let aside = dir.join(format!("{}{CORRUPT_SUFFIX}", damaged.file_name()));
        fs::write(&aside, tail).map_err(SpoolError::io(&aside))?;
    }
    let file = OpenOptions::new().write(true).open(&path).map_err(io())?;
    file.set_len(valid_len).map_err(io())?;
    file.sync_all().map_err(io())?;
    for name in ignored {
        let from = dir.join(name.file_name());
        let to = dir.join(format!("{}{IGNORED_SUFFIX}", name.file_name()));
        fs::rename(&from, &to).map_err(SpoolError::io(&from))?;
    }
    Ok(())
}

/// Creates a new, empty log segment for appending.
fn create_log(path: &Path) -> io::Result<File> {
    OpenOptions::new().append(true).create_new(true).open(path)
}

/// Removes a file; one already gone is fine.
fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
