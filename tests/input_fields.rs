//! Named input fields and normalization (`[models.input]`): one object
//! whose scalar, array and JSON Pointer fields are stacked in order into
//! the input, with or without `(x - mean) / std` per innermost element,
//! and normalization of ordinary `{"data": ..}` messages. Results must
//! equal the Python interpreter's outputs for the normalized float32
//! inputs (tests/fixtures/preprocess/input_fields.json, made by
//! tests/fixtures/make_preprocess.py).

mod common;

use std::collections::HashMap;

use common::*;
use serde_json::{json, Value};

fn input_fields() -> Value {
    fixture("preprocess/input_fields.json")
}

fn models(fx: &Value) -> String {
    let fields = &fx["fields"];
    let (mean, std) = (&fx["normalize"]["mean"], &fx["normalize"]["std"]);
    let (data_mean, data_std) = (&fx["data_normalize"]["mean"], &fx["data_normalize"]["std"]);
    format!(
        "\
[[models]]
name = \"fields\"
path = \"{{models}}/dynamic_batch_f32.tflite\"
input_topic = \"in/fields\"
output_topic = \"out/{{model}}\"
[models.input]
fields = {fields}

[[models]]
name = \"fields_norm\"
path = \"{{models}}/dynamic_batch_f32.tflite\"
input_topic = \"in/fields_norm\"
output_topic = \"out/{{model}}\"
[models.input]
fields = {fields}
mean = {mean}
std = {std}

[[models]]
name = \"data_norm\"
path = \"{{models}}/dynamic_batch_f32.tflite\"
input_topic = \"in/data_norm\"
output_topic = \"out/{{model}}\"
[models.input]
mean = {data_mean}
std = {data_std}
"
    )
}

#[test]
fn named_fields_and_normalization_match_the_reference() {
    let fx = input_fields();
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", "", &models(&fx)));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");

    let cases = fx["cases"].as_array().expect("cases");
    for case in cases {
        let message = case["message"].to_string();
        c.publish("in/fields", message.clone());
        c.publish("in/fields_norm", message);
        c.publish(
            "in/data_norm",
            json!({"id": case["message"]["id"], "data": case["input"]}).to_string(),
        );
    }
    // (topic, id) -> result.
    let mut got: HashMap<(String, String), Value> = HashMap::new();
    for m in c.recv_n(3 * cases.len()) {
        let r = m.json();
        assert!(
            m.topic.starts_with("out/"),
            "unexpected message on {}: {r}",
            m.topic
        );
        let id = r["id"].as_str().unwrap_or_else(|| panic!("no id: {r}"));
        got.insert((m.topic.clone(), id.to_string()), r);
    }
    for case in cases {
        let id = case["message"]["id"].as_str().expect("id");
        for (topic, outputs) in [
            ("out/fields", "outputs"),
            ("out/fields_norm", "normalized_outputs"),
            ("out/data_norm", "data_normalized_outputs"),
        ] {
            let r = got
                .get(&(topic.to_string(), id.to_string()))
                .unwrap_or_else(|| panic!("no result for {id} on {topic}"));
            let want =
                json!({"name": format!("{} on {topic}", case["name"]), "outputs": case[outputs]});
            assert_outputs(r, &want, Some(1e-5));
        }
    }
}

#[test]
fn a_missing_or_malformed_field_is_an_error_that_names_it() {
    let fx = input_fields();
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", "", &models(&fx)));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let good = fx["cases"][0]["message"].clone();

    let mut missing = good.clone();
    missing.as_object_mut().expect("object").remove("f1");
    let mut string = good.clone();
    string["f0"] = json!("0.5");
    let mut short = good.clone();
    short["f3"] = json!([1.0, 2.0]);
    let mut no_parent = good.clone();
    no_parent.as_object_mut().expect("object").remove("meta");
    let mut null = good.clone();
    null["f1"][1] = Value::Null;
    // The codes as README.md documents them: a missing field is bad_json,
    // a field that is not numbers bad_value, the wrong total bad_shape.
    for (id, mut message, field, code) in [
        ("missing", missing, "f1", "bad_json"),
        ("string", string, "f0", "bad_value"),
        ("short", short, "f3", "bad_shape"),
        ("no-parent", no_parent, "/meta/f2", "bad_json"),
        ("null-element", null, "f1", "bad_value"),
    ] {
        message["id"] = json!(id);
        c.publish("in/fields", message.to_string());
        let m = c.recv();
        assert_eq!(
            m.topic,
            "edge-infer/dev1/errors",
            "{id}: expected an error, got {}: {}",
            m.topic,
            String::from_utf8_lossy(&m.payload)
        );
        let e = m.json();
        assert_eq!(e["id"], id, "{e}");
        assert_eq!(e["model"], "fields", "{e}");
        assert_eq!(e["code"], code, "{id}: {e}");
        assert!(
            names_field(&e, field),
            "{id}: the message names {field}: {e}"
        );
    }
    // Still serving.
    c.publish("in/fields", good.to_string());
    let m = c.recv();
    assert_eq!(m.topic, "out/fields");
    let case = &fx["cases"][0];
    assert_outputs(&m.json(), case, Some(1e-5));
}
