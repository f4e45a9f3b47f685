//! Robustness tests of the config loader (issue 10).

use super::load;

/// settings.rs's test config.
const GOOD: &str = "device_id = \"gw1\"\n[mqtt]\nport = 1884\n[[models]]\nname = \"har\"\npath = \"har.tflite\"\ninput_topic = \"sensors/+/accel\"\noutput_topic = \"results/{device_id}/{1}/{model}\"\n";

/// `nan` seconds made the loader panic (the drain timeout was clamped,
/// which keeps a NaN, then converted); every seconds key must report NaN
/// and infinities as problems.
#[test]
fn robustness_nan_or_infinite_seconds_are_problems_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    for (section, key, range) in [
        ("shutdown", "drain_timeout_secs", "0 and 3600"),
        ("health", "interval_secs", "0.05 and 86400"),
        ("health", "stall_timeout_secs", "0.05 and 86400"),
    ] {
        for (value, shown) in [
            ("nan", "NaN"),
            ("-nan", "NaN"),
            ("+inf", "inf"),
            ("-inf", "-inf"),
        ] {
            std::fs::write(&path, format!("{GOOD}\n[{section}]\n{key} = {value}\n")).unwrap();
            let loaded = std::panic::catch_unwind(|| load(&path));
            let e = loaded
                .unwrap_or_else(|_| panic!("{section}.{key} = {value} panicked"))
                .unwrap_err();
            let problems: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
            assert_eq!(
                problems,
                [format!(
                    "{section}.{key}: must be between {range} seconds, got {shown}"
                )]
            );
        }
    }
}
