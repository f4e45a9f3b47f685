//! Windows over streams of readings (`[models.window]`): two simulated
//! wrist IMUs at 50 Hz, interleaved, sent one reading per message, ten per
//! `{"readings": [...]}` and ten per bare array; every completed window
//! must be exactly the one assembled offline (key, seq, start, end,
//! readings) and its result must equal the Python interpreter's output for
//! that window (tests/fixtures/preprocess/streams.json, made by
//! tests/fixtures/make_preprocess.py). Then the stream errors
//! (`stream_gap`, `out_of_order`, `bad_reading`), `max_streams` under a
//! flood of new keys (with the daemon's RSS), idle streams being
//! forgotten, and the health record's `window` counters.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The two devices of the fixture.
const DEVICES: [&str; 2] = ["wrist-1", "wrist-2"];

/// Window timestamps are the readings' `ts` (Unix seconds with ms):
/// 0.1 ms tells any two readings (20 ms apart) apart.
const TS_TOLERANCE: f64 = 1e-4;

fn streams() -> Value {
    fixture("preprocess/streams.json")
}

/// Reading `i` of a fixture device, as the device sends it.
fn reading(fx: &Value, device: &str, i: usize) -> Value {
    fx["devices"][device]["readings"][i].clone()
}

fn readings_of(fx: &Value, device: &str) -> usize {
    fx["devices"][device]["readings"]
        .as_array()
        .expect("fixture readings")
        .len()
}

/// The fixture window of `device` that starts at reading `first`.
fn window_at<'a>(fx: &'a Value, device: &str, first: usize) -> &'a Value {
    fx["windows"]
        .as_array()
        .expect("fixture windows")
        .iter()
        .find(|w| w["key"] == device && w["first"] == first)
        .unwrap_or_else(|| panic!("no fixture window of {device} starting at reading {first}"))
}

/// A fixture window's outputs for one model, shaped as `assert_outputs`
/// wants a case.
fn case(window: &Value, model: &str) -> Value {
    json!({
        "name": format!("{} seq {} ({model})", window["key"], window["seq"]),
        "outputs": window["outputs"][model],
    })
}

fn ts(fx: &Value, device: &str, i: usize) -> f64 {
    reading(fx, device, i)["ts"].as_f64().expect("ts")
}

/// The three windowed models of the main test, all on `sensors/+/imu`:
/// int8 with top-level fields, float32 with JSON Pointer fields and the
/// default size, int8 with per-channel normalization.
fn stream_models(fx: &Value) -> String {
    let norm = &fx["normalize"];
    format!(
        "\
[[models]]
name = \"har\"
path = \"{{models}}/har_accel_int8.tflite\"
input_topic = \"sensors/+/imu\"
output_topic = \"activity/{{1}}\"
labels = \"{{models}}/har_accel.labels\"
[models.window]
fields = [\"ax\", \"ay\", \"az\"]
size = 128
stride = 64
key = \"{{1}}\"
timestamp = \"ts\"

[[models]]
name = \"har_f32\"
path = \"{{models}}/har_accel_f32.tflite\"
input_topic = \"sensors/+/imu\"
output_topic = \"activity_f32/{{1}}\"
[models.window]
fields = [\"/g/x\", \"/g/y\", \"/g/z\"]
stride = 64
key = \"{{1}}\"
timestamp = \"ts\"

[[models]]
name = \"har_norm\"
path = \"{{models}}/har_accel_int8.tflite\"
input_topic = \"sensors/+/imu\"
output_topic = \"activity_norm/{{1}}\"
[models.window]
fields = [\"ax\", \"ay\", \"az\"]
size = 128
stride = 64
key = \"{{1}}\"
timestamp = \"ts\"
[models.input]
mean = {}
std = {}
",
        norm["mean"], norm["std"]
    )
}

/// (model name, output topic prefix, fixture outputs, relative tolerance).
const STREAM_MODELS: [(&str, &str, &str, Option<f64>); 3] = [
    ("har", "activity", "har_accel_int8", None),
    ("har_f32", "activity_f32", "har_accel_f32", Some(1e-5)),
    (
        "har_norm",
        "activity_norm",
        "har_accel_int8_normalized",
        None,
    ),
];

/// How the readings are packed into messages.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Packing {
    /// One reading per message, with an id of its own.
    One,
    /// `{"id": .., "readings": [10 readings]}`.
    Readings,
    /// A bare array of 10 readings (no id).
    Array,
}

/// The id of the message that carries reading `i` of `device`.
fn message_id(packing: Packing, device: &str, i: usize) -> Option<String> {
    match packing {
        Packing::One => Some(format!("{device}-r{i}")),
        Packing::Readings => Some(format!("{device}-b{}", i / 10)),
        Packing::Array => None,
    }
}

/// Publishes both devices' readings, interleaved message by message.
fn publish_streams(c: &TestClient, fx: &Value, packing: Packing) {
    let n = readings_of(fx, DEVICES[0]);
    let per_message = if packing == Packing::One { 1 } else { 10 };
    for from in (0..n).step_by(per_message) {
        for device in DEVICES {
            let to = (from + per_message).min(readings_of(fx, device));
            let batch: Vec<Value> = (from..to).map(|i| reading(fx, device, i)).collect();
            let payload = match packing {
                Packing::One => {
                    let mut r = batch[0].clone();
                    r["id"] = json!(message_id(packing, device, from));
                    r
                }
                Packing::Readings => {
                    json!({"id": message_id(packing, device, from), "readings": batch})
                }
                Packing::Array => Value::Array(batch),
            };
            c.publish(&format!("sensors/{device}/imu"), payload.to_string());
        }
    }
}

/// Checks one window result against the fixture; returns (device, seq).
fn check_window_result(
    fx: &Value,
    m: &Received,
    model: &str,
    fixture_model: &str,
    rel: Option<f64>,
    packing: Packing,
) -> (String, u64) {
    let r = m.json();
    assert_eq!(r["model"], model, "{r}");
    let w = &r["window"];
    let key = w["key"]
        .as_str()
        .unwrap_or_else(|| panic!("no window.key in {r}"))
        .to_string();
    assert!(DEVICES.contains(&key.as_str()), "window.key {key}: {r}");
    assert_eq!(r["source_topic"], format!("sensors/{key}/imu"), "{r}");
    let seq = w["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no window.seq in {r}"));
    assert!(seq >= 1, "{r}");
    let first = (seq as usize - 1) * 64;
    let want = window_at(fx, &key, first);
    assert_eq!(w["readings"], 128, "{r}");
    for (k, v) in [("start", &want["start"]), ("end", &want["end"])] {
        let got = w[k]
            .as_f64()
            .unwrap_or_else(|| panic!("window.{k} is not a number: {r}"));
        let v = v.as_f64().expect("fixture ts");
        assert!(
            (got - v).abs() < TS_TOLERANCE,
            "window.{k} of {key} seq {seq}: got {got}, the reading's ts is {v}: {r}"
        );
    }
    match message_id(packing, &key, first + 127) {
        Some(id) => assert_eq!(r["id"], id.as_str(), "the completing message's id: {r}"),
        None => assert!(r.get("id").is_none(), "a bare array has no id: {r}"),
    }
    assert_outputs(&r, &case(want, fixture_model), rel);
    (key, seq)
}

/// Reads health records from `h` until `model`'s `window` satisfies
/// `done`; returns that `window` object.
fn wait_health_window(h: &TestClient, model: &str, done: impl Fn(&Value) -> bool) -> Value {
    let entry = wait_health_model(h, model, |m| {
        assert!(
            m["window"].is_object(),
            "no window counters for {model}: {m}"
        );
        done(&m["window"])
    });
    entry["window"].clone()
}

/// Reads health records from `h` until `model`'s entry satisfies `done`;
/// returns that entry.
fn wait_health_model(h: &TestClient, model: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut last = Value::Null;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = h.recv_within(left) else {
            panic!("no health record of {model} as expected within {WAIT:?}; last: {last}");
        };
        if !m.topic.ends_with("/health") {
            continue;
        }
        let v = m.json();
        let Some(entry) = v["models"]
            .as_array()
            .and_then(|ms| ms.iter().find(|e| e["name"] == model))
        else {
            panic!("model {model} missing from the health record: {v}");
        };
        last = entry.clone();
        if done(entry) {
            return last;
        }
    }
}

fn health_client(port: u16) -> TestClient {
    let h = TestClient::connect(port);
    h.subscribe("edge-infer/dev1/health");
    h
}

const HEALTH: &str = "[health]\ninterval_secs = 0.2";

/// Every model's windows, per device exactly seq 1..=5 with the
/// reference results, then the health counters. `workers`: worker
/// threads per model (they share the model's streams).
fn serve_streams(packing: Packing, workers: usize) {
    let fx = streams();
    let broker = Broker::start();
    let models = stream_models(&fx).replace(
        "[models.window]\n",
        &format!("workers = {workers}\n[models.window]\n"),
    );
    let _d = Daemon::start(&config(broker.port, "dev1", HEALTH, &models));
    let c = TestClient::connect(broker.port);
    for (_, prefix, _, _) in STREAM_MODELS {
        c.subscribe(&format!("{prefix}/#"));
    }
    c.subscribe("edge-infer/dev1/errors");
    let h = health_client(broker.port);

    publish_streams(&c, &fx, packing);
    let per_device = (readings_of(&fx, DEVICES[0]) - 128) / 64 + 1;
    assert_eq!(per_device, 5, "the fixture has 384 readings per device");
    let expected = STREAM_MODELS.len() * DEVICES.len() * per_device;
    let mut seen: HashMap<(String, String), Vec<u64>> = HashMap::new();
    for m in c.recv_n(expected) {
        let prefix = m.topic.split('/').next().unwrap_or_default();
        let Some((model, _, fixture_model, rel)) =
            STREAM_MODELS.iter().find(|(_, p, _, _)| *p == prefix)
        else {
            panic!(
                "unexpected message on {}: {}",
                m.topic,
                String::from_utf8_lossy(&m.payload)
            );
        };
        let (key, seq) = check_window_result(&fx, &m, model, fixture_model, *rel, packing);
        assert_eq!(m.topic, format!("{prefix}/{key}"));
        seen.entry((model.to_string(), key)).or_default().push(seq);
    }
    for (model, _, _, _) in STREAM_MODELS {
        for device in DEVICES {
            let mut seqs = seen
                .remove(&(model.to_string(), device.to_string()))
                .unwrap_or_default();
            seqs.sort_unstable();
            assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{model} windows of {device}");
        }
    }
    // The counters say no other window was made and nothing was dropped.
    let readings = 2 * readings_of(&fx, DEVICES[0]);
    for (model, _, _, _) in STREAM_MODELS {
        let w = wait_health_window(&h, model, |w| w["readings"] == readings);
        assert_eq!(
            w,
            json!({"open_streams": 2, "windows": 10, "readings": readings, "readings_discarded": 0}),
            "{model}"
        );
    }
    assert!(
        c.recv_within(Duration::from_millis(300)).is_none(),
        "a message beyond the expected windows"
    );
}

#[test]
fn one_reading_per_message_gives_exactly_the_reference_windows() {
    serve_streams(Packing::One, 1);
}

/// Two workers per model take the messages in turn; a stream's readings
/// must still be appended in arrival order.
#[test]
fn two_workers_share_the_streams_in_arrival_order() {
    serve_streams(Packing::One, 2);
}

#[test]
fn readings_objects_of_ten_give_exactly_the_reference_windows() {
    serve_streams(Packing::Readings, 1);
}

#[test]
fn bare_arrays_of_ten_give_exactly_the_reference_windows() {
    serve_streams(Packing::Array, 1);
}

const GAP_MODEL: &str = "\
[[models]]
name = \"har\"
path = \"{models}/har_accel_int8.tflite\"
input_topic = \"sensors/+/imu\"
output_topic = \"activity/{1}\"
[models.window]
fields = [\"ax\", \"ay\", \"az\"]
size = 128
stride = 64
key = \"{1}\"
timestamp = \"ts\"
max_gap_ms = 1000
";

/// A result or an error, as the stream tests collect them.
fn expect_error(m: &Received, code: &str, id: &str) -> Value {
    assert_eq!(
        m.topic,
        "edge-infer/dev1/errors",
        "expected an error {code} for {id}, got {}: {}",
        m.topic,
        String::from_utf8_lossy(&m.payload)
    );
    let e = m.json();
    assert_eq!(e["code"], code, "{e}");
    assert_eq!(e["id"], id, "{e}");
    assert_eq!(e["model"], "har", "{e}");
    e
}

/// A window result of `key` with `seq`, `start`/`end` and the outputs of
/// the fixture window of `device` starting at `first`.
fn expect_window(
    fx: &Value,
    m: &Received,
    key: &str,
    seq: u64,
    (start, end): (f64, f64),
    (device, first): (&str, usize),
) {
    assert_eq!(
        m.topic,
        format!("activity/{key}"),
        "expected window {seq} of {key}, got {}: {}",
        m.topic,
        String::from_utf8_lossy(&m.payload)
    );
    let r = m.json();
    let w = &r["window"];
    assert_eq!(w["key"], key, "{r}");
    assert_eq!(w["seq"], seq, "{r}");
    assert_eq!(w["readings"], 128, "{r}");
    for (k, want) in [("start", start), ("end", end)] {
        let got = w[k].as_f64().unwrap_or_else(|| panic!("window.{k}: {r}"));
        assert!(
            (got - want).abs() < TS_TOLERANCE,
            "window.{k} of {key} seq {seq}: got {got}, expected {want}: {r}"
        );
    }
    assert_outputs(
        &r,
        &case(window_at(fx, device, first), "har_accel_int8"),
        None,
    );
}

/// The next message on `c` that is on `topic` (results and errors travel
/// on separate channels inside the daemon, so their relative order is not
/// fixed; messages on other topics are kept for later).
struct Inbox<'a> {
    c: &'a TestClient,
    kept: Vec<Received>,
}

impl<'a> Inbox<'a> {
    fn new(c: &'a TestClient) -> Self {
        Inbox {
            c,
            kept: Vec::new(),
        }
    }

    fn next_on(&mut self, topic: &str) -> Received {
        if let Some(i) = self.kept.iter().position(|m| m.topic == topic) {
            return self.kept.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.c.recv_within(left).unwrap_or_else(|| {
                panic!(
                    "nothing on {topic} within {WAIT:?}; other messages: {:?}",
                    self.kept
                        .iter()
                        .map(|m| (
                            m.topic.clone(),
                            String::from_utf8_lossy(&m.payload).into_owned()
                        ))
                        .collect::<Vec<_>>()
                )
            });
            if m.topic == topic {
                return m;
            }
            self.kept.push(m);
        }
    }

    fn assert_empty(&mut self) {
        if let Some(m) = self.c.recv_within(Duration::from_millis(300)) {
            self.kept.push(m);
        }
        assert!(
            self.kept.is_empty(),
            "unexpected messages: {:?}",
            self.kept
                .iter()
                .map(|m| (
                    m.topic.clone(),
                    String::from_utf8_lossy(&m.payload).into_owned()
                ))
                .collect::<Vec<_>>()
        );
    }
}

fn send_one(c: &TestClient, key: &str, mut r: Value, id: &str) {
    r["id"] = json!(id);
    c.publish(&format!("sensors/{key}/imu"), r.to_string());
}

/// Sends `device`'s readings 0..320 to stream `key` with their timestamps
/// passed through `stamp`, which moves reading 192 (and maybe the rest):
/// windows 1 and 2 come as sent, then `code` about message 192, then window
/// 3, which starts with reading 192 as stamped.
fn restarts(
    fx: &Value,
    c: &TestClient,
    inbox: &mut Inbox,
    key: &str,
    device: &str,
    code: &str,
    stamp: impl Fn(usize, f64) -> f64,
) {
    for i in 0..320 {
        let mut r = reading(fx, device, i);
        r["ts"] = json!(stamp(i, ts(fx, device, i)));
        send_one(c, key, r, &format!("{key}-{i}"));
    }
    let on = format!("activity/{key}");
    for (seq, first) in [(1, 0), (2, 64)] {
        let m = inbox.next_on(&on);
        let span = (ts(fx, device, first), ts(fx, device, first + 127));
        expect_window(fx, &m, key, seq, span, (device, first));
    }
    let e = expect_error(
        &inbox.next_on("edge-infer/dev1/errors"),
        code,
        &format!("{key}-192"),
    );
    assert_eq!(e["source_topic"], format!("sensors/{key}/imu"), "{e}");
    let m = inbox.next_on(&on);
    let span = (
        stamp(192, ts(fx, device, 192)),
        stamp(319, ts(fx, device, 319)),
    );
    expect_window(fx, &m, key, 3, span, (device, 192));
}

#[test]
fn a_gap_restarts_the_window_and_out_of_order_readings_restart_it_too() {
    let fx = streams();
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", HEALTH, GAP_MODEL));
    let c = TestClient::connect(broker.port);
    c.subscribe("activity/#");
    c.subscribe("edge-infer/dev1/errors");
    let h = health_client(broker.port);
    let mut inbox = Inbox::new(&c);

    // "gap": wrist-1's readings; from reading 192 on, 5 s later.
    const SHIFT: f64 = 5.0;
    restarts(
        &fx,
        &c,
        &mut inbox,
        "gap",
        "wrist-1",
        "stream_gap",
        |i, t| {
            if i >= 192 {
                t + SHIFT
            } else {
                t
            }
        },
    );
    // "ooo": wrist-2's readings; reading 192 is stamped 10 ms before 191.
    let early = ts(&fx, "wrist-2", 191) - 0.01;
    restarts(
        &fx,
        &c,
        &mut inbox,
        "ooo",
        "wrist-2",
        "out_of_order",
        |i, t| {
            if i == 192 {
                early
            } else {
                t
            }
        },
    );
    inbox.assert_empty();

    let w = wait_health_window(&h, "har", |w| w["windows"] == 6);
    assert_eq!(w["open_streams"], 2, "{w}");
    assert_eq!(w["readings"], 640, "{w}");
    // The readings cut off by the restarts (128..191 of each stream) were
    // all in a window already: none was discarded unused.
    assert_eq!(w["readings_discarded"], 0, "{w}");
}

#[test]
fn a_bad_reading_refuses_the_whole_message_and_discards_the_partial_window() {
    let fx = streams();
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", HEALTH, GAP_MODEL));
    let c = TestClient::connect(broker.port);
    c.subscribe("activity/#");
    c.subscribe("edge-infer/dev1/errors");
    let h = health_client(broker.port);
    let mut inbox = Inbox::new(&c);
    let dev = "wrist-1";
    let errors_topic = "edge-infer/dev1/errors";

    for i in 0..100 {
        send_one(&c, "bad", reading(&fx, dev, i), &format!("bad-{i}"));
    }
    // A missing field.
    let mut r = reading(&fx, dev, 100);
    r.as_object_mut().expect("reading").remove("ay");
    send_one(&c, "bad", r, "missing-ay");
    let e = expect_error(&inbox.next_on(errors_topic), "bad_reading", "missing-ay");
    assert!(names_field(&e, "ay"), "the message names the field: {e}");
    assert_eq!(e["source_topic"], "sensors/bad/imu", "{e}");

    // Readings 0..99 were discarded: the next window is 128..255.
    for i in 128..256 {
        send_one(&c, "bad", reading(&fx, dev, i), &format!("bad-{i}"));
    }
    let span = (ts(&fx, dev, 128), ts(&fx, dev, 255));
    expect_window(
        &fx,
        &inbox.next_on("activity/bad"),
        "bad",
        1,
        span,
        (dev, 128),
    );

    // A field that is not a number.
    let mut r = reading(&fx, dev, 256);
    r["az"] = json!("1.5");
    send_one(&c, "bad", r, "string-az");
    let e = expect_error(&inbox.next_on(errors_topic), "bad_reading", "string-az");
    assert!(names_field(&e, "az"), "the message names the field: {e}");

    // One reading without its timestamp refuses the whole message: none
    // of the valid readings before it count.
    let mut batch: Vec<Value> = (256..266).map(|i| reading(&fx, dev, i)).collect();
    batch[7].as_object_mut().expect("reading").remove("ts");
    c.publish(
        "sensors/bad/imu",
        json!({"id": "missing-ts", "readings": batch}).to_string(),
    );
    let e = expect_error(&inbox.next_on(errors_topic), "bad_reading", "missing-ts");
    assert!(names_field(&e, "ts"), "the message names the field: {e}");

    // So the next window is exactly 256..383 (a counted 256..262 would
    // make 256 out of order, or end the window early).
    for i in 256..384 {
        send_one(&c, "bad", reading(&fx, dev, i), &format!("bad-{i}"));
    }
    let span = (ts(&fx, dev, 256), ts(&fx, dev, 383));
    expect_window(
        &fx,
        &inbox.next_on("activity/bad"),
        "bad",
        2,
        span,
        (dev, 256),
    );
    inbox.assert_empty();

    let w = wait_health_window(&h, "har", |w| w["windows"] == 2);
    assert_eq!(w["open_streams"], 1, "{w}");
    // 100 + 128 + 128 accepted (a refused message's readings are not
    // received); readings 0..99 were discarded in no window (README.md:
    // readings_discarded counts readings that were in no window yet).
    assert_eq!(w["readings"], 356, "{w}");
    assert_eq!(w["readings_discarded"], 100, "{w}");
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

#[test]
fn max_streams_refuses_new_keys_with_overloaded_and_keeps_serving_the_open_ones() {
    const FLOOD: usize = 20_000;
    const MAX_STREAMS: usize = 8;
    let fx = streams();
    let broker = Broker::start();
    let models = GAP_MODEL.replace(
        "max_gap_ms = 1000\n",
        &format!("max_streams = {MAX_STREAMS}\n"),
    );
    let d = Daemon::start(&config(broker.port, "dev1", HEALTH, &models));
    let c = TestClient::connect(broker.port);
    c.subscribe("activity/#");
    c.subscribe("edge-infer/dev1/errors");
    let h = health_client(broker.port);

    // Two streams open, each 100 readings into its first window.
    for device in DEVICES {
        let batch: Vec<Value> = (0..100).map(|i| reading(&fx, device, i)).collect();
        c.publish(
            &format!("sensors/{device}/imu"),
            Value::Array(batch).to_string(),
        );
    }
    wait_health_window(&h, "har", |w| {
        w["open_streams"] == 2 && w["readings"] == 200
    });
    let rss_before = vm_rss_kib(d.pid());

    // A flood of new keys: 6 more fit, every other one is refused.
    let started = Instant::now();
    let r = reading(&fx, "wrist-1", 0);
    for k in 0..FLOOD {
        let mut r = r.clone();
        r["id"] = json!(k);
        c.publish(&format!("sensors/flood-{k}/imu"), r.to_string());
    }
    let refused = FLOOD - (MAX_STREAMS - 2);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut overloaded = 0;
    while overloaded < refused {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = c
            .recv_within(left)
            .unwrap_or_else(|| panic!("{overloaded} of {refused} overloaded errors within 120 s"));
        // Validating 20,000 messages against the schema would take longer
        // than the flood; the first hundred are.
        let e: Value = if overloaded < 100 {
            m.json()
        } else {
            serde_json::from_slice(&m.payload).expect("JSON")
        };
        assert_eq!(m.topic, "edge-infer/dev1/errors", "{e}");
        assert_eq!(e["code"], "overloaded", "{e}");
        assert_eq!(e["model"], "har", "{e}");
        let id = e["id"].as_u64().unwrap_or_else(|| panic!("no id: {e}"));
        assert_eq!(e["source_topic"], format!("sensors/flood-{id}/imu"), "{e}");
        overloaded += 1;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    // Some of the flood is refused by the full queue before its stream is
    // looked at, the rest by max_streams (counted as discarded readings);
    // both answer overloaded.
    let entry = wait_health_model(&h, "har", |m| m["errors"]["overloaded"] == refused);
    let w = &entry["window"];
    assert_eq!(w["open_streams"], MAX_STREAMS, "{entry}");
    assert_eq!(w["windows"], 0, "{entry}");
    let readings = w["readings"].as_u64().unwrap_or(0);
    let discarded = w["readings_discarded"].as_u64().unwrap_or(0);
    assert!(discarded > 0, "no reading refused by max_streams: {entry}");
    // Readings counts what went into streams; the refused ones are only
    // discarded.
    assert_eq!(
        readings,
        200 + (MAX_STREAMS as u64 - 2),
        "readings taken into streams: {entry}"
    );
    println!(
        "flood: {discarded} readings refused by max_streams, {} messages by the full queue",
        refused as u64 - discarded
    );

    // The open streams carry on where they were.
    for device in DEVICES {
        for from in (100..384).step_by(71) {
            let batch: Vec<Value> = (from..(from + 71).min(384))
                .map(|i| reading(&fx, device, i))
                .collect();
            c.publish(
                &format!("sensors/{device}/imu"),
                Value::Array(batch).to_string(),
            );
        }
    }
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for m in c.recv_n(10) {
        let (key, seq) =
            check_window_result(&fx, &m, "har", "har_accel_int8", None, Packing::Array);
        seqs.entry(key).or_default().push(seq);
    }
    for device in DEVICES {
        let mut s = seqs.remove(device).unwrap_or_default();
        s.sort_unstable();
        assert_eq!(s, vec![1, 2, 3, 4, 5], "windows of {device}");
    }
    let rss_after = vm_rss_kib(d.pid());
    println!(
        "VmRSS before the flood of {FLOOD} new keys: {rss_before} KiB, after: {rss_after} KiB \
         ({:+} KiB); the flood's answers took {flood_secs:.1} s",
        rss_after as i64 - rss_before as i64
    );
    assert!(
        rss_after < rss_before + 20 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB under a flood of refused keys"
    );
}

const IDLE_MODEL: &str = "\
[[models]]
name = \"har\"
path = \"{models}/har_accel_int8.tflite\"
input_topic = \"sensors/+/imu\"
output_topic = \"activity/{1}\"
[models.window]
fields = [\"ax\", \"ay\", \"az\"]
idle_timeout_secs = 1
";

#[test]
fn idle_streams_are_forgotten_and_defaults_key_the_whole_topic_by_arrival_time() {
    let fx = streams();
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", HEALTH, IDLE_MODEL));
    let c = TestClient::connect(broker.port);
    c.subscribe("activity/#");
    c.subscribe("edge-infer/dev1/errors");
    let h = health_client(broker.port);
    let topic = "sensors/idle-1/imu";
    let without_ts = |i: usize| {
        let mut r = reading(&fx, "wrist-1", i);
        r.as_object_mut().expect("reading").remove("ts");
        r
    };

    // Keep the stream alive until a health record shows it open.
    let deadline = Instant::now() + WAIT;
    let mut i = 0;
    loop {
        c.publish(topic, without_ts(i).to_string());
        i += 1;
        let open = h
            .recv_within(Duration::from_millis(200))
            .filter(|m| m.topic.ends_with("/health"))
            .map(|m| {
                m.json()["models"][0]["window"]["open_streams"]
                    .as_u64()
                    .unwrap_or(0)
            });
        if open == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the stream never showed as open");
        assert!(i < 100, "sent {i} readings and the window is not open yet");
    }
    // Silent for idle_timeout_secs (1 s): forgotten.
    let forgotten = Instant::now();
    let w = wait_health_window(&h, "har", |w| w["open_streams"] == 0);
    println!(
        "the idle stream was forgotten {:.1} s after its last reading: {w}",
        forgotten.elapsed().as_secs_f64()
    );
    assert_eq!(w["windows"], 0, "{w}");

    // A resumed stream starts afresh: two windows (stride = size = 128 by
    // default) from one message of 256 readings, seq 1 and 2, stamped with
    // the message's arrival time, keyed by the whole topic.
    let before = unix_now();
    let batch: Vec<Value> = (0..256).map(without_ts).collect();
    c.publish(
        topic,
        json!({"id": "resumed", "readings": batch}).to_string(),
    );
    let mut got = c.recv_n(2);
    let after = unix_now();
    got.sort_by_key(|m| m.json()["window"]["seq"].as_u64());
    for (m, (seq, first)) in got.iter().zip([(1, 0), (2, 128)]) {
        assert_eq!(m.topic, "activity/idle-1");
        let r = m.json();
        let w = &r["window"];
        assert_eq!(w["key"], topic, "{r}");
        assert_eq!(w["seq"], seq, "{r}");
        assert_eq!(w["readings"], 128, "{r}");
        assert_eq!(r["id"], "resumed", "{r}");
        let (start, end) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
        assert!(
            before - 1e-3 <= start && start <= end && end <= after + 1e-3,
            "start {start} / end {end} outside the arrival window [{before}, {after}]: {r}"
        );
        assert_outputs(
            &r,
            &case(window_at(&fx, "wrist-1", first), "har_accel_int8"),
            None,
        );
    }
    let w = wait_health_window(&h, "har", |w| w["windows"] == 2);
    assert_eq!(w["open_streams"], 1, "{w}");
}
