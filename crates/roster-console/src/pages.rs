//! The console's routes and their HTML.
//!
//! Each page is split in two: a fixed part (filters, editors) and a live
//! part (`#live`), which `console.js` re-fetches with `X-Roster-Live: 1`
//! when the event stream says one of the page's areas changed. Without
//! JavaScript every page is complete as served, and a reload is the update.

use crate::data::{self, Action, Entry, Swap};
use crate::hub::{self, Tick};
use crate::session::{self, COOKIE, View};
use crate::{Shared, diff};
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::{DOCTYPE, Markup, html};
use roster::Client;
use roster::config::Format;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const JS: &str = include_str!("../assets/console.js");
const CSS: &str = include_str!("../assets/console.css");
/// Events to one page are at least this far apart; changes in between are
/// folded into the next.
pub const COALESCE: Duration = Duration::from_millis(100);
/// How long the answer to "is auth on?" is reused.
const AUTH_PROBE_TTL: Duration = Duration::from_secs(2);
/// Keys per page in the key browser.
const PAGE: i64 = 100;

type St = State<Arc<Shared>>;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(services))
        .route("/ui/services/{name}", get(service))
        .route("/ui/confirm", get(confirm))
        .route("/ui/action", post(action))
        .route("/ui/config", get(config_tree))
        .route("/ui/config/key", get(config_key))
        .route("/ui/config/preview", post(config_preview))
        .route("/ui/config/save", post(config_save))
        .route("/ui/config/rollback", post(config_rollback))
        .route("/ui/coordination", get(coordination))
        .route("/ui/registry", get(registry))
        .route("/ui/keys", get(keys))
        .route("/ui/keys/value", get(key_value))
        .route("/ui/events", get(events))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/console.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/ui/assets/console.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .with_state(shared)
}

fn asset(ty: &'static str, body: &'static str) -> Response {
    ([(CONTENT_TYPE, ty), (CACHE_CONTROL, "max-age=300")], body).into_response()
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, to.to_owned())]).into_response()
}

// === the request context ===

/// Who is asking, and the client to ask the registry with.
struct Ctx {
    shared: Arc<Shared>,
    session: View,
    client: Client,
    auth_on: bool,
    /// The request wants the live part only.
    live: bool,
    /// The hub's revision before anything was read for this page: the
    /// page's event stream starts from it, so a change made between the
    /// read and the stream's opening is not missed.
    since: i64,
}

enum Denied {
    Login,
    Forbidden(String),
}

impl Ctx {
    async fn new(shared: &Arc<Shared>, headers: &HeaderMap) -> Result<Ctx, Response> {
        let cookie = headers.get(axum::http::header::COOKIE).and_then(|v| v.to_str().ok());
        let session = shared.sessions.get_or_create(cookie.and_then(|c| session::cookie(c, COOKIE)));
        let auth_on = auth_on(shared).await;
        let live = headers.contains_key("x-roster-live");
        let since = shared.hub.current().revision;
        // Read no older than the revision the page was told of.
        let wanted: i64 =
            headers.get("x-roster-rev").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        let wanted = wanted.max(since);
        let ctx = Ctx {
            since,
            client: session.user.as_ref().map_or_else(|| shared.anon.clone(), |(_, c)| c.clone()),
            shared: shared.clone(),
            session,
            auth_on,
            live,
        };
        match ctx.denied() {
            None => {
                ctx.caught_up(wanted).await;
                Ok(ctx)
            }
            Some(Denied::Login) => Err(ctx.with_cookie(redirect("/ui/login"))),
            Some(Denied::Forbidden(why)) => Err(ctx.with_cookie(forbidden(&why))),
        }
    }

    /// Waits (briefly) until a read sees revision `rev`. One server shows
    /// a revision to reads before its watchers hear of it (roster since the
    /// store published to watchers first, a bug now fixed; etcd always),
    /// but in a cluster the console's watch and its reads may be served by
    /// different members, and a lagging one shows an older revision.
    async fn caught_up(&self, rev: i64) {
        if rev <= 0 {
            return;
        }
        // A key every user of the console may read: the registry prefix.
        let key = data::service_prefix(&self.shared.config.prefix, None).into_bytes();
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let req = roster_api::etcdserverpb::RangeRequest {
                range_end: roster_api::range::prefix_end(&key).into(),
                key: key.clone().into(),
                limit: 1,
                keys_only: true,
                ..Default::default()
            };
            // An error tells nothing of the revision: do not wait on it.
            let Ok(seen) = self.client.range(req).await else {
                return;
            };
            if seen.header.map_or(0, |h| h.revision) >= rev || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn denied(&self) -> Option<Denied> {
        if self.shared.config.exposed && !self.auth_on {
            return Some(Denied::Forbidden(
                "This console is reachable beyond loopback without TLS, and the registry has auth off: it serves nothing. \
                 Turn auth on, serve it over TLS, or start it with --console-insecure."
                    .into(),
            ));
        }
        (self.auth_on && self.session.user.is_none()).then_some(Denied::Login)
    }

    fn user(&self) -> Option<&str> {
        self.session.user.as_ref().map(|(u, _)| u.as_str())
    }

    /// Whether this user may write `key` through the console.
    async fn can_write(&self, key: &str) -> bool {
        if self.shared.config.read_only {
            return false;
        }
        if !self.auth_on {
            return true;
        }
        self.shared.sessions.can_write(&self.session.id, &self.client, key).await
    }

    /// Refuses a POST whose CSRF token is not the session's, or that may
    /// not write `key`.
    async fn check_post(&self, csrf: &str, key: &str) -> Result<(), Response> {
        if csrf != self.session.csrf {
            return Err(forbidden(
                "The form is stale or was not sent by this console (CSRF token mismatch). Reload the page and try again.",
            ));
        }
        if self.shared.config.read_only {
            return Err(forbidden("This console is read-only (--console-read-only)."));
        }
        if !self.can_write(key).await {
            let who = self.user().unwrap_or("this console");
            return Err(forbidden(&format!("{who} may not write {key}.")));
        }
        Ok(())
    }

    fn with_cookie(&self, mut resp: Response) -> Response {
        if self.session.new {
            let secure = if self.shared.config.secure_cookie { "; Secure" } else { "" };
            let c = format!("{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}", self.session.id);
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.headers_mut().append(SET_COOKIE, v);
            }
        }
        resp
    }

    fn flash(&self, msg: impl Into<String>) {
        self.shared.sessions.set_flash(&self.session.id, msg.into());
    }

    /// A whole page, or only its live part when that was asked for.
    fn page(&self, title: &str, nav: &str, areas: &str, fixed: Markup, live: Markup) -> Response {
        if self.live {
            return self.with_cookie(html_response(StatusCode::OK, live));
        }
        let flash = self.shared.sessions.take_flash(&self.session.id);
        let body = layout(self, title, nav, areas, flash, fixed, live);
        self.with_cookie(html_response(StatusCode::OK, body))
    }

    fn error_page(&self, status: StatusCode, title: &str, msg: &str) -> Response {
        let body = layout(self, title, "", "", None, html! { p.error role="alert" { (msg) } }, html! {});
        self.with_cookie(html_response(status, body))
    }
}

async fn auth_on(shared: &Shared) -> bool {
    if let Some((at, on)) = *shared.auth_on.lock()
        && at.elapsed() < AUTH_PROBE_TTL
    {
        return on;
    }
    // Not a read: with a client certificate a read passes as its CN's user.
    let on = match shared.anon.auth_enabled().await {
        Ok(on) => on,
        // Unreachable: keep the last answer (assume on at first, the safe side).
        Err(_) => return shared.auth_on.lock().is_none_or(|(_, on)| on),
    };
    *shared.auth_on.lock() = Some((Instant::now(), on));
    on
}

fn html_response(status: StatusCode, body: Markup) -> Response {
    (status, [(CONTENT_TYPE, "text/html; charset=utf-8"), (CACHE_CONTROL, "no-store")], body.into_string())
        .into_response()
}

fn forbidden(msg: &str) -> Response {
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Forbidden · Roster console" } link rel="stylesheet" href="/ui/assets/console.css"; }
            body { main #main { h1 { "Forbidden" } p.error role="alert" { (msg) } p { a href="/ui/" { "Back to the console" } } } }
        }
    };
    html_response(StatusCode::FORBIDDEN, body)
}

const NAV: [(&str, &str, &str); 5] = [
    ("services", "/ui/", "Services"),
    ("config", "/ui/config", "Configuration"),
    ("coordination", "/ui/coordination", "Coordination"),
    ("registry", "/ui/registry", "Registry"),
    ("keys", "/ui/keys", "Keys"),
];

fn layout(
    ctx: &Ctx,
    title: &str,
    nav: &str,
    areas: &str,
    flash: Option<String>,
    fixed: Markup,
    live: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Roster console" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Roster" }
                    nav aria-label="Main" {
                        ul {
                            @for (id, href, label) in NAV {
                                li { a href=(href) aria-current=[(id == nav).then_some("page")] { (label) } }
                            }
                        }
                    }
                    div.who {
                        span #live-status aria-live="polite" {}
                        @if ctx.shared.config.read_only { span.badge { "read-only" } }
                        @if let Some(user) = ctx.user() {
                            span.user { "Signed in as " strong { (user) } }
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(ctx.session.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    @if let Some(msg) = flash {
                        p.flash #flash role="status" { (msg) }
                    }
                    (fixed)
                    div #live data-areas=(areas) data-since=(ctx.since) aria-live="off" { (live) }
                }
            }
        }
    }
}

// === services ===

#[derive(Deserialize, Default)]
struct Filter {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    zone: String,
    /// `key=value` (or just `key`) of the instance metadata.
    #[serde(default)]
    meta: String,
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        let i = &e.instance;
        let q = self.q.trim().to_lowercase();
        let text_hit = q.is_empty()
            || [&i.service, &i.id, &i.addr, &i.zone, &i.version].iter().any(|f| f.to_lowercase().contains(&q))
            || i.tags.iter().any(|t| t.to_lowercase().contains(&q))
            || i.meta.iter().any(|(k, v)| k.to_lowercase().contains(&q) || v.to_lowercase().contains(&q));
        let tag_hit = self.tag.trim().is_empty() || i.tags.iter().any(|t| t == self.tag.trim());
        let zone_hit = self.zone.trim().is_empty() || i.zone == self.zone.trim();
        let meta_hit = match self.meta.trim().split_once('=') {
            _ if self.meta.trim().is_empty() => true,
            Some((k, v)) => i.meta.get(k.trim()).is_some_and(|x| x == v.trim()),
            None => i.meta.contains_key(self.meta.trim()),
        };
        text_hit && tag_hit && zone_hit && meta_hit
    }

    fn form(&self, action: &str, with_service_fields: bool) -> Markup {
        html! {
            form.filters role="search" method="get" action=(action) {
                div.field {
                    label for="q" { "Search" }
                    input #q type="search" name="q" value=(self.q) placeholder="name, address, tag, metadata";
                }
                @if with_service_fields {
                    div.field { label for="tag" { "Tag" } input #tag type="text" name="tag" value=(self.tag); }
                    div.field { label for="zone" { "Zone" } input #zone type="text" name="zone" value=(self.zone); }
                    div.field { label for="meta" { "Metadata" } input #meta type="text" name="meta" value=(self.meta) placeholder="key=value"; }
                }
                button type="submit" { "Filter" }
                @if !self.q.is_empty() || !self.tag.is_empty() || !self.zone.is_empty() || !self.meta.is_empty() {
                    a.clear href=(action) { "Clear" }
                }
            }
        }
    }
}

struct ServiceRow {
    instances: usize,
    drained: usize,
    zones: std::collections::BTreeSet<String>,
    versions: std::collections::BTreeSet<String>,
}

async fn services(State(shared): St, headers: HeaderMap, Query(filter): Query<Filter>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (entries, rev) = match data::instances(&ctx.client, &shared.config.prefix, None).await {
        Ok(x) => x,
        Err(e) => return ctx.error_page(StatusCode::BAD_GATEWAY, "Services", &e),
    };
    let mut rows: BTreeMap<String, ServiceRow> = BTreeMap::new();
    let q = filter.q.trim().to_lowercase();
    for e in &entries {
        if !(q.is_empty() || e.instance.service.to_lowercase().contains(&q) || filter.matches(e)) {
            continue;
        }
        let r = rows.entry(e.instance.service.clone()).or_insert_with(|| ServiceRow {
            instances: 0,
            drained: 0,
            zones: Default::default(),
            versions: Default::default(),
        });
        r.instances += 1;
        r.drained += usize::from(e.drained);
        if !e.instance.zone.is_empty() {
            r.zones.insert(e.instance.zone.clone());
        }
        if !e.instance.version.is_empty() {
            r.versions.insert(e.instance.version.clone());
        }
    }
    let total: usize = rows.values().map(|r| r.instances).sum();
    let live = html! {
        p.summary { (rows.len()) " services, " (total) " instances, at revision " (rev) "." }
        @if rows.is_empty() {
            p.empty { "No services registered under " code { (shared.config.prefix) } "." }
        } @else {
            table.services {
                caption.sr { "Services and their instances" }
                thead { tr { th scope="col" { "Service" } th scope="col" { "Instances" } th scope="col" { "Health" } th scope="col" { "Zones" } th scope="col" { "Versions" } } }
                tbody {
                    @for (name, r) in &rows {
                        @let (class, label) = health(r.instances, r.drained);
                        tr data-service=(name) {
                            th scope="row" { a href={ "/ui/services/" (enc(name)) } { (name) } }
                            td.num data-count { (r.instances) }
                            td { span class={ "health " (class) } { (label) } @if r.drained > 0 { " (" (r.drained) " drained)" } }
                            td { (join(&r.zones)) }
                            td { (join(&r.versions)) }
                        }
                    }
                }
            }
        }
    };
    ctx.page("Services", "services", "services", filter.form("/ui/", false), live)
}

fn health(instances: usize, drained: usize) -> (&'static str, &'static str) {
    match instances - drained {
        0 => ("critical", "no instance serving"),
        _ if drained > 0 => ("warning", "partly drained"),
        _ => ("passing", "serving"),
    }
}

fn join(set: &std::collections::BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

async fn service(
    State(shared): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(filter): Query<Filter>,
) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (entries, rev) = match data::instances(&ctx.client, &shared.config.prefix, Some(&name)).await {
        Ok(x) => x,
        Err(e) => return ctx.error_page(StatusCode::BAD_GATEWAY, &name, &e),
    };
    let shown: Vec<&Entry> = entries.iter().filter(|e| filter.matches(e)).collect();
    let ttls = data::lease_ttls(&ctx.client, shown.iter().map(|e| e.lease)).await;
    let writable = ctx.can_write(&data::service_prefix(&shared.config.prefix, Some(&name))).await;
    let back = format!("/ui/services/{}", enc(&name));
    let live = html! {
        p.summary { (shown.len()) " of " (entries.len()) " instances shown, at revision " (rev) "." }
        @if shown.is_empty() {
            p.empty { "No instance of " strong { (name) } " matches." }
        } @else {
            table.instances {
                caption.sr { "Instances of " (name) }
                thead { tr {
                    th scope="col" { "Instance" } th scope="col" { "Address" } th scope="col" { "Zone" }
                    th scope="col" { "Weight" } th scope="col" { "Version" } th scope="col" { "Tags" }
                    th scope="col" { "Metadata" } th scope="col" { "Lease TTL" } th scope="col" { "Registered" }
                    @if writable { th scope="col" { "Actions" } }
                } }
                tbody {
                    @for e in &shown {
                        @let i = &e.instance;
                        tr data-key=(e.key) data-drained[e.drained] {
                            th scope="row" { (i.id) @if e.drained { " " span.badge.drained { "drained" } } }
                            td { code { (i.addr) } }
                            td { (i.zone) }
                            td.num data-weight { (i.weight) }
                            td { (i.version) }
                            td { @for t in &i.tags { span.tag { (t) } " " } }
                            td.meta { @for (k, v) in &i.meta { span.kv { (k) "=" (v) } " " } }
                            td.num { @match ttls.get(&e.lease) {
                                Some(ttl) if *ttl >= 0 => span.ttl data-ttl=(ttl) title={ "lease " (format!("{:x}", e.lease)) } { (ttl) " s" },
                                _ if e.lease == 0 => "no lease",
                                _ => "expired",
                            } }
                            td { (registered(&ctx, e.create_revision)) }
                            @if writable {
                                td.actions {
                                    @if e.drained {
                                        a.button href={ "/ui/confirm?action=resume&key=" (enc(&e.key)) } { "Resume" span.sr { " " (i.id) } }
                                    } @else {
                                        a.button href={ "/ui/confirm?action=drain&key=" (enc(&e.key)) } { "Drain" span.sr { " " (i.id) } }
                                    }
                                    " "
                                    a.button.danger href={ "/ui/confirm?action=deregister&key=" (enc(&e.key)) } { "Deregister" span.sr { " " (i.id) } }
                                    form.inline method="get" action="/ui/confirm" {
                                        input type="hidden" name="action" value="weight";
                                        input type="hidden" name="key" value=(e.key);
                                        label.sr for={ "w-" (i.id) } { "New weight of " (i.id) }
                                        input.weight id={ "w-" (i.id) } type="number" name="weight" min="0" max="1000000" value=(i.weight);
                                        button type="submit" { "Set weight" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let fixed = html! {
        p { a href="/ui/" { "All services" } }
        (filter.form(&back, true))
    };
    ctx.page(&name, "services", "services", fixed, live)
}

/// "Registered since" from the key's creation revision: the time this
/// console first saw that revision, or that it predates the console.
fn registered(ctx: &Ctx, create_revision: i64) -> Markup {
    let hub = &ctx.shared.hub;
    let ago = |t: SystemTime| t.elapsed().unwrap_or_default().as_secs();
    match hub.seen_at(create_revision) {
        Some(t) => {
            html! { span title={ "revision " (create_revision) } { (human(ago(t))) " ago" } }
        }
        None => {
            html! { span title={ "revision " (create_revision) } { "over " (human(ago(hub.started()))) " ago (rev " (create_revision) ")" } }
        }
    }
}

fn human(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86400),
    }
}

#[derive(Deserialize)]
struct ActionQuery {
    action: String,
    key: String,
    weight: Option<String>,
}

async fn confirm(State(shared): St, headers: HeaderMap, Query(q): Query<ActionQuery>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(action) = Action::parse(&q.action, q.weight.as_deref()) else {
        return ctx.error_page(
            StatusCode::BAD_REQUEST,
            "Confirm",
            "Unknown action, or a weight that is not a whole number from 0 to 1000000.",
        );
    };
    let what = match action {
        Action::Drain => "Drain: a drain marker on its own lease asks its registration to withdraw it from every list and keep its lease, as its own pause would; the marker goes when the instance does. An instance that no registration keeps (a key put by hand) does not follow: set its weight to 0 instead.".to_owned(),
        Action::Resume => "Resume: the drain marker is deleted and its registration puts it back.".to_owned(),
        Action::Deregister => "Deregister: its lease is revoked, so it leaves every list at once. A live process registers again.".to_owned(),
        Action::Weight(w) => format!("Set its weight to {w}."),
    };
    let service = q
        .key
        .strip_prefix(&data::service_prefix(&shared.config.prefix, None))
        .and_then(|r| r.split_once('/'))
        .map(|(s, _)| s.to_owned());
    let back = service.map_or("/ui/".to_owned(), |s| format!("/ui/services/{}", enc(&s)));
    let fixed = html! {
        p { "Instance " code { (q.key) } }
        p { (what) }
        form method="post" action="/ui/action" {
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            input type="hidden" name="action" value=(action.name());
            input type="hidden" name="key" value=(q.key);
            @if let Action::Weight(w) = action { input type="hidden" name="weight" value=(w); }
            button #confirm type="submit" class=[(action == Action::Deregister).then_some("danger")] { "Confirm " (action.name()) }
            " "
            a href=(back) { "Cancel" }
        }
    };
    ctx.page("Confirm", "services", "", fixed, html! {})
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    action: String,
    key: String,
    weight: Option<String>,
}

async fn action(State(shared): St, headers: HeaderMap, Form(f): Form<ActionForm>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = ctx.check_post(&f.csrf, &f.key).await {
        return r;
    }
    let Some(action) = Action::parse(&f.action, f.weight.as_deref()) else {
        return ctx.error_page(StatusCode::BAD_REQUEST, "Action", "Unknown action or bad weight.");
    };
    let msg = match data::act(&ctx.client, &shared.config.prefix, &f.key, action).await {
        Ok(done) => done,
        Err(e) if e.contains("permission denied") => return forbidden(&e),
        Err(e) => format!("Not done: {e}"),
    };
    tracing::info!(user = ctx.user().unwrap_or("-"), key = %f.key, action = action.name(), "console action");
    ctx.flash(msg);
    let service = f
        .key
        .strip_prefix(&data::service_prefix(&shared.config.prefix, None))
        .and_then(|r| r.split_once('/'))
        .map(|(s, _)| s.to_owned());
    redirect(&service.map_or("/ui/".to_owned(), |s| format!("/ui/services/{}", enc(&s))))
}

// === configuration ===

async fn config_tree(State(shared): St, headers: HeaderMap) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let prefix = shared.config.config_prefix.clone();
    let page = match data::keys(&ctx.client, &prefix, None, 10_000).await {
        Ok(p) => p,
        Err(e) => return ctx.error_page(StatusCode::BAD_GATEWAY, "Configuration", &e),
    };
    // A tree by path segment; leaves are keys.
    #[derive(Default)]
    struct Node {
        children: BTreeMap<String, Node>,
        key: Option<String>,
    }
    let mut root = Node::default();
    for (k, _, _) in &page.keys {
        let key = String::from_utf8_lossy(k).into_owned();
        let rel = key.strip_prefix(&prefix).unwrap_or(&key).to_owned();
        let mut node = &mut root;
        for seg in rel.split('/') {
            node = node.children.entry(seg.to_owned()).or_default();
        }
        node.key = Some(key);
    }
    fn render(n: &Node) -> Markup {
        html! {
            ul {
                @for (seg, child) in &n.children {
                    li {
                        @if let Some(k) = &child.key { a href={ "/ui/config/key?key=" (enc(k)) } { (seg) } } @else { span.dir { (seg) "/" } }
                        @if !child.children.is_empty() { (render(child)) }
                    }
                }
            }
        }
    }
    let live = html! {
        p.summary { (page.keys.len()) " keys under " code { (prefix) } @if page.more { " (first 10,000 shown)" } "." }
        @if page.keys.is_empty() { p.empty { "No configuration yet." } } @else { nav.tree aria-label="Configuration keys" { (render(&root)) } }
    };
    let writable = ctx.can_write(&prefix).await;
    let fixed = html! {
        @if writable {
            details.new {
                summary { "New key" }
                form method="post" action="/ui/config/preview" {
                    input type="hidden" name="csrf" value=(ctx.session.csrf);
                    input type="hidden" name="expected" value="0";
                    div.field { label for="new-key" { "Key (ends in .json, .toml, .yaml or .yml)" } input #new-key type="text" name="key" value=(prefix) required; }
                    div.field { label for="new-value" { "Value" } textarea #new-value name="value" rows="8" {} }
                    button type="submit" { "Review" }
                }
            }
        }
    };
    ctx.page("Configuration", "config", "config", fixed, live)
}

#[derive(Deserialize)]
struct KeyQuery {
    key: String,
}

async fn config_key(State(shared): St, headers: HeaderMap, Query(q): Query<KeyQuery>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let kv = match data::get(&ctx.client, &q.key, 0).await {
        Ok(kv) => kv,
        Err(e) => return ctx.error_page(StatusCode::BAD_GATEWAY, &q.key, &e),
    };
    let Some(kv) = kv else {
        return ctx.error_page(StatusCode::NOT_FOUND, &q.key, "This key is not set (any more).");
    };
    let format = roster::config::format_for(&q.key, None).ok();
    let history = match data::history(&ctx.client, &kv, 20).await {
        Ok(h) => h,
        Err(e) => return ctx.error_page(StatusCode::BAD_GATEWAY, &q.key, &e),
    };
    let writable = ctx.can_write(&q.key).await;
    let raw = String::from_utf8_lossy(&kv.value).into_owned();
    let live = html! {
        dl.facts {
            dt { "Format" } dd { (format.map_or("unknown".to_owned(), |f| f.to_string())) }
            dt { "Revision" } dd #mod-revision { (kv.mod_revision) }
            dt { "Version" } dd { (kv.version) }
        }
        h2 { "Current value" }
        (value_block(format, &kv.value))
        h2 { "History" }
        table.history {
            caption.sr { "Earlier values of " (q.key) }
            thead { tr { th scope="col" { "Revision" } th scope="col" { "Value" } @if writable { th scope="col" { "Rollback" } } } }
            tbody {
                @for (n, v) in history.versions.iter().enumerate() {
                    tr data-revision=(v.mod_revision) {
                        th scope="row" { (v.mod_revision) @if n == 0 { " (current)" } }
                        td { pre.small { (String::from_utf8_lossy(&v.value)) } }
                        @if writable {
                            td { @if n > 0 {
                                form method="post" action="/ui/config/rollback" {
                                    input type="hidden" name="csrf" value=(ctx.session.csrf);
                                    input type="hidden" name="key" value=(q.key);
                                    input type="hidden" name="revision" value=(v.mod_revision);
                                    input type="hidden" name="expected" value=(kv.mod_revision);
                                    button type="submit" { "Roll back to revision " (v.mod_revision) }
                                }
                            } }
                        }
                    }
                }
            }
        }
        @if history.compacted { p.note { "Older values are gone: the history is compacted." } }
    };
    let fixed = html! {
        p { a href="/ui/config" { "All configuration" } }
        @if writable { (editor(&ctx, &q.key, kv.mod_revision, &raw, None)) }
    };
    ctx.page(&q.key, "config", "config", fixed, live)
}

fn value_block(format: Option<Format>, value: &[u8]) -> Markup {
    match format.and_then(|f| data::formatted(f, value)) {
        Some(pretty) => html! { pre.value { code { (pretty) } } },
        None => html! { pre.value { code { (String::from_utf8_lossy(value)) } } },
    }
}

fn editor(ctx: &Ctx, key: &str, expected: i64, value: &str, error: Option<&str>) -> Markup {
    html! {
        form.editor method="post" action="/ui/config/preview" {
            h2 { "Edit" }
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            input type="hidden" name="key" value=(key);
            input type="hidden" name="expected" value=(expected);
            @if let Some(e) = error { p.error #validation role="alert" { (e) } }
            div.field {
                label for="value" { "New value (edits revision " (expected) ")" }
                textarea #value name="value" rows="12" spellcheck="false" aria-invalid=[error.map(|_| "true")] { (value) }
            }
            button #review type="submit" { "Review changes" }
        }
    }
}

#[derive(Deserialize)]
struct EditForm {
    csrf: String,
    key: String,
    expected: i64,
    value: String,
}

/// The check `roster config set` applies, in the same words.
fn validate(key: &str, value: &str) -> Result<(), String> {
    let format = roster::config::format_for(key, None)?;
    roster::config::check_value(format, value.as_bytes())
}

async fn config_preview(State(shared): St, headers: HeaderMap, Form(f): Form<EditForm>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = ctx.check_post(&f.csrf, &f.key).await {
        return r;
    }
    if let Err(e) = validate(&f.key, &f.value) {
        let fixed = editor(&ctx, &f.key, f.expected, &f.value, Some(&e));
        return ctx.page(&f.key, "config", "", fixed, html! {});
    }
    let current = match data::get(&ctx.client, &f.key, 0).await {
        Ok(kv) => kv,
        Err(e) => return ctx.error_page(StatusCode::BAD_GATEWAY, &f.key, &e),
    };
    let old = current.as_ref().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).unwrap_or_default();
    let moved = current.as_ref().map_or(0, |kv| kv.mod_revision) != f.expected;
    let fixed = html! {
        h2 { "Review" }
        @if moved { p.warning role="alert" { "The key changed since you started editing; publishing will be refused. Edit again from the current value." } }
        (diff_view(&old, &f.value))
        form method="post" action="/ui/config/save" {
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            input type="hidden" name="key" value=(f.key);
            input type="hidden" name="expected" value=(f.expected);
            input type="hidden" name="value" value=(f.value);
            button #publish type="submit" { "Publish" }
            " "
            a href={ "/ui/config/key?key=" (enc(&f.key)) } { "Cancel" }
        }
        (editor(&ctx, &f.key, f.expected, &f.value, None))
    };
    ctx.page(&f.key, "config", "", fixed, html! {})
}

fn diff_view(old: &str, new: &str) -> Markup {
    html! {
        pre.diff aria-label="Changes: lines starting with minus are removed, plus are added" {
            @for line in diff::lines(old, new) {
                @match line {
                    diff::Line::Same(l) => span.same { "  " (l) "\n" },
                    diff::Line::Removed(l) => del { "- " (l) "\n" },
                    diff::Line::Added(l) => ins { "+ " (l) "\n" },
                }
            }
        }
    }
}

async fn config_save(State(shared): St, headers: HeaderMap, Form(f): Form<EditForm>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = ctx.check_post(&f.csrf, &f.key).await {
        return r;
    }
    if let Err(e) = validate(&f.key, &f.value) {
        let fixed = editor(&ctx, &f.key, f.expected, &f.value, Some(&e));
        return ctx.page(&f.key, "config", "", fixed, html! {});
    }
    match data::compare_and_put(&ctx.client, &f.key, f.expected, f.value.clone().into_bytes(), false).await {
        Ok(Swap::Done { revision }) => {
            ctx.flash(format!("Published {} at revision {revision}.", f.key));
            redirect(&format!("/ui/config/key?key={}", enc(&f.key)))
        }
        Ok(Swap::Conflict { current }) => {
            let now = current.as_ref().map_or(0, |kv| kv.mod_revision);
            let theirs = current.as_ref().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).unwrap_or_default();
            let fixed = html! {
                p.error #conflict role="alert" {
                    "Not saved: " code { (f.key) } " was changed by someone else (now at revision " (now)
                    ") after you started editing revision " (f.expected) ". Nothing was written."
                }
                h2 { "Their value against yours" }
                (diff_view(&theirs, &f.value))
                (editor(&ctx, &f.key, now, &f.value, None))
            };
            let mut resp = ctx.page(&f.key, "config", "", fixed, html! {});
            *resp.status_mut() = StatusCode::CONFLICT;
            resp
        }
        Err(e) if e.contains("permission denied") => forbidden(&e),
        Err(e) => ctx.error_page(StatusCode::BAD_GATEWAY, &f.key, &e),
    }
}

#[derive(Deserialize)]
struct RollbackForm {
    csrf: String,
    key: String,
    revision: i64,
    expected: i64,
}

async fn config_rollback(State(shared): St, headers: HeaderMap, Form(f): Form<RollbackForm>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(r) = ctx.check_post(&f.csrf, &f.key).await {
        return r;
    }
    let back = format!("/ui/config/key?key={}", enc(&f.key));
    let old = match data::get(&ctx.client, &f.key, f.revision).await {
        Ok(Some(kv)) if kv.mod_revision == f.revision => kv,
        Ok(_) => {
            ctx.flash(format!("Not rolled back: {} had no value written at revision {}.", f.key, f.revision));
            return redirect(&back);
        }
        Err(e) => {
            ctx.flash(format!("Not rolled back: {e}"));
            return redirect(&back);
        }
    };
    let value = String::from_utf8_lossy(&old.value).into_owned();
    if let Err(e) = validate(&f.key, &value) {
        ctx.flash(format!("Not rolled back: {e}"));
        return redirect(&back);
    }
    let msg = match data::compare_and_put(&ctx.client, &f.key, f.expected, old.value.to_vec(), false).await {
        Ok(Swap::Done { revision }) => {
            format!("Rolled back {} to the value of revision {} (now revision {revision}).", f.key, f.revision)
        }
        Ok(Swap::Conflict { .. }) => format!("Not rolled back: {} changed meanwhile. Nothing was written.", f.key),
        Err(e) => format!("Not rolled back: {e}"),
    };
    ctx.flash(msg);
    redirect(&back)
}

// === coordination ===

async fn coordination(State(shared): St, headers: HeaderMap) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let locks = data::participants(&ctx.client, &shared.config.lock_prefix).await;
    let elections = data::participants(&ctx.client, &shared.config.election_prefix).await;
    let live = html! {
        h2 { "Locks under " code { (shared.config.lock_prefix) } }
        (participants_table(&locks, "Lock", "Holder", "Waiters"))
        h2 { "Elections under " code { (shared.config.election_prefix) } }
        (participants_table(&elections, "Election", "Leader", "Candidates"))
    };
    ctx.page("Coordination", "coordination", "coordination", html! {}, live)
}

fn participants_table(
    r: &Result<BTreeMap<String, Vec<roster_api::mvccpb::KeyValue>>, String>,
    what: &str,
    first: &str,
    rest: &str,
) -> Markup {
    match r {
        Err(e) => html! { p.error { (e) } },
        Ok(m) if m.is_empty() => html! { p.empty { "None." } },
        Ok(m) => html! {
            table {
                thead { tr { th scope="col" { (what) } th scope="col" { (first) } th scope="col" { "Lease" } th scope="col" { (rest) } } }
                tbody {
                    @for (name, kvs) in m {
                        @let head = &kvs[0];
                        tr data-name=(name) {
                            th scope="row" { (name) }
                            td { code { (String::from_utf8_lossy(&head.key)) } @if !head.value.is_empty() { " = " (String::from_utf8_lossy(&head.value)) } }
                            td { (format!("{:x}", head.lease)) }
                            td { @if kvs.len() == 1 { "none" } @else { ol { @for kv in &kvs[1..] { li data-key=(String::from_utf8_lossy(&kv.key)) { code { (String::from_utf8_lossy(&kv.key)) } " (lease " (format!("{:x}", kv.lease)) ")" } } } } }
                        }
                    }
                }
            }
        },
    }
}

// === registry ===

async fn registry(State(shared): St, headers: HeaderMap) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let (status, members, alarms, figures, backup) = tokio::join!(
        ctx.client.status(),
        ctx.client.member_list(),
        ctx.client.alarms(),
        shared.http.figures(),
        shared.http.backup(),
    );
    let revision = status.as_ref().ok().and_then(|s| s.header.as_ref()).map_or(0, |h| h.revision);
    let compacted = match figures.as_ref().and_then(|f| f.compact_revision) {
        Some(c) => Ok(c as i64),
        None => data::compaction_point(&ctx.client, revision).await,
    };
    let Tick { revision: hub_rev, .. } = shared.hub.current();
    let live = html! {
        h2 { "Status" }
        @match &status {
            Err(e) => p.error { (e.to_string()) },
            Ok(s) => dl.facts {
                dt { "Revision" } dd #revision { (revision) }
                dt { "Compaction point" } dd { @match &compacted { Ok(0) => "never compacted", Ok(c) => (c), Err(e) => (e) } }
                dt { "Database size" } dd { (bytes(s.db_size)) }
                dt { "Version" } dd { (s.version) }
                dt { "Leader" } dd { (format!("{:x}", s.leader)) }
                dt { "Raft term" } dd { (s.raft_term) }
                dt { "Console watch at" } dd { "revision " (hub_rev) }
            },
        }
        h2 { "Members" }
        @match &members {
            Err(e) => p.error { (e.to_string()) },
            Ok(m) => table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "ID" } th scope="col" { "Client URLs" } } }
                tbody { @for mem in &m.members { tr { th scope="row" { (mem.name) } td { (format!("{:x}", mem.id)) } td { (mem.client_ur_ls.join(", ")) } } } }
            },
        }
        h2 { "Alarms" }
        @match &alarms {
            Err(e) => p.error { (e.to_string()) },
            Ok(a) if a.alarms.is_empty() => p { "None raised." },
            Ok(a) => ul { @for al in &a.alarms { li.error { (format!("{:?}", al.alarm())) " on member " (format!("{:x}", al.member_id)) } } },
        }
        h2 { "Latest backup" }
        @match &backup {
            _ if !shared.http.configured() => p { "Not known: the console was not told the registry's HTTP address." },
            None => p { "No scheduled backups (or none reported by the registry)." },
            Some(serde_json::Value::Null) => p { "None taken yet." },
            Some(b) => dl.facts {
                dt { "Path" } dd #backup-path { code { (b["path"].as_str().unwrap_or("?")) } }
                dt { "Revision" } dd #backup-revision { (b["revision"]) }
                dt { "Age" } dd #backup-age { (human(b["age_seconds"].as_u64().unwrap_or(0))) }
            },
        }
        h2 { "Live figures" }
        @match &figures {
            None => p { "Not known: no /metrics to read." },
            Some(f) => dl.facts {
                dt { "Requests/s" } dd #rps { (f.requests_per_s.map_or("…".to_owned(), |r| format!("{r:.1}"))) }
                dt { "Watchers" } dd #watchers { (opt(f.watchers)) }
                dt { "Leases" } dd #leases { (opt(f.leases)) }
            },
        }
    };
    ctx.page("Registry", "registry", "all", html! {}, live)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("—".to_owned(), |v| format!("{v:.0}"))
}

fn bytes(n: i64) -> String {
    match n {
        ..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

// === key browser ===

#[derive(Deserialize, Default)]
struct KeysQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    after: String,
}

async fn keys(State(shared): St, headers: HeaderMap, Query(q): Query<KeysQuery>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let prefix = if q.prefix.is_empty() { "/".to_owned() } else { q.prefix.clone() };
    let page = match data::keys(&ctx.client, &prefix, Some(&q.after), PAGE).await {
        Ok(p) => p,
        Err(e) => return ctx.error_page(StatusCode::BAD_GATEWAY, "Keys", &e),
    };
    let last = page.keys.last().map(|(k, _, _)| String::from_utf8_lossy(k).into_owned());
    let fixed = html! {
        form.filters role="search" method="get" action="/ui/keys" {
            div.field { label for="prefix" { "Key prefix" } input #prefix type="search" name="prefix" value=(prefix); }
            button type="submit" { "Browse" }
        }
    };
    let live = html! {
        p.summary #key-count { (page.count) " keys from here to the end of " code { (prefix) } ", at revision " (page.revision) "." }
        table.keys {
            caption.sr { "Keys" }
            thead { tr { th scope="col" { "Key" } th scope="col" { "Revision" } th scope="col" { "Lease" } } }
            tbody {
                @for (k, rev, lease) in &page.keys {
                    @let key = String::from_utf8_lossy(k);
                    tr { th scope="row" { a href={ "/ui/keys/value?key=" (enc(&key)) } { (key) } } td.num { (rev) } td { @if *lease != 0 { (format!("{lease:x}")) } } }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if !q.after.is_empty() { a href={ "/ui/keys?prefix=" (enc(&prefix)) } { "First page" } " " }
            @if let (true, Some(last)) = (page.more, &last) {
                a #next-page rel="next" href={ "/ui/keys?prefix=" (enc(&prefix)) "&after=" (enc(last)) } { "Next " (PAGE) " keys" }
            }
        }
    };
    ctx.page("Keys", "keys", "", fixed, live)
}

async fn key_value(State(shared): St, headers: HeaderMap, Query(q): Query<KeyQuery>) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let kv = match data::get(&ctx.client, &q.key, 0).await {
        Ok(Some(kv)) => kv,
        Ok(None) => {
            return ctx.error_page(StatusCode::NOT_FOUND, &q.key, "This key is not set (any more).");
        }
        Err(e) => return ctx.error_page(StatusCode::BAD_GATEWAY, &q.key, &e),
    };
    const SHOWN: usize = 64 * 1024;
    let live = html! {
        dl.facts {
            dt { "Created at" } dd { "revision " (kv.create_revision) }
            dt { "Modified at" } dd { "revision " (kv.mod_revision) }
            dt { "Version" } dd { (kv.version) }
            dt { "Lease" } dd { @if kv.lease == 0 { "none" } @else { (format!("{:x}", kv.lease)) } }
            dt { "Size" } dd { (bytes(kv.value.len() as i64)) }
        }
        (value_block(roster::config::format_for(&q.key, None).ok(), &kv.value[..kv.value.len().min(SHOWN)]))
        @if kv.value.len() > SHOWN { p.note { "Only the first 64 KiB are shown." } }
    };
    ctx.page(&q.key, "keys", "", html! { p { a href="/ui/keys" { "All keys" } } }, live)
}

// === live updates ===

async fn events(State(shared): St, headers: HeaderMap) -> Response {
    let ctx = match Ctx::new(&shared, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let last: Option<i64> = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let mut rx = shared.hub.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(4);
    tokio::spawn(async move {
        let mut seen = rx.borrow_and_update().clone();
        let first = match last {
            Some(l) if seen.compacted > l => {
                Some(Event::default().event("resync").id(seen.revision.to_string()).data("{}"))
            }
            Some(l) if seen.revision > l => Some(change_event(&seen, hub::AREAS.to_vec())),
            _ => Some(Event::default().event("hello").id(seen.revision.to_string()).data(seen.revision.to_string())),
        };
        if let Some(ev) = first
            && tx.send(Ok(ev)).await.is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
            let now = rx.borrow_and_update().clone();
            let ev = if now.resyncs != seen.resyncs {
                Some(Event::default().event("resync").id(now.compacted.to_string()).data("{}"))
            } else {
                let areas: Vec<&str> = (0..4).filter(|&a| now.gens[a] != seen.gens[a]).map(|a| hub::AREAS[a]).collect();
                (!areas.is_empty()).then(|| change_event(&now, areas))
            };
            seen = now;
            if let Some(ev) = ev {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                tokio::time::sleep(COALESCE).await;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out);
    ctx.with_cookie(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn change_event(t: &Tick, areas: Vec<&str>) -> Event {
    let data = serde_json::json!({ "rev": t.revision, "areas": areas });
    Event::default().event("change").id(t.revision.to_string()).data(data.to_string())
}

// === login ===

async fn login_page(State(shared): St, headers: HeaderMap) -> Response {
    let cookie = headers.get(axum::http::header::COOKIE).and_then(|v| v.to_str().ok());
    let session = shared.sessions.get_or_create(cookie.and_then(|c| session::cookie(c, COOKIE)));
    let ctx =
        Ctx { client: shared.anon.clone(), shared: shared.clone(), session, auth_on: true, live: false, since: 0 };
    login_form(&ctx, None, StatusCode::OK)
}

fn login_form(ctx: &Ctx, error: Option<&str>, status: StatusCode) -> Response {
    let fixed = html! {
        p { "The registry has auth on: sign in with a registry user. The console acts as that user and shows what its roles allow." }
        form.login method="post" action="/ui/login" {
            @if let Some(e) = error { p.error #login-error role="alert" { (e) } }
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            div.field { label for="user" { "User" } input #user type="text" name="user" autocomplete="username" required; }
            div.field { label for="password" { "Password" } input #password type="password" name="password" autocomplete="current-password" required; }
            button #sign-in type="submit" { "Sign in" }
        }
    };
    let body = layout(ctx, "Sign in", "", "", None, fixed, html! {});
    ctx.with_cookie(html_response(status, body))
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    user: String,
    password: String,
}

async fn login(State(shared): St, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    let cookie = headers.get(axum::http::header::COOKIE).and_then(|v| v.to_str().ok());
    let session = shared.sessions.get_or_create(cookie.and_then(|c| session::cookie(c, COOKIE)));
    let ctx =
        Ctx { client: shared.anon.clone(), shared: shared.clone(), session, auth_on: true, live: false, since: 0 };
    if f.csrf != ctx.session.csrf {
        return login_form(&ctx, Some("The form is stale; try again."), StatusCode::FORBIDDEN);
    }
    let mut config = shared.config.client.clone();
    config.credentials = Some(roster::Credentials::new(f.user.clone(), f.password));
    let client = match Client::new(config) {
        Ok(c) => c,
        Err(e) => return login_form(&ctx, Some(&e.to_string()), StatusCode::BAD_GATEWAY),
    };
    // Any answer but a refused authentication means the credentials work;
    // what the user may read is the registry's business, page by page.
    let req =
        roster_api::etcdserverpb::RangeRequest { key: vec![0].into(), limit: 1, keys_only: true, ..Default::default() };
    match client.range(req).await {
        Ok(_) => {}
        Err(roster::Error::Status(s)) if s.code() == tonic::Code::PermissionDenied => {}
        Err(roster::Error::Status(s)) => {
            return login_form(&ctx, Some(s.message()), StatusCode::UNAUTHORIZED);
        }
        Err(e) => return login_form(&ctx, Some(&e.to_string()), StatusCode::BAD_GATEWAY),
    }
    tracing::info!(user = %f.user, "console sign-in");
    shared.hub.offer(&client);
    shared.sessions.login(&ctx.session.id, f.user, client);
    ctx.with_cookie(redirect("/ui/"))
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(shared): St, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let cookie = headers.get(axum::http::header::COOKIE).and_then(|v| v.to_str().ok());
    let session = shared.sessions.get_or_create(cookie.and_then(|c| session::cookie(c, COOKIE)));
    if f.csrf == session.csrf {
        shared.sessions.logout(&session.id);
    }
    redirect("/ui/login")
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
