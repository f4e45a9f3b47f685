#!/usr/bin/env bash
# The issue 12 benchmark (at-least-once delivery, TLS, the outbox), in one
# command, on Mosquittos of its own:
#
# 1. HAR JSON (har_accel_int8) with QoS 1 inputs: the daemon with the default
#    `[delivery] ack = "answered"` against `ack = "queued"` (the previous
#    behaviour), everything else default (QoS 1 results, persistent session,
#    outbox on in a temp state dir): latency at 1,000 msg/s and the highest
#    sustained rate (edge-infer-bench drive).
# 2. The same over TLS: one broker with a plaintext and a TLS listener
#    (certificates made here with openssl), the daemon on the TLS one with
#    `tls = true, ca_file = ...`, the generator on the plaintext one.
#    1 and 2 take turns, REPS times: answered (plaintext), queued, TLS.
# 3. The outbox: results go to a second broker (`[uplink]`) that is stopped;
#    N inputs are sent, every result goes to the outbox (its fill timed from
#    its files' growth), then the uplink is started with the results'
#    subscriber's session waiting and the replay is timed, with fresh inputs
#    flowing meanwhile (edge-infer-bench outage). Twice, plus once with a
#    slow fill (one result per disk sync).
#
# Writes the section "## Issue 12: at-least-once, TLS, outbox" of
# BENCHMARKS.md (replaced if there, else before "## Notes and findings").
#
#   bench/delivery.sh              # ~13 min: 3 turns, 10 s fixed rate, 10 s confirmations
#   bench/delivery.sh --quick      # ~4 min: 2 turns, short runs
#
# Options: --quick, --reps N (turns of 1 and 2), --out FILE (default
# BENCHMARKS.md; --out - prints the section only), --no-build.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

QUICK=0
REPS=""
OUT=BENCHMARKS.md
BUILD=1
CMDLINE="bench/delivery.sh $*"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "delivery.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $QUICK == 1 ]]; then
  REPS=${REPS:-2}; FIXED=3; TRIAL=2; CONFIRM=5
  FILL_N=10000; FILL_RATE=5000; LIVE_RATE=1000; LIVE_S=5; OUTAGE_REPS=1; SLOW_N=400
else
  REPS=${REPS:-3}; FIXED=10; TRIAL=3; CONFIRM=10
  FILL_N=50000; FILL_RATE=5000; LIVE_RATE=1000; LIVE_S=10; OUTAGE_REPS=2; SLOW_N=2000
fi
SLOW_RATE=200
T_START=$(date +%s)

for tool in mosquitto mosquitto_sub openssl python3; do
  if ! command -v "$tool" >/dev/null && [[ ! -x /usr/sbin/$tool ]]; then
    echo "delivery.sh: $tool is missing: run scripts/setup-deps.sh" >&2; exit 1
  fi
done
if [[ -z ${EDGE_INFER_RUNTIME_LIBRARY:-} ]]; then
  lib=$REPO/runtime/$(uname -m)/libLiteRt.so
  if [[ ! -f $lib ]]; then
    echo "delivery.sh: $lib is missing: run scripts/setup-deps.sh (or set EDGE_INFER_RUNTIME_LIBRARY)" >&2; exit 1
  fi
  # The binaries live in the target dir, not next to runtime/.
  export EDGE_INFER_RUNTIME_LIBRARY=$lib
fi

if [[ $BUILD == 1 ]]; then
  cargo build --release -p edge-infer -p bench
fi
COMMIT_AT_START=$(git rev-parse HEAD 2>/dev/null || echo "?")
DIRTY_AT_START=$(git status --porcelain --untracked-files=no 2>/dev/null | tr '\n' ' ')
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BENCH=$TARGET_DIR/release/edge-infer-bench
DAEMON=$TARGET_DIR/release/edge-infer
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

WORK=$(mktemp -d /tmp/edge-infer-delivery.XXXXXX)
RES=$WORK/results
mkdir -p "$RES"
echo "work dir $WORK"

# Certificates: a CA and the broker's certificate for 127.0.0.1 (ECDSA P-256).
(
  cd "$WORK"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days 7 -subj "/CN=edge-infer bench CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout broker.key -out broker.csr \
    -subj "/CN=127.0.0.1" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' > broker.ext
  openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem -days 7 \
    -extfile broker.ext 2>/dev/null
)

source bench/broker.sh
TLS_PORT=$(free_port)
# `user root`: Mosquitto started as root drops to user mosquitto, which
# cannot read the 0600 key in this root-owned dir.
start_bench_broker "$WORK" "listener $TLS_PORT 127.0.0.1
cafile $WORK/ca.pem
certfile $WORK/broker.pem
keyfile $WORK/broker.key
user root"
echo "mosquitto on 127.0.0.1:$PORT (plaintext) and :$TLS_PORT (TLS)"

DAEMON_PID=""
UP_PID=""
OUTAGE_PID=""
cleanup() {
  for p in $OUTAGE_PID $DAEMON_PID $UP_PID; do
    kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
  done
  stop_bench_broker
}
trap cleanup EXIT

# What a client offering rustls's defaults, in rustls's order, gets.
echo | openssl s_client -connect "127.0.0.1:$TLS_PORT" -CAfile "$WORK/ca.pem" \
  -ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256 \
  -groups X25519:P-256:P-384 > "$WORK/s_client.txt" 2>&1 || true

# The daemon's configs: defaults except where each says.
model_toml() {
  cat <<EOF

[[models]]
name = "har"
path = "$REPO/models/har_accel_int8.tflite"
labels = "$REPO/models/har_accel.labels"
input_topic = "bench/har/in"
output_topic = "bench/har/out"
EOF
}
for cfg in answered queued tls; do
  mkdir -p "$WORK/state-$cfg"
  {
    echo "device_id = \"bench\""
    echo "state_dir = \"$WORK/state-$cfg\""
    echo "[mqtt]"
    echo "host = \"127.0.0.1\""
    if [[ $cfg == tls ]]; then
      echo "port = $TLS_PORT"
      echo "tls = true"
      echo "ca_file = \"$WORK/ca.pem\""
    else
      echo "port = $PORT"
    fi
    [[ $cfg == queued ]] && printf '[delivery]\nack = "queued"\n'
    model_toml
  } > "$WORK/$cfg.toml"
  "$DAEMON" check-config --config "$WORK/$cfg.toml" > /dev/null
done
cat > "$WORK/workloads.json" <<EOF
[{"name": "har_json", "model": "har_accel_int8.tflite", "format": "json",
  "fixture": "tests/fixtures/har_accel_int8.json", "case": "walking",
  "topic": "bench/har/in", "results": "bench/har/out",
  "rates": [1000, 12000], "search_max": 100000}]
EOF

# The daemon keeps its broker session (clean_session = false, the default):
# a run must not inherit the previous run's unacknowledged inputs.
reset_sessions() {
  local id
  for id in edge-infer-bench edge-infer-bench-out; do
    mosquitto_sub -h 127.0.0.1 -p "$1" -i "$id" -t bench/reset -E -W 5 >/dev/null 2>&1 || true
  done
}

# 1 and 2: the three configs take turns, the first one rotating.
CFGS=(answered queued tls)
for rep in $(seq "$REPS"); do
  for k in 0 1 2; do
    cfg=${CFGS[$(( (k + rep - 1) % 3 ))]}
    reset_sessions "$PORT"
    echo "== $cfg (turn $rep of $REPS; load $(cut -d' ' -f1-3 /proc/loadavg))"
    "$BENCH" drive --name "$cfg" --ready notify --port "$PORT" --workloads "$WORK/workloads.json" \
      --repo "$REPO" --errors 'edge-infer/bench/errors' --qos 1 --cpu-of "broker=$MOSQ_PID" --fixed-seconds "$FIXED" \
      --trial-seconds "$TRIAL" --seconds "$CONFIRM" --cold-starts 1 \
      --out "$RES/$cfg.rep$rep.json" --log "$WORK/$cfg.log" \
      -- "$DAEMON" run --config "$WORK/$cfg.toml"
    cut -d' ' -f1-3 /proc/loadavg > "$RES/$cfg.rep$rep.load"
  done
done
for cfg in "${CFGS[@]}"; do
  python3 bench/median.py "$RES" "$cfg" "$REPS"
done
reset_sessions "$PORT"

# 3: the outbox. The uplink keeps sessions across its restart, so the
# results' subscriber, subscribed once beforehand, misses nothing however
# quickly the daemon reconnects.
UP_PORT=$(free_port)
OUTAGE=(--port "$PORT" --uplink-port "$UP_PORT" --topic bench/har/in --results bench/har/out
        --errors 'edge-infer/bench/errors' --fixture tests/fixtures/har_accel_int8.json --case walking)
run_outage() {
  local name=$1 n=$2 rate=$3 live_rate=$4 dir=$WORK/outage-$1
  mkdir -p "$dir/up" "$dir/state"
  { bench_broker_conf "$UP_PORT" | sed -e 's/^persistence false/persistence true/' \
      -e 's/^max_queued_messages .*/max_queued_messages 10000000/'
    echo "persistence_location $dir/up/"
    echo "autosave_interval 0"
    echo "user root"; } > "$dir/up.conf"
  {
    echo "device_id = \"bench\""
    echo "state_dir = \"$dir/state\""
    printf '[mqtt]\nhost = "127.0.0.1"\nport = %s\n' "$PORT"
    # Reconnect quickly: the replay is what is measured, not the backoff.
    printf '[uplink]\nhost = "127.0.0.1"\nport = %s\nreconnect_min_ms = 50\nreconnect_max_secs = 1\n' "$UP_PORT"
    # Health once a second, to read it right after the drain.
    printf '[health]\ninterval_secs = 1\n'
    model_toml
  } > "$dir/daemon.toml"
  reset_sessions "$PORT"
  start_mosquitto "$dir/up.conf" "$dir/up.log" "$UP_PORT" || { echo "uplink broker did not start" >&2; exit 1; }
  UP_PID=$LAST_MOSQ_PID
  "$BENCH" outage "${OUTAGE[@]}" --prepare > /dev/null
  "$DAEMON" run --config "$dir/daemon.toml" 2> "$dir/daemon.log" &
  DAEMON_PID=$!
  for _ in $(seq 100); do
    grep -qs "ready: serving" "$dir/daemon.log" && break
    sleep 0.1
  done
  grep -q "ready: serving" "$dir/daemon.log" || { echo "the daemon did not get ready: $dir/daemon.log" >&2; exit 1; }
  sleep 0.5
  kill "$UP_PID"; wait "$UP_PID" 2>/dev/null || true; UP_PID=""
  echo "== outage $name: $n inputs at $rate/s with the uplink down (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$BENCH" outage "${OUTAGE[@]}" --count "$n" --rate "$rate" --live-rate "$live_rate" \
    --live-seconds "$LIVE_S" --outbox-dir "$dir/state/outbox" --pid "$DAEMON_PID" \
    --filled "$dir/filled.json" > "$RES/outage-$name.json" 2> "$dir/outage.log" &
  OUTAGE_PID=$!
  while [[ ! -f $dir/filled.json ]]; do
    kill -0 "$OUTAGE_PID" 2>/dev/null || { echo "outage run failed: $dir/outage.log" >&2; cat "$dir/outage.log" >&2; exit 1; }
    sleep 0.05
  done
  kill -0 "$DAEMON_PID" || { echo "the daemon died: $dir/daemon.log" >&2; exit 1; }
  du -sb "$dir/state/outbox" | cut -f1 > "$dir/outbox_du"
  date +%s.%N > "$dir/uplink_start"
  start_mosquitto "$dir/up.conf" "$dir/up.log" "$UP_PORT" || { echo "uplink broker did not restart" >&2; exit 1; }
  UP_PID=$LAST_MOSQ_PID
  wait "$OUTAGE_PID" || { echo "outage run failed: $dir/outage.log" >&2; cat "$dir/outage.log" >&2; exit 1; }
  OUTAGE_PID=""
  sleep 1.5
  # The retained health record, published every second: the outbox's
  # counters after the drain.
  mosquitto_sub -h 127.0.0.1 -p "$UP_PORT" -t 'edge-infer/bench/health' -C 1 -W 5 > "$dir/health.json" || true
  kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""
  kill "$UP_PID"; wait "$UP_PID" 2>/dev/null || true; UP_PID=""
  python3 - "$RES/outage-$name.json" "$dir" <<'PY'
import json, sys
path, d = sys.argv[1], sys.argv[2]
doc = json.load(open(path))
doc["uplink_start_unix"] = float(open(f"{d}/uplink_start").read())
doc["outbox_du_bytes"] = int(open(f"{d}/outbox_du").read())
try:
    doc["health"] = json.load(open(f"{d}/health.json"))
except (OSError, ValueError):
    doc["health"] = None
log = open(f"{d}/daemon.log", errors="replace").read().splitlines()
doc["daemon_log_errors"] = [l for l in log if " ERROR " in l]
doc["daemon_log_warnings"] = sum(" WARN " in l for l in log)
json.dump(doc, open(path, "w"), indent=1)
PY
  grep -v "New connection\|New client\|closed its connection\|disconnected\|Opening ipv4\|mosquitto version\|Config loaded\|persistence\|running as root\|Saving in-memory\|max_packet_size\|should not be run as root\|terminating\|Restored\|^$" \
    "$dir/up.log" > "$dir/up.warnings" || true
}
for rep in $(seq "$OUTAGE_REPS"); do
  run_outage "rep$rep" "$FILL_N" "$FILL_RATE" "$LIVE_RATE"
done
run_outage slow "$SLOW_N" "$SLOW_RATE" 0

grep -v "New connection\|New client\|closed its connection\|disconnected\|Opening ipv\|mosquitto version\|Config loaded\|running as root\|max_packet_size\|should not be run as root\|terminating\|^$" \
  "$WORK/mosquitto.log" > "$WORK/mosquitto.warnings" || true

python3 - "$RES/meta.json" <<EOF
import json, os, subprocess
def sh(*c):
    try: return subprocess.run(c, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
s_client = open("$WORK/s_client.txt", errors="replace").read()
def find(prefix):
    return next((l.strip() for l in s_client.splitlines() if l.strip().startswith(prefix)), "")
json.dump({
    "cores": os.cpu_count(), "cpu": cpu, "kernel": sh("uname", "-r"),
    "commit": "$COMMIT_AT_START", "dirty": "$DIRTY_AT_START".strip(),
    "command": """$CMDLINE""", "quick": $QUICK == 1, "reps": $REPS,
    "fixed_seconds": $FIXED, "trial_seconds": $TRIAL, "confirm_seconds": $CONFIRM,
    "fill_n": $FILL_N, "fill_rate": $FILL_RATE, "live_rate": $LIVE_RATE, "live_seconds": $LIVE_S,
    "outage_reps": $OUTAGE_REPS, "slow_n": $SLOW_N, "slow_rate": $SLOW_RATE,
    "mosquitto": (sh("$MOSQUITTO", "-h").splitlines() or ["?"])[0],
    "openssl": sh("openssl", "version"),
    "tls_session": find("New, "), "tls_temp_key": find("Server Temp Key"),
    "tls_peer_signature": find("Peer signature type"),
    "loadavg_start": "$LOAD_START".split(), "loadavg_end": open("/proc/loadavg").read().split()[:3],
    "minutes": round(($(date +%s) - $T_START) / 60, 1),
    "broker_warnings": open("$WORK/mosquitto.warnings", errors="replace").read().splitlines()[:20],
}, open("$RES/meta.json", "w"), indent=1)
EOF
python3 bench/delivery_report.py "$RES" "$OUT"
echo "done in $(( ($(date +%s) - T_START) / 60 )) min; raw results in $RES"
