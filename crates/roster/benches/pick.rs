//! Cost of one pick per policy, at 10 and 1,000 instances. The guard is
//! dropped inside the measurement, so in-flight accounting is included.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use roster::Instance;
use roster::balance::{Balancer, Policy};
use std::hint::black_box;

fn set(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            Instance::new("svc", format!("10.0.{}.{}:80", i / 250, i % 250))
                .with_id(format!("i{i:04}"))
                .with_weight(1 + (i % 5) as u32 * 10)
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    let policies = [
        ("round-robin", Policy::RoundRobin),
        ("weighted", Policy::WeightedRoundRobin),
        ("random", Policy::Random),
        ("least-request", Policy::LeastRequest),
        ("consistent-hash", Policy::ConsistentHash),
    ];
    for n in [10, 1000] {
        for (name, policy) in policies {
            // Unseeded, as in production: a seed makes picks reproducible for
            // tests at the price of a shared atomic per draw.
            let b = Balancer::new(policy);
            b.update(set(n));
            let keys: Vec<String> = (0..1024).map(|k| format!("user-{k}")).collect();
            let mut k = 0usize;
            g.bench_with_input(BenchmarkId::new(name, n), &n, |bench, _| {
                bench.iter(|| {
                    k = (k + 1) & 1023;
                    let guard = b.pick(Some(keys[k].as_bytes()));
                    black_box(guard.as_ref().map(|g| g.instance().addr.len()))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
