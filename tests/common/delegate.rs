//! The test delegate plugin (`tests/delegate/test_delegate.cc`), built once
//! per test process with g++ against the TensorFlow Lite headers vendored in
//! edgefirst-tflite-sys, into the target directory.
//!
//! Used by the daemon's integration tests (`common::delegate`) and by
//! model-runtime's own tests (through `#[path]`), so it needs nothing but
//! std and serde_json.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The plugin's path, built on the first call in this process.
pub fn library() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

/// What `cargo metadata` says about this checkout.
struct Metadata {
    workspace_root: PathBuf,
    target_directory: PathBuf,
    /// The directory holding edgefirst-tflite-sys's `Cargo.toml` (and the
    /// vendored `tensorflow/lite/...` headers).
    headers: PathBuf,
}

fn metadata() -> Metadata {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} metadata: {e}"));
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let path = |key: &str| {
        PathBuf::from(
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("cargo metadata has no {key}")),
        )
    };
    let manifest = v["packages"]
        .as_array()
        .expect("cargo metadata lists packages")
        .iter()
        .find(|p| p["name"] == "edgefirst-tflite-sys")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("edgefirst-tflite-sys is a dependency (model-runtime's LiteRT back end)");
    let headers = Path::new(manifest)
        .parent()
        .expect("a manifest path has a parent")
        .to_path_buf();
    Metadata {
        workspace_root: path("workspace_root"),
        target_directory: path("target_directory"),
        headers,
    }
}

fn build() -> PathBuf {
    let meta = metadata();
    let source = meta.workspace_root.join("tests/delegate/test_delegate.cc");
    assert!(
        meta.headers
            .join("tensorflow/lite/core/c/common.h")
            .exists(),
        "no vendored TFLite headers under {}",
        meta.headers.display()
    );
    let dir = meta.target_directory.join("test-delegate");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let lib = dir.join("libedge_infer_test_delegate.so");
    // Test processes run in parallel: each compiles to a file of its own
    // and renames it into place, so none loads a half-written library (one
    // that already loaded the previous build keeps its mapping).
    let tmp = dir.join(format!(
        "libedge_infer_test_delegate.{}.so.tmp",
        std::process::id()
    ));
    let status = Command::new("g++")
        .args([
            "-std=c++17",
            "-O2",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg(format!("-I{}", meta.headers.display()))
        .arg(&source)
        .arg("-o")
        .arg(&tmp)
        .status()
        .unwrap_or_else(|e| {
            panic!("g++ is needed to build the test delegate ({e}): run scripts/setup-deps.sh")
        });
    assert!(status.success(), "g++ failed to build {}", source.display());
    std::fs::rename(&tmp, &lib)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), lib.display()));
    lib
}
