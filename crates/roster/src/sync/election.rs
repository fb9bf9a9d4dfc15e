//! Leader election.

use super::{Session, wait_deletes};
use crate::backoff::Backoff;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::task::DropGuard;
use roster_api::etcdserverpb::{TxnRequest, WatchCreateRequest};
use roster_api::mvccpb::{KeyValue, event::EventType};
use roster_api::ops::{created_at, delete_op, first_created, get, kvs_of, put_op as put_with_lease, range_op};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

/// An election named by a key prefix. Candidates campaign through their
/// [`Session`]; observers need only a client.
#[derive(Clone)]
pub struct Election {
    client: Client,
    /// `<name>/`.
    prefix: String,
}

/// What a leader holds: its key and the revision that key was created at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    pub key: String,
    pub revision: i64,
    pub lease: i64,
}

impl Election {
    pub fn new(client: &Client, name: &str) -> Election {
        Election { client: client.clone(), prefix: format!("{}/", name.trim_end_matches('/')) }
    }

    pub fn name(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// Stands as candidate with `value` and waits until elected. If the
    /// wait fails or the future is dropped, the candidacy is withdrawn.
    pub async fn campaign(&self, session: &Session, value: impl Into<Vec<u8>>) -> Result<LeaderKey> {
        if session.is_lost() {
            return Err(session.lost_error());
        }
        let value: Vec<u8> = value.into();
        let key = format!("{}{:x}", self.prefix, session.lease());
        let put = put_with_lease(key.as_str(), value.clone(), session.lease());
        let txn = TxnRequest {
            compare: vec![created_at(key.as_str(), 0)],
            success: vec![put],
            failure: vec![range_op(get(key.as_str()))],
        };
        let resp = self.client.txn(txn).await?;
        let mut leader = LeaderKey { name: self.name().to_owned(), key, revision: 0, lease: session.lease() };
        if resp.succeeded {
            leader.revision = resp.header.map_or(0, |h| h.revision);
        } else {
            let Some(kv) = kvs_of(resp.responses.first()).first() else {
                return Err(Error::NotLeader); // deleted between compare and get: cannot happen in one txn
            };
            leader.revision = kv.create_revision;
            if kv.value[..] != value[..] {
                self.proclaim(&leader, value).await?;
            }
        }
        let mut withdraw = Withdraw { election: self.clone(), leader: Some(leader.clone()) };
        tokio::select! {
            r = wait_deletes(&self.client, &self.prefix, leader.revision - 1) => { r?; }
            _ = session.lost() => return Err(session.lost_error()),
        }
        withdraw.leader = None;
        Ok(leader)
    }

    /// Changes the leader's value without a new election. Fails with
    /// [`Error::NotLeader`] if `leader` no longer leads.
    pub async fn proclaim(&self, leader: &LeaderKey, value: impl Into<Vec<u8>>) -> Result<()> {
        let put = put_with_lease(leader.key.as_str(), value.into(), leader.lease);
        let txn = TxnRequest {
            compare: vec![created_at(leader.key.as_str(), leader.revision)],
            success: vec![put],
            failure: vec![],
        };
        if self.client.txn(txn).await?.succeeded { Ok(()) } else { Err(Error::NotLeader) }
    }

    /// Steps down, so the next candidate is elected at once. Resigning a
    /// candidacy that already ended is not an error.
    pub async fn resign(&self, leader: &LeaderKey) -> Result<()> {
        let del = delete_op(leader.key.as_str());
        let txn = TxnRequest {
            compare: vec![created_at(leader.key.as_str(), leader.revision)],
            success: vec![del],
            failure: vec![],
        };
        self.client.txn(txn).await?;
        Ok(())
    }

    /// The current leader's key and value; [`Error::NoLeader`] if nobody
    /// leads.
    pub async fn leader(&self) -> Result<KeyValue> {
        let resp = self.client.range(first_created(self.prefix.as_bytes())).await?;
        resp.kvs.into_iter().next().ok_or(Error::NoLeader)
    }

    /// The leader's key-value now (once there is one) and every change
    /// after: a new leader or a new value. It reconnects by itself; the
    /// task, and its watch, stop as soon as the stream is dropped.
    pub fn observe(&self) -> impl Stream<Item = KeyValue> + Send + 'static {
        let (tx, rx) = mpsc::channel(16);
        let this = self.clone();
        let task = crate::task::spawn(async move {
            let mut last: Option<(Vec<u8>, i64)> = None;
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
            loop {
                match this.observe_once(&tx, &mut last).await {
                    Ok(()) => return, // the receiver is gone
                    Err(e) => tracing::debug!(election = this.name(), error = %e, "observe broke; retrying"),
                }
                this.client.rotate();
                tokio::time::sleep(backoff.next_delay()).await;
            }
        });
        Observer { leaders: ReceiverStream::new(rx), _task: task }
    }

    /// Follows leaders until an error; `Ok` once the receiver is gone.
    /// `last` suppresses repeats after a reconnect.
    async fn observe_once(&self, tx: &mpsc::Sender<KeyValue>, last: &mut Option<(Vec<u8>, i64)>) -> Result<()> {
        loop {
            let resp = self.client.range(first_created(self.prefix.as_bytes())).await?;
            let rev = resp.header.map_or(0, |h| h.revision);
            let (leader, from) = match resp.kvs.into_iter().next() {
                Some(kv) => (kv, rev + 1),
                None => match self.next_put(rev + 1).await? {
                    Some(kv) => {
                        let from = kv.mod_revision + 1;
                        (kv, from)
                    }
                    None => continue,
                },
            };
            // Follow the leader's key until it is deleted.
            let mut kv = leader;
            let create = WatchCreateRequest { key: kv.key.clone(), start_revision: from, ..Default::default() };
            let mut w = self.client.watch_stream(create).await?;
            loop {
                let seen = (kv.key.to_vec(), kv.mod_revision);
                if last.as_ref() != Some(&seen) {
                    if tx.send(kv.clone()).await.is_err() {
                        return Ok(());
                    }
                    *last = Some(seen);
                }
                let resp = match w.next().await {
                    Ok(Some(resp)) => resp,
                    // Ended, broken or stalled: look again, on another
                    // member where there is one.
                    Ok(None) | Err(_) => {
                        self.client.fail_over_from(&w.endpoint);
                        break;
                    }
                };
                if resp.canceled {
                    break; // compacted: look again
                }
                let mut deleted = false;
                for ev in resp.events {
                    if ev.r#type == EventType::Delete as i32 {
                        deleted = true;
                        break;
                    }
                    if let Some(next) = ev.kv
                        && next.mod_revision > kv.mod_revision
                    {
                        if tx.send(next.clone()).await.is_err() {
                            return Ok(());
                        }
                        *last = Some((next.key.to_vec(), next.mod_revision));
                        kv = next;
                    }
                }
                if deleted {
                    break;
                }
            }
        }
    }

    /// Waits for the first put under the prefix from revision `from`.
    async fn next_put(&self, from: i64) -> Result<Option<KeyValue>> {
        let create = WatchCreateRequest {
            key: self.prefix.clone().into_bytes().into(),
            range_end: roster_api::range::prefix_end(self.prefix.as_bytes()).into(),
            start_revision: from,
            ..Default::default()
        };
        let mut w = self.client.watch_stream(create).await?;
        loop {
            let resp = match w.next().await {
                Ok(Some(resp)) => resp,
                // Ended, broken or stalled: the caller looks again.
                Ok(None) | Err(_) => {
                    self.client.fail_over_from(&w.endpoint);
                    return Ok(None);
                }
            };
            if resp.canceled {
                return Ok(None);
            }
            if let Some(kv) = resp.events.into_iter().find(|e| e.r#type == EventType::Put as i32).and_then(|e| e.kv) {
                return Ok(Some(kv));
            }
        }
    }
}

/// What [`Election::observe`] returns: the leaders, and the guard of the
/// task that follows them.
struct Observer {
    leaders: ReceiverStream<KeyValue>,
    _task: DropGuard,
}

impl Stream for Observer {
    type Item = KeyValue;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<KeyValue>> {
        Pin::new(&mut self.leaders).poll_next(cx)
    }
}

/// Withdraws a candidacy whose campaign was abandoned.
struct Withdraw {
    election: Election,
    leader: Option<LeaderKey>,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        let Some(leader) = self.leader.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let election = self.election.clone();
        rt.spawn(async move {
            if let Err(e) = election.resign(&leader).await {
                tracing::warn!(key = leader.key, error = %e, "cannot withdraw a candidacy; it goes with the session lease");
            }
        });
    }
}
