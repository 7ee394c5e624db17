//! The discard ledger: the discard events a primary server (the receiving side) keeps per
//! shadow context until the shadow has read them with XQDISCARD (PROTOCOL.md §1, §5, §6).
//!
//! # Life of a discard event
//!
//! 1. The message tagged (context, discard id) was fully handled (delivered, bounced or
//!    expired): [`DiscardLedger::record`] queues the event as *pending*.
//! 2. An XQDISCARD of that context takes up to `max` of the oldest pending events:
//!    [`DiscardLedger::take_for_reply`]. They are now *in doubt* for that connection, and no
//!    other connection gets them.
//! 3. The client's next command on that connection proves the reply arrived:
//!    [`DiscardLedger::confirm`] drops them for good (returned, so the caller persists the
//!    deletion). If the connection dies first, [`DiscardLedger::connection_lost`] puts them
//!    back to pending, in their original place: ahead of newer events.
//! 4. Or, never fetched, a pending event reaches `auto_discard` age: [`DiscardLedger::expire`]
//!    drops it (the shadow has auto-discarded its copy by then). Expired events are also left
//!    out of replies.
//!
//! Contexts match ASCII case-insensitively; the ledger reports a context with the spelling
//! it first saw, so a store that persists deletions must also match contexts
//! case-insensitively. Discard ids are opaque and kept as given.
//!
//! # Cost
//!
//! Each context keeps its pending events in a deque ordered by (recorded time, arrival), so the
//! oldest is at the front. Events are recorded in time order and taken oldest first, so
//! `record`, `take_for_reply` and `confirm` cost O(1) per event (plus O(log n) per context
//! lookup); an event placed between others — restored out of order, returned by
//! `connection_lost` behind older ones, or taken past an expired prefix — costs a binary search
//! and a shift of the shorter side, O(n) at worst for n events of the context (events returned
//! go near the front, so that shift is short). `poll_timeout` and `expire` look at the oldest
//! event of each context: O(contexts) per call plus O(1) per expired event. A context with no
//! events is removed, so contexts are the shadows with work outstanding: few.
//!
//! # Recovery
//!
//! Rebuild with [`DiscardLedger::restore`] for every event recorded and not yet confirmed or
//! expired; events in doubt when the node stopped are simply pending again.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::{ascii_lowercase, lowercase_into};

/// Ordering key of an event: recorded time, then a ledger-wide sequence number.
type EventKey = (Instant, u64);

/// Emptied in-doubt lists kept for reuse, at most this many.
const SPARE_LISTS: usize = 8;

/// The events of one shadow context.
#[derive(Debug)]
struct ContextEvents {
    /// The lowercased context: its key in `DiscardLedger::contexts`, shared with its events in doubt.
    key: Arc<str>,
    /// The spelling the context was first recorded with (shared by every event it reports).
    spelling: Arc<str>,
    /// Discard ids not yet handed out (or handed out on a connection that died), oldest first.
    pending: VecDeque<(EventKey, Arc<str>)>,
    /// How many of this context's events are in doubt on some connection.
    in_doubt: usize,
}

impl ContextEvents {
    /// No events yet, under `key` (lowercased) first spelled `spelling`.
    fn new(key: Arc<str>, spelling: &str) -> Self {
        Self {
            key,
            spelling: spelling.into(),
            pending: VecDeque::new(),
            in_doubt: 0,
        }
    }

    /// Adds a pending event in its place (usually the back).
    fn insert(&mut self, key: EventKey, discard_id: Arc<str>) {
        match self.pending.back() {
            Some((newest, _)) if *newest > key => {
                let at = self.pending.partition_point(|(k, _)| *k < key);
                self.pending.insert(at, (key, discard_id));
            }
            _ => self.pending.push_back((key, discard_id)),
        }
    }

    /// Whether the context has nothing left, pending or in doubt.
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.in_doubt == 0
    }
}

/// One event handed out on a connection and not yet confirmed.
#[derive(Debug)]
struct InDoubt {
    /// Lowercased context.
    context: Arc<str>,
    key: EventKey,
    discard_id: Arc<str>,
}

/// Discard events per shadow context, with the events of unconfirmed XQDISCARD replies kept in doubt.
///
/// Contexts and discard ids come from peers, so contexts live in an ordered map (no hash a
/// peer could flood); connections are the node's own numbers and hash with Fx.
#[derive(Debug)]
pub struct DiscardLedger {
    auto_discard: Duration,
    /// Lowercased context -> its events.
    contexts: BTreeMap<Arc<str>, ContextEvents>,
    /// Connection -> the events its last unconfirmed replies carried, in reply order.
    in_doubt: FxHashMap<u64, Vec<InDoubt>>,
    /// Emptied in-doubt lists, reused for the next replies.
    spare: Vec<Vec<InDoubt>>,
    /// Scratch space to lowercase a context without allocating.
    lowered: String,
    next_seq: u64,
}

impl DiscardLedger {
    /// An empty ledger whose events live at most `auto_discard` unfetched.
    #[must_use]
    pub fn new(auto_discard: Duration) -> Self {
        Self {
            auto_discard,
            contexts: BTreeMap::new(),
            in_doubt: FxHashMap::default(),
            spare: Vec::new(),
            lowered: String::new(),
            next_seq: 0,
        }
    }

    /// How long an event may stay unfetched.
    #[must_use]
    pub fn auto_discard(&self) -> Duration {
        self.auto_discard
    }

    /// Queues a discard event: the message tagged (`context`, `discard_id`) was fully handled at `now`.
    pub fn record(&mut self, context: &str, discard_id: &str, now: Instant) {
        self.record_shared(context, discard_id.into(), now);
    }

    /// [`record`](Self::record) of a discard id the caller already shares.
    pub fn record_shared(&mut self, context: &str, discard_id: Arc<str>, now: Instant) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let key = lowercase_into(context, &mut self.lowered);
        let events = match self.contexts.get_mut(key) {
            Some(events) => events,
            None => {
                let key: Arc<str> = key.into();
                self.contexts
                    .entry(Arc::clone(&key))
                    .or_insert_with(|| ContextEvents::new(key, context))
            }
        };
        events.insert((now, seq), discard_id);
    }

    /// Rebuilds an event from a durable record (as pending), keeping its original time.
    pub fn restore(&mut self, context: &str, discard_id: &str, recorded_at: Instant) {
        self.record(context, discard_id, recorded_at);
    }

    /// The ids for an XQDISCARD reply on connection `conn`: up to `max` oldest pending, unexpired events of `context`, now in doubt.
    ///
    /// Events in doubt on any connection are not returned again until that connection is
    /// lost. An empty result means the reply is `251 OK, no discard events`. Before taking a
    /// second batch on the same connection, call [`confirm`](Self::confirm): the client's
    /// new command proves the previous reply arrived.
    #[must_use]
    pub fn take_for_reply(
        &mut self,
        context: &str,
        max: usize,
        conn: u64,
        now: Instant,
    ) -> Vec<Arc<str>> {
        let key = lowercase_into(context, &mut self.lowered);
        let Some(events) = self.contexts.get_mut(key) else {
            return Vec::new();
        };
        // Skip the expired prefix: `expire` reports those, and the shadow has dropped its copy.
        let cutoff = now.checked_sub(self.auto_discard);
        let fresh = |key: &EventKey| cutoff.is_none_or(|cutoff| key.0 > cutoff);
        let mut ids = Vec::new();
        let mut doubt = self
            .in_doubt
            .remove(&conn)
            .unwrap_or_else(|| self.spare.pop().unwrap_or_default());
        while ids.len() < max {
            let event = match events.pending.front() {
                // The common case: nothing expired in front.
                Some((oldest, _)) if fresh(oldest) => events.pending.pop_front(),
                Some(_) => {
                    let first_fresh = events.pending.partition_point(|(k, _)| !fresh(k));
                    events.pending.remove(first_fresh)
                }
                None => None,
            };
            let Some((key, discard_id)) = event else {
                break;
            };
            if ids.is_empty() {
                ids.reserve_exact(max.min(events.pending.len() + 1));
            }
            ids.push(Arc::clone(&discard_id));
            events.in_doubt += 1;
            doubt.push(InDoubt {
                context: Arc::clone(&events.key),
                key,
                discard_id,
            });
        }
        if doubt.is_empty() {
            self.reuse(doubt);
        } else {
            self.in_doubt.insert(conn, doubt);
        }
        ids
    }

    /// The client's next command on `conn` proved its replies arrived: drops their events for good and returns them as (context, discard id).
    #[must_use = "confirmed events must be deleted from durable storage"]
    pub fn confirm(&mut self, conn: u64) -> Vec<(Arc<str>, Arc<str>)> {
        let Some(mut doubt) = self.in_doubt.remove(&conn) else {
            return Vec::new();
        };
        let mut confirmed = Vec::with_capacity(doubt.len());
        for event in doubt.drain(..) {
            let spelling = match self.contexts.get_mut(&event.context) {
                Some(events) => {
                    events.in_doubt = events.in_doubt.saturating_sub(1);
                    let spelling = Arc::clone(&events.spelling);
                    if events.is_empty() {
                        self.contexts.remove(&event.context);
                    }
                    spelling
                }
                None => Arc::clone(&event.context),
            };
            confirmed.push((spelling, event.discard_id));
        }
        self.reuse(doubt);
        confirmed
    }

    /// Connection `conn` ended before its last reply was confirmed: its events in doubt become pending again, in their original order.
    pub fn connection_lost(&mut self, conn: u64) {
        let Some(mut doubt) = self.in_doubt.remove(&conn) else {
            return;
        };
        for event in doubt.drain(..) {
            let events = match self.contexts.get_mut(&event.context) {
                Some(events) => {
                    events.in_doubt = events.in_doubt.saturating_sub(1);
                    events
                }
                None => self
                    .contexts
                    .entry(Arc::clone(&event.context))
                    .or_insert_with(|| {
                        ContextEvents::new(Arc::clone(&event.context), &event.context)
                    }),
            };
            events.insert(event.key, event.discard_id);
        }
        self.reuse(doubt);
    }

    /// Keeps an emptied in-doubt list for the next reply (a few, not too large).
    fn reuse(&mut self, list: Vec<InDoubt>) {
        if self.spare.len() < SPARE_LISTS && list.capacity() <= 1024 {
            self.spare.push(list);
        }
    }

    /// Drops every pending event that has reached `auto_discard` age at `now`; returns them as (context, discard id).
    ///
    /// Events in doubt are left alone: they are confirmed, or pending again, soon. Cost:
    /// O(contexts) plus O(log n) per expired event.
    #[must_use = "expired events must be deleted from durable storage"]
    pub fn expire(&mut self, now: Instant) -> Vec<(Arc<str>, Arc<str>)> {
        let Some(cutoff) = now.checked_sub(self.auto_discard) else {
            return Vec::new();
        };
        let mut expired = Vec::new();
        self.contexts.retain(|_, events| {
            while let Some(((recorded_at, _), _)) = events.pending.front() {
                if *recorded_at > cutoff {
                    break;
                }
                if let Some((_, discard_id)) = events.pending.pop_front() {
                    expired.push((Arc::clone(&events.spelling), discard_id));
                }
            }
            !events.is_empty()
        });
        expired
    }

    /// When the oldest pending event reaches `auto_discard` age; `None` if nothing is pending.
    ///
    /// Cost: O(contexts).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.contexts
            .values()
            .filter_map(|events| events.pending.front())
            .filter_map(|&((recorded_at, _), _)| recorded_at.checked_add(self.auto_discard))
            .min()
    }

    /// How many events of `context` wait to be handed out (not counting those in doubt).
    #[must_use]
    pub fn pending(&self, context: &str) -> usize {
        self.contexts
            .get(ascii_lowercase(context).as_ref())
            .map_or(0, |events| events.pending.len())
    }

    /// How many events of `context` are in doubt on some connection.
    #[must_use]
    pub fn in_doubt(&self, context: &str) -> usize {
        self.contexts
            .get(ascii_lowercase(context).as_ref())
            .map_or(0, |events| events.in_doubt)
    }

    /// How many events are in doubt on connection `conn`.
    #[must_use]
    pub fn in_doubt_on(&self, conn: u64) -> usize {
        self.in_doubt.get(&conn).map_or(0, Vec::len)
    }

    /// The contexts with events (pending or in doubt), in the spelling first seen, ordered case-insensitively.
    pub fn contexts(&self) -> impl Iterator<Item = &str> + '_ {
        self.contexts.values().map(|events| &*events.spelling)
    }

    /// How many events the ledger holds in all, pending and in doubt (O(contexts)).
    #[must_use]
    pub fn total(&self) -> usize {
        self.contexts
            .values()
            .map(|events| events.pending.len() + events.in_doubt)
            .sum()
    }

    /// Whether the ledger holds no event at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "aHViMS5leGFtcGxl";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ledger_with(ids: &[&str], t0: Instant) -> DiscardLedger {
        let mut ledger = DiscardLedger::new(secs(100));
        for (i, id) in ids.iter().enumerate() {
            ledger.record(HUB, id, t0 + secs(i as u64));
        }
        ledger
    }

    fn pairs(context: &str, ids: &[&str]) -> Vec<(Arc<str>, Arc<str>)> {
        ids.iter()
            .map(|id| (context.into(), (*id).into()))
            .collect()
    }

    /// Ids as text, to compare with literals.
    fn texts(ids: Vec<Arc<str>>) -> Vec<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn events_are_handed_out_oldest_first_and_at_most_max() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b", "c"], t0);
        assert_eq!(texts(ledger.take_for_reply(HUB, 2, 1, t0)), ["a", "b"]);
        assert_eq!(ledger.pending(HUB), 1);
        assert_eq!(ledger.in_doubt(HUB), 2);
        assert_eq!(ledger.in_doubt_on(1), 2);
        assert_eq!(ledger.total(), 3);
    }

    #[test]
    fn an_unknown_context_or_an_empty_one_yields_nothing() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a"], t0);
        assert!(texts(ledger.take_for_reply("someone-else", 50, 1, t0)).is_empty());
        assert!(texts(ledger.take_for_reply(HUB, 0, 1, t0)).is_empty());
        assert_eq!(texts(ledger.take_for_reply(HUB, 50, 1, t0)), ["a"]);
        assert!(texts(ledger.take_for_reply(HUB, 50, 1, t0)).is_empty());
        assert_eq!(ledger.in_doubt_on(1), 1);
    }

    #[test]
    fn a_second_connection_of_the_same_context_does_not_get_the_first_ones_ids() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b", "c"], t0);
        assert_eq!(texts(ledger.take_for_reply(HUB, 2, 1, t0)), ["a", "b"]);
        assert_eq!(texts(ledger.take_for_reply(HUB, 50, 2, t0)), ["c"]);
        assert!(texts(ledger.take_for_reply(HUB, 50, 3, t0)).is_empty());
    }

    #[test]
    fn confirmed_events_are_dropped_for_good() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b"], t0);
        assert_eq!(texts(ledger.take_for_reply(HUB, 50, 1, t0)), ["a", "b"]);
        assert_eq!(ledger.confirm(1), pairs(HUB, &["a", "b"]));
        assert!(ledger.confirm(1).is_empty());
        ledger.connection_lost(1);
        assert_eq!(ledger.total(), 0);
        assert!(ledger.is_empty());
        assert_eq!(ledger.contexts().count(), 0);
        assert!(texts(ledger.take_for_reply(HUB, 50, 2, t0)).is_empty());
    }

    #[test]
    fn confirming_one_connection_leaves_the_other_in_doubt() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b"], t0);
        assert_eq!(texts(ledger.take_for_reply(HUB, 1, 1, t0)), ["a"]);
        assert_eq!(texts(ledger.take_for_reply(HUB, 1, 2, t0)), ["b"]);
        assert_eq!(ledger.confirm(2), pairs(HUB, &["b"]));
        assert_eq!(ledger.in_doubt(HUB), 1);
        assert_eq!(ledger.contexts().collect::<Vec<_>>(), [HUB]);
    }

    #[test]
    fn in_doubt_events_return_when_the_connection_dies() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b", "c"], t0);
        assert_eq!(texts(ledger.take_for_reply(HUB, 2, 1, t0)), ["a", "b"]);
        ledger.record(HUB, "d", t0 + secs(10));
        ledger.connection_lost(1);
        assert_eq!(ledger.in_doubt(HUB), 0);
        assert_eq!(ledger.pending(HUB), 4);
        assert!(ledger.confirm(1).is_empty());
        assert_eq!(
            texts(ledger.take_for_reply(HUB, 50, 2, t0)),
            ["a", "b", "c", "d"]
        );
    }

    #[test]
    fn events_of_two_lost_connections_return_in_their_original_order() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b", "c", "d"], t0);
        assert_eq!(texts(ledger.take_for_reply(HUB, 2, 1, t0)), ["a", "b"]);
        assert_eq!(texts(ledger.take_for_reply(HUB, 1, 2, t0)), ["c"]);
        ledger.record(HUB, "e", t0 + secs(10));
        ledger.connection_lost(2);
        assert_eq!(texts(ledger.take_for_reply(HUB, 1, 3, t0)), ["c"]);
        ledger.connection_lost(3);
        ledger.connection_lost(1);
        assert_eq!(
            texts(ledger.take_for_reply(HUB, 50, 4, t0)),
            ["a", "b", "c", "d", "e"]
        );
    }

    #[test]
    fn a_second_batch_on_one_connection_after_confirm_continues_where_the_first_ended() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b", "c"], t0);
        assert_eq!(texts(ledger.take_for_reply(HUB, 2, 1, t0)), ["a", "b"]);
        assert_eq!(ledger.confirm(1).len(), 2);
        assert_eq!(texts(ledger.take_for_reply(HUB, 2, 1, t0)), ["c"]);
        assert_eq!(ledger.confirm(1), pairs(HUB, &["c"]));
        assert!(ledger.is_empty());
    }

    #[test]
    fn contexts_match_ascii_case_insensitively_and_keep_their_first_spelling() {
        let t0 = Instant::now();
        let mut ledger = DiscardLedger::new(secs(100));
        ledger.record("Hub1.Example", "a", t0);
        ledger.record("HUB1.EXAMPLE", "b", t0);
        ledger.record("hub2", "c", t0);
        assert_eq!(ledger.pending("hub1.example"), 2);
        assert_eq!(
            ledger.contexts().collect::<Vec<_>>(),
            ["Hub1.Example", "hub2"]
        );
        assert_eq!(
            texts(ledger.take_for_reply("hUB1.eXAMPLE", 50, 1, t0)),
            ["a", "b"]
        );
        assert_eq!(ledger.confirm(1), pairs("Hub1.Example", &["a", "b"]));
        assert_eq!(ledger.pending("HUB2"), 1);
    }

    #[test]
    fn one_connection_may_hold_events_of_two_contexts() {
        let t0 = Instant::now();
        let mut ledger = DiscardLedger::new(secs(100));
        ledger.record("one", "a", t0);
        ledger.record("two", "b", t0);
        assert_eq!(texts(ledger.take_for_reply("one", 50, 1, t0)), ["a"]);
        assert_eq!(texts(ledger.take_for_reply("two", 50, 1, t0)), ["b"]);
        ledger.connection_lost(1);
        assert_eq!(ledger.pending("one"), 1);
        assert_eq!(ledger.pending("two"), 1);
    }

    #[test]
    fn pending_events_expire_at_exactly_auto_discard_age() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b", "c"], t0);
        assert_eq!(ledger.poll_timeout(), Some(t0 + secs(100)));
        assert!(
            ledger
                .expire(t0 + secs(100) - Duration::from_nanos(1))
                .is_empty()
        );
        assert_eq!(ledger.expire(t0 + secs(101)), pairs(HUB, &["a", "b"]));
        assert_eq!(ledger.poll_timeout(), Some(t0 + secs(102)));
        assert_eq!(ledger.expire(t0 + secs(102)), pairs(HUB, &["c"]));
        assert_eq!(ledger.poll_timeout(), None);
        assert!(ledger.is_empty());
    }

    #[test]
    fn expired_events_are_left_out_of_replies() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a", "b", "c"], t0);
        assert_eq!(
            texts(ledger.take_for_reply(HUB, 50, 1, t0 + secs(101))),
            ["c"]
        );
        assert_eq!(ledger.expire(t0 + secs(101)), pairs(HUB, &["a", "b"]));
    }

    #[test]
    fn events_in_doubt_do_not_expire_until_they_are_pending_again() {
        let t0 = Instant::now();
        let mut ledger = ledger_with(&["a"], t0);
        assert_eq!(texts(ledger.take_for_reply(HUB, 50, 1, t0)), ["a"]);
        assert_eq!(ledger.poll_timeout(), None);
        assert!(ledger.expire(t0 + secs(500)).is_empty());
        ledger.connection_lost(1);
        assert_eq!(ledger.poll_timeout(), Some(t0 + secs(100)));
        assert_eq!(ledger.expire(t0 + secs(500)), pairs(HUB, &["a"]));
    }

    #[test]
    fn poll_timeout_is_the_oldest_pending_event_over_all_contexts() {
        let t0 = Instant::now();
        let mut ledger = DiscardLedger::new(secs(100));
        assert_eq!(ledger.poll_timeout(), None);
        ledger.record("late", "a", t0 + secs(5));
        ledger.record("early", "b", t0 + secs(3));
        ledger.record("early", "c", t0 + secs(4));
        assert_eq!(ledger.poll_timeout(), Some(t0 + secs(103)));
        assert_eq!(texts(ledger.take_for_reply("early", 1, 1, t0)), ["b"]);
        assert_eq!(ledger.poll_timeout(), Some(t0 + secs(104)));
    }

    #[test]
    fn restored_events_are_pending_in_recorded_order() {
        let t0 = Instant::now();
        let mut ledger = DiscardLedger::new(secs(100));
        ledger.restore(HUB, "b", t0 + secs(2));
        ledger.restore(HUB, "a", t0 + secs(1));
        assert_eq!(
            texts(ledger.take_for_reply(HUB, 50, 1, t0 + secs(2))),
            ["a", "b"]
        );
        assert_eq!(ledger.auto_discard(), secs(100));
    }

    #[test]
    fn an_enormous_auto_discard_never_panics() {
        let t0 = Instant::now();
        let mut ledger = DiscardLedger::new(Duration::MAX);
        ledger.record(HUB, "a", t0);
        assert_eq!(ledger.poll_timeout(), None);
        assert!(ledger.expire(t0 + secs(1_000_000)).is_empty());
        assert_eq!(
            texts(ledger.take_for_reply(HUB, 50, 1, t0 + secs(1_000_000))),
            ["a"]
        );
    }

    mod interleavings {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        const CONTEXTS: [&str; 4] = ["Hub1.example", "hub1.EXAMPLE", "hub2", "HUB3"];
        const CONNS: u64 = 3;
        const AUTO_DISCARD: Duration = Duration::from_millis(50);

        #[derive(Debug, Clone)]
        enum Op {
            Record(usize),
            Take(usize, usize, u64),
            Confirm(u64),
            Lose(u64),
            Advance(u64),
            Expire,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..CONTEXTS.len()).prop_map(Op::Record),
                3 => (0..CONTEXTS.len(), 0..4usize, 0..CONNS)
                    .prop_map(|(c, max, conn)| Op::Take(c, max, conn)),
                2 => (0..CONNS).prop_map(Op::Confirm),
                2 => (0..CONNS).prop_map(Op::Lose),
                1 => (0..20u64).prop_map(Op::Advance),
                1 => Just(Op::Expire),
            ]
        }

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum State {
            Pending,
            InDoubt(u64),
            Confirmed,
            Expired,
        }

        /// The model: every event ever recorded, in record order.
        struct ModelEvent {
            context: String,
            id: String,
            at: Instant,
            state: State,
        }

        fn finish(v: &[(String, String)], finished: &mut HashMap<String, usize>) {
            for (_, id) in v {
                *finished.entry(id.clone()).or_default() += 1;
            }
        }

        fn owned(v: Vec<(Arc<str>, Arc<str>)>) -> Vec<(String, String)> {
            v.into_iter()
                .map(|(c, id)| (c.to_string(), id.to_string()))
                .collect()
        }

        fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
            for (context, _) in &mut v {
                context.make_ascii_lowercase();
            }
            v.sort();
            v
        }

        proptest! {
            #[test]
            fn every_recorded_id_is_confirmed_or_expired_exactly_once_or_still_held(
                ops in proptest::collection::vec(op(), 0..80)
            ) {
                let t0 = Instant::now();
                let mut now = t0;
                let mut ledger = DiscardLedger::new(AUTO_DISCARD);
                let mut model: Vec<ModelEvent> = Vec::new();
                let mut finished: HashMap<String, usize> = HashMap::new();

                for op in ops {
                    match op {
                        Op::Record(c) => {
                            let id = format!("id-{}", model.len());
                            ledger.record(CONTEXTS[c], &id, now);
                            model.push(ModelEvent {
                                context: CONTEXTS[c].to_ascii_lowercase(),
                                id,
                                at: now,
                                state: State::Pending,
                            });
                        }
                        Op::Take(c, max, conn) => {
                            let got = texts(ledger.take_for_reply(CONTEXTS[c], max, conn, now));
                            let key = CONTEXTS[c].to_ascii_lowercase();
                            let expected: Vec<usize> = model
                                .iter()
                                .enumerate()
                                .filter(|(_, e)| {
                                    e.context == key
                                        && e.state == State::Pending
                                        && now - e.at < AUTO_DISCARD
                                })
                                .map(|(i, _)| i)
                                .take(max)
                                .collect();
                            let expected_ids: Vec<&str> =
                                expected.iter().map(|&i| model[i].id.as_str()).collect();
                            prop_assert_eq!(&got, &expected_ids);
                            for i in expected {
                                model[i].state = State::InDoubt(conn);
                            }
                        }
                        Op::Confirm(conn) => {
                            let got = owned(ledger.confirm(conn));
                            finish(&got, &mut finished);
                            let mut expected = Vec::new();
                            for e in &mut model {
                                if e.state == State::InDoubt(conn) {
                                    e.state = State::Confirmed;
                                    expected.push((e.context.clone(), e.id.clone()));
                                }
                            }
                            prop_assert_eq!(sorted(got), sorted(expected));
                        }
                        Op::Lose(conn) => {
                            ledger.connection_lost(conn);
                            for e in &mut model {
                                if e.state == State::InDoubt(conn) {
                                    e.state = State::Pending;
                                }
                            }
                        }
                        Op::Advance(ms) => now += Duration::from_millis(ms),
                        Op::Expire => {
                            let got = owned(ledger.expire(now));
                            finish(&got, &mut finished);
                            let mut expected = Vec::new();
                            for e in &mut model {
                                if e.state == State::Pending && now - e.at >= AUTO_DISCARD {
                                    e.state = State::Expired;
                                    expected.push((e.context.clone(), e.id.clone()));
                                }
                            }
                            prop_assert_eq!(sorted(got), sorted(expected));
                        }
                    }
                    let held = model
                        .iter()
                        .filter(|e| matches!(e.state, State::Pending | State::InDoubt(_)))
                        .count();
                    prop_assert_eq!(ledger.total(), held);
                    for conn in 0..CONNS {
                        let in_doubt = model
                            .iter()
                            .filter(|e| e.state == State::InDoubt(conn))
                            .count();
                        prop_assert_eq!(ledger.in_doubt_on(conn), in_doubt);
                    }
                }

                // Eventually: every connection ends, a last reply takes everything, its client confirms.
                for conn in 0..CONNS {
                    ledger.connection_lost(conn);
                }
                for context in CONTEXTS {
                    let _ = texts(ledger.take_for_reply(context, usize::MAX, 99, now));
                }
                let last = owned(ledger.confirm(99));
                finish(&last, &mut finished);
                let expired = owned(ledger.expire(now));
                finish(&expired, &mut finished);
                prop_assert!(ledger.is_empty());
                prop_assert_eq!(ledger.poll_timeout(), None);
                prop_assert_eq!(finished.len(), model.len());
                for e in &model {
                    prop_assert_eq!(finished.get(&e.id).copied(), Some(1), "{}", e.id);
                }
            }
        }
    }
}
