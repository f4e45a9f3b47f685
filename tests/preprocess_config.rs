//! `check-config` on `[models.window]`, `[models.input]` and
//! `[models.image]`: every problem exits 2 and names its key
//! (`models[0].window.size`, ...); a config using all of them is valid.

mod common;

use common::*;

fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(1883, "gw", "", text)).expect("write config");
    let (code, out, err) = run_cli(
        &[
            "check-config",
            "--config",
            path.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    (code, format!("{out}{err}"))
}

fn model(file: &str, extra: &str) -> String {
    format!(
        "[[models]]\nname = \"m\"\npath = \"{{models}}/{file}\"\ninput_topic = \"sensors/+/imu\"\noutput_topic = \"out/{{1}}\"\n{extra}"
    )
}

const WINDOW: &str = "[models.window]\nfields = [\"ax\", \"ay\", \"az\"]\nsize = 128\nstride = 64\nkey = \"{1}\"\ntimestamp = \"ts\"\n";

#[test]
fn a_config_with_windows_fields_normalization_and_images_is_valid() {
    require_runtime();
    let text = [
        model(
            "har_accel_int8.tflite",
            &format!("{WINDOW}max_gap_ms = 1000\nidle_timeout_secs = 300\nmax_streams = 1024\n[models.input]\nmean = [0.0, 0.0, 1.0]\nstd = 2.0\n"),
        ),
        "[[models]]\nname = \"fields\"\npath = \"{models}/dynamic_batch_f32.tflite\"\ninput_topic = \"in/fields\"\n[models.input]\nfields = [\"temp\", \"/a/b\", \"hum\"]\nmean = 0.5\nstd = [1, 2, 3, 4, 5, 6, 7, 8]\n".to_string(),
        "[[models]]\nname = \"cam\"\npath = \"{models}/mobilenet_v2_int8.tflite\"\ninput_topic = \"cameras/+/frame\"\npayload = \"image\"\n[models.image]\nresize = \"letterbox\"\nmean = [127.5, 127.5, 127.5]\nstd = 127.5\npad = 114\nmax_pixels = 4000000\n".to_string(),
        "[[models]]\nname = \"camjson\"\npath = \"{models}/mobilenet_v2_int8.tflite\"\ninput_topic = \"cameras/+/json\"\n[models.image]\nresize = \"crop\"\n".to_string(),
    ]
    .concat();
    let (code, out) = check(&text);
    assert_eq!(code, Some(0), "{out}");
}

/// Each bad config exits 2 and names the key of its problem.
#[test]
fn each_preprocessing_problem_exits_2_and_names_its_key() {
    require_runtime();
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown field in [models.window]",
            model("har_accel_int8.tflite", &format!("{WINDOW}sizes = 128\n")),
            &["models[0].window", "sizes"],
        ),
        (
            "a window that does not fill the input",
            model(
                "har_accel_int8.tflite",
                &WINDOW.replace("size = 128", "size = 100"),
            ),
            &["models[0].window.size", "100"],
        ),
        (
            "fewer fields than the innermost dimension",
            model(
                "har_accel_int8.tflite",
                &WINDOW.replace("[\"ax\", \"ay\", \"az\"]", "[\"ax\", \"ay\"]"),
            ),
            &["models[0].window.fields"],
        ),
        (
            "a stride of 0",
            model(
                "har_accel_int8.tflite",
                &WINDOW.replace("stride = 64", "stride = 0"),
            ),
            &["models[0].window.stride"],
        ),
        (
            "max_streams of 0",
            model(
                "har_accel_int8.tflite",
                &format!("{WINDOW}max_streams = 0\n"),
            ),
            &["models[0].window.max_streams"],
        ),
        (
            "a key template that refers to a missing wildcard",
            model(
                "har_accel_int8.tflite",
                &WINDOW.replace("key = \"{1}\"", "key = \"{2}\""),
            ),
            &["models[0].window.key"],
        ),
        (
            "named fields together with a window",
            model(
                "har_accel_int8.tflite",
                &format!("{WINDOW}[models.input]\nfields = [\"a\"]\n"),
            ),
            &["models[0].input.fields"],
        ),
        (
            "mean of the wrong length",
            model(
                "har_accel_int8.tflite",
                &format!("{WINDOW}[models.input]\nmean = [0.0, 1.0]\n"),
            ),
            &["models[0].input.mean"],
        ),
        (
            "std of the wrong length",
            model(
                "dynamic_batch_f32.tflite",
                "[models.input]\nstd = [1.0, 2.0, 3.0]\n",
            ),
            &["models[0].input.std"],
        ),
        (
            "[models.image] on a model whose input is not an image",
            model(
                "dynamic_batch_f32.tflite",
                "payload = \"image\"\n[models.image]\nmean = 0.0\n",
            ),
            &["models[0].image"],
        ),
        (
            "image std of the wrong length",
            model(
                "mobilenet_v2_int8.tflite",
                "payload = \"image\"\n[models.image]\nstd = [127.5, 127.5]\n",
            ),
            &["models[0].image.std"],
        ),
        (
            "image std of 0",
            model(
                "mobilenet_v2_int8.tflite",
                "payload = \"image\"\n[models.image]\nstd = 0.0\n",
            ),
            &["models[0].image.std"],
        ),
        (
            "an unknown resize mode",
            model(
                "mobilenet_v2_int8.tflite",
                "payload = \"image\"\n[models.image]\nresize = \"squash\"\n",
            ),
            &["models[0].image.resize", "squash"],
        ),
        (
            "unknown field in [models.image]",
            model(
                "mobilenet_v2_int8.tflite",
                "payload = \"image\"\n[models.image]\nmeans = 0.0\n",
            ),
            &["models[0].image", "means"],
        ),
    ];
    let mut failures = Vec::new();
    for (what, text, keys) in &cases {
        let (code, out) = check(text);
        let missing: Vec<&&str> = keys.iter().filter(|k| !out.contains(**k)).collect();
        if code != Some(2) || !missing.is_empty() {
            failures.push(format!(
                "{what}: exit {code:?}, missing {missing:?} in:\n{out}\n--- config:\n{text}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
