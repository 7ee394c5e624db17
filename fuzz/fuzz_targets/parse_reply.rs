//! Reply reading: `ReplyReader` (default and small limits) fed the input whole and at split
//! points derived from it, then the typed views of every reply read.
//!
//! Invariants: nothing panics; the replies, the bytes each one used and the final error are
//! the same whatever the split; every reply read, written back with `to_bytes()`, reads back
//! equal and writes the same bytes again; `EhloReply::from_reply`, `xshadow_database_id` and
//! `xqdiscard_ids(max)` keep their documented promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xshadow_core::wire::reply::{DEFAULT_MAX_REPLY_LINES, parse_reply};
use xshadow_core::wire::{
    DEFAULT_MAX_LINE, EhloReply, MAX_SHADOW_FIELD, Reply, ReplyError, ReplyReader,
};
use xshadow_fuzz::{alphabet, hash, remap, split};

fuzz_target!(|data: &[u8]| {
    check(data);
    check(&remap(data, alphabet::REPLY));
});

/// The replies read from a stream, each with the bytes it used, and the error that ended it.
type Outcome = (Vec<(Reply<'static>, usize)>, Option<ReplyError>);

fn check(data: &[u8]) {
    let seed = hash(data);
    let small_line = 1 + (seed >> 16) as usize % 200;
    let small_lines = 1 + (seed >> 40) as usize % 60;
    let limits = [
        (DEFAULT_MAX_LINE, DEFAULT_MAX_REPLY_LINES),
        (small_line, small_lines),
    ];
    for (max_line, max_lines) in limits {
        let whole = read_all(ReplyReader::with_limits(max_line, max_lines), &[data]);
        let chunked = read_all(
            ReplyReader::with_limits(max_line, max_lines),
            &split(data, seed),
        );
        assert_eq!(
            whole, chunked,
            "reading depends on the split ({max_line}, {max_lines})"
        );
        let mut at = 0;
        for (reply, used) in &whole.0 {
            check_reply(reply, &data[at..at + used], seed);
            at += used;
        }
    }
    // parse_reply is the default reader on the front of the buffer.
    let default = read_all(ReplyReader::new(), &[data]);
    match parse_reply(data) {
        Ok(Some((reply, used))) => assert_eq!(Some(&(reply.into_owned(), used)), default.0.first()),
        Ok(None) => assert!(default.0.is_empty() && default.1.is_none()),
        Err(e) => assert!(default.0.is_empty() && default.1 == Some(e)),
    }
}

/// Feeds `pieces` to `reader` as a client does: a growing buffer whose used front is dropped
/// after each reply; stops at the first error (the client closes the connection).
fn read_all(mut reader: ReplyReader, pieces: &[&[u8]]) -> Outcome {
    let mut buf = Vec::new();
    let mut at = 0;
    let mut replies = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match reader.read(&buf[at..]) {
                Ok(Some((reply, used))) => {
                    assert!(used > 0 && used <= buf.len() - at, "bad used count {used}");
                    assert!(!reply.lines.is_empty(), "a reply without lines");
                    assert!((200..=599).contains(&reply.code), "code {}", reply.code);
                    replies.push((reply.into_owned(), used));
                    at += used;
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = e.to_string();
                    return (replies, Some(e));
                }
            }
        }
    }
    (replies, None)
}

fn check_reply(reply: &Reply<'_>, raw: &[u8], seed: u64) {
    assert!(
        raw.ends_with(b"\r\n"),
        "a reply that does not end with CRLF"
    );

    // Write -> parse identity, with limits that fit whatever the writer produced.
    let wire = reply.to_bytes();
    let mut generous = ReplyReader::with_limits(usize::MAX, usize::MAX);
    let (again, used) = generous
        .read(&wire)
        .unwrap_or_else(|e| panic!("{reply:?} written as {wire:?} fails to read: {e:?}"))
        .unwrap_or_else(|| panic!("{reply:?} written as {wire:?} is incomplete"));
    assert_eq!(used, wire.len(), "written reply {wire:?} read short");
    assert_eq!(
        &again, reply,
        "write->parse changed the reply (wire {wire:?})"
    );
    assert_eq!(again.to_bytes(), wire, "writing is not a fixpoint");
    assert_eq!(reply.clone().into_owned(), *reply);
    let _ = reply.to_string();

    // EHLO view.
    match EhloReply::from_reply(reply) {
        Ok(ehlo) => {
            assert!(reply.is_positive());
            assert!(!ehlo.domain.is_empty() && !ehlo.domain.contains(' '));
            assert!(ehlo.greeting.as_deref().is_none_or(|g| !g.is_empty()));
            let rebuilt = ehlo.to_reply();
            assert_eq!(
                EhloReply::from_reply(&rebuilt).as_ref(),
                Ok(&ehlo),
                "EhloReply -> to_reply -> from_reply changed it"
            );
            let _ = ehlo.keywords.accepts_xshadow();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // XSHADOW view.
    match reply.xshadow_database_id() {
        Ok(Some(id)) => {
            assert!(reply.is_positive());
            assert!(!id.is_empty() && id.len() <= MAX_SHADOW_FIELD && !id.contains(' '));
            assert!(reply.text().starts_with(id));
        }
        Ok(None) => assert!(!reply.is_positive()),
        Err(e) => {
            assert!(reply.is_positive() && e.is_breach());
            let _ = e.to_string();
        }
    }

    // XQDISCARD view, for several values of the `max` sent.
    let n = reply.lines.len() as u32;
    for max in [
        1,
        50,
        1000,
        u32::MAX,
        n,
        n.saturating_sub(1),
        (seed >> 8) as u32 % 2048,
    ] {
        match reply.xqdiscard_ids(max) {
            Ok(ids) => {
                assert!(reply.code == 250 || reply.code == 251, "{}", reply.code);
                if reply.code == 251 {
                    assert!(ids.is_empty());
                } else {
                    assert!(!ids.is_empty() && ids.len() <= max as usize);
                    assert!(
                        ids.iter()
                            .all(|id| !id.is_empty() && id.len() <= MAX_SHADOW_FIELD)
                    );
                }
            }
            Err(e) => {
                assert_eq!(e.is_breach(), !(400..=599).contains(&reply.code), "{e:?}");
                assert!(reply.code != 251);
                let _ = e.to_string();
            }
        }
    }
}
