//! The command line: each subcommand takes only its own flags, says which
//! flag was wrong, documents itself in `--help`, and exits with the same
//! statuses everywhere (0 ok, 1 runtime failure, 2 bad usage, config or
//! model, 3 runtime library not loadable). Needs no broker, and the runtime
//! library only where `inspect` loads a model.

mod common;

use common::*;

/// A loopback port nothing listens on (bound, read, released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

#[test]
fn a_flag_of_another_subcommand_is_bad_usage_that_names_the_flag() {
    let (code, out, err) = run_cli(&["run", "--batch", "4"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--batch"), "{err}");
    assert!(err.contains("Usage: edge-infer run"), "{err}");
    assert!(out.is_empty(), "{out}");

    for args in [
        &["check-config", "--runtime", "x.so"][..],
        &["inspect", "m.tflite", "--wait", "1"],
        &["status", "--batch", "2"],
        &["run", "--wait", "1"],
    ] {
        let (code, _, err) = run_cli(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(args[args.len() - 2]), "{args:?}: {err}");
    }
}

#[test]
fn every_subcommand_documents_its_own_flags() {
    let cases: [(&str, &[&str], &[&str]); 6] = [
        (
            "run",
            &["--config <FILE>", "-c", "/etc/edge-infer/config.toml"],
            &["--batch", "--wait"],
        ),
        (
            "check-config",
            &["--config <FILE>", "exits 3"],
            &["--batch", "--device"],
        ),
        (
            "inspect",
            &[
                "[MODEL]",
                "--runtime <LIB>",
                "--batch <N>",
                "--accelerators",
                "--config <FILE>",
            ],
            &["--wait", "--device"],
        ),
        (
            "status",
            &[
                "--config <FILE>",
                "--host <H>",
                "--port <P>",
                "--device <ID>",
                "--wait <SECS>",
            ],
            &["--batch", "--runtime"],
        ),
        (
            "keygen",
            &[
                "--out <DIR>",
                "--name <NAME>",
                "--password-file <FILE>",
                "NOT encrypted",
            ],
            &["--config", "--device"],
        ),
        (
            "publish-model",
            &[
                "--model <FILE>",
                "--name <MODEL>",
                "--version <V>",
                "--secret-key <KEY>",
                "--password-file <FILE>",
                "--device <ID>",
                "--fleet",
                "--chunk-size <BYTES>",
                "--golden <FILE.json>",
                "--path-on-device <ABS>",
                "--manifest <FILE>",
                "--sign-only",
                "--clear",
                "--config <FILE>",
                "--host <H>",
                "--port <P>",
                "--wait <SECS>",
            ],
            &["--batch", "--runtime"],
        ),
    ];
    for (sub, has, lacks) in cases {
        for help in [vec![sub, "--help"], vec![sub, "-h"], vec!["help", sub]] {
            let (code, out, err) = run_cli(&help, &[]);
            assert_eq!(code, Some(0), "{help:?}: {err}");
            assert!(
                out.contains(&format!("Usage: edge-infer {sub}")),
                "{help:?}:\n{out}"
            );
            for want in has
                .iter()
                .filter(|w| help[1] != "-h" || w.starts_with('-') || w.starts_with('<'))
            {
                assert!(out.contains(want), "{help:?}: missing {want:?} in:\n{out}");
            }
            for other in lacks {
                assert!(!out.contains(other), "{help:?}: {other:?} in:\n{out}");
            }
        }
    }
}

#[test]
fn top_level_help_and_version() {
    let (code, out, err) = run_cli(&["--help"], &[]);
    assert_eq!(code, Some(0), "{err}");
    for want in [
        "run",
        "check-config",
        "inspect",
        "status",
        "keygen",
        "publish-model",
        "/etc/edge-infer/config.toml",
        "EDGE_INFER__SECTION__KEY",
        "$EDGE_INFER_RUNTIME_LIBRARY",
        "/usr/lib/edge-infer",
        "EXIT STATUS",
        "3  runtime library not loadable",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let (code, out, _) = run_cli(&["help"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("EXIT STATUS"), "{out}");

    let version = format!("edge-infer {}\n", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["-V"], &["version"]] {
        let (code, out, err) = run_cli(args, &[]);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert_eq!(out, version, "{args:?}");
    }
}

#[test]
fn unknown_or_missing_subcommands_and_arguments_are_bad_usage() {
    let (code, _, err) = run_cli(&["serve"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'serve'"), "{err}");
    // No subcommand: the help, on stderr, as a usage error.
    let (code, out, err) = run_cli(&[], &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("Usage: edge-infer"), "{err}");
    let (code, _, err) = run_cli(&["inspect"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("<MODEL>"), "{err}");
    // --config names the config of --accelerators, nothing else.
    let (code, _, err) = run_cli(&["inspect", "m.tflite", "--config", "c.toml"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--config") && err.contains("--accelerators"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["run", "extra.toml"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'extra.toml'"), "{err}");
    let (code, _, err) = run_cli(&["inspect", "m.tflite", "--batch", "0"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--batch"), "{err}");
    for (flag, value) in [
        ("--port", "0"),
        ("--port", "65536"),
        ("--wait", "0.1"),
        ("--wait", "3601"),
        ("--wait", "soon"),
    ] {
        let (code, _, err) = run_cli(&["status", flag, value], &[]);
        assert_eq!(code, Some(2), "{flag} {value}: {err}");
        assert!(err.contains(flag), "{flag} {value}: {err}");
    }
}

#[test]
fn status_with_a_device_id_that_cannot_be_a_topic_level_is_bad_usage() {
    let long = "d".repeat(65);
    for device in ["a/b", "+", "gw#", "", "gw\t1", &long] {
        let (code, _, err) = run_cli(
            &[
                "status",
                "--host",
                "127.0.0.1",
                "--port",
                "1",
                "--device",
                device,
            ],
            &[],
        );
        assert_eq!(code, Some(2), "{device:?}: {err}");
        assert!(err.contains("--device"), "{device:?}: {err}");
        let rule = match device {
            "" => "must not be empty",
            "gw\t1" => "cannot contain control characters",
            d if d.len() > 64 => "must be at most 64 bytes",
            _ => "cannot contain '/', '+' or '#'",
        };
        assert!(err.contains(rule), "{device:?}: {err}");
    }
}

#[test]
fn status_without_a_broker_is_a_runtime_failure() {
    let port = closed_port().to_string();
    let (code, out, err) = run_cli(
        &[
            "status",
            "--config",
            "/nonexistent/edge-infer.toml",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--device",
            "gw-7",
            "--wait",
            "1",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach the MQTT broker at mqtt://127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");
}

#[test]
fn old_spellings_still_parse() {
    // -c and --config=FILE: past the parser, into the config loader (2 for
    // a missing file, with its message, not a usage error).
    for args in [
        &["run", "-c", "/nonexistent/edge.toml"][..],
        &["run", "--config=/nonexistent/edge.toml"],
        &["check-config", "-c", "/nonexistent/edge.toml"],
    ] {
        let (code, _, err) = run_cli(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("no such file"), "{args:?}: {err}");
        assert!(!err.contains("Usage:"), "{args:?}: {err}");
    }
}

/// models/har_accel_int8_edgetpu.tflite is har_accel_int8 as `edgetpu_compiler`
/// lays it out (one `edgetpu-custom-op`). With the runtime library, the CPU
/// runtime cannot run it: `inspect` says why and what to configure, shows
/// the tensors from the file, and exits 2 (a model that does not load).
/// Without one, the file alone is read (exit 0), with the same advice.
#[test]
fn inspect_explains_a_model_compiled_for_the_edge_tpu() {
    require_runtime();
    let m = model("har_accel_int8_edgetpu.tflite");
    let m = m.to_str().unwrap();
    let twin = model("har_accel_int8.tflite");
    let lib = repo().join(format!("runtime/{}/libLiteRt.so", std::env::consts::ARCH));
    let advice = [
        "edgetpu: compiled for the Edge TPU (contains edgetpu-custom-op): runs only through an Edge TPU",
        "delegate (libedgetpu), not on the CPU runtime",
        r#"accelerators = ["edgetpu", "cpu"]"#,
        "[delegates.edgetpu]",
        r#"library = "libedgetpu.so.1""#,
        &format!(
            r#"cpu_path = "{}"   # found next to it, same inputs and outputs"#,
            twin.display()
        ),
        "[0] 'accel' 1x128x3 int8 scale=0.045965016 zero_point=-1",
        "[0] 'probs' 1x4 int8 scale=0.00390625 zero_point=-128",
    ];

    let (code, out, err) = run_cli(&["inspect", m, "--runtime", lib.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}\n{err}");
    assert!(
        out.contains("(litert): not loaded, it cannot run this model on the CPU"),
        "{out}"
    );
    for want in advice {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let refusal = err.lines().last().unwrap_or_default();
    let head = format!(
        "edge-infer: cpu: model {m} is compiled for the Edge TPU (it contains edgetpu-custom-op)"
    );
    for want in [
        head.as_str(),
        "runs only through an Edge TPU delegate (libedgetpu)",
        r#"accelerators = ["edgetpu", "cpu"] with [delegates.edgetpu] library = "libedgetpu.so.1""#,
        "cpu_path",
    ] {
        assert!(refusal.contains(want), "missing {want:?} in:\n{err}");
    }
    // Not the runtime's own words: the model never reached it.
    assert!(!err.contains("unresolved custom op"), "{err}");
    assert!(!err.contains("Status"), "{err}");

    let (code, out, err) = run_cli(
        &["inspect", m],
        &[("EDGE_INFER_RUNTIME_LIBRARY", "/nonexistent/libLiteRt.so")],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("runtime: none loaded: read from the file"),
        "{out}"
    );
    for want in advice {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }

    // The CPU twin is a plain model: no advice, and it loads.
    let (code, out, err) = run_cli(
        &[
            "inspect",
            twin.to_str().unwrap(),
            "--runtime",
            lib.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("Edge TPU"), "{out}");
    assert!(out.contains("[0] 'probs' 1x4 int8"), "{out}");
}

/// Without a twin next to it, `inspect` still says what `cpu_path` is for;
/// a file named like a twin but with other tensors is called out.
#[test]
fn inspect_of_an_edge_tpu_model_checks_the_twin_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let tpu = dir.path().join("net_edgetpu.tflite");
    std::fs::copy(model("har_accel_int8_edgetpu.tflite"), &tpu).unwrap();
    let env = [("EDGE_INFER_RUNTIME_LIBRARY", "/nonexistent/libLiteRt.so")];
    let (code, out, err) = run_cli(&["inspect", tpu.to_str().unwrap()], &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(r#"cpu_path = "..."   # a CPU build of the same model (optional)"#),
        "{out}"
    );
    std::fs::copy(model("har_accel_f32.tflite"), dir.path().join("net.tflite")).unwrap();
    let (code, out, err) = run_cli(&["inspect", tpu.to_str().unwrap()], &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("found next to it, but its inputs or outputs differ: not its CPU build"),
        "{out}"
    );
}
