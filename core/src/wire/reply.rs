//! Server replies: [`Reply`] with its optional RFC 3463 enhanced status code, written by the
//! server and read incrementally by the client.

use std::borrow::Cow;
use std::fmt;

use smallvec::SmallVec;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The three-digit reply code (200..=599).
    pub code: u16,
    /// The enhanced status code written at the start of every line, when present.
    pub enhanced: Option<EnhancedStatus>,
    /// The text of each line; never empty (a reply has at least one line, maybe of no text).
    pub lines: SmallVec<[Cow<'a, str>; 1]>,
}

impl<'a> Reply<'a> {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: Option<EnhancedStatus>, text: impl Into<Cow<'a, str>>) -> Self {
        let mut lines = SmallVec::new();
        lines.push(text.into());
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
        Reply {
            code: self.code,
            enhanced: self.enhanced,
            lines: self
                .lines
                .into_iter()
                .map(|l| Cow::Owned(l.into_owned()))
                .collect(),
        }
    }

    /// Appends the reply's wire form (`250-first`, ..., `250 last`, each ending in CRLF).
    pub fn write_to(&self, out: &mut Vec<u8>) {
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
        let mut out = Vec::with_capacity(16 + self.lines.iter().map(|l| l.len() + 16).sum::<usize>());
        self.write_to(&mut out);
        out
    }
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
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{status}");
}

impl fmt::Display for Reply<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}
