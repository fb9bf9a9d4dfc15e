//! One request head on the fast path, read strictly (RFC 9112) and rebuilt
//! for the instance.
//!
//! The fast path forwards a body it does not re-encode, on upstream
//! connections other clients share, so any doubt about where a request
//! ends would let a second request ride inside the first (smuggling).
//! Hence these rules, each answered with 400 and a closed connection:
//!
//! - Every line ends in CRLF: no bare LF or CR, no NUL, no other control
//!   byte but HTAB, no DEL anywhere in the head. httparse refuses
//!   whitespace before a colon, obs-fold and bad name bytes in requests.
//! - At most one `Content-Length`, digits only (no sign, no list).
//! - `Transfer-Encoding` is a list of codings whose last and only
//!   `chunked` is at the end; never with `Content-Length`, never in
//!   HTTP/1.0.
//! - The request target is visible ASCII with well-formed `%` escapes and
//!   no fragment; an HTTP/1.1 request has exactly one valid `Host`.
//!
//! The head sent upstream is rebuilt, not edited, by the pipeline
//! (`crate::pipeline::forward_headers`): framing, `Host`, hop-by-hop and
//! forwarding headers are dropped whatever `Connection` names, and the
//! gateway writes the one framing header it computed.
//!
//! The same rules hold for the HTTP/1.1 requests hyper serves: the strict
//! reader (`super::strict`) checks each of their heads here first.

use super::MAX_HEADERS;
use http::Method;

/// A plain request head, read; the pipeline routes it and rewrites its
/// headers (`crate::pipeline::forward_headers`).
pub(crate) struct RequestHead {
    pub head_len: usize,
    /// The one `Content-Length`, if sent.
    pub content_length: Option<u64>,
    pub method: Method,
    /// The client asked to close after this request.
    pub close: bool,
    /// The request target, as a range of the head.
    pub target: (u32, u32),
    pub host: Option<(u32, u32)>,
    /// Each header line as ranges of the head: name start and end, value
    /// start and end.
    pub lines: Vec<[u32; 4]>,
}

impl RequestHead {
    fn text(head: &[u8], (a, b): (u32, u32)) -> &str {
        // Checked to be visible ASCII (target) or host bytes when parsed.
        std::str::from_utf8(&head[a as usize..b as usize]).unwrap_or("")
    }

    /// What the pipeline needs to know of this request.
    pub fn ask<'h>(&'h self, head: &'h [u8], client: std::net::SocketAddr) -> crate::pipeline::Ask<'h> {
        crate::pipeline::Ask {
            client,
            method: &self.method,
            host: self.host(head),
            path: self.target(head),
            grpc: false,
            content_length: self.content_length,
        }
    }

    pub fn target<'h>(&self, head: &'h [u8]) -> &'h str {
        Self::text(head, self.target)
    }

    pub fn host<'h>(&self, head: &'h [u8]) -> Option<&'h str> {
        self.host.map(|r| Self::text(head, r))
    }

    /// The header lines, as name and value.
    pub fn lines<'h>(&'h self, head: &'h [u8]) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone {
        self.lines.iter().map(move |r| (&head[r[0] as usize..r[1] as usize], &head[r[2] as usize..r[3] as usize]))
    }
}

/// How the body of a request hyper serves ends, as the strict reader
/// (`super::strict`) follows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BodyFraming {
    Length(u64),
    Chunked,
    /// `Upgrade` or `CONNECT`: what follows may not be HTTP/1.1 at all.
    Tunnel,
}

// Short-lived on the stack; boxing would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    Complete(RequestHead),
    Partial,
    /// Valid, but hyper serves it (h2c, HTTP/1.0, chunked, upgrades, …).
    Hyper {
        head_len: usize,
        body: BodyFraming,
    },
    TooManyHeaders,
    Bad(&'static str),
}

pub(crate) fn parse_request(buf: &[u8]) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooManyHeaders,
        Err(_) => return Parsed::Bad("malformed request head"),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Bad("malformed request head");
    };
    if let Err(why) = head_bytes(&buf[..head_len]).and_then(|()| request_target(target)) {
        return Parsed::Bad(why);
    }
    // httparse's slices point into `buf`.
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let a = (s.as_ptr() as usize - base) as u32;
        (a, a + s.len() as u32)
    };
    let mut host = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = false;
    let mut for_hyper = false;
    let mut tunnel = method == "CONNECT";
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Parsed::Bad("more than one Host header");
            }
            match std::str::from_utf8(h.value) {
                Ok(v) if valid_host(v) => host = Some(range(h.value)),
                _ => return Parsed::Bad("invalid Host header"),
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Parsed::Bad("more than one Content-Length header");
            }
            let Some(n) = parse_length(h.value) else {
                return Parsed::Bad("invalid Content-Length");
            };
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in list(h.value) {
                if chunked {
                    return Parsed::Bad("chunked must be the last transfer coding");
                }
                if !coding.bytes().all(is_token) {
                    return Parsed::Bad("invalid Transfer-Encoding");
                }
                chunked = coding.eq_ignore_ascii_case("chunked");
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            for_hyper = true;
            tunnel = true;
        } else if name.eq_ignore_ascii_case("expect")
            || (name.eq_ignore_ascii_case("content-type") && h.value.starts_with(b"application/grpc"))
        {
            for_hyper = true;
        } else if name.eq_ignore_ascii_case("connection") {
            close |= list(h.value).any(|token| token.eq_ignore_ascii_case("close"));
        }
    }
    if transfer_encoding {
        if content_length.is_some() {
            return Parsed::Bad("both Content-Length and Transfer-Encoding");
        }
        if !chunked {
            return Parsed::Bad("Transfer-Encoding must end in chunked");
        }
        if version == 0 {
            return Parsed::Bad("Transfer-Encoding in an HTTP/1.0 request");
        }
    }
    if version == 1 && host.is_none() {
        return Parsed::Bad("missing Host header");
    }
    // HTTP/1.0 keep-alive rules, chunked bodies, upgrades, absolute and
    // authority forms: hyper knows them, and re-encodes what it forwards.
    if version != 1 || transfer_encoding || for_hyper || !target.starts_with('/') || method == "CONNECT" {
        let body = if tunnel {
            BodyFraming::Tunnel
        } else if chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::Length(content_length.unwrap_or(0))
        };
        return Parsed::Hyper { head_len, body };
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Bad("malformed method");
    };
    let lines = req.headers.iter().map(|h| {
        let (n, v) = (range(h.name.as_bytes()), range(h.value));
        [n.0, n.1, v.0, v.1]
    });
    Parsed::Complete(RequestHead {
        head_len,
        content_length,
        method,
        close,
        target: range(target.as_bytes()),
        host,
        lines: lines.collect(),
    })
}

/// Every line ends in CRLF, and no control byte but HTAB appears.
///
/// Runs on every head, so in two cheap passes instead of one branchy one:
/// a branch-free scan the compiler vectorises (any other control byte,
/// and how many CRs and LFs), then a check that every LF follows a CR.
/// With as many CRs as LFs, that leaves no CR without its LF either. The
/// errors are those of a byte-by-byte reading, first fault first
/// (`head_bytes_bytewise` in the tests is that reading).
fn head_bytes(head: &[u8]) -> Result<(), &'static str> {
    let (mut ctl, mut crs, mut lfs) = (false, 0usize, 0usize);
    for &b in head {
        ctl |= (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') | (b == 0x7f);
        crs += usize::from(b == b'\r');
        lfs += usize::from(b == b'\n');
    }
    let lf_after_cr = || head.iter().enumerate().all(|(i, &b)| b != b'\n' || (i > 0 && head[i - 1] == b'\r'));
    if !ctl && crs == lfs && lf_after_cr() {
        return Ok(());
    }
    head_bytes_bytewise(head)
}

/// The same rules, byte by byte: which fault comes first, once
/// [`head_bytes`] has found that there is one.
fn head_bytes_bytewise(head: &[u8]) -> Result<(), &'static str> {
    let mut prev = 0u8;
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if prev != b'\r' => return Err("bare LF in the request head"),
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err("bare CR in the request head"),
            b'\t' | b'\r' | b'\n' => {}
            0..=0x1f | 0x7f => return Err("control character in the request head"),
            _ => {}
        }
        prev = b;
    }
    Ok(())
}

/// Visible ASCII, `%` followed by two hex digits, no fragment.
fn request_target(t: &str) -> Result<(), &'static str> {
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return Err("malformed percent-encoding in the request target");
                }
                i += 3;
                continue;
            }
            b'#' => return Err("fragment in the request target"),
            0x21..=0x7e => {}
            _ => return Err("invalid byte in the request target"),
        }
        i += 1;
    }
    Ok(())
}

/// `uri-host [":" port]` as bytes: reg-name, IPv4 or a bracketed IPv6.
fn valid_host(h: &str) -> bool {
    h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// 1*DIGIT around optional whitespace, within u64.
pub(super) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The non-empty elements of a comma-separated header list.
fn list(v: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(v).unwrap_or("").split(',').map(|t| t.trim_matches([' ', '\t'])).filter(|t| !t.is_empty())
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(super) fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Heads made mostly of the bytes the rules are about.
    fn head_like() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => Just(b'\r'),
            4 => Just(b'\n'),
            1 => Just(b'\t'),
            1 => Just(0x7f),
            1 => 0u8..0x20,
            6 => 0x20u8..0x7f,
            1 => 0x80u8..=0xff,
        ];
        prop_oneof![
            proptest::collection::vec(byte, 0..48),
            // Well-formed lines with one byte changed somewhere.
            (proptest::collection::vec("[ -~]{0,12}", 1..5), any::<prop::sample::Index>(), any::<u8>()).prop_map(
                |(lines, at, b)| {
                    let mut head = lines.join("\r\n").into_bytes();
                    head.extend_from_slice(b"\r\n\r\n");
                    let i = at.index(head.len());
                    head[i] = b;
                    head
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn the_two_pass_head_check_agrees_with_the_bytewise_reading(head in head_like()) {
            prop_assert_eq!(head_bytes(&head), head_bytes_bytewise(&head));
        }
    }
    use crate::config::Config;

    fn parse(head: &str) -> Parsed {
        parse_request(head.as_bytes())
    }

    #[track_caller]
    fn refused(head: &str) {
        match parse(head) {
            Parsed::Bad(_) => {}
            Parsed::Complete(_) => panic!("forwarded: {head:?}"),
            Parsed::Hyper { .. } => panic!("handed to hyper: {head:?}"),
            Parsed::Partial => panic!("read as partial: {head:?}"),
            Parsed::TooManyHeaders => panic!("too many headers: {head:?}"),
        }
    }

    /// The head the instance would get, with `host:` as the gateway writes it.
    fn forwarded(head: &str) -> (String, u64) {
        forwarded_with(head, &Config::default())
    }

    fn forwarded_with(head: &str, config: &Config) -> (String, u64) {
        let Parsed::Complete(h) = parse(head) else { panic!("not forwarded by the fast path: {head:?}") };
        let up = super::super::upstream_head(head.as_bytes(), &h, config, "127.0.0.9:4000".parse().unwrap(), "i:1")
            .expect("routed");
        (String::from_utf8(up).unwrap(), h.content_length.unwrap_or(0))
    }

    #[test]
    fn connection_naming_content_length_never_strips_the_framing_header() {
        let (up, len) =
            forwarded("POST /echo/x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 40\r\n\r\n");
        assert_eq!(len, 40);
        assert_eq!(up.matches("content-length: 40\r\n").count(), 1, "{up}");
        assert_eq!(up.to_ascii_lowercase().matches("content-length").count(), 1, "{up}");
    }

    #[test]
    fn connection_naming_transfer_encoding_never_strips_the_framing_header() {
        // Chunked bodies are hyper's, which re-encodes them: never the fast path's.
        assert!(matches!(
            parse(
                "POST /echo/x HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Parsed::Hyper { .. }
        ));
        let (up, _) =
            forwarded("GET /echo/x HTTP/1.1\r\nHost: a\r\nConnection: transfer-encoding, host, close\r\n\r\n");
        assert!(!up.to_ascii_lowercase().contains("transfer-encoding") && up.contains("host: i:1\r\n"), "{up}");
    }

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        refused("POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        refused("POST /echo/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
        refused("POST /echo/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
    }

    #[test]
    fn duplicated_content_length_is_refused_even_when_equal() {
        refused("POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        refused("POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        refused("POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
    }

    #[test]
    fn signed_or_non_digit_content_length_is_refused() {
        for v in ["+5", "-5", "5a", "0x5", "5 5", "", "1_000", "99999999999999999999999"] {
            refused(&format!("POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n"));
        }
        assert_eq!(forwarded("POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length:  007 \r\n\r\n").1, 7);
    }

    #[test]
    fn transfer_encoding_not_ending_in_a_single_chunked_is_refused() {
        for v in ["gzip", "chunked, gzip", "chunked, chunked", "identity", "chunked;x=1", "\"chunked\""] {
            refused(&format!("POST /echo/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n"));
        }
        refused("POST /echo/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
        refused("POST /echo/x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(
            parse("POST /echo/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Parsed::Hyper { .. }
        ));
    }

    #[test]
    fn obs_fold_is_refused() {
        refused("GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n");
        refused("GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tfolded\r\n\r\n");
        refused("GET /echo/x HTTP/1.1\r\n Host: a\r\n\r\n");
    }

    #[test]
    fn bare_lf_is_refused() {
        refused("GET /echo/x HTTP/1.1\nHost: a\r\n\r\n");
        refused("GET /echo/x HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n");
        refused("GET /echo/x HTTP/1.1\r\nHost: a\r\n\n");
        refused("GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\n\r\n");
    }

    #[test]
    fn whitespace_before_the_colon_is_refused() {
        refused("POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\n");
        refused("POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length\t: 5\r\n\r\n");
        refused("GET /echo/x HTTP/1.1\r\nHost : a\r\n\r\n");
    }

    #[test]
    fn ctl_and_nul_in_names_and_values_are_refused() {
        for bad in ["X-A: a\0b", "X-A: a\x01b", "X-A: a\x7fb", "X\0A: 1", "X\x1bA: 1", "X-A: \x0b"] {
            refused(&format!("GET /echo/x HTTP/1.1\r\nHost: a\r\n{bad}\r\n\r\n"));
        }
        // HTAB and obs-text are field content.
        let (up, _) = forwarded("GET /echo/x HTTP/1.1\r\nHost: a\r\nX-A: a\tb\u{e9}\r\n\r\n");
        assert!(up.contains("X-A: a\tb\u{e9}\r\n"), "{up}");
    }

    #[test]
    fn invalid_request_targets_are_refused() {
        for t in ["/a%", "/a%4", "/a%zz", "/a#frag", "/caf\u{e9}", "/a\x7f"] {
            refused(&format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n"));
        }
        refused("GET  /echo/x HTTP/1.1\r\nHost: a\r\n\r\n");
        refused("GET /echo/x  HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            forwarded("GET /echo/a%2Fb?q=%41&x={y} HTTP/1.1\r\nHost: a\r\n\r\n").0.lines().next(),
            Some("GET /a%2Fb?q=%41&x={y} HTTP/1.1")
        );
    }

    #[test]
    fn a_missing_duplicated_or_invalid_host_is_refused() {
        refused("GET /echo/x HTTP/1.1\r\n\r\n");
        refused("GET /echo/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        refused("GET /echo/x HTTP/1.1\r\nHost: a/b\r\n\r\n");
        refused("GET /echo/x HTTP/1.1\r\nHost: a b\r\n\r\n");
        assert!(matches!(parse("GET /echo/x HTTP/1.0\r\n\r\n"), Parsed::Hyper { .. }), "HTTP/1.0 needs no Host");
    }

    #[test]
    fn forwarding_headers_are_replaced_unless_the_client_is_a_trusted_proxy() {
        let head = "GET /echo/x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: b\r\n\r\n";
        let (up, _) = forwarded(head);
        assert!(
            up.ends_with("x-forwarded-for: 127.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\r\n"),
            "{up}"
        );
        assert!(!up.contains("6.6.6.6"), "{up}");
        let config = Config::parse("trusted_proxies = [\"127.0.0.0/8\"]\n", "t").unwrap();
        let (up, _) = forwarded_with(head, &config);
        assert!(up.ends_with("host: i:1\r\nx-forwarded-for: 6.6.6.6, 7.7.7.7, 127.0.0.9\r\nx-forwarded-proto: https\r\nx-forwarded-host: b\r\n\r\n"), "{up}");
    }

    #[test]
    fn the_forwarded_head_has_exactly_one_framing_header_and_only_the_gateways_forwarding_headers() {
        let (up, _) = forwarded(
            "POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
        );
        assert_eq!(
            up,
            "POST /x HTTP/1.1\r\nhost: i:1\r\ncontent-length: 3\r\nx-forwarded-for: 127.0.0.9\r\nx-forwarded-proto: http\r\nx-forwarded-host: a\r\n\r\n"
        );
        let (up, _) = forwarded("GET /echo/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(!up.contains("content-length"), "no body, no framing header: {up}");
    }
}
