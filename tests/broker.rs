//! The broker is down at startup or goes away mid-stream: the daemon
//! retries with backoff, resubscribes after every reconnect, keeps serving.

mod common;

use common::*;
use serde_json::json;

#[test]
fn broker_down_at_startup_is_retried_until_it_comes_up() {
    let port = free_port();
    let d = Daemon::spawn(&config(port, "dev1", "", DYN), &[]);
    d.wait_for_log("cannot reach the MQTT broker");
    // Models were loaded and warmed before any connection attempt.
    assert!(
        d.log_text().contains("loaded and warmed"),
        "{}",
        d.log_text()
    );
    let broker = Broker::on_port(port);
    d.wait_for_log("ready:");
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.publish("in/dyn", features(1));
    assert_eq!(c.recv().json()["id"], 1);
}

#[test]
fn broker_restart_mid_stream_restores_subscriptions() {
    let mut broker = Broker::start();
    let d = Daemon::start(&config(broker.port, "dev1", "", DYN));
    {
        let c = TestClient::connect(broker.port);
        c.subscribe("out/#");
        for i in 0..20 {
            c.publish("in/dyn", features(i));
        }
        assert_eq!(c.recv_n(20).len(), 20);
    }
    broker.restart();
    // The restarted broker has no sessions: only a resubscribe brings
    // messages to the daemon again.
    d.wait_for_log("lost the MQTT broker connection");
    wait_until("the daemon to subscribe again", WAIT, || {
        d.count_log("subscribed to") >= 2
    });
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    for i in 100..120 {
        c.publish("in/dyn", features(i));
    }
    let mut ids: Vec<i64> = c
        .recv_n(20)
        .iter()
        .map(|m| m.json()["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (100..120).collect::<Vec<_>>());
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("model dyn: received=40 ok=40"), "{log}");
}

fn received_in(log: &str, model: &str) -> usize {
    log.lines()
        .find_map(|l| l.split(&format!("model {model}: received=")).nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary for {model} in log:\n{log}"))
}

#[test]
fn sigterm_drains_and_nothing_is_lost_across_a_daemon_restart() {
    let broker = Broker::start();
    let models = "[[models]]\nname = \"img\"\npath = \"{models}/mobilenet_v2_int8.tflite\"\ninput_topic = \"in/img\"\noutput_topic = \"out/{device_id}/{model}\"\npayload = \"raw\"\nqueue_capacity = 1000\nqueue_max_bytes = 268435456\n";
    let text = config(broker.port, "dev1", "", models);
    let d = Daemon::start(&text);
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    let frame = vec![1u8; 224 * 224 * 3];
    let mut sent = 0;
    for _ in 0..40 {
        c.publish("in/img", frame.clone());
        sent += 1;
    }
    let mut answers = vec![c.recv()];
    // Keep publishing through the whole drain: whatever arrives after the
    // signal must stay with the broker, not vanish.
    d.send_sigterm();
    while !d.has_exited() && sent < 400 {
        c.publish("in/img", frame.clone());
        sent += 1;
    }
    let (code, log) = d.wait_exit();
    assert_eq!(code, Some(0), "{log}");
    let taken = received_in(&log, "img");
    assert!(
        taken < sent,
        "the first run took all {sent} messages; the drain was not exercised"
    );
    // Every message the first run took was answered before it exited.
    answers.extend(c.recv_n(taken - 1));
    // The rest stayed unacknowledged in the broker session and are served
    // by the next run under the same client id.
    let again = Daemon::start(&text);
    answers.extend(c.recv_n(sent - taken));
    if let Some(e) = answers.iter().find(|m| m.topic != "out/dev1/img") {
        panic!(
            "an error came back: {}",
            String::from_utf8_lossy(&e.payload)
        );
    }
    let (code, log) = again.terminate();
    assert_eq!(code, Some(0));
    assert_eq!(received_in(&log, "img"), sent - taken, "{log}");
}

/// Every message still queued when the drain times out is answered, also
/// when there are more of them than the reply channel holds at once
/// (1,024): the default queue holds 4,096.
#[test]
fn drain_timeout_answers_what_is_left_with_shutting_down() {
    let broker = Broker::start();
    // Each invoke spins for about 55 ms (0.27 us per iteration,
    // tests/fixtures/spin_int32.json): 2,000 messages are minutes of
    // work, so a 20 ms drain must leave nearly all of them queued.
    let frame = json!({"data": [200_000]}).to_string();
    let models = "[[models]]\nname = \"spin\"\npath = \"{models}/spin_int32.tflite\"\ninput_topic = \"in/spin\"\noutput_topic = \"out/{device_id}/{model}\"\n";
    let extra = "[log]\nlevel = \"debug\"\n[shutdown]\ndrain_timeout_secs = 0.02";
    let d = Daemon::start(&config(broker.port, "dev1", extra, models));
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    const N: usize = 2000;
    for _ in 0..N {
        c.publish("in/spin", frame.clone());
    }
    wait_until("every message to be queued", WAIT, || {
        d.count_log("queued in/spin") == N
    });
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(received_in(&log, "spin"), N);
    let answers = c.recv_n(N);
    let errors: Vec<_> = answers
        .iter()
        .filter(|m| m.topic == "edge-infer/dev1/errors")
        .map(|m| m.json())
        .collect();
    assert!(
        !errors.is_empty(),
        "nothing was left after a 20 ms drain:\n{log}"
    );
    for e in &errors {
        assert_eq!(e["code"], "shutting_down", "{e}");
        assert_eq!(e["model"], "spin");
    }
    assert!(log.contains("answered with shutting_down"), "{log}");
}

/// 5,000 QoS 1 messages wait in the broker session while the daemon is
/// away; on its start the broker sends them all at once. Each is answered
/// exactly once (its result, or `overloaded` past the queue's capacity), none is left unacknowledged (a third start gets nothing
/// again), and no acknowledgement fails.
#[test]
fn a_backlog_waiting_in_the_session_is_answered_once_and_acknowledged() {
    const N: usize = 5000;
    let broker = Broker::start();
    let text = config(broker.port, "dev1", "", DYN);
    // The first run leaves the persistent session with its subscription.
    let (code, log) = Daemon::start(&text).terminate();
    assert_eq!(code, Some(0), "{log}");
    let c = TestClient::connect(broker.port);
    c.subscribe("out/#");
    c.subscribe("edge-infer/dev1/errors");
    for i in 0..N {
        c.publish("in/dyn", features(i));
    }
    let d = Daemon::start(&text);
    // A result, or `overloaded` where the burst overflowed the queue
    // (4,096 by default).
    let mut seen = vec![0u32; N];
    for m in c.recv_n(N) {
        let v = m.json();
        if m.topic != "out/dev1/dyn" {
            assert_eq!(v["code"], "overloaded", "{v}");
        }
        seen[v["id"].as_u64().unwrap() as usize] += 1;
    }
    assert!(seen.iter().all(|&n| n == 1), "answered more than once");
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("acknowledge"), "{log}");
    assert_eq!(received_in(&log, "dyn"), N, "{log}");
    // Every one was acknowledged: the broker has nothing to redeliver.
    let d = Daemon::start(&text);
    assert!(
        c.recv_within(std::time::Duration::from_millis(500))
            .is_none(),
        "redelivered after a clean run"
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(received_in(&log, "dyn"), 0, "{log}");
}

/// A broker may leave a ping unanswered while it sends everything else:
/// newer Mosquitto releases (2.0.21 for one) drop every packet they would
/// add to a full queue for a client, ping answers included
/// (eclipse-mosquitto/mosquitto#3542), and under a flood the daemon's
/// queue is full; 2.0.11 (here)
/// queues the answer behind a backlog the input link may take longer than
/// a keep-alive to read. Either way the link reads all along, so the
/// connection is alive: it stays up and says once that a ping went
/// unanswered. Before, rumqttc ended it at the next keep-alive ("Last
/// pingreq isn't acked"), in the middle of the flood. A proxy drops the
/// answer here, on time. A connection that carries nothing after its ping
/// is still given up.
#[test]
fn a_ping_answer_the_broker_drops_ends_the_link_only_when_nothing_else_comes() {
    use common::proxy::Proxy;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const INPUT: &str = "edge-infer-dev1";
    let broker = Broker::start();
    let proxy = Proxy::start(broker.port);
    let text = config(proxy.port, "dev1", "[health]\ninterval_secs = 0.5", DYN)
        .replace("[mqtt]\n", "[mqtt]\nkeep_alive_secs = 5\n");
    let d = Daemon::start(&text);
    let c = TestClient::connect(broker.port);
    c.subscribe("out/dev1/dyn");
    let health = TestClient::connect(broker.port);
    health.subscribe("edge-infer/dev1/health");

    // A steady 100 msg/s while the answer is dropped and two pings after.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        let p = TestClient::connect(broker.port);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let i = sent.fetch_add(1, Ordering::Relaxed);
                p.publish("in/dyn", features(i));
                let next = start + Duration::from_millis(10) * (i as u32 + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            p
        })
    };
    wait_until("the input link to connect through the proxy", WAIT, || {
        proxy.connections(INPUT).len() == 1
    });
    let input = proxy.connections(INPUT).remove(0);
    input.drop_ping_answers(1);
    wait_until("a ping answer to be dropped", WAIT, || {
        input.dropped.load(Ordering::SeqCst) == 1
    });
    d.wait_for_log("no answer to a keep-alive ping");
    let pings = input.pings.load(Ordering::SeqCst);
    wait_until("two more pings", WAIT, || {
        input.pings.load(Ordering::SeqCst) >= pings + 2
    });
    stop.store(true, Ordering::Relaxed);
    let _p = sender.join().unwrap();
    // Every message was answered, on the one connection.
    let n = sent.load(Ordering::Relaxed);
    assert_eq!(c.recv_n(n).len(), n);
    assert_eq!(proxy.connections(INPUT).len(), 1, "{}", d.log_text());
    assert!(
        !d.log_text().contains("lost the MQTT broker connection"),
        "{}",
        d.log_text()
    );
    // Counted for operators (health and /metrics), on the input link only.
    let unanswered =
        |h: &serde_json::Value, link: &str| h["broker"]["links"][link]["pings_unanswered"].clone();
    let start = std::time::Instant::now();
    loop {
        let h = health.recv().json();
        if unanswered(&h, "input") == 1 {
            assert_eq!(unanswered(&h, "output"), 0, "{h}");
            break;
        }
        assert_eq!(unanswered(&h, "input"), 0, "{h}");
        assert!(
            start.elapsed() < WAIT,
            "no health record counts the ping: {h}"
        );
    }

    // Now nothing comes after the ping: the link cannot tell a dead
    // connection from a quiet one, so it reconnects, and serves again.
    // Armed only once a ping sent after the last message is answered: a
    // message that came after a ping whose answer is dropped is taken as
    // that answer (phase one), and under load the answer to a ping sent
    // just before the sender stopped can still be on its way here.
    let pings = input.pings.load(Ordering::SeqCst);
    wait_until("a ping on the quiet link, answered", WAIT, || {
        let sent = input.pings.load(Ordering::SeqCst);
        sent > pings && input.answers.load(Ordering::SeqCst) >= sent
    });
    input.drop_ping_answers(1);
    d.wait_for_log("input link: lost the MQTT broker connection");
    d.wait_for_log("input link: back after");
    wait_until("the input link to reconnect", WAIT, || {
        proxy.connections(INPUT).len() == 2
    });
    wait_until("the input link to subscribe again", WAIT, || {
        d.count_log("subscribed to 1 topic filter(s)") == 2
    });
    let p = TestClient::connect(broker.port);
    p.publish("in/dyn", features(n));
    assert_eq!(c.recv().json()["id"], n as u64);

    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        log.matches("no answer to a keep-alive ping").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("Last pingreq isn't acked").count(), 1, "{log}");
    // The warning says how long the broker had been silent: more than a
    // keep-alive, which tells a dead path from a busy broker.
    let lost = log
        .lines()
        .find(|l| l.contains("Last pingreq isn't acked"))
        .unwrap();
    let silent: f64 = lost
        .split("the broker's last packet came ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no silence in {lost:?}"));
    assert!(silent >= 5.0, "{lost}");
}

/// The receive buffer (SO_RCVBUF) of the daemon's connections to `port`,
/// as the kernel reports it: one entry per connection, from `ss`.
fn receive_buffers(port: u16, pid: u32) -> Vec<u64> {
    let out = std::process::Command::new("ss")
        .args(["-Htmnp", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("run ss (Debian package iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    // Each connection: its line, then a line with skmem:(r0,rb<bytes>,..).
    let mut buffers = Vec::new();
    let mut ours = false;
    for line in text.lines() {
        if line.contains("users:(") {
            ours = line.contains(&format!("pid={pid},"));
        } else if let (true, Some(skmem)) = (ours, line.split("skmem:(").nth(1)) {
            let rb = skmem
                .split(',')
                .find_map(|f| f.strip_prefix("rb"))
                .and_then(|n| n.parse().ok());
            buffers.push(rb.unwrap_or_else(|| panic!("no rb in {line:?}")));
        }
    }
    buffers
}

/// `[mqtt] receive_buffer_bytes` bounds how far the broker can send ahead
/// of the daemon's reading (a flood of 1 MB images held 9-10 MB in the
/// MQTT client's buffers without it). Linux reports twice the value: its
/// bookkeeping is included.
#[test]
fn both_broker_connections_get_the_configured_receive_buffer() {
    // The kernel caps the value at net.core.rmem_max (208 KiB unless raised).
    let rmem_max: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .expect("read net.core.rmem_max")
        .trim()
        .parse()
        .expect("net.core.rmem_max is a number");
    let broker = Broker::start();
    for (setting, reported) in [
        ("", 2 * rmem_max.min(256 * 1024)),
        ("receive_buffer_bytes = 50000\n", 100_000),
    ] {
        let text = config(broker.port, "dev1", "", DYN).replace(
            "reconnect_max_secs = 1\n",
            &format!("reconnect_max_secs = 1\n{setting}"),
        );
        let d = Daemon::start(&text);
        let mut seen = Vec::new();
        wait_until("the daemon's two connections in ss", WAIT, || {
            seen = receive_buffers(broker.port, d.pid());
            seen.len() == 2
        });
        assert_eq!(seen, [reported, reported], "{setting:?}");
        let (code, log) = d.terminate();
        assert_eq!(code, Some(0), "{log}");
    }
}
