//! Running as a service: the sd_notify sequence, the watchdog, the retained
//! status record with its Last Will, and the periodic health record.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn notify_sequence_is_ready_status_watchdog_reloading_stopping() {
    let broker = Broker::start();
    let sock = NotifySocket::bind();
    let path = sock.path.display().to_string();
    let d = Daemon::spawn(
        &config(broker.port, "dev1", "", DYN),
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")],
    );
    sock.wait_for("READY=1", 1);
    // READY means subscribed: a message published right now is served.
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.publish("in/dyn", features(1));
    assert_eq!(c.recv().json()["id"], 1);
    let lines = sock.lines();
    let status = lines
        .iter()
        .find(|l| l.starts_with("STATUS="))
        .expect("a STATUS line");
    assert!(
        status.contains("serving 1 model(s); broker connected"),
        "{status}"
    );
    sock.wait_for("WATCHDOG=1", 3);

    d.signal("HUP");
    sock.wait_for("READY=1", 2);
    d.send_sigterm();
    sock.wait_for("STOPPING=1", 1);
    let (code, log) = d.wait_exit();
    assert_eq!(code, Some(0), "{log}");

    let lines = sock.lines();
    let pos = |what: &str, nth: usize| {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.as_str() == what)
            .nth(nth)
            .map(|(i, _)| i)
            .unwrap_or_else(|| panic!("no {what} #{nth} in {lines:?}"))
    };
    assert!(pos("READY=1", 0) < pos("RELOADING=1", 0));
    assert!(pos("RELOADING=1", 0) < pos("READY=1", 1));
    assert!(pos("READY=1", 1) < pos("STOPPING=1", 0));
    assert!(
        lines.iter().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "RELOADING=1 needs MONOTONIC_USEC: {lines:?}"
    );
}

#[test]
fn status_is_retained_online_and_offline_after_a_clean_stop() {
    let broker = Broker::start();
    let d = Daemon::start(&config(broker.port, "dev1", "", DYN));
    // Subscribing after the fact still shows the record: it is retained.
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev1/status");
    let online = c.recv().json();
    assert_eq!(online["state"], "online", "{online}");
    assert_eq!(online["device_id"], "dev1");
    assert_eq!(online["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(online["pid"], d.pid());
    let m = &online["models"][0];
    assert_eq!(m["name"], "dyn");
    assert_eq!(m["input_topic"], "in/dyn");
    assert_eq!(m["inputs"][0]["shape"], json!([1, 8]));
    assert!(m["sha256"].as_str().unwrap().len() == 64);
    let (code, _) = d.terminate();
    assert_eq!(code, Some(0));
    let offline = c.recv().json();
    assert_eq!(offline["state"], "offline", "{offline}");
    assert_eq!(offline["reason"], "shutdown");
    assert!(offline["timestamp"].as_f64().is_some());
}

#[test]
fn last_will_marks_a_killed_daemon_offline() {
    let broker = Broker::start();
    let d = Daemon::start(&config(broker.port, "dev1", "", DYN));
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev1/status");
    assert_eq!(c.recv().json()["state"], "online");
    d.signal("KILL");
    let will = c.recv().json();
    assert_eq!(will["state"], "offline", "{will}");
    assert_eq!(will["reason"], "connection lost");
}

#[test]
fn health_reports_system_broker_and_per_model_figures() {
    let broker = Broker::start();
    let state = tempfile::tempdir().unwrap();
    let extra = format!(
        "state_dir = \"{}\"\n[health]\ninterval_secs = 0.2",
        state.path().display()
    );
    let _d = Daemon::start(&config(broker.port, "dev1", &extra, DYN));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    const N: usize = 25;
    for i in 0..N {
        c.publish("in/dyn", features(i));
    }
    c.publish("in/dyn", "not json");
    assert_eq!(c.recv_n(N + 1).len(), N + 1);
    c.subscribe("edge-infer/dev1/health");
    // Health records come every 0.2 s; wait for one that has seen everything.
    let mut latency_seen = false;
    let deadline = std::time::Instant::now() + WAIT;
    let h: Value = loop {
        let m = c.recv_before(deadline, "a health record that has seen every message");
        if m.topic != "edge-infer/dev1/health" {
            continue;
        }
        let h = m.json();
        latency_seen |= h["models"][0]["latency_ms"]["count"].as_u64().unwrap_or(0) > 0;
        if h["models"][0]["inferences"] == N && h["models"][0]["errors"]["bad_json"] == 1 {
            break h;
        }
    };
    assert!(latency_seen, "no interval reported any latency");
    assert_eq!(h["device_id"], "dev1");
    assert!(h["uptime_secs"].as_f64().unwrap() > 0.0);
    assert!(h["system"]["memory_total_bytes"].as_u64().unwrap() > 0);
    assert!(h["system"]["load_average"].as_array().unwrap().len() == 3);
    assert!(
        h["system"]["state_dir_free_bytes"].as_u64().unwrap() > 0,
        "{h}"
    );
    assert!(
        h["process"]["rss_bytes"].as_u64().unwrap() > 1_000_000,
        "{h}"
    );
    assert_eq!(h["broker"]["connected"], true);
    assert_eq!(h["broker"]["reconnects"], 0);
    let m = &h["models"][0];
    assert_eq!(m["name"], "dyn");
    assert_eq!(m["received"], N + 1);
    assert_eq!(m["dropped"], 0);
    assert_eq!(m["queue_capacity"], 4096);
    // The accelerator serving it, and how (health's acceleration object).
    assert_eq!(m["accelerator"], "cpu", "{m}");
    assert_eq!(m["acceleration"]["serving"], "cpu", "{m}");
    assert_eq!(m["acceleration"]["preferred"], "cpu", "{m}");
    assert_eq!(m["acceleration"]["delegation"], "cpu", "{m}");
    assert_eq!(m["acceleration"]["switches"], 0, "{m}");
    for code in [
        "bad_json",
        "bad_shape",
        "bad_value",
        "too_large",
        "overloaded",
        "inference_failed",
        "no_model",
        "shutting_down",
    ] {
        assert!(m["errors"][code].is_u64(), "errors.{code} missing in {m}");
    }
}

#[test]
fn status_subcommand_prints_the_latest_health_as_a_table() {
    let broker = Broker::start();
    let _d = Daemon::start(&config(
        broker.port,
        "dev1",
        "[health]\ninterval_secs = 0.2",
        DYN,
    ));
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev1/health");
    c.recv(); // a health record exists (retained)
    let port = broker.port.to_string();
    let (code, out, err) = run_cli(
        &[
            "status",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--device",
            "dev1",
            "--wait",
            "20",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("dev1  online"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("dyn ") && l.contains(" cpu ")),
        "{out}"
    );
    // Nobody there: says so and exits 1 (a runtime failure, not bad usage).
    let free = free_port().to_string();
    let (code, _, err) = run_cli(
        &[
            "status",
            "--host",
            "127.0.0.1",
            "--port",
            &free,
            "--wait",
            "1",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach the MQTT broker"), "{err}");
}

#[test]
fn watchdog_stops_when_a_worker_is_wedged() {
    let fx = fixture("spin_int32.json");
    let stall = fx["stall_iterations"].as_i64().expect("stall_iterations");
    let broker = Broker::start();
    let sock = NotifySocket::bind();
    let path = sock.path.display().to_string();
    let models = "[[models]]\nname = \"spin\"\npath = \"{models}/spin_int32.tflite\"\ninput_topic = \"in/spin\"\noutput_topic = \"out/{device_id}/{model}\"\n";
    let extra = "[health]\nstall_timeout_secs = 0.5\ninterval_secs = 0.2\n[shutdown]\ndrain_timeout_secs = 0.2";
    let d = Daemon::spawn(
        &config(broker.port, "dev1", extra, models),
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
    );
    sock.wait_for("READY=1", 1);
    sock.wait_for("WATCHDOG=1", 3);
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.publish("in/spin", json!({"id": "quick", "data": [10]}).to_string());
    assert_eq!(c.recv().json()["id"], "quick");

    // A real wedge: the model loops `stall` times inside one invoke.
    c.publish(
        "in/spin",
        json!({"id": "stuck", "data": [stall]}).to_string(),
    );
    d.wait_for_log("watchdog: worker 0 of model 'spin' has been running one message for");
    // Notifications leave in order from the daemon's notify thread: once
    // the unhealthy STATUS is here, every ping queued before it is too.
    wait_until("STATUS=unhealthy on the notify socket", WAIT, || {
        sock.lines()
            .iter()
            .any(|l| l.starts_with("STATUS=unhealthy: worker 0 of model 'spin'"))
    });
    // No more pings: systemd would restart the service after WatchdogSec.
    let pings = sock.count("WATCHDOG=1");
    let window = std::time::Instant::now();
    while window.elapsed() < std::time::Duration::from_secs(1) {
        assert_eq!(
            sock.count("WATCHDOG=1"),
            pings,
            "pinged while a worker is wedged"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The health record says so too.
    c.subscribe("edge-infer/dev1/health");
    wait_until("a health record with the stalled worker", WAIT, || {
        c.recv_within(std::time::Duration::from_secs(1))
            .is_some_and(|m| {
                m.topic.ends_with("/health") && m.json()["models"][0]["stalled_workers"] == 1
            })
    });
    // SIGTERM still ends the process, wedged worker and all.
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn qos_zero_serves_and_stops_cleanly() {
    let broker = Broker::start();
    let d = Daemon::start(
        &config(broker.port, "dev1", "", DYN).replace("[mqtt]\n", "[mqtt]\nqos = 0\n"),
    );
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    for i in 0..20 {
        c.publish("in/dyn", features(i));
    }
    assert_eq!(c.recv_n(20).len(), 20);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("not confirmed by the broker"), "{log}");
}

#[test]
fn a_notify_socket_nobody_reads_does_not_stall_the_daemon() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    // Bound but never read: its datagram queue fills after a few pings.
    let _sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let path = path.display().to_string();
    let d = Daemon::spawn(
        &config(broker.port, "dev1", "[log]\nlevel = \"debug\"", DYN),
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "20000")],
    );
    d.wait_for_log("ready:");
    d.wait_for_log("sd_notify is not being read");
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    for i in 0..20 {
        c.publish("in/dyn", features(i));
    }
    assert_eq!(c.recv_n(20).len(), 20);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}
