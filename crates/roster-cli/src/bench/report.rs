//! Latency histograms, progress on stderr, and the results table on stdout.
//!
//! The table has a fixed layout, one row per workload and target, then a
//! ratio line when there are two targets:
//!
//! ```text
//! workload                 target            ops/s    p50 ms    p99 ms   errors  note
//! put 10x100               roster            15414      5.91     13.75        0
//! put 10x100               etcd              10282      9.12     24.91        0
//!   ratio roster/etcd: throughput 1.50x, p50 0.65x, p99 0.55x
//! ```

use super::target::Target;
use super::{Common, Workload};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A latency histogram in microseconds, from 1 µs to 10 minutes, 3
/// significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Records the time since `t0` in `hist`.
pub fn record_since(hist: &mut Histogram<u64>, t0: Instant) {
    hist.saturating_record(t0.elapsed().as_micros().max(1) as u64);
}

/// What one workload measured on one target.
#[derive(Debug)]
pub struct Outcome {
    /// Operations that succeeded.
    pub ops: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
    pub errors: u64,
    /// The first error seen, to tell the reader what went wrong.
    pub first_error: Option<String>,
    /// Figures that are not a rate (memory, CPU); the first is shown
    /// instead of ops/s, each one gets a ratio.
    pub gauges: Vec<Gauge>,
    /// Anything else the reader should know (missing watch events).
    pub note: String,
}

#[derive(Debug, Clone)]
pub struct Gauge {
    /// What is measured, for the ratio line: `RSS`.
    pub label: &'static str,
    pub value: f64,
    pub unit: &'static str,
}

// === impl Outcome ===

impl Outcome {
    pub fn new(hist: Histogram<u64>, elapsed: Duration, errors: u64) -> Self {
        Outcome { ops: hist.len(), elapsed, hist, errors, first_error: None, gauges: Vec::new(), note: String::new() }
    }

    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q`, in milliseconds; `None` with no samples.
    pub fn ms(&self, q: f64) -> Option<f64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(q) as f64 / 1000.0)
    }

    fn figure(&self) -> String {
        match self.gauges.first() {
            Some(g) => format!("{:.1} {}", g.value, g.unit),
            None => format!("{:.0}", self.rate()),
        }
    }

    fn notes(&self) -> String {
        let mut parts: Vec<String> =
            self.gauges.iter().skip(1).map(|g| format!("{} {:.1} {}", g.label, g.value, g.unit)).collect();
        if !self.note.is_empty() {
            parts.push(self.note.clone());
        }
        if let Some(e) = &self.first_error {
            let mut e = e.replace('\n', " ");
            if e.len() > 100 {
                let mut cut = 100;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
                e.push('…');
            }
            parts.push(format!("first error: {e}"));
        }
        parts.join("; ")
    }
}

/// Keeps the first error message that many tasks may report.
#[derive(Debug, Default, Clone)]
pub struct FirstError(Arc<std::sync::OnceLock<String>>);

impl FirstError {
    pub fn set(&self, e: impl std::fmt::Display) {
        let _ = self.0.get_or_init(|| e.to_string());
    }

    pub fn status(&self, s: &tonic::Status) {
        let _ = self.0.get_or_init(|| format!("{:?}: {}", s.code(), s.message()));
    }

    pub fn get(&self) -> Option<String> {
        self.0.get().cloned()
    }
}

/// A progress line on stderr once a second while it lives:
/// `   put: 23000/50000 (11250/s)`.
pub struct Progress {
    done: Arc<AtomicU64>,
    ticker: tokio::task::JoinHandle<()>,
}

// === impl Progress ===

impl Progress {
    pub fn start(what: impl Into<String>, total: u64) -> Progress {
        let what = what.into();
        let done = Arc::new(AtomicU64::new(0));
        let seen = done.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut before = 0;
            loop {
                tick.tick().await;
                let now = seen.load(Ordering::Relaxed);
                eprintln!("   {what}: {now}/{total} ({}/s)", now.saturating_sub(before));
                before = now;
            }
        });
        Progress { done, ticker }
    }

    /// The shared count of finished operations.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// The rows printed so far, for a summary at the end of a long run.
#[derive(Default)]
pub struct Table {
    lines: Vec<String>,
    workloads: usize,
}

// === impl Table ===

impl Table {
    /// Runs `w` on each target in turn, prints a row for each and, with
    /// several targets, the ratio of the first to each other one.
    pub async fn compare<W: Workload>(&mut self, common: &Common, w: &W) -> Result<()> {
        common.validate()?;
        let name = w.name();
        let targets = common.targets()?;
        let mut results: Vec<(&Target, Outcome)> = Vec::new();
        for t in &targets {
            eprintln!("== {name} on {} ({})", t.name, t.addr);
            let o = w.run(t, common.max()).await.with_context(|| format!("{name} on {} ({})", t.name, t.addr))?;
            if self.lines.is_empty() {
                self.push(format!(
                    "{:<24} {:<10} {:>12} {:>9} {:>9} {:>8}  {}",
                    "workload", "target", "ops/s", "p50 ms", "p99 ms", "errors", "note"
                ));
            }
            let ms = |q| o.ms(q).map_or("-".to_owned(), |v| format!("{v:.2}"));
            self.push(format!(
                "{:<24} {:<10} {:>12} {:>9} {:>9} {:>8}  {}",
                name,
                t.name,
                o.figure(),
                ms(0.5),
                ms(0.99),
                o.errors,
                o.notes()
            ));
            results.push((t, o));
        }
        if let Some(((a, x), rest)) = results.split_first() {
            for (b, y) in rest {
                self.push(format!("  ratio {}/{}: {}", a.name, b.name, ratio(x, y)));
            }
        }
        self.workloads += 1;
        Ok(())
    }

    fn push(&mut self, mut line: String) {
        line.truncate(line.trim_end().len());
        println!("{line}");
        self.lines.push(line);
    }

    /// Prints every row again after a run of several workloads, since
    /// progress lines on a terminal scroll them away.
    pub fn print_summary(&self) {
        if self.workloads > 1 {
            println!("\nsummary:");
            for l in &self.lines {
                println!("{l}");
            }
        }
    }
}

/// `throughput 1.50x, p50 0.65x, p99 0.55x`, or `CPU 0.40x, RSS 0.27x` for
/// gauges (each one against the other side's gauge of the same label).
fn ratio(x: &Outcome, y: &Outcome) -> String {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    };
    match (x.gauges.is_empty(), y.gauges.is_empty()) {
        (false, false) => x
            .gauges
            .iter()
            .map(|gx| {
                let gy = y.gauges.iter().find(|g| g.label == gx.label);
                format!("{} {}", gx.label, div(Some(gx.value), gy.map(|g| g.value)))
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => format!(
            "throughput {}, p50 {}, p99 {}",
            div(Some(x.rate()), Some(y.rate())),
            div(x.ms(0.5), y.ms(0.5)),
            div(x.ms(0.99), y.ms(0.99))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(lat_us: &[u64], secs: u64) -> Outcome {
        let mut h = histogram();
        for &v in lat_us {
            h.record(v).unwrap();
        }
        Outcome::new(h, Duration::from_secs(secs), 0)
    }

    #[test]
    fn ratio_line_compares_rate_and_latency() {
        let x = outcome(&[1000, 1000, 1000, 1000], 1);
        let y = outcome(&[2000, 4000], 1);
        assert_eq!(ratio(&x, &y), "throughput 2.00x, p50 0.50x, p99 0.25x");
        let empty = outcome(&[], 1);
        assert_eq!(ratio(&x, &empty), "throughput -, p50 -, p99 -");
    }

    #[test]
    fn gauges_compare_as_a_plain_ratio() {
        let mut x = outcome(&[1], 1);
        let mut y = outcome(&[1], 1);
        x.gauges =
            vec![Gauge { label: "CPU", value: 30.0, unit: "%" }, Gauge { label: "RSS", value: 50.0, unit: "MiB" }];
        y.gauges =
            vec![Gauge { label: "RSS", value: 200.0, unit: "MiB" }, Gauge { label: "CPU", value: 60.0, unit: "%" }];
        assert_eq!(ratio(&x, &y), "CPU 0.50x, RSS 0.25x");
        assert_eq!(x.figure(), "30.0 %");
        assert_eq!(x.notes(), "RSS 50.0 MiB");
        y.gauges.truncate(1);
        assert_eq!(ratio(&x, &y), "CPU -, RSS 0.25x");
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let mut o = outcome(&[1], 1);
        o.first_error = Some("é".repeat(80));
        assert!(o.notes().ends_with('…'));
    }
}
