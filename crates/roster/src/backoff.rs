//! Jittered exponential backoff, so that many instances retrying after one
//! registry outage do not arrive in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { next: min, min, max }
    }

    /// The next delay: uniform in [d/2, d], doubling up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_secs_f64(rand::random::<f64>() * half.as_secs_f64())
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let ds: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        for (d, cap) in ds.iter().zip([100, 200, 400, 800, 800, 800]) {
            assert!(*d >= Duration::from_millis(cap / 2) && *d <= Duration::from_millis(cap), "{d:?} vs {cap}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
