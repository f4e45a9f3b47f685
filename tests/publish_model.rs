//! The operator side of remote model updates, against a real Mosquitto:
//! `edge-infer keygen` makes minisign keys (read and written by the
//! minisign tool too), `edge-infer publish-model` signs a model and leaves
//! its chunks and then its manifest retained on the device's (or fleet's)
//! desired topics, clears what a bigger version left, and says precisely
//! why when a key, a password or the broker is not right.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use minisign_verify::{PublicKey, Signature};
use serde_json::Value;
use sha2::{Digest, Sha256};

const MODEL: &str = "har_accel_int8.tflite";

/// The statement a manifest's signature covers (src/updates/manifest.rs).
fn statement(name: &str, version: &str, sha256: &str, size: u64) -> String {
    format!("edge-infer model update v1\nname: {name}\nversion: {version}\nsha256: {sha256}\nsize: {size}\n")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// Runs `edge-infer keygen --out dir --name name [--password-file pw]`,
/// checks its report, and returns the public key line it printed.
fn keygen(dir: &Path, name: &str, password_file: Option<&Path>) -> String {
    let mut args = vec!["keygen", "--out", path_str(dir), "--name", name];
    if let Some(p) = password_file {
        args.extend(["--password-file", path_str(p)]);
    }
    let (code, out, err) = run_cli(&args, &[]);
    assert_eq!(code, Some(0), "{err}");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("public_keys = [\""))
        .and_then(|l| l.strip_suffix("\"]"))
        .unwrap_or_else(|| panic!("no public_keys line in:\n{out}"))
        .to_string();
    let pub_file = std::fs::read_to_string(dir.join(format!("{name}.pub"))).expect("the .pub file");
    assert_eq!(pub_file.lines().nth(1), Some(line.as_str()), "{pub_file}");
    let key_id = out
        .lines()
        .find_map(|l| l.strip_prefix("key id      "))
        .unwrap_or_else(|| panic!("no key id in:\n{out}"));
    assert!(pub_file.starts_with(&format!(
        "untrusted comment: minisign public key: {key_id}\n"
    )));
    line
}

/// Everything retained under `filter` now, by topic. Mosquitto handles
/// one client's packets in order and sends a subscription's retained
/// messages before it reads the next packet, so a marker retained by this
/// client before it subscribes, and subscribed to after `filter`, arrives
/// after every retained message of `filter`.
fn retained(port: u16, filter: &str) -> BTreeMap<String, Vec<u8>> {
    let c = TestClient::connect(port);
    let marker = format!("test/marker/{}", free_port());
    c.client
        .publish(&marker, rumqttc::QoS::AtLeastOnce, true, b"end".to_vec())
        .expect("publish the marker");
    c.subscribe(filter);
    c.subscribe(&marker);
    let mut found = BTreeMap::new();
    loop {
        let m = c.recv();
        if m.topic == marker {
            return found;
        }
        found.insert(m.topic, m.payload);
    }
}

/// A test's folder with a key pair (encrypted with `pw` when given).
struct Keys {
    dir: tempfile::TempDir,
    public_key: String,
}

impl Keys {
    fn make(password: Option<&str>) -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = password.map(|p| {
            let path = dir.path().join("password");
            std::fs::write(&path, format!("{p}\n")).expect("write the password");
            path
        });
        let public_key = keygen(&dir.path().join("keys"), "edge-infer", pw.as_deref());
        Keys { dir, public_key }
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("keys/edge-infer.key")
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("keys/edge-infer.pub")
    }

    fn password(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).expect("write a test file");
        p
    }
}

/// publish-model with `args` against the broker on `port`, and no config.
fn publish(port: u16, args: &[&str]) -> (Option<i32>, String, String) {
    let port = port.to_string();
    let mut all = vec![
        "publish-model",
        "--config",
        "/nonexistent/edge-infer.toml",
        "--port",
        &port,
    ];
    all.extend_from_slice(args);
    run_cli(&all, &[])
}

/// The manifest and chunks retained for `device`'s model `name`,
/// reassembled: (manifest, model bytes). Checks that the chunks are
/// exactly 0..chunks, each `chunk_size` but the last.
fn read_back(port: u16, device: &str, name: &str) -> (Value, Vec<u8>) {
    let desired = format!("edge-infer/{device}/models/{name}/desired");
    let mut all = retained(port, &format!("{desired}/#"));
    let manifest = Received {
        topic: desired.clone(),
        payload: all
            .remove(&desired)
            .unwrap_or_else(|| panic!("no manifest on {desired}")),
    }
    .json();
    let chunks = manifest["chunks"].as_u64().expect("chunks") as usize;
    let chunk_size = manifest["chunk_size"].as_u64().expect("chunk_size") as usize;
    let numbers: Vec<usize> = all
        .keys()
        .map(|t| {
            t.strip_prefix(&format!("{desired}/chunk/"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected topic {t}"))
        })
        .collect();
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..chunks).collect::<Vec<_>>(), "retained chunks");
    let mut model = Vec::new();
    for n in 0..chunks {
        let c = &all[&format!("{desired}/chunk/{n}")];
        if n + 1 < chunks {
            assert_eq!(c.len(), chunk_size, "chunk {n}");
        } else {
            assert!(!c.is_empty() && c.len() <= chunk_size, "last chunk");
        }
        model.extend_from_slice(c);
    }
    (manifest, model)
}

/// The manifest's signature over its statement, checked with the
/// minisign-verify crate (what the daemon uses) against `public_key`.
fn assert_signed(manifest: &Value, name: &str, public_key: &str) {
    let statement = statement(
        name,
        manifest["version"].as_str().expect("version"),
        manifest["sha256"].as_str().expect("sha256"),
        manifest["size"].as_u64().expect("size"),
    );
    let key = PublicKey::from_base64(public_key).expect("a minisign public key");
    let sig = Signature::decode(manifest["signature"].as_str().expect("signature"))
        .expect("a minisign signature");
    key.verify(statement.as_bytes(), &sig, false)
        .expect("the signature verifies against the generated public key");
    let other = statement.replace(&format!("name: {name}\n"), "name: other\n");
    assert!(key.verify(other.as_bytes(), &sig, false).is_err());
}

/// The minisign tool (scripts/setup-deps.sh installs it).
fn minisign() -> Command {
    assert!(
        Path::new("/usr/bin/minisign").exists(),
        "minisign is not installed: run scripts/setup-deps.sh (the README's test command does)"
    );
    Command::new("/usr/bin/minisign")
}

#[test]
fn a_signed_model_is_left_retained_for_the_device_and_verifies() {
    let broker = Broker::start();
    let keys = Keys::make(Some("correct horse"));
    // The device's config: it trusts the key, so publish-model checks the
    // signature with the device's own code, and takes the broker from it.
    let config = keys.file(
        "config.toml",
        config(
            broker.port,
            "gw-1",
            &format!("[updates]\npublic_keys = [\"{}\"]\n", keys.public_key),
            "[[models]]\nname = \"har\"\npath = \"{models}/har_accel_int8.tflite\"\ninput_topic = \"sensors/+/accel\"\n",
        )
        .as_bytes(),
    );
    let model_path = model(MODEL);
    // Sees the messages live, in the order the broker took them.
    let watcher = TestClient::connect(broker.port);
    watcher.subscribe("edge-infer/gw-1/models/har/desired/#");
    let (code, out, err) = run_cli(
        &[
            "publish-model",
            "--config",
            path_str(&config),
            "--model",
            path_str(&model_path),
            "--name",
            "har",
            "--version",
            "1.2.0",
            "--secret-key",
            path_str(&keys.secret()),
            "--password-file",
            path_str(&keys.password()),
            "--device",
            "gw-1",
            "--chunk-size",
            "1KiB",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!err.contains("note:"), "{err}");
    let bytes = std::fs::read(&model_path).expect("the model");
    let chunks = bytes.len().div_ceil(1024);
    assert!(
        out.contains("published model har version 1.2.0")
            && out.contains(&format!("{chunks} x 1024 bytes")),
        "{out}"
    );

    // Every chunk before the manifest, so a device that sees the manifest
    // finds them all.
    let live: Vec<String> = watcher
        .recv_n(chunks + 1)
        .into_iter()
        .map(|m| m.topic)
        .collect();
    assert_eq!(
        live.last().map(String::as_str),
        Some("edge-infer/gw-1/models/har/desired"),
        "{live:?}"
    );

    let (manifest, reassembled) = read_back(broker.port, "gw-1", "har");
    assert_eq!(manifest["chunks"], chunks);
    assert_eq!(manifest["size"], bytes.len());
    assert_eq!(manifest["sha256"], sha256_hex(&bytes));
    assert_eq!(manifest["sha256"], model_sha256(MODEL));
    assert_eq!(sha256_hex(&reassembled), sha256_hex(&bytes));
    assert_signed(&manifest, "har", &keys.public_key);

    // The minisign tool agrees: the statement and signature as files,
    // checked against the .pub keygen wrote.
    let statement_file = keys.file(
        "statement",
        statement("har", "1.2.0", &sha256_hex(&bytes), bytes.len() as u64).as_bytes(),
    );
    let sig_file = keys.file(
        "statement.minisig",
        manifest["signature"]
            .as_str()
            .expect("signature")
            .as_bytes(),
    );
    let out = minisign()
        .args(["-V", "-p"])
        .arg(keys.public())
        .arg("-m")
        .arg(&statement_file)
        .arg("-x")
        .arg(&sig_file)
        .output()
        .expect("run minisign");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("Trusted comment: edge-infer model har 1.2.0 sha256"),
        "{said}"
    );
}

#[test]
fn a_smaller_version_clears_the_chunks_of_a_bigger_one() {
    let broker = Broker::start();
    let keys = Keys::make(None);
    // Any bytes sign and travel; the device is what loads them.
    let big: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let big_path = keys.file("big.tflite", &big);
    let secret = keys.secret();
    let args = |file: &Path, version: &'static str| {
        vec![
            "--model".to_string(),
            path_str(file).to_string(),
            "--name".into(),
            "har".into(),
            "--version".into(),
            version.into(),
            "--secret-key".into(),
            path_str(&secret).to_string(),
            "--fleet".into(),
            "--chunk-size".into(),
            "1024".into(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        publish(broker.port, &a)
    };
    let (code, out, err) = run(args(&big_path, "2"));
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (manifest, bytes) = read_back(broker.port, "fleet", "har");
    assert_eq!(
        (manifest["version"].as_str(), manifest["chunks"].as_u64()),
        (Some("2"), Some(20))
    );
    assert_eq!(bytes, big);

    // Offline signing: the manifest signed on one machine, published with
    // the model's chunks from another.
    let small_path = model(MODEL);
    let mut sign = args(&small_path, "3");
    sign.push("--sign-only".into());
    let (code, signed, err) = run(sign);
    assert_eq!(code, Some(0), "{err}");
    let signed: Value = serde_json::from_str(&signed).expect("--sign-only prints the manifest");
    let manifest_file = keys.file("manifest.json", signed.to_string().as_bytes());
    let (code, out, err) = publish(
        broker.port,
        &[
            "--manifest",
            path_str(&manifest_file),
            "--model",
            path_str(&small_path),
            "--name",
            "har",
            "--fleet",
        ],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    let small = std::fs::read(&small_path).expect("the model");
    let chunks = small.len().div_ceil(1024);
    assert!(
        out.contains(&format!(
            "cleared   {} leftover chunk(s) of version 2",
            20 - chunks
        )),
        "{out}"
    );
    // read_back checks that exactly chunks 0..8 are left.
    let (manifest, bytes) = read_back(broker.port, "fleet", "har");
    assert_eq!(manifest, signed);
    assert_eq!(manifest["chunks"], chunks);
    assert_eq!(bytes, small);
    assert_signed(&manifest, "har", &keys.public_key);

    // The same manifest under another model's name would be refused by
    // every device: caught before anything is sent.
    let (code, _, err) = publish(
        broker.port,
        &[
            "--manifest",
            path_str(&manifest_file),
            "--model",
            path_str(&small_path),
            "--name",
            "kws",
            "--fleet",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("its signature is for model har version 3"),
        "{err}"
    );

    // --clear takes the manifest and every chunk away.
    let (code, out, err) = publish(broker.port, &["--name", "har", "--fleet", "--clear"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!("(version 3) and {chunks} chunk(s)")),
        "{out}"
    );
    assert_eq!(retained(broker.port, "edge-infer/#"), BTreeMap::new());
}

#[test]
fn a_wrong_password_is_a_clear_error_and_nothing_is_published() {
    let broker = Broker::start();
    let keys = Keys::make(Some("right"));
    let wrong = keys.file("wrong", b"wrong\n");
    let model_path = model(MODEL);
    let secret = keys.secret();
    let base = [
        "--model",
        path_str(&model_path),
        "--name",
        "har",
        "--version",
        "2",
        "--secret-key",
        path_str(&secret),
        "--device",
        "gw-1",
    ];
    let (code, out, err) = publish(
        broker.port,
        &[&base[..], &["--password-file", path_str(&wrong)]].concat(),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "wrong password for the secret key {} (the password from {})",
            keys.secret().display(),
            wrong.display()
        )),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");

    // No password at all, and no terminal to ask on.
    let mut cmd = Command::new(daemon_binary());
    cmd.arg("publish-model")
        .args(["--config", "/nonexistent/edge-infer.toml", "--port"])
        .arg(broker.port.to_string())
        .args(base)
        .stdin(Stdio::null());
    let done = cmd.output().expect("run edge-infer");
    let err = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is encrypted; give its password with --password-file"),
        "{err}"
    );

    // The password on standard input works.
    let mut child = Command::new(daemon_binary())
        .arg("publish-model")
        .args(["--config", "/nonexistent/edge-infer.toml", "--port"])
        .arg(broker.port.to_string())
        .args(base)
        .args(["--password-file", "-", "--sign-only"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run edge-infer");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"right\n").expect("write the password");
    }
    let done = child.wait_with_output().expect("wait for edge-infer");
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );

    // A missing model, a public key given as the secret one: exit 2 each,
    // with what was wrong.
    let (code, _, err) = publish(
        broker.port,
        &[
            "--model",
            "/nonexistent/m.tflite",
            "--name",
            "har",
            "--version",
            "2",
            "--secret-key",
            path_str(&keys.public()),
            "--device",
            "gw-1",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("cannot read the model /nonexistent/m.tflite"),
        "{err}"
    );
    let (code, _, err) = publish(
        broker.port,
        &[
            "--model",
            path_str(&model_path),
            "--name",
            "har",
            "--version",
            "2",
            "--secret-key",
            path_str(&keys.public()),
            "--device",
            "gw-1",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a public key"), "{err}");

    assert_eq!(retained(broker.port, "edge-infer/#"), BTreeMap::new());
}

#[test]
fn a_broker_that_does_not_take_the_chunks_is_named_and_the_manifest_held_back() {
    let keys = Keys::make(None);
    let model_path = model(MODEL);
    let args = |chunk_size: &'static str| {
        vec![
            "--model".to_string(),
            path_str(&model_path).to_string(),
            "--name".into(),
            "har".into(),
            "--version".into(),
            "2".into(),
            "--secret-key".into(),
            path_str(&keys.secret()).to_string(),
            "--device".into(),
            "gw-1".into(),
            "--chunk-size".into(),
            chunk_size.into(),
            "--wait".into(),
            "2".into(),
        ]
    };
    let run = |port: u16, a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        publish(port, &a)
    };

    // Over max_packet_size Mosquitto closes the connection.
    let strict = Broker::start_with("max_packet_size 3000\n");
    let (code, _, err) = run(strict.port, args("4096"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("ended while chunk 0 of 2 (4096 bytes) waited for its confirmation")
            && err.contains("this one was 4145 bytes")
            && err.contains("try a smaller --chunk-size (now 4096)"),
        "{err}"
    );
    assert_eq!(retained(strict.port, "edge-infer/#"), BTreeMap::new());
    let (code, out, err) = run(strict.port, args("2048"));
    assert_eq!(code, Some(0), "{out}\n{err}");
    let (_, bytes) = read_back(strict.port, "gw-1", "har");
    assert_eq!(bytes, std::fs::read(&model_path).expect("the model"));

    // Over message_size_limit it confirms the publish and drops it.
    let dropping = Broker::start_with("message_size_limit 3000\n");
    let (code, _, err) = run(dropping.port, args("4096"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("did not deliver chunk 0 (4096 bytes) back within 2.0 s")
            && err.contains("message_size_limit")
            && err.contains("The manifest was not published"),
        "{err}"
    );
    assert_eq!(retained(dropping.port, "edge-infer/#"), BTreeMap::new());

    // No broker at all.
    let closed = free_port();
    let (code, _, err) = run(closed, args("4096"));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach the MQTT broker at mqtt://127.0.0.1:{closed}"
        )),
        "{err}"
    );
}

#[test]
fn keys_interoperate_with_the_minisign_tool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let message = dir.path().join("message");
    std::fs::write(&message, b"a model update\n").expect("write");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw-1\n").expect("write");

    // minisign signs with keys keygen made, encrypted or not, and its
    // signatures verify against keygen's .pub.
    for (name, password) in [("plain", None), ("locked", Some(&pw))] {
        keygen(dir.path(), name, password.map(PathBuf::as_path));
        let key = dir.path().join(format!("{name}.key"));
        let mode = std::fs::metadata(&key).expect("key").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let sig = dir.path().join(format!("{name}.minisig"));
        let mut sign = minisign()
            .args(["-S", "-s"])
            .arg(&key)
            .arg("-m")
            .arg(&message)
            .arg("-x")
            .arg(&sig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run minisign");
        {
            use std::io::Write as _;
            let mut stdin = sign.stdin.take().expect("stdin");
            if password.is_some() {
                stdin.write_all(b"pw-1\n").expect("password");
            }
        }
        let done = sign.wait_with_output().expect("minisign -S");
        assert!(
            done.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        let done = minisign()
            .args(["-V", "-p"])
            .arg(dir.path().join(format!("{name}.pub")))
            .arg("-m")
            .arg(&message)
            .arg("-x")
            .arg(&sig)
            .output()
            .expect("minisign -V");
        assert!(
            done.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
    }

    // publish-model signs with a key minisign made (-W: unencrypted), and
    // what it signed verifies against minisign's .pub.
    let done = minisign()
        .args(["-G", "-W", "-p"])
        .arg(dir.path().join("tool.pub"))
        .arg("-s")
        .arg(dir.path().join("tool.key"))
        .output()
        .expect("minisign -G");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let model_path = model(MODEL);
    let (code, out, err) = run_cli(
        &[
            "publish-model",
            "--model",
            path_str(&model_path),
            "--name",
            "har",
            "--version",
            "7",
            "--secret-key",
            path_str(&dir.path().join("tool.key")),
            "--sign-only",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let manifest: Value = serde_json::from_str(&out).expect("the manifest");
    let tool_pub = std::fs::read_to_string(dir.path().join("tool.pub")).expect("tool.pub");
    assert_signed(&manifest, "har", tool_pub.lines().nth(1).expect("key line"));
}

#[test]
fn publish_model_usage_errors_name_the_flag() {
    let model_path = model(MODEL);
    let m = path_str(&model_path);
    for (args, want) in [
        (
            &[
                "--name",
                "har",
                "--version",
                "1",
                "--secret-key",
                "k",
                "--device",
                "d",
            ][..],
            "--model",
        ),
        (
            &[
                "--model",
                m,
                "--version",
                "1",
                "--secret-key",
                "k",
                "--device",
                "d",
            ],
            "--name",
        ),
        (
            &[
                "--model",
                m,
                "--name",
                "har",
                "--version",
                "v1",
                "--secret-key",
                "k",
                "--device",
                "d",
            ],
            "--version",
        ),
        (
            &[
                "--model",
                m,
                "--name",
                "a/b",
                "--version",
                "1",
                "--secret-key",
                "k",
                "--device",
                "d",
            ],
            "--name",
        ),
        (
            &[
                "--model",
                m,
                "--name",
                "har",
                "--version",
                "1",
                "--secret-key",
                "k",
                "--device",
                "d",
                "--chunk-size",
                "512",
            ],
            "--chunk-size",
        ),
        (
            &[
                "--model",
                m,
                "--name",
                "har",
                "--version",
                "1",
                "--secret-key",
                "k",
                "--device",
                "d",
                "--fleet",
            ],
            "--fleet",
        ),
        (
            &[
                "--model",
                m,
                "--name",
                "har",
                "--version",
                "1",
                "--secret-key",
                "k",
            ],
            "--device",
        ),
        (
            &[
                "--model",
                m,
                "--name",
                "har",
                "--version",
                "1",
                "--secret-key",
                "k",
                "--fleet",
                "--path-on-device",
                "x.tflite",
            ],
            "--path-on-device",
        ),
        (
            &["--name", "har", "--fleet", "--clear", "--model", m],
            "--clear",
        ),
    ] {
        let (code, _, err) = publish(1, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run_cli(
        &["keygen", "--out", path_str(dir.path()), "--name", "../x"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--name \"../x\" cannot name a key file"),
        "{err}"
    );
}
