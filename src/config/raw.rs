//! The config file as written: serde types with defaults, read with the
//! `config` crate (built-in defaults, then the TOML file, then
//! `EDGE_INFER__SECTION__KEY` environment variables). Nothing here checks
//! meaning; `settings.rs` does.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Names this device in topics and messages; defaults to the host name.
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub mqtt: RawMqtt,
    /// `[uplink]`: the broker that results, errors, status and health go
    /// to, when not the `[mqtt]` one. Same keys as `[mqtt]`.
    #[serde(default)]
    pub uplink: Option<RawMqtt>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub shutdown: RawShutdown,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub delivery: RawDelivery,
    /// `[homeassistant]`: MQTT discovery configs for Home Assistant.
    #[serde(default)]
    pub homeassistant: RawHomeAssistant,
    /// Where the daemon keeps state; defaults to $STATE_DIRECTORY (set by
    /// systemd's StateDirectory=) or /var/lib/edge-infer.
    #[serde(default)]
    pub state_dir: Option<String>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    #[serde(default)]
    pub outbox: RawOutbox,
    /// `[delegates.NAME]`: external delegate plugins that models name in
    /// `accelerators`.
    #[serde(default)]
    pub delegates: BTreeMap<String, RawDelegate>,
    /// `[metrics]`: the Prometheus endpoint, served while the section is
    /// there (and `enabled` not false).
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    /// `[updates]`: signed model updates over MQTT, on while the section
    /// is there.
    #[serde(default)]
    pub updates: Option<super::updates::RawUpdates>,
}

/// `[metrics]`: `/metrics` over HTTP for Prometheus.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// False turns the endpoint off and keeps the section.
    pub enabled: bool,
    /// IP address and port to listen on.
    pub listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[delegates.NAME]`: one external delegate plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelegate {
    /// A path, or a bare file name the dynamic linker searches for.
    pub library: String,
    /// Handed to the plugin as keys and values: `{ device = "usb" }`.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
}

/// A delegate option's value as TOML writes it; the plugin gets it as text.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OptionValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Flag(bool),
}

impl OptionValue {
    pub fn to_text(&self) -> String {
        match self {
            OptionValue::Text(t) => t.clone(),
            OptionValue::Integer(i) => i.to_string(),
            OptionValue::Float(f) => f.to_string(),
            OptionValue::Flag(b) => b.to_string(),
        }
    }
}

/// `[outbox]`: results that cannot be published wait on disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOutbox {
    /// Bytes the outbox may take on disk; 0 disables it.
    pub max_bytes: i64,
    /// Older records are dropped unsent.
    pub max_age_secs: i64,
    /// "drop_oldest" (default) or "reject_new".
    pub on_full: String,
}

impl Default for RawOutbox {
    fn default() -> Self {
        RawOutbox {
            max_bytes: 256 * 1024 * 1024,
            max_age_secs: 7 * 24 * 3600,
            on_full: "drop_oldest".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    /// Seconds between health messages.
    pub interval_secs: f64,
    /// A worker busy with one message for longer than this is wedged: the
    /// systemd watchdog stops being fed, so systemd restarts the service.
    pub stall_timeout_secs: f64,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            interval_secs: 30.0,
            stall_timeout_secs: 60.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHomeAssistant {
    /// Publish retained discovery configs so each model and the device
    /// appear in Home Assistant; off by default.
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration setting).
    pub prefix: String,
}

impl Default for RawHomeAssistant {
    fn default() -> Self {
        RawHomeAssistant {
            enabled: false,
            prefix: "homeassistant".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDelivery {
    /// When a QoS 1 input is acknowledged to its broker: "answered" (once
    /// every answer to it is confirmed or in the outbox) or "queued".
    pub ack: String,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            ack: "answered".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    /// How long SIGTERM waits for queued messages before answering the rest
    /// with `shutting_down`. Seconds, fractions allowed.
    pub drain_timeout_secs: f64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            drain_timeout_secs: 10.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Path of libLiteRt.so or libtensorflowlite_c.so.
    pub library: Option<String>,
}

/// `[mqtt]` and `[uplink]`: one broker connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMqtt {
    /// `[mqtt]`: defaults to 127.0.0.1; `[uplink]`: required.
    pub host: Option<String>,
    /// Defaults to 1883, or 8883 with `tls = true`.
    pub port: Option<i64>,
    /// `[mqtt]`: defaults to "edge-infer-{device_id}"; `[uplink]`: to the
    /// `[mqtt]` one + "-out".
    pub client_id: Option<String>,
    pub keep_alive_secs: i64,
    /// false keeps the broker session (and its queued QoS 1 messages) across
    /// reconnects.
    pub clean_session: bool,
    /// QoS of the input subscriptions and of results/errors: 0 or 1.
    pub qos: i64,
    pub reconnect_min_ms: i64,
    pub reconnect_max_secs: i64,
    /// Packets above this size make the client drop the connection; keep the
    /// broker's message_size_limit below it. Payloads above
    /// limits.max_payload_bytes get a too_large error instead.
    pub max_packet_bytes: i64,
    /// The socket's receive buffer (SO_RCVBUF): how far the broker can send
    /// ahead of the daemon's reading. 0: the kernel's own (autotuned).
    pub receive_buffer_bytes: i64,
    pub username: Option<String>,
    pub password: Option<String>,
    /// TLS with the broker's certificate verified (always).
    pub tls: bool,
    /// PEM certificates the broker's must chain to; default: the system's
    /// root certificates.
    pub ca_file: Option<String>,
    /// Mutual TLS: this device's certificate (PEM, chain allowed) and key.
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    /// "3.1.1" (default) or "5".
    pub protocol: String,
    /// MQTT 5 only: how long the broker keeps the session after the
    /// connection ends; default 86400 (1 day) with clean_session = false,
    /// 0 with clean_session = true.
    pub session_expiry_secs: Option<i64>,
    /// MQTT 5 only: how many QoS 1 messages the broker may send before we
    /// acknowledge one (1..65535); default 20.
    pub receive_maximum: Option<i64>,
}

/// The default receive buffer of a broker connection. The MQTT client
/// reads up to ten packets per wake-up and holds them until the daemon has
/// taken each: with 1 MB images and the kernel's buffer (autotuned to
/// several MB) that was 9-10 MB of payloads read ahead of the model queue, and a
/// peak RSS of 37-40 MB in a flood of MobileNetV2 JSON images against 32 MB
/// with this buffer. A 4 KB sensor message still has room for dozens
/// (HAR at 1,000 and 10,000 msg/s: the same CPU and p99 within noise), and
/// the broker keeps what does not fit, where its own limits apply.
pub const DEFAULT_RECEIVE_BUFFER_BYTES: i64 = 256 * 1024;

impl Default for RawMqtt {
    fn default() -> Self {
        RawMqtt {
            host: None,
            port: None,
            client_id: None,
            keep_alive_secs: 30,
            clean_session: false,
            qos: 1,
            reconnect_min_ms: 200,
            reconnect_max_secs: 30,
            max_packet_bytes: 64 * 1024 * 1024,
            receive_buffer_bytes: DEFAULT_RECEIVE_BUFFER_BYTES,
            username: None,
            password: None,
            tls: false,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            protocol: "3.1.1".into(),
            session_expiry_secs: None,
            receive_maximum: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_payload_bytes: i64,
    /// Model files above this many bytes are refused before they are read
    /// (see `files::DEFAULT_MAX_MODEL_BYTES` for the default's reasons).
    pub max_model_bytes: i64,
    /// Labels files above this many bytes are refused before they are read.
    pub max_labels_bytes: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_payload_bytes: 1024 * 1024,
            max_model_bytes: super::files::DEFAULT_MAX_MODEL_BYTES as i64,
            max_labels_bytes: super::files::DEFAULT_MAX_LABELS_BYTES as i64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    pub path: String,
    /// The version of the file at `path`, which remote updates compare
    /// against; none is below every version.
    #[serde(default)]
    pub version: Option<String>,
    pub input_topic: String,
    #[serde(default = "default_output_topic")]
    pub output_topic: String,
    #[serde(default)]
    pub labels: Option<String>,
    #[serde(default)]
    pub top_k: Option<i64>,
    /// "json" (default) or "raw".
    #[serde(default = "default_payload")]
    pub payload: String,
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: i64,
    /// Payload bytes the queue may hold (queued and in progress). Unset:
    /// sized from the model's input when it is loaded
    /// (`ModelContext::queue_budget`).
    #[serde(default)]
    pub queue_max_bytes: Option<i64>,
    /// "reject_new" (default) or "drop_oldest".
    #[serde(default = "default_overflow")]
    pub overflow: String,
    /// Worker threads, each with its own compiled engine.
    #[serde(default = "one")]
    pub workers: i64,
    /// Share compiled engines with the other models that serve the same
    /// file the same way on the CPU (`models::shared`).
    #[serde(default = "yes")]
    pub share_engine: bool,
    /// "auto" (default), "normal" or "background": the scheduling class
    /// of the model's threads (`models::priority`).
    #[serde(default = "default_worker_priority")]
    pub worker_priority: String,
    /// Intra-op CPU threads per worker.
    #[serde(default = "one")]
    pub threads: i64,
    /// Batch size that fixes a dynamic (-1) batch dimension.
    #[serde(default = "one")]
    pub batch: i64,
    /// Micro-batching: up to this many messages run as one batch on a model
    /// with a dynamic batch dimension. 1 (the default) is off.
    #[serde(default = "one")]
    pub max_batch: i64,
    /// Micro-batching: how long the first message of a batch may wait for
    /// more, in microseconds. 0 takes only what is already queued.
    #[serde(default = "default_max_delay_us")]
    pub max_delay_us: i64,
    /// Where the model runs, most preferred first: "cpu", "gpu", "npu" or
    /// the name of a `[delegates.NAME]` table.
    #[serde(default = "default_accelerators")]
    pub accelerators: Vec<String>,
    /// The model file the "cpu" accelerator runs instead of `path` (a CPU
    /// build of an Edge TPU model).
    #[serde(default)]
    pub cpu_path: Option<String>,
    /// After a fall back, seconds before the preferred accelerator is
    /// tried again.
    #[serde(default = "default_retry_secs")]
    pub retry_secs: f64,
    /// The GPU may compute in half precision (faster on real GPUs, further
    /// from the CPU's results).
    #[serde(default)]
    pub gpu_allow_fp16: bool,
    /// `[models.window]`: the input is assembled from a stream of readings.
    #[serde(default)]
    pub window: Option<RawWindow>,
    /// `[models.input]`: named fields and normalization.
    #[serde(default)]
    pub input: Option<RawInput>,
    /// `[models.image]`: image payloads.
    #[serde(default)]
    pub image: Option<RawImage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub fields: Vec<String>,
    /// Default: what the input's shape implies.
    #[serde(default)]
    pub size: Option<i64>,
    /// Default: `size` (windows do not overlap).
    #[serde(default)]
    pub stride: Option<i64>,
    /// Default: the whole topic.
    #[serde(default)]
    pub key: Option<String>,
    /// Default: the message's arrival time.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Default: no limit.
    #[serde(default)]
    pub max_gap_ms: Option<i64>,
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: f64,
    #[serde(default = "default_max_streams")]
    pub max_streams: i64,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub mean: Option<OneOrMany>,
    #[serde(default)]
    pub std: Option<OneOrMany>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawImage {
    /// "stretch" (default), "crop" or "letterbox".
    pub resize: String,
    pub mean: OneOrMany,
    pub std: OneOrMany,
    pub pad: i64,
    pub max_pixels: i64,
}

impl Default for RawImage {
    fn default() -> Self {
        RawImage {
            resize: "stretch".into(),
            mean: OneOrMany::One(0.0),
            std: OneOrMany::One(1.0),
            pad: 0,
            max_pixels: super::DEFAULT_MAX_PIXELS as i64,
        }
    }
}

/// `mean = 127.5` or `mean = [0.485, 0.456, 0.406]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(f64),
    Many(Vec<f64>),
}

impl OneOrMany {
    pub fn values(&self) -> Vec<f64> {
        match self {
            OneOrMany::One(v) => vec![*v],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Five minutes: a sensor that pauses longer than that has stopped; its
/// partial window is not worth the memory.
fn default_idle_timeout_secs() -> f64 {
    300.0
}
/// A gateway rarely serves more than a few hundred sensors per model; 1024
/// streams of a 128 x 3 window hold about 2.5 MB.
fn default_max_streams() -> i64 {
    1024
}

fn default_accelerators() -> Vec<String> {
    vec!["cpu".into()]
}
/// A minute: a replugged USB accelerator is back in use soon, and a
/// missing one costs one failed load a minute per engine.
fn default_retry_secs() -> f64 {
    60.0
}

fn default_output_topic() -> String {
    "edge-infer/{device_id}/{model}/result".into()
}
fn default_payload() -> String {
    "json".into()
}
/// Enough to ride out a scheduling stall of ~150 ms at 25,000 msg/s (the
/// benchmark saw 30-70 ms stalls on 2 busy cores overflow a queue of 256);
/// memory stays bounded by `queue_max_bytes`, which is reached first for
/// payloads above 1 KiB.
fn default_queue_capacity() -> i64 {
    4096
}
fn default_worker_priority() -> String {
    "auto".into()
}
fn default_overflow() -> String {
    "reject_new".into()
}
/// No wait: batches form only from what is already queued, i.e. under load,
/// and a message that arrives alone runs at once on the batch-1 engine.
fn default_max_delay_us() -> i64 {
    0
}
fn yes() -> bool {
    true
}

fn one() -> i64 {
    1
}
