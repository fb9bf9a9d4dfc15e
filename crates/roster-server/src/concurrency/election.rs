//! v3electionpb.Election: Campaign, Proclaim, Leader, Observe, Resign.

use super::{Withdraw, delete_if_created_at, enqueue, leader, plain, session_lease, unknown, wait_deletes};
use crate::Server;
use crate::responses::{self, Feed, Responses};
use roster_api::etcdserverpb::{TxnRequest, WatchCreateRequest};
use roster_api::mvccpb::{KeyValue, event::EventType};
use roster_api::ops;
use roster_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse, election_server::Election,
};
use tonic::{Request, Response, Status};

const CAMPAIGN: &str = "/v3electionpb.Election/Campaign";
const PROCLAIM: &str = "/v3electionpb.Election/Proclaim";
const LEADER: &str = "/v3electionpb.Election/Leader";
const RESIGN: &str = "/v3electionpb.Election/Resign";

const ERR_NOT_LEADER: &str = "election: not leader";
const ERR_NO_LEADER: &str = "election: no leader";
const ERR_MISSING_LEADER: &str = "\"leader\" field must be provided";

#[tonic::async_trait]
impl Election for Server {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        self.unary(CAMPAIGN, req, |r| {
            plain(async move {
                let store = self.store();
                let lease = session_lease(store, r.lease).await?;
                let prefix = ops::prefix_of(&r.name);
                let key = ops::lease_key(&prefix, lease);
                let (resp, rev, holder) = enqueue(store, &prefix, &key, &r.value, lease).await?;
                let mut withdraw = Withdraw { store: store.clone(), key: key.clone(), rev, armed: true };
                if !resp.succeeded {
                    // Already a candidate: take the new value.
                    let value =
                        ops::kvs_of(resp.responses.first()).first().map(|kv| kv.value.clone()).unwrap_or_default();
                    if value != r.value && !proclaim(self, &key, rev, lease, &r.value).await? {
                        return Err(unknown(ERR_NOT_LEADER));
                    }
                }
                if holder != rev {
                    wait_deletes(self, &prefix, rev - 1).await?;
                }
                withdraw.armed = false;
                let leader = LeaderKey { name: r.name, key: key.into(), rev, lease };
                Ok(CampaignResponse { header: resp.header, leader: Some(leader) })
            })
        })
        .await
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        self.unary(PROCLAIM, req, |r| {
            plain(async move {
                let l = r.leader.ok_or_else(|| unknown(ERR_MISSING_LEADER))?;
                let txn = TxnRequest {
                    compare: vec![ops::created_at(l.key.clone(), l.rev)],
                    success: vec![ops::put_op(l.key, r.value, l.lease)],
                    failure: vec![],
                };
                let resp = self.store().txn(txn).await?;
                if !resp.succeeded {
                    return Err(unknown(ERR_NOT_LEADER));
                }
                Ok(ProclaimResponse { header: resp.header })
            })
        })
        .await
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        self.unary(LEADER, req, |r| {
            plain(async move {
                match leader(self.store(), &ops::prefix_of(&r.name)).await? {
                    (header, Some(kv)) => Ok(LeaderResponse { header: Some(header), kv: Some(kv) }),
                    (_, None) => Err(unknown(ERR_NO_LEADER)),
                }
            })
        })
        .await
    }

    type ObserveStream = Responses<LeaderResponse>;

    async fn observe(&self, req: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        // The same check as Leader: read on the election's keys.
        self.authorize(&req)?;
        let prefix = ops::prefix_of(&req.into_inner().name);
        let (tx, rx) = responses::queue(16);
        let server = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = observe(&server, &prefix, &tx) => if let Err(status) = r {
                    let _ = tx.send(Err(status)).await;
                },
                () = tx.closed() => {}
                () = server.stop().wait() => {}
            }
        });
        Ok(Response::new(rx))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        self.unary(RESIGN, req, |r| {
            plain(async move {
                let l = r.leader.ok_or_else(|| unknown(ERR_MISSING_LEADER))?;
                let resp = delete_if_created_at(self.store(), &l.key, l.rev).await?;
                Ok(ResignResponse { header: resp.header })
            })
        })
        .await
    }
}

/// Puts `value` on `key` if it is still the one created at `rev`.
async fn proclaim(server: &Server, key: &[u8], rev: i64, lease: i64, value: &[u8]) -> Result<bool, Status> {
    let txn = TxnRequest {
        compare: vec![ops::created_at(key, rev)],
        success: vec![ops::put_op(key, value, lease)],
        failure: vec![],
    };
    Ok(server.store().txn(txn).await?.succeeded)
}

/// Sends the leader, then each new value, then the next leader, and so on,
/// until the receiver goes away.
async fn observe(server: &Server, prefix: &[u8], tx: &Feed<LeaderResponse>) -> Result<(), Status> {
    let store = server.store();
    loop {
        let (mut header, found) = leader(store, prefix).await?;
        let mut kv = match found {
            Some(kv) => kv,
            None => match next_put(server, prefix, header.revision).await? {
                Some(kv) => {
                    header.revision = kv.mod_revision;
                    kv
                }
                None => continue,
            },
        };
        server.fill_ids(&mut header);
        if tx.send(Ok(LeaderResponse { header: Some(header), kv: Some(kv.clone()) })).await.is_err() {
            return Ok(());
        }
        // Follow the leader's key until it goes.
        let (control, mut events) = store.watch_stream();
        control
            .create(WatchCreateRequest {
                key: kv.key.clone(),
                start_revision: header.revision + 1,
                ..Default::default()
            })
            .await;
        'follow: while let Some(resp) = events.next().await {
            if resp.canceled {
                break;
            }
            for ev in resp.events {
                if ev.r#type == EventType::Delete as i32 {
                    break 'follow;
                }
                let Some(next) = ev.kv else { continue };
                kv = next;
                let mut h = resp.header.unwrap_or_default();
                server.fill_ids(&mut h);
                if tx.send(Ok(LeaderResponse { header: Some(h), kv: Some(kv.clone()) })).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// The first key put under `prefix` from revision `from` on.
async fn next_put(server: &Server, prefix: &[u8], from: i64) -> Result<Option<KeyValue>, Status> {
    let (control, mut events) = server.store().watch_stream();
    let end = roster_api::range::prefix_end(prefix);
    control
        .create(WatchCreateRequest {
            key: prefix.to_vec().into(),
            range_end: end.into(),
            start_revision: from,
            ..Default::default()
        })
        .await;
    while let Some(resp) = events.next().await {
        if resp.canceled {
            return Ok(None);
        }
        if let Some(kv) = resp.events.into_iter().find(|e| e.r#type == EventType::Put as i32).and_then(|e| e.kv) {
            return Ok(Some(kv));
        }
    }
    Ok(None)
}
