//! The store's integration tests, one binary.

mod corruption;
mod faults;
mod store;
mod watch_hostile;
