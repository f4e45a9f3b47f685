//! TLS and mutual TLS to real Mosquitto TLS listeners, with certificates
//! made here (rcgen): the daemon serves over a verified connection, and
//! every way a handshake goes wrong ends in a reason an operator can act
//! on, in the log and in the health record's `last_error`, and is retried.
//! Also the startup errors of bad certificate files, secrets kept out of
//! output, and `[uplink]`: results on a second broker.
//!
//! A failing `[mqtt]` link is watched through an `[uplink]` on a plaintext
//! broker: the output link stays up there, so the health record that
//! carries the input link's `last_error` gets out.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::Value;

// --- certificates -----------------------------------------------------------

/// A certificate authority of the test's own.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign the CA");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate (PEM) and its key (PEM).
struct Leaf {
    cert: String,
    key: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Use {
    Server,
    Client,
}

fn leaf(ca: &Ca, names: &[&str], usage: Use, expired: bool) -> Leaf {
    let key = KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params
        .distinguished_name
        .push(DnType::CommonName, "edge-infer test");
    params.extended_key_usages = vec![match usage {
        Use::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Use::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("sign the leaf certificate");
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// Files in a directory of the test's own.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write a certificate file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        p
    }
}

/// The good server certificate: for the address tests connect to (an IP
/// SAN: rustls checks an IP host against IP names only) and for localhost.
const GOOD_NAMES: &[&str] = &["127.0.0.1", "localhost"];

/// Mosquitto listener lines for a TLS listener with `server`'s certificate,
/// trusting `client_ca` for client certificates (`require` makes them
/// mandatory).
fn listener(files: &Files, tag: &str, server: &Leaf, client_ca: &Ca, require: bool) -> String {
    let cert = files.write(&format!("{tag}-server.pem"), &server.cert);
    let key = files.write(&format!("{tag}-server.key"), &server.key);
    let ca = files.write(&format!("{tag}-client-ca.pem"), &client_ca.pem);
    format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require}\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// A TLS test client trusting `ca`, presenting `client` if given.
fn tls_client(port: u16, ca: &Ca, client: Option<&Leaf>) -> TestClient {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).expect("cert PEM")],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key PEM"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    TestClient::connect_over(
        port,
        Some(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        ))),
    )
}

// --- daemon configs --------------------------------------------------------------

/// A daemon config: `mqtt` is the body of `[mqtt]` (after host and port),
/// `uplink` the whole `[uplink]` table or "". Health every 0.2 s.
fn daemon_config(port: u16, mqtt: &str, uplink: &str) -> String {
    let dyn_model = DYN.replace("{models}", &repo().join("models").display().to_string());
    format!(
        "device_id = \"gw\"\n[health]\ninterval_secs = 0.2\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min_ms = 50\nreconnect_max_secs = 1\n{mqtt}\n{uplink}\n{dyn_model}"
    )
}

/// `[uplink]` on a plaintext broker.
fn plain_uplink(port: u16) -> String {
    format!("[uplink]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min_ms = 50\nreconnect_max_secs = 1\n")
}

fn tls_keys(ca_file: &Path) -> String {
    format!("tls = true\nca_file = \"{}\"\n", ca_file.display())
}

fn mtls_keys(ca_file: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "tls = true\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        ca_file.display(),
        cert.display(),
        key.display()
    )
}

/// Sends one input on `input` and waits for its result on `output`.
fn round_trip(input: &TestClient, output: &TestClient, id: usize) {
    output.subscribe("out/gw/dyn");
    input.publish("in/dyn", features(id));
    let start = Instant::now();
    loop {
        let m = output.recv();
        if m.topic == "out/gw/dyn" {
            let v = m.json();
            assert_eq!(v["id"], id, "{v}");
            assert!(v["outputs"].is_array(), "{v}");
            return;
        }
        assert!(start.elapsed() < WAIT, "no result for {id}");
    }
}

/// The next health record on `c` (subscribed to the health topic) for
/// which `want` holds.
fn health_where(c: &TestClient, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < WAIT {
        let left = WAIT.saturating_sub(start.elapsed());
        let Some(m) = c.recv_within(left.max(Duration::from_millis(1))) else {
            break;
        };
        if m.topic == "edge-infer/gw/health" {
            last = m.json();
            if want(&last) {
                return last;
            }
        }
    }
    panic!("no health record with {what} within {WAIT:?}; the last one: {last}");
}

/// Starts a daemon whose `[mqtt]` is `mqtt` (a broker on `port` that it
/// cannot use) with an uplink on a plaintext broker, and waits until the
/// input link has failed twice with `reason` in the log and the health
/// record's `broker.links.input.last_error` says it too. Returns the
/// daemon, the uplink broker and a client on it (subscribed to health).
fn fails_with(port: u16, mqtt: &str, reason: &str) -> (Daemon, Broker, TestClient) {
    require_runtime();
    let uplink = Broker::start();
    let cloud = TestClient::connect(uplink.port);
    cloud.subscribe("edge-infer/gw/health");
    let d = Daemon::spawn(&daemon_config(port, mqtt, &plain_uplink(uplink.port)), &[]);
    let line = format!("input link: cannot reach the MQTT broker at mqtts://127.0.0.1:{port} (");
    two_retries(&d, &line, reason);
    let h = health_where(&cloud, &format!("input last_error {reason:?}"), |h| {
        h["broker"]["links"]["input"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(reason))
    });
    let input = &h["broker"]["links"]["input"];
    assert_eq!(input["connected"], false, "{h}");
    assert_eq!(input["broker"], format!("mqtts://127.0.0.1:{port}"), "{h}");
    assert_eq!(
        h["broker"]["links"]["output"]["last_error"],
        Value::Null,
        "{h}"
    );
    (d, uplink, cloud)
}

/// Waits for two log lines with `line` and `reason`: the failure is
/// said, and retried.
fn two_retries(d: &Daemon, line: &str, reason: &str) {
    let start = Instant::now();
    loop {
        let n = d
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(line) && l.contains(reason))
            .count();
        if n >= 2 {
            return;
        }
        assert!(
            !d.has_exited() && start.elapsed() < WAIT,
            "no two lines with {line:?} and {reason:?} (exited: {}):\n{}",
            d.has_exited(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one line of the log with the input link's retry and `reason`, for
/// the report of what an operator sees.
fn reason_line(d: &Daemon, reason: &str) -> String {
    d.log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("input link: cannot reach") && l.contains(reason))
        .cloned()
        .unwrap_or_default()
}

// --- it works ----------------------------------------------------------------------

#[test]
fn server_authenticated_tls_serves_results() {
    let files = Files::new();
    let ca = ca("edge-infer test CA");
    let server = leaf(&ca, GOOD_NAMES, Use::Server, false);
    let broker = Broker::start_tls(&listener(&files, "a", &server, &ca, false));
    let ca_file = files.write("ca.pem", &ca.pem);
    let d = Daemon::start(&daemon_config(broker.port, &tls_keys(&ca_file), ""));
    assert!(
        d.log_text().contains(&format!(
            "connecting to mqtts://127.0.0.1:{} as edge-infer-gw (inputs) and edge-infer-gw-out (outputs), TLS verified against ca_file {} (1 certificate), no client certificate",
            broker.port,
            ca_file.display()
        )),
        "{}",
        d.log_text()
    );
    let c = tls_client(broker.port, &ca, None);
    c.subscribe("edge-infer/gw/health");
    round_trip(&c, &c, 1);
    let h = health_where(&c, "both links up", |h| {
        h["broker"]["links"]["input"]["connected"] == true
            && h["broker"]["links"]["output"]["connected"] == true
    });
    for link in ["input", "output"] {
        assert_eq!(
            h["broker"]["links"][link]["broker"],
            format!("mqtts://127.0.0.1:{}", broker.port),
            "{h}"
        );
        assert_eq!(h["broker"]["links"][link]["last_error"], Value::Null, "{h}");
    }
    // `status` takes the TLS setup from the config too.
    let out = status_of(&d);
    assert!(out.starts_with("gw  online\n"), "{out}");
    assert!(!out.contains("input link"), "{out}");
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn mutual_tls_serves_results() {
    let files = Files::new();
    let ca = ca("edge-infer test CA");
    let server = leaf(&ca, GOOD_NAMES, Use::Server, false);
    let device = leaf(&ca, &["gw"], Use::Client, false);
    let broker = Broker::start_tls(&listener(&files, "m", &server, &ca, true));
    let ca_file = files.write("ca.pem", &ca.pem);
    let cert = files.write("device.pem", &device.cert);
    let key = files.write("device.key", &device.key);
    let d = Daemon::start(&daemon_config(
        broker.port,
        &mtls_keys(&ca_file, &cert, &key),
        "",
    ));
    assert!(
        d.log_text()
            .contains(&format!("client certificate {}", cert.display())),
        "{}",
        d.log_text()
    );
    let tester = leaf(&ca, &["tester"], Use::Client, false);
    let c = tls_client(broker.port, &ca, Some(&tester));
    round_trip(&c, &c, 2);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

// --- handshake failures: a reason, in the log and in health, and retries ---------

#[test]
fn a_broker_certificate_from_another_ca_is_refused_until_the_broker_is_fixed() {
    let files = Files::new();
    let ours = ca("our CA");
    let theirs = ca("someone else's CA");
    let wrong = leaf(&theirs, GOOD_NAMES, Use::Server, false);
    let mut broker = Broker::start_tls(&listener(&files, "w", &wrong, &ours, false));
    let ca_file = files.write("ca.pem", &ours.pem);
    let (d, _uplink, cloud) = fails_with(
        broker.port,
        &tls_keys(&ca_file),
        &format!(
            "the broker's certificate is not signed by ca_file {}",
            ca_file.display()
        ),
    );
    // `status` (reading the uplink, where the records are) says why.
    let out = status_of(&d);
    assert!(
        out.contains(&format!(
            "  input link    mqtts://127.0.0.1:{}: the broker's certificate is not signed by ca_file {}",
            broker.port,
            ca_file.display()
        )),
        "{out}"
    );
    // The operator fixes the broker: the next retry connects.
    let right = leaf(&ours, GOOD_NAMES, Use::Server, false);
    broker.restart_with_listener(&listener(&files, "r", &right, &ours, false));
    d.wait_for_log("ready: serving 1 model(s)");
    let sensor = tls_client(broker.port, &ours, None);
    round_trip(&sensor, &cloud, 3);
    health_where(&cloud, "the input link up again", |h| {
        h["broker"]["links"]["input"]["connected"] == true
            && h["broker"]["links"]["input"]["last_error"].is_null()
    });
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn an_expired_broker_certificate_is_refused() {
    let files = Files::new();
    let ca = ca("our CA");
    let expired = leaf(&ca, GOOD_NAMES, Use::Server, true);
    let broker = Broker::start_tls(&listener(&files, "e", &expired, &ca, false));
    let ca_file = files.write("ca.pem", &ca.pem);
    let (d, _uplink, _cloud) = fails_with(
        broker.port,
        &tls_keys(&ca_file),
        "the broker's certificate expired",
    );
    let line = reason_line(&d, "expired");
    assert!(line.contains("at 2021-01-01 00:00:00 UTC"), "{line}");
}

#[test]
fn a_broker_certificate_for_another_name_is_refused() {
    let files = Files::new();
    let ca = ca("our CA");
    let other = leaf(&ca, &["broker.example"], Use::Server, false);
    let broker = Broker::start_tls(&listener(&files, "n", &other, &ca, false));
    let ca_file = files.write("ca.pem", &ca.pem);
    let (_d, _uplink, _cloud) = fails_with(
        broker.port,
        &tls_keys(&ca_file),
        "the broker's certificate is for broker.example, not host 127.0.0.1",
    );
}

#[test]
fn a_broker_that_requires_a_client_certificate_says_so() {
    let files = Files::new();
    let ca = ca("our CA");
    let server = leaf(&ca, GOOD_NAMES, Use::Server, false);
    let broker = Broker::start_tls(&listener(&files, "c", &server, &ca, true));
    let ca_file = files.write("ca.pem", &ca.pem);
    let (_d, _uplink, _cloud) = fails_with(
        broker.port,
        &tls_keys(&ca_file),
        "the broker asked for a client certificate and none is configured",
    );
}

#[test]
fn a_client_certificate_the_broker_does_not_trust_is_refused() {
    let files = Files::new();
    let other = ca("a CA the broker does not trust");
    let ca = ca("our CA");
    let server = leaf(&ca, GOOD_NAMES, Use::Server, false);
    let device = leaf(&other, &["gw"], Use::Client, false);
    let broker = Broker::start_tls(&listener(&files, "u", &server, &ca, true));
    let ca_file = files.write("ca.pem", &ca.pem);
    let cert = files.write("device.pem", &device.cert);
    let key = files.write("device.key", &device.key);
    let (_d, _uplink, _cloud) = fails_with(
        broker.port,
        &mtls_keys(&ca_file, &cert, &key),
        "the broker refused our client certificate",
    );
}

#[test]
fn tls_to_a_plaintext_port_is_named() {
    let files = Files::new();
    let ca = ca("our CA");
    let plain = Broker::start();
    let ca_file = files.write("ca.pem", &ca.pem);
    let (_d, _uplink, _cloud) = fails_with(
        plain.port,
        &tls_keys(&ca_file),
        &format!("is port {} a plaintext MQTT listener?", plain.port),
    );
}

#[test]
fn plaintext_to_a_tls_port_is_named() {
    require_runtime();
    let files = Files::new();
    let ca = ca("our CA");
    let server = leaf(&ca, GOOD_NAMES, Use::Server, false);
    let broker = Broker::start_tls(&listener(&files, "p", &server, &ca, false));
    let uplink = Broker::start();
    let cloud = TestClient::connect(uplink.port);
    cloud.subscribe("edge-infer/gw/health");
    let d = Daemon::spawn(
        &daemon_config(broker.port, "", &plain_uplink(uplink.port)),
        &[],
    );
    let reason = format!("is port {} a TLS listener? set tls = true", broker.port);
    let line = format!(
        "input link: cannot reach the MQTT broker at mqtt://127.0.0.1:{} (",
        broker.port
    );
    two_retries(&d, &line, &reason);
    health_where(&cloud, "the reason as input last_error", |h| {
        h["broker"]["links"]["input"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&reason))
    });
}

// --- startup errors ------------------------------------------------------------------

/// `run` and `check-config` both exit 2 with every `wanted` text on stderr.
fn refused(text: &str, wanted: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    let mut all = String::new();
    for cmd in ["check-config", "run"] {
        let (code, out, err) = run_cli(&[cmd, "--config", cfg], &[]);
        assert_eq!(code, Some(2), "{cmd}: {out}{err}");
        for w in wanted {
            assert!(err.contains(w), "{cmd}: missing {w:?} in:\n{err}");
        }
        all.push_str(&out);
        all.push_str(&err);
    }
    all
}

#[test]
fn bad_certificate_files_are_startup_errors_naming_the_key_and_the_file() {
    let files = Files::new();
    let ca = ca("our CA");
    let device = leaf(&ca, &["gw"], Use::Client, false);
    let other = leaf(&ca, &["other"], Use::Client, false);
    let ca_file = files.write("ca.pem", &ca.pem);
    let cert = files.write("device.pem", &device.cert);
    let key = files.write("device.key", &device.key);
    let missing = files.dir.path().join("nope.pem");

    let text = daemon_config(1883, &tls_keys(&missing), "");
    refused(
        &text,
        &[&format!(
            "mqtt.ca_file: cannot read CA file {}: No such file or directory",
            missing.display()
        )],
    );

    // Not PEM at all, and a key where the certificate should be.
    let garbage = files.write("garbage.pem", "hello\n");
    refused(
        &daemon_config(1883, &tls_keys(&garbage), ""),
        &[&format!(
            "mqtt.ca_file: CA file {} holds no certificate (expected \"-----BEGIN CERTIFICATE-----\"); it holds no PEM block at all",
            garbage.display()
        )],
    );
    refused(
        &daemon_config(1883, &mtls_keys(&ca_file, &key, &key), ""),
        &[&format!(
            "mqtt.client_cert_file: client certificate file {} holds no certificate (expected \"-----BEGIN CERTIFICATE-----\"); it holds PRIVATE KEY",
            key.display()
        )],
    );

    // Keys: a certificate instead, broken PEM, encrypted, someone else's.
    refused(
        &daemon_config(1883, &mtls_keys(&ca_file, &cert, &cert), ""),
        &[&format!(
            "mqtt.client_key_file: client key file {} holds no private key",
            cert.display()
        )],
    );
    let broken = files.write(
        "broken.key",
        "-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n-----END PRIVATE KEY-----\n",
    );
    refused(
        &daemon_config(1883, &mtls_keys(&ca_file, &cert, &broken), ""),
        &[&format!(
            "mqtt.client_key_file: client key file {} is not valid PEM",
            broken.display()
        )],
    );
    let encrypted = files.write(
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    refused(
        &daemon_config(1883, &mtls_keys(&ca_file, &cert, &encrypted), ""),
        &[&format!(
            "mqtt.client_key_file: client key file {} is encrypted",
            encrypted.display()
        )],
    );
    let other_key = files.write("other.key", &other.key);
    refused(
        &daemon_config(1883, &mtls_keys(&ca_file, &cert, &other_key), ""),
        &[&format!(
            "mqtt.client_key_file: client key file {} does not belong to the certificate in [mqtt] client_cert_file {}",
            other_key.display(),
            cert.display()
        )],
    );

    // Half of mutual TLS; files without tls; the same checks in [uplink].
    refused(
        &daemon_config(
            1883,
            &format!("tls = true\nclient_cert_file = \"{}\"\n", cert.display()),
            "",
        ),
        &["mqtt.client_cert_file: is set but [mqtt] client_key_file is not"],
    );
    refused(
        &daemon_config(1883, &format!("ca_file = \"{}\"\n", ca_file.display()), ""),
        &["mqtt.ca_file: is set, but [mqtt] tls is not: certificates are only used over TLS; add `tls = true` to [mqtt]"],
    );
    refused(
        &daemon_config(
            1883,
            "",
            &format!("[uplink]\nhost = \"cloud.example\"\n{}", tls_keys(&missing)),
        ),
        &[&format!(
            "uplink.ca_file: cannot read CA file {}",
            missing.display()
        )],
    );
    refused(
        &daemon_config(1883, "", "[uplink]\nport = 8883\n"),
        &["uplink.host: is required"],
    );
}

#[test]
fn tls_defaults_to_port_8883_and_check_config_describes_both_brokers() {
    require_runtime();
    let files = Files::new();
    let ca = ca("our CA");
    let device = leaf(&ca, &["gw"], Use::Client, false);
    let ca_file = files.write("ca.pem", &ca.pem);
    let cert = files.write("device.pem", &device.cert);
    let key = files.write("device.key", &device.key);
    let text = format!(
        "device_id = \"gw\"\n[mqtt]\ntls = true\nca_file = \"{}\"\n[uplink]\nhost = \"cloud.example\"\n{}\n{}",
        ca_file.display(),
        mtls_keys(&ca_file, &cert, &key),
        DYN.replace("{models}", &repo().join("models").display().to_string())
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    for want in [
        format!(
            "broker:    mqtts://127.0.0.1:8883 client_id=edge-infer-gw keep_alive=30s qos=1 clean_session=false; TLS verified against ca_file {} (1 certificate), no client certificate",
            ca_file.display()
        ),
        format!(
            "uplink:    mqtts://cloud.example:8883 client_id=edge-infer-gw-out keep_alive=30s qos=1 clean_session=false; TLS verified against ca_file {} (1 certificate), client certificate {} (results, errors, status, health)",
            ca_file.display(),
            cert.display()
        ),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
}

// --- secrets ---------------------------------------------------------------------------

#[test]
fn the_password_is_never_shown_and_a_readable_config_with_one_is_warned_about() {
    let files = Files::new();
    let ca = ca("our CA");
    let server = leaf(&ca, GOOD_NAMES, Use::Server, false);
    let broker = Broker::start_tls(&listener(&files, "s", &server, &ca, false));
    let ca_file = files.write("ca.pem", &ca.pem);
    let secret = "hunter2-tls-secret";
    let text = daemon_config(
        broker.port,
        &format!(
            "{}username = \"edge\"\npassword = \"{secret}\"\n",
            tls_keys(&ca_file)
        ),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, &text).unwrap();
    let cfg_s = cfg.to_str().unwrap();

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", cfg_s], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("username=edge"), "{out}");
    assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
    let warning = format!(
        "config file {cfg_s} is mode 0644, readable by group or others, and holds a password; chmod 600 {cfg_s} (or 640 with the group the service runs as)"
    );
    assert!(err.contains(&warning), "missing {warning:?} in:\n{err}");

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", cfg_s], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!err.contains("readable by group or others"), "{err}");

    // A client key readable by others is warned about too.
    let device = leaf(&ca, &["gw"], Use::Client, false);
    let cert = files.write("device.pem", &device.cert);
    let key = files.write("device.key", &device.key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let keyed = text.replace(&tls_keys(&ca_file), &mtls_keys(&ca_file, &cert, &key));
    std::fs::write(&cfg, &keyed).unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", cfg_s], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    let warning = format!(
        "client key file {} is mode 0640, readable by group or others; chmod 600",
        key.display()
    );
    assert!(err.contains(&warning), "missing {warning:?} in:\n{err}");

    // Serving with it, and failing with it: never in the log.
    std::fs::write(&cfg, &text).unwrap();
    let d = Daemon::start(&text);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains(secret), "{log}");
    let bad = text.replace(ca_file.to_str().unwrap(), "/nonexistent/ca.pem");
    let out = refused(
        &bad,
        &["mqtt.ca_file: cannot read CA file /nonexistent/ca.pem"],
    );
    assert!(!out.contains(secret), "{out}");
}

// --- [uplink] ----------------------------------------------------------------------------

#[test]
fn results_status_and_health_go_to_the_uplink_and_inputs_stay_on_mqtt() {
    let site = Broker::start();
    let cloud_broker = Broker::start();
    let text = daemon_config(site.port, "", &plain_uplink(cloud_broker.port));
    let d = Daemon::start(&text);
    let log = d.log_text();
    assert!(
        log.contains(&format!(
            "connecting to the uplink mqtt://127.0.0.1:{} as edge-infer-gw-out (results, errors, status, health)",
            cloud_broker.port
        )),
        "{log}"
    );
    let sensor = TestClient::connect(site.port);
    sensor.subscribe("out/#");
    sensor.subscribe("edge-infer/#");
    let cloud = TestClient::connect(cloud_broker.port);
    cloud.subscribe("edge-infer/gw/status");
    let status = cloud.recv();
    assert_eq!(status.topic, "edge-infer/gw/status");
    assert_eq!(status.json()["state"], "online");
    cloud.subscribe("edge-infer/gw/health");
    round_trip(&sensor, &cloud, 4);
    let h = health_where(&cloud, "both links up", |h| {
        h["broker"]["links"]["input"]["connected"] == true
            && h["broker"]["links"]["output"]["connected"] == true
    });
    assert_eq!(
        h["broker"]["links"]["input"]["broker"],
        format!("mqtt://127.0.0.1:{}", site.port)
    );
    assert_eq!(
        h["broker"]["links"]["output"]["broker"],
        format!("mqtt://127.0.0.1:{}", cloud_broker.port)
    );
    // The input's own echo is all the site broker carried.
    let mut on_site = Vec::new();
    while let Some(m) = sensor.recv_within(Duration::from_millis(500)) {
        on_site.push(m.topic);
    }
    assert!(
        on_site.is_empty(),
        "published on the site broker: {on_site:?}"
    );

    // A reload that changes [uplink] is refused: a restart is needed.
    cloud.subscribe("edge-infer/gw/errors");
    d.rewrite_config(&text.replace(&format!("port = {}\n", cloud_broker.port), "port = 1\n"));
    d.signal("HUP");
    let start = Instant::now();
    loop {
        let m = cloud.recv();
        if m.topic == "edge-infer/gw/errors" {
            let e = m.json();
            assert_eq!(e["code"], "reload_failed", "{e}");
            assert!(
                e["message"].as_str().unwrap().contains(
                    "uplink: broker settings cannot change on reload; restart the service"
                ),
                "{e}"
            );
            break;
        }
        assert!(start.elapsed() < WAIT, "no reload_failed");
    }
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// `edge-infer status` for device "gw", with the daemon's own config (so
/// its TLS setup and uplink); must succeed.
fn status_of(d: &Daemon) -> String {
    let cfg = d.dir.path().join("config.toml");
    let args = [
        "status",
        "--config",
        cfg.to_str().unwrap(),
        "--device",
        "gw",
        "--wait",
        "20",
    ];
    let (code, out, err) = run_cli(&args, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    out
}
