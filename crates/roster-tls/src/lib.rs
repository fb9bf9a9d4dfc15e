//! Server-side TLS for Roster's listeners (`roster serve`'s gRPC and HTTP
//! ports, the gateway), on rustls with the ring provider (aws-lc would need
//! cmake to build).
//!
//! - [`TlsFiles`]: the options as given (flags or a config file's
//!   `[tls]`), checked once by [`TlsFiles::server_tls`].
//! - [`ServerTls`]: the files (`--cert-file`, `--key-file`,
//!   `--trusted-ca-file`) and `--client-cert-auth`, turned into a rustls
//!   `ServerConfig` by [`ServerTls::server_config`].
//! - `reload`: the certificate resolver. Every handshake stats the
//!   certificate and key files (two `stat`s); when either changed it loads
//!   them again, so a renewed certificate is served on the next handshake
//!   without a restart, as etcd does. A file that does not load (half
//!   written, or a key that does not match) keeps the previous pair in
//!   service, with a warning. The client-certificate verifier follows
//!   `--trusted-ca-file` the same way (one `stat` per handshake).
//! - [`TlsIncoming`]: accepts on a `TcpListener` and runs each handshake in
//!   its own task, bounded in time and in number, so a client that never
//!   finishes its handshake holds up nobody. A plaintext client fails its
//!   handshake and is closed.
//! - [`common_name`]: the subject CN of a client certificate, which etcd
//!   takes as the user name under `--client-cert-auth`.

mod cn;
mod incoming;
mod reload;

pub use cn::{common_name, der_element};
pub use incoming::{HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES, Peer, TlsIncoming};
pub use tokio_rustls::server::TlsStream;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors loading TLS files or building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {what} {path}: {reason}")]
    File { what: &'static str, path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
}

/// TLS settings of one listener, with etcd's flag names. Holds paths only,
/// never key material, so its `Debug` is safe to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// `--cert-file`: the server certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// `--key-file`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// `--trusted-ca-file`: CAs whose client certificates are accepted.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: refuse clients without a certificate signed by
    /// a trusted CA.
    pub client_cert_auth: bool,
    /// ALPN protocols offered, most preferred first (empty: none).
    pub alpn: Vec<Vec<u8>>,
}

// === impl ServerTls ===

impl ServerTls {
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        ServerTls {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            trusted_ca_file: None,
            client_cert_auth: false,
            alpn: Vec::new(),
        }
    }

    /// Checks the files load and builds the rustls configuration, with a
    /// resolver that reloads the certificate when its files change.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("TLS protocol versions: {e}")))?;
        let builder = match (&self.trusted_ca_file, self.client_cert_auth) {
            (None, true) => {
                return Err(TlsError::Config(
                    "--client-cert-auth needs --trusted-ca-file: the CA that signs client certificates".into(),
                ));
            }
            (Some(ca), true) => {
                let verifier = reload::ReloadingRoots::load(ca.clone(), provider.clone())?;
                builder.with_client_cert_verifier(Arc::new(verifier))
            }
            // As etcd: without --client-cert-auth, client certificates are
            // not asked for, trusted CA or not.
            (_, false) => builder.with_no_client_auth(),
        };
        let resolver = reload::ReloadingCert::load(self.cert_file.clone(), self.key_file.clone(), provider)?;
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }
}

/// The TLS options of one listener as a user gives them: flags (the CLI
/// flattens its own clap struct into this) or a config file's `[tls]`
/// table. [`TlsFiles::server_tls`] is the one place that checks them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// `cert_file` / `--cert-file`.
    pub cert_file: Option<PathBuf>,
    /// `key_file` / `--key-file`.
    pub key_file: Option<PathBuf>,
    /// `trusted_ca_file` / `--trusted-ca-file`.
    pub trusted_ca_file: Option<PathBuf>,
    /// `client_cert_auth` / `--client-cert-auth`.
    #[serde(default)]
    pub client_cert_auth: bool,
}

// === impl TlsFiles ===

impl TlsFiles {
    /// Whether any option is set.
    pub fn is_empty(&self) -> bool {
        *self == TlsFiles::default()
    }

    /// The listener's TLS, or `None` when no certificate is given; a
    /// contradiction (a key without its certificate, client certificates
    /// without a CA, a CA without TLS) is an error that names the fix.
    /// `names` are the spellings for messages: `"--cert-file"` style for
    /// flags, `"cert_file"` for a file.
    pub fn server_tls(&self, names: TlsNames) -> Result<Option<ServerTls>, TlsError> {
        let missing = |have: &str, need: &str| Err(TlsError::Config(format!("{have} needs {need}")));
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return missing(names.cert_file, names.key_file),
            (None, Some(_)) => return missing(names.key_file, names.cert_file),
            (None, None) if self.trusted_ca_file.is_some() => {
                return missing(names.trusted_ca_file, names.cert_file);
            }
            (None, None) if self.client_cert_auth => return missing(names.client_cert_auth, names.cert_file),
            _ => {}
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return missing(names.client_cert_auth, names.trusted_ca_file);
        }
        Ok(self.cert_file.as_ref().zip(self.key_file.as_ref()).map(|(c, k)| ServerTls {
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            ..ServerTls::new(c, k)
        }))
    }
}

/// How the options of [`TlsFiles`] are spelled where they came from.
#[derive(Debug, Clone, Copy)]
pub struct TlsNames {
    pub cert_file: &'static str,
    pub key_file: &'static str,
    pub trusted_ca_file: &'static str,
    pub client_cert_auth: &'static str,
}

impl TlsNames {
    /// etcd's flag names.
    pub const FLAGS: TlsNames = TlsNames {
        cert_file: "--cert-file",
        key_file: "--key-file",
        trusted_ca_file: "--trusted-ca-file",
        client_cert_auth: "--client-cert-auth",
    };

    /// A config file's `[tls]` keys.
    pub const FILE: TlsNames = TlsNames {
        cert_file: "[tls] cert_file",
        key_file: "[tls] key_file",
        trusted_ca_file: "[tls] trusted_ca_file",
        client_cert_auth: "[tls] client_cert_auth",
    };
}

/// The certificates in a PEM file.
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File { what, path: path.to_owned(), reason };
    let pem = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err("no certificate (PEM \"BEGIN CERTIFICATE\") in it".into()));
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path, "--trusted-ca-file")? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "--trusted-ca-file",
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_checked_in_one_place_with_the_callers_names() {
        let files = |c: Option<&str>, k: Option<&str>, ca: Option<&str>, auth| TlsFiles {
            cert_file: c.map(PathBuf::from),
            key_file: k.map(PathBuf::from),
            trusted_ca_file: ca.map(PathBuf::from),
            client_cert_auth: auth,
        };
        assert_eq!(TlsFiles::default().server_tls(TlsNames::FLAGS).unwrap(), None);
        let t = files(Some("c"), Some("k"), Some("ca"), true).server_tls(TlsNames::FLAGS).unwrap().unwrap();
        assert_eq!((t.cert_file, t.key_file), (PathBuf::from("c"), PathBuf::from("k")));
        assert_eq!((t.trusted_ca_file, t.client_cert_auth), (Some(PathBuf::from("ca")), true));
        let err = |f: TlsFiles, n| f.server_tls(n).unwrap_err().to_string();
        assert_eq!(err(files(Some("c"), None, None, false), TlsNames::FLAGS), "--cert-file needs --key-file");
        assert_eq!(err(files(None, Some("k"), None, false), TlsNames::FILE), "[tls] key_file needs [tls] cert_file");
        assert_eq!(err(files(None, None, Some("ca"), false), TlsNames::FLAGS), "--trusted-ca-file needs --cert-file");
        assert_eq!(
            err(files(Some("c"), Some("k"), None, true), TlsNames::FILE),
            "[tls] client_cert_auth needs [tls] trusted_ca_file"
        );
    }
}
