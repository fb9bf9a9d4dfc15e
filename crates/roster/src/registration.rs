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
//!
//! With a [`HealthCheck`], the instance is registered only while the check
//! passes: its lease is revoked when it fails `fall` times in a row and a
//! new one granted after `rise` passes (see [`crate::health`]).
//!
//! Pausing withdraws the key but keeps the lease renewed. So does a drain
//! marker (see [`crate::registry::drain_key`]), which an operator (the
//! console) writes on the instance's own lease from another process: the
//! task watches the marker on the same stream as its own key, withdraws the
//! key while the marker exists and puts it back when it is deleted, unless
//! the user paused it too. As the marker lives on the lease, it goes when
//! the instance dies or its lease is lost; a failing health check revokes
//! the lease and so ends a drain as well.
//!
//! The task stops with its handle (see [`crate::task`]), revoking the lease
//! on the way out unless [`Registration::abandon`] said not to.
//!
//! The code follows the phases: [`Task::run`] alternates between waiting
//! while withdrawn ([`Task::wait_admitted`]) and a registered phase
//! ([`Task::register`], then [`Task::hold`]); `hold` opens the keepalive and
//! watch streams ([`Task::open_streams`]), reads and watches the drain
//! marker ([`Task::watch_drain`]), makes sure the key is there or withdrawn
//! as pause and drain say ([`Task::restore_key`]) and renews
//! ([`Task::renew`]) until a stream breaks, which reconnects, or something
//! ends the phase ([`Exit`]); a pause, resume or drain change in between
//! puts or withdraws the key ([`Task::apply_hold`]).

use crate::backoff::Backoff;
use crate::client::Client;
use crate::client::{KeepAliveStream, WatchStream};
use crate::error::{Error, Result};
use crate::health::HealthCheck;
use crate::instance::Instance;
use crate::task::{DropGuard, Stopping};
use roster_api::etcdserverpb::{
    DeleteRangeRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, PutRequest, RangeRequest, WatchCreateRequest,
    WatchRequest, WatchResponse, watch_request,
};
use roster_api::mvccpb::event::EventType;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep};

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
    /// Withdrawn for draining (a user pause or an operator's drain
    /// marker): the key is gone, the lease is kept.
    Paused,
    /// Withdrawn because its health check fails (or has not passed yet);
    /// registered again once it passes `rise` times in a row.
    Unhealthy { reason: String },
    /// Withdrawn for good.
    Deregistered,
}

enum Cmd {
    Pause(oneshot::Sender<()>),
    Resume,
    Deregister(oneshot::Sender<Result<()>>),
    /// Acknowledged before the handle drops, so the drop does not revoke.
    Abandon(oneshot::Sender<()>),
}

/// A live registration. Dropping it withdraws the instance in the
/// background; [`Registration::deregister`] does so and waits.
pub struct Registration {
    key: String,
    cmds: mpsc::Sender<Cmd>,
    status: watch::Receiver<RegistrationStatus>,
    _task: DropGuard,
}

// === impl Registration ===

impl Registration {
    /// Also returns word of the first attempt: `Some` refusal when the
    /// registry refused it for good (no permission, bad credentials).
    pub(crate) fn spawn(
        client: Client,
        key: String,
        drain_key: String,
        instance: Instance,
        ttl: Duration,
        check: Option<HealthCheck>,
    ) -> (Registration, oneshot::Receiver<Option<tonic::Status>>) {
        let (cmds, rx) = mpsc::channel(4);
        let (tx, status) = watch::channel(RegistrationStatus::Registering);
        let (first_tx, first) = oneshot::channel();
        let value = instance.to_value();
        let task_key = key.clone();
        let guard = crate::task::spawn_with(move |stopping| {
            let (health, checker) = match check {
                Some(check) => {
                    let (verdict, health) = watch::channel(None);
                    (Some(health), Some(crate::task::spawn(check.run(verdict))))
                }
                None => (None, None),
            };
            let signals =
                Signals { cmds: rx, stopping, health, _checker: checker, paused: false, pause_acks: Vec::new() };
            let task = Task {
                client,
                key: task_key,
                drain_key,
                value,
                ttl,
                signals,
                status: tx,
                lease: 0,
                drained: false,
                first: Some(first_tx),
            };
            task.run()
        });
        (Registration { key, cmds, status, _task: guard }, first)
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

    /// Withdraws the instance until [`resume`](Self::resume): deletes its
    /// key and keeps the lease renewed (so a drain marker on it stays).
    /// Returns once the key is deleted, or at once while the registry is
    /// unreachable (the key is withdrawn on reconnecting). An operator's
    /// drain marker has the same effect; either keeps it withdrawn.
    pub async fn pause(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(Cmd::Pause(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Ends a [`pause`](Self::pause). A drain marker or a failing health
    /// check still keeps the instance withdrawn.
    pub async fn resume(&self) -> Result<()> {
        self.cmds.send(Cmd::Resume).await.map_err(|_| Error::Closed)
    }

    /// Stops renewing without revoking: the key stays until its lease
    /// expires, exactly as when the process dies. For demos and tests.
    pub async fn abandon(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Abandon(tx)).await.is_ok() {
            let _ = rx.await;
        }
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
    /// The drain marker an operator writes on our lease.
    drain_key: String,
    value: String,
    ttl: Duration,
    signals: Signals,
    status: watch::Sender<RegistrationStatus>,
    lease: i64,
    /// The drain marker exists (as last read or watched on this lease).
    drained: bool,
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

/// What can end a phase besides the registry: commands, the handle
/// dropping, the health check.
struct Signals {
    cmds: mpsc::Receiver<Cmd>,
    stopping: Stopping,
    /// The check's verdict; `None` inside before its first probe.
    health: Option<Verdict>,
    _checker: Option<DropGuard>,
    /// Paused by the user, for draining.
    paused: bool,
    /// Pauses acknowledged once the key is withdrawn.
    pause_acks: Vec<oneshot::Sender<()>>,
}

/// A health check's verdict: `None` before its first probe, then whether
/// it passes and why not.
type Verdict = watch::Receiver<Option<std::result::Result<(), String>>>;

/// Why a phase ended.
enum Exit {
    Lost(String),
    Unhealthy(String),
    Stop(Option<oneshot::Sender<Result<()>>>),
    /// Stop without revoking.
    Abandon(oneshot::Sender<()>),
}

/// What one step of [`Task::hold`] leads to.
enum Step {
    /// Open the streams again (on another endpoint where it failed over).
    Reconnect,
    Exit(Exit),
}

// === impl Signals ===

impl Signals {
    /// Why the health check withholds the instance, if it does.
    fn unhealthy(&self) -> Option<String> {
        let health = self.health.as_ref()?;
        match &*health.borrow() {
            None => Some("health check has not passed yet".into()),
            Some(Ok(())) => None,
            Some(Err(e)) => Some(e.clone()),
        }
    }

    /// Waits for the next command, the handle dropping, or the check
    /// failing: `Some` if that ends a registered phase, `None` for a pause
    /// or resume (recorded in `paused`; the pause waits in `pause_acks`).
    async fn next_change(&mut self) -> Option<Exit> {
        tokio::select! {
            // Commands first: an abandon sent before the handle dropped
            // must win over the drop.
            biased;
            cmd = self.cmds.recv() => match cmd {
                Some(Cmd::Pause(done)) => {
                    self.paused = true;
                    self.pause_acks.push(done);
                    None
                }
                Some(Cmd::Resume) => {
                    self.paused = false;
                    None
                }
                Some(Cmd::Deregister(done)) => Some(Exit::Stop(Some(done))),
                Some(Cmd::Abandon(done)) => Some(Exit::Abandon(done)),
                None => Some(Exit::Stop(None)),
            },
            _ = self.stopping.stopped() => Some(Exit::Stop(None)),
            _ = health_changed(&mut self.health) => self.unhealthy().map(Exit::Unhealthy),
        }
    }

    /// Waits for what ends a phase while no key can be put or withdrawn
    /// (no lease, or the registry unreachable): pauses are acknowledged at
    /// once and applied when the key can be.
    async fn next_exit(&mut self) -> Exit {
        loop {
            let change = self.next_change().await;
            self.ack_pauses();
            if let Some(exit) = change {
                return exit;
            }
        }
    }

    fn ack_pauses(&mut self) {
        for done in self.pause_acks.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Resolves when the health verdict changes; never without a check.
async fn health_changed(health: &mut Option<Verdict>) {
    match health {
        Some(h) => {
            if h.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

/// The state of one registered phase's renewals.
struct Renewals {
    /// Time between renewals: TTL/3.
    interval: Duration,
    /// Past this a renewal's member is taken for stopped; `None` (one
    /// endpoint): wait, as reconnecting would only add load.
    answer_within: Option<Duration>,
    /// Opening the streams is held to the same deadline.
    open_within: Duration,
    /// When a renewal was last answered.
    last_ok: Instant,
    backoff: Backoff,
}

/// The two streams of a registered phase.
struct Streams {
    ka: KeepAliveStream,
    w: WatchStream,
    /// When each renewal still unanswered was sent, oldest first: one
    /// answer comes for each, in order. The stream opens with one.
    unanswered: VecDeque<Instant>,
}

// === impl Task ===

impl Task {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if let Some(exit) = self.wait_admitted().await {
                self.finish(exit).await;
                return;
            }
            let attempt = self.register().await;
            if attempt.is_ok() {
                self.status.send_replace(self.held_status());
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
                    tokio::select! {
                        _ = sleep(backoff.next_delay()) => continue,
                        exit = self.signals.next_exit() => exit,
                    }
                }
            };
            match exit {
                Exit::Lost(reason) => {
                    tracing::warn!(key = %self.key, %reason, "registration lost; registering again");
                    self.status.send_replace(RegistrationStatus::Lost { reason });
                    self.lease = 0;
                }
                Exit::Unhealthy(reason) => {
                    let _ = self.withdraw().await;
                    self.status.send_replace(RegistrationStatus::Unhealthy { reason });
                }
                exit => {
                    self.finish(exit).await;
                    return;
                }
            }
        }
    }

    /// Waits, without a lease, while the health check fails; `Some` if the
    /// registration is to end instead. A pause meanwhile is only recorded:
    /// it is held with a lease (see [`Task::apply_hold`]).
    async fn wait_admitted(&mut self) -> Option<Exit> {
        loop {
            let paused = self.signals.paused;
            let Some(reason) = self.signals.unhealthy() else {
                let stale = match *self.status.borrow() {
                    RegistrationStatus::Unhealthy { .. } => true,
                    RegistrationStatus::Paused => !paused,
                    _ => false,
                };
                if stale {
                    self.status.send_replace(RegistrationStatus::Registering);
                }
                return None;
            };
            let status = if paused { RegistrationStatus::Paused } else { RegistrationStatus::Unhealthy { reason } };
            // The first probe is awaited as Registering, not Unhealthy.
            let first_probe = self.signals.health.as_ref().is_some_and(|h| h.borrow().is_none());
            if !first_probe || paused {
                self.status.send_if_modified(|s| {
                    let changed = *s != status;
                    *s = status;
                    changed
                });
            }
            // No lease, so no key: a pause holds already.
            self.signals.ack_pauses();
            match self.signals.next_change().await {
                // Still failing: already waited for.
                None | Some(Exit::Unhealthy(_)) => {}
                exit => return exit,
            }
        }
    }

    /// Ends the task: revokes the lease unless abandoned.
    async fn finish(&mut self, exit: Exit) {
        match exit {
            Exit::Abandon(done) => {
                tracing::info!(key = %self.key, "abandoned; the key expires with its lease");
                let _ = done.send(());
            }
            Exit::Stop(done) => {
                let res = self.withdraw().await;
                self.status.send_replace(RegistrationStatus::Deregistered);
                tracing::info!(key = %self.key, "deregistered");
                if let Some(done) = done {
                    let _ = done.send(res);
                }
            }
            Exit::Lost(_) | Exit::Unhealthy(_) => unreachable!("not an end"),
        }
    }

    /// Grants a lease and puts the key on it, unless paused.
    async fn register(&mut self) -> Result<()> {
        let ttl = self.ttl.as_secs().max(1) as i64;
        self.lease = self.client.lease_grant(ttl).await?.id;
        // A marker on the old lease went with it.
        self.drained = false;
        if self.withheld() {
            return Ok(());
        }
        self.put().await
    }

    /// Whether the key is to stay withdrawn: paused by the user or drained
    /// by an operator.
    fn withheld(&self) -> bool {
        self.signals.paused || self.drained
    }

    /// The status of a held lease.
    fn held_status(&self) -> RegistrationStatus {
        if self.withheld() { RegistrationStatus::Paused } else { RegistrationStatus::Registered { lease: self.lease } }
    }

    fn show_held(&self) {
        let status = self.held_status();
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    /// Puts the key, or withdraws it keeping the lease, as pause and drain
    /// say; an error means the registry did not answer (reconnect).
    async fn apply_hold(&mut self) -> Result<()> {
        if self.withheld() {
            self.client.delete_range(DeleteRangeRequest { key: self.key.clone().into(), ..Default::default() }).await?;
            tracing::info!(key = %self.key, paused = self.signals.paused, drained = self.drained, "withdrawn; the lease is kept");
            self.signals.ack_pauses();
        } else {
            self.put().await?;
            tracing::info!(key = %self.key, lease = self.lease, "put back after a pause or drain");
        }
        self.show_held();
        Ok(())
    }

    async fn put(&self) -> Result<()> {
        let req = PutRequest {
            key: self.key.clone().into(),
            value: self.value.clone().into(),
            lease: self.lease,
            ..Default::default()
        };
        self.client.put(req).await.map(|_| ())
    }

    async fn key_exists(&self) -> Result<bool> {
        let r = self
            .client
            .range(RangeRequest { key: self.key.clone().into(), count_only: true, ..Default::default() })
            .await?;
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
    /// registered phase.
    async fn hold(&mut self) -> Exit {
        let interval = (self.ttl / 3).max(Duration::from_millis(200));
        let answer_within = self.client.renewal_deadline(interval);
        let mut r = Renewals {
            interval,
            answer_within,
            open_within: answer_within.unwrap_or(self.ttl),
            last_ok: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
        };
        loop {
            let streams = match self.open_streams(&r).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(key = %self.key, error = %e, "cannot open keepalive/watch streams");
                    self.note_silence(&r);
                    tokio::select! {
                        _ = sleep(r.backoff.next_delay()) => continue,
                        exit = self.signals.next_exit() => return exit,
                    }
                }
            };
            let settled = match self.watch_drain(&streams).await {
                Ok(()) => self.restore_key().await,
                Err(step) => Err(step),
            };
            let step = match settled {
                Ok(()) => self.renew(&mut r, streams).await,
                Err(step) => step,
            };
            match step {
                Step::Reconnect => continue,
                Step::Exit(exit) => return exit,
            }
        }
    }

    /// Opens the keepalive and watch streams on the current endpoint, held
    /// to the renewal deadline: the keepalive stream opens with its first
    /// renewal answered.
    async fn open_streams(&self, r: &Renewals) -> Result<Streams> {
        let create = WatchCreateRequest { key: self.key.clone().into(), ..Default::default() };
        let endpoint = self.client.current_endpoint().to_owned();
        let unanswered = VecDeque::from([Instant::now()]);
        let open = async {
            Ok::<_, Error>((self.client.keep_alive_stream(self.lease).await?, self.client.watch_stream(create).await?))
        };
        match tokio::time::timeout(r.open_within, open).await {
            Ok(opened) => opened.map(|(ka, w)| Streams { ka, w, unanswered }),
            Err(_) => {
                self.client.fail_over_from(&endpoint);
                Err(Error::Stalled { endpoint, silent: r.open_within })
            }
        }
    }

    /// After a TTL without an answer the lease may be gone, but only a
    /// member can tell: the next renewal that is answered says so (TTL 0),
    /// or that it lives on (a new etcd leader extends every lease, so it
    /// can outlast a TTL of silence). Until then the status says `Lost`.
    fn note_silence(&self, r: &Renewals) {
        if r.last_ok.elapsed() > self.ttl && matches!(*self.status.borrow(), RegistrationStatus::Registered { .. }) {
            tracing::warn!(key = %self.key, "registry unreachable for longer than the TTL; the registration may be lost");
            self.status.send_replace(RegistrationStatus::Lost {
                reason: "registry unreachable for longer than the TTL".into(),
            });
        }
    }

    /// Reads whether the drain marker exists and watches it from that
    /// revision on, as a second watch on the own key's stream.
    async fn watch_drain(&mut self, s: &Streams) -> std::result::Result<(), Step> {
        let read = RangeRequest { key: self.drain_key.clone().into(), count_only: true, ..Default::default() };
        let r = match self.client.range(read).await {
            Ok(r) => r,
            // A user who may not read its marker cannot be drained by one:
            // registering matters more than following drains.
            Err(Error::Status(s)) if s.message() == "etcdserver: permission denied" => {
                tracing::warn!(key = %self.key, marker = %self.drain_key, "may not read the drain marker; drains by operators are not followed");
                self.drained = false;
                return Ok(());
            }
            Err(_) => return Err(Step::Reconnect),
        };
        self.drained = r.count > 0;
        let from = r.header.map_or(0, |h| h.revision) + 1;
        let create =
            WatchCreateRequest { key: self.drain_key.clone().into(), start_revision: from, ..Default::default() };
        let req = WatchRequest { request_union: Some(watch_request::RequestUnion::CreateRequest(create)) };
        s.w.requests.send(req).await.map_err(|_| Step::Reconnect)
    }

    /// The key may have gone while no watch was open: put it back, unless
    /// it is to stay withdrawn (then make sure it is).
    async fn restore_key(&mut self) -> std::result::Result<(), Step> {
        if self.withheld() {
            return self.apply_hold().await.map_err(|_| Step::Reconnect);
        }
        match self.key_exists().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(key = %self.key, "own key missing; putting it back");
                self.put().await.map_err(|e| Step::Exit(Exit::Lost(format!("key missing and lease gone: {e}"))))?;
            }
            Err(_) => return Err(Step::Reconnect),
        }
        self.show_held();
        Ok(())
    }

    /// Renews every interval on `s` and reacts to what comes back, until a
    /// stream needs reopening or the phase ends.
    async fn renew(&mut self, r: &mut Renewals, mut s: Streams) -> Step {
        // Renew at once: this also tells us whether the lease survived.
        let mut tick = tokio::time::interval(r.interval);
        loop {
            let overdue = async {
                match (s.unanswered.front(), r.answer_within) {
                    (Some(sent), Some(within)) => tokio::time::sleep_until(*sent + within).await,
                    _ => std::future::pending().await,
                }
            };
            let step = tokio::select! {
                _ = tick.tick() => match s.ka.requests.try_send(LeaseKeepAliveRequest { id: self.lease }) {
                    Ok(()) => {
                        s.unanswered.push_back(Instant::now());
                        None
                    }
                    // Not draining: the deadline of those queued applies.
                    Err(TrySendError::Full(_)) => None,
                    Err(TrySendError::Closed(_)) => Some(Step::Reconnect),
                },
                resp = s.ka.responses.message() => self.on_renewal(r, &mut s, resp).await,
                _ = overdue => {
                    tracing::warn!(key = %self.key, endpoint = %s.ka.endpoint, "keepalive unanswered for {:?}; renewing on another endpoint", r.open_within);
                    self.client.fail_over_from(&s.ka.endpoint);
                    Some(Step::Reconnect)
                }
                // Read without probing: a stopped member shows in the
                // keepalive first, which then moves both streams.
                resp = s.w.message() => self.on_own_key(r, &s, resp).await,
                change = self.signals.next_change() => match change {
                    Some(exit) => Some(Step::Exit(exit)),
                    None => self.apply_hold().await.err().map(|_| Step::Reconnect),
                },
            };
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// One keepalive answer, or the stream's end.
    async fn on_renewal(
        &self,
        r: &mut Renewals,
        s: &mut Streams,
        resp: std::result::Result<Option<LeaseKeepAliveResponse>, tonic::Status>,
    ) -> Option<Step> {
        match resp {
            Ok(Some(a)) if a.ttl > 0 => {
                r.last_ok = Instant::now();
                s.unanswered.pop_front();
                r.backoff.reset();
                if *self.status.borrow() != self.held_status() {
                    tracing::info!(key = %self.key, lease = self.lease, "registry reachable again; the lease lived on");
                    self.show_held();
                }
                None
            }
            Ok(Some(_)) => Some(Step::Exit(Exit::Lost("lease expired or revoked (keepalive answered TTL 0)".into()))),
            Ok(None) | Err(_) => {
                self.client.fail_over_from(&s.ka.endpoint);
                sleep(r.backoff.next_delay()).await;
                Some(Step::Reconnect)
            }
        }
    }

    /// One watch response on the own key or the drain marker: the marker
    /// coming or going withdraws or restores the key; a delete of the key
    /// under a live lease, not withdrawn, puts it back.
    async fn on_own_key(
        &mut self,
        r: &mut Renewals,
        s: &Streams,
        resp: std::result::Result<Option<WatchResponse>, tonic::Status>,
    ) -> Option<Step> {
        match resp {
            Ok(Some(w)) => {
                let was = self.withheld();
                let mut own_deleted = false;
                for e in &w.events {
                    let Some(kv) = &e.kv else { continue };
                    let deleted = e.r#type == EventType::Delete as i32;
                    if kv.key.as_ref() == self.drain_key.as_bytes() {
                        self.drained = !deleted;
                    } else if kv.key.as_ref() == self.key.as_bytes() {
                        own_deleted |= deleted;
                    }
                }
                if self.withheld() != was {
                    if self.apply_hold().await.is_err() {
                        return Some(Step::Reconnect);
                    }
                } else if own_deleted && !self.withheld() {
                    tracing::warn!(key = %self.key, "own key deleted under a live registration; putting it back");
                    if let Err(e) = self.put().await {
                        return Some(Step::Exit(Exit::Lost(format!("key deleted and lease gone: {e}"))));
                    }
                }
                (w.canceled && w.compact_revision == 0).then_some(Step::Reconnect)
            }
            Ok(None) | Err(_) => {
                self.client.fail_over_from(&s.w.endpoint);
                sleep(r.backoff.next_delay()).await;
                Some(Step::Reconnect)
            }
        }
    }
}
