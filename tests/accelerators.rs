//! Accelerators with CPU fallback, through the real interfaces: an external
//! delegate plugin the tests build (tests/delegate/test_delegate.cc, the
//! `tflite_plugin_create_delegate` ABI libedgetpu implements) inside the
//! real LiteRT runtime, a real broker, and results checked against the
//! Python interpreter's references.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The float model the test delegate takes part of (RELU, LOGISTIC and MUL
/// are 3 of its nodes), with its reference outputs.
const MULTI: &str = "multi_io_f32";
const PARTIAL_OPS: &str = "RELU,LOGISTIC,MUL";
const TOLERANCE: f64 = 1e-5;

/// `[delegates.NAME]` for the test plugin with these options.
fn delegate_table(name: &str, options: &[(&str, &str)]) -> String {
    let opts: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("{k} = \"{v}\""))
        .collect();
    format!(
        "[delegates.{name}]\nlibrary = \"{}\"\noptions = {{ {} }}\n",
        delegate::library().display(),
        opts.join(", ")
    )
}

/// The delegated model "acc" on in/acc, and "har" on the CPU beside it.
fn models(accelerators: &str, extra_model: &str) -> String {
    format!(
        "[[models]]\nname = \"acc\"\npath = \"{{models}}/{MULTI}.tflite\"\ninput_topic = \"in/acc\"\noutput_topic = \"out/{{model}}\"\naccelerators = {accelerators}\n{extra_model}\n\
         [[models]]\nname = \"har\"\npath = \"{{models}}/har_accel_int8.tflite\"\ninput_topic = \"in/har\"\noutput_topic = \"out/{{model}}\"\n"
    )
}

fn cases() -> Vec<Value> {
    fixture(&format!("{MULTI}.json"))["cases"]
        .as_array()
        .expect("fixture cases")
        .iter()
        .filter(|c| c.get("batch").is_none())
        .cloned()
        .collect()
}

fn send_case(c: &TestClient, cases: &[Value], i: usize) {
    let case = &cases[i % cases.len()];
    c.publish(
        "in/acc",
        json!({"id": format!("m{i}"), "inputs": case_inputs(case)}).to_string(),
    );
}

/// The next message on `topic`, skipping health records; any other
/// message fails the test.
fn next_on(c: &TestClient, topic: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = c.recv_before(deadline, &format!("a message on {topic}"));
        if m.topic == topic {
            return m.json();
        }
        // Health records come every interval; anything else here (an
        // error, a second answer to a message) is what the tests exclude.
        assert_eq!(
            m.topic,
            "edge-infer/dev1/health",
            "waiting for {topic}, came: {}",
            String::from_utf8_lossy(&m.payload)
        );
    }
}

/// The `acceleration` of model `name` in the next health record for
/// which `cond` holds.
fn acceleration_when(c: &TestClient, name: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no health record of {name} satisfied the condition in 60 s"
        );
        let h = next_on(c, "edge-infer/dev1/health");
        let m = h["models"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == name))
            .unwrap_or_else(|| panic!("no model {name} in {h}"))
            .clone();
        assert_eq!(m["accelerator"], m["acceleration"]["serving"], "{m}");
        if cond(&m["acceleration"]) {
            return m["acceleration"].clone();
        }
    }
}

const FAST_HEALTH: &str = "[health]\ninterval_secs = 0.5\n";

#[test]
fn a_delegate_serves_part_of_the_graph_with_the_cpus_results() {
    let broker = Broker::start();
    let extra = format!(
        "{FAST_HEALTH}{}",
        delegate_table("testdelegate", &[("ops", PARTIAL_OPS)])
    );
    let d = Daemon::start(&config(
        broker.port,
        "dev1",
        &extra,
        &models("[\"testdelegate\", \"cpu\"]", ""),
    ));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let cases = cases();
    for i in 0..cases.len() {
        send_case(&c, &cases, i);
        let r = next_on(&c, "out/acc");
        assert_eq!(r["id"], format!("m{i}"));
        assert_eq!(r["accelerator"], "testdelegate", "{r}");
        assert_outputs(&r, &cases[i], Some(TOLERANCE));
    }
    c.subscribe("edge-infer/dev1/health");
    let a = acceleration_when(&c, "acc", |_| true);
    assert_eq!(a["serving"], "testdelegate", "{a}");
    assert_eq!(a["preferred"], "testdelegate");
    assert_eq!(a["delegation"], "partial", "{a}");
    assert_eq!(a["delegated_nodes"], 3, "{a}");
    assert!(a["total_nodes"].as_u64().is_some_and(|n| n > 3), "{a}");
    assert_eq!(a["fallback_reason"], Value::Null);
    assert_eq!(a["retry_in_secs"], Value::Null);
    assert_eq!(a["switches"], 0);
    assert_eq!(a["engines"], json!({"testdelegate": 1}));
    let har = acceleration_when(&c, "har", |_| true);
    assert_eq!(har["serving"], "cpu");
    assert_eq!(har["delegation"], "cpu");
    let log = d.log_text();
    assert!(!log.contains("cannot serve"), "{log}");
}

#[test]
fn a_delegate_that_declines_leaves_the_model_on_the_cpu_and_says_why() {
    let broker = Broker::start();
    // As libedgetpu does with no Edge TPU attached: no delegate.
    let extra = format!(
        "{FAST_HEALTH}{}",
        delegate_table("edgetpu", &[("refuse", "1")])
    );
    let d = Daemon::start(&config(
        broker.port,
        "dev1",
        &extra,
        &models("[\"edgetpu\", \"cpu\"]", "retry_secs = 3600"),
    ));
    d.wait_for_log("accelerator edgetpu");
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let cases = cases();
    send_case(&c, &cases, 0);
    let r = next_on(&c, "out/acc");
    assert_eq!(r["accelerator"], "cpu", "{r}");
    assert_outputs(&r, &cases[0], Some(TOLERANCE));
    c.subscribe("edge-infer/dev1/health");
    let a = acceleration_when(&c, "acc", |_| true);
    assert_eq!(a["serving"], "cpu");
    assert_eq!(a["preferred"], "edgetpu");
    assert_eq!(a["delegation"], "cpu");
    let why = a["fallback_reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("edgetpu: ") && why.contains("declined"),
        "{a}"
    );
    let retry = a["retry_in_secs"].as_f64().expect("a retry is planned");
    assert!(retry > 3000.0 && retry <= 3600.0, "{a}");
    assert_eq!(a["switches"], 0);
}

#[test]
fn a_missing_delegate_library_leaves_the_model_on_the_cpu_naming_the_library() {
    let broker = Broker::start();
    let extra =
        format!("{FAST_HEALTH}[delegates.edgetpu]\nlibrary = \"/nonexistent/libedgetpu.so.1\"\n");
    let _d = Daemon::start(&config(
        broker.port,
        "dev1",
        &extra,
        &models("[\"edgetpu\", \"cpu\"]", ""),
    ));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    c.subscribe("edge-infer/dev1/health");
    let a = acceleration_when(&c, "acc", |_| true);
    assert_eq!(a["serving"], "cpu");
    let why = a["fallback_reason"].as_str().unwrap_or_default();
    assert!(why.contains("/nonexistent/libedgetpu.so.1"), "{a}");
    let cases = cases();
    send_case(&c, &cases, 0);
    let r = next_on(&c, "out/acc");
    assert_eq!(r["accelerator"], "cpu");
    assert_outputs(&r, &cases[0], Some(TOLERANCE));
}

/// The delegate fails at invoke: that message is answered from the CPU,
/// the model stays there (one switch), and after `retry_secs` it is back
/// on the delegate; the other model is not disturbed and every message
/// gets exactly one result.
#[test]
fn an_invoke_failure_moves_the_model_to_the_cpu_and_it_comes_back() {
    let broker = Broker::start();
    // Invoke 1 is the warm-up; messages m0 and m1 are 2 and 3; m2 fails.
    // A delegate made again by the retry counts from 1 anew, and only its
    // 4th invoke would fail: the test's later messages are counted below.
    let extra = format!(
        "{FAST_HEALTH}{}",
        delegate_table(
            "testdelegate",
            &[("ops", PARTIAL_OPS), ("fail_invoke_at", "4")]
        )
    );
    let d = Daemon::start(&config(
        broker.port,
        "dev1",
        &extra,
        &models("[\"testdelegate\", \"cpu\"]", "retry_secs = 2"),
    ));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let cases = cases();
    let har = json!({"id": "h", "data": vec![0.1; 384]}).to_string();
    let mut on = Vec::new();
    // Taken before the message whose failure starts the retry timer: an
    // earlier start than the daemon's, so "not back before retry_secs"
    // below cannot fail for a test thread that is late to look.
    let mut before_the_move = None;
    for i in 0..3 {
        if i == 2 {
            before_the_move = Some(Instant::now());
        }
        send_case(&c, &cases, i);
        c.publish("in/har", har.clone());
        let mut got_acc = None;
        let mut got_har = false;
        while got_acc.is_none() || !got_har {
            let m = c.recv();
            let v = m.json();
            match m.topic.as_str() {
                "out/acc" => {
                    assert_eq!(v["id"], format!("m{i}"));
                    assert!(got_acc.is_none(), "two results for m{i}");
                    assert_outputs(&v, &cases[i % cases.len()], Some(TOLERANCE));
                    got_acc = Some(v["accelerator"].as_str().unwrap_or_default().to_string());
                }
                "out/har" => {
                    assert_eq!(v["accelerator"], "cpu");
                    got_har = true;
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
        on.push(got_acc.unwrap_or_default());
    }
    assert_eq!(on, ["testdelegate", "testdelegate", "cpu"]);
    d.wait_for_log("moved from accelerator testdelegate to cpu");
    // Back on the delegate once retry_secs passed: the retry runs on a
    // thread of its own, and its engine is swapped in between messages.
    let started = Instant::now();
    let mut i = 3;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still on the cpu after 60 s: {:?}",
            d.log_text()
        );
        send_case(&c, &cases, i);
        let r = next_on(&c, "out/acc");
        assert_eq!(r["id"], format!("m{i}"));
        assert_outputs(&r, &cases[i % cases.len()], Some(TOLERANCE));
        i += 1;
        if r["accelerator"] == "testdelegate" {
            break;
        }
        assert_eq!(r["accelerator"], "cpu", "{r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let since = before_the_move.expect("three messages sent").elapsed();
    assert!(
        since >= Duration::from_secs(2),
        "back {since:?} after the message that failed, before retry_secs (2 s)"
    );
    d.wait_for_log("back on accelerator testdelegate");
    c.subscribe("edge-infer/dev1/health");
    let a = acceleration_when(&c, "acc", |a| a["serving"] == "testdelegate");
    assert_eq!(a["switches"], 1, "{a}");
    assert_eq!(a["delegation"], "partial");
    assert_eq!(a["fallback_reason"], Value::Null);
    let har = acceleration_when(&c, "har", |_| true);
    assert_eq!(har["switches"], 0);
    assert_eq!(har["serving"], "cpu");
    // Nothing was answered twice and no error went out (`next_on` fails
    // on either): the next result is a last message's.
    send_case(&c, &cases, i);
    assert_eq!(next_on(&c, "out/acc")["id"], format!("m{i}"));
}

/// Every engine of the model fails over on its own (two workers), and the
/// message each had in hand is answered.
#[test]
fn with_two_workers_each_engine_falls_back_and_no_message_is_lost() {
    let broker = Broker::start();
    // Each engine's delegate fails from its first message on (invoke 1 is
    // the warm-up).
    let extra = format!(
        "{FAST_HEALTH}{}",
        delegate_table(
            "testdelegate",
            &[("ops", PARTIAL_OPS), ("fail_invoke_from", "2")]
        )
    );
    let _d = Daemon::start(&config(
        broker.port,
        "dev1",
        &extra,
        &models(
            "[\"testdelegate\", \"cpu\"]",
            "workers = 2\nretry_secs = 3600",
        ),
    ));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/acc");
    c.subscribe("edge-infer/dev1/errors");
    c.subscribe("edge-infer/dev1/health");
    let cases = cases();
    let mut seen: Vec<usize> = Vec::new();
    let started = Instant::now();
    // Until both workers have taken a message (and so both moved), in
    // rounds of 20: which worker takes which message is the scheduler's.
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "both engines did not move within 60 s"
        );
        let from = seen.len();
        seen.resize(from + 20, 0);
        for i in from..from + 20 {
            send_case(&c, &cases, i);
        }
        let mut results = 0;
        let mut last_health = None;
        let deadline = Instant::now() + WAIT;
        while results < 20 {
            let m = c.recv_before(deadline, "20 results");
            if m.topic == "edge-infer/dev1/health" {
                last_health = Some(m.json());
                continue;
            }
            assert_eq!(
                m.topic,
                "out/acc",
                "{}",
                String::from_utf8_lossy(&m.payload)
            );
            let r = m.json();
            let i: usize = r["id"].as_str().unwrap_or_default()[1..]
                .parse()
                .unwrap_or(usize::MAX);
            assert_eq!(r["accelerator"], "cpu", "{r}");
            assert_outputs(&r, &cases[i % cases.len()], Some(TOLERANCE));
            seen[i] += 1;
            results += 1;
        }
        let _ = last_health;
        let a = acceleration_when(&c, "acc", |_| true);
        if a["engines"] == json!({"cpu": 2}) {
            assert_eq!(a["switches"], 2, "{a}");
            assert!(
                a["fallback_reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("testdelegate: invoke failed")),
                "{a}"
            );
            break;
        }
    }
    assert!(seen.iter().all(|&k| k == 1), "{seen:?}");
}

/// A model compiled for the Edge TPU (one `edgetpu-custom-op`) named "tpu"
/// on in/har, with the CPU model beside it on the same topic.
fn edgetpu_models(accelerators: &str, extra: &str) -> String {
    format!(
        "[[models]]\nname = \"tpu\"\npath = \"{{models}}/har_accel_int8_edgetpu.tflite\"\ninput_topic = \"in/har\"\noutput_topic = \"out/{{model}}\"\naccelerators = {accelerators}\n{extra}\n\
         [[models]]\nname = \"har\"\npath = \"{{models}}/har_accel_int8.tflite\"\ninput_topic = \"in/har\"\noutput_topic = \"out/{{model}}\"\n"
    )
}

fn check_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let path = path.display().to_string();
    run_cli(&["check-config", "--config", &path], &[])
}

#[test]
fn an_edgetpu_model_with_no_tpu_is_served_from_cpu_path() {
    let broker = Broker::start();
    let extra = format!(
        "{FAST_HEALTH}{}",
        delegate_table("edgetpu", &[("refuse", "1")])
    );
    let text = config(
        broker.port,
        "dev1",
        &extra,
        &edgetpu_models(
            "[\"edgetpu\", \"cpu\"]",
            "cpu_path = \"{models}/har_accel_int8.tflite\"",
        ),
    );
    let (code, out, err) = check_config(&text);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("accel:    edgetpu > cpu (cpu runs ")
            && out.contains("; serving on cpu (not edgetpu: edgetpu: "),
        "{out}"
    );
    assert!(out.contains("delegate:  edgetpu: "), "{out}");
    let _d = Daemon::start(&text);
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let data: Vec<f64> = (0..384).map(|i| ((i % 11) as f64 - 5.0) * 0.3).collect();
    c.publish("in/har", json!({"id": "w", "data": data}).to_string());
    let (mut tpu, mut cpu) = (None, None);
    while tpu.is_none() || cpu.is_none() {
        let m = c.recv();
        let v = m.json();
        match m.topic.as_str() {
            "out/tpu" => tpu = Some(v),
            "out/har" => cpu = Some(v),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let (tpu, cpu) = (tpu.unwrap_or_default(), cpu.unwrap_or_default());
    assert_eq!(tpu["accelerator"], "cpu");
    // The CPU build is the same model: the same int8 outputs, exactly.
    assert_eq!(tpu["outputs"], cpu["outputs"]);
    c.subscribe("edge-infer/dev1/health");
    let a = acceleration_when(&c, "tpu", |_| true);
    assert_eq!(a["serving"], "cpu");
    assert!(
        a["fallback_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("edgetpu: ") && r.contains("declined")),
        "{a}"
    );
}

#[test]
fn an_edgetpu_model_that_nothing_in_its_list_can_run_is_a_config_error() {
    let port = free_port();
    let extra = delegate_table("edgetpu", &[("refuse", "1")]);
    // No delegate in the list.
    let (code, out, err) = check_config(&config(
        port,
        "dev1",
        &extra,
        &edgetpu_models("[\"cpu\"]", ""),
    ));
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(
        err.contains("models[0].accelerators: model ")
            && err.contains("is compiled for the Edge TPU (it contains edgetpu-custom-op)")
            && err.contains("[delegates.edgetpu] library"),
        "{err}"
    );
    // The cpu in the list, but no CPU build of the model.
    let (code, out, err) = check_config(&config(
        port,
        "dev1",
        &extra,
        &edgetpu_models("[\"edgetpu\", \"cpu\"]", ""),
    ));
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(
        err.contains("models[0].cpu_path: is needed: accelerators lists \"cpu\""),
        "{err}"
    );
    // Only the delegate, and it declines (no TPU attached): the daemon
    // cannot serve the model and says why.
    let (code, out, err) = check_config(&config(
        port,
        "dev1",
        &extra,
        &edgetpu_models("[\"edgetpu\"]", ""),
    ));
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(
        err.contains("models[0].path: ") && err.contains("declined"),
        "{err}"
    );
    // A cpu_path whose tensors differ from the model's.
    let (code, out, err) = check_config(&config(
        port,
        "dev1",
        &extra,
        &edgetpu_models(
            "[\"edgetpu\", \"cpu\"]",
            "cpu_path = \"{models}/har_accel_f32.tflite\"",
        ),
    ));
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(
        err.contains("models[0].cpu_path: ")
            && err.contains("must have the same inputs and outputs"),
        "{err}"
    );
}

/// har_accel_f32 on "gpu" (lavapipe here, from scripts/setup-deps.sh), the
/// CPU model beside it on the same topic.
fn gpu_models() -> String {
    "[[models]]\nname = \"gpu\"\npath = \"{models}/har_accel_f32.tflite\"\ninput_topic = \"in/har\"\noutput_topic = \"out/{model}\"\naccelerators = [\"gpu\", \"cpu\"]\n\
     [[models]]\nname = \"cpu\"\npath = \"{models}/har_accel_f32.tflite\"\ninput_topic = \"in/har\"\noutput_topic = \"out/{model}\"\n"
        .to_string()
}

/// Results of both models for one window: (gpu model's, cpu model's).
fn both_answers(c: &TestClient, data: &[f64]) -> (Value, Value) {
    c.publish("in/har", json!({"id": "w", "data": data}).to_string());
    let (mut g, mut p) = (None, None);
    while g.is_none() || p.is_none() {
        let m = c.recv();
        let v = m.json();
        match m.topic.as_str() {
            "out/gpu" => g = Some(v),
            "out/cpu" => p = Some(v),
            "edge-infer/dev1/health" => {}
            other => panic!("unexpected {other}: {v}"),
        }
    }
    (g.unwrap_or_default(), p.unwrap_or_default())
}

fn values(r: &Value) -> Vec<f64> {
    r["outputs"][0]["values"]
        .as_array()
        .map(|vs| vs.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The GPU's results within 1e-3 of the CPU's (measured: 1e-6, see
/// crates/model-runtime/tests/gpu.rs).
#[test]
fn a_float_model_on_the_gpu_answers_within_tolerance_of_the_cpu() {
    let broker = Broker::start();
    let _d = Daemon::start(&config(broker.port, "dev1", FAST_HEALTH, &gpu_models()));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    for k in 0..5 {
        let data: Vec<f64> = (0..384)
            .map(|i| (((i * (k + 3)) % 17) as f64 - 8.0) * 0.2)
            .collect();
        let (g, p) = both_answers(&c, &data);
        assert_eq!(g["accelerator"], "gpu", "{g}");
        assert_eq!(p["accelerator"], "cpu");
        let (gv, pv) = (values(&g), values(&p));
        assert_eq!(gv.len(), 4);
        let worst = gv
            .iter()
            .zip(&pv)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1e-3, "gpu {gv:?} vs cpu {pv:?}");
    }
    c.subscribe("edge-infer/dev1/health");
    let a = acceleration_when(&c, "gpu", |_| true);
    assert_eq!(a["serving"], "gpu");
    assert_eq!(a["delegation"], "full", "{a}");
    assert_eq!(a["fallback_reason"], Value::Null);
}

#[test]
fn with_no_vulkan_driver_the_gpu_model_serves_on_the_cpu_and_says_why() {
    let broker = Broker::start();
    // The Vulkan loader takes an empty folder as the only place for drivers.
    let empty = tempfile::tempdir().expect("tempdir");
    let empty = empty.path().display().to_string();
    let env = [
        ("VK_DRIVER_FILES", empty.as_str()),
        ("VK_ICD_FILENAMES", empty.as_str()),
    ];
    let d = Daemon::spawn(
        &config(broker.port, "dev1", FAST_HEALTH, &gpu_models()),
        &env,
    );
    d.wait_for_log("ready:");
    assert!(
        d.log_text().contains("accelerator gpu (") && d.log_text().contains("no Vulkan device"),
        "{}",
        d.log_text()
    );
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let data: Vec<f64> = (0..384).map(|i| ((i % 13) as f64 - 6.0) * 0.25).collect();
    let (g, p) = both_answers(&c, &data);
    assert_eq!(g["accelerator"], "cpu", "{g}");
    // The same model on the same kernels: the same values.
    assert_eq!(g["outputs"], p["outputs"]);
    c.subscribe("edge-infer/dev1/health");
    let a = acceleration_when(&c, "gpu", |_| true);
    assert_eq!(a["serving"], "cpu");
    assert_eq!(a["preferred"], "gpu");
    assert!(
        a["fallback_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("gpu: ") && r.contains("no Vulkan device")),
        "{a}"
    );
    // inspect --accelerators says the same, and lists the delegates of a
    // config tried on their models.
    let (code, out, err) = run_cli(&["inspect", "--accelerators"], &env);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("\ncpu      available   cpu/xnnpack"), "{out}");
    assert!(
        out.contains("\ngpu      unavailable ") && out.contains("no Vulkan device"),
        "{out}"
    );
}

#[test]
fn inspect_accelerators_tries_each_configured_delegate_on_its_models() {
    let extra = format!(
        "{}{}[delegates.unused]\nlibrary = \"libnothing.so\"\n",
        delegate_table("testdelegate", &[("ops", PARTIAL_OPS)]),
        delegate_table("edgetpu", &[("refuse", "1")]),
    );
    let text = config(
        free_port(),
        "dev1",
        &extra,
        &format!(
            "{}{}",
            models("[\"testdelegate\", \"cpu\"]", ""),
            "[[models]]\nname = \"tpu\"\npath = \"{models}/har_accel_int8_edgetpu.tflite\"\ncpu_path = \"{models}/har_accel_int8.tflite\"\ninput_topic = \"in/tpu\"\noutput_topic = \"out/{model}\"\naccelerators = [\"edgetpu\", \"cpu\"]\n"
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    let path = path.display().to_string();
    let (code, out, err) = run_cli(&["inspect", "--accelerators", "--config", &path], &[]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("testdelegate available   model acc: testdelegate")
            && out.contains("(partly delegated: 3 of 12 nodes)"),
        "{out}"
    );
    assert!(
        out.contains("edgetpu  unavailable model tpu: edgetpu: ") && out.contains("declined"),
        "{out}"
    );
    assert!(
        out.contains("unused   unused      libnothing.so: no model lists it in accelerators"),
        "{out}"
    );
    // Without --accelerators and a model: a usage error.
    let (code, _, err) = run_cli(&["inspect"], &[]);
    assert_eq!(code, Some(2), "{err}");
}
