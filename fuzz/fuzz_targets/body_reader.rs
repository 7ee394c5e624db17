//! DATA bodies: `DotReader` (with and without a limit) fed in chunks chosen by the first input
//! byte, against a line-by-line model of RFC 5321 §4.5.2; and the `stuff` / `DotStuffer`
//! writer round trip.
//!
//! Input: byte 0 picks the chunking pattern, byte 1 the limit, the rest is the wire (and,
//! separately, the body for the round trip).
//!
//! Invariants: nothing panics; whatever the chunks, the reader gives the model's body,
//! consumed count and done flag; `consumed` never exceeds the chunk (and is all of it until
//! done); the output never exceeds the limit and is the unlimited body cut at it; `stuff(x)`
//! read back gives `x` (plus CRLF when `x` is neither empty nor ends in CRLF), never ends
//! early, and leaves pipelined bytes after the terminator unconsumed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xshadow_core::wire::body::stuff;
use xshadow_core::wire::{DotReader, DotStuffer};
use xshadow_fuzz::{alphabet, hash, remap, split};

fuzz_target!(|data: &[u8]| {
    let (pattern, rest) = data.split_first().map_or((0, data), |(&b, r)| (b, r));
    let (limit, rest) = rest.split_first().map_or((0, rest), |(&b, r)| (b, r));
    check(rest, pattern, limit);
    check(&remap(rest, alphabet::BODY), pattern, limit);
});

/// Bytes a client pipelines after the terminator; never the body's.
const PIPELINED: &[u8] = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n";

/// (body, wire bytes consumed, terminator seen)
type Read = (Vec<u8>, usize, bool);

fn check(wire: &[u8], pattern: u8, limit_byte: u8) {
    let selector = u64::from(pattern) | hash(wire) << 8;
    let pieces = split(wire, selector);

    let expected = model(wire);
    assert_eq!(
        read(DotReader::new(), &[wire]),
        expected,
        "whole read differs from the model"
    );
    assert_eq!(
        read(DotReader::new(), &pieces),
        expected,
        "chunked read differs from the model"
    );

    // The same wire under a limit.
    let body_len = expected.0.len() as u64;
    let limit = match limit_byte >> 6 {
        0 => u64::from(limit_byte & 63),
        1 => u64::from(limit_byte & 63) * 64,
        2 => u64::MAX - u64::from(limit_byte & 63),
        _ => (body_len + u64::from(limit_byte & 7)).saturating_sub(4),
    };
    let mut limited = DotReader::with_limit(limit);
    let (out, consumed, done) = read_into(&mut limited, &pieces);
    let keep = body_len.min(limit) as usize;
    assert_eq!(
        out,
        expected.0[..keep],
        "limited output is not the body cut at {limit}"
    );
    assert_eq!(
        (consumed, done),
        (expected.1, expected.2),
        "the limit changed where the body ends"
    );
    assert_eq!(limited.size(), body_len, "size() is not the whole body's");
    assert_eq!(limited.limit(), limit);
    assert_eq!(limited.is_over_limit(), body_len > limit);
    assert_eq!(limited.is_done(), done);

    round_trip(wire, selector);
}

/// Reads `pieces` with `reader` and returns what it gave.
fn read(mut reader: DotReader, pieces: &[&[u8]]) -> Read {
    read_into(&mut reader, pieces)
}

fn read_into(reader: &mut DotReader, pieces: &[&[u8]]) -> Read {
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut done = false;
    for piece in pieces {
        let before = out.len();
        let progress = reader.read(piece, &mut out);
        assert!(progress.consumed <= piece.len(), "consumed past the chunk");
        assert!(out.len() as u64 <= reader.limit(), "output past the limit");
        if done {
            assert_eq!(progress.consumed, 0, "a done reader consumed more");
            assert!(progress.done);
            assert_eq!(out.len(), before, "a done reader wrote more");
            continue;
        }
        if !progress.done {
            assert_eq!(progress.consumed, piece.len(), "not done but left bytes");
        }
        consumed += progress.consumed;
        done = progress.done;
        assert_eq!(reader.is_done(), done);
    }
    if reader.limit() == u64::MAX {
        assert_eq!(reader.size(), out.len() as u64);
    }
    (out, consumed, done)
}

/// RFC 5321 §4.5.2, one byte at a time: a line starts at the start and after each CRLF; a
/// line-leading dot followed by CRLF ends the body, any other line-leading dot is deleted.
/// A line-leading dot at the very end (or followed only by CR) is undecided: not data yet.
fn model(wire: &[u8]) -> Read {
    let mut out = Vec::new();
    let mut line_start = true;
    let mut i = 0;
    while let Some(&b) = wire.get(i) {
        if line_start && b == b'.' {
            match wire.get(i + 1..).unwrap_or_default() {
                [b'\r', b'\n', ..] => return (out, i + 3, true),
                [] | [b'\r'] => return (out, wire.len(), false),
                _ => {
                    line_start = false;
                    i += 1;
                    continue;
                }
            }
        }
        out.push(b);
        line_start = b == b'\n' && i > 0 && wire[i - 1] == b'\r';
        i += 1;
    }
    (out, wire.len(), false)
}

fn round_trip(body: &[u8], selector: u64) {
    let mut wire = Vec::new();
    stuff(body, &mut wire);

    // Stuffing in pieces gives the same bytes.
    let mut in_pieces = Vec::new();
    let mut stuffer = DotStuffer::new();
    for piece in split(body, selector.rotate_left(17)) {
        stuffer.write(piece, &mut in_pieces);
    }
    stuffer.finish(&mut in_pieces);
    assert_eq!(
        in_pieces, wire,
        "stuffing in pieces differs from stuffing whole"
    );

    // The terminator is at the end and nowhere before.
    if body.is_empty() {
        assert_eq!(wire, b".\r\n");
    } else {
        assert!(
            !wire.starts_with(b".\r\n"),
            "stuffed body starts with the terminator"
        );
        let first = wire.windows(5).position(|w| w == b"\r\n.\r\n");
        assert_eq!(first, Some(wire.len() - 5), "terminator before the end");
    }

    let mut expected = body.to_vec();
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    let stuffed_len = wire.len();
    wire.extend_from_slice(PIPELINED);
    let got = read(DotReader::new(), &split(&wire, selector.rotate_left(29)));
    assert_eq!(
        got,
        (expected, stuffed_len, true),
        "stuff then unstuff is not the body"
    );
}
