//! Remote model updates (`[updates]`) end to end: a real Mosquitto, the
//! real daemon binary and runtime, and manifests built and signed here
//! with the `minisign` crate, so every bad case is ours to make. A device
//! serves `har` from its configured file (version "1"); the update is
//! another build of the same network (version "2", the int8 twin: same
//! tensors, another sha256), published retained in 2 KiB chunks.
//!
//! What the state topic says is checked against
//! schemas/model-state.schema.json, every other message against its schema
//! (tests/common); what the store keeps on disk is read too.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use minisign::KeyPair;
use rumqttc::QoS;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DEV: &str = "dev1";
/// Small, so the update comes in several chunks (the int8 twin: 4).
const CHUNK: usize = 2048;
/// The configured file and the update.
const V1_FILE: &str = "har_accel_f32.tflite";
const V2_FILE: &str = "har_accel_int8.tflite";
/// A model whose tensors are not HAR's: input [1, 8], output [1, 2].
const OTHER_FILE: &str = "dynamic_batch_f32.tflite";
/// Updates take a download, a load, a warm-up and a swap on 2 busy cores.
const SLOW: Duration = Duration::from_secs(60);

// --- signing and publishing, as an operator's tool does --------------------

struct Key(KeyPair);

impl Key {
    fn new() -> Key {
        Key(KeyPair::generate_unencrypted_keypair().expect("generate a minisign key pair"))
    }

    /// The base64 line of the `.pub` file: what `[updates] public_keys` takes.
    fn public(&self) -> String {
        self.0.pk.to_base64()
    }

    /// The text of a `.minisig` file over `text`.
    fn sign(&self, text: &str) -> String {
        minisign::sign(
            Some(&self.0.pk),
            &self.0.sk,
            Cursor::new(text.as_bytes()),
            None,
            None,
        )
        .expect("sign")
        .into_string()
    }
}

/// What a signature covers, spelled out here so the test pins the format
/// (src/updates/manifest.rs `statement`).
fn statement(version: &str, sha256: &str, size: usize) -> String {
    format!("edge-infer model update v1\nname: har\nversion: {version}\nsha256: {sha256}\nsize: {size}\n")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_model(file: &str) -> Vec<u8> {
    std::fs::read(model(file)).expect("read a shipped model")
}

/// A manifest and the chunks to publish with it.
struct Update {
    manifest: Value,
    chunks: Vec<Vec<u8>>,
}

impl Update {
    /// `bytes` as `version`, signed by `key`.
    fn signed(key: &Key, version: &str, bytes: &[u8]) -> Update {
        let sha = sha256_hex(bytes);
        Update {
            manifest: json!({
                "version": version,
                "sha256": sha,
                "size": bytes.len(),
                "signature": key.sign(&statement(version, &sha, bytes.len())),
                "chunks": bytes.len().div_ceil(CHUNK),
                "chunk_size": CHUNK,
            }),
            chunks: bytes.chunks(CHUNK).map(<[u8]>::to_vec).collect(),
        }
    }

    fn sha256(&self) -> &str {
        self.manifest["sha256"].as_str().unwrap()
    }
}

fn desired(device: &str) -> String {
    format!("edge-infer/{device}/models/har/desired")
}

/// Publishes updates retained, in publish-model's order: leftover chunks
/// of an earlier, bigger version cleared, every chunk, then the manifest,
/// so a device that sees the manifest finds its chunks.
struct Publisher {
    c: TestClient,
    /// Chunks retained per desired topic.
    retained: BTreeMap<String, usize>,
}

impl Publisher {
    fn connect(port: u16) -> Publisher {
        Publisher {
            c: TestClient::connect(port),
            retained: BTreeMap::new(),
        }
    }

    fn retain(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.c
            .client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .expect("publish request");
    }

    fn publish(&mut self, desired: &str, u: &Update) {
        self.publish_raw(desired, &u.chunks, u.manifest.to_string().into_bytes());
    }

    fn publish_raw(&mut self, desired: &str, chunks: &[Vec<u8>], manifest: Vec<u8>) {
        let before = self.retained.insert(desired.to_string(), chunks.len());
        for n in chunks.len()..before.unwrap_or(0) {
            self.retain(&format!("{desired}/chunk/{n}"), Vec::new());
        }
        for (n, chunk) in chunks.iter().enumerate() {
            self.retain(&format!("{desired}/chunk/{n}"), chunk.clone());
        }
        self.retain(desired, manifest);
    }
}

// --- the device under test -----------------------------------------------

/// The `har` model on `in/har`, answering on `out/{device_id}/har`.
fn har_model(file: &str, labels: bool) -> String {
    let labels = if labels {
        "labels = \"{models}/har_accel.labels\"\n"
    } else {
        ""
    };
    format!(
        "[[models]]\nname = \"har\"\npath = \"{{models}}/{file}\"\nversion = \"1\"\n{labels}input_topic = \"in/har\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\nqueue_capacity = 10000\nqueue_max_bytes = 268435456\n"
    )
}

/// A device serving `har` (version "1") with `[updates]` trusting `key`;
/// `updates` adds keys to that section. The state dir is the test's, so
/// it outlives a killed daemon.
fn device_config(
    port: u16,
    device: &str,
    state: &Path,
    key: &Key,
    updates: &str,
    labels: bool,
) -> String {
    let extra = format!(
        "state_dir = \"{}\"\n[health]\ninterval_secs = 0.5\n[updates]\npublic_keys = [\"{}\"]\n{updates}\n",
        state.display(),
        key.public()
    );
    config(port, device, &extra, &har_model(V1_FILE, labels))
}

/// One HAR window (128 x 3 readings) as a sensor publishes it.
fn har_payload(id: impl std::fmt::Display) -> String {
    static DATA: OnceLock<String> = OnceLock::new();
    let data = DATA.get_or_init(|| {
        let fx = fixture("har_accel_f32.json");
        case_inputs(&fx["cases"][0])[0].to_string()
    });
    format!("{{\"id\":\"{id}\",\"data\":{data}}}")
}

fn model_state_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let path = repo().join("schemas/model-state.schema.json");
        let text = std::fs::read_to_string(&path).expect("read the model-state schema");
        let schema: Value = serde_json::from_str(&text).expect("parse the model-state schema");
        jsonschema::validator_for(&schema).expect("compile the model-state schema")
    })
}

fn valid_state(m: &Received) -> Value {
    let v: Value = serde_json::from_slice(&m.payload).unwrap_or_else(|e| {
        panic!(
            "state record on {} is not JSON: {e}: {}",
            m.topic,
            String::from_utf8_lossy(&m.payload)
        )
    });
    let errors: Vec<String> = model_state_validator()
        .iter_errors(&v)
        .map(|e| format!("  - at {}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "state record does not match schemas/model-state.schema.json:\n{}\n{v}",
        errors.join("\n")
    );
    v
}

/// Everything a device publishes, sorted as it comes; one client for the
/// test's life, so it sees the records of a daemon and of its restart.
struct Device {
    c: TestClient,
    states: Vec<Value>,
    results: Vec<Value>,
    errors: Vec<Value>,
    status: Vec<Value>,
    health: Vec<Value>,
    served: usize,
}

impl Device {
    fn watch(port: u16, id: &str) -> Device {
        let c = TestClient::connect(port);
        for f in [
            format!("out/{id}/#"),
            format!("edge-infer/{id}/errors"),
            format!("edge-infer/{id}/status"),
            format!("edge-infer/{id}/health"),
            format!("edge-infer/{id}/models/har/state"),
        ] {
            c.subscribe(&f);
        }
        Device {
            c,
            states: Vec::new(),
            results: Vec::new(),
            errors: Vec::new(),
            status: Vec::new(),
            health: Vec::new(),
            served: 0,
        }
    }

    /// Takes what comes within `d`; false if nothing did.
    fn pump(&mut self, d: Duration) -> bool {
        let Some(m) = self.c.recv_within(d) else {
            return false;
        };
        let levels: Vec<&str> = m.topic.split('/').collect();
        match levels.as_slice() {
            ["edge-infer", _, "models", "har", "state"] => self.states.push(valid_state(&m)),
            ["edge-infer", _, "errors"] => self.errors.push(m.json()),
            ["edge-infer", _, "status"] => self.status.push(m.json()),
            ["edge-infer", _, "health"] => self.health.push(m.json()),
            ["out", _, "har"] => self.results.push(m.json()),
            _ => panic!("unexpected message on {}", m.topic),
        }
        true
    }

    fn until(&mut self, what: &str, deadline: Duration, mut done: impl FnMut(&Device) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; state records:\n{}",
                self.states_text()
            );
            self.pump(Duration::from_millis(50));
        }
    }

    /// The first state record from index `from` on that `want` accepts,
    /// with its index.
    fn state(&mut self, from: usize, what: &str, want: impl Fn(&Value) -> bool) -> (usize, Value) {
        let mut found = None;
        self.until(what, SLOW, |d| {
            found = d
                .states
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, s)| want(s))
                .map(|(i, s)| (i, s.clone()));
            found.is_some()
        });
        found.unwrap()
    }

    /// Waits for a `failed` record about `version` whose reason names
    /// every one of `words`; returns the reason.
    fn failed(&mut self, from: usize, version: Option<&str>, words: &[&str]) -> String {
        let (_, s) = self.state(from, &format!("failed {version:?}"), |s| {
            s["state"] == "failed" && s["version"].as_str() == version
        });
        let reason = s["reason"].as_str().unwrap().to_string();
        for w in words {
            assert!(reason.contains(w), "the reason does not say {w:?}: {s}");
        }
        reason
    }

    fn states_text(&self) -> String {
        self.states
            .iter()
            .map(|s| format!("  {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends one HAR window and returns its result: which model answered.
    fn serve(&mut self) -> Value {
        self.served += 1;
        let id = format!("probe-{}", self.served);
        self.c.publish("in/har", har_payload(&id));
        let mut found = None;
        self.until(&format!("the answer to {id}"), SLOW, |d| {
            if let Some(e) = d.errors.iter().find(|e| e["id"] == id.as_str()) {
                panic!("{id} was answered with an error: {e}");
            }
            found = d.results.iter().find(|r| r["id"] == id.as_str()).cloned();
            found.is_some()
        });
        found.unwrap()
    }

    /// The sha256 of the model that answered a message sent now.
    fn serving(&mut self) -> String {
        self.serve()["model_sha256"].as_str().unwrap().to_string()
    }

    /// Waits for a status record naming `version` and `sha256` for har.
    fn status_shows(&mut self, version: &str, sha256: &str) {
        self.until(
            &format!("a status record with har version {version}"),
            SLOW,
            |d| {
                d.status.iter().any(|s| {
                    s["state"] == "online"
                        && s["models"][0]["version"] == version
                        && s["models"][0]["sha256"] == sha256
                })
            },
        );
    }

    /// Waits for a health record naming `version` for har.
    fn health_shows(&mut self, version: &str, sha256: &str) {
        let from = self.health.len();
        self.until(
            &format!("a health record with har version {version}"),
            SLOW,
            |d| {
                d.health[from.min(d.health.len())..].iter().any(|h| {
                    h["models"][0]["version"] == version && h["models"][0]["sha256"] == sha256
                })
            },
        );
    }
}

/// The phases of the state records from `from` on, repeats folded.
fn phases(states: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in states {
        let p = s["state"].as_str().unwrap().to_string();
        if out.last() != Some(&p) {
            out.push(p);
        }
    }
    out
}

fn installed(version: &str, sha256: &str) -> Value {
    json!({"version": version, "sha256": sha256})
}

// --- the store on disk ---------------------------------------------------

fn store_dir(state: &Path) -> PathBuf {
    state.join("models/har")
}

fn store_files(state: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store_dir(state))
        .expect("read state_dir/models/har")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// record.json, or null before the store first wrote one.
fn store_record(state: &Path) -> Value {
    let path = store_dir(state).join("record.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).expect("record.json is JSON"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

/// No download or record write left over, and model files for the active
/// and the previous version only.
fn assert_store_clean(state: &Path) {
    let record = store_record(state);
    let files = store_files(state);
    let keep: Vec<String> = [&record["active"], &record["previous"]]
        .iter()
        .filter_map(|i| i["sha256"].as_str())
        .map(|s| format!("{s}.tflite"))
        .collect();
    for f in &files {
        assert!(
            f == "record.json" || keep.contains(f),
            "{f} is left in the store: {files:?}, record {record}"
        );
    }
    for k in &keep {
        assert!(files.contains(k), "{k} is missing: {files:?}");
    }
}

fn kill(d: Daemon) {
    d.signal("KILL");
    wait_until("the killed daemon to exit", WAIT, || d.has_exited());
}

// --- 1. an update end to end ---------------------------------------------

#[test]
fn a_signed_update_is_downloaded_verified_and_swapped_in_without_losing_a_message() {
    let broker = Broker::start();
    let key = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    // p99 is not what this test is about: the publisher's load makes it
    // noisy on a busy machine.
    let d = Daemon::start(&device_config(
        broker.port,
        DEV,
        state.path(),
        &key,
        "probation_secs = 3\nmin_probation_messages = 20\nmax_p99_ratio = 1000",
        true,
    ));
    let (v1, v2) = (model_sha256(V1_FILE), model_sha256(V2_FILE));
    let (_, first) = dev.state(0, "the state at start", |_| true);
    assert_eq!(first["state"], "active", "{first}");
    assert_eq!(first["active"], Value::Null, "{first}");
    assert_eq!(dev.serving(), v1);
    dev.status_shows("1", &v1);

    // A publisher with unique ids through the whole update, QoS 1.
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        let pc = TestClient::connect(broker.port);
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 50_000 {
                pc.publish("in/har", har_payload(i));
                i += 1;
                sent.store(i, Ordering::Relaxed);
                // A sensor's pace, not a flood: ~500 messages/s.
                std::thread::sleep(Duration::from_millis(2));
            }
            pc
        })
    };
    dev.until("traffic before the update", SLOW, |d| d.results.len() > 100);

    // The update carries golden inputs: the int8 twin's reference outputs.
    let fx = fixture("har_accel_int8.json");
    let case = &fx["cases"][0];
    let mut u = Update::signed(&key, "2", &read_model(V2_FILE));
    u.manifest["golden"] = json!([{
        "payload": json!({"data": case_inputs(case)[0]}).to_string(),
        "outputs": [{"name": case["outputs"][0]["name"], "values": case["outputs"][0]["values"]}],
        "tolerance": 0.02,
    }]);
    assert_eq!(u.chunks.len(), 4);
    let mark = dev.states.len();
    let mut p = Publisher::connect(broker.port);
    p.publish(&desired(DEV), &u);

    let (at, active) = dev.state(mark, "version 2 active", |s| s["state"] == "active");
    assert_eq!(
        phases(&dev.states[mark..=at]),
        ["downloading", "verifying", "staged", "active"],
        "{}",
        dev.states_text()
    );
    let downloading = &dev.states[mark];
    assert_eq!(downloading["version"], "2");
    assert_eq!(downloading["sha256"], v2.as_str());
    assert_eq!(downloading["progress"]["chunks"], 4);
    assert_eq!(downloading["progress"]["bytes"], u.manifest["size"]);
    for s in &dev.states[mark..=at] {
        assert_eq!(s["version"], "2", "{s}");
        assert_eq!(s["sha256"], v2.as_str(), "{s}");
        assert_eq!(s["device_id"], DEV);
        assert_eq!(s["model"], "har");
    }
    assert_eq!(active["active"], installed("2", &v2), "{active}");
    assert_eq!(active["previous"], Value::Null, "{active}");
    let until = active["probation_until"].as_f64().expect("probation_until");
    let at_time = active["at"].as_f64().unwrap();
    assert!(
        until > at_time && until <= at_time + 4.0,
        "probation_until {until} is not 3 s after {at_time}"
    );

    // Traffic after the swap, then every id answered exactly once: by the
    // old version up to one point, by the new one after it.
    let sent_at_swap = sent.load(Ordering::Relaxed);
    dev.until("traffic after the swap", SLOW, |_| {
        sent.load(Ordering::Relaxed) > sent_at_swap + 200
    });
    stop.store(true, Ordering::Relaxed);
    let _pc = publisher.join().unwrap();
    let total = sent.load(Ordering::Relaxed);
    let answered = |d: &Device| {
        d.results
            .iter()
            .filter(|r| !r["id"].as_str().unwrap().starts_with("probe"))
            .count()
            + d.errors.len()
    };
    dev.until(&format!("answers to all {total} messages"), SLOW, |d| {
        answered(d) >= total
    });
    assert!(dev.errors.is_empty(), "errors: {:?}", dev.errors);
    let mut by_id: Vec<Option<String>> = vec![None; total];
    for r in &dev.results {
        let Ok(id) = r["id"].as_str().unwrap().parse::<usize>() else {
            continue;
        };
        assert!(by_id[id].is_none(), "id {id} answered twice");
        by_id[id] = Some(r["model_sha256"].as_str().unwrap().to_string());
    }
    let shas: Vec<&str> = by_id
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_deref()
                .unwrap_or_else(|| panic!("id {i} not answered"))
        })
        .collect();
    let switch = shas
        .iter()
        .position(|s| *s == v2)
        .expect("v2 never answered");
    assert!(switch > 0, "v1 never answered");
    assert!(
        shas[..switch].iter().all(|s| *s == v1),
        "v1 and v2 interleave"
    );
    assert!(
        shas[switch..].iter().all(|s| *s == v2),
        "v1 and v2 interleave"
    );
    assert!(
        switch <= sent_at_swap,
        "messages sent after the swap was reported went to v1"
    );
    let results = dev
        .results
        .iter()
        .filter(|r| r["model_sha256"] == v2.as_str());
    assert!(results.count() > 200);

    // Fleet tools see the version.
    dev.status_shows("2", &v2);
    dev.health_shows("2", &v2);

    // Probation ends with the version confirmed, said on the state topic.
    let (_, confirmed) = dev.state(at + 1, "version 2 confirmed", |s| {
        s["state"] == "active" && s.get("probation_until").is_none()
    });
    assert_eq!(confirmed["version"], "2", "{confirmed}");
    assert_eq!(confirmed["active"], installed("2", &v2));
    d.wait_for_log("model har: version 2 confirmed after probation");
    let record = store_record(state.path());
    assert_eq!(record["active"], installed("2", &v2), "{record}");
    assert_eq!(record["probation"], Value::Null, "{record}");
    assert_store_clean(state.path());
    assert_eq!(
        store_files(state.path()),
        [format!("{v2}.tflite"), "record.json".to_string()]
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn the_fleet_manifest_is_followed_unless_the_device_has_its_own() {
    let broker = Broker::start();
    let key = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    let d = Daemon::start(&device_config(
        broker.port,
        DEV,
        state.path(),
        &key,
        "probation_secs = 1",
        false,
    ));
    let mut p = Publisher::connect(broker.port);
    let (f32_bytes, int8_bytes) = (read_model(V1_FILE), read_model(V2_FILE));
    let (v1, v2) = (sha256_hex(&f32_bytes), sha256_hex(&int8_bytes));

    // No manifest of its own: the fleet's is followed.
    let fleet_v2 = Update::signed(&key, "2", &int8_bytes);
    p.publish(&desired("fleet"), &fleet_v2);
    let (at, s) = dev.state(0, "the fleet's version 2 active", |s| {
        s["state"] == "active" && s["version"] == "2"
    });
    assert_eq!(s["sha256"], v2.as_str());
    assert_eq!(dev.serving(), v2);

    // Its own manifest wins (here: the float build again, as version 3;
    // it came during version 2's probation and waits for the verdict).
    let own_v3 = Update::signed(&key, "3", &f32_bytes);
    p.publish(&desired(DEV), &own_v3);
    let (at, s) = dev.state(at + 1, "its own version 3 active", |s| {
        s["state"] == "active" && s["version"] == "3"
    });
    assert_eq!(s["active"], installed("3", &v1), "{s}");
    assert_eq!(s["previous"], installed("2", &v2), "{s}");
    assert_eq!(dev.serving(), v1);
    dev.status_shows("3", &v1);
    d.wait_for_log("model har: version 3 confirmed after probation");
    assert_store_clean(state.path());
    assert_eq!(store_files(state.path()).len(), 3, "v3, v2 and the record");

    // A newer fleet version does not move it. The updates thread takes
    // manifests in order: by the time it refuses the downgrade published
    // next, it has seen the fleet's version 4 and done nothing about it.
    let fleet_v4 = Update::signed(&key, "4", &int8_bytes);
    p.publish(&desired("fleet"), &fleet_v4);
    let own_v25 = Update::signed(&key, "2.5", &int8_bytes);
    p.publish(&desired(DEV), &own_v25);
    dev.failed(
        at + 1,
        Some("2.5"),
        &["downgrade", "older than the active 3"],
    );
    assert!(
        dev.states[at + 1..].iter().all(|s| s["version"] != "4"),
        "the fleet's version 4 was acted on though the device has its own manifest:\n{}",
        dev.states_text()
    );
    assert_eq!(dev.serving(), v1);

    // Its own manifest cleared, the fleet's is followed again.
    let mark = dev.states.len();
    p.retain(&desired(DEV), Vec::new());
    let (_, s) = dev.state(mark, "the fleet's version 4 active", |s| {
        s["state"] == "active" && s["version"] == "4"
    });
    assert_eq!(s["active"], installed("4", &v2), "{s}");
    assert_eq!(s["previous"], installed("3", &v1), "{s}");
    assert_eq!(dev.serving(), v2);
    assert_store_clean(state.path());
}

#[test]
fn a_model_file_already_on_the_device_is_staged_from_its_path() {
    let broker = Broker::start();
    let key = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    let _d = Daemon::start(&device_config(
        broker.port,
        DEV,
        state.path(),
        &key,
        "",
        true,
    ));
    let (v1, v2) = (model_sha256(V1_FILE), model_sha256(V2_FILE));
    let on_device = |u: &mut Update, path: &Path| {
        let o = u.manifest.as_object_mut().unwrap();
        o.remove("chunks");
        o.remove("chunk_size");
        o.insert("path".into(), json!(path));
        u.chunks.clear();
    };
    let mut p = Publisher::connect(broker.port);

    // The file at the path is not the one signed for (one byte differs).
    let image = tempfile::tempdir().unwrap();
    let damaged = image.path().join("damaged.tflite");
    let mut bytes = read_model(V2_FILE);
    bytes[100] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    let mut u = Update::signed(&key, "2", &read_model(V2_FILE));
    on_device(&mut u, &damaged);
    p.publish(&desired(DEV), &u);
    dev.failed(
        0,
        Some("2"),
        &["sha256 mismatch", "copied from", "damaged.tflite"],
    );
    assert_eq!(dev.serving(), v1);

    // The right one: copied into the store, checked, swapped in.
    let mark = dev.states.len();
    let mut u = Update::signed(&key, "2", &read_model(V2_FILE));
    on_device(&mut u, &model(V2_FILE));
    p.publish(&desired(DEV), &u);
    let (at, s) = dev.state(mark, "version 2 active", |s| s["state"] == "active");
    assert_eq!(
        phases(&dev.states[mark..=at]),
        ["verifying", "staged", "active"],
        "{}",
        dev.states_text()
    );
    assert_eq!(s["active"], installed("2", &v2), "{s}");
    assert_eq!(dev.serving(), v2);
    assert_store_clean(state.path());
    assert_eq!(
        store_files(state.path()),
        [format!("{v2}.tflite"), "record.json".to_string()]
    );
}

// --- 2. refusals -----------------------------------------------------------

#[test]
fn refusals_say_why_and_the_old_version_keeps_serving() {
    let broker = Broker::start();
    let key = Key::new();
    let stranger = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    // With labels: an update must have HAR's 4 outputs.
    let _d = Daemon::start(&device_config(
        broker.port,
        DEV,
        state.path(),
        &key,
        "download_timeout_secs = 3",
        true,
    ));
    let v1 = model_sha256(V1_FILE);
    let int8 = read_model(V2_FILE);
    let mut p = Publisher::connect(broker.port);
    let topic = desired(DEV);
    assert_eq!(dev.serving(), v1);

    let check = |dev: &mut Device, version: Option<&str>, words: &[&str]| {
        let mark = dev.states.len();
        let reason = dev.failed(mark, version, words);
        let last = dev.states.last().unwrap();
        assert_eq!(last["active"], Value::Null, "{last}");
        assert_eq!(dev.serving(), v1, "after: {reason}");
        assert!(
            dev.states[mark..].iter().all(|s| s["state"] != "active"),
            "{}",
            dev.states_text()
        );
    };

    // Not a manifest at all.
    p.publish_raw(&topic, &[], b"this is not a manifest".to_vec());
    check(&mut dev, None, &["refused", "not valid", "JSON object"]);

    // A signature over another statement (version 3, not 2).
    let mut u = Update::signed(&key, "2", &int8);
    u.manifest["signature"] = json!(key.sign(&statement("3", u.sha256(), int8.len())));
    p.publish(&topic, &u);
    check(&mut dev, Some("2"), &["bad signature", "does not match"]);
    // The same fault in the next version: the record names that version.
    let mut u = Update::signed(&key, "2.01", &int8);
    u.manifest["signature"] = json!(key.sign(&statement("3", u.sha256(), int8.len())));
    p.publish(&topic, &u);
    check(&mut dev, Some("2.01"), &["bad signature", "does not match"]);

    // A signature by a key this device does not trust.
    let u = Update::signed(&stranger, "2.1", &int8);
    p.publish(&topic, &u);
    let stranger_id = key_id(&stranger);
    check(
        &mut dev,
        Some("2.1"),
        &["bad signature", &stranger_id, "not trusted"],
    );

    // Signed over the int8 build's sha256, chunks of other bytes.
    let mut u = Update::signed(&key, "2.2", &int8);
    let mut other = int8.clone();
    other[100] ^= 0xff;
    u.chunks = other.chunks(CHUNK).map(<[u8]>::to_vec).collect();
    p.publish(&topic, &u);
    check(&mut dev, Some("2.2"), &["sha256 mismatch", u.sha256()]);

    // A chunk shorter than chunk_size (not the last one).
    let mut u = Update::signed(&key, "2.3", &int8);
    u.chunks[1].truncate(1000);
    p.publish(&topic, &u);
    check(
        &mut dev,
        Some("2.3"),
        &["chunk 1 is 1000 bytes", "implies 2048"],
    );

    // A chunk that never comes.
    let u = Update::signed(&key, "2.31", &int8);
    p.publish_raw(&topic, &u.chunks[..3], u.manifest.to_string().into_bytes());
    check(
        &mut dev,
        Some("2.31"),
        &[
            "received 3 of 4 chunks",
            "missing 3",
            "download_timeout_secs",
        ],
    );

    // A model whose tensors do not fit: 2 outputs, 4 labels.
    let u = Update::signed(&key, "2.4", &read_model(OTHER_FILE));
    p.publish(&topic, &u);
    let reason = dev.failed(
        dev.states.len(),
        Some("2.4"),
        &["does not fit this model's settings", "label"],
    );
    assert_eq!(dev.serving(), v1, "after: {reason}");
    let record = store_record(state.path());
    assert_eq!(record["refused"]["sha256"], u.sha256(), "{record}");
    // Remembered: the same build is not tried again.
    p.publish(&topic, &u);
    check(
        &mut dev,
        Some("2.4"),
        &["refused before and is not tried again", "does not fit"],
    );

    // A downgrade.
    let u = Update::signed(&key, "0.9", &int8);
    p.publish(&topic, &u);
    check(
        &mut dev,
        Some("0.9"),
        &["older than the active 1", "downgrade", "allow_downgrade"],
    );

    // Nothing was ever installed.
    assert_store_clean(state.path());
    assert_eq!(store_files(state.path()), ["record.json"]);
}

/// The id minisign shows for a key: hex of its little-endian key number.
fn key_id(key: &Key) -> String {
    key.0
        .pk
        .keynum()
        .iter()
        .rev()
        .map(|b| format!("{b:02X}"))
        .collect()
}

// --- 3. rollback ---------------------------------------------------------

#[test]
fn a_version_that_fails_its_golden_inputs_is_never_swapped_in() {
    let broker = Broker::start();
    let key = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    let d = Daemon::start(&device_config(
        broker.port,
        DEV,
        state.path(),
        &key,
        "",
        true,
    ));
    let v1 = model_sha256(V1_FILE);
    let fx = fixture("har_accel_int8.json");
    let case = &fx["cases"][0];
    let mut u = Update::signed(&key, "2", &read_model(V2_FILE));
    u.manifest["golden"] = json!([{
        "payload": json!({"data": case_inputs(case)[0]}).to_string(),
        "outputs": [{"name": case["outputs"][0]["name"], "values": [0.9, 0.9, 0.9, 0.9]}],
        "tolerance": 0.01,
    }]);
    let mut p = Publisher::connect(broker.port);
    p.publish(&desired(DEV), &u);
    let mark = dev.states.len();
    dev.failed(mark, Some("2"), &["golden[0]", "expected 0.9 within 0.01"]);
    assert!(
        dev.states
            .iter()
            .all(|s| s["state"] != "active" || s["version"] != "2"),
        "{}",
        dev.states_text()
    );
    assert_eq!(dev.serving(), v1);
    assert_eq!(d.count_log("now serving version 2"), 0);
    let record = store_record(state.path());
    assert_eq!(record["refused"]["sha256"], u.sha256(), "{record}");
    assert_eq!(record["active"], Value::Null, "{record}");
    assert_store_clean(state.path());
    assert_eq!(store_files(state.path()), ["record.json"]);
}

#[test]
fn a_version_whose_error_rate_jumps_on_probation_is_rolled_back() {
    let broker = Broker::start();
    let key = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    // Without labels, a model with another input shape loads; HAR windows
    // then get bad_shape from it.
    let d = Daemon::start(&device_config(
        broker.port,
        DEV,
        state.path(),
        &key,
        "probation_secs = 120\nmin_probation_messages = 20\nmax_error_rate_increase_percent = 5",
        false,
    ));
    let v1 = model_sha256(V1_FILE);
    for _ in 0..3 {
        assert_eq!(dev.serving(), v1);
    }
    let u = Update::signed(&key, "2", &read_model(OTHER_FILE));
    let mut p = Publisher::connect(broker.port);
    let mark = dev.states.len();
    p.publish(&desired(DEV), &u);
    let (at, s) = dev.state(mark, "version 2 active", |s| s["state"] == "active");
    assert_eq!(s["version"], "2", "{s}");
    assert!(s["probation_until"].is_number(), "{s}");

    // Sensors keep sending; the new version answers each with an error.
    let mut i = 0;
    let mut rolled_back = None;
    let start = Instant::now();
    let mut sent_at = start;
    while rolled_back.is_none() {
        assert!(
            start.elapsed() < SLOW,
            "no rollback after {i} messages:\n{}",
            dev.states_text()
        );
        // A sensor's pace: one message per 5 ms.
        if i == 0 || sent_at.elapsed() >= Duration::from_millis(5) {
            dev.c.publish("in/har", har_payload(format!("after-{i}")));
            i += 1;
            sent_at = Instant::now();
        }
        dev.pump(Duration::from_millis(5));
        rolled_back = dev.states[at + 1..]
            .iter()
            .find(|s| s["state"] == "rolled_back")
            .cloned();
    }
    let s = rolled_back.unwrap();
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("version 2 was rolled back during probation")
            && reason.contains("error rate")
            && reason.contains("since the swap")
            && reason.contains("(limit: +5 points)"),
        "{s}"
    );
    assert_eq!(s["version"], "2", "{s}");
    assert_eq!(s["active"], Value::Null, "{s}");
    assert!(
        dev.errors.iter().any(|e| e["code"] == "bad_shape"),
        "{:?}",
        dev.errors
    );
    assert!(
        dev.errors.iter().all(|e| e["code"] == "bad_shape"),
        "{:?}",
        dev.errors
    );

    assert_eq!(dev.serving(), v1);
    dev.status_shows("1", &v1);
    d.wait_for_log("model har: version 2 was rolled back during probation");
    let record = store_record(state.path());
    assert_eq!(record["refused"]["sha256"], u.sha256(), "{record}");
    assert_eq!(record["active"], Value::Null, "{record}");
    assert_eq!(record["probation"], Value::Null, "{record}");
    assert_store_clean(state.path());
    assert_eq!(store_files(state.path()), ["record.json"]);
}

#[test]
fn a_daemon_killed_on_probation_comes_back_on_the_previous_version() {
    let broker = Broker::start();
    let key = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    let cfg = device_config(
        broker.port,
        DEV,
        state.path(),
        &key,
        "probation_secs = 600",
        false,
    );
    let d = Daemon::start(&cfg);
    let (v1, v2) = (model_sha256(V1_FILE), model_sha256(V2_FILE));
    let mut p = Publisher::connect(broker.port);
    p.publish(
        &desired(DEV),
        &Update::signed(&key, "2", &read_model(V2_FILE)),
    );
    dev.state(0, "version 2 active", |s| {
        s["state"] == "active" && s["version"] == "2"
    });
    assert_eq!(dev.serving(), v2);
    assert_eq!(store_record(state.path())["probation"]["version"], "2");

    kill(d);
    let mark = dev.states.len();
    let d = Daemon::start(&cfg);
    assert_eq!(dev.serving(), v1);
    dev.status_shows("1", &v1);
    let (at, s) = dev.state(mark, "rolled back", |s| s["state"] == "rolled_back");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("the daemon restarted before version 2 was confirmed"),
        "{s}"
    );
    assert_eq!(s["version"], "2", "{s}");
    assert_eq!(s["sha256"], v2.as_str(), "{s}");
    assert_eq!(s["active"], Value::Null, "{s}");
    // The manifest is still retained: the build taken out is not tried
    // again, and the record keeps saying so.
    let (_, again) = dev.state(at + 1, "still rolled back", |s| {
        s["state"] != "active" || s["version"] == "2"
    });
    assert_eq!(again["state"], "rolled_back", "{again}");
    assert!(
        again["reason"]
            .as_str()
            .unwrap()
            .contains("the daemon restarted before version 2 was confirmed"),
        "{again}"
    );
    assert!(
        dev.states[mark..]
            .iter()
            .all(|s| s["state"] != "downloading"),
        "{}",
        dev.states_text()
    );
    assert_eq!(dev.serving(), v1);
    let record = store_record(state.path());
    assert_eq!(record["active"], Value::Null, "{record}");
    assert_eq!(record["probation"], Value::Null, "{record}");
    assert_eq!(record["refused"]["sha256"], v2.as_str(), "{record}");
    assert_store_clean(state.path());
    assert_eq!(store_files(state.path()), ["record.json"]);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_confirmed_update_that_no_longer_loads_at_start_is_rolled_back() {
    let broker = Broker::start();
    let key = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    // Version 1 is the small int8 build, version 2 the float one; a
    // restart with a file limit between their sizes is a config the
    // confirmed update no longer loads under.
    let (small, big) = (read_model(V2_FILE), read_model(V1_FILE));
    assert!(small.len() < 8_192 && big.len() > 8_192);
    let cfg = |limits: &str| {
        let extra = format!(
            "state_dir = \"{}\"\n[health]\ninterval_secs = 0.5\n[updates]\npublic_keys = [\"{}\"]\nprobation_secs = 1\n{limits}",
            state.path().display(),
            key.public()
        );
        config(broker.port, DEV, &extra, &har_model(V2_FILE, false))
    };
    let d = Daemon::start(&cfg(""));
    let (v1, v2) = (sha256_hex(&small), sha256_hex(&big));
    assert_eq!(dev.serving(), v1);
    let mut p = Publisher::connect(broker.port);
    p.publish(&desired(DEV), &Update::signed(&key, "2", &big));
    dev.state(0, "version 2 active", |s| {
        s["state"] == "active" && s["version"] == "2"
    });
    d.wait_for_log("model har: version 2 confirmed after probation");
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(store_record(state.path())["active"], installed("2", &v2));

    let mark = dev.states.len();
    let d = Daemon::start(&cfg("[limits]\nmax_model_bytes = 8192\n"));
    assert_eq!(dev.serving(), v1);
    dev.status_shows("1", &v1);
    let (_, s) = dev.state(mark, "rolled back", |s| s["state"] == "rolled_back");
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("it does not load at start")
            && reason.contains(&format!("{v2}.tflite"))
            && reason.contains("8192"),
        "{s}"
    );
    assert_eq!(s["version"], "2", "{s}");
    assert_eq!(s["active"], Value::Null, "{s}");
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("the active update was rolled back: it does not load at start"),
        "{log}"
    );
}

// --- 4. kill -9 at each step --------------------------------------------

/// A device killed at `step` of its update to version 2; what the test
/// needs to restart it and look.
struct Killed {
    _broker: Broker,
    dev: Device,
    state: tempfile::TempDir,
    cfg: String,
    v1: String,
    v2: String,
    /// State records before the restart.
    mark: usize,
}

fn killed_at(step: &str) -> Killed {
    let broker = Broker::start();
    let key = Key::new();
    let state = tempfile::tempdir().unwrap();
    let mut dev = Device::watch(broker.port, DEV);
    let cfg = device_config(
        broker.port,
        DEV,
        state.path(),
        &key,
        "probation_secs = 600",
        false,
    );
    let d = Daemon::spawn(&cfg, &[("EDGE_INFER_TEST_UPDATE_PAUSE", step)]);
    d.wait_for_log("ready:");
    let (v1, v2) = (model_sha256(V1_FILE), model_sha256(V2_FILE));
    let mut p = Publisher::connect(broker.port);
    p.publish(
        &desired(DEV),
        &Update::signed(&key, "2", &read_model(V2_FILE)),
    );
    d.wait_for_log(&format!("updates: test pause at {step}"));
    // The updates thread stands still; serving does not.
    assert_eq!(dev.serving(), v1);
    let files = store_files(state.path());
    let record = store_record(state.path());
    match step {
        "download" => {
            assert!(files.contains(&format!("{v2}.part")), "{files:?}");
            assert_eq!(record["active"], Value::Null, "{record}");
        }
        "staged" => {
            assert!(files.contains(&format!("{v2}.tflite")), "{files:?}");
            assert_eq!(record["active"], Value::Null, "{record}");
        }
        "swap" => {
            assert!(files.contains(&format!("{v2}.tflite")), "{files:?}");
            assert_eq!(record["active"], installed("2", &v2), "{record}");
            assert_eq!(record["probation"]["version"], "2", "{record}");
        }
        _ => unreachable!(),
    }
    kill(d);
    let mark = dev.states.len();
    Killed {
        _broker: broker,
        dev,
        state,
        cfg,
        v1,
        v2,
        mark,
    }
}

/// Restarted after a kill before the store said "probation": the update
/// runs again from the retained manifest and chunks and ends active.
fn restarted_and_updated(k: &mut Killed) {
    let d = Daemon::start(&k.cfg);
    let (at, s) = k
        .dev
        .state(k.mark, "version 2 active after the restart", |s| {
            s["state"] == "active" && s["version"] == "2"
        });
    assert_eq!(
        phases(&k.dev.states[k.mark..=at]),
        ["active", "downloading", "verifying", "staged", "active"],
        "{}",
        k.dev.states_text()
    );
    assert_eq!(s["active"], installed("2", &k.v2), "{s}");
    assert_eq!(k.dev.serving(), k.v2);
    let record = store_record(k.state.path());
    assert_eq!(record["active"], installed("2", &k.v2), "{record}");
    assert_eq!(record["refused"], Value::Null, "{record}");
    assert_store_clean(k.state.path());
    assert_eq!(
        store_files(k.state.path()),
        [format!("{}.tflite", k.v2), "record.json".to_string()]
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn killed_mid_download_the_download_runs_again_from_the_retained_chunks() {
    let mut k = killed_at("download");
    restarted_and_updated(&mut k);
}

#[test]
fn killed_after_staging_the_update_runs_again() {
    let mut k = killed_at("staged");
    restarted_and_updated(&mut k);
}

#[test]
fn killed_mid_swap_the_daemon_comes_back_on_the_previous_version() {
    let mut k = killed_at("swap");
    // What a kill during the next record write (the confirmation) would
    // leave as well: the record before it holds.
    std::fs::write(
        store_dir(k.state.path()).join("record.json.tmp"),
        b"{\"active\": nul",
    )
    .unwrap();
    let d = Daemon::start(&k.cfg);
    assert_eq!(k.dev.serving(), k.v1);
    let (at, s) = k
        .dev
        .state(k.mark, "rolled back", |s| s["state"] == "rolled_back");
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("the daemon restarted before version 2 was confirmed"),
        "{s}"
    );
    assert_eq!(s["version"], "2", "{s}");
    assert_eq!(s["sha256"], k.v2.as_str(), "{s}");
    assert_eq!(s["active"], Value::Null, "{s}");
    let (_, again) = k.dev.state(at + 1, "still rolled back", |s| {
        s["state"] != "active" || s["version"] == "2"
    });
    assert_eq!(again["state"], "rolled_back", "{again}");
    assert_eq!(k.dev.serving(), k.v1);
    k.dev.status_shows("1", &k.v1);
    let record = store_record(k.state.path());
    assert_eq!(record["active"], Value::Null, "{record}");
    assert_eq!(record["probation"], Value::Null, "{record}");
    assert_eq!(record["refused"]["sha256"], k.v2.as_str(), "{record}");
    assert_store_clean(k.state.path());
    assert_eq!(store_files(k.state.path()), ["record.json"]);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}
