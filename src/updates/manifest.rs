//! The desired-state manifest of a model update, as published (retained)
//! on `edge-infer/{device_id}/models/{name}/desired` or the fleet's
//! `edge-infer/fleet/models/{name}/desired`, and the statement its
//! signature covers. Pure: parsing and checking only.
//!
//! The signature covers a statement of (name, version, sha256, size)
//! rather than the model bytes, so it is checked before a byte is
//! downloaded, and the bytes are then held to the signed sha256. The name
//! is in it so a signed update of one model cannot be replayed as another.

use std::path::PathBuf;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

pub use crate::config::Version;

/// Largest chunk a manifest may declare: fits every common broker's
/// default packet limit with room for the topic (AWS IoT Core 128 KB,
/// Azure IoT Hub 256 KB, EMQX 1 MB; Mosquitto has none by default).
pub const MAX_CHUNK_SIZE: u64 = 1024 * 1024;
/// Smallest chunk: smaller ones only multiply messages.
pub const MIN_CHUNK_SIZE: u64 = 1024;
/// What `publish-model` uses unless told otherwise: under AWS IoT Core's
/// 128 KB, the tightest common limit.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 * 1024;
/// Golden inputs per manifest: each is a warm inference at validation.
pub const MAX_GOLDEN: usize = 16;
/// A manifest is small; anything bigger is not one.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// Where the model's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Retained chunks on `<desired topic>/chunk/{n}`.
    Chunks { chunks: u32, chunk_size: u64 },
    /// A file already on the device (an OS image, a mounted volume).
    File(PathBuf),
}

/// One golden input: a payload as a sensor publishes it and the outputs
/// the new version must give for it, each value within `tolerance`.
#[derive(Debug, Clone, PartialEq)]
pub struct Golden {
    pub payload: Vec<u8>,
    pub outputs: Vec<GoldenOutput>,
    pub tolerance: f64,
}

/// Expected output tensor values, in the shape of a result's `outputs`
/// entries (so a result of the new model can be pasted in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenOutput {
    pub name: String,
    pub values: Vec<f64>,
}

/// A checked manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub version: Version,
    pub sha256: String,
    pub size: u64,
    /// The minisign signature file's text.
    pub signature: String,
    pub source: Source,
    pub golden: Vec<Golden>,
}

/// The manifest as written; `Manifest::parse` checks it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub golden: Vec<RawGolden>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGolden {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    pub outputs: Vec<GoldenOutput>,
    pub tolerance: f64,
}

/// The bytes a model update's signature covers.
pub fn statement(name: &str, version: &str, sha256: &str, size: u64) -> String {
    format!("edge-infer model update v1\nname: {name}\nversion: {version}\nsha256: {sha256}\nsize: {size}\n")
}

/// How many chunks of `chunk_size` hold `size` bytes.
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size.max(1))
}

impl Manifest {
    /// Parses and checks a manifest payload; `max_size` is the largest
    /// model the device accepts (`[limits] max_model_bytes`). The error is
    /// a sentence for the state record.
    pub fn parse(payload: &[u8], max_size: u64) -> Result<Manifest, String> {
        if payload.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "the manifest has {} bytes; a manifest is at most {MAX_MANIFEST_BYTES}",
                payload.len()
            ));
        }
        let raw: RawManifest = serde_json::from_slice(payload)
            .map_err(|e| format!("the manifest is not valid: {e} (expected a JSON object with version, sha256, size, signature, and chunks + chunk_size or path)"))?;
        let version = Version::parse(&raw.version)?;
        if raw.sha256.len() != 64
            || !raw
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "sha256 {:?} is not 64 lowercase hexadecimal digits",
                raw.sha256
            ));
        }
        if raw.size == 0 {
            return Err("size is 0; a model file is never empty".into());
        }
        if raw.size > max_size {
            return Err(format!(
                "the model has {} bytes; this device takes models of at most {max_size} bytes ([limits] max_model_bytes)",
                raw.size
            ));
        }
        if !raw.signature.contains("untrusted comment:") {
            return Err("signature is not a minisign signature (its first line is \"untrusted comment: ...\")".into());
        }
        let source = match (raw.chunks, raw.chunk_size, raw.path) {
            (Some(chunks), Some(chunk_size), None) => {
                if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
                    return Err(format!(
                        "chunk_size is {chunk_size}; expected {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
                    ));
                }
                let want = chunk_count(raw.size, chunk_size);
                if u64::from(chunks) != want {
                    return Err(format!(
                        "chunks is {chunks}, but {} bytes in chunks of {chunk_size} make {want}",
                        raw.size
                    ));
                }
                Source::Chunks { chunks, chunk_size }
            }
            (None, None, Some(path)) => {
                if !path.is_absolute() {
                    return Err(format!(
                        "path {} is relative; a file on the device is named by its absolute path",
                        path.display()
                    ));
                }
                Source::File(path)
            }
            (None, None, None) => {
                return Err("the manifest says where the model comes from in neither way: give chunks and chunk_size, or path".into())
            }
            (_, _, Some(_)) => {
                return Err("the manifest gives both path and chunks; give one".into())
            }
            _ => return Err("chunks and chunk_size go together; one of them is missing".into()),
        };
        if raw.golden.len() > MAX_GOLDEN {
            return Err(format!(
                "golden has {} inputs; at most {MAX_GOLDEN}",
                raw.golden.len()
            ));
        }
        let golden = raw
            .golden
            .into_iter()
            .enumerate()
            .map(|(i, g)| golden(i, g))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Manifest {
            version,
            sha256: raw.sha256,
            size: raw.size,
            signature: raw.signature,
            source,
            golden,
        })
    }
}

fn golden(i: usize, g: RawGolden) -> Result<Golden, String> {
    let payload = match (g.payload, g.payload_base64) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| format!("golden[{i}].payload_base64 is not base64: {e}"))?,
        _ => {
            return Err(format!(
                "golden[{i}] needs exactly one of payload and payload_base64"
            ))
        }
    };
    if !(g.tolerance.is_finite() && g.tolerance >= 0.0) {
        return Err(format!(
            "golden[{i}].tolerance is {}; expected a number >= 0",
            g.tolerance
        ));
    }
    if g.outputs.is_empty() {
        return Err(format!(
            "golden[{i}].outputs is empty; name at least one output"
        ));
    }
    Ok(Golden {
        payload,
        outputs: g.outputs,
        tolerance: g.tolerance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SIG: &str = "untrusted comment: x\nRW..\ntrusted comment: y\nzz\n";

    fn parse(v: serde_json::Value) -> Result<Manifest, String> {
        Manifest::parse(v.to_string().as_bytes(), 10_000_000)
    }

    fn base() -> serde_json::Value {
        json!({"version": "1.2", "sha256": "ab".repeat(32), "size": 150_000,
               "signature": SIG, "chunks": 3, "chunk_size": 65536})
    }

    #[test]
    fn a_chunked_manifest_parses() {
        let m = parse(base()).unwrap();
        assert_eq!(
            m.source,
            Source::Chunks {
                chunks: 3,
                chunk_size: 65536
            }
        );
        assert_eq!(m.version.as_str(), "1.2");
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("sha256", json!("AB".repeat(32)), "64 lowercase"),
            ("sha256", json!("ab"), "64 lowercase"),
            ("size", json!(0), "never empty"),
            ("size", json!(20_000_000), "at most 10000000"),
            ("chunks", json!(2), "make 3"),
            ("chunk_size", json!(100), "expected 1024"),
            ("signature", json!("RWQ"), "minisign"),
            ("version", json!("one"), "dot-separated"),
            ("colour", json!("red"), "unknown field `colour`"),
        ];
        for (key, value, want) in cases {
            let mut m = base();
            m[key] = value;
            let e = parse(m).unwrap_err();
            assert!(e.contains(want), "{key}: {e}");
        }
        let mut m = base();
        m["path"] = json!("/x.tflite");
        assert!(parse(m).unwrap_err().contains("both"));
        let mut m = base();
        m.as_object_mut().unwrap().remove("chunk_size");
        assert!(parse(m).unwrap_err().contains("go together"));
        let e = Manifest::parse(b"{", 1).unwrap_err();
        assert!(e.contains("not valid"), "{e}");
    }

    #[test]
    fn a_file_source_must_be_absolute() {
        let mut m = base();
        let o = m.as_object_mut().unwrap();
        o.remove("chunks");
        o.remove("chunk_size");
        o.insert("path".into(), json!("models/x.tflite"));
        assert!(parse(m.clone()).unwrap_err().contains("relative"));
        m["path"] = json!("/usr/share/x.tflite");
        assert_eq!(
            parse(m).unwrap().source,
            Source::File("/usr/share/x.tflite".into())
        );
    }

    #[test]
    fn golden_inputs_take_text_or_base64() {
        let mut m = base();
        m["golden"] = json!([
            {"payload": "{\"data\":[1]}", "outputs": [{"name": "y", "values": [0.5]}], "tolerance": 0.1},
            {"payload_base64": "AAE=", "outputs": [{"name": "y", "values": [1]}], "tolerance": 0}
        ]);
        let g = parse(m.clone()).unwrap().golden;
        assert_eq!(g[1].payload, vec![0u8, 1]);
        m["golden"][0]["payload_base64"] = json!("AA==");
        assert!(parse(m.clone())
            .unwrap_err()
            .contains("golden[0] needs exactly one"));
        m["golden"][0]
            .as_object_mut()
            .unwrap()
            .remove("payload_base64");
        m["golden"][0]["tolerance"] = json!(-1);
        assert!(parse(m).unwrap_err().contains("golden[0].tolerance"));
    }

    #[test]
    fn the_statement_binds_name_version_sha_and_size() {
        let s = statement("har", "2", "ab", 10);
        assert_eq!(
            s,
            "edge-infer model update v1\nname: har\nversion: 2\nsha256: ab\nsize: 10\n"
        );
        assert_ne!(s, statement("har2", "2", "ab", 10));
    }
}
