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
//! Modules:
//! - [`client`]: an etcd v3 client with multi-endpoint failover and timeouts.
//! - [`Instance`]: what is registered, stored as etcd endpoint JSON.
//! - [`Registry`]: registers instances ([`Registration`]) and discovers
//!   services ([`Discovery`]).
//! - [`mirror`]: list-then-watch of a key range into a local copy, with
//!   resync on compaction and failover; what discovery and config are built
//!   on, open to other components (the gateway's service directory).
//!
//! The same code works against `roster serve` and against an etcd cluster.

pub mod balance;
pub mod client;
pub mod config;
pub mod grpc;
pub mod health;
pub mod sync;
mod backoff;
mod discovery;
mod error;
mod instance;
pub mod mirror;
mod registration;
mod registry;
pub mod task;

pub use client::{Client, ClientConfig, Credentials};
pub use discovery::{Change, Discovery, Snapshot};
pub use error::{Error, Result};
pub use instance::Instance;
pub use registration::{Registration, RegistrationStatus};
pub use registry::{Registry, DEFAULT_PREFIX, DEFAULT_TTL};
