//! Draining across processes: another client's drain marker on an
//! instance's lease pauses its registration, and deleting it resumes it;
//! the marker dies with the lease. On roster and on a real etcd.

use crate::support::{client, eventually, on_roster_and_etcd};
use roster::{Client, Instance, Registration, RegistrationStatus, Registry};
use roster_api::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

fn status(r: &Registration) -> RegistrationStatus {
    r.status().borrow().clone()
}

async fn exists(c: &Client, key: &str) -> bool {
    c.range(RangeRequest { key: key.to_owned().into(), ..Default::default() }).await.unwrap().count > 0
}

async fn put_marker(c: &Client, marker: &str, value: &str, lease: i64) {
    let put = PutRequest { key: marker.to_owned().into(), value: value.to_owned().into(), lease, ..Default::default() };
    c.put(put).await.unwrap();
}

async fn delete(c: &Client, key: &str) {
    c.delete_range(DeleteRangeRequest { key: key.to_owned().into(), ..Default::default() }).await.unwrap();
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    roster_testkit::eventually(what, WAIT, async || f().await).await;
}

async fn paused_and_withdrawn(label: &str, r: &Registration, c: &Client, d: &roster::Discovery) {
    until(&format!("{label}: paused"), async || status(r) == RegistrationStatus::Paused).await;
    until(&format!("{label}: key withdrawn"), async || !exists(c, r.key()).await).await;
    eventually(&format!("{label}: discovery drops it"), WAIT, || d.instances().is_empty()).await;
}

async fn registered_again(label: &str, r: &Registration, c: &Client, d: &roster::Discovery, lease: i64) {
    until(&format!("{label}: registered on the same lease"), async || {
        status(r) == RegistrationStatus::Registered { lease }
    })
    .await;
    until(&format!("{label}: key back"), async || exists(c, r.key()).await).await;
    eventually(&format!("{label}: discovery lists it"), WAIT, || d.instances().len() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_marker_pauses_a_live_registration_and_its_delete_resumes_it() {
    on_roster_and_etcd(async |on, endpoint| {
        let reg = Registry::new(client(&endpoint)).with_ttl(Duration::from_secs(3));
        let operator = client(&endpoint);
        let inst = Instance::new("drained", "127.0.0.1:5001").with_id("a").with_zone("z1");
        let r = reg.register(inst.clone()).await.unwrap();
        let lease = r.registered(WAIT).await.unwrap();
        let d = reg.discover("drained");
        d.ready().await;
        eventually("listed", WAIT, || d.instances().len() == 1).await;
        let marker = reg.drain_key_of("drained", "a");
        assert!(!marker.starts_with("/services/"), "the marker must lie outside the discovery prefix: {marker}");

        put_marker(&operator, &marker, &inst.to_value(), lease).await;
        paused_and_withdrawn(&format!("{on}: marker"), &r, &operator, &d).await;
        // The lease is kept, so the marker on it stays while paused.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(exists(&operator, &marker).await, "{on}: the marker outlived the TTL only if the lease is renewed");
        assert!(operator.lease_time_to_live(lease, false).await.unwrap().ttl > 0, "{on}: lease kept while drained");
        assert!(!exists(&operator, r.key()).await, "{on}: key stays withdrawn while drained");
        delete(&operator, &marker).await;
        registered_again(&format!("{on}: marker deleted"), &r, &operator, &d, lease).await;

        // A user pause and a drain combine: either keeps it withdrawn.
        r.pause().await.unwrap();
        put_marker(&operator, &marker, &inst.to_value(), lease).await;
        r.resume().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(status(&r), RegistrationStatus::Paused, "{on}: resumed by the user but still drained");
        assert!(!exists(&operator, r.key()).await, "{on}: drained after a user resume");
        r.pause().await.unwrap();
        delete(&operator, &marker).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(status(&r), RegistrationStatus::Paused, "{on}: drain ended but the user pause holds");
        assert!(!exists(&operator, r.key()).await, "{on}: user pause holds after the marker went");
        r.resume().await.unwrap();
        registered_again(&format!("{on}: both ended"), &r, &operator, &d, lease).await;
        r.deregister().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_marker_vanishes_with_the_lease_of_its_instance() {
    on_roster_and_etcd(async |on, endpoint| {
        let reg = Registry::new(client(&endpoint)).with_ttl(Duration::from_secs(2));
        let operator = client(&endpoint);
        let inst = Instance::new("drained", "127.0.0.1:5002").with_id("b");
        let r = reg.register(inst.clone()).await.unwrap();
        let lease = r.registered(WAIT).await.unwrap();
        let d = reg.discover("drained");
        d.ready().await;
        let marker = reg.drain_key_of("drained", "b");

        // Revoked lease: the marker goes, and the registration comes back
        // on a new lease, no longer drained.
        put_marker(&operator, &marker, &inst.to_value(), lease).await;
        paused_and_withdrawn(&format!("{on}: marker"), &r, &operator, &d).await;
        operator.lease_revoke(lease).await.unwrap();
        assert!(!exists(&operator, &marker).await, "{on}: marker revoked with the lease");
        let again = r.registered(WAIT).await.unwrap();
        assert_ne!(again, lease, "{on}: a new lease");
        until(&format!("{on}: key back after the revoke"), async || exists(&operator, r.key()).await).await;

        // The registering process dies (stops renewing, revokes nothing):
        // the marker expires with its lease.
        put_marker(&operator, &marker, &inst.to_value(), again).await;
        until(&format!("{on}: paused again"), async || status(&r) == RegistrationStatus::Paused).await;
        r.abandon().await;
        until(&format!("{on}: marker expired with the lease"), async || !exists(&operator, &marker).await).await;
    })
    .await;
}
