//! RFC 5321 paths: the reverse-path of MAIL and the forward-path of RCPT, with the SMTPUTF8
//! extension (RFC 6531: UTF-8 in local parts and domains).
//!
//! Parsed values borrow the command line. Local parts keep their wire form (a quoted local part
//! stays quoted) so a path is written back byte for byte. Source routes (`<@a,@b:u@d>`) are
//! accepted and dropped, as RFC 5321 §4.1.1.3 asks. Every length is counted in bytes.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

use nom::branch::alt;
use nom::bytes::complete::{take_while, take_while1};
use nom::character::complete::char;
use nom::combinator::{opt, recognize, verify};
use nom::multi::{many0_count, separated_list1};
use nom::sequence::{delimited, preceded, terminated};
use nom::{IResult, Parser};
use smol_str::SmolStr;

/// Longest local part, in bytes (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain, in bytes (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including its angle brackets, in bytes (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// An address `local-part@domain` as written on the wire: the local part, quoted if it was
/// quoted on the wire, and the domain, or an address literal with its brackets
/// (`[192.0.2.1]`).
///
/// Kept as the one text `local-part@domain` (borrowed from the input when parsed), so that an
/// owned address is one allocation, and none up to 23 bytes (kept inline).
#[derive(Clone)]
pub struct Mailbox<'a> {
    /// `local-part@domain`.
    text: Text<'a>,
    /// Where the `@` between the two is.
    at: usize,
}

/// The text of a [`Mailbox`]: borrowed, or owned (inline up to [`SmolStr::INLINE_CAP`] bytes,
/// which most addresses fit, and a `String` beyond).
#[derive(Clone)]
enum Text<'a> {
    Borrowed(&'a str),
    Inline(SmolStr),
    Heap(String),
}

impl Text<'_> {
    fn as_str(&self) -> &str {
        match self {
            Self::Borrowed(text) => text,
            Self::Inline(text) => text.as_str(),
            Self::Heap(text) => text,
        }
    }

    /// Owned text equal to `text`: inline when it fits, else one allocation.
    fn owned(text: &str) -> Text<'static> {
        if text.len() <= SmolStr::INLINE_CAP {
            Text::Inline(SmolStr::new(text))
        } else {
            Text::Heap(text.to_owned())
        }
    }
}

/// Equality and hashing see the text and where its `@` is, whether it is borrowed or owned
/// (as they did when the text was a `Cow<str>`).
impl PartialEq for Mailbox<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() && self.at == other.at
    }
}

impl Eq for Mailbox<'_> {}

impl Hash for Mailbox<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
        self.at.hash(state);
    }
}

/// The reverse-path of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath<'a> {
    /// The null sender `<>` (bounces and other notifications).
    Null,
    /// A sender address.
    Mailbox(Mailbox<'a>),
}

/// The forward-path of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath<'a> {
    /// The bare `<postmaster>` every server must accept (any case on the wire).
    Postmaster,
    /// A recipient address.
    Mailbox(Mailbox<'a>),
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// It does not follow the RFC 5321 / RFC 6531 grammar.
    Syntax,
    /// A local part, domain or the whole path is longer than RFC 5321 allows.
    TooLong,
}

impl<'a> Mailbox<'a> {
    /// An address from its parts, as they are to appear on the wire.
    pub fn new(local_part: impl AsRef<str>, domain: impl AsRef<str>) -> Self {
        let (local_part, domain) = (local_part.as_ref(), domain.as_ref());
        let len = local_part.len() + 1 + domain.len();
        let text = if len <= SmolStr::INLINE_CAP {
            // Copied piece by piece into the inline buffer (no UTF-8 check, no allocation).
            Text::Inline(SmolStr::from_iter([local_part, "@", domain]))
        } else {
            let mut text = String::with_capacity(len);
            text.push_str(local_part);
            text.push('@');
            text.push_str(domain);
            Text::Heap(text)
        };
        Self {
            text,
            at: local_part.len(),
        }
    }

    /// The local part, quoted if it was quoted on the wire.
    pub fn local_part(&self) -> &str {
        &self.as_str()[..self.at]
    }

    /// The domain, or an address literal with its brackets (`[192.0.2.1]`).
    pub fn domain(&self) -> &str {
        &self.as_str()[self.at + 1..]
    }

    /// The whole address, `local-part@domain`.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// True when the domain is an address literal such as `[192.0.2.1]`.
    pub fn is_address_literal(&self) -> bool {
        self.domain().starts_with('[')
    }

    /// True when the address needs the SMTPUTF8 extension (any non-ASCII byte).
    pub fn needs_smtputf8(&self) -> bool {
        !self.as_str().is_ascii()
    }

    /// Copies borrowed parts so the address outlives its input.
    pub fn into_owned(self) -> Mailbox<'static> {
        let text = match self.text {
            Text::Borrowed(text) => Text::owned(text),
            Text::Inline(text) => Text::Inline(text),
            Text::Heap(text) => Text::Heap(text),
        };
        Mailbox { text, at: self.at }
    }
}

impl fmt::Debug for Mailbox<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("local_part", &self.local_part())
            .field("domain", &self.domain())
            .finish()
    }
}

impl fmt::Display for Mailbox<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ReversePath<'_> {
    /// Copies borrowed parts so the path outlives its input.
    pub fn into_owned(self) -> ReversePath<'static> {
        match self {
            Self::Null => ReversePath::Null,
            Self::Mailbox(m) => ReversePath::Mailbox(m.into_owned()),
        }
    }

    /// The sender address, `None` for the null sender.
    pub fn mailbox(&self) -> Option<&Mailbox<'_>> {
        match self {
            Self::Null => None,
            Self::Mailbox(m) => Some(m),
        }
    }

    /// Appends `<...>` to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Null => out.extend_from_slice(b"<>"),
            Self::Mailbox(m) => write_mailbox(m, out),
        }
    }
}

impl ForwardPath<'_> {
    /// Copies borrowed parts so the path outlives its input.
    pub fn into_owned(self) -> ForwardPath<'static> {
        match self {
            Self::Postmaster => ForwardPath::Postmaster,
            Self::Mailbox(m) => ForwardPath::Mailbox(m.into_owned()),
        }
    }

    /// Appends `<...>` to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Postmaster => out.extend_from_slice(b"<postmaster>"),
            Self::Mailbox(m) => write_mailbox(m, out),
        }
    }
}

fn write_mailbox(m: &Mailbox<'_>, out: &mut Vec<u8>) {
    out.push(b'<');
    out.extend_from_slice(m.as_str().as_bytes());
    out.push(b'>');
}

/// Parses a reverse-path at the start of `input`; returns it and the rest of the input.
#[inline]
pub fn parse_reverse_path(input: &str) -> Result<(ReversePath<'_>, &str), PathError> {
    if let Some(rest) = input.strip_prefix("<>") {
        return Ok((ReversePath::Null, rest));
    }
    let (mailbox, rest) = parse_path(input)?;
    Ok((ReversePath::Mailbox(mailbox), rest))
}

/// Parses a forward-path at the start of `input`; returns it and the rest of the input.
#[inline]
pub fn parse_forward_path(input: &str) -> Result<(ForwardPath<'_>, &str), PathError> {
    // The fast path goes first, as most recipients are plain addresses: it never takes a path
    // that starts with `<postmaster>` (no `@` comes before that `>`), so the order of the two
    // checks makes no difference to the result.
    let parts = match plain_path(input) {
        Some(parts) => parts,
        None => {
            if let Some(rest) = strip_prefix_ignore_case(input, "<postmaster>") {
                return Ok((ForwardPath::Postmaster, rest));
            }
            grammar_path(input)?
        }
    };
    let (mailbox, rest) = checked_mailbox(input, parts)?;
    Ok((ForwardPath::Mailbox(mailbox), rest))
}

fn parse_path(input: &str) -> Result<(Mailbox<'_>, &str), PathError> {
    let parts = match plain_path(input) {
        Some(parts) => parts,
        None => grammar_path(input)?,
    };
    checked_mailbox(input, parts)
}

/// The mailbox of a path read from the front of `input` as local part, domain and the rest
/// of the input, once the lengths are checked.
#[inline]
fn checked_mailbox<'a>(
    input: &'a str,
    (local_part, domain, rest): (&'a str, &'a str, &'a str),
) -> Result<(Mailbox<'a>, &'a str), PathError> {
    if local_part.len() > MAX_LOCAL_PART
        || domain.len() > MAX_DOMAIN
        || input.len() - rest.len() > MAX_PATH
    {
        return Err(PathError::TooLong);
    }
    // Both parsers read `local-part@domain` as adjacent slices of `input`: borrow it whole.
    // The slices are where their addresses say (one byte apart, that byte `@`), so the
    // text is theirs without comparing it.
    let start = (local_part.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
    let at = local_part.len();
    let adjacent = (domain.as_ptr() as usize).wrapping_sub(local_part.as_ptr() as usize) == at + 1;
    let mailbox = match input.get(start..start.wrapping_add(at + 1 + domain.len())) {
        Some(text) if adjacent && text.as_bytes().get(at) == Some(&b'@') => Mailbox {
            text: Text::Borrowed(text),
            at,
        },
        _ => Mailbox::new(local_part, domain),
    };
    Ok((mailbox, rest))
}

/// Local part, domain and the rest of the input after a path, as the RFC 5321 / RFC 6531
/// grammar reads them: the reference for every path, and the only parser for paths
/// [`plain_path`] leaves alone (so it alone decides every error).
fn grammar_path(input: &str) -> Result<(&str, &str, &str), PathError> {
    let (rest, (local_part, domain)) = delimited(
        char('<'),
        preceded(opt(terminated(source_route, char(':'))), mailbox),
        char('>'),
    )
    .parse(input)
    .map_err(|_: nom::Err<nom::error::Error<&str>>| PathError::Syntax)?;
    Ok((local_part, domain, rest))
}

/// Bit of [`BYTE_CLASS`]: RFC 5322 atext (ASCII only; [`is_atext`] also takes non-ASCII).
const ATEXT: u8 = 1;
/// Bit of [`BYTE_CLASS`]: a domain label byte, letter, digit or `-` (ASCII only).
const LABEL: u8 = 2;

/// [`ATEXT`] and [`LABEL`] for every byte, so that the fast path checks a byte with one load.
/// Bytes from 0x80 up have neither bit: the fast path hands non-ASCII paths to the grammar.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8 as char;
        if is_atext(c) {
            table[b] = ATEXT;
        }
        if c.is_ascii_alphanumeric() || c == '-' {
            table[b] |= LABEL;
        }
        b += 1;
    }
    table
};

/// The length of the run of `class` bytes at the front of `bytes`.
fn class_run(bytes: &[u8], class: u8) -> usize {
    bytes
        .iter()
        .position(|&b| BYTE_CLASS[usize::from(b)] & class == 0)
        .unwrap_or(bytes.len())
}

/// The common path, `<dot-string@domain>` in plain ASCII, read in one walk over its bytes:
/// local part, domain and the rest of the input after `>`, or `None` for anything else (a
/// quoted local part, a source route, an address literal, non-ASCII, or no valid path at all),
/// which [`grammar_path`] then reads.
///
/// It exists because the grammar costs several times more per byte (nom combinators over
/// chars). It is equivalent because it accepts only what the grammar reads the same way: atoms
/// of [`ATEXT`] bytes joined by single dots, `@`, labels of [`LABEL`] bytes that neither begin
/// nor end with `-` joined by single dots, and `>` (the grammar's `dot_string` and `domain`,
/// whose maximal runs stop at the same bytes, since `.`, `@` and `>` are neither atext nor
/// label bytes). The `path_fast_path_agrees_with_the_grammar` proptest checks this.
#[inline]
fn plain_path(input: &str) -> Option<(&str, &str, &str)> {
    let bytes = input.as_bytes();
    if bytes.first() != Some(&b'<') {
        return None;
    }
    // Atoms joined by single dots, up to `@`.
    let mut at = 1;
    loop {
        let atom = class_run(bytes.get(at..)?, ATEXT);
        at += atom;
        match bytes.get(at) {
            Some(b'.') if atom > 0 => at += 1,
            Some(b'@') if atom > 0 => break,
            _ => return None,
        }
    }
    // Labels joined by single dots, up to `>`.
    let mut end = at + 1;
    loop {
        let label = bytes.get(end..)?;
        let len = class_run(label, LABEL);
        if len == 0 || label.first() == Some(&b'-') || label.get(len - 1) == Some(&b'-') {
            return None;
        }
        end += len;
        match bytes.get(end) {
            Some(b'.') => end += 1,
            Some(b'>') => break,
            _ => return None,
        }
    }
    let (path, rest) = input.split_at_checked(end + 1)?;
    let (local_part, domain) = path.get(1..end)?.split_at_checked(at - 1)?;
    Some((local_part, domain.get(1..)?, rest))
}

type Res<'a, T> = IResult<&'a str, T>;

/// `@a,@b` — accepted and dropped.
fn source_route(i: &str) -> Res<'_, ()> {
    separated_list1(char(','), preceded(char('@'), domain))
        .map(|_| ())
        .parse(i)
}

fn mailbox(i: &str) -> Res<'_, (&str, &str)> {
    (
        alt((quoted_string, dot_string)),
        preceded(char('@'), alt((address_literal, domain))),
    )
        .parse(i)
}

/// RFC 5322 atext plus any non-ASCII character (RFC 6531).
const fn is_atext(c: char) -> bool {
    matches!(
        c,
        'a'..='z'
            | 'A'..='Z'
            | '0'..='9'
            | '!'
            | '#'
            | '$'
            | '%'
            | '&'
            | '\''
            | '*'
            | '+'
            | '-'
            | '/'
            | '='
            | '?'
            | '^'
            | '_'
            | '`'
            | '{'
            | '|'
            | '}'
            | '~'
    ) || !c.is_ascii()
}

fn dot_string(i: &str) -> Res<'_, &str> {
    recognize((
        take_while1(is_atext),
        many0_count((char('.'), take_while1(is_atext))),
    ))
    .parse(i)
}

fn quoted_string(i: &str) -> Res<'_, &str> {
    let qtext =
        take_while1(|c: char| (c != '"' && c != '\\' && (' '..='~').contains(&c)) || !c.is_ascii());
    let quoted_pair = preceded(
        char('\\'),
        verify(nom::character::complete::anychar, |c| {
            (' '..='~').contains(c)
        }),
    );
    recognize((
        char('"'),
        many0_count(alt((qtext.map(|_| ()), quoted_pair.map(|_| ())))),
        char('"'),
    ))
    .parse(i)
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii()
}

fn sub_domain(i: &str) -> Res<'_, &str> {
    verify(take_while1(is_label_char), |label: &str| {
        !label.starts_with('-') && !label.ends_with('-')
    })
    .parse(i)
}

fn domain(i: &str) -> Res<'_, &str> {
    recognize((sub_domain, many0_count((char('.'), sub_domain)))).parse(i)
}

fn address_literal(i: &str) -> Res<'_, &str> {
    let (rest, inner) = delimited(
        char('['),
        take_while(|c: char| c != ']' && c != '[' && ('!'..='~').contains(&c)),
        char(']'),
    )
    .parse(i)?;
    let valid = if let Some(v6) = strip_prefix_ignore_case(inner, "IPv6:") {
        v6.parse::<Ipv6Addr>().is_ok()
    } else if let Some((tag_part, content)) = inner.split_once(':') {
        // General-address-literal: Standardized-tag ":" 1*dcontent.
        sub_domain(tag_part).is_ok_and(|(r, _)| r.is_empty())
            && !content.is_empty()
            && !tag_part.ends_with('-')
    } else {
        inner.parse::<Ipv4Addr>().is_ok()
    };
    if valid {
        Ok((rest, &i[..i.len() - rest.len()]))
    } else {
        Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Verify,
        )))
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mailbox_of(local: &'static str, domain: &'static str) -> Mailbox<'static> {
        Mailbox::new(local, domain)
    }

    #[test]
    fn ordinary_utf8_quoted_and_literal_paths_parse() {
        let cases: &[(&str, Mailbox<'static>)] = &[
            ("<alice@example.org>", mailbox_of("alice", "example.org")),
            ("<a.b+c@x-y.example>", mailbox_of("a.b+c", "x-y.example")),
            (
                "<\"john doe\"@example.org>",
                mailbox_of("\"john doe\"", "example.org"),
            ),
            (
                "<\"a\\\"b\"@example.org>",
                mailbox_of("\"a\\\"b\"", "example.org"),
            ),
            ("<user@[192.0.2.1]>", mailbox_of("user", "[192.0.2.1]")),
            (
                "<user@[IPv6:2001:db8::1]>",
                mailbox_of("user", "[IPv6:2001:db8::1]"),
            ),
            ("<用户@例子.广告>", mailbox_of("用户", "例子.广告")),
            (
                "<@relay.example,@b.example:u@d.example>",
                mailbox_of("u", "d.example"),
            ),
        ];
        for (wire, want) in cases {
            let (path, rest) = parse_reverse_path(wire).unwrap();
            assert_eq!(path, ReversePath::Mailbox(want.clone()), "{wire}");
            assert_eq!(rest, "");
        }
    }

    #[test]
    fn a_mailbox_is_the_same_value_borrowed_owned_inline_or_not() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let long_local = "a".repeat(40);
        for (local, domain) in [
            ("bob", "example.net"),
            ("sender12", "hub.example"),
            ("a", "bcdefghijklmnopqrstuv"),
            ("a", "bcdefghijklmnopqrstuvw"),
            ("\"a@b\"", "example.org"),
            ("jos\u{e9}", "\u{e9}xample.fr"),
            (long_local.as_str(), "example.com"),
        ] {
            let wire = format!("<{local}@{domain}>");
            let (parsed, _) = parse_path(&wire).unwrap();
            let built = Mailbox::new(local, domain);
            let owned = parsed.clone().into_owned();
            for m in [&parsed, &built, &owned] {
                assert_eq!(m.as_str(), format!("{local}@{domain}"));
                assert_eq!((m.local_part(), m.domain()), (local, domain));
                assert_eq!(m, &parsed);
                assert_eq!(hasher.hash_one(m), hasher.hash_one(&parsed));
                assert_eq!(format!("{m:?}"), format!("{parsed:?}"));
                assert_eq!(m.to_string(), parsed.to_string());
                assert_eq!(m.clone(), *m);
            }
            // Hashed as the text then the `@` position, as the derived hash of the
            // `Cow<str>` text and the position was.
            assert_eq!(
                hasher.hash_one(&parsed),
                hasher.hash_one((parsed.as_str(), local.len()))
            );
        }
        assert_ne!(
            Mailbox::new("a@b", "c"),
            Mailbox::new("a", "b@c"),
            "same text, other `@`"
        );
    }

    #[test]
    fn null_sender_and_bare_postmaster_parse() {
        assert_eq!(
            parse_reverse_path("<> SIZE=1"),
            Ok((ReversePath::Null, " SIZE=1"))
        );
        assert_eq!(
            parse_forward_path("<PostMaster>"),
            Ok((ForwardPath::Postmaster, ""))
        );
        assert!(matches!(
            parse_forward_path("<postmaster@example.org>"),
            Ok((ForwardPath::Mailbox(_), ""))
        ));
        assert_eq!(parse_forward_path("<>"), Err(PathError::Syntax));
    }

    #[test]
    fn malformed_paths_are_syntax_errors() {
        for wire in [
            "alice@example.org",
            "<alice@example.org",
            "<alice>",
            "<@example.org>",
            "<alice@>",
            "<alice@-bad.example>",
            "<alice@bad-.example>",
            "<a..b@example.org>",
            "<.a@example.org>",
            "<a b@example.org>",
            "<\"unterminated@example.org>",
            "<user@[300.1.1.1]>",
            "<user@[IPv6:nonsense]>",
            "<user@[]>",
        ] {
            assert_eq!(
                parse_reverse_path(wire).map(|_| ()),
                Err(PathError::Syntax),
                "{wire}"
            );
        }
    }

    #[test]
    fn lengths_are_counted_in_bytes() {
        let local = "é".repeat(32); // 64 bytes: the limit exactly
        let wire = format!("<{local}@example.org>");
        assert!(parse_reverse_path(&wire).is_ok());
        let wire = format!("<{local}a@example.org>");
        assert_eq!(
            parse_reverse_path(&wire).map(|_| ()),
            Err(PathError::TooLong)
        );
        let domain = format!("{}.example", "a".repeat(250));
        let wire = format!("<u@{domain}>");
        assert_eq!(
            parse_reverse_path(&wire).map(|_| ()),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn paths_write_back_as_read() {
        for wire in [
            "<\"john doe\"@example.org>",
            "<user@[192.0.2.1]>",
            "<用户@例子.广告>",
        ] {
            let (path, _) = parse_reverse_path(wire).unwrap();
            let mut out = Vec::new();
            path.write_to(&mut out);
            assert_eq!(out, wire.as_bytes());
        }
    }

    #[test]
    fn the_fast_path_takes_plain_paths_and_leaves_the_rest_to_the_grammar() {
        for wire in [
            "<alice@example.org>",
            "<a.b+c@x-y.example> SIZE=1",
            "<postmaster@example.org>",
            "<!#$%&'*+-/=?^_`{|}~@a>",
        ] {
            assert!(plain_path(wire).is_some(), "{wire}");
            assert_eq!(
                plain_path(wire).ok_or(PathError::Syntax),
                grammar_path(wire)
            );
        }
        for wire in [
            "<\"john doe\"@example.org>",
            "<user@[192.0.2.1]>",
            "<用户@例子.广告>",
            "<@relay.example:u@d.example>",
            "<a..b@example.org>",
            "<alice@-bad.example>",
            "<alice@example.org",
        ] {
            assert_eq!(plain_path(wire), None, "{wire}");
        }
    }

    #[test]
    fn is_atext_is_letters_digits_the_rfc_5322_specials_and_non_ascii() {
        for c in (0u8..=0x7f).map(char::from).chain(['\u{80}', 'é', '例']) {
            let as_first_written =
                c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
            assert_eq!(is_atext(c), as_first_written, "{c:?}");
        }
    }

    /// Strings shaped like paths: mostly the bytes the grammar cares about, so that valid,
    /// nearly valid and invalid paths all come up.
    fn path_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            6 => prop::sample::select(vec!["<", ">", "@", ".", "-", "\"", "[", "]", ":", ",", "\\", " "]),
            1 => prop::sample::select(vec!["<postmaster>", "<PostMaster", "postmaster"]),
            8 => prop::sample::select(vec!["a", "b", "X", "Z", "0", "9", "ab", "example"]),
            2 => prop::sample::select(vec!["!", "#", "$", "%", "&", "'", "*", "+", "/", "=", "?", "^", "_", "`", "{", "|", "}", "~"]),
            1 => prop::sample::select(vec!["é", "例", "\t", "\u{7f}", "\0", "(", ";"]),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    /// Paths that are valid but for an occasional defect (empty atoms or labels, a stray
    /// `-`, `.` or other byte), some of them over the length limits.
    fn nearly_valid_path() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            12 => "[a-zA-Z0-9!#+=_~-]{1,6}",
            1 => "[a-z]{60,70}",
            1 => Just(String::new()),
        ];
        let label = prop_oneof![
            12 => "[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?",
            2 => "[a-z]{60,70}",
            1 => "-?[a-z-]{0,3}-?",
        ];
        (
            prop::collection::vec(atom, 1..4),
            prop::collection::vec(label, 1..6),
            "(>|>[ A-Z=0-9]{1,6}|[>.@ \\[-]?)",
        )
            .prop_map(|(atoms, labels, end)| {
                format!("<{}@{}{end}", atoms.join("."), labels.join("."))
            })
    }

    proptest! {
        /// Whatever the fast path accepts, the grammar reads the same way; everything else
        /// goes to the grammar, so `parse_path` answers exactly as the grammar alone would.
        #[test]
        fn path_fast_path_agrees_with_the_grammar(
            input in prop_oneof![path_like(), nearly_valid_path()],
        ) {
            if let Some(parts) = plain_path(&input) {
                prop_assert_eq!(Ok(parts), grammar_path(&input));
                // `parse_forward_path` relies on this to try the fast path first.
                prop_assert_eq!(strip_prefix_ignore_case(&input, "<postmaster>"), None);
            }
        }
    }
}
