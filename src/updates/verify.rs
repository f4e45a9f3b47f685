//! The trusted public keys (`[updates] public_keys`) and the check of a
//! manifest's minisign signature against them.
//!
//! minisign (Ed25519) because its keys and signatures are plain text that
//! fits in a TOML string and a JSON field, its tools are packaged
//! everywhere (Debian's `minisign`), and `minisign-verify` is a small,
//! dependency-free verifier by minisign's author. Signatures carry the id
//! of the key that made them; the id is read here too, so a signature by
//! a key the device does not trust is told apart from a forged one.

use minisign_verify::{Error as MinisignError, Signature};

use crate::config::{key_id_of, TrustedKey};

/// Checks `signature` (a minisign signature file's text) over `statement`
/// against the trusted keys; the error is a sentence for the state record.
pub fn verify(keys: &[TrustedKey], statement: &str, signature: &str) -> Result<String, String> {
    let sig = Signature::decode(signature).map_err(|e| {
        format!(
            "the signature is not a minisign signature ({e}); expected the text of a .minisig file"
        )
    })?;
    let signed_by = signature
        .lines()
        .nth(1)
        .and_then(key_id_of)
        .unwrap_or_else(|| "?".into());
    let Some(key) = keys.iter().find(|k| k.id == signed_by) else {
        let trusted: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        return Err(format!(
            "signed by key {signed_by}, which is not trusted here ([updates] public_keys has {})",
            trusted.join(", ")
        ));
    };
    match key.key.verify(statement.as_bytes(), &sig, true) {
        Ok(()) => Ok(key.id.clone()),
        Err(MinisignError::InvalidSignature) => Err(format!(
            "the signature by key {signed_by} does not match: the name, version, sha256 or size differ from what was signed, or the signature was altered"
        )),
        Err(e) => Err(format!("the signature by key {signed_by} cannot be checked: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_signature() {
        let e = verify(&[], "x", "untrusted comment: a\nzzz\n").unwrap_err();
        assert!(e.contains("not a minisign signature"), "{e}");
    }
}
