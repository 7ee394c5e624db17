//! The durable records a relay node emits, their byte encoding, and replay into a recovered
//! state (DESIGN.md §3 item 5, §6).
//!
//! A node never acts on a change that must survive a crash until the driver reports it
//! persisted: it emits a [`Record`] in a `Persist` output, the spool appends its [`encode`]d
//! bytes to the journal and syncs, and only then is the change real. After a crash the spool
//! reads the journal back with [`decode`] and rebuilds a [`StoreState`] with
//! [`StoreState::replay`].
//!
//! # The promise
//!
//! **A torn or corrupt tail record is ignored; nothing before it is.** [`decode`] returns every
//! whole, checksummed record up to the first one that is incomplete (a write cut short by the
//! crash) or damaged (bad length, checksum, version or payload), says where that is
//! ([`Decoded::valid_len`]) and why it stopped ([`Stop`]). It never panics and never allocates
//! more than the bytes it was given, whatever they hold. The spool truncates the journal to
//! `valid_len` before appending again.
//!
//! # Encoding (format version 1)
//!
//! Each record is a frame `[len: u32 LE][crc: u32 LE][payload: len bytes]`, where `crc` is the
//! CRC32C of the payload and the payload is `[version: u8 = 1][tag: u8][fields...]`. Fields
//! are u64 LE integers, and strings and byte blobs as a u32 LE length followed by the bytes
//! (strings are UTF-8). An envelope is the exact wire line (CRLF included) of its `MAIL FROM:`
//! command as a blob, then a u32 LE recipient count, then each `RCPT TO:` line as a blob: the
//! SMTP codec ([`Command::write_to`] / [`Command::parse`]) is the address format. An optional
//! field is a `0`/`1` byte, then the value if `1`. A payload must be consumed exactly: trailing
//! bytes make it corrupt.
//!
//! | tag | record | fields |
//! |---|---|---|
//! | 1 | [`Record::DatabaseId`] | id: str |
//! | 2 | [`Record::Accepted`] | id: u64, at_ms: u64, envelope, body: blob, primary_for: opt(context: str, discard_id: str) |
//! | 3 | [`Record::Shadowed`] | id: u64, primary: str, shadow_id: str, database_id: str, at_ms: u64 |
//! | 4 | [`Record::Resubmitted`] | id: u64 |
//! | 5 | [`Record::Done`] | id: u64 |
//! | 6 | [`Record::DiscardQueued`] | context: str, discard_id: str, at_ms: u64 |
//! | 7 | [`Record::DiscardsForgotten`] | count: u32, then count × (context: str, discard_id: str) |
//! | 8 | [`Record::NextMessageId`] | next: u64 |
//!
//! A reader refuses a version it does not know (it reads as corrupt) rather than guess.
//!
//! Two things a writer must keep true, because [`encode`] cannot refuse a record and a record
//! the reader refuses ends recovery at that point: a record's payload stays under
//! [`MAX_RECORD_LEN`] (bound message sizes well below it), and an envelope is one the SMTP
//! codec reads back (every envelope built from parsed MAIL / RCPT commands is).

use bytes::Bytes;
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::session::{Envelope, Recipient, Recipients};
use crate::shadow::MessageId;
use crate::wire::Command;

/// The format version written in every payload.
pub const FORMAT_VERSION: u8 = 1;

/// The largest payload a reader accepts, in bytes (1 GiB); a longer length field is corrupt.
pub const MAX_RECORD_LEN: usize = 1 << 30;

/// Bytes of the frame header before the payload: length and checksum.
const HEADER_LEN: usize = 8;

const TAG_DATABASE_ID: u8 = 1;
const TAG_ACCEPTED: u8 = 2;
const TAG_SHADOWED: u8 = 3;
const TAG_RESUBMITTED: u8 = 4;
const TAG_DONE: u8 = 5;
const TAG_DISCARD_QUEUED: u8 = 6;
const TAG_DISCARDS_FORGOTTEN: u8 = 7;
const TAG_NEXT_MESSAGE_ID: u8 = 8;

/// One change that must survive a crash. A node emits these in `Persist` outputs and acts on them only after the driver reports them persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The store's identity, written once when the store is created (PROTOCOL.md §1: base64 of 16 bytes).
    DatabaseId {
        /// The primary database id this node announces in its XSHADOW replies.
        id: String,
    },
    /// A message was accepted (before its 250) or created (a bounce, or the not-yet-delivered part of a partially delivered message).
    Accepted {
        /// The node-local id of the message.
        id: MessageId,
        /// When it was accepted, in unix milliseconds.
        at_ms: u64,
        /// Sender, recipients and their parameters (shared with the node's message).
        envelope: Arc<Envelope>,
        /// The message content, as received (not dot-stuffed).
        body: Bytes,
        /// Set when we are the primary for this message and owe its shadow a discard event.
        primary_for: Option<PrimaryFor>,
    },
    /// The next hop took the message with XSHADOW=: it is now a shadow copy held for `primary`.
    Shadowed {
        /// The node-local id of the message.
        id: MessageId,
        /// The primary that took it (its route name or host).
        primary: Arc<str>,
        /// The shadow message id sent as `XSHADOW=`.
        shadow_id: Arc<str>,
        /// The primary's database id when it took the message.
        database_id: Arc<str>,
        /// When the primary said 250, in unix milliseconds.
        at_ms: u64,
    },
    /// The copy goes back to the queue (its primary failed, changed database id or broke the protocol).
    Resubmitted {
        /// The node-local id of the message.
        id: MessageId,
    },
    /// The message is fully handled (delivered, bounced, expired, or its shadow copy discarded): forget it.
    Done {
        /// The node-local id of the message.
        id: MessageId,
    },
    /// A discard event owed to a shadow server (we are its primary).
    DiscardQueued {
        /// The shadow context the event is filed under.
        context: Arc<str>,
        /// The shadow message id the shadow gave with `XSHADOW=`.
        discard_id: Arc<str>,
        /// When the event was queued, in unix milliseconds.
        at_ms: u64,
    },
    /// Discard events the shadow confirmed reading, or that expired: forget them.
    DiscardsForgotten {
        /// The events as (context, discard_id) pairs.
        events: Vec<(Arc<str>, Arc<str>)>,
    },
    /// Message ids below `next` are taken: a recovered node allocates from here on (written by compaction).
    NextMessageId {
        /// The lowest message id not yet used.
        next: u64,
    },
}

/// We are the primary for this message: when it is handled, a discard event is owed to `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryFor {
    /// The shadow context the shadow server gave with XSHADOW (shared by its messages).
    pub context: Arc<str>,
    /// The shadow message id it gave with `XSHADOW=` on MAIL.
    pub discard_id: Arc<str>,
}

/// The records of one `Persist` batch. One is kept inline: most batches are one message's
/// change (two inline made every output larger and cost more than the allocations it saved).
pub type Records = SmallVec<[Record; 1]>;

/// What [`decode`] read: the whole records, how far they reach, and why it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Every whole, valid record before the stop, in journal order.
    pub records: Vec<Record>,
    /// Bytes from the start of the buffer covered by `records`: where the next record belongs.
    pub valid_len: usize,
    /// Why decoding stopped at `valid_len`.
    pub stop: Stop,
}

/// Why [`decode`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The buffer ends exactly after the last record.
    Clean,
    /// The last record is incomplete: a write cut short. Not an error after a crash.
    TornTail,
    /// The record starting at `offset` has a bad length, checksum, version or payload.
    Corrupt {
        /// Where the refused record starts (equal to `valid_len`).
        offset: usize,
    },
}

/// Appends the frame of `record` (length, checksum, payload) to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(FORMAT_VERSION);
    match record {
        Record::DatabaseId { id } => {
            out.push(TAG_DATABASE_ID);
            put_bytes(out, id.as_bytes());
        }
        Record::Accepted {
            id,
            at_ms,
            envelope,
            body,
            primary_for,
        } => {
            out.push(TAG_ACCEPTED);
            put_u64(out, id.0);
            put_u64(out, *at_ms);
            put_envelope(out, envelope);
            put_bytes(out, body);
            match primary_for {
                None => out.push(0),
                Some(p) => {
                    out.push(1);
                    put_bytes(out, p.context.as_bytes());
                    put_bytes(out, p.discard_id.as_bytes());
                }
            }
        }
        Record::Shadowed {
            id,
            primary,
            shadow_id,
            database_id,
            at_ms,
        } => {
            out.push(TAG_SHADOWED);
            put_u64(out, id.0);
            put_bytes(out, primary.as_bytes());
            put_bytes(out, shadow_id.as_bytes());
            put_bytes(out, database_id.as_bytes());
            put_u64(out, *at_ms);
        }
        Record::Resubmitted { id } => {
            out.push(TAG_RESUBMITTED);
            put_u64(out, id.0);
        }
        Record::Done { id } => {
            out.push(TAG_DONE);
            put_u64(out, id.0);
        }
        Record::DiscardQueued {
            context,
            discard_id,
            at_ms,
        } => {
            out.push(TAG_DISCARD_QUEUED);
            put_bytes(out, context.as_bytes());
            put_bytes(out, discard_id.as_bytes());
            put_u64(out, *at_ms);
        }
        Record::DiscardsForgotten { events } => {
            out.push(TAG_DISCARDS_FORGOTTEN);
            put_u32(out, len_u32(events.len()));
            for (context, discard_id) in events {
                put_bytes(out, context.as_bytes());
                put_bytes(out, discard_id.as_bytes());
            }
        }
        Record::NextMessageId { next } => {
            out.push(TAG_NEXT_MESSAGE_ID);
            put_u64(out, *next);
        }
    }
    let payload = &out[start + HEADER_LEN..];
    let len = len_u32(payload.len()).to_le_bytes();
    let crc = crc32c::crc32c(payload).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + HEADER_LEN].copy_from_slice(&crc);
}

/// Reads the records of `buf` in order, stopping cleanly at the first torn or corrupt one.
#[must_use]
pub fn decode(buf: &[u8]) -> Decoded {
    let mut records = Vec::new();
    let mut offset = 0;
    let stop = loop {
        let rest = buf.get(offset..).unwrap_or_default();
        if rest.is_empty() {
            break Stop::Clean;
        }
        match decode_frame(rest) {
            Ok((record, len)) => {
                records.push(record);
                offset += len;
            }
            Err(Bad::Torn) => break Stop::TornTail,
            Err(Bad::Corrupt) => break Stop::Corrupt { offset },
        }
    };
    Decoded {
        records,
        valid_len: offset,
        stop,
    }
}

/// Why a frame could not be read.
enum Bad {
    Torn,
    Corrupt,
}

/// Reads the frame at the start of a non-empty `buf`: the record and the frame's length.
fn decode_frame(buf: &[u8]) -> Result<(Record, usize), Bad> {
    let (header, rest) = buf.split_first_chunk::<HEADER_LEN>().ok_or(Bad::Torn)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len = usize::try_from(u32::from_le_bytes([l0, l1, l2, l3])).map_err(|_| Bad::Corrupt)?;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if len > MAX_RECORD_LEN {
        return Err(Bad::Corrupt);
    }
    let payload = rest.get(..len).ok_or(Bad::Torn)?;
    if crc32c::crc32c(payload) != crc {
        return Err(Bad::Corrupt);
    }
    let record = decode_payload(payload).ok_or(Bad::Corrupt)?;
    Ok((record, HEADER_LEN + len))
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut r = Reader { buf: payload };
    if r.u8()? != FORMAT_VERSION {
        return None;
    }
    let record = match r.u8()? {
        TAG_DATABASE_ID => Record::DatabaseId { id: r.string()? },
        TAG_ACCEPTED => Record::Accepted {
            id: MessageId(r.u64()?),
            at_ms: r.u64()?,
            envelope: Arc::new(r.envelope()?),
            body: Bytes::copy_from_slice(r.bytes()?),
            primary_for: match r.u8()? {
                0 => None,
                1 => Some(PrimaryFor {
                    context: r.shared()?,
                    discard_id: r.shared()?,
                }),
                _ => return None,
            },
        },
        TAG_SHADOWED => Record::Shadowed {
            id: MessageId(r.u64()?),
            primary: r.shared()?,
            shadow_id: r.shared()?,
            database_id: r.shared()?,
            at_ms: r.u64()?,
        },
        TAG_RESUBMITTED => Record::Resubmitted {
            id: MessageId(r.u64()?),
        },
        TAG_DONE => Record::Done {
            id: MessageId(r.u64()?),
        },
        TAG_DISCARD_QUEUED => Record::DiscardQueued {
            context: r.shared()?,
            discard_id: r.shared()?,
            at_ms: r.u64()?,
        },
        TAG_DISCARDS_FORGOTTEN => {
            let count = r.u32()?;
            // No capacity from the count: a corrupt count cannot drive an allocation, and every
            // pair consumes at least eight bytes, so the loop ends when the payload does.
            let mut events = Vec::new();
            for _ in 0..count {
                events.push((r.shared()?, r.shared()?));
            }
            Record::DiscardsForgotten { events }
        }
        TAG_NEXT_MESSAGE_ID => Record::NextMessageId { next: r.u64()? },
        _ => return None,
    };
    r.buf.is_empty().then_some(record)
}

/// A cursor over a payload; every read is bounded by the bytes that remain.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.buf.split_first_chunk::<4>()?;
        self.buf = rest;
        Some(u32::from_le_bytes(*head))
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.buf.split_first_chunk::<8>()?;
        self.buf = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_owned)
    }

    /// A UTF-8 string blob, shared.
    fn shared(&mut self) -> Option<Arc<str>> {
        std::str::from_utf8(self.bytes()?).ok().map(Arc::from)
    }

    /// One command line blob: the exact wire bytes, CRLF included.
    fn command(&mut self) -> Option<Command<'static>> {
        let line = self.bytes()?.strip_suffix(b"\r\n")?;
        Command::parse(line).ok().map(Command::into_owned)
    }

    fn envelope(&mut self) -> Option<Envelope> {
        let Command::Mail { from, params } = self.command()? else {
            return None;
        };
        let count = self.u32()?;
        let mut recipients = Recipients::new();
        for _ in 0..count {
            let Command::Rcpt { to, params } = self.command()? else {
                return None;
            };
            recipients.push(Recipient { to, params });
        }
        Some(Envelope {
            from,
            params,
            recipients,
        })
    }
}

/// `n` as a u32 length field; a length past u32 (never valid: over [`MAX_RECORD_LEN`]) saturates
/// so that the reader refuses the record instead of misreading it.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, len_u32(bytes.len()));
    out.extend_from_slice(bytes);
}

/// Writes `command`'s wire line (with CRLF) as a length-prefixed blob.
fn put_command(out: &mut Vec<u8>, command: &Command<'_>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    command.write_to(out);
    let len = len_u32(out.len() - at - 4).to_le_bytes();
    out[at..at + 4].copy_from_slice(&len);
}

fn put_envelope(out: &mut Vec<u8>, envelope: &Envelope) {
    put_command(
        out,
        &Command::Mail {
            from: envelope.from.clone(),
            params: envelope.params.clone(),
        },
    );
    put_u32(out, len_u32(envelope.recipients.len()));
    for recipient in &envelope.recipients {
        put_command(
            out,
            &Command::Rcpt {
                to: recipient.to.clone(),
                params: recipient.params.clone(),
            },
        );
    }
}

/// What a node knows after replaying its records: the recovered queue and discard events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreState {
    /// The store's database id, once written.
    pub database_id: Option<String>,
    /// Every message not yet done: queued, or held as a shadow copy.
    pub messages: BTreeMap<MessageId, StoredMessage>,
    /// Discard events owed to shadow servers, oldest first.
    pub discard_events: Vec<StoredDiscardEvent>,
    /// The lowest message id never used: a recovered node allocates from here on.
    pub next_message_id: u64,
}

/// A recovered message: queued when `shadow` is `None`, otherwise held for its primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The node-local id of the message.
    pub id: MessageId,
    /// When it was accepted, in unix milliseconds.
    pub at_ms: u64,
    /// Sender, recipients and their parameters.
    pub envelope: Arc<Envelope>,
    /// The message content.
    pub body: Bytes,
    /// Set when we are the primary for this message and owe its shadow a discard event.
    pub primary_for: Option<PrimaryFor>,
    /// Set while the message is a shadow copy held for a primary.
    pub shadow: Option<StoredCopy>,
}

/// Where a shadow copy is held: the primary that took the message and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCopy {
    /// The primary that took the message.
    pub primary: Arc<str>,
    /// The shadow message id sent as `XSHADOW=`.
    pub shadow_id: Arc<str>,
    /// The primary's database id when it took the message.
    pub database_id: Arc<str>,
    /// When the primary said 250, in unix milliseconds.
    pub at_ms: u64,
}

/// A recovered discard event owed to a shadow server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDiscardEvent {
    /// The shadow context the event is filed under.
    pub context: Arc<str>,
    /// The shadow message id to report with XQDISCARD.
    pub discard_id: Arc<str>,
    /// When the event was queued, in unix milliseconds.
    pub at_ms: u64,
}

impl StoreState {
    /// Applies one record; records about message ids not in the state are ignored.
    ///
    /// - `DatabaseId`: the first one wins; a later one (equal or not) is ignored, since the
    ///   database id is created once with the store.
    /// - `Accepted`: inserts the message (replacing one with the same id, with no shadow
    ///   copy) and moves `next_message_id` past its id (saturating at `u64::MAX`).
    /// - `Shadowed` sets the message's shadow copy, `Resubmitted` clears it (queued again),
    ///   `Done` removes the message.
    /// - `DiscardQueued` appends an event (oldest first, duplicates kept); `DiscardsForgotten`
    ///   removes every event matching a pair, the context compared ASCII case-insensitively
    ///   and the discard id exactly; pairs that match nothing are ignored.
    /// - `NextMessageId` raises `next_message_id` to at least its value.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::DatabaseId { id } => {
                if self.database_id.is_none() {
                    self.database_id = Some(id.clone());
                }
            }
            Record::Accepted {
                id,
                at_ms,
                envelope,
                body,
                primary_for,
            } => {
                self.next_message_id = self.next_message_id.max(id.0.saturating_add(1));
                self.messages.insert(
                    *id,
                    StoredMessage {
                        id: *id,
                        at_ms: *at_ms,
                        envelope: Arc::clone(envelope),
                        body: body.clone(),
                        primary_for: primary_for.clone(),
                        shadow: None,
                    },
                );
            }
            Record::Shadowed {
                id,
                primary,
                shadow_id,
                database_id,
                at_ms,
            } => {
                if let Some(message) = self.messages.get_mut(id) {
                    message.shadow = Some(StoredCopy {
                        primary: primary.clone(),
                        shadow_id: shadow_id.clone(),
                        database_id: database_id.clone(),
                        at_ms: *at_ms,
                    });
                }
            }
            Record::Resubmitted { id } => {
                if let Some(message) = self.messages.get_mut(id) {
                    message.shadow = None;
                }
            }
            Record::Done { id } => {
                self.messages.remove(id);
            }
            Record::DiscardQueued {
                context,
                discard_id,
                at_ms,
            } => self.discard_events.push(StoredDiscardEvent {
                context: context.clone(),
                discard_id: discard_id.clone(),
                at_ms: *at_ms,
            }),
            Record::DiscardsForgotten { events } => {
                if events.is_empty() {
                    return;
                }
                let forgotten: BTreeSet<(String, &str)> = events
                    .iter()
                    .map(|(context, id)| (context.to_ascii_lowercase(), &**id))
                    .collect();
                self.discard_events.retain(|event| {
                    !forgotten.contains(&(event.context.to_ascii_lowercase(), &*event.discard_id))
                });
            }
            Record::NextMessageId { next } => {
                self.next_message_id = self.next_message_id.max(*next);
            }
        }
    }

    /// The state after applying `records` in order to an empty one.
    pub fn replay<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut state = Self::default();
        for record in records {
            state.apply(record);
        }
        state
    }

    /// A minimal list of records that replays to this state (for compaction).
    ///
    /// In order: the database id, `NextMessageId` when the live messages alone would not
    /// restore `next_message_id`, each message (`Accepted`, then `Shadowed` for a held copy)
    /// by id, and each discard event oldest first.
    pub fn live_records(&self) -> Vec<Record> {
        let mut records =
            Vec::with_capacity(2 + self.messages.len() * 2 + self.discard_events.len());
        if let Some(id) = &self.database_id {
            records.push(Record::DatabaseId { id: id.clone() });
        }
        let implied = self
            .messages
            .keys()
            .next_back()
            .map_or(0, |id| id.0.saturating_add(1));
        if self.next_message_id > implied {
            records.push(Record::NextMessageId {
                next: self.next_message_id,
            });
        }
        for message in self.messages.values() {
            records.push(Record::Accepted {
                id: message.id,
                at_ms: message.at_ms,
                envelope: Arc::clone(&message.envelope),
                body: message.body.clone(),
                primary_for: message.primary_for.clone(),
            });
            if let Some(copy) = &message.shadow {
                records.push(Record::Shadowed {
                    id: message.id,
                    primary: copy.primary.clone(),
                    shadow_id: copy.shadow_id.clone(),
                    database_id: copy.database_id.clone(),
                    at_ms: copy.at_ms,
                });
            }
        }
        for event in &self.discard_events {
            records.push(Record::DiscardQueued {
                context: event.context.clone(),
                discard_id: event.discard_id.clone(),
                at_ms: event.at_ms,
            });
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::borrow::Cow;

    use proptest::prelude::*;

    use crate::wire::params::{BodyType, MailParams, Notify, Orcpt, OtherParam, RcptParams, Ret};
    use crate::wire::path::{ForwardPath, Mailbox, ReversePath};

    /// An envelope from wire lines (without CRLF), read with the SMTP codec.
    fn envelope(mail: &str, rcpts: &[&str]) -> Arc<Envelope> {
        let Ok(Command::Mail { from, params }) = Command::parse(mail.as_bytes()) else {
            panic!("not a MAIL line: {mail}");
        };
        let recipients = rcpts
            .iter()
            .map(|line| match Command::parse(line.as_bytes()) {
                Ok(Command::Rcpt { to, params }) => Recipient {
                    to: to.into_owned(),
                    params: params.into_owned(),
                },
                other => panic!("not a RCPT line: {line}: {other:?}"),
            })
            .collect();
        Arc::new(Envelope {
            from: from.into_owned(),
            params: params.into_owned(),
            recipients,
        })
    }

    fn encode_all(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for record in records {
            encode(record, &mut buf);
            ends.push(buf.len());
        }
        (buf, ends)
    }

    /// A frame around an arbitrary payload, with a correct length and checksum.
    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn blob(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_le_bytes());
        out.extend_from_slice(bytes);
    }

    fn accepted(id: u64, envelope: Arc<Envelope>, body: &[u8]) -> Record {
        Record::Accepted {
            id: MessageId(id),
            at_ms: 1_700_000_000_000u64.wrapping_add(id),
            envelope,
            body: Bytes::copy_from_slice(body),
            primary_for: None,
        }
    }

    fn simple_envelope() -> Arc<Envelope> {
        envelope(
            "MAIL FROM:<alice@example.com>",
            &["RCPT TO:<bob@example.net>"],
        )
    }

    /// One of every kind, with the envelopes the brief names.
    fn vector_table() -> Vec<Record> {
        vec![
            Record::DatabaseId {
                id: "3q2+7wAAAAAAAAAAAAAAAA==".into(),
            },
            Record::Accepted {
                id: MessageId(1),
                at_ms: 1_700_000_000_000,
                envelope: envelope(
                    "MAIL FROM:<alice@example.com> SIZE=2048 BODY=8BITMIME",
                    &["RCPT TO:<bob@example.net>", "RCPT TO:<postmaster>"],
                ),
                body: Bytes::copy_from_slice(&b"Subject: hi\r\n\r\nhello\r\n.\r\n"[..]),
                primary_for: None,
            },
            Record::Accepted {
                id: MessageId(2),
                at_ms: 0,
                envelope: envelope("MAIL FROM:<>", &["RCPT TO:<alice@example.com>"]),
                body: Bytes::copy_from_slice(&b""[..]),
                primary_for: None,
            },
            Record::Accepted {
                id: MessageId(3),
                at_ms: u64::MAX,
                envelope: envelope(
                    "MAIL FROM:<пользователь@пример.рф> SMTPUTF8 BODY=8BITMIME",
                    &[
                        "RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>",
                        "RCPT TO:<\"a b\"@[192.0.2.1]>",
                    ],
                ),
                body: Bytes::copy_from_slice("Grüße\r\n".as_bytes()),
                primary_for: None,
            },
            Record::Accepted {
                id: MessageId(4),
                at_ms: 42,
                envelope: envelope(
                    "MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1 \
                     XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301 X-ODD=v",
                    &[
                        "RCPT TO:<c@d.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c+40d.example",
                        "RCPT TO:<e@[IPv6:2001:db8::7]> NOTIFY=NEVER",
                    ],
                ),
                body: Bytes::copy_from_slice(&[0u8, 1, 2, 0xff, b'\r', b'\n'][..]),
                primary_for: Some(PrimaryFor {
                    context: "Hub1.Example".into(),
                    discard_id: "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into(),
                }),
            },
            Record::Shadowed {
                id: MessageId(1),
                primary: "edge1.example".into(),
                shadow_id: "7a1c0c8e-0000-4000-8000-000000000001".into(),
                database_id: "AAAAAAAAAAAAAAAAAAAAAA==".into(),
                at_ms: 1_700_000_000_500,
            },
            Record::Resubmitted { id: MessageId(1) },
            Record::Done {
                id: MessageId(u64::MAX),
            },
            Record::DiscardQueued {
                context: "hub1.example".into(),
                discard_id: "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into(),
                at_ms: 7,
            },
            Record::DiscardsForgotten { events: vec![] },
            Record::DiscardsForgotten {
                events: vec![
                    ("HUB1.example".into(), "a".into()),
                    ("".into(), "".into()),
                    ("ctx".into(), "é".into()),
                ],
            },
            Record::NextMessageId { next: 99 },
        ]
    }

    #[test]
    fn crc32c_is_the_castagnoli_checksum() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn every_record_kind_in_the_vector_table_round_trips() {
        for record in vector_table() {
            let mut buf = Vec::new();
            encode(&record, &mut buf);
            let decoded = decode(&buf);
            assert_eq!(decoded.stop, Stop::Clean, "{record:?}");
            assert_eq!(decoded.valid_len, buf.len());
            assert_eq!(decoded.records, vec![record]);
        }
    }

    #[test]
    fn the_whole_vector_table_round_trips_as_one_stream() {
        let records = vector_table();
        let (buf, _) = encode_all(&records);
        let decoded = decode(&buf);
        assert_eq!(decoded.stop, Stop::Clean);
        assert_eq!(decoded.valid_len, buf.len());
        assert_eq!(decoded.records, records);
    }

    #[test]
    fn encode_appends_without_touching_what_is_already_in_the_buffer() {
        let mut buf = b"keep".to_vec();
        encode(&Record::Done { id: MessageId(1) }, &mut buf);
        assert_eq!(&buf[..4], b"keep");
        assert_eq!(
            decode(&buf[4..]).records,
            vec![Record::Done { id: MessageId(1) }]
        );
    }

    #[test]
    fn the_frame_is_length_checksum_then_version_tag_and_fields() {
        let mut buf = Vec::new();
        encode(
            &Record::Done {
                id: MessageId(0x0102),
            },
            &mut buf,
        );
        let payload = [1, TAG_DONE, 0x02, 0x01, 0, 0, 0, 0, 0, 0];
        assert_eq!(buf, frame(&payload));
        assert_eq!(&buf[..4], &[10, 0, 0, 0]);
        assert_eq!(buf[4..8], crc32c::crc32c(&payload).to_le_bytes());

        let mut buf = Vec::new();
        encode(
            &Record::DiscardQueued {
                context: "h".into(),
                discard_id: "ab".into(),
                at_ms: 5,
            },
            &mut buf,
        );
        let payload = [
            1,
            TAG_DISCARD_QUEUED,
            1,
            0,
            0,
            0,
            b'h',
            2,
            0,
            0,
            0,
            b'a',
            b'b',
            5,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        assert_eq!(buf, frame(&payload));
    }

    #[test]
    fn the_format_of_version_1_does_not_drift() {
        // Pinned bytes (checksums cross-checked with an independent CRC32C): if this changes, old journals no longer read. Bump FORMAT_VERSION instead.
        let mut buf = Vec::new();
        encode(&Record::DatabaseId { id: "AA==".into() }, &mut buf);
        encode(&Record::Resubmitted { id: MessageId(7) }, &mut buf);
        assert_eq!(
            buf,
            [
                10, 0, 0, 0, 0xE1, 0x15, 0xD6, 0xE6, 1, 1, 4, 0, 0, 0, b'A', b'A', b'=',
                b'=', //
                10, 0, 0, 0, 0xF9, 0x4C, 0x1D, 0x0C, 1, 4, 7, 0, 0, 0, 0, 0, 0, 0,
            ]
        );
    }

    #[test]
    fn the_envelope_is_stored_as_the_exact_wire_lines_of_mail_and_rcpt() {
        let env = envelope(
            "MAIL FROM:<a@b.example> SIZE=5 XSHADOW=x",
            &["RCPT TO:<c@d.example>", "RCPT TO:<postmaster>"],
        );
        let mut buf = Vec::new();
        encode(&accepted(9, env, b"body"), &mut buf);
        let mut expected = vec![1, TAG_ACCEPTED];
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(&1_700_000_000_009u64.to_le_bytes());
        blob(
            &mut expected,
            b"MAIL FROM:<a@b.example> SIZE=5 XSHADOW=x\r\n",
        );
        expected.extend_from_slice(&2u32.to_le_bytes());
        blob(&mut expected, b"RCPT TO:<c@d.example>\r\n");
        blob(&mut expected, b"RCPT TO:<postmaster>\r\n");
        blob(&mut expected, b"body");
        expected.push(0);
        assert_eq!(buf, frame(&expected));
    }

    #[test]
    fn an_empty_buffer_decodes_cleanly_to_nothing() {
        assert_eq!(
            decode(&[]),
            Decoded {
                records: vec![],
                valid_len: 0,
                stop: Stop::Clean,
            }
        );
    }

    #[test]
    fn truncating_a_stream_at_every_byte_decodes_exactly_the_whole_records_before_the_cut() {
        let records = vector_table();
        let (buf, ends) = encode_all(&records);
        for cut in 0..=buf.len() {
            let decoded = decode(&buf[..cut]);
            let whole = ends.iter().take_while(|&&end| end <= cut).count();
            let valid_len = if whole == 0 { 0 } else { ends[whole - 1] };
            assert_eq!(decoded.records, records[..whole], "cut at {cut}");
            assert_eq!(decoded.valid_len, valid_len, "cut at {cut}");
            let expected = if cut == valid_len {
                Stop::Clean
            } else {
                Stop::TornTail
            };
            assert_eq!(decoded.stop, expected, "cut at {cut}");
        }
    }

    #[test]
    fn flipping_any_byte_of_any_record_stops_there_and_keeps_every_record_before_it() {
        let records = vector_table();
        let (buf, ends) = encode_all(&records);
        for (index, &end) in ends.iter().enumerate() {
            let start = if index == 0 { 0 } else { ends[index - 1] };
            for at in start..end {
                for flip in [0x01, 0x80, 0xff] {
                    let mut damaged = buf.clone();
                    damaged[at] ^= flip;
                    let decoded = decode(&damaged);
                    assert_eq!(decoded.records, records[..index], "byte {at} ^ {flip:#x}");
                    assert_eq!(decoded.valid_len, start, "byte {at} ^ {flip:#x}");
                    assert!(
                        decoded.stop == Stop::TornTail
                            || decoded.stop == Stop::Corrupt { offset: start },
                        "byte {at} ^ {flip:#x}: {:?}",
                        decoded.stop
                    );
                    // Inside the checksummed payload a flip is always caught as corruption.
                    if at >= start + HEADER_LEN {
                        assert_eq!(decoded.stop, Stop::Corrupt { offset: start });
                    }
                }
            }
        }
    }

    #[test]
    fn a_length_over_the_maximum_is_corrupt_even_when_the_bytes_are_missing() {
        let mut buf = Vec::new();
        encode(&Record::Done { id: MessageId(1) }, &mut buf);
        let good = buf.len();
        let too_long = u32::try_from(MAX_RECORD_LEN + 1).unwrap();
        buf.extend_from_slice(&too_long.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        let decoded = decode(&buf);
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.valid_len, good);
        assert_eq!(decoded.stop, Stop::Corrupt { offset: good });
        // A length within the maximum but past the end is a torn write.
        buf.truncate(good);
        buf.extend_from_slice(&1000u32.to_le_bytes());
        buf.extend_from_slice(&[0; 12]);
        assert_eq!(decode(&buf).stop, Stop::TornTail);
    }

    #[test]
    fn a_zero_filled_tail_is_corrupt_rather_than_an_empty_record() {
        let mut buf = Vec::new();
        encode(&Record::Done { id: MessageId(1) }, &mut buf);
        let good = buf.len();
        buf.extend_from_slice(&[0; 64]);
        let decoded = decode(&buf);
        assert_eq!(decoded.records.len(), 1);
        assert_eq!(decoded.stop, Stop::Corrupt { offset: good });
    }

    #[test]
    fn records_after_a_corrupt_one_are_not_read() {
        let records = vector_table();
        let (mut buf, ends) = encode_all(&records[..3]);
        buf[ends[0] + HEADER_LEN] ^= 0x10;
        let decoded = decode(&buf);
        assert_eq!(decoded.records, records[..1]);
        assert_eq!(decoded.stop, Stop::Corrupt { offset: ends[0] });
    }

    #[test]
    fn payloads_with_a_good_checksum_but_bad_contents_are_corrupt() {
        let line = |out: &mut Vec<u8>, s: &str| blob(out, s.as_bytes());
        let accepted_with = |tail: &dyn Fn(&mut Vec<u8>)| {
            let mut p = vec![1, TAG_ACCEPTED];
            p.extend_from_slice(&[0; 16]);
            tail(&mut p);
            p
        };
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty payload", vec![]),
            ("version only", vec![1]),
            ("unknown version", vec![2, TAG_DONE, 0, 0, 0, 0, 0, 0, 0, 0]),
            ("unknown tag", vec![1, 200, 0, 0, 0, 0, 0, 0, 0, 0]),
            ("tag zero", vec![1, 0]),
            ("short integer", vec![1, TAG_DONE, 0, 0, 0]),
            (
                "trailing byte",
                vec![1, TAG_DONE, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            (
                "string length past the end",
                vec![1, TAG_DATABASE_ID, 0xff, 0xff, 0xff, 0xff, b'a'],
            ),
            (
                "string not utf-8",
                vec![1, TAG_DATABASE_ID, 2, 0, 0, 0, 0xc3, 0x28],
            ),
            (
                "huge forgotten count",
                vec![
                    1,
                    TAG_DISCARDS_FORGOTTEN,
                    0xff,
                    0xff,
                    0xff,
                    0xff,
                    0,
                    0,
                    0,
                    0,
                ],
            ),
        ];
        cases.push((
            "envelope line without crlf",
            accepted_with(&|p| {
                line(p, "MAIL FROM:<a@b.example>");
                p.extend_from_slice(&[0; 4]);
                blob(p, b"");
                p.push(0);
            }),
        ));
        cases.push((
            "envelope starting with rcpt",
            accepted_with(&|p| {
                line(p, "RCPT TO:<a@b.example>\r\n");
                p.extend_from_slice(&[0; 4]);
                blob(p, b"");
                p.push(0);
            }),
        ));
        cases.push((
            "recipient that is a mail line",
            accepted_with(&|p| {
                line(p, "MAIL FROM:<a@b.example>\r\n");
                p.extend_from_slice(&1u32.to_le_bytes());
                line(p, "MAIL FROM:<a@b.example>\r\n");
                blob(p, b"");
                p.push(0);
            }),
        ));
        cases.push((
            "recipient that does not parse",
            accepted_with(&|p| {
                line(p, "MAIL FROM:<a@b.example>\r\n");
                p.extend_from_slice(&1u32.to_le_bytes());
                line(p, "RCPT TO:<no at sign>\r\n");
                blob(p, b"");
                p.push(0);
            }),
        ));
        cases.push((
            "huge recipient count",
            accepted_with(&|p| {
                line(p, "MAIL FROM:<a@b.example>\r\n");
                p.extend_from_slice(&u32::MAX.to_le_bytes());
                line(p, "RCPT TO:<c@d.example>\r\n");
            }),
        ));
        cases.push((
            "body length past the end",
            accepted_with(&|p| {
                line(p, "MAIL FROM:<>\r\n");
                p.extend_from_slice(&[0; 4]);
                p.extend_from_slice(&u32::MAX.to_le_bytes());
                p.extend_from_slice(b"short");
            }),
        ));
        cases.push((
            "primary flag that is neither 0 nor 1",
            accepted_with(&|p| {
                line(p, "MAIL FROM:<>\r\n");
                p.extend_from_slice(&[0; 4]);
                blob(p, b"");
                p.push(2);
            }),
        ));
        // The well-formed sibling of the cases above reads fine.
        let good = accepted_with(&|p| {
            line(p, "MAIL FROM:<>\r\n");
            p.extend_from_slice(&[0; 4]);
            blob(p, b"");
            p.push(0);
        });
        assert_eq!(decode(&frame(&good)).stop, Stop::Clean);

        for (name, payload) in cases {
            let mut buf = Vec::new();
            encode(&Record::Done { id: MessageId(1) }, &mut buf);
            let good_len = buf.len();
            buf.extend_from_slice(&frame(&payload));
            encode(&Record::Done { id: MessageId(2) }, &mut buf);
            let decoded = decode(&buf);
            assert_eq!(
                decoded.records,
                vec![Record::Done { id: MessageId(1) }],
                "{name}"
            );
            assert_eq!(decoded.valid_len, good_len, "{name}");
            assert_eq!(decoded.stop, Stop::Corrupt { offset: good_len }, "{name}");
        }
    }

    // ---- replay ----

    #[test]
    fn a_message_is_accepted_shadowed_resubmitted_and_done() {
        let mut state = StoreState::default();
        state.apply(&accepted(1, simple_envelope(), b"hello"));
        let message = &state.messages[&MessageId(1)];
        assert_eq!(message.at_ms, 1_700_000_000_001);
        assert_eq!(message.envelope, simple_envelope());
        assert_eq!(&*message.body, b"hello");
        assert_eq!(message.shadow, None);

        state.apply(&Record::Shadowed {
            id: MessageId(1),
            primary: "edge1".into(),
            shadow_id: "g1".into(),
            database_id: "db1".into(),
            at_ms: 10,
        });
        assert_eq!(
            state.messages[&MessageId(1)].shadow,
            Some(StoredCopy {
                primary: "edge1".into(),
                shadow_id: "g1".into(),
                database_id: "db1".into(),
                at_ms: 10,
            })
        );

        state.apply(&Record::Resubmitted { id: MessageId(1) });
        assert_eq!(state.messages[&MessageId(1)].shadow, None);
        assert_eq!(&*state.messages[&MessageId(1)].body, b"hello");

        state.apply(&Record::Done { id: MessageId(1) });
        assert!(state.messages.is_empty());
        assert_eq!(state.next_message_id, 2);
    }

    #[test]
    fn discard_events_are_kept_in_order_and_forgotten_with_the_context_compared_case_insensitively()
    {
        let queued = |context: &str, discard_id: &str, at_ms| Record::DiscardQueued {
            context: context.into(),
            discard_id: discard_id.into(),
            at_ms,
        };
        let state = StoreState::replay(&[
            queued("Hub1.Example", "a", 1),
            queued("hub2.example", "a", 2),
            queued("hub1.example", "b", 3),
            queued("hub1.example", "B", 4),
            Record::DiscardsForgotten {
                events: vec![
                    ("HUB1.EXAMPLE".into(), "a".into()),
                    ("hub1.example".into(), "b".into()),
                    ("hub1.example".into(), "never-queued".into()),
                    ("hub3.example".into(), "a".into()),
                ],
            },
        ]);
        let left: Vec<_> = state
            .discard_events
            .iter()
            .map(|e| (&*e.context, &*e.discard_id, e.at_ms))
            .collect();
        assert_eq!(
            left,
            [("hub2.example", "a", 2), ("hub1.example", "B", 4)],
            "ids compare exactly, contexts without case"
        );
    }

    #[test]
    fn message_ids_continue_after_the_highest_ever_accepted() {
        let state = StoreState::replay(&[
            accepted(3, simple_envelope(), b""),
            accepted(10, simple_envelope(), b""),
            accepted(5, simple_envelope(), b""),
            Record::Done { id: MessageId(10) },
        ]);
        assert_eq!(state.next_message_id, 11);
        let state = StoreState::replay(&[
            Record::NextMessageId { next: 40 },
            accepted(7, simple_envelope(), b""),
        ]);
        assert_eq!(state.next_message_id, 40);
        let state = StoreState::replay(&[accepted(u64::MAX, simple_envelope(), b"")]);
        assert_eq!(state.next_message_id, u64::MAX);
    }

    #[test]
    fn records_about_unknown_messages_are_ignored() {
        let state = StoreState::replay(&[
            accepted(1, simple_envelope(), b""),
            Record::Shadowed {
                id: MessageId(2),
                primary: "p".into(),
                shadow_id: "s".into(),
                database_id: "d".into(),
                at_ms: 0,
            },
            Record::Resubmitted { id: MessageId(3) },
            Record::Done { id: MessageId(4) },
        ]);
        assert_eq!(
            state,
            StoreState::replay(&[accepted(1, simple_envelope(), b"")])
        );
    }

    #[test]
    fn the_first_database_id_wins() {
        let state = StoreState::replay(&[
            Record::DatabaseId { id: "first".into() },
            Record::DatabaseId {
                id: "second".into(),
            },
        ]);
        assert_eq!(state.database_id.as_deref(), Some("first"));
    }

    #[test]
    fn accepting_an_id_again_replaces_the_message_and_drops_its_copy() {
        let state = StoreState::replay(&[
            accepted(1, simple_envelope(), b"old"),
            Record::Shadowed {
                id: MessageId(1),
                primary: "p".into(),
                shadow_id: "s".into(),
                database_id: "d".into(),
                at_ms: 0,
            },
            accepted(1, simple_envelope(), b"new"),
        ]);
        assert_eq!(&*state.messages[&MessageId(1)].body, b"new");
        assert_eq!(state.messages[&MessageId(1)].shadow, None);
    }

    #[test]
    fn live_records_replay_to_the_same_state_and_keep_ids_of_done_messages_used() {
        let mut records = vector_table();
        records.extend([
            accepted(20, simple_envelope(), b"x"),
            accepted(21, simple_envelope(), b"y"),
            Record::Shadowed {
                id: MessageId(20),
                primary: "p".into(),
                shadow_id: "s".into(),
                database_id: "d".into(),
                at_ms: 3,
            },
            Record::Done { id: MessageId(21) },
        ]);
        let state = StoreState::replay(&records);
        assert_eq!(state.next_message_id, 99);
        let live = state.live_records();
        assert_eq!(StoreState::replay(&live), state);
        assert!(live.contains(&Record::NextMessageId { next: 99 }));
        assert!(!live.iter().any(|r| matches!(r, Record::Done { .. })));
        let (buf, _) = encode_all(&live);
        assert_eq!(StoreState::replay(&decode(&buf).records), state);
    }

    #[test]
    fn live_records_are_minimal() {
        assert!(StoreState::default().live_records().is_empty());
        let state = StoreState::replay(&[
            accepted(1, simple_envelope(), b""),
            accepted(2, simple_envelope(), b""),
            Record::Done { id: MessageId(1) },
        ]);
        assert_eq!(state.live_records(), [accepted(2, simple_envelope(), b"")]);
    }

    // ---- generated records ----

    fn domain() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}",
            "[α-ω]{1,6}\\.[a-z]{2,4}",
            "пример\\.рф",
            "\\[192\\.0\\.2\\.[1-9]?[0-9]\\]",
            Just("[IPv6:2001:db8::7]".to_owned()),
        ]
    }

    fn local_part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\\.[a-z0-9]{1,6}){0,2}",
            "\"[a-z @.,]{0,10}\"",
            "[а-я]{1,8}",
            "[a-zé]{1,6}",
        ]
    }

    fn mailbox() -> impl Strategy<Value = Mailbox<'static>> {
        (local_part(), domain()).prop_map(|(l, d)| Mailbox::new(l, d))
    }

    fn xtext_value() -> impl Strategy<Value = Cow<'static, str>> {
        "[ -~é]{1,40}".prop_map(Cow::Owned)
    }

    fn other_params() -> impl Strategy<Value = Vec<OtherParam<'static>>> {
        prop::collection::vec(
            ("X-[A-Z0-9]{1,6}", prop::option::of("[!-<>-~]{1,10}")),
            0..3,
        )
        .prop_map(|items| {
            let mut seen = BTreeSet::new();
            items
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .map(|(k, v)| OtherParam {
                    keyword: k.into(),
                    value: v.map(Cow::Owned),
                })
                .collect()
        })
    }

    fn guid() -> impl Strategy<Value = String> {
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    }

    fn mail_params() -> impl Strategy<Value = MailParams<'static>> {
        (
            prop::option::of(any::<u64>()),
            prop::option::of(prop_oneof![
                Just(BodyType::SevenBit),
                Just(BodyType::EightBitMime),
                Just(BodyType::BinaryMime)
            ]),
            any::<bool>(),
            prop::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Headers)]),
            prop::option::of(xtext_value()),
            prop::option::of(prop_oneof![guid().prop_map(Cow::Owned), xtext_value()]),
            other_params(),
        )
            .prop_map(
                |(size, body, smtputf8, ret, envid, xshadow, other)| MailParams {
                    size,
                    body,
                    smtputf8,
                    ret,
                    envid,
                    xshadow,
                    other,
                },
            )
    }

    fn rcpt_params() -> impl Strategy<Value = RcptParams<'static>> {
        (
            prop::option::of((any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
                |(success, failure, delay)| Notify {
                    success,
                    failure,
                    delay,
                },
            )),
            prop::option::of(("rfc822|utf-8", xtext_value()).prop_map(|(t, a)| Orcpt {
                addr_type: t.into(),
                address: a,
            })),
            other_params(),
        )
            .prop_map(|(notify, orcpt, other)| RcptParams {
                notify,
                orcpt,
                other,
            })
    }

    fn gen_envelope() -> impl Strategy<Value = Envelope> {
        (
            prop::option::of(mailbox()),
            mail_params(),
            prop::collection::vec((prop::option::of(mailbox()), rcpt_params()), 0..4),
        )
            .prop_map(|(from, params, recipients)| Envelope {
                from: from.map_or(ReversePath::Null, ReversePath::Mailbox),
                params,
                recipients: recipients
                    .into_iter()
                    .map(|(to, params)| Recipient {
                        to: to.map_or(ForwardPath::Postmaster, ForwardPath::Mailbox),
                        params,
                    })
                    .collect(),
            })
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[ -~]{0,30}", ".{0,10}", guid()]
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            text().prop_map(|id| Record::DatabaseId { id }),
            (
                any::<u64>(),
                any::<u64>(),
                gen_envelope(),
                prop::collection::vec(any::<u8>(), 0..200),
                prop::option::of((text(), guid())),
            )
                .prop_map(|(id, at_ms, envelope, body, primary_for)| {
                    Record::Accepted {
                        id: MessageId(id),
                        at_ms,
                        envelope: Arc::new(envelope),
                        body: body.into(),
                        primary_for: primary_for.map(|(context, discard_id)| PrimaryFor {
                            context: context.into(),
                            discard_id: discard_id.into(),
                        }),
                    }
                }),
            (any::<u64>(), text(), guid(), text(), any::<u64>()).prop_map(
                |(id, primary, shadow_id, database_id, at_ms)| Record::Shadowed {
                    id: MessageId(id),
                    primary: primary.into(),
                    shadow_id: shadow_id.into(),
                    database_id: database_id.into(),
                    at_ms,
                }
            ),
            any::<u64>().prop_map(|id| Record::Resubmitted { id: MessageId(id) }),
            any::<u64>().prop_map(|id| Record::Done { id: MessageId(id) }),
            (text(), guid(), any::<u64>()).prop_map(|(context, discard_id, at_ms)| {
                Record::DiscardQueued {
                    context: context.into(),
                    discard_id: discard_id.into(),
                    at_ms,
                }
            }),
            prop::collection::vec((text(), text()), 0..5).prop_map(|events| {
                Record::DiscardsForgotten {
                    events: events
                        .into_iter()
                        .map(|(c, id)| (c.into(), id.into()))
                        .collect(),
                }
            }),
            any::<u64>().prop_map(|next| Record::NextMessageId { next }),
        ]
    }

    /// Records over a small id and context space, so that they meet each other in replay.
    fn history_record() -> impl Strategy<Value = Record> {
        let id = || (0u64..8).prop_map(MessageId);
        let context =
            || prop_oneof![Just("hub1"), Just("HUB1"), Just("Hub2")].prop_map(String::from);
        let discard_id = || prop_oneof![Just("a"), Just("A"), Just("b")].prop_map(String::from);
        prop_oneof![
            prop_oneof![Just("x"), Just("y")].prop_map(|id| Record::DatabaseId { id: id.into() }),
            (
                id(),
                0u64..100,
                prop::collection::vec(any::<u8>(), 0..8),
                prop::option::of((context(), discard_id()))
            )
                .prop_map(|(id, at_ms, body, primary_for)| Record::Accepted {
                    id,
                    at_ms,
                    envelope: simple_envelope(),
                    body: body.into(),
                    primary_for: primary_for.map(|(context, discard_id)| PrimaryFor {
                        context: context.into(),
                        discard_id: discard_id.into(),
                    }),
                }),
            (id(), prop_oneof![Just("e1"), Just("e2")], 0u64..100).prop_map(
                |(id, primary, at_ms)| Record::Shadowed {
                    id,
                    primary: primary.into(),
                    shadow_id: format!("g{}", id.0).into(),
                    database_id: "db".into(),
                    at_ms,
                }
            ),
            id().prop_map(|id| Record::Resubmitted { id }),
            id().prop_map(|id| Record::Done { id }),
            (context(), discard_id(), 0u64..100).prop_map(|(context, discard_id, at_ms)| {
                Record::DiscardQueued {
                    context: context.into(),
                    discard_id: discard_id.into(),
                    at_ms,
                }
            }),
            prop::collection::vec((context(), discard_id()), 0..3).prop_map(|events| {
                Record::DiscardsForgotten {
                    events: events
                        .into_iter()
                        .map(|(c, id)| (c.into(), id.into()))
                        .collect(),
                }
            }),
            (0u64..12).prop_map(|next| Record::NextMessageId { next }),
        ]
    }

    proptest! {
        #[test]
        fn generated_records_round_trip_through_encode_and_decode(
            records in prop::collection::vec(record(), 0..6)
        ) {
            let (buf, _) = encode_all(&records);
            let decoded = decode(&buf);
            prop_assert_eq!(decoded.stop, Stop::Clean);
            prop_assert_eq!(decoded.valid_len, buf.len());
            prop_assert_eq!(decoded.records, records);
        }

        #[test]
        fn a_generated_stream_cut_anywhere_keeps_exactly_the_whole_records_before_the_cut(
            records in prop::collection::vec(record(), 1..5),
            cut in any::<prop::sample::Index>(),
        ) {
            let (buf, ends) = encode_all(&records);
            let cut = cut.index(buf.len() + 1);
            let whole = ends.iter().take_while(|&&end| end <= cut).count();
            let decoded = decode(&buf[..cut]);
            prop_assert_eq!(&decoded.records[..], &records[..whole]);
            prop_assert_eq!(decoded.valid_len, if whole == 0 { 0 } else { ends[whole - 1] });
            let expected = if cut == decoded.valid_len { Stop::Clean } else { Stop::TornTail };
            prop_assert_eq!(decoded.stop, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let decoded = decode(&bytes);
            prop_assert!(decoded.valid_len <= bytes.len());
            if let Stop::Corrupt { offset } = decoded.stop {
                prop_assert_eq!(offset, decoded.valid_len);
            }
        }

        #[test]
        fn damage_after_whole_records_never_loses_them(
            records in prop::collection::vec(record(), 0..4),
            tail in prop::collection::vec(any::<u8>(), 1..64),
            damage in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 0..4),
        ) {
            let (mut buf, _) = encode_all(&records);
            let good = buf.len();
            let mut tail_stream = Vec::new();
            encode(&Record::Done { id: MessageId(0) }, &mut tail_stream);
            tail_stream.extend_from_slice(&tail);
            for (at, flip) in damage {
                let at = at.index(tail_stream.len());
                tail_stream[at] ^= flip;
            }
            buf.extend_from_slice(&tail_stream);
            let decoded = decode(&buf);
            prop_assert!(decoded.valid_len >= good);
            prop_assert_eq!(&decoded.records[..records.len()], &records[..]);
        }

        #[test]
        fn live_records_replay_to_the_same_state_after_any_history(
            history in prop::collection::vec(history_record(), 0..40)
        ) {
            let state = StoreState::replay(&history);
            let live = state.live_records();
            prop_assert!(live.len() <= history.len());
            prop_assert_eq!(&StoreState::replay(&live), &state);
            let (buf, _) = encode_all(&live);
            prop_assert_eq!(StoreState::replay(&decode(&buf).records), state);
        }

        #[test]
        fn replaying_decoded_bytes_equals_replaying_the_records(
            history in prop::collection::vec(history_record(), 0..40)
        ) {
            let (buf, _) = encode_all(&history);
            prop_assert_eq!(
                StoreState::replay(&decode(&buf).records),
                StoreState::replay(&history)
            );
        }
    }
}
