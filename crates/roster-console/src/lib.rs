//! The Roster console: a web page of services, instances, configuration,
//! locks and the registry itself, kept live over server-sent events.
//!
//! The console is a client of the SDK ([`roster::Client`]): it never links
//! the server or the store, so the same router serves `roster serve`'s
//! `--http` listener (mounted by the CLI) and `roster console` against any
//! etcd-API registry.
//!
//! Layout:
//! - `hub`: the ONE registry watch of a console process. It folds every
//!   event into a [`hub::Tick`] (revision plus a generation per area) on a
//!   `tokio::sync::watch` channel, so any number of open pages share it
//!   and a busy registry coalesces to the latest tick.
//! - `session`: cookie sessions, CSRF tokens, login with registry
//!   credentials (one SDK client per logged-in user), and the permission
//!   probe that decides which buttons a user sees.
//! - `data`: the registry reads and writes behind the pages.
//! - `pages`: the handlers and their HTML (maud), server-rendered so the
//!   page works without JavaScript; `assets/console.js` only follows the
//!   event stream and re-fetches the live part of the page.
//! - `diff`: the line diff shown before a configuration value is published.
//!
//! Every page is a plain GET; every action is a POST form carrying the
//! session's CSRF token, confirmed on a page of its own first.

mod data;
mod diff;
mod hub;
mod pages;
mod session;

use roster::{Client, ClientConfig};
use std::sync::Arc;

/// What a console serves and how it reaches the registry.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How to reach the registry. Credentials here are the console's own:
    /// they keep its one watch open. Pages are read as the logged-in user
    /// whenever the registry has auth on.
    pub client: ClientConfig,
    /// The registry prefix instances live under (`/services`).
    pub prefix: String,
    /// Configuration keys shown in the Configuration view.
    pub config_prefix: String,
    /// Lock names (etcd's concurrency layout: `<name>/<lease hex>`).
    pub lock_prefix: String,
    /// Election names, same layout.
    pub election_prefix: String,
    /// No action buttons; every POST that would write answers 403.
    pub read_only: bool,
    /// `http://host:port` of the registry's health/metrics listener
    /// (`roster serve --http`), for the backup and the live figures.
    pub http_base: Option<String>,
    /// The console is reachable beyond loopback without TLS: it refuses to
    /// serve unless the registry has auth on (the CLI sets this, and
    /// clears it for `--console-insecure`).
    pub exposed: bool,
    /// Mark the session cookie `Secure` (the listener has TLS).
    pub secure_cookie: bool,
}

impl ConsoleConfig {
    pub fn new(client: ClientConfig) -> Self {
        ConsoleConfig {
            client,
            prefix: roster::DEFAULT_PREFIX.to_owned(),
            config_prefix: "/config/".to_owned(),
            lock_prefix: "/locks/".to_owned(),
            election_prefix: "/elections/".to_owned(),
            read_only: false,
            http_base: None,
            exposed: false,
            secure_cookie: false,
        }
    }
}

/// Errors building a console.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsoleError {
    #[error(transparent)]
    Client(#[from] roster::Error),
}

/// A running console: its hub task and its sessions. Cheap to clone; the
/// hub's watch stops when the last clone (and every router made from it) is
/// dropped.
#[derive(Clone)]
pub struct Console {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    config: ConsoleConfig,
    /// Without credentials: what pages read with while auth is off, and
    /// how the console tells that auth is on.
    anon: Client,
    hub: hub::Hub,
    sessions: session::Sessions,
    http: data::HttpProbe,
    /// Whether the registry has auth on, and when that was last asked.
    auth_on: parking_lot::Mutex<Option<(std::time::Instant, bool)>>,
}

impl Console {
    /// Starts the console's hub (its one registry watch). Needs a tokio
    /// runtime.
    pub fn new(config: ConsoleConfig) -> Result<Console, ConsoleError> {
        let mut anon_config = config.client.clone();
        anon_config.credentials = None;
        let anon = Client::new(anon_config)?;
        let watcher =
            if config.client.credentials.is_some() { Client::new(config.client.clone())? } else { anon.clone() };
        let areas = hub::Areas {
            services: format!("{}/", config.prefix.trim_end_matches('/')),
            drains: format!("{}/", roster::drain_prefix(&config.prefix)),
            config: config.config_prefix.clone(),
            locks: config.lock_prefix.clone(),
            elections: config.election_prefix.clone(),
        };
        let hub = hub::Hub::start(watcher, areas);
        let shared = Shared {
            http: data::HttpProbe::new(config.http_base.clone()),
            config,
            anon,
            hub,
            sessions: session::Sessions::default(),
            auth_on: parking_lot::Mutex::new(None),
        };
        Ok(Console { shared: Arc::new(shared) })
    }

    /// The console's routes, all under `/ui/`.
    pub fn router(&self) -> axum::Router {
        pages::router(self.shared.clone())
    }

    /// The revision the hub has seen, for tests and benchmarks.
    pub fn revision(&self) -> i64 {
        self.shared.hub.current().revision
    }
}
