//! A ClientSession talking to a ServerSession on virtual time: the `SessionPair` harness and
//! the client <-> server behaviours it proves (shadowed delivery, heartbeats, multi-round
//! XQDISCARD, pipelining, BDAT, refusals).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xshadow_core::session::server::CloseReason;
use xshadow_core::session::{
    ClientConfig, ClientEvent, ClientSession, Envelope, OutboundMessage, ReceivedMessage,
    Recipient, ServerConfig, ServerEvent, ServerSession, ShadowOffer, ShadowTag,
};
use xshadow_core::wire::path::{ForwardPath, Mailbox, ReversePath};
use xshadow_core::wire::reply::EnhancedStatus;
use xshadow_core::wire::{MailParams, RcptParams, Reply};

const DBID: &str = "X+QUj+rOf0ag5pssHT5PUA==";
const CONTEXT: &str = "aHViMS5leGFtcGxl";

/// Client and server wired back to back, with a caller on each side that answers decisions:
/// the server side stores every message, accepts XSHADOW and serves discard ids from a
/// ledger; the client side asks for more discard ids while it still holds copies.
struct SessionPair {
    client: ClientSession,
    server: ServerSession,
    now: Instant,
    /// Virtual time each hop of bytes takes.
    latency: Duration,
    /// The edge's pending discard events, oldest first.
    ledger: VecDeque<String>,
    in_doubt: usize,
    /// How many shadow copies the hub holds for this primary.
    copies_held: usize,
    stored: Vec<ReceivedMessage>,
    client_events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
    /// Every byte the client sent.
    c2s: Vec<u8>,
    /// Every byte the server sent.
    s2c: Vec<u8>,
}

impl SessionPair {
    fn new(client: ClientConfig, server: ServerConfig) -> Self {
        let now = Instant::now();
        Self {
            client: ClientSession::new(client, now).expect("valid client config"),
            server: ServerSession::new(Arc::new(server), true, now),
            now,
            latency: Duration::from_millis(10),
            ledger: VecDeque::new(),
            in_doubt: 0,
            copies_held: 0,
            stored: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            c2s: Vec::new(),
            s2c: Vec::new(),
        }
    }

    /// Moves bytes and answers events until both sides are closed. Panics if that takes more
    /// than `max_steps` exchanges: a livelock or a hang, never a pass.
    fn drive_bounded(&mut self, max_steps: usize) {
        for _ in 0..max_steps {
            if self.client.is_closed() && self.server.is_closed() {
                return;
            }
            if !self.step() {
                // Nothing moved: only a timer can make progress.
                let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                let Some(next) = next else {
                    panic!("deadlock: both sides wait and no timer is set");
                };
                self.now = self.now.max(next);
                self.client.handle_timeout(self.now);
                self.server.handle_timeout(self.now);
            }
        }
        panic!("no quiescence after {max_steps} steps (livelock)");
    }

    /// One exchange; returns whether anything happened.
    fn step(&mut self) -> bool {
        let mut moved = false;
        let mut buf = Vec::new();
        if self.client.poll_transmit(&mut buf).is_some() {
            self.now += self.latency;
            self.c2s.extend_from_slice(&buf);
            self.server.handle_input(&buf, self.now);
            moved = true;
        }
        buf.clear();
        if self.server.poll_transmit(&mut buf).is_some() {
            self.now += self.latency;
            self.s2c.extend_from_slice(&buf);
            self.client.handle_input(&buf, self.now);
            moved = true;
        }
        if self.server.is_closed() && !self.client.is_closed() && !moved {
            self.client.handle_close(self.now);
            moved = true;
        }
        if self.client.is_closed() && !self.server.is_closed() && !moved {
            self.server.handle_eof(self.now);
            moved = true;
        }
        while let Some(event) = self.server.poll_event() {
            moved = true;
            let now = self.now;
            match &event {
                ServerEvent::MailFrom => self.server.accept_mail(now).unwrap(),
                ServerEvent::RcptTo => {
                    let refused = match &self.server.pending_recipient().unwrap().to {
                        ForwardPath::Mailbox(m) => m.local_part().starts_with("refused"),
                        ForwardPath::Postmaster => false,
                    };
                    if refused {
                        let r = Reply::new(550, Some(EnhancedStatus::new(5, 1, 1)), "No such user");
                        self.server.reject_rcpt(r, now).unwrap();
                    } else {
                        self.server.accept_rcpt(now).unwrap();
                    }
                }
                ServerEvent::MessageComplete => {
                    self.stored.extend(self.server.take_message());
                    self.server.message_stored(now).unwrap();
                }
                ServerEvent::XShadow { .. } => self.server.accept_xshadow(DBID, now).unwrap(),
                ServerEvent::XqDiscard { .. } => {
                    let ids: Vec<&String> = self.ledger.iter().collect();
                    self.in_doubt = self.server.answer_xqdiscard(&ids, now).unwrap();
                }
                ServerEvent::DiscardsConfirmed { .. } => {
                    self.ledger.drain(..self.in_doubt);
                    self.in_doubt = 0;
                }
                _ => {}
            }
            self.server_events.push(event);
        }
        while let Some(event) = self.client.poll_event() {
            moved = true;
            if let ClientEvent::DiscardIds { ids, more_possible } = &event {
                self.copies_held = self.copies_held.saturating_sub(ids.len());
                if *more_possible {
                    let more = self.copies_held > 0;
                    self.client.discard_more(more, self.now).unwrap();
                }
            }
            self.client_events.push(event);
        }
        moved
    }

    fn wire_c2s(&self) -> String {
        String::from_utf8_lossy(&self.c2s).into_owned()
    }
}

fn client_config(shadow: bool) -> ClientConfig {
    let mut c = ClientConfig::new("hub1.example");
    c.shadow_context = shadow.then(|| CONTEXT.to_owned());
    c
}

fn server_config(shadow: ShadowOffer) -> ServerConfig {
    let mut c = ServerConfig::new("edge1.example");
    c.shadow = shadow;
    c
}

fn message(id: u64, recipients: &[&str], body: &[u8]) -> OutboundMessage {
    OutboundMessage {
        id,
        envelope: Envelope {
            from: ReversePath::Mailbox(Mailbox::new("alice", "example.org")),
            params: MailParams::default(),
            recipients: recipients
                .iter()
                .map(|r| Recipient {
                    to: ForwardPath::Mailbox(Mailbox::new(r, "example.net")),
                    params: RcptParams::default(),
                })
                .collect(),
        }
        .into(),
        body: xshadow_core::Bytes::copy_from_slice(body),
        shadow_id: Some(format!("00000000-0000-4000-8000-{id:012}").into()),
    }
}

fn accepted(events: &[ClientEvent]) -> Vec<(u64, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::MessageAccepted { id, shadowed, .. } => Some((*id, *shadowed)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_shadowed_message_is_accepted_and_tagged_on_both_sides() {
    let mut pair = SessionPair::new(client_config(true), server_config(ShadowOffer::XShadow));
    let now = pair.now;
    pair.client
        .queue_message(message(1, &["bob"], b"Subject: x\r\n\r\nhello\r\n"), now)
        .unwrap();
    pair.client.finish(true, now).unwrap();
    pair.drive_bounded(100);
    assert_eq!(accepted(&pair.client_events), [(1, true)]);
    assert!(pair.client_events.contains(&ClientEvent::ShadowAccepted {
        database_id: DBID.into()
    }));
    assert_eq!(pair.stored.len(), 1);
    assert_eq!(
        pair.stored[0].shadow,
        Some(ShadowTag::Primary {
            context: CONTEXT.into(),
            discard_id: "00000000-0000-4000-8000-000000000001".into()
        })
    );
    assert_eq!(pair.stored[0].body, b"Subject: x\r\n\r\nhello\r\n");
    assert!(
        pair.wire_c2s().contains("XQDISCARD 50\r\n"),
        "a normal session ends with XQDISCARD"
    );
    assert!(
        pair.server_events
            .contains(&ServerEvent::Closed(CloseReason::Quit))
    );
}

#[test]
fn a_heartbeat_session_fetches_discard_ids_and_the_edge_drops_them_after_quit() {
    let mut pair = SessionPair::new(client_config(true), server_config(ShadowOffer::XShadow));
    pair.ledger = ["id-a", "id-b", "id-c"].map(String::from).into();
    pair.copies_held = 3;
    let now = pair.now;
    pair.client.finish(true, now).unwrap();
    pair.drive_bounded(100);
    let ids: Vec<&ClientEvent> = pair
        .client_events
        .iter()
        .filter(|e| matches!(e, ClientEvent::DiscardIds { .. }))
        .collect();
    assert_eq!(
        ids,
        [&ClientEvent::DiscardIds {
            ids: ["id-a", "id-b", "id-c"].into_iter().collect(),
            more_possible: false
        }]
    );
    assert!(pair.ledger.is_empty(), "confirmed by QUIT, dropped");
    let wire = pair.wire_c2s();
    assert!(
        !wire.contains("MAIL"),
        "a heartbeat sends no message: {wire}"
    );
    assert_eq!(
        wire,
        format!("EHLO hub1.example\r\nXSHADOW {CONTEXT}\r\nXQDISCARD 50\r\nQUIT\r\n")
    );
}

#[test]
fn sixty_discard_ids_with_max_fifty_take_two_xqdiscard_commands() {
    let mut pair = SessionPair::new(client_config(true), server_config(ShadowOffer::XShadow));
    pair.ledger = (0..60).map(|i| format!("id-{i:02}")).collect();
    pair.copies_held = 60;
    let now = pair.now;
    pair.client.finish(true, now).unwrap();
    pair.drive_bounded(200);
    assert_eq!(pair.wire_c2s().matches("XQDISCARD 50\r\n").count(), 2);
    let rounds: Vec<(usize, bool)> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::DiscardIds { ids, more_possible } => Some((ids.len(), *more_possible)),
            _ => None,
        })
        .collect();
    assert_eq!(rounds, [(50, true), (10, false)]);
    assert!(pair.ledger.is_empty());
    assert_eq!(pair.copies_held, 0);
}

#[test]
fn the_client_stops_asking_when_it_holds_no_more_copies() {
    let mut pair = SessionPair::new(client_config(true), server_config(ShadowOffer::XShadow));
    pair.ledger = (0..60).map(|i| format!("id-{i:02}")).collect();
    pair.copies_held = 50;
    let now = pair.now;
    pair.client.finish(true, now).unwrap();
    pair.drive_bounded(200);
    assert_eq!(pair.wire_c2s().matches("XQDISCARD").count(), 1);
    assert_eq!(
        pair.ledger.len(),
        10,
        "the rest waits for a later heartbeat"
    );
}

#[test]
fn a_pipelined_batch_of_messages_arrives_intact_over_data_and_over_bdat() {
    for chunking in [false, true] {
        let mut server = server_config(ShadowOffer::XShadow);
        server.chunking = chunking;
        let mut pair = SessionPair::new(client_config(true), server);
        let bodies: Vec<Vec<u8>> = vec![
            b".leading dot\r\n..two dots\r\n".to_vec(),
            b"smuggling attempt\n.\r\nMAIL FROM:<evil@example.org>\r\n".to_vec(),
            b"8-bit \xc3\xa9t\xc3\xa9 and a bare \r inside\r\n".to_vec(),
            [vec![b'x'; 100 * 1024], b"\r\n".to_vec()].concat(),
        ];
        let now = pair.now;
        for (i, body) in bodies.iter().enumerate() {
            pair.client
                .queue_message(message(i as u64, &["bob", "carol"], body), now)
                .unwrap();
        }
        pair.client.finish(true, now).unwrap();
        pair.drive_bounded(500);
        assert_eq!(
            accepted(&pair.client_events),
            [(0, true), (1, true), (2, true), (3, true)]
        );
        let got: Vec<&[u8]> = pair.stored.iter().map(|m| m.body.as_slice()).collect();
        let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        assert!(
            got == bodies,
            "bodies changed in transit (chunking {chunking})"
        );
        assert!(pair.stored.iter().all(|m| m.via_bdat == chunking));
        assert!(pair.stored.iter().all(|m| m.envelope.recipients.len() == 2));
    }
}

#[test]
fn without_xshadow_on_the_edge_messages_go_unshadowed() {
    let mut pair = SessionPair::new(client_config(true), server_config(ShadowOffer::None));
    let now = pair.now;
    pair.client
        .queue_message(message(7, &["bob"], b"hi\r\n"), now)
        .unwrap();
    pair.client.finish(true, now).unwrap();
    pair.drive_bounded(100);
    assert_eq!(accepted(&pair.client_events), [(7, false)]);
    assert!(pair.client_events.contains(&ClientEvent::ShadowNotOffered));
    assert!(
        !pair.wire_c2s().contains("XSHADOW"),
        "no XSHADOW command nor parameter"
    );
    assert_eq!(pair.stored[0].shadow, None);
}

#[test]
fn refused_recipients_are_reported_one_by_one() {
    let mut pair = SessionPair::new(client_config(false), server_config(ShadowOffer::None));
    let now = pair.now;
    pair.client
        .queue_message(message(1, &["bob", "refused-1", "carol"], b"hi\r\n"), now)
        .unwrap();
    pair.client
        .queue_message(message(2, &["refused-2"], b"hi\r\n"), now)
        .unwrap();
    pair.client
        .queue_message(message(3, &["dave"], b"hi\r\n"), now)
        .unwrap();
    pair.client.finish(false, now).unwrap();
    pair.drive_bounded(200);
    let outcomes: Vec<String> = pair
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::MessageAccepted { id, recipients, .. } => Some(format!(
                "{id} accepted, refused {:?}",
                recipients.iter().map(|r| r.index).collect::<Vec<_>>()
            )),
            ClientEvent::MessageFailed { id, permanent, .. } => {
                Some(format!("{id} failed permanent={permanent}"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            "1 accepted, refused [1]",
            "2 failed permanent=true",
            "3 accepted, refused []"
        ]
    );
    assert_eq!(pair.stored.len(), 2);
    assert_eq!(pair.stored[0].envelope.recipients.len(), 2);
}

#[test]
fn an_unresponsive_server_times_the_client_out_in_the_right_phase() {
    let mut pair = SessionPair::new(client_config(false), server_config(ShadowOffer::None));
    let now = pair.now;
    pair.client
        .queue_message(message(1, &["bob"], b"hi\r\n"), now)
        .unwrap();
    // Swallow the greeting: the client waits for it until its greeting timeout.
    let mut sink = Vec::new();
    let _ = pair.server.poll_transmit(&mut sink);
    let deadline = pair.client.poll_timeout().expect("greeting timer");
    assert_eq!(deadline, now + Duration::from_secs(300));
    pair.client.handle_timeout(deadline);
    let mut deferred = false;
    while let Some(e) = pair.client.poll_event() {
        deferred |= matches!(e, ClientEvent::MessageDeferred { id: 1, .. });
    }
    assert!(deferred, "the message is handed back for a retry, not lost");
    assert!(pair.client.is_closed());
}
