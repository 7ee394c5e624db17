//! Group commit: the spool on a dedicated thread, one sync for everything queued meanwhile.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};

use xshadow_core::store::Records;

use crate::error::SpoolError;
use crate::spool::{Counters, Spool, SpoolStats};

/// What the writer thread tells the binding.
#[derive(Debug, Clone)]
pub enum Completion {
    /// The records queued with this token are durable: feed the node `Input::Persisted(token)`.
    Persisted(u64),
    /// Appending or syncing failed. Fatal: no token queued before or after this one and not
    /// already reported is ever reported persisted, and the thread has stopped.
    Failed(Arc<io::Error>),
}

/// Where the writer thread reports completions: a callback, and an optional wake-up called
/// once after each group (to wake a mio `Poll`, an async task, …).
pub struct Completions {
    report: Box<dyn FnMut(Completion) + Send>,
    wake: Option<Box<dyn Fn() + Send>>,
}

impl Completions {
    /// Reports through a std channel (a receiver that is gone is ignored).
    #[must_use]
    pub fn channel(sender: Sender<Completion>) -> Self {
        Self::callback(move |completion| {
            let _ = sender.send(completion);
        })
    }

    /// Reports by calling `report` on the writer thread, once per token, in queue order.
    #[must_use]
    pub fn callback(report: impl FnMut(Completion) + Send + 'static) -> Self {
        Self {
            report: Box::new(report),
            wake: None,
        }
    }

    /// Also calls `wake` once after each group of reports.
    #[must_use]
    pub fn with_wake(mut self, wake: impl Fn() + Send + 'static) -> Self {
        self.wake = Some(Box::new(wake));
        self
    }

    fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake();
        }
    }
}

impl std::fmt::Debug for Completions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completions")
            .field("wake", &self.wake.is_some())
            .finish_non_exhaustive()
    }
}

/// The queue between the handle and the thread.
#[derive(Debug, Default)]
struct Queue {
    batches: Vec<(u64, Records)>,
    /// False once shutdown began or the thread stopped.
    open: bool,
    failed: Option<Arc<io::Error>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A spool running on its own thread: queue records with [`SpoolHandle::persist`], receive
/// [`Completion`]s. Usable from several threads at once (`&self`).
///
/// Dropping it shuts the thread down like [`SpoolHandle::shutdown`], ignoring the result.
#[derive(Debug)]
pub struct SpoolHandle {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    dir: PathBuf,
    thread: Option<JoinHandle<Option<Spool>>>,
}

impl Spool {
    /// Moves the spool to a new thread that group-commits what [`SpoolHandle::persist`] queues.
    ///
    /// The thread waits for work, takes *everything* queued, appends it in queue order, issues
    /// one [`Spool::sync`] for the whole group, and only when that returned Ok reports every
    /// token of the group as [`Completion::Persisted`] (then calls the wake-up once). Records
    /// queued while a sync runs form the next group. An I/O error is reported as
    /// [`Completion::Failed`] and stops the thread; nothing after it is reported persisted.
    pub fn spawn(self, completions: Completions) -> io::Result<SpoolHandle> {
        let shared = Arc::new(Shared::default());
        shared.lock().open = true;
        let counters = self.counters();
        let dir = self.dir().to_path_buf();
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("xshadow-spool".into())
            .spawn(move || run(self, &thread_shared, completions))?;
        Ok(SpoolHandle {
            shared,
            counters,
            dir,
            thread: Some(thread),
        })
    }
}

impl SpoolHandle {
    /// Queues `records` under `token` for the next group commit.
    ///
    /// Fails (and queues nothing) once the writer has failed or stopped.
    pub fn persist(&self, token: u64, records: impl Into<Records>) -> Result<(), SpoolError> {
        let mut queue = self.shared.lock();
        if let Some(source) = &queue.failed {
            return Err(SpoolError::Failed {
                dir: self.dir.clone(),
                source: Arc::clone(source),
            });
        }
        if !queue.open {
            return Err(SpoolError::Stopped {
                dir: self.dir.clone(),
            });
        }
        queue.batches.push((token, records.into()));
        drop(queue);
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Counters of the spool (records, syncs, tokens, …) so far.
    #[must_use]
    pub fn stats(&self) -> SpoolStats {
        self.counters.snapshot()
    }

    /// The spool directory.
    #[must_use]
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Stops taking records, commits everything already queued (reporting it), and gives the
    /// spool back, still locked and synced.
    pub fn shutdown(mut self) -> Result<Spool, SpoolError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<Spool, SpoolError> {
        self.shared.lock().open = false;
        self.shared.ready.notify_one();
        let spool = self.thread.take().and_then(|t| t.join().ok()).flatten();
        let failed = self.shared.lock().failed.clone();
        match (spool, failed) {
            (Some(spool), _) => Ok(spool),
            (None, Some(source)) => Err(SpoolError::Failed {
                dir: self.dir.clone(),
                source,
            }),
            (None, None) => Err(SpoolError::Stopped {
                dir: self.dir.clone(),
            }),
        }
    }
}

impl Drop for SpoolHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

/// The writer thread: returns the spool after a clean shutdown, `None` after a failure.
fn run(spool: Spool, shared: &Shared, mut completions: Completions) -> Option<Spool> {
    let mut spool = Some(spool);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let spool = spool
            .as_mut()
            .expect("the spool is here until the thread ends");
        group_commit(spool, shared, &mut completions)
    }));
    let error = match result {
        Ok(Ok(())) => return spool,
        Ok(Err(e)) => e,
        Err(_) => io::Error::other("the spool writer thread panicked"),
    };
    let error = Arc::new(error);
    {
        let mut queue = shared.lock();
        queue.open = false;
        queue.failed = Some(Arc::clone(&error));
        queue.batches.clear();
    }
    (completions.report)(Completion::Failed(error));
    completions.wake();
    None
}

/// Commits groups until the queue is closed and empty.
fn group_commit(
    spool: &mut Spool,
    shared: &Shared,
    completions: &mut Completions,
) -> io::Result<()> {
    let counters = spool.counters();
    let mut group = Vec::new();
    loop {
        {
            let mut queue = shared.lock();
            while queue.batches.is_empty() && queue.open {
                queue = shared
                    .ready
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.batches.is_empty() {
                break;
            }
            std::mem::swap(&mut queue.batches, &mut group);
        }
        for (_, records) in &group {
            spool.append(records)?;
        }
        spool.sync()?;
        counters
            .tokens
            .fetch_add(group.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (token, _) in group.drain(..) {
            (completions.report)(Completion::Persisted(token));
        }
        completions.wake();
    }
    spool.sync()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use xshadow_core::store::Record;

    use super::*;
    use crate::SpoolOptions;

    fn temp_dir(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "xshadow-spool-unit-{name}-{}-{nanos}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn record(n: u64) -> Record {
        Record::NextMessageId { next: n }
    }

    #[test]
    fn a_failed_sync_is_reported_as_failed_and_no_token_of_its_group_or_later_is_persisted() {
        let dir = temp_dir("failed-sync");
        let (mut spool, _) = Spool::open(&dir, SpoolOptions::default()).unwrap();
        spool.fail_next_sync = true;
        let (tx, rx) = mpsc::channel();
        let handle = spool.spawn(Completions::channel(tx)).unwrap();
        handle.persist(1, vec![record(1)]).unwrap();
        let Completion::Failed(error) = rx.recv().unwrap() else {
            panic!("a failed sync reported as persisted");
        };
        assert!(error.to_string().contains("injected"), "{error}");
        let refused = handle.persist(2, vec![record(2)]).unwrap_err();
        assert!(matches!(refused, SpoolError::Failed { .. }), "{refused}");
        assert!(refused.to_string().contains("failed"), "{refused}");
        assert!(matches!(handle.shutdown(), Err(SpoolError::Failed { .. })));
        assert!(
            rx.try_iter()
                .all(|c| !matches!(c, Completion::Persisted(_)))
        );
        // The lock is released with the failed spool: a restart recovers what reached the disk.
        let (spool, _) = Spool::open(&dir, SpoolOptions::default()).unwrap();
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_spool_refuses_work_after_an_io_error() {
        let dir = temp_dir("broken");
        let (mut spool, _) = Spool::open(&dir, SpoolOptions::default()).unwrap();
        spool.append(&[record(1)]).unwrap();
        spool.fail_next_sync = true;
        assert!(spool.sync().is_err());
        let error = spool.append(&[record(2)]).unwrap_err();
        assert!(error.to_string().contains("open it again"), "{error}");
        assert!(spool.sync().is_err());
        drop(spool);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_panicking_completion_callback_is_reported_as_a_failure() {
        let dir = temp_dir("panic");
        let (spool, _) = Spool::open(&dir, SpoolOptions::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        let handle = spool
            .spawn(Completions::callback(move |completion| {
                if let Completion::Persisted(_) = completion {
                    panic!("the binding's bug");
                }
                tx.send(completion).unwrap();
            }))
            .unwrap();
        handle.persist(1, vec![record(1)]).unwrap();
        assert!(matches!(rx.recv().unwrap(), Completion::Failed(_)));
        assert!(handle.persist(2, vec![record(2)]).is_err());
        drop(handle);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
