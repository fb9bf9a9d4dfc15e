//! A lease kept alive for as long as its holder lives.

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::task::DropGuard;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// A lease with a keepalive task, the liveness behind locks and elections.
///
/// The session counts as lost when the registry says the lease is gone, or
/// as soon as the lease *might* have expired: the last renewal the registry
/// confirmed was sent more than one TTL ago. The registry cannot expire the
/// lease before that moment, so a holder that stops acting on
/// [`Session::lost`] never overlaps the next holder.
///
/// Cheap to clone. The lease is revoked by [`Session::close`]; dropping the
/// last clone stops the keepalive and the lease then expires after its TTL.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<bool>,
    /// Stops the keepalive with the last clone.
    keepalive: DropGuard,
}

impl Session {
    /// Grants a lease of `ttl` (whole seconds, at least 1) and keeps it alive.
    pub async fn new(client: &Client, ttl: Duration) -> Result<Session> {
        let secs = ttl.as_secs();
        if secs == 0 || ttl.subsec_nanos() != 0 {
            return Err(Error::Config(format!("session TTL must be whole seconds, at least 1 (got {ttl:?})")));
        }
        let sent = Instant::now();
        let grant = client.lease_grant(secs as i64).await?;
        if !grant.error.is_empty() {
            return Err(Error::Config(format!("lease grant refused: {}", grant.error)));
        }
        Ok(Self::start(client, grant.id, Duration::from_secs(grant.ttl.max(1) as u64), sent))
    }

    /// Keeps an existing lease alive; `ttl` is the TTL it was granted with.
    pub fn with_lease(client: &Client, lease: i64, ttl: Duration) -> Session {
        Self::start(client, lease, ttl, Instant::now())
    }

    fn start(client: &Client, lease: i64, ttl: Duration, confirmed: Instant) -> Session {
        let (lost, _) = watch::channel(false);
        let task = KeepAlive { client: client.clone(), lease, ttl, lost: lost.clone() };
        let keepalive = crate::task::spawn(task.run(confirmed));
        Session { inner: Arc::new(Inner { client: client.clone(), lease, ttl, lost, keepalive }) }
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.inner.lease
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    pub fn is_lost(&self) -> bool {
        *self.inner.lost.borrow()
    }

    /// Resolves once the session is lost (see the type's documentation).
    pub async fn lost(&self) {
        let mut rx = self.inner.lost.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Revokes the lease: every lock and candidacy of this session ends at
    /// once, in one revision.
    pub async fn close(self) -> Result<()> {
        self.inner.keepalive.stop();
        self.inner.lost.send_replace(true);
        match self.inner.client.lease_revoke(self.inner.lease).await {
            Ok(_) => Ok(()),
            // Already gone is what closing wants.
            Err(Error::Status(s)) if s.message().contains("requested lease not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn lost_error(&self) -> Error {
        Error::SessionLost { lease: self.inner.lease }
    }
}

struct KeepAlive {
    client: Client,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<bool>,
}

impl KeepAlive {
    /// Renews every TTL/3 over a keepalive stream, reopening it when it
    /// breaks, until the lease is gone or might be.
    async fn run(self, confirmed: Instant) {
        // The lease cannot expire before `confirmed + ttl`: `confirmed` is
        // when the last renewal the registry answered was sent.
        let mut deadline = confirmed + self.ttl;
        let period = (self.ttl / 3).max(Duration::from_millis(200));
        let mut backoff = Backoff::new(Duration::from_millis(50), period);
        loop {
            let renewed = self.stream(&mut deadline, period).await;
            match renewed {
                Err(Some(gone)) => {
                    tracing::warn!(lease = format_args!("{:x}", self.lease), reason = gone, "session lost");
                    break;
                }
                Err(None) if Instant::now() >= deadline => {
                    tracing::warn!(
                        lease = format_args!("{:x}", self.lease),
                        "session lost: no renewal confirmed within the TTL"
                    );
                    break;
                }
                // `stream` moved the client off the endpoint that failed.
                Err(None) | Ok(()) => {
                    tokio::time::sleep(backoff.next_delay().min(deadline.saturating_duration_since(Instant::now())))
                        .await;
                }
            }
        }
        self.lost.send_replace(true);
    }

    /// One keepalive stream, given up at `deadline`. `Err(Some(reason))`:
    /// the lease is gone. `Err(None)` or `Ok(())`: the stream broke, a
    /// renewal went unanswered (the client then avoids that endpoint), or
    /// the deadline passed.
    async fn stream(&self, deadline: &mut Instant, period: Duration) -> Result<(), Option<&'static str>> {
        // Give up on a silent member long before the lease is at risk; with
        // a single endpoint only the lease's own deadline applies.
        let answer_within = self.client.renewal_deadline(period);
        let give_up = |deadline: Instant, sent: Instant| answer_within.map_or(deadline, |d| deadline.min(sent + d));
        let mut sent = Instant::now();
        let endpoint = self.client.current_endpoint().to_owned();
        // The stream opens with its first renewal answered.
        let open = tokio::time::timeout_at(give_up(*deadline, sent), self.client.keep_alive_stream(self.lease));
        let mut ka = match open.await {
            Ok(Ok(ka)) => ka,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot open a keepalive stream");
                return Err(None);
            }
            Err(_) => {
                self.client.fail_over_from(&endpoint);
                return Err(None);
            }
        };
        loop {
            let Ok(answer) = tokio::time::timeout_at(give_up(*deadline, sent), ka.responses.message()).await else {
                tracing::debug!(endpoint = %ka.endpoint, "keepalive unanswered; renewing on another endpoint");
                self.client.fail_over_from(&ka.endpoint);
                return Err(None);
            };
            match answer {
                Ok(Some(r)) if r.ttl <= 0 => return Err(Some("the registry says the lease is gone")),
                Ok(Some(r)) => *deadline = sent + Duration::from_secs(r.ttl as u64),
                Ok(None) => {
                    self.client.fail_over_from(&ka.endpoint);
                    return Ok(());
                }
                Err(s) if s.message().contains("requested lease not found") => {
                    return Err(Some("the registry says the lease is gone"));
                }
                Err(s) => {
                    tracing::debug!(error = %s, "keepalive stream broke");
                    self.client.fail_over_from(&ka.endpoint);
                    return Err(None);
                }
            }
            tokio::time::sleep(period.min(deadline.saturating_duration_since(Instant::now()))).await;
            sent = Instant::now();
            if ka.requests.send(roster_api::etcdserverpb::LeaseKeepAliveRequest { id: self.lease }).await.is_err() {
                return Ok(());
            }
        }
    }
}
