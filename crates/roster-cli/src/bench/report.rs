//! Latency histograms, progress, and the results table.

use super::target::Target;
use super::Common;
use hdrhistogram::Histogram;
use std::future::Future;
use std::time::Duration;

/// What one workload measured on one target.
#[derive(Debug)]
pub struct Outcome {
    pub ops: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
    pub errors: u64,
    /// A figure that is not a rate (memory), shown instead of ops/s.
    pub gauge: Option<(String, f64)>,
    /// Anything the workload wants the reader to know (missing events).
    pub note: String,
}

impl Outcome {
    pub fn new(hist: Histogram<u64>, ops: u64, elapsed: Duration, errors: u64) -> Self {
        Outcome { ops, elapsed, hist, errors, gauge: None, note: String::new() }
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

#[derive(Default)]
pub struct Table {
    lines: Vec<String>,
}

impl Table {
    /// Runs `f` on each target in turn and prints a row each, plus a ratio.
    pub async fn compare<F, Fut>(&mut self, common: &Common, name: &str, f: F) -> anyhow::Result<()>
    where
        F: Fn(Target) -> Fut,
        Fut: Future<Output = anyhow::Result<Outcome>>,
    {
        if self.lines.is_empty() {
            self.push(format!("{:<24} {:<8} {:>12} {:>9} {:>9} {:>7}  {}", "workload", "target", "ops/s", "p50 ms", "p99 ms", "errors", "note"));
        }
        let mut results = Vec::new();
        for t in &common.targets {
            eprintln!("== {name} on {} ({})", t.name, t.addr);
            let o = f(t.clone()).await?;
            let figure = match &o.gauge {
                Some((unit, v)) => format!("{v:.1} {unit}"),
                None => format!("{:.0}", o.rate()),
            };
            self.push(format!("{:<24} {:<8} {:>12} {:>9.2} {:>9.2} {:>7}  {}", name, t.name, figure, o.ms(0.5), o.ms(0.99), o.errors, o.note));
            results.push((t.name.clone(), o));
        }
        if let [(a, x), (b, y)] = &results[..] {
            let line = match (&x.gauge, &y.gauge) {
                (Some((_, vx)), Some((_, vy))) => format!("  ratio {a}/{b}: {:.2}x", vx / vy),
                _ => format!(
                    "  ratio {a}/{b}: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
                    x.rate() / y.rate(),
                    x.ms(0.5) / y.ms(0.5).max(1e-6),
                    x.ms(0.99) / y.ms(0.99).max(1e-6)
                ),
            };
            self.push(line);
        }
        Ok(())
    }

    fn push(&mut self, line: String) {
        println!("{line}");
        self.lines.push(line);
    }

    pub fn print_summary(&self) {
        if self.lines.len() > 3 {
            println!("\nsummary:");
            for l in &self.lines {
                println!("{l}");
            }
        }
    }
}

/// A progress line on stderr about once a second.
pub fn progress(what: &str, done: u64, total: u64, last: &mut std::time::Instant) {
    if last.elapsed() >= Duration::from_secs(1) {
        *last = std::time::Instant::now();
        eprintln!("   {what}: {done}/{total}");
    }
}
