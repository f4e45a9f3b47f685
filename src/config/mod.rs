//! Configuration: `raw` is the file as written, `settings` the checked,
//! typed result every other module uses. Loading collects every problem,
//! each named by its key path, before giving up.

mod raw;
#[cfg(test)]
mod robustness;
mod settings;

pub use raw::RawConfig;
pub use settings::{
    check_topic_level, ModelSettings, MqttSettings, OverflowPolicy, PayloadFormat, Settings,
};

use std::fmt;
use std::path::{Path, PathBuf};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/edge-infer/config.toml";

/// One thing wrong with the config, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `mqtt.port` or `models[1].input_topic`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, thiserror::Error)]
#[error("{} in {}:\n{}", plural(.problems.len()), .path.display(), list(.problems))]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 problem".into()
    } else {
        format!("{n} problems")
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads `path`, applies `EDGE_INFER__*` environment overrides, and checks
/// the result.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let fail = |key: &str, message: String| ConfigError {
        path: path.to_path_buf(),
        problems: vec![Problem {
            key: key.to_string(),
            message,
        }],
    };
    if !path.is_file() {
        return Err(fail(
            "(file)",
            if path.exists() {
                "is not a regular file".into()
            } else {
                "no such file (pass --config FILE or create it)".into()
            },
        ));
    }
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("EDGE_INFER")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| fail("(file)", e.to_string()))?;
    let raw: RawConfig = built
        .try_deserialize()
        .map_err(|e| fail(&error_key(&e), e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    Settings::from_raw(raw, base).map_err(|problems| ConfigError {
        path: path.to_path_buf(),
        problems,
    })
}

/// The key a `config` error is about, when it names one.
fn error_key(e: &config::ConfigError) -> String {
    let text = e.to_string();
    match (text.find("for key `"), text.rfind('`')) {
        // The config crate writes array keys as "models[4]top_k".
        (Some(start), Some(end)) if end > start + 9 => text[start + 9..end]
            .replace("]", "].")
            .replace("].[", "][")
            .trim_end_matches('.')
            .to_string(),
        _ => "(file)".into(),
    }
}
