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
    d.signal("HUP");
    d.wait_for_log("reload: 1 model(s) kept (a), 0 loaded (), 0 removed ()");
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.publish("in/a", json!({"id": 1, "data": window(1)}).to_string());
    assert_eq!(c.recv().json()["id"], 1);
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
        c.publish("in/a", json!({"id": i, "data": window(i)}).to_string());
        let m = c.recv();
        assert_eq!(
            m.topic,
            "out/dev1/a",
            "{}",
            String::from_utf8_lossy(&m.payload)
        );
        assert_eq!(
            m.json()["model_sha256"],
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
    assert_eq!(
        d.count_log("reload failed, keeping the running configuration"),
        3
    );
}
