//! How every background task of the SDK stops: with its last handle.
//!
//! Each task the SDK starts (discovery, config watches, election observers,
//! channels, registrations, sessions, mirrors, the gateway's followers) is
//! owned by exactly one [`DropGuard`]. Handles share that guard (behind an
//! `Arc` when they are `Clone`), and the task itself never holds it, so the
//! guard drops exactly when the last handle does. Its `Drop` signals the
//! task, which ends at once: for [`spawn`] its future is dropped on the
//! spot, closing its gRPC streams, so the server cancels the watch or
//! keepalive then and not at the next event. A task that must do something
//! on the way out (a registration revokes its lease) is started with
//! [`spawn_with`] and selects on [`Stopping::stopped`] itself.
//!
//! Counting references (`Arc::strong_count`) races when two clones drop at
//! once, and a task that notices only on its next send lives until the next
//! event; both are what this replaces.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
//! let guard = roster::task::spawn(async move {
//!     let _tx = tx; // held by the task until it stops
//!     std::future::pending::<()>().await
//! });
//! drop(guard);
//! assert!(rx.recv().await.is_none(), "the task ended and dropped its sender");
//! # }
//! ```

use std::future::Future;
use tokio::sync::watch;

/// Owns one background task and stops it when dropped (or on [`stop`]).
///
/// [`stop`]: DropGuard::stop
#[derive(Debug)]
#[must_use = "dropping the guard stops the task at once"]
pub struct DropGuard {
    stop: watch::Sender<bool>,
}

/// The task's side of a [`DropGuard`]: resolves once the guard is dropped
/// or stopped.
#[derive(Debug, Clone)]
pub struct Stopping {
    rx: watch::Receiver<bool>,
}

// === impl DropGuard ===

impl DropGuard {
    /// A guard and its signal, for a task started by other means.
    pub fn new() -> (DropGuard, Stopping) {
        let (stop, rx) = watch::channel(false);
        (DropGuard { stop }, Stopping { rx })
    }

    /// Stops the task now, without waiting for the guard to drop.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

// === impl Stopping ===

impl Stopping {
    /// Resolves once the task is to stop; at once if it already is.
    pub async fn stopped(&mut self) {
        // `Err` means the guard is gone, which is the same signal.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }
}

/// Runs `task` until it ends or the returned guard drops; then the future
/// is dropped where it stands, with every stream it holds.
pub fn spawn<F>(task: F) -> DropGuard
where
    F: Future<Output = ()> + Send + 'static,
{
    spawn_with(|mut stopping| async move {
        tokio::select! {
            _ = task => {}
            _ = stopping.stopped() => {}
        }
    })
}

/// Runs the task `make` builds from its [`Stopping`] signal; the task
/// watches the signal itself, for work it must do before it ends.
pub fn spawn_with<F, Fut>(make: F) -> DropGuard
where
    F: FnOnce(Stopping) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (guard, stopping) = DropGuard::new();
    tokio::spawn(make(stopping));
    guard
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_last_clone_of_a_shared_guard_stops_the_task() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let guard = Arc::new(spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        }));
        let (a, b) = (guard.clone(), guard.clone());
        drop(guard);
        // Two clones dropped from two threads at once: the race that
        // `strong_count` lost.
        let t = std::thread::spawn(move || drop(a));
        drop(b);
        t.join().unwrap();
        let ended = tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv()).await;
        assert_eq!(ended, Ok(None));
    }

    #[tokio::test]
    async fn stop_signals_without_dropping() {
        let (guard, mut stopping) = DropGuard::new();
        assert!(!stopping.is_stopped());
        guard.stop();
        assert!(stopping.is_stopped());
        stopping.stopped().await;
        drop(guard);
        stopping.stopped().await;
    }
}
