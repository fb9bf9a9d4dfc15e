//! A certificate resolver and a client-certificate verifier that follow
//! their files on disk.

use crate::{TlsError, load_certs};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What a file looked like when it was last read: enough to notice a
/// rewrite (mtime, size) or a rename over it (inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some(Stamp { modified: m.modified().ok(), len: m.len(), ino })
}

/// A value built from files, built again on the first use after any of
/// them changes. A std mutex held only to compare stamps and, rarely, to
/// rebuild: handshakes are synchronous here, and a rebuild must not run
/// twice at once. Stamps are taken even when the rebuild fails, so a
/// broken file is reported once, not on every handshake; the next change
/// is tried again.
struct Reloading<T> {
    files: Vec<PathBuf>,
    current: Mutex<(Vec<Option<Stamp>>, T)>,
}

impl<T: Clone> Reloading<T> {
    fn new(files: Vec<PathBuf>, build: impl FnOnce() -> Result<T, TlsError>) -> Result<Self, TlsError> {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let value = build()?;
        Ok(Reloading { files, current: Mutex::new((stamps, value)) })
    }

    /// The value in service, rebuilt first if a file changed; `changed`
    /// hears how a rebuild went (a failed one keeps the previous value).
    fn get(&self, build: impl FnOnce() -> Result<T, TlsError>, changed: impl FnOnce(Result<(), &TlsError>)) -> T {
        let now: Vec<_> = self.files.iter().map(|f| stamp(f)).collect();
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.0 == now {
            return cur.1.clone();
        }
        cur.0 = now;
        match build() {
            Ok(v) => {
                changed(Ok(()));
                cur.1 = v;
            }
            Err(e) => changed(Err(&e)),
        }
        cur.1.clone()
    }

    /// The value in service, without looking at the files.
    fn last(&self) -> T {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).1.clone()
    }
}

pub(crate) struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Reloading<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ReloadingCert").field("cert_file", &self.cert_file).field("key_file", &self.key_file).finish()
    }
}

// === impl ReloadingCert ===

impl ReloadingCert {
    pub(crate) fn load(cert_file: PathBuf, key_file: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let current =
            Reloading::new(vec![cert_file.clone(), key_file.clone()], || read_pair(&cert_file, &key_file, &provider))?;
        Ok(ReloadingCert { cert_file, key_file, provider, current })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.get(
            || read_pair(&self.cert_file, &self.key_file, &self.provider),
            |outcome| match outcome {
                Ok(()) => tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate changed on disk; serving the new one"),
                Err(e) => tracing::warn!(error = %e, "TLS certificate changed on disk but does not load; still serving the previous one"),
            },
        )
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read_pair(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs(cert_file, "--cert-file")?;
    let key_err = |reason: String| TlsError::File { what: "--key-file", path: key_file.to_owned(), reason };
    // The error text of a key parser may quote the key: keep only its kind.
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(e) => key_err(e.to_string()),
        rustls::pki_types::pem::Error::NoItemsFound => {
            key_err("no private key (PEM \"BEGIN PRIVATE KEY\") in it".into())
        }
        _ => key_err("not a PEM private key".into()),
    })?;
    let pair = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsError::Config(format!("{} and {} do not make a usable pair: {e}", cert_file.display(), key_file.display()))
    })?;
    Ok(Arc::new(pair))
}

/// A client-certificate verifier that follows `--trusted-ca-file` on disk:
/// each handshake stats the file, and a changed one is read again, so a CA
/// rotated on disk takes effect on the next handshake, as a renewed
/// certificate does. A file that does not load keeps the previous CAs.
pub(crate) struct ReloadingRoots {
    ca_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Reloading<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ReloadingRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingRoots").field("ca_file", &self.ca_file).finish()
    }
}

fn verifier(
    ca_file: &std::path::Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(crate::load_roots(ca_file)?);
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Config(format!("client certificate verifier from {}: {e}", ca_file.display())))
}

// === impl ReloadingRoots ===

impl ReloadingRoots {
    pub(crate) fn load(ca_file: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let current = Reloading::new(vec![ca_file.clone()], || verifier(&ca_file, &provider))?;
        Ok(ReloadingRoots { ca_file, provider, current })
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.current.get(
            || verifier(&self.ca_file, &self.provider),
            |outcome| match outcome {
                Ok(()) => tracing::info!(ca_file = %self.ca_file.display(), "trusted CA file changed on disk; verifying client certificates with it"),
                Err(e) => tracing::warn!(error = %e, "trusted CA file changed on disk but does not load; still using the previous CAs"),
            },
        )
    }
}

impl ClientCertVerifier for ReloadingRoots {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: they would have to outlive a reload. Clients then offer
    /// the certificate they have, as etcd's and Roster's do anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let cur = self.current.last();
        cur.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let cur = self.current.last();
        cur.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
