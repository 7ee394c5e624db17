//! Shadow queues: the copies a shadow server (the sending side) holds per primary, with the
//! primary's database id, the heartbeat schedule, failure counts, resubmission and
//! auto-discard (PROTOCOL.md §3, §5, §6).
//!
//! # Life of a copy
//!
//! 1. The primary says 250 to a message sent with `XSHADOW=<shadow id>`: [`ShadowQueues::add_copy`].
//! 2. An XQDISCARD reply names the shadow id: [`ShadowQueues::discard`] drops the copy (the
//!    primary passed the message on).
//! 3. Or the copy is given up on and returned for resubmission: the primary's database id
//!    changed ([`ShadowQueues::observe_database_id`], also checked by `add_copy`), the
//!    primary failed `ceil(resubmit_after / heartbeat_interval)` heartbeats in a row
//!    ([`ShadowQueues::heartbeat_failed`]), or it broke the protocol
//!    ([`ShadowQueues::protocol_breach`]).
//! 4. Or it reaches `auto_discard` age: [`ShadowQueues::expire`] drops it.
//!
//! # Heartbeats
//!
//! While a primary holds copies, a heartbeat is due `heartbeat_interval` after the first copy
//! arrived (queue went from empty to non-empty) or after the last successful contact
//! ([`ShadowQueues::heartbeat_succeeded`]: any session that ended with a good XQDISCARD).
//! [`ShadowQueues::poll_heartbeat`] hands out each due heartbeat once; the caller runs it and
//! answers with `heartbeat_succeeded` or `heartbeat_failed`. After a failure the next slot is
//! one interval after the failed one (fixed rate), so with prompt heartbeats the copies of a
//! dead primary are resubmitted between `resubmit_after` and `resubmit_after +
//! heartbeat_interval` after the last successful contact. A failure reported when no
//! heartbeat of that primary is outstanding or due (say, a normal session that could not
//! connect) is ignored: at most one failure counts per slot, so reporting too often never
//! resubmits early.
//!
//! # Cost
//!
//! Each primary keeps its copies in a deque ordered by arrival time (oldest first), each at a
//! stable position, plus a hash index from shadow id to position. A dropped copy leaves a hole,
//! trimmed at either end of the deque and compacted away once holes outnumber copies. So
//! `add_copy` and each dropped copy cost O(1) amortized; only a copy added *older* than the
//! newest one held (a replay out of order) costs O(n) for n copies of that primary.
//! `poll_timeout`, `poll_heartbeat` and `expire` look at one heartbeat slot and the oldest copy
//! of each primary: O(primaries) per call, plus O(1) per copy `expire` actually drops — never
//! a scan of all copies. Primaries are the configured next hops: few.
//!
//! # Recovery
//!
//! To rebuild from durable records, replay `add_copy` with each copy's recorded time (oldest
//! first) and `discard` for each recorded discard; heartbeats then fall due at once, and the
//! failure count starts again from zero.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::{MessageId, ascii_lowercase};

/// Timers of the shadow side (PROTOCOL.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Longest wait between heartbeats to a primary that holds copies (default 2 min).
    pub heartbeat_interval: Duration,
    /// How long a primary may fail every heartbeat before its copies are resubmitted (3 h).
    pub resubmit_after: Duration,
    /// Lifetime of a shadow copy (default 2 days).
    pub auto_discard: Duration,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_mins(2),
            resubmit_after: Duration::from_hours(3),
            auto_discard: Duration::from_hours(48),
        }
    }
}

impl ShadowConfig {
    /// Consecutive failed heartbeats that resubmit: `ceil(resubmit_after / heartbeat_interval)`, at least 1.
    #[must_use]
    pub fn failure_threshold(&self) -> u64 {
        let interval = self.heartbeat_interval.as_nanos().max(1);
        let threshold = self.resubmit_after.as_nanos().div_ceil(interval).max(1);
        u64::try_from(threshold).unwrap_or(u64::MAX)
    }
}

/// What an XQDISCARD reply did to a primary's queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discarded {
    /// Messages whose copies were dropped, in the order of the ids in the reply.
    pub dropped: Vec<MessageId>,
    /// Ids that matched no copy held for that primary (already gone, or never ours).
    pub unknown: usize,
}

/// What a failed contact did to a primary's heartbeat (see [`ShadowQueues::heartbeat_failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "copies of a primary given up on must be resubmitted"]
pub enum HeartbeatFailure {
    /// No heartbeat of that primary was due or in flight (or it holds no copies): not counted.
    Ignored,
    /// Counted: this many consecutive failures, still below the resubmission threshold.
    Counted {
        /// Consecutive failed heartbeats so far.
        failures: u64,
    },
    /// The threshold is reached: the primary's copies, removed, to be resubmitted.
    Resubmit {
        /// Consecutive failed heartbeats, the last of which reached the threshold.
        failures: u64,
        /// The messages whose copies were held for the primary, oldest first.
        copies: Vec<MessageId>,
    },
}

impl HeartbeatFailure {
    /// The copies to resubmit (empty unless the threshold was reached).
    pub fn into_copies(self) -> Vec<MessageId> {
        match self {
            Self::Resubmit { copies, .. } => copies,
            Self::Ignored | Self::Counted { .. } => Vec::new(),
        }
    }
}

/// One copy held in a shadow queue, as seen by introspection (the `queue` CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldCopy<'a> {
    /// The primary that accepted the message.
    pub primary: &'a str,
    /// The message the copy belongs to.
    pub message: MessageId,
    /// The `XSHADOW=` id the message was sent with.
    pub shadow_id: &'a str,
    /// When the primary accepted it.
    pub added: Instant,
}

impl HeldCopy<'_> {
    /// How long the copy has been held at `now`.
    #[must_use]
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.added)
    }
}

/// Where a primary's heartbeat stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heartbeat {
    /// No copies: no heartbeat.
    Idle,
    /// Copies held; the next heartbeat is due then (`None`: the interval is too large to
    /// represent, so never).
    Waiting(Option<Instant>),
    /// Handed out by `poll_heartbeat` for the slot due then; awaiting its outcome.
    InFlight(Instant),
}

/// Where a copy sits in its primary's [`Arrivals`]; stable while the copy is held.
type Position = u64;

/// The longest shadow id kept inline, without a heap allocation: a hyphenated GUID (what
/// nodes send, 36 bytes), also in braces (38).
const INLINE_ID: usize = 38;

/// A shadow id of at most [`INLINE_ID`] bytes, stored inline (zero-padded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct InlineId {
    len: u8,
    bytes: [u8; INLINE_ID],
}

impl InlineId {
    /// `id` inline, if it is short enough.
    fn new(id: &str) -> Option<Self> {
        let len = u8::try_from(id.len())
            .ok()
            .filter(|&n| usize::from(n) <= INLINE_ID)?;
        let mut bytes = [0; INLINE_ID];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        Some(Self { len, bytes })
    }

    /// The index key: ASCII letters lowered (ids match ASCII case-insensitively).
    fn lowercased(mut self) -> Self {
        self.bytes.make_ascii_lowercase();
        self
    }

    /// The id as given.
    fn as_str(&self) -> &str {
        // Always valid: the bytes of a whole `&str`, zero-padded.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// A copy's shadow id, as given.
#[derive(Debug, Clone)]
enum CopyId {
    /// Short (the common case): inline; indexed in `PrimaryQueue::by_inline_id`.
    Inline(InlineId),
    /// Longer: on the heap; indexed in `PrimaryQueue::by_long_id`.
    Long(Box<str>),
}

impl CopyId {
    /// `id` as stored: inline when short enough.
    fn new(id: &str) -> Self {
        InlineId::new(id).map_or_else(|| Self::Long(id.into()), Self::Inline)
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Inline(id) => id.as_str(),
            Self::Long(id) => id,
        }
    }
}

/// One copy in a primary's queue.
#[derive(Debug, Clone)]
struct Copy {
    message: MessageId,
    shadow_id: CopyId,
}

/// Shadow id -> position of its copy, ASCII case-insensitively.
///
/// Hashes short ids with Fx, not a keyed hasher: its keys are the shadow ids this node
/// generated (random GUIDs), never picked by a peer; a peer only looks ids up (XQDISCARD
/// replies), and a lookup cannot lengthen any probe sequence.
#[derive(Debug, Default)]
struct IdIndex {
    /// Lowercased short shadow id -> position.
    inline: FxHashMap<InlineId, Position>,
    /// Lowercased long shadow id -> position (rare: nodes send GUIDs).
    long: HashMap<String, Position>,
}

impl IdIndex {
    /// Indexes a held copy's id; returns the position it held before, if any.
    fn insert(&mut self, id: &CopyId, at: Position) -> Option<Position> {
        match id {
            CopyId::Inline(id) => self.inline.insert(id.lowercased(), at),
            CopyId::Long(id) => self.long.insert(id.to_ascii_lowercase(), at),
        }
    }

    /// Removes a held copy's id; returns its position.
    fn remove(&mut self, id: &CopyId) -> Option<Position> {
        match id {
            CopyId::Inline(id) => self.inline.remove(&id.lowercased()),
            CopyId::Long(id) => self.long.remove(ascii_lowercase(id).as_ref()),
        }
    }

    /// Removes `id` (as a peer spelled it); returns its position.
    fn remove_str(&mut self, id: &str) -> Option<Position> {
        match InlineId::new(id) {
            Some(id) => self.inline.remove(&id.lowercased()),
            None => self.long.remove(ascii_lowercase(id).as_ref()),
        }
    }

    fn clear(&mut self) {
        self.inline.clear();
        self.long.clear();
    }
}

/// One place in [`Arrivals`]: a copy, or the hole a dropped one left (keeping its time, so
/// that the deque stays sorted).
#[derive(Debug)]
struct Slot {
    added: Instant,
    copy: Option<Copy>,
}

/// A primary's copies by arrival time, oldest first (ties in the order added), each at a
/// stable [`Position`]. The first and the last slot always hold a copy.
#[derive(Debug, Default)]
struct Arrivals {
    slots: VecDeque<Slot>,
    /// The position of `slots[0]`.
    base: Position,
    /// Slots holding a copy.
    live: usize,
}

impl Arrivals {
    fn len(&self) -> usize {
        self.live
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds a copy in time order; returns its position and whether the positions of later
    /// copies moved (only when it is older than the newest copy held).
    fn insert(&mut self, added: Instant, copy: Copy) -> (Position, bool) {
        let slot = Slot {
            added,
            copy: Some(copy),
        };
        self.live += 1;
        match self.slots.back() {
            Some(newest) if newest.added > added => {
                let at = self.slots.partition_point(|s| s.added <= added);
                self.slots.insert(at, slot);
                (self.base + at as Position, true)
            }
            _ => {
                self.slots.push_back(slot);
                (self.base + (self.slots.len() - 1) as Position, false)
            }
        }
    }

    /// The position a copy added at `added` gets if it goes at the back (not older than the newest).
    fn next_append(&self, added: Instant) -> Option<Position> {
        match self.slots.back() {
            Some(newest) if newest.added > added => None,
            _ => Some(self.base + self.slots.len() as Position),
        }
    }

    /// The copy at `at`.
    fn get(&self, at: Position) -> Option<&Copy> {
        let i = usize::try_from(at.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.copy.as_ref()
    }

    /// Removes the copy at `at`, trimming holes at either end.
    fn remove(&mut self, at: Position) -> Option<Copy> {
        let i = usize::try_from(at.checked_sub(self.base)?).ok()?;
        let copy = self.slots.get_mut(i)?.copy.take()?;
        self.live -= 1;
        while self.slots.front().is_some_and(|s| s.copy.is_none()) {
            self.slots.pop_front();
            self.base += 1;
        }
        while self.slots.back().is_some_and(|s| s.copy.is_none()) {
            self.slots.pop_back();
        }
        Some(copy)
    }

    /// The oldest copy, with when it was added.
    fn first(&self) -> Option<(Instant, &Copy)> {
        let slot = self.slots.front()?;
        Some((slot.added, slot.copy.as_ref()?))
    }

    /// Every copy, oldest first, with when it was added and its position.
    fn iter(&self) -> impl Iterator<Item = (Instant, Position, &Copy)> + '_ {
        (self.base..)
            .zip(&self.slots)
            .filter_map(|(at, slot)| Some((slot.added, at, slot.copy.as_ref()?)))
    }

    /// Drops the holes once they outnumber the copies (so they cost O(1) amortized per drop);
    /// says whether positions moved.
    fn compact_if_sparse(&mut self) -> bool {
        if self.slots.len() <= 2 * self.live + 32 {
            return false;
        }
        self.slots.retain(|s| s.copy.is_some());
        true
    }

    /// Every copy's message, oldest first.
    fn into_messages(self) -> impl Iterator<Item = MessageId> {
        self.slots
            .into_iter()
            .filter_map(|slot| Some(slot.copy?.message))
    }
}

/// Everything held for one primary.
#[derive(Debug)]
struct PrimaryQueue {
    database_id: Option<String>,
    copies: Arrivals,
    /// Shadow id -> position in `copies`.
    index: IdIndex,
    heartbeat: Heartbeat,
    failures: u64,
    last_contact: Option<Instant>,
}

impl Default for PrimaryQueue {
    fn default() -> Self {
        Self {
            database_id: None,
            copies: Arrivals::default(),
            index: IdIndex::default(),
            heartbeat: Heartbeat::Idle,
            failures: 0,
            last_contact: None,
        }
    }
}

impl PrimaryQueue {
    /// Removes every copy (oldest first) and returns its message; the heartbeat stops.
    fn take_all(&mut self) -> Vec<MessageId> {
        let copies = std::mem::take(&mut self.copies);
        self.index.clear();
        self.emptied();
        copies.into_messages().collect()
    }

    /// Holds a copy added at `added`; returns the copy it replaces (same id), if any.
    fn add(&mut self, added: Instant, copy: Copy) -> Option<Copy> {
        // The common case, with one hash lookup: a short id not held yet, the newest copy.
        if let CopyId::Inline(id) = &copy.shadow_id
            && let Some(at) = self.copies.next_append(added)
            && let Entry::Vacant(vacant) = self.index.inline.entry(id.lowercased())
        {
            vacant.insert(at);
            self.copies.insert(added, copy);
            return None;
        }
        let replaced = self
            .index
            .remove(&copy.shadow_id)
            .and_then(|at| self.remove_at(at));
        let (at, moved) = self.copies.insert(added, copy);
        if moved {
            self.reindex();
        } else if let Some(copy) = self.copies.get(at) {
            self.index.insert(&copy.shadow_id, at);
        }
        replaced
    }

    /// Removes the copy at `at` (its id must be gone from the index already).
    fn remove_at(&mut self, at: Position) -> Option<Copy> {
        let copy = self.copies.remove(at)?;
        if self.copies.compact_if_sparse() {
            self.reindex();
        }
        Some(copy)
    }

    /// Rebuilds the index after positions moved: O(n).
    fn reindex(&mut self) {
        self.index.clear();
        for (_, at, copy) in self.copies.iter() {
            self.index.insert(&copy.shadow_id, at);
        }
    }

    /// Resets the heartbeat state once the queue holds nothing.
    fn emptied(&mut self) {
        if self.copies.is_empty() {
            self.heartbeat = Heartbeat::Idle;
            self.failures = 0;
        }
    }

    /// Records `database_id`; on a change, returns every copy held under the old one.
    fn observe_database_id(&mut self, database_id: &str) -> Vec<MessageId> {
        match &self.database_id {
            Some(old) if old == database_id => Vec::new(),
            Some(_) => {
                self.database_id = Some(database_id.to_owned());
                self.take_all()
            }
            None => {
                self.database_id = Some(database_id.to_owned());
                Vec::new()
            }
        }
    }

    /// The slot whose outcome a heartbeat report answers: the one in flight, or one due.
    fn outstanding_slot(&self, now: Instant) -> Option<Instant> {
        match self.heartbeat {
            Heartbeat::InFlight(due) => Some(due),
            Heartbeat::Waiting(Some(due)) if due <= now => Some(due),
            Heartbeat::Waiting(_) | Heartbeat::Idle => None,
        }
    }

    /// When the oldest copy reaches auto-discard age.
    fn expiry(&self, auto_discard: Duration) -> Option<Instant> {
        let (added, _) = self.copies.first()?;
        added.checked_add(auto_discard)
    }
}

/// The shadow copies a shadow server holds, per primary, with heartbeats and resubmission.
#[derive(Debug)]
pub struct ShadowQueues {
    config: ShadowConfig,
    threshold: u64,
    primaries: BTreeMap<String, PrimaryQueue>,
}

impl ShadowQueues {
    /// Empty queues with these timers.
    #[must_use]
    pub fn new(config: ShadowConfig) -> Self {
        Self {
            config,
            threshold: config.failure_threshold(),
            primaries: BTreeMap::new(),
        }
    }

    /// The timers these queues run with.
    #[must_use]
    pub fn config(&self) -> &ShadowConfig {
        &self.config
    }

    /// Keeps the copy of `message` that `primary` (database `database_id`) accepted with `XSHADOW=shadow_id`.
    ///
    /// Returns the messages to resubmit now (usually none):
    /// - if `database_id` differs from the one last seen for `primary`, every copy held under
    ///   the old id (exactly as [`observe_database_id`](Self::observe_database_id) does); the
    ///   new copy is then kept under the new id;
    /// - if a copy of another message is already held for `primary` under the same shadow id
    ///   (ids match ASCII case-insensitively, as GUIDs do), that older copy: a discard could no
    ///   longer tell the two apart. The same message under the same id just replaces its copy.
    ///
    /// If the queue was empty, the primary's first heartbeat falls due `heartbeat_interval`
    /// from `now`.
    #[must_use = "copies held under an old database id must be resubmitted"]
    pub fn add_copy(
        &mut self,
        primary: &str,
        message: MessageId,
        shadow_id: &str,
        database_id: &str,
        now: Instant,
    ) -> Vec<MessageId> {
        let interval = self.config.heartbeat_interval;
        // Look up before inserting: the name is copied only for a new primary.
        let queue = match self.primaries.get_mut(primary) {
            Some(queue) => queue,
            None => self.primaries.entry(primary.to_owned()).or_default(),
        };
        let mut resubmit = queue.observe_database_id(database_id);

        let was_empty = queue.copies.is_empty();
        let shadow_id = CopyId::new(shadow_id);
        if let Some(old) = queue.add(now, Copy { message, shadow_id })
            && old.message != message
        {
            resubmit.push(old.message);
        }
        if was_empty {
            queue.heartbeat = Heartbeat::Waiting(now.checked_add(interval));
        }
        resubmit
    }

    /// Records the database id from an XSHADOW reply of `primary`; on a change, returns (and removes) every copy held under the old id.
    ///
    /// The first id seen for a primary is simply recorded. A changed id means the primary
    /// lost its queue, so all its copies go back for resubmission at once.
    #[must_use = "copies held under an old database id must be resubmitted"]
    pub fn observe_database_id(&mut self, primary: &str, database_id: &str) -> Vec<MessageId> {
        match self.primaries.get_mut(primary) {
            Some(queue) => queue.observe_database_id(database_id),
            None => {
                let mut queue = PrimaryQueue::default();
                let none = queue.observe_database_id(database_id);
                self.primaries.insert(primary.to_owned(), queue);
                none
            }
        }
    }

    /// Drops the copies named by an XQDISCARD reply from `primary`; ids matching no copy are counted.
    #[must_use]
    pub fn discard<I>(&mut self, primary: &str, ids: I) -> Discarded
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let ids = ids.into_iter();
        let Some(queue) = self.primaries.get_mut(primary) else {
            return Discarded {
                dropped: Vec::new(),
                unknown: ids.count(),
            };
        };
        let mut outcome = Discarded {
            dropped: Vec::with_capacity(ids.size_hint().0),
            unknown: 0,
        };
        for id in ids {
            match queue
                .index
                .remove_str(id.as_ref())
                .and_then(|at| queue.remove_at(at))
            {
                Some(copy) => outcome.dropped.push(copy.message),
                None => outcome.unknown += 1,
            }
        }
        queue.emptied();
        outcome
    }

    /// The next primary whose heartbeat is due at `now`, handed out once until its outcome is reported.
    ///
    /// Drain it until `None`. Each primary returned must later get `heartbeat_succeeded` or
    /// `heartbeat_failed`; until then it is not returned again. Cost: O(primaries).
    #[must_use]
    pub fn poll_heartbeat(&mut self, now: Instant) -> Option<String> {
        self.primaries.iter_mut().find_map(|(name, queue)| {
            let Heartbeat::Waiting(Some(due)) = queue.heartbeat else {
                return None;
            };
            if due > now {
                return None;
            }
            queue.heartbeat = Heartbeat::InFlight(due);
            Some(name.clone())
        })
    }

    /// A session with `primary` ended with a good XQDISCARD: resets its failure count and schedules the next heartbeat an interval from `now`.
    pub fn heartbeat_succeeded(&mut self, primary: &str, now: Instant) {
        let interval = self.config.heartbeat_interval;
        let Some(queue) = self.primaries.get_mut(primary) else {
            return;
        };
        queue.failures = 0;
        queue.last_contact = Some(now);
        queue.heartbeat = if queue.copies.is_empty() {
            Heartbeat::Idle
        } else {
            Heartbeat::Waiting(now.checked_add(interval))
        };
    }

    /// A heartbeat of `primary` failed; says whether it counted, and hands back (removed) all
    /// its copies when this failure reaches the threshold.
    ///
    /// Counts only when a heartbeat of `primary` is in flight or due at `now`; otherwise it is
    /// [`HeartbeatFailure::Ignored`]. The next heartbeat falls due one interval after the
    /// failed slot (or after `now`, if that is already past). After a resubmission the failure
    /// count starts again from zero.
    pub fn heartbeat_failed(&mut self, primary: &str, now: Instant) -> HeartbeatFailure {
        let interval = self.config.heartbeat_interval;
        let Some(queue) = self.primaries.get_mut(primary) else {
            return HeartbeatFailure::Ignored;
        };
        let Some(slot) = queue.outstanding_slot(now) else {
            return HeartbeatFailure::Ignored;
        };
        queue.failures = queue.failures.saturating_add(1);
        let failures = queue.failures;
        if failures >= self.threshold {
            return HeartbeatFailure::Resubmit {
                failures,
                copies: queue.take_all(),
            };
        }
        let next = match slot.checked_add(interval) {
            Some(next) if next > now => Some(next),
            _ => now.checked_add(interval),
        };
        queue.heartbeat = Heartbeat::Waiting(next);
        HeartbeatFailure::Counted { failures }
    }

    /// `primary` broke the protocol (PROTOCOL.md §3, §5): returns (and removes) all its copies for resubmission.
    #[must_use = "copies of a primary given up on must be resubmitted"]
    pub fn protocol_breach(&mut self, primary: &str) -> Vec<MessageId> {
        self.primaries
            .get_mut(primary)
            .map(PrimaryQueue::take_all)
            .unwrap_or_default()
    }

    /// Forgets `primary` altogether (say, removed from the configuration), returning its copies for resubmission.
    #[must_use = "copies of a forgotten primary must be resubmitted"]
    pub fn forget(&mut self, primary: &str) -> Vec<MessageId> {
        self.primaries
            .remove(primary)
            .map(|mut queue| queue.take_all())
            .unwrap_or_default()
    }

    /// Drops every copy that has reached `auto_discard` age at `now`, oldest first per primary.
    ///
    /// Cost: O(primaries) plus O(1) amortized per dropped copy.
    #[must_use]
    pub fn expire(&mut self, now: Instant) -> Vec<(String, MessageId)> {
        let auto_discard = self.config.auto_discard;
        let mut expired = Vec::new();
        for (name, queue) in &mut self.primaries {
            while let Some((added, oldest)) = queue.copies.first() {
                if now.saturating_duration_since(added) < auto_discard {
                    break;
                }
                let at = queue.index.remove(&oldest.shadow_id);
                let Some(copy) = at.and_then(|at| queue.remove_at(at)) else {
                    break;
                };
                expired.push((name.clone(), copy.message));
            }
            queue.emptied();
        }
        expired
    }

    /// The earliest instant at which a heartbeat falls due or a copy expires; `None` if nothing waits.
    ///
    /// Heartbeats in flight wait for their outcome, not for a time. Cost: O(primaries).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let auto_discard = self.config.auto_discard;
        self.primaries
            .values()
            .flat_map(|queue| {
                let heartbeat = match queue.heartbeat {
                    Heartbeat::Waiting(due) => due,
                    Heartbeat::Idle | Heartbeat::InFlight(_) => None,
                };
                [heartbeat, queue.expiry(auto_discard)]
            })
            .flatten()
            .min()
    }

    /// How many copies are held for `primary`.
    #[must_use]
    pub fn copies(&self, primary: &str) -> usize {
        self.primaries.get(primary).map_or(0, |q| q.copies.len())
    }

    /// Whether any copy is held for `primary`.
    #[must_use]
    pub fn holds_copies(&self, primary: &str) -> bool {
        self.copies(primary) > 0
    }

    /// Every primary known (one that held a copy or reported a database id), by name.
    pub fn primaries(&self) -> impl Iterator<Item = &str> + '_ {
        self.primaries.keys().map(String::as_str)
    }

    /// The database id last seen for `primary`.
    #[must_use]
    pub fn database_id(&self, primary: &str) -> Option<&str> {
        self.primaries.get(primary)?.database_id.as_deref()
    }

    /// Consecutive failed heartbeats of `primary` since its last success (zero while it holds no copies).
    #[must_use]
    pub fn failures(&self, primary: &str) -> u64 {
        self.primaries.get(primary).map_or(0, |q| q.failures)
    }

    /// When `primary` last ended a session with a good XQDISCARD.
    #[must_use]
    pub fn last_contact(&self, primary: &str) -> Option<Instant> {
        self.primaries.get(primary)?.last_contact
    }

    /// When the next heartbeat of `primary` falls due (`None`: no copies, in flight, or never).
    #[must_use]
    pub fn next_heartbeat(&self, primary: &str) -> Option<Instant> {
        match self.primaries.get(primary)?.heartbeat {
            Heartbeat::Waiting(due) => due,
            Heartbeat::Idle | Heartbeat::InFlight(_) => None,
        }
    }

    /// Whether a heartbeat of `primary` was handed out and awaits its outcome.
    #[must_use]
    pub fn is_heartbeat_in_flight(&self, primary: &str) -> bool {
        self.primaries
            .get(primary)
            .is_some_and(|q| matches!(q.heartbeat, Heartbeat::InFlight(_)))
    }

    /// Every copy held, by primary name, oldest first within a primary.
    pub fn held(&self) -> impl Iterator<Item = HeldCopy<'_>> + '_ {
        self.primaries
            .iter()
            .flat_map(|(name, queue)| held_copies(name, queue))
    }

    /// The copies held for `primary`, oldest first.
    pub fn held_for<'a>(&'a self, primary: &str) -> impl Iterator<Item = HeldCopy<'a>> + 'a {
        self.primaries
            .get_key_value(primary)
            .into_iter()
            .flat_map(|(name, queue)| held_copies(name, queue))
    }

    /// How many copies are held in all (O(primaries)).
    #[must_use]
    pub fn total(&self) -> usize {
        self.primaries.values().map(|q| q.copies.len()).sum()
    }

    /// Whether no copy is held at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.primaries.values().all(|q| q.copies.is_empty())
    }
}

impl Default for ShadowQueues {
    fn default() -> Self {
        Self::new(ShadowConfig::default())
    }
}

/// The copies of one primary as introspection views.
fn held_copies<'a>(
    name: &'a str,
    queue: &'a PrimaryQueue,
) -> impl Iterator<Item = HeldCopy<'a>> + 'a {
    queue.copies.iter().map(move |(added, _, copy)| HeldCopy {
        primary: name,
        message: copy.message,
        shadow_id: copy.shadow_id.as_str(),
        added,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: &str = "edge1.example:25";
    const EDGE2: &str = "edge2.example:25";
    const DB: &str = "X+QUj+rOf0ag5pssHT5PUA==";
    const DB2: &str = "AAAAAAAAAAAAAAAAAAAAAA==";

    fn mins(n: u64) -> Duration {
        Duration::from_secs(60 * n)
    }

    fn small_config() -> ShadowConfig {
        ShadowConfig {
            heartbeat_interval: mins(2),
            resubmit_after: mins(5),
            auto_discard: mins(60),
        }
    }

    fn shadow_id(n: u64) -> String {
        format!("3f2504e0-4f89-41d3-9a0c-{n:012x}")
    }

    /// Queues holding copies 1..=n for EDGE, added at `t0`.
    fn with_copies(config: ShadowConfig, n: u64, t0: Instant) -> ShadowQueues {
        let mut queues = ShadowQueues::new(config);
        for i in 1..=n {
            let resubmit = queues.add_copy(EDGE, MessageId(i), &shadow_id(i), DB, t0);
            assert!(resubmit.is_empty());
        }
        queues
    }

    /// Runs every due heartbeat of `primary` as a failure `delay` after it fell due, until
    /// copies come back; returns them and when.
    fn fail_until_resubmitted(
        queues: &mut ShadowQueues,
        primary: &str,
        delay: Duration,
    ) -> (Vec<MessageId>, Instant, u64) {
        for _ in 0..10_000 {
            let due = queues.poll_timeout().expect("a heartbeat is pending");
            assert_eq!(queues.poll_heartbeat(due).as_deref(), Some(primary));
            let failures_before = queues.failures(primary);
            let resubmit = queues.heartbeat_failed(primary, due + delay).into_copies();
            if !resubmit.is_empty() {
                return (resubmit, due + delay, failures_before + 1);
            }
        }
        panic!("never resubmitted");
    }

    #[test]
    fn a_copy_is_held_for_the_primary_that_accepted_it() {
        let t0 = Instant::now();
        let queues = with_copies(ShadowConfig::default(), 2, t0);
        assert_eq!(queues.copies(EDGE), 2);
        assert!(queues.holds_copies(EDGE));
        assert!(!queues.holds_copies(EDGE2));
        assert_eq!(queues.total(), 2);
        assert!(!queues.is_empty());
        assert_eq!(queues.primaries().collect::<Vec<_>>(), [EDGE]);
        assert_eq!(queues.database_id(EDGE), Some(DB));
        assert_eq!(queues.failures(EDGE), 0);
    }

    #[test]
    fn discarded_ids_drop_their_copies() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 3, t0);
        let outcome = queues.discard(EDGE, &[shadow_id(3), shadow_id(1)]);
        assert_eq!(outcome.dropped, [MessageId(3), MessageId(1)]);
        assert_eq!(outcome.unknown, 0);
        assert_eq!(queues.copies(EDGE), 1);
        let left: Vec<_> = queues.held_for(EDGE).map(|c| c.message).collect();
        assert_eq!(left, [MessageId(2)]);
    }

    #[test]
    fn unknown_discard_ids_are_counted_not_errors() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        let outcome = queues.discard(EDGE, &[shadow_id(9), shadow_id(1), shadow_id(1)]);
        assert_eq!(outcome.dropped, [MessageId(1)]);
        assert_eq!(outcome.unknown, 2);
        let outcome = queues.discard(EDGE2, &["whatever"]);
        assert_eq!(
            outcome,
            Discarded {
                dropped: vec![],
                unknown: 1
            }
        );
        let none: &[&str] = &[];
        assert_eq!(queues.discard(EDGE, none), Discarded::default());
    }

    #[test]
    fn discard_ids_match_ascii_case_insensitively() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        let outcome = queues.discard(EDGE, &[shadow_id(1).to_ascii_uppercase()]);
        assert_eq!(outcome.dropped, [MessageId(1)]);
    }

    #[test]
    fn ids_of_any_length_match_case_insensitively_and_keep_their_spelling() {
        let t0 = Instant::now();
        let mut queues = ShadowQueues::new(small_config());
        let braced = "{3F2504E0-4F89-41D3-9A0C-0305E82C3301}";
        let long = format!("Long-{}", "X".repeat(40));
        let ids = ["", "Ab", braced, &braced[..37], &long];
        for (i, id) in (1..).zip(ids) {
            assert!(
                queues
                    .add_copy(EDGE, MessageId(i), id, DB, t0 + mins(i))
                    .is_empty()
            );
        }
        let held: Vec<_> = queues.held_for(EDGE).map(|c| c.shadow_id).collect();
        assert_eq!(held, ids);
        // The same id in another case replaces a copy of the same message, resubmits another's.
        assert!(
            queues
                .add_copy(EDGE, MessageId(5), &long.to_lowercase(), DB, t0 + mins(6))
                .is_empty()
        );
        assert_eq!(
            queues.add_copy(EDGE, MessageId(9), "aB", DB, t0 + mins(7)),
            [MessageId(2)]
        );
        let outcome = queues.discard(EDGE, &[braced.to_lowercase(), long.to_uppercase()]);
        assert_eq!(outcome.dropped, [MessageId(3), MessageId(5)]);
        assert_eq!(
            queues.expire(t0 + mins(61)),
            [(EDGE.to_owned(), MessageId(1))]
        );
        let outcome = queues.discard(EDGE, &["", "AB", &braced[..37]]);
        assert_eq!(outcome.dropped, [MessageId(9), MessageId(4)]);
        assert_eq!(outcome.unknown, 1);
        assert!(queues.is_empty());
    }

    #[test]
    fn holes_left_by_discards_are_compacted_and_every_id_still_finds_its_copy() {
        let t0 = Instant::now();
        let mut queues = with_copies(small_config(), 300, t0);
        // Keep the first, the last and every tenth: holes pile up in the middle.
        let middle: Vec<String> = (2..300).filter(|i| i % 10 != 0).map(shadow_id).collect();
        assert_eq!(queues.discard(EDGE, &middle).dropped.len(), middle.len());
        // One older than all the rest moves every position.
        assert!(
            queues
                .add_copy(EDGE, MessageId(1000), &shadow_id(1000), DB, t0 - mins(1))
                .is_empty()
        );
        let kept: Vec<u64> = [1000, 1]
            .into_iter()
            .chain((10..300).step_by(10))
            .chain([300])
            .collect();
        let held: Vec<u64> = queues.held_for(EDGE).map(|c| c.message.0).collect();
        assert_eq!(held, kept);
        assert_eq!(queues.copies(EDGE), kept.len());
        for id in kept.iter().rev() {
            let outcome = queues.discard(EDGE, &[shadow_id(*id).to_ascii_uppercase()]);
            assert_eq!(outcome.dropped, [MessageId(*id)]);
        }
        assert!(queues.is_empty());
        assert_eq!(queues.poll_timeout(), None);
    }

    #[test]
    fn discards_from_another_primary_do_not_touch_these_copies() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        let outcome = queues.discard(EDGE2, &[shadow_id(1)]);
        assert_eq!(outcome.unknown, 1);
        assert_eq!(queues.copies(EDGE), 1);
    }

    #[test]
    fn a_changed_database_id_resubmits_every_copy_held_under_the_old_id_at_once() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 3, t0);
        assert!(queues.observe_database_id(EDGE, DB).is_empty());
        let resubmit = queues.observe_database_id(EDGE, DB2);
        assert_eq!(resubmit, [MessageId(1), MessageId(2), MessageId(3)]);
        assert_eq!(queues.copies(EDGE), 0);
        assert_eq!(queues.database_id(EDGE), Some(DB2));
        assert_eq!(queues.next_heartbeat(EDGE), None);
        assert!(queues.observe_database_id(EDGE, DB2).is_empty());
    }

    #[test]
    fn the_first_database_id_seen_is_only_recorded() {
        let mut queues = ShadowQueues::default();
        assert!(queues.observe_database_id(EDGE, DB).is_empty());
        assert_eq!(queues.database_id(EDGE), Some(DB));
        assert_eq!(queues.copies(EDGE), 0);
        assert_eq!(queues.poll_timeout(), None);
    }

    #[test]
    fn database_ids_compare_case_sensitively() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        let resubmit = queues.observe_database_id(EDGE, &DB.to_ascii_lowercase());
        assert_eq!(resubmit, [MessageId(1)]);
    }

    #[test]
    fn add_copy_under_a_changed_database_id_returns_the_old_copies_and_keeps_the_new_one() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 2, t0);
        let resubmit = queues.add_copy(EDGE, MessageId(7), &shadow_id(7), DB2, t0 + mins(1));
        assert_eq!(resubmit, [MessageId(1), MessageId(2)]);
        let held: Vec<_> = queues.held().map(|c| c.message).collect();
        assert_eq!(held, [MessageId(7)]);
        assert_eq!(queues.database_id(EDGE), Some(DB2));
        assert_eq!(queues.next_heartbeat(EDGE), Some(t0 + mins(3)));
    }

    #[test]
    fn a_reused_shadow_id_returns_the_displaced_copy() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        let resubmit = queues.add_copy(EDGE, MessageId(2), &shadow_id(1), DB, t0);
        assert_eq!(resubmit, [MessageId(1)]);
        assert_eq!(queues.copies(EDGE), 1);
        let outcome = queues.discard(EDGE, &[shadow_id(1)]);
        assert_eq!(outcome.dropped, [MessageId(2)]);
    }

    #[test]
    fn the_same_message_under_the_same_shadow_id_is_held_once() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        let resubmit = queues.add_copy(EDGE, MessageId(1), &shadow_id(1), DB, t0 + mins(1));
        assert!(resubmit.is_empty());
        assert_eq!(queues.copies(EDGE), 1);
        assert_eq!(queues.next_heartbeat(EDGE), Some(t0 + mins(2)));
    }

    #[test]
    fn the_default_failure_threshold_is_ninety() {
        assert_eq!(ShadowConfig::default().failure_threshold(), 90);
    }

    #[test]
    fn the_failure_threshold_rounds_up() {
        assert_eq!(small_config().failure_threshold(), 3);
        let exact = ShadowConfig {
            resubmit_after: mins(6),
            ..small_config()
        };
        assert_eq!(exact.failure_threshold(), 3);
        let just_over = ShadowConfig {
            resubmit_after: mins(6) + Duration::from_nanos(1),
            ..small_config()
        };
        assert_eq!(just_over.failure_threshold(), 4);
    }

    #[test]
    fn the_failure_threshold_is_at_least_one_and_never_overflows() {
        let zero = ShadowConfig {
            resubmit_after: Duration::ZERO,
            ..small_config()
        };
        assert_eq!(zero.failure_threshold(), 1);
        let no_interval = ShadowConfig {
            heartbeat_interval: Duration::ZERO,
            resubmit_after: Duration::MAX,
            ..small_config()
        };
        assert_eq!(no_interval.failure_threshold(), u64::MAX);
    }

    #[test]
    fn eighty_nine_failed_heartbeats_keep_the_copies_and_the_ninetieth_resubmits() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 2, t0);
        let mut t = t0;
        for n in 1..=89 {
            t += mins(2);
            assert_eq!(queues.poll_timeout(), Some(t));
            assert_eq!(queues.poll_heartbeat(t).as_deref(), Some(EDGE));
            assert_eq!(
                queues.heartbeat_failed(EDGE, t),
                HeartbeatFailure::Counted { failures: n }
            );
            assert_eq!(queues.failures(EDGE), n);
        }
        assert_eq!(queues.copies(EDGE), 2);
        t += mins(2);
        assert_eq!(queues.poll_heartbeat(t).as_deref(), Some(EDGE));
        assert_eq!(
            queues.heartbeat_failed(EDGE, t),
            HeartbeatFailure::Resubmit {
                failures: 90,
                copies: vec![MessageId(1), MessageId(2)]
            }
        );
        assert_eq!(t - t0, Duration::from_secs(3 * 60 * 60));
        assert_eq!(queues.copies(EDGE), 0);
        assert_eq!(queues.failures(EDGE), 0);
        assert_eq!(queues.poll_heartbeat(t + mins(10)), None);
    }

    #[test]
    fn a_successful_heartbeat_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        let mut t = t0;
        for _ in 0..89 {
            t += mins(2);
            assert_eq!(queues.poll_heartbeat(t).as_deref(), Some(EDGE));
            assert!(queues.heartbeat_failed(EDGE, t).into_copies().is_empty());
        }
        t += mins(2);
        assert_eq!(queues.poll_heartbeat(t).as_deref(), Some(EDGE));
        queues.heartbeat_succeeded(EDGE, t);
        assert_eq!(queues.failures(EDGE), 0);
        assert_eq!(queues.last_contact(EDGE), Some(t));
        for _ in 0..89 {
            t += mins(2);
            assert_eq!(queues.poll_heartbeat(t).as_deref(), Some(EDGE));
            assert!(queues.heartbeat_failed(EDGE, t).into_copies().is_empty());
        }
        assert_eq!(queues.copies(EDGE), 1);
        t += mins(2);
        assert_eq!(queues.poll_heartbeat(t).as_deref(), Some(EDGE));
        assert_eq!(
            queues.heartbeat_failed(EDGE, t).into_copies(),
            [MessageId(1)]
        );
    }

    #[test]
    fn a_rounded_up_threshold_resubmits_after_three_failures() {
        let t0 = Instant::now();
        let mut queues = with_copies(small_config(), 1, t0);
        let (resubmit, at, failures) = fail_until_resubmitted(&mut queues, EDGE, Duration::ZERO);
        assert_eq!(resubmit, [MessageId(1)]);
        assert_eq!(failures, 3);
        assert_eq!(at - t0, mins(6));
    }

    #[test]
    fn a_protocol_breach_resubmits_every_copy_at_once() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 3, t0);
        assert!(
            queues
                .add_copy(EDGE2, MessageId(9), &shadow_id(9), DB2, t0)
                .is_empty()
        );
        let resubmit = queues.protocol_breach(EDGE);
        assert_eq!(resubmit, [MessageId(1), MessageId(2), MessageId(3)]);
        assert_eq!(queues.copies(EDGE), 0);
        assert_eq!(queues.copies(EDGE2), 1);
        assert!(queues.protocol_breach(EDGE).is_empty());
        assert!(queues.protocol_breach("nobody").is_empty());
    }

    #[test]
    fn the_first_heartbeat_is_due_one_interval_after_the_first_copy() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        assert!(
            queues
                .add_copy(EDGE, MessageId(2), &shadow_id(2), DB, t0 + mins(1))
                .is_empty()
        );
        assert_eq!(queues.next_heartbeat(EDGE), Some(t0 + mins(2)));
        assert_eq!(
            queues.poll_heartbeat(t0 + mins(2) - Duration::from_nanos(1)),
            None
        );
        assert_eq!(queues.poll_heartbeat(t0 + mins(2)).as_deref(), Some(EDGE));
    }

    #[test]
    fn a_heartbeat_is_due_exactly_one_interval_after_the_last_contact_not_before() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        let contact = t0 + Duration::from_secs(50);
        queues.heartbeat_succeeded(EDGE, contact);
        let due = contact + mins(2);
        assert_eq!(queues.poll_timeout(), Some(due));
        assert_eq!(queues.poll_heartbeat(due - Duration::from_nanos(1)), None);
        assert_eq!(queues.poll_heartbeat(due).as_deref(), Some(EDGE));
    }

    #[test]
    fn no_heartbeat_for_a_primary_without_copies() {
        let t0 = Instant::now();
        let mut queues = ShadowQueues::default();
        assert!(queues.observe_database_id(EDGE, DB).is_empty());
        queues.heartbeat_succeeded(EDGE, t0);
        assert_eq!(queues.poll_timeout(), None);
        assert_eq!(queues.poll_heartbeat(t0 + mins(100)), None);

        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        assert_eq!(queues.discard(EDGE, &[shadow_id(1)]).dropped.len(), 1);
        assert_eq!(queues.next_heartbeat(EDGE), None);
        assert_eq!(queues.poll_heartbeat(t0 + mins(100)), None);
        queues.heartbeat_succeeded(EDGE, t0 + mins(3));
        assert_eq!(queues.poll_timeout(), None);
    }

    #[test]
    fn a_due_heartbeat_is_handed_out_once_until_its_outcome_is_reported() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        assert!(
            queues
                .add_copy(EDGE2, MessageId(2), &shadow_id(2), DB, t0)
                .is_empty()
        );
        let due = t0 + mins(2);
        let mut handed: Vec<_> = std::iter::from_fn(|| queues.poll_heartbeat(due)).collect();
        handed.sort();
        assert_eq!(handed, [EDGE, EDGE2]);
        assert!(queues.is_heartbeat_in_flight(EDGE));
        assert_eq!(queues.poll_heartbeat(due + mins(10)), None);
        // In flight: only the expiry of the copies is left to wait for.
        assert_eq!(
            queues.poll_timeout(),
            Some(t0 + Duration::from_secs(2 * 86_400))
        );
        queues.heartbeat_succeeded(EDGE, due + Duration::from_secs(1));
        assert!(!queues.is_heartbeat_in_flight(EDGE));
        assert_eq!(
            queues.next_heartbeat(EDGE),
            Some(due + Duration::from_secs(121))
        );
    }

    #[test]
    fn failures_outside_a_heartbeat_slot_do_not_count() {
        let t0 = Instant::now();
        let mut queues = with_copies(small_config(), 1, t0);
        for s in 0..100 {
            let outcome = queues.heartbeat_failed(EDGE, t0 + Duration::from_secs(s));
            assert_eq!(outcome, HeartbeatFailure::Ignored);
        }
        assert_eq!(queues.failures(EDGE), 0);
        // Once due, a failure counts even if the heartbeat was not polled first, but only once per slot.
        let due = t0 + mins(2);
        assert_eq!(
            queues.heartbeat_failed(EDGE, due),
            HeartbeatFailure::Counted { failures: 1 }
        );
        assert_eq!(
            queues.heartbeat_failed(EDGE, due),
            HeartbeatFailure::Ignored
        );
        assert_eq!(queues.failures(EDGE), 1);
        assert_eq!(queues.next_heartbeat(EDGE), Some(due + mins(2)));
        assert_eq!(
            queues.heartbeat_failed("nobody", due),
            HeartbeatFailure::Ignored
        );
    }

    #[test]
    fn a_late_failure_schedules_the_next_heartbeat_an_interval_later_without_a_burst() {
        let t0 = Instant::now();
        let mut queues = with_copies(small_config(), 1, t0);
        let due = t0 + mins(2);
        assert_eq!(queues.poll_heartbeat(due).as_deref(), Some(EDGE));
        assert_eq!(
            queues.heartbeat_failed(EDGE, due + mins(5)),
            HeartbeatFailure::Counted { failures: 1 }
        );
        assert_eq!(queues.next_heartbeat(EDGE), Some(due + mins(7)));
    }

    #[test]
    fn a_dead_primary_is_resubmitted_within_one_interval_after_resubmit_after() {
        for config in [ShadowConfig::default(), small_config()] {
            for delay in [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(30),
            ] {
                let t0 = Instant::now();
                let mut queues = with_copies(config, 1, t0);
                let contact = t0 + Duration::from_secs(17);
                queues.heartbeat_succeeded(EDGE, contact);
                let (resubmit, at, _) = fail_until_resubmitted(&mut queues, EDGE, delay);
                assert_eq!(resubmit, [MessageId(1)]);
                let since = at - contact;
                assert!(since >= config.resubmit_after, "{since:?} {config:?}");
                assert!(
                    since <= config.resubmit_after + config.heartbeat_interval,
                    "{since:?} {config:?} {delay:?}"
                );
            }
        }
    }

    #[test]
    fn copies_expire_at_exactly_auto_discard_age() {
        let t0 = Instant::now();
        let mut queues = with_copies(small_config(), 2, t0);
        assert!(
            queues
                .add_copy(EDGE, MessageId(3), &shadow_id(3), DB, t0 + mins(1))
                .is_empty()
        );
        let edge = t0 + mins(60);
        assert_eq!(queues.poll_timeout(), Some(t0 + mins(2)));
        assert!(queues.expire(edge - Duration::from_nanos(1)).is_empty());
        let expired = queues.expire(edge);
        assert_eq!(
            expired,
            [
                (EDGE.to_owned(), MessageId(1)),
                (EDGE.to_owned(), MessageId(2))
            ]
        );
        assert_eq!(queues.copies(EDGE), 1);
        // The dropped ids are gone from the index too.
        assert_eq!(queues.discard(EDGE, &[shadow_id(1)]).unknown, 1);
        assert_eq!(queues.expire(edge + mins(1)).len(), 1);
        assert!(queues.is_empty());
        assert_eq!(queues.poll_timeout(), None);
    }

    #[test]
    fn poll_timeout_is_the_earliest_pending_deadline() {
        let t0 = Instant::now();
        let config = ShadowConfig {
            heartbeat_interval: mins(2),
            resubmit_after: mins(10),
            auto_discard: mins(3),
        };
        let mut queues = ShadowQueues::new(config);
        assert_eq!(queues.poll_timeout(), None);
        assert!(
            queues
                .add_copy(EDGE, MessageId(1), &shadow_id(1), DB, t0)
                .is_empty()
        );
        assert!(
            queues
                .add_copy(EDGE2, MessageId(2), &shadow_id(2), DB, t0 + mins(1))
                .is_empty()
        );
        assert_eq!(queues.poll_timeout(), Some(t0 + mins(2)));
        assert_eq!(queues.poll_heartbeat(t0 + mins(2)).as_deref(), Some(EDGE));
        assert_eq!(
            queues.poll_timeout(),
            Some(t0 + mins(3)),
            "EDGE2's heartbeat"
        );
        queues.heartbeat_succeeded(EDGE, t0 + mins(2));
        assert_eq!(queues.poll_heartbeat(t0 + mins(3)).as_deref(), Some(EDGE2));
        queues.heartbeat_succeeded(EDGE2, t0 + mins(3));
        assert_eq!(
            queues.poll_timeout(),
            Some(t0 + mins(3)),
            "EDGE's copy expires"
        );
        assert_eq!(queues.expire(t0 + mins(3)).len(), 1);
        assert_eq!(
            queues.poll_timeout(),
            Some(t0 + mins(4)),
            "EDGE2's copy expires"
        );
    }

    #[test]
    fn held_copies_report_their_age() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 1, t0);
        assert!(
            queues
                .add_copy(EDGE2, MessageId(2), &shadow_id(2), DB, t0 + mins(1))
                .is_empty()
        );
        let now = t0 + mins(5);
        let held: Vec<_> = queues
            .held()
            .map(|c| (c.primary, c.message, c.shadow_id.to_owned(), c.age(now)))
            .collect();
        assert_eq!(
            held,
            [
                (EDGE, MessageId(1), shadow_id(1), mins(5)),
                (EDGE2, MessageId(2), shadow_id(2), mins(4)),
            ]
        );
        assert_eq!(queues.held_for("nobody").count(), 0);
    }

    #[test]
    fn copies_added_with_an_earlier_time_still_expire_oldest_first() {
        let t0 = Instant::now();
        let mut queues = ShadowQueues::new(small_config());
        assert!(
            queues
                .add_copy(EDGE, MessageId(1), &shadow_id(1), DB, t0 + mins(5))
                .is_empty()
        );
        assert!(
            queues
                .add_copy(EDGE, MessageId(2), &shadow_id(2), DB, t0)
                .is_empty()
        );
        assert_eq!(
            queues.held_for(EDGE).map(|c| c.message).collect::<Vec<_>>(),
            [MessageId(2), MessageId(1)]
        );
        assert_eq!(
            queues.expire(t0 + mins(60)),
            [(EDGE.to_owned(), MessageId(2))]
        );
    }

    #[test]
    fn forgetting_a_primary_returns_its_copies() {
        let t0 = Instant::now();
        let mut queues = with_copies(ShadowConfig::default(), 2, t0);
        assert_eq!(queues.forget(EDGE), [MessageId(1), MessageId(2)]);
        assert_eq!(queues.primaries().count(), 0);
        assert!(queues.forget(EDGE).is_empty());
    }

    #[test]
    fn enormous_timers_never_panic() {
        let t0 = Instant::now();
        let config = ShadowConfig {
            heartbeat_interval: Duration::MAX,
            resubmit_after: Duration::MAX,
            auto_discard: Duration::MAX,
        };
        let mut queues = with_copies(config, 1, t0);
        assert_eq!(queues.poll_timeout(), None);
        assert_eq!(queues.poll_heartbeat(t0 + mins(1_000_000)), None);
        assert!(queues.expire(t0 + mins(1_000_000)).is_empty());
        queues.heartbeat_succeeded(EDGE, t0);
        assert!(queues.heartbeat_failed(EDGE, t0).into_copies().is_empty());
        assert_eq!(config.failure_threshold(), 1);
    }
}
