//! `watch`: one writer, many watch streams on one key (or one prefix).
//!
//! The writer stamps each value with its sequence number and send time.
//! Every watcher records the put-to-notify delay of each event and marks
//! the sequence number as seen, so an event missed, delivered twice or out
//! of order is counted: that is a correctness signal, not noise.

use super::Workload;
use super::driver::GRACE;
use super::report::{FirstError, Outcome, Progress, histogram};
use super::target::Target;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use roster_api::etcdserverpb::{
    PutRequest, WatchCreateRequest, WatchRequest, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[derive(Debug, Clone, Args)]
// No arg group: the subcommand variant of the same name already owns that id.
#[group(skip)]
pub struct Watch {
    /// Watch streams, one watcher each.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub watchers: u64,
    /// Puts by the writer, one after another.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub total: u64,
    /// gRPC connections the watch streams share (the writer has its own).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub conns: u64,
    /// Watch a prefix; the writer spreads its puts over `--prefix-keys`
    /// keys under it.
    #[arg(long)]
    pub prefix: bool,
    /// Keys under the prefix, with `--prefix`.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub prefix_keys: u64,
}

impl Watch {
    pub fn new(watchers: u64, total: u64) -> Watch {
        Watch { watchers, total, conns: 4, prefix: false, prefix_keys: 100 }
    }
}

/// What the writer has done, once it is done: puts acknowledged, and when
/// the last one was.
type Finished = Option<(u64, Instant)>;

/// What one watcher saw.
struct Seen {
    hist: Histogram<u64>,
    distinct: u64,
    twice: u64,
    out_of_order: u64,
    last_event: Option<Instant>,
}

impl Workload for Watch {
    fn name(&self) -> String {
        let what = if self.prefix { " prefix" } else { "" };
        format!("watch 1->{}{what}", self.watchers)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let base_key = format!("/bench/watch/{}-{nanos}", std::process::id());
        let (watch_key, range_end) = if self.prefix {
            let p = format!("{base_key}/");
            let end = roster_api::range::prefix_end(p.as_bytes());
            (Bytes::from(p), Bytes::from(end))
        } else {
            (Bytes::from(base_key.clone()), Bytes::new())
        };
        let conns = t.connect(self.conns).await?;
        let writer = t.connect_one().await?;

        let base = Instant::now();
        let deadline = base + max;
        let (total, watchers) = (self.total, self.watchers);
        let (finished_tx, finished_rx) = watch::channel::<Finished>(None);
        let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(watchers as usize);
        let first = FirstError::default();
        let mut tasks = JoinSet::new();
        for w in 0..watchers as usize {
            let create =
                WatchCreateRequest { key: watch_key.clone(), range_end: range_end.clone(), ..Default::default() };
            let ch = conns[w % conns.len()].clone();
            let (finished, ready, first) = (finished_rx.clone(), ready_tx.clone(), first.clone());
            tasks.spawn(watcher(ch, create, total, base, deadline + GRACE, finished, ready, first));
        }
        drop(ready_tx);

        // Every watcher must be created before the first put.
        let created = tokio::time::timeout_at((base + max.min(Duration::from_secs(30))).into(), async {
            let mut created = 0;
            while let Some(r) = ready_rx.recv().await {
                match r {
                    Ok(()) => created += 1,
                    Err(e) => bail!("a watch stream failed before it was created: {e}"),
                }
                if created == watchers {
                    break;
                }
            }
            Ok(created)
        })
        .await;
        match created {
            Ok(Ok(n)) if n == watchers => {}
            Ok(Err(e)) => return Err(e),
            _ => bail!("only some of the {watchers} watchers were created in time"),
        }

        let progress = Progress::start(format!("watch puts on {}", t.name), total);
        let mut kv = KvClient::new(writer);
        let start = Instant::now();
        let (mut acked, mut put_errors) = (0u64, 0u64);
        for n in 0..total {
            if Instant::now() >= deadline {
                break;
            }
            let key = if self.prefix {
                Bytes::from(format!("{base_key}/{}", n % self.prefix_keys))
            } else {
                watch_key.clone()
            };
            let value = Bytes::from(format!("{n} {}", base.elapsed().as_micros()));
            match tokio::time::timeout_at(
                (deadline + GRACE).into(),
                kv.put(PutRequest { key, value, ..Default::default() }),
            )
            .await
            {
                Ok(Ok(_)) => acked += 1,
                Ok(Err(status)) => {
                    put_errors += 1;
                    first.status(&status);
                }
                Err(_) => {
                    put_errors += 1;
                    first.set("a put had no answer within --max-duration");
                    break;
                }
            }
            progress.add(1);
        }
        drop(progress);
        let _ = finished_tx.send(Some((acked, Instant::now())));

        let mut hist = histogram();
        let (mut delivered, mut twice, mut out_of_order) = (0, 0, 0);
        let mut last_event = start;
        while let Some(joined) = tasks.join_next().await {
            let seen = joined.context("a watcher task failed")?;
            hist.add(seen.hist)?;
            delivered += seen.distinct;
            twice += seen.twice;
            out_of_order += seen.out_of_order;
            last_event = last_event.max(seen.last_event.unwrap_or(start));
        }
        drop(finished_tx);

        let expected = acked * watchers;
        let missing = expected.saturating_sub(delivered);
        let mut o = Outcome::new(hist, last_event.saturating_duration_since(start).max(Duration::from_micros(1)), 0);
        o.ops = delivered;
        o.errors = missing + twice + out_of_order + put_errors;
        o.first_error = first.get();
        let mut note = format!("events/s; {delivered}/{expected} delivered");
        if missing > 0 {
            note += &format!(", {missing} MISSING");
        }
        if twice > 0 {
            note += &format!(", {twice} TWICE");
        }
        if out_of_order > 0 {
            note += &format!(", {out_of_order} OUT OF ORDER");
        }
        if put_errors > 0 {
            note += &format!(", {put_errors} puts failed");
        }
        o.note = note + "; latency put-to-notify";
        Ok(o)
    }
}

/// One watch stream with one watcher: reports `created` on `ready`, then
/// takes events until it has every acknowledged put, or until `GRACE`
/// after the writer finished, or until `hard`.
#[allow(clippy::too_many_arguments)]
async fn watcher(
    ch: Channel,
    create: WatchCreateRequest,
    total: u64,
    base: Instant,
    hard: Instant,
    mut finished: watch::Receiver<Finished>,
    ready: mpsc::Sender<Result<(), String>>,
    first: FirstError,
) -> Seen {
    let mut seen = Seen { hist: histogram(), distinct: 0, twice: 0, out_of_order: 0, last_event: None };
    let mut marks = vec![0u64; total.div_ceil(64) as usize];
    let mut highest: Option<u64> = None;
    // Queue the create request before opening the stream: etcd sends its
    // response headers only with its first message.
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.send(WatchRequest { request_union: Some(RequestUnion::CreateRequest(create)) }).await;
    let mut stream =
        match tokio::time::timeout_at(hard.into(), WatchClient::new(ch).watch(ReceiverStream::new(rx))).await {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(status)) => {
                let _ = ready.send(Err(format!("{:?}: {}", status.code(), status.message()))).await;
                return seen;
            }
            Err(_) => {
                let _ = ready.send(Err("the watch stream did not open in time".into())).await;
                return seen;
            }
        };
    loop {
        let done = *finished.borrow_and_update();
        if done.is_some_and(|(acked, _)| seen.distinct >= acked) {
            break;
        }
        let until = done.map_or(hard, |(_, at)| (at + GRACE).min(hard));
        tokio::select! {
            m = tokio::time::timeout_at(until.into(), stream.message()) => match m {
                Err(_) => break,
                Ok(Ok(Some(r))) => {
                    if r.created {
                        let _ = ready.send(Ok(())).await;
                    }
                    if r.canceled {
                        first.set(format!("a watch was canceled: {:?}", r.cancel_reason));
                        break;
                    }
                    let now = base.elapsed().as_micros() as u64;
                    for ev in r.events {
                        let Some((n, sent)) = ev.kv.as_ref().and_then(|kv| stamp(&kv.value)) else {
                            first.set("an event with a value the writer did not write");
                            continue;
                        };
                        seen.hist.saturating_record(now.saturating_sub(sent).max(1));
                        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
                        match marks.get_mut(word) {
                            Some(m) if *m & bit != 0 => seen.twice += 1,
                            Some(m) => {
                                *m |= bit;
                                seen.distinct += 1;
                            }
                            None => first.set(format!("an event for put {n}, which was never sent")),
                        }
                        if highest.is_some_and(|h| n < h) {
                            seen.out_of_order += 1;
                        }
                        highest = highest.max(Some(n));
                    }
                    seen.last_event = Some(Instant::now());
                }
                Ok(Ok(None)) => {
                    first.set("the server closed a watch stream");
                    break;
                }
                Ok(Err(status)) => {
                    first.status(&status);
                    break;
                }
            },
            Ok(()) = finished.changed() => {}
        }
    }
    drop(tx);
    seen
}

/// Parses a value the writer wrote: `"<sequence> <micros since base>"`.
fn stamp(value: &[u8]) -> Option<(u64, u64)> {
    let (n, sent) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    Some((n.parse().ok()?, sent.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn stamps_round_trip() {
        assert_eq!(stamp(b"12 3456"), Some((12, 3456)));
        assert_eq!(stamp(b"12"), None);
        assert_eq!(stamp(b"x 1"), None);
    }
}
