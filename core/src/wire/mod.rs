//! The SMTP wire codec: every byte that crosses a connection, parsed into typed values that
//! borrow the input and written back.
//!
//! - [`line`](mod@line): incremental CRLF framing with a length limit that never buffers an over-long
//!   line.
//! - [`command`]: [`Command`] (client to server) and its parser and writer.
//! - [`path`] and [`params`]: RFC 5321 paths and the MAIL / RCPT parameters, XSHADOW included.
//! - [`reply`] and [`ehlo`]: [`Reply`] (server to client), its incremental reader and writer,
//!   and the typed EHLO keywords.
//! - [`body`]: the DATA dot-stuffing writer, the streaming dot-unstuffing reader and BDAT
//!   chunk accounting.
//! - [`xtext`]: RFC 3461 xtext, used by XSHADOW=, ENVID= and ORCPT=.
//!
//! Partial input is never an error: every reader answers "need more bytes" until it has a
//! whole item.

pub mod body;
pub mod command;
pub mod ehlo;
pub mod line;
pub mod params;
pub mod path;
pub mod reply;
pub mod xtext;

pub use body::{BdatChunk, DotReader, DotStuffer, MessageSize};
pub use command::{Command, CommandError, Verb};
pub use ehlo::{EhloKeywords, EhloReply, SizeLimit};
pub use line::{Frame, LineReader};
pub use params::{BodyType, MailParams, Notify, Orcpt, RcptParams, Ret};
pub use path::{ForwardPath, Mailbox, ReversePath};
pub use reply::{EnhancedStatus, Reply, ReplyError, ReplyReader, ShadowReplyError};

/// The longest context, shadow message id or database id the shadow protocol allows, in bytes.
pub const MAX_SHADOW_FIELD: usize = 255;

/// The default longest command or reply line, CRLF included, in bytes.
pub const DEFAULT_MAX_LINE: usize = 4096;

/// Appends `n` in decimal, without going through `core::fmt` (hot in every writer).
pub(crate) fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    if n < 10 {
        // Most enhanced status numbers.
        out.push(b'0' + n as u8);
        return;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}
