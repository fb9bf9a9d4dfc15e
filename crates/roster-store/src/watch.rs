//! Watch fan-out.
//!
//! Each gRPC Watch call is one stream with a bounded channel of responses.
//! A watcher is either *synced*, receiving each new revision live, or
//! *behind*, catching up from the keyspace's history. Publishing never
//! waits: when a stream's channel is full its watcher falls behind, and the
//! stream's reader replays the gap from history once it has drained what was
//! queued. So a slow client costs memory bounded by its channel, and never
//! blocks writers.
//!
//! A watcher is registered, replayed and switched to live delivery under the
//! hub lock, which is also held while publishing, so no event is lost or
//! doubled at the seams.

use crate::keyspace::OwnedRange;
use crate::Shared;
use bytes::Bytes;
use roster_api::etcdserverpb::{watch_create_request::FilterType, ResponseHeader, WatchCreateRequest, WatchResponse};
use roster_api::mvccpb::{event::EventType, Event};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Responses queued per stream before its watchers fall behind.
const STREAM_BUFFER: usize = 256;

/// A queued response, boxed: the queue allocates its slots 32 at a time,
/// up front, and a registry holds one queue per watch stream (one per
/// registered instance), so each slot is kept to a pointer.
type Queued = Box<WatchResponse>;
/// Revisions per catch-up response, as in etcd.
const CATCH_UP_REVS: usize = 1000;

const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

#[derive(Default)]
pub(crate) struct Hub {
    /// The durable revision; events up to here have been published.
    pub visible: i64,
    next_stream: u64,
    streams: HashMap<u64, Slot>,
}

struct Slot {
    tx: mpsc::Sender<Queued>,
    wake: Arc<Notify>,
    watchers: HashMap<i64, Watcher>,
    next_id: i64,
}

struct Watcher {
    range: OwnedRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    /// Live events below this revision are not for this watcher.
    min_rev: i64,
    /// False until the `created` response is queued.
    announced: bool,
    /// `Some(rev)`: behind, replaying history from `rev`.
    behind: Option<i64>,
}

fn header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader { revision: rev, ..Default::default() })
}

// === impl Watcher ===

impl Watcher {
    fn shape(&self, ev: &Event) -> Option<Event> {
        let kv = ev.kv.as_ref()?;
        let is_put = ev.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) || !self.range.contains(&kv.key) {
            return None;
        }
        let mut ev = ev.clone();
        if !self.prev_kv {
            ev.prev_kv = None;
        }
        Some(ev)
    }
}

// === impl Hub ===

impl Hub {
    pub fn new(visible: i64) -> Self {
        Hub { visible, ..Default::default() }
    }

    /// Delivers one revision's events to synced watchers. Never blocks.
    pub fn publish(&mut self, rev: i64, events: &[Event]) {
        for slot in self.streams.values_mut() {
            for (id, w) in slot.watchers.iter_mut() {
                if !w.announced || w.behind.is_some() || rev < w.min_rev {
                    continue;
                }
                let evs: Vec<Event> = events.iter().filter_map(|e| w.shape(e)).collect();
                if evs.is_empty() {
                    continue;
                }
                let resp = WatchResponse { header: header(rev), watch_id: *id, events: evs, ..Default::default() };
                if let Err(mpsc::error::TrySendError::Full(_)) = slot.tx.try_send(Box::new(resp)) {
                    w.behind = Some(rev);
                    slot.wake.notify_one();
                }
            }
        }
    }

    /// Sends an empty response to synced watchers that asked for progress.
    pub fn progress_notify(&mut self) {
        let rev = self.visible;
        for slot in self.streams.values_mut() {
            for (id, w) in &slot.watchers {
                if w.announced && w.behind.is_none() && w.progress_notify {
                    let _ = slot.tx.try_send(Box::new(WatchResponse { header: header(rev), watch_id: *id, ..Default::default() }));
                }
            }
        }
    }

    pub fn watchers(&self) -> usize {
        self.streams.values().map(|s| s.watchers.len()).sum()
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }
}

/// Opens a stream: the control half and the response half.
pub(crate) fn open(shared: &Arc<Shared>) -> (WatchControl, WatchEvents) {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let wake = Arc::new(Notify::new());
    let id = {
        let mut hub = shared.hub.lock();
        hub.next_stream += 1;
        let id = hub.next_stream;
        hub.streams.insert(id, Slot { tx: tx.clone(), wake: wake.clone(), watchers: HashMap::new(), next_id: 0 });
        id
    };
    let control = WatchControl { inner: Arc::new(ControlInner { shared: shared.clone(), stream: id, tx }) };
    let events = WatchEvents { shared: shared.clone(), stream: id, rx, wake };
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
        self.shared.hub.lock().streams.remove(&self.stream);
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
            let mut hub = inner.shared.hub.lock();
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
                slot.watchers.insert(id, Watcher {
                    range: OwnedRange { key, end },
                    no_put: filters(FilterType::Noput),
                    no_delete: filters(FilterType::Nodelete),
                    prev_kv: r.prev_kv,
                    progress_notify: r.progress_notify,
                    min_rev: start,
                    announced: false,
                    behind: Some(start),
                });
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
        if inner.tx.send(Box::new(created)).await.is_err() || refused.is_some() {
            return;
        }
        // Now events may flow; the reader replays anything from `start` on.
        let mut hub = inner.shared.hub.lock();
        let visible = hub.visible;
        if let Some(w) = hub.streams.get_mut(&inner.stream).and_then(|s| s.watchers.get_mut(&id)) {
            w.announced = true;
            if w.min_rev > visible {
                w.behind = None;
            }
        }
        if let Some(slot) = hub.streams.get(&inner.stream) {
            slot.wake.notify_one();
        }
    }

    /// Cancels a watcher. Unknown ids are ignored, as etcd does.
    pub async fn cancel(&self, watch_id: i64) {
        let inner = &self.inner;
        let (existed, rev) = {
            let mut hub = inner.shared.hub.lock();
            let rev = hub.visible;
            let existed = hub.streams.get_mut(&inner.stream).is_some_and(|s| s.watchers.remove(&watch_id).is_some());
            (existed, rev)
        };
        if existed {
            let resp = WatchResponse { header: header(rev), watch_id, canceled: true, ..Default::default() };
            let _ = inner.tx.send(Box::new(resp)).await;
        }
    }

    /// Answers a progress request with the current revision.
    pub async fn progress(&self) {
        let rev = self.inner.shared.hub.lock().visible;
        let _ = self.inner.tx.send(Box::new(WatchResponse { header: header(rev), watch_id: -1, ..Default::default() })).await;
    }
}

/// The response half of a watch stream.
pub struct WatchEvents {
    shared: Arc<Shared>,
    stream: u64,
    rx: mpsc::Receiver<Queued>,
    wake: Arc<Notify>,
}

// === impl WatchEvents ===

impl WatchEvents {
    /// The next response; `None` once the control half is dropped and
    /// everything queued was delivered.
    pub async fn next(&mut self) -> Option<WatchResponse> {
        loop {
            match self.rx.try_recv() {
                Ok(r) => return Some(*r),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            // Only with the queue drained: a watcher's queued events precede
            // its replay.
            if let Some(r) = self.catch_up() {
                return Some(r);
            }
            tokio::select! {
                r = self.rx.recv() => return r.map(|r| *r),
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Replays history for one watcher that is behind. Returns a response
    /// when there was something to send.
    fn catch_up(&mut self) -> Option<WatchResponse> {
        loop {
            let mut hub = self.shared.hub.lock();
            let visible = hub.visible;
            let slot = hub.streams.get_mut(&self.stream)?;
            let (&id, w) = slot.watchers.iter_mut().find(|(_, w)| w.announced && w.behind.is_some())?;
            let from = w.behind.expect("found behind");
            let st = self.shared.state.read();
            if from < st.compact_rev {
                let compact_revision = st.compact_rev;
                slot.watchers.remove(&id);
                // etcd sends this with a zero header revision.
                return Some(WatchResponse {
                    header: header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision,
                    ..Default::default()
                });
            }
            if from > visible {
                w.behind = None;
                continue;
            }
            let all = st.kv.events(&w.range, from, visible, true, st.compact_rev, CATCH_UP_REVS);
            drop(st);
            let last = all.last().and_then(|e| e.kv.as_ref()).map(|kv| kv.mod_revision);
            let mut revs: Vec<i64> = all.iter().filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision)).collect();
            revs.dedup();
            w.behind = match last {
                Some(last) if revs.len() >= CATCH_UP_REVS && last < visible => Some(last + 1),
                _ => None,
            };
            let events: Vec<Event> = all.iter().filter_map(|e| w.shape(e)).collect();
            if w.behind.is_some() {
                slot.wake.notify_one();
            }
            if !events.is_empty() {
                return Some(WatchResponse { header: header(visible), watch_id: id, events, ..Default::default() });
            }
        }
    }
}
