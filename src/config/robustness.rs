//! Randomized robustness test of the config loader (issue 10): generated
//! and mutated TOML through [`load`] itself (written to a file, read with
//! the `config` crate, checked by `Settings::from_raw`), each load under
//! `catch_unwind`. Every input must give `Settings` that obey every range
//! the loader checks, or a `ConfigError` listing at least one problem, each
//! with a key and a message.
//!
//! Inputs: configs generated key by key (sections as tables or dotted
//! keys, optional keys left out, 1-3 models on the shipped model files),
//! with zero, one or more planted faults whose key the error must name
//! (out-of-range numbers, NaN seconds, unknown enums, bad or looping
//! topics, duplicate names, unknown keys, wrong types, missing required
//! keys); and mutations of those, of `config/demo.toml`,
//! `config/edge-infer.toml` and the tests' configs (lines deleted,
//! duplicated, swapped or inserted, values replaced by values of every TOML
//! type, keys renamed, bytes flipped, inserted, deleted, truncated,
//! spliced).
//!
//! Counts and replay as in `crate::robustness`; the full run:
//! `EDGE_INFER_ROBUSTNESS_CASES=1000000 cargo test --release --bin edge-infer robustness -- --nocapture`.
//! The loader also reads `EDGE_INFER__*` overrides from the environment;
//! the test never sets them (tests run in parallel), and if the
//! environment has some it only checks what holds whatever they say.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{check_topic_level, load, ConfigError, Settings};
use crate::robustness::{Rng, Run};

/// The CI count (a load is a file write and a TOML parse, about 60 µs in
/// a debug build).
const CASES: u64 = 10_000;

const DEMO: &str = include_str!("../../config/demo.toml");
const PACKAGED: &str = include_str!("../../config/edge-infer.toml");
/// As tests/common writes them.
const TESTS: &str = "device_id = \"gw-test\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = 18830\nreconnect_min_ms = 50\nreconnect_max_secs = 1\n\n[[models]]\nname = \"dyn\"\npath = \"/models/dynamic_batch_f32.tflite\"\ninput_topic = \"in/dyn\"\noutput_topic = \"out/{device_id}/{model}\"\n";
/// settings.rs's test config.
const GOOD: &str = "device_id = \"gw1\"\n[mqtt]\nport = 1884\n[[models]]\nname = \"har\"\npath = \"har.tflite\"\ninput_topic = \"sensors/+/accel\"\noutput_topic = \"results/{device_id}/{1}/{model}\"\n";

/// Values of every TOML type, and the edges of the loader's ranges.
const VALUES: &[&str] = &[
    "\"\"",
    "\"x\"",
    "-1",
    "0",
    "1",
    "2",
    "65535",
    "65536",
    "4294967297",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "1.5",
    "1e3",
    "1e400",
    "-0.0",
    "nan",
    "+inf",
    "-inf",
    "true",
    "false",
    "[1, \"a\"]",
    "[]",
    "{ a = 1 }",
    "{}",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "1979-05-27",
    "0x10",
    "0o7",
    "0b1",
    "1_000",
    "\"\\u0000\"",
    "'literal'",
    "\"\"\"multi\nline\"\"\"",
    "\"a/b\"",
    "\"+\"",
    "\"#\"",
    "\"{1}\"",
    "\"{#}\"",
    "\"{\"",
    "\"é\"",
    "\"reject_new\"",
    "\"drop_oldest\"",
    "\"raw\"",
    "\"json\"",
    "\"sensors/+/accel\"",
];

/// Lines to insert anywhere.
const LINES: &[&str] = &[
    "foo = 1",
    "[mqtt]",
    "[[models]]",
    "[models]",
    "[unknown]",
    "port = 0",
    "name = \"x\"",
    "qos = 2",
    "level = \"verbose\"",
    "drain_timeout_secs = nan",
    "interval_secs = inf",
    "top_k = 0",
    "max_batch = 300",
    "workers = -1",
    "input_topic = \"#\"",
    "output_topic = \"{1}\"",
    "payload = 5",
    "x.y.z = 1",
    "models = []",
    "models = 5",
    "mqtt = 1",
    "device_id = [1, 2]",
    "path = \"\"",
    "[[models]]\nname = \"n\"\npath = \"n.tflite\"\ninput_topic = \"n/+\"",
    "# comment",
    "",
];

/// Every key the loader knows, for renames.
const KEYS: &[&str] = &[
    "device_id",
    "state_dir",
    "library",
    "host",
    "port",
    "client_id",
    "keep_alive_secs",
    "clean_session",
    "qos",
    "reconnect_min_ms",
    "reconnect_max_secs",
    "max_packet_bytes",
    "receive_buffer_bytes",
    "username",
    "password",
    "protocol",
    "session_expiry_secs",
    "receive_maximum",
    "max_payload_bytes",
    "level",
    "drain_timeout_secs",
    "interval_secs",
    "stall_timeout_secs",
    "name",
    "path",
    "input_topic",
    "output_topic",
    "labels",
    "top_k",
    "payload",
    "queue_capacity",
    "queue_max_bytes",
    "overflow",
    "workers",
    "threads",
    "batch",
    "max_batch",
    "max_delay_us",
    "hots",
    "Port",
    "models",
];

/// What the generator planted.
enum Expect {
    /// A valid config: these model names, this port.
    Ok { models: Vec<String>, port: u16 },
    /// Faults, each with the key a problem must name when one is known.
    Faults(Vec<Option<String>>),
}

/// A section's keys as TOML `key = value` lines.
type Section = Vec<(String, String)>;

struct Gen<'a> {
    rng: &'a mut Rng,
    models_dir: &'a Path,
    faults: Vec<Option<String>>,
    /// Faults still to plant, one per chance taken.
    budget: usize,
}

impl Gen<'_> {
    /// Whether to plant a fault here (each site gets a fair chance).
    fn fault_here(&mut self) -> bool {
        if self.budget > 0 && self.rng.one_in(12) {
            self.budget -= 1;
            true
        } else {
            false
        }
    }

    /// An integer key: in range, or (a fault) just outside it or absurd.
    fn int(&mut self, sec: &mut Section, key: &str, path: &str, lo: i64, hi: i64) {
        if self.fault_here() {
            let v = match self.rng.below(4) {
                0 => lo - 1,
                1 => hi.saturating_add(1),
                2 => i64::MIN,
                _ => hi.saturating_add(1 + self.rng.below(1000) as i64),
            };
            sec.push((key.into(), v.to_string()));
            self.faults.push(Some(path.into()));
        } else if self.rng.below(3) > 0 {
            let v = self.rng.range(lo, hi.min(lo + 100_000));
            sec.push((key.into(), v.to_string()));
        }
    }

    /// A seconds key (a float): in range, or NaN, infinite, out of range.
    fn secs(&mut self, sec: &mut Section, key: &str, path: &str, lo: f64, hi: f64) {
        if self.fault_here() {
            let v = *self
                .rng
                .pick(&["nan", "+inf", "-inf", "-1.0", "1e9", "-0.001"]);
            let v = if v == "-0.001" && lo == 0.0 {
                "3600.5"
            } else {
                v
            };
            sec.push((key.into(), v.into()));
            self.faults.push(Some(path.into()));
        } else if self.rng.below(3) > 0 {
            let v = lo + (hi - lo) * (self.rng.below(1000) as f64 / 1000.0);
            // TOML floats need a point or an exponent; integers work too.
            let text = if self.rng.one_in(3) {
                format!("{}", v.ceil() as i64)
            } else {
                format!("{v:.3}")
            };
            sec.push((key.into(), text));
        }
    }

    /// A string key with a valid value, or a fault value.
    fn string(&mut self, sec: &mut Section, key: &str, path: &str, good: &[&str], bad: &[&str]) {
        if !bad.is_empty() && self.fault_here() {
            let v = *self.rng.pick(bad);
            sec.push((key.into(), toml_string(v)));
            self.faults.push(Some(path.into()));
        } else {
            let v = *self.rng.pick(good);
            sec.push((key.into(), toml_string(v)));
        }
    }

    fn config(&mut self) -> (String, Expect) {
        let mut top: Section = Vec::new();
        let mut tables: Vec<(&str, Section)> = Vec::new();
        self.string(
            &mut top,
            "device_id",
            "device_id",
            &["gw-7", "demo", "edge_01", "é-dev"],
            &["", "a/b", "x+y", "#"],
        );
        if self.rng.one_in(5) {
            top.push(("state_dir".into(), toml_string("state")));
        }
        let mut runtime = Vec::new();
        if self.rng.one_in(4) {
            runtime.push((
                "library".into(),
                toml_string("/usr/lib/edge-infer/libLiteRt.so"),
            ));
        }
        tables.push(("runtime", runtime));

        let mut mqtt = Vec::new();
        self.string(
            &mut mqtt,
            "host",
            "mqtt.host",
            &["127.0.0.1", "broker.local", "localhost"],
            &["", "   "],
        );
        let port = if self.fault_here() {
            mqtt.push((
                "port".into(),
                self.rng.pick(&["0", "70000", "-1"]).to_string(),
            ));
            self.faults.push(Some("mqtt.port".into()));
            0
        } else if self.fault_here() {
            // A type no integer can be read from (the config crate reads
            // "1883" as 1883, so that is no fault).
            let v = *self
                .rng
                .pick(&["\"abc\"", "[1]", "{ a = 1 }", "1979-05-27"]);
            mqtt.push(("port".into(), v.into()));
            self.faults.push(None);
            0
        } else {
            let port = self.rng.range(1, 65535) as u16;
            mqtt.push(("port".into(), port.to_string()));
            port
        };
        if self.rng.one_in(3) {
            mqtt.push(("client_id".into(), toml_string("edge-infer-test")));
        }
        self.int(
            &mut mqtt,
            "keep_alive_secs",
            "mqtt.keep_alive_secs",
            5,
            65535,
        );
        if self.rng.one_in(3) {
            let v = if self.rng.one_in(2) { "true" } else { "false" };
            mqtt.push(("clean_session".into(), v.into()));
        }
        self.int(&mut mqtt, "qos", "mqtt.qos", 0, 1);
        self.int(
            &mut mqtt,
            "reconnect_min_ms",
            "mqtt.reconnect_min_ms",
            10,
            600_000,
        );
        self.int(
            &mut mqtt,
            "reconnect_max_secs",
            "mqtt.reconnect_max_secs",
            1,
            3600,
        );
        if self.rng.one_in(5) {
            mqtt.push(("receive_buffer_bytes".into(), "0".into()));
        } else {
            self.int(
                &mut mqtt,
                "receive_buffer_bytes",
                "mqtt.receive_buffer_bytes",
                4096,
                64 << 20,
            );
        }
        // The payload limit must stay below the packet limit: both or
        // neither are written, and a fault makes them equal.
        let mut limits = Vec::new();
        if self.fault_here() {
            mqtt.push(("max_packet_bytes".into(), "65536".into()));
            limits.push(("max_payload_bytes".into(), "65536".into()));
            self.faults.push(Some("limits.max_payload_bytes".into()));
        } else if self.rng.one_in(3) {
            let packet = self.rng.range(2048, 268_435_455);
            let payload = self.rng.range(1, packet - 1);
            mqtt.push(("max_packet_bytes".into(), packet.to_string()));
            limits.push(("max_payload_bytes".into(), payload.to_string()));
        }
        if self.fault_here() {
            mqtt.push(("password".into(), toml_string("secret")));
            self.faults.push(Some("mqtt.password".into()));
        } else if self.rng.one_in(5) {
            mqtt.push(("username".into(), toml_string("edge")));
            if self.rng.one_in(2) {
                mqtt.push(("password".into(), toml_string("s3cret \"q\"")));
            }
        }
        tables.push(("mqtt", mqtt));
        tables.push(("limits", limits));

        let mut log = Vec::new();
        self.string(
            &mut log,
            "level",
            "log.level",
            &["error", "warn", "WARNING", "info", "debug", "Trace"],
            &["verbose", ""],
        );
        tables.push(("log", log));
        let mut shutdown = Vec::new();
        self.secs(
            &mut shutdown,
            "drain_timeout_secs",
            "shutdown.drain_timeout_secs",
            0.0,
            3600.0,
        );
        tables.push(("shutdown", shutdown));
        let mut health = Vec::new();
        self.secs(
            &mut health,
            "interval_secs",
            "health.interval_secs",
            0.05,
            86_400.0,
        );
        self.secs(
            &mut health,
            "stall_timeout_secs",
            "health.stall_timeout_secs",
            0.05,
            86_400.0,
        );
        tables.push(("health", health));
        let mut delivery = Vec::new();
        self.string(
            &mut delivery,
            "ack",
            "delivery.ack",
            &["answered", "queued"],
            &["always", ""],
        );
        tables.push(("delivery", delivery));
        let mut outbox = Vec::new();
        if self.fault_here() {
            let v = *self.rng.pick(&["1", "1048575", "-1", "1099511627777"]);
            outbox.push(("max_bytes".into(), v.into()));
            self.faults.push(Some("outbox.max_bytes".into()));
        } else if self.rng.one_in(2) {
            let v = *self
                .rng
                .pick(&["0", "1048576", "268435456", "1099511627776"]);
            outbox.push(("max_bytes".into(), v.into()));
        }
        self.int(
            &mut outbox,
            "max_age_secs",
            "outbox.max_age_secs",
            1,
            315_360_000,
        );
        self.string(
            &mut outbox,
            "on_full",
            "outbox.on_full",
            &["drop_oldest", "reject_new"],
            &["block", "DROP_OLDEST"],
        );
        tables.push(("outbox", outbox));
        if self.fault_here() {
            // An unknown key, somewhere (the key a problem names is the
            // config crate's to choose).
            let at = self.rng.below(tables.len());
            tables[at].1.push(("colour".into(), "1".into()));
            self.faults.push(None);
        }

        let mut models = Vec::new();
        let count = if self.fault_here() {
            self.faults.push(Some("models".into()));
            0
        } else {
            1 + self.rng.below(3)
        };
        let mut names = Vec::new();
        let mut first_faulty = false;
        for i in 0..count {
            let before = self.faults.len();
            let (model, name) = self.model(i, &names, first_faulty);
            first_faulty |= i == 0 && self.faults.len() > before;
            names.push(name);
            models.push(model);
        }

        // Sections as [tables] in any order, or as dotted keys at the top.
        let mut text = String::new();
        let mut headed = Vec::new();
        for (k, v) in &top {
            text.push_str(&format!("{k} = {v}\n"));
        }
        for i in (1..tables.len()).rev() {
            let j = self.rng.below(i + 1);
            tables.swap(i, j);
        }
        for (name, keys) in tables {
            if keys.is_empty() && self.rng.one_in(2) {
                continue;
            }
            if self.rng.one_in(4) {
                for (k, v) in &keys {
                    text.push_str(&format!("{name}.{k} = {v}\n"));
                }
            } else {
                headed.push((name, keys));
            }
        }
        for (name, keys) in headed {
            text.push_str(&format!("\n[{name}]\n"));
            for (k, v) in keys {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        for model in models {
            text.push_str("\n[[models]]\n");
            for (k, v) in model {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        let expect = if self.faults.is_empty() {
            Expect::Ok {
                models: names,
                port,
            }
        } else {
            Expect::Faults(std::mem::take(&mut self.faults))
        };
        (text, expect)
    }

    /// Model `i`; `first_faulty`: the first model has a planted problem.
    fn model(&mut self, i: usize, taken: &[String], first_faulty: bool) -> (Section, String) {
        let key = |field: &str| format!("models[{i}].{field}");
        let mut m: Section = Vec::new();
        // Names are compared among the models that passed their own checks:
        // a problem in the first model or in this one hides the duplicate.
        let mut duplicate = None;
        let name = if !taken.is_empty() && self.fault_here() {
            duplicate = Some(self.faults.len());
            self.faults.push((!first_faulty).then(|| key("name")));
            taken[0].clone()
        } else if self.fault_here() {
            self.faults.push(Some(key("name")));
            self.rng.pick(&["", "a/b", "m+", "#"]).to_string()
        } else {
            format!("{}{i}", self.rng.pick(&["har", "dyn", "m", "model-", "é"]))
        };
        let files = [
            ("har_accel_int8.tflite", true),
            ("har_accel_f32.tflite", true),
            ("multi_io_uint8.tflite", false),
            ("dynamic_batch_f32.tflite", false),
        ];
        let (file, har) = *self.rng.pick(&files);
        // (input_topic, a valid output_topic for it, or None for the default)
        let topics: &[(&str, Option<&str>)] = &[
            ("sensors/+/accel", Some("results/{device_id}/{model}/{1}")),
            ("sensors/+/accel", None),
            ("in/dyn", Some("out/{device_id}/{model}")),
            ("plant/#", Some("out/{model}/{#}")),
            ("a/+/+/b", Some("r/{2}/{1}")),
            ("$SYS/x", Some("out/{model}")),
        ];
        let (input, output) = *self.rng.pick(topics);
        let mut fields: Vec<(&str, String)> = vec![
            ("name", toml_string(&name)),
            (
                "path",
                toml_string(&self.models_dir.join(file).display().to_string()),
            ),
        ];
        if self.fault_here() {
            let (input, output, field) = *self.rng.pick(&[
                ("a/#/b", None, "input_topic"),
                ("a+/b", None, "input_topic"),
                ("", None, "input_topic"),
                ("x/+", Some("y/{3}"), "output_topic"),
                ("x/+", Some("y/{nope}"), "output_topic"),
                ("x/+", Some("y/{1"), "output_topic"),
                ("x/+", Some("y/+/z"), "output_topic"),
                ("x/+", Some("y/{#}"), "output_topic"),
                ("#", Some("out/{model}"), "output_topic"),
                ("sensors/+/accel", Some("sensors/{1}/accel"), "output_topic"),
            ]);
            fields.push(("input_topic", toml_string(input)));
            if let Some(o) = output {
                fields.push(("output_topic", toml_string(o)));
            }
            // A feedback loop is looked for among the models that passed
            // their own checks (like a duplicate name), so another fault in
            // this model hides it; its own tests are in config::settings and
            // topic.
            let feedback = input == "#" || input == "sensors/+/accel";
            self.faults.push((!feedback).then(|| key(field)));
        } else {
            fields.push(("input_topic", toml_string(input)));
            if let Some(o) = output {
                fields.push(("output_topic", toml_string(o)));
            }
        }
        if har && self.rng.one_in(2) {
            let labels = self.models_dir.join("har_accel.labels");
            fields.push(("labels", toml_string(&labels.display().to_string())));
        }
        let mut rest: Section = Vec::new();
        self.int(&mut rest, "top_k", &key("top_k"), 1, 1000);
        self.string(
            &mut rest,
            "payload",
            &key("payload"),
            &["json", "raw", "json"],
            &["xml", "JSON"],
        );
        self.string(
            &mut rest,
            "overflow",
            &key("overflow"),
            &["reject_new", "drop_oldest"],
            &["block", ""],
        );
        self.int(
            &mut rest,
            "queue_capacity",
            &key("queue_capacity"),
            1,
            1_000_000,
        );
        self.int(
            &mut rest,
            "queue_max_bytes",
            &key("queue_max_bytes"),
            1024,
            1 << 40,
        );
        self.int(&mut rest, "workers", &key("workers"), 1, 64);
        self.int(&mut rest, "threads", &key("threads"), 1, 64);
        if self.fault_here() {
            let bad = *self.rng.pick(&["tpu", "CPU", "", "edgetpu"]);
            rest.push((
                "accelerators".into(),
                format!("[{}, \"cpu\"]", toml_string(bad)),
            ));
            self.faults.push(Some(key("accelerators[0]")));
        } else if self.rng.one_in(3) {
            let list = *self.rng.pick(&[
                "[\"cpu\"]",
                "[\"gpu\", \"cpu\"]",
                "[\"npu\", \"gpu\", \"cpu\"]",
            ]);
            rest.push(("accelerators".into(), list.into()));
        }
        self.secs(&mut rest, "retry_secs", &key("retry_secs"), 1.0, 86_400.0);
        if self.fault_here() {
            rest.push(("max_batch".into(), "8".into()));
            rest.push(("batch".into(), "2".into()));
            self.faults.push(Some(key("max_batch")));
        } else if self.rng.one_in(2) {
            self.int(&mut rest, "batch", &key("batch"), 1, 4096);
        } else {
            self.int(&mut rest, "max_batch", &key("max_batch"), 1, 256);
            self.int(&mut rest, "max_delay_us", &key("max_delay_us"), 0, 100_000);
        }
        for (k, v) in fields {
            m.push((k.into(), v));
        }
        m.extend(rest);
        if self.fault_here() {
            // A required key left out.
            let at = self.rng.below(3);
            m.remove(at.min(m.len() - 1));
            self.faults.push(None);
        }
        if let Some(at) = duplicate.filter(|&at| self.faults.len() > at + 1) {
            self.faults[at] = None;
        }
        // Any order within the table.
        for i in (1..m.len()).rev() {
            let j = self.rng.below(i + 1);
            m.swap(i, j);
        }
        (m, name)
    }
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Line-level and byte-level mutations.
fn mutate(rng: &mut Rng, text: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(3) {
        let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        let at = rng.below(lines.len());
        match rng.below(10) {
            0 => {
                lines.remove(at);
            }
            1 => {
                let line = lines[at].clone();
                lines.insert(rng.below(lines.len() + 1), line);
            }
            2 => {
                let b = rng.below(lines.len());
                lines.swap(at, b);
            }
            3 => lines.insert(at, rng.pick(LINES).as_bytes().to_vec()),
            4 | 5 => {
                // A value replaced by one of another type or range.
                if let Some(eq) = lines[at].iter().position(|&b| b == b'=') {
                    lines[at].truncate(eq + 1);
                    lines[at].push(b' ');
                    if rng.one_in(30) {
                        lines[at].extend(format!("\"{}\"", "v".repeat(10_000)).bytes());
                    } else {
                        lines[at].extend_from_slice(rng.pick(VALUES).as_bytes());
                    }
                }
            }
            6 => {
                // A key renamed.
                if let Some(eq) = lines[at].iter().position(|&b| b == b'=') {
                    let mut line = rng.pick(KEYS).as_bytes().to_vec();
                    line.extend_from_slice(b" ");
                    line.extend_from_slice(&lines[at][eq..]);
                    lines[at] = line;
                }
            }
            _ => {
                let mut bytes = lines.join(&b'\n');
                byte_mutation(rng, &mut bytes, other);
                *text = bytes;
                continue;
            }
        }
        *text = lines.join(&b'\n');
    }
}

fn byte_mutation(rng: &mut Rng, p: &mut Vec<u8>, other: &[u8]) {
    if p.is_empty() {
        p.push(rng.byte());
        return;
    }
    let at = rng.below(p.len());
    match rng.below(6) {
        0 => p[at] ^= 1 << rng.below(8),
        1 => p[at] = *rng.pick(b"[]{}=\"'.,#\n \\0123456789-+eE_:"),
        2 => {
            let bytes: Vec<u8> = (0..1 + rng.below(6)).map(|_| rng.byte()).collect();
            p.splice(at..at, bytes);
        }
        3 => {
            let end = (at + 1 + rng.below(24)).min(p.len());
            p.drain(at..end);
        }
        4 => p.truncate(at),
        _ => {
            if !other.is_empty() {
                let from = rng.below(other.len());
                p.truncate(at);
                p.extend_from_slice(&other[from..]);
            }
        }
    }
}

/// Writes `text` over the file at `path`. Not `fs::write`: ext4 flushes
/// a file truncated to zero when it is closed (auto_da_alloc), 2.5 ms per
/// case; overwriting and then setting the length takes microseconds.
fn write(path: &Path, text: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open the config");
    f.write_all(text).expect("write the config");
    f.set_len(text.len() as u64).expect("size the config");
}

/// What every accepted config obeys: the loader's ranges (validation added
/// later only narrows them).
fn check_settings(s: &Settings) -> Result<(), String> {
    let mut wrong = Vec::new();
    let mut want = |ok: bool, what: &str| {
        if !ok {
            wrong.push(what.to_string());
        }
    };
    want(check_topic_level(&s.device_id).is_ok(), "device_id");
    want(!s.mqtt.host.trim().is_empty(), "mqtt.host");
    want(s.mqtt.port >= 1, "mqtt.port");
    want(s.mqtt.qos <= 1, "mqtt.qos");
    want(
        (5..=65535).contains(&s.mqtt.keep_alive.as_secs()),
        "mqtt.keep_alive_secs",
    );
    want(
        (10..=600_000).contains(&s.mqtt.reconnect_min.as_millis()),
        "mqtt.reconnect_min_ms",
    );
    want(
        (1..=3600).contains(&s.mqtt.reconnect_max.as_secs()),
        "mqtt.reconnect_max_secs",
    );
    want(
        (1024..=268_435_455).contains(&s.mqtt.max_packet_bytes),
        "mqtt.max_packet_bytes",
    );
    want(
        s.mqtt
            .receive_buffer_bytes
            .is_none_or(|b| (4096..=64 << 20).contains(&b)),
        "mqtt.receive_buffer_bytes",
    );
    want(
        s.max_payload_bytes >= 1 && s.max_payload_bytes < s.mqtt.max_packet_bytes,
        "limits.max_payload_bytes",
    );
    want(
        s.drain_timeout <= Duration::from_secs(3600),
        "shutdown.drain_timeout_secs",
    );
    let secs = |d: Duration| (0.05..=86_400.0).contains(&d.as_secs_f64());
    want(secs(s.health_interval), "health.interval_secs");
    want(secs(s.stall_timeout), "health.stall_timeout_secs");
    want(!s.models.is_empty(), "models");
    for (i, m) in s.models.iter().enumerate() {
        let mut model = |ok: bool, field: &str| want(ok, &format!("models[{i}].{field}"));
        model(check_topic_level(&m.name).is_ok(), "name");
        model(
            !s.models[..i].iter().any(|o| o.name == m.name),
            "name (unique)",
        );
        model(m.path.is_absolute(), "path");
        model(m.top_k.is_none_or(|k| (1..=1000).contains(&k)), "top_k");
        model(
            (1..=1_000_000).contains(&m.queue_capacity),
            "queue_capacity",
        );
        model(
            m.queue_max_bytes
                .is_none_or(|b| (1024..=1 << 40).contains(&b)),
            "queue_max_bytes",
        );
        model((1..=64).contains(&m.workers), "workers");
        model((1..=64).contains(&m.threads), "threads");
        model((1..=4096).contains(&m.batch), "batch");
        model((1..=256).contains(&m.max_batch), "max_batch");
        model(m.max_batch == 1 || m.batch == 1, "max_batch with batch");
        model(m.max_delay <= Duration::from_millis(100), "max_delay_us");
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("accepted out of range: {wrong:?}"))
    }
}

/// Every refusal lists problems, each with a key and a message.
fn check_error(e: &ConfigError, path: &Path) -> Result<(), String> {
    if e.path != path {
        return Err(format!("the error names {}", e.path.display()));
    }
    if e.problems.is_empty() {
        return Err("a ConfigError without problems".into());
    }
    for p in &e.problems {
        if p.key.trim().is_empty() || p.message.trim().is_empty() {
            return Err(format!("a problem without key or message: {p:?}"));
        }
        if p.message.contains("panicked") {
            return Err(format!("a panic's text: {p:?}"));
        }
    }
    let shown = e.to_string();
    if !e.problems.iter().all(|p| shown.contains(&p.key)) {
        return Err(format!("the error's text omits a key: {shown}"));
    }
    Ok(())
}

#[test]
fn robustness_config_loader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("config.toml");
    let models_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    // Overrides from the environment change what a config means.
    let overridden = std::env::vars().any(|(k, _)| k.starts_with("EDGE_INFER__"));
    if overridden {
        println!("robustness config: EDGE_INFER__* set; the planted outcomes are not checked");
    }
    let bases = [DEMO, PACKAGED, TESTS, GOOD];
    let mut run = Run::new("config", CASES);
    for case in run.cases() {
        let mut rng = run.rng(case);
        let (text, expect) = run.guarded(case, "the generator", &[], || {
            let gen = |rng: &mut Rng| {
                let budget = match rng.below(10) {
                    0..=4 => 0,
                    5..=7 => 1,
                    _ => 2,
                };
                Gen {
                    rng,
                    models_dir: &models_dir,
                    faults: Vec::new(),
                    budget,
                }
                .config()
            };
            match rng.below(2) {
                0 => {
                    let (text, expect) = gen(&mut rng);
                    (text.into_bytes(), Some(expect))
                }
                _ => {
                    let mut text = if rng.one_in(3) {
                        rng.pick(&bases).as_bytes().to_vec()
                    } else {
                        gen(&mut rng).0.into_bytes()
                    };
                    let other = gen(&mut rng).0.into_bytes();
                    mutate(&mut rng, &mut text, &other);
                    (text, None)
                }
            }
        });
        run.count(if expect.is_some() {
            "generated"
        } else {
            "mutated"
        });
        write(&path, &text);
        let t = Instant::now();
        let loaded = run.guarded(case, "config::load", &text, || load(&path));
        run.add_time("config::load", t.elapsed());
        let fail = |run: &Run, why: String| -> ! { run.fail(case, &text, &why) };
        match &loaded {
            Ok(s) => {
                if let Err(why) = check_settings(s) {
                    fail(&run, why);
                }
                run.count("ok");
            }
            Err(e) => {
                if let Err(why) = check_error(e, &path) {
                    fail(&run, why);
                }
                run.count(match e.problems.as_slice() {
                    [p] if p.key == "(file)" => "refused: unreadable (one problem, no key)",
                    [_] => "refused: one problem",
                    _ => "refused: several problems",
                });
            }
        }
        if overridden {
            continue;
        }
        match (expect, &loaded) {
            (None, _) => {}
            (Some(Expect::Ok { models, port }), Ok(s)) => {
                let names: Vec<&str> = s.models.iter().map(|m| m.name.as_str()).collect();
                if names != models || s.mqtt.port != port {
                    fail(
                        &run,
                        format!(
                            "loaded models {names:?} port {}, the config has {models:?} port {port}",
                            s.mqtt.port
                        ),
                    );
                }
                run.count("generated: loaded as planted");
            }
            (Some(Expect::Ok { .. }), Err(e)) => {
                fail(&run, format!("a valid config was refused: {e}"))
            }
            (Some(Expect::Faults(faults)), Err(e)) => {
                // Every planted problem the loader checks once the TOML
                // reads is reported with its key; when the file does not
                // read as a config at all, one problem says why.
                let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
                let deserialize_failed =
                    e.problems.len() == 1 && faults.iter().any(Option::is_none);
                if !deserialize_failed {
                    for key in faults.iter().flatten() {
                        if !keys.contains(&key.as_str()) {
                            fail(
                                &run,
                                format!(
                                    "planted a problem at {key}, the error names {keys:?}: {e}"
                                ),
                            );
                        }
                    }
                }
                run.count("generated: refused as planted");
            }
            (Some(Expect::Faults(faults)), Ok(_)) => fail(
                &run,
                format!("accepted a config with problems at {faults:?}"),
            ),
        }
    }
    let n = run.len();
    let counts = run.finish();
    if n >= 2_000 {
        let got = |k: &str| counts.get(k).copied().unwrap_or(0);
        for k in [
            "generated: loaded as planted",
            "generated: refused as planted",
            "refused: unreadable (one problem, no key)",
            "refused: several problems",
        ] {
            assert!(got(k) * 100 >= n, "only {} of {n} {k}: {counts:?}", got(k));
        }
    }
}

/// `nan` seconds made the loader panic (the drain timeout was clamped,
/// which keeps a NaN, then converted); every seconds key must report NaN
/// and infinities as problems.
#[test]
fn robustness_nan_or_infinite_seconds_are_problems_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    for (section, key, range) in [
        ("shutdown", "drain_timeout_secs", "0 and 3600"),
        ("health", "interval_secs", "0.05 and 86400"),
        ("health", "stall_timeout_secs", "0.05 and 86400"),
    ] {
        for (value, shown) in [
            ("nan", "NaN"),
            ("-nan", "NaN"),
            ("+inf", "inf"),
            ("-inf", "-inf"),
        ] {
            std::fs::write(&path, format!("{GOOD}\n[{section}]\n{key} = {value}\n")).unwrap();
            let loaded = std::panic::catch_unwind(|| load(&path));
            let e = loaded
                .unwrap_or_else(|_| panic!("{section}.{key} = {value} panicked"))
                .unwrap_err();
            let problems: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
            assert_eq!(
                problems,
                [format!(
                    "{section}.{key}: must be between {range} seconds, got {shown}"
                )]
            );
        }
    }
}
