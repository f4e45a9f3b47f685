//! The Prometheus endpoint (`[metrics]`): `/metrics` scraped over plain
//! HTTP from a daemon serving real messages through a real broker, checked
//! by Prometheus's own parser and linter (`promtool check metrics`, from
//! Debian's `prometheus` package, which scripts/setup-deps.sh installs),
//! then read value by value: counters move by exactly the messages sent,
//! histogram counts match the results. Also the refusals: other paths and
//! methods, a bad listen address, a port already taken, a reload that tries
//! to move the endpoint.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::*;

/// One HTTP/1.1 request over a fresh connection: (status, head, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the metrics port {port}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: tests/metrics.rs\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read the response to {method} {path}: {e}"));
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn scrape(port: u16) -> String {
    let (status, head, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "the Prometheus text format's content type: {head}"
    );
    promtool_check(&body);
    body
}

/// `promtool check metrics`: Prometheus's own parser of the text format,
/// plus its lint of names, units and help (exit 0 only when both pass).
fn promtool_check(exposition: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is needed to check the exposition format ({e}): run scripts/setup-deps.sh, \
             or `apt-get install --no-install-recommends prometheus` (Debian's package has it)"
        ),
    };
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition ({}):\n{}{}\n--- exposition ---\n{exposition}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Samples by `name{label="value",...}` with labels in sorted order. The
/// syntax was checked by promtool first; this only reads it back.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in exposition.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line:?}")),
        };
        let key = match series.split_once('{') {
            None => series.to_string(),
            Some((name, rest)) => {
                let labels = rest.strip_suffix('}').expect("closing brace");
                let mut pairs = parse_labels(labels);
                pairs.sort();
                let inner: Vec<String> =
                    pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                format!("{name}{{{}}}", inner.join(","))
            }
        };
        assert!(
            out.insert(key, value).is_none(),
            "a repeated series: {line}"
        );
    }
    out
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        assert_eq!(chars.next(), Some('"'), "a quoted label value in {s:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("a dangling escape in {s:?}"),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_string(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| {
        let near: Vec<&String> = m
            .keys()
            .filter(|k| k.starts_with(key.split('{').next().unwrap_or(key)))
            .collect();
        panic!("no series {key}; series of that name: {near:?}")
    })
}

/// A `[metrics]` section on a free port.
fn metrics_section(port: u16) -> String {
    format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
}

const BUCKETS: [&str; 18] = [
    "5e-5", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "+Inf",
];

/// The `le` labels as the encoder writes them (Go's float format).
fn bucket_keys(m: &BTreeMap<String, f64>, prefix: &str) -> Vec<(f64, f64)> {
    let mut found: Vec<(f64, f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| {
            let le = k.split("le=\"").nth(1).and_then(|r| r.split('"').next());
            let le = match le {
                Some("+Inf") => f64::INFINITY,
                Some(x) => x.parse().unwrap_or_else(|_| panic!("le of {k}")),
                None => panic!("no le in {k}"),
            };
            (le, *v)
        })
        .collect();
    found.sort_by(|a, b| a.0.total_cmp(&b.0));
    found
}

#[test]
fn metrics_count_what_was_served_and_pass_promtool() {
    let broker = Broker::start();
    let port = free_port();
    let d = Daemon::start(&config(broker.port, "m1", &metrics_section(port), DYN));
    d.wait_for_log(&format!(
        "metrics: serving Prometheus scrapes on http://127.0.0.1:{port}/metrics"
    ));

    // Before any message: every counter at zero, and already valid.
    let before = samples(&scrape(port));
    assert_eq!(get(&before, "edge_infer_results_total{model=\"dyn\"}"), 0.0);
    assert_eq!(
        get(
            &before,
            "edge_infer_result_latency_seconds_count{model=\"dyn\"}"
        ),
        0.0
    );

    let c = TestClient::connect(broker.port);
    c.subscribe("out/m1/#");
    c.subscribe("edge-infer/m1/errors");
    const GOOD: usize = 7;
    const BAD_JSON: usize = 3;
    const BAD_SHAPE: usize = 2;
    for i in 0..GOOD {
        c.publish("in/dyn", features(i));
    }
    for _ in 0..BAD_JSON {
        c.publish("in/dyn", "{not json");
    }
    for i in 0..BAD_SHAPE {
        c.publish("in/dyn", format!("{{\"id\": {i}, \"data\": [1, 2, 3]}}"));
    }
    let answers = c.recv_n(GOOD + BAD_JSON + BAD_SHAPE);
    let results: Vec<_> = answers
        .iter()
        .filter(|r| r.topic == "out/m1/dyn")
        .map(|r| r.json())
        .collect();
    assert_eq!(results.len(), GOOD, "{answers:?}");
    let accelerator = results[0]["accelerator"].as_str().expect("accelerator");

    // The answers reached the test client; the broker's PUBACKs for them
    // may still be on their way to the daemon.
    let mut body = String::new();
    wait_until("every answer confirmed by the broker", WAIT, || {
        body = scrape(port);
        get(&samples(&body), "edge_infer_answers_confirmed_total")
            == (GOOD + BAD_JSON + BAD_SHAPE) as f64
    });
    let m = samples(&body);
    let dyn_ = "{model=\"dyn\"}";
    assert_eq!(
        get(&m, &format!("edge_infer_messages_received_total{dyn_}")),
        (GOOD + BAD_JSON + BAD_SHAPE) as f64
    );
    assert_eq!(
        get(&m, &format!("edge_infer_results_total{dyn_}")),
        GOOD as f64
    );
    assert_eq!(
        get(
            &m,
            "edge_infer_errors_total{code=\"bad_json\",model=\"dyn\"}"
        ),
        BAD_JSON as f64
    );
    assert_eq!(
        get(
            &m,
            "edge_infer_errors_total{code=\"bad_shape\",model=\"dyn\"}"
        ),
        BAD_SHAPE as f64
    );
    assert_eq!(
        get(
            &m,
            "edge_infer_errors_total{code=\"overloaded\",model=\"dyn\"}"
        ),
        0.0
    );
    assert!(
        !body.contains("code=\"no_model\""),
        "no_model is never a model's error"
    );
    assert_eq!(get(&m, &format!("edge_infer_queue_depth{dyn_}")), 0.0);
    assert_eq!(get(&m, &format!("edge_infer_queue_capacity{dyn_}")), 4096.0);

    // Histograms: one observation per result, per stage; cumulative
    // buckets that end at the count; every bound from 50 µs to 10 s.
    let total = format!("edge_infer_result_latency_seconds_count{dyn_}");
    assert_eq!(get(&m, &total), GOOD as f64);
    let buckets = bucket_keys(&m, "edge_infer_result_latency_seconds_bucket{");
    let les: Vec<String> = buckets
        .iter()
        .map(|(le, _)| {
            if le.is_infinite() {
                "+Inf".into()
            } else {
                format!("{le:?}")
            }
        })
        .collect();
    let want: Vec<String> = BUCKETS
        .iter()
        .map(|b| match *b {
            "+Inf" => "+Inf".to_string(),
            x => format!("{:?}", x.parse::<f64>().unwrap()),
        })
        .collect();
    assert_eq!(les, want);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().map(|b| b.1), Some(GOOD as f64));
    let sum = get(&m, &format!("edge_infer_result_latency_seconds_sum{dyn_}"));
    assert!(sum > 0.0 && sum < 60.0, "sum of {GOOD} latencies: {sum}");
    for stage in ["queue", "pre", "invoke", "post"] {
        let labels = format!("{{model=\"dyn\",stage=\"{stage}\"}}");
        assert_eq!(
            get(
                &m,
                &format!("edge_infer_stage_latency_seconds_count{labels}")
            ),
            GOOD as f64,
            "stage {stage}"
        );
        let inf = format!(
            "edge_infer_stage_latency_seconds_bucket{{le=\"+Inf\",model=\"dyn\",stage=\"{stage}\"}}"
        );
        assert_eq!(get(&m, &inf), GOOD as f64, "stage {stage}");
    }
    // A model's invoke takes longer than nothing, and less than the total.
    let invoke_sum = get(
        &m,
        "edge_infer_stage_latency_seconds_sum{model=\"dyn\",stage=\"invoke\"}",
    );
    assert!(
        invoke_sum > 0.0 && invoke_sum <= sum,
        "{invoke_sum} vs {sum}"
    );

    // The accelerator that served the results, as an info-style gauge.
    assert_eq!(
        get(
            &m,
            &format!("edge_infer_model_accelerator{{accelerator=\"{accelerator}\",model=\"dyn\"}}")
        ),
        1.0
    );
    assert_eq!(
        get(&m, &format!("edge_infer_accelerator_switches_total{dyn_}")),
        0.0
    );

    // Daemon-wide and broker figures.
    let up = |link: &str| {
        get(
            &m,
            &format!(
                "edge_infer_broker_up{{broker=\"mqtt://127.0.0.1:{}\",link=\"{link}\"}}",
                broker.port
            ),
        )
    };
    assert_eq!(up("input"), 1.0);
    assert_eq!(up("output"), 1.0);
    assert_eq!(get(&m, "edge_infer_unrouted_messages_total"), 0.0);
    assert_eq!(
        get(&m, "edge_infer_answers_confirmed_total"),
        (GOOD + BAD_JSON + BAD_SHAPE) as f64,
        "every answer confirmed by the broker (QoS 1)"
    );
    assert!(get(&m, "edge_infer_broker_connections_total") >= 1.0);
    assert_eq!(get(&m, "edge_infer_outbox_records"), 0.0);
    assert_eq!(
        get(&m, "edge_infer_outbox_drops_total{reason=\"full\"}"),
        0.0
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        get(
            &m,
            &format!("edge_infer_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );

    // Process metrics, against what /proc says of the daemon's pid.
    let rss = get(&m, "process_resident_memory_bytes");
    assert!(rss > 1e6, "resident memory {rss}");
    let fds = get(&m, "process_open_fds");
    let listed = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map(|r| r.count() as f64)
        .expect("the daemon's /proc/PID/fd");
    assert!(
        fds >= 5.0 && (fds - listed).abs() < 10.0,
        "fds {fds} vs /proc {listed}"
    );
    assert!(get(&m, "process_max_fds") >= fds);
    // The kernel's count in clock ticks (100 a second), read after the
    // scrape: as much or a little more.
    let cpu = get(&m, "process_cpu_seconds_total");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).expect("/proc/PID/stat");
    let after_name: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 =
        after_name[11].parse::<f64>().unwrap() + after_name[12].parse::<f64>().unwrap();
    let proc_cpu = ticks / 100.0;
    assert!(
        cpu <= proc_cpu + 1e-6 && proc_cpu - cpu < 0.25,
        "process_cpu_seconds_total {cpu} vs /proc {proc_cpu}"
    );
    let start = get(&m, "process_start_time_seconds");
    let now = unix_now();
    assert!(
        start <= now + 1.0 && now - start < 600.0,
        "start {start}, now {now}"
    );
    assert!(get(&m, "process_virtual_memory_bytes") >= rss);

    // A second scrape works and nothing went backwards.
    let again = samples(&scrape(port));
    for (k, v) in &m {
        if k.ends_with("_total") || k.contains("_count{") {
            assert!(
                again.get(k).is_some_and(|w| w >= v),
                "{k} went from {v} to {:?}",
                again.get(k)
            );
        }
    }

    // Only GET (and HEAD) /metrics.
    let (status, _, body) = http(port, "GET", "/");
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = http(port, "GET", "/metrics/extra");
    assert_eq!(status, 404);
    let (status, head, _) = http(port, "POST", "/metrics");
    assert_eq!(status, 405, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );
    let (status, _, body) = http(port, "HEAD", "/metrics");
    assert_eq!(status, 200);
    assert!(body.is_empty(), "HEAD has no body: {body:?}");

    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn reload_adds_models_to_the_metrics_and_refuses_to_move_the_endpoint() {
    let broker = Broker::start();
    let port = free_port();
    let section = metrics_section(port);
    let d = Daemon::start(&config(broker.port, "m2", &section, DYN));
    // In the background, so the scrape shows its worker's class too.
    let second = DYN
        .replace("\"dyn\"", "\"dyn2\"")
        .replace("in/dyn", "in/dyn2")
        + "worker_priority = \"background\"\n";

    // A second model: it shows up in the next scrape.
    let models = format!("{DYN}\n{second}");
    d.rewrite_config(&config(broker.port, "m2", &section, &models));
    d.signal("HUP");
    d.wait_for_log("reload: 1 model(s) kept (dyn), 1 loaded (dyn2)");
    let c = TestClient::connect(broker.port);
    c.subscribe("out/m2/#");
    c.publish("in/dyn2", features(1));
    assert_eq!(c.recv().topic, "out/m2/dyn2");
    let m = samples(&scrape(port));
    assert_eq!(get(&m, "edge_infer_results_total{model=\"dyn2\"}"), 1.0);
    assert_eq!(get(&m, "edge_infer_results_total{model=\"dyn\"}"), 0.0);
    // Its worker answered, so it had entered its class.
    for (name, background) in [("dyn", 0.0), ("dyn2", 1.0)] {
        let labels = format!("{{model=\"{name}\"}}");
        assert_eq!(
            get(&m, &format!("edge_infer_model_background_workers{labels}")),
            background,
            "{name}"
        );
        assert_eq!(
            get(
                &m,
                &format!("edge_infer_model_priority_refused_workers{labels}")
            ),
            0.0,
            "{name}"
        );
    }

    // Another port: refused, and the endpoint stays where it was.
    let other = free_port();
    d.rewrite_config(&config(broker.port, "m2", &metrics_section(other), &models));
    d.signal("HUP");
    d.wait_for_log("metrics: cannot change on reload; restart the service");
    let m = samples(&scrape(port));
    assert_eq!(get(&m, "edge_infer_results_total{model=\"dyn2\"}"), 1.0);
    assert!(
        TcpStream::connect(("127.0.0.1", other)).is_err(),
        "nothing listens on the refused port {other}"
    );
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn a_bad_listen_address_is_a_config_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = config(1883, "m3", "[metrics]\nlisten = \"localhost:9464\"\n", DYN);
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) =
        run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "metrics.listen: expected an IP address and port such as \"127.0.0.1:9464\" or \"[::1]:9464\", got \"localhost:9464\""
        ),
        "{stderr}"
    );

    // check-config says where the endpoint will be, or that it is off.
    let on = config(1883, "m3", "[metrics]\nlisten = \"127.0.0.1:9555\"\n", DYN);
    std::fs::write(&path, on).unwrap();
    let (code, stdout, stderr) =
        run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("metrics:   http://127.0.0.1:9555/metrics (Prometheus)"),
        "{stdout}"
    );
    std::fs::write(&path, config(1883, "m3", "", DYN)).unwrap();
    let (_, stdout, _) = run_cli(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert!(stdout.contains("metrics:   off"), "{stdout}");
}

#[test]
fn a_port_in_use_stops_the_start_with_a_clear_error() {
    let broker = Broker::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let d = Daemon::spawn(&config(broker.port, "m4", &metrics_section(port), DYN), &[]);
    let (code, log) = d.wait_exit();
    // exit::FAILURE: the daemon could not start serving.
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "cannot listen on 127.0.0.1:{port} for Prometheus scrapes (metrics.listen): Address already in use"
        )),
        "{log}"
    );
    assert!(log.contains("set [metrics] listen to a free port"), "{log}");
    assert!(!log.contains("ready:"), "{log}");
    drop(taken);
}

/// Every query of the example Grafana dashboard parses as PromQL
/// (`promtool check rules` on them as recording rules, with Grafana's
/// variables filled in) and names only metrics a running daemon exports
/// and the README lists.
#[test]
fn the_grafana_dashboard_queries_are_valid_promql_over_our_metrics() {
    let path = repo().join("docs/grafana/edge-infer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: '{}'\n",
            e.replace('\'', "''")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("promtool is needed ({e}): run scripts/setup-deps.sh"));
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The metric names the queries and the variables use, against what a
    // daemon exports before any message (a name with samples; a gauge or
    // counter family, whose `# TYPE` line has the samples' name; or a
    // histogram family for its `_bucket`, `_count`, `_sum`) and the
    // README's list.
    let broker = Broker::start();
    let port = free_port();
    let d = Daemon::start(&config(broker.port, "m5", &metrics_section(port), DYN));
    d.wait_for_log(&format!(
        "metrics: serving Prometheus scrapes on http://127.0.0.1:{port}/metrics"
    ));
    let exposition = scrape(port);
    let kinds: BTreeMap<&str, &str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let samples: Vec<&str> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let exported = |word: &str| {
        let of = |suffix: &str, kind: &str| {
            word.strip_suffix(suffix)
                .is_some_and(|f| kinds.get(f) == Some(&kind))
        };
        samples.contains(&word)
            || matches!(kinds.get(word), Some(&"gauge" | &"counter"))
            || ["_bucket", "_count", "_sum"]
                .iter()
                .any(|s| of(s, "histogram"))
    };
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let variables: Vec<String> = dash["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["definition"].as_str().map(str::to_string))
        .collect();
    assert!(!variables.is_empty(), "the dashboard's $instance variable");
    for e in exprs.iter().chain(&variables) {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("edge_infer_") || word.starts_with("process_") {
                assert!(
                    exported(word),
                    "the dashboard uses {word}, which the daemon does not export:\n{exposition}"
                );
                let base = word
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum");
                assert!(
                    readme.contains(base),
                    "the dashboard uses {word}, which README does not list"
                );
            }
        }
    }
    let (code, log) = d.terminate();
    assert_eq!(code, Some(0), "{log}");
}
