//! `[updates]`: remote model updates. The trusted signing keys are parsed
//! here, with the config, so a bad key is a config problem that names it;
//! versions (of a model's configured file and of updates) are checked here
//! too, by the one rule both use.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use minisign_verify::PublicKey;
use serde::Deserialize;

use super::check::Check;
use super::ModelSettings;
use crate::topic;

/// `[updates]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpdates {
    /// minisign public keys (the base64 line of a `.pub` file) whose
    /// signatures this device accepts; several during a key rotation.
    pub public_keys: Vec<String>,
    /// Accept a manifest whose version is lower than the active one.
    pub allow_downgrade: bool,
    /// How long a new version is watched before it is confirmed.
    pub probation_secs: f64,
    /// Roll back when the new version's error rate exceeds the old one's
    /// by more than this many percentage points.
    pub max_error_rate_increase_percent: f64,
    /// Roll back when the new version's p99 latency exceeds the old one's
    /// this many times.
    pub max_p99_ratio: f64,
    /// Messages the new version must have served before it is judged.
    pub min_probation_messages: u64,
    /// A download that has not completed in this time fails.
    pub download_timeout_secs: f64,
}

impl Default for RawUpdates {
    fn default() -> Self {
        RawUpdates {
            public_keys: Vec::new(),
            allow_downgrade: false,
            probation_secs: 300.0,
            max_error_rate_increase_percent: 5.0,
            max_p99_ratio: 2.0,
            min_probation_messages: 50,
            download_timeout_secs: 600.0,
        }
    }
}

/// `[updates]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateSettings {
    pub public_keys: Vec<TrustedKey>,
    pub allow_downgrade: bool,
    pub probation: Duration,
    pub max_error_rate_increase_percent: f64,
    pub max_p99_ratio: f64,
    pub min_probation_messages: u64,
    pub download_timeout: Duration,
}

pub(super) fn update_settings(c: &mut Check, raw: &RawUpdates) -> Option<UpdateSettings> {
    let before = c.problems.len();
    if raw.public_keys.is_empty() {
        c.add(
            "updates.public_keys",
            "is empty; remote updates need at least one trusted minisign public key (the second line of the .pub file that `edge-infer keygen` or `minisign -G` wrote)",
        );
    }
    let mut keys = Vec::new();
    for (i, text) in raw.public_keys.iter().enumerate() {
        match TrustedKey::parse(text) {
            Ok(k) => keys.push(k),
            Err(e) => c.add(format!("updates.public_keys[{i}]"), e),
        }
    }
    let probation = c.seconds(
        "updates.probation_secs",
        raw.probation_secs,
        0.0,
        7.0 * 86400.0,
    );
    let download_timeout = c.seconds(
        "updates.download_timeout_secs",
        raw.download_timeout_secs,
        1.0,
        86400.0,
    );
    let rate = raw.max_error_rate_increase_percent;
    if !(rate.is_finite() && (0.0..=100.0).contains(&rate)) {
        c.add(
            "updates.max_error_rate_increase_percent",
            format!("expected 0 to 100 percentage points, got {rate}"),
        );
    }
    let ratio = raw.max_p99_ratio;
    if !(ratio.is_finite() && ratio >= 1.0) {
        c.add(
            "updates.max_p99_ratio",
            format!("expected a ratio of at least 1 (the old p99 times this), got {ratio}"),
        );
    }
    if raw.min_probation_messages == 0 {
        c.add(
            "updates.min_probation_messages",
            "expected at least 1 message",
        );
    }
    (c.problems.len() == before).then_some(UpdateSettings {
        public_keys: keys,
        allow_downgrade: raw.allow_downgrade,
        probation,
        max_error_rate_increase_percent: rate,
        max_p99_ratio: ratio,
        min_probation_messages: raw.min_probation_messages,
        download_timeout,
    })
}

/// With updates on, the daemon subscribes to each model's manifests (its
/// own and the fleet's) and their chunks and publishes its state: an input
/// filter that takes any of them would feed them to a model.
pub(super) fn check_topics(c: &mut Check, models: &[ModelSettings], device_id: &str) {
    if device_id == topic::FLEET {
        c.add(
            "device_id",
            format!("\"{}\" names the whole fleet in update topics; with [updates] a device needs another id", topic::FLEET),
        );
    }
    for consumer in models {
        let filter = &consumer.input_topic;
        for m in models {
            let own = topic::desired_topic(device_id, &m.name);
            let fleet = topic::desired_topic(topic::FLEET, &m.name);
            let taken = [
                topic::model_state_topic(device_id, &m.name),
                topic::chunk_topic(&own, 0),
                topic::chunk_topic(&fleet, 0),
                own,
                fleet,
            ];
            if let Some(t) = taken.iter().find(|t| filter.matches(t).is_some()) {
                c.add(
                    format!("{}.input_topic", consumer.key),
                    format!("\"{filter}\" matches \"{t}\", a model update topic ([updates]); it is not an input for a model"),
                );
                break;
            }
        }
    }
}

/// One trusted minisign public key, with the id minisign shows for it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustedKey {
    pub id: String,
    pub key: PublicKey,
}

/// A key id as `minisign` prints it: hex of the little-endian id.
pub fn key_id_text(id: &[u8]) -> String {
    id.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// The key id inside a minisign base64 line (a public key or a
/// signature): the 8 bytes after the two-byte algorithm.
pub fn key_id_of(line: &str) -> Option<String> {
    let bin = base64::engine::general_purpose::STANDARD
        .decode(line.trim().as_bytes())
        .ok()?;
    bin.get(2..10).map(key_id_text)
}

impl TrustedKey {
    /// The base64 line of a minisign `.pub` file (`RW...`), or the whole
    /// file's text.
    pub fn parse(text: &str) -> Result<TrustedKey, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .unwrap_or("");
        let key = PublicKey::from_base64(line).map_err(|_| {
            format!(
                "{line:?} is not a minisign public key (expected the base64 line of a .pub file: 56 characters starting with \"RW\")"
            )
        })?;
        let id = key_id_of(line).unwrap_or_default();
        Ok(TrustedKey { id, key })
    }
}

/// A model version: 1 to 4 dot-separated non-negative integers (`3`,
/// `1.2`, `2026.11.30`), ordered numerically part by part, a missing part
/// counting as 0 (`1.2` == `1.2.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    text: String,
    parts: Vec<u64>,
}

impl Version {
    pub fn parse(text: &str) -> Result<Version, String> {
        let bad = || {
            format!(
                "version {text:?} is not 1 to 4 dot-separated numbers (like \"3\", \"1.2\" or \"2026.11.30\")"
            )
        };
        if text.is_empty() || text.len() > 64 {
            return Err(bad());
        }
        let parts = text
            .split('.')
            .map(|p| {
                if p.is_empty() || p.len() > 18 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    p.parse::<u64>().ok()
                }
            })
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(bad)?;
        if parts.len() > 4 {
            return Err(bad());
        }
        Ok(Version {
            text: text.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn part(&self, i: usize) -> u64 {
        self.parts.get(i).copied().unwrap_or(0)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        (0..4)
            .map(|i| self.part(i).cmp(&other.part(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically_with_missing_parts_as_zero() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.10") > v("1.9"));
        assert!(v("2") > v("1.99.99"));
        assert_eq!(v("1.2").cmp(&v("1.2.0")), Ordering::Equal);
        assert!(v("2026.11.30") > v("2026.2.1"));
        for bad in ["", "v1", "1..2", "1.2.3.4.5", "1.-2", "1.2a", " 1"] {
            let e = Version::parse(bad).unwrap_err();
            assert!(e.contains("dot-separated"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_key_that_is_not_base64_is_named() {
        let e = TrustedKey::parse("not a key").unwrap_err();
        assert!(
            e.contains("\"not a key\" is not a minisign public key"),
            "{e}"
        );
    }

    #[test]
    fn defaults_are_valid_once_a_key_is_given() {
        let mut c = Check {
            problems: Vec::new(),
        };
        assert_eq!(update_settings(&mut c, &RawUpdates::default()), None);
        assert!(c.problems[0].message.contains("at least one trusted"));
    }
}
