//! Accelerometer simulator for the demo: publishes synthetic 128x3 windows
//! (idle / walking / running / fall) for a few wrist sensors and prints the
//! daemon's answers as they arrive, then a per-model summary.
//!
//! ```text
//! cargo run --release --example accel_sim -- --port 1883 --sensors 2 --rate 2 --seconds 20
//! ```
//!
//! The windows follow the generator specification in models/accel_synth.py
//! (the one the HAR models were trained on), with a small self-contained
//! PRNG (splitmix64 + Box-Muller) instead of numpy's: same distributions,
//! not the same numbers.
//!
//! Exit status: 0 if every window got an answer from every model that
//! answered at all (or from each model named with `--models`), 1 if some
//! answers are missing, 2 on usage or connection errors, 130 on a second
//! Ctrl-C.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::Value;

const LABELS: [&str; 4] = ["idle", "walking", "running", "fall"];
const N: usize = 128;
const FS: f64 = 50.0;
const CLAMP_G: f64 = 8.0;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_GRACE: Duration = Duration::from_secs(5);
const RESULTS_FILTER: &str = "results/+/+/+";
const ERRORS_FILTER: &str = "edge-infer/+/errors";

// ---------------------------------------------------------------------------
// Command line

/// Accelerometer simulator for the edge-infer demo
///
/// Publishes synthetic 128x3 accelerometer windows (idle, walking, running,
/// fall) for a few wrist sensors on sensors/wrist-N/accel, prints the
/// daemon's answers as they arrive, then a summary per model.
///
/// Exit status: 0 if every window got an answer from every model that
/// answered at all (or from each of --models), 1 if some answers are
/// missing, 2 on usage or connection errors, 130 on a second Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "accel_sim", args_override_self = true, verbatim_doc_comment)]
struct Args {
    /// MQTT broker host
    #[arg(long, value_name = "HOST", default_value = "127.0.0.1")]
    host: String,
    /// MQTT broker port
    #[arg(long, value_name = "N", default_value_t = 1883)]
    port: u16,
    /// Number of simulated sensors wrist-1..wrist-N (1 to 1000)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(1..=1000)
    )]
    sensors: u16,
    /// Windows per second, all sensors together (above 0, at most 10000)
    #[arg(long, value_name = "R", default_value_t = 2.0, value_parser = parse_rate)]
    rate: f64,
    /// How long to publish, in seconds; 0 = until Ctrl-C
    #[arg(long, value_name = "S", default_value_t = 20.0, value_parser = parse_seconds)]
    seconds: f64,
    /// PRNG seed
    #[arg(long, value_name = "N", default_value_t = 20240601)]
    seed: u64,
    /// Models expected to answer every window, comma-separated [default:
    /// every model that answers at least once]
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

fn parse_rate(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0 && *r <= 10_000.0)
        .ok_or_else(|| "must be a number in (0, 10000]".into())
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

    /// Uniform integer in [lo, hi] (inclusive).
    fn integer(&mut self, lo: i64, hi: i64) -> i64 {
        let span = (hi - lo + 1) as f64;
        lo + ((self.unit() * span) as i64).min(hi - lo)
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

    fn noise(&mut self, s: f64) -> Vec<[f64; 3]> {
        (0..N)
            .map(|_| [self.normal(s), self.normal(s), self.normal(s)])
            .collect()
    }
}

/// One [128, 3] window in g for `label` (index into LABELS), per the spec in
/// models/accel_synth.py, draws in the same order as there.
fn gen_window(label: usize, rng: &mut Rng) -> Vec<[f32; 3]> {
    let t = |i: usize| i as f64 / FS;
    let a: Vec<[f64; 3]> = match label {
        0 => {
            let b = [
                rng.uniform(-0.05, 0.05),
                rng.uniform(-0.05, 0.05),
                rng.uniform(-0.05, 0.05),
            ];
            let n = rng.noise(0.02);
            n.iter()
                .map(|n| [b[0] + n[0], b[1] + n[1], 1.0 + b[2] + n[2]])
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
            let n = rng.noise(sigma);
            let w = 2.0 * std::f64::consts::PI * f;
            n.iter()
                .enumerate()
                .map(|(i, n)| {
                    let theta = w * t(i) + phi;
                    [
                        0.40 * amp * theta.cos() + b[0] + n[0],
                        0.25 * amp * (theta / 2.0).sin() + b[1] + n[1],
                        1.0 + amp * theta.sin() + b[2] + n[2],
                    ]
                })
                .collect()
        }
        _ => {
            let k = rng.integer(32, 96);
            let peak = rng.uniform(3.5, 6.0);
            let tilt = rng.uniform(60.0, 120.0).to_radians();
            let az = rng.uniform(0.0, 360.0).to_radians();
            let n = rng.noise(0.03);
            let u = [tilt.sin() * az.cos(), tilt.sin() * az.sin(), tilt.cos()];
            n.iter()
                .enumerate()
                .map(|(i, n)| {
                    let i = i as i64;
                    let base = if i < k - 2 {
                        [0.0, 0.0, 1.0]
                    } else if i <= k + 2 {
                        let m = peak * (1.0 - (i - k).abs() as f64 / 3.0);
                        [m * u[0], m * u[1], m * u[2]]
                    } else {
                        u
                    };
                    [base[0] + n[0], base[1] + n[1], base[2] + n[2]]
                })
                .collect()
        }
    };
    a.iter()
        .map(|r| r.map(|v| v.clamp(-CLAMP_G, CLAMP_G) as f32))
        .collect()
}

// ---------------------------------------------------------------------------
// MQTT plumbing: the connection runs on its own thread and forwards what
// matters here through a channel, together with Ctrl-C.

enum Ev {
    Connected,
    ConnError(String),
    SubAck(Vec<SubscribeReasonCode>),
    PubAck,
    Message(String, Vec<u8>),
    Interrupt,
}

fn spawn_connection(mut connection: rumqttc::Connection, tx: Sender<Ev>) {
    thread::spawn(move || {
        for event in connection.iter() {
            let ev = match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::Connected,
                Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(s.return_codes),
                Ok(Event::Incoming(Packet::PubAck(_))) => Ev::PubAck,
                Ok(Event::Incoming(Packet::Publish(p))) => Ev::Message(p.topic, p.payload.to_vec()),
                Ok(_) => continue,
                Err(e) => {
                    let sent = tx.send(Ev::ConnError(e.to_string()));
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

struct Sent {
    sensor: String,
    label: usize,
}

#[derive(Default)]
struct ModelStats {
    results: usize,
    matched: usize,
    errors: usize,
    totals_ms: Vec<f64>,
}

#[derive(Default)]
struct Tally {
    sent: HashMap<String, Sent>,
    sent_order: Vec<String>,
    /// (id, model) pairs answered; model "" = an error not tied to a model,
    /// which answers the id for every model.
    answered: BTreeSet<(String, String)>,
    models: BTreeMap<String, ModelStats>,
    foreign: usize,
    unmatched_errors: usize,
    duplicates: usize,
    puback: usize,
}

fn f64_at(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn id_string(v: &Value) -> Option<String> {
    match v.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Tally {
    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        let v: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                println!("{topic}: unreadable message ({e})");
                return;
            }
        };
        if topic.starts_with("edge-infer/") {
            self.on_error(topic, &v);
        } else {
            self.on_result(topic, &v);
        }
    }

    fn on_result(&mut self, topic: &str, v: &Value) {
        let model = v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let Some(id) = id_string(v) else {
            self.foreign += 1;
            return;
        };
        let Some(sent) = self.sent.get(&id) else {
            // Someone else's message (or an earlier run's) on the same broker.
            self.foreign += 1;
            return;
        };
        if !self.answered.insert((id.clone(), model.clone())) {
            self.duplicates += 1;
            println!("{topic}: duplicate answer for {id} from {model}");
            return;
        }
        let best = v
            .get("top_k")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        let best_index = best.and_then(|b| b.get("index")).and_then(Value::as_u64);
        let best_label = best
            .and_then(|b| b.get("label"))
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| best_index.map(|i| format!("#{i}")));
        let score = best.and_then(|b| b.get("score")).and_then(Value::as_f64);
        let matched = match best.and_then(|b| b.get("label")).and_then(Value::as_str) {
            Some(l) => l == LABELS[sent.label],
            None => best_index == Some(sent.label as u64),
        };
        let invoke = f64_at(v, &["latency_ms", "invoke"]);
        let total = f64_at(v, &["latency_ms", "total"]);
        let st = self.models.entry(model.clone()).or_default();
        st.results += 1;
        if matched {
            st.matched += 1;
        }
        if let Some(t) = total {
            st.totals_ms.push(t);
        }
        let pred = match (best_label, score) {
            (Some(l), Some(s)) => format!("{l:<8} {s:.2}"),
            (Some(l), None) => format!("{l:<8}     "),
            _ => "(no top_k)   ".to_string(),
        };
        let ms = |x: Option<f64>| x.map_or("?".to_string(), |x| format!("{x:.2}"));
        println!(
            "{:<8} #{:<4} sent={:<8} {:>8}: {}  (invoke {} ms, total {} ms){}",
            sent.sensor,
            id.rsplit('-').next().unwrap_or(""),
            LABELS[sent.label],
            model,
            pred,
            ms(invoke),
            ms(total),
            if matched { "" } else { "  <- mismatch" }
        );
    }

    fn on_error(&mut self, topic: &str, v: &Value) {
        let code = v.get("code").and_then(Value::as_str).unwrap_or("?");
        let message = v.get("message").and_then(Value::as_str).unwrap_or("");
        let model = v.get("model").and_then(Value::as_str).map(String::from);
        let source = v.get("source_topic").and_then(Value::as_str).unwrap_or("?");
        let id = id_string(v);
        let ours = id.as_ref().and_then(|i| self.sent.get(i));
        if let (Some(id), Some(sent)) = (&id, ours) {
            let who = model.clone().unwrap_or_default();
            if !self.answered.insert((id.clone(), who)) {
                self.duplicates += 1;
            } else if let Some(m) = &model {
                self.models.entry(m.clone()).or_default().errors += 1;
            }
            println!(
                "{:<8} #{:<4} sent={:<8} {:>8}: ERROR {code}: {message}",
                sent.sensor,
                id.rsplit('-').next().unwrap_or(""),
                LABELS[sent.label],
                model.as_deref().unwrap_or("-"),
            );
        } else if id.is_none() && source.starts_with("sensors/wrist-") {
            // An error we cannot tie to one window (e.g. overload without id).
            self.unmatched_errors += 1;
            println!(
                "{topic}: ERROR {code} for {source} ({}): {message}",
                model.as_deref().unwrap_or("no model")
            );
        } else {
            self.foreign += 1;
        }
    }

    /// The models every window should be answered by.
    fn expected_models(&self, fixed: &Option<Vec<String>>) -> Vec<String> {
        match fixed {
            Some(m) => m.clone(),
            None => self.models.keys().cloned().collect(),
        }
    }

    /// Unanswered (id, model) pairs. With no model known yet, every window
    /// counts as missing once.
    fn missing(&self, fixed: &Option<Vec<String>>) -> Vec<(String, String)> {
        let models = self.expected_models(fixed);
        let mut out = Vec::new();
        for id in &self.sent_order {
            if self.answered.contains(&(id.clone(), String::new())) {
                continue;
            }
            if models.is_empty() {
                out.push((id.clone(), "(any model)".to_string()));
            }
            for m in &models {
                if !self.answered.contains(&(id.clone(), m.clone())) {
                    out.push((id.clone(), m.clone()));
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

/// Waits for ConnAck, then subscribes and waits for both SubAcks.
fn connect_and_subscribe(client: &Client, rx: &Receiver<Ev>, host: &str, port: u16) -> Wait {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut last_error = String::from("no answer");
    let mut connected = false;
    let mut acks = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let what = if connected {
                "no subscription acknowledgement"
            } else {
                last_error.as_str()
            };
            return Wait::Failed(format!(
                "cannot reach the MQTT broker at {host}:{port} within {} s: {what}",
                CONNECT_TIMEOUT.as_secs()
            ));
        }
        match rx.recv_timeout(left) {
            Ok(Ev::Connected) => {
                connected = true;
                acks = 0;
                for filter in [RESULTS_FILTER, ERRORS_FILTER] {
                    if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce) {
                        return Wait::Failed(format!("cannot subscribe to {filter}: {e}"));
                    }
                }
            }
            Ok(Ev::ConnError(e)) => {
                connected = false;
                last_error = e;
            }
            Ok(Ev::SubAck(codes)) => {
                if codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Wait::Failed("the broker refused a subscription".into());
                }
                acks += 1;
                if acks >= 2 {
                    return Wait::Ok;
                }
            }
            Ok(Ev::Interrupt) => return Wait::Interrupted,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Wait::Failed("the MQTT connection thread stopped".into())
            }
        }
    }
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
    let expected = args.expected();

    let mut opts = MqttOptions::new(
        format!("accel-sim-{}", std::process::id()),
        &args.host,
        args.port,
    );
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_session(true);
    // Results of image models can be large; windows are ~5 kB.
    opts.set_max_packet_size(4 << 20, 1 << 20);
    let (client, connection) = Client::new(opts, 256);
    let (tx, rx) = mpsc::channel();
    spawn_connection(connection, tx.clone());
    spawn_ctrl_c(tx);

    println!("accel_sim: connecting to {}:{} ...", args.host, args.port);
    match connect_and_subscribe(&client, &rx, &args.host, args.port) {
        Wait::Ok => {}
        Wait::Interrupted => return ExitCode::from(130),
        Wait::Failed(e) => {
            eprintln!("accel_sim: {e}");
            return ExitCode::from(2);
        }
    }
    let sensors: Vec<String> = (1..=args.sensors).map(|i| format!("wrist-{i}")).collect();
    println!(
        "accel_sim: connected; {} sensor(s) ({}), {} window(s)/s, {}; answers on {RESULTS_FILTER} and {ERRORS_FILTER}",
        sensors.len(),
        sensors.join(", "),
        args.rate,
        if args.seconds > 0.0 {
            format!("for {} s", args.seconds)
        } else {
            "until Ctrl-C".to_string()
        }
    );

    let mut rng = Rng::new(args.seed);
    let mut tally = Tally::default();
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let stop_at = (args.seconds > 0.0).then(|| start + Duration::from_secs_f64(args.seconds));
    let mut next_send = start;
    let mut n: u64 = 0;
    let mut seq = vec![0u64; sensors.len()];
    let mut interrupted = false;
    let mut connected = true;

    // Handles one event; false on a second Ctrl-C (exit now).
    let handle = |ev: Ev,
                  tally: &mut Tally,
                  interrupted: &mut bool,
                  connected: &mut bool|
     -> bool {
        match ev {
            Ev::Message(topic, payload) => tally.on_message(&topic, &payload),
            Ev::PubAck => tally.puback += 1,
            Ev::Interrupt => {
                if *interrupted {
                    return false;
                }
                *interrupted = true;
                println!("accel_sim: interrupted; waiting for outstanding answers (Ctrl-C again to quit now)");
            }
            Ev::ConnError(e) => {
                if *connected {
                    eprintln!("accel_sim: connection to the broker lost: {e}; reconnecting");
                }
                *connected = false;
            }
            Ev::Connected => {
                *connected = true;
                eprintln!("accel_sim: reconnected");
                for filter in [RESULTS_FILTER, ERRORS_FILTER] {
                    if let Err(e) = client.subscribe(filter, QoS::AtLeastOnce) {
                        eprintln!("accel_sim: cannot subscribe to {filter}: {e}");
                    }
                }
            }
            Ev::SubAck(_) => {}
        }
        true
    };

    // Publishing phase.
    loop {
        if interrupted || stop_at.is_some_and(|s| next_send >= s) {
            break;
        }
        let now = Instant::now();
        if now >= next_send {
            let si = (n % sensors.len() as u64) as usize;
            let sensor = &sensors[si];
            seq[si] += 1;
            // Each sensor walks through the four patterns, sensors offset by one.
            let label = ((seq[si] - 1 + si as u64) % LABELS.len() as u64) as usize;
            let id = format!("{sensor}-{}", seq[si]);
            let window = gen_window(label, &mut rng);
            let payload = match (serde_json::to_string(&id), serde_json::to_string(&window)) {
                (Ok(i), Ok(d)) => format!("{{\"id\":{i},\"data\":{d}}}"),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("accel_sim: cannot serialize a window: {e}");
                    return ExitCode::from(2);
                }
            };
            tally.sent.insert(
                id.clone(),
                Sent {
                    sensor: sensor.clone(),
                    label,
                },
            );
            tally.sent_order.push(id);
            let topic = format!("sensors/{sensor}/accel");
            if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, payload.into_bytes()) {
                eprintln!("accel_sim: cannot publish: {e}");
                return ExitCode::from(2);
            }
            n += 1;
            next_send += interval;
            // Fell far behind (e.g. a long stall)? Don't burst to catch up.
            if Instant::now() > next_send + 4 * interval {
                next_send = Instant::now();
            }
            continue;
        }
        match rx.recv_timeout(next_send - now) {
            Ok(ev) => {
                if !handle(ev, &mut tally, &mut interrupted, &mut connected) {
                    return ExitCode::from(130);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                eprintln!("accel_sim: the MQTT connection thread stopped");
                break;
            }
        }
    }
    let sent_for = start.elapsed();

    // Grace period for the answers still on their way.
    let grace_end = Instant::now() + ANSWER_GRACE;
    loop {
        let known = !tally.expected_models(&expected).is_empty();
        if known && tally.missing(&expected).is_empty() && tally.puback >= tally.sent_order.len() {
            break;
        }
        let left = grace_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(ev) => {
                if !handle(ev, &mut tally, &mut interrupted, &mut connected) {
                    return ExitCode::from(130);
                }
            }
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = client.disconnect();

    // Summary.
    let missing = tally.missing(&expected);
    println!();
    println!(
        "summary: sent {} window(s) from {} sensor(s) in {:.1} s ({} acknowledged by the broker)",
        tally.sent_order.len(),
        sensors.len(),
        sent_for.as_secs_f64(),
        tally.puback
    );
    println!(
        "  {:<14} {:>7} {:>18} {:>9} {:>9} {:>7}",
        "model", "results", "matched", "p50 ms", "p99 ms", "errors"
    );
    for (name, st) in &mut tally.models {
        st.totals_ms.sort_by(f64::total_cmp);
        let pct =
            |p: f64| percentile(&st.totals_ms, p).map_or("-".to_string(), |v| format!("{v:.2}"));
        let matched = if st.results > 0 {
            format!(
                "{}/{} ({:.0}%)",
                st.matched,
                st.results,
                100.0 * st.matched as f64 / st.results as f64
            )
        } else {
            "-".to_string()
        };
        println!(
            "  {:<14} {:>7} {:>18} {:>9} {:>9} {:>7}",
            name,
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
                println!("  {m:<14} {:>7}  (no answer at all)", 0);
            }
        }
    }
    if tally.unmatched_errors > 0 {
        println!("  errors without a window id: {}", tally.unmatched_errors);
    }
    if tally.duplicates > 0 {
        println!("  duplicate answers: {}", tally.duplicates);
    }
    if tally.foreign > 0 {
        println!("  ignored messages not from this run: {}", tally.foreign);
    }
    if missing.is_empty() {
        println!("every window answered");
        ExitCode::SUCCESS
    } else {
        let examples: Vec<String> = missing
            .iter()
            .take(5)
            .map(|(id, m)| format!("{id} ({m})"))
            .collect();
        println!(
            "MISSING: {} answer(s) did not arrive within {} s, e.g. {}",
            missing.len(),
            ANSWER_GRACE.as_secs(),
            examples.join(", ")
        );
        ExitCode::FAILURE
    }
}
