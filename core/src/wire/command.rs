//! SMTP commands: [`Command`] parsed from one line (without its CRLF) and written back.
//!
//! Parsing never fails on an unknown verb: it becomes [`Command::Unknown`] so the server can
//! answer `500 5.5.1`. A known verb with bad arguments is a [`CommandError`] that keeps the
//! verb, because the shadow verbs check the session state *before* their arguments
//! (PROTOCOL.md §3, §5); [`CommandError::reply`] gives the reply to send.

use std::borrow::Cow;
use std::fmt;

use super::line::{bytes_below, bytes_from_del, first_flagged};
use super::params::{MailParams, ParamError, RcptParams};
use super::path::{ForwardPath, PathError, ReversePath, parse_forward_path, parse_reverse_path};
use super::reply::{EnhancedStatus, Reply};
use super::{MAX_SHADOW_FIELD, folded, folded_word};

/// A known SMTP verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `EHLO`.
    Ehlo,
    /// `HELO`.
    Helo,
    /// `MAIL`.
    Mail,
    /// `RCPT`.
    Rcpt,
    /// `DATA`.
    Data,
    /// `BDAT` (RFC 3030).
    Bdat,
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY`.
    Vrfy,
    /// `HELP`.
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `XSHADOW` (shadow redundancy).
    XShadow,
    /// `XQDISCARD` (shadow redundancy).
    XqDiscard,
    /// `XSHADOWREQUEST` (shadow redundancy, peer mode).
    XShadowRequest,
}

impl Verb {
    /// The verb as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ehlo => "EHLO",
            Self::Helo => "HELO",
            Self::Mail => "MAIL",
            Self::Rcpt => "RCPT",
            Self::Data => "DATA",
            Self::Bdat => "BDAT",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::Vrfy => "VRFY",
            Self::Help => "HELP",
            Self::StartTls => "STARTTLS",
            Self::XShadow => "XSHADOW",
            Self::XqDiscard => "XQDISCARD",
            Self::XShadowRequest => "XSHADOWREQUEST",
        }
    }

    /// Recognises a verb, case-insensitively.
    pub fn from_bytes(verb: &[u8]) -> Option<Verb> {
        // Branch on the length first: eleven of the fifteen verbs have four letters, and those
        // are told apart with one word compare instead of up to fifteen string compares.
        let long = match verb.len() {
            4 => return Self::from_four_letters(verb),
            7 => Self::XShadow,
            8 => Self::StartTls,
            9 => Self::XqDiscard,
            14 => Self::XShadowRequest,
            _ => return None,
        };
        verb.eq_ignore_ascii_case(long.as_str().as_bytes())
            .then_some(long)
    }

    /// The four-letter verbs, compared as one [`folded`] word: for words of letters that is
    /// exactly `eq_ignore_ascii_case`.
    fn from_four_letters(verb: &[u8]) -> Option<Verb> {
        const EHLO: u64 = folded(b"EHLO");
        const HELO: u64 = folded(b"HELO");
        const MAIL: u64 = folded(b"MAIL");
        const RCPT: u64 = folded(b"RCPT");
        const DATA: u64 = folded(b"DATA");
        const BDAT: u64 = folded(b"BDAT");
        const RSET: u64 = folded(b"RSET");
        const NOOP: u64 = folded(b"NOOP");
        const QUIT: u64 = folded(b"QUIT");
        const VRFY: u64 = folded(b"VRFY");
        const HELP: u64 = folded(b"HELP");
        Some(match folded_word(verb)? {
            EHLO => Self::Ehlo,
            HELO => Self::Helo,
            MAIL => Self::Mail,
            RCPT => Self::Rcpt,
            DATA => Self::Data,
            BDAT => Self::Bdat,
            RSET => Self::Rset,
            NOOP => Self::Noop,
            QUIT => Self::Quit,
            VRFY => Self::Vrfy,
            HELP => Self::Help,
            _ => return None,
        })
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One SMTP command, borrowing the line it was parsed from (`Command<'static>` owns its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO <domain>`.
    Ehlo {
        /// The client's name or address literal, as sent.
        domain: Cow<'a, str>,
    },
    /// `HELO <domain>`.
    Helo {
        /// The client's name or address literal, as sent.
        domain: Cow<'a, str>,
    },
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail {
        /// The sender.
        from: ReversePath<'a>,
        /// SIZE, BODY, XSHADOW and the rest.
        params: MailParams<'a>,
    },
    /// `RCPT TO:<forward-path> [params]`.
    Rcpt {
        /// The recipient.
        to: ForwardPath<'a>,
        /// NOTIFY, ORCPT and the rest.
        params: RcptParams<'a>,
    },
    /// `DATA`.
    Data,
    /// `BDAT <size> [LAST]`.
    Bdat {
        /// The chunk size in bytes (any u64).
        size: u64,
        /// True for the last chunk of the message.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP` (any argument is ignored).
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY <string>`.
    Vrfy {
        /// What to verify, as sent.
        target: Cow<'a, str>,
    },
    /// `HELP [topic]`.
    Help {
        /// The topic, if any.
        topic: Option<Cow<'a, str>>,
    },
    /// `STARTTLS`.
    StartTls,
    /// `XSHADOW <context>`: the shadow server says who it is.
    XShadow {
        /// The shadow context, 1 to 255 bytes.
        context: Cow<'a, str>,
    },
    /// `XQDISCARD <max>`: the shadow asks for up to `max` discard events.
    XqDiscard {
        /// The most ids wanted (at least 1; larger values saturate at `u32::MAX`).
        max: u32,
    },
    /// `XSHADOWREQUEST <primary-fqdn> <primary-database-id>` (peer mode).
    XShadowRequest {
        /// The primary's name.
        primary: Cow<'a, str>,
        /// The primary's database id, 1 to 255 bytes.
        database_id: Cow<'a, str>,
    },
    /// A verb this codec does not know, kept so the server can answer `500 5.5.1`.
    Unknown {
        /// The whole line as sent.
        line: Cow<'a, str>,
    },
}

/// What was wrong with a command's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandErrorKind {
    /// The line is not UTF-8.
    NotUtf8,
    /// A required argument is missing.
    MissingArgument,
    /// The verb takes no argument but got one.
    UnexpectedArgument,
    /// An argument is malformed or out of range.
    InvalidArgument,
    /// The reverse-path of MAIL is malformed or too long.
    BadSender(PathError),
    /// The forward-path of RCPT is malformed or too long.
    BadRecipient(PathError),
    /// A MAIL or RCPT parameter is repeated or malformed.
    BadParameter(ParamError),
}

/// A command line the server must refuse; [`CommandError::reply`] says how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The verb, when it was recognised; sessions check their state against it first.
    pub verb: Option<Verb>,
    /// What was wrong.
    pub kind: CommandErrorKind,
}

impl CommandError {
    fn new(verb: Verb, kind: CommandErrorKind) -> Self {
        Self {
            verb: Some(verb),
            kind,
        }
    }

    /// The reply a server sends for this error (PROTOCOL.md §3, §5, §7 and RFC 5321).
    pub fn reply(&self) -> Reply<'static> {
        use CommandErrorKind as K;
        let e = |s, d| Some(EnhancedStatus::new(5, s, d));
        match (&self.kind, self.verb) {
            (K::NotUtf8, None) => Reply::new(500, e(5, 2), "Syntax error, line is not UTF-8"),
            (K::NotUtf8, Some(_)) => {
                Reply::new(501, e(5, 2), "Syntax error, argument is not UTF-8")
            }
            (K::MissingArgument, Some(Verb::XShadow)) => {
                Reply::new(501, e(0, 0), "XSHADOW requires Shadow server's context")
            }
            (K::MissingArgument, Some(Verb::XqDiscard)) => Reply::new(
                501,
                e(0, 0),
                "XQDISCARD requires maximum discard events count",
            ),
            (K::MissingArgument, Some(Verb::Mail)) => {
                Reply::new(501, e(5, 2), "Syntax: MAIL FROM:<address>")
            }
            (K::MissingArgument, Some(Verb::Rcpt)) => {
                Reply::new(501, e(5, 2), "Syntax: RCPT TO:<address>")
            }
            (K::MissingArgument, Some(verb @ (Verb::Ehlo | Verb::Helo))) => {
                Reply::new(501, e(5, 4), format!("Syntax: {verb} hostname"))
            }
            (K::BadSender(_), _) => Reply::new(501, e(1, 7), "Bad sender address syntax"),
            (K::BadRecipient(_), _) => Reply::new(501, e(1, 3), "Bad recipient address syntax"),
            _ => Reply::new(501, e(5, 4), "Invalid arguments"),
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = self.verb.map_or("command", Verb::as_str);
        write!(f, "{verb}: {:?}", self.kind)
    }
}

impl std::error::Error for CommandError {}

/// Appends `MAIL FROM:<path>` and its parameters (no CRLF): the line `Command::Mail` writes,
/// from borrowed parts.
pub(crate) fn write_mail(out: &mut Vec<u8>, from: &ReversePath<'_>, params: &MailParams<'_>) {
    out.extend_from_slice(b"MAIL FROM:");
    from.write_to(out);
    params.write_to(out);
}

/// Appends `RCPT TO:<path>` and its parameters (no CRLF): the line `Command::Rcpt` writes,
/// from borrowed parts.
pub(crate) fn write_rcpt(out: &mut Vec<u8>, to: &ForwardPath<'_>, params: &RcptParams<'_>) {
    out.extend_from_slice(b"RCPT TO:");
    to.write_to(out);
    params.write_to(out);
}

/// `args` after `FROM:` (the letters in any case), as `strip_prefix_ignore_case` gives it:
/// the four letters compared as one [`folded`] word, the colon as it is.
fn strip_from(args: &str) -> Option<&str> {
    strip_folded(args, const { folded(b"FROM") }, 4)
}

/// `args` after `TO:` (the letters in any case), as [`strip_from`] reads `FROM:`.
fn strip_to(args: &str) -> Option<&str> {
    strip_folded(args, const { folded(b"TO") }, 2)
}

/// `args` after its first `len` bytes, when they are letters that fold to `word`, and a colon.
fn strip_folded(args: &str, word: u64, len: usize) -> Option<&str> {
    let bytes = args.as_bytes();
    (bytes.get(len) == Some(&b':') && folded_word(bytes.get(..len)?) == Some(word))
        .then(|| args.get(len + 1..))
        .flatten()
}

/// `s` without its leading spaces; a byte loop, cheaper than a `char` pattern.
fn trim_start_spaces(s: &str) -> &str {
    let start = s.bytes().position(|b| b != b' ').unwrap_or(s.len());
    s.get(start..).unwrap_or_default()
}

/// `s` without its leading and trailing spaces, as `s.trim_matches(' ')`.
fn trim_spaces(s: &str) -> &str {
    let s = trim_start_spaces(s);
    let end = s
        .bytes()
        .rposition(|b| b != b' ')
        .map_or(0, |last| last + 1);
    s.get(..end).unwrap_or_default()
}

/// The verb of a command line (its bytes before the first space) and the rest of the line
/// after it; `None` for an unknown verb.
fn split_verb(line: &[u8]) -> Option<(Verb, &[u8])> {
    // Most lines start with a four-letter verb and a space (or are only the verb). A match
    // is all letters, so the space after it is the first one: nothing needs searching.
    if let Some((word, rest)) = line.split_first_chunk::<4>()
        && rest.first().is_none_or(|&b| b == b' ')
        && let Some(verb) = Verb::from_four_letters(word)
    {
        return Some((verb, rest));
    }
    // No verb is longer than 14 bytes, so only the first 15 are searched: a first word that
    // fills them is no verb whatever its real length, and `from_bytes` refuses it for that.
    let head = line.get(..15).unwrap_or(line);
    let len = head.iter().position(|&b| b == b' ').unwrap_or(head.len());
    let (verb, rest) = line.split_at_checked(len)?;
    Some((Verb::from_bytes(verb)?, rest))
}

/// True when `value` has no control character and no space.
///
/// Printable ASCII, the usual case, passes the byte check; anything else is decided per
/// `char`, since `char::is_control` also covers U+0080..=U+009F (two bytes in UTF-8).
fn is_token(value: &str) -> bool {
    let not_printable = |word| bytes_below(word, b'!') | bytes_from_del(word);
    first_flagged(value.as_bytes(), not_printable) == value.len()
        || !value.contains(|c: char| c.is_control() || c == ' ')
}

/// `1*DIGIT` as a u64; `None` for anything else, overflow included.
fn parse_decimal(s: &str) -> Option<u64> {
    super::parse_decimal(s.as_bytes())
}

/// `s` up to its first space, and the rest after that space (empty when there is none).
fn split_at_space(s: &str) -> (&str, &str) {
    match s.bytes().position(|b| b == b' ') {
        Some(at) => (
            s.get(..at).unwrap_or_default(),
            s.get(at + 1..).unwrap_or_default(),
        ),
        None => (s, ""),
    }
}

/// `bytes` without its leading spaces.
fn skip_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// The usual BDAT arguments, `SP size [SP LAST]` with any number of spaces around the words,
/// read from the bytes: every byte it accepts is ASCII, so the line is UTF-8 and the general
/// reading (UTF-8 check, trim, words) would give the same command. `None` for anything else,
/// which the general reading then decides, errors included.
fn parse_plain_bdat<'a>(rest: &[u8]) -> Option<Command<'a>> {
    let rest = skip_spaces(rest);
    let digits = rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    let (size, rest) = rest.split_at_checked(digits)?;
    let size = super::parse_decimal(size)?;
    if !matches!(rest.first(), None | Some(b' ')) {
        return None;
    }
    let last = match skip_spaces(rest) {
        [] => return Some(Command::Bdat { size, last: false }),
        [l, a, s, t, rest @ ..] if [*l, *a, *s, *t].eq_ignore_ascii_case(b"LAST") => rest,
        _ => return None,
    };
    skip_spaces(last)
        .is_empty()
        .then_some(Command::Bdat { size, last: true })
}

impl<'a> Command<'a> {
    /// Parses one command line, without its CRLF.
    pub fn parse(line: &'a [u8]) -> Result<Command<'a>, CommandError> {
        let Some((verb, rest)) = split_verb(line) else {
            return match std::str::from_utf8(line) {
                Ok(line) => Ok(Command::Unknown {
                    line: Cow::Borrowed(line),
                }),
                Err(_) => Err(CommandError {
                    verb: None,
                    kind: CommandErrorKind::NotUtf8,
                }),
            };
        };
        if verb == Verb::Bdat
            && let Some(bdat) = parse_plain_bdat(rest)
        {
            return Ok(bdat);
        }
        // A known verb is ASCII, so the line is UTF-8 exactly when the rest of it is (and a
        // bare verb needs no check at all).
        let rest = match rest {
            [] => "",
            rest => match std::str::from_utf8(rest) {
                Ok(rest) => rest,
                Err(_) => return Err(CommandError::new(verb, CommandErrorKind::NotUtf8)),
            },
        };
        let args = trim_spaces(rest);
        match verb {
            Verb::Mail => Self::parse_mail(args),
            Verb::Rcpt => Self::parse_rcpt(args),
            _ => Self::parse_args(verb, args).map_err(|kind| CommandError::new(verb, kind)),
        }
    }

    /// `FROM:<reverse-path> [params]`, the arguments of MAIL.
    ///
    /// MAIL and RCPT have functions of their own that return the final result type: their
    /// large values are then written once, straight into the caller's result, instead of
    /// being moved again through [`Command::parse_args`]'s result.
    #[inline(never)]
    fn parse_mail(args: &'a str) -> Result<Command<'a>, CommandError> {
        use CommandErrorKind as K;
        let error = |kind| CommandError::new(Verb::Mail, kind);
        let rest = strip_from(args).ok_or(error(K::MissingArgument))?;
        let (from, rest) =
            parse_reverse_path(trim_start_spaces(rest)).map_err(|e| error(K::BadSender(e)))?;
        if !rest.is_empty() && !rest.starts_with(' ') {
            return Err(error(K::BadSender(PathError::Syntax)));
        }
        if rest.bytes().all(|b| b == b' ') {
            // No parameters, the usual case: nothing to parse and nothing to move.
            return Ok(Command::Mail {
                from,
                params: MailParams::default(),
            });
        }
        // The parameters are read straight into the command to return, not moved there.
        let mut command = Command::Mail {
            from,
            params: MailParams::default(),
        };
        if let Command::Mail { params, .. } = &mut command {
            params
                .parse_into(rest)
                .map_err(|e| error(K::BadParameter(e)))?;
        }
        Ok(command)
    }

    /// `TO:<forward-path> [params]`, the arguments of RCPT (see [`Command::parse_mail`]).
    #[inline(never)]
    fn parse_rcpt(args: &'a str) -> Result<Command<'a>, CommandError> {
        use CommandErrorKind as K;
        let error = |kind| CommandError::new(Verb::Rcpt, kind);
        let rest = strip_to(args).ok_or(error(K::MissingArgument))?;
        let (to, rest) =
            parse_forward_path(trim_start_spaces(rest)).map_err(|e| error(K::BadRecipient(e)))?;
        if !rest.is_empty() && !rest.starts_with(' ') {
            return Err(error(K::BadRecipient(PathError::Syntax)));
        }
        if rest.bytes().all(|b| b == b' ') {
            // No parameters, the usual case: nothing to parse and nothing to move.
            return Ok(Command::Rcpt {
                to,
                params: RcptParams::default(),
            });
        }
        match RcptParams::parse(rest) {
            Ok(params) => Ok(Command::Rcpt { to, params }),
            Err(e) => Err(error(K::BadParameter(e))),
        }
    }

    fn parse_args(verb: Verb, args: &'a str) -> Result<Command<'a>, CommandErrorKind> {
        use CommandErrorKind as K;
        let required = || {
            if args.is_empty() {
                Err(K::MissingArgument)
            } else {
                Ok(args)
            }
        };
        let none = || {
            if args.is_empty() {
                Ok(())
            } else {
                Err(K::UnexpectedArgument)
            }
        };
        let token = |value: &'a str| {
            if is_token(value) {
                Ok(Cow::Borrowed(value))
            } else {
                Err(K::InvalidArgument)
            }
        };
        match verb {
            Verb::Ehlo => Ok(Command::Ehlo {
                domain: token(required()?)?,
            }),
            Verb::Helo => Ok(Command::Helo {
                domain: token(required()?)?,
            }),
            // `parse` sends MAIL and RCPT straight to their functions; these arms keep the
            // match whole.
            Verb::Mail => Self::parse_mail(args).map_err(|e| e.kind),
            Verb::Rcpt => Self::parse_rcpt(args).map_err(|e| e.kind),
            Verb::Data => none().map(|()| Command::Data),
            Verb::Rset => none().map(|()| Command::Rset),
            Verb::Quit => none().map(|()| Command::Quit),
            Verb::StartTls => none().map(|()| Command::StartTls),
            Verb::Noop => Ok(Command::Noop),
            Verb::Bdat => {
                // The words of the arguments (which have no space at either end), one
                // space or more apart: the size, then maybe LAST, then nothing.
                let (size, rest) = split_at_space(required()?);
                let size = parse_decimal(size).ok_or(K::InvalidArgument)?;
                let (word, rest) = split_at_space(trim_start_spaces(rest));
                let last = match word {
                    "" => false,
                    w if w.eq_ignore_ascii_case("LAST") => true,
                    _ => return Err(K::InvalidArgument),
                };
                if !trim_start_spaces(rest).is_empty() {
                    return Err(K::InvalidArgument);
                }
                Ok(Command::Bdat { size, last })
            }
            Verb::Vrfy => Ok(Command::Vrfy {
                target: Cow::Borrowed(required()?),
            }),
            Verb::Help => Ok(Command::Help {
                topic: (!args.is_empty()).then_some(Cow::Borrowed(args)),
            }),
            Verb::XShadow => {
                let context = required()?;
                if context.len() > MAX_SHADOW_FIELD {
                    return Err(K::InvalidArgument);
                }
                Ok(Command::XShadow {
                    context: token(context)?,
                })
            }
            Verb::XqDiscard => {
                let max = parse_decimal(required()?)
                    .filter(|&n| n > 0)
                    .ok_or(K::InvalidArgument)?;
                Ok(Command::XqDiscard {
                    max: u32::try_from(max).unwrap_or(u32::MAX),
                })
            }
            Verb::XShadowRequest => {
                let mut words = required()?.split(' ').filter(|w| !w.is_empty());
                let (Some(primary), Some(database_id), None) =
                    (words.next(), words.next(), words.next())
                else {
                    return Err(K::InvalidArgument);
                };
                if primary.len() > MAX_SHADOW_FIELD || database_id.len() > MAX_SHADOW_FIELD {
                    return Err(K::InvalidArgument);
                }
                Ok(Command::XShadowRequest {
                    primary: token(primary)?,
                    database_id: token(database_id)?,
                })
            }
        }
    }

    /// The verb, `None` for an unknown command.
    pub fn verb(&self) -> Option<Verb> {
        Some(match self {
            Self::Ehlo { .. } => Verb::Ehlo,
            Self::Helo { .. } => Verb::Helo,
            Self::Mail { .. } => Verb::Mail,
            Self::Rcpt { .. } => Verb::Rcpt,
            Self::Data => Verb::Data,
            Self::Bdat { .. } => Verb::Bdat,
            Self::Rset => Verb::Rset,
            Self::Noop => Verb::Noop,
            Self::Quit => Verb::Quit,
            Self::Vrfy { .. } => Verb::Vrfy,
            Self::Help { .. } => Verb::Help,
            Self::StartTls => Verb::StartTls,
            Self::XShadow { .. } => Verb::XShadow,
            Self::XqDiscard { .. } => Verb::XqDiscard,
            Self::XShadowRequest { .. } => Verb::XShadowRequest,
            Self::Unknown { .. } => return None,
        })
    }

    /// Appends the command line and its CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut word = |verb: Verb, arg: &str| {
            out.extend_from_slice(verb.as_str().as_bytes());
            if !arg.is_empty() {
                out.push(b' ');
                out.extend_from_slice(arg.as_bytes());
            }
        };
        match self {
            Self::Ehlo { domain } => word(Verb::Ehlo, domain),
            Self::Helo { domain } => word(Verb::Helo, domain),
            Self::Mail { from, params } => write_mail(out, from, params),
            Self::Rcpt { to, params } => write_rcpt(out, to, params),
            Self::Bdat { size, last } => {
                out.extend_from_slice(b"BDAT ");
                super::write_decimal(out, *size);
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Self::Vrfy { target } => word(Verb::Vrfy, target),
            Self::Help { topic } => word(Verb::Help, topic.as_deref().unwrap_or("")),
            Self::XShadow { context } => word(Verb::XShadow, context),
            Self::XqDiscard { max } => {
                out.extend_from_slice(b"XQDISCARD ");
                super::write_decimal(out, u64::from(*max));
            }
            Self::XShadowRequest {
                primary,
                database_id,
            } => {
                out.extend_from_slice(b"XSHADOWREQUEST ");
                out.extend_from_slice(primary.as_bytes());
                out.push(b' ');
                out.extend_from_slice(database_id.as_bytes());
            }
            Self::Unknown { line } => out.extend_from_slice(line.as_bytes()),
            Self::Data | Self::Rset | Self::Noop | Self::Quit | Self::StartTls => {
                if let Some(verb) = self.verb() {
                    word(verb, "");
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The command line with its CRLF as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_to(&mut out);
        out
    }

    /// Copies every borrowed part so the command outlives its input.
    pub fn into_owned(self) -> Command<'static> {
        let own = |s: Cow<'a, str>| Cow::Owned(s.into_owned());
        match self {
            Self::Ehlo { domain } => Command::Ehlo {
                domain: own(domain),
            },
            Self::Helo { domain } => Command::Helo {
                domain: own(domain),
            },
            Self::Mail { from, params } => Command::Mail {
                from: from.into_owned(),
                params: params.into_owned(),
            },
            Self::Rcpt { to, params } => Command::Rcpt {
                to: to.into_owned(),
                params: params.into_owned(),
            },
            Self::Data => Command::Data,
            Self::Bdat { size, last } => Command::Bdat { size, last },
            Self::Rset => Command::Rset,
            Self::Noop => Command::Noop,
            Self::Quit => Command::Quit,
            Self::Vrfy { target } => Command::Vrfy {
                target: own(target),
            },
            Self::Help { topic } => Command::Help {
                topic: topic.map(own),
            },
            Self::StartTls => Command::StartTls,
            Self::XShadow { context } => Command::XShadow {
                context: own(context),
            },
            Self::XqDiscard { max } => Command::XqDiscard { max },
            Self::XShadowRequest {
                primary,
                database_id,
            } => Command::XShadowRequest {
                primary: own(primary),
                database_id: own(database_id),
            },
            Self::Unknown { line } => Command::Unknown { line: own(line) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VERBS: [Verb; 15] = [
        Verb::Ehlo,
        Verb::Helo,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Quit,
        Verb::Vrfy,
        Verb::Help,
        Verb::StartTls,
        Verb::XShadow,
        Verb::XqDiscard,
        Verb::XShadowRequest,
    ];

    /// [`Verb::from_bytes`] as first written: the verb upper-cased into a buffer and compared
    /// with every name in turn.
    fn reference_verb(verb: &[u8]) -> Option<Verb> {
        let mut upper = [0u8; 14];
        let upper = upper.get_mut(..verb.len())?;
        for (u, b) in upper.iter_mut().zip(verb) {
            *u = b.to_ascii_uppercase();
        }
        VERBS
            .into_iter()
            .find(|v| v.as_str().as_bytes() == &upper[..])
    }

    #[test]
    fn every_verb_in_every_case_and_nothing_one_byte_off_is_recognised_as_before() {
        for verb in VERBS {
            let name = verb.as_str().as_bytes();
            for mixed in crate::wire::case_mixes(verb.as_str()) {
                assert_eq!(Verb::from_bytes(mixed.as_bytes()), Some(verb), "{mixed:?}");
            }
            for i in 0..name.len() {
                for b in 0..=u8::MAX {
                    let mut near = name.to_vec();
                    near[i] = b;
                    assert_eq!(Verb::from_bytes(&near), reference_verb(&near), "{near:?}");
                }
            }
        }
    }

    #[test]
    fn bdat_lines_read_on_the_byte_path_give_what_the_general_reading_gives() {
        let bdat = |size, last| Ok(Command::Bdat { size, last });
        let err = |kind| Err(CommandError::new(Verb::Bdat, kind));
        use CommandErrorKind::{InvalidArgument, MissingArgument, NotUtf8};
        let cases: &[(&[u8], Result<Command<'_>, CommandError>)] = &[
            (b"BDAT 1417 LAST", bdat(1417, true)),
            (b"bdat 0 last", bdat(0, true)),
            (b"BDAT  7  LaSt  ", bdat(7, true)),
            (b"BDAT 7", bdat(7, false)),
            (b"BDAT 7   ", bdat(7, false)),
            (b"BDAT 18446744073709551615", bdat(u64::MAX, false)),
            (b"BDAT 18446744073709551616", err(InvalidArgument)),
            (b"BDAT 000000000000000000001", err(InvalidArgument)),
            (b"BDAT", err(MissingArgument)),
            (b"BDAT   ", err(MissingArgument)),
            (b"BDAT 12a LAST", err(InvalidArgument)),
            (b"BDAT 12 LASTX", err(InvalidArgument)),
            (b"BDAT 12 LAS", err(InvalidArgument)),
            (b"BDAT 12 LAST LAST", err(InvalidArgument)),
            (b"BDAT LAST", err(InvalidArgument)),
            (b"BDAT +12", err(InvalidArgument)),
            (b"BDAT 12 \xff", err(NotUtf8)),
            (b"BDAT 12 LAST\xff", err(NotUtf8)),
            (b"BDAT \xff12", err(NotUtf8)),
            (b"BDAT 12\tLAST", err(InvalidArgument)),
            (b"BDAT 12 L\xc3\xa9ST", err(InvalidArgument)),
        ];
        for (line, want) in cases {
            assert_eq!(
                &Command::parse(line),
                want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// The prefix match `strip_from` and `strip_to` replace.
    fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
        let head = s.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| &s[prefix.len()..])
    }

    #[test]
    fn from_and_to_are_stripped_in_any_case_and_nothing_one_byte_off_is() {
        for (prefix, strip) in [
            ("FROM:", strip_from as fn(&str) -> Option<&str>),
            ("TO:", strip_to),
        ] {
            for mixed in crate::wire::case_mixes(prefix) {
                for tail in ["", "<a@b>", " <>"] {
                    let args = format!("{mixed}{tail}");
                    assert_eq!(strip(&args), Some(tail), "{args}");
                    assert_eq!(strip(&args), strip_prefix_ignore_case(&args, prefix));
                }
            }
            for i in 0..prefix.len() {
                for b in 0..=0x7fu8 {
                    let mut near = prefix.as_bytes().to_vec();
                    near[i] = b;
                    near.extend_from_slice(b"<a@b>");
                    let near = String::from_utf8(near).unwrap();
                    assert_eq!(
                        strip(&near),
                        strip_prefix_ignore_case(&near, prefix),
                        "{near:?}"
                    );
                }
            }
            assert_eq!(strip(&prefix[..prefix.len() - 1]), None);
            assert_eq!(strip("FRÖM:x"), None);
        }
    }

    /// Bytes from verb names, spaces and anything else.
    fn verb_like(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => prop::sample::select(b"EHLODATMCPRSQUIVFYBNXWK ehlodatmcprsquivfybnxwk".to_vec()),
            1 => any::<u8>(),
        ];
        prop::collection::vec(byte, 0..max)
    }

    proptest! {
        #[test]
        fn verb_recognition_agrees_with_the_reference(verb in verb_like(16)) {
            prop_assert_eq!(Verb::from_bytes(&verb), reference_verb(&verb));
        }

        /// The verb is the bytes before the first space, as a search for that space finds.
        #[test]
        fn split_verb_agrees_with_a_search_for_the_first_space(
            mut line in verb_like(24),
            verb in prop::sample::select(VERBS.to_vec()),
            prefix in any::<bool>(),
        ) {
            if prefix {
                let mut with_verb = verb.as_str().as_bytes().to_vec();
                with_verb.extend_from_slice(&line);
                line = with_verb;
            }
            let end = memchr::memchr(b' ', &line).unwrap_or(line.len());
            let want = reference_verb(&line[..end]).map(|verb| (verb, &line[end..]));
            prop_assert_eq!(split_verb(&line), want);
        }

        #[test]
        fn is_token_agrees_with_the_char_rule(
            value in prop_oneof![
                "[!-~]{0,30}",
                "[ -~\t\u{7f}\u{80}-\u{9f}é€]{0,30}",
                any::<String>(),
            ],
        ) {
            prop_assert_eq!(
                is_token(&value),
                !value.contains(|c: char| c.is_control() || c == ' ')
            );
        }

        /// BDAT's arguments read as its words were first read: split at spaces, empty
        /// words dropped, the size then maybe LAST.
        #[test]
        fn bdat_arguments_are_read_as_words(args in "[ 0-9LASTlast+xé]{0,30}") {
            let reference = (|| {
                let args = trim_spaces(&args);
                if args.is_empty() {
                    return Err(CommandErrorKind::MissingArgument);
                }
                let mut words = args.split(' ').filter(|w| !w.is_empty());
                let size = words
                    .next()
                    .filter(|w| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|w| w.parse::<u64>().ok())
                    .ok_or(CommandErrorKind::InvalidArgument)?;
                let last = match words.next() {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => return Err(CommandErrorKind::InvalidArgument),
                };
                if words.next().is_some() {
                    return Err(CommandErrorKind::InvalidArgument);
                }
                Ok(Command::Bdat { size, last })
            })();
            let line = format!("BDAT {args}");
            let parsed = Command::parse(line.as_bytes())
                .map(Command::into_owned)
                .map_err(|e| e.kind);
            prop_assert_eq!(parsed, reference.map(Command::into_owned));
        }

        #[test]
        fn space_trimming_agrees_with_trim_matches(s in "[ aé]{0,8}") {
            prop_assert_eq!(trim_spaces(&s), s.trim_matches(' '));
            prop_assert_eq!(trim_start_spaces(&s), s.trim_start_matches(' '));
        }
    }
}
