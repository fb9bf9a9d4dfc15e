//! The server-side Lock and Election services: one scripted sequence of
//! calls goes to real etcd and to `roster serve`, and the transcripts of
//! responses and errors must be identical (cluster and member ids aside).
//! Leases are granted with fixed ids, so keys and revisions line up.

use crate::support::{outcome, roster_bin, zero_ids};
use roster_api::etcdserverpb::{
    LeaseGrantRequest, LeaseRevokeRequest, RangeRequest, ResponseHeader, kv_client::KvClient, lease_client::LeaseClient,
};
use roster_api::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
    election_client::ElectionClient,
};
use roster_api::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
use roster_testkit::{Etcd, Roster, require_etcd};
use std::time::Duration;
use tonic::transport::Channel;

const A: i64 = 0x100;
const B: i64 = 0x200;
const C: i64 = 0x300;

/// Records each outcome as one line.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn note<T: std::fmt::Debug>(&mut self, what: &str, r: Result<T, (tonic::Code, String)>) -> Option<T> {
        self.0.push(format!("{what}: {r:?}"));
        r.ok()
    }
}

fn h(mut header: Option<ResponseHeader>) -> Option<ResponseHeader> {
    zero_ids(&mut header);
    header
}

fn leader_resp(mut r: LeaderResponse) -> LeaderResponse {
    r.header = h(r.header);
    r
}

async fn keys_under(ch: &Channel, prefix: &str) -> Vec<String> {
    let r = KvClient::new(ch.clone())
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: roster_api::range::prefix_end(prefix.as_bytes()).into(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

/// Still waiting after a while: the call must not have finished.
async fn still_waiting<T>(task: &mut tokio::task::JoinHandle<T>) -> bool {
    tokio::time::timeout(Duration::from_millis(400), task).await.is_err()
}

async fn script(ch: Channel) -> Vec<String> {
    let mut t = Transcript::default();
    let mut lease = LeaseClient::new(ch.clone());
    for id in [A, B, C] {
        lease.lease_grant(LeaseGrantRequest { ttl: 60, id }).await.unwrap();
    }
    let lock = LockClient::new(ch.clone());
    let elect = ElectionClient::new(ch.clone());

    // --- Lock ---
    let a = t.note(
        "lock l A",
        outcome(lock.clone().lock(LockRequest { name: "l".into(), lease: A }).await).map(|mut r| {
            r.header = h(r.header);
            r
        }),
    );
    let mut waiter = {
        let mut lock = lock.clone();
        tokio::spawn(async move { outcome(lock.lock(LockRequest { name: "l".into(), lease: B }).await) })
    };
    t.0.push(format!("lock l B waits: {}", still_waiting(&mut waiter).await));
    let key_a = a.expect("lock A").key;
    let r = outcome(lock.clone().unlock(UnlockRequest { key: key_a }).await).map(|r| h(r.header));
    t.note("unlock A", r);
    let b = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("B gets the lock").unwrap();
    t.note(
        "lock l B",
        b.map(|mut r| {
            r.header = h(r.header);
            r
        }),
    );
    let r = outcome(lock.clone().lock(LockRequest { name: "l".into(), lease: 0x999 }).await).map(|r| r.key);
    t.note("lock with a missing lease", r);

    // An abandoned wait leaves no key behind.
    let r = outcome(lock.clone().lock(LockRequest { name: "m".into(), lease: A }).await).map(|r| r.key);
    t.note("lock m A", r);
    let mut req = tonic::Request::new(LockRequest { name: "m".into(), lease: C });
    req.set_timeout(Duration::from_millis(300));
    // The client's deadline timer and the server's answer race at the same
    // instant, on etcd as on Roster (the client's gives Cancelled, etcd's
    // handler Unknown), so the step records only that the call ended at its
    // deadline; what the server leaves behind is checked below.
    let r = outcome(lock.clone().lock(req).await).map(|r| r.key).map_err(|(code, _)| match code {
        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
            "ended at its deadline".to_string()
        }
        other => format!("{other:?}"),
    });
    t.0.push(format!("lock m C times out: {r:?}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.0.push(format!("keys under m/: {:?}", keys_under(&ch, "m/").await));

    // --- Election ---
    let r = outcome(elect.clone().leader(LeaderRequest { name: "e".into() }).await).map(leader_resp);
    t.note("leader before any campaign", r);
    let ca = outcome(elect.clone().campaign(CampaignRequest { name: "e".into(), lease: A, value: "a".into() }).await);
    let leader_a: LeaderKey = t
        .note(
            "campaign A",
            ca.map(|mut r| {
                r.header = h(r.header);
                r
            }),
        )
        .and_then(|r| r.leader)
        .expect("A leads");
    let r = outcome(elect.clone().leader(LeaderRequest { name: "e".into() }).await).map(leader_resp);
    t.note("leader", r);
    let mut observe = elect.clone().observe(LeaderRequest { name: "e".into() }).await.unwrap().into_inner();
    let mut next_observed = async |t: &mut Transcript, what: &str| {
        let m = tokio::time::timeout(Duration::from_secs(5), observe.message()).await.expect(what).unwrap().unwrap();
        t.0.push(format!("observe {what}: {:?}", leader_resp(m)));
    };
    next_observed(&mut t, "first").await;

    let mut candidate_b = {
        let mut elect = elect.clone();
        tokio::spawn(async move {
            outcome(elect.campaign(CampaignRequest { name: "e".into(), lease: B, value: "b".into() }).await)
        })
    };
    t.0.push(format!("campaign B waits: {}", still_waiting(&mut candidate_b).await));
    let r =
        outcome(elect.clone().proclaim(ProclaimRequest { leader: Some(leader_a.clone()), value: "a2".into() }).await);
    t.note("proclaim a2", r.map(|r| h(r.header)));
    next_observed(&mut t, "after proclaim").await;
    let stale = LeaderKey { rev: leader_a.rev + 1000, ..leader_a.clone() };
    let r = outcome(elect.clone().proclaim(ProclaimRequest { leader: Some(stale), value: "x".into() }).await);
    t.note("proclaim with a wrong rev", r.map(|r| h(r.header)));
    let r = outcome(elect.clone().proclaim(ProclaimRequest { leader: None, value: "x".into() }).await);
    t.note("proclaim without a leader", r.map(|r| h(r.header)));
    let r = outcome(elect.clone().resign(ResignRequest { leader: None }).await);
    t.note("resign without a leader", r.map(|r| h(r.header)));
    let r = outcome(elect.clone().resign(ResignRequest { leader: Some(leader_a.clone()) }).await);
    t.note("resign A", r.map(|r| h(r.header)));
    let b = tokio::time::timeout(Duration::from_secs(5), candidate_b).await.expect("B elected").unwrap();
    t.note(
        "campaign B",
        b.map(|mut r| {
            r.header = h(r.header);
            r
        }),
    );
    next_observed(&mut t, "after resign").await;
    let r = outcome(elect.clone().resign(ResignRequest { leader: Some(leader_a) }).await);
    t.note("resign A again", r.map(|r| h(r.header)));

    // The leader's lease ends: nobody leads until C campaigns.
    lease.lease_revoke(LeaseRevokeRequest { id: B }).await.unwrap();
    let r = outcome(elect.clone().leader(LeaderRequest { name: "e".into() }).await).map(leader_resp);
    t.note("leader after B's lease is revoked", r);
    let r = outcome(elect.clone().campaign(CampaignRequest { name: "e".into(), lease: C, value: "c".into() }).await);
    t.note(
        "campaign C",
        r.map(|mut r| {
            r.header = h(r.header);
            r
        }),
    );
    next_observed(&mut t, "after C is elected").await;
    // Campaigning again with the same lease and a new value proclaims it.
    let r = outcome(elect.clone().campaign(CampaignRequest { name: "e".into(), lease: C, value: "c2".into() }).await);
    t.note(
        "campaign C again",
        r.map(|mut r| {
            r.header = h(r.header);
            r
        }),
    );
    next_observed(&mut t, "after C campaigns again").await;
    t.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_answer_as_etcd_does() {
    let roster = Roster::start_in_memory(roster_bin()).await;
    let ours = script(roster.channel()).await;
    // Checked on its own as well, so a missing etcd still tests something.
    assert!(ours.iter().any(|l| l.starts_with("lock l B waits: true")), "{ours:#?}");
    assert!(ours.iter().any(|l| l.starts_with("campaign B waits: true")), "{ours:#?}");
    assert!(ours.iter().any(|l| l == "keys under m/: [\"m/100\"]"), "{ours:#?}");
    assert!(ours.iter().any(|l| l.contains("election: not leader")), "{ours:#?}");
    if require_etcd().is_none() {
        return;
    }
    let etcd = Etcd::start().await;
    let theirs = script(etcd.channel()).await;
    eprintln!("{}", theirs.join("\n"));
    for (i, (a, b)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(a, b, "step {i} differs\netcd:   {a}\nroster: {b}");
    }
    assert_eq!(theirs.len(), ours.len());
}
