//! Test certificates made with the `openssl` command: a CA, and server and
//! client certificates it signs, as an operator would make them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed CA in a directory, able to issue certificates.
#[derive(Debug, Clone)]
pub struct TestCa {
    dir: PathBuf,
    name: String,
    /// The CA certificate, for `--trusted-ca-file` / `--cacert`.
    pub cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An EC P-256 key in `path` (PKCS#8 PEM).
fn new_key(dir: &Path, path: &str) {
    openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path]);
}

impl TestCa {
    /// A new CA called `name` (its CN), with files `name-ca.pem` and
    /// `name-ca.key` in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let (cert, key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
        new_key(dir, &key);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key,
                "-out",
                &cert,
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}-ca"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        TestCa { dir: dir.to_owned(), name: name.to_owned(), cert: dir.join(cert), key: dir.join(key) }
    }

    /// A server certificate for 127.0.0.1 and localhost, CN `cn`, in files
    /// named after `file`.
    pub fn server(&self, file: &str, cn: &str) -> Pair {
        self.issue(file, cn, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    }

    /// A client certificate with CN `cn` (the user name under
    /// `--client-cert-auth`).
    pub fn client(&self, file: &str, cn: &str) -> Pair {
        self.issue(file, cn, "extendedKeyUsage=clientAuth\n")
    }

    fn issue(&self, file: &str, cn: &str, ext: &str) -> Pair {
        let (cert, key, csr, extfile) =
            (format!("{file}.pem"), format!("{file}.key"), format!("{file}.csr"), format!("{file}.ext"));
        new_key(&self.dir, &key);
        openssl(&self.dir, &["req", "-new", "-key", &key, "-out", &csr, "-subj", &format!("/CN={cn}")]);
        let ext = format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}");
        std::fs::write(self.dir.join(&extfile), ext).expect("write extfile");
        let serial = format!("0x{:x}", rand_serial());
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &self.cert.display().to_string(),
                "-CAkey",
                &self.key.display().to_string(),
                "-set_serial",
                &serial,
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
        Pair { cert: self.dir.join(cert), key: self.dir.join(key) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A serial unlikely to repeat within a test run.
fn rand_serial() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    (t ^ (std::process::id() as u64) << 32).wrapping_add(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) >> 1
}
