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
//! The copy is kept by the SDK's [`roster::mirror`] (list, then watch from
//! the next revision; a compaction or a broken stream lists again). Errors
//! keep the last known names, as discovery does.

use parking_lot::RwLock;
use roster::Client;
use roster::mirror::{self, Mirror};
use roster_api::mvccpb::{Event, KeyValue, event::EventType};
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
pub struct DirectoryTask {
    _stop: roster::task::DropGuard,
}

// === impl Directory ===

impl Directory {
    /// Starts mirroring `<prefix>/` through `client`.
    pub fn spawn(client: Client, prefix: &str) -> (Directory, DirectoryTask) {
        let (listed, _) = watch::channel(false);
        let dir = format!("{prefix}/");
        let range = mirror::Range::prefix(&dir);
        let shared = Arc::new(Shared { dir, counts: RwLock::new(HashMap::new()), listed });
        let stop = mirror::spawn(client, range, shared.clone(), None);
        (Directory { shared }, DirectoryTask { _stop: stop })
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

// === impl Shared as Mirror ===

impl Mirror for Shared {
    fn label(&self) -> &str {
        &self.dir
    }

    fn reset(&self, kvs: &[KeyValue], _revision: i64) {
        let mut counts = HashMap::new();
        for kv in kvs {
            if let Some(s) = self.service_of(&kv.key) {
                *counts.entry(s.to_owned()).or_insert(0u32) += 1;
            }
        }
        *self.counts.write() = counts;
        self.listed.send_replace(true);
    }

    fn apply(&self, events: &[Event], _revision: i64) {
        let mut counts = self.counts.write();
        for ev in events {
            let Some(kv) = &ev.kv else { continue };
            let Some(service) = self.service_of(&kv.key) else { continue };
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

    /// The last known names stay; the mirror has logged why.
    fn unreachable(&self) {}
}
