//! Checked configuration. `Settings::from_raw` validates every field of a
//! [`RawConfig`] and returns all problems at once, each with its key path.
//! Checks that need the files themselves (model loads, label counts) happen
//! when models are loaded, reported the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use model_runtime::DelegateSpec;

use super::accel::{self, AccelSettings};
use super::check::Check;
use super::files::{self, resolve, FileLimits};
use super::preprocess::{self, ImageSettings, InputSettings, WindowSettings};
use super::raw::{RawConfig, RawMetrics, RawModel, RawMqtt, RawOutbox};
use super::tls::{self, TlsSettings};
use super::Problem;
use crate::topic::{self, TopicFilter, TopicTemplate};

#[derive(Debug, Clone)]
pub struct Settings {
    pub device_id: String,
    pub runtime_library: Option<PathBuf>,
    /// `[mqtt]`: the broker of the inputs, and of everything else too
    /// unless `uplink` is set.
    pub mqtt: MqttSettings,
    /// `[uplink]`: the broker results, errors, status and health go to.
    pub uplink: Option<MqttSettings>,
    pub max_payload_bytes: usize,
    /// Caps on the model and label files (`[limits]`).
    pub file_limits: FileLimits,
    pub log_level: LogLevel,
    pub drain_timeout: Duration,
    pub health_interval: Duration,
    pub stall_timeout: Duration,
    /// When QoS 1 inputs are acknowledged (`[delivery] ack`).
    pub ack: AckPolicy,
    pub state_dir: PathBuf,
    pub models: Vec<ModelSettings>,
    /// `[outbox]`, kept in `state_dir/outbox`.
    pub outbox: OutboxSettings,
    /// `[delegates.NAME]`, by name (models refer to them in `accelerators`).
    pub delegates: BTreeMap<String, DelegateSpec>,
    /// `[homeassistant]`: None when discovery is off.
    pub homeassistant: Option<HomeAssistantSettings>,
    /// `[metrics]`: None when off.
    pub metrics: Option<MetricsSettings>,
    /// `[updates]`: None when remote model updates are off.
    pub updates: Option<super::UpdateSettings>,
}

/// `[homeassistant]` when enabled: where Home Assistant reads discovery
/// configs and announces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistantSettings {
    /// The discovery prefix: a topic name without wildcards, no empty level.
    pub prefix: String,
}

/// `[metrics]`: where the Prometheus endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    pub listen: std::net::SocketAddr,
}

/// When a QoS 1 input is acknowledged to its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    /// Once every answer to it is confirmed by the broker that receives
    /// answers, or committed to the outbox: at-least-once across crashes.
    Answered,
    /// As soon as it is queued (or refused): one round trip less, but an
    /// answer still in flight is lost if the daemon dies.
    Queued,
}

impl AckPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            AckPolicy::Answered => "answered",
            AckPolicy::Queued => "queued",
        }
    }
}

#[derive(Clone, PartialEq)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub qos: u8,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_packet_bytes: usize,
    /// SO_RCVBUF of the connection; None: the kernel's autotuning.
    pub receive_buffer_bytes: Option<u32>,
    pub credentials: Option<(String, String)>,
    /// `tls = true`: the checked certificates and the rustls config.
    pub tls: Option<TlsSettings>,
    /// `protocol`, with the MQTT 5 session settings.
    pub protocol: Protocol,
}

/// The MQTT protocol version of one broker connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1, the default.
    V311,
    /// MQTT 5: request/response (`response_topic`, `correlation_data`) and
    /// user properties pass through to the answers.
    V5 {
        /// How long the broker keeps the session (and the QoS 1 messages
        /// it queues for us) after the connection ends.
        session_expiry_secs: u32,
        /// How many QoS 1 messages the broker may send us unacknowledged.
        receive_maximum: u16,
    },
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 { .. } => "5",
        }
    }

    pub fn is_v5(&self) -> bool {
        matches!(self, Protocol::V5 { .. })
    }
}

/// A session that outlives a restart of the daemon, so QoS 1 inputs not
/// yet acknowledged are redelivered (what clean_session = false means with
/// 3.1.1, where the session never expires).
pub const DEFAULT_SESSION_EXPIRY_SECS: u32 = 86_400;

/// Mosquitto's own default of unacknowledged QoS 1 messages per client
/// (max_inflight_messages).
pub const DEFAULT_RECEIVE_MAXIMUM: u16 = 20;

impl MqttSettings {
    /// `mqtt://host:port` or `mqtts://host:port`, for messages.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

/// Written out so that `{:?}` of the settings never shows the password.
impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let MqttSettings {
            host,
            port,
            client_id,
            keep_alive,
            clean_session,
            qos,
            reconnect_min,
            reconnect_max,
            max_packet_bytes,
            receive_buffer_bytes,
            credentials,
            tls,
            protocol,
        } = self;
        f.debug_struct("MqttSettings")
            .field("host", host)
            .field("port", port)
            .field("client_id", client_id)
            .field("keep_alive", keep_alive)
            .field("clean_session", clean_session)
            .field("qos", qos)
            .field("reconnect_min", reconnect_min)
            .field("reconnect_max", reconnect_max)
            .field("max_packet_bytes", max_packet_bytes)
            .field("receive_buffer_bytes", receive_buffer_bytes)
            .field(
                "credentials",
                &credentials
                    .as_ref()
                    .map(|(user, _)| (user, super::secrets::MASK)),
            )
            .field("tls", tls)
            .field("protocol", protocol)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<LogLevel> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Some(LogLevel::Error),
            "warn" | "warning" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            "trace" => Some(LogLevel::Trace),
            _ => None,
        }
    }

    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// `{"id":..,"data":[..]}` or `{"id":..,"inputs":[..]}`.
    Json,
    /// The payload is the input tensors' bytes, concatenated in input order.
    Raw,
    /// The payload is a JPEG or PNG file (`[models.image]`).
    Image,
}

impl PayloadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Json => "json",
            PayloadFormat::Raw => "raw",
            PayloadFormat::Image => "image",
        }
    }
}

/// What happens to a message that arrives when a model's queue is full.
/// Either way the message that loses gets an `overloaded` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// The new message is refused: old work is finished first.
    RejectNew,
    /// The oldest queued message is evicted: fresh readings win.
    DropOldest,
}

impl OverflowPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OverflowPolicy::RejectNew => "reject_new",
            OverflowPolicy::DropOldest => "drop_oldest",
        }
    }
}

/// How the kernel schedules a model's threads against everything else on
/// the device (`models::priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum WorkerPriority {
    /// The kernel shares the cores fairly among all threads.
    Normal,
    /// The default. Normal, until a worker finds that its messages hold a
    /// core for a millisecond or more beside sensor models; then
    /// background, and normal again if it starves there (`worker::sched`).
    #[default]
    Auto,
    /// `SCHED_IDLE`: the model computes only on cores that no normal
    /// thread wants, so a sensor model, the broker or the event loop that
    /// wakes up never waits behind its invokes.
    Background,
}

impl WorkerPriority {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerPriority::Auto => "auto",
            WorkerPriority::Normal => "normal",
            WorkerPriority::Background => "background",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    /// `models[i]`, for messages.
    pub key: String,
    pub name: String,
    pub path: PathBuf,
    pub input_topic: TopicFilter,
    pub output_topic: TopicTemplate,
    pub labels: Option<PathBuf>,
    pub top_k: Option<usize>,
    pub payload: PayloadFormat,
    pub queue_capacity: usize,
    /// None: sized from the model's input once it is loaded.
    pub queue_max_bytes: Option<usize>,
    pub overflow: OverflowPolicy,
    pub workers: usize,
    pub threads: u32,
    /// Whether its engines may be shared with other models (`models::shared`).
    pub share_engine: bool,
    /// The scheduling class of its load, workers and intra-op threads.
    pub worker_priority: WorkerPriority,
    /// Fixes a dynamic (-1) batch dimension at load: one message fills all
    /// `batch` rows. 1 when `max_batch` > 1.
    pub batch: u32,
    /// Micro-batching: up to this many messages, one row each, run as one
    /// invoke. 1 is off.
    pub max_batch: usize,
    /// How long the first message of a batch may wait for more.
    pub max_delay: Duration,
    /// `[models.window]`: inputs assembled from streams of readings.
    pub window: Option<WindowSettings>,
    /// `[models.input]`: named fields, normalization.
    pub input: InputSettings,
    /// `[models.image]` as written; a `payload = "image"` model without
    /// the table takes the defaults (`image_settings`).
    pub image: Option<ImageSettings>,
    /// `accelerators`, `cpu_path`, `retry_secs`, `gpu_allow_fp16`.
    pub accel: AccelSettings,
    /// The version of the file at `path` (`version`, or the update that
    /// put it there); None is below every version.
    pub version: Option<String>,
}

impl ModelSettings {
    /// How images become this model's input: `[models.image]`, or the
    /// defaults for `payload = "image"`; None for a model without images.
    pub fn image_settings(&self) -> Option<ImageSettings> {
        match (&self.image, self.payload) {
            (Some(i), _) => Some(i.clone()),
            (None, PayloadFormat::Image) => Some(ImageSettings::default()),
            (None, _) => None,
        }
    }

    /// The batch size a dynamic batch dimension is fixed to at load.
    pub fn engine_batch(&self) -> u32 {
        if self.max_batch > 1 {
            self.max_batch as u32
        } else {
            self.batch
        }
    }
}

/// Highest `max_batch`.
pub const MAX_BATCH_LIMIT: i64 = 256;
/// Highest `max_delay_us`: 100 ms.
pub const MAX_DELAY_US_LIMIT: i64 = 100_000;

fn default_device_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "edge-device".into())
}

/// The longest `device_id` or model name, in bytes: a hostname's limit.
/// Both are in every error the daemon sends; bounded, an error cut to its
/// code, a few characters of its source topic and why always fits the
/// smallest `max_packet_bytes` (1,024), whatever the names hold
/// (`replies`' tests check it at this bound).
pub const MAX_LEVEL_BYTES: usize = 64;

/// The rule for a value used as one MQTT topic level (`device_id`, a
/// model's `name`, `edge-infer status --device`): not empty, no wildcards,
/// separators or control characters, at most [`MAX_LEVEL_BYTES`]. The one
/// place this rule is written; the error says what is wrong without the
/// key, which the caller adds.
pub fn check_topic_level(value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else if value.contains(['/', '+', '#']) {
        Err(format!(
            "is used as a topic level, so it cannot contain '/', '+' or '#'; got \"{value}\""
        ))
    } else if value.contains(char::is_control) {
        Err(format!(
            "is used as a topic level, so it cannot contain control characters; got {value:?}"
        ))
    } else if value.len() > MAX_LEVEL_BYTES {
        Err(format!(
            "must be at most {MAX_LEVEL_BYTES} bytes (it is in every error the daemon sends, which must fit in one packet); got {} bytes",
            value.len()
        ))
    } else {
        Ok(())
    }
}

fn check_level(check: &mut Check, key: &str, value: &str) {
    if let Err(why) = check_topic_level(value) {
        check.add(key, why);
    }
}

impl Settings {
    /// `base` is the directory relative paths are resolved against (the
    /// config file's own directory).
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Settings, Vec<Problem>> {
        let mut c = Check {
            problems: Vec::new(),
        };
        let device_id = raw.device_id.clone().unwrap_or_else(default_device_id);
        check_level(&mut c, "device_id", &device_id);

        let mqtt = mqtt_settings(
            &mut c,
            "mqtt",
            &raw.mqtt,
            base,
            format!("edge-infer-{device_id}"),
        );
        let uplink = raw.uplink.as_ref().map(|u| {
            let client_id = format!("{}{}", mqtt.client_id, UPLINK_CLIENT_SUFFIX);
            mqtt_settings(&mut c, "uplink", u, base, client_id)
        });
        if mqtt.protocol.is_v5() && uplink.is_some() {
            // Answers go out on the output link, to the uplink's broker,
            // and an MQTT 5 requester waits for its response_topic on the
            // input broker: it would wait forever unless the two are
            // bridged. Refused rather than half working.
            c.add(
                "mqtt.protocol",
                "\"5\" cannot be combined with [uplink]: answers to MQTT 5 requests (response_topic) go out on the output link, to the uplink's broker, where the requester on the [mqtt] broker does not wait for them; remove [uplink] or use protocol = \"3.1.1\"",
            );
        }
        let max_packet_bytes = mqtt.max_packet_bytes;
        let max_payload_bytes = c.range(
            "limits.max_payload_bytes",
            raw.limits.max_payload_bytes,
            1,
            268_435_455,
        ) as usize;
        if max_payload_bytes >= max_packet_bytes {
            c.add(
                "limits.max_payload_bytes",
                format!("must be below mqtt.max_packet_bytes ({max_packet_bytes}) so oversize messages get a too_large error instead of a dropped connection"),
            );
        }
        let file_limits = FileLimits {
            max_model_bytes: c.range(
                "limits.max_model_bytes",
                raw.limits.max_model_bytes,
                files::MIN_MAX_MODEL_BYTES as i64,
                files::MAX_MAX_MODEL_BYTES as i64,
            ) as u64,
            max_labels_bytes: c.range(
                "limits.max_labels_bytes",
                raw.limits.max_labels_bytes,
                1,
                files::MAX_MAX_LABELS_BYTES as i64,
            ) as u64,
        };
        let log_level = LogLevel::parse(&raw.log.level).unwrap_or_else(|| {
            c.add(
                "log.level",
                format!(
                    "expected one of error, warn, info, debug, trace; got \"{}\"",
                    raw.log.level
                ),
            );
            LogLevel::Info
        });

        // Through `seconds` like the others: clamping kept a NaN, which
        // Duration::from_secs_f64 panicked on (a config problem became a
        // crash; found by config::robustness).
        let drain_timeout = c.seconds(
            "shutdown.drain_timeout_secs",
            raw.shutdown.drain_timeout_secs,
            0.0,
            3600.0,
        );
        let health_interval = c.seconds(
            "health.interval_secs",
            raw.health.interval_secs,
            0.05,
            86_400.0,
        );
        let stall_timeout = c.seconds(
            "health.stall_timeout_secs",
            raw.health.stall_timeout_secs,
            0.05,
            86_400.0,
        );
        let ack = match raw.delivery.ack.as_str() {
            "answered" => AckPolicy::Answered,
            "queued" => AckPolicy::Queued,
            other => {
                c.add(
                    "delivery.ack",
                    format!("expected \"answered\" or \"queued\", got \"{other}\""),
                );
                AckPolicy::Answered
            }
        };
        let state_dir = match raw.state_dir.as_deref().filter(|s| !s.is_empty()) {
            Some(p) => resolve(base, p),
            None => std::env::var_os("STATE_DIRECTORY")
                .filter(|v| !v.is_empty())
                // systemd may pass several, colon-separated; the first is ours.
                .and_then(|v| {
                    v.to_str()
                        .and_then(|s| s.split(':').next())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| PathBuf::from("/var/lib/edge-infer")),
        };

        let outbox = outbox_settings(&mut c, &raw.outbox);
        let metrics = raw
            .metrics
            .as_ref()
            .and_then(|m| metrics_settings(&mut c, m));

        if raw.models.is_empty() {
            c.add("models", "no [[models]] configured: nothing to serve");
        }
        let delegates = accel::delegates(&mut c, &raw.delegates, base);
        let mut models = Vec::new();
        for (i, rm) in raw.models.iter().enumerate() {
            if let Some(ms) = model_settings(&mut c, i, rm, base, &delegates) {
                models.push(ms);
            }
        }
        for (i, a) in models.iter().enumerate() {
            if models[..i].iter().any(|b| b.name == a.name) {
                c.add(
                    format!("{}.name", a.key),
                    format!(
                        "\"{}\" is used by another model; names must be unique",
                        a.name
                    ),
                );
            }
        }
        let homeassistant = homeassistant_settings(&mut c, &raw.homeassistant);
        check_feedback(&mut c, &models, &device_id);
        check_shared(&mut c, &models);
        if let Some(ha) = &homeassistant {
            check_homeassistant_topics(&mut c, &models, &device_id, ha);
        }
        let updates = raw
            .updates
            .as_ref()
            .and_then(|u| super::updates::update_settings(&mut c, u));
        if updates.is_some() {
            super::updates::check_topics(&mut c, &models, &device_id);
        }

        let runtime_library = raw
            .runtime
            .library
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|p| {
                // A bare file name is for the system linker path.
                if p.contains('/') {
                    resolve(base, p)
                } else {
                    PathBuf::from(p)
                }
            });

        if !c.problems.is_empty() {
            return Err(c.problems);
        }
        Ok(Settings {
            device_id,
            runtime_library,
            mqtt,
            uplink,
            max_payload_bytes,
            file_limits,
            log_level,
            drain_timeout,
            health_interval,
            stall_timeout,
            ack,
            state_dir,
            models,
            outbox,
            delegates,
            homeassistant,
            metrics,
            updates,
        })
    }
}

/// `[homeassistant]`: None unless enabled; the prefix must be a topic name
/// Home Assistant can subscribe under (`<prefix>/#`).
fn homeassistant_settings(
    c: &mut Check,
    raw: &super::raw::RawHomeAssistant,
) -> Option<HomeAssistantSettings> {
    let prefix = raw.prefix.as_str();
    let why = if prefix.is_empty() {
        Some("must not be empty".to_string())
    } else if prefix.contains(['+', '#', '\0']) {
        Some(format!(
            "is a topic prefix, so it cannot contain '+', '#' or NUL; got \"{prefix}\""
        ))
    } else if prefix.split('/').any(str::is_empty) {
        Some(format!(
            "expected topic levels separated by single '/' (no empty level, no leading or trailing '/'); got \"{prefix}\""
        ))
    } else {
        None
    };
    if let Some(why) = why {
        c.add("homeassistant.prefix", why);
        return None;
    }
    raw.enabled.then(|| HomeAssistantSettings {
        prefix: prefix.to_string(),
    })
}

/// With discovery on, the daemon subscribes to `<prefix>/status` and
/// publishes under `<prefix>/sensor/<node_id>/`: an input filter that takes
/// either would feed Home Assistant's announcements or the daemon's own
/// configs to a model.
fn check_homeassistant_topics(
    c: &mut Check,
    models: &[ModelSettings],
    device_id: &str,
    ha: &HomeAssistantSettings,
) {
    let status = topic::homeassistant_status_topic(&ha.prefix);
    // A config topic the daemon always publishes (the CPU entity).
    let config = topic::discovery_topic(
        &ha.prefix,
        "sensor",
        &topic::homeassistant_id(device_id),
        "cpu",
    );
    for m in models {
        let filter = &m.input_topic;
        for (what, t) in [
            ("Home Assistant's status topic", &status),
            (
                "a Home Assistant discovery config this daemon publishes",
                &config,
            ),
        ] {
            if filter.matches(t).is_some() {
                c.add(
                    format!("{}.input_topic", m.key),
                    format!("\"{filter}\" matches \"{t}\", {what} ([homeassistant] prefix = \"{}\"); it is not an input for a model", ha.prefix),
                );
            }
        }
    }
}

/// `[metrics]`, or None when `enabled = false`. The address is an IP and a
/// port, not a host name: it is bound once at startup, without a resolver.
fn metrics_settings(c: &mut Check, raw: &RawMetrics) -> Option<MetricsSettings> {
    if !raw.enabled {
        return None;
    }
    match raw.listen.trim().parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() == 0 => {
            c.add(
                "metrics.listen",
                format!(
                    "needs a port other than 0 (Prometheus must know where to scrape), got \"{}\"",
                    raw.listen
                ),
            );
            None
        }
        Ok(listen) => Some(MetricsSettings { listen }),
        Err(_) => {
            c.add(
                "metrics.listen",
                format!(
                    "expected an IP address and port such as \"127.0.0.1:9464\" or \"[::1]:9464\", got \"{}\"",
                    raw.listen
                ),
            );
            None
        }
    }
}

/// `[outbox]`: where results that cannot be published wait, on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxSettings {
    /// Bytes all segment files may take together; 0: no outbox (results
    /// that cannot be published wait in memory only).
    pub max_bytes: u64,
    /// Records older than this (by their creation time) are dropped unsent.
    pub max_age: Duration,
    pub on_full: OnFull,
}

impl OutboxSettings {
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// The outbox directory inside the state directory.
    pub fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("outbox")
    }
}

/// What a full outbox does with a new record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Whole oldest segments are deleted until the new record fits: fresh
    /// results win.
    DropOldest,
    /// The new record is refused; what is stored stays.
    RejectNew,
}

impl OnFull {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::DropOldest => "drop_oldest",
            OnFull::RejectNew => "reject_new",
        }
    }
}

/// Smallest non-zero `outbox.max_bytes`: 16 segments of the smallest size
/// (64 KiB), so dropping the oldest segment never costs more than 1/16.
pub const OUTBOX_MIN_BYTES: i64 = 1024 * 1024;
/// Largest `outbox.max_bytes`: 1 TiB.
const OUTBOX_MAX_BYTES: i64 = 1 << 40;

fn outbox_settings(c: &mut Check, raw: &RawOutbox) -> OutboxSettings {
    let max_bytes = match raw.max_bytes {
        0 => 0,
        n if (OUTBOX_MIN_BYTES..=OUTBOX_MAX_BYTES).contains(&n) => n as u64,
        n => {
            c.add(
                "outbox.max_bytes",
                format!("must be 0 (no outbox) or between {OUTBOX_MIN_BYTES} (1 MiB) and {OUTBOX_MAX_BYTES} (1 TiB), got {n}"),
            );
            0
        }
    };
    let max_age_secs = c.range("outbox.max_age_secs", raw.max_age_secs, 1, 315_360_000) as u64;
    let on_full = match raw.on_full.as_str() {
        "drop_oldest" => OnFull::DropOldest,
        "reject_new" => OnFull::RejectNew,
        other => {
            c.add(
                "outbox.on_full",
                format!("expected \"drop_oldest\" or \"reject_new\", got \"{other}\""),
            );
            OnFull::DropOldest
        }
    };
    OutboxSettings {
        max_bytes,
        max_age: Duration::from_secs(max_age_secs),
        on_full,
    }
}

/// The client id `[uplink]` defaults to: the `[mqtt]` one with this suffix
/// (what the output connection used before `[uplink]` existed).
pub const UPLINK_CLIENT_SUFFIX: &str = "-out";

/// One broker connection's table (`table` is "mqtt" or "uplink"): both are
/// checked by this one function, so they cannot drift apart. `[mqtt]` host
/// defaults to 127.0.0.1; `[uplink]` must name its broker.
fn mqtt_settings(
    c: &mut Check,
    table: &str,
    m: &RawMqtt,
    base: &Path,
    default_client_id: String,
) -> MqttSettings {
    let key = |k: &str| format!("{table}.{k}");
    let host = match (m.host.as_deref().map(str::trim), table) {
        (Some(""), _) => {
            c.add(key("host"), "must not be empty");
            String::new()
        }
        (Some(h), _) => h.to_string(),
        (None, "mqtt") => "127.0.0.1".to_string(),
        (None, _) => {
            c.add(
                key("host"),
                format!("is required: [{table}] names the broker results go to"),
            );
            String::new()
        }
    };
    // 8883 is MQTT over TLS's registered port: a TLS client should not
    // default to the plaintext one.
    let default_port = if m.tls { 8883 } else { 1883 };
    let port = c.range(&key("port"), m.port.unwrap_or(default_port), 1, 65535) as u16;
    let client_id = m.client_id.clone().unwrap_or(default_client_id);
    if client_id.is_empty() || client_id.len() > 65535 {
        c.add(key("client_id"), "must be 1 to 65535 bytes");
    }
    let keep_alive = c.range(&key("keep_alive_secs"), m.keep_alive_secs, 5, 65535) as u64;
    let qos = c.range(&key("qos"), m.qos, 0, 1) as u8;
    let reconnect_min = c.range(&key("reconnect_min_ms"), m.reconnect_min_ms, 10, 600_000) as u64;
    let reconnect_max = c.range(&key("reconnect_max_secs"), m.reconnect_max_secs, 1, 3600) as u64;
    let max_packet_bytes = c.range(
        &key("max_packet_bytes"),
        m.max_packet_bytes,
        1024,
        268_435_455,
    ) as usize;
    // Below a page or two the kernel rounds it up anyway; 0 leaves it to
    // the kernel's autotuning.
    let receive_buffer_bytes = match m.receive_buffer_bytes {
        0 => None,
        v if (4096..=64 << 20).contains(&v) => Some(v as u32),
        v => {
            c.add(
                key("receive_buffer_bytes"),
                format!(
                    "must be 0 (the kernel's autotuned buffer) or between 4096 and {}, got {v}",
                    64 << 20
                ),
            );
            None
        }
    };
    let credentials = match (&m.username, &m.password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (Some(u), None) => Some((u.clone(), String::new())),
        (None, Some(_)) => {
            c.add(
                key("password"),
                format!("is set but {table}.username is not"),
            );
            None
        }
        (None, None) => None,
    };
    let tls = tls::tls_settings(c, table, m, base);
    let protocol = protocol(c, table, m);
    MqttSettings {
        host,
        port,
        client_id,
        keep_alive: Duration::from_secs(keep_alive),
        clean_session: m.clean_session,
        qos,
        reconnect_min: Duration::from_millis(reconnect_min),
        reconnect_max: Duration::from_secs(reconnect_max),
        max_packet_bytes,
        receive_buffer_bytes,
        credentials,
        tls,
        protocol,
    }
}

/// `protocol` and the MQTT 5 keys of one broker table; those keys with
/// 3.1.1 are a problem (they would silently do nothing).
fn protocol(c: &mut Check, table: &str, m: &RawMqtt) -> Protocol {
    let key = |k: &str| format!("{table}.{k}");
    match m.protocol.trim() {
        "5" => {
            let default_expiry = if m.clean_session {
                0
            } else {
                i64::from(DEFAULT_SESSION_EXPIRY_SECS)
            };
            let session_expiry_secs = c.range(
                &key("session_expiry_secs"),
                m.session_expiry_secs.unwrap_or(default_expiry),
                0,
                i64::from(u32::MAX),
            ) as u32;
            let receive_maximum = c.range(
                &key("receive_maximum"),
                m.receive_maximum
                    .unwrap_or(i64::from(DEFAULT_RECEIVE_MAXIMUM)),
                1,
                65535,
            ) as u16;
            Protocol::V5 {
                session_expiry_secs,
                receive_maximum,
            }
        }
        "3.1.1" => {
            for (k, set) in [
                ("session_expiry_secs", m.session_expiry_secs.is_some()),
                ("receive_maximum", m.receive_maximum.is_some()),
            ] {
                if set {
                    c.add(
                        key(k),
                        format!(
                            "is an MQTT 5 setting, and {table}.protocol is \"{}\"; set protocol = \"5\" or remove it",
                            m.protocol.trim()
                        ),
                    );
                }
            }
            Protocol::V311
        }
        other => {
            c.add(
                key("protocol"),
                format!("must be \"3.1.1\" or \"5\", got \"{other}\""),
            );
            Protocol::V311
        }
    }
}

/// Refuses every input topic that can match a topic the daemon itself
/// publishes: its device topics (errors, status, health) and every model's
/// results, its own included. The daemon would answer its own output, and
/// answer that answer: `input_topic = "+/+/+"` once took 196,000 of its
/// own errors in 10 s. Exact (see `TopicFilter::overlap`), so what cannot
/// loop passes.
fn check_feedback(c: &mut Check, models: &[ModelSettings], device_id: &str) {
    for consumer in models {
        let filter = &consumer.input_topic;
        let own: Vec<(&str, String)> = topic::device_topics(device_id)
            .into_iter()
            .filter(|(_, t)| filter.matches(t).is_some())
            .collect();
        if let Some(((name, first), rest)) = own.split_first() {
            let also = match rest {
                [] => String::new(),
                [(a, _)] => format!("; also its {a} topic"),
                [(a, _), (b, _)] => format!("; also its {a} and {b} topics"),
                _ => "; also others of its own".into(),
            };
            c.add(
                format!("{}.input_topic", consumer.key),
                format!("\"{filter}\" matches \"{first}\", which this daemon publishes (its {name} topic{also}); the daemon would answer its own output"),
            );
        }
        for producer in models {
            let pattern =
                producer
                    .output_topic
                    .pattern(&producer.input_topic, device_id, &producer.name);
            let Some(example) = filter.overlap(&pattern) else {
                continue;
            };
            if producer.key == consumer.key {
                c.add(
                    format!("{}.output_topic", consumer.key),
                    format!("results on topics such as \"{example}\" would match input_topic \"{filter}\" and loop back into the model"),
                );
            } else {
                c.add(
                    format!("{}.input_topic", consumer.key),
                    format!(
                        "\"{filter}\" can match what {}.output_topic (\"{}\") publishes, e.g. \"{example}\"; the daemon would consume its own results",
                        producer.key,
                        producer.output_topic.as_str()
                    ),
                );
            }
        }
    }
}

/// Refuses two different input topics that can match one message when
/// either is a shared subscription. The broker delivers such a message
/// once per subscription, each copy to its own member of a group (or,
/// for a plain subscription, to this daemon); the copies cannot be told
/// apart, so every daemon that gets one would answer it for all matching
/// models. Models that serve one stream together use one input topic,
/// which is one subscription.
fn check_shared(c: &mut Check, models: &[ModelSettings]) {
    for (j, later) in models.iter().enumerate() {
        for earlier in &models[..j] {
            let (a, b) = (&earlier.input_topic, &later.input_topic);
            if a.as_str() == b.as_str() || (a.share_group().is_none() && b.share_group().is_none())
            {
                continue;
            }
            if let Some(example) = a.intersection(b) {
                c.add(
                    format!("{}.input_topic", later.key),
                    format!(
                        "\"{b}\" and {}.input_topic \"{a}\" both match topics such as \"{example}\", and one is a shared subscription: the broker would deliver such a message once for each, to different daemons, and each would answer it; models that serve one stream together need the same input_topic",
                        earlier.key
                    ),
                );
                break;
            }
        }
    }
}

fn model_settings(
    c: &mut Check,
    i: usize,
    rm: &RawModel,
    base: &Path,
    delegates: &BTreeMap<String, DelegateSpec>,
) -> Option<ModelSettings> {
    let key = format!("models[{i}]");
    let k = |field: &str| format!("{key}.{field}");
    let before = c.problems.len();
    check_level(c, &k("name"), &rm.name);
    if rm.path.is_empty() {
        c.add(k("path"), "must not be empty");
    }
    let version = rm
        .version
        .clone()
        .filter(|v| match super::Version::parse(v) {
            Ok(_) => true,
            Err(e) => {
                c.add(k("version"), e);
                false
            }
        });
    let input_topic = match TopicFilter::parse(&rm.input_topic) {
        Ok(f) => Some(f),
        Err(e) => {
            c.add(k("input_topic"), e);
            None
        }
    };
    let output_topic =
        input_topic
            .as_ref()
            .and_then(|f| match TopicTemplate::parse(&rm.output_topic, f) {
                Ok(t) => Some(t),
                Err(e) => {
                    c.add(k("output_topic"), e);
                    None
                }
            });
    let top_k = match rm.top_k {
        None => None,
        Some(n) if (1..=1000).contains(&n) => Some(n as usize),
        Some(n) => {
            c.add(k("top_k"), format!("must be between 1 and 1000, got {n}"));
            None
        }
    };
    let payload = match rm.payload.as_str() {
        "json" => PayloadFormat::Json,
        "raw" => PayloadFormat::Raw,
        "image" => PayloadFormat::Image,
        other => {
            c.add(
                k("payload"),
                format!("expected \"json\", \"raw\" or \"image\", got \"{other}\""),
            );
            PayloadFormat::Json
        }
    };
    let overflow = match rm.overflow.as_str() {
        "reject_new" => OverflowPolicy::RejectNew,
        "drop_oldest" => OverflowPolicy::DropOldest,
        other => {
            c.add(
                k("overflow"),
                format!("expected \"reject_new\" or \"drop_oldest\", got \"{other}\""),
            );
            OverflowPolicy::RejectNew
        }
    };
    let worker_priority = match rm.worker_priority.as_str() {
        "auto" => WorkerPriority::Auto,
        "normal" => WorkerPriority::Normal,
        "background" => WorkerPriority::Background,
        other => {
            c.add(
                k("worker_priority"),
                format!("expected \"auto\", \"normal\" or \"background\", got \"{other}\""),
            );
            WorkerPriority::Auto
        }
    };
    let queue_capacity = c.range(&k("queue_capacity"), rm.queue_capacity, 1, 1_000_000) as usize;
    let queue_max_bytes = rm
        .queue_max_bytes
        .map(|v| c.range(&k("queue_max_bytes"), v, 1024, 1 << 40) as usize);
    let workers = c.range(&k("workers"), rm.workers, 1, 64) as usize;
    let threads = c.range(&k("threads"), rm.threads, 1, 64) as u32;
    let batch = c.range(&k("batch"), rm.batch, 1, 4096) as u32;
    let max_batch = c.range(&k("max_batch"), rm.max_batch, 1, MAX_BATCH_LIMIT) as usize;
    let max_delay_us = c.range(&k("max_delay_us"), rm.max_delay_us, 0, MAX_DELAY_US_LIMIT) as u64;
    if max_batch > 1 && batch != 1 {
        // `batch` makes one message fill every row; `max_batch` gives each
        // message one row. Both at once would need messages of several rows.
        c.add(
            k("max_batch"),
            format!(
                "is {max_batch}, but batch is {batch}: batch = N makes one message fill N rows, max_batch gives each message one row of a batch; set one of them (leave batch at 1 to micro-batch)"
            ),
        );
    }
    let (window, input, image) =
        preprocessing(c, &key, rm, payload, max_batch, input_topic.as_ref());
    let accel = accel::accel_settings(c, &key, rm, delegates, base);
    if c.problems.len() != before {
        return None;
    }
    Some(ModelSettings {
        name: rm.name.clone(),
        path: resolve(base, &rm.path),
        input_topic: input_topic?,
        output_topic: output_topic?,
        labels: rm.labels.as_deref().map(|p| resolve(base, p)),
        top_k,
        payload,
        queue_capacity,
        queue_max_bytes,
        overflow,
        workers,
        threads,
        share_engine: rm.share_engine,
        worker_priority,
        batch,
        max_batch,
        max_delay: Duration::from_micros(max_delay_us),
        window,
        input,
        image,
        accel,
        version,
        key,
    })
}

/// `[models.window]`, `[models.input]` and `[models.image]`, and which of
/// them go together (what fits the input's shape is checked at load).
fn preprocessing(
    c: &mut Check,
    key: &str,
    rm: &RawModel,
    payload: PayloadFormat,
    max_batch: usize,
    filter: Option<&TopicFilter>,
) -> (Option<WindowSettings>, InputSettings, Option<ImageSettings>) {
    let window = rm
        .window
        .as_ref()
        .and_then(|w| preprocess::window_settings(c, &format!("{key}.window"), w, filter));
    let input = rm.input.as_ref().map_or_else(InputSettings::default, |i| {
        preprocess::input_settings(c, &format!("{key}.input"), i)
    });
    let image = rm
        .image
        .as_ref()
        .map(|i| preprocess::image_settings(c, &format!("{key}.image"), i));
    let takes_images = image.is_some() || payload == PayloadFormat::Image;
    let payload_name = payload.as_str();
    if rm.window.is_some() {
        if payload != PayloadFormat::Json {
            c.add(
                format!("{key}.window"),
                format!("readings are JSON: a windowed model needs payload = \"json\", got \"{payload_name}\""),
            );
        }
        if max_batch > 1 {
            c.add(
                format!("{key}.max_batch"),
                format!("is {max_batch}, but the model has [models.window]: windows complete one at a time; remove max_batch"),
            );
        }
        if !input.fields.is_empty() {
            c.add(
                format!("{key}.input.fields"),
                "a windowed model takes the fields of each reading from [models.window] fields; remove input.fields",
            );
        }
        if rm.image.is_some() {
            c.add(
                format!("{key}.image"),
                "a model takes either readings ([models.window]) or images ([models.image]), not both",
            );
        }
    }
    if payload != PayloadFormat::Json && !input.fields.is_empty() {
        c.add(
            format!("{key}.input.fields"),
            format!("named fields are JSON: they need payload = \"json\", got \"{payload_name}\""),
        );
    }
    if payload == PayloadFormat::Raw && (input.normalize.is_some() || rm.image.is_some()) {
        let what = if rm.image.is_some() {
            "image"
        } else {
            "input.mean"
        };
        c.add(
            format!("{key}.{what}"),
            "raw payloads are the input tensors' bytes, already quantized: there is nothing to normalize or decode; use payload = \"json\" or \"image\"",
        );
    }
    if takes_images && input.normalize.is_some() {
        c.add(
            format!("{key}.input.mean"),
            "an image model normalizes pixels with [models.image] mean and std; remove [models.input] mean/std",
        );
    }
    if takes_images && !input.fields.is_empty() && rm.window.is_none() {
        c.add(
            format!("{key}.input.fields"),
            "an image model takes its input from the image; remove input.fields",
        );
    }
    (window, input, image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawConfig {
        let cfg = config::Config::builder()
            .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
            .build()
            .unwrap();
        cfg.try_deserialize().unwrap()
    }

    const GOOD: &str = r#"
        device_id = "gw1"
        [mqtt]
        port = 1884
        [[models]]
        name = "har"
        path = "har.tflite"
        input_topic = "sensors/+/accel"
        output_topic = "results/{device_id}/{1}/{model}"
    "#;

    #[test]
    fn good_config_resolves_paths_and_defaults() {
        let s = Settings::from_raw(raw(GOOD), Path::new("/etc/edge-infer")).unwrap();
        assert_eq!(s.device_id, "gw1");
        assert_eq!(s.mqtt.port, 1884);
        assert_eq!(s.mqtt.client_id, "edge-infer-gw1");
        assert_eq!(
            s.models[0].path,
            PathBuf::from("/etc/edge-infer/har.tflite")
        );
        assert_eq!(s.models[0].overflow, OverflowPolicy::RejectNew);
        assert_eq!(s.models[0].worker_priority, WorkerPriority::Auto);
        assert_eq!(s.max_payload_bytes, 1024 * 1024);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            device_id = "a/b"
            [mqtt]
            port = 70000
            qos = 2
            [[models]]
            name = "m"
            path = "m.tflite"
            input_topic = "a/#/b"
            [[models]]
            name = "n"
            path = "n.tflite"
            input_topic = "x/+"
            output_topic = "y/{3}"
            payload = "xml"
            overflow = "block"
            worker_priority = "low"
        "#;
        let problems = Settings::from_raw(raw(text), Path::new("/")).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "device_id",
            "mqtt.port",
            "mqtt.qos",
            "models[0].input_topic",
            "models[1].output_topic",
            "models[1].payload",
            "models[1].overflow",
            "models[1].worker_priority",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
        let port = problems.iter().find(|p| p.key == "mqtt.port").unwrap();
        assert!(port.message.contains("70000"));
        let priority = problems
            .iter()
            .find(|p| p.key == "models[1].worker_priority")
            .unwrap();
        assert_eq!(
            priority.message,
            "expected \"auto\", \"normal\" or \"background\", got \"low\""
        );
    }

    #[test]
    fn home_assistant_discovery_is_off_by_default_and_its_topics_are_kept_from_models() {
        let model = "[[models]]\nname = \"m\"\npath = \"m.tflite\"\ninput_topic = \"sensors/+\"\n";
        let s = Settings::from_raw(raw(model), Path::new("/")).unwrap();
        assert_eq!(s.homeassistant, None);
        let on = format!("device_id = \"gw.7\"\n[homeassistant]\nenabled = true\n{model}");
        let s = Settings::from_raw(raw(&on), Path::new("/")).unwrap();
        assert_eq!(
            s.homeassistant,
            Some(HomeAssistantSettings {
                prefix: "homeassistant".into()
            })
        );
        for (prefix, why) in [
            ("", "must not be empty"),
            ("ha/#", "cannot contain"),
            ("ha/+/x", "cannot contain"),
            ("/ha", "no empty level"),
            ("ha/", "no empty level"),
        ] {
            let text = format!("[homeassistant]\nprefix = \"{prefix}\"\n{model}");
            let problems = Settings::from_raw(raw(&text), Path::new("/")).unwrap_err();
            assert_eq!(problems[0].key, "homeassistant.prefix", "{problems:?}");
            assert!(problems[0].message.contains(why), "{prefix}: {problems:?}");
        }
        // A model on Home Assistant's status topic or the daemon's configs.
        for (filter, taken) in [
            ("homeassistant/status", "homeassistant/status"),
            ("homeassistant/+", "homeassistant/status"),
            ("homeassistant/sensor/#", "homeassistant/sensor/gw_7_"),
        ] {
            let text = on.replace("sensors/+", filter);
            let problems = Settings::from_raw(raw(&text), Path::new("/")).unwrap_err();
            assert_eq!(problems[0].key, "models[0].input_topic", "{problems:?}");
            assert!(problems[0].message.contains(taken), "{problems:?}");
        }
        // Off, the same filter is fine.
        let off = on
            .replace("enabled = true", "enabled = false")
            .replace("sensors/+", "homeassistant/+");
        assert!(Settings::from_raw(raw(&off), Path::new("/")).is_ok());
    }

    #[test]
    fn feedback_loops_are_rejected() {
        let text = r#"
            device_id = "gw"
            [[models]]
            name = "m"
            path = "m.tflite"
            input_topic = "sensors/#"
            output_topic = "sensors/{model}/out"
        "#;
        let problems = Settings::from_raw(raw(text), Path::new("/")).unwrap_err();
        assert!(problems[0].message.contains("loop back"), "{problems:?}");
    }

    /// The problems of a config on device "gw-7" with one model per
    /// (input_topic, output_topic) pair (`None`: the default output).
    fn topic_problems(models: &[(&str, Option<&str>)]) -> Vec<Problem> {
        let mut text = String::from("device_id = \"gw-7\"\n");
        for (i, (input, output)) in models.iter().enumerate() {
            text.push_str(&format!(
                "[[models]]\nname = \"m{i}\"\npath = \"m.tflite\"\ninput_topic = \"{input}\"\n"
            ));
            if let Some(o) = output {
                text.push_str(&format!("output_topic = \"{o}\"\n"));
            }
        }
        match Settings::from_raw(raw(&text), Path::new("/")) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    #[test]
    fn input_topics_that_take_the_daemons_own_topics_are_rejected() {
        let problems = topic_problems(&[("+/+/+", Some("results/{1}"))]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "models[0].input_topic: \"+/+/+\" matches \"edge-infer/gw-7/errors\", which this daemon publishes (its errors topic; also its status and health topics); the daemon would answer its own output"
        );
        let problems = topic_problems(&[("edge-infer/gw-7/health", Some("results/x"))]);
        assert!(
            problems[0].message.contains("(its health topic)"),
            "{problems:?}"
        );
        // "edge-infer/#" also takes its own results: both are said.
        let problems = topic_problems(&[("edge-infer/#", None)]);
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with(
                "models[0].input_topic: \"edge-infer/#\" matches \"edge-infer/gw-7/errors\""
            ),
            "{text:?}"
        );
        assert_eq!(
            text[1],
            "models[0].output_topic: results on topics such as \"edge-infer/gw-7/m0/result\" would match input_topic \"edge-infer/#\" and loop back into the model"
        );
        assert!(!topic_problems(&[("#", Some("out"))]).is_empty());
        // Another device's topics are not this daemon's output.
        assert!(topic_problems(&[("edge-infer/gw-8/errors", None)]).is_empty());
    }

    #[test]
    fn input_topics_that_take_another_models_results_are_rejected() {
        let problems = topic_problems(&[
            ("sensors/+/accel", Some("out/{1}")),
            ("out/+", Some("final/{1}")),
        ]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "models[1].input_topic: \"out/+\" can match what models[0].output_topic (\"out/{1}\") publishes, e.g. \"out/x\"; the daemon would consume its own results"
        );
        // Each way round.
        let problems = topic_problems(&[("a/#", Some("b/{#}")), ("b/#", Some("a/{#}"))]);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["models[0].input_topic", "models[1].input_topic"]);
    }

    #[test]
    fn shared_subscriptions_that_would_answer_twice_are_rejected() {
        let problems = topic_problems(&[
            ("$share/g/sensors/+/accel", Some("out/{1}/a")),
            ("sensors/#", Some("out/{#}/b")),
        ]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "models[1].input_topic: \"sensors/#\" and models[0].input_topic \"$share/g/sensors/+/accel\" both match topics such as \"sensors/x/accel\", and one is a shared subscription: the broker would deliver such a message once for each, to different daemons, and each would answer it; models that serve one stream together need the same input_topic"
        );
        // Two groups, or the same filter shared and not: still two copies.
        assert_eq!(
            topic_problems(&[
                ("$share/a/s/+", Some("o/{1}/a")),
                ("$share/b/s/+", Some("o/{1}/b"))
            ])
            .len(),
            1
        );
        assert_eq!(
            topic_problems(&[("$share/a/s/+", Some("o/{1}/a")), ("s/+", Some("o/{1}/b"))]).len(),
            1
        );
        // One shared subscription for two models, disjoint filters, and
        // plain overlapping filters (one copy per client) all pass.
        for models in [
            vec![
                ("$share/g/s/+", Some("o/{1}/a")),
                ("$share/g/s/+", Some("o/{1}/b")),
            ],
            vec![
                ("$share/g/s/+/accel", Some("o/{1}/a")),
                ("$share/g/s/+/gyro", Some("o/{1}/b")),
            ],
            vec![("s/+", Some("o/{1}/a")), ("s/#", Some("o/{#}/b"))],
        ] {
            assert_eq!(topic_problems(&models), [], "{models:?}");
        }
    }

    #[test]
    fn shared_subscriptions_are_checked_without_their_prefix() {
        // The feedback check and templates see the filter part.
        let problems = topic_problems(&[("$share/g/edge-infer/#", None)]);
        assert!(
            problems[0]
                .to_string()
                .starts_with("models[0].input_topic: \"$share/g/edge-infer/#\" matches \"edge-infer/gw-7/errors\""),
            "{problems:?}"
        );
        assert_eq!(
            topic_problems(&[("$share/g/sensors/+/accel", Some("results/{1}"))]),
            []
        );
        let problems = topic_problems(&[("$share/g/sensors/+", Some("results/{2}"))]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "models[0].output_topic");
        let problems = topic_problems(&[("$share/g", None)]);
        assert_eq!(
            problems[0].to_string(),
            "models[0].input_topic: shared subscription \"$share/g\" has no topic filter after its group name (expected \"$share/GROUP/FILTER\", e.g. \"$share/gateways/sensors/+/accel\")"
        );
    }

    #[test]
    fn topics_that_cannot_feed_back_pass() {
        for models in [
            vec![("sensors/+/accel", Some("results/{1}"))],
            vec![("sensors/+/accel", None)],
            vec![("sensors/#", Some("edge-infer/{device_id}/{#}"))],
            vec![
                ("sensors/+/accel", Some("results/{1}/accel")),
                ("sensors/+/gyro", Some("results/{1}/gyro")),
            ],
            vec![("edge-infer/gw-7/+/in", None)],
            vec![("in/+", Some("out/{1}")), ("out/+/x", None)],
        ] {
            assert_eq!(topic_problems(&models), [], "{models:?}");
        }
    }

    #[test]
    fn file_limits_have_defaults_and_bounds() {
        let s = Settings::from_raw(raw(GOOD), Path::new("/")).unwrap();
        assert_eq!(s.file_limits, FileLimits::default());
        assert_eq!(s.file_limits.max_model_bytes, 512 * 1024 * 1024);
        assert_eq!(s.file_limits.max_labels_bytes, 1024 * 1024);
        let text = format!("{GOOD}\n[limits]\nmax_model_bytes = 1048576\nmax_labels_bytes = 100\n");
        let s = Settings::from_raw(raw(&text), Path::new("/")).unwrap();
        assert_eq!(s.file_limits.max_model_bytes, 1048576);
        assert_eq!(s.file_limits.max_labels_bytes, 100);
        let text = format!("{GOOD}\n[limits]\nmax_model_bytes = 1000\nmax_labels_bytes = 0\n");
        let problems = refusals(&text);
        assert_eq!(
            problems,
            [
                "limits.max_model_bytes: must be between 1024 and 2147483648, got 1000",
                "limits.max_labels_bytes: must be between 1 and 67108864, got 0",
            ]
        );
    }

    #[test]
    fn the_password_is_not_in_the_debug_output() {
        let text = format!("{GOOD}\n[mqtt]\nusername = \"u\"\npassword = \"hunter2-secret\"\n");
        let text = text.replacen("[mqtt]\n        port = 1884\n", "", 1);
        let s = Settings::from_raw(raw(&text), Path::new("/")).unwrap();
        assert_eq!(
            s.mqtt.credentials,
            Some(("u".to_string(), "hunter2-secret".to_string()))
        );
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.contains("credentials: Some((\"u\", \"***\"))"),
            "{debug}"
        );
    }

    #[test]
    fn the_uplink_is_optional_and_checked_like_mqtt() {
        let s = Settings::from_raw(raw(GOOD), Path::new("/")).unwrap();
        assert!(s.uplink.is_none());
        assert_eq!(s.mqtt.url(), "mqtt://127.0.0.1:1884");

        let text = format!("{GOOD}\n[uplink]\nhost = \"cloud.example\"\nusername = \"u\"\npassword = \"uplink-secret\"\n");
        let s = Settings::from_raw(raw(&text), Path::new("/")).unwrap();
        let u = s.uplink.as_ref().unwrap();
        assert_eq!(u.url(), "mqtt://cloud.example:1883");
        assert_eq!(u.client_id, "edge-infer-gw1-out");
        assert!(!format!("{s:?}").contains("uplink-secret"));

        let text = format!("{GOOD}\n[uplink]\nport = 0\nqos = 3\npassword = \"p\"\n");
        let problems = refusals(&text);
        assert_eq!(
            problems,
            [
                "uplink.host: is required: [uplink] names the broker results go to",
                "uplink.port: must be between 1 and 65535, got 0",
                "uplink.qos: must be between 0 and 1, got 3",
                "uplink.password: is set but uplink.username is not",
            ]
        );
    }

    #[test]
    fn certificate_files_need_tls() {
        let text = GOOD.replace(
            "port = 1884\n",
            "port = 1884\nca_file = \"ca.pem\"\nclient_key_file = \"k.pem\"\n",
        );
        let problems = refusals(&text);
        assert_eq!(
            problems,
            [
                "mqtt.ca_file: is set, but [mqtt] tls is not: certificates are only used over TLS; add `tls = true` to [mqtt]",
                "mqtt.client_key_file: is set, but [mqtt] tls is not: certificates are only used over TLS; add `tls = true` to [mqtt]",
            ]
        );
    }

    #[test]
    fn protocol_5_has_its_session_keys_and_3_1_1_refuses_them() {
        let s = Settings::from_raw(raw(GOOD), Path::new("/")).unwrap();
        assert_eq!(s.mqtt.protocol, Protocol::V311);
        let v5 = |extra: &str| {
            let text = GOOD.replace(
                "port = 1884\n",
                &format!("port = 1884\nprotocol = \"5\"\n{extra}"),
            );
            Settings::from_raw(raw(&text), Path::new("/")).map(|s| s.mqtt.protocol)
        };
        assert_eq!(
            v5("").unwrap(),
            Protocol::V5 {
                session_expiry_secs: DEFAULT_SESSION_EXPIRY_SECS,
                receive_maximum: DEFAULT_RECEIVE_MAXIMUM
            }
        );
        assert_eq!(
            v5("clean_session = true\n").unwrap(),
            Protocol::V5 {
                session_expiry_secs: 0,
                receive_maximum: DEFAULT_RECEIVE_MAXIMUM
            }
        );
        assert_eq!(
            v5("session_expiry_secs = 60\nreceive_maximum = 65535\n").unwrap(),
            Protocol::V5 {
                session_expiry_secs: 60,
                receive_maximum: 65535
            }
        );
        let text = GOOD.replace("port = 1884\n", "port = 1884\nsession_expiry_secs = 60\n");
        let problems = refusals(&text);
        assert_eq!(
            problems,
            ["mqtt.session_expiry_secs: is an MQTT 5 setting, and mqtt.protocol is \"3.1.1\"; set protocol = \"5\" or remove it"]
        );
    }

    #[test]
    fn the_receive_buffer_defaults_to_256_kib_and_0_leaves_it_to_the_kernel() {
        let with = |extra: &str| GOOD.replace("port = 1884\n", &format!("port = 1884\n{extra}"));
        let receive_buffer = |extra: &str| {
            Settings::from_raw(raw(&with(extra)), Path::new("/"))
                .unwrap()
                .mqtt
                .receive_buffer_bytes
        };
        assert_eq!(receive_buffer(""), Some(256 * 1024));
        assert_eq!(receive_buffer("receive_buffer_bytes = 0\n"), None);
        assert_eq!(receive_buffer("receive_buffer_bytes = 4096\n"), Some(4096));
        for bad in ["100", "-1", "67108865"] {
            assert_eq!(
                refusals(&with(&format!("receive_buffer_bytes = {bad}\n"))),
                [format!("mqtt.receive_buffer_bytes: must be 0 (the kernel's autotuned buffer) or between 4096 and 67108864, got {bad}")]
            );
        }
    }

    /// The problems a config is refused with, as the user reads them.
    fn refusals(text: &str) -> Vec<String> {
        Settings::from_raw(raw(text), Path::new("/"))
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    /// A CA certificate in PEM, made here.
    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn tls_defaults_to_port_8883_and_a_replaced_ca_file_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_pem("one")).unwrap();
        let text = GOOD.replace("port = 1884\n", "tls = true\nca_file = \"ca.pem\"\n");
        let a = Settings::from_raw(raw(&text), dir.path()).unwrap();
        assert_eq!(a.mqtt.url(), "mqtts://127.0.0.1:8883");
        let tls = a.mqtt.tls.as_ref().unwrap();
        assert_eq!(
            tls.describe(),
            format!(
                "verified against ca_file {} (1 certificate), no client certificate",
                dir.path().join("ca.pem").display()
            )
        );
        let again = Settings::from_raw(raw(&text), dir.path()).unwrap();
        assert_eq!(a.mqtt, again.mqtt);
        // Same path, another CA: a reload must see a broker change.
        std::fs::write(dir.path().join("ca.pem"), ca_pem("two")).unwrap();
        let replaced = Settings::from_raw(raw(&text), dir.path()).unwrap();
        assert_ne!(a.mqtt, replaced.mqtt);
        // An explicit port stays.
        let text = text.replace("tls = true\n", "tls = true\nport = 1884\n");
        let s = Settings::from_raw(raw(&text), dir.path()).unwrap();
        assert_eq!(s.mqtt.port, 1884);
    }

    #[test]
    fn micro_batching_is_off_by_default_and_checked() {
        let s = Settings::from_raw(raw(GOOD), Path::new("/")).unwrap();
        assert_eq!(s.models[0].max_batch, 1);
        assert_eq!(s.models[0].max_delay, Duration::ZERO);
        assert_eq!(s.models[0].engine_batch(), 1);

        let on = GOOD.to_string() + "max_batch = 8\nmax_delay_us = 700\n";
        let s = Settings::from_raw(raw(&on), Path::new("/")).unwrap();
        assert_eq!(s.models[0].max_batch, 8);
        assert_eq!(s.models[0].max_delay, Duration::from_micros(700));
        assert_eq!(s.models[0].engine_batch(), 8);

        let bad = GOOD.to_string() + "max_batch = 257\nmax_delay_us = 100001\n";
        let problems = Settings::from_raw(raw(&bad), Path::new("/")).unwrap_err();
        let messages: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            messages,
            [
                "models[0].max_batch: must be between 1 and 256, got 257",
                "models[0].max_delay_us: must be between 0 and 100000, got 100001",
            ]
        );

        let both = GOOD.to_string() + "max_batch = 8\nbatch = 2\n";
        let problems = Settings::from_raw(raw(&both), Path::new("/")).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "models[0].max_batch");
        assert!(problems[0].message.contains("batch is 2"), "{problems:?}");
    }

    #[test]
    fn metrics_are_off_without_the_section_and_on_with_it() {
        let s = Settings::from_raw(raw(GOOD), Path::new("/")).unwrap();
        assert_eq!(s.metrics, None);
        // The section alone turns the endpoint on, at the default address.
        let on = format!("{GOOD}\n[metrics]\n");
        let s = Settings::from_raw(raw(&on), Path::new("/")).unwrap();
        assert_eq!(
            s.metrics.map(|m| m.listen.to_string()).as_deref(),
            Some("127.0.0.1:9464")
        );
        let v6 = format!("{GOOD}\n[metrics]\nlisten = \"[::1]:9100\"\n");
        let s = Settings::from_raw(raw(&v6), Path::new("/")).unwrap();
        assert_eq!(
            s.metrics.map(|m| m.listen.to_string()).as_deref(),
            Some("[::1]:9100")
        );
        let off = format!("{GOOD}\n[metrics]\nenabled = false\nlisten = \"nonsense\"\n");
        let s = Settings::from_raw(raw(&off), Path::new("/")).unwrap();
        assert_eq!(s.metrics, None);
        for (listen, says) in [
            ("localhost:9464", "expected an IP address and port"),
            ("127.0.0.1", "expected an IP address and port"),
            ("127.0.0.1:99999", "expected an IP address and port"),
            ("127.0.0.1:0", "needs a port other than 0"),
        ] {
            let bad = format!("{GOOD}\n[metrics]\nlisten = \"{listen}\"\n");
            let problems = Settings::from_raw(raw(&bad), Path::new("/")).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].key, "metrics.listen");
            assert!(problems[0].message.contains(says), "{problems:?}");
            assert!(problems[0].message.contains(listen), "{problems:?}");
        }
    }

    #[test]
    fn duplicate_model_names_are_rejected() {
        let text = r#"
            [[models]]
            name = "m"
            path = "a.tflite"
            input_topic = "a"
            [[models]]
            name = "m"
            path = "b.tflite"
            input_topic = "b"
        "#;
        let problems = Settings::from_raw(raw(text), Path::new("/")).unwrap_err();
        assert_eq!(problems[0].key, "models[1].name");
    }

    #[test]
    fn a_topic_level_has_no_separators_or_wildcards() {
        assert!(check_topic_level("gw-7").is_ok());
        assert!(check_topic_level("gw/7").is_err());
        assert!(check_topic_level("+").is_err());
        assert!(check_topic_level("a#").is_err());
        assert!(check_topic_level("a\0").is_err());
        assert!(check_topic_level("a\tb").is_err());
        assert!(check_topic_level(&"d".repeat(MAX_LEVEL_BYTES)).is_ok());
        assert_eq!(
            check_topic_level(&"d".repeat(MAX_LEVEL_BYTES + 1)),
            Err("must be at most 64 bytes (it is in every error the daemon sends, which must fit in one packet); got 65 bytes".into())
        );
        assert_eq!(check_topic_level(""), Err("must not be empty".into()));
    }

    #[test]
    fn outbox_has_defaults_and_bounds() {
        let s = Settings::from_raw(raw(GOOD), Path::new("/")).unwrap();
        assert_eq!(
            s.outbox,
            OutboxSettings {
                max_bytes: 256 * 1024 * 1024,
                max_age: Duration::from_secs(7 * 24 * 3600),
                on_full: OnFull::DropOldest,
            }
        );
        assert!(s.outbox.enabled());
        let text = format!(
            "{GOOD}\n[outbox]\nmax_bytes = 0\nmax_age_secs = 60\non_full = \"reject_new\"\n"
        );
        let s = Settings::from_raw(raw(&text), Path::new("/")).unwrap();
        assert!(!s.outbox.enabled());
        assert_eq!(s.outbox.max_age, Duration::from_secs(60));
        assert_eq!(s.outbox.on_full, OnFull::RejectNew);
        let text =
            format!("{GOOD}\n[outbox]\nmax_bytes = 1000\nmax_age_secs = 0\non_full = \"block\"\n");
        let problems = refusals(&text);
        assert_eq!(
            problems,
            [
                "outbox.max_bytes: must be 0 (no outbox) or between 1048576 (1 MiB) and 1099511627776 (1 TiB), got 1000",
                "outbox.max_age_secs: must be between 1 and 315360000, got 0",
                "outbox.on_full: expected \"drop_oldest\" or \"reject_new\", got \"block\"",
            ]
        );
    }
}
