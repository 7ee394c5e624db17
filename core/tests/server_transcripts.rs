//! ServerSession transcripts: readable `C:` / `S:` scripts for every row of PROTOCOL.md's
//! XSHADOW / XQDISCARD / XSHADOWREQUEST tables and the ordinary SMTP flows. Every script runs
//! four ways: each client block fed whole (pipelined) and one byte at a time, with
//! `handle_input`, and the same two with `handle_input_until_decision` answering each
//! decision where it stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use xshadow_core::session::server::{
    CloseReason, ReceivedMessage, ServerConfig, ServerEvent, ServerPhase, ServerSession,
    ShadowOffer, ShadowTag,
};
use xshadow_core::wire::Reply;
use xshadow_core::wire::path::{ForwardPath, ReversePath};
use xshadow_core::wire::reply::EnhancedStatus;

const DBID: &str = "X+QUj+rOf0ag5pssHT5PUA==";

/// How the test caller answers the session's decisions.
#[derive(Clone, Default)]
struct Policy {
    /// Discard ids the "ledger" holds, oldest first.
    discard_ids: Vec<String>,
    /// Refuse the message when stored (e.g. storage full).
    refuse_storage: bool,
}

/// What a run observed.
#[derive(Default, Debug)]
struct Observed {
    events: Vec<ServerEvent>,
    /// The messages taken on each `MessageComplete`, in order.
    messages: Vec<ReceivedMessage>,
    /// Ids still held by the ledger at the end (returned ones leave only when confirmed).
    ledger: Vec<String>,
    in_doubt: usize,
}

fn config(shadow: ShadowOffer) -> ServerConfig {
    let mut c = ServerConfig::new("edge1.example");
    c.shadow = shadow;
    c.pipelining = true;
    c.chunking = false;
    c.smtputf8 = false;
    c.dsn = false;
    c
}

/// Drives the session until it has nothing more to say, answering every decision.
fn drive(
    s: &mut ServerSession,
    out: &mut Vec<u8>,
    policy: &Policy,
    obs: &mut Observed,
    now: Instant,
) {
    loop {
        let mut progressed = s.poll_transmit(out).is_some();
        while let Some(event) = s.poll_event() {
            progressed = true;
            match &event {
                ServerEvent::MailFrom => s.accept_mail(now).unwrap(),
                ServerEvent::RcptTo => {
                    let denied = matches!(&s.pending_recipient().unwrap().to,
                        ForwardPath::Mailbox(m) if m.local_part() == "\"denied\"");
                    if denied {
                        let r =
                            Reply::new(550, Some(EnhancedStatus::new(5, 7, 1)), "Relaying denied");
                        s.reject_rcpt(r, now).unwrap();
                    } else {
                        s.accept_rcpt(now).unwrap();
                    }
                }
                ServerEvent::MessageComplete => {
                    obs.messages
                        .push(s.take_message().expect("the complete message"));
                    if policy.refuse_storage {
                        let r = Reply::new(
                            452,
                            Some(EnhancedStatus::new(4, 3, 1)),
                            "Insufficient system storage",
                        );
                        s.message_rejected(r, now).unwrap();
                    } else {
                        s.message_stored(now).unwrap();
                    }
                }
                ServerEvent::XShadow { .. } => s.accept_xshadow(DBID, now).unwrap(),
                ServerEvent::XShadowRequest { .. } => s
                    .accept_shadow_request("cGVlcjEuZXhhbXBsZQ==", now)
                    .unwrap(),
                ServerEvent::XqDiscard { .. } => {
                    obs.in_doubt = s.answer_xqdiscard(&obs.ledger, now).unwrap();
                }
                ServerEvent::DiscardsConfirmed { .. } => {
                    obs.ledger.drain(..obs.in_doubt);
                    obs.in_doubt = 0;
                }
                ServerEvent::StartTls => {
                    // The 220 goes out in the clear before the handshake.
                    let _ = s.poll_transmit(out);
                    s.tls_established(now).unwrap();
                }
                ServerEvent::Hello { .. } | ServerEvent::TimedOut(_) | ServerEvent::Closed(_) => {}
            }
            obs.events.push(event);
        }
        if !progressed {
            break;
        }
    }
}

enum Feed {
    Whole,
    ByteByByte,
    /// The block with `handle_input_until_decision`: answered wherever it stops, then the rest.
    UntilDecision,
    /// Each byte with `handle_input_until_decision`.
    UntilDecisionByteByByte,
}

/// Feeds `data` with `handle_input_until_decision`, answering (driving) wherever it stops and
/// offering the rest, as a caller that decides at once does.
fn feed_until_decision(
    s: &mut ServerSession,
    data: &[u8],
    out: &mut Vec<u8>,
    policy: &Policy,
    obs: &mut Observed,
    now: Instant,
) {
    let mut rest = data;
    while !rest.is_empty() {
        let used = s.handle_input_until_decision(rest, now);
        rest = &rest[used..];
        if !rest.is_empty() {
            assert!(
                !s.may_read(),
                "stopped {} bytes early while reading",
                rest.len()
            );
            drive(s, out, policy, obs, now);
            assert!(
                s.may_read(),
                "a decision answered at once lets it read again"
            );
        }
    }
}

/// Runs a script. `C:` lines (CRLF added) are grouped into blocks sent together; the `S:`
/// lines after a block are exactly what the server must have written once it is handled.
fn run_with(
    script: &str,
    cfg: ServerConfig,
    may_shadow: bool,
    policy: &Policy,
    feed: Feed,
) -> Observed {
    let now = Instant::now();
    let mut obs = Observed {
        ledger: policy.discard_ids.clone(),
        ..Observed::default()
    };
    let mut s = ServerSession::new(Arc::new(cfg), may_shadow, now);
    let mut out = Vec::new();
    let mut want = String::new();
    let mut block = Vec::new();
    let lines: Vec<&str> = script
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty())
        .collect();
    let mut i = 0;
    while i < lines.len() {
        while let Some(l) = lines
            .get(i)
            .and_then(|l| l.strip_prefix("C: ").or(l.strip_prefix("C:")))
        {
            block.extend_from_slice(l.as_bytes());
            block.extend_from_slice(b"\r\n");
            i += 1;
        }
        match feed {
            Feed::Whole => s.handle_input(&block, now),
            Feed::ByteByByte => {
                for b in &block {
                    s.handle_input(std::slice::from_ref(b), now);
                    drive(&mut s, &mut out, policy, &mut obs, now);
                }
            }
            Feed::UntilDecision => {
                feed_until_decision(&mut s, &block, &mut out, policy, &mut obs, now);
            }
            Feed::UntilDecisionByteByByte => {
                for b in &block {
                    let byte = std::slice::from_ref(b);
                    feed_until_decision(&mut s, byte, &mut out, policy, &mut obs, now);
                    drive(&mut s, &mut out, policy, &mut obs, now);
                }
            }
        }
        block.clear();
        drive(&mut s, &mut out, policy, &mut obs, now);
        while let Some(l) = lines
            .get(i)
            .and_then(|l| l.strip_prefix("S: ").or(l.strip_prefix("S:")))
        {
            want.push_str(l);
            want.push_str("\r\n");
            i += 1;
        }
        assert_eq!(
            String::from_utf8_lossy(&out),
            want,
            "transcript diverged before line {}",
            i + 1
        );
        if let Some(l) = lines.get(i) {
            assert!(
                l.starts_with("C:"),
                "script line is neither C: nor S: {l:?}"
            );
        }
    }
    obs
}

/// Runs a script every way and returns what the whole-block run observed; all ways must
/// observe the same events and messages (the replies are checked by the script).
fn run(script: &str, cfg: ServerConfig, may_shadow: bool, policy: &Policy) -> Observed {
    let whole = run_with(script, cfg.clone(), may_shadow, policy, Feed::Whole);
    for feed in [
        Feed::ByteByByte,
        Feed::UntilDecision,
        Feed::UntilDecisionByteByByte,
    ] {
        let other = run_with(script, cfg.clone(), may_shadow, policy, feed);
        assert_eq!(format!("{:?}", whole.events), format!("{:?}", other.events));
        assert_eq!(whole.messages, other.messages);
    }
    whole
}

const EHLO_XSHADOW: &str = "
    S: 220 edge1.example ESMTP xshadow
    C: EHLO hub1.example
    S: 250-edge1.example
    S: 250-PIPELINING
    S: 250-SIZE 36700160
    S: 250-8BITMIME
    S: 250-ENHANCEDSTATUSCODES
    S: 250 XSHADOW
";

fn shadow_script(rest: &str) -> String {
    format!("{EHLO_XSHADOW}\n{rest}")
}

fn messages(obs: &Observed) -> Vec<&ReceivedMessage> {
    obs.messages.iter().collect()
}

#[test]
fn the_protocol_example_session_is_answered_byte_for_byte() {
    let script = shadow_script(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 X+QUj+rOf0ag5pssHT5PUA==
        C: MAIL FROM:<alice@example.org> SIZE=2048 XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301
        C: RCPT TO:<bob@example.net>
        C: DATA
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: Subject: hi
        C:
        C: ..leading dot
        C: .
        S: 250 2.6.0 Queued mail for delivery
        C: XQDISCARD 50
        S: 251 OK, no discard events
        C: QUIT
        S: 221 2.0.0 Service closing transmission channel
    ",
    );
    let obs = run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
    let msgs = messages(&obs);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, b"Subject: hi\r\n\r\n.leading dot\r\n");
    assert_eq!(
        msgs[0].shadow,
        Some(ShadowTag::Primary {
            context: "aHViMS5leGFtcGxl".into(),
            discard_id: "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into()
        })
    );
    assert_eq!(
        obs.events.last(),
        Some(&ServerEvent::Closed(CloseReason::Quit))
    );
}

#[test]
fn a_heartbeat_returns_discard_ids_and_confirms_them_on_quit() {
    let policy = Policy {
        discard_ids: vec![
            "3f2504e0-4f89-41d3-9a0c-0305e82c3301".into(),
            "9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01".into(),
        ],
        ..Policy::default()
    };
    let script = shadow_script(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 X+QUj+rOf0ag5pssHT5PUA==
        C: XQDISCARD 50
        S: 250-3f2504e0-4f89-41d3-9a0c-0305e82c3301
        S: 250 9b2e7c10-55aa-4c1e-b0d2-6a7f3e8d9c01
        C: QUIT
        S: 221 2.0.0 Service closing transmission channel
    ",
    );
    let obs = run(&script, config(ShadowOffer::XShadow), true, &policy);
    assert!(obs.ledger.is_empty(), "confirmed ids are dropped");
    assert!(obs.events.contains(&ServerEvent::DiscardsConfirmed {
        context: "aHViMS5leGFtcGxl".into()
    }));
}

#[test]
fn discard_ids_stay_in_doubt_when_the_connection_dies_before_the_next_command() {
    let policy = Policy {
        discard_ids: vec!["id-1".into(), "id-2".into(), "id-3".into()],
        ..Policy::default()
    };
    let script = shadow_script(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 X+QUj+rOf0ag5pssHT5PUA==
        C: XQDISCARD 2
        S: 250-id-1
        S: 250 id-2
    ",
    );
    let obs = run(&script, config(ShadowOffer::XShadow), true, &policy);
    assert_eq!(
        obs.ledger,
        ["id-1", "id-2", "id-3"],
        "nothing dropped without proof"
    );
    assert!(
        !obs.events
            .iter()
            .any(|e| matches!(e, ServerEvent::DiscardsConfirmed { .. }))
    );
}

#[test]
fn a_second_xqdiscard_confirms_the_first_and_gets_the_rest() {
    let policy = Policy {
        discard_ids: vec!["id-1".into(), "id-2".into(), "id-3".into()],
        ..Policy::default()
    };
    let script = shadow_script(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 X+QUj+rOf0ag5pssHT5PUA==
        C: XQDISCARD 2
        S: 250-id-1
        S: 250 id-2
        C: XQDISCARD 2
        S: 250 id-3
        C: XQDISCARD 2
        S: 251 OK, no discard events
    ",
    );
    let obs = run(&script, config(ShadowOffer::XShadow), true, &policy);
    assert!(obs.ledger.is_empty());
}

// ---- PROTOCOL.md §3: XSHADOW, one test per row, in the table's order ----

#[test]
fn xshadow_twice_is_bad_sequence() {
    let script = shadow_script(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 X+QUj+rOf0ag5pssHT5PUA==
        C: XSHADOW aHViMS5leGFtcGxl
        S: 503 5.5.1 Bad sequence of commands
        C: RSET
        S: 250 2.0.0 OK
        C: XSHADOW aHViMS5leGFtcGxl
        S: 503 5.5.1 Bad sequence of commands
    ",
    );
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn xshadow_before_ehlo_asks_for_ehlo_even_after_helo() {
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: XSHADOW aHViMS5leGFtcGxl
        S: 503 5.5.2 Send EHLO first
        C: HELO hub1.example
        S: 250 edge1.example
        C: XSHADOW aHViMS5leGFtcGxl
        S: 503 5.5.2 Send EHLO first
        C: XSHADOW
        S: 503 5.5.2 Send EHLO first
    ";
    run(
        script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn xshadow_inside_a_transaction_is_bad_sequence() {
    let script = shadow_script(
        "
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: XSHADOW aHViMS5leGFtcGxl
        S: 503 5.5.1 Bad sequence of commands
    ",
    );
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn xshadow_not_advertised_is_not_implemented() {
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: EHLO hub1.example
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250 ENHANCEDSTATUSCODES
        C: XSHADOW aHViMS5leGFtcGxl
        S: 502 5.3.3 Command not implemented
        C: XSHADOW
        S: 502 5.3.3 Command not implemented
    ";
    run(script, config(ShadowOffer::None), true, &Policy::default());
}

#[test]
fn xshadow_from_a_peer_not_allowed_is_not_authorized() {
    let script = shadow_script(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 550 5.7.1 Not authorized
        C: XSHADOW
        S: 550 5.7.1 Not authorized
    ",
    );
    run(
        &script,
        config(ShadowOffer::XShadow),
        false,
        &Policy::default(),
    );
}

#[test]
fn xshadow_without_argument_requires_the_context() {
    let script = shadow_script(
        "
        C: XSHADOW
        S: 501 5.0.0 XSHADOW requires Shadow server's context
    ",
    );
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn xshadow_with_an_argument_over_255_bytes_is_invalid() {
    let script = shadow_script(&format!(
        "
        C: XSHADOW {}
        S: 501 5.5.4 Invalid arguments
        C: XSHADOW {}
        S: 250 {DBID}
    ",
        "c".repeat(256),
        "c".repeat(255)
    ));
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

// ---- PROTOCOL.md §4: MAIL FROM ... XSHADOW= ----

#[test]
fn xshadow_parameter_on_an_unshadowed_session_is_invalid() {
    let script = shadow_script(
        "
        C: MAIL FROM:<a@example.org> XSHADOW=3f2504e0-4f89-41d3-9a0c-0305e82c3301
        S: 501 5.5.4 Invalid arguments
    ",
    );
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn empty_long_or_repeated_xshadow_parameters_are_invalid() {
    let script = shadow_script(&format!(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 {DBID}
        C: MAIL FROM:<a@example.org> XSHADOW=
        S: 501 5.5.4 Invalid arguments
        C: MAIL FROM:<a@example.org> XSHADOW={}
        S: 501 5.5.4 Invalid arguments
        C: MAIL FROM:<a@example.org> XSHADOW=a xshadow=b
        S: 501 5.5.4 Invalid arguments
    ",
        "i".repeat(256)
    ));
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn a_message_without_xshadow_on_a_shadowed_session_is_simply_not_tracked() {
    let script = shadow_script(&format!(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 {DBID}
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: hello
        C: .
        S: 250 2.6.0 Queued mail for delivery
    "
    ));
    let obs = run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
    assert_eq!(messages(&obs)[0].shadow, None);
}

// ---- PROTOCOL.md §5: XQDISCARD, one test per row ----

#[test]
fn xqdiscard_not_advertised_is_not_implemented() {
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: XQDISCARD 50
        S: 502 5.3.3 Command not implemented
        C: XQDISCARD
        S: 502 5.3.3 Command not implemented
    ";
    run(script, config(ShadowOffer::None), true, &Policy::default());
}

#[test]
fn xqdiscard_before_xshadow_is_bad_sequence() {
    let script = shadow_script(
        "
        C: XQDISCARD 50
        S: 503 5.5.1 Bad sequence of commands
        C: XQDISCARD
        S: 503 5.5.1 Bad sequence of commands
    ",
    );
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn xqdiscard_inside_a_transaction_is_bad_sequence() {
    let script = shadow_script(&format!(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 {DBID}
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: XQDISCARD 50
        S: 503 5.5.1 Bad sequence of commands
    "
    ));
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn xqdiscard_argument_errors_get_their_exact_replies() {
    let script = shadow_script(&format!(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 {DBID}
        C: XQDISCARD
        S: 501 5.0.0 XQDISCARD requires maximum discard events count
        C: XQDISCARD fifty
        S: 501 5.5.4 Invalid arguments
        C: XQDISCARD 0
        S: 501 5.5.4 Invalid arguments
        C: XQDISCARD -1
        S: 501 5.5.4 Invalid arguments
    "
    ));
    run(
        &script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
}

#[test]
fn xqdiscard_returns_at_most_max_ids_oldest_first() {
    let policy = Policy {
        discard_ids: (1..=5).map(|i| format!("id-{i}")).collect(),
        ..Policy::default()
    };
    let script = shadow_script(&format!(
        "
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 {DBID}
        C: XQDISCARD 3
        S: 250-id-1
        S: 250-id-2
        S: 250 id-3
        C: NOOP
        S: 250 2.0.0 OK
    "
    ));
    let obs = run(&script, config(ShadowOffer::XShadow), true, &policy);
    assert_eq!(obs.ledger, ["id-4", "id-5"]);
}

// ---- PROTOCOL.md §7: XSHADOWREQUEST ----

#[test]
fn xshadowrequest_is_answered_with_our_context_and_repeats_after_rset() {
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: EHLO primary.example
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250 XSHADOWREQUEST
        C: XSHADOWREQUEST primary.example X+QUj+rOf0ag5pssHT5PUA==
        S: 250 cGVlcjEuZXhhbXBsZQ==
        C: MAIL FROM:<a@example.org> XSHADOW=id-1
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: copy
        C: .
        S: 250 2.6.0 Queued mail for delivery
        C: RSET
        S: 250 2.0.0 OK
        C: XSHADOWREQUEST primary.example X+QUj+rOf0ag5pssHT5PUA==
        S: 250 cGVlcjEuZXhhbXBsZQ==
        C: XSHADOWREQUEST primary.example
        S: 501 5.5.4 Invalid arguments
    ";
    let obs = run(
        script,
        config(ShadowOffer::XShadowRequest),
        true,
        &Policy::default(),
    );
    assert_eq!(
        messages(&obs)[0].shadow,
        Some(ShadowTag::CopyFor {
            primary: "primary.example".into(),
            database_id: DBID.into(),
            discard_id: "id-1".into()
        })
    );
}

#[test]
fn xshadowrequest_errors_mirror_xshadow() {
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: XSHADOWREQUEST primary.example X+QUj+rOf0ag5pssHT5PUA==
        S: 503 5.5.2 Send EHLO first
        C: EHLO primary.example
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250 XSHADOW
        C: XSHADOWREQUEST primary.example X+QUj+rOf0ag5pssHT5PUA==
        S: 502 5.3.3 Command not implemented
    ";
    run(
        script,
        config(ShadowOffer::XShadow),
        true,
        &Policy::default(),
    );
    let unauthorized = "
        S: 220 edge1.example ESMTP xshadow
        C: EHLO primary.example
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250 XSHADOWREQUEST
        C: XSHADOWREQUEST primary.example X+QUj+rOf0ag5pssHT5PUA==
        S: 550 5.7.1 Not authorized
    ";
    run(
        unauthorized,
        config(ShadowOffer::XShadowRequest),
        false,
        &Policy::default(),
    );
}

#[test]
fn a_server_offering_xshadowrequest_accepts_xshadow_heartbeats() {
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: EHLO peer.example
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250 XSHADOWREQUEST
        C: XSHADOW cGVlcg==
        S: 250 X+QUj+rOf0ag5pssHT5PUA==
        C: XQDISCARD 50
        S: 251 OK, no discard events
    ";
    run(
        script,
        config(ShadowOffer::XShadowRequest),
        true,
        &Policy::default(),
    );
}

// ---- ordinary SMTP flows ----

#[test]
fn a_pipelined_batch_gets_the_same_replies_as_one_by_one() {
    let batch = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<\"denied\"@example.net>
        C: RCPT TO:<c@example.net>
        C: DATA
        S: 250 edge1.example
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 550 5.7.1 Relaying denied
        S: 250 2.1.5 Recipient OK
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: body
        C: .
        C: QUIT
        S: 250 2.6.0 Queued mail for delivery
        S: 221 2.0.0 Service closing transmission channel
    ";
    let one_by_one = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        S: 250 edge1.example
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.net>
        S: 250 2.1.5 Recipient OK
        C: RCPT TO:<\"denied\"@example.net>
        S: 550 5.7.1 Relaying denied
        C: RCPT TO:<c@example.net>
        S: 250 2.1.5 Recipient OK
        C: DATA
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: body
        C: .
        S: 250 2.6.0 Queued mail for delivery
        C: QUIT
        S: 221 2.0.0 Service closing transmission channel
    ";
    let a = run(batch, config(ShadowOffer::None), false, &Policy::default());
    let b = run(
        one_by_one,
        config(ShadowOffer::None),
        false,
        &Policy::default(),
    );
    assert_eq!(format!("{:?}", a.events), format!("{:?}", b.events));
    assert_eq!(a.messages, b.messages);
    assert_eq!(messages(&a)[0].envelope.recipients.len(), 2);
}

#[test]
fn bdat_chunks_make_one_message_and_bdat_zero_last_ends_it() {
    let mut cfg = config(ShadowOffer::None);
    cfg.chunking = true;
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: EHLO client.example
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250-BINARYMIME
        S: 250-CHUNKING
        S: 250 ENHANCEDSTATUSCODES
        C: MAIL FROM:<a@example.org> BODY=BINARYMIME
        C: RCPT TO:<b@example.net>
        C: BDAT 5
        C: ab.
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 250 2.0.0 5 octets received
        C: BDAT 0 LAST
        S: 250 2.6.0 Queued mail for delivery
        C: DATA
        S: 503 5.5.1 Need MAIL command
    ";
    let obs = run(script, cfg, false, &Policy::default());
    let msg = messages(&obs)[0];
    assert_eq!(msg.body, b"ab.\r\n");
    assert!(msg.via_bdat);
}

#[test]
fn bdat_without_a_transaction_reads_and_discards_its_chunk() {
    let mut cfg = config(ShadowOffer::None);
    cfg.chunking = true;
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        S: 250 edge1.example
        C: BDAT 6 LAST
        C: QUIT
        S: 503 5.5.1 Need MAIL command
        C: NOOP
        S: 250 2.0.0 OK
    ";
    run(script, cfg, false, &Policy::default());
}

#[test]
fn a_malformed_bdat_size_closes_the_unframed_stream() {
    let mut cfg = config(ShadowOffer::None);
    cfg.chunking = true;
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        S: 250 edge1.example
        C: BDAT 18446744073709551616 LAST
        C: MAIL FROM:<smuggled@example.org>
        S: 501 5.5.4 Invalid arguments
    ";
    let obs = run(script, cfg, false, &Policy::default());
    assert_eq!(
        obs.events.last(),
        Some(&ServerEvent::Closed(CloseReason::ProtocolError))
    );
}

#[test]
fn a_huge_bdat_is_counted_not_buffered_and_refused_for_size() {
    let mut cfg = config(ShadowOffer::None);
    cfg.chunking = true;
    cfg.max_message_size = 10;
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        S: 250 edge1.example
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: BDAT 20 LAST
        C: 0123456789abcdefgh
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 552 5.3.4 Message size exceeds fixed maximum message size
    ";
    let obs = run(script, cfg, false, &Policy::default());
    assert!(messages(&obs).is_empty());
}

#[test]
fn size_is_refused_on_the_parameter_and_when_the_body_exceeds_it() {
    let mut cfg = config(ShadowOffer::None);
    cfg.max_message_size = 16;
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        S: 250 edge1.example
        C: MAIL FROM:<a@example.org> SIZE=17
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        C: MAIL FROM:<a@example.org> SIZE=16
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: this line alone is longer than sixteen bytes
        C: .
        S: 552 5.3.4 Message size exceeds fixed maximum message size
        C: MAIL FROM:<a@example.org>
        S: 250 2.1.0 Sender OK
    ";
    let obs = run(script, cfg, false, &Policy::default());
    assert!(messages(&obs).is_empty());
}

#[test]
fn rset_mid_transaction_starts_over() {
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        S: 250 edge1.example
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RSET
        C: DATA
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 250 2.0.0 OK
        S: 503 5.5.1 Need MAIL command
        C: RCPT TO:<b@example.net>
        S: 503 5.5.1 Need MAIL command
        C: MAIL FROM:<a@example.org>
        C: MAIL FROM:<a@example.org>
        C: DATA
        S: 250 2.1.0 Sender OK
        S: 503 5.5.1 Nested MAIL command
        S: 554 5.5.1 No valid recipients
    ";
    run(script, config(ShadowOffer::None), false, &Policy::default());
}

#[test]
fn starttls_resets_to_before_ehlo_and_clears_shadow_state() {
    let mut cfg = config(ShadowOffer::XShadow);
    cfg.starttls = true;
    let script = format!(
        "
        S: 220 edge1.example ESMTP xshadow
        C: EHLO hub1.example
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250-STARTTLS
        S: 250-ENHANCEDSTATUSCODES
        S: 250 XSHADOW
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 {DBID}
        C: STARTTLS
        S: 220 2.0.0 Ready to start TLS
        C: XQDISCARD 50
        S: 503 5.5.1 Bad sequence of commands
        C: MAIL FROM:<a@example.org>
        S: 503 5.5.1 Send HELO or EHLO first
        C: EHLO hub1.example
        S: 250-edge1.example
        S: 250-PIPELINING
        S: 250-SIZE 36700160
        S: 250-8BITMIME
        S: 250-ENHANCEDSTATUSCODES
        S: 250 XSHADOW
        C: XSHADOW aHViMS5leGFtcGxl
        S: 250 {DBID}
    "
    );
    let obs = run(&script, cfg, true, &Policy::default());
    assert!(obs.events.contains(&ServerEvent::StartTls));
}

#[test]
fn commands_pipelined_behind_starttls_are_dropped_not_run_after_the_handshake() {
    let now = Instant::now();
    let mut cfg = config(ShadowOffer::None);
    cfg.starttls = true;
    let mut s = ServerSession::new(Arc::new(cfg), false, now);
    let (mut out, mut obs) = (Vec::new(), Observed::default());
    s.handle_input(
        b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@example.org>\r\n",
        now,
    );
    drive(&mut s, &mut out, &Policy::default(), &mut obs, now);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{text}");
    assert!(!obs.events.contains(&ServerEvent::MailFrom));
    assert!(s.may_read(), "reading goes on, now over TLS");
}

#[test]
fn commands_pipelined_behind_starttls_are_dropped_by_handle_input_until_decision_too() {
    let now = Instant::now();
    let mut cfg = config(ShadowOffer::None);
    cfg.starttls = true;
    let mut s = ServerSession::new(Arc::new(cfg), false, now);
    let (mut out, mut obs) = (Vec::new(), Observed::default());
    let data = b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@example.org>\r\n";
    assert_eq!(
        s.handle_input_until_decision(data, now),
        data.len(),
        "what follows STARTTLS is used up (dropped), not left to be offered after TLS"
    );
    drive(&mut s, &mut out, &Policy::default(), &mut obs, now);
    assert!(obs.events.contains(&ServerEvent::StartTls));
    assert!(!obs.events.contains(&ServerEvent::MailFrom));
    assert!(s.may_read());
}

#[test]
fn unknown_commands_and_syntax_errors_get_500_and_501() {
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: TURN
        S: 500 5.5.1 Command unrecognized
        C: EHLO
        S: 501 5.5.4 Syntax: EHLO hostname
        C: HELO client.example
        S: 250 edge1.example
        C: MAIL FROM:alice@example.org
        S: 501 5.1.7 Bad sender address syntax
        C: VRFY bob
        S: 252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery
        C: DATA
        S: 503 5.5.1 Need MAIL command
    ";
    run(script, config(ShadowOffer::None), false, &Policy::default());
}

#[test]
fn a_line_too_long_gets_500_without_being_buffered() {
    let mut cfg = config(ShadowOffer::None);
    cfg.max_line = 64;
    let script = format!(
        "
        S: 220 edge1.example ESMTP xshadow
        C: NOOP {}
        S: 500 5.5.2 Line too long
        C: NOOP
        S: 250 2.0.0 OK
    ",
        "x".repeat(10_000)
    );
    run(&script, cfg, false, &Policy::default());
}

#[test]
fn too_many_errors_close_with_421() {
    let mut cfg = config(ShadowOffer::None);
    cfg.max_errors = 3;
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: FOO
        C: BAR
        C: BAZ
        C: NOOP
        S: 500 5.5.1 Command unrecognized
        S: 500 5.5.1 Command unrecognized
        S: 500 5.5.1 Command unrecognized
        S: 421 4.7.0 edge1.example Too many errors, closing
    ";
    let obs = run(script, cfg, false, &Policy::default());
    assert_eq!(
        obs.events.last(),
        Some(&ServerEvent::Closed(CloseReason::TooManyErrors))
    );
}

#[test]
fn too_many_recipients_get_452() {
    let mut cfg = config(ShadowOffer::None);
    cfg.max_recipients = 1;
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: RCPT TO:<c@example.net>
        S: 250 edge1.example
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 452 4.5.3 Too many recipients
    ";
    run(script, cfg, false, &Policy::default());
}

#[test]
fn a_refused_store_is_answered_with_the_callers_reply() {
    let policy = Policy {
        refuse_storage: true,
        ..Policy::default()
    };
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        C: MAIL FROM:<a@example.org>
        C: RCPT TO:<b@example.net>
        C: DATA
        S: 250 edge1.example
        S: 250 2.1.0 Sender OK
        S: 250 2.1.5 Recipient OK
        S: 354 Start mail input; end with <CRLF>.<CRLF>
        C: x
        C: .
        S: 452 4.3.1 Insufficient system storage
    ";
    run(script, config(ShadowOffer::None), false, &policy);
}

#[test]
fn smuggled_dot_lines_do_not_end_data_and_arrive_intact() {
    let now = Instant::now();
    let mut s = ServerSession::new(Arc::new(config(ShadowOffer::None)), false, now);
    let mut out = Vec::new();
    let mut obs = Observed::default();
    let policy = Policy::default();
    s.handle_input(
        b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
        now,
    );
    drive(&mut s, &mut out, &policy, &mut obs, now);
    let body = b"a\n.\r\nMAIL FROM:<evil@example.org>\r\nb\r.\r\nc\n.\nd\r\n";
    s.handle_input(body, now);
    s.handle_input(b".\r\n", now);
    drive(&mut s, &mut out, &policy, &mut obs, now);
    let msgs = messages(&obs);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].body, body);
}

#[test]
fn non_ascii_addresses_need_smtputf8() {
    let mut cfg = config(ShadowOffer::None);
    cfg.smtputf8 = true;
    let script = "
        S: 220 edge1.example ESMTP xshadow
        C: HELO client.example
        C: MAIL FROM:<δοκιμή@example.org>
        C: MAIL FROM:<δοκιμή@example.org> SMTPUTF8
        S: 250 edge1.example
        S: 553 5.6.7 Non-ASCII addresses require SMTPUTF8
        S: 250 2.1.0 Sender OK
    ";
    run(script, cfg, false, &Policy::default());
}

#[test]
fn an_idle_client_gets_421_and_the_event_names_the_phase() {
    let now = Instant::now();
    let mut cfg = config(ShadowOffer::None);
    cfg.timeouts.command = Duration::from_secs(300);
    cfg.timeouts.data = Duration::from_secs(60);
    let mut s = ServerSession::new(Arc::new(cfg), false, now);
    let mut out = Vec::new();
    let mut obs = Observed::default();
    let policy = Policy::default();
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(300)));
    s.handle_input(
        b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\npartial",
        now,
    );
    drive(&mut s, &mut out, &policy, &mut obs, now);
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(
        deadline,
        now + Duration::from_secs(60),
        "the data phase has its own timeout"
    );
    s.handle_timeout(deadline - Duration::from_millis(1));
    assert!(!s.is_closed(), "an early call does nothing");
    s.handle_timeout(deadline);
    drive(&mut s, &mut out, &policy, &mut obs, deadline);
    assert!(
        String::from_utf8_lossy(&out)
            .ends_with("421 4.4.2 edge1.example Timeout waiting for client, closing\r\n")
    );
    assert!(
        obs.events
            .contains(&ServerEvent::TimedOut(ServerPhase::Data))
    );
    assert_eq!(
        obs.events.last(),
        Some(&ServerEvent::Closed(CloseReason::TimedOut(
            ServerPhase::Data
        )))
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn no_timer_runs_while_the_session_waits_for_the_caller() {
    let now = Instant::now();
    let mut s = ServerSession::new(Arc::new(config(ShadowOffer::None)), false, now);
    s.handle_input(b"HELO c\r\nMAIL FROM:<a@example.org>\r\n", now);
    let mut out = Vec::new();
    let _ = s.poll_transmit(&mut out);
    while let Some(e) = s.poll_event() {
        if e == ServerEvent::MailFrom {
            break;
        }
    }
    assert_eq!(s.poll_timeout(), None);
    assert!(
        !s.may_read(),
        "input is held back while a decision is pending"
    );
    assert!(
        s.accept_rcpt(now).is_err(),
        "answering the wrong question is an API error"
    );
    s.accept_mail(now).unwrap();
    assert!(s.may_read());
}

#[test]
fn replies_piling_up_stop_the_session_from_executing_more_commands() {
    let now = Instant::now();
    let mut cfg = config(ShadowOffer::None);
    cfg.max_pending_output = 100;
    let mut s = ServerSession::new(Arc::new(cfg), false, now);
    let batch = "NOOP\r\n".repeat(1000);
    s.handle_input(batch.as_bytes(), now);
    assert!(!s.may_read());
    let mut out = Vec::new();
    let mut rounds = 0;
    while s.poll_transmit(&mut out).is_some() {
        rounds += 1;
        assert!(rounds < 2000);
    }
    let replies = String::from_utf8(out).unwrap();
    assert_eq!(
        replies.matches("250 2.0.0 OK\r\n").count(),
        1000,
        "every command answered once"
    );
}

/// A session after `HELO c`, its greeting and reply drained.
fn greeted(cfg: ServerConfig, now: Instant) -> ServerSession {
    let mut s = ServerSession::new(Arc::new(cfg), false, now);
    s.handle_input(b"HELO c\r\n", now);
    let mut out = Vec::new();
    let _ = s.poll_transmit(&mut out);
    while s.poll_event().is_some() {}
    s
}

fn recipients(s: &ServerSession) -> Vec<String> {
    s.pending_envelope()
        .unwrap()
        .recipients
        .iter()
        .map(|r| match &r.to {
            ForwardPath::Mailbox(m) => m.to_string(),
            ForwardPath::Postmaster => "postmaster".to_owned(),
        })
        .collect()
}

#[test]
fn bytes_offered_while_the_session_holds_bytes_go_behind_them() {
    let now = Instant::now();
    let mut s = greeted(config(ShadowOffer::None), now);
    // MAIL waits for its decision; `handle_input` keeps the RCPT behind it.
    s.handle_input(
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n",
        now,
    );
    assert_eq!(s.poll_event(), Some(ServerEvent::MailFrom));
    let more = b"RCPT TO:<c@example.net>\r\nDATA\r\n";
    assert_eq!(
        s.handle_input_until_decision(more, now),
        more.len(),
        "joined to the held bytes, all used"
    );
    s.accept_mail(now).unwrap();
    assert_eq!(s.poll_event(), Some(ServerEvent::RcptTo));
    s.accept_rcpt(now).unwrap();
    assert_eq!(s.poll_event(), Some(ServerEvent::RcptTo));
    s.accept_rcpt(now).unwrap();
    assert_eq!(recipients(&s), ["b@example.net", "c@example.net"]);
    let mut out = Vec::new();
    let _ = s.poll_transmit(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n\
         354 Start mail input; end with <CRLF>.<CRLF>\r\n"
    );
}

#[test]
fn a_decision_left_pending_keeps_the_rest_for_later() {
    let now = Instant::now();
    let script: &[u8] = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n\
        x\r\n.\r\nMAIL FROM:<d@example.org>\r\nRCPT TO:<e@example.net>\r\nQUIT\r\n";
    // The reference: all of it through `handle_input`, every decision answered in turn.
    let policy = Policy::default();
    let mut want = Observed::default();
    let mut want_out = Vec::new();
    let mut s = greeted(config(ShadowOffer::None), now);
    s.handle_input(script, now);
    drive(&mut s, &mut want_out, &policy, &mut want, now);

    // MAIL and RCPT answered at once; the message is stored later, as after a Persist.
    let mut obs = Observed::default();
    let mut out = Vec::new();
    let mut s = greeted(config(ShadowOffer::None), now);
    let mut rest = script;
    loop {
        let used = s.handle_input_until_decision(rest, now);
        rest = &rest[used..];
        match s.poll_event() {
            Some(ServerEvent::MailFrom) => s.accept_mail(now).unwrap(),
            Some(ServerEvent::RcptTo) => s.accept_rcpt(now).unwrap(),
            Some(ServerEvent::MessageComplete) => {
                obs.messages.push(s.take_message().unwrap());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!rest.is_empty() && !s.may_read());
    assert_eq!(
        s.handle_input_until_decision(rest, now),
        0,
        "nothing is used while the message waits"
    );
    s.handle_input(rest, now);
    let _ = s.poll_transmit(&mut out);
    assert!(
        String::from_utf8_lossy(&out).ends_with("354 Start mail input; end with <CRLF>.<CRLF>\r\n"),
        "no reply for the pipelined commands yet"
    );
    s.message_stored(now).unwrap();
    drive(&mut s, &mut out, &policy, &mut obs, now);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        String::from_utf8(want_out).unwrap()
    );
    assert_eq!(obs.messages, want.messages);
    assert!(s.is_closed(), "QUIT, kept behind the message, ran");
}

#[test]
fn replies_piling_up_stop_handle_input_until_decision_too() {
    let now = Instant::now();
    let mut cfg = config(ShadowOffer::None);
    cfg.max_pending_output = 100;
    let mut s = ServerSession::new(Arc::new(cfg), false, now);
    let batch = "NOOP\r\n".repeat(1000);
    let mut rest = batch.as_bytes();
    let mut out = Vec::new();
    let mut rounds = 0;
    while !rest.is_empty() {
        let used = s.handle_input_until_decision(rest, now);
        rest = &rest[used..];
        if !rest.is_empty() {
            assert!(!s.may_read(), "it stops only when it may not read");
            assert!(s.poll_transmit(&mut out).is_some());
        }
        rounds += 1;
        assert!(rounds < 2000);
    }
    let _ = s.poll_transmit(&mut out);
    let replies = String::from_utf8(out).unwrap();
    assert_eq!(replies.matches("250 2.0.0 OK\r\n").count(), 1000);
}

#[test]
fn a_command_split_across_reads_is_kept_by_handle_input_until_decision() {
    let now = Instant::now();
    let mut s = greeted(config(ShadowOffer::None), now);
    let first = b"MAIL FROM:<a@exa";
    assert_eq!(s.handle_input_until_decision(first, now), first.len());
    assert_eq!(s.poll_event(), None);
    let second = b"mple.org>\r\nRCPT TO:<b@example.net>\r\n";
    let used = s.handle_input_until_decision(second, now);
    assert_eq!(used, second.len(), "behind the kept start, all taken");
    assert_eq!(s.poll_event(), Some(ServerEvent::MailFrom));
    s.accept_mail(now).unwrap();
    assert_eq!(s.poll_event(), Some(ServerEvent::RcptTo));
    assert!(matches!(&s.pending_envelope().unwrap().from,
        ReversePath::Mailbox(m) if m.to_string() == "a@example.org"));
}

#[test]
fn a_complete_message_is_taken_once_even_after_the_peer_closed() {
    let now = Instant::now();
    let mut s = greeted(config(ShadowOffer::None), now);
    s.handle_input(b"MAIL FROM:<a@example.org>\r\n", now);
    assert_eq!(s.poll_event(), Some(ServerEvent::MailFrom));
    assert!(
        s.take_message().is_none(),
        "no message before MessageComplete"
    );
    s.accept_mail(now).unwrap();
    s.handle_input(b"RCPT TO:<b@example.net>\r\n", now);
    assert_eq!(s.poll_event(), Some(ServerEvent::RcptTo));
    s.accept_rcpt(now).unwrap();
    s.handle_input(b"DATA\r\nx\r\n.\r\n", now);
    s.handle_eof(now);
    assert_eq!(s.poll_event(), Some(ServerEvent::MessageComplete));
    assert_eq!(
        s.poll_event(),
        Some(ServerEvent::Closed(CloseReason::PeerClosed))
    );
    let message = s.take_message().expect("announced before the close");
    assert_eq!(message.body, b"x\r\n");
    assert!(!message.via_bdat);
    assert!(s.take_message().is_none(), "handed over once");
}
