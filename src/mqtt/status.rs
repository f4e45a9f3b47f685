//! `edge-infer status`: what the fleet sees, for an operator at a terminal.
//!
//! Subscribes to the retained `edge-infer/<device>/status` and
//! `edge-infer/<device>/health` records (one device, or `+` for every device
//! on the broker), gathers what the broker delivers within the wait, and
//! prints one block per device: state, version, uptime, machine and broker
//! figures, then a table with one row per model.
//!
//! The records are read as `serde_json::Value` and every field is optional
//! here: a record from an older or newer daemon, or a damaged one, shows `-`
//! where a figure is missing instead of failing. Strings from the broker are
//! printed with control characters replaced, so a record cannot drive the
//! terminal.
//!
//! With a device named, it returns as soon as both records of that device
//! are in. With all devices, retained records come right after the
//! subscriptions are acknowledged, so it returns once both are acknowledged
//! and nothing new has come for [`SETTLE`], or when the wait is over.
//!
//! Exit status (the daemon's, see `crate::exit`): 0 when at least one device
//! was shown, 1 when the broker could not be reached, the connection was
//! lost before any record came, or nothing arrived in time. A device id that
//! cannot be a topic level is bad usage (2), refused by the command line
//! before this runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rumqttc::{Event, Packet, QoS, RecvTimeoutError, SubscribeReasonCode};
use serde_json::Value;

use super::tool::Broker;
use crate::exit;
use crate::replies::{health_topic, status_topic};

/// With every device requested: how long to wait for more records once the
/// subscriptions are acknowledged and the broker has gone quiet.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Largest record accepted (status records grow with the model list).
const MAX_PACKET_BYTES: usize = 4 * 1024 * 1024;

/// Connects to `broker`, reads the status and health records of `device`
/// (every device when None) for at most `wait`, and prints them. `device`
/// has passed [`crate::config::check_topic_level`] (the command line checks
/// it).
pub fn run(broker: &Broker, device: Option<&str>, wait: Duration) -> ExitCode {
    let level = device.unwrap_or("+");
    let topics = [status_topic(level), health_topic(level)];
    let at = broker.url();
    let collected = match collect(broker, device, &topics, wait) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("edge-infer status: cannot reach the MQTT broker at {at}: {why}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let shown: Vec<(&String, &Device)> = collected
        .devices
        .iter()
        .filter(|(_, d)| d.has_anything())
        .collect();
    if shown.is_empty() {
        if let Some(why) = collected.lost {
            eprintln!(
                "edge-infer status: lost the connection to the MQTT broker at {at} before any record arrived: {why}"
            );
            return ExitCode::from(exit::FAILURE);
        }
        eprintln!(
            "edge-infer status: nothing arrived on {} or {} within {} from {at} \
             (is the device id right, and has a daemon ever connected to this broker?)",
            topics[0],
            topics[1],
            human_wait(wait),
        );
        return ExitCode::from(exit::FAILURE);
    }
    if let Some(why) = &collected.lost {
        eprintln!("edge-infer status: the connection to the broker was lost ({why}); showing what arrived");
    }
    let now = crate::time::unix_now();
    let mut out = String::new();
    for (i, (id, d)) in shown.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&render_device(id, d, now));
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    ExitCode::SUCCESS
}

/// The records of one device, as they arrived.
#[derive(Debug, Default)]
struct Device {
    status: Option<Value>,
    health: Option<Value>,
    /// Records that were not JSON objects, said in a sentence each.
    problems: Vec<String>,
}

impl Device {
    fn has_anything(&self) -> bool {
        self.status.is_some() || self.health.is_some() || !self.problems.is_empty()
    }
}

#[derive(Debug, Default)]
struct Collected {
    devices: BTreeMap<String, Device>,
    /// Why the connection ended early, if it did after the ConnAck.
    lost: Option<String>,
}

/// Err: the broker could not be reached (no ConnAck).
fn collect(
    broker: &Broker,
    device: Option<&str>,
    topics: &[String; 2],
    wait: Duration,
) -> Result<Collected, String> {
    let (client, mut connection) = broker.client("edge-infer-status", MAX_PACKET_BYTES, wait, 16);
    for t in topics {
        client
            .subscribe(t.as_str(), QoS::AtMostOnce)
            .map_err(|e| format!("cannot subscribe to {t}: {e}"))?;
    }

    let deadline = Instant::now() + wait;
    let mut collected = Collected::default();
    let mut connected = false;
    let mut subacks = 0;
    let mut last_activity = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let mut slice = deadline - now;
        if device.is_none() && subacks >= topics.len() {
            let quiet = now.duration_since(last_activity);
            if quiet >= SETTLE {
                break;
            }
            slice = slice.min(SETTLE - quiet);
        }
        match connection.recv_timeout(slice) {
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
            Ok(Err(e)) => {
                let why = broker.describe(e, !connected);
                if !connected {
                    return Err(why);
                }
                collected.lost = Some(why);
                break;
            }
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => connected = true,
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                subacks += 1;
                last_activity = Instant::now();
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    eprintln!(
                        "edge-infer status: the broker refused a subscription (access control?)"
                    );
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                last_activity = Instant::now();
                store(&mut collected.devices, &p.topic, &p.payload);
                if let Some(d) = device.and_then(|d| collected.devices.get(d)) {
                    if d.status.is_some() && d.health.is_some() {
                        break;
                    }
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    if !connected {
        return Err(format!("no answer within {}", human_wait(wait)));
    }
    // Say goodbye so the broker does not log a dropped connection.
    if client.disconnect().is_ok() {
        let _ = connection.recv_timeout(Duration::from_millis(200));
    }
    Ok(collected)
}

/// Files one record under its device; anything that is not
/// `edge-infer/<device>/{status,health}` with a JSON object is noted or
/// ignored, never trusted.
fn store(devices: &mut BTreeMap<String, Device>, topic: &str, payload: &[u8]) {
    let Some((device, kind)) = topic
        .strip_prefix("edge-infer/")
        .and_then(|rest| rest.rsplit_once('/'))
    else {
        return;
    };
    if payload.is_empty() {
        // A retained record being cleared.
        return;
    }
    let entry = devices.entry(device.to_string()).or_default();
    let value = match serde_json::from_slice::<Value>(payload) {
        Ok(v) if v.is_object() => v,
        Ok(_) => {
            entry.problems.push(format!(
                "the {} record is JSON but not an object",
                clean(kind)
            ));
            return;
        }
        Err(e) => {
            entry
                .problems
                .push(format!("the {} record is not JSON: {e}", clean(kind)));
            return;
        }
    };
    match kind {
        "status" => entry.status = Some(value),
        "health" => entry.health = Some(value),
        _ => {}
    }
}

// ---------------------------------------------------------------- rendering

/// One device's block: a heading line, labelled figures, the model table.
fn render_device(id: &str, d: &Device, now: f64) -> String {
    let mut out = String::new();
    let status = d.status.as_ref();
    let health = d.health.as_ref();

    let _ = writeln!(out, "{}  {}", clean(id), state_line(status, now));
    let mut fields: Vec<(&str, String)> = Vec::new();
    let version = status
        .and_then(|s| text(s, "/version"))
        .or_else(|| health.and_then(|h| text(h, "/version")));
    let pid = health
        .and_then(|h| uint(h, "/process/pid"))
        .or_else(|| status.and_then(|s| uint(s, "/pid")));
    fields.push((
        "version",
        match (version, pid) {
            (Some(v), Some(p)) => format!("{} (pid {p})", clean(v)),
            (Some(v), None) => clean(v),
            (None, Some(p)) => format!("- (pid {p})"),
            (None, None) => "-".into(),
        },
    ));

    match health {
        Some(h) => {
            let offline = status.and_then(|s| text(s, "/state")) == Some("offline");
            health_fields(h, offline, now, &mut fields)
        }
        None => fields.push(("health", "no health record".into())),
    }
    for p in &d.problems {
        fields.push(("note", p.clone()));
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &fields {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }

    let (rows, notes) = model_rows(status, health);
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&render_table(
            "  ",
            &[
                "MODEL",
                "VERSION",
                "ACCELERATOR",
                "INFERENCES",
                "ERRORS",
                "DROPPED",
                "QUEUE",
                "THRU/S",
                "P50 MS",
                "P95 MS",
                "P99 MS",
                "MAX MS",
            ],
            &[
                false, false, false, true, false, true, true, true, true, true, true, true,
            ],
            &rows,
        ));
    }
    for n in notes {
        let _ = writeln!(out, "  {n}");
    }
    out
}

/// "online", "offline (connection lost)", "offline (shutdown, 3m 05s ago)".
fn state_line(status: Option<&Value>, now: f64) -> String {
    let Some(s) = status else {
        return "state unknown (no status record)".into();
    };
    let state = text(s, "/state").map(clean).unwrap_or_else(|| "-".into());
    if state != "offline" {
        return state;
    }
    let reason = text(s, "/reason").map(clean);
    let ago = num(s, "/timestamp").map(|t| format!("{} ago", human_age(now - t)));
    match (reason, ago) {
        (Some(r), Some(a)) => format!("offline ({r}, {a})"),
        (Some(r), None) => format!("offline ({r})"),
        (None, Some(a)) => format!("offline ({a})"),
        (None, None) => "offline".into(),
    }
}

fn health_fields(h: &Value, offline: bool, now: f64, fields: &mut Vec<(&'static str, String)>) {
    let dash = || "-".to_string();
    if let Some(age) = num(h, "/timestamp").map(|t| now - t) {
        let mut line = format!("record {} old", human_age(age));
        if offline {
            line.push_str(", the last before the device went offline");
        } else if let Some(i) = num(h, "/interval_secs") {
            // The first record's interval is the time since start-up, so
            // allow a few periods and at least 10 s before calling it stale.
            if age > (3.0 * i).max(10.0) {
                let _ = write!(line, " (stale: records come every {})", human_age(i));
            }
        }
        fields.push(("health", line));
    }
    fields.push((
        "uptime",
        num(h, "/uptime_secs").map_or_else(dash, human_duration),
    ));

    let cpu = match (
        num(h, "/system/cpu_percent"),
        num(h, "/process/cpu_percent"),
    ) {
        (Some(s), Some(p)) => format!("{} % (daemon {} %)", fixed(s, 1), fixed(p, 1)),
        (Some(s), None) => format!("{} %", fixed(s, 1)),
        (None, Some(p)) => format!("- (daemon {} %)", fixed(p, 1)),
        (None, None) => dash(),
    };
    fields.push(("cpu", cpu));

    let load = h
        .pointer("/system/load_average")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_f64().map_or_else(dash, |x| fixed(x, 2)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(dash);
    fields.push(("load", load));

    let memory = match (
        uint(h, "/system/memory_used_bytes"),
        uint(h, "/system/memory_total_bytes"),
    ) {
        (Some(u), Some(t)) if t > 0 => format!(
            "{} / {} ({:.0} %)",
            human_bytes(u),
            human_bytes(t),
            u as f64 * 100.0 / t as f64
        ),
        (u, t) => format!(
            "{} / {}",
            u.map_or_else(dash, human_bytes),
            t.map_or_else(dash, human_bytes)
        ),
    };
    fields.push(("memory", memory));
    fields.push((
        "process rss",
        uint(h, "/process/rss_bytes").map_or_else(dash, human_bytes),
    ));

    let temps = h
        .pointer("/system/temperatures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|t| {
                    let label = text(t, "/label").map(clean).unwrap_or_else(dash);
                    match num(t, "/celsius") {
                        Some(c) => format!("{label} {c:.1} °C"),
                        None => format!("{label} -"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none reported".into());
    fields.push(("temperatures", temps));

    let dir = text(h, "/system/state_dir").map(clean).unwrap_or_else(dash);
    let free =
        uint(h, "/system/state_dir_free_bytes").map_or_else(|| "unknown".into(), human_bytes);
    fields.push(("state dir", format!("{dir} (free {free})")));

    let broker = match h.pointer("/broker/connected").and_then(Value::as_bool) {
        Some(true) => "connected",
        Some(false) => "DISCONNECTED",
        None => "-",
    };
    let count = |p: &str| uint(h, p).map_or_else(dash, |n| n.to_string());
    fields.push((
        "broker",
        format!(
            "{broker}, {} reconnects, {} connection errors, {} unrouted, {} publish failures",
            count("/broker/reconnects"),
            count("/broker/connection_errors"),
            count("/broker/unrouted_messages"),
            count("/broker/publish_failures"),
        ),
    ));
    // Only a link in trouble gets a line: why it last failed (TLS
    // certificates, refusals) is what an operator at a terminal needs.
    for (label, link) in [("input link", "input"), ("output link", "output")] {
        let pointer = format!("/broker/links/{link}");
        if let Some(why) = text(h, &format!("{pointer}/last_error")) {
            let broker = text(h, &format!("{pointer}/broker"))
                .map(clean)
                .unwrap_or_else(dash);
            fields.push((label, format!("{broker}: {}", clean(why))));
        }
        if let Some(n) = uint(h, &format!("{pointer}/pings_unanswered")).filter(|n| *n > 0) {
            fields.push((
                label,
                format!("{n} keep-alive ping(s) unanswered while the broker kept sending (its queue for the daemon is long or full)"),
            ));
        }
    }
    if let Some(ack) = text(h, "/delivery/ack") {
        let mut line = format!(
            "ack {}, {} answers confirmed",
            clean(ack),
            count("/delivery/answers_confirmed")
        );
        if let Some(n) = uint(h, "/delivery/acks_withheld").filter(|n| *n > 0) {
            line.push_str(&format!(
                "; {n} input(s) left unacknowledged (an answer was lost; redelivered on reconnect)"
            ));
        }
        fields.push(("delivery", line));
        fields.push(("outbox", outbox_line(h)));
    }
}

/// The outbox's depth and what it lost, from the health record.
fn outbox_line(h: &Value) -> String {
    let Some(o) = h.pointer("/delivery/outbox").filter(|o| !o.is_null()) else {
        return "off".into();
    };
    let n = |p: &str| uint(o, p).unwrap_or(0);
    let mut line = format!("{} record(s), {}", n("/records"), human_bytes(n("/bytes")));
    if let Some(age) = num(o, "/oldest_age_secs") {
        line.push_str(&format!(", oldest {}", human_duration(age)));
    }
    line.push_str(&format!(", {} replayed", n("/replayed")));
    let lost = [
        ("dropped (full)", n("/dropped_full")),
        ("refused (full)", n("/rejected_full")),
        ("expired", n("/expired")),
        ("write errors", n("/write_errors")),
        ("too large to send", n("/too_large")),
    ];
    let lost: Vec<String> = lost
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    if !lost.is_empty() {
        line.push_str(&format!("; LOST {}", lost.join(", ")));
        if let Some(why) = text(o, "/last_loss") {
            line.push_str(&format!(" (last: {})", clean(why)));
        }
    }
    line
}

/// The model table's rows (from health, or from the status record's model
/// list when there is no health record) and warnings worth a line.
fn model_rows(status: Option<&Value>, health: Option<&Value>) -> (Vec<Vec<String>>, Vec<String>) {
    let dash = || "-".to_string();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if let Some(models) = health
        .and_then(|h| h.pointer("/models"))
        .and_then(Value::as_array)
    {
        for m in models {
            let name = text(m, "/name").map(clean).unwrap_or_else(dash);
            let n = |p: &str| uint(m, p).map_or_else(dash, |v| v.to_string());
            let latency_count = uint(m, "/latency_ms/count");
            let ms = |p: &str| match latency_count {
                Some(0) => dash(),
                _ => num(m, p).map_or_else(dash, |v| fixed(v, 2)),
            };
            let queue = match (uint(m, "/queue_depth"), uint(m, "/queue_capacity")) {
                (None, None) => dash(),
                (d, c) => format!(
                    "{}/{}",
                    d.map_or_else(dash, |v| v.to_string()),
                    c.map_or_else(dash, |v| v.to_string())
                ),
            };
            if let (Some(s), Some(w)) = (uint(m, "/stalled_workers"), uint(m, "/workers")) {
                if s > 0 {
                    notes.push(format!(
                        "warning: model {name}: {s} of {w} worker(s) stalled"
                    ));
                }
            }
            if let Some(a) = m.pointer("/acceleration") {
                let serving = text(a, "/serving").map(clean).unwrap_or_else(dash);
                let delegation = match text(a, "/delegation") {
                    Some("partial") => match (uint(a, "/delegated_nodes"), uint(a, "/total_nodes"))
                    {
                        (Some(d), Some(t)) => format!(", partly delegated ({d} of {t} nodes)"),
                        _ => ", partly delegated (the rest on the cpu)".into(),
                    },
                    Some("none") => ", but it took no node (all on the cpu kernels)".into(),
                    _ => String::new(),
                };
                if let Some(reason) = text(a, "/fallback_reason") {
                    let retry = num(a, "/retry_in_secs").map_or_else(String::new, |s| {
                        format!("; tried again in {}", fixed(s, 0) + " s")
                    });
                    notes.push(format!(
                        "model {name}: on {serving}{delegation}, not {}: {}{retry}",
                        text(a, "/preferred").map(clean).unwrap_or_else(dash),
                        clean(reason)
                    ));
                } else if !delegation.is_empty() || serving != "cpu" {
                    notes.push(format!("model {name}: on {serving}{delegation}"));
                }
                if let Some(n) = uint(a, "/switches").filter(|n| *n > 0) {
                    notes.push(format!(
                        "model {name}: {n} accelerator switch(es) after failed inferences"
                    ));
                }
            }
            // "auto" moves workers of long messages there beside sensor
            // models (worker::sched).
            if let Some(priority @ ("background" | "auto")) = text(m, "/worker_priority") {
                let workers = uint(m, "/workers");
                let refused = uint(m, "/priority_refused_workers").unwrap_or(0);
                let why = if priority == "auto" {
                    " (worker_priority \"auto\": its messages take 1 ms or more, beside sensor models)"
                } else {
                    ""
                };
                if refused > 0 {
                    notes.push(format!(
                        "warning: model {name}: worker_priority \"{priority}\" refused by the kernel for {refused} of {} worker(s): they run at normal priority (the daemon's log says why)",
                        workers.map_or_else(dash, |w| w.to_string())
                    ));
                } else if let Some(b) = uint(m, "/background_workers").filter(|b| *b > 0) {
                    notes.push(format!(
                        "model {name}: in the background{why}: {b} worker(s) in SCHED_IDLE, computing on cores nothing else wants"
                    ));
                }
            }
            let sharers: Vec<String> = m
                .pointer("/shares_engine_with")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(clean).collect())
                .unwrap_or_default();
            if !sharers.is_empty() {
                notes.push(format!(
                    "model {name}: shares its engine(s) with {} (same file on the CPU; their invokes take turns)",
                    sharers.join(", ")
                ));
            }
            if m.pointer("/window").is_some() {
                notes.push(format!(
                    "model {name}: {} open stream(s), {} window(s) from {} reading(s), {} reading(s) discarded",
                    n("/window/open_streams"),
                    n("/window/windows"),
                    n("/window/readings"),
                    n("/window/readings_discarded")
                ));
            }
            rows.push(vec![
                name,
                text(m, "/version").map(clean).unwrap_or_else(dash),
                text(m, "/accelerator").map(clean).unwrap_or_else(dash),
                n("/inferences"),
                errors_cell(m.pointer("/errors")),
                n("/dropped"),
                queue,
                num(m, "/throughput_per_sec").map_or_else(dash, |v| fixed(v, 1)),
                ms("/latency_ms/p50"),
                ms("/latency_ms/p95"),
                ms("/latency_ms/p99"),
                ms("/latency_ms/max"),
            ]);
        }
    } else if let Some(models) = status
        .and_then(|s| s.pointer("/models"))
        .and_then(Value::as_array)
    {
        for m in models {
            let mut row = vec![
                text(m, "/name").map(clean).unwrap_or_else(dash),
                text(m, "/version").map(clean).unwrap_or_else(dash),
                text(m, "/accelerator").map(clean).unwrap_or_else(dash),
            ];
            row.resize(12, dash());
            rows.push(row);
        }
    }
    (rows, notes)
}

/// "0", or "3 (bad_json=1 overloaded=2)": the total, then the nonzero codes.
fn errors_cell(errors: Option<&Value>) -> String {
    let Some(map) = errors.and_then(Value::as_object) else {
        return "-".into();
    };
    let mut total: u64 = 0;
    let mut nonzero = Vec::new();
    for (code, n) in map {
        let n = n.as_u64().unwrap_or(0);
        total = total.saturating_add(n);
        if n > 0 {
            nonzero.push(format!("{}={n}", clean(code)));
        }
    }
    if nonzero.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", nonzero.join(" "))
    }
}

/// Left- or right-aligned columns, two spaces apart, no trailing blanks.
fn render_table(indent: &str, header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::from(indent);
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            let pad = width.saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

// ------------------------------------------------------------------ helpers

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer)?.as_f64().filter(|x| x.is_finite())
}

fn uint(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer)?.as_u64()
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)?.as_str()
}

/// The string with control characters (escape sequences) made harmless.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `decimals` places; absurd magnitudes in exponent form, so one broken
/// figure cannot blow up a table.
fn fixed(v: f64, decimals: usize) -> String {
    if v.abs() >= 1e9 {
        format!("{v:.2e}")
    } else {
        format!("{v:.decimals$}")
    }
}

/// 1536 -> "1.5 KiB"; binary units, one decimal above bytes.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    // 1023.95 KiB would print as "1024.0 KiB": move up a unit before that.
    while v >= 1023.95 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// 75.0 -> "1m 15s"; whole seconds, the two largest units.
fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let s = secs as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Ages below a minute with a decimal ("0.4s"); clock skew shows as 0.
fn human_age(secs: f64) -> String {
    if secs.is_finite() && secs < 60.0 {
        format!("{:.1}s", secs.max(0.0))
    } else {
        human_duration(secs)
    }
}

fn human_wait(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_durations_read_like_a_human_wrote_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1_048_500), "1023.9 KiB");
        assert_eq!(human_bytes(1_048_550), "1.0 MiB");
        assert_eq!(human_bytes(25_276_510_208), "23.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(75.9), "1m 15s");
        assert_eq!(human_duration(11_159.0), "3h 05m");
        assert_eq!(human_duration(f64::NAN), "-");
        assert_eq!(human_age(0.44), "0.4s");
        assert_eq!(human_age(-3.0), "0.0s");
        assert_eq!(fixed(1.005e308, 2), "1.00e308");
        assert_eq!(fixed(0.125, 1), "0.1");
        assert_eq!(clean("a\u{1b}[2Jb\n"), "a?[2Jb?");
    }

    #[test]
    fn table_aligns_columns_and_drops_trailing_blanks() {
        let rows = vec![
            vec!["har".to_string(), "12".to_string(), "".to_string()],
            vec!["mobilenet".to_string(), "3".to_string(), "".to_string()],
        ];
        let t = render_table(" ", &["MODEL", "N", "NOTE"], &[false, true, false], &rows);
        assert_eq!(t, " MODEL       N  NOTE\n har        12\n mobilenet   3\n");
    }

    const HEALTH: &str = r#"{"device_id":"gw-7","version":"0.1.0","timestamp":1000.0,
        "uptime_secs":3725.2,"interval_secs":30.0,
        "system":{"cpu_percent":12.5,"load_average":[0.5,0.25,0.13],
          "memory_used_bytes":1073741824,"memory_total_bytes":4294967296,
          "temperatures":[{"label":"cpu-thermal","celsius":48.3}],
          "state_dir":"/var/lib/edge-infer","state_dir_free_bytes":5368709120},
        "process":{"pid":42,"rss_bytes":31457280,"cpu_percent":3.0},
        "broker":{"connected":true,"connections":3,"reconnects":2,"connection_errors":1,
          "unrouted_messages":0,"publish_failures":0,
          "links":{"input":{"broker":"mqtts://hub:8883","connected":false,
            "last_error":"the broker's certificate has expired"},
            "output":{"broker":"mqtts://cloud:8883","connected":true,"last_error":null,
              "pings_unanswered":2}}},
        "delivery":{"ack":"answered","answers_confirmed":98,"acks_stale":0,
          "outbox":{"records":12,"bytes":5400,"oldest_age_secs":190.0,"stored":40,"replayed":28,
            "dropped_full":0,"rejected_full":3,"expired":0,"write_errors":0,"too_large":0,
            "last_loss":"the outbox was full"}},
        "models":[{"name":"har","sha256":"ab","version":"2","accelerator":"cpu/xnnpack","workers":2,
          "stalled_workers":1,"received":110,"inferences":100,
          "errors":{"bad_json":4,"bad_shape":0,"overloaded":6},"dropped":6,
          "queue_depth":3,"queue_capacity":64,"throughput_per_sec":3.3333,
          "latency_ms":{"count":100,"p50":0.4,"p95":1.25,"p99":2.5,"max":7.0},
          "window":{"open_streams":2,"windows":100,"readings":6450,"readings_discarded":50}},
          {"name":"tpu","accelerator":"cpu","acceleration":{"serving":"cpu","preferred":"edgetpu",
            "engines":{"cpu":1},"delegation":"cpu","delegated_nodes":null,"total_nodes":null,
            "fallback_reason":"edgetpu: the delegate plugin declined","switches":1,"retry_in_secs":42.4}},
          {"name":"gpu","accelerator":"gpu","acceleration":{"serving":"gpu","preferred":"gpu",
            "engines":{"gpu":1},"delegation":"partial","delegated_nodes":3,"total_nodes":12,
            "fallback_reason":null,"switches":0,"retry_in_secs":null}},
          {"name":"idle","shares_engine_with":["har","har_raw"],"latency_ms":{"count":0,"p50":0.0,"p95":0.0,"p99":0.0,"max":0.0}},
          {"name":"cam","workers":1,"worker_priority":"background","background_workers":1,"priority_refused_workers":0},
          {"name":"cam2","workers":2,"worker_priority":"background","background_workers":0,"priority_refused_workers":2},
          {"name":"cam3","workers":2,"worker_priority":"auto","background_workers":1,"priority_refused_workers":0},
          {"name":"imu","workers":1,"worker_priority":"auto","background_workers":0,"priority_refused_workers":0}]}"#;

    #[test]
    fn device_block_from_sample_records() {
        let d = Device {
            status: serde_json::from_str(
                r#"{"state":"offline","device_id":"gw-7","version":"0.1.0","reason":"shutdown","timestamp":995.0}"#,
            )
            .ok(),
            health: serde_json::from_str(HEALTH).ok(),
            problems: Vec::new(),
        };
        let out = render_device("gw-7", &d, 1000.4);
        let expected = "\
gw-7  offline (shutdown, 5.4s ago)
  version       0.1.0 (pid 42)
  health        record 0.4s old, the last before the device went offline
  uptime        1h 02m
  cpu           12.5 % (daemon 3.0 %)
  load          0.50 0.25 0.13
  memory        1.0 GiB / 4.0 GiB (25 %)
  process rss   30.0 MiB
  temperatures  cpu-thermal 48.3 °C
  state dir     /var/lib/edge-infer (free 5.0 GiB)
  broker        connected, 2 reconnects, 1 connection errors, 0 unrouted, 0 publish failures
  input link    mqtts://hub:8883: the broker's certificate has expired
  output link   2 keep-alive ping(s) unanswered while the broker kept sending (its queue for the daemon is long or full)
  delivery      ack answered, 98 answers confirmed
  outbox        12 record(s), 5.3 KiB, oldest 3m 10s, 28 replayed; LOST 3 refused (full) (last: the outbox was full)

  MODEL  VERSION  ACCELERATOR  INFERENCES  ERRORS                        DROPPED  QUEUE  THRU/S  P50 MS  P95 MS  P99 MS  MAX MS
  har    2        cpu/xnnpack         100  10 (bad_json=4 overloaded=6)        6   3/64     3.3    0.40    1.25    2.50    7.00
  tpu    -        cpu                   -  -                                   -      -       -       -       -       -       -
  gpu    -        gpu                   -  -                                   -      -       -       -       -       -       -
  idle   -        -                     -  -                                   -      -       -       -       -       -       -
  cam    -        -                     -  -                                   -      -       -       -       -       -       -
  cam2   -        -                     -  -                                   -      -       -       -       -       -       -
  cam3   -        -                     -  -                                   -      -       -       -       -       -       -
  imu    -        -                     -  -                                   -      -       -       -       -       -       -
  warning: model har: 1 of 2 worker(s) stalled
  model har: 2 open stream(s), 100 window(s) from 6450 reading(s), 50 reading(s) discarded
  model tpu: on cpu, not edgetpu: edgetpu: the delegate plugin declined; tried again in 42 s
  model tpu: 1 accelerator switch(es) after failed inferences
  model gpu: on gpu, partly delegated (3 of 12 nodes)
  model idle: shares its engine(s) with har, har_raw (same file on the CPU; their invokes take turns)
  model cam: in the background: 1 worker(s) in SCHED_IDLE, computing on cores nothing else wants
  warning: model cam2: worker_priority \"background\" refused by the kernel for 2 of 2 worker(s): they run at normal priority (the daemon's log says why)
  model cam3: in the background (worker_priority \"auto\": its messages take 1 ms or more, beside sensor models): 1 worker(s) in SCHED_IDLE, computing on cores nothing else wants
";
        assert_eq!(out, expected);
    }

    #[test]
    fn bad_records_are_noted_not_trusted() {
        let mut devices = BTreeMap::new();
        store(&mut devices, "edge-infer/gw-7/health", b"not json");
        store(&mut devices, "edge-infer/gw-7/status", b"[1,2]");
        store(
            &mut devices,
            "edge-infer/gw-8/status",
            br#"{"state":7,"models":"x"}"#,
        );
        store(&mut devices, "elsewhere/gw-9/status", b"{}");
        store(&mut devices, "edge-infer/gw-10/status", b"");
        assert_eq!(devices.len(), 2);
        let gw7 = &devices["gw-7"];
        assert!(gw7.status.is_none() && gw7.health.is_none());
        assert_eq!(gw7.problems.len(), 2);
        let out = render_device("gw-8", &devices["gw-8"], 0.0);
        assert!(out.starts_with("gw-8  -\n  version  -\n  health   no health record\n"));
    }
}
