//! Configuration: `raw` is the file as written, `settings` the checked,
//! typed result every other module uses. Loading collects every problem,
//! each named by its key path, before giving up. `files` reads the files a
//! config names within their caps; `secrets` keeps secret values out of
//! every message.

mod accel;
mod check;
mod files;
mod preprocess;
mod raw;
#[cfg(test)]
mod robustness;
mod secrets;
mod settings;
mod tls;
mod updates;

pub use files::{read_file, FileError, FileLimits, LABELS_FILE, MAX_MAX_MODEL_BYTES, MODEL_FILE};
pub use preprocess::{FieldPath, ImageSettings, Normalize, Resize, DEFAULT_MAX_PIXELS};
pub use raw::RawConfig;
pub use settings::{
    check_topic_level, AckPolicy, ModelSettings, MqttSettings, OnFull, OutboxSettings,
    OverflowPolicy, PayloadFormat, Protocol, Settings, WorkerPriority, UPLINK_CLIENT_SUFFIX,
};
pub use tls::TlsSettings;
// For `replies`' test that an error at these bounds fits in one packet.
#[cfg(test)]
pub use settings::MAX_LEVEL_BYTES;
pub use updates::{key_id_of, key_id_text, TrustedKey, UpdateSettings, Version};

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
/// the result, including that the model and label files it names are
/// regular files within their caps (from metadata; they are read later).
/// No message quotes a secret: see `secrets`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    // The file as written, for the secret scan only; the config crate reads
    // it itself, so its messages name the file. A file that cannot be read
    // here fails below with the crate's own message.
    let text = if path.is_file() {
        // Lossy: a stray invalid byte must not hide the password line.
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    } else {
        String::new()
    };
    // `vars_os`: `vars` panics on a variable that is not UTF-8. The config
    // crate refuses such a value of ours with a message that quotes it as
    // `{:?}` does, so that form is a secret too.
    let env = std::env::vars_os().flat_map(|(k, v)| {
        let k = k.to_string_lossy().into_owned();
        let forms = match v.into_string() {
            Ok(v) => vec![v],
            Err(v) => vec![
                v.to_string_lossy().into_owned(),
                format!("{v:?}").trim_matches('"').to_string(),
            ],
        };
        forms.into_iter().map(move |f| (k.clone(), f))
    });
    let secrets = secrets::Secrets::scan(&text, env);
    load_unmasked(path).map_err(|mut e| {
        for p in &mut e.problems {
            p.key = secrets.mask(&p.key);
            p.message = secrets.mask(&p.message);
        }
        e
    })
}

/// Warnings about who else can read the secrets of a loaded config: the
/// config file when it holds a password or names a client key and is
/// readable by group or others, and each client key file that is. Logged
/// at startup; nothing is refused (the operator may have reasons, such as
/// a group the service runs in).
pub fn exposure_warnings(path: &Path, settings: &Settings) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| m.permissions().mode() & 0o777)
    };
    let fix = |p: &Path| {
        format!(
            "chmod 600 {} (or 640 with the group the service runs as)",
            p.display()
        )
    };
    let mut warnings = Vec::new();
    let links = std::iter::once(&settings.mqtt).chain(settings.uplink.as_ref());
    let key_files: Vec<&Path> = links
        .filter_map(|m| m.tls.as_ref()?.client_auth.as_ref())
        .map(|(_, key)| key.as_path())
        .collect();
    if let Some(m) = mode(path).filter(|m| m & 0o044 != 0) {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        let password = secrets::Secrets::scan(&text, Vec::new()).in_file();
        let holds = match (password, !key_files.is_empty()) {
            (true, true) => Some("a password and the path of a client key"),
            (true, false) => Some("a password"),
            (false, true) => Some("the path of a client key"),
            (false, false) => None,
        };
        if let Some(holds) = holds {
            warnings.push(format!(
                "config file {} is mode {m:04o}, readable by group or others, and holds {holds}; {}, or keep the password in the environment (EDGE_INFER__MQTT__PASSWORD; under systemd in /etc/edge-infer/environment, mode 0600)",
                path.display(),
                fix(path)
            ));
        }
    }
    for key in key_files {
        if let Some(m) = mode(key).filter(|m| m & 0o044 != 0) {
            warnings.push(format!(
                "client key file {} is mode {m:04o}, readable by group or others; {}",
                key.display(),
                fix(key)
            ));
        }
    }
    warnings
}

fn load_unmasked(path: &Path) -> Result<Settings, ConfigError> {
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
        .map_err(|e| fail(&error_key(&e), without_key(&e.to_string())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let settings = Settings::from_raw(raw, base).map_err(|problems| ConfigError {
        path: path.to_path_buf(),
        problems,
    })?;
    let problems = check_files(&settings);
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// Refuses, from metadata alone, model and label files that are not regular
/// files or are above their caps, so that nothing downstream starts reading
/// them. A file that cannot be looked at (missing, no permission) is left to
/// the reader, which reports it when it reads; this is the early, cheap
/// half of the check `read_file` makes again on the file it opens.
fn check_files(settings: &Settings) -> Vec<Problem> {
    let limits = &settings.file_limits;
    let mut problems = Vec::new();
    for ms in &settings.models {
        let files = [
            (Some(&ms.path), "path", MODEL_FILE, limits.max_model_bytes),
            (
                ms.labels.as_ref(),
                "labels",
                LABELS_FILE,
                limits.max_labels_bytes,
            ),
        ];
        for (file, field, role, max) in files {
            let Some(file) = file else { continue };
            match files::check_file(file, role, max) {
                Ok(_) | Err(FileError::Io { .. }) => {}
                Err(e) => problems.push(Problem {
                    key: format!("{}.{field}", ms.key),
                    message: e.to_string(),
                }),
            }
        }
    }
    problems
}

/// A `config` error's message without its trailing "for key `models[1]window`"
/// (the problem is listed under that key already, spelt properly).
fn without_key(text: &str) -> String {
    match text.rfind(" for key `") {
        Some(at) if text.ends_with('`') => text[..at].to_string(),
        _ => text.to_string(),
    }
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
