//! The operator side of remote model updates: `edge-infer keygen` makes
//! a signing key pair (`keys`), `edge-infer publish-model` signs a model
//! and publishes it to one device or the fleet. The daemon side (download,
//! verify, swap, rollback) is `crate::updates`; both hold to its
//! `manifest` (the statement signed, the manifest, the chunk layout).
//!
//! The order of a publication is what a device relies on: every chunk is
//! retained and confirmed before the manifest that names them, so a device
//! that sees a manifest finds all its chunks. Chunks of an earlier, bigger
//! version on the same topic are cleared too (the earlier manifest, read
//! first, says how many there were), before the new manifest goes out.
//!
//! Nothing is published that a device would refuse for a reason known
//! here: the manifest passes `Manifest::parse`, and when the config at hand
//! has `[updates] public_keys`, the signature is verified against them
//! with the device's own check.

pub mod keys;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use crate::config::{key_id_of, Settings, Version, MAX_MAX_MODEL_BYTES};
use crate::mqtt::publish::{Message, Retained, Session, SessionError};
use crate::mqtt::tool::Broker;
use crate::topic;
use crate::updates::manifest::{
    self, Manifest, RawGolden, RawManifest, Source, MAX_MANIFEST_BYTES,
};
use crate::updates::verify::verify;

/// Why a command failed; each kind has its exit status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, file, key, password or manifest: exit 2.
    #[error("{0}")]
    Input(String),
    /// The broker: unreachable, connection lost, publish not taken: exit 1.
    #[error("{0}")]
    Broker(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Input(_) => crate::exit::BAD_INPUT,
            Error::Broker(_) => crate::exit::FAILURE,
        }
    }
}

/// What `publish-model` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sign (or take a signed manifest) and publish.
    Publish,
    /// Sign and print the manifest; no broker.
    SignOnly,
    /// Remove a desired manifest and its chunks.
    Clear,
}

/// `publish-model`'s flags, as the command line checked them.
pub struct Request {
    pub action: Action,
    /// The model file: hashed and signed, cut into chunks.
    pub model: Option<PathBuf>,
    pub name: String,
    pub version: Option<String>,
    pub secret_key: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    /// A device id, or [`topic::FLEET`]; None only to sign.
    pub target: Option<String>,
    pub chunk_size: u64,
    pub golden: Option<PathBuf>,
    pub path_on_device: Option<PathBuf>,
    /// A manifest signed before (`--sign-only`), published as it is.
    pub manifest: Option<PathBuf>,
    /// Wait for the broker to deliver chunk 0 and the manifest back.
    pub delivery_check: bool,
    /// How long each step with the broker may take.
    pub wait: Duration,
}

/// The device's config, when the one at hand loads.
pub struct DeviceConfig<'a> {
    pub path: &'a Path,
    pub settings: &'a Settings,
}

/// A checked manifest ready to go out, with the model's bytes when they
/// go out as chunks.
struct Prepared {
    /// As published (compact JSON).
    json: Vec<u8>,
    raw: RawManifest,
    manifest: Manifest,
    model: Option<Vec<u8>>,
    /// The id of the key that signed it.
    signed_by: String,
}

/// `publish-model`.
pub fn publish_model(
    req: &Request,
    broker: &Broker,
    config: Option<DeviceConfig<'_>>,
) -> Result<(), Error> {
    if req.action == Action::Clear {
        return clear(req, broker);
    }
    let max_size = config.as_ref().map_or(MAX_MAX_MODEL_BYTES, |c| {
        c.settings.file_limits.max_model_bytes
    });
    let prepared = match &req.manifest {
        Some(path) => signed_manifest(req, path, max_size)?,
        None => sign(req, max_size)?,
    };
    if let Some(c) = &config {
        check_trusted(req, &prepared, c)?;
    }
    let m = &prepared.manifest;
    let source = match &m.source {
        Source::Chunks { chunks, chunk_size } => {
            format!("sent in {chunks} chunk(s) of {chunk_size} bytes")
        }
        Source::File(p) => format!("read from {} on the device", p.display()),
    };
    eprintln!(
        "edge-infer: model {} version {} ({} bytes, sha256 {}), signed by key {}, {source}",
        req.name, m.version, m.size, m.sha256, prepared.signed_by
    );
    if req.action == Action::SignOnly {
        let pretty = serde_json::to_string_pretty(&prepared.raw)
            .map_err(|e| Error::Input(format!("cannot write the manifest: {e}")))?;
        println!("{pretty}");
        return Ok(());
    }
    let Some(target) = &req.target else {
        return Err(Error::Input(
            "say where to publish: --device ID or --fleet".into(),
        ));
    };
    publish(req, target, broker, prepared)
}

/// Signs the model file's statement and builds its manifest.
fn sign(req: &Request, max_size: u64) -> Result<Prepared, Error> {
    let (Some(model_path), Some(version), Some(secret_key)) =
        (&req.model, &req.version, &req.secret_key)
    else {
        return Err(Error::Input(
            "signing needs --model, --version and --secret-key (or --manifest, a manifest signed before)".into(),
        ));
    };
    let version = Version::parse(version).map_err(|e| Error::Input(format!("--version: {e}")))?;
    let model = read_model(model_path, max_size)?;
    let sha256 = crate::models::sha256_hex(&model);
    let size = model.len() as u64;
    let golden = match &req.golden {
        Some(p) => read_golden(p)?,
        None => Vec::new(),
    };
    let signer = keys::Signer::load(secret_key, req.password_file.as_deref())?;
    let statement = manifest::statement(&req.name, &version.to_string(), &sha256, size);
    let comment = format!(
        "edge-infer model {} {} sha256 {sha256} size {size} timestamp {}",
        req.name,
        version,
        crate::time::unix_now() as u64
    );
    let signature = signer.sign(&statement, &comment)?;
    let (chunks, chunk_size, path) = match &req.path_on_device {
        Some(p) => (None, None, Some(p.clone())),
        None => {
            let n = size.div_ceil(req.chunk_size.max(1));
            let n = u32::try_from(n).map_err(|_| {
                Error::Input(format!(
                    "{size} bytes make {n} chunks of {} bytes; choose a bigger --chunk-size",
                    req.chunk_size
                ))
            })?;
            (Some(n), Some(req.chunk_size), None)
        }
    };
    let raw = RawManifest {
        version: version.to_string(),
        sha256,
        size,
        signature,
        chunks,
        chunk_size,
        path,
        golden,
    };
    // The device's own check of what was just signed, so a key this
    // binary writes and a signature it makes are proven to verify there.
    let own = signer.trusted()?;
    if let Err(e) = verify(&[own], &statement, &raw.signature) {
        return Err(Error::Input(format!(
            "the signature just made does not verify: {e}"
        )));
    }
    let chunked = req.path_on_device.is_none();
    let mut prepared = checked(raw, max_size, "")?;
    prepared.signed_by = signer.key_id;
    prepared.model = chunked.then_some(model);
    Ok(prepared)
}

/// Takes a manifest signed before, checks it against the model file, and
/// keeps the model's bytes if they go out as chunks.
fn signed_manifest(req: &Request, path: &Path, max_size: u64) -> Result<Prepared, Error> {
    let text = std::fs::read(path)
        .map_err(|e| Error::Input(format!("cannot read the manifest {}: {e}", path.display())))?;
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(Error::Input(format!(
            "{} has {} bytes; a manifest is at most {MAX_MANIFEST_BYTES}",
            path.display(),
            text.len()
        )));
    }
    let raw: RawManifest = serde_json::from_slice(&text).map_err(|e| {
        Error::Input(format!(
            "the manifest {} is not valid: {e} (expected what --sign-only prints)",
            path.display()
        ))
    })?;
    let within = format!("the manifest {}: ", path.display());
    let mut prepared = checked(raw, max_size, &within)?;
    let m = &prepared.manifest;
    // The trusted comment is not checked here (that needs the public
    // key), so this catches mistakes, not forgeries; the device's check
    // of the signature catches those.
    if let Some(comment) = trusted_comment(&m.signature) {
        let signed_for = comment.strip_prefix("edge-infer model ");
        let expected = format!(
            "{} {} sha256 {} size {}",
            req.name, m.version, m.sha256, m.size
        );
        if let Some(signed_for) = signed_for.filter(|s| !s.starts_with(&expected)) {
            let words: Vec<&str> = signed_for.split(' ').collect();
            let what = match words.as_slice() {
                [name, version, "sha256", sha, "size", size, ..] => {
                    format!("model {name} version {version} (sha256 {sha}, {size} bytes)")
                }
                _ => format!("\"{signed_for}\""),
            };
            return Err(Error::Input(format!(
                "{within}its signature is for {what}, not for model {} version {} (sha256 {}, {} bytes)",
                req.name, m.version, m.sha256, m.size
            )));
        }
    }
    let model = match (&req.model, &m.source) {
        (Some(model_path), source) => {
            let bytes = read_model(model_path, max_size)?;
            let sha = crate::models::sha256_hex(&bytes);
            if sha != m.sha256 || bytes.len() as u64 != m.size {
                return Err(Error::Input(format!(
                    "{} has sha256 {sha} ({} bytes), but {} says sha256 {} ({} bytes): not the model that was signed",
                    model_path.display(),
                    bytes.len(),
                    path.display(),
                    m.sha256,
                    m.size
                )));
            }
            matches!(source, Source::Chunks { .. }).then_some(bytes)
        }
        (None, Source::Chunks { .. }) => {
            return Err(Error::Input(format!(
                "{} names chunks; give the model file they are cut from with --model",
                path.display()
            )))
        }
        (None, Source::File(_)) => None,
    };
    prepared.signed_by = m
        .signature
        .lines()
        .nth(1)
        .and_then(key_id_of)
        .unwrap_or_else(|| "?".into());
    prepared.model = model;
    Ok(prepared)
}

/// Serializes `raw` and checks it as a device will.
fn checked(raw: RawManifest, max_size: u64, within: &str) -> Result<Prepared, Error> {
    let json = serde_json::to_vec(&raw)
        .map_err(|e| Error::Input(format!("cannot write the manifest: {e}")))?;
    let manifest = Manifest::parse(&json, max_size)
        .map_err(|e| Error::Input(format!("{within}a device would refuse this manifest: {e}")))?;
    Ok(Prepared {
        json,
        raw,
        manifest,
        model: None,
        signed_by: String::new(),
    })
}

/// The signature verified against the config's trusted keys, as the
/// devices with that config will.
fn check_trusted(req: &Request, p: &Prepared, c: &DeviceConfig<'_>) -> Result<(), Error> {
    let Some(updates) = &c.settings.updates else {
        return Ok(());
    };
    let m = &p.manifest;
    let statement = manifest::statement(&req.name, &m.version.to_string(), &m.sha256, m.size);
    verify(&updates.public_keys, &statement, &m.signature)
        .map(|_| ())
        .map_err(|e| {
            Error::Input(format!(
                "devices configured as {} would refuse this update: {e}",
                c.path.display()
            ))
        })
}

/// The text after `trusted comment: ` in a minisign signature.
fn trusted_comment(signature: &str) -> Option<&str> {
    signature
        .lines()
        .find_map(|l| l.strip_prefix("trusted comment: "))
}

fn read_model(path: &Path, max_size: u64) -> Result<Vec<u8>, Error> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Input(format!("cannot read the model {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::Input(format!(
            "the model {} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > max_size {
        return Err(Error::Input(format!(
            "the model {} has {} bytes; devices take models of at most {max_size} bytes ([limits] max_model_bytes)",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path)
        .map_err(|e| Error::Input(format!("cannot read the model {}: {e}", path.display())))
}

/// `--golden`: a JSON array of golden inputs, as the manifest holds them.
fn read_golden(path: &Path) -> Result<Vec<RawGolden>, Error> {
    let text = std::fs::read(path).map_err(|e| {
        Error::Input(format!(
            "cannot read the golden inputs {}: {e}",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::Input(format!(
            "the golden inputs {} are not valid: {e} (expected a JSON array of {{\"payload\" or \"payload_base64\", \"outputs\": [{{\"name\", \"values\"}}], \"tolerance\"}})",
            path.display()
        ))
    })
}

/// How many chunks the manifest retained before says there are; Err
/// says why it cannot be read.
fn previous_chunks(payload: &[u8]) -> Result<(u32, String), String> {
    let m = Manifest::parse(payload, MAX_MAX_MODEL_BYTES)?;
    let n = match m.source {
        Source::Chunks { chunks, .. } => chunks,
        Source::File(_) => 0,
    };
    Ok((n, m.version.to_string()))
}

/// The size of the MQTT PUBLISH packet (QoS 1) that carries `payload` on
/// `topic`: what a broker's packet limit is held against.
pub fn packet_bytes(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// What is retained on `desired` before this publication, and how many
/// chunks it had.
fn read_previous(retained: &Retained, desired: &str) -> (u32, String) {
    match retained {
        Retained::Nothing => (0, String::new()),
        Retained::Payload(p) => match previous_chunks(p) {
            Ok((n, version)) => (n, version),
            Err(why) => {
                eprintln!("edge-infer: warning: what is retained on {desired} is not a manifest ({why}); chunks it may have left are not cleared");
                (0, String::new())
            }
        },
        Retained::Unreadable => {
            eprintln!("edge-infer: warning: the broker refused the subscription to {desired} (access control?): the manifest retained there cannot be read, so the chunks it named are not cleared (and nothing published there is read back)");
            (0, String::new())
        }
    }
}

fn broker_error(e: SessionError) -> Error {
    Error::Broker(e.to_string())
}

fn publish(req: &Request, target: &str, broker: &Broker, p: Prepared) -> Result<(), Error> {
    let desired = topic::desired_topic(target, &req.name);
    let chunk_size = match p.manifest.source {
        Source::Chunks { chunk_size, .. } => chunk_size as usize,
        Source::File(_) => 0,
    };
    let chunks: Vec<Message> = match p.model {
        Some(model) if chunk_size > 0 => {
            let model = Bytes::from(model);
            let n = model.len().div_ceil(chunk_size);
            (0..n)
                .map(|i| Message {
                    topic: topic::chunk_topic(&desired, i as u32),
                    payload: model.slice(i * chunk_size..model.len().min((i + 1) * chunk_size)),
                    what: format!("chunk {i} of {n}"),
                })
                .collect()
        }
        _ => Vec::new(),
    };
    let mut session = Session::open(broker, req.wait).map_err(broker_error)?;
    let mut watch = vec![desired.clone()];
    let check_chunks = req.delivery_check && !chunks.is_empty();
    if check_chunks {
        watch.push(topic::chunk_topic(&desired, 0));
    }
    let retained = session.retained(&watch).map_err(broker_error)?;
    let (before, before_version) = read_previous(&retained[0], &desired);

    if !chunks.is_empty() {
        let total = chunks.len();
        let terminal = std::io::stderr().is_terminal();
        eprintln!(
            "edge-infer: publishing {total} chunk(s) on {}/0..{}",
            topic::chunk_filter(&desired).trim_end_matches("/+"),
            total - 1
        );
        session
            .publish(&chunks, |done| {
                if terminal {
                    eprint!("\r  {done}/{total} chunk(s) confirmed");
                    if done == total {
                        eprintln!();
                    }
                }
            })
            .map_err(|e| lost_chunk(e, &chunks, chunk_size))?;
    }
    if check_chunks {
        match retained.get(1) {
            Some(Retained::Unreadable) => eprintln!(
                "edge-infer: warning: the broker refused the subscription to {}: whether it kept the chunks is not checked",
                chunks[0].topic
            ),
            _ => {
                if !session
                    .delivered(&chunks[0].topic, &chunks[0].payload)
                    .map_err(broker_error)?
                {
                    return Err(Error::Broker(format!(
                        "the broker at {} confirmed the chunks but did not deliver chunk 0 ({} bytes) back within {:.1} s: it dropped it. Mosquitto drops a message over its message_size_limit after confirming it, and brokers drop one that their ACL denies: try a smaller --chunk-size (now {chunk_size}), or check what this user may publish. The manifest was not published, so no device saw this version. (--no-delivery-check skips this check, for a broker that does not send a client its own messages.)",
                        broker.url(),
                        chunks[0].payload.len(),
                        req.wait.as_secs_f64()
                    )));
                }
            }
        }
    }
    let new_chunks = chunks.len() as u32;
    let leftovers: Vec<Message> = (new_chunks..before)
        .map(|i| Message {
            topic: topic::chunk_topic(&desired, i),
            payload: Bytes::new(),
            what: format!("the clearing of leftover chunk {i}"),
        })
        .collect();
    session.publish(&leftovers, |_| {}).map_err(broker_error)?;
    let manifest_message = Message {
        topic: desired.clone(),
        payload: Bytes::from(p.json.clone()),
        what: format!("the manifest on {desired}"),
    };
    session
        .publish(std::slice::from_ref(&manifest_message), |_| {})
        .map_err(broker_error)?;
    if req.delivery_check
        && retained[0] != Retained::Unreadable
        && !session.delivered(&desired, &p.json).map_err(broker_error)?
    {
        return Err(Error::Broker(format!(
            "the broker at {} confirmed the manifest on {desired} but did not deliver it back within {:.1} s: it dropped it (an ACL that denies the topic, or a message size limit below {} bytes), so no device sees this version",
            broker.url(),
            req.wait.as_secs_f64(),
            p.json.len()
        )));
    }
    session.close();

    let m = &p.manifest;
    let whom = if target == topic::FLEET {
        "the fleet".to_string()
    } else {
        format!("device {target}")
    };
    println!(
        "published model {} version {} (sha256 {}, {} bytes) to {whom}",
        req.name, m.version, m.sha256, m.size
    );
    println!("  manifest  {desired} (retained)");
    if let Some(first) = chunks.first() {
        println!(
            "  chunks    {} x {chunk_size} bytes on {}/chunk/N (retained; largest packet {} bytes)",
            chunks.len(),
            desired,
            packet_bytes(&first.topic, first.payload.len())
        );
    }
    if let Source::File(path) = &m.source {
        println!("  model     read from {} on the device", path.display());
    }
    if !leftovers.is_empty() {
        println!(
            "  cleared   {} leftover chunk(s) of version {before_version}",
            leftovers.len()
        );
    }
    if target == topic::FLEET {
        println!(
            "  watch     edge-infer status; edge-infer/+/models/{}/state",
            req.name
        );
    } else {
        println!(
            "  watch     edge-infer status --device {target}; {}",
            topic::model_state_topic(target, &req.name)
        );
    }
    Ok(())
}

/// A chunk the broker took the connection down over: most likely too big
/// for it, or a topic it does not allow.
fn lost_chunk(e: SessionError, chunks: &[Message], chunk_size: usize) -> Error {
    let SessionError::Lost { what, bytes, .. } = &e else {
        return broker_error(e);
    };
    let topic = chunks
        .iter()
        .find(|c| &c.what == what)
        .map_or("", |c| c.topic.as_str());
    Error::Broker(format!(
        "{e}. A broker closes the connection on a packet over its size limit (this one was {} bytes; AWS IoT Core takes 128 KB, EMQX 1 MB by default, HiveMQ and Mosquitto what their max-packet-size/max_packet_size say), or on a publish its ACL or policy denies: try a smaller --chunk-size (now {chunk_size}), or check what this user may publish. The manifest was not published, so no device saw this version.",
        packet_bytes(topic, *bytes)
    ))
}

/// `--clear`: the manifest first (devices stop following it), then every
/// chunk it names.
fn clear(req: &Request, broker: &Broker) -> Result<(), Error> {
    let Some(target) = &req.target else {
        return Err(Error::Input(
            "say what to clear: --device ID or --fleet".into(),
        ));
    };
    let desired = topic::desired_topic(target, &req.name);
    let mut session = Session::open(broker, req.wait).map_err(broker_error)?;
    let retained = session
        .retained(std::slice::from_ref(&desired))
        .map_err(broker_error)?;
    if retained[0] == Retained::Nothing {
        session.close();
        println!("nothing is retained on {desired}: no manifest to clear");
        return Ok(());
    }
    let (chunks, version) = read_previous(&retained[0], &desired);
    let mut messages = vec![Message {
        topic: desired.clone(),
        payload: Bytes::new(),
        what: format!("the clearing of {desired}"),
    }];
    messages.extend((0..chunks).map(|i| Message {
        topic: topic::chunk_topic(&desired, i),
        payload: Bytes::new(),
        what: format!("the clearing of chunk {i}"),
    }));
    session.publish(&messages, |_| {}).map_err(broker_error)?;
    session.close();
    let what = if version.is_empty() {
        String::new()
    } else {
        format!(" (version {version})")
    };
    println!("cleared the manifest on {desired}{what} and {chunks} chunk(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_sizes_count_the_header_topic_and_packet_id() {
        // 1 byte type, 3 bytes length (2 + 10 + 2 + 65536 = 65550), topic
        // length, topic, packet id, payload.
        assert_eq!(packet_bytes("0123456789", 65536), 1 + 3 + 65550);
        assert_eq!(packet_bytes("t", 0), 1 + 1 + 5);
    }

    #[test]
    fn trusted_comments_are_found() {
        let sig =
            "untrusted comment: x\nRW..\ntrusted comment: edge-infer model har 2 sha256 ab\nzz\n";
        assert_eq!(
            trusted_comment(sig),
            Some("edge-infer model har 2 sha256 ab")
        );
        assert_eq!(trusted_comment("untrusted comment: x\n"), None);
    }
}
