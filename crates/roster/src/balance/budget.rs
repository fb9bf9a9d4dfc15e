//! A retry budget: retries may add at most a share of the requests.
//!
//! A token bucket, in the spirit of gRPC's retry throttling: every request
//! deposits `percent/100` of a token, every retry withdraws a whole one,
//! and a small reserve lets a quiet service retry at all. When instances
//! fail in bulk the bucket empties and calls fail instead of multiplying
//! the load on what is left. Lock-free: tokens are kept in thousandths in
//! one atomic, so the deposit on every call is one uncontended-ish add.

use std::sync::atomic::{AtomicU64, Ordering};

/// Caps retries at a share of requests plus a reserve.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a token.
    milli: AtomicU64,
}

const MILLI: u64 = 1000;

impl RetryBudget {
    /// Tokens a new budget starts with and always may climb back to.
    pub const RESERVE: u64 = 10;
    /// The most the bucket holds, so a long quiet spell cannot bank a storm.
    pub const CAP: u64 = 100;

    pub fn new() -> RetryBudget {
        RetryBudget { milli: AtomicU64::new(Self::RESERVE * MILLI) }
    }

    /// One request: `percent` hundredths of a token (capped at 100%).
    pub fn deposit(&self, percent: u32) {
        let add = u64::from(percent.min(100)) * MILLI / 100;
        if add == 0 {
            return;
        }
        let cap = Self::CAP * MILLI;
        // Full is the steady state of a healthy service: a load, no write.
        if self.milli.load(Ordering::Relaxed) >= cap {
            return;
        }
        let _ =
            self.milli.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| (t < cap).then(|| (t + add).min(cap)));
    }

    /// One retry: `true` (and a token spent) if the budget allows it.
    pub fn withdraw(&self) -> bool {
        self.milli.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(MILLI)).is_ok()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_retries_at_the_share_plus_the_reserve() {
        for per_request in [1, 3] {
            let b = RetryBudget::new();
            let mut granted = 0;
            for _ in 0..1000 {
                b.deposit(20);
                for _ in 0..per_request {
                    granted += usize::from(b.withdraw());
                }
            }
            assert!((205..=210).contains(&granted), "20% of 1000 plus the reserve of 10, got {granted}");
        }
    }

    #[test]
    fn a_quiet_spell_banks_at_most_the_cap() {
        let b = RetryBudget::new();
        for _ in 0..10_000 {
            b.deposit(100);
        }
        let granted = (0..1000).filter(|_| b.withdraw()).count();
        assert_eq!(granted, RetryBudget::CAP as usize);
    }
}
