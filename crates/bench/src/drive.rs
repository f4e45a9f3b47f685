//! The driver: starts a target process (edge-infer, the Python baseline or
//! the echo floor), measures its cold start to readiness, then for each
//! workload the latency at fixed offered rates, the highest sustained rate
//! (zero lost, zero errors, p99 within the SLO), CPU seconds per 1,000
//! messages from /proc/<pid>/stat, and its peak RSS (VmHWM). Writes one
//! JSON document.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde_json::{json, Value};

use crate::load::{
    self, fixture_payload, Payload, Readings, ReadingsSpec, Report, RunSpec, Workload,
};

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How the harness knows the target is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// sd_notify READY=1 on a socket we listen on.
    Notify,
    /// A stdout line containing this text.
    Line(String),
}

/// `--cpu-of NAME=PID`.
fn parse_cpu_of(s: &str) -> Result<(String, u32), String> {
    let expected = "expected NAME=PID";
    let (name, pid) = s.split_once('=').ok_or(expected)?;
    let pid = pid.parse().map_err(|_| expected)?;
    if name.is_empty() {
        return Err(expected.into());
    }
    Ok((name.to_string(), pid))
}

/// `--ready`: `notify` or `line:TEXT`.
fn parse_ready(s: &str) -> Result<Ready, String> {
    match s {
        "notify" => Ok(Ready::Notify),
        other => match other.strip_prefix("line:") {
            Some(t) if !t.is_empty() => Ok(Ready::Line(t.to_string())),
            _ => Err("must be notify or line:TEXT".into()),
        },
    }
}

#[derive(Debug, clap::Args)]
pub struct DriveArgs {
    /// The target's name in the results
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// How the target says it is ready: `notify` (sd_notify READY=1 on a
    /// socket given in NOTIFY_SOCKET) or `line:TEXT` (a stdout line with
    /// TEXT)
    #[arg(long, value_name = "notify|line:TEXT", value_parser = parse_ready)]
    pub ready: Ready,
    /// MQTT broker port on 127.0.0.1
    #[arg(long, value_name = "P", default_value_t = 1883)]
    pub port: u16,
    /// The workloads (JSON array, as bench/workloads.json)
    #[arg(long, value_name = "FILE")]
    pub workloads: PathBuf,
    /// Only these workloads, by name (comma-separated or repeated)
    /// [default: all]
    #[arg(long, value_name = "NAME[,NAME..]", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where fixture paths of the workloads are relative to
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub repo: PathBuf,
    /// The filter the target's errors arrive on
    #[arg(long, value_name = "FILTER")]
    pub errors: Option<String>,
    /// QoS of the messages sent (0 or 1); at 1 the broker's
    /// acknowledgements are timed too (`ack_*` in the results)
    #[arg(long, value_name = "0|1", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Also report the CPU of this process per 1,000 messages
    /// (`cpu_s_per_1000_NAME`), e.g. the broker's (repeatable)
    #[arg(long = "cpu-of", value_name = "NAME=PID", value_parser = parse_cpu_of)]
    pub cpu_of: Vec<(String, u32)>,
    /// Seconds of each run at a workload's fixed rates
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub fixed_seconds: f64,
    /// Seconds of each trial of the search for the highest sustained rate
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub trial_seconds: f64,
    /// Seconds of the run that confirms the sustained rate
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub seconds: f64,
    /// Skip the search for the highest sustained rate (fixed rates only)
    #[arg(long)]
    pub no_search: bool,
    /// How long to wait for results after the last scheduled send
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = crate::parse_secs)]
    pub grace: Duration,
    /// The p99 latency a sustained rate must stay within, in ms
    #[arg(long, value_name = "MS", default_value_t = 100.0)]
    pub slo_p99_ms: f64,
    /// Cold starts to measure (the last start is then measured with the
    /// workloads)
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub cold_starts: usize,
    /// Where to write the results (JSON)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Where the target's stderr goes
    #[arg(long, value_name = "FILE", default_value = "/dev/null")]
    pub log: PathBuf,
    /// The target command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ColdstartArgs {
    /// How the command says it is ready: `notify` or `line:TEXT`
    #[arg(long, value_name = "notify|line:TEXT", value_parser = parse_ready)]
    pub ready: Ready,
    /// Starts to measure
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub repeat: usize,
    /// Where to write the results (JSON)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Where the command's stderr goes
    #[arg(long, value_name = "FILE", default_value = "/dev/null")]
    pub log: PathBuf,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

struct Target {
    child: Child,
    _notify: Option<UnixDatagram>,
    cold_start_ms: f64,
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unexpected /proc/<pid>/stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let num = |i: usize| -> Result<u64, String> {
        f.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "unexpected /proc/<pid>/stat format".to_string())
    };
    Ok(num(11)? + num(12)?)
}

/// A `/proc/<pid>/status` value in kB (VmHWM, VmRSS).
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn start(cmd: &[String], ready: &Ready, log: &Path, dir: &Path) -> Result<Target, String> {
    let (prog, rest) = cmd.split_first().ok_or("no target command after --")?;
    let mut c = Command::new(prog);
    c.args(rest).stdin(Stdio::null());
    let log_file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
    c.stderr(log_file);
    let mut notify = None;
    match ready {
        Ready::Notify => {
            let path = dir.join(format!("notify-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let sock = UnixDatagram::bind(&path)
                .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            c.env("NOTIFY_SOCKET", &path).stdout(Stdio::null());
            notify = Some(sock);
        }
        Ready::Line(_) => {
            c.env_remove("NOTIFY_SOCKET").stdout(Stdio::piped());
        }
    }
    let t0 = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("cannot start {prog}: {e}"))?;
    let deadline = t0 + READY_TIMEOUT;
    match (ready, &notify) {
        (Ready::Notify, Some(sock)) => {
            let mut buf = [0u8; 4096];
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "{prog} exited ({status}) before READY; see {}",
                        log.display()
                    ));
                }
                if Instant::now() > deadline {
                    stop(&mut child);
                    return Err(format!("{prog}: no READY=1 within {READY_TIMEOUT:?}"));
                }
                if let Ok(n) = sock.recv(&mut buf) {
                    if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") {
                        break;
                    }
                }
            }
            // Keep reading, as systemd does: the daemon sends STATUS= every
            // second, and an unread datagram socket fills after
            // net.unix.max_dgram_qlen (10) messages, after which its
            // blocking sd_notify call would wedge it.
            if let Ok(drain) = sock.try_clone() {
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match drain.recv(&mut buf) {
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                });
            }
        }
        (Ready::Line(text), _) => {
            let out = child.stdout.take().ok_or("no stdout pipe")?;
            let (tx, rx) = mpsc::channel();
            let text = text.clone();
            thread::spawn(move || {
                let mut told = false;
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if !told && line.contains(&text) {
                        let _ = tx.send(());
                        told = true;
                    }
                }
            });
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "{prog} exited ({status}) before its ready line; see {}",
                        log.display()
                    ));
                }
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(()) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                    Err(_) => {
                        stop(&mut child);
                        return Err(format!("{prog}: no ready line within {READY_TIMEOUT:?}"));
                    }
                }
            }
        }
        _ => return Err("internal: notify socket missing".into()),
    }
    Ok(Target {
        cold_start_ms: t0.elapsed().as_secs_f64() * 1000.0,
        child,
        _notify: notify,
    })
}

/// SIGTERM, then SIGKILL after 15 s.
fn stop(child: &mut Child) -> Option<i32> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(s)) = child.try_wait() {
            return s.code();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok().and_then(|s| s.code())
}

/// Waits until the target uses (almost) no CPU, so a backlog from the
/// previous run does not leak into the next one.
fn wait_idle(pid: u32) -> Result<(), String> {
    let t = Instant::now();
    let mut last = cpu_ticks(pid)?;
    let mut quiet = 0;
    while t.elapsed() < Duration::from_secs(60) {
        thread::sleep(Duration::from_millis(200));
        let now = cpu_ticks(pid)?;
        if now - last <= 1 {
            quiet += 1;
            if quiet >= 2 {
                return Ok(());
            }
        } else {
            quiet = 0;
        }
        last = now;
    }
    eprintln!("warning: target still busy after 60 s");
    Ok(())
}

struct Ctx {
    pid: u32,
    /// Other processes whose CPU per message is reported.
    cpu_of: Vec<(String, u32)>,
    port: u16,
    qos: QoS,
    tck: f64,
    grace: Duration,
    slo: f64,
}

fn measured(ctx: &Ctx, w: &Workload, rate: f64, seconds: f64) -> Result<Report, String> {
    // Long enough that every stream of a readings workload completes
    // windows (a slow rate and a short trial might complete none).
    let seconds = seconds.max(w.min_seconds(rate));
    wait_idle(ctx.pid)?;
    let before = cpu_ticks(ctx.pid)?;
    let others_before: Vec<Option<u64>> =
        ctx.cpu_of.iter().map(|(_, p)| cpu_ticks(*p).ok()).collect();
    let spec = RunSpec {
        port: ctx.port,
        results_port: ctx.port,
        qos: ctx.qos,
        rate,
        seconds,
        grace: ctx.grace,
        trace: None,
    };
    let mut r = match load::run(w, &spec) {
        Ok(r) => r,
        Err(e) => {
            // One retry: a broken connection of the generator is not a
            // property of the target.
            eprintln!("  rate {rate}: run failed ({e}); retrying once");
            wait_idle(ctx.pid)?;
            load::run(w, &spec)?
        }
    };
    let after = cpu_ticks(ctx.pid)?;
    let cpu_s = (after - before) as f64 / ctx.tck;
    let per_1000 = if r.handled > 0 {
        json!((cpu_s / r.handled as f64 * 1000.0 * 10000.0).round() / 10000.0)
    } else {
        Value::Null
    };
    let ok = r.sustained(ctx.slo);
    let handled = r.handled;
    if let Some(o) = r.json.as_object_mut() {
        o.insert("cpu_s".into(), json!(cpu_s));
        o.insert("cpu_s_per_1000".into(), per_1000);
        o.insert("sustained".into(), json!(ok));
        for ((name, pid), b) in ctx.cpu_of.iter().zip(&others_before) {
            let used = b.and_then(|b| Some(cpu_ticks(*pid).ok()?.saturating_sub(b)));
            let v = match used {
                Some(t) if handled > 0 => {
                    let s = t as f64 / ctx.tck;
                    json!((s / handled as f64 * 1000.0 * 10000.0).round() / 10000.0)
                }
                _ => Value::Null,
            };
            o.insert(format!("cpu_s_per_1000_{name}"), v);
        }
    }
    let acks = match r.json.get("ack_p99_ms") {
        Some(p99) => format!(" unacked {} ack p99 {p99}", r.json["unacked"]),
        None => String::new(),
    };
    eprintln!(
        "  rate {rate:>8} x {seconds}s: sent {} expected {} recv {} err {} lost {} p50 {} p99 {} max {} cpu/1000 {}{acks}",
        r.sent,
        r.expected,
        r.received,
        r.errors,
        r.lost,
        r.json["p50_ms"],
        r.json["p99_ms"],
        r.json["max_ms"],
        r.json["cpu_s_per_1000"]
    );
    Ok(r)
}

fn run_workload(ctx: &Ctx, spec: &Value, a: &DriveArgs) -> Result<Value, String> {
    let name = spec["name"].as_str().unwrap_or("?").to_string();
    let s = |k: &str| -> Result<String, String> {
        spec[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("workload {name}: missing string \"{k}\""))
    };
    let payload = workload_payload(spec, &name, &a.repo)?;
    let w = Workload {
        topic: s("topic")?,
        // Raw bytes carry no id: the sequence number goes in the topic.
        seq_topic: matches!(payload, Payload::Raw(_)),
        results: s("results")?,
        errors: a.errors.clone(),
        payload,
    };
    let rates: Vec<f64> = spec["rates"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let search_max = spec["search_max"].as_f64().unwrap_or(200_000.0);
    let (fixed_s, trial_s, confirm_s) = (a.fixed_seconds, a.trial_seconds, a.seconds);
    eprintln!(
        "workload {name} ({} bytes {})",
        w.payload.len(),
        w.payload.kind()
    );

    let mut fixed = Vec::new();
    let mut lo: f64 = 0.0; // highest rate seen sustained
    let mut hi: f64 = f64::INFINITY; // lowest rate seen failing
    for &rate in &rates {
        if rate >= hi * 1.5 {
            fixed.push(json!({"rate": rate, "skipped": format!("{hi} msg/s already overloaded")}));
            continue;
        }
        let r = measured(ctx, &w, rate, fixed_s)?;
        if r.sustained(ctx.slo) {
            lo = lo.max(rate);
        } else {
            hi = hi.min(rate);
        }
        fixed.push(r.json);
    }
    // Search: grow until failure, then bisect, with short trials.
    let mut trials = Vec::new();
    if !a.no_search {
        if lo == 0.0 && hi.is_infinite() {
            lo = 0.0;
            hi = 100.0;
        }
        while hi.is_infinite() {
            let rate = (lo * 2.0).min(search_max);
            let r = measured(ctx, &w, rate, trial_s)?;
            let ok = r.sustained(ctx.slo);
            trials.push(r.json);
            if ok {
                lo = rate;
                if rate >= search_max {
                    break;
                }
            } else {
                hi = rate;
            }
        }
        while lo == 0.0 && hi > 1.0 {
            let rate = (hi / 2.0).floor().max(1.0);
            let r = measured(ctx, &w, rate, trial_s)?;
            let ok = r.sustained(ctx.slo);
            trials.push(r.json);
            if ok {
                lo = rate;
            } else {
                hi = rate;
            }
        }
        let mut steps = 0;
        while hi.is_finite() && lo > 0.0 && hi / lo > 1.08 && steps < 7 {
            let rate = ((lo * hi).sqrt()).round();
            let r = measured(ctx, &w, rate, trial_s)?;
            let ok = r.sustained(ctx.slo);
            trials.push(r.json);
            if ok {
                lo = rate;
            } else {
                hi = rate;
            }
            steps += 1;
        }
    }
    // Confirm for the full duration, stepping down 10% on failure.
    let mut sustained = Value::Null;
    if lo > 0.0 && !a.no_search {
        let mut rate = lo;
        for _ in 0..4 {
            let r = measured(ctx, &w, rate, confirm_s)?;
            if r.sustained(ctx.slo) {
                sustained = r.json;
                break;
            }
            trials.push(r.json);
            rate = (rate * 0.9).floor().max(1.0);
        }
    }
    Ok(json!({
        "name": name,
        "title": spec["title"],
        "note": spec["note"],
        "model": spec["model"],
        "payload_bytes": w.payload.len(),
        "payload_kind": w.payload.kind(),
        "fixed": fixed,
        "search_trials": trials,
        "sustained": sustained,
    }))
}

/// What a workload sends, by its `"format"`: `json` or `raw` (a fixture
/// case), `file` (the bytes of `"payload"`, e.g. a JPEG) or `readings`
/// (per-reading JSON from fixture cases, see `load::Readings`).
fn workload_payload(spec: &Value, name: &str, repo: &Path) -> Result<Payload, String> {
    let s = |k: &str| -> Result<&str, String> {
        spec[k]
            .as_str()
            .ok_or_else(|| format!("workload {name}: missing string \"{k}\""))
    };
    let u = |k: &str| -> Result<u64, String> {
        spec[k]
            .as_u64()
            .ok_or_else(|| format!("workload {name}: \"{k}\" must be an integer, 0 or more"))
    };
    let strings = |k: &str| -> Result<Vec<String>, String> {
        spec[k]
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect())
            .ok_or_else(|| format!("workload {name}: \"{k}\" must be an array of strings"))
    };
    match s("format")? {
        format @ ("json" | "raw") => fixture_payload(
            &repo.join(s("fixture")?),
            spec["case"].as_str(),
            format == "raw",
        ),
        "file" => {
            let path = repo.join(s("payload")?);
            std::fs::read(&path).map(Payload::Raw).map_err(|e| {
                format!(
                    "workload {name}: cannot read its payload file {}: {e}",
                    path.display()
                )
            })
        }
        "readings" => {
            let (cases, fields) = (strings("cases")?, strings("fields")?);
            let readings = Readings::from_fixture(
                &repo.join(s("fixture")?),
                &ReadingsSpec {
                    cases: &cases,
                    fields: &fields,
                    ts_field: s("timestamp")?,
                    decimals: usize::try_from(u("decimals")?).map_err(|e| e.to_string())?,
                    streams: u("streams")?,
                    size: u("size")?,
                    stride: u("stride")?,
                },
            )
            .map_err(|e| format!("workload {name}: {e}"))?;
            Ok(Payload::Readings(readings))
        }
        other => Err(format!(
            "workload {name}: unknown format \"{other}\" (expected json, raw, file or readings)"
        )),
    }
}

pub fn main(a: &DriveArgs) -> Result<(), String> {
    let name = &a.name;
    let wl_path = a.workloads.display();
    let wl_text = std::fs::read(&a.workloads).map_err(|e| format!("cannot read {wl_path}: {e}"))?;
    let workloads: Value =
        serde_json::from_slice(&wl_text).map_err(|e| format!("{wl_path} is not JSON: {e}"))?;
    let only = &a.only;
    let selected: Vec<&Value> = workloads
        .as_array()
        .ok_or_else(|| format!("{wl_path}: expected an array of workloads"))?
        .iter()
        .filter(|w| only.is_empty() || only.iter().any(|o| Some(o.as_str()) == w["name"].as_str()))
        .collect();
    let out = a.out.display();
    let dir = std::env::temp_dir();
    let cold_n = a.cold_starts;

    eprintln!("== target {name}");
    let mut cold = Vec::new();
    let mut target = None;
    for i in 0..cold_n.max(1) {
        let mut t = start(&a.command, &a.ready, &a.log, &dir)?;
        cold.push(t.cold_start_ms);
        if i + 1 < cold_n.max(1) {
            stop(&mut t.child);
        } else {
            target = Some(t);
        }
    }
    let mut target = target.ok_or("internal: no target")?;
    let pid = target.child.id();
    thread::sleep(Duration::from_millis(500));
    let idle_rss_kb = status_kb(pid, "VmRSS:");
    let ctx = Ctx {
        pid,
        cpu_of: a.cpu_of.clone(),
        port: a.port,
        qos: if a.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        tck: clk_tck(),
        grace: a.grace,
        slo: a.slo_p99_ms,
    };
    let mut results = Vec::new();
    let mut failure = None;
    for w in selected {
        match run_workload(&ctx, w, a) {
            Ok(v) => results.push(v),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let peak_rss_kb = status_kb(pid, "VmHWM:");
    let exit = stop(&mut target.child);
    if let Some(e) = failure {
        return Err(e);
    }
    let mut sorted = cold.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied();
    let doc = json!({
        "target": name,
        "command": a.command,
        "cold_start_ms": cold,
        "cold_start_median_ms": median,
        "idle_rss_kb": idle_rss_kb,
        "peak_rss_kb": peak_rss_kb,
        "exit_status": exit,
        "slo_p99_ms": ctx.slo,
        "workloads": results,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&a.out, text).map_err(|e| format!("cannot write {out}: {e}"))?;
    eprintln!("== {name}: cold start median {median:?} ms, peak RSS {peak_rss_kb:?} kB -> {out}");
    Ok(())
}

/// `coldstart`: only cold start and idle RSS of a command (e.g. the daemon
/// with every shipped model), repeated.
pub fn coldstart(a: &ColdstartArgs) -> Result<(), String> {
    let n = a.repeat;
    let mut cold = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..n.max(1) {
        let mut t = start(&a.command, &a.ready, &a.log, &std::env::temp_dir())?;
        cold.push(t.cold_start_ms);
        thread::sleep(Duration::from_millis(300));
        rss.push(status_kb(t.child.id(), "VmHWM:").unwrap_or(0));
        stop(&mut t.child);
    }
    let mut sorted = cold.clone();
    sorted.sort_by(f64::total_cmp);
    let doc = json!({
        "command": a.command,
        "cold_start_ms": cold,
        "cold_start_median_ms": sorted[sorted.len() / 2],
        "peak_rss_kb": rss.iter().max(),
    });
    let out = &a.out;
    std::fs::write(out, doc.to_string())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!(
        "coldstart: median {} ms, peak RSS {:?} kB",
        sorted[sorted.len() / 2],
        rss.iter().max()
    );
    Ok(())
}
