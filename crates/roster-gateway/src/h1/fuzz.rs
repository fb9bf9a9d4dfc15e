//! A differential test of the fast path's request parser against a
//! reference: the RFC 9112 grammar, written out line by line here, with
//! httparse as a second opinion on where the head ends.
//!
//! For every generated and mutated request (head, then body bytes that
//! often hold a second request), the fast path must refuse it, hand it to
//! hyper when the reference says it is not plain, or forward exactly one
//! request: the bytes it sends upstream parse, by the reference, as one
//! request and nothing more, with the method, target, end-to-end headers
//! and body the reference read from the client's bytes. The two must also
//! agree on refusing: a request the reference finds valid is not refused.
//!
//! `cargo test -p roster-gateway --lib fuzz` runs a few thousand cases;
//! `-- --ignored fuzz` runs the long campaign.

use super::request::{Parsed, parse_request};
use crate::config::Config;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use std::net::SocketAddr;

/// What the reference makes of the start of a byte stream.
#[derive(Debug, PartialEq)]
enum Reference {
    /// No complete head yet.
    Incomplete,
    Reject(&'static str),
    /// Valid, but not plain HTTP/1.1 with a length: hyper's.
    Hyper,
    Plain(Message),
}

#[derive(Debug, PartialEq)]
struct Message {
    method: String,
    target: String,
    /// In order, as sent.
    headers: Vec<(String, Vec<u8>)>,
    content_length: Option<u64>,
    head_len: usize,
}

impl Message {
    fn values(&self, name: &str) -> impl Iterator<Item = &[u8]> {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }
}

fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn elements(v: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(v)
        .split(',')
        .map(|e| e.trim_matches([' ', '\t']).to_owned())
        .filter(|e| !e.is_empty())
        .collect()
}

fn reference(input: &[u8]) -> Reference {
    let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else { return Reference::Incomplete };
    let head = &input[..end + 2];
    // RFC 9112 §2.2: CRLF only; §5.5: no CTL but HTAB in field values.
    for (i, &b) in head.iter().enumerate() {
        let ok = match b {
            b'\r' => head.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && head[i - 1] == b'\r',
            b'\t' => true,
            0..=0x1f | 0x7f => false,
            _ => true,
        };
        if !ok {
            return Reference::Reject("line ending or control byte");
        }
    }
    let mut lines = head[..end].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else { return Reference::Reject("request line") };
    if method.is_empty() || !method.iter().all(|&b| tchar(b)) {
        return Reference::Reject("method");
    }
    // origin-form and friends: visible ASCII, pct-encoded = "%" HEXDIG HEXDIG, no fragment.
    if target.is_empty() || target.iter().any(|&b| !(0x21..=0x7e).contains(&b) || b == b'#') {
        return Reference::Reject("target bytes");
    }
    for (i, _) in target.iter().enumerate().filter(|(_, b)| **b == b'%') {
        if !(target.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && target.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Reference::Reject("pct-encoding");
        }
    }
    let http11 = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        _ => return Reference::Reject("version"),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Reference::Reject("obs-fold");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else { return Reference::Reject("no colon") };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| tchar(b)) {
            return Reference::Reject("field name");
        }
        headers.push((String::from_utf8(name.to_vec()).expect("tchar is ASCII"), value.trim_ascii().to_vec()));
    }
    let msg = Message {
        method: String::from_utf8(method.to_vec()).expect("ASCII"),
        target: String::from_utf8(target.to_vec()).expect("ASCII"),
        headers,
        content_length: None,
        head_len: end + 4,
    };
    let hosts: Vec<&[u8]> = msg.values("host").collect();
    if hosts.len() > 1 || (http11 && hosts.is_empty()) {
        return Reference::Reject("Host count");
    }
    let host_byte = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(b);
    if hosts.first().is_some_and(|h| !h.iter().all(host_byte)) {
        return Reference::Reject("Host value");
    }
    let lengths: Vec<&[u8]> = msg.values("content-length").collect();
    let content_length = match lengths[..] {
        [] => None,
        [v] if !v.is_empty() && v.iter().all(u8::is_ascii_digit) => {
            match std::str::from_utf8(v).unwrap().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => return Reference::Reject("Content-Length overflow"),
            }
        }
        _ => return Reference::Reject("Content-Length"),
    };
    let codings: Vec<String> = msg.values("transfer-encoding").flat_map(elements).collect();
    let te = msg.values("transfer-encoding").next().is_some();
    if te {
        let chunked_once_last = codings.last().is_some_and(|c| c.eq_ignore_ascii_case("chunked"))
            && codings.iter().filter(|c| c.eq_ignore_ascii_case("chunked")).count() == 1
            && codings.iter().all(|c| c.bytes().all(tchar));
        if content_length.is_some() || !chunked_once_last || !http11 {
            return Reference::Reject("Transfer-Encoding");
        }
    }
    // httparse, as a second opinion, ends the head in the same place.
    let mut slots = [httparse::EMPTY_HEADER; 128];
    assert_eq!(
        httparse::Request::new(&mut slots).parse(input),
        Ok(httparse::Status::Complete(msg.head_len)),
        "httparse disagrees on a valid head"
    );
    let special = msg.headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("upgrade")
            || n.eq_ignore_ascii_case("expect")
            || (n.eq_ignore_ascii_case("content-type") && v.starts_with(b"application/grpc"))
    });
    if !http11 || te || special || !msg.target.starts_with('/') || msg.method == "CONNECT" {
        return Reference::Hyper;
    }
    Reference::Plain(Message { content_length, ..msg })
}

/// The headers of `m` that are the client's to the instance: not framing,
/// not Host, not hop-by-hop, not named by Connection, not forwarding.
fn end_to_end(m: &Message) -> Vec<(String, Vec<u8>)> {
    let named: Vec<String> = m.values("connection").flat_map(elements).collect();
    let hop = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ];
    let ours =
        ["host", "content-length", "transfer-encoding", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];
    m.headers
        .iter()
        .filter(|(n, _)| {
            !hop.iter().chain(&ours).any(|h| n.eq_ignore_ascii_case(h))
                && !named.iter().any(|c| n.eq_ignore_ascii_case(c))
        })
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect()
}

/// Runs one input through the fast path and checks it against the reference.
fn check(input: &[u8]) -> Result<(), TestCaseError> {
    // Every target routes to `echo`, unchanged, so targets compare as sent.
    let config = Config::parse("[[route]]\nservice = \"echo\"\npath_prefix = \"/\"\nstrip_prefix = false\n", "fuzz")
        .expect("valid");
    let peer: SocketAddr = "127.0.0.9:4000".parse().expect("an address");
    let want = reference(input);
    let text = || String::from_utf8_lossy(input).into_owned();
    match parse_request(input) {
        Parsed::Bad(why) => prop_assert!(
            matches!(want, Reference::Reject(_) | Reference::Incomplete),
            "refused ({why}) a valid request {:?}: {want:?}",
            text()
        ),
        Parsed::Partial => prop_assert!(
            matches!(want, Reference::Incomplete | Reference::Reject(_)),
            "waits on {:?}: {want:?}",
            text()
        ),
        Parsed::TooManyHeaders => prop_assert!(false, "at most 40 headers are generated"),
        Parsed::Hyper { .. } => prop_assert_eq!(want, Reference::Hyper, "handed {:?} to hyper", text()),
        Parsed::Complete(head) => {
            let Reference::Plain(msg) = want else {
                return Err(TestCaseError::fail(format!("forwarded {:?}: reference {want:?}", text())));
            };
            prop_assert_eq!(head.head_len, msg.head_len, "head end");
            prop_assert_eq!(head.content_length, msg.content_length, "body length");
            prop_assert_eq!(head.method.as_str(), msg.method.as_str());
            let Some(mut upstream) = super::upstream_head(input, &head, &config, peer, "127.0.0.1:1") else {
                return Err(TestCaseError::fail("every target routes"));
            };
            // What the instance gets: the gateway's head, then the body as the serve loop cuts it.
            let body_len = head.content_length.unwrap_or(0) as usize;
            let available = input.len() - head.head_len;
            let body = &input[head.head_len..head.head_len + body_len.min(available)];
            upstream.extend_from_slice(body);
            let Reference::Plain(sent) = reference(&upstream) else {
                return Err(TestCaseError::fail(format!(
                    "upstream bytes are not one plain request: {:?}",
                    String::from_utf8_lossy(&upstream)
                )));
            };
            prop_assert_eq!(&sent.target, &msg.target);
            prop_assert_eq!(&sent.method, &msg.method);
            prop_assert_eq!(sent.values("host").count(), 1);
            prop_assert_eq!(sent.content_length, msg.content_length, "the one framing header");
            prop_assert_eq!(sent.values("content-length").count(), usize::from(msg.content_length.is_some()));
            if body_len <= available {
                // Exactly one request: the head and its body, nothing after.
                prop_assert_eq!(sent.head_len + body_len, upstream.len(), "bytes after the request upstream");
            }
            prop_assert_eq!(end_to_end(&sent), end_to_end(&msg), "end-to-end headers");
            for forwarding in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
                prop_assert!(sent.values(forwarding).count() <= 1, "one {forwarding}");
            }
        }
    }
    Ok(())
}

const SMUGGLED: &str = "GET /secret HTTP/1.1\r\nHost: internal\r\n\r\n";

/// One header line, chosen to hit the framing rules often.
fn header() -> impl Strategy<Value = String> {
    let name = select(vec![
        "Host",
        "host",
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "transfer-encoding",
        "Connection",
        "X-Forwarded-For",
        "X-Forwarded-Host",
        "Upgrade",
        "Expect",
        "Content-Type",
        "Keep-Alive",
        "TE",
        "X-A",
        "x-b",
        "Content-Length ",
        "Host\t",
        "",
        "X A",
        "Content_Length",
    ]);
    let value = select(vec![
        "",
        "a",
        "t",
        "t:80",
        "[::1]:8080",
        "a/b",
        "a b",
        "0",
        "5",
        "40",
        "007",
        "+5",
        "-1",
        "5, 5",
        "5,",
        " 7 ",
        "0x5",
        "18446744073709551616",
        "99999",
        "chunked",
        "Chunked",
        "gzip, chunked",
        "chunked, gzip",
        "chunked, chunked",
        "identity",
        ",chunked",
        "chunked;q=1",
        "close",
        "keep-alive",
        "content-length",
        "transfer-encoding",
        "host, close",
        "Content-Length, x-a",
        "x-b",
        "websocket",
        "100-continue",
        "application/grpc",
        "text/plain",
        "10.0.0.1",
        "a\tb",
        "caf\u{e9}",
        "a\0b",
        "a\rb",
        "a\x7fb",
        "a\x01b",
    ]);
    let sep = select(vec![": ", ":", ":\t", " : ", ":  ", ": "]);
    let eol =
        select(vec!["\r\n", "\r\n", "\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\r\n folded\r\n", "\r\n\tfolded\r\n"]);
    (name, sep, value, eol).prop_map(|(n, s, v, e)| format!("{n}{s}{v}{e}"))
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let method = select(vec!["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT", "G@T", "get", ""]);
    let target = select(vec![
        "/echo/x",
        "/",
        "/a/b?x=1&y=2",
        "/a%2Fb",
        "/a%",
        "/a%zz",
        "/a#frag",
        "/caf\u{e9}",
        "/a b",
        "*",
        "http://a/x",
        "a:443",
        "/a?{x}|y",
        "/\x7f",
        "//",
        "/a?b=%41",
    ]);
    let version =
        select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 "]);
    let line_sep = select(vec![" ", " ", " ", "  ", "\t"]);
    let host = select(vec!["Host: t\r\n", "Host: t\r\n", "Host: t\r\n", "", "Host: t\r\nHost: u\r\n"]);
    let body = select(vec![
        String::new(),
        "hello".to_owned(),
        SMUGGLED.to_owned(),
        format!("0\r\n\r\n{SMUGGLED}"),
        format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
        format!("{SMUGGLED}{SMUGGLED}"),
    ]);
    let len_header = select(vec![
        None,
        None,
        Some("Content-Length: {len}\r\n"),
        Some("Content-Length: {len}\r\nConnection: content-length\r\n"),
    ]);
    let end = select(vec!["\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r\r\n"]);
    (method, line_sep, target, version, host, len_header, prop::collection::vec(header(), 0..6), end, body).prop_map(
        |(method, sp, target, version, host, len_header, headers, end, body)| {
            let mut out = format!("{method}{sp}{target}{sp}{version}\r\n{host}");
            if let Some(l) = len_header {
                out.push_str(&l.replace("{len}", &body.len().to_string()));
            }
            for h in headers {
                out.push_str(&h);
            }
            out.push_str(end);
            out.push_str(&body);
            out.into_bytes()
        },
    )
}

/// A request with up to three single-byte edits.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let byte =
        select(vec![b'\r', b'\n', 0, b'\t', b' ', b':', b',', b'+', b'-', b'%', b'#', 0x7f, 0xe9, b'a', b'0', b'5']);
    let edit = (0u8..3, any::<Index>(), byte);
    (request(), prop::collection::vec(edit, 0..4)).prop_map(|(mut bytes, edits)| {
        for (op, at, b) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes.insert(i, b),
                1 => {
                    bytes.remove(i);
                }
                _ => bytes[i] = b,
            }
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_the_fast_path_forwards_one_request_the_reference_agrees_with_or_refuses(input in mutated()) {
        check(&input)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    #[ignore = "a long campaign: cargo test -p roster-gateway --lib fuzz -- --ignored"]
    fn fuzz_campaign_the_fast_path_forwards_one_request_the_reference_agrees_with_or_refuses(input in mutated()) {
        check(&input)?;
    }
}

#[test]
fn the_reference_reads_what_the_rfc_says() {
    let plain = |s: &str| matches!(reference(s.as_bytes()), Reference::Plain(_));
    assert!(plain("GET /x HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!plain("GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"));
    assert!(!plain("GET /x HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n"));
    assert_eq!(reference(b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"), Reference::Hyper);
    assert_eq!(reference(b"GET /x HTTP/1.1\r\nHost: a\r\n"), Reference::Incomplete);
    assert!(check(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc").is_ok());
}
