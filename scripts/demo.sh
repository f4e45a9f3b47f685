#!/usr/bin/env bash
# The one-command demo: installs what is missing, builds, starts a private
# Mosquitto broker on a free loopback port and the daemon with
# config/demo.toml, then runs the simulator against them and prints the
# answers as they arrive.
#
# The simulator (examples/accel_sim.rs): wrist sensors publish one
# accelerometer reading per message ({"ts", "ax", "ay", "az"} on
# sensors/wrist-N/imu; every 10th message a batch {"readings": [10]}); the
# daemon assembles 128-reading windows, a new one every 64 readings, and
# answers each. Cameras publish the sample pictures of models/samples/
# (circle, square, triangle, none as JPEG, a square as PNG) on
# cameras/cam-N/frame, for the shapes model.
#
#   scripts/demo.sh                    # 20 s, 2 sensors at 1 window/s, 1 camera at 1 frame/s
#   scripts/demo.sh --seconds 60 --sensors 4 --rate 10 --cameras 2 --frame-interval 0.5
#   scripts/demo.sh --seconds 0        # until Ctrl-C
#
# --rate is in windows per second per sensor: each sensor publishes
# rate x 64 readings per second (the default 1: 64 readings/s). --sensors 0
# or --cameras 0 leaves that part out.
#
# Arguments are passed to the simulator (--help lists them). The exit status
# is the simulator's: 0 when every window (counted from the readings each
# sensor sent) and every frame was answered. Logs of the daemon and the
# broker stay in a temporary folder whose path is printed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf 'demo: %s\n' "$*" >&2; }

for a in "$@"; do
  case "$a" in
    --host|--host=*|--port|--port=*)
      say "the demo chooses the broker itself; don't pass $a"; exit 2 ;;
  esac
done

tmp="$(mktemp -d "${TMPDIR:-/tmp}/edge-infer-demo.XXXXXX")"
broker_pid=""
daemon_pid=""
sim_pid=""

# Stops a process we started: SIGTERM, up to $2 seconds' grace, then SIGKILL.
stop() {
  local pid="$1" grace="$2" name="$3" i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name did not stop within ${grace} s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2329  # invoked by trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop "$sim_pid" 2 "the simulator"
  # The daemon drains its queues for up to 10 s on SIGTERM.
  stop "$daemon_pid" 15 "edge-infer"
  stop "$broker_pid" 5 "mosquitto"
  rm -f "$tmp/mosquitto.conf"
  say "logs: $tmp/edge-infer.log, $tmp/mosquitto.log"
  exit "$rc"
}
# shellcheck disable=SC2329  # invoked by trap
on_int() {
  # While the simulator runs it gets Ctrl-C itself (same process group),
  # stops sending and prints its summary; its exit status is the demo's.
  if [ -n "$sim_pid" ] && kill -0 "$sim_pid" 2>/dev/null; then
    return 0
  fi
  exit 130
}
trap cleanup EXIT
trap on_int INT
trap 'exit 143' TERM

# Broker and daemon run in their own session, so that Ctrl-C in the terminal
# reaches only the simulator, which then still gets its answers.
detach=()
command -v setsid >/dev/null 2>&1 && detach=(setsid)

# --- dependencies and build -------------------------------------------------
say "installing dependencies (scripts/setup-deps.sh)"
"$root/scripts/setup-deps.sh"
say "building edge-infer and the simulator"
cargo build --release --bin edge-infer --example accel_sim
daemon_bin="$root/target/release/edge-infer"
sim_bin="$root/target/release/examples/accel_sim"

mosquitto_bin="$(command -v mosquitto || true)"
[ -n "$mosquitto_bin" ] || mosquitto_bin=/usr/sbin/mosquitto
[ -x "$mosquitto_bin" ] || { say "mosquitto not found (scripts/setup-deps.sh should have installed it)"; exit 1; }

# --- broker -------------------------------------------------------------------
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    # Nothing answering there: take it (the broker start below re-checks).
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port=""
for attempt in 1 2 3 4 5; do
  candidate="$(free_port)" || { say "cannot find a free TCP port on 127.0.0.1"; exit 1; }
  cat >"$tmp/mosquitto.conf" <<EOF
listener $candidate 127.0.0.1
allow_anonymous true
persistence false
EOF
  "${detach[@]}" "$mosquitto_bin" -c "$tmp/mosquitto.conf" >"$tmp/mosquitto.log" 2>&1 </dev/null &
  broker_pid=$!
  for ((i = 0; i < 100; i++)); do
    kill -0 "$broker_pid" 2>/dev/null || break
    if port_open "$candidate"; then port="$candidate"; break; fi
    sleep 0.1
  done
  [ -n "$port" ] && break
  say "mosquitto did not start on port $candidate (attempt $attempt):"
  sed 's/^/  | /' "$tmp/mosquitto.log" >&2 || true
  stop "$broker_pid" 2 "mosquitto"
  broker_pid=""
done
[ -n "$port" ] || { say "giving up on starting mosquitto"; exit 1; }
say "mosquitto listening on 127.0.0.1:$port (pid $broker_pid)"

# --- daemon -------------------------------------------------------------------
say "starting edge-infer (log: $tmp/edge-infer.log)"
EDGE_INFER__MQTT__PORT="$port" STATE_DIRECTORY="$tmp/state" "${detach[@]}" env -u JOURNAL_STREAM \
  "$daemon_bin" run --config "$root/config/demo.toml" >"$tmp/edge-infer.log" 2>&1 </dev/null &
daemon_pid=$!
ready=""
for ((i = 0; i < 300; i++)); do
  if grep -q 'ready:' "$tmp/edge-infer.log" 2>/dev/null; then ready=1; break; fi
  kill -0 "$daemon_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  if kill -0 "$daemon_pid" 2>/dev/null; then
    say "edge-infer did not report 'ready:' within 30 s; its log:"
  else
    wait "$daemon_pid" && st=0 || st=$?
    daemon_pid=""
    say "edge-infer exited (status $st) before it was ready; its log:"
  fi
  sed 's/^/  | /' "$tmp/edge-infer.log" >&2 || true
  exit 1
fi
say "$(grep -m1 'ready:' "$tmp/edge-infer.log" | sed 's/^.*ready:/edge-infer ready:/')"

# --- simulator ----------------------------------------------------------------
# In the background and waited for, so that a TERM to this script is handled
# at once; Ctrl-C from the terminal reaches the simulator directly.
"$sim_bin" --host 127.0.0.1 --port "$port" "$@" &
sim_pid=$!
status=0
while :; do
  wait "$sim_pid" && status=0 || status=$?
  # A trapped signal interrupts `wait`; keep waiting while the simulator runs.
  kill -0 "$sim_pid" 2>/dev/null || break
done
sim_pid=""
exit "$status"
