//! The EHLO reply: the server's domain and greeting, and the service extensions it offers as
//! typed [`EhloKeywords`] (XSHADOW and XSHADOWREQUEST included).
//!
//! Keywords are recognised by the first token of each line, ASCII case-insensitively
//! (PROTOCOL.md §2); lines that name no known keyword are kept verbatim in
//! [`EhloKeywords::other`]. EHLO reply lines never carry an enhanced status code.

use std::borrow::Cow;
use std::fmt;

use smallvec::SmallVec;

use super::reply::Reply;

/// What a `SIZE` keyword says about the largest message the server takes (RFC 1870).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeLimit {
    /// `SIZE` without a number: the SIZE parameter is understood, no limit is announced.
    Unannounced,
    /// `SIZE <n>`: messages of at most `n` bytes; `SIZE 0` means no fixed maximum.
    Max(u64),
}

impl SizeLimit {
    /// The announced limit in bytes, if there is one (`SIZE 0` and bare `SIZE` have none).
    pub fn limit(self) -> Option<u64> {
        match self {
            Self::Max(n) if n > 0 => Some(n),
            _ => None,
        }
    }
}

/// The service extensions an EHLO reply offers, one field per keyword this crate knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EhloKeywords<'a> {
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `SIZE` with or without a limit (RFC 1870); `None` when not offered.
    pub size: Option<SizeLimit>,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `CHUNKING`: BDAT (RFC 3030).
    pub chunking: bool,
    /// `BINARYMIME` (RFC 3030).
    pub binary_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// `DSN` (RFC 3461).
    pub dsn: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `XSHADOW`: "I can be your primary" (PROTOCOL.md §2).
    pub xshadow: bool,
    /// `XSHADOWREQUEST`: Exchange 2013+ peer mode (PROTOCOL.md §7).
    pub xshadow_request: bool,
    /// Every other keyword line, verbatim (`AUTH PLAIN LOGIN`, ...), in the order received.
    pub other: SmallVec<[Cow<'a, str>; 4]>,
}

impl<'a> EhloKeywords<'a> {
    /// Records one keyword line of an EHLO reply; blank lines are ignored, unknown keywords
    /// and a `SIZE` with a malformed number go to [`EhloKeywords::other`].
    pub fn add_line(&mut self, line: Cow<'a, str>) {
        let space = line.bytes().position(|b| b == b' ');
        let (keyword, param) =
            match space.and_then(|at| Some((line.get(..at)?, line.get(at + 1..)?))) {
                Some((keyword, param)) => (keyword, param),
                None => (line.as_ref(), ""),
            };
        if keyword.is_empty() && param.trim().is_empty() {
            return;
        }
        // Keywords of different lengths never match: the length picks the one or few names
        // to compare, instead of trying all eleven in turn.
        let is = |name: &str| keyword.eq_ignore_ascii_case(name);
        match keyword.len() {
            3 if is("DSN") => self.dsn = true,
            4 if is("SIZE") => {
                let param = param.trim_matches(' ');
                if param.is_empty() {
                    self.size = Some(SizeLimit::Unannounced);
                } else if let Some(n) = parse_decimal(param) {
                    self.size = Some(SizeLimit::Max(n));
                } else {
                    self.other.push(line);
                }
            }
            7 if is("XSHADOW") => self.xshadow = true,
            8 if is("8BITMIME") => self.eight_bit_mime = true,
            8 if is("CHUNKING") => self.chunking = true,
            8 if is("SMTPUTF8") => self.smtputf8 = true,
            8 if is("STARTTLS") => self.starttls = true,
            10 if is("PIPELINING") => self.pipelining = true,
            10 if is("BINARYMIME") => self.binary_mime = true,
            14 if is("XSHADOWREQUEST") => self.xshadow_request = true,
            19 if is("ENHANCEDSTATUSCODES") => self.enhanced_status_codes = true,
            _ => self.other.push(line),
        }
    }

    /// True when the server takes `XSHADOW`: it advertises XSHADOW, or XSHADOWREQUEST
    /// (PROTOCOL.md §7: a server advertising XSHADOWREQUEST also accepts XSHADOW).
    pub fn accepts_xshadow(&self) -> bool {
        self.xshadow || self.xshadow_request
    }

    /// The keyword lines in the order a server writes them: PIPELINING, SIZE, 8BITMIME,
    /// BINARYMIME, CHUNKING, SMTPUTF8, DSN, STARTTLS, ENHANCEDSTATUSCODES, XSHADOW,
    /// XSHADOWREQUEST, then the others as given.
    pub fn lines(&self) -> impl Iterator<Item = Cow<'a, str>> + '_ {
        let size = self.size.map(|size| match size {
            SizeLimit::Unannounced => Cow::Borrowed("SIZE"),
            SizeLimit::Max(n) => Cow::Owned(size_line(n)),
        });
        let flag = |on: bool, name: &'static str| on.then_some(Cow::Borrowed(name));
        let fixed = [
            flag(self.pipelining, "PIPELINING"),
            size,
            flag(self.eight_bit_mime, "8BITMIME"),
            flag(self.binary_mime, "BINARYMIME"),
            flag(self.chunking, "CHUNKING"),
            flag(self.smtputf8, "SMTPUTF8"),
            flag(self.dsn, "DSN"),
            flag(self.starttls, "STARTTLS"),
            flag(self.enhanced_status_codes, "ENHANCEDSTATUSCODES"),
            flag(self.xshadow, "XSHADOW"),
            flag(self.xshadow_request, "XSHADOWREQUEST"),
        ];
        fixed
            .into_iter()
            .flatten()
            .chain(self.other.iter().cloned())
    }

    /// Copies every borrowed line so the keywords outlive their input.
    pub fn into_owned(self) -> EhloKeywords<'static> {
        EhloKeywords {
            pipelining: self.pipelining,
            size: self.size,
            eight_bit_mime: self.eight_bit_mime,
            chunking: self.chunking,
            binary_mime: self.binary_mime,
            smtputf8: self.smtputf8,
            enhanced_status_codes: self.enhanced_status_codes,
            dsn: self.dsn,
            starttls: self.starttls,
            xshadow: self.xshadow,
            xshadow_request: self.xshadow_request,
            other: self
                .other
                .into_iter()
                .map(|l| Cow::Owned(l.into_owned()))
                .collect(),
        }
    }
}

/// A positive EHLO reply: `250-<domain> [greeting]` followed by one keyword per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EhloReply<'a> {
    /// The server's domain (or address literal), the first token of the first line.
    pub domain: Cow<'a, str>,
    /// The rest of the first line after the domain and one space, if not empty.
    pub greeting: Option<Cow<'a, str>>,
    /// The service extensions offered.
    pub keywords: EhloKeywords<'a>,
}

/// Why a reply is not a usable EHLO reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EhloError {
    /// The server refused EHLO (not a 2xx reply); the client may fall back to HELO.
    NotPositive {
        /// The reply code.
        code: u16,
    },
    /// The first line does not start with the server's domain.
    MissingDomain,
}

impl fmt::Display for EhloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPositive { code } => write!(f, "EHLO refused with {code}"),
            Self::MissingDomain => f.write_str("EHLO reply does not start with a domain"),
        }
    }
}

impl std::error::Error for EhloError {}

impl<'a> EhloReply<'a> {
    /// A reply naming `domain`, with no greeting text and no keywords.
    pub fn new(domain: impl Into<Cow<'a, str>>) -> Self {
        Self {
            domain: domain.into(),
            greeting: None,
            keywords: EhloKeywords::default(),
        }
    }

    /// Reads an EHLO reply (client side). A non-2xx reply is [`EhloError::NotPositive`]; a
    /// first line with no domain is [`EhloError::MissingDomain`]. Any enhanced status code
    /// the reply carried is ignored. Borrowed lines stay borrowed.
    pub fn from_reply(reply: &Reply<'a>) -> Result<Self, EhloError> {
        if !reply.is_positive() {
            return Err(EhloError::NotPositive { code: reply.code });
        }
        let mut lines = reply.lines.iter();
        let first = lines.next().ok_or(EhloError::MissingDomain)?;
        let (domain, greeting) = split_first_line(first);
        if domain.is_empty() {
            return Err(EhloError::MissingDomain);
        }
        let mut keywords = EhloKeywords::default();
        for line in lines {
            keywords.add_line(line.clone());
        }
        Ok(Self {
            domain,
            greeting: greeting.filter(|g| !g.is_empty()),
            keywords,
        })
    }

    /// The reply a server sends (code 250, no enhanced status code): the domain line, then the
    /// keywords in the order of [`EhloKeywords::lines`].
    pub fn to_reply(&self) -> Reply<'a> {
        let first = match &self.greeting {
            Some(greeting) if !greeting.is_empty() => {
                Cow::Owned(format!("{} {}", self.domain, greeting))
            }
            _ => self.domain.clone(),
        };
        Reply::multiline(
            250,
            None,
            std::iter::once(first).chain(self.keywords.lines()),
        )
    }

    /// Copies every borrowed part so the reply outlives its input.
    pub fn into_owned(self) -> EhloReply<'static> {
        EhloReply {
            domain: Cow::Owned(self.domain.into_owned()),
            greeting: self.greeting.map(|g| Cow::Owned(g.into_owned())),
            keywords: self.keywords.into_owned(),
        }
    }
}

/// Splits `domain greeting` at its first space, keeping borrowed text borrowed.
fn split_first_line<'a>(line: &Cow<'a, str>) -> (Cow<'a, str>, Option<Cow<'a, str>>) {
    match line {
        Cow::Borrowed(s) => match s.split_once(' ') {
            Some((domain, greeting)) => (Cow::Borrowed(domain), Some(Cow::Borrowed(greeting))),
            None => (Cow::Borrowed(s), None),
        },
        Cow::Owned(s) => match s.split_once(' ') {
            Some((domain, greeting)) => (
                Cow::Owned(domain.to_owned()),
                Some(Cow::Owned(greeting.to_owned())),
            ),
            None => (Cow::Owned(s.clone()), None),
        },
    }
}

/// `SIZE <n>`, written without `core::fmt` (every EHLO reply a server sends has it).
fn size_line(n: u64) -> String {
    let mut line = Vec::with_capacity(25);
    line.extend_from_slice(b"SIZE ");
    super::write_decimal(&mut line, n);
    // Only ASCII was written, so this is never the fallback.
    String::from_utf8(line).unwrap_or_else(|_| format!("SIZE {n}"))
}

/// A non-empty run of ASCII digits that fits in a `u64`.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::reply::parse_reply;
    use proptest::prelude::*;

    #[test]
    fn the_size_line_is_what_format_writes() {
        for n in [0, 7, 10, 9999, 10_000, 36_700_160, u64::MAX] {
            assert_eq!(size_line(n), format!("SIZE {n}"));
        }
    }

    const TWELVE_LINES: &[u8] = b"250-edge1.example Hello hub1.example [192.0.2.1]\r\n\
        250-PIPELINING\r\n\
        250-SIZE 36700160\r\n\
        250-8BITMIME\r\n\
        250-BINARYMIME\r\n\
        250-CHUNKING\r\n\
        250-SMTPUTF8\r\n\
        250-DSN\r\n\
        250-STARTTLS\r\n\
        250-ENHANCEDSTATUSCODES\r\n\
        250-AUTH PLAIN LOGIN\r\n\
        250 XSHADOW\r\n";

    const TRANSCRIPT_EHLO: &[u8] = b"250-edge1.example\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n\
        250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 XSHADOW\r\n";

    fn ehlo(wire: &[u8]) -> Result<EhloReply<'_>, EhloError> {
        let (reply, used) = parse_reply(wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        EhloReply::from_reply(&reply)
    }

    #[test]
    fn a_twelve_line_ehlo_reply_with_xshadow_is_fully_typed() {
        let reply = ehlo(TWELVE_LINES).unwrap();
        assert_eq!(reply.domain, "edge1.example");
        assert_eq!(
            reply.greeting.as_deref(),
            Some("Hello hub1.example [192.0.2.1]")
        );
        let expected = EhloKeywords {
            pipelining: true,
            size: Some(SizeLimit::Max(36_700_160)),
            eight_bit_mime: true,
            chunking: true,
            binary_mime: true,
            smtputf8: true,
            enhanced_status_codes: true,
            dsn: true,
            starttls: true,
            xshadow: true,
            xshadow_request: false,
            other: ["AUTH PLAIN LOGIN"]
                .into_iter()
                .map(Cow::Borrowed)
                .collect(),
        };
        assert_eq!(reply.keywords, expected);
        assert!(reply.keywords.accepts_xshadow());
        assert_eq!(
            reply.keywords.size.and_then(SizeLimit::limit),
            Some(36_700_160)
        );
    }

    #[test]
    fn parsed_ehlo_parts_borrow_the_input() {
        let reply = ehlo(TWELVE_LINES).unwrap();
        assert!(matches!(reply.domain, Cow::Borrowed(_)));
        assert!(matches!(reply.greeting, Some(Cow::Borrowed(_))));
        assert!(
            reply
                .keywords
                .other
                .iter()
                .all(|l| matches!(l, Cow::Borrowed(_)))
        );
    }

    #[test]
    fn a_twelve_line_ehlo_reply_written_and_read_again_is_the_same() {
        let reply = ehlo(TWELVE_LINES).unwrap();
        let wire = reply.to_reply().to_bytes();
        assert_eq!(ehlo(&wire).unwrap().into_owned(), reply.into_owned());
    }

    #[test]
    fn the_transcript_ehlo_reply_reads_and_writes_byte_for_byte() {
        let reply = ehlo(TRANSCRIPT_EHLO).unwrap();
        assert_eq!(reply.domain, "edge1.example");
        assert_eq!(reply.greeting, None);
        assert!(reply.keywords.xshadow && !reply.keywords.xshadow_request);
        assert!(reply.keywords.other.is_empty());
        assert_eq!(reply.to_reply().to_bytes(), TRANSCRIPT_EHLO);
    }

    #[test]
    fn a_server_built_ehlo_reply_writes_keywords_in_protocol_order() {
        let mut reply = EhloReply::new("edge1.example");
        reply.greeting = Some("ESMTP xshadow".into());
        reply.keywords = EhloKeywords {
            xshadow_request: true,
            enhanced_status_codes: true,
            pipelining: true,
            size: Some(SizeLimit::Unannounced),
            eight_bit_mime: true,
            chunking: true,
            other: ["HELP".into()].into_iter().collect(),
            ..EhloKeywords::default()
        };
        assert_eq!(
            reply.to_reply().to_bytes(),
            b"250-edge1.example ESMTP xshadow\r\n250-PIPELINING\r\n250-SIZE\r\n250-8BITMIME\r\n\
              250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-XSHADOWREQUEST\r\n250 HELP\r\n"
        );
        assert_eq!(reply.to_reply().enhanced, None);
    }

    #[test]
    fn a_bare_domain_ehlo_reply_is_one_line() {
        assert_eq!(
            EhloReply::new("mx.example").to_reply().to_bytes(),
            b"250 mx.example\r\n"
        );
        let reply = ehlo(b"250 mx.example\r\n").unwrap();
        assert_eq!(reply, EhloReply::new("mx.example"));
    }

    #[test]
    fn keywords_match_their_first_token_case_insensitively() {
        let reply = ehlo(
            b"250-mx\r\n250-pipelining\r\n250-Size 100\r\n250-8bitmime\r\n250-xShadow\r\n\
              250 xshadowrequest extra\r\n",
        )
        .unwrap();
        let k = &reply.keywords;
        assert!(k.pipelining && k.eight_bit_mime && k.xshadow && k.xshadow_request);
        assert_eq!(k.size, Some(SizeLimit::Max(100)));
        assert!(k.other.is_empty());
    }

    #[test]
    fn keywords_that_only_begin_like_known_ones_are_other() {
        let reply = ehlo(b"250-mx\r\n250-XSHADOWX\r\n250-SIZES 1\r\n250 X-SHADOW\r\n").unwrap();
        assert!(!reply.keywords.accepts_xshadow());
        assert_eq!(reply.keywords.size, None);
        assert_eq!(
            reply.keywords.other.as_slice(),
            ["XSHADOWX", "SIZES 1", "X-SHADOW"]
        );
    }

    #[test]
    fn size_without_a_number_is_unannounced_and_a_bad_number_is_other() {
        let reply = ehlo(b"250-mx\r\n250 SIZE\r\n").unwrap();
        assert_eq!(reply.keywords.size, Some(SizeLimit::Unannounced));
        assert_eq!(reply.keywords.size.and_then(SizeLimit::limit), None);
        for bad in [
            &b"250-mx\r\n250 SIZE 12k\r\n"[..],
            b"250-mx\r\n250 SIZE +5\r\n",
            b"250-mx\r\n250 SIZE 99999999999999999999\r\n",
        ] {
            let reply = ehlo(bad).unwrap();
            assert_eq!(reply.keywords.size, None);
            assert_eq!(reply.keywords.other.len(), 1);
        }
        assert_eq!(SizeLimit::Max(0).limit(), None);
    }

    #[test]
    fn blank_keyword_lines_are_ignored() {
        let reply = ehlo(b"250-mx\r\n250-\r\n250 DSN\r\n").unwrap();
        assert!(reply.keywords.dsn);
        assert!(reply.keywords.other.is_empty());
    }

    #[test]
    fn a_refused_ehlo_is_an_error() {
        assert_eq!(
            ehlo(b"502 5.5.1 Command not implemented\r\n"),
            Err(EhloError::NotPositive { code: 502 })
        );
        assert_eq!(
            ehlo(b"421 busy\r\n"),
            Err(EhloError::NotPositive { code: 421 })
        );
    }

    #[test]
    fn an_ehlo_reply_without_a_domain_is_an_error() {
        assert_eq!(ehlo(b"250\r\n"), Err(EhloError::MissingDomain));
        assert_eq!(
            ehlo(b"250-\r\n250 PIPELINING\r\n"),
            Err(EhloError::MissingDomain)
        );
        assert_eq!(ehlo(b"250  greeting\r\n"), Err(EhloError::MissingDomain));
    }

    #[test]
    fn owned_replies_read_the_same_as_borrowed_ones() {
        let (reply, _) = parse_reply(TWELVE_LINES).unwrap().unwrap();
        let owned = reply.clone().into_owned();
        assert_eq!(
            EhloReply::from_reply(&owned).unwrap(),
            EhloReply::from_reply(&reply).unwrap().into_owned()
        );
    }

    fn other_keyword() -> impl Strategy<Value = String> {
        "X-[A-Z0-9]{1,8}( [!-~]{1,8}){0,2}"
    }

    prop_compose! {
        fn any_ehlo_reply()(
            // A domain starts with a letter here: a first line such as `2.0.0 x` would read back
            // as an enhanced status code (see `reply::any_reply`); no real domain looks so.
            domain in "[a-z][a-z0-9]{0,9}(\\.[a-z0-9]{1,10}){0,3}",
            greeting in proptest::option::of("[!-~]{1,10}( [!-~]{1,10}){0,3}"),
            flags in proptest::array::uniform10(any::<bool>()),
            size in proptest::option::of(prop_oneof![
                Just(SizeLimit::Unannounced),
                any::<u64>().prop_map(SizeLimit::Max),
            ]),
            other in proptest::collection::vec(other_keyword(), 0..4),
        ) -> EhloReply<'static> {
            let [pipelining, eight_bit_mime, chunking, binary_mime, smtputf8, enhanced_status_codes, dsn, starttls, xshadow, xshadow_request] = flags;
            EhloReply {
                domain: domain.into(),
                greeting: greeting.map(Cow::Owned),
                keywords: EhloKeywords {
                    pipelining,
                    size,
                    eight_bit_mime,
                    chunking,
                    binary_mime,
                    smtputf8,
                    enhanced_status_codes,
                    dsn,
                    starttls,
                    xshadow,
                    xshadow_request,
                    other: other.into_iter().map(Cow::Owned).collect(),
                },
            }
        }
    }

    proptest! {
        #[test]
        fn any_written_ehlo_reply_reads_back_as_itself(reply in any_ehlo_reply()) {
            let wire = reply.to_reply().to_bytes();
            let parsed = ehlo(&wire).unwrap().into_owned();
            prop_assert_eq!(parsed, reply);
        }
    }
}
