//! Signing keys for model updates: `edge-infer keygen` makes a minisign
//! key pair, `publish-model` loads the secret key (asking for its
//! password when it is encrypted) and signs a statement with it.
//!
//! The files are minisign's own (`minisign -G` writes the same, and
//! `minisign -S`/`-V` use ours), so an operator can sign with the tool
//! they already trust and check what edge-infer signed.

use std::fs;
use std::io::{IsTerminal as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use minisign::{KeyPair, PublicKey, SecretKey, SecretKeyBox};

use super::Error;
use crate::config::{key_id_text, TrustedKey};

/// Bytes of a minisign secret key (algorithm, KDF, checksum algorithm,
/// salt, KDF limits, key id, Ed25519 key, checksum) and of a public key.
const SECRET_KEY_BYTES: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
const PUBLIC_KEY_BYTES: usize = 2 + 8 + 32;

/// What `keygen` made.
pub struct Generated {
    pub secret_path: PathBuf,
    pub public_path: PathBuf,
    /// The base64 line of the `.pub` file: what `[updates] public_keys`
    /// takes.
    pub public_key: String,
    pub key_id: String,
    pub encrypted: bool,
}

/// Makes a key pair: `dir/name.key` (mode 0600, encrypted with the
/// password in `password_file` when given) and `dir/name.pub`. Creates
/// `dir` (mode 0700) if it is missing; never overwrites a file.
pub fn keygen(dir: &Path, name: &str, password_file: Option<&Path>) -> Result<Generated, Error> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(Error::Input(format!(
            "--name {name:?} cannot name a key file: expected a file name without '/' that does not start with '.'"
        )));
    }
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for p in [&secret_path, &public_path] {
        if p.symlink_metadata().is_ok() {
            return Err(Error::Input(format!(
                "{} exists; keygen never overwrites a key (move it away, or choose another --name)",
                p.display()
            )));
        }
    }
    let password = password_file.map(read_password).transpose()?;
    if password.as_deref() == Some("") {
        return Err(Error::Input(format!(
            "the password file {} is empty; leave --password-file out for an unencrypted key",
            password_file.map_or(String::new(), |p| p.display().to_string())
        )));
    }
    let encrypted = password.is_some();
    let pair = match password {
        Some(pw) => KeyPair::generate_encrypted_keypair(Some(pw)),
        None => KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| Error::Input(format!("cannot make a key pair: {e}")))?;
    let key_id = key_id_text(pair.pk.keynum());
    let comment = if encrypted {
        format!("minisign encrypted secret key {key_id} (edge-infer model updates)")
    } else {
        format!("minisign unencrypted secret key {key_id} (edge-infer model updates): keep it on an offline or secured signing machine")
    };
    let secret_text = pair
        .sk
        .to_box(Some(&comment))
        .map_err(|e| Error::Input(format!("cannot encode the secret key: {e}")))?
        .into_string();
    let public_text = pair
        .pk
        .to_box()
        .map_err(|e| Error::Input(format!("cannot encode the public key: {e}")))?
        .into_string();
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::Input(format!("cannot create {}: {e}", dir.display())))?;
    }
    write_new(&secret_path, &secret_text, 0o600)?;
    if let Err(e) = write_new(&public_path, &public_text, 0o644) {
        // Half a key pair is worse than none: the next try would refuse
        // to overwrite it.
        let _ = fs::remove_file(&secret_path);
        return Err(e);
    }
    Ok(Generated {
        secret_path,
        public_path,
        public_key: pair.pk.to_base64(),
        key_id,
        encrypted,
    })
}

/// Creates `path` (never over an existing file) with `mode` and `text`,
/// flushed to disk.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    let fail = |e: std::io::Error| Error::Input(format!("cannot write {}: {e}", path.display()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)
}

/// A password from a file (`-`: standard input): its first line, without
/// the line ending, as `minisign` reads one typed at its prompt.
pub fn read_password(path: &Path) -> Result<String, Error> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| {
            Error::Input(format!("cannot read the password from standard input: {e}"))
        })?
    } else {
        fs::read_to_string(path).map_err(|e| {
            Error::Input(format!(
                "cannot read the password file {}: {e}",
                path.display()
            ))
        })?
    };
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// A loaded secret key, with what it is called.
pub struct Signer {
    secret: SecretKey,
    public: PublicKey,
    pub key_id: String,
}

impl Signer {
    /// Loads the minisign secret key at `path`, decrypting it with the
    /// password from `password_file`, or typed at a prompt when standard
    /// input is a terminal.
    pub fn load(path: &Path, password_file: Option<&Path>) -> Result<Signer, Error> {
        let text = fs::read_to_string(path).map_err(|e| {
            Error::Input(format!(
                "cannot read the secret key {}: {e}",
                path.display()
            ))
        })?;
        let bytes = key_line(&text).and_then(|line| {
            base64::engine::general_purpose::STANDARD
                .decode(line.trim().as_bytes())
                .ok()
        });
        let encrypted = match bytes.as_deref() {
            Some(b) if b.len() == SECRET_KEY_BYTES => b[2..4] != [0, 0],
            Some(b) if b.len() == PUBLIC_KEY_BYTES => {
                return Err(Error::Input(format!(
                    "{} is a public key; sign with the secret key (the .key file keygen wrote next to it)",
                    path.display()
                )))
            }
            _ => {
                return Err(Error::Input(format!(
                    "{} is not a minisign secret key (expected an \"untrusted comment:\" line, then one base64 line, as `edge-infer keygen` or `minisign -G` write)",
                    path.display()
                )))
            }
        };
        let sk_box = SecretKeyBox::from_string(&text)
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        let secret = if encrypted {
            let password = match password_file {
                Some(p) => read_password(p)?,
                None if std::io::stdin().is_terminal() => {
                    rpassword::prompt_password(format!("password of {}: ", path.display()))
                        .map_err(|e| {
                            Error::Input(format!("cannot read the password: {e}"))
                        })?
                }
                None => {
                    return Err(Error::Input(format!(
                        "the secret key {} is encrypted; give its password with --password-file FILE (- reads standard input)",
                        path.display()
                    )))
                }
            };
            SecretKey::from_box(sk_box, Some(password)).map_err(|e| match e.kind() {
                minisign::ErrorKind::Verify => Error::Input(format!(
                    "wrong password for the secret key {}{}",
                    path.display(),
                    password_file.map_or(String::new(), |p| format!(
                        " (the password from {})",
                        p.display()
                    ))
                )),
                _ => Error::Input(format!(
                    "cannot decrypt the secret key {}: {e}",
                    path.display()
                )),
            })?
        } else {
            if let Some(p) = password_file {
                eprintln!(
                    "edge-infer: note: the secret key {} is not encrypted; the password in {} is not used",
                    path.display(),
                    p.display()
                );
            }
            let bytes = bytes.unwrap_or_default();
            let checksum = bytes.get(SECRET_KEY_BYTES - 32..).unwrap_or_default();
            if checksum.iter().all(|b| *b == 0) {
                // `minisign -G -W` leaves an unencrypted key's checksum
                // out (zeros), which the crate's loader takes for damage.
                SecretKey::from_bytes(&bytes)
            } else {
                SecretKey::from_unencrypted_box(sk_box)
            }
            .map_err(|e| {
                Error::Input(format!("the secret key {} is damaged: {e}", path.display()))
            })?
        };
        let public = PublicKey::from_secret_key(&secret).map_err(|e| {
            Error::Input(format!("the secret key {} is damaged: {e}", path.display()))
        })?;
        let key_id = key_id_text(public.keynum());
        Ok(Signer {
            secret,
            public,
            key_id,
        })
    }

    /// The trusted form of this key's public half, as a device's config
    /// holds it.
    pub fn trusted(&self) -> Result<TrustedKey, Error> {
        TrustedKey::parse(&self.public.to_base64()).map_err(Error::Input)
    }

    /// A minisign signature file's text over `statement`, with
    /// `trusted_comment` signed along (minisign shows it on verification).
    pub fn sign(&self, statement: &str, trusted_comment: &str) -> Result<String, Error> {
        let untrusted = format!("signature from edge-infer key {}", self.key_id);
        minisign::sign(
            Some(&self.public),
            &self.secret,
            statement.as_bytes(),
            Some(trusted_comment),
            Some(&untrusted),
        )
        .map(|b| b.into_string())
        .map_err(|e| Error::Input(format!("cannot sign with key {}: {e}", self.key_id)))
    }
}

/// The base64 line of a minisign key file: the first non-empty line after
/// the `untrusted comment:` line.
fn key_line(text: &str) -> Option<&str> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    lines
        .next()
        .filter(|l| l.starts_with("untrusted comment:"))?;
    lines.next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::updates::verify::verify;

    #[test]
    fn a_generated_key_signs_what_the_device_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let g = keygen(dir.path(), "k", None).unwrap();
        assert!(!g.encrypted);
        let mode = fs::metadata(&g.secret_path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let signer = Signer::load(&g.secret_path, None).unwrap();
        assert_eq!(signer.key_id, g.key_id);
        let sig = signer.sign("hello\n", "edge-infer test").unwrap();
        let key = TrustedKey::parse(&fs::read_to_string(&g.public_path).unwrap()).unwrap();
        assert_eq!(key.id, g.key_id);
        assert_eq!(
            verify(std::slice::from_ref(&key), "hello\n", &sig),
            Ok(g.key_id.clone())
        );
        assert!(verify(&[key], "hello!\n", &sig).is_err());
        let again = keygen(dir.path(), "k", None).err().unwrap().to_string();
        assert!(again.contains("never overwrites"), "{again}");
    }

    #[test]
    fn an_encrypted_key_needs_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        fs::write(&pw, "s3cret\n").unwrap();
        let g = keygen(&dir.path().join("keys"), "k", Some(&pw)).unwrap();
        assert!(g.encrypted);
        assert!(Signer::load(&g.secret_path, Some(&pw)).is_ok());
        fs::write(&pw, "wrong\n").unwrap();
        let e = Signer::load(&g.secret_path, Some(&pw))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("wrong password for the secret key"), "{e}");
        let e = Signer::load(&g.public_path, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is a public key"), "{e}");
        let e = Signer::load(&dir.path().join("none.key"), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot read the secret key"), "{e}");
    }
}
