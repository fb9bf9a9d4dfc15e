//! Drop means stop: a gateway that is shut down and dropped closes every
//! watch it opened (the service directory and each upstream's discovery),
//! counted on the registry server.

use super::*;

async fn watch_streams(server: &InProcess) -> i64 {
    server.metric("roster_watch_streams").await.expect("/metrics has roster_watch_streams") as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_gateway_closes_the_watches_of_its_directory_and_upstreams() {
    let (reg, server) = registry().await;
    let _b = Backend::start(&reg, "echo", "l1").await;
    // The backend's registration watches its own key: part of the base.
    roster_testkit::eventually("the backend's own watch", Duration::from_secs(5), async || {
        watch_streams(&server).await == 1
    })
    .await;
    let base = 1;
    let mut gw = Gw::start(&reg, "").await;
    let c = http();
    assert_eq!(get(&c, &gw.url("/echo/warm")).await.status, StatusCode::OK);
    // The directory's watch and the echo upstream's discovery.
    roster_testkit::eventually("the gateway's watches open", Duration::from_secs(5), async || {
        let n = watch_streams(&server).await;
        if n >= base + 2 { Ok(()) } else { Err(format!("{n} watch streams, base {base}")) }
    })
    .await;
    let _ = gw.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(6), &mut gw.task).await.unwrap().unwrap().unwrap();
    drop(gw);
    roster_testkit::eventually(
        "the gateway's watches closed within 1 s of its drop",
        Duration::from_secs(1),
        async || {
            let n = watch_streams(&server).await;
            if n == base { Ok(()) } else { Err(format!("{n} watch streams, base {base}")) }
        },
    )
    .await;
}
