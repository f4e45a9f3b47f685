//! The outbox measurement: a target whose results go to a second broker
//! (its uplink) that is down. While it is down, `--count` messages are sent
//! at `--rate` (QoS 1), and the outbox's files (`--outbox-dir`, append
//! only) are sampled every 10 ms: their growth times the commits, so the
//! run tells whether the target kept up with the inputs while writing to
//! disk (the broker's PUBACKs cannot: a broker acknowledges a publish on
//! receipt, whatever its subscribers do). With `--pid`, the target's
//! `write_bytes` (/proc/PID/io) over the fill. Once the outbox stops
//! growing the run writes `--filled` and waits for the uplink: the caller
//! starts it.
//! From the moment the uplink accepts a connection, the run measures how
//! long the replay of every stored result takes and, with `--live-rate`,
//! the latency of fresh messages sent meanwhile.
//!
//! The results are read by a subscriber with a persistent session
//! (`--client-id`), created beforehand with `--prepare` while the uplink
//! is up (the uplink must keep sessions across its restart: Mosquitto's
//! `persistence true`), so the broker holds every result published before
//! the subscriber is back, however quickly the target reconnects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rumqttc::{Event, Incoming, Outgoing, QoS, RecvTimeoutError};
use serde_json::{json, Value};

use crate::echo::json_id;
use crate::load::{
    drive_publisher, hist, json_value_at, key_of, no_acks, nonce, payload_from_args, put_quantiles,
    send_schedule, Acks, Payload, PayloadArgs, Schedule, Workload,
};
use crate::mqtt;

const ID_SPAN: u64 = 1_000_000_000;

#[derive(Debug, clap::Args)]
pub struct OutageArgs {
    /// The inputs broker's port on 127.0.0.1
    #[arg(long, value_name = "P")]
    pub port: u16,
    /// The uplink broker's port on 127.0.0.1 (where the results go); down
    /// when the run starts
    #[arg(long, value_name = "P")]
    pub uplink_port: u16,
    /// The topic to publish on
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// The filter the results arrive on (at the uplink)
    #[arg(long, value_name = "FILTER")]
    pub results: String,
    /// The filter the target's errors arrive on (at the uplink)
    #[arg(long, value_name = "FILTER")]
    pub errors: Option<String>,
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// Messages sent while the uplink is down
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub count: u64,
    /// Their rate, messages per second
    #[arg(long, value_name = "R", default_value_t = 2000.0)]
    pub rate: f64,
    /// Fresh messages per second from the moment the uplink is back (0:
    /// none)
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub live_rate: f64,
    /// For how long
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub live_seconds: f64,
    /// The subscriber's client id at the uplink
    #[arg(long, value_name = "ID", default_value = "bench-outage-sub")]
    pub client_id: String,
    /// Only create the subscriber's persistent session at the uplink (which
    /// must be up), then exit
    #[arg(long)]
    pub prepare: bool,
    /// Written (the fill's figures, JSON) once every message sent while the
    /// uplink is down is acknowledged; the run then waits for the uplink
    #[arg(long, value_name = "FILE")]
    pub filled: Option<PathBuf>,
    /// The target's outbox directory, sampled during the fill
    #[arg(long, value_name = "DIR")]
    pub outbox_dir: Option<PathBuf>,
    /// The target's process id, for the bytes it writes during the fill
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// How long to wait for the fill to end, for the uplink, and then for
    /// every result
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = crate::parse_secs)]
    pub timeout: Duration,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 1e4
}

/// `--prepare`: subscribes with a persistent session, then leaves cleanly.
fn prepare(a: &OutageArgs) -> Result<(), String> {
    let (sub, mut conn) = mqtt::connect_session(&a.client_id, a.uplink_port, false);
    let mut subs = 1;
    mqtt::subscribe_qos(&sub, &a.results, QoS::AtLeastOnce, "outage (prepare)")?;
    if let Some(e) = &a.errors {
        mqtt::subscribe_qos(&sub, e, QoS::AtLeastOnce, "outage (prepare)")?;
        subs += 1;
    }
    mqtt::wait_ready(&mut conn, subs, "outage (prepare)")?;
    sub.disconnect()
        .map_err(|e| format!("outage (prepare): cannot disconnect: {e}"))?;
    // Until the DISCONNECT is written (the broker then keeps the session).
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match conn.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
            Err(RecvTimeoutError::Disconnected) => break,
            _ => {}
        }
    }
    println!(
        "{}",
        json!({"prepared": a.client_id, "uplink_port": a.uplink_port})
    );
    Ok(())
}

/// One group of fresh messages' latencies.
fn group(o: &mut serde_json::Map<String, Value>, name: &str, h: &Histogram<u64>) {
    let mut g = serde_json::Map::new();
    g.insert("received".into(), json!(h.len()));
    put_quantiles(&mut g, "", h);
    o.insert(name.into(), Value::Object(g));
}

pub fn main(a: &OutageArgs) -> Result<(), String> {
    if a.prepare {
        return prepare(a);
    }
    if !(a.rate > 0.0 && a.count > 0) {
        return Err("--rate and --count must be positive".into());
    }
    let payload = payload_from_args(&a.payload)?;
    let w = Workload {
        topic: a.topic.clone(),
        // Raw bytes carry no id: the sequence number goes in the topic.
        seq_topic: matches!(payload, Payload::Raw(_)),
        results: a.results.clone(),
        errors: a.errors.clone(),
        payload,
    };

    // The fill: everything sent now can only go to the outbox.
    let fill_nonce = nonce();
    let (publ, mut conn) = mqtt::connect(&format!("bench-outage-pub-{fill_nonce}"), a.port);
    mqtt::wait_ready(&mut conn, 0, "outage (publisher)")?;
    let sched = Schedule::new(a.rate, a.count, fill_nonce, Duration::from_millis(100));
    let acked = Arc::new(AtomicU64::new(0));
    let acked_p = acked.clone();
    let acks_thread = thread::spawn(move || drive_publisher(conn, sched, acked_p));
    eprintln!(
        "outage: sending {} messages at {}/s with the uplink down",
        a.count, a.rate
    );
    let written_before = a.pid.and_then(write_bytes);
    let sampler = a.outbox_dir.clone().map(|dir| {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_s = stop.clone();
        let t = thread::spawn(move || sample_sizes(&dir, &stop_s));
        (stop, t)
    });
    let out = send_schedule(&publ, &w, &sched, QoS::AtLeastOnce);
    let deadline = Instant::now() + a.timeout;
    while acked.load(Ordering::Relaxed) < out.sent && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    let _ = publ.disconnect();
    let (_, acks) = acks_thread
        .join()
        .unwrap_or_else(|_| (Some("publisher thread panicked".into()), no_acks()));
    // The outbox has everything once it stops growing for a while.
    let samples = match sampler {
        Some((stop, t)) => {
            let quiet = Duration::from_millis(1000);
            let mut last = (Instant::now(), outbox_bytes(a.outbox_dir.as_deref()));
            while Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
                let now = outbox_bytes(a.outbox_dir.as_deref());
                if now != last.1 {
                    last = (Instant::now(), now);
                } else if last.0.elapsed() >= quiet {
                    break;
                }
            }
            stop.store(true, Ordering::Relaxed);
            t.join().unwrap_or_default()
        }
        None => Vec::new(),
    };
    let written = match (written_before, a.pid.and_then(write_bytes)) {
        (Some(b), Some(e)) => Some(e.saturating_sub(b)),
        _ => None,
    };
    let fill = fill_json(a, &out, &acks, &sched, &samples, written);
    eprintln!("outage: fill {fill}");
    if let Some(path) = &a.filled {
        std::fs::write(path, fill.to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }

    // Fresh messages: connected now, so they start the moment the uplink is
    // back.
    let mut live_nonce = nonce();
    if live_nonce == fill_nonce {
        live_nonce += 1;
    }
    let live_n = (a.live_rate * a.live_seconds).round().max(0.0) as u64;
    let live_pub = if live_n > 0 {
        let (p, mut c) = mqtt::connect(&format!("bench-outage-live-{live_nonce}"), a.port);
        mqtt::wait_ready(&mut c, 0, "outage (live publisher)")?;
        Some((p, c))
    } else {
        None
    };

    // The subscriber: tries until the uplink accepts it.
    let (sub, mut sconn) = mqtt::connect_session(&a.client_id, a.uplink_port, false);
    mqtt::subscribe_qos(&sub, &a.results, QoS::AtLeastOnce, "outage (results)")?;
    if let Some(e) = &a.errors {
        mqtt::subscribe_qos(&sub, e, QoS::AtLeastOnce, "outage (errors)")?;
    }
    let wait_until = Instant::now() + a.timeout;
    let mut attempts = 0u64;
    let (up_at, session_present) = loop {
        if Instant::now() > wait_until {
            return Err(format!(
                "the uplink (port {}) did not accept a connection within {:?}",
                a.uplink_port, a.timeout
            ));
        }
        match sconn.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(c)))) => {
                break (Instant::now(), c.session_present)
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(_)) => {
                // Refused: rumqttc connects again at the next poll.
                attempts += 1;
                thread::sleep(Duration::from_millis(2));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("outage: the subscriber's client closed".into())
            }
        }
    };
    let up_unix = unix_now();
    eprintln!(
        "outage: uplink up after {attempts} refused attempts (session present: {session_present})"
    );

    let live_sched = Schedule::new(
        a.live_rate.max(1.0),
        live_n,
        live_nonce,
        Duration::from_millis(1),
    );
    let live_acked = Arc::new(AtomicU64::new(0));
    let mut live_threads = None;
    let mut live_sent = Arc::new(AtomicU64::new(0));
    if let Some((p, c)) = live_pub {
        let la = live_acked.clone();
        let acks_t = thread::spawn(move || drive_publisher(c, live_sched, la));
        let w_live = w.clone();
        let ls = Arc::new(AtomicU64::new(0));
        live_sent = ls.clone();
        let send_t = thread::spawn(move || {
            let out = send_schedule(&p, &w_live, &live_sched, QoS::AtLeastOnce);
            ls.store(out.sent, Ordering::Relaxed);
            (p, out)
        });
        live_threads = Some((acks_t, send_t));
    }

    // Collect.
    let matching = w.matching();
    let mut fill_seen = vec![false; a.count as usize];
    let mut live_seen = vec![false; live_n as usize];
    let (mut fill_received, mut fill_errors, mut fill_dups) = (0u64, 0u64, 0u64);
    let (mut live_received, mut live_errors, mut live_dups) = (0u64, 0u64, 0u64);
    let mut others = 0u64;
    let mut error_codes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut first_fill, mut last_fill, mut first_any) = (None, None, None);
    // (due, latency in us) of each fresh result; grouped once the drain's
    // end is known.
    let mut live_lat: Vec<(Instant, u64)> = Vec::with_capacity(live_n as usize);
    let drain_until = up_at + a.timeout;
    let mut failure = None;
    let live_end = live_sched.due(live_n.saturating_sub(1)) + Duration::from_secs(3);
    loop {
        let fill_done = fill_received + fill_errors >= out.sent;
        let live_done = live_n == 0
            || live_received + live_errors >= live_n
            || Instant::now() > live_end.max(last_fill.unwrap_or(up_at) + Duration::from_secs(3));
        if (fill_done && live_done) || Instant::now() > drain_until {
            break;
        }
        let p = match sconn.recv_timeout(Duration::from_millis(20)) {
            Ok(Ok(Event::Incoming(Incoming::Publish(p)))) => p,
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => continue,
            Ok(Err(e)) => {
                failure = Some(format!("the subscriber lost the uplink: {e}"));
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        let topic = p.topic.as_str();
        let is_error = mqtt::matches(&a.results, topic).is_none()
            && a.errors
                .as_deref()
                .and_then(|e| mqtt::matches(e, topic))
                .is_some();
        let key = if is_error {
            json_id(&p.payload)
                .and_then(|id| std::str::from_utf8(id).ok()?.parse::<u64>().ok())
                .map(|id| (id / ID_SPAN, id % ID_SPAN))
        } else {
            key_of(p.topic.as_bytes(), &p.payload, matching)
        };
        if is_error {
            let code = json_value_at(&p.payload, b"\"code\"");
            let code = code.as_ref().and_then(Value::as_str).unwrap_or("(no code)");
            *error_codes.entry(code.to_string()).or_insert(0) += 1;
        }
        match key {
            Some((n, seq)) if n == fill_nonce && seq < a.count => {
                first_any.get_or_insert(now);
                let seen = &mut fill_seen[seq as usize];
                if *seen {
                    fill_dups += 1;
                    continue;
                }
                *seen = true;
                if is_error {
                    fill_errors += 1;
                } else {
                    fill_received += 1;
                }
                first_fill.get_or_insert(now);
                last_fill = Some(now);
            }
            Some((n, seq)) if n == live_nonce && seq < live_n => {
                first_any.get_or_insert(now);
                let seen = &mut live_seen[seq as usize];
                if *seen {
                    live_dups += 1;
                    continue;
                }
                *seen = true;
                if is_error {
                    live_errors += 1;
                    continue;
                }
                live_received += 1;
                let due = live_sched.due(seq);
                live_lat.push((due, now.saturating_duration_since(due).as_micros() as u64));
            }
            _ => others += 1,
        }
    }
    let _ = sub.disconnect();
    let mut live_acks = no_acks();
    if let Some((acks_t, send_t)) = live_threads {
        if let Ok((p, _)) = send_t.join() {
            // Every fresh message is acknowledged once answered; give the
            // last ones a moment.
            let until = Instant::now() + Duration::from_secs(3);
            while live_acked.load(Ordering::Relaxed) < live_sent.load(Ordering::Relaxed)
                && Instant::now() < until
            {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = p.disconnect();
        }
        if let Ok((_, acks)) = acks_t.join() {
            live_acks = acks;
        }
    }
    if let Some(f) = failure {
        return Err(f);
    }

    let since_up = |t: Option<Instant>| t.map(|t| secs(t.saturating_duration_since(up_at)));
    let drain_s = match (first_fill, last_fill) {
        (Some(f), Some(l)) => Some(l.saturating_duration_since(f).as_secs_f64()),
        _ => None,
    };
    let fill_answered = fill_received + fill_errors;
    let drain = json!({
        "count": a.count,
        "sent": out.sent,
        "received": fill_received,
        "errors": fill_errors,
        "duplicates": fill_dups,
        "missing": out.sent.saturating_sub(fill_answered),
        "uplink_up_unix": up_unix,
        "refused_attempts": attempts,
        "session_present": session_present,
        "first_any_after_up_s": since_up(first_any),
        "first_after_up_s": since_up(first_fill),
        "last_after_up_s": since_up(last_fill),
        "drain_s": drain_s.map(|d| (d * 1e4).round() / 1e4),
        "replay_rate": drain_s
            .filter(|&d| d > 0.0)
            .map(|d| ((fill_answered.saturating_sub(1)) as f64 / d).round()),
        "replay_rate_from_up": last_fill
            .map(|l| l.saturating_duration_since(up_at).as_secs_f64())
            .filter(|&d| d > 0.0)
            .map(|d| (fill_answered as f64 / d).round()),
    });

    // Fresh messages, grouped by when they were due: before the target
    // was back (their results went to the outbox too), while the stored
    // results drained, and after.
    let back = first_any.unwrap_or(up_at);
    let drained = last_fill.unwrap_or(back);
    let (mut all, mut before, mut during, mut after) = (hist(), hist(), hist(), hist());
    for &(due, us) in &live_lat {
        let us = us.max(1);
        let _ = all.record(us);
        let g = if due < back {
            &mut before
        } else if due <= drained {
            &mut during
        } else {
            &mut after
        };
        let _ = g.record(us);
    }
    let mut live = serde_json::Map::new();
    live.insert("rate".into(), json!(a.live_rate));
    live.insert("seconds".into(), json!(a.live_seconds));
    live.insert("sent".into(), json!(live_sent.load(Ordering::Relaxed)));
    live.insert("received".into(), json!(live_received));
    live.insert("errors".into(), json!(live_errors));
    live.insert("duplicates".into(), json!(live_dups));
    live.insert(
        "missing".into(),
        json!(live_sent
            .load(Ordering::Relaxed)
            .saturating_sub(live_received + live_errors)),
    );
    live.insert("acked".into(), json!(live_acks.count));
    put_quantiles(&mut live, "ack_", &live_acks.latency);
    group(&mut live, "all", &all);
    group(&mut live, "before_back", &before);
    group(&mut live, "during_drain", &during);
    group(&mut live, "after_drain", &after);

    let doc = json!({
        "fill": fill,
        "drain": drain,
        "live": Value::Object(live),
        "error_codes": error_codes,
        "others": others,
    });
    println!("{doc}");
    Ok(())
}

/// The total size of the files in `dir` (0 when unreadable).
fn outbox_bytes(dir: Option<&Path>) -> u64 {
    let Some(Ok(entries)) = dir.map(std::fs::read_dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// The outbox's size every 10 ms until `stop`.
fn sample_sizes(dir: &Path, stop: &AtomicBool) -> Vec<(Instant, u64)> {
    let mut v = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        v.push((Instant::now(), outbox_bytes(Some(dir))));
        thread::sleep(Duration::from_millis(10));
    }
    v
}

/// Bytes a process caused to be written to storage (`write_bytes` of
/// /proc/PID/io).
fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// The fill's figures: the outbox's growth against the schedule. With
/// records of about equal size, its bytes over the final bytes are the
/// share of the results stored; the schedule says how many were due.
fn fill_json(
    a: &OutageArgs,
    out: &crate::load::Sent,
    acks: &Acks,
    sched: &Schedule,
    samples: &[(Instant, u64)],
    written: Option<u64>,
) -> Value {
    let send_s = out.end.saturating_duration_since(sched.start).as_secs_f64();
    let round = |x: f64| (x * 1e4).round() / 1e4;
    let mut o = serde_json::Map::new();
    o.insert("count".into(), json!(a.count));
    o.insert("rate".into(), json!(a.rate));
    o.insert("sent".into(), json!(out.sent));
    o.insert("send_errors".into(), json!(out.send_errors));
    o.insert("send_s".into(), json!(round(send_s)));
    o.insert("broker_acked".into(), json!(acks.count));
    o.insert(
        "send_lag_p99_ms".into(),
        json!(crate::load::ms(out.lag.value_at_quantile(0.99))),
    );
    let final_bytes = samples.last().map(|s| s.1).unwrap_or(0);
    let initial = samples.first().map(|s| s.1).unwrap_or(0);
    let stored = final_bytes.saturating_sub(initial);
    o.insert("outbox_bytes".into(), json!(stored));
    if stored > 0 && out.sent > 0 {
        let per = stored as f64 / out.sent as f64;
        o.insert("outbox_bytes_per_result".into(), json!(per.round()));
        // When the outbox reached its final size, from the first send.
        let done = samples
            .iter()
            .find(|s| s.1 >= final_bytes)
            .map(|s| s.0.saturating_duration_since(sched.start).as_secs_f64());
        o.insert("stored_all_s".into(), json!(done.map(round)));
        o.insert(
            "stored_after_last_send_s".into(),
            json!(done.map(|d| round(d - send_s))),
        );
        o.insert(
            "commit_rate".into(),
            json!(done
                .filter(|&d| d > 0.0)
                .map(|d| (out.sent as f64 / d).round())),
        );
        // The most results due and not yet stored, while sending.
        let mut behind = 0.0f64;
        for &(t, bytes) in samples {
            if t < sched.start || t > out.end {
                continue;
            }
            let due = (t.saturating_duration_since(sched.start).as_secs_f64() * a.rate)
                .min(out.sent as f64);
            let stored_n = bytes.saturating_sub(initial) as f64 / per;
            behind = behind.max(due - stored_n);
        }
        o.insert("max_behind_results".into(), json!(behind.round()));
        o.insert(
            "max_behind_ms".into(),
            json!((behind / a.rate * 1e3 * 10.0).round() / 10.0),
        );
    }
    if let Some(w) = written {
        o.insert("write_bytes".into(), json!(w));
        if out.sent > 0 {
            o.insert(
                "write_bytes_per_result".into(),
                json!((w as f64 / out.sent as f64).round()),
            );
        }
    }
    Value::Object(o)
}
