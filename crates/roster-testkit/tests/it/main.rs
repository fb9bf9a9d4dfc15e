//! roster-testkit's integration tests, one binary.
//!
//! - `lifecycle`: the servers and tools the testkit starts leave no process
//!   behind.

mod lifecycle;
