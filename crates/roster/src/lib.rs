//! Service registration and discovery over the etcd v3 API.
//!
//! ```no_run
//! # async fn demo() -> roster::Result<()> {
//! use roster::{Client, Instance, Registry};
//!
//! let registry = Registry::new(Client::connect(["127.0.0.1:2379"])?);
//!
//! // A service instance registers itself; a lease keeps it alive.
//! let reg = registry.register(Instance::new("hello", "127.0.0.1:50051").with_zone("eu-1")).await?;
//!
//! // A client finds the live instances and follows changes.
//! let hello = registry.discover("hello");
//! hello.ready().await;
//! for i in hello.instances() {
//!     println!("{} at {}", i.id, i.addr);
//! }
//!
//! // Leave every list at once before stopping.
//! reg.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! The same code works against `roster serve` and against an etcd cluster.
//! Every background task the SDK starts stops when the last handle that
//! owns it is dropped ([`task`]).
//!
//! # Modules
//!
//! Each one with the shortest example that shows what it is for. Those
//! marked `no_run` need a registry; the others run as doc tests.
//!
//! **[`client`]**: an etcd v3 client with multi-endpoint failover and
//! timeouts, on which everything else is built.
//!
//! ```no_run
//! # async fn demo() -> roster::Result<()> {
//! use roster::{Client, ClientConfig};
//! use roster_api::etcdserverpb::{PutRequest, RangeRequest};
//!
//! let client = Client::new(ClientConfig::from_list("10.0.0.1:2379,10.0.0.2:2379"))?;
//! client.put(PutRequest { key: "greeting".into(), value: "hi".into(), ..Default::default() }).await?;
//! let got = client.range(RangeRequest { key: "greeting".into(), ..Default::default() }).await?;
//! assert_eq!(got.kvs[0].value, "hi".as_bytes());
//! # Ok(()) }
//! ```
//!
//! **[`Instance`]** (module `instance`): what is registered, stored as
//! etcd endpoint JSON that etcd's Go resolver reads too.
//!
//! ```
//! use roster::Instance;
//!
//! let i = Instance::new("hello", "10.0.0.7:50051").with_id("a1").with_zone("eu-1").with_weight(5);
//! let value = i.to_value();
//! assert!(value.starts_with(r#"{"Op":0,"Addr":"10.0.0.7:50051""#));
//! assert_eq!(Instance::from_value("hello", "a1", value.as_bytes()).unwrap(), i);
//! // Readers are tolerant: a plain host:port is an instance too.
//! assert_eq!(Instance::from_value("hello", "b", b"10.0.0.8:50051").unwrap().addr, "10.0.0.8:50051");
//! ```
//!
//! **[`Registry`]** (module `registry`): the entry point; registers
//! instances and starts discoveries under one key prefix and TTL.
//!
//! ```no_run
//! # async fn demo(client: roster::Client) -> roster::Result<()> {
//! use std::time::Duration;
//!
//! let registry = roster::Registry::new(client).with_prefix("/prod/services").with_ttl(Duration::from_secs(5));
//! assert_eq!(registry.key_of("hello", "a1"), "/prod/services/hello/a1");
//! # Ok(()) }
//! ```
//!
//! **[`Registration`]** (module `registration`): keeps one instance
//! registered while its handle lives; pause and resume for draining. An
//! operator drains it from another process by writing its drain marker
//! ([`drain_key`], as the console's Drain does): the registration then
//! withdraws its key exactly as on `pause`, keeping its lease, until the
//! marker is deleted.
//!
//! ```no_run
//! # async fn demo(registry: roster::Registry) -> roster::Result<()> {
//! use roster::{Instance, RegistrationStatus};
//! use std::time::Duration;
//!
//! let reg = registry.register(Instance::new("hello", "127.0.0.1:50051")).await?;
//! let lease = reg.registered(Duration::from_secs(5)).await?;
//! reg.pause().await?; // out of every list, still running
//! assert_eq!(*reg.status().borrow(), RegistrationStatus::Paused);
//! reg.resume().await?;
//! # let _ = lease; Ok(()) }
//! ```
//!
//! **[`health`]**: active health checks (HTTP, TCP, gRPC or a closure)
//! that withdraw a registration while they fail.
//!
//! ```no_run
//! # async fn demo(registry: roster::Registry) -> roster::Result<()> {
//! use roster::health::{Check, HealthCheck};
//!
//! let ready = HealthCheck::new(Check::custom(|| async { Ok(()) })).with_rise(2).with_fall(3);
//! let reg = registry.register_checked(roster::Instance::new("worker", "127.0.0.1:9000"), ready).await?;
//! # drop(reg); Ok(()) }
//! ```
//!
//! **[`Discovery`]** (module `discovery`): the live instances of one
//! service, as a lock-free snapshot and a stream of changes.
//!
//! ```no_run
//! # async fn demo(registry: roster::Registry) {
//! use roster::Change;
//! use tokio_stream::StreamExt;
//!
//! let hello = registry.discover("hello");
//! let mut changes = Box::pin(hello.changes());
//! hello.ready().await;
//! println!("{} instances at revision {}", hello.snapshot().instances.len(), hello.snapshot().revision);
//! while let Some(change) = changes.next().await {
//!     if let Change::Removed(gone) = change {
//!         println!("{} left", gone.id);
//!     }
//! }
//! # }
//! ```
//!
//! **[`balance`]**: client-side load balancing over a discovered set,
//! with passive outlier ejection and zone preference.
//!
//! ```
//! use roster::Instance;
//! use roster::balance::{Balancer, Policy};
//!
//! let b = Balancer::new(Policy::RoundRobin).with_seed(7);
//! b.update([Instance::new("hello", "10.0.0.1:1").with_id("a"), Instance::new("hello", "10.0.0.2:1").with_id("b")]);
//! let first = b.pick(None).unwrap();
//! let second = b.pick(None).unwrap();
//! assert_ne!(first.instance().id, second.instance().id);
//! first.success(); // outcomes feed ejection and least-request
//! second.failure();
//! ```
//!
//! **[`grpc`]**: a tonic channel that follows a discovery and balances
//! every call; give it to any generated client.
//!
//! ```no_run
//! # async fn demo(registry: roster::Registry) -> roster::Result<()> {
//! use roster::grpc::{Channel, ChannelConfig};
//!
//! let hello = registry.discover("hello");
//! hello.ready().await;
//! let channel = Channel::new(hello, ChannelConfig { zone: Some("eu-1".into()), ..Default::default() })?;
//! // let mut client = HelloClient::new(channel); client.say(...).await
//! # drop(channel); Ok(()) }
//! ```
//!
//! **[`config`]**: dynamic configuration in the registry, decoded (JSON,
//! TOML, YAML), validated, with the last good value always at hand.
//!
//! ```no_run
//! # async fn demo(client: roster::Client) -> roster::Result<()> {
//! #[derive(serde::Deserialize)]
//! struct Limits { rps: u32 }
//!
//! let limits = roster::config::watch::<Limits>(&client, "/config/limits.json").await?;
//! println!("rps now {}", limits.get().rps);
//! # Ok(()) }
//! ```
//!
//! **[`sync`]**: locks and leader election on etcd's `concurrency`
//! layout, interoperable with `etcdctl lock` and `etcdctl elect`.
//!
//! ```no_run
//! # async fn demo(client: roster::Client) -> roster::Result<()> {
//! use roster::sync::{Election, Session};
//! use std::time::Duration;
//!
//! let session = Session::new(&client, Duration::from_secs(10)).await?;
//! let election = Election::new(&client, "/elections/scheduler");
//! let leader = election.campaign(&session, "node-1").await?; // waits until elected
//! // ... lead ...
//! election.resign(&leader).await?;
//! # Ok(()) }
//! ```
//!
//! **[`mirror`]**: list-then-watch of a key range into a local copy, with
//! resync on compaction and failover; what discovery and config are built
//! on, open to other components (the gateway's service directory).
//!
//! ```no_run
//! # async fn demo(client: roster::Client) {
//! use roster::mirror::{self, Mirror, Range};
//! use roster_api::mvccpb::{Event, KeyValue};
//! use std::sync::Arc;
//!
//! struct Count(std::sync::atomic::AtomicUsize);
//! impl Mirror for Count {
//!     fn label(&self) -> &str { "flags" }
//!     fn reset(&self, kvs: &[KeyValue], _rev: i64) { self.0.store(kvs.len(), std::sync::atomic::Ordering::Relaxed) }
//!     fn apply(&self, _events: &[Event], _rev: i64) {}
//!     fn unreachable(&self) {}
//! }
//! let task = mirror::spawn(client, Range::prefix("/flags/"), Arc::new(Count(Default::default())), None);
//! drop(task); // stops the mirror and its watch
//! # }
//! ```
//!
//! **[`task`]**: the one way a background task stops, with its last handle.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (done_tx, mut done) = tokio::sync::mpsc::channel::<()>(1);
//! let guard = roster::task::spawn(async move {
//!     let _held = done_tx;
//!     std::future::pending::<()>().await
//! });
//! drop(guard);
//! assert!(done.recv().await.is_none());
//! # }
//! ```
//!
//! **[`Error`]** (module `error`): one error type; etcd's messages are kept
//! verbatim in [`Error::Status`].
//!
//! ```
//! let e = roster::Error::Status(tonic::Status::not_found("etcdserver: requested lease not found"));
//! assert!(e.to_string().starts_with("registry error: "));
//! assert!(matches!(&e, roster::Error::Status(s) if s.message() == "etcdserver: requested lease not found"));
//! ```
//!
//! Internal: `backoff` (jittered exponential delays for every retry loop).

mod admin;
mod backoff;
pub mod balance;
pub mod client;
pub mod config;
mod discovery;
mod error;
pub mod grpc;
pub mod health;
mod instance;
pub mod mirror;
mod registration;
mod registry;
pub mod sync;
pub mod task;

pub use client::{Client, ClientConfig, Credentials};
pub use discovery::{Change, Discovery, Snapshot};
pub use error::{Error, Result};
pub use instance::Instance;
pub use registration::{Registration, RegistrationStatus};
pub use registry::{DEFAULT_PREFIX, DEFAULT_TTL, Registry, drain_key, drain_prefix};
