//! Sessions, CSRF tokens, login and the permission probe.
//!
//! Every browser gets a session on its first page: a random id in an
//! `HttpOnly; SameSite=Strict` cookie, with a CSRF token of its own that
//! every form carries. With auth on, logging in builds an SDK client with
//! the user's credentials for that session; pages and actions then run as
//! that user, so the registry's own permission checks apply to everything
//! the console does. Whether to show a button is asked of the registry too
//! ([`Sessions::can_write`]): a transaction whose compare can never hold,
//! with the write in its success branch, is checked for permission like
//! the write itself but changes nothing.

use parking_lot::Mutex;
use roster::Client;
use roster_api::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest, compare, request_op};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "roster_console";
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// Idle sessions end after this long.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// How long a permission probe's answer is reused.
const PROBE_TTL: Duration = Duration::from_secs(5);

pub struct Session {
    pub id: String,
    pub csrf: String,
    /// The logged-in user and their client.
    pub user: Option<(String, Client)>,
    /// A message for the next full page ("instance drained").
    pub flash: Option<String>,
    probes: HashMap<String, (Instant, bool)>,
    used: Instant,
}

#[derive(Default)]
pub struct Sessions {
    /// Short critical sections only; never held across `.await`.
    map: Mutex<HashMap<String, Session>>,
}

pub fn random_token() -> String {
    use rand::Rng;
    let mut b = [0u8; 24];
    rand::rng().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a request needs of its session, copied out of the table.
#[derive(Clone)]
pub struct View {
    pub id: String,
    pub csrf: String,
    pub user: Option<(String, Client)>,
    /// Set when the session was made by this request (send the cookie).
    pub new: bool,
}

// === impl Sessions ===

impl Sessions {
    /// The session named by `cookie`, or a new one.
    pub fn get_or_create(&self, cookie: Option<&str>) -> View {
        let mut map = self.map.lock();
        if let Some(s) = cookie.and_then(|c| map.get_mut(c))
            && s.used.elapsed() < IDLE
        {
            s.used = Instant::now();
            return View { id: s.id.clone(), csrf: s.csrf.clone(), user: s.user.clone(), new: false };
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.values().min_by_key(|s| s.used).map(|s| s.id.clone())
        {
            map.remove(&oldest);
        }
        let s = Session {
            id: random_token(),
            csrf: random_token(),
            user: None,
            flash: None,
            probes: HashMap::new(),
            used: Instant::now(),
        };
        let view = View { id: s.id.clone(), csrf: s.csrf.clone(), user: None, new: true };
        map.insert(s.id.clone(), s);
        view
    }

    pub fn login(&self, id: &str, user: String, client: Client) {
        if let Some(s) = self.map.lock().get_mut(id) {
            s.user = Some((user, client));
            s.probes.clear();
            // A new token after login, so a token seen before is worthless.
            s.csrf = random_token();
        }
    }

    pub fn logout(&self, id: &str) {
        self.map.lock().remove(id);
    }

    pub fn set_flash(&self, id: &str, msg: String) {
        if let Some(s) = self.map.lock().get_mut(id) {
            s.flash = Some(msg);
        }
    }

    pub fn take_flash(&self, id: &str) -> Option<String> {
        self.map.lock().get_mut(id).and_then(|s| s.flash.take())
    }

    /// Whether `client` may write `key`, asked of the registry (cached
    /// per session for a few seconds).
    pub async fn can_write(&self, id: &str, client: &Client, key: &str) -> bool {
        if let Some((at, ok)) = self.map.lock().get(id).and_then(|s| s.probes.get(key).copied())
            && at.elapsed() < PROBE_TTL
        {
            return ok;
        }
        let ok = probe_write(client, key).await;
        if let Some(s) = self.map.lock().get_mut(id) {
            s.probes.insert(key.to_owned(), (Instant::now(), ok));
        }
        ok
    }
}

/// A put of `key` behind a compare that never holds (version < 0): the
/// registry checks the write's permission and writes nothing.
async fn probe_write(client: &Client, key: &str) -> bool {
    let never = Compare {
        result: compare::CompareResult::Less as i32,
        target: compare::CompareTarget::Version as i32,
        key: key.as_bytes().to_vec().into(),
        target_union: Some(compare::TargetUnion::Version(0)),
        ..Default::default()
    };
    let put = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    };
    let txn = TxnRequest { compare: vec![never], success: vec![put], failure: vec![] };
    match client.txn(txn).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(key, error = %e, "write probe refused");
            false
        }
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|p| p.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_found_among_others() {
        assert_eq!(cookie("a=1; roster_console=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie("a=1", COOKIE), None);
    }
}
