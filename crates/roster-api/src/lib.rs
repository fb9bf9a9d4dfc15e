//! etcd v3 wire types for Roster.
//!
//! - [`etcdserverpb`] and [`mvccpb`]: messages (and, with the `grpc` feature,
//!   tonic clients and servers) generated at build time from our own `.proto`
//!   files by a pure-Rust compiler, so no `protoc` is needed.
//! - [`EtcdError`]: etcd's error texts. Clients match errors by message, so
//!   these strings are wire facts.
//! - [`validate`]: the request checks etcd makes before it touches the store.
//! - [`range`]: key-range helpers shared by the store and clients.
//! - [`authpb`], [`v3lockpb`], [`v3electionpb`]: etcd's auth records and
//!   the server-side Lock and Election services.
//! - [`ops`]: request builders for the lock and election recipes, shared by
//!   the SDK and the server so both follow etcd's `concurrency` package.
//! - `codec` (with `grpc`): the codec every generated service uses.
//!
//! ```
//! use roster_api::range::prefix_end;
//! // Watch `/services/hello/` and nothing past it: etcd's prefix end.
//! assert_eq!(prefix_end(b"/services/hello/"), b"/services/hello0".to_vec());
//! ```

#![allow(clippy::doc_lazy_continuation)]

pub mod mvccpb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
}

/// etcd's auth store records: users, roles and permissions.
pub mod authpb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

pub mod etcdserverpb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// The server-side lock service (`etcdctl` does not use it; etcd's gRPC
/// gateway and some clients do).
pub mod v3lockpb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// The server-side election service.
pub mod v3electionpb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

#[cfg(feature = "grpc")]
pub mod codec;
mod error;
pub mod ops;
pub mod range;
pub mod validate;

pub use error::EtcdError;

/// etcd's limit on one request, in bytes (`--max-request-bytes` default).
pub const MAX_REQUEST_BYTES: usize = 3 * 512 * 1024;
/// gRPC may carry this much beyond [`MAX_REQUEST_BYTES`] before the transport
/// itself refuses a message, as in etcd.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Most operations one txn may carry (`--max-txn-ops` default).
pub const MAX_TXN_OPS: usize = 128;
/// Shortest lease TTL, in seconds; shorter requests are raised to it.
pub const MIN_LEASE_TTL: i64 = 2;
/// Longest lease TTL etcd accepts, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
