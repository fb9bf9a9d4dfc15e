//! Integration tests of the `roster` binary, one module per concern.
//!
//! - `differential`: seeded random operation sequences sent to real etcd and
//!   to `roster serve`; every response must be identical (etcd-vs-etcd runs
//!   too, which proves the harness honest).
//! - `etcdctl`: the real `etcdctl` against `roster serve`, with the same
//!   assertions run against real etcd as a conformance check.
//! - `bad_input`: malformed and limit-breaking requests get etcd's exact
//!   code and message.
//! - `registry_cli`: `roster register`, `ls` and `watch`, on roster and etcd.
//! - `lock_election`: the server-side Lock and Election services, scripted
//!   against etcd and roster with identical transcripts.
//! - `gateway_cli`: `roster gateway` following its config key and SIGHUP.
//! - `console`: the web console in a real Chromium over WebDriver: live
//!   updates, actions, configuration edits, paging, auth, real etcd.
//! - `go_interop`: etcd's Go client (Debian's packages, built offline)
//!   dials SDK-registered hello instances through etcd's resolver, and
//!   registers an endpoint the SDK discovers; on roster and etcd.
//! - `config_cli`: `roster config set`, `get` and `watch`, on roster and etcd.
//! - `bench_cli`: small runs of `roster bench hold` and `discovery` (their
//!   table rows, and that they leave nothing registered), and of `put`,
//!   `range` and `memory` on roster and etcd side by side.
//! - `hostile`: hostile clients (full-keyspace range loops, a keepalive
//!   flood, a watch stream never read, 100,000 watches on one stream, a
//!   watch from revision 1) while a well-behaved writer puts; and the
//!   transport limits (keepalive pings, stream limit, in-flight cap).
//! - `crash`: `kill -9` during concurrent writes loses no acknowledged write;
//!   a torn WAL tail is handled.
//! - `quota`: `--quota-backend-bytes`, the NOSPACE alarm, `etcdctl alarm`,
//!   defragment and auto-compaction, with the same transcript on etcd.
//! - `snapshot`: etcd snapshots both ways, checked with etcdctl and a real
//!   etcd restored from roster's snapshot (and roster from etcd's).
//! - `storage_faults`: a full disk (a tmpfs the test mounts) and a
//!   DeleteRange over a million keys across `kill -9`.
//! - `client_auth`: the SDK and CLI authenticating against etcd with auth
//!   on: re-authentication on token expiry and restart, `--user`, and
//!   etcd's CN-as-user under `--client-cert-auth`.
//! - `tls`: TLS on `roster serve` with openssl-made certificates: client
//!   certificates from the right CA only, plaintext refused, certificates
//!   reloaded from disk, HTTPS health.
//! - `auth_users`: with auth on, one script of requests run as root, a
//!   read-only user, a prefix writer, a user with no roles, no token and a
//!   bad token, on etcd and on roster: identical transcripts.
//! - `jwt`: `--auth-token jwt,...` tokens cross-verified with etcd started
//!   with the same keys; verify-only and expiry as in etcd.
//!
//! Tests that need etcd print a loud notice and skip when it is missing, but
//! never under `CI=true`.

mod auth;
mod auth_users;
mod bad_input;
mod bench_cli;
mod client_auth;
mod config_cli;
mod console;
mod crash;
mod differential;
mod etcdctl;
mod gateway_cli;
mod go_interop;
mod hostile;
mod jwt;
mod lock_election;
mod quota;
mod registry_cli;
mod snapshot;
mod storage_faults;
mod support;
mod tls;
