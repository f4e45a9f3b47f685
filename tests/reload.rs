//! SIGHUP reloads config and models while messages keep flowing: changed
//! and new models are loaded before they serve, messages finish on the
//! model they started on, removed models are unsubscribed, and a failed
//! reload keeps everything as it was.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

fn model(name: &str, file: &str, topic: &str) -> String {
    format!("[[models]]\nname = \"{name}\"\npath = \"{{models}}/{file}\"\ninput_topic = \"{topic}\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\nqueue_capacity = 10000\nqueue_max_bytes = 268435456\n")
}

fn window(i: usize) -> Vec<f64> {
    (0..384).map(|k| ((i + k) % 11) as f64 * 0.05).collect()
}

#[test]
fn reload_swaps_models_under_load_without_losing_or_misrouting_a_message() {
    let broker = Broker::start();
    let before = config(
        broker.port,
        "dev1",
        "",
        &(model("a", "har_accel_int8.tflite", "in/a")
            + &model("b", "dynamic_batch_f32.tflite", "in/b")),
    );
    let after = config(
        broker.port,
        "dev1",
        "",
        &(model("a", "har_accel_f32.tflite", "in/a")
            + &model("c", "dynamic_batch_f32.tflite", "in/c")),
    );
    let d = Daemon::start(&before);
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");

    // A publisher that keeps sending to model "a" through the reload.
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (sent, stop) = (Arc::clone(&sent), Arc::clone(&stop));
        let pc = TestClient::connect(broker.port);
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                pc.publish("in/a", json!({"id": i, "data": window(i)}).to_string());
                i += 1;
                sent.store(i, Ordering::Relaxed);
                if i % 50 == 0 {
                    // Let the broker breathe; still thousands per second.
                    std::thread::yield_now();
                }
            }
            pc
        })
    };
    wait_until("some traffic before the reload", WAIT, || {
        sent.load(Ordering::Relaxed) > 300
    });
    d.rewrite_config(&after);
    d.signal("HUP");
    d.wait_for_log("reload: 0 model(s) kept (), 2 loaded (a, c), 1 removed (b)");
    let sent_at_reload = sent.load(Ordering::Relaxed);
    wait_until("traffic after the reload", WAIT, || {
        sent.load(Ordering::Relaxed) > sent_at_reload + 300
    });
    stop.store(true, Ordering::Relaxed);
    let _pc = publisher.join().unwrap();
    let total = sent.load(Ordering::Relaxed);

    let (old, new) = (
        model_sha256("har_accel_int8.tflite"),
        model_sha256("har_accel_f32.tflite"),
    );
    let mut by_id: Vec<Option<String>> = vec![None; total];
    for m in c.recv_n(total) {
        assert_eq!(
            m.topic,
            "out/dev1/a",
            "{}",
            String::from_utf8_lossy(&m.payload)
        );
        let r = m.json();
        let id = r["id"].as_u64().unwrap() as usize;
        assert!(by_id[id].is_none(), "id {id} answered twice");
        by_id[id] = Some(r["model_sha256"].as_str().unwrap().to_string());
    }
    // One switch point: the old model up to it, the new one after it.
    let shas: Vec<&str> = by_id.iter().map(|s| s.as_deref().unwrap()).collect();
    let switch = shas
        .iter()
        .position(|s| *s == new)
        .expect("the new model never answered");
    assert!(switch > 0, "the old model never answered");
    assert!(
        shas[..switch].iter().all(|s| *s == old),
        "old and new interleave"
    );
    assert!(
        shas[switch..].iter().all(|s| *s == new),
        "old and new interleave"
    );
    assert!(
        switch <= sent_at_reload,
        "messages sent after the reload finished went to the old model"
    );

    // The removed model's topic is unsubscribed; the new one serves.
    d.wait_for_log("unsubscribed from a topic filter");
    c.publish(
        "in/b",
        json!({"id": "b", "data": [1, 2, 3, 4, 5, 6, 7, 8]}).to_string(),
    );
    c.publish(
        "in/c",
        json!({"id": "c", "data": [1, 2, 3, 4, 5, 6, 7, 8]}).to_string(),
    );
    let m = c.recv();
    assert_eq!(
        m.topic,
        "out/dev1/c",
        "{}",
        String::from_utf8_lossy(&m.payload)
    );
    assert!(
        c.recv_within(std::time::Duration::from_millis(300))
            .is_none(),
        "the removed model answered"
    );

    // Fleet tools see the new model set in the retained status.
    c.subscribe("edge-infer/dev1/status");
    let status = c.recv().json();
    let names: Vec<&str> = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(status["models"][0]["sha256"], new.as_str());

    // The replaced and removed versions exit once their queues are empty.
    wait_until("both old versions to be freed", WAIT, || {
        d.count_log("previous version finished its queue and was freed") == 2
    });
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn an_unchanged_model_keeps_serving_through_a_reload() {
    let broker = Broker::start();
    let text = config(
        broker.port,
        "dev1",
        "",
        &model("a", "har_accel_int8.tflite", "in/a"),
    );
    let d = Daemon::start(&text);
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    // Messages before, around and after the reload: every one answered by
    // the same model, none refused.
    for i in 0..20 {
        if i == 10 {
            d.signal("HUP");
        }
        c.publish("in/a", json!({"id": i, "data": window(i)}).to_string());
    }
    d.wait_for_log("reload: 1 model(s) kept (a), 0 loaded (), 0 removed ()");
    for i in 20..30 {
        c.publish("in/a", json!({"id": i, "data": window(i)}).to_string());
    }
    let mut ids: Vec<u64> = c
        .recv_n(30)
        .iter()
        .map(|m| {
            assert_eq!(
                m.topic,
                "out/dev1/a",
                "{}",
                String::from_utf8_lossy(&m.payload)
            );
            m.json()["id"].as_u64().expect("id")
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..30).collect::<Vec<_>>());
}

fn expect_reload_failed(c: &TestClient, what: &str) -> Value {
    let m = c.recv();
    assert_eq!(
        m.topic,
        "edge-infer/dev1/errors",
        "{}",
        String::from_utf8_lossy(&m.payload)
    );
    let e = m.json();
    assert_eq!(e["code"], "reload_failed", "{e}");
    assert!(e.get("source_topic").is_none());
    assert!(e["message"].as_str().unwrap().contains(what), "{what}: {e}");
    e
}

#[test]
fn a_failed_reload_keeps_the_running_setup_and_says_why() {
    let broker = Broker::start();
    let good = config(
        broker.port,
        "dev1",
        "",
        &model("a", "har_accel_int8.tflite", "in/a"),
    );
    let d = Daemon::start(&good);
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let serves = |i: usize| {
        assert_eq!(
            serves_a(&c, i)["model_sha256"],
            model_sha256("har_accel_int8.tflite").as_str()
        );
    };
    serves(0);

    d.rewrite_config("this is = not [valid toml");
    d.signal("HUP");
    expect_reload_failed(&c, "config.toml");
    serves(1);

    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.tflite");
    std::fs::write(&corrupt, b"garbage").unwrap();
    d.rewrite_config(&good.replace(
        &common::model("har_accel_int8.tflite").display().to_string(),
        corrupt.to_str().unwrap(),
    ));
    d.signal("HUP");
    expect_reload_failed(&c, "models[0].path");
    serves(2);

    d.rewrite_config(&good.replace(&format!("port = {}", broker.port), "port = 1"));
    d.signal("HUP");
    expect_reload_failed(&c, "restart the service");
    serves(3);

    // The outbox and the acknowledgement policy belong to the broker
    // connection too.
    d.rewrite_config(&format!(
        "{good}\n[outbox]\nmax_bytes = 0\n[delivery]\nack = \"queued\"\n"
    ));
    d.signal("HUP");
    let e = expect_reload_failed(&c, "outbox");
    assert!(
        e["message"].as_str().unwrap().contains("delivery.ack"),
        "{e}"
    );
    serves(4);
    assert_eq!(
        d.count_log("reload failed, keeping the running configuration"),
        4
    );
}

/// Model "a" (the int8 accelerometer model on `in/a`) answers message
/// `id` with its result.
fn serves_a(c: &TestClient, id: usize) -> Value {
    c.publish("in/a", json!({"id": id, "data": window(id)}).to_string());
    let m = c.recv();
    assert_eq!(
        m.topic,
        "out/dev1/a",
        "{}",
        String::from_utf8_lossy(&m.payload)
    );
    let v = m.json();
    assert_eq!(v["id"], id);
    v
}

/// The worker threads of a process: thread name -> thread id.
fn worker_threads(pid: u32) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue; // the thread ended while we looked
        };
        let comm = comm.trim();
        if comm.starts_with("infer-") {
            let tid = task.file_name().to_string_lossy().parse().unwrap();
            out.insert(comm.to_string(), tid);
        }
    }
    out
}

#[test]
fn inserting_a_model_first_keeps_the_others_workers_and_starts_only_the_new_one() {
    let broker = Broker::start();
    let a = model("a", "har_accel_int8.tflite", "in/a");
    let b = model("b", "har_accel_f32.tflite", "in/b");
    let c = model("c", "dynamic_batch_f32.tflite", "in/c");
    let d = Daemon::start(&config(broker.port, "dev1", "", &(a.clone() + &b)));
    let client = TestClient::connect(broker.port);
    client.subscribe("out/#");
    let ask = |topic: &str, id: usize, data: Vec<f64>| {
        client.publish(topic, json!({"id": id, "data": data}).to_string());
        let m = client.recv();
        assert_eq!(
            m.json()["id"],
            id,
            "{}",
            String::from_utf8_lossy(&m.payload)
        );
        m.topic
    };
    assert_eq!(ask("in/a", 1, window(1)), "out/dev1/a");
    assert_eq!(ask("in/b", 2, window(2)), "out/dev1/b");
    let before = worker_threads(d.pid());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["infer-a-0", "infer-b-0"]
    );

    d.rewrite_config(&config(broker.port, "dev1", "", &(c + &a + &b)));
    d.signal("HUP");
    d.wait_for_log("reload: 2 model(s) kept (a, b), 1 loaded (c), 0 removed ()");
    // The same threads serve a and b: nothing of theirs was loaded again.
    let after = worker_threads(d.pid());
    assert_eq!(after.get("infer-a-0"), before.get("infer-a-0"));
    assert_eq!(after.get("infer-b-0"), before.get("infer-b-0"));
    assert!(after.contains_key("infer-c-0"), "{after:?}");
    assert_eq!(ask("in/a", 3, window(3)), "out/dev1/a");
    assert_eq!(ask("in/b", 4, window(4)), "out/dev1/b");
    d.wait_for_log("subscribed to 1 topic filter(s)");
    assert_eq!(
        ask("in/c", 5, (1..=8).map(f64::from).collect()),
        "out/dev1/c"
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    // Counters went on across the reload: two messages each.
    assert!(log.contains("model a: received=2 ok=2"), "{log}");
    assert!(log.contains("model b: received=2 ok=2"), "{log}");
    assert!(
        !log.contains("previous version finished its queue"),
        "a kept model was retired:\n{log}"
    );
}

/// Threads of every process whose real uid is `uid`: what RLIMIT_NPROC
/// counts.
fn threads_of_user(uid: u32) -> u64 {
    let mut n = 0;
    for proc in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(proc.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            n += field("Threads:").unwrap_or(0);
        }
    }
    n
}

const NOBODY: u32 = 65534;

/// A daemon serving model "a" as the unprivileged user nobody, from a
/// directory of its own (wherever the checkout is, nobody can read it),
/// with its threads limited to `max_threads` (RLIMIT_NPROC, set by
/// `prlimit` on itself before it runs the daemon) when given.
fn start_as_nobody(broker: &Broker, max_threads: Option<u64>) -> (Daemon, impl Fn(&str) -> String) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = |from: &std::path::Path, name: &str| {
        let to = dir.path().join(name);
        std::fs::copy(from, &to).unwrap();
        to
    };
    let binary = copy(&daemon_binary(), "edge-infer");
    let library = copy(&repo().join("runtime/x86_64/libLiteRt.so"), "libLiteRt.so");
    copy(
        &common::model("har_accel_int8.tflite"),
        "har_accel_int8.tflite",
    );
    copy(
        &common::model("har_accel_f32.tflite"),
        "har_accel_f32.tflite",
    );
    let models_dir = dir.path().display().to_string();
    let (port, library) = (broker.port, library.display().to_string());
    let text = move |models: &str| {
        config(
            port,
            "dev1",
            &format!("[runtime]\nlibrary = \"{library}\"\n"),
            "",
        ) + &models.replace("{models}", &models_dir)
    };
    // Its state dir (the outbox) must be nobody's to write.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        text(&model("a", "har_accel_int8.tflite", "in/a")),
    )
    .unwrap();
    std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = std::process::Command::new("prlimit");
    if let Some(n) = max_threads {
        cmd.arg(format!("--nproc={n}:{n}"));
    }
    cmd.arg("--")
        .arg(&binary)
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .uid(NOBODY)
        .gid(NOBODY);
    let d = Daemon::spawn_command(dir, cmd);
    d.wait_for_log("ready:");
    (d, text)
}

/// A worker thread that cannot be started is a real failure here: the
/// daemon runs as an unprivileged user (root is exempt from RLIMIT_NPROC)
/// allowed one thread more than it needs to serve, and the reload adds a
/// model with three workers.
#[test]
fn a_reload_whose_workers_cannot_start_changes_nothing_and_says_why() {
    let broker = Broker::start();
    // What serving takes, measured on a first run.
    let (d, _) = start_as_nobody(&broker, None);
    let serving = threads_of_user(NOBODY);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    wait_until("the first daemon's threads to be gone", WAIT, || {
        threads_of_user(NOBODY) == 0
    });

    let (d, text) = start_as_nobody(&broker, Some(serving + 1));
    let client = TestClient::connect(broker.port);
    client.subscribe("out/#");
    client.subscribe("edge-infer/dev1/errors");
    let serves = |id: usize| serves_a(&client, id);
    serves(1);
    let a = model("a", "har_accel_int8.tflite", "in/a");
    let c = model("c", "har_accel_f32.tflite", "in/c").replace("\noutput", "\nworkers = 3\noutput");
    d.rewrite_config(&text(&(c + &a)));
    d.signal("HUP");
    let e = expect_reload_failed(&client, "cannot start the worker threads of model c");
    assert!(
        e["message"].as_str().unwrap().contains("models[0].workers"),
        "{e}"
    );
    // The old set keeps serving; no thread of the new model is left.
    serves(2);
    wait_until("the new model's started workers to exit", WAIT, || {
        worker_threads(d.pid()).keys().collect::<Vec<_>>() == ["infer-a-0"]
    });
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("reload: "), "{log}");
}

/// A daemon serving model "a" whose address space is capped at 1 GiB
/// (`prlimit`, which execs it: same pid), so a regression that reads a
/// device without end fails fast instead of taking the machine's memory.
fn start_capped(text: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, text).unwrap();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--as=1073741824")
        .arg("--")
        .arg(daemon_binary())
        .arg("run")
        .arg("--config")
        .arg(&config_path);
    let d = Daemon::spawn_command(dir, cmd);
    d.wait_for_log("ready:");
    d
}

/// The peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    kib * 1024
}

#[test]
fn a_reload_to_a_device_fifo_or_oversized_file_is_refused_without_reading_it() {
    let broker = Broker::start();
    let good = config(
        broker.port,
        "dev1",
        "",
        &(model("a", "har_accel_int8.tflite", "in/a") + "labels = \"{models}/har_accel.labels\"\n"),
    );
    let d = start_capped(&good);
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let serves = |i: usize| serves_a(&c, i);
    serves(0);

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("a.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let big = dir.path().join("big.tflite");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1_048_577)
        .unwrap();
    let model_file = common::model("har_accel_int8.tflite").display().to_string();
    let labels_file = common::model("har_accel.labels").display().to_string();
    let fifo = fifo.display().to_string();
    let big = big.display().to_string();
    let cases = [
        (
            good.replace(&model_file, "/dev/zero"),
            "models[0].path: model file /dev/zero is a character device, not a regular file",
        ),
        (
            good.replace(&labels_file, "/dev/zero"),
            "models[0].labels: labels file /dev/zero is a character device, not a regular file",
        ),
        (
            good.replace(&model_file, &fifo),
            "is a FIFO (named pipe), not a regular file",
        ),
        (
            good.replace(&model_file, &big)
                .replace("\n[mqtt]", "\n[limits]\nmax_model_bytes = 1048576\n[mqtt]"),
            "is 1048577 bytes, above limits.max_model_bytes (1048576 bytes)",
        ),
    ];
    for (i, (text, why)) in cases.iter().enumerate() {
        d.rewrite_config(text);
        d.signal("HUP");
        expect_reload_failed(&c, why);
        serves(i + 1);
    }
    // Nothing was read: the daemon's peak memory is what serving takes.
    let peak = peak_rss(d.pid());
    assert!(
        peak < 200 * 1024 * 1024,
        "peak RSS {} MiB after the refused reloads",
        peak >> 20
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_reload_with_a_broken_password_line_publishes_where_but_not_the_password() {
    let broker = Broker::start();
    let good = config(
        broker.port,
        "dev1",
        "",
        &model("a", "har_accel_int8.tflite", "in/a"),
    );
    let d = Daemon::start(&good);
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev1/errors");
    let broken = good.replace(
        "\n[mqtt]\n",
        "\n[mqtt]\nusername = \"edge\"\npassword = \"hunter2-secret\n",
    );
    let line = broken
        .lines()
        .position(|l| l.starts_with("password"))
        .expect("the password line")
        + 1;
    d.rewrite_config(&broken);
    d.signal("HUP");
    let e = expect_reload_failed(&c, &format!("at line {line}, column"));
    let message = e["message"].as_str().unwrap();
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        message.contains("password = \"***") && message.contains("invalid basic string"),
        "{message}"
    );
    d.wait_for_log("reload failed, keeping the running configuration");
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
}
