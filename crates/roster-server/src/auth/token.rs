//! Auth tokens. `simple` (etcd's default): a random string the server maps
//! to a user and the auth revision it was issued at, expiring after the TTL
//! of disuse (each use renews it, as etcd's simple tokens do). Tokens live
//! only in memory and do not survive a restart, as in etcd. `jwt`: see
//! [`super::jwt`]; [`Tokens`] is the one face of both.

use super::jwt::Jwt;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Who a token speaks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AuthInfo {
    pub user: String,
    /// The auth revision the token was issued at; 0 for no user.
    pub revision: u64,
}

struct Entry {
    info: AuthInfo,
    deadline: Instant,
}

/// Above this many tokens, issuing one first drops the expired ones, so
/// the map stays bounded by the login rate times the TTL.
const SWEEP_FROM: usize = 1024;

pub(crate) struct SimpleTokens {
    ttl: Duration,
    /// Short critical sections, never across an await.
    map: Mutex<HashMap<String, Entry>>,
    /// The numeric suffix etcd puts after the random part.
    seq: std::sync::atomic::AtomicU64,
}

// === impl SimpleTokens ===

impl SimpleTokens {
    pub(crate) fn new(ttl: Duration) -> Self {
        SimpleTokens { ttl, map: Mutex::new(HashMap::new()), seq: Default::default() }
    }

    pub(crate) fn issue(&self, info: AuthInfo) -> String {
        let mut rng = rand::rng();
        let random: String = (0..16).map(|_| rng.sample(rand::distr::Alphabetic) as char).collect();
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let token = format!("{random}.{n}");
        let now = Instant::now();
        let mut map = self.map.lock();
        if map.len() >= SWEEP_FROM {
            map.retain(|_, e| e.deadline > now);
        }
        map.insert(token.clone(), Entry { info, deadline: now + self.ttl });
        token
    }

    /// The token's user, renewing its TTL; `None` when unknown or expired.
    pub(crate) fn info(&self, token: &str) -> Option<AuthInfo> {
        let now = Instant::now();
        let mut map = self.map.lock();
        let e = map.get_mut(token)?;
        if e.deadline <= now {
            map.remove(token);
            return None;
        }
        e.deadline = now + self.ttl;
        Some(e.info.clone())
    }

    /// Ends every token of `user` (deleted, or its password changed).
    pub(crate) fn invalidate_user(&self, user: &str) {
        self.map.lock().retain(|_, e| e.info.user != user);
    }

    /// Ends every token (auth disabled).
    pub(crate) fn clear(&self) {
        self.map.lock().clear();
    }
}

/// The token provider `--auth-token` chose.
pub(crate) enum Tokens {
    Simple(SimpleTokens),
    Jwt(Arc<Jwt>),
}

// === impl Tokens ===

impl Tokens {
    /// A token for `info`; `None` when the provider may not sign
    /// (verify-only JWT).
    pub(crate) fn issue(&self, info: AuthInfo) -> Option<String> {
        match self {
            Tokens::Simple(t) => Some(t.issue(info)),
            Tokens::Jwt(j) => j.issue(&info),
        }
    }

    pub(crate) fn info(&self, token: &str) -> Option<AuthInfo> {
        match self {
            Tokens::Simple(t) => t.info(token),
            Tokens::Jwt(j) => j.info(token),
        }
    }

    /// Ends every token of `user`. A JWT cannot be ended, as in etcd.
    pub(crate) fn invalidate_user(&self, user: &str) {
        if let Tokens::Simple(t) = self {
            t.invalidate_user(user);
        }
    }

    /// Ends every token (auth disabled); JWTs stay verifiable, as in etcd.
    pub(crate) fn clear(&self) {
        if let Tokens::Simple(t) = self {
            t.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(u: &str) -> AuthInfo {
        AuthInfo { user: u.into(), revision: 3 }
    }

    #[test]
    fn tokens_resolve_until_invalidated_and_are_unique() {
        let t = SimpleTokens::new(Duration::from_secs(300));
        let (a, b) = (t.issue(info("a")), t.issue(info("a")));
        assert_ne!(a, b);
        assert_eq!(t.info(&a), Some(info("a")));
        assert_eq!(t.info("nope"), None);
        t.invalidate_user("a");
        assert_eq!(t.info(&a), None);
        let c = t.issue(info("c"));
        t.clear();
        assert_eq!(t.info(&c), None);
    }

    #[test]
    fn a_token_expires_after_its_ttl() {
        let t = SimpleTokens::new(Duration::from_millis(1));
        let a = t.issue(info("a"));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.info(&a), None);
    }
}
