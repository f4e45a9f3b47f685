//! Micro-batching (`max_batch` > 1): a burst of messages is served in
//! batches by a model with a dynamic batch dimension, and every message gets
//! exactly the answer it gets without batching: the same outputs (per row,
//! batch-1 shapes), the same errors, nothing lost or duplicated, exact
//! counters. Models without a dynamic batch dimension are refused.

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};

const N: usize = 50;
/// Indexes of the burst that carry a malformed payload (each with its id).
const MALFORMED: [usize; 4] = [7, 19, 28, 41];

/// The same model three times: unbatched (the reference), micro-batched
/// with JSON payloads, and micro-batched with raw payloads.
fn models() -> String {
    let entry = |name: &str, extra: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\npath = \"{{models}}/dynamic_batch_f32.tflite\"\ninput_topic = \"in/{name}\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\n{extra}\n"
        )
    };
    entry("ref", "")
        + &entry("bat", "max_batch = 8\nmax_delay_us = 50000")
        + &entry(
            "raw",
            "payload = \"raw\"\nmax_batch = 4\nmax_delay_us = 50000",
        )
}

/// Distinct inputs for message `i`.
fn values(i: usize) -> Vec<f32> {
    (0..8)
        .map(|k| ((i * 31 + k * 17) % 101) as f32 / 10.0 - 5.0 + i as f32 * 0.001)
        .collect()
}

fn payload(i: usize) -> String {
    let id = format!("m-{i}");
    match i {
        7 => json!({"id": id, "data": [1, 2, 3]}).to_string(),
        19 => json!({"id": id, "data": [1, 2, 3, 4, 5, 6, 7, "x"]}).to_string(),
        28 => json!({"id": id, "inputs": {"nope": values(i)}}).to_string(),
        41 => format!("{{\"id\": \"{id}\", \"data\": [1, 2, 3"),
        _ => json!({"id": id, "data": values(i)}).to_string(),
    }
}

fn raw_payload(i: usize) -> Vec<u8> {
    values(i).iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn floats(output: &Value) -> Vec<f64> {
    output["values"]
        .as_array()
        .unwrap_or_else(|| panic!("no values in {output}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Same names, shapes and dtypes; values within 1e-5 relative (batched and
/// unbatched XNNPACK kernels may round differently).
fn assert_same_outputs(got: &Value, want: &Value, what: &str) {
    let (g, w) = (
        got["outputs"].as_array().unwrap(),
        want["outputs"].as_array().unwrap(),
    );
    assert_eq!(g.len(), w.len(), "{what}: {got} vs {want}");
    for (g, w) in g.iter().zip(w) {
        for k in ["name", "shape", "dtype"] {
            assert_eq!(g[k], w[k], "{what}: {k} of {got} vs {want}");
        }
        for (a, b) in floats(g).iter().zip(floats(w)) {
            let scale = a.abs().max(b.abs()).max(1e-6);
            assert!(
                (a - b).abs() / scale <= 1e-5,
                "{what}: {a} vs reference {b}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn a_burst_is_served_in_batches_with_the_unbatched_answers() {
    let fx = fixture("dynamic_batch_f32.json");
    let cases: Vec<&Value> = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("batch").is_none())
        .collect();
    let broker = Broker::start();
    let d = Daemon::start(&config(
        broker.port,
        "dev1",
        "[health]\ninterval_secs = 0.2",
        &models(),
    ));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/dev1/+");
    c.subscribe("edge-infer/dev1/errors");

    // The same burst to the unbatched and the batched model, plus the
    // fixture cases, whose reference outputs come from the Python
    // interpreter.
    for topic in ["in/ref", "in/bat"] {
        for i in 0..N {
            c.publish(topic, payload(i));
        }
        for (i, case) in cases.iter().enumerate() {
            let data = case_inputs(case)[0];
            c.publish(
                topic,
                json!({"id": format!("fx-{i}"), "data": data}).to_string(),
            );
        }
    }
    // Raw payloads of well-formed burst messages (raw messages carry no
    // id, but one worker answers them in order).
    const RAW: usize = 12;
    let raw: Vec<usize> = (0..N)
        .filter(|i| !MALFORMED.contains(i))
        .take(RAW)
        .collect();
    for &i in &raw {
        c.publish("in/raw", raw_payload(i));
    }

    // model -> id -> (topic, message); every id exactly once per model.
    let per_model = N + cases.len();
    let mut by_model: HashMap<String, HashMap<String, (String, Value)>> = HashMap::new();
    let mut raw_results = Vec::new();
    for m in c.recv_n(2 * per_model + RAW) {
        let v = m.json();
        let model = v["model"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"))
            .to_string();
        if model == "raw" {
            assert_eq!(m.topic, "out/dev1/raw", "{v}");
            raw_results.push(v);
            continue;
        }
        let id = v["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {v}"))
            .to_string();
        let seen = by_model
            .entry(model.clone())
            .or_default()
            .insert(id.clone(), (m.topic.clone(), v));
        assert!(seen.is_none(), "{model} answered {id} twice");
    }
    let (reference, batched) = (&by_model["ref"], &by_model["bat"]);
    assert_eq!(reference.len(), per_model);
    assert_eq!(batched.len(), per_model);

    for i in 0..N {
        let id = format!("m-{i}");
        let (want_topic, want) = &reference[&id];
        let (got_topic, got) = &batched[&id];
        if MALFORMED.contains(&i) {
            assert_eq!(want_topic, "edge-infer/dev1/errors", "{want}");
            assert_eq!(got_topic, "edge-infer/dev1/errors", "{got}");
            // The same code and message as without batching: a message is
            // checked against one row (1x8), not the batch.
            assert_eq!(got["code"], want["code"], "{got} vs {want}");
            assert_eq!(got["message"], want["message"], "{got} vs {want}");
            assert_eq!(got["model"], "bat");
        } else {
            assert_eq!(got_topic, "out/dev1/bat", "{got}");
            assert_eq!(got["outputs"][0]["shape"], json!([1, 2]), "{got}");
            assert_same_outputs(got, want, &id);
        }
    }
    for (i, case) in cases.iter().enumerate() {
        let (_, got) = &batched[&format!("fx-{i}")];
        assert_outputs(got, case, Some(1e-5));
    }
    for (&i, got) in raw.iter().zip(&raw_results) {
        assert_same_outputs(got, &reference[&format!("m-{i}")].1, &format!("raw {i}"));
    }

    // Every batched result says how many messages shared its invoke: the
    // burst really was batched, and never above max_batch. Unbatched
    // results say nothing about batches.
    let sizes = |results: &mut dyn Iterator<Item = &Value>| -> Vec<u64> {
        results
            .map(|v| {
                v["batch_size"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no batch_size in {v}"))
            })
            .collect()
    };
    let json_sizes = sizes(
        &mut batched
            .values()
            .filter(|(t, _)| t == "out/dev1/bat")
            .map(|(_, v)| v),
    );
    assert!(
        json_sizes.iter().any(|&n| n > 1),
        "no invoke served more than one message: {json_sizes:?}"
    );
    assert!(
        json_sizes.iter().all(|&n| (1..=8).contains(&n)),
        "a batch size outside 1..=8: {json_sizes:?}"
    );
    let raw_sizes = sizes(&mut raw_results.iter());
    assert!(
        raw_sizes.iter().all(|&n| (1..=4).contains(&n)),
        "a raw batch size outside 1..=4: {raw_sizes:?}"
    );
    for (_, v) in reference.values() {
        assert!(v.get("batch_size").is_none(), "unbatched: {v}");
    }

    // Counters count messages, not batches; nothing more arrives.
    c.subscribe("edge-infer/dev1/health");
    let ok = per_model - MALFORMED.len();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = c.recv_before(deadline, "a health record that counts every message");
        assert_eq!(
            m.topic,
            "edge-infer/dev1/health",
            "unexpected extra message: {}",
            String::from_utf8_lossy(&m.payload)
        );
        let h = m.json();
        let models = h["models"].as_array().unwrap();
        let stats = |name: &str| models.iter().find(|m| m["name"] == name).unwrap().clone();
        let (r, b, w) = (stats("ref"), stats("bat"), stats("raw"));
        if r["inferences"] == ok && b["inferences"] == ok && w["inferences"] == RAW {
            for m in [&r, &b] {
                let errors: u64 = m["errors"]
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_u64().unwrap())
                    .sum();
                assert_eq!(errors, MALFORMED.len() as u64, "{m}");
                assert_eq!(m["received"], per_model, "{m}");
            }
            assert_eq!(b["errors"], r["errors"]);
            break;
        }
        assert!(
            b["inferences"].as_u64().unwrap() <= ok as u64,
            "more results than messages: {b}"
        );
    }
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// A message that arrives alone is run by the worker's batch-1 engine, not
/// as one real row among `max_batch - 1` zero rows, and answered the same.
#[test]
fn a_message_alone_is_served_at_batch_one() {
    let fx = fixture("dynamic_batch_f32.json");
    let case = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c.get("batch").is_none())
        .unwrap();
    let broker = Broker::start();
    let _d = Daemon::start(&config(
        broker.port,
        "dev1",
        "",
        "[[models]]\nname = \"bat\"\npath = \"{models}/dynamic_batch_f32.tflite\"\ninput_topic = \"in/bat\"\noutput_topic = \"out/{device_id}/{model}\"\nmax_batch = 8\nmax_delay_us = 0\n",
    ));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/dev1/+");
    for i in 0..3 {
        // One at a time: each is alone in the queue.
        c.publish(
            "in/bat",
            json!({"id": format!("alone-{i}"), "data": case_inputs(case)[0]}).to_string(),
        );
        let r = c.recv().json();
        assert_eq!(r["id"], format!("alone-{i}"), "{r}");
        assert_eq!(r["batch_size"], 1, "{r}");
        assert_eq!(r["outputs"][0]["shape"], json!([1, 2]), "{r}");
        assert_outputs(&r, case, Some(1e-5));
    }
}

#[test]
fn the_status_record_shows_what_one_message_carries() {
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", "", &models()));
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev1/status");
    let status = c.recv().json();
    let bat = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "bat")
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(bat["inputs"][0]["shape"], json!([1, 8]), "{bat}");
    assert_eq!(bat["outputs"][0]["shape"], json!([1, 2]), "{bat}");
}

#[test]
fn max_batch_needs_a_dynamic_batch_dimension() {
    require_runtime();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = config(
        1883,
        "gw",
        "",
        "[[models]]\nname = \"har\"\npath = \"{models}/har_accel_int8.tflite\"\ninput_topic = \"sensors/+/accel\"\nmax_batch = 8\n\n[[models]]\nname = \"dyn\"\npath = \"{models}/dynamic_batch_f32.tflite\"\ninput_topic = \"in/dyn\"\nmax_batch = 8\nbatch = 4\n",
    );
    std::fs::write(&path, text).unwrap();
    let cfg = path.to_str().unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", cfg], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("models[1].max_batch: is 8, but batch is 4"),
        "{err}"
    );
    // Settings problems come first; fix that one to see the model check.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("batch = 4\n", ""),
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", cfg], &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("models[0].max_batch: is 8, but input 'accel' of model \"har\"")
            && err.contains("has no dynamic batch dimension (shape signature [1, 128, 3])"),
        "{err}"
    );
    assert!(!err.contains("models[1]"), "{err}");
    // The same check without a runtime library, from the file alone.
    let (code, _, err) = run_cli(
        &["check-config", "--config", cfg],
        &[("EDGE_INFER__RUNTIME__LIBRARY", "/nonexistent/libLiteRt.so")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("models[0].max_batch: is 8, but input 'accel' of model \"har\""),
        "{err}"
    );
}
