//! The TLS flags of a listener, with etcd's names, shared by `roster serve`
//! (its gRPC listener) and `roster gateway`. They fill a
//! [`roster_tls::TlsFiles`], which checks them in one place, the same as a
//! config file's `[tls]` table.

use std::path::PathBuf;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Server certificate (PEM, leaf first). Read again on the next
    /// handshake whenever the file changes.
    #[arg(long, value_name = "FILE", requires = "key_file", help_heading = "TLS")]
    pub cert_file: Option<PathBuf>,

    /// Private key (PEM) of --cert-file; reloaded with it.
    #[arg(long, value_name = "FILE", requires = "cert_file", help_heading = "TLS")]
    pub key_file: Option<PathBuf>,

    /// CA certificates (PEM) that sign the client certificates accepted
    /// with --client-cert-auth. Read again on the next handshake whenever
    /// the file changes.
    #[arg(long, value_name = "FILE", requires = "cert_file", help_heading = "TLS")]
    pub trusted_ca_file: Option<PathBuf>,

    /// Require every client to present a certificate signed by
    /// --trusted-ca-file. On `roster serve` with auth enabled, the
    /// certificate's CN is the user name of requests that carry no token,
    /// as in etcd.
    #[arg(long, requires = "trusted_ca_file", help_heading = "TLS")]
    pub client_cert_auth: bool,
}

impl TlsArgs {
    pub fn files(&self) -> roster_tls::TlsFiles {
        roster_tls::TlsFiles {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
        }
    }

    /// The listener's TLS from these flags, `None` without --cert-file.
    pub fn server_tls(&self) -> anyhow::Result<Option<roster_tls::ServerTls>> {
        Ok(self.files().server_tls(roster_tls::TlsNames::FLAGS)?)
    }
}
