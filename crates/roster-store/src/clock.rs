//! Time, injected so that lease expiry is testable without sleeping.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// A monotonic clock: `now()` is the time elapsed since a fixed start.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Duration;
}

/// Wall-clock time from [`Instant`].
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { start: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.now.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock()
    }
}
