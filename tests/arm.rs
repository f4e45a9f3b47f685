//! ARM builds, proven to run: the stripped release binaries that
//! `scripts/build-arm.sh` makes (scripts/test.sh runs it before
//! `cargo test`), run under qemu-user 10.x (scripts/setup-deps.sh installs it
//! from bookworm-backports; bookworm's 7.2 crashes in LiteRT's CPU
//! detection), against a real Mosquitto on this host.
//!
//! - aarch64: the daemon serves the int8 accelerometer model and the
//!   multi-output models with the aarch64 libLiteRt.so, and every result
//!   equals the x86_64 reference (tests/fixtures) exactly for int8/uint8 and
//!   within 1e-5 for float32; emulated on two real board cores (Raspberry
//!   Pi 4's Cortex-A72, Pi 5's Cortex-A76), whose different CPU features
//!   make XNNPACK pick different kernels.
//! - armv7 (no LiteRT build exists): `inspect` and `check-config` work from
//!   the model files alone, and `run` fails with the documented message.
//! - Both: `inspect` reports the same tensors as LiteRT on x86_64, with and
//!   without a runtime library (the static flatbuffer reader).
//!
//! The binaries are found in `<target dir>/<triple>/release/`, or at
//! `$EDGE_INFER_AARCH64_BINARY` / `$EDGE_INFER_ARMV7_BINARY`.

mod common;

use std::io::Write;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Emulation is about 190x slower than native and these tests run in
/// parallel with the rest of the suite: generous, but bounded.
const ARM_WAIT: Duration = Duration::from_secs(240);

/// The aarch64 size budget (README, "Deploying to ARM").
const AARCH64_BUDGET: u64 = 8_000_000;

#[derive(Clone, Copy)]
struct Arm {
    triple: &'static str,
    /// `runtime/<arch>/` and the `host_arch()` name of the target.
    arch: &'static str,
    qemu: &'static str,
    sysroot: &'static str,
    env_override: &'static str,
    /// ELF e_machine.
    machine: u16,
}

const AARCH64: Arm = Arm {
    triple: "aarch64-unknown-linux-gnu",
    arch: "aarch64",
    qemu: "qemu-aarch64",
    sysroot: "/usr/aarch64-linux-gnu",
    env_override: "EDGE_INFER_AARCH64_BINARY",
    machine: 183, // EM_AARCH64
};

const ARMV7: Arm = Arm {
    triple: "armv7-unknown-linux-gnueabihf",
    arch: "armv7",
    qemu: "qemu-arm",
    sysroot: "/usr/arm-linux-gnueabihf",
    env_override: "EDGE_INFER_ARMV7_BINARY",
    machine: 40, // EM_ARM
};

impl Arm {
    /// The release binary; fails (never skips) with what to run when it is
    /// missing, and warns when it is older than the sources.
    fn binary(self) -> PathBuf {
        let bin = match std::env::var_os(self.env_override) {
            Some(p) => PathBuf::from(p),
            None => {
                // CARGO_BIN_EXE_edge-infer is <target dir>/<profile>/edge-infer.
                let host = daemon_binary();
                let target_dir = host
                    .parent()
                    .and_then(Path::parent)
                    .expect("target dir of the host binary");
                target_dir
                    .join(self.triple)
                    .join("release")
                    .join("edge-infer")
            }
        };
        assert!(
            bin.exists(),
            "{} is missing: run scripts/build-arm.sh (scripts/test.sh does, before cargo test)",
            bin.display()
        );
        static WARNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let mut warned = WARNED.lock().unwrap();
        if warned.contains(&bin) {
            return bin;
        }
        warned.push(bin.clone());
        if let Some(newer) = newer_source(&bin) {
            eprintln!(
                "warning: {} is older than {}; run scripts/build-arm.sh to test the current sources",
                bin.display(),
                newer.display()
            );
        }
        bin
    }

    /// `qemu-<arch> -L <sysroot> [-cpu CPU] BIN`, with a clean environment
    /// for the daemon's own variables.
    fn command(self, cpu: Option<&str>) -> Command {
        require_qemu(self.qemu);
        let mut cmd = Command::new(self.qemu);
        cmd.arg("-L").arg(self.sysroot);
        if let Some(cpu) = cpu {
            cmd.arg("-cpu").arg(cpu);
        }
        cmd.arg(self.binary())
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("EDGE_INFER_RUNTIME_LIBRARY");
        cmd
    }

    /// Runs a command of the ARM binary to completion.
    fn run(self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let mut cmd = self.command(None);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_to_exit(cmd, ARM_WAIT)
    }
}

fn require_qemu(qemu: &str) {
    let out = Command::new(qemu).arg("--version").output();
    let text = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => panic!(
            "{qemu} is not installed ({e}): run scripts/setup-deps.sh (the README's test command does)"
        ),
    };
    let major: u32 = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 10,
        "{qemu} 10.x is needed (older versions crash in LiteRT's CPU detection), found: {text}; run scripts/setup-deps.sh"
    );
}

/// A source file newer than `bin`, if any (a stale ARM build).
fn newer_source(bin: &Path) -> Option<PathBuf> {
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok()?;
    let mut stack = vec![
        repo().join("src"),
        repo().join("crates/model-runtime/src"),
        repo().join("Cargo.lock"),
    ];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.modified().ok()? > built {
            return Some(p);
        }
    }
    None
}

fn runtime_library(arm: Arm) -> PathBuf {
    let lib = repo().join("runtime").join(arm.arch).join("libLiteRt.so");
    assert!(
        lib.exists(),
        "{} is missing: run scripts/setup-deps.sh (it runs scripts/fetch-runtime.sh {})",
        lib.display(),
        arm.arch
    );
    lib
}

// ---------------------------------------------------------------------------
// Binaries

#[test]
fn arm_binaries_are_stripped_arm_elfs_within_budget() {
    for arm in [AARCH64, ARMV7] {
        let bin = arm.binary();
        let bytes = std::fs::read(&bin).expect("read binary");
        assert_eq!(
            &bytes[..4],
            b"\x7fELF",
            "{} is not an ELF file",
            bin.display()
        );
        let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
        assert_eq!(machine, arm.machine, "ELF machine of {}", bin.display());
        assert!(
            !bytes.windows(7).any(|w| w == b".symtab"),
            "{} has a symbol table: the release profile must strip it",
            bin.display()
        );
        let size = bytes.len() as u64;
        // Written to the stderr handle itself: libtest captures eprintln!
        // of passing tests, and the size belongs in every run's output.
        let _ = writeln!(
            std::io::stderr(),
            "{}: stripped release binary {} bytes ({:.2} MiB)",
            arm.triple,
            size,
            size as f64 / 1048576.0
        );
        if arm.arch == "aarch64" {
            assert!(
                size <= AARCH64_BUDGET,
                "the stripped aarch64 binary is {size} bytes, over its budget of {AARCH64_BUDGET} (8 MB)"
            );
        }
        let (code, out, err) = arm.run(&["--version"], &[]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            out.trim(),
            format!("edge-infer {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

// ---------------------------------------------------------------------------
// inspect: one set of tensor facts everywhere

const SHIPPED_MODELS: [&str; 8] = [
    "har_accel_int8.tflite",
    "har_accel_f32.tflite",
    "mobilenet_v2_int8.tflite",
    "multi_io_f32.tflite",
    "multi_io_uint8.tflite",
    "dynamic_batch_f32.tflite",
    "lookup_int32.tflite",
    "spin_int32.tflite",
];

/// The "inputs:"/"outputs:" part of `inspect` output, and its runtime line.
fn tensor_lines(stdout: &str) -> (String, String) {
    let runtime = stdout
        .lines()
        .find(|l| l.starts_with("runtime:"))
        .unwrap_or_else(|| panic!("no runtime line in:\n{stdout}"))
        .to_string();
    let start = stdout
        .find("inputs:")
        .unwrap_or_else(|| panic!("no inputs in:\n{stdout}"));
    (stdout[start..].to_string(), runtime)
}

/// `inspect` on x86_64 with LiteRT is the reference; the static reader
/// (no runtime library) on x86_64 and on armv7, and LiteRT on aarch64 under
/// qemu, must print exactly the same tensors, for every shipped model.
#[test]
fn inspect_reports_the_same_tensors_everywhere() {
    require_runtime();
    for file in SHIPPED_MODELS {
        let path = model(file);
        let path = path.to_str().unwrap();
        for batch in ["1", "3"] {
            let args = ["inspect", path, "--batch", batch];
            let (code, out, err) = run_cli(&args, &[]);
            assert_eq!(code, Some(0), "x86_64 inspect {file}: {err}");
            let (reference, rt) = tensor_lines(&out);
            assert!(rt.contains("(litert)"), "{rt}");

            let (code, out, err) = run_cli(
                &args,
                &[("EDGE_INFER_RUNTIME_LIBRARY", "/nonexistent/libLiteRt.so")],
            );
            assert_eq!(code, Some(0), "x86_64 static inspect {file}: {err}");
            let (got, rt) = tensor_lines(&out);
            assert!(rt.contains("none loaded: read from the file"), "{rt}");
            assert!(
                err.contains("showing what the model file declares instead"),
                "{err}"
            );
            assert_eq!(got, reference, "x86_64 static reader vs LiteRT, {file}");

            let (code, out, err) = ARMV7.run(&args, &[]);
            assert_eq!(code, Some(0), "armv7 inspect {file}: {err}");
            let (got, rt) = tensor_lines(&out);
            assert!(rt.contains("none loaded"), "{rt}");
            assert_eq!(
                got, reference,
                "armv7 static reader vs x86_64 LiteRT, {file}"
            );
        }
        let lib = runtime_library(AARCH64);
        let (code, out, err) =
            AARCH64.run(&["inspect", path, "--runtime", lib.to_str().unwrap()], &[]);
        assert_eq!(code, Some(0), "aarch64 inspect {file}: {err}");
        let (got, rt) = tensor_lines(&out);
        assert!(rt.contains("(litert)"), "{rt}");
        let (_, reference_out, _) = run_cli(&["inspect", path], &[]);
        assert_eq!(
            got,
            tensor_lines(&reference_out).0,
            "aarch64 LiteRT vs x86_64 LiteRT, {file}"
        );
    }
}

// ---------------------------------------------------------------------------
// armv7: no runtime library

/// A config with the har (labels, top_k) and multi_io models, no runtime.
fn armv7_config(dir: &Path, labels: &str) -> String {
    let labels_path = dir.join("har.labels");
    std::fs::write(&labels_path, labels).unwrap();
    let text = config(
        1883,
        "pi-zero",
        "",
        &format!(
            "[[models]]\nname = \"har\"\npath = \"{{models}}/har_accel_int8.tflite\"\nlabels = \"{}\"\ntop_k = 2\ninput_topic = \"sensors/+/accel\"\n\n[[models]]\nname = \"multi\"\npath = \"{{models}}/multi_io_uint8.tflite\"\ninput_topic = \"sensors/+/multi\"\n",
            labels_path.display()
        ),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The documented armv7 message (README "Deploying to ARM", locate.rs).
fn assert_armv7_runtime_message(err: &str) {
    for needle in [
        "no TFLite/LiteRT runtime library could be loaded; tried:",
        "libtensorflowlite_c.so (system linker path)",
        "no LiteRT build exists for armv7",
        "set `library = \"/path/to/libtensorflowlite_c.so\"` under [runtime] in the config",
        "EDGE_INFER_RUNTIME_LIBRARY=/path/to/libtensorflowlite_c.so",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn armv7_checks_config_and_models_without_a_runtime_and_run_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = armv7_config(dir.path(), "idle\nwalking\nrunning\nfall\n");

    // check-config: everything checked from the files, then exit 3.
    let (code, out, err) = ARMV7.run(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, Some(3), "stdout:\n{out}\nstderr:\n{err}");
    for needle in [
        "device_id: pi-zero",
        "runtime:   none loaded",
        "model har:",
        "  input:    'accel' 1x128x3 int8 scale=0.045965016 zero_point=-1",
        "  output:   'probs' 1x4 int8 scale=0.00390625 zero_point=-128",
        "  labels:   4 (idle, walking, running, fall)",
        "  top_k:    2",
        "model multi:",
        "  input:    'temp' 1x4 uint8 scale=0.0077673453 zero_point=128",
        "  input:    'accel' 1x16x3 uint8 scale=0.07272554 zero_point=132",
        "  output:   'class' 1x3 uint8 scale=0.00390625 zero_point=0",
        "  output:   'anomaly' 1x1 uint8 scale=0.00390625 zero_point=0",
        "checked from the file (not loaded: no runtime library)",
        "not ready: config and 2 model file(s) are valid, but no runtime library could be loaded",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert_armv7_runtime_message(&err);

    // A config problem found from the files alone is still exit 2.
    let bad = armv7_config(dir.path(), "idle\nwalking\nrunning\n");
    let (code, _, err) = ARMV7.run(&["check-config", "--config", &bad], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("models[0].labels")
            && err.contains("has 3 labels")
            && err.contains("4 classes"),
        "{err}"
    );
    assert!(err.contains("no LiteRT build exists for armv7"), "{err}");

    // A corrupt model is a model problem, not a crash.
    let truncated = dir.path().join("truncated.tflite");
    let whole = std::fs::read(model("har_accel_int8.tflite")).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 3]).unwrap();
    let (code, out, err) = ARMV7.run(&["inspect", truncated.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("not a valid TFLite flatbuffer"), "{err}");

    // run: the documented message, exit 3, nothing else started.
    let (code, out, err) = ARMV7.run(&["run", "--config", &cfg], &[]);
    assert_eq!(code, Some(3), "stdout:\n{out}\nstderr:\n{err}");
    assert_armv7_runtime_message(&err);
    assert!(!err.contains("ready:"), "{err}");

    // A configured library that is not there is named as such.
    let (code, _, err) = ARMV7.run(
        &["run", "--config", &cfg],
        &[(
            "EDGE_INFER__RUNTIME__LIBRARY",
            "/opt/vendor/libtensorflowlite_c.so",
        )],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("/opt/vendor/libtensorflowlite_c.so (config runtime.library): no such file"),
        "{err}"
    );
}

#[test]
fn aarch64_without_a_runtime_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = armv7_config(dir.path(), "idle\nwalking\nrunning\nfall\n");
    let (code, out, err) = AARCH64.run(
        &["check-config", "--config", &cfg],
        &[("EDGE_INFER_RUNTIME_LIBRARY", "/nonexistent/libLiteRt.so")],
    );
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(
        out.contains("not ready: config and 2 model file(s) are valid"),
        "{out}"
    );
    assert!(
        err.contains("scripts/fetch-runtime.sh aarch64"),
        "missing the aarch64 hint in:\n{err}"
    );
}

// ---------------------------------------------------------------------------
// aarch64: real inference under emulation, compared with x86_64

/// Starts the ARM daemon under qemu on `config_text` and waits until it
/// is ready; under emulation it has `ARM_WAIT` for that and for its exit.
fn start_arm_daemon(arm: Arm, cpu: Option<&str>, config_text: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text).expect("write config");
    let mut cmd = arm.command(cpu);
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null());
    let start = Instant::now();
    let d = Daemon::spawn_command(dir, cmd).with_limit(ARM_WAIT);
    d.wait_for_log("ready:");
    eprintln!(
        "{}{}: loaded, warmed and subscribed in {:.1} s under emulation",
        arm.triple,
        cpu.map(|c| format!(" (-cpu {c})")).unwrap_or_default(),
        start.elapsed().as_secs_f64()
    );
    d
}

/// (model name in the config, model file, fixture, float32 tolerance).
const SERVED: [(&str, &str, &str, Option<f64>); 3] = [
    ("har", "har_accel_int8.tflite", "har_accel_int8.json", None),
    (
        "multi_u8",
        "multi_io_uint8.tflite",
        "multi_io_uint8.json",
        None,
    ),
    (
        "multi_f32",
        "multi_io_f32.tflite",
        "multi_io_f32.json",
        Some(1e-5),
    ),
];

/// Largest |got - reference| over every output value of a result.
fn max_deviation(result: &Value, case: &Value) -> f64 {
    let mut max = 0f64;
    for (g, w) in result["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(case["outputs"].as_array().unwrap())
    {
        for (a, b) in g["values"]
            .as_array()
            .unwrap()
            .iter()
            .zip(w["values"].as_array().unwrap())
        {
            max = max.max((a.as_f64().unwrap() - b.as_f64().unwrap()).abs());
        }
    }
    max
}

/// `gpu_first`: the float model prefers the gpu, which the aarch64 GPU
/// accelerator library registers but cannot open under qemu (no aarch64
/// libvulkan.so.1): it must fall back to the cpu cleanly, with the reason.
fn serve_on_aarch64(cpu: &str, gpu_first: bool) {
    let lib = runtime_library(AARCH64);
    let broker = Broker::start();
    let mut models = String::new();
    for (name, file, _, tol) in SERVED {
        let accelerators = if gpu_first && tol.is_some() {
            "accelerators = [\"gpu\", \"cpu\"]\n"
        } else {
            ""
        };
        models.push_str(&format!(
            "[[models]]\nname = \"{name}\"\npath = \"{{models}}/{file}\"\ninput_topic = \"in/{name}\"\noutput_topic = \"out/{{device_id}}/{{model}}\"\n{accelerators}\n"
        ));
    }
    let text = config(
        broker.port,
        "arm64",
        &format!("[runtime]\nlibrary = \"{}\"\n", lib.display()),
        &models,
    );
    let daemon = start_arm_daemon(AARCH64, Some(cpu), &text);
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("runtime library {} (litert)", lib.display())),
        "{log}"
    );
    if gpu_first {
        assert!(
            log.contains("accelerator gpu (") && log.contains("libvulkan.so.1"),
            "{log}"
        );
    }

    let c = TestClient::connect(broker.port);
    c.subscribe("out/arm64/+");
    c.subscribe("edge-infer/arm64/errors");
    let mut expected = Vec::new();
    for (name, _, fixture_file, tol) in SERVED {
        let fx = fixture(fixture_file);
        let multi = fx["signature"]["inputs"].as_array().unwrap().len() > 1;
        for case in fx["cases"].as_array().unwrap() {
            let id = format!("{name}/{}", case["name"].as_str().unwrap());
            let inputs = case_inputs(case);
            let payload = if multi {
                json!({"id": id, "inputs": inputs})
            } else {
                json!({"id": id, "data": inputs[0]})
            };
            c.publish(&format!("in/{name}"), payload.to_string());
            expected.push((id, case.clone(), tol));
        }
    }
    let started = Instant::now();
    let mut received = Vec::new();
    while received.len() < expected.len() {
        match c.recv_within(ARM_WAIT.saturating_sub(started.elapsed())) {
            Some(m) => received.push(m),
            None => panic!(
                "{} of {} results within {ARM_WAIT:?}:\n{}",
                received.len(),
                expected.len(),
                daemon.log_text()
            ),
        }
    }
    let mut worst_f32 = 0f64;
    for m in &received {
        let r = m.json();
        assert!(
            m.topic.starts_with("out/arm64/"),
            "not a result on {}: {r}",
            m.topic
        );
        let id = r["id"].as_str().unwrap();
        let (_, case, tol) = expected
            .iter()
            .find(|(e, _, _)| e == id)
            .unwrap_or_else(|| panic!("unexpected id {id}"));
        // Exact (as float32) for int8/uint8; within 1e-5 for float32.
        assert_outputs(&r, case, *tol);
        assert_eq!(r["accelerator"], "cpu", "{r}");
        if tol.is_some() {
            worst_f32 = worst_f32.max(max_deviation(&r, case));
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "aarch64 (-cpu {cpu}): {} results equal the x86_64 references (int8/uint8 exactly; float32 max |difference| {worst_f32:e}) in {:.1} s",
        received.len(),
        started.elapsed().as_secs_f64()
    );
    let (code, log) = daemon.terminate();
    assert_eq!(
        code,
        Some(0),
        "the ARM daemon did not drain cleanly:\n{log}"
    );
}

#[test]
fn aarch64_daemon_on_a_cortex_a72_serves_like_x86_64() {
    serve_on_aarch64("cortex-a72", false);
}

#[test]
fn aarch64_daemon_on_a_cortex_a76_serves_like_x86_64_and_falls_back_from_the_gpu() {
    serve_on_aarch64("cortex-a76", true);
}
