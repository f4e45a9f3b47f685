#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian/Ubuntu
# machine: the Mosquitto broker and clients, openssl, g++, libLiteRt.so (via
# pip, from the ai-edge-litert wheel) and the classic libtensorflowlite_c.so
# (via npm). Idempotent; needs root (or sudo) for apt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

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
# systemd-analyze (unit hardening check), systemd-journald, journalctl and
# systemd-cat (journal logging test); systemd does not need to be running.
[ -x /lib/systemd/systemd-journald ] && command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  echo "setup-deps: installing ${need_apt[*]} with apt-get"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package starts a system-wide broker on 1883; tests and the
# demo start their own on free ports and do not need it.
"$root/scripts/fetch-runtime.sh"
# The classic TFLite C API library (TF 2.2.0, x86_64 only) that the classic
# back end's tests run external delegates on.
"$root/scripts/fetch-classic-runtime.sh"

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
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  qemu_release=()
  if [ "$qemu_ok" = false ] && grep -q '^VERSION_CODENAME=bookworm$' /etc/os-release 2>/dev/null; then
    qemu_release=(-t bookworm-backports)
    if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo "setup-deps: adding bookworm-backports to apt sources (for qemu-user 10.x)"
      echo 'deb http://deb.debian.org/debian bookworm-backports main' |
        "${sudo_cmd[@]}" tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
  fi
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
