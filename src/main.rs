//! edge-infer: keeps TFLite/LiteRT models warm next to the sensors, answers
//! MQTT readings with inference results. This file is the command line;
//! `app` runs the daemon. See ARCHITECTURE.md for the map.

mod app;
mod codec;
mod config;
mod cores;
mod delivery;
mod exit;
mod health;
mod homeassistant;
mod job;
mod log_limit;
mod logging;
mod memory;
mod metrics;
mod models;
mod mqtt;
mod outbox;
mod publish;
mod replies;
#[cfg(test)]
mod robustness;
mod routing;
mod systemd;
mod telemetry;
mod time;
mod topic;
mod updates;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use std::sync::Arc;

use model_runtime::{LibrarySearch, Runtime};

/// The top-level `--help` after the list of subcommands.
const AFTER_LONG_HELP: &str = "\
The config defaults to /etc/edge-infer/config.toml. Relative paths in it are
resolved against its folder. Every key can be overridden from the environment
as EDGE_INFER__SECTION__KEY (e.g. EDGE_INFER__MQTT__PORT=1884).

The runtime library (libLiteRt.so, or libtensorflowlite_c.so on armv7) is
found through [runtime] library, then $EDGE_INFER_RUNTIME_LIBRARY (either,
when set, is the only place tried), then next to the binary, then
runtime/<arch>/ of the checkout the binary is in, then
/usr/lib/edge-infer, then the linker path.

EXIT STATUS, the same for every subcommand:
  0  ok
  1  runtime failure (status, publish-model: broker unreachable, or it did
     not take or confirm what was sent, or nothing arrived in time)
  2  bad usage, config or model
  3  runtime library not loadable

'edge-infer help SUBCOMMAND' (or SUBCOMMAND --help) describes each one.";

/// MQTT edge inference daemon
///
/// Keeps TFLite/LiteRT models loaded and warm next to the sensors, subscribes
/// to their topics on an MQTT broker and answers every reading with a result
/// or a precise error.
#[derive(Debug, Parser)]
#[command(
    name = "edge-infer",
    version,
    verbatim_doc_comment,
    after_long_help = AFTER_LONG_HELP,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the configured models until SIGTERM or SIGINT
    ///
    /// Loads the config, the runtime library and every model (warmed), then
    /// connects to the broker and answers every reading on the models' input
    /// topics. SIGTERM or SIGINT drains (every message taken is answered) and
    /// exits 0; SIGHUP reloads the config and models. Logs "ready: serving N
    /// model(s)" once the subscriptions are acknowledged.
    #[command(verbatim_doc_comment)]
    Run(ConfigArg),
    /// Load everything, print a summary, exit
    ///
    /// Checks the config, opens the runtime library, loads and warms every
    /// model and prints what `run` would serve. With no runtime library it
    /// checks the config and every model file alone, prints the same summary
    /// and exits 3 (2 if it found a problem).
    #[command(verbatim_doc_comment)]
    CheckConfig(ConfigArg),
    /// Print a model's inputs and outputs, or the accelerators on offer
    ///
    /// Tensor names, shapes, dtypes and quantization as the runtime library
    /// sees them. With no runtime library (and no --runtime), what the model
    /// file itself declares, read without one (exit 0).
    ///
    /// --accelerators instead lists what the runtime library and this
    /// machine offer (cpu, gpu, npu: whether each works here and why not),
    /// then tries every [delegates.NAME] of the config on the models that
    /// list it.
    #[command(verbatim_doc_comment)]
    Inspect(InspectArgs),
    /// Print the latest status and health of devices on the broker
    ///
    /// Reads the retained edge-infer/<device>/status and
    /// edge-infer/<device>/health records and prints one block per device.
    /// The broker is the one the daemon publishes to, from the config file
    /// when it can be read ([uplink] if set, else [mqtt]: address, TLS and
    /// credentials), else 127.0.0.1:1883; --host and --port replace the
    /// address. Exits 1 when the broker
    /// cannot be reached or no record arrived within --wait.
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// Make a key pair for signing model updates
    ///
    /// Writes DIR/NAME.key (the secret key, mode 0600) and DIR/NAME.pub
    /// (the public key) in minisign's format (the minisign tool reads and
    /// writes the same files), and prints the public key line for the
    /// devices' [updates] public_keys, and its key id. Never overwrites a
    /// file.
    ///
    /// With --password-file the secret key is encrypted with that password.
    /// Without it the secret key is NOT encrypted: whoever can read the file
    /// can sign updates every device accepts, so an unencrypted key belongs
    /// on an offline or otherwise secured signing machine.
    #[command(verbatim_doc_comment)]
    Keygen(KeygenArgs),
    /// Sign a model and publish it to a device or the fleet
    ///
    /// Signs (name, version, sha256, size) of --model with --secret-key,
    /// builds the manifest and checks it as a device will (against the
    /// config's [limits] and, if it has them, [updates] public_keys), then
    /// publishes, retained at QoS 1, every chunk of the model on
    ///   edge-infer/<device>/models/<name>/desired/chunk/<n>
    /// and, once the broker has confirmed them all, the manifest on
    ///   edge-infer/<device>/models/<name>/desired
    /// (<device> is "fleet" with --fleet). Chunks an earlier, bigger version
    /// left on those topics are cleared. The broker must deliver chunk 0 and
    /// the manifest back (a broker that drops a message it confirmed, over a
    /// size limit or against its ACL, is caught so).
    ///
    /// Offline signing: --sign-only prints the signed manifest (no broker);
    /// on the connected machine --manifest FILE publishes it with the chunks
    /// of --model. --path-on-device sends no chunks: the device reads the
    /// model from that file. --clear removes a manifest and its chunks.
    ///
    /// The broker is the config's [mqtt], where the daemon reads manifests
    /// (status reads [uplink] when set). Exits 2 on
    /// a bad flag, file, key or password, and 1 when the broker cannot be
    /// reached or does not take what was sent.
    #[command(verbatim_doc_comment)]
    PublishModel(PublishArgs),
    /// Print the version (as --version does)
    #[command(hide = true)]
    Version,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The config file (TOML)
    #[arg(
        short = 'c',
        long,
        value_name = "FILE",
        default_value = config::DEFAULT_CONFIG_PATH
    )]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The model file (.tflite)
    #[arg(value_name = "MODEL", required_unless_present = "accelerators")]
    model: Option<PathBuf>,
    /// List the accelerators on offer instead of a model's tensors
    #[arg(long, conflicts_with = "model")]
    accelerators: bool,
    /// With --accelerators: the config whose [delegates] to try
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use this runtime library and no other; exit 3 if it does not load
    #[arg(long, value_name = "LIB")]
    runtime: Option<PathBuf>,
    /// Fix a dynamic (-1) batch dimension at N, as a model's `batch` setting
    /// does
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    batch: u32,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The config to take the broker's host and port from, unless --host or
    /// --port is given (ignored when it cannot be read)
    #[arg(
        short = 'c',
        long,
        value_name = "FILE",
        default_value = config::DEFAULT_CONFIG_PATH
    )]
    config: PathBuf,
    /// Broker host [default: the config's, else 127.0.0.1]
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Broker port [default: the config's, else 1883]
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Only this device (its device_id) [default: every device]
    #[arg(long, value_name = "ID", value_parser = parse_device)]
    device: Option<String>,
    /// How long to wait for the records, in seconds (0.5 to 3600)
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_wait)]
    wait: Duration,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// The folder for NAME.key and NAME.pub (made, mode 0700, if missing)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The key files' name
    #[arg(long, value_name = "NAME", default_value = "edge-infer")]
    name: String,
    /// Encrypt the secret key with the password on this file's first line
    /// (- reads standard input) [default: not encrypted]
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").args(["device", "fleet"])))]
struct PublishArgs {
    /// The model file (.tflite) to sign and send
    #[arg(long, value_name = "FILE", required_unless_present_any = ["clear", "manifest"])]
    model: Option<PathBuf>,
    /// The model's name on the devices ([[models]] name)
    #[arg(long, value_name = "MODEL", value_parser = parse_device)]
    name: String,
    /// The version: 1 to 4 dot-separated numbers (3, 1.2, 2026.11.30)
    #[arg(
        long,
        value_name = "V",
        required_unless_present_any = ["clear", "manifest"],
        value_parser = parse_version
    )]
    version: Option<String>,
    /// The minisign secret key to sign with (keygen's NAME.key)
    #[arg(long, value_name = "KEY", required_unless_present_any = ["clear", "manifest"])]
    secret_key: Option<PathBuf>,
    /// A file whose first line is the secret key's password (- reads
    /// standard input) [default: asked for on a terminal]
    #[arg(long, value_name = "FILE", requires = "secret_key")]
    password_file: Option<PathBuf>,
    /// Publish to this device (its device_id)
    #[arg(long, value_name = "ID", value_parser = parse_device)]
    device: Option<String>,
    /// Publish to the fleet: every device without a manifest of its own
    #[arg(long)]
    fleet: bool,
    /// Bytes per chunk: 1024 to 1048576, or with KiB/MiB (64KiB); keep each
    /// chunk's packet under the broker's limit
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = updates::manifest::DEFAULT_CHUNK_SIZE,
        value_parser = parse_chunk_size,
        conflicts_with_all = ["path_on_device", "manifest"]
    )]
    chunk_size: u64,
    /// Golden inputs for the device to check the model on: a JSON array of
    /// {"payload" or "payload_base64", "outputs", "tolerance"}
    #[arg(long, value_name = "FILE.json", conflicts_with = "manifest")]
    golden: Option<PathBuf>,
    /// Send no chunks: the device reads the model from this absolute path
    #[arg(long, value_name = "ABS", value_parser = parse_absolute, conflicts_with = "manifest")]
    path_on_device: Option<PathBuf>,
    /// Publish this manifest, signed before with --sign-only, with the
    /// chunks of --model
    #[arg(long, value_name = "FILE", conflicts_with_all = ["secret_key", "version", "sign_only"])]
    manifest: Option<PathBuf>,
    /// Print the signed manifest on stdout instead of publishing it
    #[arg(long, visible_alias = "dry-run")]
    sign_only: bool,
    /// Remove the manifest on the device's (or fleet's) desired topic and
    /// its chunks
    #[arg(
        long,
        conflicts_with_all = ["model", "version", "secret_key", "password_file", "golden", "path_on_device", "manifest", "sign_only"]
    )]
    clear: bool,
    /// Do not wait for the broker to deliver chunk 0 and the manifest back
    /// (for a broker that does not send a client its own messages)
    #[arg(long)]
    no_delivery_check: bool,
    /// The config to take the broker from (as `status` does) and to check
    /// the update against ([limits], [updates] public_keys)
    #[arg(
        short = 'c',
        long,
        value_name = "FILE",
        default_value = config::DEFAULT_CONFIG_PATH
    )]
    config: PathBuf,
    /// Broker host [default: the config's, else 127.0.0.1]
    #[arg(long, value_name = "H")]
    host: Option<String>,
    /// Broker port [default: the config's, else 1883]
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// How long each step with the broker may take, in seconds (0.5 to 3600)
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_wait)]
    wait: Duration,
}

/// `--device`: one topic level, the rule the config's `device_id` follows.
fn parse_device(s: &str) -> Result<String, String> {
    config::check_topic_level(s).map(|()| s.to_string())
}

/// `--version`: the rule updates compare versions by.
fn parse_version(s: &str) -> Result<String, String> {
    config::Version::parse(s).map(|v| v.to_string())
}

/// `--chunk-size`: bytes, or KiB/MiB, within what a manifest may say.
fn parse_chunk_size(s: &str) -> Result<u64, String> {
    use updates::download::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
    let s = s.trim();
    let (digits, unit) = if let Some(d) = s.strip_suffix("KiB") {
        (d, 1024)
    } else if let Some(d) = s.strip_suffix("MiB") {
        (d, 1024 * 1024)
    } else {
        (s, 1)
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(n))
        .ok_or_else(|| {
            format!("needs {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes (or 1KiB to 1MiB)")
        })
}

/// `--path-on-device`: a path on another machine, so only its form is
/// checked.
fn parse_absolute(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err("needs an absolute path (the model's file on the device)".into())
    }
}

/// `--wait`: seconds, 0.5 to 3600, fractions allowed.
fn parse_wait(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|secs| (0.5..=3600.0).contains(secs))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| "needs seconds between 0.5 and 3600".into())
}

fn main() -> ExitCode {
    memory::configure_allocator();
    logging::init();
    // The broker connections build their rustls configs on ring
    // explicitly (config/tls.rs); installing it as the process default too
    // means no other rustls path can find the default missing. Fails only
    // if one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version arrive here too: printed on stdout, success.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run(a) => run(&a.config),
        Command::CheckConfig(a) => check_config(&a.config),
        Command::Inspect(a) if a.config.is_some() && !a.accelerators => {
            // clap's `requires` sees a flag that was not given as present
            // (false), so this one rule is checked here.
            eprintln!(
                "error: --config <FILE> names the config whose [delegates] `inspect --accelerators` tries; a model's tensors need no config\n\nUsage: edge-infer inspect [OPTIONS] [MODEL]"
            );
            ExitCode::from(exit::BAD_INPUT)
        }
        Command::Inspect(a) => match a.model {
            Some(model) => inspect(&model, a.runtime, a.batch),
            None => inspect_accelerators(a.runtime, a.config.as_deref()),
        },
        Command::Status(a) => status(&a.config, a.host, a.port, a.device, a.wait),
        Command::Keygen(a) => keygen(&a),
        Command::PublishModel(a) => publish_model(a),
        Command::Version => {
            println!("edge-infer {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}

fn load_settings(path: &std::path::Path) -> Result<config::Settings, ExitCode> {
    let settings = config::load(path).map_err(|e| {
        eprintln!("edge-infer: {e}");
        ExitCode::from(exit::BAD_INPUT)
    })?;
    logging::set_level(settings.log_level.to_filter());
    for warning in config::exposure_warnings(path, &settings) {
        log::warn!("{warning}");
    }
    Ok(settings)
}

fn open_runtime(settings: &config::Settings) -> Result<Arc<Runtime>, model_runtime::RuntimeError> {
    let runtime = Runtime::open(&LibrarySearch::for_process(
        settings.runtime_library.clone(),
    ))?;
    log::info!(
        "runtime library {} ({})",
        runtime.path().display(),
        runtime.flavor().as_str()
    );
    // Shared by every model's engines for the life of the process: a
    // model that falls back to another accelerator loads it again.
    Ok(Arc::new(runtime))
}

/// Says why the models did not load; the exit code for it.
fn config_problems(path: &std::path::Path, problems: Vec<config::Problem>) -> ExitCode {
    let e = config::ConfigError {
        path: path.to_path_buf(),
        problems,
    };
    eprintln!("edge-infer: {e}");
    ExitCode::from(exit::BAD_INPUT)
}

fn log_loaded(models: &[models::LoadedModel]) {
    for m in models {
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
}

fn run(path: &std::path::Path) -> ExitCode {
    let mut settings = match load_settings(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Before the models load: a model with an active update starts on it.
    let mut startup = match updates::open(&mut settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("edge-infer: {e} (remote updates keep models in state_dir; set it to a writable directory or remove [updates])");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let runtime = match open_runtime(&settings) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edge-infer: {e}");
            return ExitCode::from(exit::NO_RUNTIME);
        }
    };
    let models = match models::load_all(&settings, &runtime) {
        Ok(models) => models,
        // Loaded again, with the previous versions.
        Err(problems) if startup.fall_back_unloadable(&mut settings, &problems) => {
            match models::load_all(&settings, &runtime) {
                Ok(models) => models,
                Err(problems) => return config_problems(path, problems),
            }
        }
        Err(problems) => return config_problems(path, problems),
    };
    log_loaded(&models);
    match app::run(path.to_path_buf(), settings, runtime, models, startup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-infer: {e:#}");
            ExitCode::from(exit::FAILURE)
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
    let models = match models::load_all(&settings, &runtime) {
        Ok(m) => m,
        Err(problems) => return config_problems(path, problems),
    };
    log_loaded(&models);
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
            let code = config_problems(path, problems);
            eprintln!("edge-infer: also: {no_runtime}");
            return code;
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
    ExitCode::from(exit::NO_RUNTIME)
}

/// One model's part of the `check-config` summary.
struct ModelSummary<'a> {
    settings: &'a config::ModelSettings,
    sha256: &'a str,
    inputs: &'a [model_runtime::TensorSpec],
    outputs: &'a [model_runtime::TensorSpec],
    labels: Option<&'a [String]>,
    top_k: Option<usize>,
    intake: &'a models::Intake,
    /// The queue's byte budget, configured or sized from the input.
    queue_budget: usize,
    /// What runs it and how long load and warm-up took; `None` when it was
    /// only checked from its file.
    loaded: Option<(&'a str, f64)>,
    /// Which of its accelerators serves it and why not a better one.
    acceleration: Option<models::AccelReport>,
}

impl<'a> From<&'a models::LoadedModel> for ModelSummary<'a> {
    fn from(m: &'a models::LoadedModel) -> Self {
        ModelSummary {
            loaded: Some((&m.accelerator, m.load_ms)),
            acceleration: Some(m.chain.report()),
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
            intake: &m.intake,
            queue_budget: m.queue_budget(),
            loaded: None,
            acceleration: None,
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
    println!("broker:    {}", describe_broker(&settings.mqtt));
    if let Some(uplink) = &settings.uplink {
        println!(
            "uplink:    {} (results, errors, status, health)",
            describe_broker(uplink)
        );
    }
    println!("runtime:   {runtime}");
    for (name, d) in &settings.delegates {
        let options: Vec<String> = d.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "delegate:  {name}: {}{}",
            d.library.display(),
            if options.is_empty() {
                String::new()
            } else {
                format!(" ({})", options.join(" "))
            }
        );
    }
    println!("errors:    {}", replies::errors_topic(&settings.device_id));
    println!(
        "limits:    max_payload_bytes={} max_model_bytes={} max_labels_bytes={}",
        settings.max_payload_bytes,
        settings.file_limits.max_model_bytes,
        settings.file_limits.max_labels_bytes
    );
    println!(
        "outbox:    {}",
        if settings.outbox.enabled() {
            format!(
                "{} max_bytes={} max_age_secs={} on_full={}",
                config::OutboxSettings::dir(&settings.state_dir).display(),
                settings.outbox.max_bytes,
                settings.outbox.max_age.as_secs(),
                settings.outbox.on_full.as_str()
            )
        } else {
            "off (max_bytes = 0)".into()
        }
    );
    println!(
        "metrics:   {}",
        match &settings.metrics {
            Some(m) => format!("http://{}/metrics (Prometheus)", m.listen),
            None => "off (no [metrics] section, or enabled = false)".into(),
        }
    );
    println!(
        "delivery:  ack={} ({})",
        settings.ack.as_str(),
        match settings.ack {
            config::AckPolicy::Answered => {
                "a QoS 1 input is acknowledged once every answer is confirmed or in the outbox"
            }
            config::AckPolicy::Queued => "a QoS 1 input is acknowledged once queued",
        }
    );
    println!(
        "homeassistant: {}",
        match &settings.homeassistant {
            Some(ha) => format!(
                "discovery under {}/sensor/{}/ (re-sent on {})",
                ha.prefix,
                topic::homeassistant_id(&settings.device_id),
                topic::homeassistant_status_topic(&ha.prefix)
            ),
            None => "off".into(),
        }
    );
    println!(
        "updates:   {}",
        match &settings.updates {
            Some(u) => format!(
                "from {} and {}, signed by key(s) {}; probation {:.0} s{}; staged in {}",
                topic::desired_topic(&settings.device_id, "<model>"),
                topic::desired_topic(topic::FLEET, "<model>"),
                u.public_keys
                    .iter()
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                u.probation.as_secs_f64(),
                if u.allow_downgrade {
                    "; downgrades allowed"
                } else {
                    ""
                },
                settings.state_dir.join("models").display()
            ),
            None => "off (no [updates] section)".into(),
        }
    );
    for m in models {
        let s = m.settings;
        println!("model {}:", s.name);
        match &s.version {
            Some(v) => println!(
                "  file:     {} (sha256 {}, version {v})",
                s.path.display(),
                m.sha256
            ),
            None => println!("  file:     {} (sha256 {})", s.path.display(), m.sha256),
        }
        println!(
            "  topics:   {} -> {}{}",
            s.input_topic,
            s.output_topic.as_str(),
            s.input_topic
                .share_group()
                .map_or(String::new(), |g| format!(
                    " (shared subscription: group \"{g}\" splits the stream among its members)"
                ))
        );
        println!(
            "  serving:  payload={} workers={} threads={} worker_priority={} queue={} queue_max_bytes={}{} overflow={}{}{}",
            s.payload.as_str(),
            s.workers,
            s.threads,
            s.worker_priority.as_str(),
            s.queue_capacity,
            m.queue_budget,
            if s.queue_max_bytes.is_none() {
                " (sized from the input)"
            } else {
                ""
            },
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
        if let Some(line) = describe_accelerators(s, m.acceleration.as_ref()) {
            println!("  accel:    {line}");
        }
        for t in m.inputs {
            println!("  input:    {}", describe_tensor(t));
        }
        for line in m.intake.describe(s) {
            println!("  intake:   {line}");
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

/// The model's accelerators and, once loaded, which one serves and why
/// not a more preferred one; None for a model on the cpu alone.
fn describe_accelerators(
    s: &config::ModelSettings,
    report: Option<&models::AccelReport>,
) -> Option<String> {
    let names: Vec<&str> = s.accel.accelerators.iter().map(|a| a.name()).collect();
    let partial = report.is_some_and(|r| r.delegation == "partial" || r.delegation == "none");
    if names == ["cpu"] && !partial {
        return None;
    }
    let mut line = names.join(" > ");
    if let Some(cpu) = &s.accel.cpu_path {
        line.push_str(&format!(" (cpu runs {})", cpu.display()));
    }
    if let Some(r) = report {
        line.push_str(&format!("; serving on {}", r.serving));
        match (r.delegation, r.delegated_nodes, r.total_nodes) {
            ("partial", Some(d), Some(t)) => {
                line.push_str(&format!(", partly delegated ({d} of {t} nodes)"))
            }
            ("partial", _, _) => line.push_str(", partly delegated"),
            ("none", _, _) => line.push_str(", which took no node"),
            ("full", _, _) => line.push_str(", fully delegated"),
            _ => {}
        }
        if let Some(why) = &r.fallback_reason {
            line.push_str(&format!(" (not {}: {why})", r.preferred));
        }
    }
    Some(line)
}

/// One broker connection for the `check-config` summary (never the
/// password).
fn describe_broker(m: &config::MqttSettings) -> String {
    let mut s = format!(
        "{} client_id={} keep_alive={}s qos={} clean_session={}",
        m.url(),
        m.client_id,
        m.keep_alive.as_secs(),
        m.qos,
        m.clean_session
    );
    match m.protocol {
        config::Protocol::V311 => {}
        config::Protocol::V5 {
            session_expiry_secs,
            receive_maximum,
        } => s.push_str(&format!(
            " protocol={} session_expiry={session_expiry_secs}s receive_maximum={receive_maximum}",
            m.protocol.as_str()
        )),
    }
    if let Some((user, _)) = &m.credentials {
        s.push_str(&format!(" username={user}"));
    }
    if let Some(tls) = &m.tls {
        s.push_str(&format!("; TLS {}", tls.describe()));
    }
    s
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
            return ExitCode::from(exit::NO_RUNTIME);
        }
    };
    // The default cap: `inspect` reads no config.
    let cap = config::FileLimits::default().max_model_bytes;
    let bytes = match models::read_model_file(model, cap) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("edge-infer: {e}");
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    let sha = models::sha256_hex(&bytes);
    let size = bytes.len();
    let origin = model.display().to_string();
    // Read before the runtime takes the bytes: an Edge TPU model is
    // explained whether or not a runtime loads, and its tensors still shown
    // when the CPU runtime refuses it.
    let edgetpu = model_runtime::read_custom_ops(&origin, &bytes)
        .is_ok_and(|ops| ops.iter().any(|op| op == model_runtime::EDGETPU_CUSTOM_OP));
    let static_facts = edgetpu.then(|| model_runtime::read_model_facts(&origin, &bytes, batch));
    let mut refusal = None;
    let (runtime_line, inputs, outputs) = match rt {
        Some(rt) => {
            let options = model_runtime::LoadOptions {
                cpu_threads: 1,
                dynamic_batch: batch,
                ..Default::default()
            };
            let runtime = format!("{} ({})", rt.path().display(), rt.flavor().as_str());
            match (rt.load(&origin, bytes, &options), static_facts) {
                (Ok(engine), _) => (
                    runtime,
                    engine.inputs().to_vec(),
                    engine.outputs().to_vec(),
                ),
                (Err(e @ model_runtime::RuntimeError::Accelerator { .. }), Some(Ok(facts))) => {
                    let line = format!(
                        "{runtime}: not loaded, it cannot run this model on the CPU (tensors read from the file)"
                    );
                    refusal = Some(e);
                    (line, facts.inputs, facts.outputs)
                }
                (Err(e), _) => {
                    eprintln!("edge-infer: {e}");
                    return ExitCode::from(exit::BAD_INPUT);
                }
            }
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
                return ExitCode::from(exit::BAD_INPUT);
            }
        },
    };
    println!("model:   {} ({size} bytes, sha256 {sha})", model.display());
    println!("runtime: {runtime_line}");
    if edgetpu {
        print!("{}", edgetpu_notice(model, &inputs, &outputs, batch));
    }
    println!("inputs:");
    for (i, t) in inputs.iter().enumerate() {
        println!("  [{i}] {}", describe_tensor(t));
    }
    println!("outputs:");
    for (i, t) in outputs.iter().enumerate() {
        println!("  [{i}] {}", describe_tensor(t));
    }
    // Shown like any model the runtime cannot load: exit 2, the reason last.
    if let Some(e) = refusal {
        eprintln!("edge-infer: {e}");
        return ExitCode::from(exit::BAD_INPUT);
    }
    ExitCode::SUCCESS
}

/// What `inspect` says about a model compiled for the Edge TPU: what it
/// needs and the config that serves it. `edgetpu_compiler` names its output
/// `NAME_edgetpu.tflite`; a `NAME.tflite` next to it with the same inputs
/// and outputs is offered as the `cpu_path`.
fn edgetpu_notice(
    model: &std::path::Path,
    inputs: &[model_runtime::TensorSpec],
    outputs: &[model_runtime::TensorSpec],
    batch: u32,
) -> String {
    let twin = model
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("_edgetpu.tflite"))
        .map(|stem| model.with_file_name(format!("{stem}.tflite")))
        .filter(|p| p.is_file());
    let cap = config::FileLimits::default().max_model_bytes;
    let cpu_path = match twin {
        Some(p) => {
            let same = models::read_model_file(&p, cap).ok().and_then(|b| {
                model_runtime::read_model_facts(&p.display().to_string(), &b, batch).ok()
            });
            let verdict = match same {
                Some(f) if f.inputs == inputs && f.outputs == outputs => {
                    "found next to it, same inputs and outputs"
                }
                Some(_) => "found next to it, but its inputs or outputs differ: not its CPU build",
                None => "found next to it, but it does not read as a model",
            };
            format!("cpu_path = \"{}\"   # {verdict}", p.display())
        }
        None => "cpu_path = \"...\"   # a CPU build of the same model (optional)".to_string(),
    };
    format!(
        "edgetpu: compiled for the Edge TPU (contains {op}): runs only through an Edge TPU\n\
         \x20        delegate (libedgetpu), not on the CPU runtime. Serve it with:\n\
         \x20          [[models]]\n\
         \x20          path = \"{path}\"\n\
         \x20          accelerators = [\"edgetpu\", \"cpu\"]\n\
         \x20          {cpu_path}\n\
         \x20          [delegates.edgetpu]\n\
         \x20          library = \"libedgetpu.so.1\"\n\
         \x20        With no Edge TPU attached, cpu_path runs on the cpu instead.\n",
        op = model_runtime::EDGETPU_CUSTOM_OP,
        path = model.display(),
    )
}

/// `inspect --accelerators`: what the runtime library and this machine
/// offer, then each configured delegate tried on the models that list it
/// (a delegate is created per model, and what it takes depends on the
/// model). Exit 0 when it could look (an unavailable accelerator is a
/// finding, not a failure), 3 without a runtime library, 2 for a config
/// that does not load.
fn inspect_accelerators(
    runtime: Option<PathBuf>,
    config_path: Option<&std::path::Path>,
) -> ExitCode {
    let settings = match config_path {
        Some(path) => match config::load(path) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("edge-infer: {e}");
                return ExitCode::from(exit::BAD_INPUT);
            }
        },
        None => None,
    };
    let library = runtime.or_else(|| settings.as_ref().and_then(|s| s.runtime_library.clone()));
    let rt = match Runtime::open(&LibrarySearch::for_process(library)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-infer: {e}");
            return ExitCode::from(exit::NO_RUNTIME);
        }
    };
    println!(
        "runtime: {} ({})",
        rt.path().display(),
        rt.flavor().as_str()
    );
    for o in rt.offered() {
        println!(
            "{:<8} {:<11} {}",
            o.name,
            if o.available {
                "available"
            } else {
                "unavailable"
            },
            o.detail
        );
    }
    let Some(settings) = settings else {
        return ExitCode::SUCCESS;
    };
    for (name, spec) in &settings.delegates {
        let users: Vec<&config::ModelSettings> = settings
            .models
            .iter()
            .filter(|m| {
                m.accel.accelerators.iter().any(
                    |a| matches!(a, model_runtime::Accelerator::Delegate(d) if d.name == *name),
                )
            })
            .collect();
        if users.is_empty() {
            println!(
                "{name:<8} {:<11} {}: no model lists it in accelerators",
                "unused",
                spec.library.display()
            );
            continue;
        }
        for m in users {
            let origin = m.path.display().to_string();
            let bytes = match models::read_model_file(&m.path, settings.file_limits.max_model_bytes)
            {
                Ok(b) => b,
                Err(e) => {
                    println!("{name:<8} {:<11} model {}: {e}", "unknown", m.name);
                    continue;
                }
            };
            let options = model_runtime::LoadOptions {
                cpu_threads: m.threads,
                dynamic_batch: m.engine_batch(),
                accelerator: model_runtime::Accelerator::Delegate(spec.clone()),
            };
            match rt.load(&origin, bytes, &options) {
                Ok(engine) => println!(
                    "{name:<8} {:<11} model {}: {} ({})",
                    "available",
                    m.name,
                    engine.accelerator(),
                    describe_delegation(engine.delegation())
                ),
                Err(e) => println!("{name:<8} {:<11} model {}: {e}", "unavailable", m.name),
            }
        }
    }
    ExitCode::SUCCESS
}

fn describe_delegation(d: model_runtime::Delegation) -> String {
    use model_runtime::Delegation;
    match d {
        Delegation::Cpu => "on the cpu".into(),
        Delegation::Full => "fully delegated".into(),
        Delegation::Partial {
            delegated: Some(n),
            total: Some(t),
        } => format!("partly delegated: {n} of {t} nodes"),
        Delegation::Partial { .. } => "partly delegated".into(),
        Delegation::None => "the delegate took no node".into(),
    }
}

/// `status`: the broker the daemon publishes its records to, from the
/// config file when it can be read (`[uplink]` when set, else `[mqtt]`:
/// address, TLS, credentials), else 127.0.0.1:1883; `--host` and `--port`
/// replace the address only. The device from `--device` (already checked),
/// else every device.
fn status(
    config_path: &std::path::Path,
    host: Option<String>,
    port: Option<u16>,
    device: Option<String>,
    wait: Duration,
) -> ExitCode {
    let (broker, _) = operator_broker(config_path, host, port, Side::Output);
    mqtt::status::run(&broker, device.as_deref(), wait)
}

/// Which of the daemon's brokers an operator's command talks to.
#[derive(Clone, Copy)]
enum Side {
    /// Where the daemon publishes (`[uplink]` if set, else `[mqtt]`):
    /// `status` reads the records there.
    Output,
    /// Where the daemon subscribes (`[mqtt]`): `publish-model` puts the
    /// manifests there.
    Input,
}

/// The broker an operator's command talks to, from the config when it
/// loads (address, TLS and credentials of the `side`), else
/// 127.0.0.1:1883; `host` and `port` replace the address. Also the config,
/// or why it did not load.
fn operator_broker(
    config_path: &std::path::Path,
    host: Option<String>,
    port: Option<u16>,
    side: Side,
) -> (mqtt::tool::Broker, Result<config::Settings, String>) {
    let settings = config::load(config_path).map_err(|e| e.to_string());
    let link = settings.as_ref().ok().map(|s| match side {
        Side::Output => s.uplink.as_ref().unwrap_or(&s.mqtt),
        Side::Input => &s.mqtt,
    });
    let broker = mqtt::tool::Broker {
        host: host
            .or_else(|| link.map(|l| l.host.clone()))
            .unwrap_or_else(|| "127.0.0.1".into()),
        port: port.or_else(|| link.map(|l| l.port)).unwrap_or(1883),
        tls: link.and_then(|l| l.tls.clone()),
        credentials: link.and_then(|l| l.credentials.clone()),
    };
    (broker, settings)
}

/// `keygen`.
fn keygen(a: &KeygenArgs) -> ExitCode {
    let g = match publish::keys::keygen(&a.out, &a.name, a.password_file.as_deref()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("edge-infer keygen: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let protection = if g.encrypted {
        "encrypted with the password; mode 0600"
    } else {
        "NOT encrypted: keep it on an offline or secured signing machine; mode 0600"
    };
    println!("secret key  {} ({protection})", g.secret_path.display());
    println!("public key  {}", g.public_path.display());
    println!("key id      {}", g.key_id);
    println!();
    println!("Devices that take updates signed with this key trust it in their config:");
    println!();
    println!("[updates]");
    println!("public_keys = [\"{}\"]", g.public_key);
    ExitCode::SUCCESS
}

/// `publish-model`.
fn publish_model(a: PublishArgs) -> ExitCode {
    let (broker, settings) = operator_broker(&a.config, a.host.clone(), a.port, Side::Input);
    let needs_broker = !a.sign_only;
    let settings = match settings {
        Ok(s) => Some(s),
        Err(why) => {
            // The default path is missing on an operator's machine, and
            // that says nothing; a config that is there but does not load
            // is worth a word.
            if a.config.exists() {
                eprintln!(
                    "edge-infer publish-model: note: not using {}{}, and the update is not checked against its [limits] and [updates]: {why}",
                    a.config.display(),
                    if needs_broker {
                        format!(" (the broker is {})", broker.url())
                    } else {
                        String::new()
                    }
                );
            }
            None
        }
    };
    let action = if a.clear {
        publish::Action::Clear
    } else if a.sign_only {
        publish::Action::SignOnly
    } else {
        publish::Action::Publish
    };
    let target = match (a.device, a.fleet) {
        (Some(d), _) => Some(d),
        (None, true) => Some(topic::FLEET.to_string()),
        (None, false) if action == publish::Action::SignOnly => None,
        (None, false) => {
            eprintln!(
                "error: say where to publish: --device <ID> or --fleet\n\nUsage: edge-infer publish-model [OPTIONS] --name <MODEL>"
            );
            return ExitCode::from(exit::BAD_INPUT);
        }
    };
    if a.no_delivery_check && !needs_broker {
        eprintln!("edge-infer publish-model: note: --no-delivery-check has no effect without a broker (--sign-only)");
    }
    let request = publish::Request {
        action,
        model: a.model,
        name: a.name,
        version: a.version,
        secret_key: a.secret_key,
        password_file: a.password_file,
        target,
        chunk_size: a.chunk_size,
        golden: a.golden,
        path_on_device: a.path_on_device,
        manifest: a.manifest,
        delivery_check: !a.no_delivery_check,
        wait: a.wait,
    };
    let config = settings.as_ref().map(|s| publish::DeviceConfig {
        path: &a.config,
        settings: s,
    });
    match publish::publish_model(&request, &broker, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-infer publish-model: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        assert!(AFTER_LONG_HELP.contains(config::DEFAULT_CONFIG_PATH));
    }

    #[test]
    fn chunk_sizes_take_bytes_or_binary_units_within_bounds() {
        assert_eq!(parse_chunk_size("65536"), Ok(65536));
        assert_eq!(parse_chunk_size("64KiB"), Ok(65536));
        assert_eq!(parse_chunk_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_chunk_size("1KiB"), Ok(1024));
        for bad in ["1023", "2MiB", "64KB", "64k", "", "-1", "1.5KiB"] {
            assert!(parse_chunk_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_chunk_size(&updates::manifest::DEFAULT_CHUNK_SIZE.to_string()),
            Ok(updates::manifest::DEFAULT_CHUNK_SIZE)
        );
    }

    #[test]
    fn wait_is_seconds_within_bounds() {
        assert_eq!(parse_wait("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("3600"), Ok(Duration::from_secs(3600)));
        for bad in ["0.4", "3600.1", "NaN", "inf", "-1", "", "5s"] {
            assert!(parse_wait(bad).is_err(), "{bad}");
        }
    }
}
