//! Keeping one instance registered for as long as its handle lives.
//!
//! The task grants a lease, puts the instance's key on it, and renews the
//! lease on one long-lived keepalive stream every TTL/3. It watches its own
//! key. Whenever the registration is lost (keepalive answers TTL 0, the
//! registry restarted, the key or lease was deleted by an admin) it grants a
//! new lease and puts the key again, retrying forever with jittered
//! backoff. When the registry was unreachable for longer than the TTL, the
//! status says `Lost` at once, but the first member that answers decides:
//! the lease may have lived on (a new etcd leader extends every lease), and
//! then it is kept; otherwise that member answers TTL 0 and the instance
//! registers again.
//!
//! With several endpoints, a renewal that goes unanswered for TTL/6 moves
//! the streams to another endpoint, so a stopped or cut-off member (which
//! keeps its connections open and stays silent) costs no lease as long as
//! another member answers. With one endpoint a slow answer is waited for:
//! reconnecting would only add load to a registry that is already slow.

use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::instance::Instance;
use roster_api::etcdserverpb::{
    LeaseKeepAliveRequest, PutRequest, RangeRequest, WatchCreateRequest,
};
use roster_api::mvccpb::event::EventType;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, Instant};

/// Where a registration stands; observe it with [`Registration::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationStatus {
    /// Not registered yet, or registering again after a loss.
    Registering,
    /// The key is in the registry on this lease.
    Registered { lease: i64 },
    /// The registration was lost, or may have been (no renewal answered
    /// for longer than the TTL); a new one, or word that the lease lived
    /// on, is on its way.
    Lost { reason: String },
    /// Withdrawn for draining; `resume` registers again.
    Paused,
    /// Withdrawn for good.
    Deregistered,
}

enum Cmd {
    Pause(oneshot::Sender<()>),
    Resume,
    Deregister(oneshot::Sender<Result<()>>),
    Abandon,
}

/// A live registration. Dropping it withdraws the instance in the
/// background; [`Registration::deregister`] does so and waits.
pub struct Registration {
    key: String,
    cmds: mpsc::Sender<Cmd>,
    status: watch::Receiver<RegistrationStatus>,
}

impl Registration {
    /// Also returns word of the first attempt: `Some` refusal when the
    /// registry refused it for good (no permission, bad credentials).
    pub(crate) fn spawn(
        client: Client,
        key: String,
        instance: Instance,
        ttl: Duration,
    ) -> (Registration, oneshot::Receiver<Option<tonic::Status>>) {
        let (cmds, rx) = mpsc::channel(4);
        let (tx, status) = watch::channel(RegistrationStatus::Registering);
        let (first_tx, first) = oneshot::channel();
        let task = Task {
            client,
            key: key.clone(),
            value: instance.to_value(),
            ttl,
            cmds: rx,
            status: tx,
            lease: 0,
            first: Some(first_tx),
        };
        tokio::spawn(task.run());
        (Registration { key, cmds, status }, first)
    }

    /// The registry key, `<prefix>/<service>/<id>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The current status, and a way to wait for changes.
    pub fn status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Waits until the instance is registered, up to `timeout`.
    pub async fn registered(&self, timeout: Duration) -> Result<i64> {
        let mut st = self.status.clone();
        let wait = st.wait_for(|s| matches!(s, RegistrationStatus::Registered { .. }));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => match &*s {
                RegistrationStatus::Registered { lease } => Ok(*lease),
                _ => unreachable!("waited for Registered"),
            },
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Withdraws the instance (revokes the lease) until [`resume`](Self::resume).
    pub async fn pause(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Pause(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    pub async fn resume(&self) -> Result<()> {
        self.cmds.send(Cmd::Resume).await.map_err(|_| Error::Closed)
    }

    /// Stops renewing without revoking: the key stays until its lease
    /// expires, exactly as when the process dies. For demos and tests.
    pub async fn abandon(self) {
        let _ = self.cmds.send(Cmd::Abandon).await;
    }

    /// Revokes the lease, so the instance leaves every list at once, and
    /// stops. Call it before the process stops serving.
    pub async fn deregister(self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Deregister(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

struct Task {
    client: Client,
    key: String,
    value: String,
    ttl: Duration,
    cmds: mpsc::Receiver<Cmd>,
    status: watch::Sender<RegistrationStatus>,
    lease: i64,
    /// Told how the first attempt went, then `None`.
    first: Option<oneshot::Sender<Option<tonic::Status>>>,
}

/// A refusal that retrying will not change: the caller lacks the
/// permission, or its credentials are wrong.
fn refusal(e: &Error) -> Option<tonic::Status> {
    match e {
        Error::Status(s)
            if s.code() == tonic::Code::PermissionDenied || s.message().contains("authentication failed") =>
        {
            Some(s.clone())
        }
        _ => None,
    }
}

/// Why a registered phase ended.
enum Exit {
    Lost(String),
    Pause(oneshot::Sender<()>),
    Stop(Option<oneshot::Sender<Result<()>>>),
    /// Stop without revoking.
    Abandon,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let attempt = self.register().await;
            if attempt.is_ok() {
                self.status.send_replace(RegistrationStatus::Registered { lease: self.lease });
            }
            if let Some(first) = self.first.take() {
                let _ = first.send(attempt.as_ref().err().and_then(refusal));
            }
            let exit = match attempt {
                Ok(()) => {
                    backoff.reset();
                    tracing::info!(key = %self.key, lease = self.lease, "registered");
                    self.hold().await
                }
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "registration failed; retrying");
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = sleep(delay) => continue,
                        cmd = self.cmds.recv() => match cmd {
                            Some(Cmd::Pause(done)) => Exit::Pause(done),
                            Some(Cmd::Resume) => continue,
                            Some(Cmd::Deregister(done)) => Exit::Stop(Some(done)),
                            Some(Cmd::Abandon) => return,
                            None => Exit::Stop(None),
                        },
                    }
                }
            };
            match exit {
                Exit::Lost(reason) => {
                    tracing::warn!(key = %self.key, %reason, "registration lost; registering again");
                    self.status.send_replace(RegistrationStatus::Lost { reason });
                    self.lease = 0;
                }
                Exit::Pause(done) => {
                    let _ = self.withdraw().await;
                    self.status.send_replace(RegistrationStatus::Paused);
                    let _ = done.send(());
                    loop {
                        match self.cmds.recv().await {
                            Some(Cmd::Resume) => break,
                            Some(Cmd::Pause(done)) => {
                                let _ = done.send(());
                            }
                            Some(Cmd::Deregister(done)) => {
                                self.status.send_replace(RegistrationStatus::Deregistered);
                                let _ = done.send(Ok(()));
                                return;
                            }
                            Some(Cmd::Abandon) | None => return,
                        }
                    }
                    self.status.send_replace(RegistrationStatus::Registering);
                }
                Exit::Abandon => {
                    tracing::info!(key = %self.key, "abandoned; the key expires with its lease");
                    return;
                }
                Exit::Stop(done) => {
                    let res = self.withdraw().await;
                    self.status.send_replace(RegistrationStatus::Deregistered);
                    tracing::info!(key = %self.key, "deregistered");
                    if let Some(done) = done {
                        let _ = done.send(res);
                    }
                    return;
                }
            }
        }
    }

    async fn register(&mut self) -> Result<()> {
        let ttl = self.ttl.as_secs().max(1) as i64;
        self.lease = self.client.lease_grant(ttl).await?.id;
        self.put().await
    }

    async fn put(&self) -> Result<()> {
        let req = PutRequest { key: self.key.clone().into(), value: self.value.clone().into(), lease: self.lease, ..Default::default() };
        self.client.put(req).await.map(|_| ())
    }

    async fn key_exists(&self) -> Result<bool> {
        let r = self.client.range(RangeRequest { key: self.key.clone().into(), count_only: true, ..Default::default() }).await?;
        Ok(r.count > 0)
    }

    /// Revokes the lease; the key goes with it.
    async fn withdraw(&mut self) -> Result<()> {
        if self.lease == 0 {
            return Ok(());
        }
        let res = self.client.lease_revoke(self.lease).await.map(|_| ());
        if let Err(e) = &res {
            tracing::warn!(key = %self.key, error = %e, "could not revoke lease; the key expires with its TTL");
        }
        self.lease = 0;
        res
    }

    /// Keeps the lease alive and the key present until something ends the
    /// registration.
    async fn hold(&mut self) -> Exit {
        let interval = (self.ttl / 3).max(Duration::from_millis(200));
        // Past this a renewal's member is taken for stopped; `None` (one
        // endpoint): wait, as reconnecting would only add load.
        let answer_within = self.client.renewal_deadline(interval);
        // Opening the streams is held to the same deadline.
        let open_within = answer_within.unwrap_or(self.ttl);
        let mut last_ok = Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        'reconnect: loop {
            let create = WatchCreateRequest { key: self.key.clone().into(), ..Default::default() };
            let endpoint = self.client.current_endpoint().to_owned();
            // When each renewal still unanswered was sent, oldest first: one
            // answer comes for each, in order. The stream opens with one.
            let mut unanswered = VecDeque::from([Instant::now()]);
            // The keepalive stream opens with its first renewal answered, so
            // opening is held to the same deadline as any renewal.
            let streams = async { Ok::<_, Error>((self.client.keep_alive_stream(self.lease).await?, self.client.watch_stream(create).await?)) };
            let opened = match tokio::time::timeout(open_within, streams).await {
                Ok(opened) => opened,
                Err(_) => {
                    self.client.fail_over_from(&endpoint);
                    Err(Error::Stalled { endpoint, silent: open_within })
                }
            };
            let (mut ka, mut w) = match opened {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(key = %self.key, error = %e, "cannot open keepalive/watch streams");
                    // The lease may be gone, but only a member can tell: the
                    // next renewal that is answered says so (TTL 0), or that
                    // it lives on (a new etcd leader extends every lease, so
                    // it can outlast a TTL of silence).
                    if last_ok.elapsed() > self.ttl && matches!(*self.status.borrow(), RegistrationStatus::Registered { .. }) {
                        tracing::warn!(key = %self.key, "registry unreachable for longer than the TTL; the registration may be lost");
                        self.status.send_replace(RegistrationStatus::Lost { reason: "registry unreachable for longer than the TTL".into() });
                    }
                    tokio::select! {
                        _ = sleep(backoff.next_delay()) => continue 'reconnect,
                        cmd = self.cmds.recv() => match cmd_exit(cmd) {
                            Some(exit) => return exit,
                            None => continue 'reconnect,
                        },
                    }
                }
            };
            // The key may have gone while no watch was open.
            match self.key_exists().await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(key = %self.key, "own key missing; putting it back");
                    if let Err(e) = self.put().await {
                        return Exit::Lost(format!("key missing and lease gone: {e}"));
                    }
                }
                Err(_) => continue 'reconnect,
            }
            // Renew at once: this also tells us whether the lease survived.
            let mut tick = tokio::time::interval(interval);
            loop {
                let overdue = async {
                    match (unanswered.front(), answer_within) {
                        (Some(sent), Some(within)) => tokio::time::sleep_until(*sent + within).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => match ka.requests.try_send(LeaseKeepAliveRequest { id: self.lease }) {
                        Ok(()) => unanswered.push_back(Instant::now()),
                        // Not draining: the deadline of those queued applies.
                        Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Closed(_)) => continue 'reconnect,
                    },
                    resp = ka.responses.message() => match resp {
                        Ok(Some(r)) if r.ttl > 0 => {
                            last_ok = Instant::now();
                            unanswered.pop_front();
                            backoff.reset();
                            if !matches!(*self.status.borrow(), RegistrationStatus::Registered { .. }) {
                                tracing::info!(key = %self.key, lease = self.lease, "registry reachable again; the lease lived on");
                                self.status.send_replace(RegistrationStatus::Registered { lease: self.lease });
                            }
                        }
                        Ok(Some(_)) => return Exit::Lost("lease expired or revoked (keepalive answered TTL 0)".into()),
                        Ok(None) | Err(_) => {
                            self.client.fail_over_from(&ka.endpoint);
                            sleep(backoff.next_delay()).await;
                            continue 'reconnect;
                        }
                    },
                    _ = overdue => {
                        tracing::warn!(key = %self.key, endpoint = %ka.endpoint, "keepalive unanswered for {:?}; renewing on another endpoint", open_within);
                        self.client.fail_over_from(&ka.endpoint);
                        continue 'reconnect;
                    }
                    // Read without probing: a stopped member shows in the
                    // keepalive first, which then moves both streams.
                    resp = w.message() => match resp {
                        Ok(Some(r)) => {
                            let deleted = r.events.iter().any(|e| e.r#type == EventType::Delete as i32);
                            if deleted {
                                tracing::warn!(key = %self.key, "own key deleted under a live registration; putting it back");
                                if let Err(e) = self.put().await {
                                    return Exit::Lost(format!("key deleted and lease gone: {e}"));
                                }
                            }
                            if r.canceled && r.compact_revision == 0 {
                                continue 'reconnect;
                            }
                        }
                        Ok(None) | Err(_) => {
                            self.client.fail_over_from(&w.endpoint);
                            sleep(backoff.next_delay()).await;
                            continue 'reconnect;
                        }
                    },
                    cmd = self.cmds.recv() => if let Some(exit) = cmd_exit(cmd) {
                        return exit;
                    },
                }
            }
        }
    }
}

/// What a command does to a live registration; `None` changes nothing.
fn cmd_exit(cmd: Option<Cmd>) -> Option<Exit> {
    match cmd {
        Some(Cmd::Pause(done)) => Some(Exit::Pause(done)),
        Some(Cmd::Resume) => None,
        Some(Cmd::Deregister(done)) => Some(Exit::Stop(Some(done))),
        Some(Cmd::Abandon) => Some(Exit::Abandon),
        None => Some(Exit::Stop(None)),
    }
}
