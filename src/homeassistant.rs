//! Home Assistant MQTT discovery (`[homeassistant]`): the retained config
//! messages that make each model and the device itself appear as entities
//! of one Home Assistant device, what is due when the set changes (a
//! reload removes the entities of models no longer configured with an
//! empty retained config), and when to send them again (on every connect
//! of the output link, and when Home Assistant announces itself on
//! `<prefix>/status`, at most once per [`MIN_GAP`]). Pure: `app` sends
//! what this decides through `replies`.
//!
//! The format is Home Assistant's documented one (integrations/mqtt,
//! "MQTT discovery", and integrations/sensor.mqtt), keys spelled in full:
//! one config per entity on `<prefix>/sensor/<node_id>/<object_id>/config`,
//! with `availability`, a `device` block and an `origin` block. Every
//! entity reads a record the daemon already publishes: results (label and
//! score: `state_topic` is a subscription filter over the model's output
//! topics, which Home Assistant's `valid_subscribe_topic` accepts) or the
//! retained health record (latency, error rate, CPU, memory, temperature).
//! `schemas/homeassistant-discovery.schema.json` describes the payloads.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::health::VERSION;
use crate::topic;

/// What the `origin` and `device` blocks name as the software.
const ORIGIN: &str = "edge-infer";

/// The shortest time between two full re-publishes: a Home Assistant that
/// restarts in a loop (or a link that flaps) cannot make the daemon flood
/// the broker; requests in between are merged into one at the end of it.
pub const MIN_GAP: Duration = Duration::from_secs(5);

/// How long after Home Assistant's `online` the configs go out: it has
/// just subscribed, and its own documentation asks publishers to leave it
/// a moment. Fixed, not random: one daemon per device id.
pub const ANNOUNCE_DELAY: Duration = Duration::from_secs(1);

/// One served model as discovery sees it.
pub struct ModelFacts<'a> {
    pub name: &'a str,
    /// A subscription filter over every topic its results go to
    /// ([`crate::topic::TopicTemplate::subscription`]).
    pub results: String,
    /// Its labels, when it has a labels file.
    pub labels: Option<&'a [String]>,
    /// Whether results carry `top_k` (the label and score entities read
    /// its first entry).
    pub top_k: bool,
}

/// One retained message: a config, or an empty payload that removes the
/// entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// A Jinja string literal holding `text` (model names may hold quotes).
fn jinja_string(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

/// Every config message of `device_id` with `models`, under `prefix`.
/// `has_temperature`: the health record carries a temperature.
pub fn configs(
    prefix: &str,
    device_id: &str,
    models: &[ModelFacts<'_>],
    has_temperature: bool,
) -> Vec<Config> {
    let node = topic::homeassistant_id(device_id);
    let health = topic::health_topic(device_id);
    let common = json!({
        "availability": [{
            "topic": topic::status_topic(device_id),
            "value_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }],
        "device": {
            "identifiers": [format!("edge-infer/{device_id}")],
            "name": format!("edge-infer {device_id}"),
            "manufacturer": ORIGIN,
            "model": "edge-infer inference daemon",
            "sw_version": VERSION,
        },
        "origin": {
            "name": ORIGIN,
            "sw_version": VERSION,
        },
        "qos": 1,
    });
    let mut out = Vec::new();
    let mut push = |object: String, kind: &str, owner: Option<&str>, entity: Value| {
        let mut payload = common.clone();
        if let (Some(map), Value::Object(fields)) = (payload.as_object_mut(), entity) {
            map.extend(fields);
            // Stable across restarts: made of names only. '/' cannot occur
            // in a device id or model name (they are topic levels), so no
            // two entities share one.
            let unique = match owner {
                Some(model) => format!("edge-infer/{device_id}/{model}/{kind}"),
                None => format!("edge-infer/{device_id}/{kind}"),
            };
            map.insert("unique_id".into(), Value::String(unique));
        }
        out.push(Config {
            topic: topic::discovery_topic(prefix, "sensor", &node, &object),
            // Our own JSON value: serialization cannot fail.
            payload: serde_json::to_vec(&payload).unwrap_or_default(),
        });
    };
    for m in models {
        let id = topic::homeassistant_id(m.name);
        let key = jinja_string(m.name);
        if m.top_k {
            if let Some(labels) = m.labels {
                // Home Assistant refuses an empty list and ignores states
                // outside it; labels may repeat or be blank in a file.
                let mut seen = BTreeSet::new();
                let options: Vec<&str> = labels
                    .iter()
                    .map(|l| l.as_str())
                    .filter(|l| !l.trim().is_empty() && seen.insert(*l))
                    .collect();
                if !options.is_empty() {
                    push(
                        format!("{id}_label"),
                        "label",
                        Some(m.name),
                        json!({
                            "name": format!("{} label", m.name),
                            "state_topic": m.results,
                            "value_template": "{{ value_json.top_k[0].label }}",
                            "device_class": "enum",
                            "options": options,
                            "icon": "mdi:label-outline",
                        }),
                    );
                }
            }
            push(
                format!("{id}_score"),
                "score",
                Some(m.name),
                json!({
                    "name": format!("{} score", m.name),
                    "state_topic": m.results,
                    "value_template": "{{ value_json.top_k[0].score }}",
                    "state_class": "measurement",
                    "suggested_display_precision": 3,
                    "icon": "mdi:percent-circle-outline",
                }),
            );
        }
        push(
            format!("{id}_p99_latency"),
            "p99_latency",
            Some(m.name),
            json!({
                "name": format!("{} p99 latency", m.name),
                "state_topic": health,
                "value_template": format!("{{{{ value_json.by_model[{key}].latency_p99_ms }}}}"),
                "device_class": "duration",
                "unit_of_measurement": "ms",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "entity_category": "diagnostic",
            }),
        );
        push(
            format!("{id}_error_rate"),
            "error_rate",
            Some(m.name),
            json!({
                "name": format!("{} error rate", m.name),
                "state_topic": health,
                "value_template": format!("{{{{ value_json.by_model[{key}].error_rate_percent }}}}"),
                "unit_of_measurement": "%",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "entity_category": "diagnostic",
                "icon": "mdi:alert-circle-outline",
            }),
        );
    }
    push(
        "cpu".into(),
        "cpu",
        None,
        json!({
            "name": "CPU",
            "state_topic": health,
            "value_template": "{{ value_json.system.cpu_percent }}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "suggested_display_precision": 0,
            "entity_category": "diagnostic",
            "icon": "mdi:cpu-64-bit",
        }),
    );
    push(
        "memory".into(),
        "memory",
        None,
        json!({
            "name": "Memory used",
            "state_topic": health,
            "value_template": "{{ value_json.system.memory_used_percent }}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "suggested_display_precision": 0,
            "entity_category": "diagnostic",
            "icon": "mdi:memory",
        }),
    );
    if has_temperature {
        push(
            "temperature".into(),
            "temperature",
            None,
            json!({
                "name": "Temperature",
                "state_topic": health,
                "value_template": "{{ value_json.system.temperature_max_celsius }}",
                "device_class": "temperature",
                "unit_of_measurement": "°C",
                "state_class": "measurement",
                "suggested_display_precision": 1,
                "entity_category": "diagnostic",
            }),
        );
    }
    out
}

/// Which config topics are out on the broker, so the next set can remove
/// what it no longer has.
#[derive(Default)]
pub struct Published {
    topics: BTreeSet<String>,
}

impl Published {
    /// What to send to go from the published set to `wanted` (None:
    /// discovery is off, remove everything): every wanted config (Home
    /// Assistant ignores a config identical to the one it has), then an
    /// empty retained payload for each topic no longer wanted.
    pub fn update(&mut self, wanted: Option<Vec<Config>>) -> Vec<Config> {
        let wanted = wanted.unwrap_or_default();
        let now: BTreeSet<String> = wanted.iter().map(|c| c.topic.clone()).collect();
        let removals: Vec<Config> = self
            .topics
            .difference(&now)
            .map(|t| Config {
                topic: t.clone(),
                payload: Vec::new(),
            })
            .collect();
        self.topics = now;
        wanted.into_iter().chain(removals).collect()
    }
}

/// When the next full re-publish is due: requests are merged, and two
/// sends are at least [`MIN_GAP`] apart.
#[derive(Default)]
pub struct Schedule {
    last: Option<Instant>,
    due: Option<Instant>,
}

impl Schedule {
    /// Asks for a send `delay` after `now` (or at the end of the gap after
    /// the last one, whichever is later; an earlier request stands).
    pub fn request(&mut self, now: Instant, delay: Duration) {
        let mut at = now + delay;
        if let Some(last) = self.last {
            at = at.max(last + MIN_GAP);
        }
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    /// When the pending send is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// The send happened at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last = Some(now);
        self.due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(name: &'a str, labels: Option<&'a [String]>, top_k: bool) -> ModelFacts<'a> {
        ModelFacts {
            name,
            results: format!("edge-infer/gw-7/{name}/+"),
            labels,
            top_k,
        }
    }

    fn payload(c: &Config) -> Value {
        serde_json::from_slice(&c.payload).unwrap()
    }

    #[test]
    fn each_model_gets_its_entities_and_the_device_its_own() {
        let labels: Vec<String> = ["walk", "run", "run", " ", "sit"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let models = [facts("har", Some(&labels), true), facts("raw", None, false)];
        let configs = super::configs("homeassistant", "gw-7", &models, true);
        let topics: Vec<&str> = configs.iter().map(|c| c.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/gw-7/har_label/config",
                "homeassistant/sensor/gw-7/har_score/config",
                "homeassistant/sensor/gw-7/har_p99_latency/config",
                "homeassistant/sensor/gw-7/har_error_rate/config",
                "homeassistant/sensor/gw-7/raw_p99_latency/config",
                "homeassistant/sensor/gw-7/raw_error_rate/config",
                "homeassistant/sensor/gw-7/cpu/config",
                "homeassistant/sensor/gw-7/memory/config",
                "homeassistant/sensor/gw-7/temperature/config",
            ]
        );
        let label = payload(&configs[0]);
        assert_eq!(label["options"], json!(["walk", "run", "sit"]));
        assert_eq!(label["device_class"], "enum");
        assert_eq!(label["state_topic"], "edge-infer/gw-7/har/+");
        assert_eq!(label["unique_id"], "edge-infer/gw-7/har/label");
        let p99 = payload(&configs[2]);
        assert_eq!(
            p99["value_template"],
            "{{ value_json.by_model['har'].latency_p99_ms }}"
        );
        assert_eq!(p99["state_topic"], "edge-infer/gw-7/health");
        assert_eq!(p99["availability"][0]["topic"], "edge-infer/gw-7/status");
        assert_eq!(p99["device"]["sw_version"], VERSION);
        assert!(!super::configs("ha", "gw-7", &models, false)
            .iter()
            .any(|c| c.topic.contains("temperature")));
    }

    #[test]
    fn ids_outside_the_discovery_alphabet_are_sanitized_and_kept_apart() {
        let c = configs("ha", "gw.7", &[facts("it's", None, false)], false);
        assert!(c[0].topic.starts_with("ha/sensor/gw_7_"), "{}", c[0].topic);
        assert_eq!(
            payload(&c[0])["value_template"],
            "{{ value_json.by_model['it\\'s'].latency_p99_ms }}"
        );
    }

    #[test]
    fn models_no_longer_wanted_get_empty_configs() {
        let mut published = Published::default();
        let first = published.update(Some(configs("ha", "d", &[facts("a", None, false)], false)));
        assert!(first.iter().all(|c| !c.payload.is_empty()));
        let second = published.update(Some(configs("ha", "d", &[facts("b", None, false)], false)));
        let removed: Vec<&str> = second
            .iter()
            .filter(|c| c.payload.is_empty())
            .map(|c| c.topic.as_str())
            .collect();
        assert_eq!(
            removed,
            [
                "ha/sensor/d/a_error_rate/config",
                "ha/sensor/d/a_p99_latency/config"
            ]
        );
        let off = published.update(None);
        assert!(off.iter().all(|c| c.payload.is_empty()));
        assert_eq!(off.len(), 4);
        assert!(published.update(None).is_empty());
    }

    #[test]
    fn re_publishes_are_merged_and_spaced() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        s.request(t0, Duration::ZERO);
        assert_eq!(s.due(), Some(t0));
        s.sent(t0);
        assert_eq!(s.due(), None);
        // Within the gap: at its end, however many ask.
        for i in 0..100 {
            s.request(t0 + Duration::from_millis(i), ANNOUNCE_DELAY);
        }
        assert_eq!(s.due(), Some(t0 + MIN_GAP));
        // Long after: after the delay.
        let later = t0 + MIN_GAP * 10;
        s.sent(t0 + MIN_GAP);
        s.request(later, ANNOUNCE_DELAY);
        assert_eq!(s.due(), Some(later + ANNOUNCE_DELAY));
    }
}
