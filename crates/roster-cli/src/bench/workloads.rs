//! The workloads. Each one is bounded by its request count and by
//! `--max-duration`, and stops by itself.

use super::report::{histogram, progress, Outcome};
use super::target::{rss_bytes, Target};
use super::{Common, Load};
use anyhow::{Context, Result};
use bytes::Bytes;
use roster_api::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, watch_client::WatchClient, watch_request::RequestUnion,
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Runs `clients` loops over `conns` connections until `total` requests
/// are done or time is up. `op(channel, n)` makes request number `n`.
async fn drive<F, Fut>(what: &str, t: &Target, load: &Load, common: &Common, op: F) -> Result<Outcome>
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let conns = t.connect(load.conns).await?;
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(common.max_duration);
    let total = load.total;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..load.clients.max(1) {
        let (ch, op, next, done) = (conns[c % conns.len()].clone(), op.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut errors = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() > deadline {
                    break;
                }
                let t0 = Instant::now();
                match op(ch.clone(), n).await {
                    Ok(()) => {
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => errors += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (hist, errors)
        }));
    }
    let mut last = Instant::now();
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress(what, done.load(Ordering::Relaxed), total, &mut last);
    }
    let elapsed = start.elapsed();
    let mut hist = histogram();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        hist.add(h)?;
        errors += e;
    }
    Ok(Outcome::new(hist.clone(), hist.len(), elapsed, errors))
}

fn padded(n: u64, size: usize) -> Bytes {
    let mut k = format!("{n:0size$}").into_bytes();
    k.truncate(size.max(1));
    Bytes::from(k)
}

#[derive(Debug, Clone)]
pub struct Put {
    pub load: Load,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
}

impl Put {
    pub async fn run(&self, t: Target, common: &Common) -> Result<Outcome> {
        let value = Bytes::from(vec![b'v'; self.val_size]);
        let (key_size, space) = (self.key_size, self.key_space.max(1));
        drive("put", &t, &self.load, common, move |ch, n| {
            // A multiplicative hash spreads the keys over the key space.
            let key = padded(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % space, key_size);
            let value = value.clone();
            async move { KvClient::new(ch).put(PutRequest { key, value, ..Default::default() }).await.map(|_| ()) }
        })
        .await
    }
}

#[derive(Debug, Clone)]
pub struct Range {
    pub load: Load,
    pub serializable: bool,
}

impl Range {
    pub fn name(&self) -> String {
        format!("range {} {}x{}", if self.serializable { "serial" } else { "linear" }, self.load.conns, self.load.clients)
    }

    pub async fn run(&self, t: Target, common: &Common) -> Result<Outcome> {
        let key = Bytes::from_static(b"bench-range-key");
        let ch = t.connect(1).await?.remove(0);
        KvClient::new(ch).put(PutRequest { key: key.clone(), value: Bytes::from(vec![b'v'; 256]), ..Default::default() }).await?;
        let serializable = self.serializable;
        drive("range", &t, &self.load, common, move |ch, _| {
            let key = key.clone();
            async move { KvClient::new(ch).range(RangeRequest { key, serializable, ..Default::default() }).await.map(|_| ()) }
        })
        .await
    }
}

#[derive(Debug, Clone)]
pub struct Keepalive {
    pub load: Load,
    pub leases: usize,
}

impl Keepalive {
    /// Each client owns a keepalive stream and renews its share of the
    /// leases in turn, one round trip at a time.
    pub async fn run(&self, t: Target, common: &Common) -> Result<Outcome> {
        let conns = t.connect(self.load.conns).await?;
        let mut ids = Vec::with_capacity(self.leases);
        for _ in 0..self.leases {
            let r = LeaseClient::new(conns[0].clone()).lease_grant(LeaseGrantRequest { ttl: 300, id: 0 }).await?;
            ids.push(r.into_inner().id);
        }
        let clients = self.load.clients.clamp(1, self.leases.max(1));
        let per = (self.load.total / clients as u64).max(1);
        let deadline = Instant::now() + Duration::from_secs(common.max_duration);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mine: Vec<i64> = ids.iter().skip(c).step_by(clients).copied().collect();
            let ch = conns[c % conns.len()].clone();
            tasks.push(tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                // Queue the first renewal: etcd answers headers with it.
                tx.send(LeaseKeepAliveRequest { id: mine[0] }).await.ok();
                let mut resp = LeaseClient::new(ch).lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
                let mut hist = histogram();
                let mut errors = 0;
                let mut t0 = Instant::now();
                for i in 0..per {
                    if i > 0 {
                        t0 = Instant::now();
                        if tx.send(LeaseKeepAliveRequest { id: mine[i as usize % mine.len()] }).await.is_err() {
                            break;
                        }
                    }
                    match resp.message().await {
                        Ok(Some(r)) if r.ttl > 0 => {
                            let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                        }
                        _ => errors += 1,
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>((hist, errors))
            }));
        }
        let mut hist = histogram();
        let mut errors = 0;
        for t in tasks {
            let (h, e) = t.await??;
            hist.add(h)?;
            errors += e;
        }
        Ok(Outcome::new(hist.clone(), hist.len(), start.elapsed(), errors))
    }
}

#[derive(Debug, Clone)]
pub struct Watch {
    pub watchers: usize,
    pub total: u64,
}

impl Watch {
    /// The writer stamps each value with its send time; every watcher
    /// records the delay to receipt and counts what it got.
    pub async fn run(&self, t: Target, common: &Common) -> Result<Outcome> {
        let key = Bytes::from(format!("bench-watch-{}", std::process::id()));
        let conns = t.connect(4).await?;
        let base = Instant::now();
        let deadline = base + Duration::from_secs(common.max_duration);
        let total = self.total;
        let mut watchers = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(self.watchers.max(1));
        for w in 0..self.watchers {
            let ch = conns[w % conns.len()].clone();
            let (key, ready_tx) = (key.clone(), ready_tx.clone());
            watchers.push(tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let create = WatchCreateRequest { key, ..Default::default() };
                tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await.ok();
                let mut stream = WatchClient::new(ch).watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
                let mut hist = histogram();
                let mut got = 0u64;
                while got < total {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let Ok(Ok(Some(r))) = tokio::time::timeout(left, stream.message()).await else { break };
                    if r.created {
                        ready_tx.send(()).await.ok();
                    }
                    for ev in r.events {
                        let sent: u64 = ev.kv.as_ref().and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()).unwrap_or(0);
                        let now = base.elapsed().as_micros() as u64;
                        let _ = hist.record(now.saturating_sub(sent).max(1));
                        got += 1;
                    }
                }
                drop(tx);
                Ok::<_, anyhow::Error>((hist, got))
            }));
        }
        drop(ready_tx);
        for _ in 0..self.watchers {
            tokio::time::timeout(Duration::from_secs(10), ready_rx.recv()).await.context("watchers not created in time")?;
        }
        let mut kv = KvClient::new(conns[0].clone());
        let start = Instant::now();
        let mut last = Instant::now();
        for n in 0..total {
            let value = Bytes::from(base.elapsed().as_micros().to_string());
            kv.put(PutRequest { key: key.clone(), value, ..Default::default() }).await?;
            progress("watch puts", n + 1, total, &mut last);
            if Instant::now() > deadline {
                break;
            }
        }
        let mut hist = histogram();
        let mut delivered = 0;
        for w in watchers {
            let (h, got) = w.await??;
            hist.add(h)?;
            delivered += got;
        }
        let elapsed = start.elapsed();
        let expected = total * self.watchers as u64;
        let mut o = Outcome::new(hist, delivered, elapsed, expected - delivered.min(expected));
        o.note = format!("events/s; {delivered}/{expected} delivered; latency is put-to-notify");
        Ok(o)
    }
}

#[derive(Debug, Clone)]
pub struct Memory {
    pub keys: u64,
    pub val_size: usize,
    pub pids: Vec<(String, u32)>,
}

impl Memory {
    pub async fn run(&self, t: Target, common: &Common) -> Result<Outcome> {
        let value = Bytes::from(vec![b'm'; self.val_size]);
        let load = Load { conns: 4, clients: 64, total: self.keys };
        let mut o = drive("lease+put", &t, &load, common, move |ch, n| {
            let value = value.clone();
            async move {
                let lease = LeaseClient::new(ch.clone()).lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 }).await?.into_inner().id;
                let key = Bytes::from(format!("/bench/mem/{n:08}"));
                KvClient::new(ch).put(PutRequest { key, value, lease, ..Default::default() }).await.map(|_| ())
            }
        })
        .await?;
        if let Some((_, pid)) = self.pids.iter().find(|(name, _)| *name == t.name) {
            let rss = rss_bytes(*pid)?;
            o.gauge = Some(("MiB RSS".into(), rss as f64 / (1 << 20) as f64));
        } else {
            o.note = format!("pass --pid {}=PID to read the server's RSS", t.name);
        }
        Ok(o)
    }
}

#[derive(Debug, Clone)]
pub struct Appearance {
    pub watchers: usize,
    pub instances: u64,
}

impl Appearance {
    /// Registers instances one at a time through the SDK and records, for
    /// every watcher, the time from `register` returning to the instance
    /// being in that watcher's list.
    pub async fn run(&self, t: Target, common: &Common) -> Result<Outcome> {
        let client = roster::Client::connect([t.addr.clone()])?;
        let service = format!("bench-appear-{}", std::process::id());
        let registry = roster::Registry::new(client);
        let discoveries: Vec<roster::Discovery> = (0..self.watchers).map(|_| registry.discover(&service)).collect();
        for d in &discoveries {
            tokio::time::timeout(Duration::from_secs(10), d.ready()).await.context("discovery did not list in time")?;
        }
        let deadline = Instant::now() + Duration::from_secs(common.max_duration);
        let mut hist = histogram();
        let mut errors = 0;
        let start = Instant::now();
        let mut last = Instant::now();
        for n in 0..self.instances {
            let id = format!("i{n}");
            let inst = roster::Instance::new(&service, format!("127.0.0.1:{}", 20000 + n)).with_id(&id);
            let reg = registry.register(inst).await?;
            let registered = Instant::now();
            // Poll every watcher together; each one's first sighting counts.
            let mut pending: Vec<&roster::Discovery> = discoveries.iter().collect();
            while !pending.is_empty() && registered.elapsed() < Duration::from_secs(5) {
                pending.retain(|d| {
                    let seen = d.snapshot().instances.contains_key(&id);
                    if seen {
                        let _ = hist.record(registered.elapsed().as_micros().max(1) as u64);
                    }
                    !seen
                });
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            errors += pending.len() as u64;
            reg.deregister().await?;
            progress("registrations", n + 1, self.instances, &mut last);
            if Instant::now() > deadline {
                break;
            }
        }
        let mut o = Outcome::new(hist.clone(), hist.len(), start.elapsed(), errors);
        o.note = "sightings/s; latency is register-to-listed, over every watcher".into();
        Ok(o)
    }
}
