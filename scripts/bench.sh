#!/usr/bin/env bash
# The benchmark of issues 5, 11 and 16, in one command: builds release,
# prepares the Python baseline's venv, starts its own Mosquitto on a free
# loopback port, measures the runtime floor, the echo floor (messaging
# floor), edge-infer and the Python baseline on the same broker with the
# same open-loop generator, and writes BENCHMARKS.md. Workloads
# (bench/workloads.json): har_json, mnv2_raw, mnv2_json (whole tensors),
# har_readings (one JSON message per reading, windowed by the target) and
# mnv2_jpeg (a JPEG photo).
#
# Two settings, each with its own echo floor, edge-infer and baseline (the
# targets take turns: echo, edge-infer, baseline at defaults, then the
# same at fastest, in every repetition):
# - defaults (the headline): edge-infer with a config that sets only what a
#   user must (device id, broker, log level, the models and the tables a
#   workload needs), so QoS 1 subscriptions and replies, a persistent
#   session, the default queue budgets, threads and workers; the load,
#   the echo floor and the baseline at QoS 1. Every workload in full, then
#   the mixed phase (edge-infer and baseline): HAR JSON at 1,000 msg/s
#   while MobileNetV2 raw runs at 50% of the rate the same target
#   sustained earlier in the run; for edge-infer, the mixed phase again at
#   the same rates on a daemon whose MobileNetV2 models run in the
#   background from the start (`worker_priority = "background"`; the
#   default, "auto", moves them there after a window).
# - fastest (for comparison): QoS 0 everywhere and a clean session, as
#   before issue 16. Lean: har_json, mnv2_raw and mnv2_json only (or the
#   --only list; the echo floor har_json only, the baseline har_json and
#   mnv2_json), each workload's "lean_rates" as fixed rates, the search
#   starting from the defaults' rate, a 10 s confirmation, one cold start.
# The daemon and the baseline load the models of the selected workloads
# plus every other shipped model, idle (the memory target counts them).
# Peak RSS is measured per phase (bench/notes.md). The duration to expect
# is printed at the start (bench/estimate.py).
#
#   scripts/bench.sh                # full run: 30 s sustained confirmations (~40 min)
#   scripts/bench.sh --repeat 2     # what BENCHMARKS.md is written from (65-80 min)
#   scripts/bench.sh --quick        # short runs, to iterate (~14 min)
#   scripts/bench.sh --only har_json --targets edge-infer,baseline --settings defaults --quick
#
# Options: --quick, --only W1,W2 (workloads from bench/workloads.json, all
# by default), --targets echo,edge-infer,baseline, --settings
# defaults,fastest (both by default), --no-mixed (skip the mixed phase),
# --workload-models (load only the workloads' models, no idle ones),
# --threads N (XNNPACK threads, both targets; the default config's 1 when
# not given), --workers N (edge-infer workers per model; the default 1
# when not given), --cpus LIST (pin edge-infer and the baseline with
# taskset, e.g. 1 for "the daemon has one core"), --repeat N (run each
# target N times, interleaved, and report medians), --seconds S (sustained
# confirmation at defaults), --fastest-seconds S (at fastest), --out FILE
# (default BENCHMARKS.md), --no-build.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

QUICK=0
ONLY=""
TARGETS="echo,edge-infer,baseline"
SETTINGS="defaults,fastest"
MIXED=1
IDLE_MODELS=1
THREADS=""
WORKERS=""
CPUS=""
REPEAT=1
SECONDS_CONFIRM=""
SECONDS_FASTEST=""
OUT="BENCHMARKS.md"
BUILD=1
CMDLINE="scripts/bench.sh $*"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY="$2"; shift ;;
    --targets) TARGETS="$2"; shift ;;
    --settings) SETTINGS="$2"; shift ;;
    --no-mixed) MIXED=0 ;;
    --workload-models) IDLE_MODELS=0 ;;
    --threads) THREADS="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --cpus) CPUS="$2"; shift ;;
    --repeat) REPEAT="$2"; shift ;;
    --seconds) SECONDS_CONFIRM="$2"; shift ;;
    --fastest-seconds) SECONDS_FASTEST="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,47p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $QUICK == 1 ]]; then
  FIXED=3; TRIAL=2; CONFIRM=${SECONDS_CONFIRM:-5}; CONFIRM_FASTEST=${SECONDS_FASTEST:-5}
  COLD=3; FLOOR_ITERS_SMALL=20000; FLOOR_ITERS_BIG=300
else
  FIXED=10; TRIAL=5; CONFIRM=${SECONDS_CONFIRM:-30}; CONFIRM_FASTEST=${SECONDS_FASTEST:-10}
  COLD=5; FLOOR_ITERS_SMALL=200000; FLOOR_ITERS_BIG=2000
fi
# The MobileNetV2 rate of the mixed phase when the run has no sustained
# mnv2_raw figure of its own (--only without mnv2_raw): about half of what
# one worker sustains on the slower of the machines this ran on (Intel
# Xeon, ~2.1 ms per invoke; bench/notes.md).
MIXED_FALLBACK=150

for tool in mosquitto mosquitto_sub python3; do
  if ! command -v "$tool" >/dev/null && [[ ! -x /usr/sbin/$tool ]]; then
    echo "bench.sh: $tool is missing: run scripts/setup-deps.sh" >&2; exit 1
  fi
done
if [[ ! -f runtime/$(uname -m)/libLiteRt.so ]]; then
  echo "bench.sh: runtime/$(uname -m)/libLiteRt.so is missing: run scripts/setup-deps.sh" >&2; exit 1
fi
IFS=, read -ra TLIST <<< "$TARGETS"
IFS=, read -ra SLIST <<< "$SETTINGS"
for t in "${TLIST[@]}"; do
  case "$t" in echo|edge-infer|baseline) ;; *) echo "bench.sh: unknown target $t (echo, edge-infer, baseline)" >&2; exit 2 ;; esac
done
for s in "${SLIST[@]}"; do
  case "$s" in defaults|fastest) ;; *) echo "bench.sh: unknown settings $s (defaults, fastest)" >&2; exit 2 ;; esac
done

ALL_WORKLOADS=$(python3 -c 'import json, sys; print(",".join(w["name"] for w in json.load(open(sys.argv[1]))))' bench/workloads.json)
IFS=, read -ra WLIST <<< "${ONLY:-$ALL_WORKLOADS}"
# The fastest settings run the issue 5 workloads only, unless --only chose.
FAST_WLIST=()
for w in "${WLIST[@]}"; do
  if [[ -n $ONLY ]] || [[ $w == har_json || $w == mnv2_raw || $w == mnv2_json ]]; then FAST_WLIST+=("$w"); fi
done
WORKLOADS_CSV=$(IFS=,; echo "${WLIST[*]}")
FAST_CSV=$(IFS=,; echo "${FAST_WLIST[*]}")
# At fastest the echo floor and the baseline run only what the issue 5
# targets compare them with (HAR JSON; and MobileNetV2 JSON for the
# baseline), when those run: the MobileNetV2 floors are the broker's limit
# at either QoS and the defaults tables have them and the bridge's raw
# MobileNetV2 figures.
only_of() {  # WANTED: the fastest workloads among WANTED, or all of them if none is
  local out=() w
  for w in "${FAST_WLIST[@]}"; do [[ ,$1, == *,$w,* ]] && out+=("$w"); done
  if [[ ${#out[@]} -eq 0 ]]; then echo "$FAST_CSV"; else (IFS=,; echo "${out[*]}"); fi
}
ECHO_FAST_CSV=$(only_of har_json)
BASELINE_FAST_CSV=$(only_of har_json,mnv2_json)
# The mixed phase runs at defaults, for edge-infer and the baseline.
MIXED_ON=0
if [[ $MIXED == 1 && ,$SETTINGS, == *,defaults,* ]] && [[ ,$TARGETS, == *,edge-infer,* || ,$TARGETS, == *,baseline,* ]]; then
  MIXED_ON=1
fi

python3 bench/estimate.py --workloads bench/workloads.json --targets "$TARGETS" --settings "$SETTINGS" \
  --defaults-workloads "$WORKLOADS_CSV" --fastest-workloads "$FAST_CSV" --echo-fastest-workloads "$ECHO_FAST_CSV" \
  --baseline-fastest-workloads "$BASELINE_FAST_CSV" --fixed "$FIXED" --trial "$TRIAL" \
  --confirm "$CONFIRM" --confirm-fastest "$CONFIRM_FASTEST" --cold "$COLD" --repeat "$REPEAT" --mixed "$MIXED_ON" \
  || echo "(no estimate of the duration)"

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [[ $BUILD == 1 ]]; then
  cargo build --release -p edge-infer -p bench
fi
# What the binaries were built from, read now: the run takes long enough for
# the tree to change before the report is written.
COMMIT_AT_START=$(git rev-parse HEAD 2>/dev/null || echo "?")
DIRTY_AT_START=$(git status --porcelain --untracked-files=no 2>/dev/null | tr '\n' ' ')
BENCH=$TARGET_DIR/release/edge-infer-bench
DAEMON=$TARGET_DIR/release/edge-infer

VENV=$REPO/.venv-bench
if [[ ! -x $VENV/bin/python ]] || ! cmp -s bench/requirements.txt "$VENV/.requirements"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  cp bench/requirements.txt "$VENV/.requirements"
fi

T_START=$(date +%s)
WORK=$(mktemp -d /tmp/edge-infer-bench.XXXXXX)
RES=$WORK/results
mkdir -p "$RES" "$WORK/state-defaults" "$WORK/state-fastest"
source bench/broker.sh
start_bench_broker "$WORK"
echo "mosquitto on 127.0.0.1:$PORT (work dir $WORK)"

# The models: those of the selected workloads, those the mixed phase needs,
# then every other shipped model, idle on a topic nobody publishes to. Both
# settings load the same set (their RSS compares like with like) and the
# baseline gets it too. Only what a user must write: name, path, labels,
# topics, payload and the tables a payload needs; threads and workers only
# when given on the command line.
MODELS_TOML=""
BASELINE_MODELS=()
ECHO_ROUTES=()
MODEL_SET=()
LOADED=" "
tuning() {
  [[ -n $THREADS ]] && printf 'threads = %s\n' "$THREADS"
  [[ -n $WORKERS ]] && printf 'workers = %s\n' "$WORKERS"
  true
}
add_model() {  # WORKLOAD [ROLE]: the model a workload (or the mixed phase) needs
  local w=$1 role=${2:-}
  [[ $LOADED == *" $w "* ]] && return 0
  LOADED+="$w "
  case "$w" in
    har_json)
      MODELS_TOML+="
[[models]]
name = \"har\"
path = \"$REPO/models/har_accel_int8.tflite\"
labels = \"$REPO/models/har_accel.labels\"
input_topic = \"bench/har/in\"
output_topic = \"bench/har/out\"
$(tuning)
"
      BASELINE_MODELS+=(--model "name=har,path=models/har_accel_int8.tflite,input=bench/har/in,output=bench/har/out,payload=json,labels=models/har_accel.labels")
      MODEL_SET+=("har_accel_int8 (JSON)$role") ;;
    mnv2_raw)
      MODELS_TOML+="
[[models]]
name = \"mnv2raw\"
path = \"$REPO/models/mobilenet_v2_int8.tflite\"
input_topic = \"bench/mnv2raw/in/+\"
output_topic = \"bench/mnv2raw/out/{1}\"
payload = \"raw\"
$(tuning)
"
      BASELINE_MODELS+=(--model "name=mnv2raw,path=models/mobilenet_v2_int8.tflite,input=bench/mnv2raw/in/+,output=bench/mnv2raw/out/{1},payload=raw")
      MODEL_SET+=("mobilenet_v2_int8 (raw)$role") ;;
    mnv2_json)
      MODELS_TOML+="
[[models]]
name = \"mnv2json\"
path = \"$REPO/models/mobilenet_v2_int8.tflite\"
input_topic = \"bench/mnv2json/in\"
output_topic = \"bench/mnv2json/out\"
$(tuning)
"
      BASELINE_MODELS+=(--model "name=mnv2json,path=models/mobilenet_v2_int8.tflite,input=bench/mnv2json/in,output=bench/mnv2json/out,payload=json")
      MODEL_SET+=("mobilenet_v2_int8 (JSON)$role") ;;
    har_readings)
      # Windows of readings (issue 11); the fields, size, stride and
      # timestamp match the workload's.
      MODELS_TOML+="
[[models]]
name = \"har_stream\"
path = \"$REPO/models/har_accel_int8.tflite\"
labels = \"$REPO/models/har_accel.labels\"
input_topic = \"bench/imu/+\"
output_topic = \"bench/imu-out/{1}\"
$(tuning)

[models.window]
fields = [\"ax\", \"ay\", \"az\"]
size = 128
stride = 64
key = \"{1}\"
timestamp = \"ts\"
"
      BASELINE_MODELS+=(--model "name=har_stream,path=models/har_accel_int8.tflite,input=bench/imu/+,output=bench/imu-out/{1},payload=readings,labels=models/har_accel.labels,fields=ax:ay:az,size=128,stride=64,timestamp=ts")
      MODEL_SET+=("har_accel_int8 (readings, windows of 128)$role") ;;
    mnv2_jpeg)
      if [[ ! -f models/samples/photo_640x480.jpg ]]; then
        echo "bench.sh: workload mnv2_jpeg needs models/samples/photo_640x480.jpg" >&2; exit 1
      fi
      # The model's input is [-1, 1] quantized to int8 (models/README.md).
      MODELS_TOML+="
[[models]]
name = \"mnv2jpeg\"
path = \"$REPO/models/mobilenet_v2_int8.tflite\"
input_topic = \"bench/mnv2jpeg/in/+\"
output_topic = \"bench/mnv2jpeg/out/{1}\"
payload = \"image\"
$(tuning)

[models.image]
mean = 127.5
std = 127.5
"
      BASELINE_MODELS+=(--model "name=mnv2jpeg,path=models/mobilenet_v2_int8.tflite,input=bench/mnv2jpeg/in/+,output=bench/mnv2jpeg/out/{1},payload=image,mean=127.5,std=127.5")
      MODEL_SET+=("mobilenet_v2_int8 (JPEG)$role") ;;
    *) echo "bench.sh: unknown workload $w (bench/workloads.json has $ALL_WORKLOADS)" >&2; exit 2 ;;
  esac
}
for w in "${WLIST[@]}"; do
  add_model "$w"
  case "$w" in
    har_json) ECHO_ROUTES+=(--in bench/har/in --out bench/har/out) ;;
    mnv2_raw) ECHO_ROUTES+=(--in 'bench/mnv2raw/in/+' --out 'bench/mnv2raw/out/{1}') ;;
    mnv2_json) ECHO_ROUTES+=(--in bench/mnv2json/in --out bench/mnv2json/out) ;;
    har_readings) ECHO_ROUTES+=(--in 'bench/imu/+' --out 'bench/imu-out/{1}' --window 'bench/imu/+=128:64') ;;
    mnv2_jpeg) ECHO_ROUTES+=(--in 'bench/mnv2jpeg/in/+' --out 'bench/mnv2jpeg/out/{1}') ;;
  esac
done
if [[ $MIXED_ON == 1 ]]; then
  add_model har_json " (for the mixed phase)"
  add_model mnv2_raw " (for the mixed phase)"
fi
if [[ $IDLE_MODELS == 1 ]]; then
  # Every other shipped model (Cargo.toml's package.metadata.deb assets)
  # the CPU can run; har_accel_int8_edgetpu.tflite needs an Edge TPU
  # delegate and is left out.
  for spec in "har_f32:har_accel_f32.tflite:json" "multi_io:multi_io_uint8.tflite:json" \
              "multi_io_f32:multi_io_f32.tflite:json" "dynamic_batch:dynamic_batch_f32.tflite:json" \
              "shapes:shapes_int8.tflite:image"; do
    IFS=: read -r name file payload <<< "$spec"
    payload_line=""
    [[ $payload == image ]] && payload_line='payload = "image"'
    MODELS_TOML+="
[[models]]
name = \"$name\"
path = \"$REPO/models/$file\"
input_topic = \"bench/idle/$name/in\"
output_topic = \"bench/idle/$name/out\"
$payload_line
"
    BASELINE_MODELS+=(--model "name=$name,path=models/$file,input=bench/idle/$name/in,output=bench/idle/$name/out,payload=$payload")
    MODEL_SET+=("${file%.tflite} (idle)")
  done
fi

# defaults: what a user must write, nothing else. The state dir is the
# one thing a user does not write either (systemd's StateDirectory= gives
# it) but outside systemd the default is /var/lib/edge-infer: a fresh one
# per settings here.
for s in defaults fastest; do
  {
    echo "device_id = \"bench\""
    echo "state_dir = \"$WORK/state-$s\""
    echo
    echo "[mqtt]"
    echo "host = \"127.0.0.1\""
    echo "port = $PORT"
    if [[ $s == fastest ]]; then
      # As before issue 16: QoS 0 subscriptions and replies, no session.
      echo "qos = 0"
      echo "clean_session = true"
    fi
    echo
    echo "[log]"
    echo "level = \"warn\""
    printf '%s' "$MODELS_TOML"
  } > "$WORK/edge-infer-$s.toml"
  if ! "$DAEMON" check-config --config "$WORK/edge-infer-$s.toml" > "$WORK/check-$s.log" 2>&1; then
    echo "bench.sh: the $s config is refused ($WORK/edge-infer-$s.toml):" >&2
    cat "$WORK/check-$s.log" >&2; exit 1
  fi
done

# The defaults with MobileNetV2 in the background from the start
# (worker_priority = "background" instead of the default "auto"), for a
# second mixed phase.
sed -e '/mobilenet_v2_int8.tflite"$/a worker_priority = "background"' \
  -e "s|^state_dir = .*|state_dir = \"$WORK/state-background\"|" \
  "$WORK/edge-infer-defaults.toml" > "$WORK/edge-infer-background.toml"
mkdir -p "$WORK/state-background"

# The demo config (every shipped model) on our broker: cold start and RSS.
sed -e "s/^port = .*/port = $PORT/" -e 's/^level = .*/level = "warn"/' config/demo.toml > "$WORK/all-models.toml"
sed -i -e "s|\"\.\./models/|\"$REPO/models/|" "$WORK/all-models.toml"
# A state dir of its own (the default /var/lib/edge-infer may be another
# daemon's: two must not share one).
mkdir -p "$WORK/state-all"
sed -i -e "s|^device_id = .*|&\nstate_dir = \"$WORK/state-all\"|" "$WORK/all-models.toml"

DRIVE=(--port "$PORT" --workloads bench/workloads.json --repo "$REPO"
       --errors 'edge-infer/bench/errors' --fixed-seconds "$FIXED" --trial-seconds "$TRIAL"
       --cold-starts "$COLD")

echo "== runtime floor (in-process invoke, model-runtime, same LoadOptions)"
for t in 1 2; do
  "$BENCH" floor models/har_accel_int8.tflite --threads "$t" --iters "$FLOOR_ITERS_SMALL" \
    --fixture tests/fixtures/har_accel_int8.json --case walking 2>>"$WORK/floor.log" > "$RES/floor_har_t$t.json"
  "$BENCH" floor models/mobilenet_v2_int8.tflite --threads "$t" --iters "$FLOOR_ITERS_BIG" \
    --fixture tests/fixtures/mobilenet_v2_int8.json --case noise 2>>"$WORK/floor.log" > "$RES/floor_mnv2_t$t.json"
done
cat "$RES"/floor_*.json

echo "== cold start and RSS with every shipped model (config/demo.toml)"
"$BENCH" coldstart --ready notify --repeat "$COLD" --out "$RES/coldstart_all_models.json" \
  --log "$WORK/all-models.log" -- "$DAEMON" run --config "$WORK/all-models.toml"

PIN=()
[[ -n $CPUS ]] && PIN=(taskset -c "$CPUS")

# The daemon at defaults keeps its broker session (clean_session = false):
# while it is stopped the broker would queue every QoS 1 input of the
# other targets' runs for it (up to max_queued_messages, ~1 MB each for
# mnv2_json) and hand them over at its next start. Its sessions are
# cleared before and after each of its drives.
reset_sessions() {
  local id
  for id in edge-infer-bench edge-infer-bench-out; do
    mosquitto_sub -h 127.0.0.1 -p "$PORT" -i "$id" -t bench/reset -E -W 5 >/dev/null 2>&1 || true
  done
}

# The mixed phase again on a daemon whose MobileNetV2 models run in the
# background (edge-infer-background.toml), at the MobileNetV2 rate of the
# defaults run's mixed phase; each model's figure alone is measured first
# on the same daemon.
mixed_background() {  # DEFAULTS_RESULT REP
  local rate out=$RES/edge-infer-background.json
  [[ $REPEAT -gt 1 ]] && out=$RES/edge-infer-background.rep$2.json
  rate=$(python3 -c 'import json, sys
m = json.load(open(sys.argv[1])).get("mixed") or {}
print(next((w["rate"] for w in m.get("workloads", []) if w["name"] == "mnv2_raw"), ""))' "$1" 2>/dev/null || true)
  [[ -z $rate ]] && rate=$MIXED_FALLBACK
  echo "== edge-infer-background (run $2 of $REPEAT: the mixed phase only, MobileNetV2 at $rate msg/s in the background)"
  reset_sessions
  "$BENCH" drive --name edge-infer-background --ready notify "${DRIVE[@]}" --qos 1 --cold-starts 1 --mixed-only \
    --mixed har_json@1000 --mixed "mnv2_raw@$rate" --out "$out" --log "$WORK/edge-infer-background.log" \
    -- "${PIN[@]}" "$DAEMON" run --config "$WORK/edge-infer-background.toml" \
    || echo "bench.sh: the mixed phase with MobileNetV2 in the background failed (above)" >&2
  reset_sessions
}

# Targets take turns within each repetition, so slow drifts in the machine's
# load hit them alike.
for rep in $(seq "$REPEAT"); do
for s in "${SLIST[@]}"; do
for target in "${TLIST[@]}"; do
  name=$target-$s
  out=$RES/$name.json
  [[ $REPEAT -gt 1 ]] && out=$RES/$name.rep$rep.json
  # Where the search starts: this target's previous repetition at the
  # same settings, else (fastest) its defaults run of this repetition.
  hints=()
  prev=$RES/$name.rep$((rep - 1)).json
  same=$RES/$target-defaults.json
  [[ $REPEAT -gt 1 ]] && same=$RES/$target-defaults.rep$rep.json
  if [[ $rep -gt 1 && -f $prev ]]; then hints=(--hints "$prev")
  elif [[ $s == fastest && -f $same ]]; then hints=(--hints "$same"); fi
  if [[ $s == defaults ]]; then
    qos=1; only=$WORKLOADS_CSV; extra=(--seconds "$CONFIRM")
    if [[ $MIXED_ON == 1 && $target != echo ]]; then
      extra+=(--mixed har_json@1000 --mixed mnv2_raw@50% --mixed-fallback "mnv2_raw=$MIXED_FALLBACK")
    fi
  else
    # One start: cold start and start-up memory do not depend on the QoS,
    # and the defaults run measured them with the same models.
    qos=0; only=$FAST_CSV; extra=(--seconds "$CONFIRM_FASTEST" --lean --cold-starts 1)
    [[ $target == echo ]] && only=$ECHO_FAST_CSV
    [[ $target == baseline ]] && only=$BASELINE_FAST_CSV
  fi
  [[ -z $only ]] && continue
  echo "== $name (run $rep of $REPEAT; $(( ($(date +%s) - T_START) / 60 )) min so far; load $(cut -d' ' -f1-3 /proc/loadavg))"
  case "$target" in
    echo)
      "$BENCH" drive --name "$name" --ready line:READY "${DRIVE[@]}" --qos "$qos" --only "$only" "${extra[@]}" \
        "${hints[@]}" --out "$out" --log "$WORK/$name.log" -- "$BENCH" echo --port "$PORT" --qos "$qos" "${ECHO_ROUTES[@]}" ;;
    edge-infer)
      if [[ $s == defaults ]]; then reset_sessions; fi
      "$BENCH" drive --name "$name" --ready notify "${DRIVE[@]}" --qos "$qos" --only "$only" "${extra[@]}" \
        "${hints[@]}" --out "$out" --log "$WORK/$name.log" -- "${PIN[@]}" "$DAEMON" run --config "$WORK/edge-infer-$s.toml"
      if [[ $s == defaults ]]; then reset_sessions; fi
      if [[ $s == defaults && $MIXED_ON == 1 ]]; then mixed_background "$out" "$rep"; fi ;;
    baseline)
      "$BENCH" drive --name "$name" --ready line:READY "${DRIVE[@]}" --qos "$qos" --only "$only" "${extra[@]}" \
        "${hints[@]}" --out "$out" --log "$WORK/$name.log" -- "${PIN[@]}" "$VENV/bin/python" bench/baseline.py --port "$PORT" \
        --device-id bench --threads "${THREADS:-1}" --qos "$qos" "${BASELINE_MODELS[@]}" ;;
  esac
done
done
done
if [[ $REPEAT -gt 1 ]]; then
  for s in "${SLIST[@]}"; do
    for target in "${TLIST[@]}"; do
      python3 bench/median.py "$RES" "$target-$s" "$REPEAT"
    done
  done
  python3 bench/median.py "$RES" edge-infer-background "$REPEAT"
fi

# Metadata for the report.
cp "$WORK"/edge-infer-defaults.toml "$WORK"/edge-infer-fastest.toml "$WORK"/edge-infer-background.toml "$RES/"
python3 - "$RES/meta.json" "${MODEL_SET[@]}" <<EOF
import json, os, subprocess, sys
def sh(*c):
    try: return subprocess.run(c, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
json.dump({
    "cores": os.cpu_count(), "cpu": cpu, "kernel": sh("uname", "-r"),
    "commit": "$COMMIT_AT_START",
    "dirty": "$DIRTY_AT_START".strip(),
    "command": """$CMDLINE""", "quick": $QUICK == 1, "threads": "$THREADS" or None,
    "workers": "$WORKERS" or None, "cpus": "$CPUS", "repeat": $REPEAT,
    "settings": "$SETTINGS".split(","), "fastest_workloads": [w for w in "$FAST_CSV".split(",") if w],
    "echo_fastest_workloads": [w for w in "$ECHO_FAST_CSV".split(",") if w],
    "baseline_fastest_workloads": [w for w in "$BASELINE_FAST_CSV".split(",") if w],
    "fixed_seconds": $FIXED, "trial_seconds": $TRIAL, "confirm_seconds": $CONFIRM,
    "confirm_seconds_fastest": $CONFIRM_FASTEST, "cold_starts": $COLD,
    "mixed": $MIXED_ON == 1, "mixed_fallback_rate": $MIXED_FALLBACK,
    "model_set": sys.argv[2:],
    "mosquitto": sh("$MOSQUITTO", "-h").splitlines()[0] if sh("$MOSQUITTO", "-h") else "?",
    "loadavg": open("/proc/loadavg").read().split()[:3],
    "minutes": round((int(sh("date", "+%s")) - $T_START) / 60, 1),
}, open(sys.argv[1], "w"), indent=1)
EOF
python3 bench/report.py "$RES" "$OUT"
echo "wrote $OUT in $(( ($(date +%s) - T_START) / 60 )) min (raw results in $RES)"
