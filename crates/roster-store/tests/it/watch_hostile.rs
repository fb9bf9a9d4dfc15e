//! The watch hub against a reference and against hostile readers.
//!
//! - A differential test: random writes, watch creations (single key,
//!   prefix, from-key, ranges; start revisions in the past and future),
//!   cancels, compactions and readers of different speeds, checked against
//!   a brute-force filter of a model history.
//! - Hostile readers (100,000 watchers on one stream, a watcher from
//!   revision 1 over 1,000,000 revisions, a stream nobody reads): the
//!   writer's latency stays bounded and queued bytes stay under the budget.

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use roster_api::range::prefix_end;
use roster_store::mvccpb::{Event, KeyValue, event::EventType};
use roster_store::pb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchResponse,
    request_op::Request, watch_create_request::FilterType,
};
use roster_store::{Store, WatchControl, WatchEvents};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One poll of `next`: whatever is ready now, without waiting.
async fn try_next(ev: &mut WatchEvents) -> Option<WatchResponse> {
    tokio::select! {
        biased;
        r = ev.next() => r,
        () = std::future::ready(()) => None,
    }
}

async fn next(ev: &mut WatchEvents) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), ev.next())
        .await
        .expect("watch response in time")
        .expect("stream open")
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

// === differential ===

const KEYS: [&str; 9] = ["a", "a/1", "a/2", "a/3", "ab", "b", "b/1", "c", "d/1"];

/// The reference: live keys and every revision's events, as etcd defines them.
#[derive(Default)]
struct Model {
    rev: i64,
    live: BTreeMap<Bytes, KeyValue>,
    log: Vec<(i64, Vec<Event>)>,
}

impl Model {
    fn new() -> Self {
        Model { rev: 1, ..Default::default() }
    }

    /// Applies one revision of changes: (key, Some(value)) puts, None deletes.
    fn apply(&mut self, changes: &[(Bytes, Option<Bytes>)]) {
        let rev = self.rev + 1;
        let mut events = Vec::new();
        for (key, value) in changes {
            let prev = self.live.get(key).cloned();
            match value {
                Some(v) => {
                    let kv = KeyValue {
                        key: key.clone(),
                        create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                        mod_revision: rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: v.clone(),
                        lease: 0,
                    };
                    self.live.insert(key.clone(), kv.clone());
                    events.push(Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: prev });
                }
                None => {
                    if prev.is_none() {
                        continue;
                    }
                    self.live.remove(key);
                    let kv = KeyValue { key: key.clone(), mod_revision: rev, ..Default::default() };
                    events.push(Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv: prev });
                }
            }
        }
        if !events.is_empty() {
            self.rev = rev;
            self.log.push((rev, events));
        }
    }

    /// Whether every event of revision `rev` created its key: a compaction
    /// there leaves nothing a watcher from `rev` could see differently.
    fn only_creations_at(&self, rev: i64) -> bool {
        self.log.iter().find(|(r, _)| *r == rev).is_some_and(|(_, evs)| {
            evs.iter().all(|e| e.r#type == EventType::Put as i32 && e.kv.as_ref().unwrap().version == 1)
        })
    }
}

struct Spec {
    stream: usize,
    id: i64,
    key: Bytes,
    end: Bytes,
    start: i64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    /// Set once canceled by the test.
    canceled: bool,
}

impl Spec {
    fn covers(&self, k: &[u8]) -> bool {
        match &self.end[..] {
            [] => k == &self.key[..],
            [0] => k >= &self.key[..],
            end => k >= &self.key[..] && k < end,
        }
    }

    fn expected(&self, m: &Model) -> Vec<Event> {
        let mut out = Vec::new();
        for (rev, evs) in &m.log {
            if *rev < self.start {
                continue;
            }
            for e in evs {
                let is_put = e.r#type == EventType::Put as i32;
                if !self.covers(&e.kv.as_ref().unwrap().key) || (is_put && self.no_put) || (!is_put && self.no_delete) {
                    continue;
                }
                let mut e = e.clone();
                let creation = is_put && e.kv.as_ref().unwrap().version == 1;
                if !self.prev_kv || creation {
                    e.prev_kv = None;
                }
                out.push(e);
            }
        }
        out
    }
}

/// What one watcher received.
#[derive(Default)]
struct Seen {
    created: bool,
    events: Vec<Event>,
    /// Revision of the last event of the last response, to check that no
    /// revision is split over two responses.
    last_rev: i64,
    canceled: Option<i64>,
    batches: usize,
    /// The header revision of `created`.
    created_rev: i64,
}

struct Stream {
    ctl: WatchControl,
    ev: WatchEvents,
    /// Chance per step that the reader takes what is ready.
    speed: f64,
    next_id: i64,
}

fn record(seen: &mut HashMap<(usize, i64), Seen>, stream: usize, r: WatchResponse) {
    let s = seen.entry((stream, r.watch_id)).or_default();
    if r.created {
        assert!(!s.created && s.events.is_empty(), "created comes once and first");
        s.created = true;
        s.created_rev = r.header.map_or(0, |h| h.revision);
        return;
    }
    if r.canceled {
        assert!(s.canceled.is_none(), "canceled once");
        s.canceled = Some(r.compact_revision);
        return;
    }
    if r.events.is_empty() {
        return; // progress
    }
    assert!(s.created, "events only after created");
    assert!(s.canceled.is_none(), "no events after canceled");
    let revs: Vec<i64> = r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect();
    assert!(
        revs[0] > s.last_rev,
        "a revision is never split over responses, nor repeated: {} after {}",
        revs[0],
        s.last_rev
    );
    if revs.first() != revs.last() {
        s.batches += 1;
    }
    s.last_rev = *revs.last().unwrap();
    s.events.extend(r.events);
}

/// Runs `fut` while draining `ev`, so that a full queue cannot stall it.
async fn while_draining<F: std::future::Future>(
    fut: F,
    ev: &mut WatchEvents,
    seen: &mut HashMap<(usize, i64), Seen>,
    stream: usize,
) -> F::Output {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            Some(r) = ev.next() => record(seen, stream, r),
        }
    }
}

fn random_range(rng: &mut StdRng) -> (Bytes, Bytes) {
    match rng.random_range(0..4) {
        0 => (b(KEYS[rng.random_range(0..KEYS.len())]), Bytes::new()),
        1 => {
            let p = ["a", "a/", "b/", "d"][rng.random_range(0..4)];
            (b(p), Bytes::from(prefix_end(p.as_bytes())))
        }
        2 => (b(KEYS[rng.random_range(0..KEYS.len())]), Bytes::from_static(b"\0")),
        _ => {
            let (x, y) = (rng.random_range(0..KEYS.len()), rng.random_range(0..KEYS.len()));
            let (lo, hi) = (KEYS[x.min(y)], KEYS[x.max(y)]);
            if lo == hi { (b(lo), Bytes::new()) } else { (b(lo), b(hi)) }
        }
    }
}

async fn differential_case(seed: u64, steps: usize) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = Store::in_memory();
    let mut model = Model::new();
    let mut streams: Vec<Stream> = [1.0, 0.3, 0.05, 0.0]
        .into_iter()
        .map(|speed| {
            let (ctl, ev) = store.watch_stream();
            Stream { ctl, ev, speed, next_id: 0 }
        })
        .collect();
    let mut specs: Vec<Spec> = Vec::new();
    let mut seen: HashMap<(usize, i64), Seen> = HashMap::new();
    let mut compacted = 0i64;
    let big = Bytes::from(vec![b'x'; 300 << 10]);
    for step in 0..steps {
        let value = if rng.random_bool(0.04) { big.clone() } else { Bytes::from(format!("v{step}")) };
        match rng.random_range(0..100) {
            0..=34 => {
                let k = b(KEYS[rng.random_range(0..KEYS.len())]);
                store.put(PutRequest { key: k.clone(), value: value.clone(), ..Default::default() }).await.unwrap();
                model.apply(&[(k, Some(value))]);
            }
            35..=44 => {
                let k = b(KEYS[rng.random_range(0..KEYS.len())]);
                store.delete_range(DeleteRangeRequest { key: k.clone(), ..Default::default() }).await.unwrap();
                model.apply(&[(k, None)]);
            }
            45..=49 => {
                let (key, end) = random_range(&mut rng);
                store
                    .delete_range(DeleteRangeRequest { key: key.clone(), range_end: end.clone(), ..Default::default() })
                    .await
                    .unwrap();
                let spec = Spec {
                    stream: 0,
                    id: 0,
                    key,
                    end,
                    start: 0,
                    prev_kv: false,
                    no_put: false,
                    no_delete: false,
                    canceled: false,
                };
                let doomed: Vec<_> = model.live.keys().filter(|k| spec.covers(k)).map(|k| (k.clone(), None)).collect();
                model.apply(&doomed);
            }
            50..=59 => {
                // A txn of puts and deletes on distinct keys, at least one put.
                let mut keys: Vec<&str> = KEYS.to_vec();
                let n = rng.random_range(1..5);
                let mut ops = Vec::new();
                let mut changes = Vec::new();
                for i in 0..n {
                    let k = b(keys.swap_remove(rng.random_range(0..keys.len())));
                    if i > 0 && rng.random_bool(0.3) {
                        ops.push(RequestOp {
                            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                                key: k.clone(),
                                ..Default::default()
                            })),
                        });
                        changes.push((k, None));
                    } else {
                        let v = Bytes::from(format!("t{step}/{i}"));
                        ops.push(RequestOp {
                            request: Some(Request::RequestPut(PutRequest {
                                key: k.clone(),
                                value: v.clone(),
                                ..Default::default()
                            })),
                        });
                        changes.push((k, Some(v)));
                    }
                }
                store.txn(TxnRequest { compare: vec![], success: ops, failure: vec![] }).await.unwrap();
                model.apply(&changes);
            }
            60..=71 => {
                let si = rng.random_range(0..streams.len());
                let (key, end) = random_range(&mut rng);
                let start_revision = match rng.random_range(0..4) {
                    0 => 0,
                    1 => model.rev + rng.random_range(1..4),
                    _ => rng.random_range(1..=model.rev + 1),
                };
                let mut filters = vec![];
                let (no_put, no_delete) = match rng.random_range(0..6) {
                    0 => (true, false),
                    1 => (false, true),
                    _ => (false, false),
                };
                if no_put {
                    filters.push(FilterType::Noput as i32);
                }
                if no_delete {
                    filters.push(FilterType::Nodelete as i32);
                }
                let prev_kv = rng.random_bool(0.5);
                let st = &mut streams[si];
                let id = st.next_id;
                st.next_id += 1;
                let start = if start_revision == 0 { model.rev + 1 } else { start_revision };
                specs.push(Spec {
                    stream: si,
                    id,
                    key: key.clone(),
                    end: end.clone(),
                    start,
                    prev_kv,
                    no_put,
                    no_delete,
                    canceled: false,
                });
                let req =
                    WatchCreateRequest { key, range_end: end, start_revision, prev_kv, filters, ..Default::default() };
                while_draining(st.ctl.create(req), &mut st.ev, &mut seen, si).await;
            }
            72..=75 => {
                let live: Vec<usize> = (0..specs.len()).filter(|&i| !specs[i].canceled).collect();
                if let Some(&i) = live.get(rng.random_range(0..live.len().max(1))) {
                    specs[i].canceled = true;
                    let st = &mut streams[specs[i].stream];
                    while_draining(st.ctl.cancel(specs[i].id), &mut st.ev, &mut seen, specs[i].stream).await;
                }
            }
            76..=78 => {
                let c = ((compacted + 1).max(2)..=model.rev).rev().find(|&r| model.only_creations_at(r));
                if let Some(c) = c.filter(|_| rng.random_bool(0.5)) {
                    store.compact(CompactionRequest { revision: c, physical: true }).await.unwrap();
                    compacted = c;
                }
            }
            _ => {}
        }
        assert_eq!(store.revision(), model.rev, "seed {seed} step {step}: the store and the model agree on revisions");
        for (si, st) in streams.iter_mut().enumerate() {
            if rng.random_bool(st.speed) {
                for _ in 0..rng.random_range(1..20) {
                    match try_next(&mut st.ev).await {
                        Some(r) => record(&mut seen, si, r),
                        None => break,
                    }
                }
            }
            assert!(st.ev.queued_bytes() <= WatchEvents::QUEUE_BYTES, "queued bytes stay under the budget");
        }
    }

    // Drain: every watcher that was neither canceled nor compacted away gets
    // exactly its events; the others a prefix of them.
    let deadline = Instant::now() + Duration::from_secs(20);
    for spec in &specs {
        let want = spec.expected(&model);
        loop {
            let s = seen.entry((spec.stream, spec.id)).or_default();
            if s.canceled.is_some() || (!spec.canceled && s.events.len() >= want.len()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: watcher {} on stream {} stuck at {}/{} events",
                spec.id,
                spec.stream,
                s.events.len(),
                want.len()
            );
            let st = &mut streams[spec.stream];
            let r = next(&mut st.ev).await;
            record(&mut seen, spec.stream, r);
        }
    }
    for (si, st) in streams.iter_mut().enumerate() {
        while let Some(r) = try_next(&mut st.ev).await {
            record(&mut seen, si, r);
        }
    }
    let mut batches = 0;
    for spec in &specs {
        let want = spec.expected(&model);
        let s = &seen[&(spec.stream, spec.id)];
        let ctx = format!(
            "seed {seed}: watcher {} on stream {} over {:?}..{:?} from {}",
            spec.id, spec.stream, spec.key, spec.end, spec.start
        );
        assert!(s.created, "{ctx}: created");
        batches += s.batches;
        match s.canceled {
            Some(compact) if compact > 0 => {
                assert!(want.starts_with(&s.events), "{ctx}: a compacted watcher saw a prefix of its events");
                assert!(s.last_rev < compact, "{ctx}: canceled only below the compaction");
            }
            _ if spec.canceled => {
                assert!(want.starts_with(&s.events), "{ctx}: a canceled watcher saw a prefix of its events")
            }
            Some(_) => panic!("{ctx}: canceled without asking"),
            None => assert!(
                s.events == want,
                "{ctx}: exactly its events, in order\n got {:?}\nwant {:?}",
                revs(&s.events),
                revs(&want)
            ),
        }
    }
    batches
}

fn revs(evs: &[Event]) -> Vec<(i64, String)> {
    evs.iter()
        .map(|e| {
            (e.kv.as_ref().unwrap().mod_revision, String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).into_owned())
        })
        .collect()
}

/// Random interleavings of writes, watches, cancels, compactions and slow
/// readers: each watcher sees what a filter of the history gives, no event
/// lost or doubled, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_exactly_the_filtered_history_under_random_interleavings() {
    let mut batches = 0;
    for seed in 0..48 {
        batches += differential_case(seed, 400).await;
    }
    assert!(batches > 0, "some watchers fell behind and caught up from history");
}

/// Watchers created, read slowly and filled past their byte budget while
/// another task writes: each sees every write from its start, once, in
/// order, after its `created`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_slow_readers_lose_nothing() {
    let store = Store::in_memory();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let big = Bytes::from(vec![b'x'; 200 << 10]);
            let mut writes = Vec::new();
            for i in 0..3000u32 {
                let key = Bytes::from(format!("z/{}", i % 50));
                let value = if i % 97 == 0 { big.clone() } else { Bytes::from(i.to_string()) };
                let r = store
                    .put(PutRequest { key: key.clone(), value: value.clone(), ..Default::default() })
                    .await
                    .unwrap();
                writes.push((r.header.unwrap().revision, key, value));
                // An in-memory store writes at once: pace it, so that the
                // watchers are created while writes go on, on any machine.
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            writes
        })
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut streams: Vec<(WatchControl, WatchEvents, i64)> = (0..4)
        .map(|_| {
            let (c, e) = store.watch_stream();
            (c, e, 0)
        })
        .collect();
    let mut seen: HashMap<(usize, i64), Seen> = HashMap::new();
    // (stream, id, key, end, start revision as asked)
    let mut specs: Vec<(usize, i64, Bytes, Bytes, i64)> = Vec::new();
    while !writer.is_finished() {
        let si = rng.random_range(0..streams.len());
        if specs.len() < 60 && rng.random_bool(0.2) {
            let (key, end) = match rng.random_range(0..3) {
                0 => (b("z/"), b("z0")),
                1 => (b("z/3"), Bytes::new()),
                _ => (b("z/2"), Bytes::from_static(b"\0")),
            };
            let start = if rng.random_bool(0.5) { 0 } else { rng.random_range(2..=store.revision() + 1) };
            let (ctl, ev, next_id) = &mut streams[si];
            specs.push((si, *next_id, key.clone(), end.clone(), start));
            *next_id += 1;
            let req = WatchCreateRequest { key, range_end: end, start_revision: start, ..Default::default() };
            while_draining(ctl.create(req), ev, &mut seen, si).await;
        }
        let (_, ev, _) = &mut streams[si];
        if rng.random_bool(0.5) {
            for _ in 0..rng.random_range(1..50) {
                match try_next(ev).await {
                    Some(r) => record(&mut seen, si, r),
                    None => break,
                }
            }
        }
        assert!(ev.queued_bytes() <= WatchEvents::QUEUE_BYTES, "queued bytes stay under the budget");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let writes = writer.await.unwrap();
    assert!(specs.len() > 10, "watchers were created while writes went on");
    let mut behind = 0;
    for (si, id, key, end, start) in &specs {
        let spec = Spec {
            stream: *si,
            id: *id,
            key: key.clone(),
            end: end.clone(),
            start: *start,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            canceled: false,
        };
        // A watcher from now starts after the revision its `created` carries.
        let want = |s: &Seen| -> Vec<(i64, Bytes, Bytes)> {
            let from = if *start == 0 { s.created_rev + 1 } else { *start };
            writes.iter().filter(|w| w.0 >= from && spec.covers(&w.1)).cloned().collect()
        };
        while !seen.get(&(*si, *id)).is_some_and(|s| s.created && s.events.len() >= want(s).len()) {
            let r = next(&mut streams[*si].1).await;
            record(&mut seen, *si, r);
        }
    }
    for (si, (_, ev, _)) in streams.iter_mut().enumerate() {
        while let Some(r) = try_next(ev).await {
            record(&mut seen, si, r);
        }
    }
    for (si, id, key, end, start) in &specs {
        let spec = Spec {
            stream: *si,
            id: *id,
            key: key.clone(),
            end: end.clone(),
            start: *start,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            canceled: false,
        };
        let s = &seen[&(*si, *id)];
        behind += s.batches;
        let from = if *start == 0 { s.created_rev + 1 } else { *start };
        let want: Vec<(i64, Bytes, Bytes)> =
            writes.iter().filter(|w| w.0 >= from && spec.covers(&w.1)).cloned().collect();
        let got: Vec<(i64, Bytes, Bytes)> = s
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (kv.mod_revision, kv.key.clone(), kv.value.clone())
            })
            .collect();
        assert!(got == want, "watcher {id} on stream {si} from {start}: got {} events, want {}", got.len(), want.len());
    }
    assert!(behind > 0, "some watchers fell behind and caught up");
}

// === hostile readers ===

async fn put_timed(store: &Store, key: Bytes, value: Bytes) -> (i64, Duration) {
    let t = Instant::now();
    let r = store.put(PutRequest { key, value, ..Default::default() }).await.unwrap();
    (r.header.unwrap().revision, t.elapsed())
}

async fn idle_p99(store: &Store, key: &str, value: &Bytes, n: usize) -> Duration {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        lat.push(put_timed(store, b(key), value.clone()).await.1);
    }
    p99(lat)
}

/// Loose, so that a busy CI machine does not fail it, but far below what
/// scanning every watcher, or replaying under the writers' locks, costs.
fn assert_bounded(what: &str, idle: Duration, loaded: Duration) {
    let bound = (idle * 10).max(Duration::from_millis(10));
    eprintln!("{what}: put p99 idle {idle:?}, loaded {loaded:?} (bound {bound:?})");
    assert!(loaded < bound, "{what}: put p99 {loaded:?} against {idle:?} idle");
}

/// 100,000 watchers on one stream, half on single keys and half on
/// prefixes: a put costs the writer what its matching watchers cost, not a
/// scan of all of them, and each watcher gets its own events only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_latency_holds_with_100k_watchers_on_one_stream() {
    const N: usize = 50_000;
    let store = Store::in_memory();
    let v = b("v");
    let idle = idle_p99(&store, "/x", &v, 1000).await;

    let (ctl, mut ev) = store.watch_stream();
    let (want_tx, mut want_rx) = tokio::sync::watch::channel(usize::MAX);
    let reader = tokio::spawn(async move {
        let mut events: HashMap<i64, Vec<i64>> = HashMap::new();
        let (mut created, mut total, mut max_queued) = (0, 0, 0);
        while total < *want_rx.borrow_and_update() || created < 2 * N {
            tokio::select! {
                r = ev.next() => {
                    let r = r.expect("stream open");
                    max_queued = max_queued.max(ev.queued_bytes());
                    created += usize::from(r.created);
                    total += r.events.len();
                    events.entry(r.watch_id).or_default().extend(r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
                }
                _ = want_rx.changed() => {}
            }
        }
        (events, max_queued)
    });
    let t = Instant::now();
    for i in 0..N {
        ctl.create(WatchCreateRequest { key: Bytes::from(format!("/w/{i}")), ..Default::default() }).await;
    }
    for i in 0..N {
        let p = format!("/p/{i}/");
        ctl.create(WatchCreateRequest {
            key: b(&p),
            range_end: Bytes::from(prefix_end(p.as_bytes())),
            ..Default::default()
        })
        .await;
    }
    eprintln!("created {} watchers in {:?}", 2 * N, t.elapsed());
    assert_eq!(store.status().watchers, 2 * N as u64);

    // Unwatched keys, single-key watchers (ids 0..N), prefix watchers (N..2N).
    let mut lat = Vec::new();
    let mut want: HashMap<i64, Vec<i64>> = HashMap::new();
    for i in 0..2000usize {
        let j = i * 7919 % N;
        let (key, id) = match i % 4 {
            1 => (format!("/w/{j}"), Some(j as i64)),
            2 => (format!("/p/{j}/k{i}"), Some((N + j) as i64)),
            _ => ("/x".to_owned(), None),
        };
        let (rev, took) = put_timed(&store, Bytes::from(key), v.clone()).await;
        lat.push(took);
        if let Some(id) = id {
            want.entry(id).or_default().push(rev);
        }
    }
    want_tx.send(want.values().map(Vec::len).sum()).unwrap();
    let (mut got, max_queued) =
        tokio::time::timeout(Duration::from_secs(30), reader).await.expect("reader done in time").unwrap();
    got.retain(|_, v| !v.is_empty());
    assert_eq!(got, want, "each watcher got exactly the events of its keys");
    assert!(max_queued <= WatchEvents::QUEUE_BYTES);
    assert_bounded("100k watchers", idle, p99(lat));
    drop(ctl);
    assert_eq!(store.status().watchers, 0, "closing the stream drops its watchers from the index");
}

/// A watcher from revision 1 over 1,000,000 revisions catches up in slices
/// while a writer puts: the writer is never held up for long, and the
/// watcher gets every revision once, in order, then goes live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_revision_1_over_a_million_revisions_does_not_stall_writers() {
    const REVS: usize = 1_000_000;
    const TASKS: usize = 64;
    let store = Store::in_memory();
    let t = Instant::now();
    let fill: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..REVS / TASKS {
                    let key = Bytes::from(format!("h/{task:02}/{:02}", i % 16));
                    store.put(PutRequest { key, ..Default::default() }).await.unwrap();
                }
            })
        })
        .collect();
    for f in fill {
        f.await.unwrap();
    }
    let filled = store.revision();
    assert_eq!(filled, 1 + REVS as i64);
    eprintln!("{REVS} revisions in {:?}", t.elapsed());
    let v = b("v");
    let idle = idle_p99(&store, "/x", &v, 500).await;

    let (ctl, mut ev) = store.watch_stream();
    ctl.create(WatchCreateRequest {
        key: b("\0"),
        range_end: Bytes::from_static(b"\0"),
        start_revision: 1,
        ..Default::default()
    })
    .await;
    assert!(next(&mut ev).await.created);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        tokio::spawn(async move {
            // Every revision from 2 on is one put: the watcher must see each once, in order.
            let (mut expect, mut responses, mut catch_up) = (2i64, 0usize, 0usize);
            let t = Instant::now();
            loop {
                let r = next(&mut ev).await;
                responses += 1;
                for e in &r.events {
                    let rev = e.kv.as_ref().unwrap().mod_revision;
                    assert_eq!(rev, expect, "every revision once, in order");
                    expect += 1;
                }
                if expect > filled && !done.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    catch_up = responses;
                    eprintln!("caught up over {} revisions in {:?}, {responses} responses", expect - 2, t.elapsed());
                }
                if expect > filled + 50_000 {
                    return (ev, expect, catch_up);
                }
            }
        })
    };
    let mut lat = Vec::new();
    // The writer goes on until the watcher caught up, and some more.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = 0;
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "the watcher catches up in time");
        let (rev, took) = put_timed(&store, b("/x"), v.clone()).await;
        lat.push(took);
        last = rev;
        if lat.len() >= 200_000 {
            break;
        }
    }
    let (_ev, expect, catch_up) = reader.await.unwrap();
    assert!(expect > last || expect > filled + 50_000, "the watcher went live");
    // Live writes after that come one response each; the history did not.
    assert!(catch_up < REVS / 100, "catch-up batches revisions: {catch_up} responses up to the filled revision");
    assert!(done.load(std::sync::atomic::Ordering::Acquire));
    assert_bounded("catch-up over 1M revisions", idle, p99(lat));
}

/// A stream whose reader never reads: writers go on as before, its queue
/// stays within its byte budget, and when it finally reads it gets every
/// event from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_stays_under_its_byte_budget_and_does_not_slow_writers() {
    let store = Store::in_memory();
    let value = Bytes::from(vec![b'v'; 64 << 10]);
    let idle = idle_p99(&store, "/idle", &value, 400).await;

    let (ctl, mut ev) = store.watch_stream();
    ctl.create(WatchCreateRequest { key: b("/y/"), range_end: b("/y0"), ..Default::default() }).await;
    let mut lat = Vec::new();
    let mut revs = Vec::new();
    for i in 0..400 {
        let (rev, took) = put_timed(&store, Bytes::from(format!("/y/{}", i % 10)), value.clone()).await;
        lat.push(took);
        revs.push(rev);
        assert!(ev.queued_bytes() <= WatchEvents::QUEUE_BYTES, "{} bytes queued", ev.queued_bytes());
    }
    assert!(
        ev.queued_bytes() > WatchEvents::QUEUE_BYTES / 2,
        "the queue filled up to its budget: {}",
        ev.queued_bytes()
    );
    assert_bounded("a stream nobody reads", idle, p99(lat));
    assert!(next(&mut ev).await.created);
    let mut seen = Vec::new();
    while seen.len() < revs.len() {
        let r = next(&mut ev).await;
        seen.extend(r.events.iter().map(|e| {
            assert_eq!(e.kv.as_ref().unwrap().value.len(), value.len());
            e.kv.as_ref().unwrap().mod_revision
        }));
    }
    assert_eq!(seen, revs, "the queued events, then the rest from history");
    assert!(try_next(&mut ev).await.is_none());
}
