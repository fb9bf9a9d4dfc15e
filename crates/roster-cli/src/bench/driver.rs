//! The closed loop of etcd's `benchmark` tool: `--clients` tasks over
//! `--conns` connections, each sending its next request when the previous
//! one is answered, until `--total` requests are sent or time is up.

use super::Load;
use super::report::{FirstError, Outcome, Progress, histogram, record_since};
use super::target::Target;
use super::wire::Conn;
use anyhow::{Context, Result};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How long a request sent just before the deadline may still take.
pub const GRACE: Duration = Duration::from_secs(5);

/// Runs `op(connection, n)` for `n` in `0..load.total`, spread over the
/// clients, and measures each call, on the bench's own h2 connections.
pub async fn closed_loop<F, Fut>(what: &str, t: &Target, load: &Load, max: Duration, op: F) -> Result<Outcome>
where
    F: Fn(Conn, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let conns = t.connect_unary(load.conns).await?;
    closed_loop_on(what, t, conns, load, max, op).await
}

/// [`closed_loop`] over any kind of connection, for example tonic channels.
pub async fn closed_loop_on<C, F, Fut>(
    what: &str,
    t: &Target,
    conns: Vec<C>,
    load: &Load,
    max: Duration,
    op: F,
) -> Result<Outcome>
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(format!("{what} on {}", t.name), load.total);
    let first = FirstError::default();
    let total = load.total;
    let start = Instant::now();
    let deadline = start + max;
    let mut clients = JoinSet::new();
    for c in 0..load.clients as usize {
        let conn = conns[c % conns.len()].clone();
        let (op, next, done, first) = (op.clone(), next.clone(), progress.counter(), first.clone());
        clients.spawn(async move {
            let mut hist = histogram();
            let mut errors = 0u64;
            // One timer for the whole loop: a timeout per call would add and
            // remove a timer entry every time.
            let late = tokio::time::sleep_until((deadline + GRACE).into());
            tokio::pin!(late);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() >= deadline {
                    break;
                }
                let t0 = Instant::now();
                let answer = tokio::select! {
                    biased;
                    answer = op(conn.clone(), n) => Some(answer),
                    () = &mut late => None,
                };
                match answer {
                    Some(Ok(())) => record_since(&mut hist, t0),
                    Some(Err(status)) => {
                        errors += 1;
                        first.status(&status);
                    }
                    None => {
                        errors += 1;
                        first.set("no answer within --max-duration");
                        break;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (hist, errors)
        });
    }
    let mut hist = histogram();
    let mut errors = 0;
    while let Some(joined) = clients.join_next().await {
        let (h, e) = joined.context("a bench client task failed")?;
        hist.add(h)?;
        errors += e;
    }
    let mut o = Outcome::new(hist, start.elapsed(), errors);
    o.first_error = first.get();
    Ok(o)
}
