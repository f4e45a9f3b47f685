#!/usr/bin/env bash
# The one-command demo: installs what is missing, builds, starts two private
# Mosquitto brokers on free loopback ports (the local one the sensors
# publish to, and an "uplink" with a TLS listener, where the daemon sends
# its answers) and the daemon with config/demo.toml, then runs the
# simulator against them and prints the answers as they arrive.
#
# The simulator (examples/accel_sim.rs): wrist sensors publish one
# accelerometer reading per message ({"ts", "ax", "ay", "az"} on
# sensors/wrist-N/imu; every 10th message a batch {"readings": [10]}); the
# daemon assembles 128-reading windows, a new one every 64 readings, and
# answers each. Cameras publish the sample pictures of models/samples/
# (circle, square, triangle, none as JPEG, a square as PNG) on
# cameras/cam-N/frame/K (K: the frame's number), for the shapes model. The
# simulator reads the answers from the uplink over TLS (trusting only a CA
# this script makes with openssl), in a session the uplink keeps.
#
# The uplink outage: at 40% of the run the script stops the uplink
# (SIGTERM, so it saves its sessions), at 60% it starts it again (the
# default 20 s run: down from 8 s to 12 s). Meanwhile the daemon keeps
# answering into its disk outbox (state_dir/outbox, in the temporary
# folder) and replays it once the uplink is back; the simulator counts each
# answer by its window or frame, so the late ones count. With --seconds 0
# (until Ctrl-C) the outage comes once, 10 s in, for 5 s. At the end the
# script prints the daemon's delivery and outbox figures (edge-infer
# status: its health record on the uplink) and its log lines about the
# outage.
#
#   scripts/demo.sh                    # 20 s, 2 sensors at 1 window/s, 1 camera at 1 frame/s
#   scripts/demo.sh --seconds 60 --sensors 4 --rate 10 --cameras 2 --frame-interval 0.5
#   scripts/demo.sh --seconds 0        # until Ctrl-C
#
# Fleet integration: the daemon publishes Home Assistant discovery configs
# ([homeassistant], EDGE_INFER__HOMEASSISTANT__ENABLED=true), printed before
# the simulator starts (topic, entity name, what it reads), and serves
# Prometheus metrics on a free loopback port ([metrics]); a few of them are
# printed at the end. --homeassistant is accepted for older command lines.
#
# A remote model update: the script makes a signing key (edge-infer keygen),
# trusts it in the daemon's config ([updates], in a copy of
# config/demo.toml in the temporary folder), and before the simulator
# starts signs and publishes version 2 of the har model (the float model
# instead of the int8 one) with edge-infer publish-model. The daemon
# downloads it in chunks, checks signature, size and sha256, loads and
# warms it, swaps it in, and confirms it after 5 s of probation on the
# simulator's traffic; the end of the demo prints the steps from its log
# and the retained state record. (Before the simulator, because a swap
# starts a windowed model's streams afresh: see README, "Remote model
# updates".)
#
# --rate is in windows per second per sensor: each sensor publishes
# rate x 64 readings per second (the default 1: 64 readings/s). --sensors 0
# or --cameras 0 leaves that part out.
#
# Arguments are passed to the simulator (--help lists them). The exit status
# is the simulator's: 0 when every window (counted from the readings each
# sensor sent) and every frame was answered, outage or not. Logs of the
# daemon and the brokers stay in a temporary folder whose path is printed
# (the keys made for the uplink are deleted). Builds into $CARGO_TARGET_DIR
# when it is set.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf 'demo: %s\n' "$*" >&2; }

# The run's length, for the outage's schedule: the simulator's --seconds
# (the last one given, as the simulator reads them; default 20).
seconds=20
prev=""
homeassistant=1
sim_args=()
for a in "$@"; do
  case "$a" in
    --host|--host=*|--port|--port=*|--results-*)
      say "the demo chooses the brokers itself; don't pass $a"; exit 2 ;;
    --seconds=*) seconds="${a#--seconds=}" ;;
    --homeassistant) homeassistant=1; continue ;;
  esac
  [ "$prev" != "--seconds" ] || seconds="$a"
  prev="$a"
  sim_args+=("$a")
done
# Milliseconds after the simulator starts: uplink down, uplink back. (A
# --seconds the simulator refuses ends the demo before either.)
read -r down_ms up_ms < <(awk -v s="$seconds" 'BEGIN {
  if (s + 0 > 0) printf "%d %d\n", s * 400, s * 600; else print "10000 15000" }')

tmp="$(mktemp -d "${TMPDIR:-/tmp}/edge-infer-demo.XXXXXX")"
tls="$tmp/tls"
broker_pid=""
uplink_pid=""
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
    sleep 0.1 || true
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
  stop "$uplink_pid" 5 "the uplink mosquitto"
  rm -rf "$tmp/mosquitto.conf" "$tmp/uplink.conf" "$tls" "$tmp/uplink"
  say "logs: $tmp/edge-infer.log, $tmp/mosquitto.log, $tmp/uplink.log"
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

# Brokers and daemon run in their own session, so that Ctrl-C in the
# terminal reaches only the simulator, which then still gets its answers.
detach=()
command -v setsid >/dev/null 2>&1 && detach=(setsid)

# --- dependencies and build -------------------------------------------------
say "installing dependencies (scripts/setup-deps.sh)"
"$root/scripts/setup-deps.sh"
say "building edge-infer and the simulator"
cargo build --release --bin edge-infer --example accel_sim
target_dir="${CARGO_TARGET_DIR:-$root/target}"
daemon_bin="$target_dir/release/edge-infer"
sim_bin="$target_dir/release/examples/accel_sim"

mosquitto_bin="$(command -v mosquitto || true)"
[ -n "$mosquitto_bin" ] || mosquitto_bin=/usr/sbin/mosquitto
[ -x "$mosquitto_bin" ] || { say "mosquitto not found (scripts/setup-deps.sh should have installed it)"; exit 1; }
command -v openssl >/dev/null 2>&1 || { say "openssl not found (scripts/setup-deps.sh should have installed it)"; exit 1; }

# --- brokers ------------------------------------------------------------------
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

# Starts mosquitto with config file $1, its output appended to $2, and
# waits up to 10 s for port $3 to answer; sets started_pid. Status 1, the
# process stopped, if it exits or does not listen.
start_broker() {
  local conf="$1" log="$2" p="$3" i
  "${detach[@]}" "$mosquitto_bin" -c "$conf" >>"$log" 2>&1 </dev/null &
  started_pid=$!
  for ((i = 0; i < 100; i++)); do
    kill -0 "$started_pid" 2>/dev/null || break
    if port_open "$p"; then return 0; fi
    sleep 0.1 || true
  done
  stop "$started_pid" 2 "mosquitto"
  started_pid=""
  return 1
}

# Starts the broker named $1 on a free port, its config file $3 written by
# the function $2 (given the port), its log $4; sets started_pid and
# started_port.
start_on_free_port() {
  local name="$1" write_conf="$2" conf="$3" log="$4" candidate attempt
  for attempt in 1 2 3 4 5; do
    candidate="$(free_port)" || { say "cannot find a free TCP port on 127.0.0.1"; return 1; }
    "$write_conf" "$candidate" >"$conf"
    if start_broker "$conf" "$log" "$candidate"; then
      started_port="$candidate"
      return 0
    fi
    say "$name did not start on port $candidate (attempt $attempt):"
    sed 's/^/  | /' "$log" >&2 || true
  done
  say "giving up on starting $name"
  return 1
}

local_conf() {
  printf '%s\n' "listener $1 127.0.0.1" "allow_anonymous true" "persistence false"
}
start_on_free_port mosquitto local_conf "$tmp/mosquitto.conf" "$tmp/mosquitto.log" || exit 1
broker_pid="$started_pid"
port="$started_port"
say "mosquitto listening on 127.0.0.1:$port (pid $broker_pid)"

# The uplink's certificate (for 127.0.0.1 and localhost), signed by a CA
# made here: the daemon and the simulator trust that CA only.
make_certs() {
  cd "$tls" &&
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key &&
    openssl req -new -x509 -key ca.key -subj "/CN=edge-infer demo CA" -days 2 -out ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" &&
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key &&
    openssl req -new -key server.key -subj "/CN=localhost" -out server.csr &&
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "authorityKeyIdentifier=keyid" >server.ext &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -days 2 \
      -set_serial "0x$(openssl rand -hex 8)" -extfile server.ext -out server.crt
}
mkdir -p "$tls" "$tmp/uplink"
if ! (make_certs) >"$tmp/openssl.log" 2>&1; then
  say "openssl could not make the uplink's certificates:"
  sed 's/^/  | /' "$tmp/openssl.log" >&2 || true
  exit 1
fi
# Persistence on, so that the simulator's session (its subscriptions and
# the answers queued for it) survives the restart. Started as root,
# mosquitto switches to user mosquitto unless told otherwise, and then can
# read neither the 0600 key nor this folder.
run_as=()
[ "$(id -u)" -ne 0 ] || run_as=("user root")
uplink_conf() {
  printf '%s\n' "listener $1 127.0.0.1" "cafile $tls/ca.crt" "certfile $tls/server.crt" \
    "keyfile $tls/server.key" "allow_anonymous true" "persistence true" \
    "persistence_location $tmp/uplink/" ${run_as[@]+"${run_as[@]}"}
}
start_on_free_port "the uplink mosquitto" uplink_conf "$tmp/uplink.conf" "$tmp/uplink.log" || exit 1
uplink_pid="$started_pid"
uplink_port="$started_port"
say "uplink mosquitto listening on 127.0.0.1:$uplink_port with TLS (pid $uplink_pid)"

# --- update signing key and the daemon's config --------------------------------
# The daemon trusts the key made here; config/demo.toml's model paths are
# relative to it, so the copy gets them absolute.
if ! "$daemon_bin" keygen --out "$tmp/keys" --name demo >"$tmp/keygen.log" 2>&1; then
  say "edge-infer keygen failed:"; sed 's/^/  | /' "$tmp/keygen.log" >&2 || true; exit 1
fi
public_key="$(sed -n 2p "$tmp/keys/demo.pub")"
config="$tmp/demo.toml"
{
  sed -e "s#\"\.\./#\"$root/#g" -e 's/^name = "har"$/name = "har"\nversion = "1"/' "$root/config/demo.toml"
  printf '%s\n' "" "[updates]" "public_keys = [\"$public_key\"]" "probation_secs = 5" "min_probation_messages = 20"
} >"$config"

# --- daemon -------------------------------------------------------------------
say "starting edge-infer (log: $tmp/edge-infer.log)"
# The brokers' ports and the CA are known only now: they replace the
# placeholders of config/demo.toml's [mqtt] and [uplink]. A health record
# every 2 s, so that the one read at the end is recent.
export EDGE_INFER__MQTT__PORT="$port" EDGE_INFER__UPLINK__PORT="$uplink_port" \
  EDGE_INFER__UPLINK__TLS=true EDGE_INFER__UPLINK__CA_FILE="$tls/ca.crt" \
  EDGE_INFER__HEALTH__INTERVAL_SECS=2
[ -z "$homeassistant" ] || export EDGE_INFER__HOMEASSISTANT__ENABLED=true
metrics_port="$(free_port)" || { say "cannot find a free TCP port on 127.0.0.1"; exit 1; }
export EDGE_INFER__METRICS__LISTEN="127.0.0.1:$metrics_port"
STATE_DIRECTORY="$tmp/state" "${detach[@]}" env -u JOURNAL_STREAM \
  "$daemon_bin" run --config "$config" >"$tmp/edge-infer.log" 2>&1 </dev/null &
daemon_pid=$!
ready=""
for ((i = 0; i < 300; i++)); do
  if grep -q 'ready:' "$tmp/edge-infer.log" 2>/dev/null; then ready=1; break; fi
  kill -0 "$daemon_pid" 2>/dev/null || break
  sleep 0.1 || true
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
# Models that serve one file with the same threads share its compiled
# engine (docs/operators.md, "One file, several models"); the camera
# models compute in the background, behind the sensor models ("Several
# models on one device"), and decode the next photo while the engine runs
# this one ("Threads").
grep -E 'model [^ ]+: (shares |worker_priority = |each worker decodes)' "$tmp/edge-infer.log" | sed -e 's/^.*INFO  /  | /' >&2 || true

if [ -n "$homeassistant" ]; then
  # Retained on the uplink, where everything the daemon publishes goes;
  # mosquitto_sub stops at the first message that is not retained, or
  # after 3 s.
  say "Home Assistant discovery configs (retained on the uplink; full payloads: mosquitto_sub -t 'homeassistant/#' -v):"
  mosquitto_sub -h localhost -p "$uplink_port" --cafile "$tls/ca.crt" -t 'homeassistant/#' \
    --retained-only -W 3 -F '%t %p' 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    topic, _, payload = line.rstrip("\n").partition(" ")
    c = json.loads(payload) if payload else {}
    print("  | %s\n  |     %r <- %s %s" % (topic, c.get("name"), c.get("state_topic"), c.get("value_template")))
' >&2 || true
fi

# --- a remote model update ------------------------------------------------------
# To the broker the daemon reads its inputs (and manifests) from; the state
# records go to the uplink, like everything the daemon publishes.
update=""
if "$daemon_bin" publish-model --config "$config" --host 127.0.0.1 --port "$port" \
  --model "$root/models/har_accel_f32.tflite" --name har --version 2 \
  --secret-key "$tmp/keys/demo.key" --device demo --chunk-size 4KiB >"$tmp/publish.log" 2>&1; then
  update=sent
  say "model update: har version 2 signed and published in chunks of 4 KiB"
  for ((i = 0; i < 150; i++)); do
    grep -q 'model har: now serving version 2' "$tmp/edge-infer.log" 2>/dev/null && break
    grep -q 'model har: update refused' "$tmp/edge-infer.log" 2>/dev/null && break
    sleep 0.1 || true
  done
  grep -E 'model har: (now serving|update refused)' "$tmp/edge-infer.log" | sed -e 's/^.*model har:/  | har:/' >&2 || true
else
  say "edge-infer publish-model failed:"; sed 's/^/  | /' "$tmp/publish.log" >&2 || true
fi

# --- simulator and the outage -------------------------------------------------
# In the background and polled, so that a TERM to this script is handled
# within 0.1 s and the outage comes on time; Ctrl-C from the terminal
# reaches the simulator directly.
"$sim_bin" --host 127.0.0.1 --port "$port" --results-host 127.0.0.1 \
  --results-port "$uplink_port" --results-ca-file "$tls/ca.crt" ${sim_args[@]+"${sim_args[@]}"} &
sim_pid=$!
now_ms() { local us="${EPOCHREALTIME//[!0-9]/}"; echo $((us / 1000)); }
started_ms="$(now_ms)"
outage=before
while kill -0 "$sim_pid" 2>/dev/null; do
  elapsed=$(($(now_ms) - started_ms))
  if [ "$outage" = before ] && [ "$elapsed" -ge "$down_ms" ]; then
    say "uplink down: answers now wait in the outbox ($tmp/state/outbox)"
    stop "$uplink_pid" 5 "the uplink mosquitto"
    uplink_pid=""
    outage=during
  elif [ "$outage" = during ] && [ "$elapsed" -ge "$up_ms" ]; then
    outage=after
    for attempt in 1 2 3; do
      if start_broker "$tmp/uplink.conf" "$tmp/uplink.log" "$uplink_port"; then
        uplink_pid="$started_pid"
        say "uplink back: replaying the outbox"
        break
      fi
      say "the uplink mosquitto did not start again on port $uplink_port (attempt $attempt); see $tmp/uplink.log"
    done
  fi
  # Ctrl-C kills the sleep; on_int, not errexit, decides what follows.
  sleep 0.1 || true
done
wait "$sim_pid" && status=0 || status=$?
sim_pid=""

# --- the daemon's side of it ----------------------------------------------------
if [ "$outage" = after ] && [ -n "$uplink_pid" ]; then
  # The retained health record comes first, then the next one: recent
  # enough to count everything replayed.
  mosquitto_sub -h localhost -p "$uplink_port" --cafile "$tls/ca.crt" \
    -t edge-infer/demo/health -C 2 -W 5 >/dev/null 2>&1 || true
  say "the daemon's delivery figures, accelerators and background models (edge-infer status: its health record on the uplink):"
  { "$daemon_bin" status --config "$config" --device demo --wait 5 2>&1 || true; } |
    grep -E '^[^ ]|^  (health|broker|output link|delivery|outbox) |^  model .*(: on |accelerator|: shares|: in the background)|^  warning: model .*worker_priority' | sed 's/^/  | /' >&2 || true
  say "the daemon's log about the uplink:"
  grep -E 'output link(: lost| down:|: back)' "$tmp/edge-infer.log" | sed 's/^/  | /' >&2 || true
fi
if [ "$update" = sent ]; then
  say "the remote model update, from the daemon's log:"
  grep -E 'model har: (update to|now serving|version .* (confirmed|rolled back))|update refused' \
    "$tmp/edge-infer.log" | sed -e 's/^.*model har:/  | har:/' >&2 || true
  say "its state record (retained on edge-infer/demo/models/har/state, on the uplink):"
  { mosquitto_sub -h localhost -p "$uplink_port" --cafile "$tls/ca.crt" \
    -t edge-infer/demo/models/har/state --retained-only -C 1 -W 3 2>/dev/null || true; } | sed 's/^/  | /' >&2
fi
# Each worker's kernel time slice, fitted to what its messages take
# (worker/sched.rs, Linux 6.12 and later): the sensor models' workers ask
# for the kernel's minimum, so they run as soon as a message wakes them.
if [ -n "$daemon_pid" ] && [ -d "/proc/$daemon_pid/task" ]; then
  say "the workers' kernel time slices (se.slice; the event loop, edge-infer, keeps the kernel's default):"
  for t in /proc/"$daemon_pid"/task/*; do
    comm=$(cat "$t/comm" 2>/dev/null) || continue
    # The event loop is the main thread; the workers are infer-<model>-<n>,
    # their decoders dec-<model>-<n>.
    case "$comm" in infer-*|dec-*) ;; *) [ "${t##*/}" = "$daemon_pid" ] || continue ;; esac
    awk -v c="$comm" '/^se.slice/ {s = $3} /^policy/ {idle = ($3 == 5)}
      END {if (idle) printf "  | %-16s in the background (SCHED_IDLE: no slice)\n", c
           else if (s) printf "  | %-16s %.1f ms\n", c, s / 1e6}' "$t/sched" 2>/dev/null || true
  done | sort >&2
fi
# What Prometheus would scrape: per model results, errors and the p99 of
# the whole run, read from the cumulative histograms.
say "Prometheus metrics (http://127.0.0.1:$metrics_port/metrics), summarized:"
python3 - "$metrics_port" <<'PY' >&2 || true
import re, sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
samples = {}
for line in text.splitlines():
    m = re.match(r'^(\w+)(?:\{(.*)\})? (\S+)$', line)
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        samples.setdefault(m.group(1), []).append((labels, float(m.group(3))))
def get(name, model):
    return sum(v for l, v in samples.get(name, []) if l.get("model") == model)
models = sorted({l["model"] for l, _ in samples.get("edge_infer_results_total", [])})
for model in models:
    count = get("edge_infer_result_latency_seconds_count", model)
    p99 = "-"
    if count:
        buckets = sorted((float(l["le"]), v) for l, v in samples["edge_infer_result_latency_seconds_bucket"] if l.get("model") == model)
        p99 = next(("<= %g ms" % (le * 1000) for le, v in buckets if v >= 0.99 * count), "-")
    errors = {l["code"]: int(v) for l, v in samples.get("edge_infer_errors_total", []) if l.get("model") == model and v}
    print("  | %-10s results %6d  p99 %-12s errors %s" % (model, get("edge_infer_results_total", model), p99, errors or "none"))
rss = samples.get("process_resident_memory_bytes", [({}, 0)])[0][1]
print("  | process    RSS %.1f MiB, %d lines exposed" % (rss / 2**20, len(text.splitlines())))
PY
exit "$status"
