//! Message-body codecs: the DATA dot-stuffing writer ([`DotStuffer`], [`stuff`]), the streaming
//! dot-unstuffing reader ([`DotReader`]) and BDAT chunk accounting ([`BdatChunk`],
//! [`MessageSize`]).
//!
//! # Lines, dots and the end of DATA
//!
//! A line starts at the start of the message and after every CRLF. Only CRLF ends a line: a
//! bare LF or a bare CR is an ordinary data byte, passed through untouched in both directions.
//!
//! - The writer doubles a `.` at the start of every line and ends the message with `.<CRLF>`
//!   when the content so far is empty or ends with CRLF, and with `<CRLF>.<CRLF>` otherwise.
//! - The reader ends the body only at `<CRLF>.<CRLF>` (the first CRLF belongs to the body), or
//!   at `.<CRLF>` at the very start of the message (an empty body). At any other line start it
//!   deletes a leading `.` (RFC 5321 §4.5.2). The "SMTP smuggling" sequences `<LF>.<CRLF>`,
//!   `<LF>.<LF>`, `<CR>.<CRLF>`, `<CRLF>.<LF>` and `<CRLF>.<CR>` followed by anything but LF
//!   are data and never end the body.
//!
//! Because the terminator supplies the final CRLF, a round trip through the writer and the
//! reader gives the body back unchanged when it is empty or ends with CRLF, and with CRLF
//! appended otherwise.
//!
//! Both directions search only for the one sequence that matters, `<CRLF>.`, with
//! [`memchr::memmem`] (after a line that starts with a dot, the reader first looks whether the
//! next line does too, with one [`memchr::memchr`] for its CR), and copy everything between
//! matches in bulk.

use std::sync::LazyLock;

use memchr::memchr;
use memchr::memmem::Finder;

/// The only sequence inside a chunk where a line starts with a dot.
static LINE_START_DOT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n."));

/// The index of the first dot in `bytes` at or after `from` that starts a line (follows a
/// CRLF), the CRLF also at or after `from`.
///
/// With `after_dot` (the search goes on right after a line-start dot), the line is read to its
/// first CR before anything else: lines that start with a dot come in runs (quoted text, or a
/// whole body of them), and one `memchr` for the CR costs about half a `memmem` search for
/// `<CRLF>.`. Any later match starts at a CR, so when this line does not end in `<CRLF>.` the
/// `memmem` search goes on after its first CR.
fn next_line_start_dot(bytes: &[u8], from: usize, after_dot: bool) -> Option<usize> {
    let mut from = from;
    if after_dot {
        let cr = from + memchr(b'\r', bytes.get(from..)?)?;
        if bytes.get(cr + 1..cr + 3) == Some(b"\n.") {
            return Some(cr + 2);
        }
        from = cr + 1;
    }
    LINE_START_DOT
        .find(bytes.get(from..)?)
        .map(|found| from + found + 2)
}

/// Where a byte stream stands with respect to line starts, after its last byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// At a line start: the start of the message or right after CRLF.
    LineStart,
    /// Right after a CR that may begin a CRLF.
    Cr,
    /// Anywhere else.
    Mid,
}

impl Tail {
    /// The position after `bytes`, given the position before them.
    fn after(self, bytes: &[u8]) -> Tail {
        match bytes {
            [] => self,
            [.., b'\r'] => Tail::Cr,
            [.., b'\r', b'\n'] => Tail::LineStart,
            [b'\n'] if self == Tail::Cr => Tail::LineStart,
            _ => Tail::Mid,
        }
    }

    /// The index in `chunk` of the first line start that began before `chunk`, if it is a dot.
    fn carried_dot(self, chunk: &[u8]) -> Option<usize> {
        match (self, chunk) {
            (Tail::LineStart, [b'.', ..]) => Some(0),
            (Tail::Cr, [b'\n', b'.', ..]) => Some(1),
            _ => None,
        }
    }
}

/// The streaming DATA writer: doubles every line-leading dot and writes the terminator.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    tail: Tail,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A writer at the start of a message.
    pub fn new() -> Self {
        Self {
            tail: Tail::LineStart,
        }
    }

    /// Appends the next `chunk` of the message to `out`, with every line-leading dot doubled.
    pub fn write(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if chunk.is_empty() {
            return;
        }
        out.reserve(chunk.len() + 1);
        let mut copied = 0;
        if let Some(dot) = self.tail.carried_dot(chunk) {
            out.extend_from_slice(chunk.get(..dot).unwrap_or_default());
            out.push(b'.');
            copied = dot;
        }
        for at in LINE_START_DOT.find_iter(chunk) {
            let dot = at + 2;
            out.extend_from_slice(chunk.get(copied..dot).unwrap_or_default());
            out.push(b'.');
            copied = dot;
        }
        out.extend_from_slice(chunk.get(copied..).unwrap_or_default());
        self.tail = self.tail.after(chunk);
    }

    /// Writes the end-of-data terminator: `.<CRLF>` after CRLF or nothing, else `<CRLF>.<CRLF>`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.tail == Tail::LineStart {
            out.extend_from_slice(b".\r\n");
        } else {
            out.extend_from_slice(b"\r\n.\r\n");
        }
    }
}

/// Appends the whole message `body`, dot-stuffed and terminated, to `out`.
pub fn stuff(body: &[u8], out: &mut Vec<u8>) {
    // The body, a few doubled dots and the terminator: usually one allocation.
    out.reserve(body.len() + 16);
    let mut stuffer = DotStuffer::new();
    stuffer.write(body, out);
    stuffer.finish(out);
}

/// What one [`DotReader::read`] call did with its chunk.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DotProgress {
    /// Bytes of the chunk consumed: all of it unless `done`, else up to the terminator's end.
    pub consumed: usize,
    /// Whether the terminator has been read; bytes after `consumed` are not the body's.
    pub done: bool,
}

/// Where the reader stands between two bytes of the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// In the body; the line-start position after the last byte.
    Body(Tail),
    /// A line started with a dot (not written): terminator or deleted dot, not yet known.
    Dot,
    /// A line started with `.<CR>` (neither written): terminator if LF follows.
    DotCr,
    /// The terminator has been read.
    Done,
}

/// The streaming DATA reader: un-stuffs the body into a caller buffer until `<CRLF>.<CRLF>`.
#[derive(Debug, Clone)]
pub struct DotReader {
    state: ReadState,
    size: u64,
    limit: u64,
}

impl Default for DotReader {
    fn default() -> Self {
        Self::new()
    }
}

impl DotReader {
    /// A reader at the start of a message, without a size limit.
    pub fn new() -> Self {
        Self::with_limit(u64::MAX)
    }

    /// A reader that writes at most `max` body bytes to the output and reports going over.
    pub fn with_limit(max: u64) -> Self {
        Self {
            state: ReadState::Body(Tail::LineStart),
            size: 0,
            limit: max,
        }
    }

    /// Un-stuffs the next `chunk` of the wire into `out`, stopping right after the terminator.
    pub fn read(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> DotProgress {
        let mut at = 0;
        loop {
            let rest = chunk.get(at..).unwrap_or_default();
            match self.state {
                ReadState::Done => {
                    return DotProgress {
                        consumed: at,
                        done: true,
                    };
                }
                ReadState::Dot => match rest {
                    [] => break,
                    [b'\r'] => {
                        self.state = ReadState::DotCr;
                        break;
                    }
                    [b'\r', b'\n', ..] => {
                        self.state = ReadState::Done;
                        at += 2;
                    }
                    // The dot is deleted; the byte after it is data in the middle of a line.
                    _ => self.state = ReadState::Body(Tail::Mid),
                },
                ReadState::DotCr => match rest {
                    [] => break,
                    [b'\n', ..] => {
                        self.state = ReadState::Done;
                        at += 1;
                    }
                    // The dot is deleted; the CR held back is data.
                    _ => {
                        self.emit(b"\r", out);
                        self.state = ReadState::Body(Tail::Cr);
                    }
                },
                ReadState::Body(tail) => {
                    if rest.is_empty() {
                        break;
                    }
                    let dot = match tail.carried_dot(rest) {
                        Some(dot) => {
                            self.emit(rest.get(..dot).unwrap_or_default(), out);
                            Some(dot)
                        }
                        None => self.unstuff(rest, out),
                    };
                    match dot {
                        Some(dot) => {
                            self.state = ReadState::Dot;
                            at += dot + 1;
                        }
                        None => {
                            self.state = ReadState::Body(tail.after(rest));
                            break;
                        }
                    }
                }
            }
        }
        DotProgress {
            consumed: chunk.len(),
            done: false,
        }
    }

    /// Appends `rest`, which starts in the body (not at a dot carried over from the last
    /// chunk), with every ordinary stuffed dot deleted. Stops at the first line-start dot the
    /// state machine must decide (one followed by CR, which may begin the terminator, or by
    /// the end of `rest`): everything before it is written and its index is returned.
    ///
    /// An ordinary stuffed dot (a line-start dot followed by any byte but CR) is deleted here
    /// and the search goes on, without a round trip through [`ReadState::Dot`]. That is what
    /// the state machine does with such a dot: `Dot` followed by a byte that is not CR becomes
    /// `Body(Tail::Mid)` at that byte, and the search goes on from there.
    fn unstuff(&mut self, rest: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut copied = 0;
        let mut after_dot = false;
        while let Some(dot) = next_line_start_dot(rest, copied, after_dot) {
            self.emit(rest.get(copied..dot).unwrap_or_default(), out);
            match rest.get(dot + 1) {
                Some(&next) if next != b'\r' => copied = dot + 1,
                _ => return Some(dot),
            }
            after_dot = true;
        }
        self.emit(rest.get(copied..).unwrap_or_default(), out);
        None
    }

    /// Counts `bytes` of body and appends as many of them as the limit still allows.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let room = self.limit.saturating_sub(self.size);
        let kept = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
        out.extend_from_slice(bytes.get(..kept).unwrap_or(bytes));
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        self.size = self.size.saturating_add(len);
    }

    /// Body bytes seen so far after un-stuffing, written or not (saturating).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The most body bytes this reader writes to the output.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the body has grown past the limit (the output then holds only `limit` bytes).
    pub fn is_over_limit(&self) -> bool {
        self.size > self.limit
    }

    /// Whether the terminator has been read.
    pub fn is_done(&self) -> bool {
        self.state == ReadState::Done
    }
}

/// One BDAT chunk (RFC 3030): how many of its announced octets are still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BdatChunk {
    size: u64,
    remaining: u64,
    last: bool,
}

impl BdatChunk {
    /// A chunk announced by `BDAT <size>` (with `LAST` when `last`), none of it read yet.
    pub fn new(size: u64, last: bool) -> Self {
        Self {
            size,
            remaining: size,
            last,
        }
    }

    /// Splits off the front of `input` that belongs to this chunk; says whether it is complete.
    pub fn take<'a>(&mut self, input: &'a [u8]) -> (&'a [u8], bool) {
        let len = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        let mine = input.get(..len).unwrap_or(input);
        let taken = u64::try_from(mine.len()).unwrap_or(u64::MAX);
        self.remaining = self.remaining.saturating_sub(taken);
        (mine, self.is_complete())
    }

    /// The size announced by the BDAT command.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Octets of this chunk not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether the BDAT command carried `LAST`.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// Whether every octet of this chunk has been read.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }
}

/// The running size of a message sent in BDAT chunks, saturating, against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSize {
    total: u64,
    limit: u64,
}

impl Default for MessageSize {
    fn default() -> Self {
        Self::new(u64::MAX)
    }
}

impl MessageSize {
    /// An empty message that may grow to `limit` octets.
    pub fn new(limit: u64) -> Self {
        Self { total: 0, limit }
    }

    /// Adds a chunk of `size` octets; the total saturates at `u64::MAX`.
    pub fn add(&mut self, size: u64) {
        self.total = self.total.saturating_add(size);
    }

    /// Whether adding a chunk of `size` octets would take the message past the limit.
    pub fn would_exceed(&self, size: u64) -> bool {
        self.total.saturating_add(size) > self.limit
    }

    /// The octets added so far (saturating).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The largest message size allowed.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the message has grown past the limit.
    pub fn is_over_limit(&self) -> bool {
        self.total > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bodies and their stuffed wire form, terminator included. The reader gives back the body
    /// as [`read_back`] says.
    const VECTORS: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b".a\r\n", b"..a\r\n.\r\n"),
        (b"..\r\n", b"...\r\n.\r\n"),
        (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
        (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b"a\r\n..\r\n", b"a\r\n...\r\n.\r\n"),
        (b"a\r\n.\r\n.\r\n", b"a\r\n..\r\n..\r\n.\r\n"),
        (b"\r\n\r\n.\r\n\r\n", b"\r\n\r\n..\r\n\r\n.\r\n"),
        (b"\r\r\n.x\r\n", b"\r\r\n..x\r\n.\r\n"),
        (b"a\r", b"a\r\r\n.\r\n"),
        (b"a\n", b"a\n\r\n.\r\n"),
        (b"a\n.b\r\n", b"a\n.b\r\n.\r\n"),
        (b"a\r.b\r\n", b"a\r.b\r\n.\r\n"),
        (b"a\n.\r\n", b"a\n.\r\n.\r\n"),
        (b"a\n.\n", b"a\n.\n\r\n.\r\n"),
        (b"a\r.\r\n", b"a\r.\r\n.\r\n"),
        (b"a\r\n.\n", b"a\r\n..\n\r\n.\r\n"),
        (b"a\r\n.\rb\r\n", b"a\r\n..\rb\r\n.\r\n"),
        (b"a\r\n.\r\r\n", b"a\r\n..\r\r\n.\r\n"),
        (b"\x00\xff.\r\n\x80", b"\x00\xff.\r\n\x80\r\n.\r\n"),
    ];

    /// Wire bytes a sender might smuggle, each ending with a real terminator, and the body
    /// they must give.
    const SMUGGLING: &[(&[u8], &[u8])] = &[
        (b"a\n.\r\nMAIL\r\n.\r\n", b"a\n.\r\nMAIL\r\n"),
        (b"a\n.\nMAIL\r\n.\r\n", b"a\n.\nMAIL\r\n"),
        (b"a\r.\r\nMAIL\r\n.\r\n", b"a\r.\r\nMAIL\r\n"),
        (b"a\r\n.\nMAIL\r\n.\r\n", b"a\r\n\nMAIL\r\n"),
        (b"a\r\n.\rMAIL\r\n.\r\n", b"a\r\n\rMAIL\r\n"),
        (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\r\n"),
        (b".\nMAIL\r\n.\r\n", b"\nMAIL\r\n"),
        (b".\rMAIL\r\n.\r\n", b"\rMAIL\r\n"),
        (b"\n.\r\n.\r\n", b"\n.\r\n"),
        (b"\r.\r\n.\r\n", b"\r.\r\n"),
    ];

    /// Bytes a client pipelines after the terminator; never the body's.
    const PIPELINED: &[u8] = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n";

    /// What the reader gives back for `body` written by the writer.
    fn read_back(body: &[u8]) -> Vec<u8> {
        let mut expected = body.to_vec();
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        expected
    }

    fn stuffed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        stuff(body, &mut out);
        out
    }

    fn stuffed_in_pieces(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut stuffer = DotStuffer::new();
        for piece in pieces {
            stuffer.write(piece, &mut out);
        }
        stuffer.finish(&mut out);
        out
    }

    /// Feeds `pieces` to a reader in order; returns the body, the wire bytes consumed in all
    /// and whether the terminator was read.
    fn read_in_pieces(reader: &mut DotReader, pieces: &[&[u8]]) -> (Vec<u8>, usize, bool) {
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in pieces {
            let progress = reader.read(piece, &mut out);
            assert!(progress.consumed <= piece.len());
            consumed += progress.consumed;
            if progress.done {
                return (out, consumed, true);
            }
            assert_eq!(
                progress.consumed,
                piece.len(),
                "a chunk not done is consumed whole"
            );
        }
        (out, consumed, false)
    }

    fn read_whole(wire: &[u8]) -> (Vec<u8>, usize, bool) {
        read_in_pieces(&mut DotReader::new(), &[wire])
    }

    fn split_at_points<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for point in points {
            pieces.push(&bytes[start..point]);
            start = point;
        }
        pieces.push(&bytes[start..]);
        pieces
    }

    fn byte_by_byte(bytes: &[u8]) -> Vec<&[u8]> {
        bytes.chunks(1).collect()
    }

    /// A small deterministic generator for random split points.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % 1_000_003) as usize
        }
    }

    /// Every way to feed `bytes` the tests try: whole, byte by byte, in two at every point,
    /// and at random points.
    fn every_split(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
        let mut splits = vec![vec![bytes], byte_by_byte(bytes)];
        for point in 0..=bytes.len() {
            splits.push(vec![&bytes[..point], &bytes[point..]]);
        }
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ bytes.len() as u64);
        for count in 1..20 {
            let points: Vec<usize> = (0..count).map(|_| rng.next()).collect();
            splits.push(split_at_points(bytes, &points));
        }
        splits
    }

    /// A line-by-line model of the reader, written for clarity rather than speed.
    fn reference_read(wire: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut out = Vec::new();
        let mut line_start = true;
        let mut i = 0;
        while i < wire.len() {
            if line_start && wire[i] == b'.' {
                if wire[i + 1..].starts_with(b"\r\n") {
                    return (out, i + 3, true);
                }
                if i + 1 == wire.len() || wire[i + 1..] == *b"\r" {
                    return (out, wire.len(), false);
                }
                line_start = false;
                i += 1;
                continue;
            }
            out.push(wire[i]);
            line_start = wire[i] == b'\n' && i > 0 && wire[i - 1] == b'\r';
            i += 1;
        }
        (out, wire.len(), false)
    }

    #[test]
    fn writer_stuffs_every_vector() {
        for (body, wire) in VECTORS {
            assert_eq!(
                stuffed(body),
                *wire,
                "body {:?}",
                body.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn writer_gives_the_same_bytes_at_every_split() {
        for (body, wire) in VECTORS {
            for pieces in every_split(body) {
                assert_eq!(stuffed_in_pieces(&pieces), *wire, "pieces {pieces:?}");
            }
        }
    }

    #[test]
    fn reader_unstuffs_every_vector_at_every_split() {
        for (body, wire) in VECTORS {
            let mut with_pipelined = wire.to_vec();
            with_pipelined.extend_from_slice(PIPELINED);
            for pieces in every_split(&with_pipelined) {
                let (out, consumed, done) = read_in_pieces(&mut DotReader::new(), &pieces);
                assert!(done, "pieces {pieces:?}");
                assert_eq!(out, read_back(body), "pieces {pieces:?}");
                assert_eq!(consumed, wire.len(), "pieces {pieces:?}");
            }
        }
    }

    #[test]
    fn smuggled_sequences_do_not_end_the_body() {
        for (wire, body) in SMUGGLING {
            for pieces in every_split(wire) {
                let (out, consumed, done) = read_in_pieces(&mut DotReader::new(), &pieces);
                assert!(done, "pieces {pieces:?}");
                assert_eq!(out, *body, "pieces {pieces:?}");
                assert_eq!(consumed, wire.len(), "pieces {pieces:?}");
            }
        }
    }

    #[test]
    fn smuggled_lf_dot_crlf_does_not_end_the_body() {
        assert_eq!(
            read_whole(b"a\n.\r\nRSET\r\n"),
            (b"a\n.\r\nRSET\r\n".to_vec(), 11, false)
        );
    }

    #[test]
    fn smuggled_lf_dot_lf_does_not_end_the_body() {
        assert_eq!(
            read_whole(b"a\n.\nRSET\r\n"),
            (b"a\n.\nRSET\r\n".to_vec(), 10, false)
        );
    }

    #[test]
    fn smuggled_cr_dot_crlf_does_not_end_the_body() {
        assert_eq!(
            read_whole(b"a\r.\r\nRSET\r\n"),
            (b"a\r.\r\nRSET\r\n".to_vec(), 11, false)
        );
    }

    #[test]
    fn smuggled_crlf_dot_lf_does_not_end_the_body_and_loses_its_dot() {
        assert_eq!(
            read_whole(b"a\r\n.\nRSET\r\n"),
            (b"a\r\n\nRSET\r\n".to_vec(), 11, false)
        );
    }

    #[test]
    fn smuggled_crlf_dot_cr_does_not_end_the_body_and_loses_its_dot() {
        assert_eq!(
            read_whole(b"a\r\n.\rRSET\r\n"),
            (b"a\r\n\rRSET\r\n".to_vec(), 11, false)
        );
    }

    #[test]
    fn crlf_dot_cr_at_the_end_of_a_chunk_waits_for_the_next_byte() {
        let mut reader = DotReader::new();
        let mut out = Vec::new();
        let progress = reader.read(b"a\r\n.\r", &mut out);
        assert_eq!(
            progress,
            DotProgress {
                consumed: 5,
                done: false
            }
        );
        assert_eq!(out, b"a\r\n");
        let progress = reader.read(b"X\r\n.\r\n", &mut out);
        assert_eq!(
            progress,
            DotProgress {
                consumed: 6,
                done: true
            }
        );
        assert_eq!(out, b"a\r\n\rX\r\n");
    }

    #[test]
    fn dot_on_the_first_line_is_deleted() {
        assert_eq!(
            read_whole(b"..hello\r\n.\r\n"),
            (b".hello\r\n".to_vec(), 12, true)
        );
        assert_eq!(
            read_whole(b".hello\r\n.\r\n"),
            (b"hello\r\n".to_vec(), 11, true)
        );
    }

    #[test]
    fn dot_crlf_at_the_start_is_an_empty_body() {
        let mut wire = b".\r\n".to_vec();
        wire.extend_from_slice(PIPELINED);
        assert_eq!(read_whole(&wire), (Vec::new(), 3, true));
    }

    #[test]
    fn empty_input_reads_nothing() {
        let mut reader = DotReader::new();
        let mut out = Vec::new();
        assert_eq!(
            reader.read(b"", &mut out),
            DotProgress {
                consumed: 0,
                done: false
            }
        );
        assert!(out.is_empty());
        assert!(!reader.is_done());
    }

    #[test]
    fn pipelined_commands_after_the_terminator_are_not_consumed() {
        let mut wire = b"Subject: x\r\n\r\nbody\r\n.\r\n".to_vec();
        let body_end = wire.len();
        wire.extend_from_slice(PIPELINED);
        let mut reader = DotReader::new();
        let mut out = Vec::new();
        let progress = reader.read(&wire, &mut out);
        assert_eq!(
            progress,
            DotProgress {
                consumed: body_end,
                done: true
            }
        );
        assert_eq!(&wire[progress.consumed..], PIPELINED);
        assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn a_done_reader_consumes_nothing_more() {
        let mut reader = DotReader::new();
        let mut out = Vec::new();
        assert!(reader.read(b".\r\n", &mut out).done);
        assert!(reader.is_done());
        assert_eq!(
            reader.read(b"a\r\n.\r\n", &mut out),
            DotProgress {
                consumed: 0,
                done: true
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn over_limit_body_still_ends_at_the_terminator_with_output_capped() {
        let wire = b"abcdef\r\n..gh\r\n.\r\nQUIT\r\n";
        for pieces in every_split(wire) {
            let mut reader = DotReader::with_limit(3);
            let (out, consumed, done) = read_in_pieces(&mut reader, &pieces);
            assert!(done);
            assert_eq!(consumed, wire.len() - 6);
            assert_eq!(out, b"abc");
            assert_eq!(reader.size(), 13);
            assert!(reader.is_over_limit());
        }
    }

    #[test]
    fn body_of_exactly_the_limit_is_not_over_it() {
        let mut reader = DotReader::with_limit(5);
        let (out, _, done) = read_in_pieces(&mut reader, &[b"abc\r\n.\r\n"]);
        assert!(done);
        assert_eq!(out, b"abc\r\n");
        assert_eq!(reader.size(), 5);
        assert!(!reader.is_over_limit());
    }

    #[test]
    fn zero_limit_writes_nothing_but_counts_everything() {
        let mut reader = DotReader::with_limit(0);
        let (out, _, done) = read_in_pieces(&mut reader, &[b"x\r\n.\r", b"y\r\n.\r\n"]);
        assert!(done);
        assert!(out.is_empty());
        assert_eq!(reader.size(), 7);
        assert!(reader.is_over_limit());
    }

    #[test]
    fn reader_matches_the_line_model_on_tricky_bytes() {
        let alphabet = [b'\r', b'\n', b'.', b'x'];
        // Every wire of up to six bytes over the alphabet.
        for len in 0..=6u32 {
            for mut n in 0..4usize.pow(len) {
                let mut wire = Vec::new();
                for _ in 0..len {
                    wire.push(alphabet[n % 4]);
                    n /= 4;
                }
                let expected = reference_read(&wire);
                for pieces in every_split(&wire) {
                    assert_eq!(read_in_pieces(&mut DotReader::new(), &pieces), expected);
                }
            }
        }
    }

    #[test]
    fn bdat_of_the_largest_size_is_counted_without_overflow() {
        let mut chunk = BdatChunk::new(u64::MAX, false);
        assert_eq!(chunk.take(b"0123456789"), (&b"0123456789"[..], false));
        assert_eq!(chunk.remaining(), u64::MAX - 10);
        assert_eq!(chunk.size(), u64::MAX);
        assert!(!chunk.is_complete());
        assert!(!chunk.is_last());
    }

    #[test]
    fn bdat_zero_last_is_complete_at_once_and_takes_nothing() {
        let mut chunk = BdatChunk::new(0, true);
        assert!(chunk.is_complete());
        assert!(chunk.is_last());
        assert_eq!(chunk.take(b"QUIT\r\n"), (&b""[..], true));
        assert_eq!(chunk.take(b""), (&b""[..], true));
    }

    #[test]
    fn bdat_chunk_split_across_inputs_takes_exactly_its_octets() {
        let mut chunk = BdatChunk::new(10, true);
        assert_eq!(chunk.take(b""), (&b""[..], false));
        assert_eq!(chunk.take(b"hello"), (&b"hello"[..], false));
        assert_eq!(chunk.remaining(), 5);
        assert_eq!(chunk.take(b"wor"), (&b"wor"[..], false));
        assert_eq!(chunk.take(b"ldQUIT\r\n"), (&b"ld"[..], true));
        assert_eq!(chunk.remaining(), 0);
        assert_eq!(chunk.take(b"QUIT\r\n"), (&b""[..], true));
    }

    #[test]
    fn bdat_chunk_fed_byte_by_byte_takes_exactly_its_octets() {
        let input = b"0123456789ABCDEF";
        let mut chunk = BdatChunk::new(7, false);
        let mut taken = Vec::new();
        for byte in input.chunks(1) {
            let (mine, complete) = chunk.take(byte);
            taken.extend_from_slice(mine);
            assert_eq!(complete, taken.len() == 7);
        }
        assert_eq!(taken, b"0123456");
    }

    #[test]
    fn message_size_saturates_across_huge_bdat_chunks() {
        let mut size = MessageSize::new(1_000);
        size.add(u64::MAX);
        size.add(5);
        assert_eq!(size.total(), u64::MAX);
        assert!(size.is_over_limit());
        assert!(size.would_exceed(1));
    }

    #[test]
    fn message_size_at_the_limit_is_not_over_it() {
        let mut size = MessageSize::new(10);
        assert!(!size.would_exceed(10));
        size.add(4);
        size.add(6);
        assert!(!size.is_over_limit());
        assert!(size.would_exceed(1));
        size.add(0);
        assert_eq!(size.total(), 10);
        assert_eq!(size.limit(), 10);
        assert!(!MessageSize::default().would_exceed(u64::MAX));
    }

    /// Bytes with the interesting ones (CR, LF, dot) common.
    fn tricky_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()],
            0..max,
        )
    }

    proptest! {
        /// The terminator supplies a final CRLF, so a body that is neither empty nor ends in
        /// CRLF comes back with CRLF appended.
        #[test]
        fn unstuffing_undoes_stuffing_up_to_the_final_crlf(
            body in tricky_bytes(200),
            points in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let wire = stuffed(&body);
            let mut with_pipelined = wire.clone();
            with_pipelined.extend_from_slice(PIPELINED);
            let expected = (read_back(&body), wire.len(), true);
            prop_assert_eq!(read_whole(&with_pipelined), expected.clone());
            let pieces = split_at_points(&with_pipelined, &points);
            prop_assert_eq!(read_in_pieces(&mut DotReader::new(), &pieces), expected);
        }

        #[test]
        fn stuffing_in_pieces_equals_stuffing_whole(
            body in tricky_bytes(200),
            points in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            prop_assert_eq!(stuffed_in_pieces(&split_at_points(&body, &points)), stuffed(&body));
        }

        #[test]
        fn stuffing_never_produces_a_premature_terminator(body in tricky_bytes(200)) {
            let wire = stuffed(&body);
            let first = memchr::memmem::find(&wire, b"\r\n.\r\n");
            if body.is_empty() {
                prop_assert_eq!(wire, b".\r\n".to_vec());
            } else {
                prop_assert!(!wire.starts_with(b".\r\n"));
                prop_assert_eq!(first, Some(wire.len() - 5));
            }
        }

        #[test]
        fn reader_matches_the_line_model_at_any_split(
            wire in tricky_bytes(200),
            points in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let expected = reference_read(&wire);
            prop_assert_eq!(read_whole(&wire), expected.clone());
            let pieces = split_at_points(&wire, &points);
            prop_assert_eq!(read_in_pieces(&mut DotReader::new(), &pieces), expected);
        }

        #[test]
        fn reader_output_never_exceeds_its_limit(
            wire in tricky_bytes(200),
            limit in 0u64..64,
        ) {
            let mut reader = DotReader::with_limit(limit);
            let (out, _, _) = read_in_pieces(&mut reader, &[&wire]);
            let unlimited = reference_read(&wire).0;
            prop_assert_eq!(reader.size(), unlimited.len() as u64);
            prop_assert_eq!(reader.is_over_limit(), unlimited.len() as u64 > limit);
            prop_assert_eq!(&out[..], &unlimited[..unlimited.len().min(limit as usize)]);
        }

        #[test]
        fn bdat_chunk_takes_exactly_its_size_at_any_split(
            size in 0u64..300,
            input in prop::collection::vec(any::<u8>(), 0..300),
            points in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut chunk = BdatChunk::new(size, false);
            let mut taken = Vec::new();
            for piece in split_at_points(&input, &points) {
                let (mine, complete) = chunk.take(piece);
                taken.extend_from_slice(mine);
                prop_assert_eq!(complete, taken.len() as u64 == size);
            }
            let expected = input.len().min(size as usize);
            prop_assert_eq!(&taken[..], &input[..expected]);
            prop_assert_eq!(chunk.remaining(), size - expected as u64);
        }
    }
}
