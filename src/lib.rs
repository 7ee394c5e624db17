//! xshadow: an SMTP relay with Microsoft Exchange's shadow redundancy (XSHADOW / XQDISCARD).
//!
//! - [`core`]: the sans-IO protocol and redundancy logic (`xshadow-core`).
//! - [`tokio`]: the node on tokio (`xshadow-tokio`).
//! - the `xshadow` command's parts: [`sink`] (a Maildir destination), [`send`] (a load
//!   generator), [`demo`] (the whole promise in one process).
#![forbid(unsafe_code)]

pub use xshadow_core as core;
pub use xshadow_tokio as tokio;

pub mod demo;
pub mod drive;
pub mod send;
pub mod sink;
