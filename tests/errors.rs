//! Every message that cannot be served gets an error on
//! edge-infer/{device_id}/errors with a stable code and a message that says
//! what was expected and what came; the daemon keeps serving.

mod common;

use common::*;
use serde_json::{json, Value};

const HAR: &str = "\
[[models]]
name = \"har\"
path = \"{models}/har_accel_int8.tflite\"
input_topic = \"in/har\"
output_topic = \"out/{device_id}/{model}\"
";

fn window(n: usize) -> Vec<f64> {
    (0..n).map(|i| (i % 7) as f64 * 0.1).collect()
}

fn expect_error(c: &TestClient, code: &str) -> Value {
    let m = c.recv();
    assert_eq!(
        m.topic,
        "edge-infer/dev1/errors",
        "expected an error, got {}: {}",
        m.topic,
        String::from_utf8_lossy(&m.payload)
    );
    let e = m.json();
    assert_eq!(e["code"], code, "{e}");
    assert_eq!(e["device_id"], "dev1");
    assert!(e["message"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(e["received_at"].as_f64().is_some() && e["published_at"].as_f64().is_some());
    e
}

#[test]
fn bad_payloads_get_precise_errors_and_the_daemon_keeps_serving() {
    let broker = Broker::start();
    let d = Daemon::start(&config(
        broker.port,
        "dev1",
        "[limits]\nmax_payload_bytes = 20000",
        HAR,
    ));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");

    c.publish("in/har", "definitely not json");
    let e = expect_error(&c, "bad_json");
    assert_eq!(e["source_topic"], "in/har");
    assert_eq!(e["model"], "har");
    assert!(e.get("id").is_none());

    c.publish(
        "in/har",
        json!({"id": "short", "data": window(383)}).to_string(),
    );
    let e = expect_error(&c, "bad_shape");
    assert_eq!(e["id"], "short");
    assert_eq!(
        e["message"],
        "input 'accel' needs 384 values (1x128x3), got 383"
    );

    c.publish(
        "in/har",
        json!({"id": "long", "data": window(385)}).to_string(),
    );
    let e = expect_error(&c, "bad_shape");
    assert_eq!(
        e["message"],
        "input 'accel' needs 384 values (1x128x3), got 385"
    );

    // Python's json.dumps writes NaN, which is not JSON.
    let mut text = json!({"id": "nan", "data": window(384)}).to_string();
    text = text.replacen("0.1", "NaN", 1);
    c.publish("in/har", text);
    let e = expect_error(&c, "bad_value");
    assert!(e["message"].as_str().unwrap().contains("NaN"), "{e}");

    let mut vals: Vec<Value> = window(384).into_iter().map(Value::from).collect();
    vals[17] = json!("0.5");
    c.publish("in/har", json!({"id": 5, "data": vals}).to_string());
    let e = expect_error(&c, "bad_value");
    assert_eq!(e["id"], 5);
    assert_eq!(
        e["message"],
        "input 'accel' element 17 is a string, expected a number"
    );

    c.publish(
        "in/har",
        json!({"id": "big", "data": vec![1e39; 384]}).to_string(),
    );
    expect_error(&c, "bad_value");

    c.publish(
        "in/har",
        json!({"id": "multi", "inputs": [window(384), window(3)]}).to_string(),
    );
    let e = expect_error(&c, "bad_shape");
    assert!(e["message"].as_str().unwrap().contains("2 entries"), "{e}");

    c.publish(
        "in/har",
        json!({"id": "none", "values": window(384)}).to_string(),
    );
    let e = expect_error(&c, "bad_json");
    assert!(e["message"].as_str().unwrap().contains("\"data\""), "{e}");

    c.publish("in/har", vec![b'x'; 20001]);
    let e = expect_error(&c, "too_large");
    assert_eq!(
        e["message"],
        "payload is 20001 bytes, the limit (limits.max_payload_bytes) is 20000"
    );

    // Unknown fields are ignored on purpose (devices add timestamps).
    c.publish(
        "in/har",
        json!({"id": "ok", "ts": 1.5, "meta": {"fw": "1.2"}, "data": window(384)}).to_string(),
    );
    let m = c.recv();
    assert_eq!(m.topic, "out/dev1/har");
    assert_eq!(m.json()["id"], "ok");
    // Log lines carry structured fields (MODEL=, TOPIC=, ... in the journal).
    let log = d.log_text();
    assert!(
        log.contains("model=har topic=in/har msg_id=short error_code=bad_shape"),
        "{log}"
    );
}

#[test]
fn raw_payload_of_the_wrong_size_is_bad_shape() {
    let broker = Broker::start();
    let models = HAR.to_string() + "payload = \"raw\"\n";
    let _d = Daemon::start(&config(broker.port, "dev1", "", &models));
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev1/errors");
    c.subscribe("out/#");
    c.publish("in/har", vec![0u8; 383]);
    let e = expect_error(&c, "bad_shape");
    assert_eq!(
        e["message"],
        "raw payload must be exactly 384 bytes ('accel' 1x128x3 int8 = 384 bytes), got 383"
    );
    c.publish("in/har", vec![0u8; 384]);
    assert_eq!(c.recv().topic, "out/dev1/har");
}

/// Floods a queue that holds one frame (by `bound`): every message must
/// come back as a result or an `overloaded` error, none may vanish, and
/// every refusal says `policy` and `says` (which bound refused it).
fn flood(policy: &str, bound: &str, says: &str) {
    let broker = Broker::start();
    let models = format!(
        "[[models]]\nname = \"img\"\npath = \"{{models}}/mobilenet_v2_int8.tflite\"\ninput_topic = \"in/img\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\npayload = \"raw\"\n{bound}\noverflow = \"{policy}\"\n"
    );
    let _d = Daemon::start(&config(broker.port, "dev1", "", &models));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    const N: usize = 60;
    let frame = vec![3u8; 224 * 224 * 3];
    for _ in 0..N {
        c.publish("in/img", frame.clone());
    }
    let msgs = c.recv_n(N);
    let results = msgs.iter().filter(|m| m.topic == "out/dev1/img").count();
    let overloaded: Vec<Value> = msgs
        .iter()
        .filter(|m| m.topic == "edge-infer/dev1/errors")
        .map(|m| m.json())
        .collect();
    assert_eq!(results + overloaded.len(), N);
    assert!(results >= 1, "nothing was served");
    assert!(
        !overloaded.is_empty(),
        "a {N}-message burst into a 1-slot queue overflowed nothing"
    );
    for e in &overloaded {
        assert_eq!(e["code"], "overloaded", "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains(policy) && message.contains(says),
            "expected {policy:?} and {says:?} in the refusal, got {e}"
        );
    }
    // Nothing more arrives: exactly one answer per message.
    assert!(c
        .recv_within(std::time::Duration::from_millis(300))
        .is_none());
}

#[test]
fn overflow_reject_new_answers_every_message() {
    flood(
        "reject_new",
        "queue_capacity = 1",
        "queue_capacity = 1 reached",
    );
}

#[test]
fn a_queue_full_of_bytes_overflows_like_a_queue_full_of_messages() {
    // Room for 1000 messages but only one 150 KB frame at a time.
    flood(
        "reject_new",
        "queue_capacity = 1000\nqueue_max_bytes = 200000",
        "with its 150528 bytes the messages waiting and being served would hold 301056 bytes, above queue_max_bytes = 200000",
    );
}

#[test]
fn overflow_drop_oldest_answers_every_message() {
    flood(
        "drop_oldest",
        "queue_capacity = 1",
        "the oldest queued and was dropped",
    );
}

#[test]
fn messages_on_a_topic_no_model_serves_get_no_model() {
    // A persistent session keeps a subscription the new config no longer
    // has; the daemon must answer those messages rather than drop them.
    let broker = Broker::start();
    let old = config(broker.port, "dev1", "", &(HAR.to_string() + "\n[[models]]\nname = \"dyn\"\npath = \"{models}/dynamic_batch_f32.tflite\"\ninput_topic = \"in/dyn\"\noutput_topic = \"out/{device_id}/{model}\"\n"));
    let d = Daemon::start(&old);
    let (code, _) = d.terminate();
    assert_eq!(code, Some(0));
    let _d = Daemon::start(&config(broker.port, "dev1", "", HAR));
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev1/errors");
    c.publish(
        "in/dyn",
        json!({"id": 7, "data": [1, 2, 3, 4, 5, 6, 7, 8]}).to_string(),
    );
    let e = expect_error(&c, "no_model");
    assert_eq!(e["source_topic"], "in/dyn");
    assert_eq!(e["id"], 7, "{e}");
    assert!(e.get("model").is_none());
}

/// Refusals happen before decoding, but the sender still learns which
/// message was refused: the id is read from the top of the payload.
#[test]
fn a_refused_message_is_answered_with_its_id() {
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", "", HAR));
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/dev1/errors");
    let mut big = String::from(r#"{"id": "frame-\u00e9-1", "data": ["#);
    while big.len() < 2 * 1024 * 1024 {
        big.push_str("0.123456789,");
    }
    big.push_str("0]}");
    c.publish("in/har", big.clone());
    let e = expect_error(&c, "too_large");
    assert_eq!(e["id"], "frame-\u{e9}-1", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("payload is {} bytes", big.len())),
        "{e}"
    );
    // An id that is not at the top level of the first 4 KiB is not looked
    // for: the error still comes, without an id.
    let late = big.replacen(r#""id": "frame-\u00e9-1", "#, "", 1).replacen(
        "0]}",
        r#"0], "id": "late"}"#,
        1,
    );
    c.publish("in/har", late);
    let e = expect_error(&c, "too_large");
    assert!(e.get("id").is_none(), "{e}");
}

#[test]
fn a_failing_invoke_is_inference_failed_and_the_model_recovers() {
    let fx = fixture("lookup_int32.json");
    let broker = Broker::start();
    let models = "[[models]]\nname = \"lookup\"\npath = \"{models}/lookup_int32.tflite\"\ninput_topic = \"in/lookup\"\noutput_topic = \"out/{device_id}/{model}\"\n";
    let _d = Daemon::start(&config(broker.port, "dev1", "", models));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    for (i, bad) in fx["failing_inputs"].as_array().unwrap().iter().enumerate() {
        c.publish("in/lookup", json!({"id": i, "data": bad}).to_string());
        let e = expect_error(&c, "inference_failed");
        assert_eq!(e["id"], i);
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("LiteRtRunCompiledModel"),
            "{e}"
        );
        // The same engine serves the next good message correctly.
        let case = &fx["cases"][i % 3];
        c.publish(
            "in/lookup",
            json!({"id": "good", "data": case_inputs(case)[0]}).to_string(),
        );
        let m = c.recv();
        assert_eq!(
            m.topic,
            "out/dev1/lookup",
            "{}",
            String::from_utf8_lossy(&m.payload)
        );
        assert_outputs(&m.json(), case, None);
    }
}

/// A result whose topic, rendered from a long captured topic level, is
/// longer than MQTT's two-byte length can spell is answered with
/// `too_large` on the errors topic; before, its length wrapped and the
/// broker read a corrupt packet.
#[test]
fn a_result_topic_longer_than_mqtt_allows_is_too_large() {
    let broker = Broker::start();
    let models = "[[models]]\nname = \"wide\"\npath = \"{models}/har_accel_int8.tflite\"\ninput_topic = \"in/+\"\noutput_topic = \"out/{1}/{1}\"\n";
    let d = Daemon::start(&config(broker.port, "dev1", "", models));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let level = "x".repeat(40_000);
    let input = json!({"id": 1, "data": window(384)}).to_string();
    c.publish(&format!("in/{level}"), input.clone());
    let e = expect_error(&c, "too_large");
    assert_eq!(e["model"], "wide");
    assert_eq!(e["id"], 1);
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("80005 bytes, more than the 65535 an MQTT topic may hold"),
        "{message}"
    );
    c.publish("in/ok", input);
    let m = c.recv();
    assert_eq!(m.topic, "out/ok/ok");
    assert_eq!(m.json()["id"], 1);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("lost the MQTT broker connection"), "{log}");
}

/// A result bigger than one MQTT packet to the broker may hold could never
/// be published (the client would drop the connection over it, and again
/// at every retry): it is answered with `too_large` instead, and the link
/// keeps serving.
#[test]
fn a_result_too_large_for_the_output_link_is_too_large() {
    let inputs = Broker::start();
    let uplink = Broker::start();
    let models = format!(
        "[uplink]\nhost = \"127.0.0.1\"\nport = {}\nmax_packet_bytes = 1024\n\n{HAR}\n[[models]]\nname = \"img\"\npath = \"{{models}}/mobilenet_v2_int8.tflite\"\ninput_topic = \"in/img\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\npayload = \"raw\"\n",
        uplink.port
    );
    let d = Daemon::start(&config(inputs.port, "dev1", "", &models));
    let c = TestClient::connect(uplink.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let sender = TestClient::connect(inputs.port);
    // 1,001 class scores do not fit in 1 KiB.
    sender.publish("in/img", vec![0u8; 224 * 224 * 3]);
    let e = expect_error(&c, "too_large");
    assert_eq!(e["model"], "img");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("uplink.max_packet_bytes = 1024"),
        "{message}"
    );
    sender.publish("in/har", json!({"id": 7, "data": window(384)}).to_string());
    let m = c.recv();
    assert_eq!(m.topic, "out/dev1/har");
    assert_eq!(m.json()["id"], 7);
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("lost the MQTT broker connection"), "{log}");
}
