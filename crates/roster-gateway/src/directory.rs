//! The service directory: which service names have instances right now,
//! mirrored from one prefix watch of `<prefix>/`.
//!
//! Why: an auto route turns any path segment into a service name. If each
//! new name started its own discovery, a client sending made-up names
//! would grow the gateway without bound and fill `max_services`. With the
//! directory, a name no route names and no instance uses is answered 503
//! from memory; the state it costs is one count per registered service,
//! bounded by what the registry holds, not by what clients send.
//!
//! The mirror lists the prefix (keys only), then watches from the next
//! revision; a compaction or a broken stream lists again. Errors keep the
//! last known names, as discovery does.

use parking_lot::RwLock;
use roster::Client;
use roster_api::etcdserverpb::{RangeRequest, WatchCreateRequest};
use roster_api::mvccpb::event::EventType;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Instance counts by service name. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    shared: Arc<Shared>,
}

struct Shared {
    /// `<prefix>/`, with the slash.
    dir: String,
    // Readers hold it for one lookup; the mirror task for one batch of
    // events. Never across an await.
    counts: RwLock<HashMap<String, u32>>,
    listed: watch::Sender<bool>,
}

/// Stops the mirror task when dropped.
pub struct DirectoryTask(tokio::task::AbortHandle);

impl Drop for DirectoryTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Directory ===

impl Directory {
    /// Starts mirroring `<prefix>/` through `client`.
    pub fn spawn(client: Client, prefix: &str) -> (Directory, DirectoryTask) {
        let (listed, _) = watch::channel(false);
        let shared = Arc::new(Shared { dir: format!("{prefix}/"), counts: RwLock::new(HashMap::new()), listed });
        let task = tokio::spawn(run(client, shared.clone())).abort_handle();
        (Directory { shared }, DirectoryTask(task))
    }

    /// Whether `service` has at least one instance, waiting up to `wait`
    /// for the first listing.
    pub async fn has(&self, service: &str, wait: Duration) -> bool {
        if !*self.shared.listed.borrow() {
            let mut rx = self.shared.listed.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|l| *l)).await;
        }
        self.contains(service)
    }

    pub fn contains(&self, service: &str) -> bool {
        self.shared.counts.read().get(service).is_some_and(|n| *n > 0)
    }

    /// How many services have instances.
    pub fn len(&self) -> usize {
        self.shared.counts.read().len()
    }
}

impl Shared {
    /// The service of `<prefix>/<service>/<id>`; other keys are not instances.
    fn service_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let rest = std::str::from_utf8(key.strip_prefix(self.dir.as_bytes())?).ok()?;
        let (service, id) = rest.split_once('/')?;
        (!service.is_empty() && !id.is_empty() && !id.contains('/')).then_some(service)
    }
}

async fn run(client: Client, shared: Arc<Shared>) {
    let key = shared.dir.as_bytes().to_vec();
    let range_end = roster_api::range::prefix_end(&key);
    let mut delay = Duration::from_millis(50);
    loop {
        let list = RangeRequest { key: key.clone().into(), range_end: range_end.clone().into(), keys_only: true, ..Default::default() };
        match client.range(list).await {
            Ok(resp) => {
                let mut counts = HashMap::new();
                for kv in &resp.kvs {
                    if let Some(s) = shared.service_of(&kv.key) {
                        *counts.entry(s.to_owned()).or_insert(0u32) += 1;
                    }
                }
                *shared.counts.write() = counts;
                shared.listed.send_replace(true);
                delay = Duration::from_millis(50);
                let rev = resp.header.map_or(0, |h| h.revision);
                if let Err(e) = follow(&client, &shared, &key, &range_end, rev).await {
                    tracing::warn!(dir = %shared.dir, error = %e, "service directory watch broke; listing again");
                } else {
                    continue;
                }
            }
            Err(e) => tracing::warn!(dir = %shared.dir, error = %e, "cannot list the service directory; keeping the last known names"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Applies watch events from `rev + 1`; `Ok` when the server canceled the
/// watch (compaction) and the directory must be listed again.
async fn follow(client: &Client, shared: &Shared, key: &[u8], range_end: &[u8], rev: i64) -> roster::Result<()> {
    let create = WatchCreateRequest { key: key.to_vec().into(), range_end: range_end.to_vec().into(), start_revision: rev + 1, ..Default::default() };
    let mut w = client.watch_stream(create).await?;
    loop {
        let resp = match w.next().await {
            Ok(Some(resp)) => resp,
            // A broken or ended stream moves the client off its endpoint.
            Ok(None) => {
                client.fail_over_from(&w.endpoint);
                return Err(roster::Error::Unreachable { endpoints: w.endpoint.clone(), reason: "watch stream ended".into() });
            }
            Err(e) => {
                client.fail_over_from(&w.endpoint);
                return Err(e);
            }
        };
        if resp.canceled {
            return Ok(());
        }
        if resp.events.is_empty() {
            continue;
        }
        let mut counts = shared.counts.write();
        for ev in &resp.events {
            let Some(kv) = &ev.kv else { continue };
            let Some(service) = shared.service_of(&kv.key) else { continue };
            if ev.r#type == EventType::Delete as i32 {
                if let Some(n) = counts.get_mut(service) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.remove(service);
                    }
                }
            } else if kv.version == 1 {
                // A new key; later puts to it (version > 1) change no count.
                *counts.entry(service.to_owned()).or_insert(0) += 1;
            }
        }
    }
}
