//! Sensor and camera simulator for the demo. Wrist accelerometers publish a
//! stream of readings, one per message (`{"ts": .., "ax": .., "ay": .., "az": ..}`
//! on sensors/wrist-N/imu; every 10th message is a batch
//! `{"id": .., "readings": [10 readings]}`), which the daemon assembles into
//! overlapping 128-reading windows for the activity models; cameras publish
//! the sample pictures of models/samples/ (JPEG and PNG files, as they are) on
//! cameras/cam-N/frame/K (K the frame's number: a picture carries no id, so
//! the topic names the frame its answer is for) for the shapes model. Each
//! answer is printed as it arrives, next to what was sent, then a summary
//! per model.
//!
//! ```text
//! cargo run --release --example accel_sim -- --port 1883 --sensors 2 --rate 1 --seconds 20
//! ```
//!
//! Answers are read from the broker the daemon publishes to: the one the
//! readings go to, or `--results-host`/`--results-port` (its `[uplink]`),
//! over TLS with `--results-ca-file`. That connection keeps its session
//! (clean session off, one client id for the run), so answers published
//! while it is away, or while that broker restarts (with persistence), are
//! delivered when it is back; the session is ended on exit. Answers are
//! counted by the window or frame they are for, so a late one (replayed
//! from the daemon's outbox) counts and a second copy is reported as a
//! duplicate.
//!
//! The readings follow the generator specification in models/accel_synth.py
//! (the one the HAR models were trained on), with a small self-contained
//! PRNG (splitmix64 + Box-Muller) instead of numpy's: same distributions,
//! not the same numbers. Each sensor goes through the activities idle,
//! walking, running, fall in turn (sensors offset by one), one *segment*
//! each: 256 readings (4 strides: 3 windows entirely inside it) for idle,
//! walking and running, 192 for a fall (the impact at reading 96, so both
//! windows inside it see it where the training windows had it). Segments
//! start on a stride boundary, so one window in 3 or 4 overlaps two
//! activities: it is printed as `walking>running` and not judged.
//!
//! Exit status: 0 if every window got an answer from every model that
//! answered windows at all (or from each model named with `--models`) and
//! every frame got an answer, 1 if some answers are missing, 2 on usage or
//! connection errors, 130 on a second Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rumqttc::{
    Client, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use serde_json::Value;

const LABELS: [&str; 4] = ["idle", "walking", "running", "fall"];
/// The generator's sample rate: the shape of the signal. The publishing
/// rate (`--rate`) only sets how fast the readings go out.
const FS: f64 = 50.0;
const CLAMP_G: f64 = 8.0;
/// `[models.window]` of the activity models in config/demo.toml.
const WINDOW: u64 = 128;
const STRIDE: u64 = 64;
/// Segment lengths in readings, multiples of STRIDE (see the file doc).
const SEGMENT: usize = 4 * STRIDE as usize;
const FALL_SEGMENT: usize = 3 * STRIDE as usize;
/// Every BATCH_EVERY-th message of a sensor carries BATCH_LEN readings.
const BATCH_EVERY: u64 = 10;
const BATCH_LEN: usize = 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last message is sent, answers are waited for until this long
/// passes without one while the results broker is connected ...
const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// ... and at most this long.
const MAX_WAIT: Duration = Duration::from_secs(60);
const RESULTS_FILTER: &str = "results/+/+/+";
const ERRORS_FILTER: &str = "edge-infer/+/errors";

/// The pictures the cameras send in turn: file, what it shows, bytes. Made
/// by models/samples/make.py; the shapes model must name each one.
const SAMPLES: [(&str, &str, &[u8]); 5] = [
    (
        "circle.jpg",
        "circle",
        include_bytes!("../models/samples/circle.jpg"),
    ),
    (
        "square.jpg",
        "square",
        include_bytes!("../models/samples/square.jpg"),
    ),
    (
        "triangle.jpg",
        "triangle",
        include_bytes!("../models/samples/triangle.jpg"),
    ),
    (
        "none.jpg",
        "none",
        include_bytes!("../models/samples/none.jpg"),
    ),
    (
        "square_96.png",
        "square",
        include_bytes!("../models/samples/square_96.png"),
    ),
];

// ---------------------------------------------------------------------------
// Command line

/// Sensor and camera simulator for the edge-infer demo
///
/// Wrist accelerometers wrist-1..N publish one reading per message
/// ({"ts", "ax", "ay", "az"}; every 10th message a batch {"id", "readings"}
/// of 10) on sensors/wrist-N/imu, an activity pattern at a time (idle,
/// walking, running, fall); the daemon answers each 128-reading window
/// (stride 64). Cameras cam-1..N publish the sample pictures (JPEG, PNG) on
/// cameras/cam-N/frame/K (K: the frame's number). The daemon's answers are
/// printed as they arrive, then a summary per model.
///
/// Answers are read from --results-host/--results-port (the daemon's
/// [uplink]; default: the broker the readings go to), over TLS with
/// --results-ca-file, in a session the broker keeps while that connection
/// is away: answers published meanwhile arrive when it is back. After the
/// last message is sent, answers are waited for until 5 s pass without
/// one while that connection is up (at most 60 s).
///
/// --rate is in windows per second per sensor: each sensor publishes
/// rate x 64 readings per second (--rate 1: 64 readings/s, a little faster
/// than the 50 Hz of the signal; the timestamps follow the publishing
/// schedule).
///
/// Exit status: 0 if every window got an answer from every model that
/// answered windows at all (or from each of --models) and every frame got
/// an answer, 1 if some answers are missing, 2 on usage or connection
/// errors, 130 on a second Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "accel_sim", args_override_self = true, verbatim_doc_comment)]
struct Args {
    /// MQTT broker host (readings and frames go there)
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// MQTT broker port
    #[arg(long, value_name = "N", default_value_t = 1883)]
    port: u16,
    /// Host of the broker the answers are read from [default: --host]
    #[arg(long, value_name = "HOST")]
    results_host: Option<String>,
    /// Its port [default: --port, or 8883 with --results-ca-file]
    #[arg(long, value_name = "N")]
    results_port: Option<u16>,
    /// Read the answers over TLS, trusting the CA certificates (PEM) in
    /// this file
    #[arg(long, value_name = "FILE")]
    results_ca_file: Option<std::path::PathBuf>,
    /// Number of simulated sensors wrist-1..wrist-N (0 to 1000)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(0..=1000)
    )]
    sensors: u16,
    /// Windows per second per sensor: rate x 64 readings per second
    /// (0.02 to 100)
    #[arg(long, value_name = "R", default_value_t = 1.0, value_parser = parse_rate)]
    rate: f64,
    /// Number of simulated cameras cam-1..cam-N (0 to 100)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(0..=100)
    )]
    cameras: u16,
    /// Seconds between two frames of a camera (0.01 to 3600)
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = parse_frame_interval)]
    frame_interval: f64,
    /// How long to publish, in seconds; 0 = until Ctrl-C
    #[arg(long, value_name = "S", default_value_t = 20.0, value_parser = parse_seconds)]
    seconds: f64,
    /// PRNG seed
    #[arg(long, value_name = "N", default_value_t = 20240601)]
    seed: u64,
    /// Models expected to answer every window, comma-separated [default:
    /// every model that answers a window at least once]
    #[arg(long, value_name = "A,B", value_parser = parse_models)]
    models: Option<Models>,
}

/// The `--models` list; empty means the default (every model that answers).
#[derive(Debug, Clone)]
struct Models(Vec<String>);

fn parse_models(s: &str) -> Result<Models, String> {
    Ok(Models(
        s.split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect(),
    ))
}

/// At least 0.02 windows/s (1.28 readings/s, 0.78 s apart): config/demo.toml's
/// `max_gap_ms = 1000` would otherwise restart every window.
fn parse_rate(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && (0.02..=100.0).contains(r))
        .ok_or_else(|| "must be a number of windows per second from 0.02 to 100".into())
}

fn parse_frame_interval(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && (0.01..=3600.0).contains(r))
        .ok_or_else(|| "must be a number of seconds from 0.01 to 3600".into())
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .ok_or_else(|| "must be a number of seconds, 0 or more".into())
}

impl Args {
    /// The models named with `--models`, if any were.
    fn expected(&self) -> Option<Vec<String>> {
        self.models
            .as_ref()
            .map(|m| m.0.clone())
            .filter(|m| !m.is_empty())
    }
}

// ---------------------------------------------------------------------------
// PRNG and the generator of models/accel_synth.py

/// splitmix64: tiny, fast, good enough for synthetic data.
struct Rng {
    state: u64,
    spare_normal: Option<f64>,
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng {
            state: seed,
            spare_normal: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// U(a, b): uniform real in [a, b).
    fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.unit()
    }

    /// N(0, s) by Box-Muller (both values of a pair are used).
    fn normal(&mut self, s: f64) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return s * z;
        }
        let u1 = 1.0 - self.unit(); // (0, 1]: ln() stays finite
        let u2 = self.unit();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some(r * t.sin());
        s * r * t.cos()
    }

    fn noise(&mut self, n: usize, s: f64) -> Vec<[f64; 3]> {
        (0..n)
            .map(|_| [self.normal(s), self.normal(s), self.normal(s)])
            .collect()
    }
}

/// `n` readings [x, y, z] in g of one activity (index into LABELS), per the
/// spec in models/accel_synth.py stretched from one 128-reading window to
/// `n` readings: the same parameters all along (frequency, amplitude,
/// phase, sensor offset), and for a fall the impact at reading n / 2.
fn gen_segment(label: usize, n: usize, rng: &mut Rng) -> Vec<[f32; 3]> {
    let t = |i: usize| i as f64 / FS;
    let a: Vec<[f64; 3]> = match label {
        0 => {
            let b = [
                rng.uniform(-0.05, 0.05),
                rng.uniform(-0.05, 0.05),
                rng.uniform(-0.05, 0.05),
            ];
            let noise = rng.noise(n, 0.02);
            noise
                .iter()
                .map(|e| [b[0] + e[0], b[1] + e[1], 1.0 + b[2] + e[2]])
                .collect()
        }
        1 | 2 => {
            // (f_lo, f_hi, A_lo, A_hi, sigma)
            let (f_lo, f_hi, a_lo, a_hi, sigma) = if label == 1 {
                (1.6, 2.4, 0.20, 0.40, 0.05)
            } else {
                (2.6, 3.4, 0.90, 1.50, 0.10)
            };
            let f = rng.uniform(f_lo, f_hi);
            let amp = rng.uniform(a_lo, a_hi);
            let phi = rng.uniform(0.0, 2.0 * std::f64::consts::PI);
            let b = [
                rng.uniform(-0.05, 0.05),
                rng.uniform(-0.05, 0.05),
                rng.uniform(-0.05, 0.05),
            ];
            let noise = rng.noise(n, sigma);
            let w = 2.0 * std::f64::consts::PI * f;
            noise
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let theta = w * t(i) + phi;
                    [
                        0.40 * amp * theta.cos() + b[0] + e[0],
                        0.25 * amp * (theta / 2.0).sin() + b[1] + e[1],
                        1.0 + amp * theta.sin() + b[2] + e[2],
                    ]
                })
                .collect()
        }
        _ => {
            let k = (n / 2) as i64;
            let peak = rng.uniform(3.5, 6.0);
            let tilt = rng.uniform(60.0, 120.0).to_radians();
            let az = rng.uniform(0.0, 360.0).to_radians();
            let noise = rng.noise(n, 0.03);
            let u = [tilt.sin() * az.cos(), tilt.sin() * az.sin(), tilt.cos()];
            noise
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let i = i as i64;
                    let base = if i < k - 2 {
                        [0.0, 0.0, 1.0]
                    } else if i <= k + 2 {
                        let m = peak * (1.0 - (i - k).abs() as f64 / 3.0);
                        [m * u[0], m * u[1], m * u[2]]
                    } else {
                        u
                    };
                    [base[0] + e[0], base[1] + e[1], base[2] + e[2]]
                })
                .collect()
        }
    };
    a.iter()
        .map(|r| r.map(|v| v.clamp(-CLAMP_G, CLAMP_G) as f32))
        .collect()
}

// ---------------------------------------------------------------------------
// One sensor's stream of readings

/// What a window held: one activity, or the end of one and the start of
/// the next (not judged).
#[derive(Clone, Copy)]
enum Truth {
    Activity(usize),
    Transition(usize, usize),
}

impl Truth {
    fn text(self) -> String {
        match self {
            Truth::Activity(l) => LABELS[l].to_string(),
            Truth::Transition(a, b) => format!("{}>{}", LABELS[a], LABELS[b]),
        }
    }
}

struct Stream {
    sensor: String,
    topic: String,
    /// Index into LABELS of this sensor's first activity.
    first_label: usize,
    /// Generated, not yet sent (reading, index of the reading).
    pending: std::collections::VecDeque<[f32; 3]>,
    /// Readings generated so far (sent + pending).
    generated: u64,
    /// (first reading, activity) of every segment generated, in order.
    segments: Vec<(u64, usize)>,
    /// Readings published (a batch counts once sent).
    published: u64,
    /// Messages published (singles and batches).
    messages: u64,
    batches: u64,
    /// The readings of the batch being gathered, as JSON objects.
    batch: Vec<String>,
    /// `ts` of every reading that can start a window (multiples of STRIDE).
    window_start_ts: Vec<f64>,
}

impl Stream {
    fn new(index: usize) -> Stream {
        let sensor = format!("wrist-{}", index + 1);
        Stream {
            topic: format!("sensors/{sensor}/imu"),
            sensor,
            first_label: index % LABELS.len(),
            pending: Default::default(),
            generated: 0,
            segments: Vec::new(),
            published: 0,
            messages: 0,
            batches: 0,
            batch: Vec::new(),
            window_start_ts: Vec::new(),
        }
    }

    fn next_reading(&mut self, rng: &mut Rng) -> [f32; 3] {
        if self.pending.is_empty() {
            let label = (self.first_label + self.segments.len()) % LABELS.len();
            let n = if label == 3 { FALL_SEGMENT } else { SEGMENT };
            self.segments.push((self.generated, label));
            self.generated += n as u64;
            self.pending.extend(gen_segment(label, n, rng));
        }
        self.pending.pop_front().unwrap_or([0.0, 0.0, 1.0])
    }

    fn activity_at(&self, reading: u64) -> usize {
        let i = self.segments.partition_point(|s| s.0 <= reading);
        self.segments.get(i.saturating_sub(1)).map_or(0, |s| s.1)
    }

    /// What the window starting at reading `first` held.
    fn truth(&self, first: u64) -> Truth {
        let a = self.activity_at(first);
        let b = self.activity_at(first + WINDOW - 1);
        if a == b {
            Truth::Activity(a)
        } else {
            Truth::Transition(a, b)
        }
    }

    /// Windows the daemon must have completed from the readings published.
    fn expected_windows(&self) -> u64 {
        if self.published < WINDOW {
            0
        } else {
            (self.published - WINDOW) / STRIDE + 1
        }
    }

    /// The window (number from 1) whose first reading has this `ts`, if the
    /// window starts on one of ours (tolerance: a quarter reading).
    fn window_of(&self, start: f64, reading_interval: f64) -> Option<u64> {
        let i = self.window_start_ts.partition_point(|t| *t < start);
        let tol = 0.25 * reading_interval;
        [i.checked_sub(1), Some(i)]
            .into_iter()
            .flatten()
            .find(|&j| {
                self.window_start_ts
                    .get(j)
                    .is_some_and(|t| (t - start).abs() <= tol)
            })
            .map(|j| j as u64 + 1)
    }
}

fn reading_json(ts: f64, r: [f32; 3]) -> String {
    // serde_json writes the shortest text that parses back to the same
    // f64 / f32, so the daemon sees exactly these values.
    let num = |v: f64| serde_json::Number::from_f64(v).map_or("0".to_string(), |n| n.to_string());
    format!(
        "{{\"ts\":{},\"ax\":{},\"ay\":{},\"az\":{}}}",
        num(ts),
        serde_json::Value::from(r[0]),
        serde_json::Value::from(r[1]),
        serde_json::Value::from(r[2])
    )
}

// ---------------------------------------------------------------------------
// MQTT plumbing: the connection runs on its own thread and forwards what
// matters here through a channel, together with Ctrl-C.

/// The two connections: readings and frames go out on one, answers come
/// in on the other (from the daemon's uplink, which can be elsewhere and
/// come and go).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    Inputs,
    Results,
}

enum Ev {
    Connected(Link),
    ConnError(Link, String),
    /// The link sent its DISCONNECT: its thread has stopped.
    Closed(Link),
    SubAck(Vec<SubscribeReasonCode>),
    PubAck,
    Message(String, Vec<u8>),
    Interrupt,
}

fn spawn_connection(mut connection: rumqttc::Connection, link: Link, tx: Sender<Ev>) {
    thread::spawn(move || {
        for event in connection.iter() {
            let ev = match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::Connected(link),
                Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(s.return_codes),
                Ok(Event::Incoming(Packet::PubAck(_))) => Ev::PubAck,
                Ok(Event::Incoming(Packet::Publish(p))) => Ev::Message(p.topic, p.payload.to_vec()),
                // Polling on would reconnect, and with a kept session bring
                // the session back.
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    let _ = tx.send(Ev::Closed(link));
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    let sent = tx.send(Ev::ConnError(link, e.to_string()));
                    if sent.is_err() {
                        break;
                    }
                    // The next poll reconnects; don't spin on a refused port.
                    thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
}

/// Ctrl-C (SIGINT) as events, through tokio's signal support (already a
/// dependency of the daemon); no handler, no graceful stop, if that fails.
fn spawn_ctrl_c(tx: Sender<Ev>) {
    thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if tx.send(Ev::Interrupt).is_err() {
                    break;
                }
            }
        });
    });
}

// ---------------------------------------------------------------------------
// Bookkeeping of what was sent and what came back

#[derive(Default)]
struct ModelStats {
    /// "windows" or "frames": what the model answered.
    kind: &'static str,
    results: usize,
    /// Results that can be judged (not transition windows), and of those
    /// the ones whose top label is what was sent.
    judged: usize,
    matched: usize,
    errors: usize,
    totals_ms: Vec<f64>,
}

struct Camera {
    name: String,
    /// Frame K goes to `{topic}/K`.
    topic: String,
    /// Index into SAMPLES of every frame sent, in order (frame K at K - 1).
    sent: Vec<usize>,
}

impl Camera {
    /// The frame number in a topic of this camera's.
    fn frame_of(&self, topic: &str) -> Option<usize> {
        topic
            .strip_prefix(self.topic.as_str())?
            .strip_prefix('/')?
            .parse()
            .ok()
    }
}

struct Tally {
    streams: Vec<Stream>,
    cameras: Vec<Camera>,
    /// Seconds between two readings of a sensor.
    reading_interval: f64,
    /// `ts` of the first reading, to print window times from the start.
    t0: f64,
    /// (sensor index, window number, model) answered, by a result or an
    /// error.
    windows_answered: BTreeSet<(usize, u64, String)>,
    /// (camera index, frame number, model) answered, by a result or an
    /// error.
    frames_answered: BTreeSet<(usize, usize, String)>,
    models: BTreeMap<String, ModelStats>,
    /// Answers that arrived more than WAITED after the daemon received
    /// their input (kept in its outbox while the results broker was away),
    /// and the longest such wait in seconds.
    waited: usize,
    longest_wait: f64,
    foreign: usize,
    unaligned: usize,
    reading_errors: usize,
    duplicates: usize,
    puback: u64,
    published: u64,
}

fn f64_at(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// The top label (or `#index`), its score, and whether it equals `want`.
fn top(v: &Value, want: Option<&str>) -> (String, bool) {
    let best = v
        .get("top_k")
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    let label = best.and_then(|b| b.get("label")).and_then(Value::as_str);
    let index = best.and_then(|b| b.get("index")).and_then(Value::as_u64);
    let score = best.and_then(|b| b.get("score")).and_then(Value::as_f64);
    let name = label
        .map(String::from)
        .or_else(|| index.map(|i| format!("#{i}")));
    let text = match (name, score) {
        (Some(l), Some(s)) => format!("{l:<8} {s:.2}"),
        (Some(l), None) => format!("{l:<8}     "),
        _ => "(no top_k)   ".to_string(),
    };
    (text, want.is_some() && label == want)
}

fn latency(v: &Value) -> String {
    let ms = |x: Option<f64>| x.map_or("?".to_string(), |x| format!("{x:.2}"));
    format!(
        "(invoke {} ms, total {} ms)",
        ms(f64_at(v, &["latency_ms", "invoke"])),
        ms(f64_at(v, &["latency_ms", "total"]))
    )
}

/// An answer is late when it arrives this long after the daemon received
/// its input: it waited (in the daemon's outbox, or in the broker's
/// session) for the results broker or this connection to it.
const WAITED: f64 = 1.0;

impl Tally {
    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                println!("{topic}: unreadable message ({e})");
                return;
            }
        };
        let source = v
            .get("source_topic")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let stream = self.streams.iter().position(|s| s.topic == source);
        let frame = self
            .cameras
            .iter()
            .enumerate()
            .find_map(|(c, cam)| cam.frame_of(&source).map(|k| (c, k)))
            .filter(|&(c, k)| (1..=self.cameras[c].sent.len()).contains(&k));
        let is_error = topic.starts_with("edge-infer/");
        match (stream, frame, is_error) {
            (Some(s), _, false) => self.on_window(topic, s, &v),
            (Some(s), _, true) => self.on_reading_error(s, &v),
            (None, Some((c, k)), _) => self.on_frame(topic, c, k, &v, is_error),
            (None, None, _) => self.foreign += 1,
        }
    }

    /// " (waited 3.2 s)" for a late answer (and counts it), else "".
    fn wait_note(&mut self, v: &Value) -> String {
        let Some(received) = f64_at(v, &["received_at"]) else {
            return String::new();
        };
        let waited = unix_now() - received;
        if waited <= WAITED {
            return String::new();
        }
        self.waited += 1;
        self.longest_wait = self.longest_wait.max(waited);
        format!("  (waited {waited:.1} s)")
    }

    fn model_of(v: &Value) -> String {
        v.get("model")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    }

    fn on_window(&mut self, topic: &str, s: usize, v: &Value) {
        let model = Tally::model_of(v);
        let stream = &self.streams[s];
        let win = v.get("window");
        let seq = win.and_then(|w| w.get("seq")).and_then(Value::as_u64);
        let start = win.and_then(|w| w.get("start")).and_then(Value::as_f64);
        let end = win.and_then(|w| w.get("end")).and_then(Value::as_f64);
        let (Some(seq), Some(start), Some(end)) = (seq, start, end) else {
            println!(
                "{topic}: result for {} without window seq/start/end",
                stream.topic
            );
            self.foreign += 1;
            return;
        };
        let Some(n) = stream.window_of(start, self.reading_interval) else {
            // Started before this run (a daemon that kept an earlier run's
            // partial window) or not on a stride boundary.
            self.unaligned += 1;
            println!("{topic}: window #{seq} starts at {start}, not on a window start of this run",);
            return;
        };
        if !self.windows_answered.insert((s, n, model.clone())) {
            self.duplicates += 1;
            println!(
                "{topic}: duplicate answer for window {n} of {} from {model}",
                stream.sensor
            );
            return;
        }
        let truth = stream.truth((n - 1) * STRIDE);
        let sensor_text = truth.text();
        let want = match truth {
            Truth::Activity(l) => Some(LABELS[l]),
            Truth::Transition(..) => None,
        };
        let (pred, matched) = top(v, want);
        let waited = self.wait_note(v);
        let st = self.models.entry(model.clone()).or_default();
        st.kind = "windows";
        st.results += 1;
        if want.is_some() {
            st.judged += 1;
            st.matched += usize::from(matched);
        }
        if let Some(t) = f64_at(v, &["latency_ms", "total"]) {
            st.totals_ms.push(t);
        }
        println!(
            "{topic:<28} window #{seq:<3} {:>6.2}..{:<6.2}s sent={sensor_text:<16} {model:>8}: {pred}  {}{}{waited}",
            start - self.t0,
            end - self.t0,
            latency(v),
            if want.is_some() && !matched {
                "  <- mismatch"
            } else {
                ""
            }
        );
    }

    fn on_reading_error(&mut self, s: usize, v: &Value) {
        let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
        let message = v.get("message").and_then(Value::as_str).unwrap_or("");
        let model = Tally::model_of(v);
        self.reading_errors += 1;
        // Its kind is set by the model's first window.
        self.models.entry(model.clone()).or_default().errors += 1;
        println!(
            "{:<28} ERROR {code} from {model}: {message}",
            self.streams[s].topic
        );
    }

    /// Frame `frame` (from 1, at most the frames sent) of camera `c`.
    fn on_frame(&mut self, topic: &str, c: usize, frame: usize, v: &Value, is_error: bool) {
        let model = Tally::model_of(v);
        let cam = &self.cameras[c];
        if !self.frames_answered.insert((c, frame, model.clone())) {
            self.duplicates += 1;
            println!(
                "{topic}: duplicate answer for frame {frame} of {} from {model}",
                cam.name
            );
            return;
        }
        let (file, want, _) = SAMPLES[cam.sent[frame - 1]];
        let cam_topic = cam.topic.clone();
        let waited = self.wait_note(v);
        let st = self.models.entry(model.clone()).or_default();
        st.kind = "frames";
        if is_error {
            st.errors += 1;
            let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
            let message = v.get("message").and_then(Value::as_str).unwrap_or("");
            println!(
                "{cam_topic:<28} frame  #{frame:<3} sent={file:<16} {model:>8}: ERROR {code}: {message}{waited}"
            );
            return;
        }
        let (pred, matched) = top(v, Some(want));
        st.results += 1;
        st.judged += 1;
        st.matched += usize::from(matched);
        if let Some(t) = f64_at(v, &["latency_ms", "total"]) {
            st.totals_ms.push(t);
        }
        let image = v.get("image").map_or(String::new(), |i| {
            format!(
                " [{} {}x{}]",
                i.get("format").and_then(Value::as_str).unwrap_or("?"),
                i.get("width").and_then(Value::as_u64).unwrap_or(0),
                i.get("height").and_then(Value::as_u64).unwrap_or(0)
            )
        });
        println!(
            "{topic:<28} frame  #{frame:<3}{image} sent={file:<16} {model:>8}: {pred}  {}{}{waited}",
            latency(v),
            if matched { "" } else { "  <- mismatch" }
        );
    }

    /// The models that must answer every window.
    fn window_models(&self, fixed: &Option<Vec<String>>) -> Vec<String> {
        match fixed {
            Some(m) => m.clone(),
            None => self
                .models
                .iter()
                .filter(|(_, st)| st.kind == "windows")
                .map(|(m, _)| m.clone())
                .collect(),
        }
    }

    /// Windows expected from every stream (from the readings published).
    fn windows_expected(&self) -> u64 {
        self.streams.iter().map(Stream::expected_windows).sum()
    }

    fn frames_sent(&self) -> usize {
        self.cameras.iter().map(|c| c.sent.len()).sum()
    }

    /// Unanswered windows (per model) and frames, as text. With no window
    /// model known yet, every window counts as missing once.
    fn missing(&self, fixed: &Option<Vec<String>>) -> Vec<String> {
        let models = self.window_models(fixed);
        let mut out = Vec::new();
        for (s, stream) in self.streams.iter().enumerate() {
            for n in 1..=stream.expected_windows() {
                if models.is_empty() {
                    out.push(format!("{} window {n} (any model)", stream.sensor));
                }
                for m in &models {
                    if !self.windows_answered.contains(&(s, n, m.clone())) {
                        out.push(format!("{} window {n} ({m})", stream.sensor));
                    }
                }
            }
        }
        // Every frame from every model that answered frames at all.
        let frame_models: Vec<&String> = self
            .models
            .iter()
            .filter(|(_, st)| st.kind == "frames")
            .map(|(m, _)| m)
            .collect();
        for (c, cam) in self.cameras.iter().enumerate() {
            for (i, &sample) in cam.sent.iter().enumerate() {
                let (k, file) = (i + 1, SAMPLES[sample].0);
                if frame_models.is_empty() {
                    out.push(format!("{} frame {k} ({file}, any model)", cam.name));
                }
                for m in &frame_models {
                    if !self.frames_answered.contains(&(c, k, m.to_string())) {
                        out.push(format!("{} frame {k} ({file}, {m})", cam.name));
                    }
                }
            }
        }
        out
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

// ---------------------------------------------------------------------------

enum Wait {
    Ok,
    Interrupted,
    Failed(String),
}

/// A broker connection as the messages name it, and its outages.
struct LinkState {
    /// "broker" or "results broker".
    what: &'static str,
    /// mqtt://host:port or mqtts://host:port
    url: String,
    up: bool,
    down_since: Option<Instant>,
    outages: u32,
    offline: Duration,
    last_error: String,
}

impl LinkState {
    fn new(what: &'static str, host: &str, port: u16, tls: bool) -> LinkState {
        let scheme = if tls { "mqtts" } else { "mqtt" };
        LinkState {
            what,
            url: format!("{scheme}://{host}:{port}"),
            up: false,
            down_since: None,
            outages: 0,
            offline: Duration::ZERO,
            last_error: "no answer".into(),
        }
    }

    /// One line when an established connection is lost; the retries after
    /// it stay quiet.
    fn lost(&mut self, error: String) {
        if self.up {
            println!(
                "accel_sim: lost the {} at {} ({error}); reconnecting",
                self.what, self.url
            );
            self.outages += 1;
            self.down_since = Some(Instant::now());
        }
        self.up = false;
        self.last_error = error;
    }

    /// A ConnAck; one line if it ends an outage.
    fn connected(&mut self) {
        self.up = true;
        if let Some(since) = self.down_since.take() {
            let off = since.elapsed();
            self.offline += off;
            println!(
                "accel_sim: {} {} back after {:.1} s",
                self.what,
                self.url,
                off.as_secs_f64()
            );
        }
    }
}

/// The rustls transport for `--results-ca-file`: the broker's certificate
/// must chain to a certificate in `path` and name the host.
fn tls_transport(path: &std::path::Path) -> Result<Transport, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let shown = path.display();
    let pem = std::fs::read(path)
        .map_err(|e| format!("--results-ca-file {shown}: cannot read it: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            format!("--results-ca-file {shown}: expected PEM certificates, the file is not: {e}")
        })?;
        roots.add(cert).map_err(|e| {
            format!("--results-ca-file {shown}: a certificate that cannot be a trust anchor: {e}")
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "--results-ca-file {shown}: expected PEM certificates (-----BEGIN CERTIFICATE-----), found none"
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        std::sync::Arc::new(config),
    )))
}

/// Waits until both connections are up and the results connection's two
/// subscriptions are acknowledged.
fn connect_and_subscribe(results: &Client, rx: &Receiver<Ev>, links: &mut [LinkState; 2]) -> Wait {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut acks = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let down: Vec<String> = links
                .iter()
                .filter(|l| !l.up)
                .map(|l| format!("cannot reach the {} at {}: {}", l.what, l.url, l.last_error))
                .collect();
            let why = if down.is_empty() {
                format!(
                    "no subscription acknowledgement from the {} at {}",
                    links[1].what, links[1].url
                )
            } else {
                down.join("; ")
            };
            return Wait::Failed(format!("{why} (waited {} s)", CONNECT_TIMEOUT.as_secs()));
        }
        match rx.recv_timeout(left) {
            Ok(Ev::Connected(link)) => {
                links[link as usize].up = true;
                if link == Link::Results {
                    acks = 0;
                    for filter in [RESULTS_FILTER, ERRORS_FILTER] {
                        if let Err(e) = results.subscribe(filter, QoS::AtLeastOnce) {
                            return Wait::Failed(format!("cannot subscribe to {filter}: {e}"));
                        }
                    }
                }
            }
            Ok(Ev::ConnError(link, e)) => {
                let l = &mut links[link as usize];
                l.up = false;
                l.last_error = e;
            }
            Ok(Ev::SubAck(codes)) => {
                if codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Wait::Failed(format!(
                        "the {} at {} refused a subscription",
                        links[1].what, links[1].url
                    ));
                }
                acks += 1;
            }
            Ok(Ev::Interrupt) => return Wait::Interrupted,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Wait::Failed("the MQTT connection threads stopped".into())
            }
        }
        if acks >= 2 && links.iter().all(|l| l.up) {
            return Wait::Ok;
        }
    }
}

/// Ends the session the results connection kept (it was kept for
/// reconnects during this run, not for later runs): its DISCONNECT first,
/// so its thread stops instead of reconnecting, then a clean-session
/// connect with the same client id, which makes the broker drop the
/// session. Best effort, a few seconds at most.
fn end_results_session(results: &Client, rx: &Receiver<Ev>, mut opts: MqttOptions) {
    if results.disconnect().is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ev::Closed(Link::Results)) => break,
            Ok(_) => {}
            // Still away (its broker is down): it keeps its session.
            Err(_) => return,
        }
    }
    opts.set_clean_session(true);
    let (client, mut connection) = Client::new(opts, 4);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match connection.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                if client.disconnect().is_err() {
                    return;
                }
            }
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Publishes reading `i` of every sensor: a message of its own, or the
/// last reading of a batch (then the whole batch). Err: the client is gone.
fn publish_readings(
    client: &Client,
    tally: &mut Tally,
    rng: &mut Rng,
    i: u64,
    ts: f64,
) -> Result<(), String> {
    let mut out = Vec::new();
    for stream in &mut tally.streams {
        let r = stream.next_reading(rng);
        if i.is_multiple_of(STRIDE) {
            stream.window_start_ts.push(ts);
        }
        let reading = reading_json(ts, r);
        // Messages 1..9 of every 10 carry one reading, the 10th gathers
        // BATCH_LEN readings published together when the last one is due.
        let in_batch = stream.messages % BATCH_EVERY == BATCH_EVERY - 1;
        if !in_batch {
            out.push((stream.topic.clone(), reading));
            stream.messages += 1;
            stream.published += 1;
            continue;
        }
        stream.batch.push(reading);
        if stream.batch.len() == BATCH_LEN {
            stream.batches += 1;
            let payload = format!(
                "{{\"id\":\"{}-b{}\",\"readings\":[{}]}}",
                stream.sensor,
                stream.batches,
                stream.batch.join(",")
            );
            stream.batch.clear();
            out.push((stream.topic.clone(), payload));
            stream.messages += 1;
            stream.published += BATCH_LEN as u64;
        }
    }
    for (topic, payload) in out {
        client
            .publish(topic, QoS::AtLeastOnce, false, payload.into_bytes())
            .map_err(|e| e.to_string())?;
        tally.published += 1;
    }
    Ok(())
}

/// What the main loop handles besides sending: answers, acknowledgements,
/// the two links, Ctrl-C.
struct Run {
    tally: Tally,
    /// Indexed by `Link`: inputs, results.
    links: [LinkState; 2],
    results: Client,
    interrupted: bool,
    /// The last answer, or the results connection's last reconnect.
    last_progress: Instant,
}

impl Run {
    /// Handles one event; false on a second Ctrl-C (exit now).
    fn handle(&mut self, ev: Ev) -> bool {
        match ev {
            Ev::Message(topic, payload) => {
                self.last_progress = Instant::now();
                self.tally.on_message(&topic, &payload);
            }
            Ev::PubAck => self.tally.puback += 1,
            Ev::Interrupt => {
                if self.interrupted {
                    return false;
                }
                self.interrupted = true;
                println!("accel_sim: interrupted; waiting for outstanding answers (Ctrl-C again to quit now)");
            }
            Ev::ConnError(link, e) => self.links[link as usize].lost(e),
            Ev::Connected(link) => {
                self.links[link as usize].connected();
                if link == Link::Results {
                    self.last_progress = Instant::now();
                    // The session (and its subscriptions) survives a
                    // reconnect only if the broker kept it; subscribing
                    // again is harmless either way.
                    for filter in [RESULTS_FILTER, ERRORS_FILTER] {
                        if let Err(e) = self.results.subscribe(filter, QoS::AtLeastOnce) {
                            eprintln!("accel_sim: cannot subscribe to {filter}: {e}");
                        }
                    }
                }
            }
            Ev::SubAck(_) | Ev::Closed(_) => {}
        }
        true
    }
}

/// How the wait for the last answers ended.
enum Ended {
    AllAnswered,
    Quiet,
    ResultsDown,
    ThreadsStopped,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // --help arrives here too: printed on stdout, success.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if args.sensors == 0 && args.cameras == 0 {
        eprintln!("accel_sim: nothing to simulate: --sensors and --cameras are both 0");
        return ExitCode::from(2);
    }
    let expected = args.expected();
    let transport = match args.results_ca_file.as_deref().map(tls_transport) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("accel_sim: {e}");
            return ExitCode::from(2);
        }
    };
    let results_host = args.results_host.clone().unwrap_or(args.host.clone());
    let results_port =
        args.results_port
            .unwrap_or(if transport.is_some() { 8883 } else { args.port });

    let pid = std::process::id();
    let mut opts = MqttOptions::new(format!("accel-sim-{pid}"), &args.host, args.port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_session(true);
    // Frames are up to ~60 kB; results of image models can be large.
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, connection) = Client::new(opts, 256);
    // Answers: a session the broker keeps while this connection is away.
    let mut results_opts = MqttOptions::new(
        format!("accel-sim-results-{pid}"),
        &results_host,
        results_port,
    );
    results_opts.set_keep_alive(Duration::from_secs(10));
    results_opts.set_clean_session(false);
    results_opts.set_max_packet_size(4 << 20, 4 << 20);
    if let Some(t) = transport.clone() {
        results_opts.set_transport(t);
    }
    let (results, results_connection) = Client::new(results_opts.clone(), 256);
    let (tx, rx) = mpsc::channel();
    spawn_connection(connection, Link::Inputs, tx.clone());
    spawn_connection(results_connection, Link::Results, tx.clone());
    spawn_ctrl_c(tx);

    let mut links = [
        LinkState::new("broker", &args.host, args.port, false),
        LinkState::new(
            "results broker",
            &results_host,
            results_port,
            transport.is_some(),
        ),
    ];
    println!(
        "accel_sim: connecting to {} (readings, frames) and {} (answers) ...",
        links[0].url, links[1].url
    );
    match connect_and_subscribe(&results, &rx, &mut links) {
        Wait::Ok => {}
        Wait::Interrupted => return ExitCode::from(130),
        Wait::Failed(e) => {
            eprintln!("accel_sim: {e}");
            return ExitCode::from(2);
        }
    }
    let readings_per_sec = args.rate * STRIDE as f64;
    let reading_interval = 1.0 / readings_per_sec;
    let frame_step = args.frame_interval / f64::from(args.cameras.max(1));
    let tally = Tally {
        streams: (0..usize::from(args.sensors)).map(Stream::new).collect(),
        cameras: (1..=args.cameras)
            .map(|i| Camera {
                name: format!("cam-{i}"),
                topic: format!("cameras/cam-{i}/frame"),
                sent: Vec::new(),
            })
            .collect(),
        reading_interval,
        t0: unix_now(),
        windows_answered: BTreeSet::new(),
        frames_answered: BTreeSet::new(),
        models: BTreeMap::new(),
        waited: 0,
        longest_wait: 0.0,
        foreign: 0,
        unaligned: 0,
        reading_errors: 0,
        duplicates: 0,
        puback: 0,
        published: 0,
    };
    let names = |v: Vec<&str>| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    println!(
        "accel_sim: connected; sensors: {} ({} window(s)/s each: {} readings/s on sensors/<sensor>/imu, every {}th message a batch of {}); cameras: {} (a frame every {} s on cameras/<cam>/frame/<n>); {}; answers on {RESULTS_FILTER} and {ERRORS_FILTER} from {}",
        names(tally.streams.iter().map(|s| s.sensor.as_str()).collect()),
        args.rate,
        readings_per_sec,
        BATCH_EVERY,
        BATCH_LEN,
        names(tally.cameras.iter().map(|c| c.name.as_str()).collect()),
        args.frame_interval,
        if args.seconds > 0.0 {
            format!("for {} s", args.seconds)
        } else {
            "until Ctrl-C".to_string()
        },
        links[1].url
    );
    let mut run = Run {
        tally,
        links,
        results,
        interrupted: false,
        last_progress: Instant::now(),
    };

    let mut rng = Rng::new(args.seed);
    let start = Instant::now();
    let stop_at = (args.seconds > 0.0).then(|| start + Duration::from_secs_f64(args.seconds));
    // Reading i of every sensor is due at start + i * reading_interval and
    // carries ts = t0 + i * reading_interval: evenly spaced timestamps even
    // when publishing falls behind (it then catches up as fast as the
    // broker takes it), so the daemon sees no gap.
    let mut reading: u64 = 0;
    let mut frame: u64 = 0;
    let due = |k: u64, step: f64| start + Duration::from_secs_f64(k as f64 * step);

    // Publishing phase.
    loop {
        let tally = &mut run.tally;
        let next_reading = (!tally.streams.is_empty()).then(|| due(reading, reading_interval));
        let next_frame = (!tally.cameras.is_empty()).then(|| due(frame, frame_step));
        let Some(next) = next_reading.into_iter().chain(next_frame).min() else {
            break;
        };
        if run.interrupted || stop_at.is_some_and(|s| next >= s) {
            break;
        }
        let now = Instant::now();
        if now >= next {
            if next_reading == Some(next) {
                let ts = tally.t0 + reading as f64 * reading_interval;
                if let Err(e) = publish_readings(&client, tally, &mut rng, reading, ts) {
                    eprintln!("accel_sim: cannot publish: {e}");
                    return ExitCode::from(2);
                }
                reading += 1;
            } else {
                let c = (frame % tally.cameras.len() as u64) as usize;
                let cam = &mut tally.cameras[c];
                // Each camera goes through the samples, cameras offset by one.
                let sample = (cam.sent.len() + c) % SAMPLES.len();
                cam.sent.push(sample);
                let topic = format!("{}/{}", cam.topic, cam.sent.len());
                if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, SAMPLES[sample].2) {
                    eprintln!("accel_sim: cannot publish: {e}");
                    return ExitCode::from(2);
                }
                tally.published += 1;
                frame += 1;
            }
            continue;
        }
        match rx.recv_timeout(next - now) {
            Ok(ev) => {
                if !run.handle(ev) {
                    return ExitCode::from(130);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                eprintln!("accel_sim: the MQTT connection threads stopped");
                break;
            }
        }
    }
    let sent_for = start.elapsed();

    // The answers still on their way: until ANSWER_GRACE passes without
    // one while the results broker is connected (answers kept while it was
    // away come after it is back), at most MAX_WAIT.
    let sent_at = Instant::now();
    run.last_progress = run.last_progress.max(sent_at);
    let ended = loop {
        if run.tally.missing(&expected).is_empty() && run.tally.puback >= run.tally.published {
            break Ended::AllAnswered;
        }
        let now = Instant::now();
        let hard_end = sent_at + MAX_WAIT;
        let results_up = run.links[Link::Results as usize].up;
        let end = if results_up {
            (run.last_progress + ANSWER_GRACE).min(hard_end)
        } else {
            hard_end
        };
        if now >= end {
            break if results_up {
                Ended::Quiet
            } else {
                Ended::ResultsDown
            };
        }
        match rx.recv_timeout(end - now) {
            Ok(ev) => {
                if !run.handle(ev) {
                    return ExitCode::from(130);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Ended::ThreadsStopped,
        }
    };
    end_results_session(&run.results, &rx, results_opts);
    let _ = client.disconnect();

    // Summary.
    let Run {
        mut tally, links, ..
    } = run;
    let missing = tally.missing(&expected);
    let readings: u64 = tally.streams.iter().map(|s| s.published).sum();
    let messages: u64 = tally.streams.iter().map(|s| s.messages).sum();
    let batches: u64 = tally.streams.iter().map(|s| s.batches).sum();
    println!();
    println!(
        "summary: in {:.1} s, {} sensor(s) sent {readings} readings in {messages} messages ({batches} batches): {} window(s) expected per model; {} camera(s) sent {} frame(s); {} of {} messages acknowledged by the broker",
        sent_for.as_secs_f64(),
        tally.streams.len(),
        tally.windows_expected(),
        tally.cameras.len(),
        tally.frames_sent(),
        tally.puback,
        tally.published,
    );
    println!(
        "  {:<14} {:<8} {:>7} {:>18} {:>9} {:>9} {:>7}",
        "model", "answers", "results", "matched", "p50 ms", "p99 ms", "errors"
    );
    for (name, st) in &mut tally.models {
        st.totals_ms.sort_by(f64::total_cmp);
        let pct =
            |p: f64| percentile(&st.totals_ms, p).map_or("-".to_string(), |v| format!("{v:.2}"));
        let matched = if st.judged > 0 {
            format!(
                "{}/{} ({:.0}%)",
                st.matched,
                st.judged,
                100.0 * st.matched as f64 / st.judged as f64
            )
        } else {
            "-".to_string()
        };
        println!(
            "  {:<14} {:<8} {:>7} {:>18} {:>9} {:>9} {:>7}",
            name,
            if st.kind.is_empty() { "-" } else { st.kind },
            st.results,
            matched,
            pct(50.0),
            pct(99.0),
            st.errors
        );
    }
    if let Some(fixed) = &expected {
        for m in fixed {
            if !tally.models.contains_key(m) {
                println!("  {m:<14} {:<8} {:>7}  (no answer at all)", "windows", 0);
            }
        }
    }
    println!("  (windows that overlap two activities are not judged: matched counts the others)");
    for l in &links {
        if l.outages > 0 {
            println!(
                "  the {} {} was lost {} time(s), {:.1} s in all{}",
                l.what,
                l.url,
                l.outages,
                (l.offline + l.down_since.map_or(Duration::ZERO, |d| d.elapsed())).as_secs_f64(),
                if l.down_since.is_some() {
                    " (still down)"
                } else {
                    ""
                }
            );
        }
    }
    if tally.waited > 0 {
        println!(
            "  answers that arrived more than {WAITED:.0} s after the daemon received their input: {} (the longest {:.1} s): they waited in the daemon's outbox or the broker's session",
            tally.waited, tally.longest_wait
        );
    }
    if tally.reading_errors > 0 {
        println!("  errors about readings: {}", tally.reading_errors);
    }
    if tally.unaligned > 0 {
        println!(
            "  windows not starting on a window start of this run: {}",
            tally.unaligned
        );
    }
    if tally.duplicates > 0 {
        println!(
            "  duplicate answers: {} (at-least-once delivery: an answer whose confirmation was lost is published again)",
            tally.duplicates
        );
    }
    if tally.foreign > 0 {
        println!("  ignored messages not from this run: {}", tally.foreign);
    }
    // Frames answered with an error count as answered, but say so.
    let frame_errors: usize = tally
        .models
        .values()
        .filter(|st| st.kind == "frames")
        .map(|st| st.errors)
        .sum();
    if missing.is_empty() {
        if frame_errors > 0 {
            println!(
                "every window and every frame answered ({frame_errors} frame(s) with an error)"
            );
        } else {
            println!("every window and every frame answered");
        }
        ExitCode::SUCCESS
    } else {
        let examples: Vec<String> = missing.iter().take(5).cloned().collect();
        let why = match ended {
            Ended::Quiet => format!("no answer came for {} s", ANSWER_GRACE.as_secs()),
            Ended::ResultsDown => format!(
                "the results broker was still unreachable {} s after the last message was sent",
                MAX_WAIT.as_secs()
            ),
            Ended::ThreadsStopped | Ended::AllAnswered => {
                "the MQTT connection threads stopped".to_string()
            }
        };
        println!(
            "MISSING: {} answer(s) did not arrive ({why}), e.g. {}",
            missing.len(),
            examples.join(", ")
        );
        ExitCode::FAILURE
    }
}
