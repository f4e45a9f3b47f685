//! edge-infer: keeps TFLite/LiteRT models warm next to the sensors, answers
//! MQTT readings with inference results. This file is the command line;
//! `app` runs the daemon. See ARCHITECTURE.md for the map.

mod app;
mod codec;
mod config;
mod health;
mod job;
mod logging;
mod models;
mod mqtt;
mod replies;
mod routing;
mod systemd;
mod telemetry;
mod time;
mod topic;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use model_runtime::{LibrarySearch, Runtime};

const USAGE: &str = "\
edge-infer: MQTT edge inference daemon

USAGE:
    edge-infer run [--config FILE]            serve the configured models
    edge-infer check-config [--config FILE]   load everything, print a summary, exit
                                              (no runtime library: checks the model
                                              files alone, then exits 3)
    edge-infer inspect MODEL.tflite [--runtime LIB] [--batch N]
                                              print a model's inputs and outputs
                                              (no runtime library and no --runtime:
                                              as the file declares them)
    edge-infer status [--config FILE] [--host H] [--port P] [--device ID] [--wait SECS]
                                              print the latest status and health of
                                              devices on the broker (retained records)
    edge-infer --version | --help

The config defaults to /etc/edge-infer/config.toml. Every key can be
overridden from the environment as EDGE_INFER__SECTION__KEY (e.g.
EDGE_INFER__MQTT__PORT=1884). The runtime library is found through
[runtime] library, then $EDGE_INFER_RUNTIME_LIBRARY, then runtime/<arch>/
next to a checkout's binary, /usr/lib/edge-infer, then the linker path.

EXIT STATUS: 0 ok, 1 runtime failure, 2 bad usage, config or model,
3 runtime library not loadable.";

/// Exit statuses the README documents.
mod status {
    pub const FAILURE: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const NO_RUNTIME: u8 = 3;
}

enum Command {
    Run(PathBuf),
    CheckConfig(PathBuf),
    Inspect {
        model: PathBuf,
        runtime: Option<PathBuf>,
        batch: u32,
    },
    Status {
        config: PathBuf,
        host: Option<String>,
        port: Option<u16>,
        device: Option<String>,
        wait: std::time::Duration,
    },
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let Some(cmd) = args.first() else {
        return Err("no command given".into());
    };
    let mut config = PathBuf::from(config::DEFAULT_CONFIG_PATH);
    let mut runtime = None;
    let mut batch = 1u32;
    let (mut host, mut port, mut device) = (None, None, None);
    let mut wait = std::time::Duration::from_secs(5);
    let mut positional = Vec::new();
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--config" | "-c" => config = PathBuf::from(value(a)?),
            "--runtime" => runtime = Some(PathBuf::from(value(a)?)),
            "--batch" => {
                let v = value(a)?;
                batch = v.parse().ok().filter(|&b| b >= 1).ok_or_else(|| {
                    format!("--batch needs a whole number of at least 1, got \"{v}\"")
                })?;
            }
            "--host" => host = Some(value(a)?),
            "--device" => device = Some(value(a)?),
            "--port" => {
                let v = value(a)?;
                port = Some(
                    v.parse()
                        .ok()
                        .filter(|&p: &u16| p > 0)
                        .ok_or_else(|| format!("--port needs a port number, got \"{v}\""))?,
                );
            }
            "--wait" => {
                let v = value(a)?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| (0.5..=3600.0).contains(s))
                    .ok_or_else(|| {
                        format!("--wait needs seconds between 0.5 and 3600, got \"{v}\"")
                    })?;
                wait = std::time::Duration::from_secs_f64(secs);
            }
            s if s.starts_with("--config=") => config = PathBuf::from(&s[9..]),
            s if s.starts_with('-') => return Err(format!("unknown option \"{s}\"")),
            s => positional.push(s.to_string()),
        }
    }
    let expect_none = |positional: &[String]| match positional.first() {
        Some(p) => Err(format!("unexpected argument \"{p}\"")),
        None => Ok(()),
    };
    match cmd.as_str() {
        "run" => expect_none(&positional).map(|()| Command::Run(config)),
        "check-config" => expect_none(&positional).map(|()| Command::CheckConfig(config)),
        "inspect" => match positional.as_slice() {
            [model] => Ok(Command::Inspect {
                model: PathBuf::from(model),
                runtime,
                batch,
            }),
            [] => Err("inspect needs a model file".into()),
            _ => Err("inspect takes one model file".into()),
        },
        "status" => expect_none(&positional).map(|()| Command::Status {
            config,
            host,
            port,
            device,
            wait,
        }),
        "-h" | "--help" | "help" => Ok(Command::Help),
        "-V" | "--version" | "version" => Ok(Command::Version),
        other => Err(format!("unknown command \"{other}\"")),
    }
}

fn main() -> ExitCode {
    logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-infer: {e}\n\n{USAGE}");
            return ExitCode::from(status::BAD_INPUT);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("edge-infer {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(path) => run(&path),
        Command::CheckConfig(path) => check_config(&path),
        Command::Inspect {
            model,
            runtime,
            batch,
        } => inspect(&model, runtime, batch),
        Command::Status {
            config,
            host,
            port,
            device,
            wait,
        } => status(&config, host, port, device, wait),
    }
}

/// Everything `run` and `check-config` share: config, runtime, models.
fn load(
    path: &std::path::Path,
) -> Result<(config::Settings, Runtime, Vec<models::LoadedModel>), ExitCode> {
    let settings = load_settings(path)?;
    let runtime = open_runtime(&settings).map_err(|e| {
        eprintln!("edge-infer: {e}");
        ExitCode::from(status::NO_RUNTIME)
    })?;
    let models = load_models(path, &settings, &runtime)?;
    Ok((settings, runtime, models))
}

fn load_settings(path: &std::path::Path) -> Result<config::Settings, ExitCode> {
    let settings = config::load(path).map_err(|e| {
        eprintln!("edge-infer: {e}");
        ExitCode::from(status::BAD_INPUT)
    })?;
    logging::set_level(settings.log_level.to_filter());
    Ok(settings)
}

fn open_runtime(settings: &config::Settings) -> Result<Runtime, model_runtime::RuntimeError> {
    let runtime = Runtime::open(&LibrarySearch::for_process(
        settings.runtime_library.clone(),
    ))?;
    log::info!(
        "runtime library {} ({})",
        runtime.path().display(),
        runtime.flavor().as_str()
    );
    Ok(runtime)
}

fn load_models(
    path: &std::path::Path,
    settings: &config::Settings,
    runtime: &Runtime,
) -> Result<Vec<models::LoadedModel>, ExitCode> {
    let models = models::load_all(settings, runtime).map_err(|problems| {
        let e = config::ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        eprintln!("edge-infer: {e}");
        ExitCode::from(status::BAD_INPUT)
    })?;
    for m in &models {
        log::info!(
            "model {}: {} (sha256 {}) on {}, {} worker(s), loaded and warmed in {:.1} ms",
            m.checked.settings.name,
            m.checked.settings.path.display(),
            &m.checked.sha256[..12],
            m.accelerator,
            m.engines.len(),
            m.load_ms
        );
    }
    Ok(models)
}

fn run(path: &std::path::Path) -> ExitCode {
    let (settings, runtime, models) = match load(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match app::run(path.to_path_buf(), settings, runtime, models) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-infer: {e:#}");
            ExitCode::from(status::FAILURE)
        }
    }
}

/// `check-config`: loads everything and prints a summary. Without a
/// runtime library it still checks the config and every model file against
/// the tensor facts the file declares, prints the same summary, then reports
/// the missing library (exit 3).
fn check_config(path: &std::path::Path) -> ExitCode {
    let settings = match load_settings(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let runtime = match open_runtime(&settings) {
        Ok(rt) => rt,
        Err(e) => return check_config_static(path, &settings, &e),
    };
    let models = match load_models(path, &settings, &runtime) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let runtime_line = format!(
        "{} ({})",
        runtime.path().display(),
        runtime.flavor().as_str()
    );
    let summaries: Vec<ModelSummary> = models.iter().map(ModelSummary::from).collect();
    print_summary(path, &settings, &runtime_line, &summaries);
    println!("ok: {} model(s) ready", models.len());
    ExitCode::SUCCESS
}

/// `check-config` when no runtime library loads.
fn check_config_static(
    path: &std::path::Path,
    settings: &config::Settings,
    no_runtime: &model_runtime::RuntimeError,
) -> ExitCode {
    let checked = match models::check_all_static(settings) {
        Ok(c) => c,
        Err(problems) => {
            let e = config::ConfigError {
                path: path.to_path_buf(),
                problems,
            };
            eprintln!("edge-infer: {e}");
            eprintln!("edge-infer: also: {no_runtime}");
            return ExitCode::from(status::BAD_INPUT);
        }
    };
    let summaries: Vec<ModelSummary> = checked.iter().map(ModelSummary::from).collect();
    print_summary(
        path,
        settings,
        "none loaded: models checked against their files only (no inference)",
        &summaries,
    );
    println!(
        "not ready: config and {} model file(s) are valid, but no runtime library could be loaded",
        checked.len()
    );
    eprintln!("edge-infer: {no_runtime}");
    ExitCode::from(status::NO_RUNTIME)
}

/// One model's part of the `check-config` summary.
struct ModelSummary<'a> {
    settings: &'a config::ModelSettings,
    sha256: &'a str,
    inputs: &'a [model_runtime::TensorSpec],
    outputs: &'a [model_runtime::TensorSpec],
    labels: Option<&'a [String]>,
    top_k: Option<usize>,
    /// What runs it and how long load and warm-up took; `None` when it was
    /// only checked from its file.
    loaded: Option<(&'a str, f64)>,
}

impl<'a> From<&'a models::LoadedModel> for ModelSummary<'a> {
    fn from(m: &'a models::LoadedModel) -> Self {
        ModelSummary {
            loaded: Some((&m.accelerator, m.load_ms)),
            ..ModelSummary::from(&m.checked)
        }
    }
}

impl<'a> From<&'a models::CheckedModel> for ModelSummary<'a> {
    fn from(m: &'a models::CheckedModel) -> Self {
        ModelSummary {
            settings: &m.settings,
            sha256: &m.sha256,
            inputs: &m.inputs,
            outputs: &m.outputs,
            labels: m.labels.as_deref(),
            top_k: m.top_k,
            loaded: None,
        }
    }
}

fn print_summary(
    path: &std::path::Path,
    settings: &config::Settings,
    runtime: &str,
    models: &[ModelSummary],
) {
    println!("config:    {}", path.display());
    println!("device_id: {}", settings.device_id);
    println!(
        "broker:    mqtt://{}:{} client_id={} keep_alive={}s qos={} clean_session={}",
        settings.mqtt.host,
        settings.mqtt.port,
        settings.mqtt.client_id,
        settings.mqtt.keep_alive.as_secs(),
        settings.mqtt.qos,
        settings.mqtt.clean_session
    );
    println!("runtime:   {runtime}");
    println!("errors:    {}", replies::errors_topic(&settings.device_id));
    println!(
        "limits:    max_payload_bytes={}",
        settings.max_payload_bytes
    );
    for m in models {
        let s = m.settings;
        println!("model {}:", s.name);
        println!("  file:     {} (sha256 {})", s.path.display(), m.sha256);
        println!(
            "  topics:   {} -> {}",
            s.input_topic,
            s.output_topic.as_str()
        );
        println!(
            "  serving:  payload={} workers={} threads={} queue={} overflow={}{}{}",
            match s.payload {
                config::PayloadFormat::Json => "json",
                config::PayloadFormat::Raw => "raw",
            },
            s.workers,
            s.threads,
            s.queue_capacity,
            s.overflow.as_str(),
            if s.max_batch > 1 {
                format!(
                    " max_batch={} max_delay_us={}",
                    s.max_batch,
                    s.max_delay.as_micros()
                )
            } else {
                String::new()
            },
            match m.loaded {
                Some((accelerator, _)) => format!(" on {accelerator}"),
                None => String::new(),
            }
        );
        for t in m.inputs {
            println!("  input:    {}", describe_tensor(t));
        }
        for t in m.outputs {
            println!("  output:   {}", describe_tensor(t));
        }
        if let Some(labels) = m.labels {
            println!("  labels:   {} ({})", labels.len(), labels.join(", "));
        }
        if let Some(k) = m.top_k {
            println!("  top_k:    {k}");
        }
        match m.loaded {
            Some((_, ms)) => println!("  loaded and warmed in {ms:.1} ms"),
            None => println!("  checked from the file (not loaded: no runtime library)"),
        }
    }
}

fn describe_tensor(t: &model_runtime::TensorSpec) -> String {
    let mut s = format!("'{}' {} {}", t.name, t.shape_string(), t.dtype);
    if let Some(q) = t.quantization {
        s.push_str(&format!(" scale={} zero_point={}", q.scale, q.zero_point));
    }
    if t.is_dynamic() {
        s.push_str(&format!(" (shape signature {:?})", t.shape_signature));
    }
    s
}

/// `inspect`: the model's inputs and outputs as the runtime sees them.
/// When no runtime library loads (and `--runtime` was not given), what the
/// model file itself declares, read without a runtime (exit 0).
fn inspect(model: &std::path::Path, runtime: Option<PathBuf>, batch: u32) -> ExitCode {
    let explicit = runtime.is_some();
    let rt = match Runtime::open(&LibrarySearch::for_process(runtime)) {
        Ok(rt) => Some(rt),
        Err(e) if !explicit => {
            eprintln!("edge-infer: {e}");
            eprintln!(
                "edge-infer: showing what the model file declares instead (read without a runtime library)"
            );
            None
        }
        Err(e) => {
            eprintln!("edge-infer: {e}");
            return ExitCode::from(status::NO_RUNTIME);
        }
    };
    let bytes = match std::fs::read(model) {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "edge-infer: cannot read model file {}: {e}",
                model.display()
            );
            return ExitCode::from(status::BAD_INPUT);
        }
    };
    let sha = models::sha256_hex(&bytes);
    let size = bytes.len();
    let origin = model.display().to_string();
    let (runtime_line, inputs, outputs) = match rt {
        Some(rt) => {
            let options = model_runtime::LoadOptions {
                cpu_threads: 1,
                dynamic_batch: batch,
            };
            let engine = match rt.load(&origin, bytes, &options) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("edge-infer: {e}");
                    return ExitCode::from(status::BAD_INPUT);
                }
            };
            (
                format!("{} ({})", rt.path().display(), rt.flavor().as_str()),
                engine.inputs().to_vec(),
                engine.outputs().to_vec(),
            )
        }
        None => match model_runtime::read_model_facts(&origin, &bytes, batch) {
            Ok(facts) => (
                format!(
                    "none loaded: read from the file (signature {}, schema version {}, {} subgraph(s)); not compiled or run",
                    facts
                        .signature_key
                        .as_deref()
                        .map(|k| format!("'{k}'"))
                        .unwrap_or_else(|| "none: main subgraph".into()),
                    facts.schema_version,
                    facts.subgraphs
                ),
                facts.inputs,
                facts.outputs,
            ),
            Err(e) => {
                eprintln!("edge-infer: {e}");
                return ExitCode::from(status::BAD_INPUT);
            }
        },
    };
    println!("model:   {} ({size} bytes, sha256 {sha})", model.display());
    println!("runtime: {runtime_line}");
    println!("inputs:");
    for (i, t) in inputs.iter().enumerate() {
        println!("  [{i}] {}", describe_tensor(t));
    }
    println!("outputs:");
    for (i, t) in outputs.iter().enumerate() {
        println!("  [{i}] {}", describe_tensor(t));
    }
    ExitCode::SUCCESS
}

/// `status`: broker address and device from the flags, else from the config
/// file when it can be read, else 127.0.0.1:1883 and every device.
fn status(
    config_path: &std::path::Path,
    host: Option<String>,
    port: Option<u16>,
    device: Option<String>,
    wait: std::time::Duration,
) -> ExitCode {
    let from_config = config::load(config_path).ok();
    let host = host
        .or_else(|| from_config.as_ref().map(|s| s.mqtt.host.clone()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = port
        .or_else(|| from_config.as_ref().map(|s| s.mqtt.port))
        .unwrap_or(1883);
    mqtt::status::run(&host, port, device.as_deref(), wait)
}
