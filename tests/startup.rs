//! Startup failures end with a clear message naming the file or key and a
//! non-zero exit status: 2 for config and model problems, 3 for a missing
//! runtime library. Also check-config and inspect.

mod common;

use common::*;

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const HAR: &str = "\
[[models]]
name = \"har\"
path = \"{models}/har_accel_int8.tflite\"
labels = \"{models}/har_accel.labels\"
input_topic = \"sensors/+/accel\"
";

#[test]
fn check_config_prints_a_summary() {
    require_runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &config(1883, "gw-1", "", HAR));
    let (code, out, err) = run_cli(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "device_id: gw-1",
        "mqtt://127.0.0.1:1883",
        "libLiteRt.so (litert)",
        "sensors/+/accel -> edge-infer/{device_id}/{model}/result",
        "'accel' 1x128x3 int8 scale=0.045965016 zero_point=-1",
        "'probs' 1x4 int8 scale=0.00390625 zero_point=-128",
        "labels:   4 (idle, walking, running, fall)",
        "limits:    max_payload_bytes=1048576 max_model_bytes=536870912 max_labels_bytes=1048576",
        "ok: 1 model(s) ready",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn inspect_lists_tensors_with_quantization_and_dynamic_shapes() {
    require_runtime();
    let m = model("multi_io_uint8.tflite");
    let (code, out, err) = run_cli(&["inspect", m.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("[0] 'temp' 1x4 uint8 scale=0.0077673453 zero_point=128"),
        "{out}"
    );
    assert!(out.contains("[1] 'accel' 1x16x3 uint8"), "{out}");
    assert!(out.contains("[1] 'anomaly' 1x1 uint8"), "{out}");
    let m = model("dynamic_batch_f32.tflite");
    let (_, out, _) = run_cli(&["inspect", m.to_str().unwrap()], &[]);
    assert!(
        out.contains("'features' 1x8 float32 (shape signature [-1, 8])"),
        "{out}"
    );
}

#[test]
fn missing_model_file_names_the_key_and_the_path() {
    require_runtime();
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        1883,
        "gw",
        "",
        &HAR.replace("har_accel_int8.tflite", "nope.tflite"),
    );
    let cfg = write_config(dir.path(), &text);
    for cmd in ["run", "check-config"] {
        let (code, _, err) = run_cli(&[cmd, "--config", &cfg], &[]);
        assert_eq!(code, Some(2), "{cmd}: {err}");
        assert!(
            err.contains("models[0].path: cannot read model file"),
            "{err}"
        );
        assert!(err.contains("nope.tflite"), "{err}");
    }
}

#[test]
fn corrupt_and_truncated_models_are_rejected_with_the_reason() {
    require_runtime();
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.tflite");
    std::fs::write(&garbage, b"this is not a model at all, just text").unwrap();
    let truncated = dir.path().join("truncated.tflite");
    let whole = std::fs::read(model("har_accel_int8.tflite")).unwrap();
    std::fs::write(&truncated, &whole[..whole.len() / 3]).unwrap();
    let empty = dir.path().join("empty.tflite");
    std::fs::write(&empty, b"").unwrap();
    for (file, why) in [
        (&garbage, "not a TFLite flatbuffer"),
        (&truncated, "the runtime rejected the model file"),
        (&empty, "too short to be a TFLite model"),
    ] {
        let text = config(
            1883,
            "gw",
            "",
            &HAR.replace("{models}/har_accel_int8.tflite", file.to_str().unwrap()),
        );
        let cfg = write_config(dir.path(), &text);
        let (code, _, err) = run_cli(&["run", "--config", &cfg], &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("models[0].path") && err.contains(why),
            "{why}: {err}"
        );
    }
}

#[test]
fn bad_config_lists_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
device_id = \"bad/id\"
[mqtt]
port = 0
keep_alive_secs = 1
[[models]]
name = \"a\"
path = \"a.tflite\"
input_topic = \"x/#/y\"
[[models]]
name = \"b\"
path = \"b.tflite\"
input_topic = \"x/+\"
output_topic = \"y/{2}\"
overflow = \"block\"
";
    let cfg = write_config(dir.path(), text);
    let (code, _, err) = run_cli(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, Some(2), "{err}");
    for key in [
        "device_id:",
        "mqtt.port: must be between 1 and 65535, got 0",
        "mqtt.keep_alive_secs:",
        "models[0].input_topic: '#' must be the last level",
        "models[1].output_topic: {2} refers to '+' wildcard number 2",
        "models[1].overflow: expected \"reject_new\" or \"drop_oldest\", got \"block\"",
    ] {
        assert!(err.contains(key), "missing {key:?} in:\n{err}");
    }
    assert!(err.contains("6 problems"), "{err}");
}

#[test]
fn typos_and_wrong_types_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[mqtt]\nprot = 1884\n");
    let (code, _, err) = run_cli(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("prot"), "{err}");
    let cfg = write_config(dir.path(), "[mqtt]\nport = \"high\"\n");
    let (code, _, err) = run_cli(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("mqtt.port") && err.contains("high"), "{err}");
    let (code, _, err) = run_cli(&["run", "--config", "/nonexistent/edge.toml"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("/nonexistent/edge.toml") && err.contains("no such file"),
        "{err}"
    );
}

#[test]
fn labels_that_do_not_fit_the_output_are_rejected() {
    require_runtime();
    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("three.labels");
    std::fs::write(&labels, "a\nb\nc\n").unwrap();
    let text = config(
        1883,
        "gw",
        "",
        &HAR.replace("{models}/har_accel.labels", labels.to_str().unwrap()),
    );
    let cfg = write_config(dir.path(), &text);
    let (code, _, err) = run_cli(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("models[0].labels")
            && err.contains("has 3 labels, but output 'probs' (1x4) has 4 classes"),
        "{err}"
    );
}

#[test]
fn configured_runtime_library_that_does_not_exist_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(
        1883,
        "gw",
        "[runtime]\nlibrary = \"/opt/nowhere/libLiteRt.so\"",
        HAR,
    );
    let cfg = write_config(dir.path(), &text);
    let (code, _, err) = run_cli(&["run", "--config", &cfg], &[]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("/opt/nowhere/libLiteRt.so (config runtime.library): no such file"),
        "{err}"
    );
    assert!(err.contains("scripts/fetch-runtime.sh"), "{err}");
}

#[test]
fn no_runtime_anywhere_lists_every_place_tried() {
    // A copy of the binary outside the checkout finds no runtime/ folder.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("edge-infer");
    std::fs::copy(daemon_binary(), &exe).unwrap();
    let cfg = write_config(dir.path(), &config(1883, "gw", "", HAR));
    // A test thread that forks while the copy is still open for writing
    // makes exec fail with ETXTBSY until that child execs; retry that only.
    let start = std::time::Instant::now();
    let out = loop {
        match std::process::Command::new(&exe)
            .args(["run", "--config", &cfg])
            .env_remove("EDGE_INFER_RUNTIME_LIBRARY")
            .env_remove("LD_LIBRARY_PATH")
            .output()
        {
            Err(e) if e.raw_os_error() == Some(26) && start.elapsed() < WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.expect("run the copied binary"),
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for want in [
        "no TFLite/LiteRT runtime library could be loaded; tried:",
        "libLiteRt.so (next to the executable)",
        "/usr/lib/edge-infer/libLiteRt.so (packaged location)",
        "libtensorflowlite_c.so (system linker path)",
        "scripts/fetch-runtime.sh",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn usage_errors_exit_2() {
    // More in tests/cli.rs.
    let (code, _, err) = run_cli(&["serve"], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unrecognized subcommand 'serve'"), "{err}");
    let (code, _, err) = run_cli(&["inspect"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("required arguments were not provided") && err.contains("<MODEL>"),
        "{err}"
    );
}

#[test]
fn an_input_topic_that_takes_the_daemons_own_output_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for (filter, want) in [
        (
            "+/+/+",
            "models[0].input_topic: \"+/+/+\" matches \"edge-infer/gw-7/errors\", which this daemon publishes (its errors topic; also its status and health topics); the daemon would answer its own output",
        ),
        (
            "edge-infer/#",
            "models[0].input_topic: \"edge-infer/#\" matches \"edge-infer/gw-7/errors\"",
        ),
    ] {
        let text = config(
            1883,
            "gw-7",
            "",
            &HAR.replace("sensors/+/accel", filter),
        );
        let cfg = write_config(dir.path(), &text);
        let (code, _, err) = run_cli(&["check-config", "--config", &cfg], &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // A second model fed by the first one's results.
    let text = config(
        1883,
        "gw-7",
        "",
        &(HAR.to_string()
            + "output_topic = \"results/{1}\"\n[[models]]\nname = \"next\"\npath = \"{models}/har_accel_f32.tflite\"\ninput_topic = \"results/+\"\n"),
    );
    let cfg = write_config(dir.path(), &text);
    let (code, _, err) = run_cli(&["check-config", "--config", &cfg], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("models[1].input_topic: \"results/+\" can match what models[0].output_topic (\"results/{1}\") publishes, e.g. \"results/x\""),
        "{err}"
    );
}

/// Runs the daemon binary to completion like `run_cli`, but it must exit
/// within `WAIT`, and its address space is capped at 1 GiB (`prlimit`): a
/// regression that reads a device without end then fails fast instead of
/// taking the machine's memory.
fn run_cli_bounded(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--as=1073741824")
        .arg("--")
        .arg(daemon_binary())
        .args(args)
        .env_remove("JOURNAL_STREAM");
    run_to_exit(cmd, WAIT)
}

/// The HAR model with broker credentials; `password_line` is the line as
/// written (possibly broken).
fn with_password(password_line: &str) -> String {
    config(
        1883,
        "gw",
        &format!("[mqtt]\nusername = \"edge\"\n{password_line}\n"),
        HAR,
    )
    // `config` writes its own [mqtt] table after `extra`; one is enough.
    .replacen("\n[mqtt]\nhost", "\nhost", 1)
}

#[test]
fn a_syntax_error_on_the_password_line_says_where_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    // (the line, what the parser says, whether it reports the line itself:
    // an unclosed multi-line string runs to the end of the file, which is
    // then where the error is, and all of it is the secret)
    for (line, what, on_the_line) in [
        ("password = \"hunter2-secret", "invalid basic string", true),
        (
            "password = hunter2-secret",
            "string values must be quoted",
            true,
        ),
        (
            "password = \"hunter2-secret\" x",
            "unexpected key or value",
            true,
        ),
        (
            "password = '''hunter2-secret",
            "invalid multi-line literal string",
            false,
        ),
    ] {
        let text = with_password(line);
        let number = if on_the_line {
            text.lines()
                .position(|l| l == line)
                .expect("the password line")
                + 1
        } else {
            text.lines().count()
        };
        let cfg = write_config(dir.path(), &text);
        for cmd in ["check-config", "run"] {
            let (code, out, err) = run_cli_bounded(&[cmd, "--config", &cfg]);
            assert_eq!(code, Some(2), "{cmd} {line}: {err}");
            assert!(
                !out.contains("hunter2") && !err.contains("hunter2"),
                "{cmd} {line}: the password is echoed:\n{out}{err}"
            );
            let mut wants = vec![format!("at line {number}, column"), what.to_string()];
            if on_the_line {
                // The line is quoted, with the password masked.
                wants.push(format!(
                    "{number} | {}",
                    line.replace("hunter2-secret", "***")
                ));
            }
            for want in wants {
                assert!(
                    err.contains(&want),
                    "{cmd} {line}: missing {want:?} in:\n{err}"
                );
            }
        }
    }
}

#[test]
fn a_password_of_the_wrong_type_names_the_key_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &with_password("password = [\"hunter2-secret\"]"),
    );
    let (code, _, err) = run_cli_bounded(&["check-config", "--config", &cfg]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(
        err.contains("mqtt.password: invalid type: sequence, expected a string"),
        "{err}"
    );
}

#[test]
fn a_password_from_the_environment_that_is_not_utf8_is_not_echoed() {
    use std::os::unix::ffi::OsStringExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &with_password(""));
    // The config crate refuses a non-Unicode value, quoting it.
    let out = std::process::Command::new(daemon_binary())
        .args(["check-config", "--config", &cfg])
        .env_remove("JOURNAL_STREAM")
        .env(
            "EDGE_INFER__MQTT__PASSWORD",
            std::ffi::OsString::from_vec(b"hunter2-\xff-secret".to_vec()),
        )
        .output()
        .expect("run edge-infer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(
        err.contains("mqtt__password\" contains non-Unicode data: \"***\""),
        "{err}"
    );
}

/// The HAR model with its model file (`path`) or labels file (`labels`)
/// replaced by `file`, and `limits` as the [limits] table's lines.
fn har_with(field: &str, file: &std::path::Path, limits: &str) -> String {
    let models = match field {
        "path" => HAR.replace(
            "{models}/har_accel_int8.tflite",
            &file.display().to_string(),
        ),
        _ => HAR.replace("{models}/har_accel.labels", &file.display().to_string()),
    };
    config(1883, "gw", &format!("[limits]\n{limits}\n"), &models)
}

#[test]
fn devices_fifos_and_directories_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let zero = std::path::Path::new("/dev/zero");
    for (field, file, what) in [
        ("path", zero, "model file /dev/zero is a character device"),
        (
            "labels",
            zero,
            "labels file /dev/zero is a character device",
        ),
        ("path", fifo.as_path(), "is a FIFO (named pipe)"),
        ("labels", fifo.as_path(), "is a FIFO (named pipe)"),
        ("path", dir.path(), "is a directory"),
    ] {
        let cfg = write_config(dir.path(), &har_with(field, file, ""));
        for cmd in ["check-config", "run"] {
            let (code, _, err) = run_cli_bounded(&[cmd, "--config", &cfg]);
            assert_eq!(code, Some(2), "{cmd} {field}={}: {err}", file.display());
            let key = format!("models[0].{field}: ");
            assert!(
                err.contains(&key) && err.contains(what) && err.contains("not a regular file"),
                "{cmd}: missing {key:?} and {what:?} in:\n{err}"
            );
        }
    }
}

#[test]
fn files_above_their_cap_are_refused_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    // Sparse: 1 MiB + 1 byte of nothing, never written.
    let big = dir.path().join("big.tflite");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1_048_577)
        .unwrap();
    let cfg = write_config(
        dir.path(),
        &har_with("path", &big, "max_model_bytes = 1048576"),
    );
    for cmd in ["check-config", "run"] {
        let (code, _, err) = run_cli_bounded(&[cmd, "--config", &cfg]);
        assert_eq!(code, Some(2), "{err}");
        let want = format!(
            "models[0].path: model file {} is 1048577 bytes, above limits.max_model_bytes (1048576 bytes)",
            big.display()
        );
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    // The shipped labels are 26 bytes.
    let cfg = write_config(
        dir.path(),
        &har_with(
            "labels",
            &model("har_accel.labels"),
            "max_labels_bytes = 25",
        ),
    );
    let (code, _, err) = run_cli_bounded(&["check-config", "--config", &cfg]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("models[0].labels: labels file")
            && err.contains("is 26 bytes, above limits.max_labels_bytes (25 bytes)"),
        "{err}"
    );
    // At the cap exactly, both are read.
    require_runtime();
    let cfg = write_config(
        dir.path(),
        &config(
            1883,
            "gw",
            &format!(
                "[limits]\nmax_model_bytes = {}\nmax_labels_bytes = 26\n",
                std::fs::metadata(model("har_accel_int8.tflite"))
                    .unwrap()
                    .len()
            ),
            HAR,
        ),
    );
    let (code, out, err) = run_cli_bounded(&["check-config", "--config", &cfg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ok: 1 model(s) ready"), "{out}");
}
