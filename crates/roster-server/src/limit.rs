//! The cap on unary calls being served at once.
//!
//! A call takes a [`Permit`] after tonic has decoded it and gives it back
//! when its handler returns, so the cap counts work the server has taken
//! on, not bytes a slow client is still sending (HTTP/2 flow control and
//! `--max-concurrent-streams` bound those). Over the cap a call is refused
//! at once with etcd's `ErrGRPCRequestTooManyRequests`: `ResourceExhausted`,
//! "etcdserver: too many requests", which etcd clients already treat as
//! "back off and retry".
//!
//! Streams (Watch, LeaseKeepAlive, Observe) are long-lived by design and are
//! not counted; neither are Lock and Campaign, which wait for other clients
//! by design, so a queue of lock waiters never starves puts.
//!
//! The counter is one atomic: a semaphore would queue, and queueing is what
//! the cap is there to avoid.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Status;

/// etcd's text for `ErrGRPCRequestTooManyRequests`.
pub(crate) const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";

/// Unary methods that block until another client acts; never capped.
const WAITS_BY_DESIGN: [&str; 2] = ["/v3lockpb.Lock/Lock", "/v3electionpb.Election/Campaign"];

/// Calls in flight, shared by every connection.
#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    shared: Arc<Counter>,
}

#[derive(Debug)]
struct Counter {
    now: AtomicUsize,
    max: usize,
}

/// One call's place under the cap, given back on drop (also when the
/// handler's future is dropped because the client went away).
#[derive(Debug)]
pub(crate) struct Permit {
    shared: Option<Arc<Counter>>,
}

// === impl InFlight ===

impl InFlight {
    pub(crate) fn new(max: usize) -> Self {
        InFlight { shared: Arc::new(Counter { now: AtomicUsize::new(0), max }) }
    }

    /// A permit for `method`, or etcd's "too many requests".
    pub(crate) fn acquire(&self, method: &str) -> Result<Permit, Status> {
        if WAITS_BY_DESIGN.contains(&method) {
            return Ok(Permit { shared: None });
        }
        let c = &self.shared;
        // Optimistic increment; undone when over. Relaxed is enough: the
        // count guards no other memory.
        if c.now.fetch_add(1, Ordering::Relaxed) >= c.max {
            c.now.fetch_sub(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(TOO_MANY_REQUESTS));
        }
        Ok(Permit { shared: Some(c.clone()) })
    }

    /// Calls being served now.
    #[cfg(test)]
    pub(crate) fn current(&self) -> usize {
        self.shared.now.load(Ordering::Relaxed)
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(c) = &self.shared {
            c.now.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUT: &str = "/etcdserverpb.KV/Put";

    #[test]
    fn over_the_cap_is_etcds_too_many_requests() {
        let f = InFlight::new(2);
        let a = f.acquire(PUT).unwrap();
        let _b = f.acquire(PUT).unwrap();
        let e = f.acquire(PUT).unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::ResourceExhausted, "etcdserver: too many requests"));
        assert_eq!(f.current(), 2, "a refused call must not keep a place");
        drop(a);
        let _c = f.acquire(PUT).expect("a place freed by a finished call is reusable");
    }

    #[test]
    fn lock_and_campaign_waiters_are_not_counted() {
        let f = InFlight::new(1);
        let _lock = f.acquire("/v3lockpb.Lock/Lock").unwrap();
        let _campaign = f.acquire("/v3electionpb.Election/Campaign").unwrap();
        assert_eq!(f.current(), 0);
        let _put = f.acquire(PUT).expect("waiters leave the cap to other calls");
    }

    #[test]
    fn permits_are_returned_under_contention() {
        let f = InFlight::new(8);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let p = f.acquire(PUT);
                        drop(p);
                    }
                });
            }
        });
        assert_eq!(f.current(), 0);
    }
}
