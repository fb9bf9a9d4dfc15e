//! The registry reads and writes behind the pages, on the SDK client of
//! the request (the logged-in user's, or the console's anonymous one).

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use roster::{Client, Instance};
use roster_api::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare, request_op,
};
use roster_api::mvccpb::KeyValue;
use roster_api::range::prefix_end;
use std::collections::BTreeMap;
use std::time::Duration;

pub type Result<T> = std::result::Result<T, String>;

fn err(e: roster::Error) -> String {
    match e {
        roster::Error::Status(s) => s.message().to_owned(),
        e => e.to_string(),
    }
}

/// One registered instance and what its key says about it. A drained
/// instance has no key (its registration withdrew it): it is read from its
/// drain marker, which holds its value and lives on its lease.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub instance: Instance,
    pub lease: i64,
    pub create_revision: i64,
    /// A drain marker exists for it (see [`roster::drain_key`]).
    pub drained: bool,
}

pub fn service_prefix(prefix: &str, service: Option<&str>) -> String {
    let p = prefix.trim_end_matches('/');
    match service {
        Some(s) => format!("{p}/{s}/"),
        None => format!("{p}/"),
    }
}

/// Where the drain markers of `prefix` (or of one service) live.
fn drain_range(prefix: &str, service: Option<&str>) -> String {
    service_prefix(&roster::drain_prefix(prefix), service)
}

fn range_op(start: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: start.as_bytes().to_vec().into(),
            range_end: prefix_end(start.as_bytes()).into(),
            ..Default::default()
        })),
    }
}

/// Every instance under `prefix` (or one service's), drained ones
/// included, and the revision read: keys and markers in one read.
pub async fn instances(client: &Client, prefix: &str, service: Option<&str>) -> Result<(Vec<Entry>, i64)> {
    let txn = TxnRequest {
        success: vec![range_op(&service_prefix(prefix, service)), range_op(&drain_range(prefix, service))],
        ..Default::default()
    };
    let resp = client.txn(txn).await.map_err(err)?;
    let mut ranges = resp.responses.into_iter().map(|r| match r.response {
        Some(roster_api::etcdserverpb::response_op::Response::ResponseRange(r)) => r.kvs,
        _ => Vec::new(),
    });
    let (keys, markers) = (ranges.next().unwrap_or_default(), ranges.next().unwrap_or_default());
    let base = service_prefix(prefix, None);
    let drain_base = drain_range(prefix, None);
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let mut read = |kv: &KeyValue, base: &str, drained: bool| {
        let raw = String::from_utf8_lossy(&kv.key).into_owned();
        let Some((svc, id)) = raw.strip_prefix(base).and_then(|r| r.split_once('/')) else {
            return;
        };
        let key = format!("{base_keys}{svc}/{id}", base_keys = service_prefix(prefix, None));
        if let Some(e) = out.get_mut(&key) {
            e.drained |= drained;
            return;
        }
        match Instance::from_value(svc, id, &kv.value) {
            Ok(instance) => {
                out.insert(
                    key.clone(),
                    Entry { key, instance, lease: kv.lease, create_revision: kv.create_revision, drained },
                );
            }
            Err(e) => tracing::debug!(key = raw, error = %e, "skipping a value that is not an instance"),
        }
    };
    for kv in &keys {
        read(kv, &base, false);
    }
    for kv in &markers {
        read(kv, &drain_base, true);
    }
    Ok((out.into_values().collect(), resp.header.map_or(0, |h| h.revision)))
}

/// Remaining TTL of each lease (seconds; -1 when gone), asked concurrently.
pub async fn lease_ttls(client: &Client, leases: impl IntoIterator<Item = i64>) -> BTreeMap<i64, i64> {
    let mut set = tokio::task::JoinSet::new();
    for lease in leases.into_iter().filter(|l| *l != 0).collect::<std::collections::BTreeSet<_>>().into_iter().take(500)
    {
        let c = client.clone();
        set.spawn(async move { (lease, c.lease_time_to_live(lease, false).await.map_or(-1, |r| r.ttl)) });
    }
    let mut out = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        if let Ok((l, ttl)) = r {
            out.insert(l, ttl);
        }
    }
    out
}

pub async fn get(client: &Client, key: &str, revision: i64) -> Result<Option<KeyValue>> {
    let req = RangeRequest { key: key.as_bytes().to_vec().into(), revision, ..Default::default() };
    Ok(client.range(req).await.map_err(err)?.kvs.into_iter().next())
}

fn mod_rev_is(key: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

/// What a compare-and-swap came to.
pub enum Swap {
    Done {
        revision: i64,
    },
    /// Someone else wrote first: the value now there.
    Conflict {
        current: Option<KeyValue>,
    },
}

/// Puts `value` at `key` if its mod revision is still `expected` (0: the
/// key must not exist). `keep_lease` keeps the key's lease.
pub async fn compare_and_put(
    client: &Client,
    key: &str,
    expected: i64,
    value: Vec<u8>,
    keep_lease: bool,
) -> Result<Swap> {
    let put = PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.into(),
        ignore_lease: keep_lease,
        ..Default::default()
    };
    let get = RangeRequest { key: key.as_bytes().to_vec().into(), ..Default::default() };
    let txn = TxnRequest {
        compare: vec![mod_rev_is(key, expected)],
        success: vec![RequestOp { request: Some(request_op::Request::RequestPut(put)) }],
        failure: vec![RequestOp { request: Some(request_op::Request::RequestRange(get)) }],
    };
    let resp = client.txn(txn).await.map_err(err)?;
    if resp.succeeded {
        return Ok(Swap::Done { revision: resp.header.map_or(0, |h| h.revision) });
    }
    let current = resp.responses.into_iter().find_map(|r| match r.response {
        Some(roster_api::etcdserverpb::response_op::Response::ResponseRange(r)) => r.kvs.into_iter().next(),
        _ => None,
    });
    Ok(Swap::Conflict { current })
}

/// What an action on an instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Drain,
    Resume,
    Deregister,
    Weight(u32),
}

impl Action {
    pub fn parse(name: &str, weight: Option<&str>) -> Option<Action> {
        Some(match name {
            "drain" => Action::Drain,
            "resume" => Action::Resume,
            "deregister" => Action::Deregister,
            "weight" => Action::Weight(weight?.trim().parse().ok().filter(|w| *w <= 1_000_000)?),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Drain => "drain",
            Action::Resume => "resume",
            Action::Deregister => "deregister",
            Action::Weight(_) => "weight",
        }
    }
}

/// How long Drain and Resume wait for the instance's registration to
/// withdraw or put back its key.
const FOLLOW_WAIT: Duration = Duration::from_secs(2);

/// Waits up to [`FOLLOW_WAIT`] until `key` exists (`want`) or not.
async fn key_becomes(client: &Client, key: &str, want: bool) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + FOLLOW_WAIT;
    loop {
        if get(client, key, 0).await?.is_some() == want {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn delete(client: &Client, key: &str) -> Result<()> {
    let del = DeleteRangeRequest { key: key.as_bytes().to_vec().into(), ..Default::default() };
    client.delete_range(del).await.map_err(err).map(|_| ())
}

/// Applies `action` to the instance at `key`; the message says what was done.
///
/// Drain writes the instance's drain marker on its own lease, holding its
/// value; the SDK registration that watches it withdraws the key and keeps
/// the lease, and Resume deletes the marker. An instance no registration
/// keeps (a key put by hand) does not follow: the marker is taken back.
pub async fn act(client: &Client, prefix: &str, key: &str, action: Action) -> Result<String> {
    let base = service_prefix(prefix, None);
    let Some((svc, id)) = key.strip_prefix(&base).and_then(|r| r.split_once('/')) else {
        return Err(format!("{key} is not an instance key under {base}"));
    };
    let marker = roster::drain_key(prefix, svc, id);
    let current = get(client, key, 0).await?;
    match action {
        Action::Drain => {
            let Some(kv) = current else {
                return match get(client, &marker, 0).await? {
                    Some(_) => Ok(format!("{svc}/{id} is drained already")),
                    None => Err(format!("{key} is not registered (any more)")),
                };
            };
            let put = PutRequest {
                key: marker.as_bytes().to_vec().into(),
                value: kv.value.clone(),
                lease: kv.lease,
                ..Default::default()
            };
            client.put(put).await.map_err(err)?;
            if key_becomes(client, key, false).await? {
                return Ok(format!(
                    "{svc}/{id} drained: its registration withdrew it and keeps its lease {:x}",
                    kv.lease
                ));
            }
            delete(client, &marker).await?;
            Ok(format!(
                "{svc}/{id} was not drained: this instance does not follow drain requests; set its weight to 0 instead (no registration withdrew its key within {} s)",
                FOLLOW_WAIT.as_secs()
            ))
        }
        Action::Resume => {
            if get(client, &marker, 0).await?.is_none() {
                return Err(format!("{svc}/{id} is not drained"));
            }
            delete(client, &marker).await?;
            if key_becomes(client, key, true).await? {
                Ok(format!("{svc}/{id} resumed: its registration put it back"))
            } else {
                Ok(format!(
                    "{svc}/{id}: drain ended, but its registration has not put it back within {} s (paused by its own process, or failing its health check)",
                    FOLLOW_WAIT.as_secs()
                ))
            }
        }
        Action::Deregister => {
            // A drained instance has only its marker, on the same lease.
            let (kv, what) = match current {
                Some(kv) => (kv, key),
                None => match get(client, &marker, 0).await? {
                    Some(kv) => (kv, marker.as_str()),
                    None => return Err(format!("{key} is not registered (any more)")),
                },
            };
            if kv.lease != 0 {
                client.lease_revoke(kv.lease).await.map_err(err)?;
                return Ok(format!("{svc}/{id} deregistered (lease {:x} revoked)", kv.lease));
            }
            delete(client, what).await?;
            Ok(format!("{svc}/{id} deregistered (key deleted)"))
        }
        Action::Weight(w) => {
            let Some(kv) = current else {
                return Err(format!("{key} is not registered (any more)"));
            };
            let mut inst = Instance::from_value(svc, id, &kv.value)?;
            inst.weight = w;
            match compare_and_put(client, key, kv.mod_revision, inst.to_value().into_bytes(), true).await? {
                Swap::Done { .. } => Ok(format!("{svc}/{id} weight set to {w}")),
                Swap::Conflict { .. } => Err(format!("{key} changed meanwhile; nothing was written, try again")),
            }
        }
    }
}

/// A key's earlier versions, newest first: each put back to its creation
/// or the compaction point (`compacted` is then set).
pub struct History {
    pub versions: Vec<KeyValue>,
    pub compacted: bool,
}

pub async fn history(client: &Client, current: &KeyValue, max: usize) -> Result<History> {
    let key = String::from_utf8_lossy(&current.key).into_owned();
    let mut versions = vec![current.clone()];
    let mut compacted = false;
    while versions.len() < max {
        let last = versions.last().expect("one at least");
        if last.mod_revision <= last.create_revision || last.mod_revision <= 1 {
            break;
        }
        match get(client, &key, last.mod_revision - 1).await {
            Ok(Some(kv)) => versions.push(kv),
            Ok(None) => break,
            Err(e) if e.contains("required revision has been compacted") => {
                compacted = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(History { versions, compacted })
}

/// A page of the key browser.
pub struct KeyPage {
    pub keys: Vec<(Vec<u8>, i64, i64)>,
    pub count: i64,
    pub more: bool,
    pub revision: i64,
}

/// Up to `limit` keys under `prefix` after `after` (exclusive), keys only:
/// a million keys cost one page each.
pub async fn keys(client: &Client, prefix: &str, after: Option<&str>, limit: i64) -> Result<KeyPage> {
    let end = prefix_end(prefix.as_bytes());
    let start = match after {
        Some(a) if !a.is_empty() => {
            let mut k = a.as_bytes().to_vec();
            k.push(0);
            k
        }
        _ => prefix.as_bytes().to_vec(),
    };
    let req = RangeRequest { key: start.into(), range_end: end.into(), limit, keys_only: true, ..Default::default() };
    let resp = client.range(req).await.map_err(err)?;
    Ok(KeyPage {
        keys: resp.kvs.into_iter().map(|kv| (kv.key.to_vec(), kv.mod_revision, kv.lease)).collect(),
        count: resp.count,
        more: resp.more,
        revision: resp.header.map_or(0, |h| h.revision),
    })
}

/// Participants of every lock or election under `prefix`, by name, each
/// list oldest first (the holder or leader first).
pub async fn participants(client: &Client, prefix: &str) -> Result<BTreeMap<String, Vec<KeyValue>>> {
    let req = RangeRequest {
        key: prefix.as_bytes().to_vec().into(),
        range_end: prefix_end(prefix.as_bytes()).into(),
        limit: 10_000,
        ..Default::default()
    };
    let resp = client.range(req).await.map_err(err)?;
    let mut out: BTreeMap<String, Vec<KeyValue>> = BTreeMap::new();
    for kv in resp.kvs {
        let key = String::from_utf8_lossy(&kv.key).into_owned();
        let name = key.rsplit_once('/').map_or(key.as_str(), |(n, _)| n).to_owned();
        out.entry(name).or_default().push(kv);
    }
    for v in out.values_mut() {
        v.sort_by_key(|kv| kv.create_revision);
    }
    Ok(out)
}

/// The compaction point: from the metric when there is one, else the
/// oldest revision a range still answers, found by bisection.
pub async fn compaction_point(client: &Client, current: i64) -> Result<i64> {
    let readable = |rev: i64| {
        let c = client.clone();
        async move {
            let req =
                RangeRequest { key: vec![0].into(), limit: 1, keys_only: true, revision: rev, ..Default::default() };
            match c.range(req).await {
                Ok(_) => Ok(true),
                Err(roster::Error::Status(s)) if s.message().contains("required revision has been compacted") => {
                    Ok(false)
                }
                Err(e) => Err(err(e)),
            }
        }
    };
    if current <= 1 || readable(1).await? {
        return Ok(0);
    }
    // Invariant: lo is compacted, hi is readable.
    let (mut lo, mut hi) = (1, current);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if readable(mid).await? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // etcd answers the compaction revision itself; everything below it is gone.
    Ok(hi)
}

/// GETs of the registry's `/health` and `/metrics` (plain HTTP).
pub struct HttpProbe {
    base: Option<String>,
    client: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    /// The last requests total and when it was read, for a rate.
    last: parking_lot::Mutex<Option<(std::time::Instant, f64)>>,
}

/// Live figures read from `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub requests_per_s: Option<f64>,
    pub watchers: Option<f64>,
    pub leases: Option<f64>,
    pub compact_revision: Option<f64>,
}

impl HttpProbe {
    pub fn new(base: Option<String>) -> Self {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        HttpProbe { base, client, last: parking_lot::Mutex::new(None) }
    }

    pub fn configured(&self) -> bool {
        self.base.is_some()
    }

    async fn fetch(&self, path: &str) -> Option<String> {
        let base = self.base.as_ref()?;
        let uri: http::Uri = format!("{}{path}", base.trim_end_matches('/')).parse().ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(2), self.client.get(uri)).await.ok()?.ok()?;
        let body = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect()).await.ok()?.ok()?;
        String::from_utf8(body.to_bytes().to_vec()).ok()
    }

    /// The `backup` member of `/health`, if the registry reports one.
    pub async fn backup(&self) -> Option<serde_json::Value> {
        let body = self.fetch("/health").await?;
        serde_json::from_str::<serde_json::Value>(&body).ok()?.get("backup").cloned()
    }

    pub async fn figures(&self) -> Option<Figures> {
        let text = self.fetch("/metrics").await?;
        let mut total = None;
        let mut f = Figures::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            let metric = name.split('{').next().unwrap_or(name);
            match metric {
                "roster_grpc_requests_total" | "grpc_server_handled_total" => *total.get_or_insert(0.0) += v,
                "roster_watchers" | "etcd_debugging_mvcc_watcher_total" => f.watchers = Some(v),
                "roster_store_leases" => f.leases = Some(v),
                "roster_store_compact_revision" => f.compact_revision = Some(v),
                _ => {}
            }
        }
        if let Some(total) = total {
            let now = std::time::Instant::now();
            let prev = self.last.lock().replace((now, total));
            if let Some((at, before)) = prev {
                let dt = now.duration_since(at).as_secs_f64();
                if dt > 0.05 {
                    f.requests_per_s = Some(((total - before) / dt).max(0.0));
                }
            }
        }
        Some(f)
    }
}

/// The value shown formatted: JSON pretty-printed, TOML and YAML
/// re-emitted from what they parse to. `None` when it does not parse.
pub fn formatted(format: roster::config::Format, value: &[u8]) -> Option<String> {
    use roster::config::Format;
    match format {
        Format::Json => {
            format.decode::<serde_json::Value>(value).ok().and_then(|v| serde_json::to_string_pretty(&v).ok())
        }
        Format::Toml => format.decode::<toml::Table>(value).ok().and_then(|v| toml::to_string_pretty(&v).ok()),
        Format::Yaml => {
            format.decode::<serde_yaml_ng::Value>(value).ok().and_then(|v| serde_yaml_ng::to_string(&v).ok())
        }
    }
}
