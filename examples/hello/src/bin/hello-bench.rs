//! gRPC unary throughput and latency through `roster::grpc` (least-request)
//! against tonic's own `Channel::balance_list`, over the same three hello
//! instances, in one run: first with equal instances, then with one made
//! slow. Everything runs in this process on loopback, including the
//! registry, and stops by itself. The last column is the share of calls
//! the first instance (`g0`, the slow one in the second scenario) answered.

use clap::Parser;
use hdrhistogram::Histogram;
use hello::Greeter;
use hello::pb::hello_client::HelloClient;
use roster::balance::Policy;
use roster::grpc::{Channel, ChannelConfig};
use roster::{Client, Instance, Registry};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tonic::codegen::{Body, Bytes, StdError};

/// Compare roster's balanced channel with tonic's balance_list.
#[derive(Parser, Debug)]
struct Args {
    /// Concurrent callers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Extra latency of the slow instance in the second scenario, in ms.
    #[arg(long, default_value_t = 20)]
    slow_ms: u64,
}

/// The instance made slow in the second scenario.
const FIRST: &str = "g0";

struct Figures {
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
    errors: u64,
    /// Process CPU time (user + system) over the measurement.
    cpu: Duration,
    /// Calls answered by the first instance (the slow one when one is).
    on_first: u64,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    /// CPU per call, client and servers together (all in this process).
    /// Unlike throughput and latency, it hardly moves when other processes
    /// compete for the cores, so it compares two builds run back to back.
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }
    fn first_share(&self) -> f64 {
        self.on_first as f64 * 100.0 / self.ops.max(1) as f64
    }
}

/// This process's CPU time so far, from /proc (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

async fn load<T>(client: HelloClient<T>, clients: usize, duration: Duration) -> Figures
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
    T::Future: Send,
{
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let cpu_start = cpu_time();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let (mut ops, mut errors, mut on_first) = (0, 0, 0);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match c.say(hello::pb::SayRequest { name: "bench".into() }).await {
                    Ok(r) => {
                        ops += 1;
                        on_first += u64::from(r.get_ref().instance == FIRST);
                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, ops, errors, on_first)
        }));
    }
    let mut f = Figures {
        ops: 0,
        secs: 0.0,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        errors: 0,
        cpu: Duration::ZERO,
        on_first: 0,
    };
    for t in tasks {
        let (h, ops, errors, on_first) = t.await.expect("caller task");
        f.on_first += on_first;
        f.hist.add(h).expect("same bounds");
        f.ops += ops;
        f.errors += errors;
    }
    f.secs = start.elapsed().as_secs_f64();
    f.cpu = cpu_time().saturating_sub(cpu_start);
    f
}

fn row(name: &str, f: &Figures) {
    println!(
        "{name:<34} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>12.1} {:>8.2}",
        f.rate(),
        f.ms(0.5),
        f.ms(0.99),
        f.errors,
        f.cpu_us(),
        f.first_share()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration.max(1));

    // The registry, in process.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let registry_addr = listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let registry_task = tokio::spawn(roster_server::serve(
        listener,
        None,
        roster_store::Store::in_memory(),
        Default::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let registry = Registry::new(Client::connect([registry_addr])?);

    // Three greeters, registered.
    let mut greeters = Vec::new();
    let mut addrs = Vec::new();
    let mut regs = Vec::new();
    for i in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?.to_string();
        let g = Greeter::new(format!("g{i}"));
        tokio::spawn(hello::serve_greeter(l, g.clone(), std::future::pending()));
        regs.push(registry.register(Instance::new(hello::SERVICE, &addr).with_id(format!("g{i}"))).await?);
        greeters.push(g);
        addrs.push(addr);
    }
    let discovery = registry.discover(hello::SERVICE);
    discovery.ready().await;

    let roster_channel =
        Channel::new(discovery.clone(), ChannelConfig { policy: Policy::LeastRequest, ..Default::default() })?;
    let endpoints = addrs
        .iter()
        .map(|a| tonic::transport::Endpoint::from_shared(format!("http://{a}")).expect("valid").tcp_nodelay(true));
    let tonic_channel = tonic::transport::Channel::balance_list(endpoints);

    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>7} {:>12} {:>8}",
        "scenario / channel", "calls/s", "p50 ms", "p99 ms", "errors", "cpu us/call", "g0 %"
    );
    for (scenario, slow) in [("3 equal instances", 0), ("one instance slow", args.slow_ms)] {
        greeters[0].delay_us.store(slow * 1000, Ordering::Relaxed);
        eprintln!("== {scenario}: {} callers, {}s each", args.clients, duration.as_secs());
        let r = load(HelloClient::new(roster_channel.clone()), args.clients, duration).await;
        row(&format!("{scenario} / roster::grpc p2c"), &r);
        let t = load(HelloClient::new(tonic_channel.clone()), args.clients, duration).await;
        row(&format!("{scenario} / tonic balance_list"), &t);
        println!(
            "  ratio roster/tonic: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x, cpu/call {:.2}x",
            r.rate() / t.rate(),
            r.ms(0.5) / t.ms(0.5),
            r.ms(0.99) / t.ms(0.99),
            r.cpu_us() / t.cpu_us()
        );
    }
    for r in regs {
        r.deregister().await?;
    }
    let _ = stop_tx.send(());
    let _ = registry_task.await;
    Ok(())
}
