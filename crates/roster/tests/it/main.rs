//! The SDK's integration tests, one binary: each module runs against an
//! in-process `roster serve` and, where it says so, a real etcd.

mod calls;
mod cluster;
mod config;
mod drain;
mod etcd;
mod health;
mod lifecycle;
mod registry;
mod support;
mod sync;
