//! Which service a request goes to, and with which path.
//!
//! In order: a gRPC call by its service name (`/pkg.Service/Method`, path
//! kept); a route's exact `host`; `Host: <service>.<domain>`; the longest
//! configured `path_prefix`; then `/<service>/<rest>` for any service.

use crate::config::{Config, Policies, valid_service};
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq)]
pub struct Target<'a> {
    pub service: Cow<'a, str>,
    /// The path and query to send upstream.
    pub path: String,
    pub policies: &'a Policies,
    /// A `[[route]]` names the service (not only an auto route).
    pub configured: bool,
}

/// Routes a request; `None` means no route (404).
pub fn route<'a>(config: &'a Config, host: Option<&str>, path_and_query: &'a str, grpc: bool) -> Option<Target<'a>> {
    let keep = |service: &'a str| Target {
        service: Cow::Borrowed(service),
        path: path_and_query.to_owned(),
        policies: policies_of(config, service),
        configured: true,
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    if grpc {
        let grpc_service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if let Some(r) = config.routes.iter().find(|r| r.grpc.iter().any(|g| g == grpc_service)) {
            return Some(keep(&r.service));
        }
    }
    let host = host.map(|h| strip_port(h).to_ascii_lowercase());
    if let Some(h) = &host {
        if let Some(r) = config.routes.iter().find(|r| r.host.as_deref() == Some(h.as_str())) {
            return Some(keep(&r.service));
        }
        if let Some(domain) = &config.domain
            && let Some(label) = h.strip_suffix(domain.as_str()).and_then(|l| l.strip_suffix('.'))
            && valid_service(label)
            && !label.contains('.')
        {
            if let Some(r) = config.routes.iter().find(|r| r.service == label) {
                return Some(keep(&r.service));
            }
            if config.auto_routes {
                let path = path_and_query.to_owned();
                return Some(Target {
                    service: Cow::Owned(label.to_owned()),
                    path,
                    policies: &config.defaults,
                    configured: false,
                });
            }
        }
    }
    if grpc {
        // A gRPC method path must reach the instance unchanged; prefixes do not apply.
        return None;
    }
    for r in &config.routes {
        if let Some(rest) = under(path, &r.path_prefix) {
            let path = if r.policies.strip_prefix { rewrite(rest, query) } else { path_and_query.to_owned() };
            return Some(Target { service: Cow::Borrowed(&r.service), path, policies: &r.policies, configured: true });
        }
    }
    if config.auto_routes {
        let trimmed = path.strip_prefix('/')?;
        let (service, rest) = match trimmed.find('/') {
            Some(i) => (&trimmed[..i], &trimmed[i..]),
            None => (trimmed, ""),
        };
        if valid_service(service) {
            let route = config.routes.iter().find(|r| r.service == service);
            let policies = route.map_or(&config.defaults, |r| &r.policies);
            let path = if policies.strip_prefix { rewrite(rest, query) } else { path_and_query.to_owned() };
            return Some(Target { service: Cow::Borrowed(service), path, policies, configured: route.is_some() });
        }
    }
    None
}

fn policies_of<'a>(config: &'a Config, service: &str) -> &'a Policies {
    config.routes.iter().find(|r| r.service == service).map_or(&config.defaults, |r| &r.policies)
}

/// The rest of `path` under `prefix` (`""` or `/…`), if it is under it.
fn under<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    if prefix.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

fn rewrite(rest: &str, query: Option<&str>) -> String {
    let path = if rest.is_empty() { "/" } else { rest };
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "test").unwrap()
    }

    fn to(c: &Config, host: Option<&str>, path: &str, grpc: bool) -> Option<(String, String)> {
        route(c, host, path, grpc).map(|t| (t.service.into_owned(), t.path))
    }

    fn pair(s: &str, p: &str) -> Option<(String, String)> {
        Some((s.to_owned(), p.to_owned()))
    }

    #[test]
    fn any_service_by_its_first_path_segment() {
        let c = config("");
        assert_eq!(to(&c, None, "/hello/greet?x=1", false), pair("hello", "/greet?x=1"));
        assert_eq!(to(&c, None, "/hello", false), pair("hello", "/"));
        assert_eq!(to(&c, None, "/hello?x", false), pair("hello", "/?x"));
        assert_eq!(to(&c, None, "/", false), None);
        assert_eq!(to(&c, None, "/bad%20name/x", false), None);
        assert_eq!(to(&config("auto_routes = false"), None, "/hello/x", false), None);
    }

    #[test]
    fn configured_prefixes_win_longest_first_and_may_keep_the_prefix() {
        let c = config(
            "[[route]]\nservice = \"api\"\npath_prefix = \"/api\"\n\
             [[route]]\nservice = \"hello\"\npath_prefix = \"/api/hello\"\nstrip_prefix = false\n",
        );
        assert_eq!(to(&c, None, "/api/hello/x", false), pair("hello", "/api/hello/x"));
        assert_eq!(to(&c, None, "/api/hellothere", false), pair("api", "/hellothere"));
        assert_eq!(to(&c, None, "/api", false), pair("api", "/"));
    }

    #[test]
    fn hosts_route_by_exact_name_or_service_label() {
        let c = config("domain = \"svc.local\"\n[[route]]\nservice = \"web\"\nhost = \"www.example.com\"\n");
        assert_eq!(to(&c, Some("www.example.com:8080"), "/a", false), pair("web", "/a"));
        assert_eq!(to(&c, Some("Hello.SVC.local"), "/a?b", false), pair("hello", "/a?b"));
        assert_eq!(
            to(&c, Some("a.b.svc.local"), "/x/y", false),
            pair("x", "/y"),
            "not a service label: falls to the path"
        );
        assert_eq!(to(&c, Some("svc.local"), "/x/y", false), pair("x", "/y"));
    }

    #[test]
    fn grpc_goes_by_service_name_with_the_path_kept() {
        let c = config("[[route]]\nservice = \"hello\"\ngrpc = [\"hello.Hello\"]\n");
        assert_eq!(to(&c, None, "/hello.Hello/Say", true), pair("hello", "/hello.Hello/Say"));
        assert_eq!(to(&c, None, "/other.Svc/Call", true), None);
        let c = config("domain = \"svc\"\n");
        assert_eq!(to(&c, Some("hello.svc"), "/hello.Hello/Say", true), pair("hello", "/hello.Hello/Say"));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
