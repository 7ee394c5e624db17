//! Text a relay writes itself: RFC 5322 dates, `Received:` trace headers and RFC 3464
//! delivery status notifications (bounces).
//!
//! Wall-clock time comes in as Unix milliseconds; nothing here reads a clock.

use std::fmt::Write as _;

use crate::session::Envelope;
use crate::wire::path::ForwardPath;

/// Formats Unix milliseconds as an RFC 5322 date in UTC: `Fri, 4 Dec 2026 16:01:43 +0000`.
pub fn rfc5322_date(unix_ms: u64) -> String {
    let mut text = String::with_capacity(31);
    write_rfc5322_date(&mut text, unix_ms);
    text
}

/// Appends [`rfc5322_date`] to `out` without a temporary string.
fn write_rfc5322_date(out: &mut String, unix_ms: u64) {
    let secs = unix_ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    let _ = write!(
        out,
        "{weekday}, {day} {month} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31) in the proleptic Gregorian
/// calendar (the well-known era-based conversion).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The RFC 5322 date text of the current second, remade only when the second changes.
#[derive(Debug, Clone, Default)]
pub struct DateCache {
    second: Option<u64>,
    text: String,
}

impl DateCache {
    /// The date text for `unix_ms`, as [`rfc5322_date`] gives it.
    pub fn get(&mut self, unix_ms: u64) -> &str {
        let second = unix_ms / 1000;
        if self.second != Some(second) {
            self.text.clear();
            write_rfc5322_date(&mut self.text, unix_ms);
            self.second = Some(second);
        }
        &self.text
    }
}

/// What a node says about a message in the `Received:` header it prepends (RFC 5321 §4.4).
#[derive(Clone, Copy)]
pub struct Trace<'a> {
    /// Our name.
    pub by: &'a str,
    /// The name the sender gave in EHLO/HELO.
    pub helo: &'a str,
    /// The sender's address as text (or how the message came in).
    pub peer: &'a str,
    /// Our id for the message.
    pub id: u64,
    /// The recipient, when there is exactly one.
    pub for_one: Option<&'a ForwardPath<'a>>,
    /// The date text ([`rfc5322_date`]).
    pub date: &'a str,
}

/// The message as a node stores it: its `Received:` header, then `body` unchanged, in one
/// buffer.
pub fn prepend_received(trace: &Trace<'_>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(received_len(trace) + body.len());
    write_received(trace, &mut out);
    out.extend_from_slice(body);
    out
}

/// [`prepend_received`] in place: the header goes in front of `body`, which moves up within
/// its buffer (no new buffer when it has the room).
pub fn insert_received(trace: &Trace<'_>, mut body: Vec<u8>) -> Vec<u8> {
    // The header is written behind the body, then rotated to the front: a header of a few
    // hundred bytes goes through a stack buffer while the body moves up once, and no
    // buffer is allocated for it.
    body.reserve(received_len(trace));
    let n = body.len();
    write_received(trace, &mut body);
    let h = body.len() - n;
    body.rotate_right(h);
    body
}

/// An upper bound of the header's length.
fn received_len(trace: &Trace<'_>) -> usize {
    let for_one = match trace.for_one {
        Some(ForwardPath::Mailbox(m)) => 10 + m.as_str().len(),
        _ => 0,
    };
    80 + trace.helo.len() + trace.peer.len() + trace.by.len() + trace.date.len() + for_one
}

/// Appends the `Received:` header with its CRLF to `out`.
fn write_received(trace: &Trace<'_>, out: &mut Vec<u8>) {
    let Trace {
        by,
        helo,
        peer,
        id,
        for_one,
        date,
    } = *trace;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"Received: from ");
    out.extend_from_slice(helo.as_bytes());
    out.extend_from_slice(b" (");
    out.extend_from_slice(peer.as_bytes());
    out.extend_from_slice(b")\r\n\tby ");
    out.extend_from_slice(by.as_bytes());
    out.extend_from_slice(b" (xshadow) with ESMTP id ");
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = HEX[((id >> (4 * (15 - i))) & 0xf) as usize];
    }
    out.extend_from_slice(&hex);
    if let Some(ForwardPath::Mailbox(m)) = for_one {
        out.extend_from_slice(b"\r\n\tfor <");
        out.extend_from_slice(m.as_str().as_bytes());
        out.push(b'>');
    }
    out.extend_from_slice(b";\r\n\t");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One recipient that could not be delivered, for a bounce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The recipient as it was in the envelope.
    pub to: ForwardPath<'static>,
    /// RFC 3463 status, such as `5.1.1` or `4.4.7`.
    pub status: String,
    /// The remote reply or a local explanation, one line.
    pub diagnostic: String,
}

/// Builds an RFC 3464 `multipart/report` bounce for `failed` recipients of a message with
/// `envelope` and `body`; `None` when the sender is the null sender (no bounce of bounces).
/// Returns the bounce's envelope recipient (the original sender) and its content.
pub fn bounce(
    reporting_mta: &str,
    envelope: &Envelope,
    body: &[u8],
    failed: &[FailedRecipient],
    boundary_seed: u64,
    unix_ms: u64,
) -> Option<(ForwardPath<'static>, Vec<u8>)> {
    let sender = envelope.from.mailbox()?.clone().into_owned();
    let date = rfc5322_date(unix_ms);
    let boundary = format!("xshadow-{boundary_seed:016x}");
    let mut text = String::new();
    let _ = write!(
        text,
        "From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{boundary}@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {reporting_mta}.\r\n\
         Your message could not be delivered to the following recipients:\r\n\
         \r\n"
    );
    for f in failed {
        let _ = write!(text, "  {}: {}\r\n", path_text(&f.to), f.diagnostic);
    }
    let _ = write!(
        text,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {reporting_mta}\r\n\
         Arrival-Date: {date}\r\n"
    );
    for f in failed {
        let action = if f.status.starts_with('5') {
            "failed"
        } else {
            "delayed"
        };
        let _ = write!(
            text,
            "\r\nFinal-Recipient: rfc822; {}\r\n\
             Action: {action}\r\n\
             Status: {}\r\n\
             Diagnostic-Code: smtp; {}\r\n",
            path_text(&f.to),
            f.status,
            f.diagnostic
        );
    }
    let _ = write!(
        text,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut out = text.into_bytes();
    out.extend_from_slice(headers_of(body));
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some((ForwardPath::Mailbox(sender), out))
}

fn path_text(path: &ForwardPath<'_>) -> String {
    match path {
        ForwardPath::Postmaster => "postmaster".to_owned(),
        ForwardPath::Mailbox(m) => m.to_string(),
    }
}

/// The header section of a message: everything before the first empty line.
fn headers_of(body: &[u8]) -> &[u8] {
    match memchr::memmem::find(body, b"\r\n\r\n") {
        Some(at) => &body[..at + 2],
        None => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_received_header_goes_in_front_of_the_unchanged_body_copied_or_in_place() {
        let to = ForwardPath::Mailbox(crate::wire::path::Mailbox::new("bob", "example.net"));
        let date = DateCache::default().get(1_796_400_103_000).to_owned();
        let trace = Trace {
            by: "edge1.example",
            helo: "hub.example",
            peer: "192.0.2.7",
            id: 0x2a,
            for_one: Some(&to),
            date: &date,
        };
        let body = b"Subject: x\r\n\r\nbody\r\n";
        let stored = prepend_received(&trace, body);
        assert_eq!(
            String::from_utf8(stored.clone()).unwrap(),
            format!(
                "Received: from hub.example (192.0.2.7)\r\n\tby edge1.example (xshadow) with ESMTP id 000000000000002a\r\n\tfor <bob@example.net>;\r\n\t{}\r\nSubject: x\r\n\r\nbody\r\n",
                rfc5322_date(1_796_400_103_000)
            )
        );
        assert!(received_len(&trace) >= stored.len() - body.len());
        // In place: the same bytes, in the buffer it was given when that has room.
        let mut roomy = Vec::with_capacity(body.len() + 256);
        roomy.extend_from_slice(body);
        let address = roomy.as_ptr();
        let in_place = insert_received(&trace, roomy);
        assert_eq!(in_place, stored);
        assert_eq!(in_place.as_ptr(), address, "no new buffer");
        // Without room it still comes out right.
        assert_eq!(insert_received(&trace, body.to_vec()), stored);
    }

    #[test]
    fn the_date_cache_changes_with_the_second() {
        let mut dates = DateCache::default();
        assert_eq!(dates.get(1_000), rfc5322_date(1_000));
        assert_eq!(dates.get(1_999), rfc5322_date(1_000));
        assert_eq!(dates.get(2_000), rfc5322_date(2_000));
        assert_eq!(dates.get(0), rfc5322_date(0));
    }
    use crate::session::Recipient;
    use crate::wire::params::{MailParams, RcptParams};
    use crate::wire::path::{Mailbox, ReversePath};

    #[test]
    fn dates_are_rfc5322_in_utc() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_796_400_103_000),
            "Fri, 4 Dec 2026 16:01:43 +0000"
        );
        assert_eq!(
            rfc5322_date(951_782_400_000),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }

    fn envelope(from: ReversePath<'static>) -> Envelope {
        Envelope {
            from,
            params: MailParams::default(),
            recipients: [Recipient {
                to: ForwardPath::Mailbox(Mailbox::new("bob", "example.net")),
                params: RcptParams::default(),
            }]
            .into(),
        }
    }

    #[test]
    fn a_bounce_is_a_delivery_status_report_to_the_sender() {
        let env = envelope(ReversePath::Mailbox(Mailbox::new("alice", "example.org")));
        let failed = [FailedRecipient {
            to: ForwardPath::Mailbox(Mailbox::new("bob", "example.net")),
            status: "5.1.1".into(),
            diagnostic: "550 5.1.1 No such user".into(),
        }];
        let body = b"Subject: hi\r\nMessage-ID: <1@x>\r\n\r\nsecret body\r\n";
        let (to, text) = bounce("edge1.example", &env, body, &failed, 7, 0).unwrap();
        assert_eq!(
            to,
            ForwardPath::Mailbox(Mailbox::new("alice", "example.org"))
        );
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains(
            "Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Subject: hi\r\nMessage-ID: <1@x>\r\n"));
        assert!(
            !text.contains("secret body"),
            "only the headers are returned"
        );
        assert!(text.ends_with("--xshadow-0000000000000007--\r\n"));
    }

    #[test]
    fn the_null_sender_gets_no_bounce() {
        let env = envelope(ReversePath::Null);
        assert!(bounce("edge1.example", &env, b"x\r\n", &[], 1, 0).is_none());
    }
}
