//! The service side: the systemd unit (sandbox score, `systemd-analyze
//! verify`), the packaged default config, `scripts/install.sh` into a staging
//! root, and the real `.deb` installed with dpkg, checked and purged.
//!
//! The .deb test needs root and `target/debian/edge-infer_*.deb`, which
//! `scripts/test.sh` builds with `scripts/package.sh` before `cargo test`.
//! It installs the package on this machine for real and purges it again
//! (also after a failure, and before it starts if a previous run left it).
//!
//! Helpers are inline on purpose (tests/common is the broker harness).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "systemd/edge-infer.service";
const PACKAGED_CONFIG: &str = "config/edge-infer.toml";
const MODELS_DIR: &str = "/usr/share/edge-infer/models";
const MAX_EXPOSURE: f64 = 2.0;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn daemon_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-infer"))
}

/// Runs a command to completion; panics (with the command) if it cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn is_root() -> bool {
    let out = run(Command::new("id").arg("-u"));
    text(&out.stdout).trim() == "0"
}

/// The value of `key=` lines in a unit file (all of them, in order).
fn unit_values(unit_text: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix).map(|v| v.trim().to_string()))
        .collect()
}

/// `path = "..."` and `labels = "..."` values of the active (uncommented)
/// lines of a config file.
fn config_file_paths(config_text: &str) -> Vec<String> {
    config_text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            matches!(k.trim(), "path" | "labels" | "library")
                .then(|| v.trim().trim_matches('"').to_string())
        })
        .collect()
}

/// `check-config` with an environment free of overrides, so only the config
/// file and the binary's own search decide.
fn check_config(binary: &Path, config: &Path) -> Output {
    let mut cmd = Command::new(binary);
    cmd.args(["check-config", "--config"]).arg(config);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("EDGE_INFER") || k == "STATE_DIRECTORY" {
            cmd.env_remove(k);
        }
    }
    run(&mut cmd)
}

fn assert_check_config_ok(binary: &Path, config: &Path) -> String {
    let out = check_config(binary, config);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("ok: 1 model(s) ready"),
        "{} check-config --config {} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        binary.display(),
        config.display(),
        out.status
    );
    stdout
}

// --- the unit ----------------------------------------------------------------

#[test]
fn unit_sandbox_exposure_is_at_most_2() {
    let out = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(repo().join(UNIT)));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    println!("{}", text(&out.stderr));
    assert!(
        out.status.success(),
        "systemd-analyze security failed ({})",
        out.status
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{stdout}"));
    // Visible in normal runs too: libtest captures println!/eprintln! of
    // passing tests, but not writes to the stderr handle itself.
    let _ = writeln!(
        std::io::stderr(),
        "systemd-analyze security --offline=true {UNIT}: {}",
        line.trim()
    );
    let score: f64 = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the exposure in {line:?}"));
    assert!(
        score <= MAX_EXPOSURE,
        "overall exposure {score} is above {MAX_EXPOSURE}:\n{stdout}"
    );
}

/// `systemd-analyze verify` works without a running systemd, but it checks
/// that ExecStart's binary exists, so the unit is verified as a copy whose
/// ExecStart points at the binary cargo built. (The .deb test verifies the
/// installed unit as it is.)
#[test]
fn unit_verifies() {
    let unit = std::fs::read_to_string(repo().join(UNIT)).unwrap();
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        ["/usr/bin/edge-infer run --config /etc/edge-infer/config.toml"]
    );
    for (key, want) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30s"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "edge-infer"),
        ("ConfigurationDirectory", "edge-infer"),
        ("Restart", "on-failure"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(unit_values(&unit, key), [want], "{key}=");
    }
    assert!(
        unit_values(&unit, "ProcSubset").is_empty(),
        "ProcSubset=pid would hide /proc/stat, /proc/meminfo and /proc/loadavg"
    );
    // The stop timeout must cover the default 10 s drain.
    let stop = unit_values(&unit, "TimeoutStopSec");
    let secs: u64 = stop[0].trim_end_matches('s').parse().unwrap();
    assert!(
        secs > 10,
        "TimeoutStopSec={secs} must exceed the 10 s drain"
    );

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("edge-infer.service");
    let bin = daemon_binary();
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/edge-infer", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let stderr = text(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("edge-infer.service"),
        "systemd-analyze verify ({}):\n{stderr}{}",
        out.status,
        text(&out.stdout)
    );
}

// --- the packaged config -------------------------------------------------------

/// The packaged config, with its model paths pointed at this checkout, loads
/// with the binary cargo built; and so does a copy with every documented
/// (commented-out) key switched on, so the reference lists no stale key.
#[test]
fn packaged_config_checks() {
    let text = std::fs::read_to_string(repo().join(PACKAGED_CONFIG)).unwrap();
    for p in config_file_paths(&text) {
        assert!(p.starts_with(MODELS_DIR), "{p} is not a packaged model");
    }
    let models = repo().join("models");
    let local = text.replace(MODELS_DIR, models.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, &local).unwrap();
    let out = assert_check_config_ok(&daemon_binary(), &cfg);
    assert!(out.contains("mqtt://127.0.0.1:1883"), "{out}");
    assert!(
        out.contains("labels:   4 (idle, walking, running, fall)"),
        "{out}"
    );

    // Every `#key = value` line switched on (the commented-out second model
    // excepted), with paths that exist here.
    let runtime = repo().join(format!("runtime/{}/libLiteRt.so", std::env::consts::ARCH));
    let mut all = String::new();
    for line in local.lines() {
        if line.starts_with("# A second model") {
            break;
        }
        let on = match line.strip_prefix('#') {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest
            }
            _ => line,
        };
        all.push_str(on);
        all.push('\n');
    }
    let all = all
        .replace(
            "/usr/lib/edge-infer/libLiteRt.so",
            runtime.to_str().unwrap(),
        )
        .replace("/var/lib/edge-infer", dir.path().to_str().unwrap());
    assert!(all.contains("\nstall_timeout_secs = 60"), "{all}");
    let cfg_all = dir.path().join("all-keys.toml");
    std::fs::write(&cfg_all, &all).unwrap();
    let out = assert_check_config_ok(&daemon_binary(), &cfg_all);
    assert!(out.contains("device_id: gw-1"), "{out}");
}

// --- scripts/install.sh ----------------------------------------------------------

fn install_sh(destdir: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new(repo().join("scripts/install.sh"))
            .args(args)
            .env("DESTDIR", destdir),
    )
}

/// What the unit and config need, relative to an installation root.
const INSTALLED_FILES: &[&str] = &[
    "usr/bin/edge-infer",
    "usr/lib/systemd/system/edge-infer.service",
    "etc/edge-infer/config.toml",
    "usr/lib/edge-infer/libLiteRt.so",
    // LiteRT's GPU accelerator, found only next to libLiteRt.so.
    "usr/lib/edge-infer/libLiteRtWebGpuAccelerator.so",
    "usr/share/edge-infer/models/har_accel_int8.tflite",
    "usr/share/edge-infer/models/har_accel_f32.tflite",
    "usr/share/edge-infer/models/har_accel.labels",
    "usr/share/edge-infer/models/mobilenet_v2_int8.tflite",
    "usr/share/doc/edge-infer/operators.md",
];

/// Checks an installation under `root` ("/" for the real one): the files
/// the unit and the config name exist.
fn assert_installed(root: &Path) {
    for f in INSTALLED_FILES {
        assert!(
            root.join(f).is_file(),
            "{} is missing",
            root.join(f).display()
        );
    }
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/edge-infer.service")).unwrap();
    let exec = &unit_values(&unit, "ExecStart")[0];
    let mut words = exec.split_whitespace();
    let bin = words.next().unwrap();
    let cfg = words.last().unwrap();
    assert!(root.join(&bin[1..]).is_file(), "ExecStart binary {bin}");
    assert!(root.join(&cfg[1..]).is_file(), "ExecStart config {cfg}");
    let config = std::fs::read_to_string(root.join(&cfg[1..])).unwrap();
    let paths = config_file_paths(&config);
    assert!(!paths.is_empty(), "the installed config names no model");
    for p in paths {
        assert!(
            root.join(&p[1..]).is_file(),
            "the config names {p}, which is missing"
        );
    }
    // Every example model is installed; the test- and bench-only ones are not.
    for e in std::fs::read_dir(repo().join("models")).unwrap() {
        let name = e.unwrap().file_name();
        let name_text = name.to_string_lossy();
        if !name_text.ends_with(".tflite") {
            continue;
        }
        let installed = root.join(&MODELS_DIR[1..]).join(&name).is_file();
        let test_only = matches!(
            name_text.as_ref(),
            "lookup_int32.tflite" | "spin_int32.tflite" | "mobilenet_v2_dynamic_int8.tflite"
        );
        assert_eq!(installed, !test_only, "{name:?}: installed = {installed}");
    }
}

#[test]
fn install_script_stages_files_where_the_unit_expects_them_and_uninstalls() {
    let stage = tempfile::tempdir().unwrap();
    let root = stage.path();
    let bin = daemon_binary();
    install_sh(root, &["--binary", bin.to_str().unwrap()]);
    assert_installed(root);
    assert_eq!(
        std::fs::read(root.join("usr/lib/systemd/system/edge-infer.service")).unwrap(),
        std::fs::read(repo().join(UNIT)).unwrap()
    );
    assert_eq!(
        std::fs::read(root.join("etc/edge-infer/config.toml")).unwrap(),
        std::fs::read(repo().join(PACKAGED_CONFIG)).unwrap()
    );

    // The staged files work together: the staged binary loads the staged
    // model with the staged runtime library (paths moved under the stage).
    let staged_cfg = root.join("check.toml");
    let cfg = std::fs::read_to_string(root.join("etc/edge-infer/config.toml")).unwrap();
    let lib = root.join("usr/lib/edge-infer/libLiteRt.so");
    let cfg = cfg
        .replace(MODELS_DIR, root.join(&MODELS_DIR[1..]).to_str().unwrap())
        .replacen(
            "[runtime]\n",
            &format!("[runtime]\nlibrary = \"{}\"\n", lib.display()),
            1,
        );
    std::fs::write(&staged_cfg, cfg).unwrap();
    let out = assert_check_config_ok(&root.join("usr/bin/edge-infer"), &staged_cfg);
    assert!(
        out.contains(&format!("runtime:   {}", lib.display())),
        "{out}"
    );

    // A second install keeps an edited config.
    let conf = root.join("etc/edge-infer/config.toml");
    std::fs::write(&conf, "# edited by the operator\n").unwrap();
    install_sh(root, &["--no-build"]);
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "# edited by the operator\n"
    );

    // --uninstall keeps config and state; --purge removes them. It also
    // drops enablement links (as `systemctl enable` would have made).
    let state = root.join("var/lib/edge-infer");
    std::fs::create_dir_all(&state).unwrap();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/edge-infer.service",
        wants.join("edge-infer.service"),
    )
    .unwrap();
    install_sh(root, &["--uninstall"]);
    for f in INSTALLED_FILES {
        if !f.starts_with("etc/") {
            assert!(!root.join(f).exists(), "{f} left after --uninstall");
        }
    }
    assert!(!root.join("usr/share/edge-infer").exists());
    assert!(!root.join("usr/lib/edge-infer").exists());
    assert!(std::fs::symlink_metadata(wants.join("edge-infer.service")).is_err());
    assert!(conf.is_file(), "--uninstall removed the config");
    assert!(state.is_dir(), "--uninstall removed the state");
    install_sh(root, &["--uninstall", "--purge"]);
    assert!(!root.join("etc/edge-infer").exists());
    assert!(!state.exists());
}

// --- the .deb ------------------------------------------------------------------

fn find_deb() -> PathBuf {
    let dir = repo().join("target/debian");
    let prefix = format!("edge-infer_{}-", env!("CARGO_PKG_VERSION"));
    let mut debs: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(".deb")
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().unwrap_or_else(|| {
        panic!(
            "no {}/{prefix}*.deb: build it first with scripts/package.sh \
             (scripts/test.sh does that before cargo test)",
            dir.display()
        )
    })
}

fn dpkg_status() -> String {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "edge-infer"]));
    text(&out.stdout)
}

fn purge() -> Output {
    run(Command::new("dpkg").args(["--purge", "edge-infer"]))
}

/// Purges the package when the test ends, also on failure, so later tests
/// and reruns see a clean machine.
struct PurgeOnDrop;
impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        if !dpkg_status().is_empty() {
            let _ = purge();
        }
    }
}

const INSTALLED_PATHS: &[&str] = &[
    "/usr/bin/edge-infer",
    "/usr/lib/systemd/system/edge-infer.service",
    "/etc/edge-infer/config.toml",
    "/usr/lib/edge-infer/libLiteRt.so",
    "/usr/lib/edge-infer/libLiteRtWebGpuAccelerator.so",
    "/usr/share/edge-infer/models/har_accel_int8.tflite",
    "/usr/share/edge-infer/models/har_accel.labels",
    "/usr/share/doc/edge-infer/README.md",
    "/usr/share/doc/edge-infer/ARCHITECTURE.md",
];

const ENABLED_LINK: &str = "/etc/systemd/system/multi-user.target.wants/edge-infer.service";

#[test]
fn deb_installs_checks_and_purges() {
    let deb = find_deb();
    assert!(
        is_root(),
        "the .deb test installs {} with dpkg and needs root (scripts/test.sh runs as root)",
        deb.display()
    );
    // A previous run that was killed may have left it installed.
    if !dpkg_status().is_empty() {
        let out = purge();
        assert!(out.status.success(), "dpkg --purge: {}", text(&out.stderr));
    }
    let _cleanup = PurgeOnDrop;

    // No systemd here (or anywhere the package is built into an image): the
    // maintainer scripts must still succeed.
    let out = run_ok(Command::new("dpkg").arg("-i").arg(&deb));
    println!("dpkg -i {}:\n{out}", deb.display());
    assert_eq!(dpkg_status(), "install ok installed");

    assert_installed(Path::new("/"));
    let conffiles =
        run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "edge-infer"]));
    assert!(
        conffiles
            .lines()
            .any(|l| l.split_whitespace().next() == Some("/etc/edge-infer/config.toml")),
        "config.toml is not a conffile: {conffiles:?}"
    );
    // enable = true in the package metadata: deb-systemd-helper enables the
    // unit even without a running systemd.
    assert!(
        Path::new(ENABLED_LINK).exists(),
        "{ENABLED_LINK} missing: the unit was not enabled"
    );
    // The installed unit verifies as it is (its ExecStart binary exists now).
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg("/usr/lib/systemd/system/edge-infer.service"));
    assert!(
        out.status.success(),
        "systemd-analyze verify of the installed unit:\n{}",
        text(&out.stderr)
    );

    // scripts/install.sh refuses to mix with the package (and touches nothing).
    let out = run(Command::new(repo().join("scripts/install.sh"))
        .arg("--no-build")
        .env_remove("DESTDIR"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the edge-infer .deb is installed"),
        "{}",
        text(&out.stderr)
    );

    // The installed binary finds the installed runtime library and models.
    let out = assert_check_config_ok(
        Path::new("/usr/bin/edge-infer"),
        Path::new("/etc/edge-infer/config.toml"),
    );
    println!("{out}");
    assert!(
        out.contains("runtime:   /usr/lib/edge-infer/libLiteRt.so (litert)"),
        "{out}"
    );
    assert!(
        out.contains("/usr/share/edge-infer/models/har_accel_int8.tflite"),
        "{out}"
    );

    // remove keeps the conffile; purge removes everything, including state
    // the service would have written (DynamicUser keeps it under private/).
    let out = run(Command::new("dpkg").args(["--remove", "edge-infer"]));
    assert!(out.status.success(), "dpkg --remove: {}", text(&out.stderr));
    assert!(!Path::new("/usr/bin/edge-infer").exists());
    assert!(Path::new("/etc/edge-infer/config.toml").exists());
    std::fs::create_dir_all("/var/lib/private/edge-infer").unwrap();
    std::fs::write("/var/lib/private/edge-infer/state", "x").unwrap();
    // What DynamicUser leaves: a link into private/. Whatever stands there
    // now (a link, or a plain folder an earlier run of the daemon made
    // outside systemd) makes way for it.
    let state = Path::new("/var/lib/edge-infer");
    if state.is_dir() && !state.is_symlink() {
        let _ = std::fs::remove_dir_all(state);
    } else {
        let _ = std::fs::remove_file(state);
    }
    std::os::unix::fs::symlink("private/edge-infer", state).unwrap();

    let out = purge();
    assert!(out.status.success(), "dpkg --purge: {}", text(&out.stderr));
    assert_eq!(dpkg_status(), "", "edge-infer still known to dpkg");
    for p in INSTALLED_PATHS.iter().chain(&[
        "/etc/edge-infer",
        "/usr/lib/edge-infer",
        "/usr/share/edge-infer",
        "/var/lib/private/edge-infer",
        ENABLED_LINK,
    ]) {
        assert!(!Path::new(p).exists(), "{p} left after purge");
    }
    assert!(
        std::fs::symlink_metadata("/var/lib/edge-infer").is_err(),
        "/var/lib/edge-infer left after purge"
    );
}
