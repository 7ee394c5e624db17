//! SMTP commands: [`Command`] parsed from one line (without its CRLF) and written back.
//!
//! Parsing never fails on an unknown verb: it becomes [`Command::Unknown`] so the server can
//! answer `500 5.5.1`. A known verb with bad arguments is a [`CommandError`] that keeps the
//! verb, because the shadow verbs check the session state *before* their arguments
//! (PROTOCOL.md §3, §5); [`CommandError::reply`] gives the reply to send.

use std::borrow::Cow;
use std::fmt;

use super::MAX_SHADOW_FIELD;
use super::params::{MailParams, ParamError, RcptParams};
use super::path::{ForwardPath, PathError, ReversePath, parse_forward_path, parse_reverse_path};
use super::reply::{EnhancedStatus, Reply};

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
        let mut upper = [0u8; 14];
        let upper = upper.get_mut(..verb.len())?;
        for (u, b) in upper.iter_mut().zip(verb) {
            *u = b.to_ascii_uppercase();
        }
        Some(match &*upper {
            b"EHLO" => Self::Ehlo,
            b"HELO" => Self::Helo,
            b"MAIL" => Self::Mail,
            b"RCPT" => Self::Rcpt,
            b"DATA" => Self::Data,
            b"BDAT" => Self::Bdat,
            b"RSET" => Self::Rset,
            b"NOOP" => Self::Noop,
            b"QUIT" => Self::Quit,
            b"VRFY" => Self::Vrfy,
            b"HELP" => Self::Help,
            b"STARTTLS" => Self::StartTls,
            b"XSHADOW" => Self::XShadow,
            b"XQDISCARD" => Self::XqDiscard,
            b"XSHADOWREQUEST" => Self::XShadowRequest,
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

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `1*DIGIT` as a u64; `None` for anything else, overflow included.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl<'a> Command<'a> {
    /// Parses one command line, without its CRLF.
    pub fn parse(line: &'a [u8]) -> Result<Command<'a>, CommandError> {
        let verb_end = memchr::memchr(b' ', line).unwrap_or(line.len());
        let verb = Verb::from_bytes(&line[..verb_end]);
        let Ok(line) = std::str::from_utf8(line) else {
            return Err(CommandError {
                verb,
                kind: CommandErrorKind::NotUtf8,
            });
        };
        let Some(verb) = verb else {
            return Ok(Command::Unknown {
                line: Cow::Borrowed(line),
            });
        };
        let args = line[verb_end..].trim_matches(' ');
        Self::parse_args(verb, args).map_err(|kind| CommandError::new(verb, kind))
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
        let none = |command: Command<'a>| {
            if args.is_empty() {
                Ok(command)
            } else {
                Err(K::UnexpectedArgument)
            }
        };
        let token = |value: &'a str| {
            let ok = !value.contains(|c: char| c.is_control() || c == ' ');
            if ok {
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
            Verb::Mail => {
                let rest =
                    strip_prefix_ignore_case(required()?, "FROM:").ok_or(K::MissingArgument)?;
                let (from, rest) =
                    parse_reverse_path(rest.trim_start_matches(' ')).map_err(K::BadSender)?;
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return Err(K::BadSender(PathError::Syntax));
                }
                let params = MailParams::parse(rest).map_err(K::BadParameter)?;
                Ok(Command::Mail { from, params })
            }
            Verb::Rcpt => {
                let rest =
                    strip_prefix_ignore_case(required()?, "TO:").ok_or(K::MissingArgument)?;
                let (to, rest) =
                    parse_forward_path(rest.trim_start_matches(' ')).map_err(K::BadRecipient)?;
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return Err(K::BadRecipient(PathError::Syntax));
                }
                let params = RcptParams::parse(rest).map_err(K::BadParameter)?;
                Ok(Command::Rcpt { to, params })
            }
            Verb::Data => none(Command::Data),
            Verb::Rset => none(Command::Rset),
            Verb::Quit => none(Command::Quit),
            Verb::StartTls => none(Command::StartTls),
            Verb::Noop => Ok(Command::Noop),
            Verb::Bdat => {
                let mut words = required()?.split(' ').filter(|w| !w.is_empty());
                let size = words
                    .next()
                    .and_then(parse_decimal)
                    .ok_or(K::InvalidArgument)?;
                let last = match words.next() {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => return Err(K::InvalidArgument),
                };
                if words.next().is_some() {
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
            Self::Mail { from, params } => {
                out.extend_from_slice(b"MAIL FROM:");
                from.write_to(out);
                params.write_to(out);
            }
            Self::Rcpt { to, params } => {
                out.extend_from_slice(b"RCPT TO:");
                to.write_to(out);
                params.write_to(out);
            }
            Self::Bdat { size, last } => {
                word(Verb::Bdat, &size.to_string());
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Self::Vrfy { target } => word(Verb::Vrfy, target),
            Self::Help { topic } => word(Verb::Help, topic.as_deref().unwrap_or("")),
            Self::XShadow { context } => word(Verb::XShadow, context),
            Self::XqDiscard { max } => word(Verb::XqDiscard, &max.to_string()),
            Self::XShadowRequest {
                primary,
                database_id,
            } => word(Verb::XShadowRequest, &format!("{primary} {database_id}")),
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
