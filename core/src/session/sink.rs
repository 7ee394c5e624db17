//! A final destination's answers to a [`ServerSession`]'s decisions: every sender and
//! recipient is accepted, shadow requests are refused (a destination is nobody's primary, so
//! XSHADOW and XSHADOWREQUEST get `502 5.3.3` and XQDISCARD returns no ids), and each complete
//! message is handed to the caller, who stores it and reports with [`stored`].
//!
//! Used by the `xshadow sink` command on every runtime, and by test and bench sinks.

use std::time::Instant;

use super::{ApiError, ReceivedMessage, ServerEvent, ServerSession};
use crate::wire::Reply;

/// Answers one decision; returns the message when `event` completes one.
pub fn answer(
    session: &mut ServerSession,
    event: ServerEvent,
    now: Instant,
) -> Result<Option<ReceivedMessage>, ApiError> {
    match event {
        ServerEvent::MailFrom => session.accept_mail(now)?,
        ServerEvent::RcptTo => session.accept_rcpt(now)?,
        ServerEvent::MessageComplete => return Ok(session.take_message()),
        ServerEvent::XShadow { .. } => {
            session.reject_xshadow(Reply::command_not_implemented(), now)?;
        }
        ServerEvent::XShadowRequest { .. } => {
            session.reject_shadow_request(Reply::command_not_implemented(), now)?;
        }
        ServerEvent::XqDiscard { .. } => {
            session.answer_xqdiscard::<&str>(&[], now)?;
        }
        _ => {}
    }
    Ok(None)
}

/// The drain rule for a destination's session: moves its replies into `out` and answers its
/// decisions until it has nothing more, or until it hands over a complete message. The caller
/// then stores the message, reports with [`stored`] and calls this again; until then the
/// session waits (it neither reads nor times out).
pub fn drain(
    session: &mut ServerSession,
    out: &mut Vec<u8>,
    now: Instant,
) -> Result<Option<ReceivedMessage>, ApiError> {
    loop {
        let mut moved = session.poll_transmit(out).is_some();
        while let Some(event) = session.poll_event() {
            moved = true;
            if let Some(message) = answer(session, event, now)? {
                return Ok(Some(message));
            }
        }
        if !moved {
            return Ok(None);
        }
    }
}

/// Reports whether the message [`drain`] handed over is stored: `250`, or
/// [`Reply::local_error`] (`451 4.3.0`) for the client to retry.
pub fn stored(session: &mut ServerSession, ok: bool, now: Instant) -> Result<(), ApiError> {
    if ok {
        session.message_stored(now)
    } else {
        session.message_rejected(Reply::local_error(), now)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::session::{ServerConfig, ShadowOffer};

    /// Feeds `input` and drains; the replies, and any message handed over.
    fn exchange(
        session: &mut ServerSession,
        input: &[u8],
        now: Instant,
    ) -> (String, Option<ReceivedMessage>) {
        session.handle_input(input, now);
        let mut out = Vec::new();
        let message = drain(session, &mut out, now).unwrap();
        (String::from_utf8(out).unwrap(), message)
    }

    fn session(now: Instant) -> ServerSession {
        let mut config = ServerConfig::new("sink.test");
        config.shadow = ShadowOffer::XShadow;
        let mut s = ServerSession::new(Arc::new(config), true, now);
        let mut out = Vec::new();
        assert!(drain(&mut s, &mut out, now).unwrap().is_none());
        assert!(out.starts_with(b"220 "));
        s
    }

    #[test]
    fn a_sink_takes_every_recipient_and_says_250_only_once_the_message_is_stored() {
        let now = Instant::now();
        let mut s = session(now);
        let (replies, _) = exchange(&mut s, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n", now);
        assert!(replies.ends_with("250 2.1.0 Sender OK\r\n"), "{replies}");
        let (replies, _) = exchange(&mut s, b"RCPT TO:<x@y.z>\r\nRCPT TO:<postmaster>\r\n", now);
        assert_eq!(
            replies,
            "250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n"
        );
        let (replies, message) = exchange(&mut s, b"DATA\r\nhi\r\n.\r\n", now);
        assert!(replies.starts_with("354 "), "{replies}");
        let message = message.expect("the message is handed over");
        assert_eq!(message.envelope.recipients.len(), 2);
        assert_eq!(&message.body[..], b"hi\r\n");
        let mut out = Vec::new();
        assert!(drain(&mut s, &mut out, now).unwrap().is_none());
        assert!(out.is_empty(), "no 250 before the message is stored");
        stored(&mut s, true, now).unwrap();
        assert!(drain(&mut s, &mut out, now).unwrap().is_none());
        assert_eq!(out, b"250 2.6.0 Queued mail for delivery\r\n");
    }

    #[test]
    fn a_sink_refuses_to_be_a_primary_and_owes_no_discards() {
        let now = Instant::now();
        let mut s = session(now);
        let (replies, _) = exchange(&mut s, b"EHLO c\r\nXSHADOW aHVi\r\n", now);
        assert!(
            replies.ends_with("502 5.3.3 Command not implemented\r\n"),
            "{replies}"
        );
    }

    #[test]
    fn a_message_that_could_not_be_stored_gets_a_temporary_failure() {
        let now = Instant::now();
        let mut s = session(now);
        let script = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\nDATA\r\nhi\r\n.\r\n";
        let (_, message) = exchange(&mut s, script, now);
        assert!(message.is_some());
        stored(&mut s, false, now).unwrap();
        let mut out = Vec::new();
        assert!(drain(&mut s, &mut out, now).unwrap().is_none());
        let replies = String::from_utf8(out).unwrap();
        assert!(
            replies.ends_with("354 Start mail input; end with <CRLF>.<CRLF>\r\n451 4.3.0 Local error in processing\r\n"),
            "{replies}"
        );
    }
}
