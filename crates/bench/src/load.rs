//! The open-loop load generator. Send times are fixed in advance
//! (`start + seq / rate`); every latency is measured from the scheduled send
//! time to the receipt of the matching result, so a stall anywhere (the
//! generator, the broker, the target) shows up as latency instead of
//! silently lowering the offered rate (no coordinated omission).
//!
//! Each message carries a run nonce and a sequence number: in the JSON
//! `"id"` (`nonce * 1e9 + seq`) or, for raw payloads, in the last topic
//! level (`<topic>/<nonce>_<seq>`), which the target copies into its
//! output topic through `{1}`.
//!
//! Readings (`Payload::Readings`) are the exception: one small JSON object
//! per reading, like an IMU publishes, round-robin over a few streams
//! (`<topic>/<nonce>-s<i>`). A reading gets no answer of its own; the
//! target answers each completed window with `"window": {"key", "seq"}`,
//! and (key, seq) names the reading that completed it, whose scheduled send
//! time the latency is measured from.
//!
//! At `--qos 1` the broker acknowledges every message (PUBACK); those are
//! counted and timed from the scheduled send too (`ack_*`). A broker
//! acknowledges a publish on receipt, so they time the generator and the
//! broker, not the target's own acknowledgement to the broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rumqttc::{Connection, Event, Incoming, Outgoing, QoS, RecvTimeoutError};
use serde_json::{json, Value};

use crate::echo::{find, json_id};
use crate::mqtt;

const ID_SPAN: u64 = 1_000_000_000;

#[derive(Debug, Clone)]
pub enum Payload {
    /// A JSON object without `"id"`, serialized; the id is put in front.
    Json(Vec<u8>),
    /// Raw bytes (a tensor, an image file), sent as they are.
    Raw(Vec<u8>),
    /// One JSON object per reading, over several streams, answered per
    /// completed window.
    Readings(Readings),
}

impl Payload {
    /// Bytes per message (for readings, the mean over the samples).
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(b) | Payload::Raw(b) => b.len(),
            Payload::Readings(r) => r.mean_len(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Json(_) => "json",
            Payload::Raw(_) => "raw",
            Payload::Readings(_) => "readings",
        }
    }

    /// The message of sequence number `seq` (`id` for JSON; `ts`, Unix
    /// seconds, for readings).
    fn message(&self, id: u64, seq: u64, ts: f64) -> Vec<u8> {
        match self {
            Payload::Raw(b) => b.clone(),
            Payload::Readings(r) => r.message(seq, ts),
            Payload::Json(body) => {
                let mut v = Vec::with_capacity(body.len() + 24);
                v.extend_from_slice(b"{\"id\":");
                v.extend_from_slice(id.to_string().as_bytes());
                let rest = &body[1..];
                if rest.first() != Some(&b'}') {
                    v.push(b',');
                }
                v.extend_from_slice(rest);
                v
            }
        }
    }
}

/// Per-reading JSON messages, as an IMU publishes them:
/// `{"ts":1764620000.120345,"ax":0.092,"ay":0.096,"az":1.171}`. Message
/// `seq` belongs to stream `seq % streams`; each stream replays the samples
/// in a loop from its own offset (stream i from sample i * len / streams,
/// so with four fixture windows and four streams each stream starts in a
/// different activity). The target windows each stream (`size` readings,
/// a window every `stride`) and answers per window.
#[derive(Debug, Clone)]
pub struct Readings {
    /// Per sample, the message text after the timestamp's value, e.g.
    /// `,"ax":0.092,"ay":0.096,"az":1.171}`: formatted once, so a send only
    /// formats the timestamp.
    tails: Vec<String>,
    /// The timestamp's field name.
    ts_field: String,
    pub streams: u64,
    pub size: u64,
    pub stride: u64,
}

/// The shape of a readings workload (bench/workloads.json `"window"` and
/// `"streams"`).
#[derive(Debug, Clone)]
pub struct ReadingsSpec<'a> {
    /// Fixture cases to take the samples from, in order.
    pub cases: &'a [String],
    /// One name per innermost element of the fixture's input, in order.
    pub fields: &'a [String],
    pub ts_field: &'a str,
    /// Decimals of each value, as a sensor would round them.
    pub decimals: usize,
    pub streams: u64,
    pub size: u64,
    pub stride: u64,
}

impl Readings {
    /// Builds readings from fixture cases: each case's first input is
    /// split into samples of `fields.len()` values (the innermost dimension).
    pub fn from_fixture(path: &Path, spec: &ReadingsSpec) -> Result<Readings, String> {
        let shown = path.display();
        if spec.fields.is_empty() || spec.streams == 0 || spec.size == 0 || spec.stride == 0 {
            return Err(format!(
                "readings from {shown}: fields, streams, size and stride must not be empty or 0"
            ));
        }
        let mut tails = Vec::new();
        for case in spec.cases {
            let values = fixture_values(path, Some(case))?;
            if values.len() % spec.fields.len() != 0 {
                return Err(format!(
                    "fixture {shown} case {case}: {} values do not split into readings of {} fields",
                    values.len(),
                    spec.fields.len()
                ));
            }
            for sample in values.chunks_exact(spec.fields.len()) {
                let mut t = String::new();
                for (name, v) in spec.fields.iter().zip(sample) {
                    let quoted = serde_json::to_string(name).map_err(|e| e.to_string())?;
                    t.push_str(&format!(",{quoted}:{v:.prec$}", prec = spec.decimals));
                }
                t.push('}');
                tails.push(t);
            }
        }
        if tails.is_empty() {
            return Err(format!("readings from {shown}: no cases given"));
        }
        Ok(Readings {
            tails,
            ts_field: serde_json::to_string(spec.ts_field).map_err(|e| e.to_string())?,
            streams: spec.streams,
            size: spec.size,
            stride: spec.stride,
        })
    }

    fn message(&self, seq: u64, ts: f64) -> Vec<u8> {
        let stream = seq % self.streams;
        let k = seq / self.streams;
        let len = self.tails.len() as u64;
        let sample = (stream * len / self.streams + k) % len;
        let tail = &self.tails[sample as usize];
        // Microseconds, so a stream's timestamps rise even at 10,000+
        // readings per second per stream (the target refuses readings
        // earlier than their stream's last one).
        format!("{{{}:{ts:.6}{tail}", self.ts_field).into_bytes()
    }

    fn mean_len(&self) -> usize {
        let ts_len = "1764620000.120345".len() + self.ts_field.len() + 2;
        let tails: usize = self.tails.iter().map(String::len).sum();
        ts_len + tails / self.tails.len().max(1)
    }

    /// The stream level of the topic of stream `i` in run `nonce`.
    pub fn stream_name(nonce: u64, i: u64) -> String {
        format!("{nonce}-s{i}")
    }

    /// Windows the first `n` messages complete, over all streams.
    pub fn windows(&self, n: u64) -> u64 {
        (0..self.streams)
            .map(|i| {
                // Messages i, i + streams, .. belong to stream i.
                let k = n / self.streams + u64::from(i < n % self.streams);
                if k < self.size {
                    0
                } else {
                    1 + (k - self.size) / self.stride
                }
            })
            .sum()
    }

    /// The sequence number of the message that completes window `wseq`
    /// (from 1) of stream `stream`.
    pub fn completing(&self, stream: u64, wseq: u64) -> Option<u64> {
        if stream >= self.streams || wseq == 0 {
            return None;
        }
        let k = self
            .size
            .checked_add((wseq - 1).checked_mul(self.stride)?)?
            .checked_sub(1)?;
        k.checked_mul(self.streams)?.checked_add(stream)
    }

    /// The shortest run, in seconds at `rate`, that measures something: it
    /// completes two windows per stream (a run that completes none in some
    /// stream measures nothing there) and 100 windows in all, so the p99
    /// is not simply the slowest window (a run of 1:1 messages at the lowest
    /// fixed rates has thousands of samples; 3 s of readings at 1,000/s
    /// would have 40 windows).
    pub fn min_seconds(&self, rate: f64) -> f64 {
        const MIN_WINDOWS: u64 = 100;
        let per_stream = MIN_WINDOWS.div_ceil(self.streams).max(2);
        let readings = (self.size + (per_stream - 1) * self.stride) * self.streams;
        readings as f64 / rate
    }
}

/// What to send: a payload file or a fixture case (one of them).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["payload", "fixture"])))]
pub struct PayloadArgs {
    /// A JSON object to send (its "id" is replaced per message), or with
    /// --raw the bytes to send as they are
    #[arg(long, value_name = "FILE")]
    pub payload: Option<PathBuf>,
    /// Send a case of this reference file (tests/fixtures/*.json): its first
    /// input as {"data": values}, or with --raw its quantized bytes
    #[arg(long, value_name = "F.json")]
    pub fixture: Option<PathBuf>,
    /// The case of --fixture [default: its first]
    #[arg(long, value_name = "NAME", requires = "fixture")]
    pub case: Option<String>,
    /// Raw payloads (tensor bytes) instead of JSON
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// MQTT broker port on 127.0.0.1
    #[arg(long, value_name = "P", default_value_t = 1883)]
    pub port: u16,
    /// The topic to publish on
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// Append a level <nonce>_<seq> to --topic and match results by topic
    /// (for raw payloads, which carry no id)
    #[arg(long)]
    pub seq_topic: bool,
    /// The filter the results arrive on
    #[arg(long, value_name = "FILTER")]
    pub results: String,
    /// The broker port the results and errors arrive on [default: --port]
    #[arg(long, value_name = "P")]
    pub results_port: Option<u16>,
    /// QoS of the messages sent (0 or 1); at 1 the broker's
    /// acknowledgements are counted and timed too
    #[arg(long, value_name = "0|1", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// The filter the target's errors arrive on
    #[arg(long, value_name = "FILTER")]
    pub errors: Option<String>,
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// Offered rates in messages per second, one run each (comma-separated
    /// or repeated)
    #[arg(long, value_name = "R[,R..]", required = true, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// How long each run sends
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub seconds: f64,
    /// How long to wait for results after the last scheduled send
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = crate::parse_secs)]
    pub grace: Duration,
    /// Also write one JSON line per answer to FILE: `seq`, `e2e_ms` (from
    /// the scheduled send), `at_ms` (receipt, from the run's start), the
    /// result's `accelerator` and `latency_ms`; errors as `error` (code)
    /// and `id`. With several --rate runs, the last run's
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

/// Loads a payload: a JSON file (its `"id"` is replaced per message), a
/// binary file (raw), or a case of a `tests/fixtures/*.json` reference file.
pub fn payload_from_args(a: &PayloadArgs) -> Result<Payload, String> {
    let raw = a.raw;
    if let Some(file) = &a.payload {
        let path = file.display();
        let bytes =
            std::fs::read(file).map_err(|e| format!("cannot read payload file {path}: {e}"))?;
        if raw {
            return Ok(Payload::Raw(bytes));
        }
        let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!("payload file {path} is not JSON ({e}); pass --raw for raw bytes")
        })?;
        let Some(obj) = v.as_object_mut() else {
            return Err(format!("payload file {path} is not a JSON object"));
        };
        obj.remove("id");
        return serde_json::to_vec(&v)
            .map(Payload::Json)
            .map_err(|e| e.to_string());
    }
    let fixture = a
        .fixture
        .as_deref()
        .ok_or("give --payload FILE or --fixture FILE --case NAME")?;
    fixture_payload(fixture, a.case.as_deref(), raw)
}

/// One case of a fixture file (`tests/fixtures/*.json`): the one named
/// `case`, or the first. Shared by `load` and `floor`.
pub fn fixture_case(path: &Path, case: Option<&str>) -> Result<Value, String> {
    let shown = path.display();
    let text = std::fs::read(path).map_err(|e| format!("cannot read fixture {shown}: {e}"))?;
    let mut v: Value =
        serde_json::from_slice(&text).map_err(|e| format!("fixture {shown} is not JSON: {e}"))?;
    let cases = v
        .get_mut("cases")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("fixture {shown} has no \"cases\" array"))?;
    match case {
        None => cases.first_mut(),
        Some(name) => cases
            .iter_mut()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name)),
    }
    .map(Value::take)
    .ok_or_else(|| format!("fixture {shown} has no case {}", case.unwrap_or("(any)")))
}

/// The first input of a fixture case (`tests/fixtures/*.json`).
fn fixture_input(path: &Path, case: Option<&str>) -> Result<Value, String> {
    let shown = path.display();
    let mut chosen = fixture_case(path, case)?;
    chosen
        .get_mut("inputs")
        .and_then(Value::as_array_mut)
        .and_then(|i| i.first_mut())
        .map(Value::take)
        .ok_or_else(|| format!("fixture {shown}: case has no inputs"))
}

/// The float-domain values of a fixture case's first input, flat.
fn fixture_values(path: &Path, case: Option<&str>) -> Result<Vec<f64>, String> {
    let shown = path.display();
    let input = fixture_input(path, case)?;
    input
        .get("values")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("fixture {shown}: input has no \"values\" array"))?
        .iter()
        .map(|x| {
            x.as_f64()
                .ok_or_else(|| format!("fixture {shown}: value {x} is not a number"))
        })
        .collect()
}

/// The first input of a fixture case: `{"data": values}` (float domain, as
/// a device would send it) or the quantized bytes for `raw`.
pub fn fixture_payload(path: &Path, case: Option<&str>, raw: bool) -> Result<Payload, String> {
    let shown = path.display();
    if raw {
        let input = fixture_input(path, case)?;
        let dtype = input.get("dtype").and_then(Value::as_str).unwrap_or("");
        let q = input
            .get("quantized")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("fixture {shown}: input has no \"quantized\" values (raw needs an int8/uint8 input)"))?;
        let mut bytes = Vec::with_capacity(q.len());
        for x in q {
            let n = x
                .as_i64()
                .ok_or_else(|| format!("fixture {shown}: quantized value {x} is not an integer"))?;
            let b = match dtype {
                "int8" => i8::try_from(n).map(|b| b as u8).ok(),
                "uint8" => u8::try_from(n).ok(),
                other => {
                    return Err(format!(
                        "fixture {shown}: raw payloads for dtype {other} are not supported"
                    ))
                }
            }
            .ok_or_else(|| format!("fixture {shown}: {n} does not fit {dtype}"))?;
            bytes.push(b);
        }
        return Ok(Payload::Raw(bytes));
    }
    let values = fixture_values(path, case)?;
    // Written as float32 numbers (shortest form that round-trips), as a
    // device with float32 readings would send them: `{"data":[..]}`, flat.
    let mut body = String::with_capacity(values.len() * 12 + 16);
    body.push_str("{\"data\":[");
    for (i, f) in values.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&(*f as f32).to_string());
    }
    body.push_str("]}");
    Ok(Payload::Json(body.into_bytes()))
}

#[derive(Debug, Clone)]
pub struct Workload {
    /// Publish topic; with `seq_topic` a level `<nonce>_<seq>` is appended,
    /// for readings a level `<nonce>-s<stream>`.
    pub topic: String,
    pub seq_topic: bool,
    /// Where results arrive (a filter).
    pub results: String,
    /// Where errors arrive (a filter), if the target has an error topic.
    pub errors: Option<String>,
    pub payload: Payload,
}

impl Workload {
    /// How results name the message they answer.
    pub(crate) fn matching(&self) -> Matching<'_> {
        match &self.payload {
            Payload::Readings(r) => Matching::Window(r),
            _ if self.seq_topic => Matching::Topic,
            _ => Matching::Id,
        }
    }

    /// Results the first `n` messages should bring.
    pub fn expected(&self, n: u64) -> u64 {
        match &self.payload {
            Payload::Readings(r) => r.windows(n),
            _ => n,
        }
    }

    /// The shortest run that measures anything at `rate` (see
    /// `Readings::min_seconds`); 0 for one answer per message.
    pub fn min_seconds(&self, rate: f64) -> f64 {
        match &self.payload {
            Payload::Readings(r) => r.min_seconds(rate),
            _ => 0.0,
        }
    }

    /// Whether this workload publishes on `topic` (`topic`, or one level
    /// below it for readings and sequence-numbered topics).
    pub fn sends_on(&self, topic: &str) -> bool {
        let level_below = self.seq_topic || matches!(self.payload, Payload::Readings(_));
        match topic.strip_prefix(self.topic.as_str()) {
            Some("") => !level_below,
            Some(rest) => level_below && rest.strip_prefix('/').is_some_and(|l| !l.contains('/')),
            None => false,
        }
    }

    /// Whether an error message is about one of this workload's messages:
    /// its `source_topic` is one this workload sends on. Several workloads
    /// share the target's error topic when they run at once (the mixed
    /// phase); an error without `source_topic` counts for each.
    fn owns_error(&self, payload: &[u8]) -> bool {
        match json_value_at(payload, b"\"source_topic\"") {
            Some(Value::String(t)) => self.sends_on(&t),
            _ => true,
        }
    }
}

/// How a result names the message it answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Matching<'a> {
    /// `"id"`: nonce * ID_SPAN + seq.
    Id,
    /// The last topic level: `<nonce>_<seq>`.
    Topic,
    /// `"window": {"key": "<nonce>-s<stream>", "seq": n}`: the message that
    /// completed the window.
    Window(&'a Readings),
}

#[derive(Debug, Clone)]
pub struct RunSpec {
    pub port: u16,
    /// Where the results and errors arrive (the target's uplink, or `port`).
    pub results_port: u16,
    /// QoS of the messages sent.
    pub qos: QoS,
    pub rate: f64,
    pub seconds: f64,
    /// How long to wait for results after the last scheduled send.
    pub grace: Duration,
    /// Where to write one JSON line per answer (see `LoadArgs::trace`).
    pub trace: Option<PathBuf>,
    /// Stop waiting for results as soon as the run cannot be sustained at
    /// this p99 (ms): an error arrived, or more than 1% of the expected
    /// results are still missing this long after the last send (each would
    /// come later than the p99 allows, or never). The search's trials use
    /// it: their verdict is all that counts, and an overloaded target
    /// would otherwise hold each failed trial for the whole grace period.
    pub give_up_p99_ms: Option<f64>,
}

/// Microsecond histograms of the target's own stage timings, read from the
/// `latency_ms` object of its results when present.
struct Stages {
    queue: Histogram<u64>,
    pre: Histogram<u64>,
    invoke: Histogram<u64>,
    post: Histogram<u64>,
    total: Histogram<u64>,
}

pub fn hist() -> Histogram<u64> {
    // 1 us .. 1 hour, 3 significant digits; bounds are constants, so this
    // cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

impl Stages {
    fn new() -> Stages {
        Stages {
            queue: hist(),
            pre: hist(),
            invoke: hist(),
            post: hist(),
            total: hist(),
        }
    }

    fn record(&mut self, payload: &[u8]) {
        let Some(v) = json_value_at(payload, b"\"latency_ms\"") else {
            return;
        };
        for (name, h) in [
            ("queue", &mut self.queue),
            ("pre", &mut self.pre),
            ("invoke", &mut self.invoke),
            ("post", &mut self.post),
            ("total", &mut self.total),
        ] {
            if let Some(ms) = v.get(name).and_then(Value::as_f64) {
                let _ = h.record(((ms * 1000.0).round() as u64).max(1));
            }
        }
    }

    fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        for (name, h) in [
            ("queue", &self.queue),
            ("pre", &self.pre),
            ("invoke", &self.invoke),
            ("post", &self.post),
            ("total", &self.total),
        ] {
            if !h.is_empty() {
                o.insert(
                    name.into(),
                    json!({"p50_ms": ms(h.value_at_quantile(0.5)), "p99_ms": ms(h.value_at_quantile(0.99))}),
                );
            }
        }
        Value::Object(o)
    }
}

pub fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub sent: u64,
    /// Results the messages sent should bring (= sent, or the windows the
    /// readings sent complete).
    pub expected: u64,
    pub received: u64,
    pub errors: u64,
    /// Expected and not answered when the run stopped waiting: lost after
    /// the whole grace period, or only not yet answered when a trial gave
    /// up early (`gave_up`).
    pub lost: u64,
    /// Why a trial stopped waiting before its grace period was over.
    pub gave_up: Option<GaveUp>,
    /// Messages the target handled, for CPU per message: the answered ones,
    /// or for readings every reading sent (most get no answer of their own).
    pub handled: u64,
    pub json: Value,
}

/// Why a trial stopped waiting for answers early (`RunSpec::give_up_p99_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// An error (e.g. `overloaded`) arrived: the trial has failed.
    Error,
    /// More than 1% still unanswered after the p99 allowed.
    Late,
}

impl Report {
    /// "lost N", or for a trial that gave up early what was still
    /// unanswered then: those answers may well have come later, so they are
    /// not called lost.
    pub fn lost_label(&self) -> String {
        match self.gave_up {
            None => format!("lost {}", self.lost),
            Some(GaveUp::Error) => format!(
                "unanswered {} (stopped waiting at the first error)",
                self.lost
            ),
            Some(GaveUp::Late) => {
                format!("unanswered {} (stopped waiting past the p99)", self.lost)
            }
        }
    }

    /// Something expected, zero lost, zero errors (dropped/overloaded) and
    /// the p99 within the SLO.
    pub fn sustained(&self, slo_p99_ms: f64) -> bool {
        self.complete() && self.latency_ms("p99_ms") <= slo_p99_ms
    }

    /// Failed only in its last percent: nothing lost, no errors, the p95
    /// within the SLO but not the p99. A scheduling stall of the shared
    /// machine looks like this; a rate the target cannot keep up with
    /// backs up its queue, which takes the p95 (or messages) along.
    pub fn missed_only_the_tail(&self, slo_p99_ms: f64) -> bool {
        self.complete()
            && self.latency_ms("p95_ms") <= slo_p99_ms
            && self.latency_ms("p99_ms") > slo_p99_ms
    }

    /// Something expected, all of it answered, none with an error.
    fn complete(&self) -> bool {
        self.expected > 0 && self.lost == 0 && self.errors == 0
    }

    /// A latency figure of the run; none counts as beyond any SLO.
    fn latency_ms(&self, key: &str) -> f64 {
        self.json
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or(f64::MAX)
    }
}

/// A run's nonce, 1000..9000. The first of a process comes from the clock
/// and the process id, so a run does not take the results of an earlier
/// process's run for its own; the next ones count up from it, so runs of
/// one process never share a nonce (or client ids), even when they start
/// at the same microsecond (the mixed phase starts several at once).
pub fn nonce() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let n = if last == 0 {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            1000 + (t ^ u64::from(std::process::id())) % 8000
        } else {
            1000 + (last - 1000 + 1) % 8000
        };
        match LAST.compare_exchange(last, n, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return n,
            Err(now) => last = now,
        }
    }
}

/// Parses (nonce, seq) out of a result.
pub(crate) fn key_of(topic: &[u8], payload: &[u8], how: Matching) -> Option<(u64, u64)> {
    match how {
        Matching::Topic => {
            let last = topic.rsplit(|&b| b == b'/').next()?;
            let s = std::str::from_utf8(last).ok()?;
            let (n, q) = s.split_once('_')?;
            Some((n.parse().ok()?, q.parse().ok()?))
        }
        Matching::Id => {
            let id = json_id(payload)?;
            let id: u64 = std::str::from_utf8(id).ok()?.parse().ok()?;
            Some((id / ID_SPAN, id % ID_SPAN))
        }
        Matching::Window(r) => {
            let window = json_value_at(payload, b"\"window\"")?;
            let key = window.get("key")?.as_str()?;
            let wseq = window.get("seq")?.as_u64()?;
            let (n, stream) = key.rsplit_once("-s")?;
            let seq = r.completing(stream.parse().ok()?, wseq)?;
            Some((n.parse().ok()?, seq))
        }
    }
}

/// The JSON value after the first occurrence of `key` (a quoted name) in
/// `payload`, found by scanning and parsed alone, not the whole payload.
pub(crate) fn json_value_at(payload: &[u8], key: &[u8]) -> Option<Value> {
    let pos = find(payload, key)?;
    let colon = payload[pos..].iter().position(|&b| b == b':')?;
    let mut it =
        serde_json::Deserializer::from_slice(&payload[pos + colon + 1..]).into_iter::<Value>();
    it.next()?.ok()
}

/// When each message of a run is due: `start + seq * period`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    /// `start` as Unix seconds (readings carry their send time).
    pub start_unix: f64,
    pub period_ns: f64,
    /// Messages in the run.
    pub n: u64,
    pub nonce: u64,
}

impl Schedule {
    /// `n` messages at `rate` from `lead` from now.
    pub fn new(rate: f64, n: u64, nonce: u64, lead: Duration) -> Schedule {
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
            + lead.as_secs_f64();
        Schedule {
            start: Instant::now() + lead,
            start_unix,
            period_ns: 1e9 / rate,
            n,
            nonce,
        }
    }

    pub fn due(&self, seq: u64) -> Instant {
        self.start + Duration::from_nanos((seq as f64 * self.period_ns) as u64)
    }
}

/// The broker's acknowledgements (PUBACK) of the messages sent at QoS 1,
/// timed from each message's scheduled send.
pub struct Acks {
    pub latency: Histogram<u64>,
    pub count: u64,
    pub last: Option<Instant>,
}

/// Drives the publisher's connection until it closes: its failure (if
/// any) and the acknowledgements, counted into `acked` as they come.
/// rumqttc assigns packet ids in the order it writes publishes and reports
/// each (`Outgoing::Publish`), so the n-th id written is message n (a
/// message the client refused is counted in `send_errors` and would shift
/// the rest; runs that have any are not trusted anyway).
pub fn drive_publisher(
    mut conn: Connection,
    sched: Schedule,
    acked: Arc<AtomicU64>,
) -> (Option<String>, Acks) {
    let mut seq_of = vec![u64::MAX; usize::from(u16::MAX) + 1];
    let mut written = 0u64;
    let mut acks = Acks {
        latency: hist(),
        count: 0,
        last: None,
    };
    let mut failure = None;
    for ev in conn.iter() {
        match ev {
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if pkid != 0 {
                    seq_of[usize::from(pkid)] = written;
                }
                written += 1;
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                let seq = std::mem::replace(&mut seq_of[usize::from(ack.pkid)], u64::MAX);
                if seq == u64::MAX {
                    continue;
                }
                let now = Instant::now();
                let us = now.saturating_duration_since(sched.due(seq)).as_micros() as u64;
                let _ = acks.latency.record(us.max(1));
                acks.count += 1;
                acks.last = Some(now);
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
        }
    }
    (failure, acks)
}

/// What sending a schedule took.
pub struct Sent {
    pub sent: u64,
    pub send_errors: u64,
    /// How late each send left (the generator's own lag).
    pub lag: Histogram<u64>,
    pub end: Instant,
}

/// Publishes the messages of `sched` on time. Sleeping is coarse (tens of
/// microseconds); a late send is caught up immediately and its lateness
/// counts as latency.
pub fn send_schedule(publ: &rumqttc::Client, w: &Workload, sched: &Schedule, qos: QoS) -> Sent {
    let mut lag = hist();
    let mut send_errors = 0u64;
    let mut sent = 0u64;
    let nonce = sched.nonce;
    let stream_topics: Vec<String> = match &w.payload {
        Payload::Readings(r) => (0..r.streams)
            .map(|i| format!("{}/{}", w.topic, Readings::stream_name(nonce, i)))
            .collect(),
        _ => Vec::new(),
    };
    for seq in 0..sched.n {
        let due = sched.due(seq);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let topic = if !stream_topics.is_empty() {
            // In bounds: an index modulo the length.
            stream_topics[(seq % stream_topics.len() as u64) as usize].clone()
        } else if w.seq_topic {
            format!("{}/{nonce}_{seq}", w.topic)
        } else {
            w.topic.clone()
        };
        let ts = sched.start_unix + seq as f64 * sched.period_ns / 1e9;
        match publ.publish(
            topic,
            qos,
            false,
            w.payload.message(nonce * ID_SPAN + seq, seq, ts),
        ) {
            Ok(()) => sent += 1,
            Err(_) => send_errors += 1,
        }
        let _ =
            lag.record((Instant::now().saturating_duration_since(due).as_micros() as u64).max(1));
    }
    Sent {
        sent,
        send_errors,
        lag,
        end: Instant::now(),
    }
}

/// `{prefix}p50_ms`, `p95`, `p99` and `max` of a histogram (null when
/// empty) into `o`.
pub fn put_quantiles(o: &mut serde_json::Map<String, Value>, prefix: &str, h: &Histogram<u64>) {
    for (name, q) in [("p50", 0.5), ("p95", 0.95), ("p99", 0.99)] {
        let v = if h.is_empty() {
            Value::Null
        } else {
            json!(ms(h.value_at_quantile(q)))
        };
        o.insert(format!("{prefix}{name}_ms"), v);
    }
    let max = if h.is_empty() {
        Value::Null
    } else {
        json!(ms(h.max()))
    };
    o.insert(format!("{prefix}max_ms"), max);
}

/// What the results thread counted.
struct Tally {
    /// End-to-end latency of each result.
    lat: Histogram<u64>,
    stages: Stages,
    received: u64,
    errors: u64,
    /// Error messages by their "code" (overloaded, bad_reading, ..).
    error_codes: BTreeMap<String, u64>,
    dups: u64,
    stale: u64,
    unmatched: u64,
    /// Errors about another workload's messages (see `owns_error`).
    foreign_errors: u64,
    failure: Option<String>,
    /// Kept in memory and written after the run, so the receiving loop
    /// does no file I/O.
    trace: Vec<Value>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            lat: hist(),
            stages: Stages::new(),
            received: 0,
            errors: 0,
            error_codes: BTreeMap::new(),
            dups: 0,
            stale: 0,
            unmatched: 0,
            foreign_errors: 0,
            failure: None,
            trace: Vec::new(),
        }
    }
}

/// One open-loop run at a fixed rate.
pub fn run(w: &Workload, spec: &RunSpec) -> Result<Report, String> {
    if !(spec.rate > 0.0 && spec.seconds > 0.0) {
        return Err("rate and seconds must be positive".into());
    }
    let n = (spec.rate * spec.seconds).round().max(1.0) as u64;
    let nonce = nonce();

    // Results side first, so nothing is missed.
    let (sub, mut sub_conn) = mqtt::connect(&format!("bench-load-sub-{nonce}"), spec.results_port);
    mqtt::subscribe(&sub, &w.results, "load (results)")?;
    let mut subs = 1;
    if let Some(e) = &w.errors {
        mqtt::subscribe(&sub, e, "load (errors)")?;
        subs += 1;
    }
    mqtt::wait_ready(&mut sub_conn, subs, "load (results)")?;
    let (publ, mut pub_conn) = mqtt::connect(&format!("bench-load-pub-{nonce}"), spec.port);
    mqtt::wait_ready(&mut pub_conn, 0, "load (publisher)")?;

    let sched = Schedule::new(spec.rate, n, nonce, Duration::from_millis(100));
    let start = sched.start;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let errored = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));

    let acked_p = acked.clone();
    let pub_thread = thread::spawn(move || drive_publisher(pub_conn, sched, acked_p));

    let errors_filter = w.errors.clone();
    let results_filter = w.results.clone();
    let w_sub = w.clone();
    let stop_r = stop.clone();
    let answered_r = answered.clone();
    let errored_r = errored.clone();
    let tracing = spec.trace.is_some();
    let sub_thread = thread::spawn(move || {
        let mut t = Tally::new();
        let mut seen = vec![false; n as usize];
        while !stop_r.load(Ordering::Relaxed) {
            let p = match sub_conn.recv_timeout(Duration::from_millis(50)) {
                Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => p,
                Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => continue,
                Ok(Err(e)) => {
                    t.failure = Some(format!("results connection failed: {e}"));
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let now = Instant::now();
            let topic = p.topic.as_str();
            if mqtt::matches(&results_filter, topic).is_none() {
                if errors_filter
                    .as_deref()
                    .and_then(|e| mqtt::matches(e, topic))
                    .is_some()
                {
                    if !w_sub.owns_error(&p.payload) {
                        t.foreign_errors += 1;
                        continue;
                    }
                    t.errors += 1;
                    errored_r.fetch_add(1, Ordering::Relaxed);
                    let code = json_value_at(&p.payload, b"\"code\"");
                    let code = code.as_ref().and_then(Value::as_str).unwrap_or("(no code)");
                    *t.error_codes.entry(code.to_string()).or_insert(0) += 1;
                    if tracing {
                        t.trace.push(json!({
                            "error": code,
                            "id": json_value_at(&p.payload, b"\"id\""),
                            "at_ms": ms(now.saturating_duration_since(sched.start).as_micros() as u64),
                        }));
                    }
                    answered_r.fetch_add(1, Ordering::Relaxed);
                } else {
                    t.unmatched += 1;
                }
                continue;
            }
            match key_of(p.topic.as_bytes(), &p.payload, w_sub.matching()) {
                Some((nn, seq)) if nn == nonce && seq < n => {
                    let i = seq as usize;
                    if seen[i] {
                        t.dups += 1;
                        continue;
                    }
                    seen[i] = true;
                    t.received += 1;
                    answered_r.fetch_add(1, Ordering::Relaxed);
                    let us = now.saturating_duration_since(sched.due(seq)).as_micros() as u64;
                    let _ = t.lat.record(us.max(1));
                    t.stages.record(&p.payload);
                    if tracing {
                        t.trace.push(json!({
                            "seq": seq,
                            "e2e_ms": ms(us),
                            "at_ms": ms(now.saturating_duration_since(sched.start).as_micros() as u64),
                            "accelerator": json_value_at(&p.payload, b"\"accelerator\""),
                            "latency_ms": json_value_at(&p.payload, b"\"latency_ms\""),
                        }));
                    }
                }
                Some(_) => t.stale += 1,
                None => t.unmatched += 1,
            }
        }
        t
    });

    let out = send_schedule(&publ, w, &sched, spec.qos);
    let sent = out.sent;
    let last_due = sched.due(n - 1);
    let expected = w.expected(sent);
    let qos1 = spec.qos != QoS::AtMostOnce;
    let mut gave_up = None;
    while (answered.load(Ordering::Relaxed) < expected
        || (qos1 && acked.load(Ordering::Relaxed) < sent))
        && last_due.elapsed() < spec.grace
    {
        if let Some(slo) = spec.give_up_p99_ms {
            let missing = expected.saturating_sub(answered.load(Ordering::Relaxed));
            let late = last_due.elapsed().as_secs_f64() * 1000.0 > slo;
            if errored.load(Ordering::Relaxed) > 0 {
                gave_up = Some(GaveUp::Error);
                break;
            }
            if late && missing * 100 > expected {
                gave_up = Some(GaveUp::Late);
                break;
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = publ.disconnect();
    let _ = sub.disconnect();
    let Tally {
        lat,
        stages,
        received,
        errors,
        error_codes,
        dups,
        stale,
        unmatched,
        foreign_errors,
        failure: sub_failure,
        trace,
    } = sub_thread
        .join()
        .map_err(|_| "results thread panicked".to_string())?;
    if let Some(path) = &spec.trace {
        let mut text = String::new();
        for line in &trace {
            text.push_str(&line.to_string());
            text.push('\n');
        }
        std::fs::write(path, text)
            .map_err(|e| format!("cannot write the trace {}: {e}", path.display()))?;
    }
    let (pub_failure, acks) = pub_thread
        .join()
        .unwrap_or_else(|_| (Some("publisher thread panicked".into()), no_acks()));
    if let Some(f) = sub_failure {
        return Err(f);
    }
    if let Some(f) = pub_failure {
        // The broker closing the socket after our own DISCONNECT is not a
        // failure; one before every message was handed over is.
        if sent < n {
            return Err(format!("publisher connection failed: {f}"));
        }
    }
    let lost = expected.saturating_sub(received + errors);
    let elapsed = out
        .end
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    let mut o = serde_json::Map::new();
    o.insert("rate".into(), json!(spec.rate));
    o.insert("seconds".into(), json!(spec.seconds));
    o.insert("qos".into(), json!(u8::from(qos1)));
    o.insert("nonce".into(), json!(nonce));
    o.insert("payload_bytes".into(), json!(w.payload.len()));
    o.insert("payload_kind".into(), json!(w.payload.kind()));
    o.insert("sent".into(), json!(sent));
    o.insert("expected".into(), json!(expected));
    o.insert("send_errors".into(), json!(out.send_errors));
    o.insert(
        "achieved_send_rate".into(),
        json!((sent as f64 / elapsed).round()),
    );
    o.insert("received".into(), json!(received));
    o.insert("errors".into(), json!(errors));
    o.insert("error_codes".into(), json!(error_codes));
    match gave_up {
        None => {
            o.insert("lost".into(), json!(lost));
        }
        Some(why) => {
            // Not waited for: what had not come yet is not called lost.
            o.insert("unanswered_when_given_up".into(), json!(lost));
            let why = match why {
                GaveUp::Error => "an error arrived",
                GaveUp::Late => "over 1% unanswered past the p99",
            };
            o.insert("gave_up".into(), json!(why));
        }
    }
    o.insert("duplicates".into(), json!(dups));
    o.insert("stale".into(), json!(stale));
    o.insert("unmatched".into(), json!(unmatched));
    if foreign_errors > 0 {
        // Errors about another workload's messages, left out of `errors`.
        o.insert("other_errors".into(), json!(foreign_errors));
    }
    put_quantiles(&mut o, "", &lat);
    if qos1 {
        o.insert("acked".into(), json!(acks.count));
        o.insert("unacked".into(), json!(sent.saturating_sub(acks.count)));
        put_quantiles(&mut o, "ack_", &acks.latency);
    }
    let lag = &out.lag;
    o.insert(
        "send_lag_p99_ms".into(),
        json!(ms(lag.value_at_quantile(0.99))),
    );
    o.insert("send_lag_max_ms".into(), json!(ms(lag.max())));
    o.insert("stages".into(), stages.to_json());
    let json = Value::Object(o);
    let handled = match &w.payload {
        Payload::Readings(_) => sent,
        _ => received,
    };
    Ok(Report {
        sent,
        expected,
        received,
        errors,
        lost,
        gave_up,
        handled,
        json,
    })
}

pub fn no_acks() -> Acks {
    Acks {
        latency: hist(),
        count: 0,
        last: None,
    }
}

pub fn workload_from_args(a: &LoadArgs) -> Result<Workload, String> {
    Ok(Workload {
        topic: a.topic.clone(),
        seq_topic: a.seq_topic,
        results: a.results.clone(),
        errors: a.errors.clone(),
        payload: payload_from_args(&a.payload)?,
    })
}

pub fn main(a: &LoadArgs) -> Result<(), String> {
    let w = workload_from_args(a)?;
    for &rate in &a.rate {
        let spec = RunSpec {
            port: a.port,
            results_port: a.results_port.unwrap_or(a.port),
            qos: if a.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            rate,
            seconds: a.seconds,
            grace: a.grace,
            trace: a.trace.clone(),
            give_up_p99_ms: None,
        };
        let r = run(&w, &spec)?;
        println!("{}", r.json);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{key_of, Matching, Payload, Readings, ReadingsSpec, Workload};

    fn har_readings(streams: u64) -> Readings {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/har_accel_int8.json");
        let cases: Vec<String> = ["walking", "running", "idle", "fall"]
            .map(String::from)
            .to_vec();
        let fields: Vec<String> = ["ax", "ay", "az"].map(String::from).to_vec();
        Readings::from_fixture(
            &fixture,
            &ReadingsSpec {
                cases: &cases,
                fields: &fields,
                ts_field: "ts",
                decimals: 3,
                streams,
                size: 128,
                stride: 64,
            },
        )
        .unwrap()
    }

    #[test]
    fn an_error_counts_for_the_workload_whose_topic_it_names() {
        let w = |topic: &str, seq_topic: bool| Workload {
            topic: topic.into(),
            seq_topic,
            results: "r".into(),
            errors: Some("e".into()),
            payload: Payload::Json(b"{}".to_vec()),
        };
        let har = w("bench/har/in", false);
        let raw = w("bench/mnv2raw/in", true);
        assert!(har.sends_on("bench/har/in"));
        assert!(!har.sends_on("bench/har/in/1_2"));
        assert!(!har.sends_on("bench/har/inx"));
        assert!(raw.sends_on("bench/mnv2raw/in/1234_5"));
        assert!(!raw.sends_on("bench/mnv2raw/in"));
        assert!(!raw.sends_on("bench/mnv2raw/in/a/b"));
        let error = br#"{"id":null,"source_topic":"bench/mnv2raw/in/1_2","code":"overloaded"}"#;
        assert!(raw.owns_error(error));
        assert!(!har.owns_error(error));
        // Without a source topic it cannot be told apart: each counts it.
        assert!(har.owns_error(br#"{"code":"overloaded"}"#));
    }

    #[test]
    fn runs_started_together_get_different_nonces() {
        let nonces: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(super::nonce)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = nonces.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), nonces.len(), "{nonces:?}");
        assert!(
            nonces.iter().all(|n| (1000..9000).contains(n)),
            "{nonces:?}"
        );
    }

    #[test]
    fn a_reading_is_one_small_json_object_with_the_fixture_values() {
        let r = har_readings(4);
        let m = String::from_utf8(r.message(0, 1764620000.12)).unwrap();
        assert_eq!(
            m,
            r#"{"ts":1764620000.120000,"ax":0.092,"ay":0.096,"az":1.171}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&r.message(5, 1.5)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 4);
        // Stream 1 starts in the second case (running): 512 samples / 4 streams.
        let s1: serde_json::Value = serde_json::from_slice(&r.message(1, 1.0)).unwrap();
        assert_eq!(s1["ax"], -0.342);
        assert!((50..70).contains(&Payload::Readings(r).len()));
    }

    #[test]
    fn windows_expected_count_every_stream_alone() {
        let r = har_readings(4);
        assert_eq!(r.windows(0), 0);
        assert_eq!(r.windows(4 * 128 - 1), 3);
        assert_eq!(r.windows(4 * 128), 4);
        assert_eq!(r.windows(4 * 192), 8);
        assert_eq!(r.windows(4 * 192 + 3), 8);
        assert_eq!(r.windows(10_000), 4 * (1 + (2500 - 128) / 64));
        // The window that completes at message m is counted from m + 1 on.
        for (stream, wseq) in [(0, 1), (3, 1), (2, 7)] {
            let m = r.completing(stream, wseq).unwrap();
            assert_eq!(m % 4, stream);
            assert_eq!(r.windows(m + 1), r.windows(m) + 1);
        }
        assert_eq!(r.completing(4, 1), None);
        assert_eq!(r.completing(0, 0), None);
        assert_eq!(r.completing(0, u64::MAX), None);
    }

    #[test]
    fn a_window_result_names_the_reading_that_completed_it() {
        let r = har_readings(4);
        let how = Matching::Window(&r);
        let result = br#"{"id":null,"model":"har","window":{"key":"1234-s2","seq":3,"start":1.0,"end":2.0,"readings":128},"latency_ms":{}}"#;
        assert_eq!(
            key_of(b"bench/imu-out/1234-s2", result, how),
            Some((1234, (127 + 2 * 64) * 4 + 2))
        );
        assert_eq!(
            key_of(b"t", br#"{"window":{"key":"x","seq":1}}"#, how),
            None
        );
        assert_eq!(
            key_of(b"t", br#"{"window":{"key":"1-s9","seq":1}}"#, how),
            None
        );
        assert_eq!(key_of(b"t", br#"{"id":5}"#, how), None);
        let w = Workload {
            topic: "bench/imu".into(),
            seq_topic: false,
            results: "bench/imu-out/+".into(),
            errors: None,
            payload: Payload::Readings(r),
        };
        assert_eq!(w.expected(4 * 128), 4);
        // 100 windows in all: 25 per stream = 128 + 24 * 64 readings each.
        assert_eq!(w.min_seconds(1000.0), 4.0 * 1664.0 / 1000.0);
    }

    #[test]
    fn only_a_failure_in_the_tail_is_worth_a_second_trial() {
        use super::Report;
        let report = |lost, errors, p95: f64, p99: f64| Report {
            sent: 100,
            expected: 100,
            received: 100 - lost,
            errors,
            lost,
            gave_up: None,
            handled: 100 - lost,
            json: serde_json::json!({"p95_ms": p95, "p99_ms": p99}),
        };
        // A stall: the p99 alone beyond the 100 ms SLO.
        assert!(report(0, 0, 20.0, 150.0).missed_only_the_tail(100.0));
        // Passed: nothing to retry.
        assert!(!report(0, 0, 20.0, 90.0).missed_only_the_tail(100.0));
        // Backed up, lost or refused: the rate is too high.
        assert!(!report(0, 0, 120.0, 150.0).missed_only_the_tail(100.0));
        assert!(!report(1, 0, 20.0, 150.0).missed_only_the_tail(100.0));
        assert!(!report(0, 1, 20.0, 150.0).missed_only_the_tail(100.0));
    }
}
