//! Watch fan-out.
//!
//! Each gRPC Watch call is one stream with a bounded queue of responses,
//! bounded both in messages ([`STREAM_BUFFER`]) and in bytes
//! ([`STREAM_BYTES`]). A watcher is either *synced*, receiving each new
//! revision live, or *behind*, catching up from the keyspace's history.
//!
//! Writers never wait on watchers:
//! - Publishing finds the watchers of each changed key in an interval index
//!   ([`index`]), so its cost follows the matching watchers only, not all
//!   of them.
//! - When a stream's queue is full, in messages or bytes, the watcher falls
//!   behind instead: it is put on its stream's `lagging` list, and the
//!   stream's reader replays the gap from history once it has drained what
//!   was queued.
//! - Replay happens in the reader, in slices bounded by revisions and bytes
//!   ([`CATCH_UP_REVS`], [`CATCH_UP_BYTES`]), and never under the hub lock
//!   that every acknowledgement needs: the reader picks a watcher and its
//!   `from` under a short hub lock, reads the slice under the state read
//!   lock alone, then re-takes the hub lock to advance the watcher.
//!
//! No event is lost or doubled at the seams because, while a watcher is
//! behind, publishing skips it, and only its stream's reader (one task)
//! moves it forward. The advance is committed only if the watcher is still
//! the one picked (same `serial`, so not canceled and re-created) and still
//! behind at the same `from`; it turns synced only when the slice reached
//! the visible revision under the hub lock, which publishing also holds.
//! Otherwise it stays behind from the slice's end. A watcher's queued
//! responses (its `created`, its live events from before it fell behind)
//! always go out before its replay: catch-up starts only on an empty queue.

mod index;

use crate::Shared;
use crate::keyspace::{EventLimit, OwnedRange};
use bytes::Bytes;
use index::{End, Index};
use prost::Message;
use roster_api::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchResponse, watch_create_request::FilterType};
use roster_api::mvccpb::{Event, event::EventType};
use roster_api::range::KeyRange;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{Notify, mpsc};

/// Responses queued per stream before its watchers fall behind.
const STREAM_BUFFER: usize = 256;
/// Encoded bytes of responses queued per stream before its watchers fall
/// behind. One response larger than this still goes out, alone.
pub(crate) const STREAM_BYTES: usize = 4 << 20;

/// A queued response with its encoded size, boxed: the queue allocates its
/// slots 32 at a time, up front, and a registry holds one queue per watch
/// stream (one per registered instance), so each slot is kept to a pointer.
type Queued = Box<(WatchResponse, usize)>;
/// Revisions per catch-up response at most, as in etcd.
const CATCH_UP_REVS: usize = 1000;
/// Bytes per catch-up response, about; a larger revision still goes whole.
/// A response is encoded in one go on a runtime worker, so this bounds how
/// long a replay holds one (1 MiB took tens of milliseconds in a debug
/// build).
const CATCH_UP_BYTES: usize = 256 << 10;
/// Bytes of events read per hold of the state lock while building one.
const CATCH_UP_PIECE: usize = 64 << 10;
/// Empty catch-up slices read in one go before the reader lets others run.
const CATCH_UP_EMPTY_SLICES: usize = 64;
/// Watchers unindexed per hub lock when a stream closes, so that closing a
/// stream of 100,000 watchers does not hold writers up.
const DROP_CHUNK: usize = 1024;

const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// A watcher across all streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Wid {
    stream: u64,
    id: i64,
}

#[derive(Default)]
pub(crate) struct Hub {
    /// The durable revision; events up to here have been published.
    pub visible: i64,
    next_stream: u64,
    next_serial: u64,
    streams: HashMap<u64, Slot>,
    index: Index<Wid>,
    watchers: usize,
    /// Reused by `publish`: (watcher, event) pairs of one revision.
    scratch: Vec<(Wid, usize)>,
}

struct Slot {
    tx: mpsc::Sender<Queued>,
    wake: Arc<Notify>,
    /// Encoded bytes in `tx`'s queue; the reader subtracts what it takes.
    queued: Arc<AtomicUsize>,
    watchers: HashMap<i64, Watcher>,
    /// Announced watchers that are behind, in the order they fell behind.
    /// May also hold ids that have since been canceled or caught up; the
    /// reader skips those.
    lagging: VecDeque<i64>,
    next_id: i64,
}

struct Watcher {
    range: OwnedRange,
    shape: Shape,
    progress_notify: bool,
    /// Live events below this revision are not for this watcher.
    min_rev: i64,
    /// False until the `created` response is queued.
    announced: bool,
    /// `Some(rev)`: behind, replaying history from `rev`.
    behind: Option<i64>,
    /// Unique per hub: tells this watcher from a later one with its id.
    serial: u64,
}

/// What a watcher keeps of an event.
#[derive(Debug, Clone, Copy)]
struct Shape {
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision: rev, ..Default::default() })
}

// === impl Shape ===

impl Shape {
    /// The event as this watcher sees it; the caller has checked the key.
    fn apply(self, ev: &Event) -> Option<Event> {
        self.wants(ev).then(|| self.trim(ev.clone()))
    }

    /// [`Shape::apply`] on an event of the caller's own, with no copy.
    fn apply_owned(self, ev: Event) -> Option<Event> {
        self.wants(&ev).then(|| self.trim(ev))
    }

    fn wants(self, ev: &Event) -> bool {
        let is_put = ev.r#type == EventType::Put as i32;
        ev.kv.is_some() && !((is_put && self.no_put) || (!is_put && self.no_delete))
    }

    fn trim(self, mut ev: Event) -> Event {
        if !self.prev_kv {
            ev.prev_kv = None;
        }
        ev
    }
}

// === impl Hub ===

impl Hub {
    pub fn new(visible: i64) -> Self {
        Hub { visible, ..Default::default() }
    }

    /// Delivers one revision's events to the synced watchers of their keys.
    /// Never blocks; costs one index lookup per event plus the matches.
    pub fn publish(&mut self, rev: i64, events: &[Event]) {
        if self.index.is_empty() {
            return;
        }
        let mut hits = std::mem::take(&mut self.scratch);
        for (i, ev) in events.iter().enumerate() {
            if let Some(kv) = &ev.kv {
                self.index.for_each_match(&kv.key, |w| hits.push((w, i)));
            }
        }
        // Stable: each watcher's events stay in the revision's order.
        hits.sort_by_key(|h| h.0);
        let mut rest = &hits[..];
        while let Some(&(wid, _)) = rest.first() {
            let n = rest.iter().take_while(|h| h.0 == wid).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            self.deliver(rev, wid, group.iter().map(|&(_, i)| &events[i]));
        }
        hits.clear();
        if hits.capacity() > 4096 {
            hits = Vec::new();
        }
        self.scratch = hits;
    }

    /// Queues one watcher's response for `rev`, or puts it behind.
    fn deliver<'a>(&mut self, rev: i64, wid: Wid, evs: impl Iterator<Item = &'a Event>) {
        let Some(slot) = self.streams.get_mut(&wid.stream) else { return };
        let Some(w) = slot.watchers.get_mut(&wid.id) else { return };
        if !w.announced || w.behind.is_some() || rev < w.min_rev {
            return;
        }
        let events: Vec<Event> = evs.filter_map(|e| w.shape.apply(e)).collect();
        debug_assert!(
            events.iter().all(|e| e.kv.as_ref().is_some_and(|kv| w.range.contains(&kv.key))),
            "the index matched {wid:?}"
        );
        if events.is_empty() {
            return;
        }
        let resp = WatchResponse { header: header(rev), watch_id: wid.id, events, ..Default::default() };
        let size = resp.encoded_len();
        let queued = slot.queued.load(Ordering::Acquire);
        if queued == 0 || queued.saturating_add(size) <= STREAM_BYTES {
            // Counted before it can be taken, so the count never underflows.
            slot.queued.fetch_add(size, Ordering::AcqRel);
            match slot.tx.try_send(Box::new((resp, size))) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.queued.fetch_sub(size, Ordering::AcqRel);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    slot.queued.fetch_sub(size, Ordering::AcqRel);
                    return;
                }
            }
        }
        w.behind = Some(rev);
        slot.lagging.push_back(wid.id);
        slot.wake.notify_one();
    }

    /// Sends an empty response to synced watchers that asked for progress.
    pub fn progress_notify(&mut self) {
        let rev = self.visible;
        for slot in self.streams.values_mut() {
            for (id, w) in &slot.watchers {
                if w.announced && w.behind.is_none() && w.progress_notify {
                    let resp = WatchResponse { header: header(rev), watch_id: *id, ..Default::default() };
                    let _ = slot.tx.try_send(Box::new((resp, 0)));
                }
            }
        }
    }

    pub fn watchers(&self) -> usize {
        self.watchers
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    fn index_watcher(&mut self, wid: Wid, range: &OwnedRange) {
        match KeyRange::new(&range.key, &range.end) {
            KeyRange::Single(_) => self.index.insert_key(range.key.clone(), wid),
            KeyRange::From(_) => self.index.insert_range(range.key.clone(), End::Unbounded, wid),
            KeyRange::Between(..) => self.index.insert_range(range.key.clone(), End::Key(range.end.clone()), wid),
        }
    }

    fn unindex_watcher(&mut self, wid: Wid, range: &OwnedRange) {
        match KeyRange::new(&range.key, &range.end) {
            KeyRange::Single(k) => self.index.remove_key(k, wid),
            _ => self.index.remove_range(&range.key, wid),
        }
    }

    /// Removes a watcher; false when there was none.
    fn remove_watcher(&mut self, stream: u64, id: i64) -> bool {
        let Some(w) = self.streams.get_mut(&stream).and_then(|s| s.watchers.remove(&id)) else { return false };
        self.unindex_watcher(Wid { stream, id }, &w.range);
        self.watchers -= 1;
        true
    }
}

/// Opens a stream: the control half and the response half.
pub(crate) fn open(shared: &Arc<Shared>) -> (WatchControl, WatchEvents) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let wake = Arc::new(Notify::new());
    let queued = Arc::new(AtomicUsize::new(0));
    let id = {
        let mut hub = shared.hub.lock();
        hub.next_stream += 1;
        let id = hub.next_stream;
        let slot = Slot {
            tx: tx.clone(),
            wake: wake.clone(),
            queued: queued.clone(),
            watchers: HashMap::new(),
            lagging: VecDeque::new(),
            next_id: 0,
        };
        hub.streams.insert(id, slot);
        id
    };
    let control = WatchControl { inner: Arc::new(ControlInner { shared: shared.clone(), stream: id, tx }) };
    let events = WatchEvents { shared: shared.clone(), stream: id, rx, wake, queued, building: None };
    (control, events)
}

/// Creates and cancels watchers on one stream. Every response (created,
/// canceled, progress, events) comes out of the paired [`WatchEvents`], in
/// order. Dropping the last clone closes the stream.
#[derive(Clone)]
pub struct WatchControl {
    inner: Arc<ControlInner>,
}

struct ControlInner {
    shared: Arc<Shared>,
    stream: u64,
    tx: mpsc::Sender<Queued>,
}

impl Drop for ControlInner {
    fn drop(&mut self) {
        // Out of the map first, so publishing skips the stream at once; then
        // out of the index a chunk per lock.
        let Some(slot) = self.shared.hub.lock().streams.remove(&self.stream) else { return };
        let watchers: Vec<(i64, OwnedRange)> = slot.watchers.into_iter().map(|(id, w)| (id, w.range)).collect();
        for chunk in watchers.chunks(DROP_CHUNK) {
            let mut hub = self.shared.hub.lock();
            for (id, range) in chunk {
                hub.unindex_watcher(Wid { stream: self.stream, id: *id }, range);
            }
            hub.watchers -= chunk.len();
        }
    }
}

// === impl WatchControl ===

impl WatchControl {
    /// Registers a watcher; answers `created` (or `created` + `canceled`
    /// with etcd's reason when the request is refused).
    pub async fn create(&self, r: WatchCreateRequest) {
        let key = if r.key.is_empty() { Bytes::from_static(b"\0") } else { r.key.clone() };
        let end = r.range_end.clone();
        let inner = &self.inner;
        let (id, visible, refused) = {
            let mut guard = inner.shared.hub.lock();
            let hub = &mut *guard;
            let visible = hub.visible;
            let Some(slot) = hub.streams.get_mut(&inner.stream) else { return };
            let refused = if !end.is_empty() && &end[..] != b"\0" && key >= end {
                Some(ERR_EMPTY_RANGE)
            } else if r.watch_id != 0 && slot.watchers.contains_key(&r.watch_id) {
                Some(ERR_DUPLICATE_ID)
            } else {
                None
            };
            let id = match refused {
                Some(_) => -1,
                None if r.watch_id != 0 => r.watch_id,
                None => {
                    while slot.watchers.contains_key(&slot.next_id) {
                        slot.next_id += 1;
                    }
                    slot.next_id += 1;
                    slot.next_id - 1
                }
            };
            if refused.is_none() {
                let filters = |f: FilterType| r.filters.contains(&(f as i32));
                let start = if r.start_revision == 0 { visible + 1 } else { r.start_revision };
                let range = OwnedRange { key, end };
                hub.next_serial += 1;
                let w = Watcher {
                    range: range.clone(),
                    shape: Shape {
                        no_put: filters(FilterType::Noput),
                        no_delete: filters(FilterType::Nodelete),
                        prev_kv: r.prev_kv,
                    },
                    progress_notify: r.progress_notify,
                    min_rev: start,
                    announced: false,
                    behind: Some(start),
                    serial: hub.next_serial,
                };
                slot.watchers.insert(id, w);
                hub.watchers += 1;
                hub.index_watcher(Wid { stream: inner.stream, id }, &range);
            }
            (id, visible, refused)
        };
        let created = WatchResponse {
            header: header(visible),
            watch_id: id,
            created: true,
            canceled: refused.is_some(),
            cancel_reason: refused.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        if inner.tx.send(Box::new((created, 0))).await.is_err() || refused.is_some() {
            return;
        }
        // Now events may flow; the reader replays anything from `start` on.
        let mut hub = inner.shared.hub.lock();
        let visible = hub.visible;
        let Some(slot) = hub.streams.get_mut(&inner.stream) else { return };
        if let Some(w) = slot.watchers.get_mut(&id).filter(|w| !w.announced) {
            w.announced = true;
            if w.min_rev > visible {
                w.behind = None;
            } else {
                slot.lagging.push_back(id);
                slot.wake.notify_one();
            }
        }
    }

    /// Cancels a watcher. Unknown ids are ignored, as etcd does.
    pub async fn cancel(&self, watch_id: i64) {
        let inner = &self.inner;
        let (existed, rev) = {
            let mut hub = inner.shared.hub.lock();
            (hub.remove_watcher(inner.stream, watch_id), hub.visible)
        };
        if existed {
            let resp = WatchResponse { header: header(rev), watch_id, canceled: true, ..Default::default() };
            let _ = inner.tx.send(Box::new((resp, 0))).await;
        }
    }

    /// Answers a progress request with the current revision.
    pub async fn progress(&self) {
        let rev = self.inner.shared.hub.lock().visible;
        let resp = WatchResponse { header: header(rev), watch_id: -1, ..Default::default() };
        let _ = self.inner.tx.send(Box::new((resp, 0))).await;
    }
}

/// The response half of a watch stream.
pub struct WatchEvents {
    shared: Arc<Shared>,
    stream: u64,
    rx: mpsc::Receiver<Queued>,
    wake: Arc<Notify>,
    queued: Arc<AtomicUsize>,
    /// The catch-up slice being read, between pieces.
    building: Option<Building>,
}

/// A catch-up slice part read: the watcher, what was read, where to go on.
struct Building {
    pick: Pick,
    events: Vec<Event>,
    from: i64,
    bytes: usize,
}

/// A watcher picked for one catch-up slice, copied out of the hub.
struct Pick {
    id: i64,
    serial: u64,
    from: i64,
    to: i64,
    range: OwnedRange,
    shape: Shape,
}

/// What one slice read from history.
enum Slice {
    Events(Vec<Event>, i64),
    Compacted(i64),
}

fn take(queued: &AtomicUsize, (resp, size): (WatchResponse, usize)) -> (WatchResponse, usize) {
    queued.fetch_sub(size, Ordering::AcqRel);
    (resp, size)
}

// === impl WatchEvents ===

impl WatchEvents {
    /// Encoded bytes of events a stream queues before its watchers fall
    /// behind and catch up from history instead.
    pub const QUEUE_BYTES: usize = STREAM_BYTES;

    /// The next response; `None` once the control half is dropped and
    /// everything queued was delivered.
    pub async fn next(&mut self) -> Option<WatchResponse> {
        self.next_sized().await.map(|(r, _)| r)
    }

    /// [`WatchEvents::next`] with the response's encoded size, which the
    /// stream has already worked out, for a sender that bounds bytes.
    pub async fn next_sized(&mut self) -> Option<(WatchResponse, usize)> {
        loop {
            match self.rx.try_recv() {
                Ok(r) => return Some(take(&self.queued, *r)),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if let Some(r) = self.catch_up().await {
                let size = r.encoded_len();
                return Some((r, size));
            }
            tokio::select! {
                r = self.rx.recv() => return r.map(|r| take(&self.queued, *r)),
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Encoded bytes of the responses queued for this stream now.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Replays one slice of history for a watcher that is behind. Returns a
    /// response when there was something to send; `None` when nothing is
    /// behind, or the queue must be drained first.
    async fn catch_up(&mut self) -> Option<WatchResponse> {
        for _ in 0..CATCH_UP_EMPTY_SLICES {
            if self.building.is_none() {
                let pick = self.pick()?;
                self.building = Some(Building { from: pick.from, pick, events: Vec::new(), bytes: 0 });
            }
            let (pick, slice) = self.read_slice().await;
            if let Some(resp) = self.advance(&pick, slice) {
                return Some(resp);
            }
        }
        // Many empty slices in a row: come back after other tasks ran.
        self.wake.notify_one();
        None
    }

    /// Finishes the slice in [`WatchEvents::building`]: one response's worth
    /// of history, read in pieces of about [`CATCH_UP_PIECE`] bytes, each
    /// under its own hold of the state read lock, so that a writer waits
    /// for one piece at most, and with a yield between pieces, so that
    /// building a large response never holds a runtime worker that others'
    /// requests wait for. The slice lives in `self`, so a caller that drops
    /// `next` at a yield (a `select!`) loses nothing: the next call goes on
    /// from there. A compaction that overtakes the reader between pieces
    /// ends the slice with the whole revisions read so far (the next slice
    /// then sees it).
    async fn read_slice(&mut self) -> (Pick, Slice) {
        loop {
            let b = self.building.as_mut().expect("a slice is being built");
            let (piece, covered) = {
                let st = self.shared.state.read();
                let compact = st.compact_rev;
                if b.from < compact {
                    let b = self.building.take().expect("checked");
                    if b.from == b.pick.from {
                        return (b.pick, Slice::Compacted(compact));
                    }
                    return (b.pick, Slice::Events(b.events, b.from - 1));
                }
                let revs = CATCH_UP_REVS - usize::try_from(b.from - b.pick.from).unwrap_or(0);
                let limit =
                    EventLimit { revs, bytes: CATCH_UP_PIECE.min(CATCH_UP_BYTES.saturating_sub(b.bytes)).max(1) };
                st.kv.events(&b.pick.range, b.from, b.pick.to, b.pick.shape.prev_kv, compact, limit)
            };
            b.bytes += piece.iter().map(Message::encoded_len).sum::<usize>();
            let shape = b.pick.shape;
            b.events.extend(piece.into_iter().filter_map(|e| shape.apply_owned(e)));
            b.from = covered + 1;
            let revs_left = usize::try_from(b.from - b.pick.from).is_ok_and(|n| n < CATCH_UP_REVS);
            if covered >= b.pick.to || b.bytes >= CATCH_UP_BYTES || !revs_left {
                let b = self.building.take().expect("checked");
                return (b.pick, Slice::Events(b.events, b.from - 1));
            }
            tokio::task::yield_now().await;
        }
    }

    /// Under a short hub lock: the next watcher behind, with where it is.
    fn pick(&mut self) -> Option<Pick> {
        let mut hub = self.shared.hub.lock();
        let visible = hub.visible;
        let slot = hub.streams.get_mut(&self.stream)?;
        // Queued responses go first. Checked under the hub lock: a watcher
        // is announced, or put behind, only after its earlier responses
        // were queued, under this lock.
        if !self.rx.is_empty() {
            return None;
        }
        loop {
            let id = slot.lagging.pop_front()?;
            let Some(w) = slot.watchers.get_mut(&id) else { continue };
            let (true, Some(from)) = (w.announced, w.behind) else { continue };
            if from > visible {
                w.behind = None;
                continue;
            }
            return Some(Pick { id, serial: w.serial, from, to: visible, range: w.range.clone(), shape: w.shape });
        }
    }

    /// Under a short hub lock: moves the watcher past what `slice` read, if
    /// it is still the watcher picked and still behind where it was.
    fn advance(&mut self, pick: &Pick, slice: Slice) -> Option<WatchResponse> {
        let mut guard = self.shared.hub.lock();
        let hub = &mut *guard;
        let visible = hub.visible;
        let slot = hub.streams.get_mut(&self.stream)?;
        // Not current: canceled (its `canceled` is queued) or replaced.
        let w = slot.watchers.get_mut(&pick.id).filter(|w| w.serial == pick.serial && w.behind == Some(pick.from))?;
        match slice {
            Slice::Compacted(compact_revision) => {
                hub.remove_watcher(self.stream, pick.id);
                // etcd sends this with a zero header revision.
                Some(WatchResponse {
                    header: header(0),
                    watch_id: pick.id,
                    canceled: true,
                    compact_revision,
                    ..Default::default()
                })
            }
            Slice::Events(events, covered) => {
                // Publishing skipped it for revisions after `covered`.
                w.behind = (covered < visible).then_some(covered + 1);
                if w.behind.is_some() {
                    slot.lagging.push_back(pick.id);
                }
                (!events.is_empty()).then(|| WatchResponse {
                    header: header(visible),
                    watch_id: pick.id,
                    events,
                    ..Default::default()
                })
            }
        }
    }
}
