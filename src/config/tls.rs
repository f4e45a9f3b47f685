//! TLS of a broker connection (`[mqtt]` or `[uplink]`, `tls = true`). The
//! CA, client certificate and key files are read and checked with the rest
//! of the config, so a wrong file fails `check-config`, startup and reload
//! with its key and path instead of every connection attempt later; the
//! result is the rustls `ClientConfig` the connection uses, built on the
//! ring provider explicitly (no aws-lc-rs, no process-wide default needed).
//!
//! The broker's certificate and name are always verified; there is no
//! switch to turn that off. With no `ca_file` the certificate must chain to
//! the system's root certificates (`/etc/ssl/certs`, read through
//! rustls-native-certs, which the MQTT client pulls in anyway): they follow the
//! OS's ca-certificates updates, where webpki-roots would freeze Mozilla's
//! list into the binary (about 250 KB more) until the next release.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};

use super::check::Check;
use super::files::{self, resolve, FileRole};
use super::raw::RawMqtt;

/// Certificate and key files above this are refused unread (a wrong path
/// such as a device or a log file): Mozilla's whole root bundle is about
/// 220 KB.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

const PEM_CAP: &str = "the 1 MiB cap on certificate and key files";
const CA_FILE: FileRole = FileRole {
    what: "CA file",
    limit: PEM_CAP,
};
const CERT_FILE: FileRole = FileRole {
    what: "client certificate file",
    limit: PEM_CAP,
};
const KEY_FILE: FileRole = FileRole {
    what: "client key file",
    limit: PEM_CAP,
};

/// A checked TLS setup.
#[derive(Clone)]
pub struct TlsSettings {
    pub trust: Trust,
    /// Mutual TLS: (certificate file, key file).
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// What the connection hands to rustls.
    pub client_config: Arc<ClientConfig>,
    /// sha256 of each file read, so that a reload sees a replaced
    /// certificate even at the same path.
    digests: Vec<[u8; 32]>,
}

/// What the broker's certificate must chain to.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's root certificates (how many were found).
    System(usize),
    /// The certificates of `ca_file` (how many it holds).
    CaFile(PathBuf, usize),
}

impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trust::System(_) => write!(f, "the system's root certificates"),
            Trust::CaFile(path, _) => write!(f, "ca_file {}", path.display()),
        }
    }
}

/// Equal when the same files (by path and contents) are used; the number
/// of system roots is left out, so a ca-certificates update does not count
/// as a broker change on reload.
impl PartialEq for TlsSettings {
    fn eq(&self, other: &Self) -> bool {
        let same_trust = match (&self.trust, &other.trust) {
            (Trust::System(_), Trust::System(_)) => true,
            (Trust::CaFile(a, _), Trust::CaFile(b, _)) => a == b,
            _ => false,
        };
        same_trust && self.client_auth == other.client_auth && self.digests == other.digests
    }
}

/// Paths only: the key itself never reaches a log line.
impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("trust", &self.trust)
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// For the `check-config` summary and the connect log line.
    pub fn describe(&self) -> String {
        let trust = match &self.trust {
            Trust::System(n) => format!("verified against the system's {n} root certificates"),
            Trust::CaFile(path, n) => format!(
                "verified against ca_file {} ({n} certificate{})",
                path.display(),
                if *n == 1 { "" } else { "s" }
            ),
        };
        match &self.client_auth {
            Some((cert, _)) => format!("{trust}, client certificate {}", cert.display()),
            None => format!("{trust}, no client certificate"),
        }
    }
}

/// The TLS of the table `table` ("mqtt" or "uplink"), or None without
/// `tls = true`. Every problem is added to `c` under its key.
pub(super) fn tls_settings(
    c: &mut Check,
    table: &str,
    m: &RawMqtt,
    base: &Path,
) -> Option<TlsSettings> {
    let key = |k: &str| format!("{table}.{k}");
    let files = [
        ("ca_file", &m.ca_file),
        ("client_cert_file", &m.client_cert_file),
        ("client_key_file", &m.client_key_file),
    ];
    if !m.tls {
        // Refused rather than implied: a file alone must not quietly turn
        // a plaintext setup into TLS (or look as if it did).
        for (k, v) in files {
            if v.is_some() {
                c.add(
                    key(k),
                    format!("is set, but [{table}] tls is not: certificates are only used over TLS; add `tls = true` to [{table}]"),
                );
            }
        }
        return None;
    }
    let before = c.problems.len();
    let mut path_of = |k: &str, v: &Option<String>| -> Option<PathBuf> {
        match v.as_deref().map(str::trim) {
            None => None,
            Some("") => {
                c.add(key(k), "must not be empty (leave the key out instead)");
                None
            }
            Some(p) => Some(resolve(base, p)),
        }
    };
    let ca_path = path_of("ca_file", &m.ca_file);
    let cert_path = path_of("client_cert_file", &m.client_cert_file);
    let key_path = path_of("client_key_file", &m.client_key_file);

    let mut digests = Vec::new();
    let mut roots = RootCertStore::empty();
    let trust = match &ca_path {
        Some(path) => {
            let k = key("ca_file");
            let n = read_pem(c, &k, path, CA_FILE, &mut digests)
                .map(|pem| certificates(c, &k, path, CA_FILE, &pem))
                .map_or(0, |certs| add_roots(c, &k, path, certs, &mut roots));
            Trust::CaFile(path.clone(), n)
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                c.add(
                    key("tls"),
                    format!("no ca_file is set and no system root certificates were found{why}; install the ca-certificates package or set [{table}] ca_file"),
                );
            }
            Trust::System(added)
        }
    };

    let client = match (&cert_path, &key_path) {
        (Some(cert), Some(k)) => {
            let certs = read_pem(c, &key("client_cert_file"), cert, CERT_FILE, &mut digests)
                .map(|pem| certificates(c, &key("client_cert_file"), cert, CERT_FILE, &pem));
            let private = read_pem(c, &key("client_key_file"), k, KEY_FILE, &mut digests)
                .and_then(|pem| private_key(c, &key("client_key_file"), k, &pem));
            certs.zip(private)
        }
        (Some(_), None) => {
            c.add(
                key("client_cert_file"),
                format!("is set but [{table}] client_key_file is not: mutual TLS needs the certificate and its key"),
            );
            None
        }
        (None, Some(_)) => {
            c.add(
                key("client_key_file"),
                format!("is set but [{table}] client_cert_file is not: mutual TLS needs the certificate and its key"),
            );
            None
        }
        (None, None) => None,
    };
    if c.problems.len() != before {
        return None;
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        match ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
            Ok(b) => b.with_root_certificates(roots),
            Err(e) => {
                // Only if the ring provider lacked every TLS version: a build
                // problem, said rather than panicked on.
                c.add(key("tls"), format!("cannot set up TLS: {e}"));
                return None;
            }
        };
    let client_config = match (client, &cert_path, &key_path) {
        (Some((certs, private)), Some(cert), Some(k)) => {
            match builder.with_client_auth_cert(certs, private) {
                Ok(config) => config,
                Err(e) => {
                    let (at, why) = client_auth_problem(&e, cert, k, table);
                    c.add(key(at), why);
                    return None;
                }
            }
        }
        _ => builder.with_no_client_auth(),
    };
    Some(TlsSettings {
        trust,
        client_auth: cert_path.zip(key_path),
        client_config: Arc::new(client_config),
        digests,
    })
}

/// The file's bytes, within the cap; its digest goes to `digests`.
fn read_pem(
    c: &mut Check,
    key: &str,
    path: &Path,
    role: FileRole,
    digests: &mut Vec<[u8; 32]>,
) -> Option<Vec<u8>> {
    match files::read_file(path, role, MAX_PEM_BYTES) {
        Ok(bytes) => {
            digests.push(Sha256::digest(&bytes).into());
            Some(bytes)
        }
        Err(e) => {
            c.add(key, e.to_string());
            None
        }
    }
}

/// The labels of the PEM blocks in `pem` ("CERTIFICATE", "PRIVATE KEY"),
/// for messages about a file that holds the wrong thing.
fn labels(pem: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(pem)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .filter_map(|l| l.strip_suffix("-----"))
        .map(str::to_string)
        .collect()
}

/// "it holds PRIVATE KEY" or "it is not PEM text".
fn what_it_holds(pem: &[u8]) -> String {
    let found = labels(pem);
    if found.is_empty() {
        "it holds no PEM block at all (a DER file? convert it with `openssl x509 -in FILE -inform der -out FILE.pem`)".into()
    } else {
        format!("it holds {}", found.join(", "))
    }
}

/// Every certificate in a PEM file; a problem if it holds none.
fn certificates(
    c: &mut Check,
    key: &str,
    path: &Path,
    role: FileRole,
    pem: &[u8],
) -> Vec<CertificateDer<'static>> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        match item {
            Ok(cert) => certs.push(cert),
            Err(e) => {
                c.add(
                    key,
                    format!(
                        "{} {} is not valid PEM: {}",
                        role.what,
                        path.display(),
                        pem_error(&e)
                    ),
                );
                return Vec::new();
            }
        }
    }
    if certs.is_empty() {
        c.add(
            key,
            format!(
                "{} {} holds no certificate (expected \"-----BEGIN CERTIFICATE-----\"); {}",
                role.what,
                path.display(),
                what_it_holds(pem)
            ),
        );
    }
    certs
}

/// Adds a CA file's certificates to `roots`; how many. Each must be a
/// certificate webpki can use as a trust anchor.
fn add_roots(
    c: &mut Check,
    key: &str,
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
    roots: &mut RootCertStore,
) -> usize {
    let n = certs.len();
    for (i, cert) in certs.into_iter().enumerate() {
        if let Err(e) = roots.add(cert) {
            c.add(
                key,
                format!(
                    "certificate {} of {n} in CA file {} is not a usable X.509 certificate: {e}",
                    i + 1,
                    path.display()
                ),
            );
        }
    }
    roots.len()
}

/// The private key of a PEM file. An encrypted key is refused with what to
/// do: the daemon has no one to ask for a passphrase.
fn private_key(
    c: &mut Check,
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Option<PrivateKeyDer<'static>> {
    let found = labels(pem);
    let text = String::from_utf8_lossy(pem);
    if found.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED")
    {
        c.add(
            key,
            format!(
                "client key file {} is encrypted (passphrase-protected), and the daemon has no one to ask for the passphrase; store it decrypted (`openssl pkey -in KEY -out device.key`) with mode 0600",
                path.display()
            ),
        );
        return None;
    }
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(k) => Some(k),
        Err(pem::Error::NoItemsFound) => {
            c.add(
                key,
                format!(
                    "client key file {} holds no private key (expected \"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\"); {}",
                    path.display(),
                    what_it_holds(pem)
                ),
            );
            None
        }
        Err(e) => {
            c.add(
                key,
                format!(
                    "client key file {} is not valid PEM: {}",
                    path.display(),
                    pem_error(&e)
                ),
            );
            None
        }
    }
}

/// A PEM error in words, never quoting file contents (a key's).
fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a \"{}\" block has no END line",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { .. } => "a \"-----BEGIN\" line is malformed".into(),
        pem::Error::Base64Decode(_) => "a block's body is not valid base64".into(),
        pem::Error::SectionTooLarge => "a block is too large".into(),
        other => other.to_string(),
    }
}

/// Which key a refused certificate/key pair is about, and why.
fn client_auth_problem(
    e: &rustls::Error,
    cert: &Path,
    key: &Path,
    table: &str,
) -> (&'static str, String) {
    use rustls::{Error, InconsistentKeys};
    match e {
        Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => (
            "client_key_file",
            format!(
                "client key file {} does not belong to the certificate in [{table}] client_cert_file {} (their public keys differ)",
                key.display(),
                cert.display()
            ),
        ),
        Error::InvalidCertificate(why) => (
            "client_cert_file",
            format!(
                "the first certificate in client certificate file {} is not a usable X.509 certificate: {why}",
                cert.display()
            ),
        ),
        other => (
            "client_key_file",
            format!(
                "client key file {} cannot be used: {other}",
                key.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_read_from_begin_lines() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n-----BEGIN EC PRIVATE KEY-----\n";
        assert_eq!(labels(pem), ["CERTIFICATE", "EC PRIVATE KEY"]);
        assert!(what_it_holds(b"\x30\x82").contains("no PEM block"));
    }

    #[test]
    fn encrypted_keys_are_refused_in_either_pem_form() {
        let path = Path::new("/etc/edge-infer/device.key");
        for pem in [
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
            // OpenSSL's traditional form: headers inside the block.
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nMIIB\n-----END RSA PRIVATE KEY-----\n",
        ] {
            let mut c = Check {
                problems: Vec::new(),
            };
            assert!(private_key(&mut c, "mqtt.client_key_file", path, pem.as_bytes()).is_none());
            assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
            assert!(
                c.problems[0].to_string().starts_with(
                    "mqtt.client_key_file: client key file /etc/edge-infer/device.key is encrypted"
                ),
                "{:?}",
                c.problems
            );
        }
    }
}
