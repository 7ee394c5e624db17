//! Incremental line framing for SMTP commands.
//!
//! [`LineReader`] finds CRLF-terminated lines in a caller-owned buffer. It never buffers
//! anything itself and never holds more than the configured limit: a line longer than the
//! limit is reported once as [`Frame::TooLong`] and then skipped to its end, whatever its size.
//! Bare LF and bare CR do not end a line unless leniency is asked for.

use memchr::memchr;

/// What [`LineReader::read`] found at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole line, without its line end.
    Line(&'a [u8]),
    /// The line at the front exceeds the limit; its bytes so far were consumed and the rest
    /// of it, up to its line end, will be skipped silently. Reported once per such line.
    TooLong,
    /// No whole line yet: call again with more bytes (keeping the unconsumed ones).
    NeedMore,
}

/// Finds lines in a byte stream, bounded by a maximum line length.
#[derive(Debug, Clone)]
pub struct LineReader {
    max_line: usize,
    lenient: bool,
    skipping: bool,
    scanned: usize,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new(super::DEFAULT_MAX_LINE)
    }
}

impl LineReader {
    /// A strict reader (only CRLF ends a line) for lines of at most `max_line` bytes, CRLF
    /// included. Limits below 3 are raised to 3 so an empty line always fits.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(3),
            lenient: false,
            skipping: false,
            scanned: 0,
        }
    }

    /// Also accept a bare LF as a line end (never a bare CR). Off by default.
    pub fn lenient(mut self, lenient: bool) -> Self {
        self.lenient = lenient;
        self
    }

    /// The configured limit in bytes, line end included.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// True while the rest of an over-long line is being skipped.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Looks for the next line at the front of `buf`. Returns what was found and how many
    /// bytes of `buf` the caller must now drop from its front. The caller passes the same
    /// unconsumed bytes again, with more appended, after [`Frame::NeedMore`].
    #[inline]
    pub fn read<'a>(&mut self, buf: &'a [u8]) -> (Frame<'a>, usize) {
        let mut skipped = 0;
        if self.skipping {
            match find_line_end(buf, 0, self.lenient) {
                Some((end, _)) => {
                    self.skipping = false;
                    skipped = end;
                }
                None => {
                    // Keep a trailing CR: it may be the first half of the CRLF we look for.
                    let keep = usize::from(buf.last() == Some(&b'\r'));
                    return (Frame::NeedMore, buf.len() - keep);
                }
            }
        }
        let rest = &buf[skipped..];
        let from = self.scanned.min(rest.len());
        match find_line_end(rest, from, self.lenient) {
            Some((end, terminator)) if end <= self.max_line => {
                self.scanned = 0;
                (Frame::Line(&rest[..end - terminator]), skipped + end)
            }
            Some((end, _)) => {
                // The whole over-long line is already here: drop it and report it.
                self.scanned = 0;
                (Frame::TooLong, skipped + end)
            }
            None if rest.len() >= self.max_line => {
                self.scanned = 0;
                self.skipping = true;
                let keep = usize::from(rest.last() == Some(&b'\r'));
                (Frame::TooLong, skipped + rest.len() - keep)
            }
            None => {
                // A CR at the very end may still be followed by LF: rescan it next time.
                self.scanned = rest.len().saturating_sub(1);
                (Frame::NeedMore, skipped)
            }
        }
    }
}

/// Finds the first line end in `buf` at or after `from`: returns the offset just past it and
/// the length of the terminator (2 for CRLF, 1 for a bare LF when lenient).
fn find_line_end(buf: &[u8], from: usize, lenient: bool) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(i) = memchr(b'\n', buf.get(at..)?) {
        let lf = at + i;
        if lf > 0 && buf[lf - 1] == b'\r' {
            return Some((lf + 1, 2));
        }
        if lenient {
            return Some((lf + 1, 1));
        }
        at = lf + 1;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Byte scanning, eight bytes at a time
// ---------------------------------------------------------------------------------------------
//
// The codec's hot checks ("every byte of this value is printable", "where does this run of
// value bytes end") look at one class of bytes at a time. Read as a `u64`, eight bytes are
// tested with a handful of integer operations instead of a compare and a branch each. Each
// test below returns a word with the high bit set in the lowest byte that matches, and no bit
// at all when no byte matches; bits above that lowest match may be spurious (a borrow from it),
// so only the lowest one is ever used, by [`first_flagged`].

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Flags the bytes of `word` below `n`, for `n` at most 0x80 (bytes from 0x80 up never are).
pub(super) const fn bytes_below(word: u64, n: u8) -> u64 {
    word.wrapping_sub(ONES * n as u64) & !word & HIGHS
}

/// Flags the bytes of `word` equal to `b`.
pub(super) const fn bytes_equal(word: u64, b: u8) -> u64 {
    bytes_below(word ^ (ONES * b as u64), 1)
}

/// Flags the bytes of `word` from 0x80 up (every non-ASCII byte).
pub(super) const fn non_ascii(word: u64) -> u64 {
    word & HIGHS
}

/// Flags the bytes of `word` from 0x7F up (DEL and every non-ASCII byte).
pub(super) const fn bytes_from_del(word: u64) -> u64 {
    (((word & !HIGHS) + ONES) | word) & HIGHS
}

/// The index of the first byte of `bytes` that `test` (built from the tests above) flags, or
/// `bytes.len()` when there is none. `test` must not flag `A`, which pads a short input.
pub(super) fn first_flagged(bytes: &[u8], test: impl Fn(u64) -> u64) -> usize {
    let mut at = 0;
    while let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let flags = test(u64::from_le_bytes(*word));
        if flags != 0 {
            return at + flags.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    if at == bytes.len() {
        return at;
    }
    // The last one to seven bytes. With eight bytes or more before them, the last eight bytes
    // are tested again (those before `at` are known not to be flagged); otherwise they are
    // copied into a word padded with `A`.
    let (start, word) = match bytes.last_chunk::<8>() {
        Some(last) => (bytes.len() - 8, *last),
        None => {
            let mut word = [b'A'; 8];
            for (to, from) in word.iter_mut().zip(bytes) {
                *to = *from;
            }
            (0, word)
        }
    };
    let flags = test(u64::from_le_bytes(word));
    if flags == 0 {
        bytes.len()
    } else {
        start + flags.trailing_zeros() as usize / 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes the way a session would (a growing buffer whose
    /// consumed front is dropped) and collects what the reader reports.
    fn frames(reader: &mut LineReader, input: &[u8], step: usize) -> Vec<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let mut found = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                let (frame, consumed) = reader.read(&buf);
                let done = match frame {
                    Frame::Line(line) => {
                        found.push(Some(line.to_vec()));
                        false
                    }
                    Frame::TooLong => {
                        found.push(None);
                        false
                    }
                    Frame::NeedMore => true,
                };
                buf.drain(..consumed);
                if done {
                    break;
                }
            }
            assert!(
                buf.len() < reader.max_line(),
                "the reader let the buffer grow"
            );
        }
        found
    }

    #[test]
    fn lines_are_found_whole_and_byte_by_byte() {
        let input = b"EHLO a\r\nMAIL FROM:<>\r\n\r\nQUIT\r\n";
        for step in 1..=input.len() {
            let got = frames(&mut LineReader::default(), input, step);
            let want: Vec<Option<Vec<u8>>> = vec![
                Some(b"EHLO a".to_vec()),
                Some(b"MAIL FROM:<>".to_vec()),
                Some(b"".to_vec()),
                Some(b"QUIT".to_vec()),
            ];
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn bare_lf_and_bare_cr_do_not_end_a_line_by_default() {
        let got = frames(&mut LineReader::default(), b"NOOP\nx\rQUIT\r\n", 1);
        assert_eq!(got, vec![Some(b"NOOP\nx\rQUIT".to_vec())]);
    }

    #[test]
    fn a_lenient_reader_accepts_bare_lf_but_not_bare_cr() {
        let mut reader = LineReader::default().lenient(true);
        let got = frames(&mut reader, b"NOOP\nx\rQUIT\r\n", 3);
        assert_eq!(got, vec![Some(b"NOOP".to_vec()), Some(b"x\rQUIT".to_vec())]);
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_skipped_without_buffering() {
        let mut input = vec![b'a'; 100_000];
        input.extend_from_slice(b"\r\nQUIT\r\n");
        for step in [1, 7, 4096, 100_000] {
            let got = frames(&mut LineReader::new(64), &input, step);
            assert_eq!(got, vec![None, Some(b"QUIT".to_vec())], "step {step}");
        }
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        let mut input = vec![b'a'; 62];
        input.extend_from_slice(b"\r\n");
        let got = frames(&mut LineReader::new(64), &input, 1);
        assert_eq!(got, vec![Some(vec![b'a'; 62])]);
        input.insert(0, b'a');
        let got = frames(&mut LineReader::new(64), &input, 1);
        assert_eq!(got, vec![None]);
    }

    #[test]
    fn a_crlf_split_across_reads_at_the_limit_still_ends_the_skipped_line() {
        let mut input = vec![b'a'; 70];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        // The first read ends right after the CR of the over-long line.
        let got = frames(&mut LineReader::new(64), &input, 71);
        assert_eq!(got, vec![None, Some(b"NOOP".to_vec())]);
    }

    #[test]
    fn partial_input_is_need_more_never_an_error() {
        let mut reader = LineReader::default();
        assert_eq!(reader.read(b"MAIL FROM:<a@b"), (Frame::NeedMore, 0));
        assert_eq!(reader.read(b"MAIL FROM:<a@b\r"), (Frame::NeedMore, 0));
        assert_eq!(
            reader.read(b"MAIL FROM:<a@b\r\n"),
            (Frame::Line(b"MAIL FROM:<a@b"), 16)
        );
    }

    /// The tests of [`first_flagged`], one byte at a time.
    fn reference_first(bytes: &[u8], flagged: impl Fn(u8) -> bool) -> usize {
        bytes
            .iter()
            .position(|&b| flagged(b))
            .unwrap_or(bytes.len())
    }

    proptest::proptest! {
        #[test]
        fn eight_byte_scans_find_what_a_byte_loop_finds(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(vec![0u8, 0x20, 0x21, b'+', b'=', b'A', 0x7e, 0x7f, 0x80, 0xff]),
                    proptest::num::u8::ANY,
                ],
                0..40,
            ),
            n in 1u8..=b'A',
            b in proptest::num::u8::ANY,
        ) {
            proptest::prop_assume!(b != b'A');
            proptest::prop_assert_eq!(
                first_flagged(&bytes, |w| bytes_below(w, n)),
                reference_first(&bytes, |x| x < n)
            );
            proptest::prop_assert_eq!(
                first_flagged(&bytes, |w| bytes_equal(w, b)),
                reference_first(&bytes, |x| x == b)
            );
            proptest::prop_assert_eq!(
                first_flagged(&bytes, non_ascii),
                reference_first(&bytes, |x| x >= 0x80)
            );
            proptest::prop_assert_eq!(
                first_flagged(&bytes, bytes_from_del),
                reference_first(&bytes, |x| x >= 0x7f)
            );
            proptest::prop_assert_eq!(
                first_flagged(&bytes, |w| bytes_below(w, n) | bytes_equal(w, b) | bytes_from_del(w)),
                reference_first(&bytes, |x| x < n || x == b || x >= 0x7f)
            );
        }
    }
}
