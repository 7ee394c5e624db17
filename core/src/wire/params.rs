//! MAIL and RCPT parameters (`KEYWORD[=value]` after the path), typed.
//!
//! Known keywords: SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531), RET, ENVID,
//! NOTIFY, ORCPT (RFC 3461) and XSHADOW (the shadow message id). Keywords match
//! case-insensitively; unknown ones are kept in order. A repeated keyword or a malformed value
//! is an error the server answers with `501 5.5.4 Invalid arguments`.

use std::borrow::Cow;

use smallvec::SmallVec;

use super::MAX_SHADOW_FIELD;
use super::xtext;

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
    /// Every other parameter, in order.
    pub other: SmallVec<[OtherParam<'a>; 2]>,
}

/// The parameters of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams<'a> {
    /// `NOTIFY=`.
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<Orcpt<'a>>,
    /// Every other parameter, in order.
    pub other: SmallVec<[OtherParam<'a>; 2]>,
}

/// Splits `SP`-separated `keyword[=value]` items, checking the keyword and value grammar.
fn split_params(input: &str) -> impl Iterator<Item = Result<(&str, Option<&str>), ParamError>> {
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
        // esmtp-value: printable except '=' (and SP, already split), UTF-8 allowed (RFC 6531).
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
    other: &mut SmallVec<[OtherParam<'a>; 2]>,
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
        .filter(|v| v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| malformed("SIZE"))
}

fn decode_xtext<'a>(keyword: &str, value: Option<&'a str>) -> Result<Cow<'a, str>, ParamError> {
    value
        .and_then(|v| xtext::decode(v).ok())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| malformed(keyword))
}

impl<'a> MailParams<'a> {
    /// Parses the text after the reverse-path (leading spaces allowed, may be empty).
    pub fn parse(input: &'a str) -> Result<Self, ParamError> {
        let mut params = MailParams::default();
        for item in split_params(input) {
            let (keyword, value) = item?;
            if keyword.eq_ignore_ascii_case("SIZE") {
                set_once(&mut params.size, keyword, parse_size(value)?)?;
            } else if keyword.eq_ignore_ascii_case("BODY") {
                let body = match value.map(str::to_ascii_uppercase).as_deref() {
                    Some("7BIT") => BodyType::SevenBit,
                    Some("8BITMIME") => BodyType::EightBitMime,
                    Some("BINARYMIME") => BodyType::BinaryMime,
                    _ => return Err(malformed(keyword)),
                };
                set_once(&mut params.body, keyword, body)?;
            } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
                if value.is_some() {
                    return Err(malformed(keyword));
                }
                if params.smtputf8 {
                    return Err(ParamError::Duplicate("SMTPUTF8".into()));
                }
                params.smtputf8 = true;
            } else if keyword.eq_ignore_ascii_case("RET") {
                let ret = match value {
                    Some(v) if v.eq_ignore_ascii_case("FULL") => Ret::Full,
                    Some(v) if v.eq_ignore_ascii_case("HDRS") => Ret::Headers,
                    _ => return Err(malformed(keyword)),
                };
                set_once(&mut params.ret, keyword, ret)?;
            } else if keyword.eq_ignore_ascii_case("ENVID") {
                let envid = decode_xtext(keyword, value)?;
                if envid.len() > 100 {
                    return Err(malformed(keyword));
                }
                set_once(&mut params.envid, keyword, envid)?;
            } else if keyword.eq_ignore_ascii_case("XSHADOW") {
                let id = decode_xtext(keyword, value)?;
                if id.len() > MAX_SHADOW_FIELD {
                    return Err(malformed(keyword));
                }
                set_once(&mut params.xshadow, keyword, id)?;
            } else {
                push_other(&mut params.other, keyword, value)?;
            }
        }
        Ok(params)
    }

    /// Appends ` KEYWORD=value` for every parameter, known ones first in a fixed order.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if let Some(size) = self.size {
            out.extend_from_slice(b" SIZE=");
            out.extend_from_slice(size.to_string().as_bytes());
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

fn own_other(other: SmallVec<[OtherParam<'_>; 2]>) -> SmallVec<[OtherParam<'static>; 2]> {
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
}
