//! The subject common name of an X.509 certificate, read straight from its
//! DER: only the few elements on the way to the subject are decoded, and
//! any malformed input gives `None`, never a panic.
//!
//! ```text
//! Certificate    ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
//! TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature,
//!                               issuer, validity, subject, ... }
//! Name           ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
//! ```

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// One DER element: tag, contents, and what follows it. Lengths are
/// checked against the input; `None` for anything malformed or over 4 GiB.
/// Also the JWT key reader's (roster-server), so DER is read one way.
pub fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, body, rest) = der_element(input)?;
    (t == tag).then_some((body, rest))
}

/// The subject CN of a DER certificate; with several, the last, as Go's
/// `pkix.Name` (and so etcd) takes it. `None` when there is none, when it is
/// not a string type, or when the DER is malformed.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = der_element(rest)?.2;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        rest = der_element(rest)?.2;
    }
    let (mut rdns, _) = expect(rest, SEQUENCE)?;
    let mut found = None;
    while !rdns.is_empty() {
        let (mut set, next) = expect(rdns, SET)?;
        rdns = next;
        while !set.is_empty() {
            let (atv, next) = expect(set, SEQUENCE)?;
            set = next;
            let (oid, value) = expect(atv, OID)?;
            if oid == CN_OID {
                let (tag, text, _) = der_element(value)?;
                found = string_value(tag, text).or(found);
            }
        }
    }
    found
}

/// The string types a CN comes in: UTF8String, PrintableString,
/// IA5String, T61String (taken as Latin-1) and BMPString (UTF-16BE).
fn string_value(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => std::str::from_utf8(bytes).ok().map(str::to_owned),
        0x14 => Some(bytes.iter().map(|&b| b as char).collect()),
        0x1e if bytes.len().is_multiple_of(2) => {
            let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal certificate shape around `subject` (the other fields are
    /// empty elements: only the structure matters here).
    fn cert_with_subject(subject: &[u8]) -> Vec<u8> {
        let mut tbs = vec![0xa0, 0x03, 0x02, 0x01, 0x02]; // [0] { INTEGER 2 }
        tbs.extend([0x02, 0x01, 0x01]); // serial
        tbs.extend([0x30, 0x00]); // signature alg
        tbs.extend([0x30, 0x00]); // issuer
        tbs.extend([0x30, 0x00]); // validity
        tbs.extend(subject);
        let tbs = wrap(SEQUENCE, &tbs);
        let mut cert = tbs;
        cert.extend([0x30, 0x00, 0x03, 0x01, 0x00]);
        wrap(SEQUENCE, &cert)
    }

    fn wrap(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        if body.len() < 0x80 {
            out.push(body.len() as u8);
        } else {
            out.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
        }
        out.extend(body);
        out
    }

    fn rdn(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut atv = wrap(OID, oid);
        atv.extend(wrap(tag, value));
        wrap(SET, &wrap(SEQUENCE, &atv))
    }

    #[test]
    fn common_name_is_found_among_other_attributes() {
        let mut name = rdn(&[0x55, 0x04, 0x0a], 0x0c, b"Acme"); // O
        name.extend(rdn(CN_OID, 0x0c, b"alice"));
        assert_eq!(common_name(&cert_with_subject(&wrap(SEQUENCE, &name))).as_deref(), Some("alice"));
    }

    #[test]
    fn last_common_name_wins_as_in_go() {
        let mut name = rdn(CN_OID, 0x13, b"first");
        name.extend(rdn(CN_OID, 0x0c, b"second"));
        assert_eq!(common_name(&cert_with_subject(&wrap(SEQUENCE, &name))).as_deref(), Some("second"));
    }

    #[test]
    fn no_common_name_is_none() {
        let name = rdn(&[0x55, 0x04, 0x0a], 0x0c, b"Acme");
        assert_eq!(common_name(&cert_with_subject(&wrap(SEQUENCE, &name))), None);
    }

    #[test]
    fn bmp_string_common_name_decodes() {
        let name = rdn(CN_OID, 0x1e, &[0x00, b'b', 0x00, b'o', 0x00, b'b']);
        assert_eq!(common_name(&cert_with_subject(&wrap(SEQUENCE, &name))).as_deref(), Some("bob"));
    }

    /// A certificate made by the real openssl, with the CN after other
    /// attributes and a v3 extension block after the subject.
    #[test]
    fn openssl_certificate_common_name() {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let run = std::process::Command::new("openssl")
            .current_dir(dir.path())
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
            .args(["-keyout", "k.pem", "-out", "c.pem", "-days", "1", "-subj", "/C=DE/O=Acme/CN=alice"])
            .output();
        let Ok(out) = run else {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "openssl missing under CI=true");
            eprintln!("!!! SKIPPED: openssl not installed !!!");
            return;
        };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let der = rustls::pki_types::CertificateDer::from_pem_file(dir.path().join("c.pem")).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
    }

    #[test]
    fn malformed_der_never_panics() {
        let mut name = rdn(&[0x55, 0x04, 0x0a], 0x0c, b"Acme");
        name.extend(rdn(CN_OID, 0x0c, b"alice"));
        let good = cert_with_subject(&wrap(SEQUENCE, &name));
        // Every truncation and every single-byte corruption.
        for cut in 0..good.len() {
            let _ = common_name(&good[..cut]);
        }
        for i in 0..good.len() {
            for b in [0x00, 0x7f, 0x80, 0x84, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = common_name(&bad);
            }
        }
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
