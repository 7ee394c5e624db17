//! One face for a node on any of the runtime bindings, so the command and the demo can pick
//! a runtime with `--runtime tokio|async-std|mio`. Which bindings exist is chosen by the
//! package's features (default: tokio and mio).

use std::io;
use std::net::SocketAddr;

use xshadow_core::node::NodeStats;

/// A runtime binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Runtime {
    /// `xshadow-tokio`: one task for the node, one per connection.
    #[default]
    Tokio,
    /// `xshadow-async-std`: the async-io traits shared by async-std and smol.
    AsyncStd,
    /// `xshadow-mio`: a single-threaded blocking event loop.
    Mio,
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tokio => "tokio",
            Self::AsyncStd => "async-std",
            Self::Mio => "mio",
        })
    }
}

/// How to run a node, whatever the runtime: the settings every binding takes.
pub use xshadow_spool::binding::Settings as NodeSettings;

/// A running node on one of the bindings.
pub enum AnyNode {
    /// On tokio.
    Tokio(xshadow_tokio::RunningNode),
    /// On async-std / smol.
    #[cfg(feature = "async-std")]
    AsyncStd(xshadow_async_std::RunningNode),
    /// On mio.
    #[cfg(feature = "mio")]
    Mio(xshadow_mio::RunningNode),
}

pub(crate) fn not_built(runtime: Runtime) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "this xshadow was built without the {runtime} runtime (cargo feature \"{runtime}\")"
        ),
    )
}

impl AnyNode {
    /// Starts a node on `runtime` (call from within a tokio runtime; the others bring their
    /// own threads).
    pub async fn start(runtime: Runtime, s: NodeSettings) -> io::Result<Self> {
        match runtime {
            Runtime::Tokio => Ok(Self::Tokio(xshadow_tokio::start(s).await?)),
            #[cfg(feature = "async-std")]
            Runtime::AsyncStd => Ok(Self::AsyncStd(xshadow_async_std::start(s).await?)),
            #[cfg(feature = "mio")]
            Runtime::Mio => tokio::task::spawn_blocking(move || xshadow_mio::start(s))
                .await
                .map_err(io::Error::other)?
                .map(Self::Mio),
            #[allow(unreachable_patterns)]
            other => Err(not_built(other)),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Tokio(n) => n.local_addr(),
            #[cfg(feature = "async-std")]
            Self::AsyncStd(n) => n.local_addr(),
            #[cfg(feature = "mio")]
            Self::Mio(n) => n.local_addr(),
        }
    }

    /// Its spool's database id.
    pub fn database_id(&self) -> String {
        match self {
            Self::Tokio(n) => n.database_id().to_owned(),
            #[cfg(feature = "async-std")]
            Self::AsyncStd(n) => n.database_id().to_owned(),
            #[cfg(feature = "mio")]
            Self::Mio(n) => n.database_id().to_owned(),
        }
    }

    /// A snapshot of its queues.
    pub async fn stats(&self) -> io::Result<NodeStats> {
        match self {
            Self::Tokio(n) => n.handle().stats().await,
            #[cfg(feature = "async-std")]
            Self::AsyncStd(n) => n.handle().stats().await,
            #[cfg(feature = "mio")]
            Self::Mio(n) => {
                let handle = n.handle();
                tokio::task::spawn_blocking(move || handle.stats())
                    .await
                    .map_err(io::Error::other)?
            }
        }
    }

    /// A function that asks for a graceful stop, usable from anywhere.
    pub fn stopper(&self) -> Box<dyn Fn() + Send + Sync> {
        match self {
            Self::Tokio(n) => {
                let h = n.handle();
                Box::new(move || h.stop())
            }
            #[cfg(feature = "async-std")]
            Self::AsyncStd(n) => {
                let h = n.handle();
                Box::new(move || h.stop())
            }
            #[cfg(feature = "mio")]
            Self::Mio(n) => {
                let h = n.handle();
                Box::new(move || h.stop())
            }
        }
    }

    /// Asks for a graceful stop.
    pub fn stop(&self) {
        self.stopper()();
    }

    /// Waits until it has stopped.
    pub async fn wait(self) -> io::Result<()> {
        match self {
            Self::Tokio(n) => n.wait().await,
            #[cfg(feature = "async-std")]
            Self::AsyncStd(n) => n.wait().await,
            #[cfg(feature = "mio")]
            Self::Mio(n) => tokio::task::spawn_blocking(move || n.wait())
                .await
                .map_err(io::Error::other)?,
        }
    }

    /// Kills it as a crash would.
    pub fn abort(self) {
        match self {
            Self::Tokio(n) => n.abort(),
            #[cfg(feature = "async-std")]
            Self::AsyncStd(n) => n.abort(),
            #[cfg(feature = "mio")]
            Self::Mio(n) => n.abort(),
        }
    }
}
