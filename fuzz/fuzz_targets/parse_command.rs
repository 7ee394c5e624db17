//! Command framing and parsing: `LineReader` (default and small limits, strict and lenient)
//! fed at split points derived from the input, then `Command::parse` on every line.
//!
//! Invariants: nothing panics; framing gives the same lines whatever the split and never
//! keeps a buffer as long as the limit; an `Ok` command written back with `to_bytes()` parses
//! to an equal command and writes the same bytes again; an `Err` answers with a 5xx reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xshadow_core::wire::reply::parse_reply;
use xshadow_core::wire::{Command, DEFAULT_MAX_LINE, Frame, LineReader, Verb};
use xshadow_fuzz::{alphabet, hash, remap, split};

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&remap(data, alphabet::COMMAND));
});

fn check(data: &[u8]) {
    let seed = hash(data);
    let small = 3 + (seed >> 40) as usize % 62;
    for max in [DEFAULT_MAX_LINE, small] {
        for lenient in [false, true] {
            let whole = frame(max, lenient, &[data]);
            let chunked = frame(max, lenient, &split(data, seed));
            assert_eq!(
                whole, chunked,
                "framing depends on the split (max {max}, lenient {lenient})"
            );
            for line in whole.iter().flatten() {
                check_command(line, true);
            }
        }
    }
    // The whole input as one line, CRLFs and all.
    check_command(data, false);
}

/// Feeds `pieces` to a reader the way a session does (a growing buffer whose consumed front is
/// dropped); returns the lines found, `None` for each over-long one.
fn frame(max: usize, lenient: bool, pieces: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    let mut reader = LineReader::new(max).lenient(lenient);
    let mut buf = Vec::new();
    let mut found = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            let (frame, consumed) = reader.read(&buf);
            assert!(consumed <= buf.len(), "consumed past the buffer");
            let more = match frame {
                Frame::Line(line) => {
                    let ending = if lenient { 1 } else { 2 };
                    assert!(
                        line.len() + ending <= reader.max_line(),
                        "a line over the limit"
                    );
                    assert!(find(line, b"\r\n").is_none(), "a line holds a CRLF");
                    if lenient {
                        assert!(!line.contains(&b'\n'), "a lenient line holds a LF");
                    }
                    assert!(consumed > line.len(), "the line end was not consumed");
                    found.push(Some(line.to_vec()));
                    true
                }
                Frame::TooLong => {
                    assert!(consumed > 0, "TooLong consumed nothing");
                    found.push(None);
                    true
                }
                Frame::NeedMore => false,
            };
            buf.drain(..consumed);
            if !more {
                break;
            }
        }
        assert!(
            buf.len() < reader.max_line(),
            "the reader let the buffer grow to the limit"
        );
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn first_word(line: &[u8]) -> &[u8] {
    line.split(|&b| b == b' ').next().unwrap_or_default()
}

fn check_command(line: &[u8], framed: bool) {
    match Command::parse(line) {
        Ok(command) => {
            assert_eq!(
                command.verb(),
                Verb::from_bytes(first_word(line)),
                "verb mismatch"
            );
            let wire = command.to_bytes();
            let Some(written) = wire.strip_suffix(b"\r\n") else {
                panic!("written command does not end with CRLF: {wire:?}");
            };
            let again = Command::parse(written).unwrap_or_else(|e| {
                panic!("{command:?} written as {wire:?} fails to parse: {e:?}")
            });
            assert_eq!(again.to_bytes(), wire, "writing is not a fixpoint");
            // `Command` is invariant in its lifetime: compare owned copies.
            let (again, command) = (again.into_owned(), command.into_owned());
            assert_eq!(
                again, command,
                "write->parse changed the command (wire {wire:?})"
            );
            if framed {
                // A framed line written back is exactly one line to a strict reader.
                let mut reader = LineReader::new(usize::MAX);
                assert_eq!(
                    reader.read(&wire),
                    (Frame::Line(written), wire.len()),
                    "written command is not one line"
                );
            }
        }
        Err(error) => {
            assert_eq!(
                error.verb,
                Verb::from_bytes(first_word(line)),
                "error verb mismatch"
            );
            let reply = error.reply();
            assert!(reply.is_permanent(), "{error:?} answered with {reply:?}");
            let wire = reply.to_bytes();
            let (parsed, used) = parse_reply(&wire)
                .expect("the error reply parses")
                .expect("the error reply is whole");
            assert_eq!(used, wire.len());
            assert_eq!(parsed, reply);
            let _ = error.to_string();
        }
    }
}
