//! The console's one registry watch.
//!
//! One watch over the whole keyspace serves every open page: each response
//! bumps the revision and the generation of the areas its keys fall in,
//! published on a `tokio::sync::watch` channel. A page's event stream
//! compares generations to tell which areas changed; a slow page sees only
//! the latest tick, so a busy registry never queues work per page.
//!
//! The watch resumes from the last revision seen after a reconnect. When
//! that revision is compacted, every area's generation is bumped and
//! `resyncs` grows: pages re-read everything, as after any gap.
//!
//! With auth on and no credentials of the console's own, the watch is
//! refused; the first user to log in lends the hub their client
//! ([`Hub::offer`]). A user who may not read the whole keyspace gets the
//! widest of `/` and the registry prefix that they may watch: still one
//! watch, and the pages outside it update on reload only.

use parking_lot::Mutex;
use roster::Client;
use roster_api::etcdserverpb::WatchCreateRequest;
use roster_api::range::prefix_end;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, watch};

/// The areas a page can follow.
pub const SERVICES: usize = 0;
pub const CONFIG: usize = 1;
pub const COORDINATION: usize = 2;
pub const OTHER: usize = 3;
pub const AREAS: [&str; 4] = ["services", "config", "coordination", "other"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// The revision of the last response seen.
    pub revision: i64,
    /// Per area, how many responses touched it.
    pub gens: [u64; 4],
    /// How many times the watch could not resume (compaction).
    pub resyncs: u64,
    /// The latest compaction revision the hub learnt of.
    pub compacted: i64,
}

/// Which area each key prefix belongs to; set once, at start.
#[derive(Debug, Clone)]
pub struct Areas {
    pub services: String,
    /// The drain markers beside the services (counted as services).
    pub drains: String,
    pub config: String,
    pub locks: String,
    pub elections: String,
}

impl Areas {
    fn of(&self, key: &[u8]) -> usize {
        let starts = |p: &str| key.starts_with(p.as_bytes());
        if starts(&self.services) || starts(&self.drains) {
            SERVICES
        } else if starts(&self.config) {
            CONFIG
        } else if starts(&self.locks) || starts(&self.elections) {
            COORDINATION
        } else {
            OTHER
        }
    }
}

pub struct Hub {
    tick: watch::Receiver<Tick>,
    lender: Arc<Lender>,
    /// When revisions were first seen, for "registered since".
    seen: Arc<Mutex<BTreeMap<i64, SystemTime>>>,
    started: SystemTime,
    _guard: DropGuard,
}

#[derive(Default)]
struct Lender {
    client: Mutex<Option<Client>>,
    /// The watch is failing for want of permission: a login may help.
    refused: Mutex<bool>,
    offered: Notify,
}

/// Stops the hub task when the console goes.
struct DropGuard(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// At most this many revision times are kept (oldest dropped).
const SEEN_CAP: usize = 100_000;

// === impl Hub ===

impl Hub {
    pub fn start(client: Client, areas: Areas) -> Hub {
        let (tx, tick) = watch::channel(Tick::default());
        let lender = Arc::new(Lender { client: Mutex::new(Some(client)), ..Default::default() });
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop_tx, stop) = tokio::sync::oneshot::channel();
        tokio::spawn(run(tx, lender.clone(), areas, seen.clone(), stop));
        Hub { tick, lender, seen, started: SystemTime::now(), _guard: DropGuard(Some(stop_tx)) }
    }

    pub fn subscribe(&self) -> watch::Receiver<Tick> {
        self.tick.clone()
    }

    pub fn current(&self) -> Tick {
        self.tick.borrow().clone()
    }

    /// A logged-in user's client, used if the hub's own is refused.
    pub fn offer(&self, client: &Client) {
        if *self.lender.refused.lock() {
            *self.lender.client.lock() = Some(client.clone());
            self.lender.offered.notify_one();
        }
    }

    /// When revision `rev` was first seen by this console, or `None` when
    /// it predates the console (then [`Hub::started`] bounds it).
    pub fn seen_at(&self, rev: i64) -> Option<SystemTime> {
        self.seen.lock().range(rev..).next().map(|(_, t)| *t)
    }

    pub fn started(&self) -> SystemTime {
        self.started
    }
}

async fn run(
    tx: watch::Sender<Tick>,
    lender: Arc<Lender>,
    areas: Areas,
    seen: Arc<Mutex<BTreeMap<i64, SystemTime>>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut delay = Duration::from_millis(100);
    // What the one watch covers: everything, or, for a user who may not
    // read everything, `/`, or the registry prefix alone.
    let scopes: [(Vec<u8>, Vec<u8>); 3] = [
        (vec![0], vec![0]),
        (b"/".to_vec(), prefix_end(b"/")),
        (areas.services.as_bytes().to_vec(), prefix_end(areas.services.as_bytes())),
    ];
    let mut scope = 0;
    loop {
        let Some(client) = lender.client.lock().clone() else {
            return;
        };
        let outcome = tokio::select! {
            r = watch_once(&client, &scopes[scope], &tx, &areas, &seen) => r,
            _ = &mut stop => return,
        };
        if matches!(&outcome, Err(e) if e.contains("permission denied")) && scope + 1 < scopes.len() {
            scope += 1;
            continue;
        }
        let refused = matches!(&outcome, Err(e) if is_refusal(e));
        *lender.refused.lock() = refused;
        if refused {
            // A lent client starts from the widest scope again.
            scope = 0;
        }
        if let Err(e) = &outcome {
            tracing::debug!(error = %e, scope, "console watch ended; reopening");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = lender.offered.notified(), if refused => {}
            _ = &mut stop => return,
        }
        delay = if outcome.is_ok() { Duration::from_millis(100) } else { (delay * 2).min(Duration::from_secs(2)) };
    }
}

fn is_refusal(e: &str) -> bool {
    e.contains("permission denied") || e.contains("user name is empty") || e.contains("invalid auth token")
}

/// One watch stream until it ends. `Ok` when it ended cleanly or was
/// canceled for compaction (a resync was published).
async fn watch_once(
    client: &Client,
    (key, range_end): &(Vec<u8>, Vec<u8>),
    tx: &watch::Sender<Tick>,
    areas: &Areas,
    seen: &Mutex<BTreeMap<i64, SystemTime>>,
) -> Result<(), String> {
    let from = tx.borrow().revision;
    let create = WatchCreateRequest {
        key: key.clone().into(),
        range_end: range_end.clone().into(),
        start_revision: if from > 0 { from + 1 } else { 0 },
        ..Default::default()
    };
    let mut stream = client.watch_stream(create).await.map_err(|e| e.to_string())?;
    loop {
        let resp = match stream.next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        if resp.compact_revision > 0 {
            // Resuming is impossible: start again from now, and have every
            // page re-read.
            tx.send_modify(|t| {
                t.compacted = resp.compact_revision;
                t.revision = 0;
                t.resyncs += 1;
                t.gens.iter_mut().for_each(|g| *g += 1);
            });
            return Ok(());
        }
        if resp.canceled {
            return Err(format!("watch canceled: {}", resp.cancel_reason));
        }
        let rev = resp.header.as_ref().map_or(0, |h| h.revision);
        if resp.created && rev > 0 && tx.borrow().revision == 0 {
            tx.send_modify(|t| t.revision = rev);
            continue;
        }
        if resp.events.is_empty() {
            continue;
        }
        let mut touched = [false; 4];
        // The events' own revisions, not the header's: a header may run
        // ahead of what a read sees yet.
        let mut last = 0;
        for ev in &resp.events {
            if let Some(kv) = &ev.kv {
                touched[areas.of(&kv.key)] = true;
                last = last.max(kv.mod_revision);
            }
        }
        {
            let mut s = seen.lock();
            s.entry(last).or_insert_with(SystemTime::now);
            while s.len() > SEEN_CAP {
                s.pop_first();
            }
        }
        tx.send_modify(|t| {
            t.revision = t.revision.max(last);
            for (g, hit) in t.gens.iter_mut().zip(touched) {
                *g += u64::from(hit);
            }
        });
    }
}
