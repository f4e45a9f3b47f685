#!/usr/bin/env bash
# Fetches a classic TFLite C API library (libtensorflowlite_c.so, TensorFlow
# 2.2.0, x86_64) into runtime/classic-x86_64/ (git-ignored). Idempotent.
#
# Why this one: no registry ships a newer classic C API build for Linux
# (tflite-runtime and tensorflow wheels export only pybind; the LiteRT wheel
# only the LiteRt* API); the npm package node-tflite@0.0.2 carries TF 2.2.0's,
# with the full C API including TfLiteInterpreterOptionsAddDelegate. The
# classic back end's tests (crates/model-runtime/tests/delegates.rs) load
# external delegates through it, with float32 models only: its float32
# results match LiteRT 2.3.0's within 1e-6, but its int8/uint8 results for
# the shipped models do not (checked by hand: every output of har_accel_int8,
# multi_io_uint8 and shapes_int8 differs, by up to 191 quantization steps;
# TF 2.2's kernels predate the TF 2.19 converter that built them).
#
#   scripts/fetch-classic-runtime.sh
set -euo pipefail

version="2.2.0"
package="node-tflite@0.0.2"
# sha256 of the npm tarball and of the library inside it (checked by hand
# against the registry's integrity field, sha512-YdPBblO2...).
tarball_sha256="80e040b24096cbe4365b4960c8a93ff71218765a815e1b5f90180e2868dc930a"
library_sha256="edb5236b8cbb497775fb36f4f134f89881b81c1cb7d32b897b66787e7040bd40"

case "$(uname -m)" in
  x86_64|amd64) ;;
  *)
    echo "fetch-classic-runtime: $package only carries an x86_64 Linux library; skipped on $(uname -m)" >&2
    exit 0 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/runtime/classic-x86_64"
if [ -s "$dest/libtensorflowlite_c.so" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ]; then
  echo "fetch-classic-runtime: $dest/libtensorflowlite_c.so ($version) already present"
  exit 0
fi

command -v npm >/dev/null || { echo "fetch-classic-runtime: npm is required (apt-get install npm)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "$package" >/dev/null)
tgz="$(ls "$tmp"/node-tflite-*.tgz 2>/dev/null | head -n1)"
[ -n "$tgz" ] || { echo "fetch-classic-runtime: npm pack did not produce a tarball" >&2; exit 1; }
echo "$tarball_sha256  $tgz" | sha256sum --check --quiet - ||
  { echo "fetch-classic-runtime: $tgz does not have the expected sha256" >&2; exit 1; }
tar -xzf "$tgz" -C "$tmp" package/tflite/linux_x86_64/libtensorflowlite_c.so
lib="$tmp/package/tflite/linux_x86_64/libtensorflowlite_c.so"
echo "$library_sha256  $lib" | sha256sum --check --quiet - ||
  { echo "fetch-classic-runtime: the library in $tgz does not have the expected sha256" >&2; exit 1; }

mkdir -p "$dest"
cp "$lib" "$dest/libtensorflowlite_c.so.tmp"
mv "$dest/libtensorflowlite_c.so.tmp" "$dest/libtensorflowlite_c.so"
echo "$version" > "$dest/VERSION"
echo "fetch-classic-runtime: installed $dest/libtensorflowlite_c.so ($version, $(du -h "$dest/libtensorflowlite_c.so" | cut -f1))"
