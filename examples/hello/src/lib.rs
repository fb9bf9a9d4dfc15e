//! The hello service: a greeter that registers itself in Roster, and a
//! client loop that discovers it and balances over its instances.
//!
//! Used by the `hello-server` and `hello-client` binaries and by
//! `roster demo`.

pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("hello");
}

use pb::hello_client::HelloClient;
use pb::hello_server::{Hello, HelloServer};
use pb::{SayReply, SayRequest};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The service name instances register under.
pub const SERVICE: &str = "hello";

/// One greeter instance.
#[derive(Debug, Clone, Default)]
pub struct Greeter {
    pub id: String,
    /// Extra time each answer takes, in microseconds; benches and demos
    /// make one instance slow with it.
    pub delay_us: Arc<AtomicU64>,
}

impl Greeter {
    pub fn new(id: impl Into<String>) -> Self {
        Greeter { id: id.into(), ..Default::default() }
    }
}

#[tonic::async_trait]
impl Hello for Greeter {
    async fn say(&self, req: tonic::Request<SayRequest>) -> Result<tonic::Response<SayReply>, tonic::Status> {
        let delay = self.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        let name = req.into_inner().name;
        Ok(tonic::Response::new(SayReply { message: format!("hello, {name}"), instance: self.id.clone() }))
    }
}

/// Serves a greeter on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    id: String,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_greeter(listener, Greeter::new(id), shutdown).await
}

pub async fn serve_greeter(
    listener: tokio::net::TcpListener,
    greeter: Greeter,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(HelloServer::new(greeter))
        .serve_with_incoming_shutdown(tokio_stream_wrap(listener), shutdown)
        .await
}

fn tokio_stream_wrap(l: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true))
}

/// Calls `Say` through a balanced channel and counts answers per instance.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_instance: BTreeMap<String, u64>,
    pub errors: u64,
}

impl Tally {
    pub fn record(&mut self, r: &Result<String, tonic::Status>) {
        match r {
            Ok(id) => *self.by_instance.entry(id.clone()).or_default() += 1,
            Err(_) => self.errors += 1,
        }
    }

    pub fn line(&self) -> String {
        let parts: Vec<String> = self.by_instance.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}  errors={}", parts.join("  "), self.errors)
    }
}

/// One call; the answering instance's id.
pub async fn say(
    client: &mut HelloClient<roster::grpc::Channel>,
    name: &str,
    timeout: Duration,
) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(SayRequest { name: name.to_owned() });
    req.set_timeout(timeout);
    Ok(client.say(req).await?.into_inner().instance)
}
