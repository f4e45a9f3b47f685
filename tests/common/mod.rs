//! Test harness: a real Mosquitto broker per test on a free loopback port,
//! the real daemon binary with the real runtime library and models, and a
//! real MQTT client. Everything waits on conditions with generous
//! deadlines; nothing sleeps for a fixed time to "let things settle".
#![allow(dead_code)]

pub mod delegate;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use std::sync::mpsc::{Receiver, RecvTimeoutError};

/// Deadline for things that normally take milliseconds; generous because
/// CI machines are shared and tests run in parallel.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn model(name: &str) -> PathBuf {
    repo().join("models").join(name)
}

pub fn fixture(name: &str) -> Value {
    let path = repo().join("tests/fixtures").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Fails loudly (never skips) when the runtime library is missing.
pub fn require_runtime() {
    let lib = repo().join("runtime/x86_64/libLiteRt.so");
    let arch_lib = repo().join(format!("runtime/{}/libLiteRt.so", std::env::consts::ARCH));
    assert!(
        lib.exists() || arch_lib.exists(),
        "libLiteRt.so is missing: run scripts/setup-deps.sh (the README's test command does)"
    );
}

/// A loopback port nothing listens on, and that no other test of this
/// process was given: a test may keep one unbound for a while (a broker
/// that is down, to be started later), and the kernel could hand it to a
/// parallel test's broker meanwhile.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn mosquitto_binary() -> PathBuf {
    for p in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "mosquitto is not installed: run scripts/setup-deps.sh (the README's test command does)"
    );
}

pub fn wait_until(what: &str, deadline: Duration, cond: impl FnMut() -> bool) {
    wait_until_else(what, deadline, cond, String::new);
}

/// [`wait_until`], and on timeout the failure adds what `explain` says
/// (what the test saw instead, logs).
pub fn wait_until_else(
    what: &str,
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() >= deadline {
            panic!(
                "timed out after {deadline:?} waiting for {what}{}",
                explain()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Mosquitto process owned by one test.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    limits: &'static str,
    /// Keeps sessions, subscriptions and queued messages across restarts
    /// (saved in its dir on a graceful stop).
    persistent: bool,
    /// mosquitto.conf lines that belong to the listener (TLS: `cafile`,
    /// `certfile`, `keyfile`, `require_certificate true`); empty for a
    /// plaintext listener.
    listener: String,
    child: Option<Child>,
}

/// The tests' broker limits: generous, so that a burst a test sends on
/// purpose is never cut by the broker.
const TEST_BROKER_LIMITS: &str =
    "max_inflight_messages 0\nmax_queued_messages 100000\nmessage_size_limit 0\n";

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(TEST_BROKER_LIMITS)
    }

    /// A broker with `limits` (mosquitto.conf lines) instead of the tests'
    /// usual ones: `""` gives Mosquitto's own defaults (20 QoS 1 messages
    /// in flight and 1,000 queued per client), as most installs run it.
    /// Mosquitto 2.0.11 does not keep the 20 when a client acknowledges in
    /// order, as the daemon does: each acknowledgement of the oldest lets
    /// up to 20 more out (fixed in 2.0.13).
    pub fn start_with(limits: &'static str) -> Broker {
        Broker::start_listener(limits, "")
    }

    /// A broker whose listener has `listener` (mosquitto.conf lines, e.g.
    /// a TLS setup) and the tests' usual limits. `user root`: started as
    /// root, Mosquitto drops to the `mosquitto` user, which cannot read a
    /// test's key files (mode 0600 in a 0700 temp dir); not root, the line
    /// has no effect.
    pub fn start_tls(listener: &str) -> Broker {
        Broker::start_configured(listener)
    }

    /// A broker with `lines` added to its config (a listener's TLS, an
    /// `acl_file`) and the tests' usual limits; `user root` as in
    /// [`Broker::start_tls`], so it can read files in a test's temp dir.
    pub fn start_configured(lines: &str) -> Broker {
        Broker::start_listener(TEST_BROKER_LIMITS, &format!("{lines}\nuser root"))
    }

    fn start_listener(limits: &'static str, listener: &str) -> Broker {
        // A free port can be taken by someone else before mosquitto binds
        // it; try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let mut b = Broker {
                port,
                dir,
                limits,
                persistent: false,
                listener: listener.to_string(),
                child: None,
            };
            if b.try_start() {
                return b;
            }
        }
        panic!("could not start mosquitto on a free port after 5 tries");
    }

    /// Starts a broker on a port chosen by the test (for "broker comes up
    /// later" tests).
    pub fn on_port(port: u16) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Broker {
            port,
            dir,
            limits: TEST_BROKER_LIMITS,
            persistent: false,
            listener: String::new(),
            child: None,
        };
        assert!(b.try_start(), "mosquitto did not start on port {port}");
        b
    }

    /// A broker with persistence on: what it holds survives
    /// [`Broker::stop_gracefully`] and [`Broker::start_again`].
    pub fn start_persistent() -> Broker {
        for _ in 0..5 {
            let mut b = Broker {
                port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                limits: TEST_BROKER_LIMITS,
                persistent: true,
                listener: String::new(),
                child: None,
            };
            if b.try_start() {
                return b;
            }
        }
        panic!("could not start mosquitto on a free port after 5 tries");
    }

    /// SIGTERM: a persistent broker saves its state before it exits.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let start = Instant::now();
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if start.elapsed() > WAIT {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        wait_until("the broker port to close", WAIT, || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }

    /// Starts a stopped broker again on its port, with what it saved.
    pub fn start_again(&mut self) {
        let start = Instant::now();
        while !self.try_start() {
            assert!(
                start.elapsed() < WAIT,
                "mosquitto did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_start(&mut self) -> bool {
        let conf = self.dir.path().join("mosquitto.conf");
        let persistence = if self.persistent {
            format!(
                // `user root`: Mosquitto started as root otherwise drops to
                // its own user, which cannot write the test's directory.
                "persistence true\npersistence_location {}/\nuser root\n",
                self.dir.path().display()
            )
        } else {
            "persistence false\n".to_string()
        };
        // `set_tcp_nodelay`, here and in the test client: without it each
        // small packet waited for a delayed ACK, 86 ms a round trip.
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\n{}\nallow_anonymous true\nset_tcp_nodelay true\n{persistence}{}log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n",
                self.port, self.listener, self.limits
            ),
        )
        .expect("write mosquitto.conf");
        // Its notices ("Outgoing messages are being dropped for client
        // ...", clients coming and going) go to a file the test opens:
        // Mosquitto started as root drops to its own user, which could not
        // open one in the test's directory.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("open mosquitto.log");
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(_)) = child.try_wait() {
                // Exited on its own (already reaped by try_wait).
                return false; // port taken, most likely
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// What the broker logged (errors, warnings, notices), for a failure
    /// message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_until("the broker port to close", WAIT, || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }

    /// Restarts on the same port with another listener setup (a TLS test
    /// fixing the broker's certificate).
    pub fn restart_with_listener(&mut self, listener: &str) {
        self.listener = format!("{listener}\nuser root");
        self.restart();
    }

    pub fn restart(&mut self) {
        self.stop();
        let start = Instant::now();
        // The port may linger briefly in the kernel after the kill.
        while !self.try_start() {
            assert!(
                start.elapsed() < WAIT,
                "mosquitto did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The daemon under test, with its stderr collected line by line.
pub struct Daemon {
    child: Mutex<Child>,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The thread that fills `log`; it ends when the daemon's stderr does.
    reader: Option<std::thread::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
    /// How long it may take to log what is awaited, or to exit.
    limit: Duration,
}

/// Reads a child's stderr into a shared list of lines on a thread of its
/// own, so a test can look at the log while the child runs.
pub fn read_lines(
    stderr: std::process::ChildStderr,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (log, reader)
}

/// Waits for `read_lines`' thread to reach the end of a child's stderr
/// (the child has exited), so the log holds its last lines: a drain's
/// summary is written just before the exit.
pub fn wait_for_all_lines(reader: std::thread::JoinHandle<()>, log: &Mutex<Vec<String>>) {
    let start = Instant::now();
    while !reader.is_finished() {
        assert!(
            start.elapsed() < WAIT,
            "the child exited, but its stderr did not end within {WAIT:?} (a process it started still holds it?):\n{}",
            log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = reader.join();
}

pub fn daemon_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-infer"))
}

/// A config with the broker port and device id filled in; `models` is the
/// TOML of the [[models]] tables (paths may use {models} for the models dir).
pub fn config(port: u16, device_id: &str, extra: &str, models: &str) -> String {
    format!(
        "device_id = \"{device_id}\"\n{extra}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nreconnect_min_ms = 50\nreconnect_max_secs = 1\n\n{}",
        models.replace("{models}", &repo().join("models").display().to_string())
    )
}

impl Daemon {
    /// Starts `edge-infer run` and waits until it has subscribed.
    pub fn start(config_text: &str) -> Daemon {
        let d = Daemon::spawn(config_text, &[]);
        d.wait_for_log("ready:");
        d
    }

    /// Starts `edge-infer run` without waiting.
    pub fn spawn(config_text: &str, env: &[(&str, &str)]) -> Daemon {
        require_runtime();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config_text).expect("write config");
        let mut cmd = Command::new(daemon_binary());
        cmd.arg("run").arg("--config").arg(&path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon::spawn_command(dir, cmd)
    }

    /// Starts `cmd` (an `edge-infer run` whose config is
    /// `dir/config.toml`) without waiting; `dir` lives as long as the
    /// daemon.
    pub fn spawn_command(dir: tempfile::TempDir, mut cmd: Command) -> Daemon {
        cmd.env_remove("JOURNAL_STREAM");
        // The state dir (the outbox) in the test's own dir, unless the
        // config names one: the default, /var/lib/edge-infer, is the
        // service's.
        if !cmd.get_envs().any(|(k, _)| k == "STATE_DIRECTORY") {
            cmd.env("STATE_DIRECTORY", dir.path().join("state"));
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn edge-infer");
        let (log, reader) = read_lines(child.stderr.take().expect("stderr"));
        Daemon {
            child: Mutex::new(child),
            log,
            reader: Some(reader),
            dir,
            limit: WAIT,
        }
    }

    /// Gives it `limit` instead of `WAIT` to log what is awaited and to
    /// exit (a daemon under emulation).
    pub fn with_limit(mut self, limit: Duration) -> Daemon {
        self.limit = limit;
        self
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        loop {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child_status() {
                panic!(
                    "daemon exited ({status}) before logging {needle:?}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                start.elapsed() < self.limit,
                "timed out waiting for {needle:?} in the daemon log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn child_status(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.lock().unwrap().try_wait()
    }

    pub fn send_sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal by name ("HUP", "TERM", "KILL").
    pub fn signal(&self, name: &str) {
        let pid = self.pid();
        let _ = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status();
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Rewrites the daemon's config file (for reload tests).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("config.toml"), text).expect("rewrite config");
    }

    pub fn has_exited(&self) -> bool {
        matches!(self.child_status(), Ok(Some(_)))
    }

    /// SIGTERM, then waits for exit; returns the exit code and the log.
    pub fn terminate(self) -> (Option<i32>, String) {
        self.send_sigterm();
        self.wait_exit()
    }

    /// Waits for the process to end; returns its exit code and the log,
    /// to its last line.
    pub fn wait_exit(mut self) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child_status() {
                if let Some(reader) = self.reader.take() {
                    wait_for_all_lines(reader, &self.log);
                }
                return (status.code(), self.log_text());
            }
            assert!(
                start.elapsed() < self.limit,
                "daemon did not exit after SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(child) = self.child.get_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the daemon binary to completion (for startup-failure tests).
/// It must exit within `CLI_LIMIT`: a `run` whose config should have been
/// refused would otherwise retry its broker for ever, and the test hang
/// instead of failing.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(daemon_binary());
    cmd.args(args).env_remove("JOURNAL_STREAM");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_to_exit(cmd, CLI_LIMIT)
}

/// How long a command-line run may take: generous, since `check-config`
/// loads and warms every model, and `publish-model` and `status` wait for
/// the broker.
pub const CLI_LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` to its exit with its output captured; kills it and fails
/// the test if it has not exited within `limit`.
pub fn run_to_exit(mut cmd: Command, limit: Duration) -> (Option<i32>, String, String) {
    let start = Instant::now();
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not exit within {limit:?}; its stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}

/// A message the test client received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Received {
    /// The payload as JSON, checked against the published JSON Schema for
    /// its kind (schemas/): every message a test reads is validated.
    pub fn json(&self) -> Value {
        let v: Value = serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "not JSON on {}: {e}: {}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        });
        let kind = schema_kind(&self.topic);
        if let Err(errors) = validate(kind, &v) {
            panic!(
                "message on {} does not match schemas/{kind}.schema.json:\n{errors}\n{v}",
                self.topic
            );
        }
        v
    }
}

/// Which schema a topic's messages follow.
pub fn schema_kind(topic: &str) -> &'static str {
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["edge-infer", _, "errors"] => "error",
        ["edge-infer", _, "status"] => "status",
        ["edge-infer", _, "health"] => "health",
        ["edge-infer", _, "models", _, "desired"] => "manifest",
        _ => "result",
    }
}

/// Validates `v` against schemas/<kind>.schema.json; the error lists every
/// violation with its path.
pub fn validate(kind: &str, v: &Value) -> Result<(), String> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static VALIDATORS: OnceLock<HashMap<&'static str, jsonschema::Validator>> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| {
        [
            "result",
            "error",
            "status",
            "health",
            "homeassistant-discovery",
            "manifest",
        ]
        .into_iter()
        .map(|k| {
            let path = repo().join("schemas").join(format!("{k}.schema.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let schema: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let validator = jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (k, validator)
        })
        .collect()
    });
    let validator = validators
        .get(kind)
        .unwrap_or_else(|| panic!("no schema {kind}"));
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("  - at {}: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Seconds since the Unix epoch, as the daemon's messages carry them.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Sends each small packet at once: with Nagle's algorithm a PUBACK
/// waits for the delayed ACK of the packet before it (86 ms a round trip
/// here), and the daemon's window of unconfirmed answers with it.
pub fn without_nagle(eventloop: &mut rumqttc::EventLoop) {
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
}

/// A plain MQTT client on its own thread.
pub struct TestClient {
    pub client: Client,
    rx: Receiver<Received>,
    subacks: Receiver<()>,
}

impl TestClient {
    pub fn connect(port: u16) -> TestClient {
        TestClient::connect_over(port, None)
    }

    /// Over TLS with `tls` (rumqttc's rustls transport), or plaintext.
    pub fn connect_over(port: u16, tls: Option<rumqttc::Transport>) -> TestClient {
        let id = format!("test-{}-{}", std::process::id(), free_port());
        TestClient::connect_as(port, &id, true, tls)
    }

    /// A client whose session (subscriptions, queued QoS 1 messages) the
    /// broker keeps while it is away; it reconnects by itself.
    pub fn connect_persistent(port: u16, id: &str) -> TestClient {
        TestClient::connect_as(port, id, false, None)
    }

    fn connect_as(
        port: u16,
        id: &str,
        clean_session: bool,
        tls: Option<rumqttc::Transport>,
    ) -> TestClient {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(clean_session);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(64 << 20, 64 << 20);
        if let Some(t) = tls {
            opts.set_transport(t);
        }
        let (client, mut conn) = Client::new(opts, 1024);
        without_nagle(&mut conn.eventloop);
        let (tx, rx) = std::sync::mpsc::channel();
        let (sub_tx, subacks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        TestClient {
            client,
            rx,
            subacks,
        }
    }

    pub fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("subscribe request");
        self.subacks.recv_timeout(WAIT).expect("SUBACK");
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .expect("publish request");
    }

    /// Next message, or panic after the deadline.
    pub fn recv(&self) -> Received {
        self.recv_within(WAIT)
            .unwrap_or_else(|| panic!("no message within {WAIT:?}"))
    }

    /// The next message before `deadline`, or a panic naming `what` the
    /// test waited for: for loops that skip messages (health records come
    /// every fraction of a second) until the one they want, which `recv`'s
    /// limit per message would never end.
    pub fn recv_before(&self, deadline: Instant, what: &str) -> Received {
        let left = deadline.saturating_duration_since(Instant::now());
        self.recv_within(left)
            .unwrap_or_else(|| panic!("gave up waiting for {what}"))
    }

    pub fn recv_within(&self, d: Duration) -> Option<Received> {
        match self.rx.recv_timeout(d) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("test client thread ended"),
        }
    }

    /// What has come, and whatever follows within 50 ms of the last, for
    /// at most `limit`: a look inside a `wait_until` that keeps to its
    /// deadline even while messages keep coming.
    pub fn take_waiting(&self, limit: Duration) -> Vec<Received> {
        let until = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv_within(left.min(Duration::from_millis(50))) {
                Some(m) => out.push(m),
                None => return out,
            }
        }
    }

    /// Collects `n` messages (panics with what came if they do not).
    pub fn recv_n(&self, n: usize) -> Vec<Received> {
        let mut out = Vec::with_capacity(n);
        let start = Instant::now();
        while out.len() < n {
            let left = WAIT
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(1));
            match self.recv_within(left) {
                Some(m) => out.push(m),
                None => panic!(
                    "got {} of {n} messages within {WAIT:?}: {:?}",
                    out.len(),
                    out.iter().map(|m| &m.topic).collect::<Vec<_>>()
                ),
            }
        }
        out
    }
}

/// Reads a fixture case's inputs as JSON values (float domain) in order.
pub fn case_inputs(case: &Value) -> Vec<&Value> {
    case["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| &i["values"])
        .collect()
}

/// A fixture case's first input as the raw bytes of its int8 tensor (the
/// quantized values), as a `payload = "raw"` message carries them.
pub fn case_raw_int8(case: &Value) -> Vec<u8> {
    case["inputs"][0]["quantized"]
        .as_array()
        .expect("quantized")
        .iter()
        .map(|v| v.as_i64().expect("an integer") as i8 as u8)
        .collect()
}

/// Asserts every output of a result equals the fixture's, exactly or within
/// `rel` relative tolerance.
pub fn assert_outputs(result: &Value, case: &Value, rel: Option<f64>) {
    let got = result["outputs"]
        .as_array()
        .unwrap_or_else(|| panic!("no outputs in {result}"));
    let want = case["outputs"].as_array().expect("fixture outputs");
    assert_eq!(got.len(), want.len(), "output count in {result}");
    for (g, w) in got.iter().zip(want.iter()) {
        assert_eq!(g["name"], w["name"], "output name");
        assert_eq!(g["shape"], w["shape"], "output shape of {}", w["name"]);
        assert_eq!(g["dtype"], w["dtype"], "output dtype of {}", w["name"]);
        let gv: Vec<f64> = g["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let wv: Vec<f64> = w["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(gv.len(), wv.len());
        for (i, (a, b)) in gv.iter().zip(wv.iter()).enumerate() {
            match rel {
                None => assert_eq!(
                    *a as f32, *b as f32,
                    "output {} element {i} of case {}: got {a}, reference {b}",
                    w["name"], case["name"]
                ),
                Some(tol) => {
                    let scale = a.abs().max(b.abs()).max(1e-6);
                    assert!(
                        (a - b).abs() / scale <= tol || (a - b).abs() <= 1e-7,
                        "output {} element {i} of case {}: got {a}, reference {b}",
                        w["name"],
                        case["name"]
                    );
                }
            }
        }
    }
}

/// A NOTIFY_SOCKET of our own: collects every sd_notify datagram the daemon
/// sends, one entry per line ("READY=1", "STATUS=...", "WATCHDOG=1").
pub struct NotifySocket {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let now = Instant::now();
                let mut l = sink.lock().unwrap();
                for line in text.lines() {
                    l.push((now, line.to_string()));
                }
            }
        });
        NotifySocket {
            path,
            _dir: dir,
            lines,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Lines that start with `prefix`, with the time they arrived.
    pub fn timed(&self, prefix: &str) -> Vec<Instant> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.starts_with(prefix))
            .map(|(t, _)| *t)
            .collect()
    }

    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| l.as_str() == line).count()
    }

    pub fn wait_for(&self, line: &str, n: usize) {
        wait_until(
            &format!("{n} x {line:?} on the notify socket"),
            WAIT,
            || self.count(line) >= n,
        );
    }
}

/// The small dynamic-batch model on `in/dyn`, answering on
/// `out/{device_id}/dyn`: the cheapest model for lifecycle tests.
pub const DYN: &str = "\
[[models]]
name = \"dyn\"
path = \"{models}/dynamic_batch_f32.tflite\"
input_topic = \"in/dyn\"
output_topic = \"out/{device_id}/{model}\"
";

/// A valid payload for `DYN` with id `i`.
pub fn features(i: usize) -> String {
    serde_json::json!({"id": i, "data": [i as f64, 1, 2, 3, 4, 5, 6, 7]}).to_string()
}

/// sha256 of a shipped model file, as the daemon reports it.
pub fn model_sha256(file: &str) -> String {
    let out = Command::new("sha256sum")
        .arg(model(file))
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}

/// Whether an error message names `field` (quoted in any usual way).
pub fn names_field(e: &Value, field: &str) -> bool {
    let msg = e["message"].as_str().unwrap_or_default();
    ["'", "\"", "`"]
        .iter()
        .any(|q| msg.contains(&format!("{q}{field}{q}")))
}
