//! xshadow: SMTP relay with shadow redundancy.
#![forbid(unsafe_code)]
pub use xshadow_core as core;
