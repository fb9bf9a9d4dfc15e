//! Prometheus metrics: requests, latency and retries per service and
//! instance, rendered at `GET /metrics` on the admin listener.

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    service: String,
    instance: String,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Instance {
    service: String,
    instance: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Service {
    service: String,
}

/// 100 µs to ~6.5 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<Request, Counter>,
    latency: Family<Service, Histogram, fn() -> Histogram>,
    retries: Family<Instance, Counter>,
    upstreams: Gauge,
    directory: Gauge,
    refused: Counter,
    /// Handles already looked up, by borrowed names, so that counting a
    /// request allocates nothing once its labels have been seen.
    cache: RwLock<HashMap<String, Cached>>,
}

#[derive(Default)]
struct Cached {
    latency: Option<Histogram>,
    requests: HashMap<String, HashMap<u16, Counter>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("roster_gateway");
        let requests = Family::<Request, Counter>::default();
        let latency = Family::<Service, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let retries = Family::<Instance, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by service, instance that answered (\"-\" for none) and HTTP status",
            requests.clone(),
        );
        registry.register("request_duration_seconds", "Time to the response head, retries included", latency.clone());
        registry.register("retries", "Attempts retried, by the instance that failed", retries.clone());
        let (upstreams, directory) = (Gauge::default(), Gauge::default());
        registry.register("upstreams", "Services (by policy) the gateway follows with a discovery", upstreams.clone());
        registry.register("directory_services", "Service names with instances in the registry", directory.clone());
        let refused = Counter::default();
        registry.register(
            "refused_connections",
            "Client connections closed at accept: over max_connections, max_connections_per_ip or a full accept queue",
            refused.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            retries,
            upstreams,
            directory,
            refused,
            cache: RwLock::new(HashMap::new()),
        }
    }

    pub fn refused_connection(&self) {
        self.refused.inc();
    }

    pub fn request(&self, service: &str, instance: &str, code: u16, took: Duration) {
        {
            let cache = self.cache.read();
            if let Some(c) = cache.get(service)
                && let Some(latency) = &c.latency
                && let Some(counter) = c.requests.get(instance).and_then(|by_code| by_code.get(&code))
            {
                counter.inc();
                latency.observe(took.as_secs_f64());
                return;
            }
        }
        let labels = Request { service: service.to_owned(), instance: instance.to_owned(), code };
        let counter = self.requests.get_or_create(&labels).clone();
        let latency = self.latency.get_or_create(&Service { service: service.to_owned() }).clone();
        counter.inc();
        latency.observe(took.as_secs_f64());
        let mut cache = self.cache.write();
        let c = cache.entry(service.to_owned()).or_default();
        c.latency = Some(latency);
        c.requests.entry(instance.to_owned()).or_default().insert(code, counter);
    }

    pub fn retry(&self, service: &str, instance: &str) {
        self.retries.get_or_create(&Instance { service: service.to_owned(), instance: instance.to_owned() }).inc();
    }

    /// Sets the gauges of what the gateway holds, before a render.
    pub fn held(&self, upstreams: usize, directory: usize) {
        self.upstreams.set(upstreams as i64);
        self.directory.set(directory as i64);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
