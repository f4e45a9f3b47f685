//! At-least-once, end to end: QoS 1 inputs at a steady rate, the daemon
//! killed with SIGKILL twice mid-run and restarted, and (with an uplink)
//! the broker that receives the results stopped for 30% of the run. At
//! the end every input has at least one result; duplicates are allowed
//! (and printed), loss is not.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// Inputs per run, and the steady rate they are sent at.
const N: usize = 10_000;
const RATE_PER_SEC: f64 = 1_000.0;

/// The cheapest model, answering on `out/{device_id}/dyn`.
fn config_text(input_port: u16, uplink_port: Option<u16>, state_dir: &std::path::Path) -> String {
    let uplink = uplink_port.map_or(String::new(), |p| {
        format!("[uplink]\nhost = \"127.0.0.1\"\nport = {p}\nreconnect_min_ms = 50\nreconnect_max_secs = 1\n\n")
    });
    let extra = format!("state_dir = \"{}\"\n", state_dir.display());
    // The [uplink] table must come after the top-level keys and [mqtt].
    config(input_port, "loss", &extra, &format!("{uplink}{DYN}"))
}

/// What happens at which fraction of the sending.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    KillDaemon,
    StopUplink,
    StartUplink,
}

/// Sends `N` inputs at `RATE_PER_SEC` to `input_port`, doing each step
/// when its share of the inputs has been sent; then waits until every
/// input id has a result in `results`. Returns the number of results per
/// input id.
fn run(
    input_port: u16,
    mut uplink: Option<&mut Broker>,
    text: &str,
    steps: &[(f64, Step)],
    results: &TestClient,
) -> Vec<u32> {
    let mut daemon = Daemon::start(text);
    let sender = TestClient::connect(input_port);
    let mut seen = vec![0u32; N];
    let drain = |seen: &mut Vec<u32>| {
        while let Some(m) = results.recv_within(Duration::ZERO) {
            let v = m.json();
            assert_eq!(m.topic, "out/loss/dyn", "{v}");
            let id = v["id"].as_u64().expect("id") as usize;
            seen[id] += 1;
        }
    };
    let start = Instant::now();
    let mut next_step = 0;
    for i in 0..N {
        while next_step < steps.len() && i as f64 >= steps[next_step].0 * N as f64 {
            match steps[next_step].1 {
                Step::KillDaemon => {
                    daemon.signal("KILL");
                    wait_until("the killed daemon to exit", WAIT, || daemon.has_exited());
                    daemon = Daemon::start(text);
                }
                Step::StopUplink => uplink.as_deref_mut().expect("uplink").stop_gracefully(),
                Step::StartUplink => uplink.as_deref_mut().expect("uplink").start_again(),
            }
            next_step += 1;
        }
        // Pacing the sender at a steady rate (not waiting on a condition).
        let due = start + Duration::from_secs_f64(i as f64 / RATE_PER_SEC);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sender.publish("in/dyn", features(i));
        if i % 500 == 0 {
            drain(&mut seen);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        drain(&mut seen);
        if seen.iter().all(|&n| n > 0) {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<usize> = (0..N).filter(|&i| seen[i] == 0).collect();
            panic!(
                "{} of {N} inputs have no result after 120 s (first: {:?}); daemon log:\n{}",
                missing.len(),
                &missing[..missing.len().min(20)],
                daemon.log_text()
            );
        }
        if let Some(m) = results.recv_within(Duration::from_millis(200)) {
            let id = m.json()["id"].as_u64().expect("id") as usize;
            seen[id] += 1;
        }
    }
    let (code, log) = daemon.terminate();
    assert_eq!(code, Some(0), "{log}");
    seen
}

fn report(what: &str, seen: &[u32]) {
    let duplicates: u32 = seen.iter().map(|&n| n.saturating_sub(1)).sum();
    let mut histogram: HashMap<u32, usize> = HashMap::new();
    for &n in seen {
        *histogram.entry(n).or_default() += 1;
    }
    println!(
        "{what}: {N} inputs, every one answered; {duplicates} duplicate result(s); results per input: {histogram:?}"
    );
}

#[test]
fn no_input_is_lost_across_two_sigkills_and_an_uplink_outage() {
    let inputs = Broker::start();
    let mut uplink = Broker::start_persistent();
    let state = tempfile::tempdir().expect("tempdir");
    let text = config_text(inputs.port, Some(uplink.port), state.path());
    // The collector's session (and what is queued for it) survives the
    // uplink's restart.
    let results = TestClient::connect_persistent(uplink.port, "loss-collector");
    results.subscribe("out/loss/dyn");
    let steps = [
        (0.2, Step::KillDaemon),
        (0.35, Step::StopUplink),
        // Killed while the uplink is down: answers are in the outbox.
        (0.5, Step::KillDaemon),
        (0.65, Step::StartUplink),
    ];
    let seen = run(inputs.port, Some(&mut uplink), &text, &steps, &results);
    report("uplink", &seen);
}

#[test]
fn no_input_is_lost_across_two_sigkills_with_one_broker() {
    let broker = Broker::start();
    let state = tempfile::tempdir().expect("tempdir");
    let text = config_text(broker.port, None, state.path());
    let results = TestClient::connect(broker.port);
    results.subscribe("out/loss/dyn");
    let steps = [(0.3, Step::KillDaemon), (0.7, Step::KillDaemon)];
    let seen = run(broker.port, None, &text, &steps, &results);
    report("one broker", &seen);
}
