//! Overload with default settings: for 30 s, three times the rate the
//! daemon sustains (measured first, with a model whose invoke takes a set
//! time) with QoS 0 inputs and again with QoS 1 inputs, and as fast as a
//! client can publish cheap messages (the flood's replies then load the
//! broker and the publisher), while a second model gets a steady trickle
//! on another topic; then a normal rate. The daemon must
//! keep its broker connection, answer every input it received (a result
//! or `overloaded`, checked against its own counters and against what a
//! subscriber sees), serve the second model throughout, answer at once
//! again when the flood stops, and keep its log to a few lines a second.
//!
//! The flood's answers are counted by topic and code; the first thousand
//! of them, and every other message, are validated against `schemas/`
//! (validating a million would take longer than the flood).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::{json, Value};

/// One flood at a time: each saturates both cores.
static SERIAL: Mutex<()> = Mutex::new(());

const FLOOD: Duration = Duration::from_secs(30);

/// The flooded model: the accelerometer model (answering is cheap, so the
/// flood's replies load the broker and the publisher), or a model whose
/// invoke costs a set time (the daemon's own rate is then what limits it,
/// and the flood can be offered at exactly three times that).
#[derive(Debug, Clone, Copy)]
enum Main {
    Har,
    /// `spin_int32` with this many loop iterations per message.
    Spin(u32),
}

impl Main {
    fn file(self) -> &'static str {
        match self {
            Main::Har => "har_accel_int8.tflite",
            Main::Spin(_) => "spin_int32.tflite",
        }
    }

    /// How many of the calibration burst may be unanswered at once: all of
    /// the spinning model's (30 bytes each, its default budget holds them,
    /// and its calibrated rate must not be cut by the test's round trips:
    /// its flood must be half as much again as what it sustains); for HAR,
    /// a third of the 300 or so of its 5 KB messages its default budget
    /// holds, so none of the burst is refused.
    fn calibration_ahead(self) -> usize {
        match self {
            Main::Har => 100,
            Main::Spin(_) => usize::MAX,
        }
    }

    /// The id first, as senders of large messages should put it: refusals
    /// find it in the first 4 KiB (`json!` would sort it after "data").
    fn payload(self, id: &str, k: usize) -> String {
        let data = match self {
            Main::Har => json!(window(k)),
            Main::Spin(n) => json!([n]),
        };
        format!("{{\"id\": {}, \"data\": {data}}}", json!(id))
    }
}

fn models(main: Main) -> String {
    format!("[[models]]\nname = \"main\"\npath = \"{{models}}/{}\"\ninput_topic = \"in/main/+\"\noutput_topic = \"out/{{model}}/{{1}}\"\n", main.file())
        + "\
     [[models]]\nname = \"side\"\npath = \"{models}/har_accel_f32.tflite\"\ninput_topic = \"in/side\"\noutput_topic = \"out/{model}\"\n"
}

fn window(i: usize) -> Vec<f64> {
    (0..384).map(|k| ((i + k) % 13) as f64 * 0.07).collect()
}

/// The most the flood offers: below the 49,000 msg/s at which the one
/// Mosquitto thread itself fell behind (see `overload`).
const FLOOD_CAP: f64 = 40_000.0;

/// A publisher of its own: `QoS` as given, from `rate` messages a second
/// (or as fast as the broker takes them: the client's request channel is
/// the only brake), until `stop`. While `refused()` stays 0 the rate rises
/// by a quarter each second, up to `FLOOD_CAP`: a calibration taken before
/// the flood can fall short of what the daemon serves during it (HAR's
/// waits on the test's own round trips, see `Main::calibration_ahead`),
/// and a flood the daemon keeps up with tests nothing.
fn flood(
    port: u16,
    qos: QoS,
    main: Main,
    rate: Option<f64>,
    refused: impl Fn() -> usize + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut opts = MqttOptions::new(format!("flood-{port}"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut conn) = Client::new(opts, 1024);
        std::thread::spawn(move || for _ in conn.iter() {});
        let payloads: Vec<String> = (0..64).map(|k| main.payload(&k.to_string(), k)).collect();
        let mut rate = rate.map(|r| r.min(FLOOD_CAP));
        let mut due = Instant::now();
        let mut next_step = due + Duration::from_secs(1);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            if let Some(r) = rate.as_mut() {
                // Paced in millisecond steps: sleep when ahead of schedule.
                let now = Instant::now();
                if due > now + Duration::from_millis(1) {
                    std::thread::sleep(due - now);
                }
                due += Duration::from_secs_f64(1.0 / *r);
                if now >= next_step {
                    next_step = now + Duration::from_secs(1);
                    if refused() == 0 {
                        *r = (*r * 1.25).min(FLOOD_CAP);
                    }
                }
            }
            if client
                .publish("in/main/flood", qos, false, payloads[sent % 64].clone())
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        let _ = client.disconnect();
        sent
    })
}

/// What one subscriber counted.
#[derive(Default)]
struct Tally {
    har_results: usize,
    har_overloaded: usize,
    other_errors: Vec<Value>,
    /// (id, send time) -> answer, for the side model and the after phase.
    side: Vec<Value>,
    after: Vec<Value>,
    /// Answers to the calibration burst.
    calib: Vec<Value>,
    /// After-flood messages refused while the queue was still full.
    after_overloaded: Vec<Value>,
    validated: usize,
    /// The subscriber's connection errors: after one it reconnects with a
    /// clean session, and no longer subscribed.
    link_errors: Vec<String>,
}

/// Counts every answer on `filters`, on a client of its own that only
/// reads. The broker's per-client limits apply to it too: a subscriber of
/// the flood's answers misses some when it falls behind, so the exact
/// accounting is the daemon's, and the side model and the after-flood
/// messages have a subscriber that sees nothing else.
fn subscriber(port: u16, name: &str, filters: &[&str]) -> (Arc<Mutex<Tally>>, Client) {
    let mut opts = MqttOptions::new(format!("{name}-{port}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(opts, 64);
    without_nagle(&mut conn.eventloop);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    let sink = Arc::clone(&tally);
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let mut t = sink.lock().unwrap();
                    let v: Value = serde_json::from_slice(&p.payload).expect("JSON answer");
                    if t.validated < 1000 || p.topic != "out/main/flood" {
                        validate(schema_kind(&p.topic), &v).unwrap_or_else(|e| panic!("{e}: {v}"));
                        t.validated += 1;
                    }
                    match (p.topic.as_str(), v["code"].as_str()) {
                        ("out/side", _) => t.side.push(v),
                        ("out/main/after", _) => t.after.push(v),
                        ("out/main/calib", _) => t.calib.push(v),
                        ("out/main/flood", _) => t.har_results += 1,
                        (_, Some("overloaded")) if v["source_topic"] == "in/main/flood" => {
                            t.har_overloaded += 1
                        }
                        (_, Some("overloaded")) if v["source_topic"] == "in/main/after" => {
                            t.after_overloaded.push(v)
                        }
                        _ => t.other_errors.push(v),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    sink.lock().unwrap().link_errors.push(e.to_string());
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    });
    for filter in filters {
        client.subscribe(*filter, QoS::AtLeastOnce).unwrap();
        subscribed.recv_timeout(WAIT).expect("SUBACK");
    }
    (tally, client)
}

/// The daemon's own count for `model` from its shutdown summary line
/// (`model har: received=N ok=M overloaded=K`).
fn summary(log: &str, model: &str) -> (usize, usize, usize) {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("model {model}: received=")))
        .unwrap_or_else(|| panic!("no summary for {model}:\n{log}"));
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map_or(0, |v| v.parse().unwrap())
    };
    (field("received"), field("ok"), field("overloaded"))
}

/// The daemon as users run it: the release build that `scripts/test.sh`
/// makes (a debug build under a flood measures the debug build).
fn start_release(config_text: &str) -> Daemon {
    let binary = repo().join("target/release/edge-infer");
    assert!(
        binary.exists(),
        "{} is missing: run scripts/test.sh (or cargo build --release) first",
        binary.display()
    );
    // cargo test rebuilds only the debug binary: a release build older
    // than the sources would test old code and pass.
    let built = modified(&binary);
    let newer: Vec<PathBuf> = ["src", "crates/model-runtime/src"]
        .iter()
        .flat_map(|dir| files_under(&repo().join(dir)))
        .filter(|f| modified(f) > built)
        .collect();
    assert!(
        newer.is_empty(),
        "{} is older than {} source file(s) (e.g. {}): run cargo build --release",
        binary.display(),
        newer.len(),
        newer[0].display()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut cmd = std::process::Command::new(binary);
    cmd.arg("run").arg("--config").arg(&path);
    let d = Daemon::spawn_command(dir, cmd);
    d.wait_for_log("ready:");
    d
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn overload(qos: QoS, main: Main) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Mosquitto's own per-client limits, as most installs run it; for QoS
    // 1 with `max_inflight_messages 0`, as docs/operators.md advises for
    // the daemon's broker. A QoS 1 input is acknowledged only once
    // answered, so a broker that kept 20 in flight would take the flood,
    // not the daemon: it would queue 1,000 and drop the rest (other
    // topics' messages for the daemon included), and the daemon would
    // never see an overload to answer. (Mosquitto 2.0.11 keeps no such
    // window with acknowledgements in order: see the calibration below.)
    let broker = match qos {
        QoS::AtMostOnce => Broker::start_with(""),
        _ => Broker::start_with("max_inflight_messages 0\n"),
    };
    let d = start_release(&config(broker.port, "dev1", "", &models(main)));
    let (flood_tally, _flood_sub) = subscriber(
        broker.port,
        "flood-tally",
        &["out/main/flood", "edge-infer/dev1/errors"],
    );
    let (tally, _sub) = subscriber(
        broker.port,
        "tally",
        &["out/main/after", "out/main/calib", "out/side"],
    );

    // What the daemon sustains: a burst answered back to back; the rate is
    // read from the daemon's own publish times. At most what the broker
    // holds for one client (1,000 queued). No in-flight window paces it:
    // the QoS 1 runs' broker has none (`max_inflight_messages 0`), and the
    // QoS 0 run's default of 20 is not kept by Mosquitto before 2.0.13
    // (Debian 12's 2.0.11), which lets up to 20 more out on each
    // acknowledgement of the oldest message, and the daemon acknowledges
    // in order (275 of such a burst unacknowledged at once in the broker's
    // log). So at most `Main::calibration_ahead` of it are unanswered at a
    // time.
    let sustained = {
        const BURST: usize = 1000;
        let ahead = main.calibration_ahead();
        let answered = || tally.lock().unwrap().calib.len();
        // The report is worded with the tallies' locks released: a panic
        // holding them would poison them for the subscriber threads.
        let report = || {
            let seen = {
                let t = tally.lock().unwrap();
                let f = flood_tally.lock().unwrap();
                let answered: std::collections::HashSet<&str> =
                    t.calib.iter().filter_map(|v| v["id"].as_str()).collect();
                let missing: Vec<usize> = (0..BURST)
                    .filter(|k| !answered.contains(format!("calib-{k}").as_str()))
                    .collect();
                format!(
                    ": {} of {BURST} answered; unanswered: {:?}; errors: {:?} {:?}; \
                     the subscribers' connection errors: {:?} {:?}",
                    t.calib.len(),
                    &missing[..missing.len().min(20)],
                    &t.other_errors[..t.other_errors.len().min(5)],
                    &f.other_errors[..f.other_errors.len().min(5)],
                    t.link_errors,
                    f.link_errors,
                )
            };
            format!(
                "{seen}; the broker's log:\n{}\nthe daemon's log:\n{}",
                broker.log(),
                d.log_text()
            )
        };
        let c = TestClient::connect(broker.port);
        let start = Instant::now();
        for k in 0..BURST {
            // Polled every millisecond, not every 20 as `wait_until`: the
            // daemon answers 100 HAR messages in about 5 ms.
            while k >= answered().saturating_add(ahead) {
                if start.elapsed() >= WAIT {
                    panic!(
                        "timed out after {WAIT:?} sending the calibration burst, {k} sent{}",
                        report()
                    );
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            c.publish("in/main/calib", main.payload(&format!("calib-{k}"), k));
        }
        wait_until_else(
            "the calibration burst to be answered",
            WAIT,
            || tally.lock().unwrap().calib.len() == BURST,
            report,
        );
        let t = tally.lock().unwrap();
        let times: Vec<f64> = t
            .calib
            .iter()
            .map(|v| v["published_at"].as_f64().unwrap())
            .collect();
        let span = times.iter().cloned().fold(f64::MIN, f64::max)
            - times.iter().cloned().fold(f64::MAX, f64::min);
        (BURST - 1) as f64 / span.max(1e-3)
    };
    // The spinning model is offered three times what it sustains; the
    // accelerometer model one and a half times (a third refused), and more
    // each second the daemon still refuses nothing (a calibration once read
    // 15,700 msg/s where the daemon then served 23,600 during the flood with
    // none refused). Never as much as one client can publish (`FLOOD_CAP`):
    // on an Intel Xeon VM that was 49,000 to 52,000 msg/s, about 2.5 times
    // the daemon then, and there the one Mosquitto thread fell behind too.
    // The daemon's QoS 1 acknowledgements (sent once each answer is
    // confirmed) then lagged, the broker's in-flight window for it stayed
    // full, its queue filled with the QoS 0 flood, and the broker dropped the
    // side model's and the after-flood messages (side 340 to 615 of 661
    // received, 0 to 288 of 300 after the flood, in 5 of 19 runs, with and
    // without the change of 9bc5aa2; the failures measured were at 49,000
    // msg/s or more, every pass at 48,800 or less). That measures the broker.
    let offered = match main {
        Main::Spin(_) => Some(3.0 * sustained),
        Main::Har => Some(1.5 * sustained),
    };
    let side = TestClient::connect(broker.port);

    // The side model's trickle: 20 msg/s, QoS 1, through the flood and
    // after it.
    let side_stop = Arc::new(AtomicBool::new(false));
    let side_sent = Arc::new(AtomicUsize::new(0));
    let side_thread = {
        let (stop, sent) = (Arc::clone(&side_stop), Arc::clone(&side_sent));
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                side.publish("in/side", json!({"id": i, "data": window(i)}).to_string());
                i += 1;
                sent.store(i, Ordering::Relaxed);
                let next = start + Duration::from_millis(50) * i as u32;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            side
        })
    };

    let log_lines_before = d.log.lock().unwrap().len();
    let stop = Arc::new(AtomicBool::new(false));
    let refused = {
        let tally = Arc::clone(&flood_tally);
        move || tally.lock().unwrap().har_overloaded
    };
    let flooder = flood(broker.port, qos, main, offered, refused, Arc::clone(&stop));
    let flood_start = Instant::now();
    while flood_start.elapsed() < FLOOD {
        assert!(!d.has_exited(), "the daemon exited:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = flooder.join().unwrap();
    let flood_secs = flood_start.elapsed().as_secs_f64();
    let log_lines = d.log.lock().unwrap().len() - log_lines_before;
    let flood_end = unix_now();

    // A normal rate after the flood: 100 msg/s for 5 s, each stamped with
    // its send time.
    let after = TestClient::connect(broker.port);
    let mut sent_at = Vec::new();
    let start = Instant::now();
    for i in 0..AFTER as u32 {
        sent_at.push(unix_now());
        after.publish(
            "in/main/after",
            main.payload(&format!("after-{i}"), i as usize),
        );
        let next = start + Duration::from_millis(10) * (i + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    side_stop.store(true, Ordering::Relaxed);
    let _side = side_thread.join().unwrap();
    let side_sent = side_sent.load(Ordering::Relaxed);
    // Everything the quiet subscriber can expect, or a generous deadline
    // (the broker may have dropped some: checked against the daemon below).
    let waiting = Instant::now();
    while waiting.elapsed() < WAIT {
        let t = tally.lock().unwrap();
        let refused = flood_tally.lock().unwrap().after_overloaded.len();
        if t.after.len() + refused == AFTER && t.side.len() == side_sent {
            break;
        }
        drop(t);
        std::thread::sleep(Duration::from_millis(50));
    }

    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    let (received, ok, overloaded) = summary(&log, "main");
    let (side_received, side_ok, _) = summary(&log, "side");
    let t = tally.lock().unwrap();
    let f = flood_tally.lock().unwrap();
    let offered_rate = sent as f64 / flood_secs;
    eprintln!(
        "{main:?} {qos:?} flood: calibrated at {sustained:.0} msg/s; offered {:.1}x that",
        offered_rate / sustained
    );
    eprintln!(
        "{qos:?} flood: sent {sent} in {flood_secs:.1} s ({:.0} msg/s); the daemon received {received} \
         ({ok} results, {overloaded} overloaded, {:.0} results/s), the flood's subscriber saw {} results and {} overloaded; \
         side model: {side_received} of {side_sent} received, {} answered; after the flood: {} of {AFTER} answered; \
         {log_lines} log lines during the flood",
        sent as f64 / flood_secs,
        ok as f64 / flood_secs,
        f.har_results,
        f.har_overloaded,
        t.side.len(),
        t.after.len(),
    );
    // Whom the broker dropped messages for, and who lost a connection.
    for line in broker.log().lines() {
        if line.contains("dropped") || line.contains("disconnect") || line.contains("closed") {
            eprintln!("the broker: {line}");
        }
    }

    // The premise: a flood the daemon cannot keep up with. Aimed at three
    // times the calibrated rate, but at QoS 1 on 2 busy cores the flooding
    // client falls short of that (1.7x to 2.45x in runs here and in CI),
    // and the calibration itself, a burst taken before the flood, varied
    // from 2,100 to 3,400 msg/s between runs of the same binary. What the
    // daemon refused says it directly: at k times what it serves during
    // the flood, 1 - 1/k of the flood is refused; a third is k = 1.5.
    if let Main::Spin(_) = main {
        assert!(
            overloaded * 3 >= received,
            "not a flood the daemon could not keep up with: {overloaded} of {received} refused \
             (offered {offered_rate:.0} msg/s against {sustained:.0} calibrated)"
        );
    }
    // Overloaded for real, and every message taken was answered, once: the
    // daemon's own counts, every reply handed over and confirmed by the
    // broker, and no subscriber sees more than that.
    assert!(
        overloaded > 0 || log.contains("stopped reading for"),
        "the flood did not overload the daemon at {offered_rate:.0} msg/s \
         (at most {FLOOD_CAP} offered):\n{log}"
    );
    assert_eq!(received, ok + overloaded, "{log}");
    assert!(!log.contains("could not be published"), "{log}");
    assert!(!log.contains("not confirmed by the broker"), "{log}");
    assert!(f.har_results + t.after.len() <= ok && f.har_overloaded <= overloaded);
    assert!(
        f.other_errors.is_empty() && t.other_errors.is_empty(),
        "{:?}",
        &f.other_errors[..f.other_errors.len().min(3)]
    );
    // The connection held.
    assert!(!log.contains("lost the MQTT broker connection"), "{log}");
    // A readable log: a few lines a second at most.
    assert!(
        (log_lines as f64) < 3.0 * flood_secs,
        "{log_lines} log lines in {flood_secs:.0} s of overload"
    );
    // The second model was served throughout: every message of it the
    // daemon received has its result (none refused), and the broker's
    // per-client limit, which the flood fills, cost it only a few.
    let mut side_ids: Vec<u64> = t.side.iter().map(|v| v["id"].as_u64().unwrap()).collect();
    side_ids.sort_unstable();
    side_ids.dedup();
    assert_eq!(side_received, side_ok, "{log}");
    assert_eq!(
        side_ids.len(),
        side_received,
        "side answers seen vs the daemon's count"
    );
    assert!(
        side_received * 10 >= side_sent * 9,
        "the side model got {side_received} of {side_sent} messages"
    );
    // After the flood: answers at once again. A message sent in the first
    // two seconds may still find the queue full (`overloaded`: a full queue
    // drains in about 0.6 s here, more on a loaded machine); every one sent
    // later gets its result.
    let answered = t.after.len() + f.after_overloaded.len();
    assert!(
        answered + 10 >= AFTER,
        "{answered} of {AFTER} after-flood messages answered (the subscribers' connection errors: {:?} {:?})",
        t.link_errors,
        f.link_errors
    );
    let id = |v: &Value| -> usize { v["id"].as_str().unwrap()[6..].parse().unwrap() };
    for v in &f.after_overloaded {
        assert!(
            sent_at[id(v)] <= flood_end + AFTER_DRAIN,
            "refused {:.2} s after the flood: {v}",
            sent_at[id(v)] - flood_end
        );
    }
    let mut checked = 0;
    for v in &t.after {
        let i = id(v);
        let waited = v["published_at"].as_f64().unwrap() - sent_at[i];
        if sent_at[i] > flood_end + AFTER_DRAIN {
            checked += 1;
            // Generous: on 2 cores shared with the test's own build and
            // client, a scheduling stall once took 1.03 s, and 3.65 s with
            // the machine four times oversubscribed; a daemon still working
            // off the flood would take tens of seconds.
            assert!(
                waited < 8.0,
                "after-flood message {i} answered after {waited:.2} s"
            );
        }
    }
    // Sent after the window: about 300 of the 500.
    assert!(
        checked >= 200,
        "only {checked} after-flood results sent {AFTER_DRAIN} s or more after the flood"
    );
}

/// Messages at 100 msg/s after the flood.
const AFTER: usize = 500;

/// Seconds after the flood by which the daemon has worked off its queue:
/// generous, since what it checks is that the daemon recovers, not how
/// fast (a daemon still working off the flood would take tens of seconds).
const AFTER_DRAIN: f64 = 2.0;

/// About 0.15 ms of invoke per message (0.27 µs per iteration, see
/// tests/fixtures/spin_int32.json): a few thousand messages a second, and a
/// full default queue (4,096) drains in under a second.
const SPIN: Main = Main::Spin(550);

#[test]
fn three_times_the_sustained_rate_at_qos0_is_answered_in_full() {
    overload(QoS::AtMostOnce, SPIN);
}

#[test]
fn three_times_the_sustained_rate_at_qos1_is_answered_in_full() {
    overload(QoS::AtLeastOnce, SPIN);
}

#[test]
fn a_flood_of_cheap_messages_at_one_and_a_half_times_the_sustained_rate_is_answered_in_full() {
    overload(QoS::AtMostOnce, Main::Har);
}
