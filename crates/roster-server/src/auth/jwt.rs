//! JWT tokens (`--auth-token jwt,...`), signed and checked as etcd does, so
//! that a token either server issues verifies on the other with the same key.
//!
//! - The header is `{"alg":"<method>","typ":"JWT"}` and the claims are
//!   `{"exp":<unix seconds>,"revision":<auth revision>,"username":"<user>"}`:
//!   the keys in Go's sorted map order, base64url without padding.
//! - A token is valid when its `alg` is the configured method, its
//!   signature verifies, `exp` (and `nbf`/`iat` when present) hold for now,
//!   and it names a user and a revision. Nothing is kept per token: a
//!   password change or a user delete does not end tokens already issued,
//!   as in etcd (the revision check still refuses them once auth changed).
//! - With only `pub-key`, the server verifies but cannot sign: Authenticate
//!   answers etcd's `auth: token signing attempted with verify-only key`.
//!
//! Crypto is ring's (already rustls's provider). Keys are PEM: RSA as
//! PKCS#1 or PKCS#8, EC as SEC1 or PKCS#8, Ed25519 as PKCS#8; public keys
//! as SubjectPublicKeyInfo (`openssl pkey -pubout`). HMAC methods take the
//! raw bytes of `priv-key` as the secret, as etcd does.

use super::AuthInfo;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use ring::{hmac, rsa};
use roster_tls::der_element as tlv;
use rustls_pki_types::pem::{PemObject, SectionKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// etcd's default JWT lifetime when `ttl=` is not given.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);

/// The options of `--auth-token jwt,...`, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtOptions {
    /// `sign-method`: RS256, RS384, RS512, PS256, PS384, PS512, ES256,
    /// ES384, HS256, HS384, HS512 or EdDSA.
    pub sign_method: String,
    /// `pub-key`: verifies tokens.
    pub pub_key: Option<PathBuf>,
    /// `priv-key`: signs tokens (and verifies them with its public half).
    pub priv_key: Option<PathBuf>,
    /// `ttl`: how long an issued token is valid.
    pub ttl: Duration,
}

/// Why a JWT configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    #[error(
        "unknown JWT sign-method {0:?}; use one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, HS256, HS384, HS512, EdDSA"
    )]
    UnknownMethod(String),
    #[error("JWT sign-method ES512 (P-521) is not supported; use ES256 or ES384")]
    Es512,
    #[error("JWT sign-method {0} needs a key: give pub-key=<file> to verify, priv-key=<file> to sign too")]
    MissingKey(&'static str),
    #[error("JWT sign-method {0} signs with a shared secret: give it as priv-key=<file>")]
    HmacNeedsPrivKey(&'static str),
    #[error("cannot read JWT key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("JWT key {path}: {why}")]
    BadKey { path: PathBuf, why: String },
    #[error("JWT keys {pub_key} and {priv_key} are not one key pair")]
    Mismatch { pub_key: PathBuf, priv_key: PathBuf },
}

#[derive(Clone, Copy)]
enum Family {
    Rsa(&'static dyn signature::RsaEncoding, &'static signature::RsaParameters),
    Ecdsa(&'static signature::EcdsaSigningAlgorithm, &'static signature::EcdsaVerificationAlgorithm),
    Ed25519,
    Hmac(hmac::Algorithm),
}

fn family(method: &str) -> Result<(&'static str, Family), JwtError> {
    use signature::*;
    Ok(match method {
        "RS256" => ("RS256", Family::Rsa(&RSA_PKCS1_SHA256, &RSA_PKCS1_2048_8192_SHA256)),
        "RS384" => ("RS384", Family::Rsa(&RSA_PKCS1_SHA384, &RSA_PKCS1_2048_8192_SHA384)),
        "RS512" => ("RS512", Family::Rsa(&RSA_PKCS1_SHA512, &RSA_PKCS1_2048_8192_SHA512)),
        "PS256" => ("PS256", Family::Rsa(&RSA_PSS_SHA256, &RSA_PSS_2048_8192_SHA256)),
        "PS384" => ("PS384", Family::Rsa(&RSA_PSS_SHA384, &RSA_PSS_2048_8192_SHA384)),
        "PS512" => ("PS512", Family::Rsa(&RSA_PSS_SHA512, &RSA_PSS_2048_8192_SHA512)),
        "ES256" => ("ES256", Family::Ecdsa(&ECDSA_P256_SHA256_FIXED_SIGNING, &ECDSA_P256_SHA256_FIXED)),
        "ES384" => ("ES384", Family::Ecdsa(&ECDSA_P384_SHA384_FIXED_SIGNING, &ECDSA_P384_SHA384_FIXED)),
        "ES512" => return Err(JwtError::Es512),
        "EdDSA" => ("EdDSA", Family::Ed25519),
        "HS256" => ("HS256", Family::Hmac(hmac::HMAC_SHA256)),
        "HS384" => ("HS384", Family::Hmac(hmac::HMAC_SHA384)),
        "HS512" => ("HS512", Family::Hmac(hmac::HMAC_SHA512)),
        other => return Err(JwtError::UnknownMethod(other.to_owned())),
    })
}

enum Signer {
    Rsa(rsa::KeyPair, &'static dyn signature::RsaEncoding),
    Ecdsa(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
    Hmac(hmac::Key),
}

enum Verifier {
    Public(signature::UnparsedPublicKey<Vec<u8>>),
    Hmac(hmac::Key),
}

/// A loaded JWT configuration: signs (unless verify-only) and verifies.
pub struct Jwt {
    options: JwtOptions,
    alg: &'static str,
    signer: Option<Signer>,
    verifier: Verifier,
    rng: SystemRandom,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("Jwt").field("options", &self.options).field("verify_only", &self.signer.is_none()).finish()
    }
}

impl PartialEq for Jwt {
    fn eq(&self, other: &Self) -> bool {
        self.options == other.options
    }
}

impl Eq for Jwt {}

/// Claims as etcd writes them, in Go's sorted key order.
#[derive(serde::Serialize)]
struct Claims<'a> {
    exp: i64,
    revision: u64,
    username: &'a str,
}

// === impl Jwt ===

impl Jwt {
    /// Reads and checks the keys now, so a bad file fails the start.
    pub fn load(options: JwtOptions) -> Result<Jwt, JwtError> {
        let (alg, fam) = family(&options.sign_method)?;
        let read = |p: &Path| std::fs::read(p).map_err(|source| JwtError::Read { path: p.to_owned(), source });
        let bad = |p: &Path, why: &str| JwtError::BadKey { path: p.to_owned(), why: why.to_owned() };
        if let Family::Hmac(h) = fam {
            let Some(p) = &options.priv_key else {
                return Err(JwtError::HmacNeedsPrivKey(alg));
            };
            let secret = read(p)?;
            if secret.is_empty() {
                return Err(bad(p, "the secret is empty"));
            }
            let key = hmac::Key::new(h, &secret);
            return Ok(Jwt {
                alg,
                signer: Some(Signer::Hmac(key.clone())),
                verifier: Verifier::Hmac(key),
                options,
                rng: SystemRandom::new(),
            });
        }
        let rng = SystemRandom::new();
        let signer = match &options.priv_key {
            None => None,
            Some(p) => Some(private_key(fam, &read(p)?, &rng).map_err(|why| bad(p, &why))?),
        };
        let given_pub = match &options.pub_key {
            None => None,
            Some(p) => Some(public_key(fam, &read(p)?).map_err(|why| bad(p, &why))?),
        };
        let signer_pub = signer.as_ref().map(|s| match s {
            Signer::Rsa(k, _) => k.public().as_ref().to_vec(),
            Signer::Ecdsa(k) => k.public_key().as_ref().to_vec(),
            Signer::Ed25519(k) => k.public_key().as_ref().to_vec(),
            Signer::Hmac(_) => unreachable!("HMAC keys returned above"),
        });
        let public = match (given_pub, signer_pub) {
            (None, None) => return Err(JwtError::MissingKey(alg)),
            (Some(p), None) | (None, Some(p)) => p,
            (Some(a), Some(b)) if a == b => a,
            (Some(_), Some(_)) => {
                return Err(JwtError::Mismatch {
                    pub_key: options.pub_key.clone().unwrap_or_default(),
                    priv_key: options.priv_key.clone().unwrap_or_default(),
                });
            }
        };
        let valg: &'static dyn signature::VerificationAlgorithm = match fam {
            Family::Rsa(_, v) => v,
            Family::Ecdsa(_, v) => v,
            Family::Ed25519 => &signature::ED25519,
            Family::Hmac(_) => unreachable!("HMAC keys returned above"),
        };
        Ok(Jwt {
            alg,
            signer,
            verifier: Verifier::Public(signature::UnparsedPublicKey::new(valg, public)),
            options,
            rng,
        })
    }

    pub fn options(&self) -> &JwtOptions {
        &self.options
    }

    /// A signed token for `info`, valid for the TTL; `None` when
    /// verify-only.
    pub(crate) fn issue(&self, info: &AuthInfo) -> Option<String> {
        let signer = self.signer.as_ref()?;
        let exp = (SystemTime::now() + self.options.ttl).duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.alg);
        let claims = Claims { exp, revision: info.revision, username: &info.user };
        let claims = serde_json::to_vec(&claims).ok()?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let sig = match signer {
            Signer::Rsa(k, enc) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(*enc, &self.rng, token.as_bytes(), &mut sig).ok()?;
                sig
            }
            Signer::Ecdsa(k) => k.sign(&self.rng, token.as_bytes()).ok()?.as_ref().to_vec(),
            Signer::Ed25519(k) => k.sign(token.as_bytes()).as_ref().to_vec(),
            Signer::Hmac(k) => hmac::sign(k, token.as_bytes()).as_ref().to_vec(),
        };
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Some(token)
    }

    /// The user and revision of a valid token; `None` for any flaw.
    pub(crate) fn info(&self, token: &str) -> Option<AuthInfo> {
        self.info_at(token, SystemTime::now())
    }

    fn info_at(&self, token: &str, now: SystemTime) -> Option<AuthInfo> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header.get("alg")?.as_str()? != self.alg {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
        let signed = &token.as_bytes()[..h.len() + 1 + c.len()];
        let ok = match &self.verifier {
            Verifier::Public(k) => k.verify(signed, &sig).is_ok(),
            Verifier::Hmac(k) => hmac::verify(k, signed, &sig).is_ok(),
        };
        if !ok {
            return None;
        }
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as f64;
        // Go's jwt MapClaims: valid before exp, from nbf and iat on.
        let time = |name: &str| claims.get(name).map(serde_json::Value::as_f64);
        match time("exp") {
            Some(Some(exp)) if now >= exp => return None,
            Some(None) => return None,
            _ => {}
        }
        for name in ["nbf", "iat"] {
            match time(name) {
                Some(Some(t)) if now < t => return None,
                Some(None) => return None,
                _ => {}
            }
        }
        let user = claims.get("username")?.as_str()?.to_owned();
        let revision = claims.get("revision")?.as_f64()?;
        if revision < 0.0 {
            return None;
        }
        Some(AuthInfo { user, revision: revision as u64 })
    }
}

/// A signing key for `fam` from a PEM file's bytes.
fn private_key(fam: Family, pem: &[u8], rng: &SystemRandom) -> Result<Signer, String> {
    let (kind, der) = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .find_map(|s| s.ok().filter(|(k, _)| *k != SectionKind::Certificate))
        .ok_or("no PEM private key in the file")?;
    let rejected = |e: ring::error::KeyRejected| format!("key rejected: {e}");
    match (fam, kind) {
        (Family::Rsa(enc, _), SectionKind::RsaPrivateKey) => {
            Ok(Signer::Rsa(rsa::KeyPair::from_der(&der).map_err(rejected)?, enc))
        }
        (Family::Rsa(enc, _), SectionKind::PrivateKey) => {
            Ok(Signer::Rsa(rsa::KeyPair::from_pkcs8(&der).map_err(rejected)?, enc))
        }
        (Family::Ecdsa(alg, _), SectionKind::PrivateKey) => {
            Ok(Signer::Ecdsa(signature::EcdsaKeyPair::from_pkcs8(alg, &der, rng).map_err(rejected)?))
        }
        (Family::Ecdsa(alg, _), SectionKind::EcPrivateKey) => {
            let (private, public) = sec1(&der).ok_or("not a SEC1 EC private key")?;
            let public = public
                .ok_or("the SEC1 key does not carry its public key; convert it with `openssl pkcs8 -topk8 -nocrypt`")?;
            Ok(Signer::Ecdsa(
                signature::EcdsaKeyPair::from_private_key_and_public_key(alg, private, public, rng)
                    .map_err(rejected)?,
            ))
        }
        (Family::Ed25519, SectionKind::PrivateKey) => {
            Ok(Signer::Ed25519(signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(rejected)?))
        }
        (fam, kind) => Err(format!("a {} PEM block is not a {} private key", section_name(kind), family_name(fam))),
    }
}

/// The public key bytes ring verifies with, from a PEM
/// SubjectPublicKeyInfo, checked to be of `fam`'s type.
fn public_key(fam: Family, pem: &[u8]) -> Result<Vec<u8>, String> {
    let der = <(SectionKind, Vec<u8>)>::pem_slice_iter(pem)
        .find_map(|s| s.ok().filter(|(k, _)| *k == SectionKind::PublicKey))
        .map(|(_, d)| d)
        .ok_or("no PUBLIC KEY PEM block in the file (make one with `openssl pkey -pubout`)")?;
    let (alg, key) = spki(&der).ok_or("not a DER SubjectPublicKeyInfo")?;
    // OIDs: rsaEncryption, id-ecPublicKey with P-256 / P-384, Ed25519.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let ok = match fam {
        Family::Rsa(..) => alg.0 == RSA,
        Family::Ecdsa(a, _) => {
            let curve = if std::ptr::eq(a, &signature::ECDSA_P256_SHA256_FIXED_SIGNING) { P256 } else { P384 };
            alg.0 == EC && alg.1 == Some(curve)
        }
        Family::Ed25519 => alg.0 == ED25519,
        Family::Hmac(_) => false,
    };
    if !ok {
        return Err(format!("the public key is not a {} key", family_name(fam)));
    }
    Ok(key.to_vec())
}

fn family_name(fam: Family) -> &'static str {
    match fam {
        Family::Rsa(..) => "RSA",
        Family::Ecdsa(a, _) if std::ptr::eq(a, &signature::ECDSA_P256_SHA256_FIXED_SIGNING) => "P-256 EC",
        Family::Ecdsa(..) => "P-384 EC",
        Family::Ed25519 => "Ed25519",
        Family::Hmac(_) => "HMAC",
    }
}

fn section_name(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::PublicKey => "PUBLIC KEY",
        _ => "non-key",
    }
}

// === the two DER structures ring does not parse, read with roster-tls's element reader ===

/// SubjectPublicKeyInfo: ((algorithm OID, parameter OID), key bits).
#[allow(clippy::type_complexity)]
fn spki(der: &[u8]) -> Option<((&[u8], Option<&[u8]>), &[u8])> {
    let (0x30, body, _) = tlv(der)? else {
        return None;
    };
    let (0x30, alg, rest) = tlv(body)? else {
        return None;
    };
    let (0x03, bits, _) = tlv(rest)? else {
        return None;
    };
    let (0x06, oid, params) = tlv(alg)? else {
        return None;
    };
    let param = match tlv(params) {
        Some((0x06, p, _)) => Some(p),
        _ => None,
    };
    let (&0, key) = bits.split_first()? else {
        return None;
    };
    Some(((oid, param), key))
}

/// SEC1 ECPrivateKey: (private scalar, public point if present).
fn sec1(der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (0x30, body, _) = tlv(der)? else {
        return None;
    };
    let (0x02, _version, rest) = tlv(body)? else {
        return None;
    };
    let (0x04, private, mut rest) = tlv(rest)? else {
        return None;
    };
    let mut public = None;
    while let Some((tag, inner, next)) = tlv(rest) {
        if let (0xa1, Some((0x03, bits, _))) = (tag, tlv(inner)) {
            public = bits.split_first().filter(|(u, _)| **u == 0).map(|(_, k)| k);
        }
        rest = next;
    }
    Some((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(secret: &[u8], ttl: Duration) -> (Jwt, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, secret).unwrap();
        let jwt = Jwt::load(JwtOptions { sign_method: "HS256".into(), pub_key: None, priv_key: Some(p), ttl }).unwrap();
        (jwt, dir)
    }

    fn alice() -> AuthInfo {
        AuthInfo { user: "alice".into(), revision: 7 }
    }

    #[test]
    fn a_token_carries_etcds_header_and_claims_and_verifies() {
        let (jwt, _d) = hs(b"s3cret", Duration::from_secs(60));
        let t = jwt.issue(&alice()).unwrap();
        let parts: Vec<_> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = URL_SAFE_NO_PAD.decode(parts[0]).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert!(claims.starts_with(r#"{"exp":"#), "{claims}");
        assert!(claims.ends_with(r#","revision":7,"username":"alice"}"#), "{claims}");
        assert_eq!(jwt.info(&t), Some(alice()));
    }

    #[test]
    fn expired_forged_and_malformed_tokens_are_refused() {
        let (jwt, _d) = hs(b"s3cret", Duration::from_secs(60));
        let t = jwt.issue(&alice()).unwrap();
        assert_eq!(jwt.info_at(&t, SystemTime::now() + Duration::from_secs(61)), None);
        let (other, _d2) = hs(b"other", Duration::from_secs(60));
        assert_eq!(other.info(&t), None, "another secret's token");
        let mut forged = t.clone();
        forged.pop();
        forged.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(jwt.info(&forged), None);
        for bad in ["", "a.b", "a.b.c", "a.b.c.d", &format!("{t}.x")] {
            assert_eq!(jwt.info(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_token_of_another_alg_is_refused_even_with_the_same_secret() {
        let (jwt, d) = hs(b"s3cret", Duration::from_secs(60));
        let hs384 = Jwt::load(JwtOptions {
            sign_method: "HS384".into(),
            pub_key: None,
            priv_key: Some(d.path().join("secret")),
            ttl: Duration::from_secs(60),
        })
        .unwrap();
        assert_eq!(hs384.info(&jwt.issue(&alice()).unwrap()), None);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let load = |m: &str, pubk: Option<&str>, privk: Option<&str>| {
            Jwt::load(JwtOptions {
                sign_method: m.into(),
                pub_key: pubk.map(PathBuf::from),
                priv_key: privk.map(PathBuf::from),
                ttl: DEFAULT_JWT_TTL,
            })
            .unwrap_err()
            .to_string()
        };
        assert!(load("RS1", None, None).contains("unknown JWT sign-method \"RS1\""));
        assert!(load("ES512", None, None).contains("ES512 (P-521) is not supported"));
        assert!(load("RS256", None, None).contains("needs a key"));
        assert!(load("HS256", Some("/x"), None).contains("give it as priv-key"));
        let e = load("RS256", None, Some("/nonexistent/k.pem"));
        assert!(e.contains("cannot read JWT key /nonexistent/k.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.pem");
        std::fs::write(&p, "not pem").unwrap();
        let e = load("ES256", p.to_str(), None);
        assert!(e.contains("no PUBLIC KEY PEM block"), "{e}");
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
    }

    #[test]
    fn eddsa_signs_and_a_server_with_only_the_public_key_verifies() {
        let rng = SystemRandom::new();
        let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let public = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap().public_key().as_ref().to_vec();
        // SubjectPublicKeyInfo { id-Ed25519, BIT STRING key }.
        let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        spki.extend_from_slice(&public);
        let dir = tempfile::tempdir().unwrap();
        let (k, p) = (dir.path().join("ed.key"), dir.path().join("ed.pub"));
        std::fs::write(&k, pem("PRIVATE KEY", pkcs8.as_ref())).unwrap();
        std::fs::write(&p, pem("PUBLIC KEY", &spki)).unwrap();
        let opts = |pubk: Option<&Path>, privk: Option<&Path>| JwtOptions {
            sign_method: "EdDSA".into(),
            pub_key: pubk.map(Path::to_owned),
            priv_key: privk.map(Path::to_owned),
            ttl: DEFAULT_JWT_TTL,
        };
        let signer = Jwt::load(opts(Some(&p), Some(&k))).unwrap();
        let token = signer.issue(&alice()).unwrap();
        assert_eq!(segment_alg(&token), "EdDSA");
        let verifier = Jwt::load(opts(Some(&p), None)).unwrap();
        assert_eq!(verifier.info(&token), Some(alice()));
        assert_eq!(verifier.issue(&alice()), None, "verify-only");
        // A public key of another type is refused at load.
        let e = Jwt::load(JwtOptions { sign_method: "ES256".into(), ..opts(Some(&p), None) }).unwrap_err().to_string();
        assert!(e.contains("is not a P-256 EC key"), "{e}");
        // A private key that is not the public key's pair is refused.
        let other = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let k2 = dir.path().join("other.key");
        std::fs::write(&k2, pem("PRIVATE KEY", other.as_ref())).unwrap();
        let e = Jwt::load(opts(Some(&p), Some(&k2))).unwrap_err().to_string();
        assert!(e.contains("are not one key pair"), "{e}");
    }

    fn segment_alg(token: &str) -> String {
        let h = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&h).unwrap();
        v["alg"].as_str().unwrap().to_owned()
    }

    #[test]
    fn der_reader_refuses_truncated_input() {
        assert_eq!(tlv(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(tlv(&[0x30, 0x81, 2, 1, 2]), Some((0x30, &[1u8, 2][..], &[][..])));
        assert_eq!(spki(&[0x30, 0x00]), None);
        assert_eq!(sec1(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
