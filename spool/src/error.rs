//! The spool's error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Why a spool could not be opened, or why its writer thread stopped.
#[derive(Debug)]
pub enum SpoolError {
    /// A file system operation on `path` failed.
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Another process, or another `Spool` in this process, holds the directory's lock file.
    Locked {
        /// The spool directory.
        dir: PathBuf,
        /// The process id written in the lock file by its holder, when readable.
        holder: Option<u32>,
    },
    /// The writer thread hit an I/O error: nothing queued since is, or will be, reported persisted.
    Failed {
        /// The spool directory.
        dir: PathBuf,
        /// The error that stopped the writer (also reported through the completions).
        source: Arc<io::Error>,
    },
    /// The writer thread is gone without an I/O error (it panicked).
    Stopped {
        /// The spool directory.
        dir: PathBuf,
    },
}

impl SpoolError {
    /// An [`SpoolError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "spool: {}: {source}", path.display()),
            Self::Locked { dir, holder } => {
                write!(f, "spool directory {} is already in use ", dir.display())?;
                match holder {
                    Some(pid) if *pid == std::process::id() => {
                        write!(f, "by another spool of this process (pid {pid})")
                    }
                    Some(pid) => write!(f, "by process {pid}"),
                    None => write!(f, "by another process"),
                }?;
                write!(f, ": its LOCK file is held")
            }
            Self::Failed { dir, source } => write!(
                f,
                "spool {} failed, nothing more is persisted: {source}",
                dir.display()
            ),
            Self::Stopped { dir } => {
                write!(f, "spool {}: the writer thread stopped", dir.display())
            }
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Failed { source, .. } => Some(&**source),
            Self::Locked { .. } | Self::Stopped { .. } => None,
        }
    }
}
