//! The disk outbox with the daemon around it: while the uplink broker is
//! down, answers go to `state_dir/outbox`; a full outbox honours
//! `max_bytes` with `drop_oldest` or `reject_new` and counts what it
//! dropped in health; a torn write at the end of the store is recovered at
//! start without losing what was committed before it; what waits is
//! replayed oldest first, with its original timestamps, once the uplink
//! is back.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Bytes of the outbox's files on disk.
fn outbox_bytes(state: &Path) -> u64 {
    segments(state)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// The outbox's segment files, oldest first.
fn segments(state: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(state.join("outbox"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn text(inputs: u16, uplink: u16, state: &Path, outbox: &str) -> String {
    let extra = format!("state_dir = \"{}\"\n", state.display());
    // debug: every message the daemon takes is logged ("queued ...").
    let tables = format!(
        "[log]\nlevel = \"debug\"\n\n[uplink]\nhost = \"127.0.0.1\"\nport = {uplink}\nreconnect_min_ms = 50\nreconnect_max_secs = 1\n\n[outbox]\n{outbox}\n\n{DYN}"
    );
    config(inputs, "ob", &extra, &tables)
}

/// [`text`] with a health record every 0.2 s: the tests that read the
/// outbox's counters wait on them.
fn text_watched(inputs: u16, uplink: u16, state: &Path, outbox: &str) -> String {
    text(inputs, uplink, state, outbox) + "\n[health]\ninterval_secs = 0.2\n"
}

/// Sends `n` inputs and waits until the daemon has answered them all into
/// the outbox: a clean stop drains and commits everything.
fn fill_while_uplink_down(d: Daemon, inputs: u16, n: usize) {
    let c = TestClient::connect(inputs);
    for i in 0..n {
        c.publish("in/dyn", features(i));
    }
    wait_until("the daemon to take every input", WAIT, || {
        d.count_log("queued in/dyn for model dyn") >= n
    });
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// Starts a daemon on the stored outbox with the uplink up, and returns
/// the ids of the results it replays, as they came: once its health says
/// the outbox is empty, and every one it counts as replayed has come.
fn results_after_uplink(uplink: u16, inputs: u16, state: &Path, outbox: &str) -> Vec<u64> {
    let c = TestClient::connect(uplink);
    c.subscribe("out/ob/dyn");
    c.subscribe("edge-infer/ob/health");
    let d = Daemon::start(&text_watched(inputs, uplink, state, outbox));
    let mut ids = Vec::new();
    let mut replayed = 0;
    wait_until("the outbox replayed, and every result here", WAIT, || {
        // Half a second per look at most, so a replay without end still
        // meets the deadline.
        for m in c.take_waiting(Duration::from_millis(500)) {
            let v = m.json();
            if m.topic.ends_with("/health") {
                let o = &v["delivery"]["outbox"];
                if o["records"] == 0 {
                    replayed = o["replayed"].as_u64().unwrap_or(0);
                }
            } else {
                ids.push(v["id"].as_u64().expect("id"));
            }
        }
        replayed > 0 && ids.len() as u64 >= replayed
    });
    assert_eq!(
        ids.len() as u64,
        replayed,
        "more results than replays: {ids:?}"
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    ids
}

/// Fills a 1 MiB outbox with 4,000 answers while the uplink is down
/// (`on_full` decides which survive), checks the bytes on disk stay within
/// it, then brings the uplink up and returns the ids replayed, in order.
fn overfill(on_full: &str) -> Vec<u64> {
    let inputs = Broker::start();
    let uplink_port = free_port();
    let state = tempfile::tempdir().expect("tempdir");
    let outbox = format!("max_bytes = 1048576\non_full = \"{on_full}\"");
    let d = Daemon::start(&text(inputs.port, uplink_port, state.path(), &outbox));
    fill_while_uplink_down(d, inputs.port, 4000);
    let on_disk = outbox_bytes(state.path());
    assert!(on_disk > 0 && on_disk <= 1048576, "{on_disk} bytes on disk");
    let uplink = Broker::on_port(uplink_port);
    results_after_uplink(uplink.port, inputs.port, state.path(), &outbox)
}

/// An MQTT 5 uplink that refuses the outbox's replays (its ACL, in the
/// PUBACK) gets them again after the next reconnect, and nothing is
/// released meanwhile: once the ACL lets the daemon write, every record is
/// replayed.
#[test]
fn replays_the_uplink_refuses_stay_in_the_outbox_until_it_takes_them() {
    let inputs = Broker::start();
    let acl_dir = tempfile::tempdir().expect("tempdir");
    let acl = acl_dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite edge-infer/#\n").expect("acl");
    let mut uplink = Broker::start_configured(&format!("acl_file {}", acl.display()));
    let port = uplink.port;
    uplink.stop();
    let state = tempfile::tempdir().expect("tempdir");
    let v5 = |t: String| t.replace("[uplink]\n", "[uplink]\nprotocol = \"5\"\n");
    let d = Daemon::start(&v5(text(inputs.port, port, state.path(), "")));
    fill_while_uplink_down(d, inputs.port, 50);
    uplink.restart();
    let watcher = TestClient::connect(port);
    watcher.subscribe("edge-infer/ob/health");
    let d = Daemon::start(&v5(text_watched(inputs.port, port, state.path(), "")));
    let deadline = std::time::Instant::now() + WAIT;
    let health = loop {
        let v = watcher
            .recv_before(deadline, "a health record counting 50 refused replays")
            .json();
        if v["broker"]["publish_failures"].as_u64() >= Some(50) {
            break v;
        }
    };
    let o = &health["delivery"]["outbox"];
    assert_eq!(health["broker"]["publish_failures"], 50, "{health}");
    assert_eq!(o["records"], 50, "{o}");
    assert_eq!(o["replayed"], 0, "{o}");
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("refused an outbox record on out/ob/dyn: not authorized (reason code 0x87); it stays in the outbox"),
        "{log}"
    );
    std::fs::write(
        &acl,
        "topic readwrite edge-infer/#\ntopic readwrite out/#\n",
    )
    .expect("acl");
    uplink.restart();
    let ids = results_after_uplink(port, inputs.port, state.path(), "");
    assert_eq!(ids, (0..50).collect::<Vec<_>>());
}

#[test]
fn full_outbox_drops_the_oldest_within_max_bytes() {
    let ids = overfill("drop_oldest");
    // The newest survive: a run ending with the last one, oldest first.
    let first = *ids.first().expect("some results");
    assert!(first > 0, "nothing was dropped: {ids:?}");
    assert_eq!(
        ids,
        (first..4000).collect::<Vec<_>>(),
        "oldest first, no gaps"
    );
}

#[test]
fn full_outbox_rejects_new_records_within_max_bytes() {
    let ids = overfill("reject_new");
    // The oldest survive: the first ones, in order, and not all.
    let kept = ids.len();
    assert!(kept > 0 && kept < 4000, "{kept} kept");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    // A record that does not fit is refused, and a later, shorter answer
    // (its numbers print shorter) may still fit in the room that was left,
    // which is less than one record: so all but the last few form an
    // unbroken run from the first.
    let run = ids
        .iter()
        .zip(0u64..)
        .take_while(|(id, n)| **id == *n)
        .count();
    assert!(kept - run <= 4, "the oldest {run} then {:?}", &ids[run..]);
}

/// With the uplink down mid-run, 4,000 answers overfill a 1 MiB outbox;
/// once it is back, health counts every answer lost to `on_full` (under
/// `counter`), and every other input has its result.
fn losses_counted_in_health(on_full: &str, counter: &str) {
    let inputs = Broker::start();
    let mut uplink = Broker::start_persistent();
    let state = tempfile::tempdir().expect("tempdir");
    let outbox = format!("max_bytes = 1048576\non_full = \"{on_full}\"");
    let config_text = text_watched(inputs.port, uplink.port, state.path(), &outbox);
    // A persistent session: what is published while it is away waits.
    let watcher = TestClient::connect_persistent(uplink.port, &format!("ob-{on_full}"));
    watcher.subscribe("edge-infer/ob/health");
    watcher.subscribe("out/ob/dyn");
    let d = Daemon::start(&config_text);
    uplink.stop_gracefully();
    let c = TestClient::connect(inputs.port);
    for i in 0..4000 {
        c.publish("in/dyn", features(i));
    }
    d.wait_for_log("the outbox was full");
    uplink.start_again();
    let mut health = Value::Null;
    let mut answered = std::collections::BTreeSet::new();
    wait_until("every input answered or counted as lost", WAIT, || {
        for m in watcher.take_waiting(Duration::from_millis(500)) {
            let v = m.json();
            if m.topic.ends_with("/health") {
                health = v;
            } else {
                answered.insert(v["id"].as_u64().expect("id"));
            }
        }
        let o = &health["delivery"]["outbox"];
        let n = |k: &str| o[k].as_u64().unwrap_or(0);
        let lost = n(counter);
        // Everything stored was replayed or dropped for room, nothing
        // waits, and every input was answered or is counted as lost.
        lost > 0
            && lost + answered.len() as u64 == 4000
            && n("replayed") + n("dropped_full") == n("stored")
            && o["records"] == 0
    });
    let o = &health["delivery"]["outbox"];
    assert!(
        o["last_loss"].as_str().unwrap_or("").contains(on_full),
        "{o}"
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn answers_dropped_for_room_are_counted_in_health() {
    losses_counted_in_health("drop_oldest", "dropped_full");
}

#[test]
fn answers_refused_for_room_are_counted_in_health() {
    losses_counted_in_health("reject_new", "rejected_full");
}

#[test]
fn a_torn_write_at_the_end_is_recovered_without_losing_what_came_before() {
    let inputs = Broker::start();
    let uplink_port = free_port();
    let state = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(&text(inputs.port, uplink_port, state.path(), ""));
    fill_while_uplink_down(d, inputs.port, 100);
    // A crash in the middle of writing the last record: its tail never
    // reached the disk, and the block held garbage after it.
    let segs = segments(state.path());
    let last = segs.last().expect("a segment");
    let len = std::fs::metadata(last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[0xAB; 13]);
    std::fs::write(last, bytes).unwrap();

    let uplink = Broker::on_port(uplink_port);
    let c = TestClient::connect(uplink.port);
    c.subscribe("out/ob/dyn");
    let restarted_at = unix_now();
    let d = Daemon::start(&text(inputs.port, uplink_port, state.path(), ""));
    let results: Vec<Value> = c.recv_n(99).iter().map(|m| m.json()).collect();
    // Oldest first, with the times they were answered (not replayed).
    for r in &results {
        let published = r["published_at"].as_f64().expect("published_at");
        assert!(
            published < restarted_at,
            "published_at {published} is the replay's, not the answer's (restarted at {restarted_at}): {r}"
        );
    }
    let mut ids: Vec<u64> = results.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    let sorted = {
        let mut s = ids.clone();
        s.sort();
        s
    };
    assert_eq!(ids, sorted);
    ids.dedup();
    assert_eq!(ids, (0..99).collect::<Vec<_>>());
    assert!(c.recv_within(Duration::from_millis(500)).is_none());
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("torn"), "the recovery is reported:\n{log}");
}
