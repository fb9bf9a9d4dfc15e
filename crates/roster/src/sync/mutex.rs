//! A distributed mutex with fencing.

use super::{Session, wait_deletes};
use crate::error::{Error, Result};
use roster_api::etcdserverpb::{Compare, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest};
use roster_api::mvccpb::event::EventType;
use roster_api::ops::{created_at, delete_op, first_created, get, kvs_of, put_op as put_with_lease, range_op};

/// A lock named by a key prefix, held through a [`Session`].
///
/// Two `Mutex`es on the same session and name share one key, so they do
/// not exclude each other; use one session per participant.
#[derive(Clone)]
pub struct Mutex {
    session: Session,
    /// `<name>/`.
    prefix: String,
}

/// The held lock. Its creation revision is a fencing token that grows with
/// every acquisition. Dropping the guard releases the lock in the
/// background; [`MutexGuard::unlock`] releases it and reports errors.
pub struct MutexGuard {
    session: Session,
    key: String,
    revision: i64,
    released: bool,
}

impl Mutex {
    pub fn new(session: &Session, name: &str) -> Mutex {
        Mutex { session: session.clone(), prefix: format!("{}/", name.trim_end_matches('/')) }
    }

    /// The key this participant holds or waits with: `<name>/<lease hex>`.
    pub fn key(&self) -> String {
        format!("{}{:x}", self.prefix, self.session.lease())
    }

    /// Waits for the lock. If the wait fails or is cancelled (the future is
    /// dropped), the waiting key is deleted so it blocks nobody.
    pub async fn lock(&self) -> Result<MutexGuard> {
        let (rev, owner) = self.enqueue().await?;
        let mut cleanup = DeleteOnDrop { session: self.session.clone(), key: self.key(), rev, armed: true };
        if owner != rev {
            tokio::select! {
                r = wait_deletes(self.session.client(), &self.prefix, rev - 1) => { r?; }
                _ = self.session.lost() => return Err(self.session.lost_error()),
            }
            // The session may have ended while waiting: make sure the key is ours still.
            let still = self.session.client().range(get(self.key())).await?;
            if still.kvs.first().map(|kv| kv.create_revision) != Some(rev) {
                return Err(self.session.lost_error());
            }
        }
        cleanup.armed = false;
        Ok(MutexGuard { session: self.session.clone(), key: self.key(), revision: rev, released: false })
    }

    /// Takes the lock if nobody holds it; otherwise withdraws and returns
    /// `None` at once.
    pub async fn try_lock(&self) -> Result<Option<MutexGuard>> {
        let (rev, owner) = self.enqueue().await?;
        if owner == rev {
            return Ok(Some(MutexGuard {
                session: self.session.clone(),
                key: self.key(),
                revision: rev,
                released: false,
            }));
        }
        delete_if_created_at(&self.session, &self.key(), rev).await?;
        Ok(None)
    }

    /// Creates (or finds) this participant's key. Returns its creation
    /// revision and the creation revision of the current holder.
    async fn enqueue(&self) -> Result<(i64, i64)> {
        if self.session.is_lost() {
            return Err(self.session.lost_error());
        }
        let key = self.key();
        let absent = created_at(key.as_str(), 0);
        let put = put_with_lease(key.as_str(), Vec::new(), self.session.lease());
        let owner = range_op(first_created(self.prefix.as_bytes()));
        let txn = TxnRequest {
            compare: vec![absent],
            success: vec![put, owner.clone()],
            failure: vec![range_op(get(key.as_str())), owner],
        };
        let resp = self.session.client().txn(txn).await?;
        let rev = if resp.succeeded {
            resp.header.as_ref().map_or(0, |h| h.revision)
        } else {
            kvs_of(resp.responses.first()).first().map_or(0, |kv| kv.create_revision)
        };
        let owner = kvs_of(resp.responses.get(1)).first().map_or(rev, |kv| kv.create_revision);
        Ok((rev, owner))
    }
}

impl MutexGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token: the creation revision of the lock key. A later
    /// holder always has a larger one.
    pub fn token(&self) -> i64 {
        self.revision
    }

    /// The compare that holds only while this guard's lock is held; put it
    /// in every transaction the lock protects.
    pub fn fence(&self) -> Compare {
        created_at(self.key.as_str(), self.revision)
    }

    /// Runs `then` if the lock is still held and every one of `compares`
    /// holds. Returns [`Error::LockLost`] when the lock is gone (nothing was
    /// written), otherwise the response (`succeeded` is false when one of
    /// `compares` failed).
    pub async fn fenced_txn(&self, compares: Vec<Compare>, then: Vec<RequestOp>) -> Result<TxnResponse> {
        let n = then.len();
        let mut all = vec![self.fence()];
        all.extend(compares);
        let txn = TxnRequest { compare: all, success: then, failure: vec![range_op(get(self.key.as_str()))] };
        let mut resp = self.session.client().txn(txn).await?;
        if !resp.succeeded {
            let held = kvs_of(resp.responses.last()).first().is_some_and(|kv| kv.create_revision == self.revision);
            if !held {
                return Err(Error::LockLost { key: self.key.clone() });
            }
            resp.responses.clear();
        }
        debug_assert!(!resp.succeeded || resp.responses.len() == n);
        Ok(resp)
    }

    /// True once the session behind the lock is lost.
    pub fn is_lost(&self) -> bool {
        self.session.is_lost()
    }

    /// Resolves when the lock is lost: the session ends, or the key is
    /// deleted by someone else.
    pub async fn lost(&self) {
        let watch_key = async {
            let create = WatchCreateRequest {
                key: self.key.clone().into_bytes().into(),
                start_revision: self.revision,
                ..Default::default()
            };
            loop {
                if let Ok(mut w) = self.session.client().watch_stream(create.clone()).await {
                    while let Ok(Some(resp)) = w.next().await {
                        let deleted = resp.events.iter().any(|e| e.r#type == EventType::Delete as i32);
                        if deleted || resp.canceled {
                            // A canceled watch means compaction passed our revision; check the key.
                            if deleted || !self.held().await.unwrap_or(true) {
                                return;
                            }
                        }
                    }
                    // Ended, broken or stalled: watch again elsewhere.
                    self.session.client().fail_over_from(&w.endpoint);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = self.session.lost() => {}
            _ = watch_key => {}
        }
    }

    /// Asks the registry whether the lock is still held.
    pub async fn held(&self) -> Result<bool> {
        let resp = self.session.client().range(get(self.key.as_str())).await?;
        Ok(resp.kvs.first().is_some_and(|kv| kv.create_revision == self.revision))
    }

    /// Releases the lock.
    pub async fn unlock(mut self) -> Result<()> {
        self.released = true;
        delete_if_created_at(&self.session, &self.key, self.revision).await
    }
}

impl Drop for MutexGuard {
    fn drop(&mut self) {
        if !self.released {
            drop(DeleteOnDrop {
                session: self.session.clone(),
                key: std::mem::take(&mut self.key),
                rev: self.revision,
                armed: true,
            });
        }
    }
}

/// Deletes our key only if it is the one we created, so a release never
/// removes a newer holder's key of the same lease.
async fn delete_if_created_at(session: &Session, key: &str, rev: i64) -> Result<()> {
    let txn = TxnRequest { compare: vec![created_at(key, rev)], success: vec![delete_op(key)], failure: vec![] };
    session.client().txn(txn).await?;
    Ok(())
}

/// Deletes a lock key when its attempt or guard is abandoned.
struct DeleteOnDrop {
    session: Session,
    key: String,
    /// The creation revision the key must still have.
    rev: i64,
    armed: bool,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if !self.armed || self.session.is_lost() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (session, key, rev) = (self.session.clone(), std::mem::take(&mut self.key), self.rev);
        rt.spawn(async move {
            if let Err(e) = delete_if_created_at(&session, &key, rev).await {
                tracing::warn!(key, error = %e, "cannot release a lock key; it goes with the session lease");
            }
        });
    }
}
