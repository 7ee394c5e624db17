//! A hub with two sessions to one edge, driven by hand: the edge's XQDISCARD reply on one
//! connection can reach the hub before the 250 of that very message on the other connection.
//! The hub must not keep a copy nobody will ever report again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use xshadow_core::node::{ConnId, Input, Node, NodeConfig, NodeEvent, Output};
use xshadow_core::shadow::MessageId;

mod support;

const DATABASE_ID: &str = "X+QUj+rOf0ag5pssHT5PUA==";

struct Hub {
    node: Node,
    now: Instant,
    /// Bytes the hub wrote, per connection, not yet looked at.
    sent: BTreeMap<ConnId, Vec<u8>>,
    connects: Vec<ConnId>,
    events: Vec<NodeEvent>,
    closed: Vec<ConnId>,
    /// Answer every Persist at once (else they wait in `unsynced`).
    sync: bool,
    unsynced: Vec<u64>,
}

impl Hub {
    fn new() -> Self {
        let mut config = NodeConfig::new("hub.example");
        config.next_hops = vec!["edge".into()];
        config.shadow_next_hops = true;
        config.max_messages_per_session = 1;
        config.session_linger = Duration::ZERO;
        config.max_ack_delay = Duration::ZERO;
        let now = Instant::now();
        let mut hub = Self {
            node: Node::new(config, 5, now, 1_796_400_103_000),
            now,
            sent: BTreeMap::new(),
            connects: Vec::new(),
            events: Vec::new(),
            closed: Vec::new(),
            sync: true,
            unsynced: Vec::new(),
        };
        hub.drain();
        hub
    }

    /// Drains every output; answers every Persist at once.
    fn drain(&mut self) {
        loop {
            let mut synced = Vec::new();
            while let Some(out) = self.node.poll_output() {
                match out {
                    Output::Transmit { conn, data } => {
                        self.sent.entry(conn).or_default().extend(data);
                    }
                    Output::Connect { conn, .. } => self.connects.push(conn),
                    Output::Persist { token, .. } => synced.push(token),
                    Output::Event(e) => self.events.push(e),
                    Output::Close(conn) => self.closed.push(conn),
                }
            }
            if !self.sync {
                self.unsynced.append(&mut synced);
            }
            if synced.is_empty() {
                return;
            }
            for token in synced {
                self.node.handle_input(Input::Persisted(token), self.now);
            }
        }
    }

    fn input(&mut self, input: Input<'_>) {
        self.now += Duration::from_millis(1);
        self.node.handle_input(input, self.now);
        self.drain();
    }

    /// The edge answers `reply` on `conn`; returns what the hub wrote back.
    fn reply(&mut self, conn: ConnId, reply: &str) -> String {
        self.input(Input::Received(conn, reply.as_bytes()));
        let written = self.sent.remove(&conn).unwrap_or_default();
        String::from_utf8(written).expect("the hub writes text here")
    }

    fn submit(&mut self, to: &str) -> MessageId {
        let envelope = support::envelope(to);
        self.now += Duration::from_millis(1);
        let id = self
            .node
            .submit(envelope, b"Subject: race\r\n\r\nbody\r\n", self.now);
        self.drain();
        id
    }

    /// Connects `conn` and takes it through greeting, EHLO, XSHADOW and one pipelined
    /// transaction up to the end of the body; returns the message's `XSHADOW=` id.
    fn send_up_to_the_final_reply(&mut self, conn: ConnId) -> String {
        self.input(Input::Connected(conn));
        assert_eq!(
            self.reply(conn, "220 edge ESMTP\r\n"),
            "EHLO hub.example\r\n"
        );
        let xshadow = self.reply(conn, "250-edge\r\n250-PIPELINING\r\n250 XSHADOW\r\n");
        assert!(xshadow.starts_with("XSHADOW "), "{xshadow}");
        let mail = self.reply(conn, &format!("250 {DATABASE_ID}\r\n"));
        let id = mail
            .split("XSHADOW=")
            .nth(1)
            .and_then(|rest| rest.split([' ', '\r']).next())
            .expect("MAIL carries XSHADOW=")
            .to_owned();
        let body = self.reply(conn, "250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 Go ahead\r\n");
        assert!(body.ends_with("\r\n.\r\n"), "{body}");
        id
    }
}

#[test]
fn a_discard_that_outruns_its_messages_250_on_another_connection_leaves_no_copy_behind() {
    let mut hub = Hub::new();
    let m1 = hub.submit("bob");
    let m2 = hub.submit("carol");
    let [a, b] = hub.connects[..] else {
        panic!("one session per message: {:?}", hub.connects);
    };
    let id_a = hub.send_up_to_the_final_reply(a);
    let id_b = hub.send_up_to_the_final_reply(b);

    // B's message is taken; B has nothing more and asks for discards. The edge has already
    // passed A's message on, so its id comes back here, before A's 250 reached the hub.
    assert_eq!(hub.reply(b, "250 2.6.0 Queued\r\n"), "XQDISCARD 50\r\n");
    assert_eq!(
        hub.reply(b, &format!("250 {}\r\n", id_a.to_uppercase())),
        "QUIT\r\n"
    );
    hub.reply(b, "221 2.0.0 Bye\r\n");
    assert_eq!(hub.node.shadow_queues().copies("edge"), 1, "B's copy");

    // Now A's 250 arrives: the edge is done with that message already.
    assert_eq!(hub.reply(a, "250 2.6.0 Queued\r\n"), "XQDISCARD 50\r\n");
    assert_eq!(
        hub.node.shadow_queues().copies("edge"),
        1,
        "no copy kept for A's message"
    );
    let discarded = |hub: &Hub, id: MessageId| {
        hub.events
            .iter()
            .any(|e| matches!(e, NodeEvent::Discarded { id: d, .. } if *d == id))
    };
    let (a_msg, b_msg) = if discarded(&hub, m1) {
        (m1, m2)
    } else {
        (m2, m1)
    };
    assert!(discarded(&hub, a_msg), "A's message is reported discarded");
    assert!(!discarded(&hub, b_msg));

    // A's own XQDISCARD then brings B's id: nothing is left.
    assert_eq!(hub.reply(a, &format!("250 {id_b}\r\n")), "QUIT\r\n");
    hub.reply(a, "221 2.0.0 Bye\r\n");
    assert_eq!(hub.node.shadow_queues().total(), 0);
    assert!(discarded(&hub, b_msg));
    assert_eq!(hub.node.stats().queued + hub.node.stats().in_flight, 0);
}

#[test]
fn a_primary_that_hangs_up_while_the_discards_are_being_synced_is_closed_at_once() {
    let mut hub = Hub::new();
    hub.submit("bob");
    let [a] = hub.connects[..] else {
        panic!("one session: {:?}", hub.connects);
    };
    let id = hub.send_up_to_the_final_reply(a);
    assert_eq!(hub.reply(a, "250 2.6.0 Queued\r\n"), "XQDISCARD 50\r\n");
    // The copy is dropped; QUIT waits until that is durable...
    hub.sync = false;
    assert_eq!(hub.reply(a, &format!("250 {id}\r\n")), "");
    assert_eq!(hub.unsynced.len(), 1);
    // ...but the edge hangs up first: nothing held can go out any more.
    hub.input(Input::Closed(a));
    assert_eq!(hub.closed, [a], "the node closes its end at once");
    assert_eq!(hub.node.stats().connections, 0);
    hub.sync = true;
    for token in std::mem::take(&mut hub.unsynced) {
        hub.input(Input::Persisted(token));
    }
    assert_eq!(hub.node.shadow_queues().total(), 0);
    assert_eq!(hub.node.stats().queued + hub.node.stats().in_flight, 0);
}

#[test]
fn a_local_submission_without_recipients_is_dropped_with_an_event_not_retried() {
    let mut hub = Hub::new();
    let envelope = support::envelope_to::<&str>(&[]);
    let id = hub
        .node
        .submit(envelope, b"Subject: nobody\r\n\r\n", hub.now);
    hub.drain();
    assert!(hub.connects.is_empty(), "nothing to send");
    assert!(
        hub.events
            .iter()
            .any(|e| matches!(e, NodeEvent::Bounced { id: b, bounce: None, .. } if *b == id))
    );
    assert_eq!(hub.node.stats().queued, 0);
    assert_eq!(hub.node.poll_timeout(), None, "no retry is scheduled");
}
