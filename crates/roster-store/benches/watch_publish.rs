//! What watchers on other keys cost a writer: puts (one event) and txns of
//! 100 puts (one revision, 100 events) on an in-memory store with no
//! watchers, and with 10,000 single-key watchers on unrelated keys, each
//! on its own stream as a registry's clients hold them.
//!
//! Criterion reports each case; then an interleaved run (the two stores
//! take turns, so machine noise hits both alike) prints the per-write cost
//! of both and their ratio, which the issue wants within 10%.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use roster_store::pb::{PutRequest, RequestOp, TxnRequest, WatchCreateRequest, request_op::Request};
use roster_store::{Store, WatchControl, WatchEvents};
use std::time::{Duration, Instant};

const WATCHERS: usize = 10_000;

struct Case {
    name: &'static str,
    store: Store,
    _streams: Vec<(WatchControl, WatchEvents)>,
}

fn case(rt: &tokio::runtime::Runtime, name: &'static str, watchers: usize) -> Case {
    let store = Store::in_memory();
    let streams = rt.block_on(async {
        let mut streams = Vec::with_capacity(watchers);
        for i in 0..watchers {
            let (ctl, mut ev) = store.watch_stream();
            ctl.create(WatchCreateRequest { key: Bytes::from(format!("/services/other/{i}")), ..Default::default() })
                .await;
            assert!(ev.next().await.expect("created").created);
            streams.push((ctl, ev));
        }
        streams
    });
    assert_eq!(store.status().watchers, watchers as u64);
    Case { name, store, _streams: streams }
}

fn put(key: &'static str) -> PutRequest {
    PutRequest {
        key: Bytes::from_static(key.as_bytes()),
        value: Bytes::from_static(b"10.0.0.7:50051"),
        ..Default::default()
    }
}

fn txn() -> TxnRequest {
    let success = (0..100)
        .map(|i| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::from(format!("/bench/txn/{i:03}")),
                value: Bytes::from_static(b"v"),
                ..Default::default()
            })),
        })
        .collect();
    TxnRequest { compare: vec![], success, failure: vec![] }
}

fn criterion_cases(c: &mut Criterion, rt: &tokio::runtime::Runtime, cases: &[Case]) {
    let mut g = c.benchmark_group("publish");
    for case in cases {
        g.bench_with_input(BenchmarkId::new("put", case.name), case, |b, case| {
            b.iter(|| rt.block_on(case.store.put(put("/bench/key"))).unwrap());
        });
        let t = txn();
        g.bench_with_input(BenchmarkId::new("txn100", case.name), case, |b, case| {
            b.iter(|| rt.block_on(case.store.txn(t.clone())).unwrap());
        });
    }
    g.finish();
}

/// Median per-write time of each case over interleaved rounds.
fn interleaved(
    rt: &tokio::runtime::Runtime,
    cases: &[Case],
    what: &str,
    rounds: usize,
    per_round: usize,
    write: impl Fn(&Store),
) {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        // Alternate who goes first, too.
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let t = Instant::now();
            for _ in 0..per_round {
                write(&cases[i].store);
            }
            samples[i].push(t.elapsed() / per_round as u32);
        }
    }
    let medians: Vec<Duration> = samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            s[s.len() / 2]
        })
        .collect();
    let _ = rt;
    for (case, m) in cases.iter().zip(&medians) {
        println!("{what:>7} {:>22}: {:>9.2} us per write", case.name, m.as_secs_f64() * 1e6);
    }
    println!(
        "{what:>7} ratio {} / {}: {:.3}",
        cases[1].name,
        cases[0].name,
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cases = [case(&rt, "no watchers", 0), case(&rt, "10k unrelated watchers", WATCHERS)];
    let mut c = Criterion::default().configure_from_args();
    criterion_cases(&mut c, &rt, &cases);
    c.final_summary();
    let t = txn();
    interleaved(&rt, &cases, "put", 40, 2000, |s| {
        rt.block_on(s.put(put("/bench/key"))).unwrap();
    });
    interleaved(&rt, &cases, "txn100", 40, 200, |s| {
        rt.block_on(s.txn(t.clone())).unwrap();
    });
}
