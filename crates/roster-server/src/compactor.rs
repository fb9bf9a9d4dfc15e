//! Auto-compaction, as etcd 3.4's compactors do it.
//!
//! - **Periodic** (`--auto-compaction-retention 1h`): the current revision
//!   is sampled every tenth of the period (at most every 6 minutes), and a
//!   window of samples covering one period is kept. The first compaction
//!   comes one period after start, then one every `min(period, 1h)`, each to
//!   the oldest sample in the window: the revision of one period ago.
//! - **Revision** (`--auto-compaction-mode revision`): every check interval
//!   (5 minutes in etcd), compact to `current - retention` unless that is
//!   not positive or was compacted to last time.
//!
//! "Already compacted" counts as success, as in etcd. A failed compaction is
//! logged and tried again at the next tick. The task ends on shutdown.

use crate::Stop;
use crate::config::AutoCompaction;
use roster_store::{EtcdError, Store, pb};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);

/// Runs auto-compaction until `stop`.
pub(crate) async fn run(store: Store, mode: AutoCompaction, check: Duration, stop: Stop) {
    match mode {
        AutoCompaction::Periodic(period) => periodic(store, period, stop).await,
        AutoCompaction::Revision(keep) => revision(store, keep, check, stop).await,
    }
}

async fn periodic(store: Store, period: Duration, stop: Stop) {
    let interval = period.min(HOUR);
    let retry = interval / 10;
    let window = (period.as_nanos() / retry.as_nanos().max(1)) as usize + 1;
    let mut revs = VecDeque::with_capacity(window + 1);
    let mut last_success = Instant::now();
    // The first compaction waits a whole period; later ones, the interval.
    let mut wait = period;
    loop {
        revs.push_back(store.revision());
        if revs.len() > window {
            revs.pop_front();
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = stop.wait() => return,
        }
        if last_success.elapsed() < wait {
            continue;
        }
        wait = interval;
        let rev = revs[0];
        if compact(&store, rev, &format!("retention {period:?}")).await {
            last_success = Instant::now();
        }
    }
}

async fn revision(store: Store, keep: i64, check: Duration, stop: Stop) {
    let mut prev = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(check) => {}
            () = stop.wait() => return,
        }
        let rev = store.revision() - keep;
        if rev <= 0 || rev == prev {
            continue;
        }
        if compact(&store, rev, &format!("retention {keep} revisions")).await {
            prev = rev;
        }
    }
}

/// Compacts to `rev`; true when done or done already.
async fn compact(store: &Store, rev: i64, why: &str) -> bool {
    match store.compact(pb::CompactionRequest { revision: rev, physical: false }).await {
        Ok(_) => {
            tracing::info!(revision = rev, "auto-compacted ({why})");
            true
        }
        Err(EtcdError::Compacted) => true,
        Err(e) => {
            tracing::warn!(revision = rev, error = %e, "auto-compaction failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    async fn put_n(store: &Store, n: usize) {
        for i in 0..n {
            let r = pb::PutRequest { key: format!("k{}", i % 3).into(), value: "v".into(), ..Default::default() };
            store.put(r).await.unwrap();
        }
    }

    /// Polls (bounded) until the store is compacted to at least `rev`.
    async fn compacted_to(store: &Store, rev: i64, within: Duration) -> i64 {
        let deadline = std::time::Instant::now() + within;
        loop {
            let c = store.status().compact_revision;
            if c >= rev || std::time::Instant::now() > deadline {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn revision_mode_keeps_the_last_n_revisions() {
        let store = Store::in_memory();
        put_n(&store, 20).await;
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(store.clone(), AutoCompaction::Revision(5), Duration::from_millis(50), Stop(rx)));
        let at = store.revision();
        assert_eq!(compacted_to(&store, at - 5, Duration::from_secs(5)).await, at - 5);
        put_n(&store, 10).await;
        let at = store.revision();
        assert_eq!(compacted_to(&store, at - 5, Duration::from_secs(5)).await, at - 5, "and again as revisions grow");
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops on shutdown").unwrap();
    }

    #[tokio::test]
    async fn revision_mode_leaves_a_young_store_alone() {
        let store = Store::in_memory();
        put_n(&store, 3).await;
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(run(store.clone(), AutoCompaction::Revision(10), Duration::from_millis(20), Stop(rx)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.status().compact_revision, 0, "fewer revisions than the retention: nothing compacted");
        task.abort();
    }

    #[tokio::test]
    async fn periodic_mode_compacts_to_the_revision_of_one_period_ago() {
        let store = Store::in_memory();
        let (tx, rx) = watch::channel(false);
        let period = Duration::from_millis(600);
        let started = std::time::Instant::now();
        let task =
            tokio::spawn(run(store.clone(), AutoCompaction::Periodic(period), Duration::from_secs(3600), Stop(rx)));
        put_n(&store, 5).await;
        let early = store.revision();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.status().compact_revision, 0, "nothing before one period has passed");
        put_n(&store, 5).await;
        // The first compaction, at one period, goes to a revision sampled a
        // period earlier: at most what existed in the first moments.
        let c = compacted_to(&store, 1, Duration::from_secs(5)).await;
        assert!(started.elapsed() >= period, "compacted after {:?}", started.elapsed());
        assert!((1..=early).contains(&c), "compacted to {c}, expected at most {early}");
        // Later ones follow the writes, a period behind.
        let later = store.revision();
        put_n(&store, 5).await;
        assert!(compacted_to(&store, later, Duration::from_secs(5)).await >= later);
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("stops on shutdown").unwrap();
    }
}
