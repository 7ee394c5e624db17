//! RFC 3461 xtext: printable ASCII except `+` and `=`, with every other byte written `+XX`.
//!
//! The values of `XSHADOW=`, `ENVID=` and `ORCPT=` travel as xtext. Decoding borrows the input
//! when it holds no `+XX` escape, which is the common case (GUIDs never need one).

use std::borrow::Cow;

use super::line::{bytes_below, bytes_equal, bytes_from_del, first_flagged, non_ascii};

/// Why an xtext value could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XtextError {
    /// A byte outside `!`..=`~`, or a raw `=`.
    BadByte,
    /// A `+` not followed by two uppercase hex digits.
    BadEscape,
    /// The decoded value is not UTF-8.
    NotUtf8,
}

/// True for bytes that stand for themselves in xtext.
fn is_plain(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

/// True when every byte of `bytes` [`is_plain`]: the check that lets a value go through
/// without a copy, eight bytes at a time since such values (GUIDs) are tens of bytes long.
fn all_plain(bytes: &[u8]) -> bool {
    let not_plain = |word| {
        bytes_below(word, b'!')
            | bytes_from_del(word)
            | bytes_equal(word, b'+')
            | bytes_equal(word, b'=')
    };
    first_flagged(bytes, not_plain) == bytes.len()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes an xtext value. Lowercase hex after `+` is refused, as RFC 3461 requires.
pub fn decode(input: &str) -> Result<Cow<'_, str>, XtextError> {
    if all_plain(input.as_bytes()) {
        return Ok(Cow::Borrowed(input));
    }
    decode_escaped(input)
}

/// [`decode`] for a MAIL or RCPT parameter value, whose bytes are known to be from `!` up,
/// never `=` and never DEL: such a value is plain exactly when it has no `+` and no byte from
/// 0x80 up, a check of two tests a word instead of four.
pub(crate) fn decode_param_value(value: &str) -> Result<Cow<'_, str>, XtextError> {
    let escaped_or_not_ascii = |word| bytes_equal(word, b'+') | non_ascii(word);
    if first_flagged(value.as_bytes(), escaped_or_not_ascii) == value.len() {
        return Ok(Cow::Borrowed(value));
    }
    decode_escaped(value)
}

/// [`decode`] past its plain check.
fn decode_escaped(input: &str) -> Result<Cow<'_, str>, XtextError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'+' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(XtextError::BadEscape),
            }
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(XtextError::BadByte);
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| XtextError::NotUtf8)
}

/// Appends `value` encoded as xtext.
pub fn encode_into(value: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if all_plain(value.as_bytes()) {
        // The usual case (a GUID, an ENVID): copied as it is.
        out.extend_from_slice(value.as_bytes());
        return;
    }
    for &b in value.as_bytes() {
        if is_plain(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'+', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// The xtext encoding of `value` (borrowed when nothing needs escaping).
pub fn encode(value: &str) -> Cow<'_, str> {
    if all_plain(value.as_bytes()) {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len() + 8);
    encode_into(value, &mut out);
    // Only ASCII is ever written.
    Cow::Owned(out.into_iter().map(char::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_guid_decodes_without_copying() {
        let guid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
        assert!(matches!(decode(guid), Ok(Cow::Borrowed(g)) if g == guid));
    }

    #[test]
    fn escapes_decode_to_their_bytes() {
        assert_eq!(decode("a+2Bb+3Dc").as_deref(), Ok("a+b=c"));
        assert_eq!(decode("rfc822;b+C3+A9@x").as_deref(), Ok("rfc822;bé@x"));
    }

    #[test]
    fn malformed_xtext_is_refused() {
        assert_eq!(decode("a+2"), Err(XtextError::BadEscape));
        assert_eq!(decode("a+2b"), Err(XtextError::BadEscape));
        assert_eq!(decode("a=b"), Err(XtextError::BadByte));
        assert_eq!(decode("a b"), Err(XtextError::BadByte));
        assert_eq!(decode("é"), Err(XtextError::BadByte));
        assert_eq!(decode("+FF"), Err(XtextError::NotUtf8));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_identity(value in any::<String>()) {
            let encoded = encode(&value);
            prop_assert!(encoded.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
            let decoded = decode(&encoded).unwrap();
            prop_assert_eq!(decoded.as_ref(), value.as_str());
        }
    }

    proptest! {
        /// On parameter values (no byte below `!`, no `=`, no DEL), the shorter plain check
        /// decodes as `decode` does.
        #[test]
        fn parameter_values_decode_as_any_xtext_does(
            value in proptest::collection::vec(
                prop_oneof![
                    4 => proptest::sample::select(b"+2BC3A9azAZ09-!~<>".to_vec()),
                    1 => 0x21u8..=0x7e,
                    1 => 0x80u8..=0xff,
                ],
                0..40,
            ),
        ) {
            let value = String::from_utf8_lossy(&value).into_owned();
            prop_assume!(value.bytes().all(|b| b >= b'!' && b != b'=' && b != 0x7f));
            let general = decode(&value);
            let param = decode_param_value(&value);
            prop_assert_eq!(&param, &general);
            prop_assert_eq!(
                matches!(param, Ok(Cow::Borrowed(_))),
                matches!(general, Ok(Cow::Borrowed(_)))
            );
        }

        #[test]
        fn the_eight_byte_check_agrees_with_is_plain(value in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(all_plain(&value), value.iter().all(|&b| is_plain(b)));
        }
    }
}
