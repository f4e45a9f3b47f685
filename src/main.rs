//! edge-infer: keeps TFLite/LiteRT models warm next to the sensors, answers
//! MQTT readings with inference results. This file is the command line;
//! `app` runs the daemon. See ARCHITECTURE.md for the map.

mod app;
mod codec;
mod config;
mod health;
mod logging;
mod models;
mod mqtt;
mod router;
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
    edge-infer inspect MODEL.tflite [--runtime LIB] [--batch N]
                                              print a model's inputs and outputs
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
    let settings = config::load(path).map_err(|e| {
        eprintln!("edge-infer: {e}");
        ExitCode::from(status::BAD_INPUT)
    })?;
    logging::set_level(settings.log_level.to_filter());
    let runtime = Runtime::open(&LibrarySearch::for_process(
        settings.runtime_library.clone(),
    ))
    .map_err(|e| {
        eprintln!("edge-infer: {e}");
        ExitCode::from(status::NO_RUNTIME)
    })?;
    log::info!(
        "runtime library {} ({})",
        runtime.path().display(),
        runtime.flavor().as_str()
    );
    let models = models::load_all(&settings, &runtime).map_err(|problems| {
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
            m.settings.name,
            m.settings.path.display(),
            &m.sha256[..12],
            m.accelerator,
            m.engines.len(),
            m.load_ms
        );
    }
    Ok((settings, runtime, models))
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

fn check_config(path: &std::path::Path) -> ExitCode {
    let (settings, runtime, models) = match load(path) {
        Ok(x) => x,
        Err(code) => return code,
    };
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
    println!(
        "runtime:   {} ({})",
        runtime.path().display(),
        runtime.flavor().as_str()
    );
    println!("errors:    {}", app::errors_topic(&settings.device_id));
    println!(
        "limits:    max_payload_bytes={}",
        settings.max_payload_bytes
    );
    for m in &models {
        let s = &m.settings;
        println!("model {}:", s.name);
        println!("  file:     {} (sha256 {})", s.path.display(), m.sha256);
        println!(
            "  topics:   {} -> {}",
            s.input_topic,
            s.output_topic.as_str()
        );
        println!(
            "  serving:  payload={} workers={} threads={} queue={} overflow={} on {}",
            match s.payload {
                config::PayloadFormat::Json => "json",
                config::PayloadFormat::Raw => "raw",
            },
            s.workers,
            s.threads,
            s.queue_capacity,
            s.overflow.as_str(),
            m.accelerator
        );
        for t in &m.inputs {
            println!("  input:    {}", describe_tensor(t));
        }
        for t in &m.outputs {
            println!("  output:   {}", describe_tensor(t));
        }
        if let Some(labels) = &m.labels {
            println!("  labels:   {} ({})", labels.len(), labels.join(", "));
        }
        if let Some(k) = m.top_k {
            println!("  top_k:    {k}");
        }
        println!("  loaded and warmed in {:.1} ms", m.load_ms);
    }
    println!("ok: {} model(s) ready", models.len());
    ExitCode::SUCCESS
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

fn inspect(model: &std::path::Path, runtime: Option<PathBuf>, batch: u32) -> ExitCode {
    let rt = match Runtime::open(&LibrarySearch::for_process(runtime)) {
        Ok(rt) => rt,
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
    let options = model_runtime::LoadOptions {
        cpu_threads: 1,
        dynamic_batch: batch,
    };
    let engine = match rt.load(&model.display().to_string(), bytes, &options) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("edge-infer: {e}");
            return ExitCode::from(status::BAD_INPUT);
        }
    };
    println!("model:   {} ({size} bytes, sha256 {sha})", model.display());
    println!(
        "runtime: {} ({})",
        rt.path().display(),
        rt.flavor().as_str()
    );
    println!("inputs:");
    for (i, t) in engine.inputs().iter().enumerate() {
        println!("  [{i}] {}", describe_tensor(t));
    }
    println!("outputs:");
    for (i, t) in engine.outputs().iter().enumerate() {
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
