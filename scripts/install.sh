#!/usr/bin/env bash
# Installs edge-infer from this checkout to the places the .deb uses, as a
# systemd service (see docs/operators.md):
#
#   /usr/bin/edge-infer                              the daemon
#   /usr/lib/systemd/system/edge-infer.service       the unit
#   /etc/edge-infer/config.toml                      config (never overwritten)
#   /usr/share/edge-infer/models/                    shipped models + labels
#   /usr/lib/edge-infer/libLiteRt.so                 runtime library
#   /usr/lib/edge-infer/libLiteRtWebGpuAccelerator.so  its GPU accelerator (next to it)
#   /usr/share/doc/edge-infer/                       README, ARCHITECTURE, operators guide
#
# Usage (as root):
#   scripts/install.sh                 build (cargo build --release --locked), fetch
#                                      the runtime if missing, install
#   scripts/install.sh --enable        ... and `systemctl enable edge-infer` (boot start)
#   scripts/install.sh --no-build      install target/release/edge-infer as it is
#   scripts/install.sh --binary PATH   install PATH as the daemon (implies --no-build)
#   scripts/install.sh --uninstall     remove what install put there; keeps
#                                      /etc/edge-infer and /var/lib/edge-infer
#   scripts/install.sh --uninstall --purge   ... and remove those too
#
#   DESTDIR=/tmp/stage scripts/install.sh      install into a staging root
#                                      (no root needed, no systemctl, no dpkg check)
#
# `systemctl daemon-reload` (and enable/disable/stop) run only when systemd is
# running and DESTDIR is empty.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf 'install: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

mode=install
purge=""
build=1
enable=""
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --uninstall) mode=uninstall ;;
    --purge) purge=1 ;;
    --no-build) build="" ;;
    --binary) shift; [ $# -gt 0 ] || die "--binary needs a path"; binary="$1"; build="" ;;
    --binary=*) binary="${1#--binary=}"; build="" ;;
    --enable) enable=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) say "unknown argument '$1' (see --help)"; exit 2 ;;
  esac
  shift
done
[ -z "$purge" ] || [ "$mode" = uninstall ] || { say "--purge goes with --uninstall"; exit 2; }

dest="${DESTDIR:-}"
dest="${dest%/}"
if [ -n "$dest" ]; then
  mkdir -p "$dest"
  dest="$(cd "$dest" && pwd)"
elif [ "$(id -u)" -ne 0 ]; then
  die "run as root (or set DESTDIR=... to install into a staging root)"
fi

bin_dir="$dest/usr/bin"
unit_dir="$dest/usr/lib/systemd/system"
conf_dir="$dest/etc/edge-infer"
model_dir="$dest/usr/share/edge-infer/models"
lib_dir="$dest/usr/lib/edge-infer"
doc_dir="$dest/usr/share/doc/edge-infer"
state_dirs=("$dest/var/lib/edge-infer" "$dest/var/lib/private/edge-infer")

systemd_running() { [ -z "$dest" ] && [ -d /run/systemd/system ]; }

# Files from the .deb belong to dpkg; mixing both would confuse it.
if [ -z "$dest" ] && dpkg-query -W -f='${Status}' edge-infer 2>/dev/null | grep -q ' installed$'; then
  die "the edge-infer .deb is installed; use 'apt remove edge-infer' / 'dpkg --purge edge-infer' instead"
fi

case "$(uname -m)" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  *) arch="$(uname -m)" ;;
esac

if [ "$mode" = uninstall ]; then
  if systemd_running; then
    systemctl disable --now edge-infer.service >/dev/null 2>&1 || true
  elif [ -z "$dest" ] && command -v systemctl >/dev/null 2>&1; then
    # Works without a running systemd: it only removes the symlinks.
    systemctl disable edge-infer.service >/dev/null 2>&1 || true
  fi
  # Whatever enabled it (--enable, systemctl enable, a staging root).
  if [ -d "$dest/etc/systemd/system" ]; then
    find "$dest/etc/systemd/system" -name edge-infer.service -type l -delete
  fi
  rm -f "$bin_dir/edge-infer" "$unit_dir/edge-infer.service"
  rm -rf "$model_dir" "$lib_dir" "$doc_dir"
  rmdir "$dest/usr/share/edge-infer" 2>/dev/null || true
  if [ -n "$purge" ]; then
    rm -rf "$conf_dir" "${state_dirs[@]}"
    say "removed edge-infer, its config ($conf_dir) and state"
  else
    say "removed edge-infer; kept $conf_dir and $dest/var/lib/edge-infer (--purge removes them)"
  fi
  if systemd_running; then
    systemctl daemon-reload
  fi
  exit 0
fi

# --- install --------------------------------------------------------------------
cd "$root"
if [ -n "$build" ]; then
  say "building (cargo build --release --locked)"
  cargo build --release --locked --bin edge-infer
fi
[ -n "$binary" ] || binary="$root/target/release/edge-infer"
[ -x "$binary" ] || die "no daemon binary at $binary (build it with 'cargo build --release')"

runtime="$root/runtime/$arch/libLiteRt.so"
# LiteRT finds its GPU accelerator only in the same folder.
gpu_accelerator="$root/runtime/$arch/libLiteRtWebGpuAccelerator.so"
if [ ! -s "$runtime" ] || [ ! -s "$gpu_accelerator" ]; then
  say "fetching the runtime library (scripts/fetch-runtime.sh $arch)"
  "$root/scripts/fetch-runtime.sh" "$arch" >&2
fi

install -D -m 0755 "$binary" "$bin_dir/edge-infer"
install -D -m 0644 systemd/edge-infer.service "$unit_dir/edge-infer.service"
install -D -m 0644 "$runtime" "$lib_dir/libLiteRt.so"
install -m 0644 "$gpu_accelerator" "$lib_dir/libLiteRtWebGpuAccelerator.so"
install -d -m 0755 "$model_dir" "$doc_dir"
# The example models (the .deb ships the same set); lookup_int32 and
# spin_int32 exist only for tests, mobilenet_v2_dynamic_int8 for the
# micro-batching measurement.
install -m 0644 models/har_accel_int8.tflite models/har_accel_int8_edgetpu.tflite \
  models/har_accel_f32.tflite models/mobilenet_v2_int8.tflite models/multi_io_f32.tflite models/multi_io_uint8.tflite \
  models/dynamic_batch_f32.tflite models/har_accel.labels models/shapes_int8.tflite \
  models/shapes.labels models/README.md "$model_dir/"
install -d -m 0755 "$model_dir/samples"
install -m 0644 models/samples/circle.jpg models/samples/square.jpg models/samples/triangle.jpg \
  models/samples/none.jpg models/samples/square_96.png models/samples/photo_640x480.jpg \
  models/samples/README.md "$model_dir/samples/"
install -m 0644 README.md ARCHITECTURE.md docs/operators.md "$doc_dir/"
install -d -m 0755 "$conf_dir"
if [ -e "$conf_dir/config.toml" ]; then
  say "kept the existing $conf_dir/config.toml (the packaged default is config/edge-infer.toml)"
else
  install -m 0644 config/edge-infer.toml "$conf_dir/config.toml"
fi

if systemd_running; then
  systemctl daemon-reload
  if [ -n "$enable" ]; then
    systemctl enable edge-infer.service
  fi
elif [ -n "$enable" ] && [ -z "$dest" ]; then
  # systemctl enables offline too (it only creates the symlinks).
  systemctl enable edge-infer.service || say "could not enable edge-infer.service"
fi

say "installed into ${dest:-/}"
if [ -z "$dest" ]; then
  say "next: edit /etc/edge-infer/config.toml, then"
  say "  edge-infer check-config --config /etc/edge-infer/config.toml"
  say "  systemctl enable --now edge-infer && systemctl status edge-infer"
fi
