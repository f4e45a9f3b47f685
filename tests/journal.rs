//! Under systemd (JOURNAL_STREAM set) the daemon logs to the journal with
//! structured fields, so an operator can run `journalctl MODEL=har`.
//! This machine runs no systemd, so the test starts systemd-journald itself
//! (unless one is already running) and hands the daemon a journal stream
//! the way systemd does.

mod common;

use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::{json, Value};

struct Journald(Option<Child>);

impl Journald {
    fn ensure() -> Journald {
        // A journald of the machine's own (systemd running): use it.
        let running = Command::new("pgrep")
            .args(["-x", "systemd-journal"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if running {
            return Journald(None);
        }
        std::fs::create_dir_all("/run/systemd/journal")
            .expect("create /run/systemd/journal (tests run as root)");
        let child = Command::new("/lib/systemd/systemd-journald")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start systemd-journald (package systemd)");
        wait_until("journald to listen", WAIT, || {
            Command::new("systemd-cat")
                .arg("true")
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        Journald(Some(child))
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn journal_entries(filters: &[&str]) -> Vec<Value> {
    let out = Command::new("journalctl")
        .args(["--no-pager", "-o", "json"])
        .args(filters)
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn errors_reach_the_journal_with_filterable_fields() {
    let _journald = Journald::ensure();
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let device = format!("journal-{}", std::process::id());
    let models = "[[models]]\nname = \"har\"\npath = \"{models}/har_accel_int8.tflite\"\ninput_topic = \"in/har\"\noutput_topic = \"out/{device_id}/{model}\"\n";
    std::fs::write(&cfg, config(broker.port, &device, "", models)).unwrap();
    // systemd-cat connects stdout/stderr to the journal; JOURNAL_STREAM
    // (device:inode of that stream) is what systemd itself would set.
    let script = format!(
        "export JOURNAL_STREAM=$(stat -L -c '%d:%i' /proc/self/fd/2); export STATE_DIRECTORY={}; exec {} run --config {}",
        dir.path().join("state").display(),
        daemon_binary().display(),
        cfg.display()
    );
    let mut child = Command::new("systemd-cat")
        .args(["-t", "edge-infer-test", "sh", "-c", &script])
        .spawn()
        .expect("systemd-cat");
    let c = TestClient::connect(broker.port);
    c.subscribe("edge-infer/+/errors");
    c.subscribe(&format!("edge-infer/{device}/status"));
    assert_eq!(c.recv().json()["state"], "online");
    let id = format!("jr-{}", std::process::id());
    c.publish("in/har", json!({"id": id, "data": [1, 2, 3]}).to_string());
    assert_eq!(c.recv().json()["code"], "bad_shape");

    let mut entry = None;
    wait_until("the error in the journal", WAIT, || {
        entry = journal_entries(&["MODEL=har", &format!("MSG_ID={id}")]).pop();
        entry.is_some()
    });
    let e = entry.unwrap();
    assert_eq!(e["ERROR_CODE"], "bad_shape", "{e}");
    assert_eq!(e["TOPIC"], "in/har", "{e}");
    assert_eq!(e["PRIORITY"], "4", "warnings are priority 4: {e}");
    assert_eq!(e["SYSLOG_IDENTIFIER"], "edge-infer", "{e}");
    assert!(
        e["MESSAGE"].as_str().unwrap().contains("needs 384 values"),
        "{e}"
    );
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}
