#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian/Ubuntu
# machine: the Mosquitto broker and clients, and libLiteRt.so (via pip, from
# the ai-edge-litert wheel). Idempotent; needs root (or sudo) for apt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
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
