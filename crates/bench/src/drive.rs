//! The driver: starts a target process (edge-infer, the Python baseline or
//! the echo floor), measures its cold start to readiness, then for each
//! workload the latency at fixed offered rates, the highest sustained rate
//! (zero lost, zero errors, p99 within the SLO), CPU seconds per 1,000
//! messages from /proc/<pid>/stat, and its peak RSS (VmHWM) per phase.
//! Then, with `--mixed`, several workloads at once on the same target (the
//! mixed phase). Writes one JSON document.
//!
//! Phases: each fixed rate, the search's trials together, the
//! confirmation runs together, the mixed phase. Before each the target's
//! VmHWM is reset to its current RSS (`echo 5 > /proc/PID/clear_refs`) and
//! read at its end, so every phase has its own peak; the whole run's peak
//! is the highest of them and of the start-up.

use std::collections::{BTreeMap, HashMap};
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

/// One workload of the mixed phase: `--mixed WORKLOAD@RATE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixed {
    pub workload: String,
    pub rate: MixedRate,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MixedRate {
    /// Messages per second.
    PerSecond(f64),
    /// Percent of the rate this drive sustained for the workload.
    Percent(f64),
}

/// `--mixed WORKLOAD@RATE` or `WORKLOAD@P%`.
fn parse_mixed(s: &str) -> Result<Mixed, String> {
    let expected =
        "expected WORKLOAD@RATE (msg/s) or WORKLOAD@P% (of its sustained rate), more than 0";
    let (workload, rate) = s.rsplit_once('@').ok_or(expected)?;
    let positive = |v: &str| v.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0);
    let rate = match rate.strip_suffix('%') {
        Some(p) => MixedRate::Percent(positive(p).ok_or(expected)?),
        None => MixedRate::PerSecond(positive(rate).ok_or(expected)?),
    };
    if workload.is_empty() {
        return Err(expected.into());
    }
    Ok(Mixed {
        workload: workload.to_string(),
        rate,
    })
}

/// `--mixed-fallback WORKLOAD=RATE`.
fn parse_fallback(s: &str) -> Result<(String, f64), String> {
    let expected = "expected WORKLOAD=RATE with RATE more than 0";
    let (name, rate) = s.split_once('=').ok_or(expected)?;
    let rate = rate
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or(expected)?;
    if name.is_empty() {
        return Err(expected.into());
    }
    Ok((name.to_string(), rate))
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
    /// Fixed rates: only each workload's `"lean_rates"` (its `"rates"`
    /// when it has none), for a shorter comparison run
    #[arg(long)]
    pub lean: bool,
    /// The results (--out) of an earlier drive: each workload's search
    /// starts at the rate that run sustained and moves in steps of 25%
    /// instead of doubling from the fixed rates (fewer trials, same
    /// bisection)
    #[arg(long, value_name = "FILE")]
    pub hints: Option<PathBuf>,
    /// After the workloads, run these (at least two) at once on the same
    /// target for --fixed-seconds: at RATE msg/s, or at P% of the rate
    /// this drive sustained for the workload (repeatable; the workloads
    /// need not be among --only, the target must serve them)
    #[arg(long = "mixed", value_name = "WORKLOAD@RATE|WORKLOAD@P%", value_parser = parse_mixed)]
    pub mixed: Vec<Mixed>,
    /// The rate of a `--mixed WORKLOAD@P%` when this drive has no
    /// sustained rate for WORKLOAD (not run, or never sustained)
    /// (repeatable)
    #[arg(long = "mixed-fallback", value_name = "WORKLOAD=RATE", value_parser = parse_fallback)]
    pub mixed_fallback: Vec<(String, f64)>,
    /// Run no workload, only the mixed phase (each --mixed at RATE msg/s;
    /// each workload's figure alone at that rate is measured first): the
    /// same mixed phase on a target started with other settings
    #[arg(long, requires = "mixed")]
    pub mixed_only: bool,
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
    _notify: Option<NotifySocket>,
    cold_start_ms: f64,
}

/// The NOTIFY_SOCKET given to a target, removed from the temp dir when done.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
            notify = Some(NotifySocket { sock, path });
        }
        Ready::Line(_) => {
            c.env_remove("NOTIFY_SOCKET").stdout(Stdio::piped());
        }
    }
    let t0 = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("cannot start {prog}: {e}"))?;
    let deadline = t0 + READY_TIMEOUT;
    match (ready, &notify) {
        (Ready::Notify, Some(NotifySocket { sock, .. })) => {
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
    rss: Rss,
}

/// The target's peak RSS per phase (see the module doc).
struct Rss {
    pid: u32,
    /// Whether `clear_refs` takes the reset (Linux 4.0 and later, a
    /// process of ours); without it every phase reads the peak since start.
    resets: bool,
}

impl Rss {
    /// Sets VmHWM back to the current RSS: a phase starts here.
    fn reset(&self) {
        if self.resets {
            let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
        }
    }

    /// VmHWM: the peak since the last reset.
    fn peak_kb(&self) -> Option<u64> {
        status_kb(self.pid, "VmHWM:")
    }
}

/// What a run is part of: it decides whether a phase starts with it (the
/// peak RSS is reset) and whether it may stop at its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// A fixed rate: a phase of its own.
    Fixed,
    /// A trial of the search; `first` starts the search's phase.
    Trial { first: bool },
    /// A confirmation run; `first` starts the confirmation's phase.
    Confirm { first: bool },
}

fn measured(
    ctx: &Ctx,
    w: &Workload,
    rate: f64,
    seconds: f64,
    part: Part,
) -> Result<Report, String> {
    let t0 = Instant::now();
    // Long enough that every stream of a readings workload completes
    // windows (a slow rate and a short trial might complete none).
    let seconds = seconds.max(w.min_seconds(rate));
    wait_idle(ctx.pid)?;
    if matches!(
        part,
        Part::Fixed | Part::Trial { first: true } | Part::Confirm { first: true }
    ) {
        ctx.rss.reset();
    }
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
        give_up_p99_ms: matches!(part, Part::Trial { .. }).then_some(ctx.slo),
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
    let peak = ctx.rss.peak_kb();
    if let Some(o) = r.json.as_object_mut() {
        o.insert("cpu_s".into(), json!(cpu_s));
        o.insert("cpu_s_per_1000".into(), per_1000);
        o.insert("sustained".into(), json!(ok));
        // The peak of the phase so far (since the reset that started it).
        o.insert("peak_rss_kb".into(), json!(peak));
        // What it cost in all (waiting for idle, connecting, the answers
        // after the last send): bench/estimate.py replays runs with it.
        o.insert(
            "wall_s".into(),
            json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        );
        let kind = match part {
            Part::Fixed => "fixed",
            Part::Trial { .. } => "trial",
            Part::Confirm { .. } => "confirm",
        };
        o.insert("part".into(), json!(kind));
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
        "  rate {rate:>8} x {seconds}s: sent {} expected {} recv {} err {} {} p50 {} p99 {} max {} cpu/1000 {}{acks}",
        r.sent,
        r.expected,
        r.received,
        r.errors,
        r.lost_label(),
        r.json["p50_ms"],
        r.json["p99_ms"],
        r.json["max_ms"],
        r.json["cpu_s_per_1000"]
    );
    Ok(r)
}

/// Rates of a workload as a workload file writes them (`"rates"`, ..).
fn rates_of(spec: &Value, key: &str) -> Option<Vec<f64>> {
    spec[key]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_f64).collect())
}

/// A workload of the workloads file, ready to send: its name and what it
/// sends where.
fn workload_of(spec: &Value, a: &DriveArgs) -> Result<(String, Workload), String> {
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
    Ok((name, w))
}

/// `1,000` for 1000.0: how the phases name a rate.
fn rate_text(rate: f64) -> String {
    let n = rate.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One phase's record for the run's list of peaks.
fn phase(name: &str, workload: &str, kind: &str, rate: Option<f64>, peak: Option<u64>) -> Value {
    json!({"phase": name, "workload": workload, "kind": kind, "rate": rate, "peak_rss_kb": peak})
}

/// The search's growth factor from a hint: 25% steps reach a rate twice
/// the hint in three trials, and leave a bracket that two bisections
/// narrow to the search's resolution (8%).
const HINT_STEP: f64 = 1.25;

fn run_workload(
    ctx: &Ctx,
    spec: &Value,
    a: &DriveArgs,
    hint: Option<f64>,
    phases: &mut Vec<Value>,
) -> Result<Value, String> {
    let t0 = Instant::now();
    let (name, w) = workload_of(spec, a)?;
    let rates = if a.lean {
        rates_of(spec, "lean_rates").or_else(|| rates_of(spec, "rates"))
    } else {
        rates_of(spec, "rates")
    }
    .unwrap_or_default();
    let search_max = spec["search_max"].as_f64().unwrap_or(200_000.0);
    let (fixed_s, trial_s, confirm_s) = (a.fixed_seconds, a.trial_seconds, a.seconds);
    eprintln!(
        "workload {name} ({} bytes {}){}",
        w.payload.len(),
        w.payload.kind(),
        hint.map(|h| format!(", search from {h} msg/s"))
            .unwrap_or_default()
    );

    let mut fixed = Vec::new();
    let mut lo: f64 = 0.0; // highest rate seen sustained
    let mut hi: f64 = f64::INFINITY; // lowest rate seen failing
    for &rate in &rates {
        let label = format!("{name} @{}/s", rate_text(rate));
        if rate >= hi * 1.5 {
            fixed.push(json!({"rate": rate, "skipped": format!("{hi} msg/s already overloaded")}));
            phases.push(phase(&label, &name, "fixed", Some(rate), None));
            continue;
        }
        let r = measured(ctx, &w, rate, fixed_s, Part::Fixed)?;
        if r.sustained(ctx.slo) {
            lo = lo.max(rate);
        } else {
            hi = hi.min(rate);
        }
        let peak = r.json["peak_rss_kb"].as_u64();
        phases.push(phase(&label, &name, "fixed", Some(rate), peak));
        fixed.push(r.json);
    }
    // Search: grow until failure, then bisect, with short trials. A trial
    // that missed only its tail is run once more before its rate counts as
    // too high: one stall of the shared machine in a 2 s trial otherwise
    // set the limit of the whole search, and the runs of one target
    // disagreed by up to 2x. The same for every target; the confirmation
    // at full length still has to pass.
    let mut trials: Vec<Value> = Vec::new();
    let trial = |rate: f64, trials: &mut Vec<Value>| -> Result<bool, String> {
        let first = trials.is_empty();
        let mut r = measured(ctx, &w, rate, trial_s, Part::Trial { first })?;
        if r.missed_only_the_tail(ctx.slo) {
            let mut missed = std::mem::take(&mut r.json);
            missed["retried"] = json!(true);
            trials.push(missed);
            r = measured(ctx, &w, rate, trial_s, Part::Trial { first: false })?;
        }
        let ok = r.sustained(ctx.slo);
        trials.push(r.json);
        Ok(ok)
    };
    if !a.no_search {
        let step = if hint.is_some() { HINT_STEP } else { 2.0 };
        match hint.map(|h| h.min(search_max).round().max(1.0)) {
            Some(h) if h > lo && h < hi => {
                if trial(h, &mut trials)? {
                    lo = h;
                } else {
                    hi = h;
                }
            }
            Some(_) => {}
            None if lo == 0.0 && hi.is_infinite() => hi = 100.0,
            None => {}
        }
        while hi.is_infinite() && lo > 0.0 {
            let rate = (lo * step).min(search_max).round();
            if trial(rate, &mut trials)? {
                lo = rate;
                if rate >= search_max {
                    break;
                }
            } else {
                hi = rate;
            }
        }
        while lo == 0.0 && hi > 1.0 {
            let rate = (hi / step).floor().max(1.0);
            if trial(rate, &mut trials)? {
                lo = rate;
            } else {
                hi = rate;
            }
        }
        let mut steps = 0;
        while hi.is_finite() && lo > 0.0 && hi / lo > 1.08 && steps < 7 {
            let rate = ((lo * hi).sqrt()).round();
            if rate <= lo || rate >= hi {
                // Whole messages per second: no rate left between them
                // (e.g. 6 and 7 msg/s).
                break;
            }
            if trial(rate, &mut trials)? {
                lo = rate;
            } else {
                hi = rate;
            }
            steps += 1;
        }
        // The highest reading of any trial, not the last one's: readings
        // of VmHWM are not monotonic even without a reset (the kernel's
        // RSS counters are per CPU and read approximately, its high-water
        // mark updated lazily; seen: 32,852 kB, then 32,812 kB).
        let peak = trials
            .iter()
            .filter_map(|t| t["peak_rss_kb"].as_u64())
            .max();
        let mut p = phase(&format!("{name} search"), &name, "search", None, peak);
        p["trials"] = json!(trials.len());
        phases.push(p);
    }
    // Confirm for the full duration, stepping down 10% on failure.
    let mut sustained = Value::Null;
    if !a.no_search {
        let mut peak = None;
        if lo > 0.0 {
            let mut rate = lo;
            for i in 0..CONFIRM_TRIES {
                let r = measured(ctx, &w, rate, confirm_s, Part::Confirm { first: i == 0 })?;
                peak = peak.max(r.json["peak_rss_kb"].as_u64());
                if r.sustained(ctx.slo) {
                    sustained = r.json;
                    break;
                }
                trials.push(r.json);
                rate = (rate * 0.9).floor().max(1.0);
            }
        }
        phases.push(phase(
            &format!("{name} confirmation"),
            &name,
            "confirm",
            None,
            peak,
        ));
    }
    Ok(json!({
        "name": name,
        "title": spec["title"],
        "note": spec["note"],
        "model": spec["model"],
        "payload_bytes": w.payload.len(),
        "payload_kind": w.payload.kind(),
        "search_hint": hint,
        "fixed": fixed,
        "search_trials": trials,
        "sustained": sustained,
        "wall_s": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    }))
}

/// Confirmation runs at most per workload, each 10% below the last: down
/// to 0.53 times the search's rate. With four (down to 0.73), MobileNetV2
/// JSON at the defaults on a 2-vCPU AMD EPYC host confirmed no rate in one
/// of two runs: 30 s at 260, 234, 210 and 189 msg/s each had a few stalls
/// of the shared machine longer than its queue holds (81 to 513 refusals),
/// while the search's 5 s trials passed.
const CONFIRM_TRIES: usize = 7;

/// CPU ticks of each of the target's threads, summed by thread name
/// (`/proc/PID/task/*/stat`): how the mixed phase's CPU is shared.
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the name may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        *by_name.entry(comm).or_insert(0) += num(11) + num(12);
    }
    by_name
}

/// The mixed phase: the `--mixed` workloads at once on the same target,
/// each at its rate for --fixed-seconds. Each also gets its figure alone
/// at the same rate: the fixed-rate run of this drive, or a run made now.
fn run_mixed(
    ctx: &Ctx,
    all: &[Value],
    done: &[Value],
    a: &DriveArgs,
    phases: &mut Vec<Value>,
) -> Result<Value, String> {
    let mut runs = Vec::new();
    for m in &a.mixed {
        let spec = all
            .iter()
            .find(|w| w["name"].as_str() == Some(m.workload.as_str()))
            .ok_or_else(|| format!("--mixed: no workload {} in the workloads file", m.workload))?;
        let (name, w) = workload_of(spec, a)?;
        let ran = done
            .iter()
            .find(|d| d["name"].as_str() == Some(name.as_str()));
        let (rate, source) = match m.rate {
            MixedRate::PerSecond(r) => (r, "fixed".to_string()),
            MixedRate::Percent(p) => {
                let sustained = ran.and_then(|d| d["sustained"]["rate"].as_f64());
                let fallback = a
                    .mixed_fallback
                    .iter()
                    .rev()
                    .find(|(n, _)| n == &name)
                    .map(|(_, r)| *r);
                match (sustained, fallback) {
                    (Some(s), _) => (
                        (s * p / 100.0).round().max(1.0),
                        format!("{p}% of the {s} msg/s this run sustained"),
                    ),
                    (None, Some(f)) => (
                        f,
                        format!("a fixed figure: this run has no sustained rate for {name}"),
                    ),
                    (None, None) => {
                        return Err(format!(
                            "--mixed {name}@{p}%: this run has no sustained rate for {name} and no --mixed-fallback {name}=RATE"
                        ))
                    }
                }
            }
        };
        let alone = match m.rate {
            MixedRate::PerSecond(r) => {
                let same = ran.and_then(|d| {
                    d["fixed"]
                        .as_array()?
                        .iter()
                        .find(|f| f["rate"].as_f64() == Some(r) && f.get("skipped").is_none())
                });
                match same {
                    Some(f) => Some(f.clone()),
                    None => {
                        eprintln!("mixed phase: {name} alone at {r} msg/s first");
                        let run = measured(ctx, &w, r, a.fixed_seconds, Part::Fixed)?;
                        phases.push(phase(
                            &format!("{name} @{}/s alone, for the mixed phase", rate_text(r)),
                            &name,
                            "fixed",
                            Some(r),
                            run.json["peak_rss_kb"].as_u64(),
                        ));
                        Some(run.json)
                    }
                }
            }
            MixedRate::Percent(_) => None,
        };
        runs.push((name, w, rate, source, alone));
    }
    eprintln!(
        "mixed phase: {} at once for {} s",
        runs.iter()
            .map(|(n, _, r, _, _)| format!("{n} at {r} msg/s"))
            .collect::<Vec<_>>()
            .join(" + "),
        a.fixed_seconds
    );
    wait_idle(ctx.pid)?;
    ctx.rss.reset();
    let before = cpu_ticks(ctx.pid)?;
    let threads_before = thread_ticks(ctx.pid);
    let t0 = Instant::now();
    let results: Vec<Result<load::Report, String>> = thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(_, w, rate, _, _)| {
                let spec = RunSpec {
                    port: ctx.port,
                    results_port: ctx.port,
                    qos: ctx.qos,
                    rate: *rate,
                    seconds: a.fixed_seconds.max(w.min_seconds(*rate)),
                    grace: ctx.grace,
                    trace: None,
                    give_up_p99_ms: None,
                };
                scope.spawn(move || load::run(w, &spec))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("load thread panicked".into()))
            })
            .collect()
    });
    let wall = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_ticks(ctx.pid)?.saturating_sub(before) as f64 / ctx.tck;
    let threads_after = thread_ticks(ctx.pid);
    let peak = ctx.rss.peak_kb();
    phases.push(phase("mixed phase", "mixed", "mixed", None, peak));
    let mut handled = 0;
    let mut parts = Vec::new();
    for ((name, _, rate, source, alone), r) in runs.into_iter().zip(results) {
        let r = r.map_err(|e| format!("mixed phase, {name}: {e}"))?;
        handled += r.handled;
        let ok = r.sustained(ctx.slo);
        eprintln!(
            "  {name} at {rate}: sent {} recv {} err {} {} p50 {} p99 {} max {}",
            r.sent,
            r.received,
            r.errors,
            r.lost_label(),
            r.json["p50_ms"],
            r.json["p99_ms"],
            r.json["max_ms"]
        );
        let mut run = r.json;
        if let Some(o) = run.as_object_mut() {
            o.insert("sustained".into(), json!(ok));
        }
        parts.push(json!({
            "name": name, "rate": rate, "rate_source": source, "alone": alone, "mixed": run,
        }));
    }
    let mut threads: Vec<(String, f64)> = threads_after
        .iter()
        .map(|(n, t)| {
            let used = t.saturating_sub(threads_before.get(n).copied().unwrap_or(0));
            (n.clone(), used as f64 / ctx.tck)
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    threads.sort_by(|x, y| y.1.total_cmp(&x.1));
    let per_1000 = if handled > 0 {
        json!((cpu_s / handled as f64 * 1000.0 * 10000.0).round() / 10000.0)
    } else {
        Value::Null
    };
    Ok(json!({
        "seconds": a.fixed_seconds,
        "workloads": parts,
        "cpu_s": cpu_s,
        "cpu_s_per_1000": per_1000,
        // CPU time over wall time: 1.0 is one core busy for the whole phase.
        "cpu_cores": (cpu_s / wall.max(1e-9) * 1000.0).round() / 1000.0,
        "threads": threads.iter().map(|(n, s)| json!({"name": n, "cpu_s": s})).collect::<Vec<_>>(),
        "peak_rss_kb": peak,
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
    let t_start = Instant::now();
    let name = &a.name;
    let wl_path = a.workloads.display();
    let wl_text = std::fs::read(&a.workloads).map_err(|e| format!("cannot read {wl_path}: {e}"))?;
    let workloads: Value =
        serde_json::from_slice(&wl_text).map_err(|e| format!("{wl_path} is not JSON: {e}"))?;
    let all = workloads
        .as_array()
        .ok_or_else(|| format!("{wl_path}: expected an array of workloads"))?;
    let only = &a.only;
    let selected: Vec<&Value> = all
        .iter()
        .filter(|_| !a.mixed_only)
        .filter(|w| only.is_empty() || only.iter().any(|o| Some(o.as_str()) == w["name"].as_str()))
        .collect();
    if a.mixed_only {
        if let Some(m) = a
            .mixed
            .iter()
            .find(|m| matches!(m.rate, MixedRate::Percent(_)))
        {
            return Err(format!(
                "--mixed-only runs no workload, so --mixed {}@P% has no sustained rate to take a share of: give a rate in msg/s",
                m.workload
            ));
        }
    }
    if a.mixed.len() == 1 {
        return Err("--mixed needs at least two workloads (one --mixed each)".into());
    }
    if let Some(m) = a.mixed.iter().find(|m| {
        !all.iter()
            .any(|w| w["name"].as_str() == Some(m.workload.as_str()))
    }) {
        return Err(format!("--mixed: no workload {} in {wl_path}", m.workload));
    }
    let hints = match &a.hints {
        Some(path) => read_hints(path),
        None => HashMap::new(),
    };
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
    // Start-up's own peak (loading and warming the models), before the
    // first phase resets it.
    let startup_peak_kb = status_kb(pid, "VmHWM:");
    let resets = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    if !resets {
        eprintln!("warning: cannot reset the peak RSS (/proc/{pid}/clear_refs); every phase reads the peak since start");
    }
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
        rss: Rss { pid, resets },
    };
    let mut phases = vec![phase(
        "start-up (cold start, models loaded and warmed)",
        "",
        "startup",
        None,
        startup_peak_kb,
    )];
    let mut results = Vec::new();
    let mut failure = None;
    for w in selected {
        let hint = w["name"].as_str().and_then(|n| hints.get(n)).copied();
        match run_workload(&ctx, w, a, hint, &mut phases) {
            Ok(v) => results.push(v),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut mixed = Value::Null;
    if failure.is_none() && !a.mixed.is_empty() {
        // A mixed phase that cannot run is reported, not fatal: the
        // workloads' figures stand on their own.
        mixed = run_mixed(&ctx, all, &results, a, &mut phases).unwrap_or_else(|e| {
            eprintln!("mixed phase failed: {e}");
            json!({"error": e})
        });
    }
    let peak_rss_kb = phases
        .iter()
        .filter_map(|p| p["peak_rss_kb"].as_u64())
        .max();
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
        "qos": a.qos,
        "cold_start_ms": cold,
        "cold_start_median_ms": median,
        "idle_rss_kb": idle_rss_kb,
        // The highest of the phases' peaks (the start-up's included).
        "peak_rss_kb": peak_rss_kb,
        "rss_reset": resets,
        "rss_phases": phases,
        "exit_status": exit,
        "slo_p99_ms": ctx.slo,
        "workloads": results,
        "mixed": mixed,
        "wall_s": (t_start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    std::fs::write(&a.out, text).map_err(|e| format!("cannot write {out}: {e}"))?;
    eprintln!("== {name}: cold start median {median:?} ms, peak RSS {peak_rss_kb:?} kB -> {out}");
    Ok(())
}

/// Each workload's sustained rate in an earlier drive's results; a file
/// that cannot be read gives no hints (the search then starts as usual).
fn read_hints(path: &Path) -> HashMap<String, f64> {
    let doc: Option<Value> = std::fs::read(path)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok());
    let Some(doc) = doc else {
        eprintln!(
            "warning: no hints from {} (unreadable); searching without",
            path.display()
        );
        return HashMap::new();
    };
    doc["workloads"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| {
                    let rate = w["sustained"]["rate"].as_f64().filter(|r| *r > 0.0)?;
                    Some((w["name"].as_str()?.to_string(), rate))
                })
                .collect()
        })
        .unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::{parse_fallback, parse_mixed, rate_text, Mixed, MixedRate};

    #[test]
    fn a_mixed_workload_runs_at_a_rate_or_a_share_of_its_sustained_rate() {
        assert_eq!(
            parse_mixed("har_json@1000"),
            Ok(Mixed {
                workload: "har_json".into(),
                rate: MixedRate::PerSecond(1000.0)
            })
        );
        assert_eq!(
            parse_mixed("mnv2_raw@50%"),
            Ok(Mixed {
                workload: "mnv2_raw".into(),
                rate: MixedRate::Percent(50.0)
            })
        );
        for bad in [
            "har_json", "@10", "a@", "a@0", "a@-5", "a@x%", "a@0%", "a@inf",
        ] {
            assert!(parse_mixed(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_fallback("mnv2_raw=150"),
            Ok(("mnv2_raw".into(), 150.0))
        );
        for bad in ["mnv2_raw", "=1", "a=0", "a=x"] {
            assert!(parse_fallback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phases_name_rates_with_thousands_separators() {
        assert_eq!(rate_text(5.0), "5");
        assert_eq!(rate_text(1000.0), "1,000");
        assert_eq!(rate_text(20000.0), "20,000");
        assert_eq!(rate_text(1234567.0), "1,234,567");
    }
}
