//! One table of command vectors (wire bytes <-> typed value) drives the parser and the writer;
//! every vector is also framed byte by byte and at random split points.

use std::borrow::Cow;

use proptest::prelude::*;
use xshadow_core::wire::command::{Command, Verb};
use xshadow_core::wire::line::{Frame, LineReader};
use xshadow_core::wire::params::{
    BodyType, MailParams, Notify, Orcpt, OtherParam, RcptParams, Ret,
};
use xshadow_core::wire::path::{ForwardPath, Mailbox, ReversePath};

const GUID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";

fn mailbox(local: &'static str, domain: &'static str) -> Mailbox<'static> {
    Mailbox::new(local, domain)
}

fn from(local: &'static str, domain: &'static str) -> ReversePath<'static> {
    ReversePath::Mailbox(mailbox(local, domain))
}

fn to(local: &'static str, domain: &'static str) -> ForwardPath<'static> {
    ForwardPath::Mailbox(mailbox(local, domain))
}

/// A vector: the bytes a client sends, what they mean, and the canonical bytes our writer
/// produces for that meaning when they differ from the input (case, parameter order, spaces).
struct Vector {
    wire: &'static str,
    command: Command<'static>,
    canonical: Option<&'static str>,
}

fn vectors() -> Vec<Vector> {
    let v = |wire, command| Vector {
        wire,
        command,
        canonical: None,
    };
    let c = |wire, command, canonical| Vector {
        wire,
        command,
        canonical: Some(canonical),
    };
    vec![
        v(
            "EHLO hub1.example\r\n",
            Command::Ehlo {
                domain: "hub1.example".into(),
            },
        ),
        c(
            "ehlo [192.0.2.1]\r\n",
            Command::Ehlo {
                domain: "[192.0.2.1]".into(),
            },
            "EHLO [192.0.2.1]\r\n",
        ),
        v(
            "HELO old.example\r\n",
            Command::Helo {
                domain: "old.example".into(),
            },
        ),
        v(
            "MAIL FROM:<alice@example.org>\r\n",
            Command::Mail {
                from: from("alice", "example.org"),
                params: MailParams::default(),
            },
        ),
        v(
            "MAIL FROM:<>\r\n",
            Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default(),
            },
        ),
        c(
            "MAIL FROM:<alice@example.org> SIZE=2048 XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301 BODY=8BITMIME\r\n",
            Command::Mail {
                from: from("alice", "example.org"),
                params: MailParams {
                    size: Some(2048),
                    body: Some(BodyType::EightBitMime),
                    xshadow: Some(GUID.into()),
                    ..MailParams::default()
                },
            },
            "MAIL FROM:<alice@example.org> SIZE=2048 BODY=8BITMIME XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301\r\n",
        ),
        c(
            "mail from: <a@b.example> smtputf8 ret=hdrs envid=q+2Bq\r\n",
            Command::Mail {
                from: from("a", "b.example"),
                params: MailParams {
                    smtputf8: true,
                    ret: Some(Ret::Headers),
                    envid: Some("q+q".into()),
                    ..MailParams::default()
                },
            },
            "MAIL FROM:<a@b.example> SMTPUTF8 RET=HDRS ENVID=q+2Bq\r\n",
        ),
        c(
            "MAIL FROM:<@relay.example:u@d.example> BODY=BINARYMIME AUTH=<>\r\n",
            Command::Mail {
                from: from("u", "d.example"),
                params: MailParams {
                    body: Some(BodyType::BinaryMime),
                    other: vec![OtherParam {
                        keyword: "AUTH".into(),
                        value: Some("<>".into()),
                    }],
                    ..MailParams::default()
                },
            },
            "MAIL FROM:<u@d.example> BODY=BINARYMIME AUTH=<>\r\n",
        ),
        v(
            "MAIL FROM:<\"john doe\"@[IPv6:2001:db8::1]>\r\n",
            Command::Mail {
                from: from("\"john doe\"", "[IPv6:2001:db8::1]"),
                params: MailParams::default(),
            },
        ),
        v(
            "MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8\r\n",
            Command::Mail {
                from: from("δοκιμή", "παράδειγμα.δοκιμή"),
                params: MailParams {
                    smtputf8: true,
                    ..MailParams::default()
                },
            },
        ),
        v(
            "RCPT TO:<bob@example.net>\r\n",
            Command::Rcpt {
                to: to("bob", "example.net"),
                params: RcptParams::default(),
            },
        ),
        c(
            "RCPT TO:<Postmaster>\r\n",
            Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default(),
            },
            "RCPT TO:<postmaster>\r\n",
        ),
        v(
            "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net\r\n",
            Command::Rcpt {
                to: to("bob", "example.net"),
                params: RcptParams {
                    notify: Some(Notify {
                        success: true,
                        failure: true,
                        delay: false,
                    }),
                    orcpt: Some(Orcpt {
                        addr_type: "rfc822".into(),
                        address: "bob@example.net".into(),
                    }),
                    ..RcptParams::default()
                },
            },
        ),
        v("DATA\r\n", Command::Data),
        v(
            "BDAT 1024\r\n",
            Command::Bdat {
                size: 1024,
                last: false,
            },
        ),
        c(
            "bdat 0 last\r\n",
            Command::Bdat {
                size: 0,
                last: true,
            },
            "BDAT 0 LAST\r\n",
        ),
        v(
            "BDAT 18446744073709551615 LAST\r\n",
            Command::Bdat {
                size: u64::MAX,
                last: true,
            },
        ),
        v("RSET\r\n", Command::Rset),
        c("NOOP anything\r\n", Command::Noop, "NOOP\r\n"),
        v("QUIT\r\n", Command::Quit),
        v(
            "VRFY bob\r\n",
            Command::Vrfy {
                target: "bob".into(),
            },
        ),
        v("HELP\r\n", Command::Help { topic: None }),
        v(
            "HELP MAIL\r\n",
            Command::Help {
                topic: Some("MAIL".into()),
            },
        ),
        c("StartTLS\r\n", Command::StartTls, "STARTTLS\r\n"),
        v(
            "XSHADOW aHViMS5leGFtcGxl\r\n",
            Command::XShadow {
                context: "aHViMS5leGFtcGxl".into(),
            },
        ),
        c(
            "xshadow  aHViMS5leGFtcGxl \r\n",
            Command::XShadow {
                context: "aHViMS5leGFtcGxl".into(),
            },
            "XSHADOW aHViMS5leGFtcGxl\r\n",
        ),
        v("XQDISCARD 50\r\n", Command::XqDiscard { max: 50 }),
        c(
            "XQDISCARD 99999999999\r\n",
            Command::XqDiscard { max: u32::MAX },
            "XQDISCARD 4294967295\r\n",
        ),
        v(
            "XSHADOWREQUEST edge1.example X+QUj+rOf0ag5pssHT5PUA==\r\n",
            Command::XShadowRequest {
                primary: "edge1.example".into(),
                database_id: "X+QUj+rOf0ag5pssHT5PUA==".into(),
            },
        ),
        v(
            "XFOO bar\r\n",
            Command::Unknown {
                line: "XFOO bar".into(),
            },
        ),
        v(
            "AUTH PLAIN dGVzdA==\r\n",
            Command::Unknown {
                line: "AUTH PLAIN dGVzdA==".into(),
            },
        ),
    ]
}

/// Error vectors: the bytes a client sends and the exact reply the server owes it.
const ERRORS: &[(&str, &str)] = &[
    // PROTOCOL.md §3.
    (
        "XSHADOW\r\n",
        "501 5.0.0 XSHADOW requires Shadow server's context\r\n",
    ),
    (
        "XSHADOW   \r\n",
        "501 5.0.0 XSHADOW requires Shadow server's context\r\n",
    ),
    // PROTOCOL.md §4.
    (
        "MAIL FROM:<a@b.example> XSHADOW=\r\n",
        "501 5.5.4 Invalid arguments\r\n",
    ),
    (
        "MAIL FROM:<a@b.example> XSHADOW=a XSHADOW=b\r\n",
        "501 5.5.4 Invalid arguments\r\n",
    ),
    // PROTOCOL.md §5.
    (
        "XQDISCARD\r\n",
        "501 5.0.0 XQDISCARD requires maximum discard events count\r\n",
    ),
    ("XQDISCARD 0\r\n", "501 5.5.4 Invalid arguments\r\n"),
    ("XQDISCARD -5\r\n", "501 5.5.4 Invalid arguments\r\n"),
    ("XQDISCARD +5\r\n", "501 5.5.4 Invalid arguments\r\n"),
    ("XQDISCARD fifty\r\n", "501 5.5.4 Invalid arguments\r\n"),
    ("XQDISCARD 5 5\r\n", "501 5.5.4 Invalid arguments\r\n"),
    (
        "XQDISCARD 999999999999999999999\r\n",
        "501 5.5.4 Invalid arguments\r\n",
    ),
    // PROTOCOL.md §7.
    ("XSHADOWREQUEST\r\n", "501 5.5.4 Invalid arguments\r\n"),
    (
        "XSHADOWREQUEST edge1.example\r\n",
        "501 5.5.4 Invalid arguments\r\n",
    ),
    // RFC 5321 syntax.
    ("EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname\r\n"),
    ("HELO\r\n", "501 5.5.4 Syntax: HELO hostname\r\n"),
    ("MAIL\r\n", "501 5.5.2 Syntax: MAIL FROM:<address>\r\n"),
    (
        "MAIL TO:<a@b.example>\r\n",
        "501 5.5.2 Syntax: MAIL FROM:<address>\r\n",
    ),
    (
        "MAIL FROM:a@b.example\r\n",
        "501 5.1.7 Bad sender address syntax\r\n",
    ),
    (
        "MAIL FROM:<a@b.example>garbage\r\n",
        "501 5.1.7 Bad sender address syntax\r\n",
    ),
    (
        "MAIL FROM:<a@b.example> SIZE=big\r\n",
        "501 5.5.4 Invalid arguments\r\n",
    ),
    (
        "MAIL FROM:<a@b.example> SIZE=1 SIZE=1\r\n",
        "501 5.5.4 Invalid arguments\r\n",
    ),
    ("RCPT\r\n", "501 5.5.2 Syntax: RCPT TO:<address>\r\n"),
    (
        "RCPT TO:<>\r\n",
        "501 5.1.3 Bad recipient address syntax\r\n",
    ),
    (
        "RCPT TO:<b@x.example>>\r\n",
        "501 5.1.3 Bad recipient address syntax\r\n",
    ),
    (
        "RCPT TO:<b@x.example> NOTIFY=SOMETIMES\r\n",
        "501 5.5.4 Invalid arguments\r\n",
    ),
    ("DATA now\r\n", "501 5.5.4 Invalid arguments\r\n"),
    ("QUIT please\r\n", "501 5.5.4 Invalid arguments\r\n"),
    ("BDAT\r\n", "501 5.5.4 Invalid arguments\r\n"),
    (
        "BDAT 18446744073709551616\r\n",
        "501 5.5.4 Invalid arguments\r\n",
    ),
    ("BDAT 10 FIRST\r\n", "501 5.5.4 Invalid arguments\r\n"),
    ("BDAT -1\r\n", "501 5.5.4 Invalid arguments\r\n"),
    (
        "MAIL FROM:<\u{0}@b.example>\r\n",
        "501 5.1.7 Bad sender address syntax\r\n",
    ),
];

/// Frames a stream fed in pieces of the given sizes and parses every line; errors become the
/// reply bytes a server would send.
fn parse_stream(stream: &[u8], pieces: &[usize]) -> Vec<Result<Command<'static>, String>> {
    let mut reader = LineReader::default();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = pieces.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let (frame, consumed) = reader.read(&buf);
            let line = match frame {
                Frame::Line(line) => line.to_vec(),
                Frame::TooLong => panic!("no vector is too long"),
                Frame::NeedMore => break,
            };
            buf.drain(..consumed);
            out.push(
                Command::parse(&line)
                    .map(Command::into_owned)
                    .map_err(|e| String::from_utf8(e.reply().to_bytes()).unwrap()),
            );
        }
    }
    assert!(buf.is_empty(), "bytes left unframed");
    out
}

fn all_vectors_stream() -> (Vec<u8>, Vec<Result<Command<'static>, String>>) {
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for v in vectors() {
        stream.extend_from_slice(v.wire.as_bytes());
        want.push(Ok(v.command));
    }
    for (wire, reply) in ERRORS {
        stream.extend_from_slice(wire.as_bytes());
        want.push(Err((*reply).to_owned()));
    }
    (stream, want)
}

#[test]
fn every_vector_parses_to_its_command() {
    for v in vectors() {
        let line = v.wire.strip_suffix("\r\n").unwrap();
        assert_eq!(Command::parse(line.as_bytes()), Ok(v.command), "{}", v.wire);
    }
}

#[test]
fn every_vector_writes_back_to_its_canonical_bytes() {
    for v in vectors() {
        let want = v.canonical.unwrap_or(v.wire);
        assert_eq!(String::from_utf8(v.command.to_bytes()).unwrap(), want);
        // The canonical form is itself a fixed point.
        let line = want.strip_suffix("\r\n").unwrap();
        assert_eq!(
            Command::parse(line.as_bytes()).unwrap().to_bytes(),
            want.as_bytes()
        );
    }
}

#[test]
fn every_error_vector_gets_its_exact_reply() {
    for (wire, reply) in ERRORS {
        let line = wire.strip_suffix("\r\n").unwrap();
        let err = Command::parse(line.as_bytes()).expect_err(wire);
        assert_eq!(
            String::from_utf8(err.reply().to_bytes()).unwrap(),
            *reply,
            "{wire}"
        );
    }
}

#[test]
fn errors_keep_their_verb_so_sessions_can_check_state_first() {
    let err = Command::parse(b"XSHADOW").unwrap_err();
    assert_eq!(err.verb, Some(Verb::XShadow));
    let err = Command::parse(b"xqdiscard zero").unwrap_err();
    assert_eq!(err.verb, Some(Verb::XqDiscard));
}

#[test]
fn xshadow_context_over_255_bytes_is_invalid_but_255_is_fine() {
    let ok = format!("XSHADOW {}", "c".repeat(255));
    assert!(Command::parse(ok.as_bytes()).is_ok());
    let long = format!("XSHADOW {}", "c".repeat(256));
    let err = Command::parse(long.as_bytes()).unwrap_err();
    assert_eq!(err.reply().to_bytes(), b"501 5.5.4 Invalid arguments\r\n");
}

#[test]
fn non_utf8_bytes_are_refused_with_a_syntax_reply() {
    let err = Command::parse(b"MAIL FROM:<\xff@b.example>").unwrap_err();
    assert_eq!(
        err.reply().to_bytes(),
        b"501 5.5.2 Syntax error, argument is not UTF-8\r\n"
    );
    let err = Command::parse(b"\xc3\x28 hello").unwrap_err();
    assert_eq!(
        err.reply().to_bytes(),
        b"500 5.5.2 Syntax error, line is not UTF-8\r\n"
    );
}

#[test]
fn unknown_verbs_are_kept_for_a_500_reply() {
    let command = Command::parse(b"TURN").unwrap();
    assert_eq!(
        command,
        Command::Unknown {
            line: Cow::Borrowed("TURN")
        }
    );
    assert_eq!(command.verb(), None);
}

#[test]
fn all_vectors_survive_byte_by_byte_framing() {
    let (stream, want) = all_vectors_stream();
    assert_eq!(parse_stream(&stream, &[1]), want);
}

proptest! {
    #[test]
    fn all_vectors_survive_random_split_points(pieces in prop::collection::vec(1usize..64, 1..32)) {
        let (stream, want) = all_vectors_stream();
        prop_assert_eq!(parse_stream(&stream, &pieces), want);
    }
}

// ---- write -> parse identity over generated commands ----

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}",
        "[α-ω]{1,6}\\.[a-z]{2,4}",
        "\\[192\\.0\\.2\\.[1-9]?[0-9]\\]",
        Just("[IPv6:2001:db8::7]".to_owned()),
    ]
}

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\\.[a-z0-9]{1,6}){0,2}",
        "\"[a-z @.,]{0,10}\"",
        "[а-я]{1,8}",
    ]
}

fn mailbox_owned() -> impl Strategy<Value = Mailbox<'static>> {
    (local_part(), domain()).prop_map(|(l, d)| Mailbox::new(l, d))
}

fn xtext_value() -> impl Strategy<Value = Cow<'static, str>> {
    "[ -~é]{1,40}".prop_map(Cow::Owned)
}

fn other_params() -> impl Strategy<Value = Vec<OtherParam<'static>>> {
    prop::collection::vec(
        ("X-[A-Z0-9]{1,6}", prop::option::of("[!-<>-~]{1,10}")),
        0..3,
    )
    .prop_map(|items| {
        let mut seen = std::collections::HashSet::new();
        items
            .into_iter()
            .filter(|(k, _)| seen.insert(k.clone()))
            .map(|(k, v)| OtherParam {
                keyword: k.into(),
                value: v.map(Cow::Owned),
            })
            .collect()
    })
}

fn mail_params() -> impl Strategy<Value = MailParams<'static>> {
    (
        prop::option::of(any::<u64>()),
        prop::option::of(prop_oneof![
            Just(BodyType::SevenBit),
            Just(BodyType::EightBitMime),
            Just(BodyType::BinaryMime)
        ]),
        any::<bool>(),
        prop::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Headers)]),
        prop::option::of(xtext_value()),
        prop::option::of(xtext_value()),
        other_params(),
    )
        .prop_map(
            |(size, body, smtputf8, ret, envid, xshadow, other)| MailParams {
                size,
                body,
                smtputf8,
                ret,
                envid,
                xshadow,
                other,
            },
        )
}

fn rcpt_params() -> impl Strategy<Value = RcptParams<'static>> {
    (
        prop::option::of((any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(success, failure, delay)| Notify {
                success,
                failure,
                delay,
            },
        )),
        prop::option::of(("rfc822|utf-8", xtext_value()).prop_map(|(t, a)| Orcpt {
            addr_type: t.into(),
            address: a,
        })),
        other_params(),
    )
        .prop_map(|(notify, orcpt, other)| RcptParams {
            notify,
            orcpt,
            other,
        })
}

fn token() -> impl Strategy<Value = Cow<'static, str>> {
    "[!-~]{1,40}".prop_map(Cow::Owned)
}

fn command() -> impl Strategy<Value = Command<'static>> {
    prop_oneof![
        domain().prop_map(|d| Command::Ehlo { domain: d.into() }),
        domain().prop_map(|d| Command::Helo { domain: d.into() }),
        (prop::option::of(mailbox_owned()), mail_params()).prop_map(|(m, params)| Command::Mail {
            from: m.map_or(ReversePath::Null, ReversePath::Mailbox),
            params,
        }),
        (prop::option::of(mailbox_owned()), rcpt_params()).prop_map(|(m, params)| Command::Rcpt {
            to: m.map_or(ForwardPath::Postmaster, ForwardPath::Mailbox),
            params,
        }),
        Just(Command::Data),
        (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
        Just(Command::Rset),
        Just(Command::Noop),
        Just(Command::Quit),
        token().prop_map(|target| Command::Vrfy { target }),
        prop::option::of(token()).prop_map(|topic| Command::Help { topic }),
        Just(Command::StartTls),
        token().prop_map(|context| Command::XShadow { context }),
        (1u32..).prop_map(|max| Command::XqDiscard { max }),
        (token(), token()).prop_map(|(primary, database_id)| Command::XShadowRequest {
            primary,
            database_id
        }),
        "Z[A-Z]{2,6}( [ -~]{0,20})?".prop_map(|line| Command::Unknown {
            line: line.trim_end().to_owned().into()
        }),
    ]
}

proptest! {
    #[test]
    fn writing_then_parsing_a_command_gives_it_back(command in command()) {
        let wire = command.to_bytes();
        prop_assert!(wire.ends_with(b"\r\n"));
        let parsed = Command::parse(&wire[..wire.len() - 2]).map(Command::into_owned);
        prop_assert_eq!(parsed, Ok(command));
    }
}
