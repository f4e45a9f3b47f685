//! What fleet tools see: the retained status record (online on connect, the
//! Last Will or an explicit record when offline) and the periodic health
//! record with system, broker and per-model figures.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use serde::Serialize;
use sysinfo::{Components, Disks, Pid, ProcessesToUpdate, System};

use crate::codec::ErrorCode;
use crate::models::{AccelReport, LoadedModel};
use crate::telemetry::{
    DaemonStats, LatencySummary, LinkStats, ModelStats, OutboxGauge, WindowCounts,
};
use crate::time::unix_now;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One model as the status record describes it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusModel {
    pub name: String,
    pub path: String,
    pub sha256: String,
    /// `version` of the configured file, or of the update serving.
    pub version: Option<String>,
    pub input_topic: String,
    pub output_topic: String,
    pub accelerator: String,
    pub workers: usize,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: &'static str,
}

impl StatusModel {
    pub fn new(model: &LoadedModel) -> StatusModel {
        let checked = &model.checked;
        let ms = &checked.settings;
        StatusModel {
            name: ms.name.clone(),
            path: ms.path.display().to_string(),
            sha256: checked.sha256.clone(),
            version: ms.version.clone(),
            input_topic: ms.input_topic.to_string(),
            output_topic: ms.output_topic.as_str().to_string(),
            accelerator: model.accelerator.clone(),
            workers: model.engines.len(),
            inputs: checked.inputs.iter().map(TensorInfo::from_spec).collect(),
            outputs: checked.outputs.iter().map(TensorInfo::from_spec).collect(),
        }
    }
}

impl TensorInfo {
    pub fn from_spec(s: &model_runtime::TensorSpec) -> TensorInfo {
        TensorInfo {
            name: s.name.clone(),
            shape: s.shape.clone(),
            dtype: s.dtype.name(),
        }
    }
}

#[derive(Serialize)]
struct Online<'a> {
    state: &'static str,
    device_id: &'a str,
    version: &'static str,
    pid: u32,
    started_at: f64,
    timestamp: f64,
    models: &'a [StatusModel],
}

#[derive(Serialize)]
struct Offline<'a> {
    state: &'static str,
    device_id: &'a str,
    version: &'static str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<f64>,
}

pub fn online(device_id: &str, started_at: f64, models: &[StatusModel]) -> Vec<u8> {
    to_json(&Online {
        state: "online",
        device_id,
        version: VERSION,
        pid: std::process::id(),
        started_at,
        timestamp: unix_now(),
        models,
    })
}

/// The offline record. The Last Will carries no timestamp: the broker
/// publishes it whenever the connection is found dead.
pub fn offline(device_id: &str, reason: &str, timestamp: Option<f64>) -> Vec<u8> {
    to_json(&Offline {
        state: "offline",
        device_id,
        version: VERSION,
        reason,
        timestamp,
    })
}

/// `errors` of `received` as a percentage, capped at 100: an error can
/// answer a message received in an earlier interval (a queued message
/// dropped for a newer one).
fn error_rate_percent(received: u64, errors: u64) -> f64 {
    if received == 0 {
        0.0
    } else {
        (errors as f64 * 100.0 / received as f64).min(100.0)
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own plain structs: serialization cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// One running model as the health tick sees it.
pub struct ModelView<'a> {
    pub name: &'a str,
    pub sha256: &'a str,
    pub version: Option<&'a str>,
    /// Which accelerator serves it, and why not a more preferred one.
    pub acceleration: AccelReport,
    pub workers: usize,
    pub stalled_workers: usize,
    /// The configured `worker_priority`.
    pub worker_priority: &'static str,
    /// Workers running in `SCHED_IDLE` (`worker_priority = "background"`,
    /// or moved there by `auto`, the default).
    pub background_workers: usize,
    /// Workers whose `worker_priority` the kernel refused: they run at
    /// normal priority.
    pub priority_refused_workers: usize,
    /// The other running models whose invokes take turns with this one's
    /// on shared engines (same file, threads and batch on the CPU).
    pub shares_engine_with: Vec<String>,
    pub stats: &'a ModelStats,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Whether the model windows readings (its health adds `window`).
    pub windowed: bool,
}

#[derive(Serialize)]
struct Health<'a> {
    device_id: &'a str,
    version: &'static str,
    timestamp: f64,
    uptime_secs: f64,
    interval_secs: f64,
    system: SystemHealth,
    process: ProcessHealth,
    broker: BrokerHealth,
    delivery: DeliveryHealth,
    models: Vec<ModelHealth<'a>>,
    /// A few figures per model keyed by its name, so a reader can address
    /// one model without knowing its position (Home Assistant's
    /// `value_template`s read `by_model['NAME']`).
    by_model: BTreeMap<&'a str, ModelSummary>,
}

#[derive(Serialize)]
struct ModelSummary {
    /// `latency_ms.p99` of the model's entry.
    latency_p99_ms: f64,
    /// Errors answered about the model's messages in the last interval,
    /// as a percentage of the messages it received in that interval
    /// (0 when it received none; at most 100).
    error_rate_percent: f64,
}

/// How answers reach the broker and when inputs are acknowledged.
#[derive(Serialize)]
struct DeliveryHealth {
    /// "answered" (at-least-once) or "queued".
    ack: &'static str,
    answers_confirmed: u64,
    /// Acknowledgements not sent because the message came on an earlier
    /// connection (the broker redelivers it).
    acks_stale: u64,
    /// Inputs left unacknowledged because an answer to them was lost.
    acks_withheld: u64,
    /// None without an outbox.
    outbox: Option<OutboxHealth>,
}

#[derive(Serialize)]
struct OutboxHealth {
    records: u64,
    bytes: u64,
    oldest_age_secs: Option<f64>,
    stored: u64,
    replayed: u64,
    dropped_full: u64,
    rejected_full: u64,
    expired: u64,
    write_errors: u64,
    too_large: u64,
    last_loss: Option<String>,
}

fn outbox_health(g: &OutboxGauge, now: f64) -> Option<OutboxHealth> {
    if !g.enabled.load(Relaxed) {
        return None;
    }
    let oldest_ms = g.oldest_ms.load(Relaxed);
    Some(OutboxHealth {
        records: g.records.load(Relaxed),
        bytes: g.bytes.load(Relaxed),
        oldest_age_secs: (oldest_ms > 0).then(|| (now - oldest_ms as f64 / 1000.0).max(0.0)),
        stored: g.stored.load(Relaxed),
        replayed: g.replayed.load(Relaxed),
        dropped_full: g.dropped_full.load(Relaxed),
        rejected_full: g.rejected_full.load(Relaxed),
        expired: g.expired.load(Relaxed),
        write_errors: g.write_errors.load(Relaxed),
        too_large: g.too_large.load(Relaxed),
        last_loss: g
            .last_loss
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    })
}

#[derive(Serialize)]
struct SystemHealth {
    cpu_percent: f32,
    load_average: [f64; 3],
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    /// `memory_used_bytes` of `memory_total_bytes`, 0 when unknown.
    memory_used_percent: f64,
    temperatures: Vec<Temperature>,
    /// The highest of `temperatures`; None (null) when there are none.
    temperature_max_celsius: Option<f32>,
    state_dir: String,
    state_dir_free_bytes: Option<u64>,
}

#[derive(Serialize)]
struct Temperature {
    label: String,
    celsius: f32,
}

#[derive(Serialize)]
struct ProcessHealth {
    pid: u32,
    rss_bytes: u64,
    cpu_percent: f32,
}

#[derive(Serialize)]
struct BrokerHealth {
    connected: bool,
    connections: u64,
    reconnects: u64,
    connection_errors: u64,
    unrouted_messages: u64,
    publish_failures: u64,
    own_messages_ignored: u64,
    input_paused_secs: f64,
    offline_secs: f64,
    links: LinksHealth,
}

#[derive(Serialize)]
struct LinksHealth {
    input: LinkHealth,
    output: LinkHealth,
}

/// One broker connection: where, whether up, and why it last failed.
#[derive(Serialize)]
struct LinkHealth {
    broker: String,
    connected: bool,
    /// None (null) when nothing failed since it last connected.
    last_error: Option<String>,
    pings_unanswered: u64,
}

impl LinkHealth {
    fn of(link: &LinkStats) -> LinkHealth {
        LinkHealth {
            broker: link.broker(),
            connected: link.connected.load(std::sync::atomic::Ordering::Relaxed),
            last_error: link.last_error(),
            pings_unanswered: link
                .pings_unanswered
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

#[derive(Serialize)]
struct ModelHealth<'a> {
    name: &'a str,
    sha256: &'a str,
    version: Option<&'a str>,
    /// The name of the accelerator serving it (`acceleration.serving`).
    accelerator: String,
    acceleration: AccelReport,
    workers: usize,
    stalled_workers: usize,
    worker_priority: &'static str,
    background_workers: usize,
    priority_refused_workers: usize,
    shares_engine_with: &'a [String],
    received: u64,
    inferences: u64,
    errors: BTreeMap<&'static str, u64>,
    dropped: u64,
    queue_depth: usize,
    queue_capacity: usize,
    throughput_per_sec: f64,
    latency_ms: LatencySummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<WindowCounts>,
}

/// Samples the machine; keeps state between ticks (CPU usage is a delta).
pub struct HealthReporter {
    device_id: String,
    state_dir: PathBuf,
    started: Instant,
    last_tick: Instant,
    system: Option<System>,
    components: Option<Components>,
    disks: Option<Disks>,
    pid: Option<Pid>,
    /// Inferences per model at the last tick, for throughput.
    last_inferences: HashMap<String, u64>,
    /// Messages received and errors per model at the last tick, for the
    /// error rate.
    last_errors: HashMap<String, (u64, u64)>,
    /// `[delivery] ack`, as written.
    pub ack_policy: &'static str,
}

impl HealthReporter {
    pub fn new(device_id: &str, state_dir: &Path) -> HealthReporter {
        let mut system = System::new().ok();
        if let Some(s) = system.as_mut() {
            // The first CPU sample only sets the baseline.
            s.refresh_cpu_usage();
        }
        HealthReporter {
            device_id: device_id.to_string(),
            state_dir: state_dir.to_path_buf(),
            started: Instant::now(),
            last_tick: Instant::now(),
            system,
            components: Components::new_with_refreshed_list().ok(),
            disks: Disks::new_with_refreshed_list().ok(),
            pid: sysinfo::get_current_pid().ok(),
            last_inferences: HashMap::new(),
            last_errors: HashMap::new(),
            ack_policy: "answered",
        }
    }

    /// Whether the machine reports at least one temperature (the health
    /// record's `temperature_max_celsius` is then a number).
    pub fn has_temperature(&self) -> bool {
        self.components.as_ref().is_some_and(|c| {
            c.iter()
                .any(|c| c.temperature().is_some_and(|t| t.is_finite()))
        })
    }

    pub fn set_state_dir(&mut self, dir: &Path) {
        self.state_dir = dir.to_path_buf();
    }

    /// Builds one health record and starts the next interval.
    pub fn tick(&mut self, broker: &DaemonStats, models: &[ModelView<'_>]) -> Vec<u8> {
        let interval = self.last_tick.elapsed().as_secs_f64().max(1e-9);
        self.last_tick = Instant::now();

        let (mut cpu, mut used, mut total, mut rss, mut pcpu) = (0.0, 0, 0, 0, 0.0);
        if let Some(sys) = self.system.as_mut() {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            cpu = sys.global_cpu_usage();
            used = sys.used_memory();
            total = sys.total_memory();
            if let Some(pid) = self.pid {
                sys.refresh_processes(ProcessesToUpdate::Some(&[pid]), false);
                if let Some(p) = sys.process(pid) {
                    rss = p.memory();
                    pcpu = p.cpu_usage();
                }
            }
        }
        let load = System::load_average()
            .map(|l| [l.one, l.five, l.fifteen])
            .unwrap_or([0.0; 3]);
        let temperatures = match self.components.as_mut() {
            Some(c) => {
                c.refresh(false);
                c.iter()
                    .filter_map(|c| {
                        c.temperature()
                            .filter(|t| t.is_finite())
                            .map(|celsius| Temperature {
                                label: c.label().to_string(),
                                celsius,
                            })
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let free = self.state_dir_free();

        let connections = broker.connections.load(Relaxed);
        let mut model_health = Vec::with_capacity(models.len());
        let mut by_model = BTreeMap::new();
        for m in models {
            let inferences = m.stats.succeeded();
            let before = self
                .last_inferences
                .insert(m.name.to_string(), inferences)
                .unwrap_or(0);
            let errors: BTreeMap<&'static str, u64> = ErrorCode::ALL
                .iter()
                .map(|c| (c.as_str(), m.stats.errors(*c)))
                .collect();
            let received = m.stats.received.load(Relaxed);
            let errors_total: u64 = errors.values().sum();
            let (received_before, errors_before) = self
                .last_errors
                .insert(m.name.to_string(), (received, errors_total))
                .unwrap_or((0, 0));
            let latency_ms = m.stats.take_latency();
            by_model.insert(
                m.name,
                ModelSummary {
                    latency_p99_ms: latency_ms.p99,
                    error_rate_percent: error_rate_percent(
                        received.saturating_sub(received_before),
                        errors_total.saturating_sub(errors_before),
                    ),
                },
            );
            model_health.push(ModelHealth {
                name: m.name,
                sha256: m.sha256,
                version: m.version,
                accelerator: m.acceleration.serving.clone(),
                acceleration: m.acceleration.clone(),
                workers: m.workers,
                stalled_workers: m.stalled_workers,
                worker_priority: m.worker_priority,
                background_workers: m.background_workers,
                priority_refused_workers: m.priority_refused_workers,
                shares_engine_with: &m.shares_engine_with,
                received,
                inferences,
                errors,
                dropped: m.stats.errors(ErrorCode::Overloaded),
                queue_depth: m.queue_depth,
                queue_capacity: m.queue_capacity,
                throughput_per_sec: inferences.saturating_sub(before) as f64 / interval,
                latency_ms,
                window: m.windowed.then(|| m.stats.window.counts()),
            });
        }
        let temperature_max_celsius = temperatures
            .iter()
            .map(|t| t.celsius)
            .fold(None, |max: Option<f32>, t| {
                Some(max.map_or(t, |m| m.max(t)))
            });
        let now = unix_now();
        to_json(&Health {
            device_id: &self.device_id,
            version: VERSION,
            timestamp: now,
            uptime_secs: self.started.elapsed().as_secs_f64(),
            interval_secs: interval,
            system: SystemHealth {
                cpu_percent: cpu,
                load_average: load,
                memory_used_bytes: used,
                memory_total_bytes: total,
                memory_used_percent: if total > 0 {
                    used as f64 * 100.0 / total as f64
                } else {
                    0.0
                },
                temperatures,
                temperature_max_celsius,
                state_dir: self.state_dir.display().to_string(),
                state_dir_free_bytes: free,
            },
            process: ProcessHealth {
                pid: std::process::id(),
                rss_bytes: rss,
                cpu_percent: pcpu,
            },
            broker: BrokerHealth {
                connected: broker.connected.load(Relaxed),
                connections,
                reconnects: connections.saturating_sub(1),
                connection_errors: broker.connection_errors.load(Relaxed),
                unrouted_messages: broker.unrouted.load(Relaxed),
                publish_failures: broker.publish_failures.load(Relaxed),
                own_messages_ignored: broker.own_ignored.load(Relaxed),
                input_paused_secs: broker.input_paused_us.load(Relaxed) as f64 / 1e6,
                offline_secs: broker.offline_us.load(Relaxed) as f64 / 1e6,
                links: LinksHealth {
                    input: LinkHealth::of(&broker.input_link),
                    output: LinkHealth::of(&broker.output_link),
                },
            },
            delivery: DeliveryHealth {
                ack: self.ack_policy,
                answers_confirmed: broker.answers_confirmed.load(Relaxed),
                acks_stale: broker.acks_stale.load(Relaxed),
                acks_withheld: broker.acks_withheld.load(Relaxed),
                outbox: outbox_health(&broker.outbox, now),
            },
            models: model_health,
            by_model,
        })
    }

    /// Free bytes on the filesystem holding the state dir (the longest mount
    /// point that contains it); None when the dir or mount is unknown.
    fn state_dir_free(&mut self) -> Option<u64> {
        let disks = self.disks.as_mut()?;
        disks.refresh(true);
        let dir = std::fs::canonicalize(&self.state_dir).ok()?;
        disks
            .iter()
            .filter(|d| dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| d.available_space())
    }
}
