//! Home Assistant MQTT discovery (`[homeassistant]`): retained configs
//! that match the schema written from Home Assistant's documentation
//! (schemas/homeassistant-discovery.schema.json), laid out as discovery
//! expects, with unique ids that survive a restart; sent again when Home
//! Assistant announces itself (at most once per gap, however often it
//! does); emptied for models a reload removed; nothing at all while off.
//! Every value_template is rendered against a real health record or
//! result, so the paths it reads exist.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const DEVICE: &str = "gw-ha";

fn har(name: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\npath = \"{{models}}/har_accel_int8.tflite\"\nlabels = \"{{models}}/har_accel.labels\"\ntop_k = 2\ninput_topic = \"sensors/+/{name}\"\noutput_topic = \"edge-infer/{{device_id}}/{{model}}/{{1}}\"\n"
    )
}

fn plain(name: &str) -> String {
    format!(
        "[[models]]\nname = \"{name}\"\npath = \"{{models}}/dynamic_batch_f32.tflite\"\ninput_topic = \"in/{name}\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\n"
    )
}

fn ha_config(port: u16, ha: &str, models: &str) -> String {
    config(
        port,
        DEVICE,
        &format!("{ha}\n[health]\ninterval_secs = 0.3\n"),
        models,
    )
}

const ON: &str = "[homeassistant]\nenabled = true";

/// The retained configs under `filter`, read until a marker the test
/// publishes after subscribing comes back: the broker sends retained
/// messages on subscribe, before anything published later, so whatever
/// came before the marker is everything that was retained.
fn retained(port: u16, filter: &str, marker_topic: &str) -> BTreeMap<String, Vec<u8>> {
    let c = TestClient::connect(port);
    c.subscribe(marker_topic);
    c.subscribe(filter);
    c.publish(marker_topic, "marker");
    let mut out = BTreeMap::new();
    loop {
        let m = c.recv();
        if m.topic == marker_topic {
            return out;
        }
        out.insert(m.topic, m.payload);
    }
}

fn parse(topic: &str, payload: &[u8]) -> Value {
    let v: Value =
        serde_json::from_slice(payload).unwrap_or_else(|e| panic!("not JSON on {topic}: {e}"));
    if let Err(errors) = validate("homeassistant-discovery", &v) {
        panic!("config on {topic} does not match schemas/homeassistant-discovery.schema.json:\n{errors}\n{v}");
    }
    v
}

/// Renders a `{{ value_json<path> }}` template against `value` the way
/// Home Assistant would for the forms the daemon writes: `.key`, `[N]` and
/// `['key']` (with `\'` and `\\` escapes). Panics on anything else or on
/// a path that does not resolve (Home Assistant would render nothing and
/// log a warning).
fn render(template: &str, value: &Value) -> Value {
    let inner = template
        .strip_prefix("{{ value_json")
        .and_then(|t| t.strip_suffix(" }}"))
        .unwrap_or_else(|| panic!("not a value_json template: {template}"));
    let mut at = value;
    let mut rest = inner;
    while !rest.is_empty() {
        let key: String;
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            key = r[..end].to_string();
            rest = &r[end..];
            at = &at[key.as_str()];
        } else if let Some(r) = rest.strip_prefix("['") {
            let mut k = String::new();
            let mut chars = r.char_indices();
            let mut end = None;
            while let Some((i, ch)) = chars.next() {
                match ch {
                    '\\' => k.push(chars.next().map(|(_, c)| c).expect("escape")),
                    '\'' => {
                        end = Some(i);
                        break;
                    }
                    c => k.push(c),
                }
            }
            let end = end.unwrap_or_else(|| panic!("unclosed string in {template}"));
            rest = r[end + 1..]
                .strip_prefix(']')
                .unwrap_or_else(|| panic!("expected ] in {template}"));
            key = k;
            at = &at[key.as_str()];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').expect("]");
            key = r[..end].to_string();
            let i: usize = key
                .parse()
                .unwrap_or_else(|_| panic!("bad index in {template}"));
            rest = &r[end + 1..];
            at = &at[i];
        } else {
            panic!("cannot read {rest:?} of {template}");
        }
        assert!(
            !at.is_null() || rest.is_empty(),
            "{template}: {key} does not resolve in {value}"
        );
    }
    at.clone()
}

/// MQTT filter matching, for checking that a state_topic filter takes a
/// real result's topic.
fn filter_matches(filter: &str, topic: &str) -> bool {
    let (f, t): (Vec<&str>, Vec<&str>) = (filter.split('/').collect(), topic.split('/').collect());
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < t.len() => {}
            l if t.get(i) == Some(&l) => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

fn window(i: usize) -> Vec<f64> {
    (0..384).map(|k| ((i + k) % 11) as f64 * 0.05).collect()
}

/// The latest health record that already shows `cond`.
fn health_where(c: &TestClient, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = c.recv_before(deadline, "a health record as expected");
        if m.topic == format!("edge-infer/{DEVICE}/health") {
            let v = m.json();
            if cond(&v) {
                return v;
            }
        }
    }
}

#[test]
fn discovery_configs_follow_home_assistants_format_and_survive_a_restart() {
    let broker = Broker::start();
    let text = ha_config(broker.port, ON, &(har("har") + &plain("dyn")));
    let d = Daemon::start(&text);
    let c = TestClient::connect(broker.port);
    c.subscribe(&format!("edge-infer/{DEVICE}/#"));
    let health = health_where(&c, |_| true);
    let has_temperature = !health["system"]["temperature_max_celsius"].is_null();

    let mut expected: BTreeSet<String> = [
        "har_label",
        "har_score",
        "har_p99_latency",
        "har_error_rate",
        "dyn_p99_latency",
        "dyn_error_rate",
        "cpu",
        "memory",
    ]
    .iter()
    .map(|o| format!("homeassistant/sensor/{DEVICE}/{o}/config"))
    .collect();
    if has_temperature {
        expected.insert(format!("homeassistant/sensor/{DEVICE}/temperature/config"));
    }
    let mut first = BTreeMap::new();
    wait_until("every discovery config retained", WAIT, || {
        first = retained(broker.port, "homeassistant/#", "test/marker");
        first.keys().cloned().collect::<BTreeSet<_>>() == expected
    });

    // The layout discovery reads, and payloads that match the schema.
    let layout = regex_lite(&first);
    assert!(layout, "topics: {:?}", first.keys());
    let configs: BTreeMap<String, Value> = first
        .iter()
        .map(|(t, p)| (t.clone(), parse(t, p)))
        .collect();
    let unique: BTreeSet<&str> = configs
        .values()
        .map(|v| v["unique_id"].as_str().unwrap())
        .collect();
    assert_eq!(unique.len(), configs.len(), "unique_ids repeat");
    let label = &configs[&format!("homeassistant/sensor/{DEVICE}/har_label/config")];
    assert_eq!(label["device_class"], "enum");
    assert_eq!(
        label["options"],
        json!(["idle", "walking", "running", "fall"])
    );
    assert_eq!(label["state_topic"], format!("edge-infer/{DEVICE}/har/+"));
    for v in configs.values() {
        assert_eq!(
            v["device"]["identifiers"],
            json!([format!("edge-infer/{DEVICE}")])
        );
        assert_eq!(v["origin"]["name"], "edge-infer");
        assert_eq!(v["device"]["sw_version"], env!("CARGO_PKG_VERSION"));
    }

    // Availability reads the retained status record.
    let status = retained(
        broker.port,
        &format!("edge-infer/{DEVICE}/status"),
        "test/marker2",
    );
    let status: Value =
        serde_json::from_slice(&status[&format!("edge-infer/{DEVICE}/status")]).unwrap();
    for v in configs.values() {
        let a = &v["availability"][0];
        assert_eq!(a["topic"], format!("edge-infer/{DEVICE}/status"));
        let state = render(a["value_template"].as_str().unwrap(), &status);
        assert_eq!(state, a["payload_available"]);
        assert_eq!(
            render(
                a["value_template"].as_str().unwrap(),
                &json!({"state": "offline"})
            ),
            a["payload_not_available"]
        );
    }

    // A real result on the model's output topic: the filter takes it and
    // the templates find a label among the options and a score.
    c.subscribe(&format!("edge-infer/{DEVICE}/har/+"));
    c.publish(
        "sensors/s1/har",
        json!({"id": 1, "data": window(3)}).to_string(),
    );
    let deadline = Instant::now() + WAIT;
    let result = loop {
        let m = c.recv_before(deadline, "the model's result");
        if m.topic.starts_with(&format!("edge-infer/{DEVICE}/har/")) {
            assert!(filter_matches(
                label["state_topic"].as_str().unwrap(),
                &m.topic
            ));
            break m.json();
        }
    };
    let top = render(label["value_template"].as_str().unwrap(), &result);
    assert!(
        label["options"].as_array().unwrap().contains(&top),
        "{top} not in the options"
    );
    let score_cfg = &configs[&format!("homeassistant/sensor/{DEVICE}/har_score/config")];
    assert!(render(score_cfg["value_template"].as_str().unwrap(), &result).is_number());

    // The health entities: rendered against a record that counted the
    // result (and an error: a message the model refuses).
    c.publish("in/dyn", "not json");
    let health = health_where(&c, |h| {
        h["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["received"].as_u64() >= Some(1))
    });
    for (topic, v) in &configs {
        if v["state_topic"] == format!("edge-infer/{DEVICE}/health") {
            let value = render(v["value_template"].as_str().unwrap(), &health);
            assert!(value.is_number(), "{topic}: {value}");
        }
    }

    // Stable across a restart: the new process publishes the same topics,
    // ids and payloads (subscribed and past the retained replay first, so
    // these are its own publishes).
    let watcher = TestClient::connect(broker.port);
    assert_eq!(wait_for_configs(&d, &watcher, broker.port), expected.len());
    let (code, _) = d.terminate();
    assert_eq!(code, Some(0));
    let d = Daemon::start(&text);
    let again: BTreeMap<String, Vec<u8>> = recv_configs(&watcher, expected.len())
        .into_iter()
        .map(|m| (m.topic, m.payload))
        .collect();
    assert_eq!(again, first);
    drop(d);
}

/// The next `n` messages on discovery topics (skipping Home Assistant's
/// status, which the test client itself publishes and also receives).
fn recv_configs(c: &TestClient, n: usize) -> Vec<Received> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.recv();
        if m.topic.contains("/sensor/") {
            out.push(m);
        }
    }
    out
}

/// Every topic is `homeassistant/sensor/<node_id>/<object_id>/config`
/// with ids in `[a-zA-Z0-9_-]+`.
fn regex_lite(configs: &BTreeMap<String, Vec<u8>>) -> bool {
    let id = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    configs.keys().all(|t| {
        let l: Vec<&str> = t.split('/').collect();
        matches!(l.as_slice(), ["homeassistant", "sensor", node, object, "config"] if id(node) && id(object) && *node == DEVICE)
    })
}

#[test]
fn home_assistant_coming_online_gets_the_configs_again_once_per_gap() {
    let broker = Broker::start();
    let d = Daemon::start(&ha_config(broker.port, ON, &plain("dyn")));
    let c = TestClient::connect(broker.port);
    let n = wait_for_configs(&d, &c, broker.port);
    // A deliberate pause of MIN_GAP (5 s): the gap after the startup send
    // runs out, so the announcement below is answered ANNOUNCE_DELAY after
    // it, and the two bounds below each catch a daemon that ignores one
    // of the delays.
    std::thread::sleep(Duration::from_secs(5));

    // Subscribed first: what comes now is a new publish, not the replay.
    let before = d.count_log("Home Assistant discovery:");
    let asked = Instant::now();
    c.publish("homeassistant/status", "online");
    let resent = recv_configs(&c, n);
    for m in &resent {
        parse(&m.topic, &m.payload);
    }
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "sent before the announce delay"
    );
    assert_eq!(d.count_log("Home Assistant discovery:"), before + 1);

    // A Home Assistant that flaps: twenty announcements make one send,
    // MIN_GAP (5 s) after the last.
    let flood = Instant::now();
    for _ in 0..20 {
        c.publish("homeassistant/status", "online");
    }
    c.publish("homeassistant/status", "offline");
    recv_configs(&c, n);
    // MIN_GAP after the send before, which was ANNOUNCE_DELAY after
    // `asked` at the earliest: measured from `asked`, a test thread that is
    // late to look cannot fail this, and a send right after the flood
    // (ANNOUNCE_DELAY after it) does.
    let second = Instant::now();
    assert!(
        second - asked >= Duration::from_secs(6),
        "re-sent {:?} after the flood, {:?} after the first announcement",
        second - flood,
        second - asked
    );
    // Nothing more: not before a marker, nor by a health record written
    // more than a gap later.
    c.subscribe("test/marker");
    c.publish("test/marker", "m");
    loop {
        let m = c.recv();
        assert!(
            !m.topic.contains("/sensor/"),
            "another re-send: {}",
            m.topic
        );
        if m.topic == "test/marker" {
            break;
        }
    }
    c.subscribe(&format!("edge-infer/{DEVICE}/health"));
    let until = unix_now() + 6.0;
    let h = health_where(&c, |h| h["timestamp"].as_f64().unwrap_or(0.0) > until);
    assert_eq!(d.count_log("Home Assistant discovery:"), before + 2);
    // The announcements were never inputs: no error answered them.
    assert_eq!(h["broker"]["unrouted_messages"], 0);
    assert_eq!(h["broker"]["own_messages_ignored"], 0);
}

/// Subscribes to the prefix and waits for the retained configs; their
/// number.
fn wait_for_configs(d: &Daemon, c: &TestClient, port: u16) -> usize {
    d.wait_for_log("Home Assistant discovery:");
    // The daemon logs before it publishes: wait until the broker holds
    // as many as it said, so none arrives after the marker below.
    let text = d.log_text();
    let said: usize = text
        .rsplit("Home Assistant discovery: ")
        .next()
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in the log: {text}"));
    wait_until("the configs retained", WAIT, || {
        retained(port, "homeassistant/#", "test/settle").len() == said
    });
    c.subscribe("test/first");
    c.subscribe("homeassistant/#");
    c.publish("test/first", "m");
    let mut n = 0;
    loop {
        let m = c.recv();
        if m.topic == "test/first" {
            return n;
        }
        if m.topic.contains("/sensor/") {
            n += 1;
        }
    }
}

#[test]
fn reload_removes_what_is_gone_adds_what_is_new_and_can_turn_discovery_off() {
    let broker = Broker::start();
    let d = Daemon::start(&ha_config(broker.port, ON, &(har("har") + &plain("old"))));
    let c = TestClient::connect(broker.port);
    wait_for_configs(&d, &c, broker.port);
    let topic = |o: &str| format!("homeassistant/sensor/{DEVICE}/{o}/config");

    // "old" goes, "new" comes.
    d.rewrite_config(&ha_config(broker.port, ON, &(har("har") + &plain("new"))));
    d.signal("HUP");
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let wanted = [
        topic("old_p99_latency"),
        topic("old_error_rate"),
        topic("new_p99_latency"),
        topic("new_error_rate"),
    ];
    while !wanted.iter().all(|t| seen.contains_key(t)) {
        let m = c.recv();
        seen.insert(m.topic, m.payload);
    }
    assert!(seen[&topic("old_p99_latency")].is_empty());
    assert!(seen[&topic("old_error_rate")].is_empty());
    parse(&topic("new_p99_latency"), &seen[&topic("new_p99_latency")]);
    let left = retained(broker.port, "homeassistant/#", "test/m1");
    assert!(left.contains_key(&topic("new_error_rate")));
    assert!(left.contains_key(&topic("har_label")));
    assert!(
        !left.keys().any(|t| t.contains("/old_")),
        "{:?}",
        left.keys()
    );

    // A new prefix: everything moves.
    d.rewrite_config(&ha_config(
        broker.port,
        "[homeassistant]\nenabled = true\nprefix = \"ha/disc\"",
        &(har("har") + &plain("new")),
    ));
    d.signal("HUP");
    d.wait_for_log("reload: ");
    wait_until("configs under the new prefix", WAIT, || {
        retained(broker.port, "ha/disc/#", "test/m2").len() >= 6
            && retained(broker.port, "homeassistant/#", "test/m3").is_empty()
    });
    // Home Assistant's announcements now come on the new prefix. One that
    // repeats "online" has the configs sent again, and is not logged once
    // per message: a result published after the burst shows the daemon
    // took every one of them.
    let before = d.count_log("Home Assistant announced itself");
    for _ in 0..50 {
        c.publish("ha/disc/status", "online");
    }
    c.subscribe(&format!("edge-infer/{DEVICE}/har/+"));
    c.publish(
        "sensors/s1/har",
        json!({"id": 2, "data": window(3)}).to_string(),
    );
    let deadline = Instant::now() + WAIT;
    while !c
        .recv_before(deadline, "the result after the announcements")
        .topic
        .starts_with(&format!("edge-infer/{DEVICE}/har/"))
    {}
    wait_until("the announcement on the new prefix heard", WAIT, || {
        d.count_log("Home Assistant announced itself") > before
    });
    let heard = d.count_log("Home Assistant announced itself") - before;
    assert!(heard < 10, "50 announcements logged {heard} times");

    // Off: every config removed.
    d.rewrite_config(&ha_config(broker.port, "", &(har("har") + &plain("new"))));
    d.signal("HUP");
    wait_until("every config removed", WAIT, || {
        retained(broker.port, "ha/disc/#", "test/m4").is_empty()
    });
}

#[test]
fn discovery_is_off_by_default_and_the_prefix_is_not_listened_to() {
    let broker = Broker::start();
    let d = Daemon::start(&ha_config(broker.port, "", &plain("dyn")));
    let c = TestClient::connect(broker.port);
    c.subscribe(&format!("edge-infer/{DEVICE}/health"));
    health_where(&c, |_| true);
    let asked = unix_now();
    c.publish("homeassistant/status", "online");
    // A daemon that listened would send ANNOUNCE_DELAY (1 s) after it:
    // look once a health record written well after that has come.
    health_where(&c, |h| h["timestamp"].as_f64().unwrap_or(0.0) > asked + 2.0);
    assert!(retained(broker.port, "homeassistant/#", "test/marker").is_empty());
    assert_eq!(d.count_log("Home Assistant"), 0, "{}", d.log_text());
}

#[test]
fn check_config_names_the_discovery_and_refuses_models_on_its_topics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, ha_config(1883, ON, &plain("dyn"))).unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&format!(
            "homeassistant: discovery under homeassistant/sensor/{DEVICE}/"
        )),
        "{out}"
    );

    let bad = ha_config(
        1883,
        "[homeassistant]\nenabled = true\nprefix = \"ha/+\"",
        &plain("dyn").replace("in/dyn", "homeassistant/#"),
    );
    std::fs::write(&path, bad).unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("homeassistant.prefix"), "{err}");

    let clash = ha_config(1883, ON, &plain("dyn").replace("in/dyn", "homeassistant/+"));
    std::fs::write(&path, clash).unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("models[0].input_topic") && err.contains("homeassistant/status"),
        "{err}"
    );
}
