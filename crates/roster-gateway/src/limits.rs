//! Admission limits, shared by both engines.
//!
//! - [`Connections`]: `max_connections` and `max_connections_per_ip`,
//!   checked by the acceptor. A connection over a cap is closed at accept,
//!   before any byte is read: cheaper than a 503 under a flood, and the
//!   client sees a reset it can retry elsewhere. Connections already open
//!   keep flowing.
//! - [`RouteLimiter`]: a route's concurrency cap (503) and token-bucket
//!   rate limit (429), both with `Retry-After`. One per service upstream;
//!   the fast path and the hyper path call the same [`RouteLimiter::admit`].

use crate::config::Policies;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Open client connections, in total and per address.
#[derive(Default)]
pub struct Connections {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

impl Connections {
    /// Takes a slot for a connection from `ip`; `per_ip == 0` means no
    /// per-address cap. The slot is given back when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max: usize, per_ip: usize) -> Result<Slot, Refused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        let ip = if per_ip == 0 { None } else { Some(ip) };
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            if *n >= per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        Ok(Slot { owner: self.clone(), ip })
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One admitted connection.
pub struct Slot {
    owner: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.owner.per_ip.lock();
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // Addresses with no connection keep no entry.
                    map.remove(&ip);
                }
            }
        }
        self.owner.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A route's concurrency and rate state.
#[derive(Default)]
pub struct RouteLimiter {
    in_flight: Arc<AtomicUsize>,
    /// Tokens left and when they were last topped up.
    bucket: Mutex<Option<(f64, Instant)>>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Over `max_concurrent_requests`: 503.
    Concurrency,
    /// Over `rate_limit_per_second`: 429, retry after this many seconds.
    Rate { retry_after: u64 },
}

/// Held while a request is in flight.
pub struct Permit {
    in_flight: Option<Arc<AtomicUsize>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(n) = &self.in_flight {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl RouteLimiter {
    /// Admits one request under `p`'s limits, or says which one it hit.
    pub fn admit(&self, p: &Policies) -> Result<Permit, Limited> {
        let permit = match p.max_concurrent_requests {
            None => Permit { in_flight: None },
            Some(max) => {
                if self.in_flight.fetch_add(1, Ordering::AcqRel) >= max as usize {
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    return Err(Limited::Concurrency);
                }
                Permit { in_flight: Some(self.in_flight.clone()) }
            }
        };
        if let Some(rate) = p.rate_limit_per_second {
            let burst = f64::from(p.rate_limit_burst.unwrap_or(rate).max(1));
            let rate = f64::from(rate.max(1));
            let now = Instant::now();
            let mut bucket = self.bucket.lock();
            let (tokens, at) = bucket.get_or_insert((burst, now));
            *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
            *at = now;
            if *tokens < 1.0 {
                let wait = ((1.0 - *tokens) / rate).ceil().max(1.0);
                // `permit` drops here: a refused request holds no slot.
                return Err(Limited::Rate { retry_after: wait as u64 });
            }
            *tokens -= 1.0;
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn connection_caps_count_in_total_and_per_address_and_give_back_on_drop() {
        let c = Arc::new(Connections::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = c.admit(a, 3, 2).unwrap();
        let _a2 = c.admit(a, 3, 2).unwrap();
        assert_eq!(c.admit(a, 3, 2).err(), Some(Refused::PerIp));
        let _b1 = c.admit(b, 3, 2).unwrap();
        assert_eq!(c.admit(b, 3, 2).err(), Some(Refused::Total));
        assert_eq!(c.open(), 3);
        drop(a1);
        assert_eq!(c.open(), 2);
        assert!(c.admit(a, 3, 2).is_ok(), "a dropped slot is given back");
        assert!(c.admit(b, 10, 0).is_ok(), "per_ip 0 is no cap");
    }

    #[test]
    fn the_route_limiter_caps_concurrency_and_rate() {
        let cfg = Config::parse("[defaults]\nmax_concurrent_requests = 2\n", "t").unwrap();
        let l = RouteLimiter::default();
        let (p1, _p2) = (l.admit(&cfg.defaults).unwrap(), l.admit(&cfg.defaults).unwrap());
        assert_eq!(l.admit(&cfg.defaults).err(), Some(Limited::Concurrency));
        drop(p1);
        assert!(l.admit(&cfg.defaults).is_ok());

        let cfg = Config::parse("[defaults]\nrate_limit_per_second = 1\nrate_limit_burst = 3\n", "t").unwrap();
        let l = RouteLimiter::default();
        for _ in 0..3 {
            assert!(l.admit(&cfg.defaults).is_ok(), "the burst is admitted");
        }
        assert_eq!(l.admit(&cfg.defaults).err(), Some(Limited::Rate { retry_after: 1 }));
    }
}
