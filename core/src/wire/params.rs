//! MAIL and RCPT parameters (`KEYWORD[=value]` after the path), typed.
//!
//! Known keywords: SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531), RET, ENVID,
//! NOTIFY, ORCPT (RFC 3461) and XSHADOW (the shadow message id). Keywords match
//! case-insensitively; unknown ones are kept in order. A repeated keyword or a malformed value
//! is an error the server answers with `501 5.5.4 Invalid arguments`.

use std::borrow::Cow;

use super::line::{bytes_below, bytes_equal, first_flagged};
use super::xtext;
use super::{MAX_SHADOW_FIELD, folded, folded_word};

/// Why a parameter list was refused; each maps to `501 5.5.4 Invalid arguments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// A keyword appears twice.
    Duplicate(String),
    /// A keyword or value breaks its grammar (the keyword is named).
    Malformed(String),
}

/// The `BODY=` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyType {
    /// `7BIT`.
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
    /// `BINARYMIME` (BDAT only).
    BinaryMime,
}

impl BodyType {
    /// The keyword value as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SevenBit => "7BIT",
            Self::EightBitMime => "8BITMIME",
            Self::BinaryMime => "BINARYMIME",
        }
    }
}

/// The `RET=` value: what a DSN returns of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `FULL`: the whole message.
    Full,
    /// `HDRS`: the headers only.
    Headers,
}

/// The `NOTIFY=` value: `NEVER`, or any of SUCCESS, FAILURE, DELAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Notify {
    /// Notify on successful delivery.
    pub success: bool,
    /// Notify on failure.
    pub failure: bool,
    /// Notify on delay.
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    /// True for `NEVER`.
    pub fn is_never(self) -> bool {
        self == Self::NEVER
    }
}

/// The `ORCPT=` value: the original recipient, xtext-decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt<'a> {
    /// The address type, such as `rfc822` or `utf-8`.
    pub addr_type: Cow<'a, str>,
    /// The original recipient address.
    pub address: Cow<'a, str>,
}

/// A parameter this codec does not interpret, kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OtherParam<'a> {
    /// The keyword, as written.
    pub keyword: Cow<'a, str>,
    /// The value after `=`, if any.
    pub value: Option<Cow<'a, str>>,
}

/// The parameters of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams<'a> {
    /// `SIZE=`: the declared message size in bytes.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<BodyType>,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded.
    pub envid: Option<Cow<'a, str>>,
    /// `XSHADOW=`: the shadow message id, xtext-decoded, 1 to 255 bytes.
    pub xshadow: Option<Cow<'a, str>>,
    /// Every other parameter, in order (rare: an empty list costs no allocation, and the
    /// parameters stay small to move).
    pub other: Vec<OtherParam<'a>>,
}

/// The parameters of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams<'a> {
    /// `NOTIFY=`.
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<Orcpt<'a>>,
    /// Every other parameter, in order (rare: an empty list costs no allocation, and the
    /// parameters stay small to move).
    pub other: Vec<OtherParam<'a>>,
}

/// Splits `SP`-separated `keyword[=value]` items, checking the keyword and value grammar.
#[inline(always)]
fn split_params(input: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), ParamError>> {
    let mut rest = input;
    std::iter::from_fn(move || {
        let item = next_param(&mut rest)?;
        if item.is_err() {
            // Callers stop at the first error; end here rather than report it again.
            rest = "";
        }
        Some(item)
    })
}

/// Bit of [`BYTE_CLASS`]: an esmtp-keyword byte, ASCII letter, digit or `-`.
const KEYWORD: u8 = 1;
/// Bit of [`BYTE_CLASS`]: an esmtp-value byte, printable ASCII but `=`, or any byte of a
/// non-ASCII character (RFC 6531).
const VALUE: u8 = 2;

/// [`KEYWORD`] and [`VALUE`] for every byte, so that each byte is checked with one load.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            table[b] = KEYWORD;
        }
        if matches!(byte, b'!'..=b'<' | b'>'..=b'~' | 0x80..=0xff) {
            table[b] |= VALUE;
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

/// The length of the run of [`VALUE`] bytes at the front of `bytes`, found eight bytes at a
/// time: values (ids, GUIDs) are the longest part of a parameter list. A byte ends the run
/// when it is below `!` (controls and the space), `=` or DEL, which is exactly not [`VALUE`].
fn value_run(bytes: &[u8]) -> usize {
    first_flagged(bytes, |word| {
        bytes_below(word, b'!') | bytes_equal(word, b'=') | bytes_equal(word, 0x7f)
    })
}

/// Takes the next `keyword[=value]` item off the front of `rest` and checks it; `None` when
/// only spaces are left.
///
/// This is `split(' ')` without the empty items, `split_once('=')` and the keyword and value
/// checks in one walk over the bytes: the run of keyword bytes, then `=` and the run of value
/// bytes, and a valid item ends right there (at a space or the end); anything else is
/// malformed and [`malformed_item`] names the keyword as the split would have. Working on
/// bytes is exact: the line is UTF-8, so every byte of a non-ASCII character is 0x80 or more,
/// and every such byte belongs to one (never a space or `=`).
#[inline(always)]
fn next_param<'a>(rest: &mut &'a str) -> Option<Result<(&'a str, Option<&'a str>), ParamError>> {
    let start = rest.bytes().position(|b| b != b' ')?;
    let item = rest.get(start..)?;
    let bytes = item.as_bytes();
    let keyword_len = class_run(bytes, KEYWORD);
    let keyword = item.get(..keyword_len)?;
    let (value, end) = match bytes.get(keyword_len) {
        None | Some(b' ') => (None, keyword_len),
        Some(b'=') => {
            let value_start = keyword_len + 1;
            let value_len = value_run(bytes.get(value_start..)?);
            let end = value_start + value_len;
            if value_len == 0 || !matches!(bytes.get(end), None | Some(b' ')) {
                return Some(Err(ParamError::Malformed(keyword.to_owned())));
            }
            (item.get(value_start..end), end)
        }
        Some(_) => return Some(Err(malformed_item(item))),
    };
    if !keyword
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        return Some(Err(ParamError::Malformed(keyword.to_owned())));
    }
    *rest = item.get(end..)?;
    Some(Ok((keyword, value)))
}

/// The error for an item (and whatever follows it) whose keyword has a byte that is neither
/// a keyword byte nor `=`: the keyword is named as written, up to the first `=` of the item.
fn malformed_item(item: &str) -> ParamError {
    let item = item.split(' ').next().unwrap_or_default();
    let keyword = item.split_once('=').map_or(item, |(keyword, _)| keyword);
    ParamError::Malformed(keyword.to_owned())
}

fn malformed(keyword: &str) -> ParamError {
    ParamError::Malformed(keyword.to_ascii_uppercase())
}

fn set_once<T>(slot: &mut Option<T>, keyword: &str, value: T) -> Result<(), ParamError> {
    if slot.is_some() {
        return Err(ParamError::Duplicate(keyword.to_ascii_uppercase()));
    }
    *slot = Some(value);
    Ok(())
}

fn push_other<'a>(
    other: &mut Vec<OtherParam<'a>>,
    keyword: &'a str,
    value: Option<&'a str>,
) -> Result<(), ParamError> {
    if other
        .iter()
        .any(|p| p.keyword.eq_ignore_ascii_case(keyword))
    {
        return Err(ParamError::Duplicate(keyword.to_ascii_uppercase()));
    }
    other.push(OtherParam {
        keyword: Cow::Borrowed(keyword),
        value: value.map(Cow::Borrowed),
    });
    Ok(())
}

fn parse_size(value: Option<&str>) -> Result<u64, ParamError> {
    value
        .and_then(|v| super::parse_decimal(v.as_bytes()))
        .ok_or_else(|| malformed("SIZE"))
}

/// The keywords [`MailParams::parse`] knows.
#[derive(Clone, Copy)]
enum MailKeyword {
    Size,
    Body,
    SmtpUtf8,
    Ret,
    Envid,
    XShadow,
}

/// The known keyword `keyword` is, in any case; `None` for any other (kept as written).
fn mail_keyword(keyword: &str) -> Option<MailKeyword> {
    const SIZE: u64 = folded(b"SIZE");
    const BODY: u64 = folded(b"BODY");
    const SMTPUTF8: u64 = folded(b"SMTPUTF8");
    const RET: u64 = folded(b"RET");
    const ENVID: u64 = folded(b"ENVID");
    const XSHADOW: u64 = folded(b"XSHADOW");
    // Words of different lengths never pack alike: every byte packs to a non-zero byte.
    Some(match folded_word(keyword.as_bytes())? {
        SIZE => MailKeyword::Size,
        BODY => MailKeyword::Body,
        SMTPUTF8 => MailKeyword::SmtpUtf8,
        RET => MailKeyword::Ret,
        ENVID => MailKeyword::Envid,
        XSHADOW => MailKeyword::XShadow,
        _ => return None,
    })
}

/// The `BODY=` value `value` is, in any case.
fn body_type(value: &str) -> Option<BodyType> {
    const SEVEN_BIT: u64 = folded(b"7BIT");
    const EIGHT_BIT_MIME: u64 = folded(b"8BITMIME");
    if value.eq_ignore_ascii_case("BINARYMIME") {
        return Some(BodyType::BinaryMime);
    }
    match folded_word(value.as_bytes())? {
        SEVEN_BIT => Some(BodyType::SevenBit),
        EIGHT_BIT_MIME => Some(BodyType::EightBitMime),
        _ => None,
    }
}

fn decode_xtext<'a>(keyword: &str, value: Option<&'a str>) -> Result<Cow<'a, str>, ParamError> {
    // Values come from `next_param`, which checked their bytes.
    value
        .and_then(|v| xtext::decode_param_value(v).ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| malformed(keyword))
}

impl<'a> MailParams<'a> {
    /// Parses the text after the reverse-path (leading spaces allowed, may be empty).
    pub fn parse(input: &'a str) -> Result<Self, ParamError> {
        if input.bytes().all(|b| b == b' ') {
            // No parameters, the usual case: returned without building a list to move.
            return Ok(Self::default());
        }
        let mut params = MailParams::default();
        params.parse_into(input)?;
        Ok(params)
    }

    /// [`MailParams::parse`] into `self`, which starts empty: a caller that holds the
    /// parameters inside a larger value (a `Command::Mail`) fills them in place instead of
    /// moving them there. On an error `self` holds what was read before it.
    pub(crate) fn parse_into(&mut self, input: &'a str) -> Result<(), ParamError> {
        let params = self;
        for item in split_params(input) {
            let (keyword, value) = item?;
            match mail_keyword(keyword) {
                Some(MailKeyword::Size) => {
                    set_once(&mut params.size, keyword, parse_size(value)?)?;
                }
                Some(MailKeyword::Body) => {
                    let body = value
                        .and_then(body_type)
                        .ok_or_else(|| malformed(keyword))?;
                    set_once(&mut params.body, keyword, body)?;
                }
                Some(MailKeyword::SmtpUtf8) => {
                    if value.is_some() {
                        return Err(malformed(keyword));
                    }
                    if params.smtputf8 {
                        return Err(ParamError::Duplicate("SMTPUTF8".into()));
                    }
                    params.smtputf8 = true;
                }
                Some(MailKeyword::Ret) => {
                    let ret = match value {
                        Some(v) if v.eq_ignore_ascii_case("FULL") => Ret::Full,
                        Some(v) if v.eq_ignore_ascii_case("HDRS") => Ret::Headers,
                        _ => return Err(malformed(keyword)),
                    };
                    set_once(&mut params.ret, keyword, ret)?;
                }
                Some(MailKeyword::Envid) => {
                    let envid = decode_xtext(keyword, value)?;
                    if envid.len() > 100 {
                        return Err(malformed(keyword));
                    }
                    set_once(&mut params.envid, keyword, envid)?;
                }
                Some(MailKeyword::XShadow) => {
                    let id = decode_xtext(keyword, value)?;
                    if id.len() > MAX_SHADOW_FIELD {
                        return Err(malformed(keyword));
                    }
                    set_once(&mut params.xshadow, keyword, id)?;
                }
                None => push_other(&mut params.other, keyword, value)?,
            }
        }
        Ok(())
    }

    /// Appends ` KEYWORD=value` for every parameter, known ones first in a fixed order.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if let Some(size) = self.size {
            out.extend_from_slice(b" SIZE=");
            super::write_decimal(out, size);
        }
        if let Some(body) = self.body {
            out.extend_from_slice(b" BODY=");
            out.extend_from_slice(body.as_str().as_bytes());
        }
        if self.smtputf8 {
            out.extend_from_slice(b" SMTPUTF8");
        }
        if let Some(ret) = self.ret {
            out.extend_from_slice(match ret {
                Ret::Full => b" RET=FULL",
                Ret::Headers => b" RET=HDRS",
            });
        }
        if let Some(envid) = &self.envid {
            out.extend_from_slice(b" ENVID=");
            xtext::encode_into(envid, out);
        }
        if let Some(id) = &self.xshadow {
            out.extend_from_slice(b" XSHADOW=");
            xtext::encode_into(id, out);
        }
        write_other(&self.other, out);
    }

    /// The same parameters borrowing from `self`: a copy that allocates nothing (the
    /// extra parameters, rarely any, are the exception).
    pub(crate) fn reborrow(&self) -> MailParams<'_> {
        MailParams {
            size: self.size,
            body: self.body,
            smtputf8: self.smtputf8,
            ret: self.ret,
            envid: self.envid.as_deref().map(Cow::Borrowed),
            xshadow: self.xshadow.as_deref().map(Cow::Borrowed),
            other: self
                .other
                .iter()
                .map(|p| OtherParam {
                    keyword: Cow::Borrowed(p.keyword.as_ref()),
                    value: p.value.as_deref().map(Cow::Borrowed),
                })
                .collect(),
        }
    }

    /// Copies borrowed values so the parameters outlive their input.
    pub fn into_owned(self) -> MailParams<'static> {
        MailParams {
            size: self.size,
            body: self.body,
            smtputf8: self.smtputf8,
            ret: self.ret,
            envid: self.envid.map(|v| Cow::Owned(v.into_owned())),
            xshadow: self.xshadow.map(|v| Cow::Owned(v.into_owned())),
            other: own_other(self.other),
        }
    }
}

impl<'a> RcptParams<'a> {
    /// Parses the text after the forward-path (leading spaces allowed, may be empty).
    pub fn parse(input: &'a str) -> Result<Self, ParamError> {
        if input.bytes().all(|b| b == b' ') {
            // No parameters, the usual case: returned without building a list to move.
            return Ok(Self::default());
        }
        let mut params = RcptParams::default();
        for item in split_params(input) {
            let (keyword, value) = item?;
            if keyword.eq_ignore_ascii_case("NOTIFY") {
                set_once(&mut params.notify, keyword, parse_notify(value)?)?;
            } else if keyword.eq_ignore_ascii_case("ORCPT") {
                let (addr_type, address) = value
                    .and_then(|v| v.split_once(';'))
                    .ok_or_else(|| malformed(keyword))?;
                let type_ok = !addr_type.is_empty()
                    && addr_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !type_ok {
                    return Err(malformed(keyword));
                }
                let orcpt = Orcpt {
                    addr_type: Cow::Borrowed(addr_type),
                    address: decode_xtext(keyword, Some(address))?,
                };
                set_once(&mut params.orcpt, keyword, orcpt)?;
            } else {
                push_other(&mut params.other, keyword, value)?;
            }
        }
        Ok(params)
    }

    /// Appends ` KEYWORD=value` for every parameter, known ones first in a fixed order.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if let Some(notify) = self.notify {
            out.extend_from_slice(b" NOTIFY=");
            if notify.is_never() {
                out.extend_from_slice(b"NEVER");
            } else {
                let names = [
                    (notify.success, "SUCCESS"),
                    (notify.failure, "FAILURE"),
                    (notify.delay, "DELAY"),
                ];
                let mut first = true;
                for (_, name) in names.iter().filter(|(on, _)| *on) {
                    if !first {
                        out.push(b',');
                    }
                    out.extend_from_slice(name.as_bytes());
                    first = false;
                }
            }
        }
        if let Some(orcpt) = &self.orcpt {
            out.extend_from_slice(b" ORCPT=");
            out.extend_from_slice(orcpt.addr_type.as_bytes());
            out.push(b';');
            xtext::encode_into(&orcpt.address, out);
        }
        write_other(&self.other, out);
    }

    /// Copies borrowed values so the parameters outlive their input.
    pub fn into_owned(self) -> RcptParams<'static> {
        RcptParams {
            notify: self.notify,
            orcpt: self.orcpt.map(|o| Orcpt {
                addr_type: Cow::Owned(o.addr_type.into_owned()),
                address: Cow::Owned(o.address.into_owned()),
            }),
            other: own_other(self.other),
        }
    }
}

fn parse_notify(value: Option<&str>) -> Result<Notify, ParamError> {
    let value = value.ok_or_else(|| malformed("NOTIFY"))?;
    if value.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::NEVER);
    }
    let mut notify = Notify::default();
    for word in value.split(',') {
        let slot = if word.eq_ignore_ascii_case("SUCCESS") {
            &mut notify.success
        } else if word.eq_ignore_ascii_case("FAILURE") {
            &mut notify.failure
        } else if word.eq_ignore_ascii_case("DELAY") {
            &mut notify.delay
        } else {
            return Err(malformed("NOTIFY"));
        };
        if *slot {
            return Err(malformed("NOTIFY"));
        }
        *slot = true;
    }
    Ok(notify)
}

fn write_other(other: &[OtherParam<'_>], out: &mut Vec<u8>) {
    for param in other {
        out.push(b' ');
        out.extend_from_slice(param.keyword.as_bytes());
        if let Some(value) = &param.value {
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
        }
    }
}

fn own_other(other: Vec<OtherParam<'_>>) -> Vec<OtherParam<'static>> {
    if other.is_empty() {
        return Vec::new();
    }
    other
        .into_iter()
        .map(|p| OtherParam {
            keyword: Cow::Owned(p.keyword.into_owned()),
            value: p.value.map(|v| Cow::Owned(v.into_owned())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_protocol_example_parameters_parse_in_any_order_and_case() {
        let guid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
        let line = format!(" SIZE=2048 xshadow={guid} Body=8bitmime");
        let p = MailParams::parse(&line).unwrap();
        assert_eq!(p.size, Some(2048));
        assert_eq!(p.body, Some(BodyType::EightBitMime));
        assert_eq!(p.xshadow.as_deref(), Some(guid));
        assert!(p.other.is_empty());
    }

    #[test]
    fn xshadow_values_are_xtext_decoded_and_bounded() {
        let p = MailParams::parse("XSHADOW=a+2Bb").unwrap();
        assert_eq!(p.xshadow.as_deref(), Some("a+b"));
        let at_limit = "a".repeat(255);
        assert!(MailParams::parse(&format!("XSHADOW={at_limit}")).is_ok());
        let over = "a".repeat(256);
        assert_eq!(
            MailParams::parse(&format!("XSHADOW={over}")),
            Err(ParamError::Malformed("XSHADOW".into()))
        );
        // 86 escapes decode to 86 bytes: within the limit although 258 bytes are written.
        assert!(MailParams::parse(&format!("XSHADOW={}", "+41".repeat(86))).is_ok());
    }

    #[test]
    fn duplicates_and_malformed_values_are_refused() {
        for (input, want) in [
            ("XSHADOW=", ParamError::Malformed("XSHADOW".into())),
            ("XSHADOW", ParamError::Malformed("XSHADOW".into())),
            (
                "XSHADOW=a XSHADOW=b",
                ParamError::Duplicate("XSHADOW".into()),
            ),
            ("SIZE=1 size=2", ParamError::Duplicate("SIZE".into())),
            ("SIZE=abc", ParamError::Malformed("SIZE".into())),
            (
                "SIZE=99999999999999999999",
                ParamError::Malformed("SIZE".into()),
            ),
            ("BODY=9BIT", ParamError::Malformed("BODY".into())),
            ("SMTPUTF8=yes", ParamError::Malformed("SMTPUTF8".into())),
            ("RET=ALL", ParamError::Malformed("RET".into())),
            ("ENVID=a+zz", ParamError::Malformed("ENVID".into())),
            ("X-FOO=1 x-foo=2", ParamError::Duplicate("X-FOO".into())),
            ("-X=1", ParamError::Malformed("-X".into())),
            ("X=a=b", ParamError::Malformed("X".into())),
        ] {
            assert_eq!(MailParams::parse(input), Err(want), "{input}");
        }
    }

    #[test]
    fn rcpt_dsn_parameters_parse() {
        let p = RcptParams::parse("NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+2Bx@example.net").unwrap();
        assert_eq!(
            p.notify,
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        let orcpt = p.orcpt.unwrap();
        assert_eq!(
            (orcpt.addr_type.as_ref(), orcpt.address.as_ref()),
            ("rfc822", "bob+x@example.net")
        );
        assert_eq!(
            RcptParams::parse("NOTIFY=NEVER").unwrap().notify,
            Some(Notify::NEVER)
        );
        for bad in [
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SUCCESS,SUCCESS",
            "ORCPT=rfc822",
            "ORCPT=;a",
        ] {
            assert!(RcptParams::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_parameters_are_kept_and_written_back() {
        let p = MailParams::parse("AUTH=<> X-TAG=é").unwrap();
        let mut out = Vec::new();
        p.write_to(&mut out);
        assert_eq!(out, " AUTH=<> X-TAG=é".as_bytes());
    }

    /// The parameter splitter as first written, over `str` and `char`: the reference for the
    /// byte walk of [`next_param`].
    fn reference_split_params(
        input: &str,
    ) -> impl Iterator<Item = Result<(&str, Option<&str>), ParamError>> {
        input.split(' ').filter(|s| !s.is_empty()).map(|item| {
            let (keyword, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            let keyword_ok = keyword
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
                && keyword
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            let value_ok = value.is_none_or(|v| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c != '=' && (('!'..='~').contains(&c) || !c.is_ascii()))
            });
            if keyword_ok && value_ok {
                Ok((keyword, value))
            } else {
                Err(ParamError::Malformed(keyword.to_owned()))
            }
        })
    }

    /// Parameter lists: mostly spaces, `=`, keyword and value bytes, some of anything.
    fn param_like() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            6 => prop::sample::select(vec![" ", "  ", "=", "-", ";", ","]),
            8 => prop::sample::select(vec!["SIZE", "x", "Body", "8BITMIME", "0", "a-b", "+2B"]),
            2 => prop::sample::select(vec!["<", ">", "~", "!", "\"", "\\", "é", "例", "\u{85}"]),
            1 => prop::sample::select(vec!["\t", "\r", "\0", "\u{7f}"]),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    /// The keyword chain of [`MailParams::parse`] as first written.
    fn reference_mail_keyword(keyword: &str) -> Option<&'static str> {
        ["SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "XSHADOW"]
            .into_iter()
            .find(|known| keyword.eq_ignore_ascii_case(known))
    }

    fn keyword_name(keyword: MailKeyword) -> &'static str {
        match keyword {
            MailKeyword::Size => "SIZE",
            MailKeyword::Body => "BODY",
            MailKeyword::SmtpUtf8 => "SMTPUTF8",
            MailKeyword::Ret => "RET",
            MailKeyword::Envid => "ENVID",
            MailKeyword::XShadow => "XSHADOW",
        }
    }

    /// The `BODY=` values as first matched.
    fn reference_body_type(value: &str) -> Option<BodyType> {
        [
            BodyType::SevenBit,
            BodyType::EightBitMime,
            BodyType::BinaryMime,
        ]
        .into_iter()
        .find(|body| value.eq_ignore_ascii_case(body.as_str()))
    }

    #[test]
    fn known_keywords_and_body_types_match_in_any_case_and_nothing_one_byte_off_does() {
        let words = [
            "SIZE",
            "BODY",
            "SMTPUTF8",
            "RET",
            "ENVID",
            "XSHADOW",
            "7BIT",
            "8BITMIME",
            "BINARYMIME",
        ];
        for word in words {
            for mixed in crate::wire::case_mixes(word) {
                let got = mail_keyword(&mixed).map(keyword_name);
                assert_eq!(got, reference_mail_keyword(&mixed), "{mixed}");
                assert_eq!(body_type(&mixed), reference_body_type(&mixed), "{mixed}");
            }
            for i in 0..word.len() {
                for b in 0..=u8::MAX {
                    let mut near = word.as_bytes().to_vec();
                    near[i] = b;
                    let Ok(near) = String::from_utf8(near) else {
                        continue;
                    };
                    if class_run(near.as_bytes(), KEYWORD) == near.len() {
                        let got = mail_keyword(&near).map(keyword_name);
                        assert_eq!(got, reference_mail_keyword(&near), "{near:?}");
                    }
                    if class_run(near.as_bytes(), VALUE) == near.len() {
                        assert_eq!(body_type(&near), reference_body_type(&near), "{near:?}");
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn keyword_and_body_type_recognition_agrees_with_the_reference(
            word in "[A-Za-z0-9-]{0,10}",
            value in "[!-<>-~é]{0,11}",
        ) {
            prop_assert_eq!(mail_keyword(&word).map(keyword_name), reference_mail_keyword(&word));
            prop_assert_eq!(body_type(&value), reference_body_type(&value));
            prop_assert_eq!(body_type(&word), reference_body_type(&word));
        }

        #[test]
        fn value_run_ends_at_the_first_non_value_byte(
            bytes in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            prop_assert_eq!(value_run(&bytes), class_run(&bytes, VALUE));
        }

        /// The byte walk splits and judges every list as the `str` splitter did, and stops at
        /// the same first error.
        #[test]
        fn split_params_agrees_with_the_reference(input in param_like()) {
            let mut got = Vec::new();
            for item in split_params(&input) {
                let stop = item.is_err();
                got.push(item);
                if stop {
                    break;
                }
            }
            let mut want = Vec::new();
            for item in reference_split_params(&input) {
                let stop = item.is_err();
                want.push(item);
                if stop {
                    break;
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
