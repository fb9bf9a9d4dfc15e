//! Server-side TLS for Roster's listeners (`roster serve`'s gRPC and HTTP
//! ports, the gateway), on rustls with the ring provider (aws-lc would need
//! cmake to build).
//!
//! - [`ServerTls`]: the files (`--cert-file`, `--key-file`,
//!   `--trusted-ca-file`) and `--client-cert-auth`, turned into a rustls
//!   `ServerConfig` by [`ServerTls::server_config`].
//! - `reload`: the certificate resolver. Every handshake stats the
//!   certificate and key files (two `stat`s); when either changed it loads
//!   them again, so a renewed certificate is served on the next handshake
//!   without a restart, as etcd does. A file that does not load (half
//!   written, or a key that does not match) keeps the previous pair in
//!   service, with a warning.
//! - [`TlsIncoming`]: accepts on a `TcpListener` and runs each handshake in
//!   its own task, bounded in time and in number, so a client that never
//!   finishes its handshake holds up nobody. A plaintext client fails its
//!   handshake and is closed.
//! - [`common_name`]: the subject CN of a client certificate, which etcd
//!   takes as the user name under `--client-cert-auth`.

mod cn;
mod incoming;
mod reload;

pub use cn::common_name;
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
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
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
                let roots = Arc::new(load_roots(ca)?);
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots,
                    provider.clone(),
                )
                .build()
                .map_err(|e| {
                    TlsError::Config(format!(
                        "client certificate verifier from {}: {e}",
                        ca.display()
                    ))
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            // As etcd: without --client-cert-auth, client certificates are
            // not asked for, trusted CA or not.
            (_, false) => builder.with_no_client_auth(),
        };
        let resolver =
            reload::ReloadingCert::load(self.cert_file.clone(), self.key_file.clone(), provider)?;
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }
}

/// The certificates in a PEM file.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(
            "no certificate (PEM \"BEGIN CERTIFICATE\") in it".into(),
        ));
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
