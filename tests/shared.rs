//! Scale-out over the broker: three daemons in one shared-subscription
//! group (`$share/pool/...`, MQTT 3.1.1) split one stream of QoS 1
//! inputs. In a clean run every input is answered exactly once; with one
//! member killed by SIGKILL mid-run and started again (as systemd's
//! `Restart=` would), every input is answered at least once; with one
//! member stopped for good (SIGTERM), the other two answer everything, as
//! it leaves the group when it stops.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

const N: usize = 10_000;
const RATE_PER_SEC: f64 = 1_000.0;
const MEMBERS: [&str; 3] = ["pool-a", "pool-b", "pool-c"];

/// One member: the dyn model behind the shared subscription; `{1}` in the
/// output topic is the sensor level of the input topic (the filter part,
/// not the `$share/pool/` prefix).
fn member_config(port: u16, device_id: &str) -> String {
    member_config_over(port, device_id, "3.1.1")
}

/// The same over MQTT `protocol` ("3.1.1" or "5").
fn member_config_over(port: u16, device_id: &str, protocol: &str) -> String {
    let text = config(
        port,
        device_id,
        "",
        "[[models]]\nname = \"dyn\"\npath = \"{models}/dynamic_batch_f32.tflite\"\ninput_topic = \"$share/pool/in/+/dyn\"\noutput_topic = \"out/{device_id}/{model}/{1}\"\n",
    );
    text.replace("[mqtt]\n", &format!("[mqtt]\nprotocol = \"{protocol}\"\n"))
}

/// Answers per input id, and per member.
#[derive(Default)]
struct Tally {
    per_id: Vec<u32>,
    per_member: BTreeMap<String, usize>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            per_id: vec![0; N],
            per_member: BTreeMap::new(),
        }
    }

    fn take(&mut self, m: Received) {
        let v = m.json();
        validate("result", &v).unwrap_or_else(|e| panic!("{e}: {v}"));
        let id = v["id"].as_u64().expect("id") as usize;
        // out/{device_id}/dyn/{sensor}: the sensor is the one the input
        // was published on, and the member is one of the group.
        let levels: Vec<&str> = m.topic.split('/').collect();
        assert_eq!(levels.len(), 4, "{}", m.topic);
        assert!(MEMBERS.contains(&levels[1]), "{}", m.topic);
        assert_eq!(levels[3], sensor(id), "{}: {v}", m.topic);
        self.per_id[id] += 1;
        *self.per_member.entry(levels[1].to_string()).or_default() += 1;
    }

    fn drain(&mut self, results: &TestClient, wait: Duration) {
        if let Some(m) = results.recv_within(wait) {
            self.take(m);
            while let Some(m) = results.recv_within(Duration::ZERO) {
                self.take(m);
            }
        }
    }

    fn duplicates(&self) -> u32 {
        self.per_id.iter().map(|&n| n.saturating_sub(1)).sum()
    }

    fn missing(&self) -> Vec<usize> {
        (0..N).filter(|&i| self.per_id[i] == 0).collect()
    }
}

fn sensor(id: usize) -> &'static str {
    ["s1", "s2", "s3", "s4"][id % 4]
}

/// What happens to member 1 (pool-b) mid-run.
#[derive(Clone, Copy)]
enum Fate {
    Lives,
    /// SIGKILL when this share of the inputs is sent, started again at
    /// the second.
    Killed(f64, f64),
    /// SIGTERM when this share is sent; never comes back.
    Stopped(f64),
}

/// Sends `N` inputs at `RATE_PER_SEC`, doing to member 1 what `fate`
/// says; then waits until every input has an answer.
fn run(fate: Fate) -> Tally {
    run_over(fate, "3.1.1")
}

fn run_over(fate: Fate, protocol: &str) -> Tally {
    let broker = Broker::start();
    let results = TestClient::connect(broker.port);
    results.subscribe("out/+/dyn/+");
    let texts: Vec<String> = MEMBERS
        .iter()
        .map(|d| member_config_over(broker.port, d, protocol))
        .collect();
    let mut daemons: Vec<Option<Daemon>> = texts.iter().map(|t| Some(Daemon::start(t))).collect();
    if protocol == "5" {
        let log = daemons[0].as_ref().expect("member").log_text();
        assert!(log.contains(", MQTT 5"), "{log}");
    }
    let sender = TestClient::connect(broker.port);
    let mut tally = Tally::new();
    let start = Instant::now();
    for i in 0..N {
        let at = |share: f64| i == (share * N as f64) as usize;
        match fate {
            Fate::Lives => {}
            Fate::Killed(kill_at, restart_at) => {
                if at(kill_at) {
                    let d = daemons[1].as_ref().expect("member");
                    d.signal("KILL");
                    wait_until("the killed member to exit", WAIT, || d.has_exited());
                }
                if at(restart_at) {
                    daemons[1] = Some(Daemon::start(&texts[1]));
                }
            }
            Fate::Stopped(stop_at) => {
                if at(stop_at) {
                    let (code, log) = daemons[1].take().expect("member").terminate();
                    assert_eq!(code, Some(0), "{log}");
                    assert!(
                        log.contains("left shared subscription(s) $share/pool/in/+/dyn"),
                        "{log}"
                    );
                }
            }
        }
        // Pacing the sender at a steady rate (not waiting on a condition).
        let due = start + Duration::from_secs_f64(i as f64 / RATE_PER_SEC);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sender.publish(&format!("in/{}/dyn", sensor(i)), features(i));
        if i % 500 == 0 {
            tally.drain(&results, Duration::ZERO);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !tally.missing().is_empty() {
        if Instant::now() > deadline {
            let missing = tally.missing();
            let logs: Vec<String> = daemons.iter().flatten().map(|d| d.log_text()).collect();
            panic!(
                "{} of {N} inputs have no answer after 120 s (first: {:?}); answers per member: {:?}; member logs:\n{}",
                missing.len(),
                &missing[..missing.len().min(20)],
                tally.per_member,
                logs.join("\n----\n")
            );
        }
        tally.drain(&results, Duration::from_millis(200));
    }
    // Late duplicates (a redelivery racing the last answers) still count.
    for d in daemons.into_iter().flatten() {
        let (code, log) = d.terminate();
        assert_eq!(code, Some(0), "{log}");
    }
    tally.drain(&results, Duration::from_millis(500));
    tally
}

/// A clean run: every input answered exactly once, and the broker spread
/// the stream (every member took a real share).
fn assert_split_exactly_once(what: &str, tally: &Tally) {
    println!(
        "{what}: {N} inputs, {} duplicate(s); answers per member: {:?}",
        tally.duplicates(),
        tally.per_member
    );
    assert_eq!(tally.duplicates(), 0, "{:?}", tally.per_member);
    for m in MEMBERS {
        let n = tally.per_member.get(m).copied().unwrap_or(0);
        assert!(
            n > N / 10,
            "{m} answered {n} of {N}: {:?}",
            tally.per_member
        );
    }
}

#[test]
fn three_members_answer_every_input_exactly_once() {
    assert_split_exactly_once("clean run", &run(Fate::Lives));
}

#[test]
fn three_members_over_mqtt5_answer_every_input_exactly_once() {
    assert_split_exactly_once("clean run over MQTT 5", &run_over(Fate::Lives, "5"));
}

#[test]
fn a_member_killed_mid_run_loses_nothing() {
    let tally = run(Fate::Killed(0.3, 0.4));
    let mut histogram: BTreeMap<u32, usize> = BTreeMap::new();
    for &n in &tally.per_id {
        *histogram.entry(n).or_default() += 1;
    }
    println!(
        "SIGKILL of pool-b at 30%, restarted at 40%: {N} inputs, every one answered; {} duplicate(s); answers per input: {histogram:?}; per member: {:?}",
        tally.duplicates(),
        tally.per_member
    );
}

#[test]
fn a_member_stopped_for_good_leaves_the_group_to_the_others() {
    let tally = run(Fate::Stopped(0.3));
    println!(
        "SIGTERM of pool-b at 30%, not restarted: {N} inputs, {} duplicate(s); answers per member: {:?}",
        tally.duplicates(),
        tally.per_member
    );
    // Its drain answered what it had taken; everything after went to
    // the other two.
    assert_eq!(tally.duplicates(), 0, "{:?}", tally.per_member);
    let b = tally.per_member.get("pool-b").copied().unwrap_or(0);
    assert!(
        b < N * 3 / 10,
        "pool-b answered {b}: {:?}",
        tally.per_member
    );
}

#[test]
fn check_config_names_the_group_and_refuses_double_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, member_config(free_port(), "pool-a")).expect("write");
    let (code, out, err) = run_cli(&["check-config", "-c", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("topics:   $share/pool/in/+/dyn -> out/{device_id}/{model}/{1} (shared subscription: group \"pool\""),
        "{out}"
    );
    // A second model on a plain filter over the same topics.
    let text = format!(
        "{}[[models]]\nname = \"plain\"\npath = \"{}\"\ninput_topic = \"in/#\"\noutput_topic = \"plain/{{#}}\"\n",
        member_config(free_port(), "pool-a"),
        model("dynamic_batch_f32.tflite").display()
    );
    std::fs::write(&path, text).expect("write");
    let (code, out, err) = run_cli(&["check-config", "-c", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("models[1].input_topic: \"in/#\" and models[0].input_topic \"$share/pool/in/+/dyn\" both match topics such as \"in/x/dyn\""),
        "{err}"
    );
}
