//! Server replies: [`Reply`] with its optional RFC 3463 enhanced status code, written by the
//! server and read incrementally by the client.

use std::borrow::Cow;
use std::fmt;

use memchr::{memchr, memchr2};
use smallvec::SmallVec;

use super::line::{bytes_below, first_flagged, non_ascii};
use super::{DEFAULT_MAX_LINE, MAX_SHADOW_FIELD, write_decimal};

/// An RFC 3463 enhanced status code such as `2.1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// The class digit: 2 success, 4 persistent transient failure, 5 permanent failure.
    pub class: u8,
    /// The subject number (0 to 999).
    pub subject: u16,
    /// The detail number (0 to 999).
    pub detail: u16,
}

impl EnhancedStatus {
    /// Builds `class.subject.detail`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced status code shared by all lines,
/// and one or more lines of text (without the code, the separator or the status code).
///
/// Equality ignores whether a line is borrowed or owned, and compares replies of any two
/// lifetimes (a parsed reply with an expected `Reply<'static>`; `Reply` is invariant in its
/// lifetime because of `SmallVec`).
#[derive(Debug, Clone, Eq)]
pub struct Reply<'a> {
    /// The three-digit reply code (200..=599).
    pub code: u16,
    /// The enhanced status code written at the start of every line, when present.
    pub enhanced: Option<EnhancedStatus>,
    /// The text of each line; never empty (a reply has at least one line, maybe of no text).
    pub lines: SmallVec<[Cow<'a, str>; 1]>,
}

impl<'b> PartialEq<Reply<'b>> for Reply<'_> {
    fn eq(&self, other: &Reply<'b>) -> bool {
        self.code == other.code
            && self.enhanced == other.enhanced
            && self.lines.len() == other.lines.len()
            && self.lines.iter().zip(&other.lines).all(|(a, b)| a == b)
    }
}

impl<'a> Reply<'a> {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: Option<EnhancedStatus>, text: impl Into<Cow<'a, str>>) -> Self {
        let lines = SmallVec::from_buf([text.into()]);
        Self {
            code,
            enhanced,
            lines,
        }
    }

    /// A reply of several lines; an empty iterator gives one line of no text.
    pub fn multiline<I, T>(code: u16, enhanced: Option<EnhancedStatus>, lines: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Cow<'a, str>>,
    {
        let mut lines: SmallVec<[Cow<'a, str>; 1]> = lines.into_iter().map(Into::into).collect();
        if lines.is_empty() {
            lines.push(Cow::Borrowed(""));
        }
        Self {
            code,
            enhanced,
            lines,
        }
    }

    /// True for 2xx replies.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// True for 3xx replies (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// True for 4xx replies.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx replies.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The first line's text (the whole text of a one-line reply).
    pub fn text(&self) -> &str {
        self.lines.first().map_or("", |l| l.as_ref())
    }

    /// Copies every borrowed line so the reply outlives its input.
    pub fn into_owned(self) -> Reply<'static> {
        let lines = match self.lines.into_inner() {
            // One line, the usual reply: no iterator to build and collect.
            Ok([line]) => SmallVec::from_buf([own_line(line)]),
            Err(lines) => lines.into_iter().map(own_line).collect(),
        };
        Reply {
            code: self.code,
            enhanced: self.enhanced,
            lines,
        }
    }

    /// Appends the reply's wire form (`250-first`, ..., `250 last`, each ending in CRLF).
    #[inline]
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if let [line] = self.lines.as_slice()
            && self
                .enhanced
                .is_none_or(|s| s.class < 10 && s.subject < 10 && s.detail < 10)
        {
            write_one_line(out, self.code, self.enhanced, line.as_bytes());
            return;
        }
        self.write_lines(out);
    }

    /// [`Reply::write_to`] for any reply, line by line.
    #[inline(never)]
    fn write_lines(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            write_code(out, self.code);
            let sep = if i == last { b' ' } else { b'-' };
            match self.enhanced {
                Some(status) => {
                    out.push(sep);
                    write_enhanced(out, status);
                    if !line.is_empty() {
                        out.push(b' ');
                        out.extend_from_slice(line.as_bytes());
                    }
                }
                None if line.is_empty() && i == last => {}
                None => {
                    out.push(sep);
                    out.extend_from_slice(line.as_bytes());
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(16 + self.lines.iter().map(|l| l.len() + 16).sum::<usize>());
        self.write_to(&mut out);
        out
    }
}

/// [`Reply::write_to`] for the usual reply: one line, with no enhanced status code or one of
/// one digit each. The same bytes, with one reservation and a fixed-size copy for the code and
/// status code.
fn write_one_line(out: &mut Vec<u8>, code: u16, enhanced: Option<EnhancedStatus>, text: &[u8]) {
    let code = code.min(999);
    let [a, b, c] = [
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    out.reserve(text.len() + 12);
    match enhanced {
        Some(status) => {
            let (subject, detail) = (status.subject as u8, status.detail as u8);
            let head = [
                a,
                b,
                c,
                b' ',
                b'0' + status.class,
                b'.',
                b'0' + subject,
                b'.',
                b'0' + detail,
                b' ',
            ];
            if text.is_empty() {
                out.extend_from_slice(&head[..9]);
            } else {
                out.extend_from_slice(&head);
                out.extend_from_slice(text);
            }
        }
        None if text.is_empty() => out.extend_from_slice(&[a, b, c]),
        None => {
            out.extend_from_slice(&[a, b, c, b' ']);
            out.extend_from_slice(text);
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn write_code(out: &mut Vec<u8>, code: u16) {
    let code = code.min(999);
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
}

fn write_enhanced(out: &mut Vec<u8>, status: EnhancedStatus) {
    let EnhancedStatus {
        class,
        subject,
        detail,
    } = status;
    if class < 10 && subject < 10 && detail < 10 {
        // Nearly every status (`2.1.0`, `2.6.0`, `5.5.1`): five bytes at once.
        let (subject, detail) = (subject as u8, detail as u8);
        out.extend_from_slice(&[b'0' + class, b'.', b'0' + subject, b'.', b'0' + detail]);
        return;
    }
    write_decimal(out, u64::from(status.class));
    out.push(b'.');
    write_decimal(out, u64::from(status.subject));
    out.push(b'.');
    write_decimal(out, u64::from(status.detail));
}

impl fmt::Display for Reply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl<'a> Reply<'a> {
    /// `250 <database-id>`: the primary accepted XSHADOW (PROTOCOL.md §3; no enhanced code).
    pub fn xshadow_accepted(database_id: impl Into<Cow<'a, str>>) -> Self {
        Self::new(250, None, database_id)
    }

    /// `250 <context>`: the peer accepted XSHADOWREQUEST (PROTOCOL.md §7; no enhanced code).
    pub fn xshadowrequest_accepted(shadow_context: impl Into<Cow<'a, str>>) -> Self {
        Self::new(250, None, shadow_context)
    }

    /// `250-<id1>` ... `250 <idN>`, oldest first (PROTOCOL.md §5); no ids gives
    /// [`Reply::no_discard_events`], since a `250` without ids is a protocol breach.
    pub fn discard_ids<I, T>(ids: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Cow<'a, str>>,
    {
        let lines: SmallVec<[Cow<'a, str>; 1]> = ids.into_iter().map(Into::into).collect();
        if lines.is_empty() {
            return Self::no_discard_events();
        }
        Self {
            code: 250,
            enhanced: None,
            lines,
        }
    }

    /// `251 OK, no discard events`: nothing pending for this shadow context (PROTOCOL.md §5).
    pub fn no_discard_events() -> Self {
        Self::new(251, None, "OK, no discard events")
    }

    /// `503 5.5.1 Bad sequence of commands`.
    pub fn bad_sequence() -> Self {
        Self::new(
            503,
            Some(EnhancedStatus::new(5, 5, 1)),
            "Bad sequence of commands",
        )
    }

    /// `503 5.5.2 Send EHLO first`: XSHADOW or XSHADOWREQUEST before EHLO.
    pub fn send_ehlo_first() -> Self {
        Self::new(503, Some(EnhancedStatus::new(5, 5, 2)), "Send EHLO first")
    }

    /// `502 5.3.3 Command not implemented`: a shadow command that was not advertised.
    pub fn command_not_implemented() -> Self {
        Self::new(
            502,
            Some(EnhancedStatus::new(5, 3, 3)),
            "Command not implemented",
        )
    }

    /// `550 5.7.1 Not authorized`: the peer may not shadow through us.
    pub fn not_authorized() -> Self {
        Self::new(550, Some(EnhancedStatus::new(5, 7, 1)), "Not authorized")
    }

    /// `501 5.0.0 XSHADOW requires Shadow server's context`: XSHADOW without an argument.
    pub fn xshadow_requires_context() -> Self {
        Self::new(
            501,
            Some(EnhancedStatus::new(5, 0, 0)),
            "XSHADOW requires Shadow server's context",
        )
    }

    /// `501 5.0.0 XQDISCARD requires maximum discard events count`: XQDISCARD without an
    /// argument.
    pub fn xqdiscard_requires_max() -> Self {
        Self::new(
            501,
            Some(EnhancedStatus::new(5, 0, 0)),
            "XQDISCARD requires maximum discard events count",
        )
    }

    /// `501 5.5.4 Invalid arguments`: an argument that is too long, empty, repeated or not a
    /// positive integer.
    pub fn invalid_arguments() -> Self {
        Self::new(501, Some(EnhancedStatus::new(5, 5, 4)), "Invalid arguments")
    }

    /// `451 4.4.0 Message failed to be made redundant` (PROTOCOL.md §7, when configured to
    /// reject).
    pub fn failed_to_be_made_redundant() -> Self {
        Self::new(
            451,
            Some(EnhancedStatus::new(4, 4, 0)),
            "Message failed to be made redundant",
        )
    }

    /// `451 4.3.0 Local error in processing`: the message could not be stored; try later.
    pub fn local_error() -> Self {
        Self::new(
            451,
            Some(EnhancedStatus::new(4, 3, 0)),
            "Local error in processing",
        )
    }

    /// `500 5.5.2 Line too long` (PROTOCOL.md §10).
    pub fn line_too_long() -> Self {
        Self::new(500, Some(EnhancedStatus::new(5, 5, 2)), "Line too long")
    }

    /// Client side of XSHADOW (PROTOCOL.md §3): `Ok(Some(id))` for a 2xx reply, with the
    /// primary's database id (the first line's text up to its first space); `Ok(None)` for any
    /// other reply, meaning "carry on without shadowing"; `Err` when the id is empty or longer
    /// than [`MAX_SHADOW_FIELD`] bytes, a protocol breach.
    pub fn xshadow_database_id(&self) -> Result<Option<&str>, ShadowReplyError> {
        if !self.is_positive() {
            return Ok(None);
        }
        let text = self.text();
        let id = text.split_once(' ').map_or(text, |(id, _)| id);
        if id.is_empty() {
            Err(ShadowReplyError::EmptyDatabaseId)
        } else if id.len() > MAX_SHADOW_FIELD {
            Err(ShadowReplyError::DatabaseIdTooLong { len: id.len() })
        } else {
            Ok(Some(id))
        }
    }

    /// Client side of XQDISCARD (PROTOCOL.md §5) for the `max` that was sent: the discard ids,
    /// oldest first (none for `251`); `Err` for a refusal (4xx/5xx, not a breach) or a breach
    /// (a `250` without ids, an empty or over-long id line, more lines than `max`, another
    /// code).
    pub fn xqdiscard_ids(&self, max: u32) -> Result<&[Cow<'a, str>], ShadowReplyError> {
        match self.code {
            251 => Ok(&[]),
            250 => {
                if self.lines.is_empty() {
                    return Err(ShadowReplyError::NoDiscardIds);
                }
                if u32::try_from(self.lines.len()).map_or(true, |n| n > max) {
                    return Err(ShadowReplyError::TooManyDiscardIds {
                        max,
                        got: self.lines.len(),
                    });
                }
                for (i, id) in self.lines.iter().enumerate() {
                    if id.is_empty() {
                        return Err(ShadowReplyError::EmptyDiscardId { line: i + 1 });
                    }
                    if id.len() > MAX_SHADOW_FIELD {
                        return Err(ShadowReplyError::DiscardIdTooLong {
                            line: i + 1,
                            len: id.len(),
                        });
                    }
                }
                Ok(&self.lines)
            }
            400..=599 => Err(ShadowReplyError::Refused { code: self.code }),
            code => Err(ShadowReplyError::UnexpectedCode { code }),
        }
    }
}

/// What was wrong with a reply to XSHADOW or XQDISCARD, read by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShadowReplyError {
    /// A 2xx reply to XSHADOW whose first line has no database id.
    EmptyDatabaseId,
    /// A 2xx reply to XSHADOW whose database id is longer than 255 bytes.
    DatabaseIdTooLong {
        /// The id's length in bytes.
        len: usize,
    },
    /// XQDISCARD was refused with a 4xx or 5xx reply: a failed heartbeat, not a breach.
    Refused {
        /// The reply code.
        code: u16,
    },
    /// XQDISCARD got a reply code other than 250, 251, 4xx or 5xx.
    UnexpectedCode {
        /// The reply code.
        code: u16,
    },
    /// A `250` reply to XQDISCARD with no id lines.
    NoDiscardIds,
    /// A `250` reply to XQDISCARD with an empty id line.
    EmptyDiscardId {
        /// The line number, from 1.
        line: usize,
    },
    /// A `250` reply to XQDISCARD with an id longer than 255 bytes.
    DiscardIdTooLong {
        /// The line number, from 1.
        line: usize,
        /// The id's length in bytes.
        len: usize,
    },
    /// A `250` reply to XQDISCARD with more id lines than the `max` that was sent.
    TooManyDiscardIds {
        /// The `max` sent with XQDISCARD.
        max: u32,
        /// The number of id lines received.
        got: usize,
    },
}

impl ShadowReplyError {
    /// True when the peer broke the protocol (PROTOCOL.md §5: treat the primary as failed and
    /// resubmit); false for a plain refusal.
    pub fn is_breach(&self) -> bool {
        !matches!(self, Self::Refused { .. })
    }
}

impl fmt::Display for ShadowReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyDatabaseId => f.write_str("XSHADOW reply carries no database id"),
            Self::DatabaseIdTooLong { len } => write!(
                f,
                "XSHADOW reply database id is {len} bytes long (at most {MAX_SHADOW_FIELD})"
            ),
            Self::Refused { code } => write!(f, "XQDISCARD refused with {code}"),
            Self::UnexpectedCode { code } => {
                write!(f, "XQDISCARD answered with unexpected code {code}")
            }
            Self::NoDiscardIds => f.write_str("XQDISCARD 250 reply carries no discard id"),
            Self::EmptyDiscardId { line } => {
                write!(f, "XQDISCARD reply line {line} is an empty discard id")
            }
            Self::DiscardIdTooLong { line, len } => write!(
                f,
                "XQDISCARD reply line {line} is a discard id of {len} bytes (at most \
                 {MAX_SHADOW_FIELD})"
            ),
            Self::TooManyDiscardIds { max, got } => write!(
                f,
                "XQDISCARD reply carries {got} discard ids, more than the {max} asked for"
            ),
        }
    }
}

impl std::error::Error for ShadowReplyError {}

/// Why a reply could not be read; the connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line (CRLF included) is longer than the reader's limit.
    LineTooLong {
        /// The line number within the reply, from 1.
        line: usize,
        /// The limit in bytes, CRLF included.
        max: usize,
    },
    /// The reply has more lines than the reader's limit.
    TooManyLines {
        /// The limit in lines.
        max: usize,
    },
    /// A line does not start with three digits, the first 2 to 5.
    BadCode {
        /// The line number within the reply, from 1.
        line: usize,
    },
    /// The code is followed by something other than `-`, a space or the line end.
    BadSeparator {
        /// The line number within the reply, from 1.
        line: usize,
    },
    /// A line's code differs from the first line's.
    MixedCodes {
        /// The line number within the reply, from 1.
        line: usize,
        /// The first line's code.
        first: u16,
        /// This line's code.
        found: u16,
    },
    /// A bare CR or bare LF inside a line (only CRLF ends a line).
    BareLineBreak {
        /// The line number within the reply, from 1.
        line: usize,
    },
    /// A line's text is not UTF-8.
    NotUtf8 {
        /// The line number within the reply, from 1.
        line: usize,
    },
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong { line, max } => {
                write!(f, "reply line {line} is longer than {max} bytes")
            }
            Self::TooManyLines { max } => write!(f, "reply has more than {max} lines"),
            Self::BadCode { line } => write!(
                f,
                "reply line {line} does not start with a three-digit code from 200 to 599"
            ),
            Self::BadSeparator { line } => write!(
                f,
                "reply line {line}: code not followed by '-', ' ' or the line end"
            ),
            Self::MixedCodes { line, first, found } => write!(
                f,
                "reply line {line} has code {found}, but the reply started with {first}"
            ),
            Self::BareLineBreak { line } => {
                write!(f, "reply line {line} contains a bare CR or LF")
            }
            Self::NotUtf8 { line } => write!(f, "reply line {line} is not UTF-8"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// The default largest number of lines in one reply: enough for a 1000-id XQDISCARD reply.
pub const DEFAULT_MAX_REPLY_LINES: usize = 1000;

/// Reads one reply at a time from the front of a caller-owned buffer (client side).
///
/// Between two calls that return `Ok(None)` the caller passes the same bytes again with more
/// appended; the reader remembers how far it has checked, so a reply fed byte by byte costs
/// linear time. After a reply (or an error) it starts afresh at the front of the next buffer.
/// Nothing is ever buffered inside: an over-long line is an error as soon as the limit is
/// passed, whatever arrives later.
#[derive(Debug, Clone)]
pub struct ReplyReader {
    max_line: usize,
    max_lines: usize,
    /// Offset of the first byte of the line being read (bytes before it are whole lines).
    line_start: usize,
    /// Bytes of the current line already searched for its LF.
    scanned: usize,
    /// Whole lines read so far in this reply.
    lines: usize,
    /// The first line's code.
    code: Option<u16>,
}

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyReader {
    /// A reader with the default limits: lines of [`DEFAULT_MAX_LINE`] bytes (CRLF included)
    /// and [`DEFAULT_MAX_REPLY_LINES`] lines.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_LINE, DEFAULT_MAX_REPLY_LINES)
    }

    /// A reader for lines of at most `max_line` bytes (CRLF included) and replies of at most
    /// `max_lines` lines.
    pub fn with_limits(max_line: usize, max_lines: usize) -> Self {
        Self {
            max_line,
            max_lines,
            line_start: 0,
            scanned: 0,
            lines: 0,
            code: None,
        }
    }

    /// The longest line accepted, in bytes, CRLF included.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// The largest number of lines accepted in one reply.
    pub fn max_lines(&self) -> usize {
        self.max_lines
    }

    /// Forgets a partly read reply; the next call starts at the front of its buffer.
    pub fn reset(&mut self) {
        self.line_start = 0;
        self.scanned = 0;
        self.lines = 0;
        self.code = None;
    }

    /// Reads the reply at the front of `buf`: `Ok(Some((reply, consumed)))` once it is whole
    /// (the caller then drops `consumed` bytes), `Ok(None)` when more bytes are needed, `Err`
    /// when the peer sent something that is not a valid reply within the limits.
    ///
    /// Inlined into its caller: the two usual calls, an empty buffer and a one-line reply with
    /// a known text, are answered there; everything else is read out of line.
    #[inline]
    pub fn read<'b>(&mut self, buf: &'b [u8]) -> Result<Option<(Reply<'b>, usize)>, ReplyError> {
        if buf.is_empty() && self.max_line > 0 {
            // Nothing to read, as when a caller reads until no reply is left: the answer the
            // general reader gives an empty buffer (which is no longer the one it was fed, if
            // it was fed one), without its setup.
            self.reset();
            return Ok(None);
        }
        if self.is_fresh()
            && let Some(known) = read_known_line(buf, self.max_line)
        {
            return Ok(Some(known));
        }
        self.read_other(buf)
    }

    /// True with nothing of a reply read yet and room for its first line.
    fn is_fresh(&self) -> bool {
        self.line_start == 0 && self.scanned == 0 && self.lines == 0 && self.max_lines > 0
    }

    /// [`ReplyReader::read`] past its inlined short path.
    #[inline(never)]
    fn read_other<'b>(&mut self, buf: &'b [u8]) -> Result<Option<(Reply<'b>, usize)>, ReplyError> {
        if self.is_fresh()
            && let Some(whole) = self.read_plain_line(buf)
        {
            return Ok(Some(whole));
        }
        self.read_general(buf)
    }

    /// [`ReplyReader::read`] for every reply the short paths leave, every error included
    /// (kept out of line: the short paths need none of its state).
    #[inline(never)]
    fn read_general<'b>(
        &mut self,
        buf: &'b [u8],
    ) -> Result<Option<(Reply<'b>, usize)>, ReplyError> {
        let mut ends = LineEnds::new();
        let result = self.scan(buf, &mut ends);
        let lines = self.lines;
        if !matches!(result, Ok(None)) {
            self.reset();
        }
        match result {
            Ok(Some(consumed)) => {
                let bytes = buf.get(..consumed).unwrap_or_default();
                // The line ends are known when every line was found by this call.
                let ends = (ends.len() == lines).then_some(&ends[..]);
                build_reply(bytes, lines, ends).map(|reply| Some((reply, consumed)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The usual reply read at once: one line, printable ASCII, whole in `buf`, with nothing
    /// read before it. It needs no line ends kept and one UTF-8 check of its text only.
    /// `None` leaves anything else (and so every error) to the general reader, untouched.
    /// Called only with nothing read before and `max_lines` at least 1.
    #[inline(never)]
    fn read_plain_line<'b>(&self, buf: &'b [u8]) -> Option<(Reply<'b>, usize)> {
        let window = buf.get(..buf.len().min(self.max_line))?;
        let lf = memchr(b'\n', window)?;
        let line = window.get(..lf)?.strip_suffix(b"\r")?;
        let plain = first_flagged(line, |word| bytes_below(word, b'\r' + 1) | non_ascii(word));
        if plain != line.len() {
            return None;
        }
        let parsed = split_line(line, 1).ok().filter(|parsed| parsed.last)?;
        let text = std::str::from_utf8(parsed.text).ok()?;
        let (enhanced, text) = match enhanced_prefix(text, (parsed.code / 100) as u8) {
            Some((status, rest)) => (Some(status), rest),
            None => (None, text),
        };
        let lines = SmallVec::from_buf([Cow::Borrowed(text)]);
        let reply = Reply {
            code: parsed.code,
            enhanced,
            lines,
        };
        Some((reply, lf + 1))
    }

    /// Checks new bytes; returns the length of the reply once its last line is seen.
    /// The offset in `buf` of the LF of every line this call finds is pushed to `ends`.
    fn scan(&mut self, buf: &[u8], ends: &mut LineEnds) -> Result<Option<usize>, ReplyError> {
        if buf.len() < self.line_start.saturating_add(self.scanned) {
            // Not the buffer we were fed before: start over rather than trust stale progress.
            self.reset();
        }
        loop {
            let line_no = self.lines + 1;
            let rest = buf.get(self.line_start..).unwrap_or_default();
            let window_end = rest.len().min(self.max_line);
            let from = self.scanned.min(window_end);
            let window = rest.get(from..window_end).unwrap_or_default();
            // The usual line, with no control byte up to CR and only ASCII, passes one
            // eight-bytes-at-a-time check; any other line gets the exact checks, CR and LF
            // first (a bare CR or LF is reported before a bad code, a bad code before bad
            // UTF-8). A line read from its start gets that check first: the first byte it
            // flags, when that is a CR followed by LF, is the line's end (LF is flagged too,
            // so none comes before), and no search for the LF is needed.
            let plain_end = if from == 0 {
                let end = first_flagged(window, |word| {
                    bytes_below(word, b'\r' + 1) | non_ascii(word)
                });
                (window.get(end..end + 2) == Some(b"\r\n")).then_some(end)
            } else {
                None
            };
            let (lf, line, plain) = if let Some(end) = plain_end {
                (end + 1, window.get(..end).unwrap_or_default(), true)
            } else {
                let Some(at) = memchr(b'\n', window) else {
                    if rest.len() >= self.max_line {
                        return Err(ReplyError::LineTooLong {
                            line: line_no,
                            max: self.max_line,
                        });
                    }
                    self.scanned = window_end;
                    return Ok(None);
                };
                let lf = from + at;
                let line = rest
                    .get(..lf)
                    .and_then(|l| l.strip_suffix(b"\r"))
                    .ok_or(ReplyError::BareLineBreak { line: line_no })?;
                let plain =
                    first_flagged(line, |word| bytes_below(word, b'\r' + 1) | non_ascii(word))
                        == line.len();
                (lf, line, plain)
            };
            if !plain && memchr2(b'\r', b'\n', line).is_some() {
                return Err(ReplyError::BareLineBreak { line: line_no });
            }
            let parsed = split_line(line, line_no)?;
            if !plain && std::str::from_utf8(parsed.text).is_err() {
                return Err(ReplyError::NotUtf8 { line: line_no });
            }
            match self.code {
                None => self.code = Some(parsed.code),
                Some(first) if first != parsed.code => {
                    return Err(ReplyError::MixedCodes {
                        line: line_no,
                        first,
                        found: parsed.code,
                    });
                }
                Some(_) => {}
            }
            self.lines = line_no;
            ends.push(self.line_start + lf);
            self.line_start += lf + 1;
            self.scanned = 0;
            if line_no > self.max_lines || (!parsed.last && line_no >= self.max_lines) {
                return Err(ReplyError::TooManyLines {
                    max: self.max_lines,
                });
            }
            if parsed.last {
                return Ok(Some(self.line_start));
            }
        }
    }
}

/// The texts of the replies a mail transaction's success gets from this crate's server (and
/// from many others): a reply kept past its input (a message's final reply, in every
/// `MessageAccepted` event) borrows one of these instead of copying it.
const KNOWN_TEXTS: [&str; 5] = [
    "Queued mail for delivery",
    "OK",
    "Sender OK",
    "Recipient OK",
    "Service closing transmission channel",
];

/// The most usual reply of all, read at once: the one line `ddd SP [c.s.d SP] text CRLF`
/// (one digit each in the enhanced status code) whose text is one of [`KNOWN_TEXTS`], whole
/// at the front of `buf` and at most `max_line` bytes long, CRLF included. Its text is
/// compared, not searched for its line end nor checked as UTF-8, and the reply borrows the
/// known text (equal to the input's). `None` for anything else: the general reader then
/// reads it exactly as before.
#[inline]
fn read_known_line(buf: &[u8], max_line: usize) -> Option<(Reply<'_>, usize)> {
    let [
        a @ b'2'..=b'5',
        b @ b'0'..=b'9',
        c @ b'0'..=b'9',
        b' ',
        rest @ ..,
    ] = buf
    else {
        return None;
    };
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    let (enhanced, text) = match rest {
        [
            x,
            b'.',
            s @ b'0'..=b'9',
            b'.',
            d @ b'0'..=b'9',
            b' ',
            text @ ..,
        ] if x == a => {
            let status = EnhancedStatus::new(a - b'0', u16::from(s - b'0'), u16::from(d - b'0'));
            (Some(status), text)
        }
        // The class digit starts some other enhanced code, or a text the general reader
        // must look at for one.
        [x, ..] if x == a => return None,
        _ => (None, rest),
    };
    let &first = text.first()?;
    let mut found = None;
    for known in &KNOWN_TEXTS {
        let bytes = known.as_bytes();
        if bytes.first() == Some(&first)
            && text.get(bytes.len()..bytes.len() + 2) == Some(b"\r\n")
            && text.starts_with(bytes)
        {
            found = Some(*known);
            break;
        }
    }
    let known = found?;
    let used = (buf.len() - text.len()) + known.len() + 2;
    if used > max_line {
        return None;
    }
    let lines = SmallVec::from_buf([Cow::Borrowed(known)]);
    Some((
        Reply {
            code,
            enhanced,
            lines,
        },
        used,
    ))
}

/// A reply line that outlives its input: a known text is borrowed from [`KNOWN_TEXTS`], any
/// other is copied.
fn own_line(line: Cow<'_, str>) -> Cow<'static, str> {
    match line {
        Cow::Owned(text) => Cow::Owned(text),
        Cow::Borrowed(text) => match KNOWN_TEXTS.iter().find(|known| **known == text) {
            Some(known) => Cow::Borrowed(known),
            None => Cow::Owned(text.to_owned()),
        },
    }
}

/// Reads one reply from the front of `buf` with the default limits (see [`ReplyReader`]).
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ReplyError> {
    ReplyReader::new().read(buf)
}

/// The offsets of the LFs of a reply's lines, found once by [`ReplyReader::scan`] so that
/// [`build_reply`] need not search for them again.
type LineEnds = SmallVec<[usize; 16]>;

/// One reply line split into its parts.
struct Line<'b> {
    code: u16,
    last: bool,
    text: &'b [u8],
}

/// Splits a line (without its CRLF, and known to hold no CR or LF) into code, last-line flag
/// and text.
fn split_line(line: &[u8], line_no: usize) -> Result<Line<'_>, ReplyError> {
    let code = match line {
        [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(ReplyError::BadCode { line: line_no }),
    };
    let (last, text) = match line.get(3..) {
        None | Some([]) => (true, &[][..]),
        Some([b' ', text @ ..]) => (true, text),
        Some([b'-', text @ ..]) => (false, text),
        Some(_) => return Err(ReplyError::BadSeparator { line: line_no }),
    };
    Ok(Line { code, last, text })
}

/// Builds the reply of `count` lines from bytes [`ReplyReader::scan`] has already checked:
/// every line has a valid code and separator, no bare CR or LF, and UTF-8 text. `ends` holds
/// the offsets of the lines' LFs when they are known; otherwise they are searched for.
fn build_reply<'b>(
    bytes: &'b [u8],
    count: usize,
    ends: Option<&[usize]>,
) -> Result<Reply<'b>, ReplyError> {
    // Codes, separators and CRLFs are ASCII and every text is UTF-8, so the whole reply is
    // UTF-8: one check here instead of one per line. (Should it fail all the same, the
    // error names the line, as the per-line check would.)
    let all = std::str::from_utf8(bytes).map_err(|e| ReplyError::NotUtf8 {
        line: 1 + bytes
            .get(..e.valid_up_to())
            .map_or(0, |valid| memchr::memchr_iter(b'\n', valid).count()),
    })?;
    let mut code = 0;
    let mut enhanced = None;
    let mut lines: SmallVec<[Cow<'_, str>; 1]> = SmallVec::with_capacity(count);
    let mut start = 0;
    let mut line_no = 0;
    loop {
        line_no += 1;
        let lf = match ends {
            Some(ends) => ends.get(line_no - 1).copied(),
            None => all
                .as_bytes()
                .get(start..)
                .and_then(|rest| memchr(b'\n', rest))
                .map(|lf| start + lf),
        };
        let Some((lf, raw)) = lf.and_then(|lf| Some((lf, all.get(start..lf)?))) else {
            break;
        };
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let parsed = split_line(raw.as_bytes(), line_no)?;
        // The text follows the code and its separator (both ASCII), when there is a separator.
        let text = raw.get(4..).unwrap_or_default();
        let text = if line_no == 1 {
            code = parsed.code;
            match enhanced_prefix(text, (code / 100) as u8) {
                Some((status, rest)) => {
                    enhanced = Some(status);
                    rest
                }
                None => text,
            }
        } else {
            match enhanced.and_then(|first| Some((first, enhanced_prefix(text, first.class)?))) {
                Some((first, (status, rest))) if status == first => rest,
                _ => text,
            }
        };
        lines.push(Cow::Borrowed(text));
        start = lf + 1;
    }
    Ok(Reply {
        code,
        enhanced,
        lines,
    })
}

/// Splits `class.subject.detail` (1 to 3 digits each) off the front of `text` when it is
/// followed by a space (dropped) or the end, and its class is `class`.
fn enhanced_prefix(text: &str, class: u8) -> Option<(EnhancedStatus, &str)> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&(b'0' + class)) || bytes.get(1) != Some(&b'.') {
        return None;
    }
    // Nearly every code has one digit each (`2.1.0`): read without counting digits.
    if let [_, _, s @ b'0'..=b'9', b'.', d @ b'0'..=b'9', after @ ..] = bytes {
        let rest = match after {
            [] => Some(""),
            [b' ', ..] => text.get(6..),
            _ => None,
        };
        if let Some(rest) = rest {
            let status = EnhancedStatus::new(class, u16::from(s - b'0'), u16::from(d - b'0'));
            return Some((status, rest));
        }
    }
    let (subject, after_subject) = number_prefix(bytes, 2)?;
    if bytes.get(after_subject) != Some(&b'.') {
        return None;
    }
    let (detail, end) = number_prefix(bytes, after_subject + 1)?;
    let rest = match bytes.get(end) {
        None => "",
        Some(b' ') => text.get(end + 1..)?,
        Some(_) => return None,
    };
    Some((EnhancedStatus::new(class, subject, detail), rest))
}

/// Reads 1 to 3 digits starting at `start`; returns the number and the offset after them.
fn number_prefix(bytes: &[u8], start: usize) -> Option<(u16, usize)> {
    let mut value: u16 = 0;
    let mut end = start;
    while let Some(&d) = bytes.get(end).filter(|d| d.is_ascii_digit()) {
        if end - start == 3 {
            return None;
        }
        value = value * 10 + u16::from(d - b'0');
        end += 1;
    }
    (end > start).then_some((value, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_owned_reply_borrows_a_known_text_and_copies_any_other() {
        let wire = b"250 2.6.0 Queued mail for delivery\r\n250 2.6.0 Queued as 42\r\n";
        let (known, used) = parse_reply(wire).unwrap().unwrap();
        let (other, _) = parse_reply(&wire[used..]).unwrap().unwrap();
        let (known, other) = (known.into_owned(), other.into_owned());
        assert!(matches!(
            known.lines[0],
            Cow::Borrowed("Queued mail for delivery")
        ));
        assert!(matches!(&other.lines[0], Cow::Owned(text) if text == "Queued as 42"));
        assert_eq!(
            known,
            Reply::new(
                250,
                Some(EnhancedStatus::new(2, 6, 0)),
                "Queued mail for delivery"
            )
        );
    }

    /// One wire vector: the bytes a server sends and the reply they mean.
    struct Vector {
        wire: &'static [u8],
        /// What the writer produces for this reply, when it differs from `wire`.
        canonical: Option<&'static [u8]>,
        code: u16,
        enhanced: Option<(u8, u16, u16)>,
        lines: &'static [&'static str],
    }

    impl Vector {
        fn expected(&self) -> Reply<'static> {
            Reply::multiline(
                self.code,
                self.enhanced.map(|(c, s, d)| EnhancedStatus::new(c, s, d)),
                self.lines.iter().copied(),
            )
        }

        fn canonical(&self) -> &'static [u8] {
            self.canonical.unwrap_or(self.wire)
        }
    }

    const fn v(
        wire: &'static [u8],
        code: u16,
        enhanced: Option<(u8, u16, u16)>,
        lines: &'static [&'static str],
    ) -> Vector {
        Vector {
            wire,
            canonical: None,
            code,
            enhanced,
            lines,
        }
    }

    const fn non_canonical(
        wire: &'static [u8],
        canonical: &'static [u8],
        code: u16,
        enhanced: Option<(u8, u16, u16)>,
        lines: &'static [&'static str],
    ) -> Vector {
        Vector {
            wire,
            canonical: Some(canonical),
            code,
            enhanced,
            lines,
        }
    }

    /// Every server reply of the PROTOCOL.md §9 transcript, in order.
    const TRANSCRIPT: &[Vector] = &[
        v(b"220 edge1.example ESMTP xshadow\r\n", 220, None, &["edge1.example ESMTP xshadow"]),
        v(
            b"250-edge1.example\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n\
              250-ENHANCEDSTATUSCODES\r\n250 XSHADOW\r\n",
            250,
            None,
            &["edge1.example", "PIPELINING", "SIZE 36700160", "8BITMIME", "ENHANCEDSTATUSCODES", "XSHADOW"],
        ),
        v(b"250 X+QUj+rOf0ag5pssHT5PUA==\r\n", 250, None, &["X+QUj+rOf0ag5pssHT5PUA=="]),
        v(b"250 2.1.0 Sender OK\r\n", 250, Some((2, 1, 0)), &["Sender OK"]),
        v(b"250 2.1.5 Recipient OK\r\n", 250, Some((2, 1, 5)), &["Recipient OK"]),
        v(
            b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
            354,
            None,
            &["Start mail input; end with <CRLF>.<CRLF>"],
        ),
        v(b"250 2.6.0 Queued mail for delivery\r\n", 250, Some((2, 6, 0)), &["Queued mail for delivery"]),
        v(b"251 OK, no discard events\r\n", 251, None, &["OK, no discard events"]),
        v(
            b"221 2.0.0 Service closing transmission channel\r\n",
            221,
            Some((2, 0, 0)),
            &["Service closing transmission channel"],
        ),
        v(
            b"250-3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n250 9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01\r\n",
            250,
            None,
            &["3f2504e0-4f89-41d3-9a0c-0305e82c3301", "9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01"],
        ),
    ];

    /// More vectors: edge cases of the grammar and of enhanced status detection.
    const VECTORS: &[Vector] = &[
        v(b"250\r\n", 250, None, &[""]),
        non_canonical(b"250 \r\n", b"250\r\n", 250, None, &[""]),
        v(b"250-\r\n250 last\r\n", 250, None, &["", "last"]),
        v(b"250 2.0.0\r\n", 250, Some((2, 0, 0)), &[""]),
        v(
            b"550 5.7.1 Not authorized\r\n",
            550,
            Some((5, 7, 1)),
            &["Not authorized"],
        ),
        v(
            b"451 4.4.0 Message failed to be made redundant\r\n",
            451,
            Some((4, 4, 0)),
            &["Message failed to be made redundant"],
        ),
        v(b"553 5.1.123 x\r\n", 553, Some((5, 1, 123)), &["x"]),
        v(
            b"250-2.0.0 first\r\n250 2.0.0 second\r\n",
            250,
            Some((2, 0, 0)),
            &["first", "second"],
        ),
        // The code on later lines is optional; the writer then repeats it.
        non_canonical(
            b"250-2.0.0 first\r\n250 second\r\n",
            b"250-2.0.0 first\r\n250 2.0.0 second\r\n",
            250,
            Some((2, 0, 0)),
            &["first", "second"],
        ),
        // A different code on a later line is text.
        v(
            b"250-2.0.0 first\r\n250 2.0.0 2.1.0 second\r\n",
            250,
            Some((2, 0, 0)),
            &["first", "2.1.0 second"],
        ),
        // Leading zeros are understood, not kept.
        non_canonical(
            b"250 2.01.000 ok\r\n",
            b"250 2.1.0 ok\r\n",
            250,
            Some((2, 1, 0)),
            &["ok"],
        ),
        // One space after the code is dropped, the rest kept.
        v(
            b"250 2.0.0   spaced\r\n",
            250,
            Some((2, 0, 0)),
            &["  spaced"],
        ),
        // Not enhanced codes: wrong class, too many digits, not followed by a space, ids.
        v(b"250 5.0.0 odd\r\n", 250, None, &["5.0.0 odd"]),
        v(b"250 2.1000.0 odd\r\n", 250, None, &["2.1000.0 odd"]),
        v(b"250 2.0.0x\r\n", 250, None, &["2.0.0x"]),
        v(b"250 2.0.\r\n", 250, None, &["2.0."]),
        v(b"250 2..0 x\r\n", 250, None, &["2..0 x"]),
        v(b"250 2.0.0-ok\r\n", 250, None, &["2.0.0-ok"]),
        v(
            b"250-2f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n250 2.0.0 x\r\n",
            250,
            None,
            &["2f2504e0-4f89-41d3-9a0c-0305e82c3301", "2.0.0 x"],
        ),
        v(
            b"250 2+QUj+rOf0ag5pssHT5PUA==\r\n",
            250,
            None,
            &["2+QUj+rOf0ag5pssHT5PUA=="],
        ),
        // Text is UTF-8 and may hold anything but CR and LF.
        v(
            "250 Grüße\t😀 - x\r\n".as_bytes(),
            250,
            None,
            &["Grüße\t😀 - x"],
        ),
        v(b"599-a\r\n599 b\r\n", 599, None, &["a", "b"]),
    ];

    fn all_vectors() -> impl Iterator<Item = &'static Vector> {
        TRANSCRIPT.iter().chain(VECTORS)
    }

    fn read_whole(wire: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ReplyError> {
        ReplyReader::new().read(wire)
    }

    /// Feeds `wire` to one reader one byte more each call; every call before the last must
    /// need more bytes.
    fn read_byte_by_byte(wire: &[u8]) -> Result<(Reply<'_>, usize), (usize, ReplyError)> {
        let mut reader = ReplyReader::new();
        for end in 1..=wire.len() {
            match reader.read(&wire[..end]) {
                Ok(None) => {}
                Ok(Some(found)) => {
                    assert_eq!(end, wire.len(), "reply ended early in {wire:?}");
                    return Ok(found);
                }
                Err(e) => return Err((end, e)),
            }
        }
        panic!("reply never completed: {wire:?}");
    }

    #[test]
    fn every_vector_parses_to_its_reply_and_writes_its_canonical_bytes() {
        for vector in all_vectors() {
            let (reply, used) = read_whole(vector.wire).unwrap().unwrap();
            assert_eq!(used, vector.wire.len(), "{:?}", vector.wire);
            assert_eq!(reply, vector.expected(), "{:?}", vector.wire);
            assert_eq!(reply.to_bytes(), vector.canonical(), "{:?}", vector.wire);
            assert_eq!(vector.expected().to_bytes(), vector.canonical());
            let (again, _) = read_whole(vector.canonical()).unwrap().unwrap();
            assert_eq!(again, vector.expected());
        }
    }

    /// Reads `wire` with the general reader only (no one-line fast path).
    fn read_general(wire: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ReplyError> {
        let mut reader = ReplyReader::new();
        let mut ends = LineEnds::new();
        match reader.scan(wire, &mut ends) {
            Ok(Some(used)) => {
                build_reply(&wire[..used], reader.lines, Some(&ends)).map(|r| Some((r, used)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn a_one_line_reply_is_written_as_the_general_writer_writes_it() {
        let statuses = [
            None,
            Some(EnhancedStatus::new(2, 1, 0)),
            Some(EnhancedStatus::new(5, 9, 9)),
            Some(EnhancedStatus::new(4, 10, 0)),
            Some(EnhancedStatus::new(4, 0, 10)),
            Some(EnhancedStatus::new(12, 0, 0)),
        ];
        for code in [200, 250, 354, 599, 1000, 0] {
            for enhanced in statuses {
                for text in ["", "OK", "Queued mail for delivery", "Grüße"] {
                    let reply = Reply::new(code, enhanced, text);
                    let mut fast = b"before".to_vec();
                    reply.write_to(&mut fast);
                    let mut general = b"before".to_vec();
                    reply.write_lines(&mut general);
                    assert_eq!(fast, general, "{reply:?}");
                }
            }
        }
    }

    #[test]
    fn the_known_text_fast_path_agrees_with_the_general_reader() {
        let wires: &[&[u8]] = &[
            b"250 2.1.0 Sender OK\r\n",
            b"250 2.1.5 Recipient OK\r\n",
            b"250 2.6.0 Queued mail for delivery\r\n250 2.0.0 OK\r\n",
            b"221 2.0.0 Service closing transmission channel\r\n",
            b"250 2.0.0 OK\r\n",
            b"250 OK\r\n",
            b"250 Sender OK\r\n",
            b"550 2.1.0 OK\r\n",
            b"250 5.1.0 OK\r\n",
            b"250 2.1.10 OK\r\n",
            b"250 2.10.0 OK\r\n",
            b"250 2.1.0  OK\r\n",
            b"250 2.1.0 OKx\r\n",
            b"250 2.1.0 ok\r\n",
            b"250 2.1.0 OK, no discard events\r\n",
            b"250 2.1.0 OK\n",
            b"250 2.1.0 OK\r",
            b"250 2.1.0 OK\rx\r\n",
            b"250 2.1.0 OK\r\r\n",
            b"250 2.1.0 OK",
            b"250-2.1.0 OK\r\n250 2.1.0 OK\r\n",
            b"250-OK\r\n250 OK\r\n",
            b"150 2.1.0 OK\r\n",
            b"25O 2.1.0 OK\r\n",
            b"250\r\n",
            b"250 \r\n",
            b"250 2.1.0\r\n",
            b"250 2.1.0 \r\n",
            b"250 2.1.0 Sender OK\xff\r\n",
            b"250 2.1.0 \xffOK\r\n",
            b"599 5.9.9 Recipient OK\r\n",
        ];
        for wire in wires {
            assert_eq!(read_whole(wire), read_general(wire), "{wire:?}");
            if let Ok(Some((reply, _))) = read_whole(wire) {
                assert!(matches!(reply.lines[0], Cow::Borrowed(_)));
            }
        }
        // The line limit counts the CRLF, as in the general reader.
        let wire = b"250 2.1.0 Sender OK\r\n";
        for max_line in wire.len() - 2..=wire.len() + 1 {
            let fast = ReplyReader::with_limits(max_line, 10).read(wire);
            let mut general = ReplyReader::with_limits(max_line, 10);
            let mut ends = LineEnds::new();
            let general = general.scan(wire, &mut ends).map(|used| used.is_some());
            assert_eq!(fast.map(|r| r.is_some()), general, "{max_line}");
        }
        // A known text is read without looking at its bytes as a line, and still equals it.
        let (reply, used) = read_whole(b"250 2.1.5 Recipient OK\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(used, 24);
        assert_eq!(
            reply,
            Reply::new(250, Some(EnhancedStatus::new(2, 1, 5)), "Recipient OK")
        );
    }

    #[test]
    fn an_empty_buffer_needs_more_bytes_and_restarts_a_partial_reply() {
        let mut reader = ReplyReader::new();
        assert_eq!(reader.read(b"250-a\r\n250 "), Ok(None));
        assert_eq!(reader.read(b""), Ok(None));
        let (reply, used) = reader.read(b"251 b\r\n").unwrap().unwrap();
        assert_eq!((reply.code, used), (251, 7));
        assert_eq!(
            ReplyReader::with_limits(0, 1).read(b""),
            Err(ReplyError::LineTooLong { line: 1, max: 0 })
        );
    }

    #[test]
    fn parsed_lines_borrow_the_input() {
        for vector in all_vectors() {
            let (reply, _) = read_whole(vector.wire).unwrap().unwrap();
            assert!(reply.lines.iter().all(|l| matches!(l, Cow::Borrowed(_))));
        }
    }

    #[test]
    fn every_vector_fed_byte_by_byte_gives_the_same_reply() {
        for vector in all_vectors() {
            let (reply, used) = read_byte_by_byte(vector.wire).unwrap();
            assert_eq!(used, vector.wire.len());
            assert_eq!(reply, vector.expected(), "{:?}", vector.wire);
        }
    }

    #[test]
    fn every_vector_split_at_every_point_gives_the_same_reply() {
        for vector in all_vectors() {
            for split in 0..vector.wire.len() {
                let mut reader = ReplyReader::new();
                assert_eq!(
                    reader.read(&vector.wire[..split]),
                    Ok(None),
                    "{:?} at {split}",
                    vector.wire
                );
                let (reply, used) = reader.read(vector.wire).unwrap().unwrap();
                assert_eq!(used, vector.wire.len());
                assert_eq!(reply, vector.expected(), "{:?} at {split}", vector.wire);
            }
        }
    }

    #[test]
    fn the_transcript_replies_back_to_back_are_read_one_at_a_time() {
        let stream: Vec<u8> = TRANSCRIPT
            .iter()
            .flat_map(|v| v.wire.iter().copied())
            .collect();
        let mut reader = ReplyReader::new();
        let mut at = 0;
        for vector in TRANSCRIPT {
            let (reply, used) = reader.read(&stream[at..]).unwrap().unwrap();
            assert_eq!(reply, vector.expected());
            assert_eq!(used, vector.wire.len());
            at += used;
        }
        assert_eq!(at, stream.len());
        assert_eq!(reader.read(&stream[at..]), Ok(None));
    }

    #[test]
    fn the_transcript_replies_written_by_the_server_constructors_are_exact() {
        assert_eq!(
            Reply::xshadow_accepted("X+QUj+rOf0ag5pssHT5PUA==").to_bytes(),
            b"250 X+QUj+rOf0ag5pssHT5PUA==\r\n"
        );
        assert_eq!(
            Reply::no_discard_events().to_bytes(),
            b"251 OK, no discard events\r\n"
        );
        assert_eq!(
            Reply::discard_ids([
                "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                "9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01"
            ])
            .to_bytes(),
            b"250-3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n250 9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01\r\n"
        );
        assert_eq!(
            Reply::discard_ids(["3f2504e0-4f89-41d3-9a0c-0305e82c3301"]).to_bytes(),
            b"250 3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n"
        );
    }

    #[test]
    fn discard_ids_without_ids_is_no_discard_events() {
        assert_eq!(
            Reply::discard_ids(Vec::<String>::new()),
            Reply::no_discard_events()
        );
    }

    #[test]
    fn the_shadow_error_replies_are_exact() {
        let cases: &[(Reply<'static>, &[u8])] = &[
            (
                Reply::bad_sequence(),
                b"503 5.5.1 Bad sequence of commands\r\n",
            ),
            (Reply::send_ehlo_first(), b"503 5.5.2 Send EHLO first\r\n"),
            (
                Reply::command_not_implemented(),
                b"502 5.3.3 Command not implemented\r\n",
            ),
            (Reply::not_authorized(), b"550 5.7.1 Not authorized\r\n"),
            (
                Reply::xshadow_requires_context(),
                b"501 5.0.0 XSHADOW requires Shadow server's context\r\n",
            ),
            (
                Reply::xqdiscard_requires_max(),
                b"501 5.0.0 XQDISCARD requires maximum discard events count\r\n",
            ),
            (
                Reply::invalid_arguments(),
                b"501 5.5.4 Invalid arguments\r\n",
            ),
            (
                Reply::failed_to_be_made_redundant(),
                b"451 4.4.0 Message failed to be made redundant\r\n",
            ),
            (Reply::line_too_long(), b"500 5.5.2 Line too long\r\n"),
            (Reply::xshadowrequest_accepted("ctx"), b"250 ctx\r\n"),
        ];
        for (reply, wire) in cases {
            assert_eq!(reply.to_bytes(), *wire);
            assert_eq!(parse_reply(wire).unwrap().unwrap().0, *reply);
        }
    }

    /// Error vectors: the bytes and the error they must give, whole and byte by byte.
    fn error_vectors() -> Vec<(Vec<u8>, ReplyError)> {
        let long_line = {
            let mut l = b"250 ".to_vec();
            l.resize(DEFAULT_MAX_LINE - 1, b'x');
            l.extend_from_slice(b"\r\n");
            l
        };
        let too_many: Vec<u8> = (0..=DEFAULT_MAX_REPLY_LINES)
            .flat_map(|_| b"250-x\r\n".iter().copied())
            .chain(*b"250 x\r\n")
            .collect();
        vec![
            (
                b"250-a\r\n251 b\r\n".to_vec(),
                ReplyError::MixedCodes {
                    line: 2,
                    first: 250,
                    found: 251,
                },
            ),
            (
                b"250-a\r\n250-b\r\n550 c\r\n".to_vec(),
                ReplyError::MixedCodes {
                    line: 3,
                    first: 250,
                    found: 550,
                },
            ),
            (b"2x0 ok\r\n".to_vec(), ReplyError::BadCode { line: 1 }),
            (b"150 ok\r\n".to_vec(), ReplyError::BadCode { line: 1 }),
            (b"600 ok\r\n".to_vec(), ReplyError::BadCode { line: 1 }),
            (b"25\r\n".to_vec(), ReplyError::BadCode { line: 1 }),
            (b"\r\n".to_vec(), ReplyError::BadCode { line: 1 }),
            (b" 250 ok\r\n".to_vec(), ReplyError::BadCode { line: 1 }),
            (b"250-a\r\nok\r\n".to_vec(), ReplyError::BadCode { line: 2 }),
            (
                b"250x ok\r\n".to_vec(),
                ReplyError::BadSeparator { line: 1 },
            ),
            (
                b"2500 ok\r\n".to_vec(),
                ReplyError::BadSeparator { line: 1 },
            ),
            (b"250 ok\n".to_vec(), ReplyError::BareLineBreak { line: 1 }),
            (
                b"250 o\rk\r\n".to_vec(),
                ReplyError::BareLineBreak { line: 1 },
            ),
            (
                b"250-a\r\n250 b\n".to_vec(),
                ReplyError::BareLineBreak { line: 2 },
            ),
            (b"250 \xff\r\n".to_vec(), ReplyError::NotUtf8 { line: 1 }),
            (
                b"250-ok\r\n250 \xc3\x28\r\n".to_vec(),
                ReplyError::NotUtf8 { line: 2 },
            ),
            (
                long_line,
                ReplyError::LineTooLong {
                    line: 1,
                    max: DEFAULT_MAX_LINE,
                },
            ),
            (
                too_many,
                ReplyError::TooManyLines {
                    max: DEFAULT_MAX_REPLY_LINES,
                },
            ),
        ]
    }

    #[test]
    fn malformed_replies_are_errors_whole_and_byte_by_byte() {
        for (wire, error) in error_vectors() {
            assert_eq!(read_whole(&wire), Err(error), "{wire:?}");
            let (_, got) = read_byte_by_byte(&wire).unwrap_err();
            assert_eq!(got, error, "{wire:?}");
        }
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        let mut wire = b"250 ".to_vec();
        wire.resize(DEFAULT_MAX_LINE - 2, b'x');
        wire.extend_from_slice(b"\r\n");
        assert_eq!(wire.len(), DEFAULT_MAX_LINE);
        let (reply, used) = read_whole(&wire).unwrap().unwrap();
        assert_eq!(used, DEFAULT_MAX_LINE);
        assert_eq!(reply.text().len(), DEFAULT_MAX_LINE - 6);
    }

    #[test]
    fn an_over_long_line_is_an_error_before_its_end_arrives() {
        let mut reader = ReplyReader::with_limits(16, 10);
        let wire = b"250-ok\r\n250 0123456789abcdef";
        for end in 0..8 + 16 {
            assert_eq!(reader.read(&wire[..end]), Ok(None), "at {end}");
        }
        assert_eq!(
            reader.read(&wire[..8 + 16]),
            Err(ReplyError::LineTooLong { line: 2, max: 16 })
        );
    }

    #[test]
    fn a_continuation_line_at_the_line_limit_is_an_error_at_once() {
        let mut reader = ReplyReader::with_limits(DEFAULT_MAX_LINE, 2);
        assert_eq!(reader.read(b"250-a\r\n"), Ok(None));
        assert_eq!(
            reader.read(b"250-a\r\n250-b\r\n"),
            Err(ReplyError::TooManyLines { max: 2 })
        );
        let mut reader = ReplyReader::with_limits(DEFAULT_MAX_LINE, 2);
        assert!(reader.read(b"250-a\r\n250 b\r\n").unwrap().is_some());
    }

    #[test]
    fn a_thousand_id_xqdiscard_reply_fits_the_default_limits() {
        let ids: Vec<String> = (0..1000)
            .map(|i| format!("3f2504e0-4f89-41d3-9a0c-{i:012}"))
            .collect();
        let wire = Reply::discard_ids(ids.iter().map(String::as_str)).to_bytes();
        let (reply, used) = parse_reply(&wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.xqdiscard_ids(1000).unwrap(), ids.as_slice());
    }

    #[test]
    fn feeding_a_big_reply_byte_by_byte_never_rescans_what_was_checked() {
        let wire = Reply::discard_ids((0..200).map(|i| format!("id-{i}"))).to_bytes();
        let mut reader = ReplyReader::new();
        for end in 1..wire.len() {
            assert_eq!(reader.read(&wire[..end]), Ok(None));
            // Everything fed so far has been looked at exactly once: the resume point is the
            // end of the buffer.
            assert_eq!(reader.line_start + reader.scanned, end);
        }
        assert!(reader.read(&wire).unwrap().is_some());
        assert_eq!((reader.line_start, reader.scanned, reader.lines), (0, 0, 0));
    }

    #[test]
    fn a_reader_is_reusable_after_an_error() {
        let mut reader = ReplyReader::new();
        assert!(reader.read(b"250-a\r\n251 b\r\n").is_err());
        assert_eq!(
            reader.read(b"250 ok\r\n").unwrap().unwrap().0,
            Reply::new(250, None, "ok")
        );
    }

    #[test]
    fn a_shorter_buffer_than_before_restarts_instead_of_panicking() {
        let mut reader = ReplyReader::new();
        assert_eq!(reader.read(b"250-abc\r\n250-de"), Ok(None));
        assert_eq!(reader.read(b"2"), Ok(None));
        assert_eq!(reader.read(b"251 x\r\n").unwrap().unwrap().1, 7);
    }

    #[test]
    fn empty_input_needs_more_bytes() {
        assert_eq!(parse_reply(b""), Ok(None));
        assert_eq!(parse_reply(b"250 ok\r"), Ok(None));
        assert_eq!(parse_reply(b"250-ok\r\n"), Ok(None));
    }

    #[test]
    fn into_owned_keeps_the_reply() {
        let wire = b"250-2.0.0 a\r\n250 2.0.0 b\r\n".to_vec();
        let owned = parse_reply(&wire).unwrap().unwrap().0.into_owned();
        drop(wire);
        assert_eq!(
            owned,
            Reply::multiline(250, Some(EnhancedStatus::new(2, 0, 0)), ["a", "b"])
        );
    }

    #[test]
    fn into_owned_keeps_every_line_of_replies_of_any_length() {
        for count in 0..4 {
            let texts: Vec<String> = (0..count).map(|i| format!("line {i}")).collect();
            let mut reply = Reply::multiline(250, None, texts.iter().map(String::as_str));
            if count == 0 {
                // `lines` is public: a reply built by hand may have none.
                reply.lines.clear();
            }
            let expected = reply.clone();
            let owned = reply.into_owned();
            assert_eq!(owned, expected);
            assert_eq!(owned.lines.len(), count);
            assert!(owned.lines.iter().all(|l| matches!(l, Cow::Owned(_))));
        }
    }

    #[test]
    fn xshadow_reply_gives_the_database_id_up_to_the_first_space() {
        let id = |wire: &[u8]| {
            let reply = parse_reply(wire).unwrap().unwrap().0.into_owned();
            reply.xshadow_database_id().map(|id| id.map(str::to_owned))
        };
        assert_eq!(
            id(b"250 X+QUj+rOf0ag5pssHT5PUA==\r\n"),
            Ok(Some("X+QUj+rOf0ag5pssHT5PUA==".into()))
        );
        assert_eq!(
            id(b"250 X+QUj+rOf0ag5pssHT5PUA== more text\r\n"),
            Ok(Some("X+QUj+rOf0ag5pssHT5PUA==".into()))
        );
        assert_eq!(id(b"250 2.0.0 dbid\r\n"), Ok(Some("dbid".into())));
    }

    #[test]
    fn xshadow_refusal_means_carry_on_without_shadowing() {
        for reply in [
            Reply::command_not_implemented(),
            Reply::not_authorized(),
            Reply::bad_sequence(),
        ] {
            assert_eq!(reply.xshadow_database_id(), Ok(None));
        }
    }

    #[test]
    fn xshadow_reply_with_an_empty_or_over_long_database_id_is_a_breach() {
        assert_eq!(
            Reply::new(250, None, "").xshadow_database_id(),
            Err(ShadowReplyError::EmptyDatabaseId)
        );
        assert_eq!(
            Reply::new(250, None, " id").xshadow_database_id(),
            Err(ShadowReplyError::EmptyDatabaseId)
        );
        let long = "x".repeat(MAX_SHADOW_FIELD + 1);
        assert_eq!(
            Reply::xshadow_accepted(long.as_str()).xshadow_database_id(),
            Err(ShadowReplyError::DatabaseIdTooLong { len: 256 })
        );
        let longest = "x".repeat(MAX_SHADOW_FIELD);
        assert_eq!(
            Reply::xshadow_accepted(longest.as_str()).xshadow_database_id(),
            Ok(Some(longest.as_str()))
        );
        assert!(ShadowReplyError::EmptyDatabaseId.is_breach());
    }

    #[test]
    fn xqdiscard_no_events_reply_gives_no_ids() {
        assert_eq!(
            Reply::no_discard_events().xqdiscard_ids(50).unwrap().len(),
            0
        );
    }

    #[test]
    fn xqdiscard_reply_gives_the_ids_in_order() {
        let wire = b"250-3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n250 9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01\r\n";
        let reply = parse_reply(wire).unwrap().unwrap().0;
        assert_eq!(
            reply.xqdiscard_ids(2).unwrap(),
            [
                "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                "9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01"
            ]
        );
    }

    #[test]
    fn xqdiscard_reply_with_more_lines_than_max_is_a_breach() {
        let reply = Reply::discard_ids(["a", "b", "c"]);
        assert_eq!(reply.xqdiscard_ids(3).map(<[_]>::len), Ok(3));
        let err = reply.xqdiscard_ids(2).unwrap_err();
        assert_eq!(err, ShadowReplyError::TooManyDiscardIds { max: 2, got: 3 });
        assert!(err.is_breach());
    }

    #[test]
    fn xqdiscard_reply_with_an_empty_or_over_long_id_is_a_breach() {
        let empty = parse_reply(b"250-a\r\n250\r\n").unwrap().unwrap().0;
        assert_eq!(
            empty.xqdiscard_ids(50),
            Err(ShadowReplyError::EmptyDiscardId { line: 2 })
        );
        let long = "x".repeat(MAX_SHADOW_FIELD + 1);
        assert_eq!(
            Reply::discard_ids(["a", long.as_str()]).xqdiscard_ids(50),
            Err(ShadowReplyError::DiscardIdTooLong { line: 2, len: 256 })
        );
        let no_lines = Reply {
            code: 250,
            enhanced: None,
            lines: SmallVec::new(),
        };
        assert_eq!(
            no_lines.xqdiscard_ids(50),
            Err(ShadowReplyError::NoDiscardIds)
        );
    }

    #[test]
    fn xqdiscard_refusal_is_a_failed_heartbeat_not_a_breach() {
        let err = Reply::bad_sequence().xqdiscard_ids(50).unwrap_err();
        assert_eq!(err, ShadowReplyError::Refused { code: 503 });
        assert!(!err.is_breach());
    }

    #[test]
    fn xqdiscard_reply_with_another_code_is_a_breach() {
        for code in [220, 252, 354] {
            let err = Reply::new(code, None, "x").xqdiscard_ids(50).unwrap_err();
            assert_eq!(err, ShadowReplyError::UnexpectedCode { code });
            assert!(err.is_breach());
        }
    }

    #[test]
    fn errors_display_what_was_wrong() {
        assert_eq!(
            ReplyError::MixedCodes {
                line: 2,
                first: 250,
                found: 251
            }
            .to_string(),
            "reply line 2 has code 251, but the reply started with 250"
        );
        assert!(
            ShadowReplyError::TooManyDiscardIds { max: 2, got: 3 }
                .to_string()
                .contains("3 discard ids")
        );
    }

    /// Reply text: printable ASCII and some non-ASCII, never CR or LF.
    fn line_text() -> impl Strategy<Value = String> {
        "[ -~äß€😀\t]{0,24}"
    }

    prop_compose! {
        /// Any reply whose wire form reads back as itself.
        ///
        /// One case is ambiguous on the wire and generated around: a reply without an
        /// enhanced code whose first line's text itself begins with `c.x.y` (`c` the code's
        /// class) followed by a space or the end would read back as having that enhanced
        /// code; such first lines get a leading `~`.
        fn any_reply()(
            code in 200u16..=599,
            enhanced in proptest::option::of((0u16..=999, 0u16..=999)),
            lines in proptest::collection::vec(line_text(), 1..6),
        ) -> Reply<'static> {
            let class = (code / 100) as u8;
            let enhanced = enhanced.map(|(s, d)| EnhancedStatus::new(class, s, d));
            let mut lines = lines;
            if enhanced.is_none() && enhanced_prefix(&lines[0], class).is_some() {
                lines[0].insert(0, '~');
            }
            Reply::multiline(code, enhanced, lines)
        }
    }

    proptest! {
        #[test]
        fn any_written_reply_reads_back_as_itself(reply in any_reply()) {
            let wire = reply.to_bytes();
            let (parsed, used) = parse_reply(&wire).unwrap().unwrap();
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(&parsed, &reply);
            let (split, _) = read_byte_by_byte(&wire).unwrap();
            prop_assert_eq!(split, reply);
        }

        #[test]
        fn replies_shaped_like_known_ones_read_as_the_general_reader_reads_them(
            code in prop_oneof![Just(250u16), Just(221), Just(550), 100u16..=699],
            status in proptest::option::of((0u8..=9, 0u16..=12, 0u16..=12)),
            text in prop_oneof![
                proptest::sample::select(KNOWN_TEXTS.to_vec()).prop_map(String::from),
                line_text(),
            ],
            cut in 0usize..40,
            end in proptest::sample::select(vec!["\r\n", "\n", "\r", "", "\r\n250 x\r\n", "x\r\n"]),
            max_line in prop_oneof![Just(DEFAULT_MAX_LINE), 0usize..48],
        ) {
            let mut wire = format!("{code} ");
            if let Some((class, subject, detail)) = status {
                wire.push_str(&format!("{class}.{subject}.{detail} "));
            }
            let text = text.get(..cut.min(text.len())).unwrap_or(&text);
            wire.push_str(text);
            wire.push_str(end);
            let wire = wire.as_bytes();
            let fast = ReplyReader::with_limits(max_line, 10).read(wire);
            let mut general = ReplyReader::with_limits(max_line, 10);
            let mut ends = LineEnds::new();
            let general = match general.scan(wire, &mut ends) {
                Ok(Some(used)) => build_reply(&wire[..used], general.lines, Some(&ends))
                    .map(|r| Some((r, used))),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            prop_assert_eq!(fast, general);
        }

        #[test]
        fn any_bytes_read_whole_or_byte_by_byte_agree(
            wire in proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'-'), Just(b' '), Just(b'.'), b'0'..=b'9', any::<u8>()],
                0..64,
            ),
        ) {
            let whole = ReplyReader::with_limits(32, 4).read(&wire);
            let mut reader = ReplyReader::with_limits(32, 4);
            let mut stepped = Ok(None);
            for end in 0..=wire.len() {
                stepped = reader.read(&wire[..end]);
                if !matches!(stepped, Ok(None)) {
                    break;
                }
            }
            prop_assert_eq!(whole, stepped);
        }
    }
}
