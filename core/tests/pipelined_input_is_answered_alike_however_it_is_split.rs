//! A node's inbound sessions read pipelined input up to each decision and take the rest once
//! it is answered (`ServerSession::handle_input_until_decision`); a message waiting for its
//! Persist keeps what follows in the session. Whatever the reads look like (one read for a
//! whole pipelined batch of messages, a few bytes at a time, one byte at a time), the client
//! gets the same replies and every message is persisted once.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use xshadow_core::node::{ConnId, Input, Node, NodeConfig, Output};
use xshadow_core::store::Record;

const UNIX_START: u64 = 1_796_400_103_000;

/// What the client saw, and the messages the node persisted.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    replies: String,
    accepted: usize,
}

/// Moves every output: the connection's bytes into `seen`, each Persist answered at once
/// (after the outputs it came with), Connects to the next hop left unanswered.
fn drain(node: &mut Node, conn: ConnId, seen: &mut Seen, now: Instant) {
    loop {
        let mut tokens = Vec::new();
        while let Some(output) = node.poll_output() {
            match output {
                Output::Transmit { conn: c, data } if c == conn => {
                    seen.replies.push_str(&String::from_utf8(data).unwrap());
                }
                Output::Persist { token, records } => {
                    seen.accepted += records
                        .iter()
                        .filter(|r| matches!(r, Record::Accepted { .. }))
                        .count();
                    tokens.push(token);
                }
                _ => {}
            }
        }
        if tokens.is_empty() {
            return;
        }
        for token in tokens {
            node.handle_input(Input::Persisted(token), now);
        }
    }
}

/// Feeds `script` to a fresh relay node in reads of `piece` bytes, reading only while the
/// node says it may.
fn run(script: &[u8], piece: usize) -> Seen {
    let now = Instant::now();
    let mut config = NodeConfig::new("edge.example");
    config.next_hops = vec!["sink.example".into()];
    config.relay_clients = vec!["127.0.0.0/8".parse().unwrap()];
    config.max_ack_delay = Duration::ZERO;
    let mut node = Node::new(config, 1, now, UNIX_START);
    let peer: IpAddr = "127.0.0.1".parse().unwrap();
    let conn = node.accept(peer, now);
    let mut seen = Seen {
        replies: String::new(),
        accepted: 0,
    };
    drain(&mut node, conn, &mut seen, now);
    for read in script.chunks(piece) {
        assert!(
            node.may_read(conn),
            "drained with nothing pending, it reads"
        );
        node.handle_input(Input::Received(conn, read), now);
        drain(&mut node, conn, &mut seen, now);
    }
    seen
}

fn script() -> Vec<u8> {
    let body = "Subject: pipelined\r\n\r\nbody line\r\n".repeat(20);
    let mut script = b"EHLO client.example\r\n".to_vec();
    for i in 0..3 {
        script.extend_from_slice(
            format!("MAIL FROM:<a{i}@example.org>\r\nRCPT TO:<b@example.net>\r\n").as_bytes(),
        );
        script.extend_from_slice(b"RCPT TO:<c@example.net>\r\n");
        script.extend_from_slice(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
        script.extend_from_slice(body.as_bytes());
    }
    script.extend_from_slice(b"MAIL FROM:<d@example.org>\r\nRCPT TO:<e@example.net>\r\nDATA\r\n");
    script.extend_from_slice(body.as_bytes());
    script.extend_from_slice(b".\r\nNOOP\r\nQUIT\r\n");
    script
}

#[test]
fn a_pipelined_batch_gets_the_same_replies_in_one_read_a_few_bytes_or_one_byte_at_a_time() {
    let script = script();
    let whole = run(&script, script.len());
    assert_eq!(whole.accepted, 4, "every message persisted once");
    let count = |reply: &str| whole.replies.matches(reply).count();
    assert_eq!(count("250 2.1.0 Sender OK\r\n"), 4, "{}", whole.replies);
    assert_eq!(count("250 2.1.5 Recipient OK\r\n"), 7);
    assert_eq!(count("250 2.6.0 Queued mail for delivery\r\n"), 4);
    assert!(whole.replies.ends_with(
        "354 Start mail input; end with <CRLF>.<CRLF>\r\n\
         250 2.6.0 Queued mail for delivery\r\n250 2.0.0 OK\r\n\
         221 2.0.0 Service closing transmission channel\r\n"
    ));
    for piece in [1, 7, 100, 1000] {
        assert_eq!(run(&script, piece), whole, "reads of {piece} bytes");
    }
}
