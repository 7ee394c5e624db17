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

/// `1*DIGIT`, at most 20 of them, as a u64; `None` for anything else, overflow included
/// (what `u64::from_str` gives after a digits-only check, in one walk over the bytes).
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(n)
}

/// A word's bytes with the ASCII case bit (0x20) set in each, packed little-endian (at most
/// eight): `SIZE`, `size` and `SiZe` pack alike.
///
/// Comparing packed words is exactly `eq_ignore_ascii_case` for the words this crate compares
/// (verbs, `FROM`/`TO`, MAIL keywords and BODY values): they are letters and digits, and
/// setting the case bit maps a byte onto a lowercase letter only from that letter or its
/// uppercase form, and onto a digit only from that digit or a control byte 0x10..=0x19, which
/// none of the inputs compared can hold in those places (they pass a grammar check first, or
/// the pattern would not match a verb either way).
pub(crate) const fn folded(word: &[u8]) -> u64 {
    let mut packed = 0;
    let mut i = 0;
    while i < word.len() && i < 8 {
        packed |= ((word[i] | 0x20) as u64) << (8 * i);
        i += 1;
    }
    packed
}

/// [`folded`] of a word of one to eight bytes; `None` for any other length.
///
/// Four to eight bytes are packed from two four-byte loads, its first and its last four
/// bytes, the last shifted into place: where the two overlap they hold the same bytes.
pub(crate) fn folded_word(bytes: &[u8]) -> Option<u64> {
    match (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        (Some(first), Some(last)) if bytes.len() <= 8 => {
            let first = u64::from(u32::from_le_bytes(*first));
            let last = u64::from(u32::from_le_bytes(*last)) << (8 * (bytes.len() - 4));
            Some((first | last) | (0x2020_2020_2020_2020 >> (8 * (8 - bytes.len()))))
        }
        _ if (1..4).contains(&bytes.len()) => Some(folded(bytes)),
        _ => None,
    }
}

/// `00`, `01`, ... `99`: two digits of [`write_decimal`] per division.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Appends `n` in decimal, without going through `core::fmt` (hot in every writer).
pub(crate) fn write_decimal(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        // Most enhanced status numbers.
        out.push(b'0' + n as u8);
        return;
    }
    if n < 10_000 {
        // Message and chunk sizes of a few KiB: two digit pairs, one fixed-size copy.
        let n = n as usize;
        let (high, low) = (digit_pair(n / 100), digit_pair(n % 100));
        if n < 100 {
            out.extend_from_slice(&low);
        } else if n < 1000 {
            out.extend_from_slice(&[high[1], low[0], low[1]]);
        } else {
            out.extend_from_slice(&[high[0], high[1], low[0], low[1]]);
        }
        return;
    }
    let mut digits = [0u8; 20];
    let (mut n, mut at) = (n, digits.len());
    while n >= 100 {
        let pair = digit_pair((n % 100) as usize);
        n /= 100;
        at -= 2;
        if let Some(to) = digits.get_mut(at..at + 2) {
            to.copy_from_slice(&pair);
        }
    }
    let pair = digit_pair(n as usize);
    if n >= 10 {
        at -= 2;
        if let Some(to) = digits.get_mut(at..at + 2) {
            to.copy_from_slice(&pair);
        }
    } else {
        at -= 1;
        digits[at] = pair[1];
    }
    out.extend_from_slice(&digits[at..]);
}

/// The two decimal digits of `n` (below 100).
fn digit_pair(n: usize) -> [u8; 2] {
    match DIGIT_PAIRS.get(n * 2..n * 2 + 2) {
        Some(&[a, b]) => [a, b],
        _ => [b'0', b'0'],
    }
}

/// Every upper/lower-case spelling of an ASCII `word` (2^len of them), for tests of keyword
/// matchers that must ignore case.
#[cfg(test)]
pub(crate) fn case_mixes(word: &str) -> impl Iterator<Item = String> + '_ {
    (0..1u32 << word.len()).map(move |case| {
        word.chars()
            .enumerate()
            .map(|(i, c)| {
                if case >> i & 1 == 1 {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_decimal_accepts_what_a_digits_check_and_from_str_accept() {
        let cases = [
            "",
            "0",
            "7",
            "1417",
            "007",
            "+5",
            "-1",
            " 1",
            "1 ",
            "1a",
            "a",
            "\u{661}",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "000000000000000000001",
            "00000000000000000001",
            "1844674407370955161a",
        ];
        for s in cases {
            let expected =
                if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) {
                    s.parse::<u64>().ok()
                } else {
                    None
                };
            assert_eq!(super::parse_decimal(s.as_bytes()), expected, "{s:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn folded_words_pack_as_folded_does(word in "[ -~]{0,10}") {
            let want = (1..=8).contains(&word.len()).then(|| super::folded(word.as_bytes()));
            proptest::prop_assert_eq!(super::folded_word(word.as_bytes()), want);
        }
    }

    #[test]
    fn write_decimal_writes_what_display_writes() {
        let mut values = vec![
            0,
            9,
            10,
            11,
            99,
            100,
            101,
            999,
            1000,
            1417,
            65_535,
            u64::MAX,
        ];
        values.extend((0..64).map(|shift| 1u64 << shift));
        values.extend((1..20).map(|exp| 10u64.pow(exp)));
        values.extend((1..20).map(|exp| 10u64.pow(exp) - 1));
        for n in values {
            let mut out = b"x".to_vec();
            super::write_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes(), "{n}");
        }
    }
}
