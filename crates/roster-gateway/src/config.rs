//! `gateway.toml`: routes and their policies. Every field is optional; with
//! no file at all, `/<service>/<rest>` routes to any registered service.
//!
//! ```toml
//! domain = "svc.local"             # Host <service>.svc.local → <service>
//!
//! [defaults]
//! policy = "least-request"        # default round-robin
//! retries = 2
//! per_try_timeout_ms = 5000
//! timeout_ms = 15000
//!
//! [[route]]
//! service = "hello"
//! path_prefix = "/api/hello"       # default /<service>
//! strip_prefix = true              # /api/hello/x → /x
//! grpc = ["hello.Hello"]           # gRPC calls to /hello.Hello/* → hello
//! policy = "round-robin"
//! max_concurrent_requests = 256    # more in flight get 503 + Retry-After
//! rate_limit_per_second = 1000     # more get 429 + Retry-After
//! rate_limit_burst = 2000          # default: one second's worth
//! ```
//!
//! Top-level limits: `max_connections` (default 10000) and
//! `max_connections_per_ip` (default 1024, 0 for none; `trusted_proxies`
//! are exempt). Connections over either are closed at accept.
//! `access_log_redact_query = true` logs queries as `?REDACTED`.
//!
//! `[tls]` terminates TLS on the listener, with the keys of etcd's flags:
//! `cert_file`, `key_file`, `trusted_ca_file`, `client_cert_auth`. Checked
//! by the same code as `roster gateway`'s flags, which replace the table
//! when any is given. It is read at start; the files it names are reloaded
//! when they change.

use roster::balance::Policy;
use serde::Deserialize;
use std::time::Duration;

/// Why a configuration was refused; the message says where and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The whole file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Route `/<service>/<rest>` to any registered service (default true).
    pub auto_routes: Option<bool>,
    /// With `domain = "svc.local"`, `Host: hello.svc.local` routes to `hello`.
    pub domain: Option<String>,
    /// Where instances are registered (default `/services`).
    pub prefix: Option<String>,
    /// Most distinct services the gateway follows at once (default 1024).
    pub max_services: Option<usize>,
    /// A client must send its request head within this time (default 10 s).
    pub header_read_timeout_ms: Option<u64>,
    /// Largest request head accepted, in bytes (default 16 KiB).
    pub max_header_bytes: Option<usize>,
    /// Clients (CIDRs) whose `X-Forwarded-*` headers are kept and extended;
    /// from anyone else they are replaced (default none).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Error bodies show instance addresses and error text (default false:
    /// they name the service only; the details go to the log).
    pub debug_errors: Option<bool>,
    /// A response is cut off when neither the instance sends nor the client
    /// takes any of it for this long (default 60 s).
    pub response_idle_timeout_ms: Option<u64>,
    /// The access log shows a request's query as `?REDACTED` (default
    /// false: as sent). Queries often carry tokens or personal data.
    pub access_log_redact_query: Option<bool>,
    /// Most client connections open at once (default 10000); more are
    /// closed at accept.
    pub max_connections: Option<usize>,
    /// Most open connections from one client address (default 1024; 0 for
    /// no cap). `trusted_proxies` are exempt.
    pub max_connections_per_ip: Option<usize>,
    /// TLS on the listener (see the module doc).
    #[serde(default)]
    pub tls: roster_tls::TlsFiles,
    #[serde(default)]
    pub defaults: RouteOptions,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
}

/// Per-route settings; unset ones come from `[defaults]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOptions {
    pub policy: Option<String>,
    /// Header whose value is the consistent-hash key.
    pub hash_header: Option<String>,
    /// Attempts after the first (default 2).
    pub retries: Option<u32>,
    pub per_try_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub strip_prefix: Option<bool>,
    /// Retries may add at most this share of requests (default 20).
    pub retry_budget_percent: Option<u32>,
    /// Requests in flight at once; more get 503 with `Retry-After` (default no cap).
    pub max_concurrent_requests: Option<u32>,
    /// Requests admitted per second; more get 429 with `Retry-After` (default no cap).
    pub rate_limit_per_second: Option<u32>,
    /// Requests that may come at once under the rate limit (default: one second's worth).
    pub rate_limit_burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub service: String,
    pub path_prefix: Option<String>,
    /// An exact `Host` (port ignored) that routes here.
    pub host: Option<String>,
    /// Fully qualified gRPC services (`pkg.Service`) that route here.
    #[serde(default)]
    pub grpc: Vec<String>,
    // The fields of `RouteOptions`, spelled out: `#[serde(flatten)]` would
    // lose the field name and line from parse errors.
    pub policy: Option<String>,
    pub hash_header: Option<String>,
    pub retries: Option<u32>,
    pub per_try_timeout_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub strip_prefix: Option<bool>,
    pub retry_budget_percent: Option<u32>,
    pub max_concurrent_requests: Option<u32>,
    pub rate_limit_per_second: Option<u32>,
    pub rate_limit_burst: Option<u32>,
}

impl RouteConfig {
    pub fn options(&self) -> RouteOptions {
        RouteOptions {
            policy: self.policy.clone(),
            hash_header: self.hash_header.clone(),
            retries: self.retries,
            per_try_timeout_ms: self.per_try_timeout_ms,
            timeout_ms: self.timeout_ms,
            strip_prefix: self.strip_prefix,
            retry_budget_percent: self.retry_budget_percent,
            max_concurrent_requests: self.max_concurrent_requests,
            rate_limit_per_second: self.rate_limit_per_second,
            rate_limit_burst: self.rate_limit_burst,
        }
    }
}

/// One route's settings, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Policies {
    pub policy: Policy,
    pub hash_header: Option<http::HeaderName>,
    pub retries: u32,
    pub per_try_timeout: Duration,
    pub timeout: Duration,
    pub strip_prefix: bool,
    pub retry_budget_percent: u32,
    pub max_concurrent_requests: Option<u32>,
    pub rate_limit_per_second: Option<u32>,
    pub rate_limit_burst: Option<u32>,
}

/// The configuration the gateway runs with: validated, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub auto_routes: bool,
    pub domain: Option<String>,
    pub prefix: String,
    pub max_services: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub trusted_proxies: Vec<Cidr>,
    pub debug_errors: bool,
    pub response_idle_timeout: Duration,
    pub access_log_redact_query: bool,
    pub max_connections: usize,
    /// 0: no cap.
    pub max_connections_per_ip: usize,
    /// The listener's TLS, checked; `None` for plaintext.
    pub tls: Option<roster_tls::ServerTls>,
    pub defaults: Policies,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub service: String,
    /// Without a trailing slash; `/hello` matches `/hello` and `/hello/…`.
    pub path_prefix: String,
    pub host: Option<String>,
    pub grpc: Vec<String>,
    pub policies: Policies,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_file(FileConfig::default()).expect("the defaults are valid")
    }
}

impl Config {
    /// Parses and validates TOML text. `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {}", e.to_string().trim_end())))?;
        Config::from_file(file).map_err(|e| ConfigError(format!("{origin}: {e}")))
    }

    pub fn from_file(f: FileConfig) -> Result<Config, ConfigError> {
        let builtin = Policies {
            // nginx's default too; least-request is one line of config away.
            policy: Policy::RoundRobin,
            hash_header: None,
            retries: 2,
            per_try_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(15),
            strip_prefix: true,
            retry_budget_percent: 20,
            max_concurrent_requests: None,
            rate_limit_per_second: None,
            rate_limit_burst: None,
        };
        let defaults = resolve(&builtin, &f.defaults, "[defaults]")?;
        let mut routes = Vec::with_capacity(f.routes.len());
        for (i, r) in f.routes.iter().enumerate() {
            let at = format!("[[route]] #{} ({:?})", i + 1, r.service);
            if !valid_service(&r.service) {
                return Err(ConfigError(format!("{at}: service name must be letters, digits, '.', '-' or '_'")));
            }
            let path_prefix = r.path_prefix.clone().unwrap_or_else(|| format!("/{}", r.service));
            if !path_prefix.starts_with('/') {
                return Err(ConfigError(format!("{at}: path_prefix {path_prefix:?} must start with '/'")));
            }
            for g in &r.grpc {
                if g.is_empty() || g.contains('/') {
                    return Err(ConfigError(format!(
                        "{at}: grpc entry {g:?} must be a service name like \"pkg.Service\""
                    )));
                }
            }
            routes.push(Route {
                service: r.service.clone(),
                path_prefix: path_prefix.trim_end_matches('/').to_owned(),
                host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
                grpc: r.grpc.clone(),
                policies: resolve(&defaults, &r.options(), &at)?,
            });
        }
        // Longest prefix first, so `/api/hello` wins over `/api`.
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        let prefix = f.prefix.unwrap_or_else(|| roster::DEFAULT_PREFIX.to_owned());
        if !prefix.starts_with('/') {
            return Err(ConfigError(format!("prefix {prefix:?} must start with '/'")));
        }
        let trusted_proxies = f.trusted_proxies.iter().map(|c| c.parse()).collect::<Result<Vec<Cidr>, _>>()?;
        let tls = f.tls.server_tls(roster_tls::TlsNames::FILE).map_err(|e| ConfigError(e.to_string()))?;
        Ok(Config {
            tls,
            trusted_proxies,
            debug_errors: f.debug_errors.unwrap_or(false),
            response_idle_timeout: Duration::from_millis(f.response_idle_timeout_ms.unwrap_or(60_000).max(1)),
            access_log_redact_query: f.access_log_redact_query.unwrap_or(false),
            max_connections: f.max_connections.unwrap_or(10_000).max(1),
            max_connections_per_ip: f.max_connections_per_ip.unwrap_or(1024),
            auto_routes: f.auto_routes.unwrap_or(true),
            domain: f.domain.map(|d| d.trim_start_matches('.').to_ascii_lowercase()),
            prefix: prefix.trim_end_matches('/').to_owned(),
            max_services: f.max_services.unwrap_or(1024).max(1),
            header_read_timeout: Duration::from_millis(f.header_read_timeout_ms.unwrap_or(10_000).max(1)),
            max_header_bytes: f.max_header_bytes.unwrap_or(16 * 1024).clamp(1024, 1024 * 1024),
            defaults,
            routes,
        })
    }
}

/// An address block, `10.0.0.0/8` or `::1/128`; a bare address is one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Cidr, ConfigError> {
        let bad = || ConfigError(format!("trusted_proxies: {s:?} is not an address or CIDR block like \"10.0.0.0/8\""));
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: std::net::IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, width) = match (self.net, ip) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) => {
                (u128::from(u32::from(n)), u128::from(u32::from(i)), 32)
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = width - u32::from(self.bits);
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

impl Config {
    /// Whether `ip`'s forwarding headers are believed.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

fn resolve(base: &Policies, o: &RouteOptions, at: &str) -> Result<Policies, ConfigError> {
    let policy = match &o.policy {
        Some(p) => p.parse::<Policy>().map_err(|e| ConfigError(format!("{at}: {e}")))?,
        None => base.policy,
    };
    let hash_header = match &o.hash_header {
        Some(h) => Some(
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| ConfigError(format!("{at}: hash_header {h:?} is not a valid header name")))?,
        ),
        None => base.hash_header.clone(),
    };
    let ms = |v: Option<u64>, d: Duration, name: &str| -> Result<Duration, ConfigError> {
        match v {
            Some(0) => Err(ConfigError(format!("{at}: {name} must be at least 1"))),
            Some(v) => Ok(Duration::from_millis(v)),
            None => Ok(d),
        }
    };
    let at_least_1 = |v: Option<u32>, name: &str| -> Result<Option<u32>, ConfigError> {
        match v {
            Some(0) => Err(ConfigError(format!("{at}: {name} must be at least 1 (leave it out for no limit)"))),
            v => Ok(v),
        }
    };
    let p = Policies {
        policy,
        hash_header,
        retries: o.retries.unwrap_or(base.retries).min(10),
        per_try_timeout: ms(o.per_try_timeout_ms, base.per_try_timeout, "per_try_timeout_ms")?,
        timeout: ms(o.timeout_ms, base.timeout, "timeout_ms")?,
        strip_prefix: o.strip_prefix.unwrap_or(base.strip_prefix),
        retry_budget_percent: o.retry_budget_percent.unwrap_or(base.retry_budget_percent).min(100),
        max_concurrent_requests: at_least_1(o.max_concurrent_requests, "max_concurrent_requests")?
            .or(base.max_concurrent_requests),
        rate_limit_per_second: at_least_1(o.rate_limit_per_second, "rate_limit_per_second")?
            .or(base.rate_limit_per_second),
        rate_limit_burst: at_least_1(o.rate_limit_burst, "rate_limit_burst")?.or(base.rate_limit_burst),
    };
    if p.per_try_timeout > p.timeout {
        return Err(ConfigError(format!(
            "{at}: per_try_timeout_ms ({:?}) is longer than timeout_ms ({:?})",
            p.per_try_timeout, p.timeout
        )));
    }
    Ok(p)
}

/// A service name as it may appear in a path segment or a host label.
pub fn valid_service(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_table_is_checked_like_the_flags() {
        let c = Config::parse("[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n", "gw.toml").unwrap();
        let tls = c.tls.unwrap();
        assert_eq!((tls.cert_file.to_str(), tls.key_file.to_str()), (Some("c.pem"), Some("k.pem")));
        assert!(!tls.client_cert_auth);
        assert_eq!(Config::parse("", "gw.toml").unwrap().tls, None);
        let e = Config::parse("[tls]\ncert_file = \"c.pem\"\n", "gw.toml").unwrap_err().to_string();
        assert_eq!(e, "gw.toml: [tls] cert_file needs [tls] key_file");
        let e = Config::parse("[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_cert_auth = true\n", "gw.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("client_cert_auth needs [tls] trusted_ca_file"), "{e}");
        let e = Config::parse("[tls]\ncert = \"c\"\n", "gw.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `cert`"), "{e}");
    }

    #[test]
    fn an_empty_file_routes_every_service_by_path() {
        let c = Config::parse("", "gateway.toml").unwrap();
        assert!(c.auto_routes);
        assert_eq!(c.prefix, "/services");
        assert_eq!(c.defaults.retries, 2);
        assert!(c.routes.is_empty());
    }

    #[test]
    fn routes_inherit_defaults_and_sort_longest_first() {
        let c = Config::parse(
            r#"
            [defaults]
            policy = "round-robin"
            retries = 1
            [[route]]
            service = "api"
            path_prefix = "/api/"
            [[route]]
            service = "hello"
            path_prefix = "/api/hello"
            policy = "random"
            strip_prefix = false
            grpc = ["hello.Hello"]
            "#,
            "t",
        )
        .unwrap();
        assert_eq!(c.routes[0].path_prefix, "/api/hello");
        assert_eq!(c.routes[0].policies.policy, Policy::Random);
        assert!(!c.routes[0].policies.strip_prefix);
        assert_eq!(c.routes[1].path_prefix, "/api");
        assert_eq!((c.routes[1].policies.policy, c.routes[1].policies.retries), (Policy::RoundRobin, 1));
    }

    #[test]
    fn trusted_proxies_are_address_blocks() {
        let c = Config::parse("trusted_proxies = [\"10.0.0.0/8\", \"192.168.1.7\", \"fd00::/8\"]\n", "t").unwrap();
        for (ip, trusted) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("fd12::1", true),
            ("fe80::1", false),
            ("::ffff:10.9.9.9", true),
        ] {
            assert_eq!(c.trusts(ip.parse().unwrap()), trusted, "{ip}");
        }
        assert!(!Config::default().trusts("127.0.0.1".parse().unwrap()), "nobody by default");
        assert!(Config::parse("trusted_proxies = [\"0.0.0.0/0\"]\n", "t").unwrap().trusts("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "ten", "10.0.0.0/x"] {
            let e = Config::parse(&format!("trusted_proxies = [{bad:?}]\n"), "gw.toml").unwrap_err().0;
            assert!(e.contains("trusted_proxies") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn limits_come_from_defaults_and_zero_is_refused() {
        let c = Config::parse(
            "max_connections = 50\n[defaults]\nrate_limit_per_second = 100\n[[route]]\nservice = \"a\"\nmax_concurrent_requests = 8\n",
            "t",
        )
        .unwrap();
        assert_eq!((c.max_connections, c.max_connections_per_ip), (50, 1024));
        let p = &c.routes[0].policies;
        assert_eq!(
            (p.max_concurrent_requests, p.rate_limit_per_second, p.rate_limit_burst),
            (Some(8), Some(100), None)
        );
        assert_eq!(Config::default().defaults.rate_limit_per_second, None, "no limit unless configured");
        let e = Config::parse("[[route]]\nservice = \"a\"\nrate_limit_per_second = 0\n", "gw.toml").unwrap_err().0;
        assert!(e.contains("rate_limit_per_second must be at least 1"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::parse("[[route]]\nservice = \"a\"\npolicy = \"fastest\"\n", "gw.toml").unwrap_err().0;
        assert!(e.starts_with("gw.toml: [[route]] #1 (\"a\"): unknown policy \"fastest\""), "{e}");
        let e = Config::parse("[[route]]\nservice = \"a b\"\n", "gw.toml").unwrap_err().0;
        assert!(e.contains("service name must be"), "{e}");
        let e = Config::parse("[[route]]\nservice = \"x\"\nretries = \"many\"\n", "gw.toml").unwrap_err().0;
        assert!(e.contains("line 3") && e.contains("retries"), "{e}");
        let e = Config::parse("retries = 3\n", "gw.toml").unwrap_err().0;
        assert!(e.contains("unknown field `retries`"), "{e}");
        let e = Config::parse("[defaults]\nper_try_timeout_ms = 9000\ntimeout_ms = 1000\n", "gw.toml").unwrap_err().0;
        assert!(e.contains("longer than timeout_ms"), "{e}");
        let e = Config::parse("[[route]]\nservice = \"a\"\npath_prefix = \"a\"\n", "gw.toml").unwrap_err().0;
        assert!(e.contains("must start with '/'"), "{e}");
    }
}
