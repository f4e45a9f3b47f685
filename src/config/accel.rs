//! `[delegates.NAME]` and each model's `accelerators`, `cpu_path`,
//! `retry_secs` and `gpu_allow_fp16`, checked into the runtime's
//! [`Accelerator`] list. Whether an accelerator works on this machine is
//! found out at load, not here: a missing Edge TPU is a reason to fall
//! back, not a config error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use model_runtime::{Accelerator, DelegateSpec};

use super::check::Check;
use super::files::resolve;
use super::raw::{RawDelegate, RawModel};

/// The accelerators built into the runtime library, by config name.
pub const BUILT_IN: [&str; 3] = ["cpu", "gpu", "npu"];

/// Longest `retry_secs`: a day.
const MAX_RETRY_SECS: f64 = 86_400.0;

/// Where one model runs.
#[derive(Debug, Clone, PartialEq)]
pub struct AccelSettings {
    /// Most preferred first; never empty.
    pub accelerators: Vec<Accelerator>,
    /// The file the `cpu` accelerator runs instead of the model's `path`.
    pub cpu_path: Option<PathBuf>,
    /// How long a model that fell back waits before its preferred
    /// accelerator is tried again.
    pub retry: Duration,
}

impl Default for AccelSettings {
    fn default() -> Self {
        AccelSettings {
            accelerators: vec![Accelerator::Cpu],
            cpu_path: None,
            retry: Duration::from_secs(60),
        }
    }
}

/// `[delegates]`, checked: every table's library and options, by name.
pub(super) fn delegates(
    c: &mut Check,
    raw: &BTreeMap<String, RawDelegate>,
    base: &Path,
) -> BTreeMap<String, DelegateSpec> {
    let mut specs = BTreeMap::new();
    for (name, d) in raw {
        let key = format!("delegates.{name}");
        if BUILT_IN.contains(&name.as_str()) {
            c.add(
                key,
                format!("\"{name}\" is a built-in accelerator; give the delegate another name (e.g. \"edgetpu\")"),
            );
            continue;
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            c.add(
                key,
                format!(
                    "a delegate name is letters, digits, '_' and '-', got \"{}\"",
                    name.escape_debug()
                ),
            );
            continue;
        }
        if d.library.is_empty() {
            c.add(format!("{key}.library"), "must not be empty");
            continue;
        }
        // A bare file name is for the dynamic linker's search path, as
        // with [runtime] library.
        let library = if d.library.contains('/') {
            resolve(base, &d.library)
        } else {
            PathBuf::from(&d.library)
        };
        let options = d
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.to_text()))
            .collect();
        specs.insert(
            name.clone(),
            DelegateSpec {
                name: name.clone(),
                library,
                options,
            },
        );
    }
    specs
}

/// One model's accelerator settings; problems are keyed `models[i].…`.
pub(super) fn accel_settings(
    c: &mut Check,
    key: &str,
    rm: &RawModel,
    delegates: &BTreeMap<String, DelegateSpec>,
    base: &Path,
) -> AccelSettings {
    let k = |field: &str| format!("{key}.{field}");
    let mut accelerators = Vec::new();
    if rm.accelerators.is_empty() {
        c.add(
            k("accelerators"),
            "must name at least one accelerator, e.g. [\"cpu\"]",
        );
    }
    for (i, name) in rm.accelerators.iter().enumerate() {
        let at = format!("{key}.accelerators[{i}]");
        if rm.accelerators[..i].contains(name) {
            c.add(at, format!("\"{name}\" is listed twice"));
            continue;
        }
        let accelerator = match name.as_str() {
            "cpu" => Accelerator::Cpu,
            "gpu" => Accelerator::Gpu {
                allow_fp16: rm.gpu_allow_fp16,
            },
            "npu" => Accelerator::Npu,
            other => match delegates.get(other) {
                Some(spec) => Accelerator::Delegate(spec.clone()),
                None => {
                    let defined = if delegates.is_empty() {
                        "none is defined".to_string()
                    } else {
                        let names: Vec<String> =
                            delegates.keys().map(|n| format!("\"{n}\"")).collect();
                        format!("defined: {}", names.join(", "))
                    };
                    c.add(
                        at,
                        format!("expected \"cpu\", \"gpu\", \"npu\" or the name of a [delegates.NAME] table ({defined}), got \"{}\"", other.escape_debug()),
                    );
                    continue;
                }
            },
        };
        accelerators.push(accelerator);
    }
    let cpu_path = match rm.cpu_path.as_deref() {
        None => None,
        Some("") => {
            c.add(
                k("cpu_path"),
                "must not be empty (remove it to run path on the cpu)",
            );
            None
        }
        Some(p) => {
            if !rm.accelerators.iter().any(|a| a == "cpu") {
                c.add(
                    k("cpu_path"),
                    format!(
                        "is set, but accelerators ({}) has no \"cpu\" to run it; add \"cpu\" (usually last) or remove cpu_path",
                        list(&rm.accelerators)
                    ),
                );
            }
            Some(resolve(base, p))
        }
    };
    let retry = c.seconds(&k("retry_secs"), rm.retry_secs, 1.0, MAX_RETRY_SECS);
    if accelerators.is_empty() {
        accelerators.push(Accelerator::Cpu);
    }
    AccelSettings {
        accelerators,
        cpu_path,
        retry,
    }
}

/// `["edgetpu", "cpu"]`, as written.
fn list(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use model_runtime::Accelerator;

    use crate::config::{RawConfig, Settings};

    fn load(extra_model: &str, tables: &str) -> Result<Settings, Vec<String>> {
        let text = format!(
            "device_id = \"d\"\n[[models]]\nname = \"m\"\npath = \"m_edgetpu.tflite\"\ninput_topic = \"in/#\"\n{extra_model}\n{tables}\n"
        );
        let raw: RawConfig = ::config::Config::builder()
            .add_source(::config::File::from_str(&text, ::config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .unwrap();
        Settings::from_raw(raw, Path::new("/etc/edge-infer")).map_err(|ps| {
            ps.iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect()
        })
    }

    #[test]
    fn the_default_is_the_cpu_alone() {
        let s = load("", "").unwrap();
        assert_eq!(s.models[0].accel.accelerators, vec![Accelerator::Cpu]);
        assert_eq!(s.models[0].accel.retry.as_secs(), 60);
        assert!(s.delegates.is_empty());
    }

    #[test]
    fn a_delegate_with_cpu_fallback_resolves_names_paths_and_options() {
        let s = load(
            "accelerators = [\"edgetpu\", \"gpu\", \"cpu\"]\ncpu_path = \"m.tflite\"\nretry_secs = 5\ngpu_allow_fp16 = true",
            "[delegates.edgetpu]\nlibrary = \"libedgetpu.so.1\"\noptions = { device = \"usb\", verbosity = 2, fast = true }\n[delegates.local]\nlibrary = \"plugins/libx.so\"",
        )
        .unwrap();
        let accel = &s.models[0].accel;
        let Accelerator::Delegate(d) = &accel.accelerators[0] else {
            panic!("expected a delegate, got {:?}", accel.accelerators[0]);
        };
        assert_eq!(d.name, "edgetpu");
        // A bare file name is left for the dynamic linker.
        assert_eq!(d.library, Path::new("libedgetpu.so.1"));
        assert_eq!(
            d.options,
            vec![
                ("device".to_string(), "usb".to_string()),
                ("fast".to_string(), "true".to_string()),
                ("verbosity".to_string(), "2".to_string()),
            ]
        );
        assert_eq!(accel.accelerators[1], Accelerator::Gpu { allow_fp16: true });
        assert_eq!(accel.accelerators[2], Accelerator::Cpu);
        assert_eq!(
            accel.cpu_path.as_deref(),
            Some(Path::new("/etc/edge-infer/m.tflite"))
        );
        assert_eq!(accel.retry.as_secs(), 5);
        assert_eq!(
            s.delegates["local"].library,
            Path::new("/etc/edge-infer/plugins/libx.so")
        );
    }

    #[test]
    fn every_accelerator_problem_names_its_key() {
        let problems = load(
            "accelerators = [\"edgtpu\", \"cpu\", \"cpu\"]\ncpu_path = \"\"\nretry_secs = 0",
            "[delegates.edgetpu]\nlibrary = \"libedgetpu.so.1\"\n[delegates.gpu]\nlibrary = \"x.so\"\n[delegates.\"bad name\"]\nlibrary = \"y.so\"\n[delegates.empty]\nlibrary = \"\"",
        )
        .unwrap_err();
        let expect = [
            "delegates.gpu: \"gpu\" is a built-in accelerator",
            "delegates.bad name: a delegate name is letters, digits",
            "delegates.empty.library: must not be empty",
            "models[0].accelerators[0]: expected \"cpu\", \"gpu\", \"npu\" or the name of a [delegates.NAME] table (defined: \"edgetpu\"), got \"edgtpu\"",
            "models[0].accelerators[2]: \"cpu\" is listed twice",
            "models[0].cpu_path: must not be empty",
            "models[0].retry_secs: must be between 1 and 86400 seconds, got 0",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    }

    #[test]
    fn cpu_path_needs_the_cpu_in_the_list_and_the_list_an_entry() {
        let problems = load("accelerators = [\"gpu\"]\ncpu_path = \"m.tflite\"", "").unwrap_err();
        assert_eq!(
            problems,
            ["models[0].cpu_path: is set, but accelerators ([\"gpu\"]) has no \"cpu\" to run it; add \"cpu\" (usually last) or remove cpu_path"]
        );
        let problems = load("accelerators = []", "").unwrap_err();
        assert_eq!(
            problems,
            ["models[0].accelerators: must name at least one accelerator, e.g. [\"cpu\"]"]
        );
    }
}
