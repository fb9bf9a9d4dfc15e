//! What one Authenticate's password check costs: roster's (the `bcrypt`
//! crate's verify, as `auth::service` calls it) against etcd's own (Go's
//! golang.org/x/crypto/bcrypt, run by the helper in `tests/go/bcrypt`), at
//! cost 4 (quick) and 10 (etcd's default).
//!
//! Criterion reports ours. Then an interleaved run (the two take turns,
//! ROUNDS times, so machine noise hits both alike) prints each one's median
//! time per verify and the ratio roster/Go (time: below 1 means ours is
//! faster). Without Go it says SKIPPED.
//!
//!   cargo bench -p roster-server --bench bcrypt

use criterion::{BenchmarkId, Criterion};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench-password";

fn go_helper() -> Option<PathBuf> {
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/go/bcrypt"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-bcrypt");
    roster_testkit::go_build(src, &["golang.org/x/crypto/bcrypt"], &out)
}

/// Go's per-verify nanoseconds for `n` verifies at `cost` (the helper
/// times each call itself, so its start-up is not counted).
fn go_verifies(bin: &Path, cost: u32, n: usize) -> Vec<Duration> {
    let out = Command::new(bin).args(["bench", &cost.to_string(), &n.to_string()]).output().expect("run go-bcrypt");
    assert!(out.status.success(), "go-bcrypt: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| Duration::from_nanos(l.trim().parse().expect("nanoseconds")))
        .collect()
}

fn timed(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn criterion_cases(c: &mut Criterion) {
    let mut g = c.benchmark_group("bcrypt_verify");
    g.sample_size(10);
    for cost in [4, 10] {
        let hash = bcrypt::hash(PASSWORD, cost).unwrap();
        g.bench_with_input(BenchmarkId::new("roster", cost), &hash, |b, h| {
            b.iter(|| assert!(bcrypt::verify(PASSWORD, h).unwrap()))
        });
    }
    g.finish();
}

fn interleaved(go: Option<&Path>) {
    const ROUNDS: usize = 5;
    for (cost, per_turn) in [(4, 200), (10, 4)] {
        let hash = bcrypt::hash(PASSWORD, cost).unwrap();
        let (mut ours, mut gos) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            ours.extend(timed(per_turn, || assert!(bcrypt::verify(PASSWORD, &hash).unwrap())));
            if let Some(go) = go {
                gos.extend(go_verifies(go, cost, per_turn));
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let o = median(ours);
        print!("bcrypt verify cost {cost:>2} ({} each, interleaved): roster {:.3} ms", ROUNDS * per_turn, ms(o));
        if gos.is_empty() {
            println!("; Go SKIPPED");
        } else {
            let g = median(gos);
            println!(", Go x/crypto {:.3} ms; roster/Go {:.3}", ms(g), ms(o) / ms(g));
        }
    }
}

fn main() {
    let go = go_helper();
    let mut c = Criterion::default().configure_from_args();
    criterion_cases(&mut c);
    c.final_summary();
    interleaved(go.as_deref());
}
