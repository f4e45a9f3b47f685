#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian/Ubuntu
# machine: the Mosquitto broker and clients, openssl, g++, libLiteRt.so and
# its GPU accelerator (via pip, from the ai-edge-litert wheel), the classic
# libtensorflowlite_c.so (via npm), and Mesa's software Vulkan driver
# (lavapipe) so the GPU path runs without a GPU. Idempotent; needs root (or
# sudo) for apt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)

# On Debian 12, prints the apt option that picks bookworm-backports (adding
# that source first if it is missing); elsewhere prints nothing.
backports_release() {
  grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release 2>/dev/null || return 0
  if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "setup-deps: adding bookworm-backports to apt sources ($1)" >&2
    echo 'deb http://deb.debian.org/debian bookworm-backports main' |
      "${sudo_cmd[@]}" tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
  fi
  echo "-t bookworm-backports"
}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
# The demo makes its uplink broker's certificates with it.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# g++ builds the test delegate plugin (tests/delegate/test_delegate.cc) that
# the external-delegate tests load; npm fetches the classic TFLite library
# (scripts/fetch-classic-runtime.sh).
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# minisign: tests/publish_model.rs checks that keygen's keys and
# publish-model's signatures work with the minisign tool, both ways.
command -v minisign >/dev/null 2>&1 || need_apt+=(minisign)
# ss (iproute2): tests/broker.rs reads the receive buffer of the daemon's sockets.
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)
# systemd-analyze (unit hardening check), systemd-journald, journalctl and
# systemd-cat (journal logging test); systemd does not need to be running.
[ -x /lib/systemd/systemd-journald ] && command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup-deps: installing ${need_apt[*]} with apt-get"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# promtool, Prometheus's own parser and linter of the exposition format
# (tests/metrics.rs checks /metrics with it). Taken out of Debian's prometheus
# package (a 19 MB download) rather than installing it: the package would
# also install and enable the Prometheus server on :9090.
if ! command -v promtool >/dev/null 2>&1; then
  echo "setup-deps: extracting promtool from Debian's prometheus package into /usr/local/bin"
  tmp=$(mktemp -d)
  chmod 0777 "$tmp"  # apt-get download writes as its _apt user where it can
  "${sudo_cmd[@]}" apt-get update -qq
  (cd "$tmp" && apt-get download -qq prometheus)
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -xO ./usr/bin/promtool > "$tmp/promtool"
  "${sudo_cmd[@]}" install -m 0755 "$tmp/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
  promtool --version >/dev/null
fi
# The Debian package starts a system-wide broker on 1883; tests and the
# demo start their own on free ports and do not need it.
"$root/scripts/fetch-runtime.sh"
# The classic TFLite C API library (TF 2.2.0, x86_64 only) that the classic
# back end's tests run external delegates on.
"$root/scripts/fetch-classic-runtime.sh"

# GPU without a GPU: LiteRT's GPU accelerator (Dawn/WebGPU) runs on any Vulkan
# device, and Mesa's lavapipe is one on the CPU, so the GPU path is tested on
# this machine (crates/model-runtime/tests/gpu.rs). Dawn needs lavapipe from
# Mesa 25.x (bookworm-backports, trixie): bookworm's 22.3 lacks
# shaderUniform*ArrayDynamicIndexing and Dawn finds no usable adapter.
mesa_version="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
if ! dpkg --compare-versions "${mesa_version:-0}" ge 25 ||
   ! dpkg-query -W -f='${Status}' libvulkan1 2>/dev/null | grep -q 'install ok installed'; then
  read -ra mesa_release <<<"$(backports_release "for Mesa 25.x lavapipe")"
  echo "setup-deps: installing mesa-vulkan-drivers libvulkan1 ${mesa_release[*]} with apt-get"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${mesa_release[@]}" \
    mesa-vulkan-drivers libvulkan1 >/dev/null
  mesa_version="$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)"
  dpkg --compare-versions "${mesa_version:-0}" ge 25 || {
    echo "setup-deps: Mesa 25.x lavapipe is needed for the GPU tests, got mesa-vulkan-drivers ${mesa_version:-none}" >&2
    exit 1
  }
fi

# ARM: cross builds (scripts/build-arm.sh) and their emulated tests
# (tests/arm.rs, see README "Deploying to ARM"): the rustup targets, Debian's
# cross linkers with their C libraries, qemu-user 10.x (bookworm's 7.2
# crashes inside LiteRT's CPU detection; 10.x is in bookworm-backports and in
# trixie) and the aarch64 libLiteRt.so.
arm_targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
if command -v rustup >/dev/null 2>&1; then
  installed_targets="$(rustup target list --installed)"
  for t in "${arm_targets[@]}"; do
    grep -qx "$t" <<<"$installed_targets" || rustup target add "$t"
  done
else
  echo "setup-deps: rustup not found; install the Rust targets ${arm_targets[*]} yourself" >&2
fi
need_arm=()
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstdc++6-arm64-cross \
         gcc-arm-linux-gnueabihf libc6-dev-armhf-cross; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_arm+=("$p")
done
qemu_major() { qemu-aarch64 --version 2>/dev/null | sed -n 's/^qemu-aarch64 version \([0-9]*\)\..*/\1/p'; }
qemu_ok=false
[ "$(qemu_major)" -ge 10 ] 2>/dev/null && command -v qemu-arm >/dev/null 2>&1 && qemu_ok=true
if [ ${#need_arm[@]} -gt 0 ] || [ "$qemu_ok" = false ]; then
  qemu_release=()
  [ "$qemu_ok" = true ] || read -ra qemu_release <<<"$(backports_release "for qemu-user 10.x")"
  echo "setup-deps: installing ${need_arm[*]} $([ "$qemu_ok" = true ] || echo qemu-user) with apt-get"
  "${sudo_cmd[@]}" apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  [ ${#need_arm[@]} -eq 0 ] || "${sudo_cmd[@]}" apt-get install -y -qq "${need_arm[@]}" >/dev/null
  if [ "$qemu_ok" = false ]; then
    "${sudo_cmd[@]}" apt-get install -y -qq "${qemu_release[@]}" qemu-user >/dev/null
    [ "$(qemu_major)" -ge 10 ] 2>/dev/null || {
      echo "setup-deps: qemu-user 10.x is needed for the ARM tests, got: $(qemu-aarch64 --version 2>&1 | head -n1)" >&2
      exit 1
    }
  fi
fi
"$root/scripts/fetch-runtime.sh" aarch64
