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
