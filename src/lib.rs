//! xshadow: an SMTP relay with Microsoft Exchange's shadow redundancy (XSHADOW / XQDISCARD).
//!
//! - [`core`]: the sans-IO protocol and redundancy logic (`xshadow-core`).
//! - [`tokio`]: the node on tokio (`xshadow-tokio`); with the `mio` feature (default) also
//!   [`mio`], with the `async-std` feature [`async_std`]; [`runtime`] picks one at run time.
//! - the `xshadow` command's parts: [`sink`] (a Maildir destination), [`send`] (a load
//!   generator), [`demo`] (the whole promise in one process).
#![forbid(unsafe_code)]

#[cfg(feature = "async-std")]
pub use xshadow_async_std as async_std;
pub use xshadow_core as core;
#[cfg(feature = "mio")]
pub use xshadow_mio as mio;
pub use xshadow_tokio as tokio;

pub mod demo;
pub mod drive;
pub mod runtime;
pub mod send;
pub mod sink;
