#!/usr/bin/env bash
# The benchmark of issues 5 and 11, in one command: builds release, prepares
# the Python baseline's venv, starts its own Mosquitto on a free loopback
# port, measures the runtime floor, the echo floor (messaging floor),
# edge-infer and the Python baseline on the same broker with the same
# open-loop generator, and writes BENCHMARKS.md. Workloads (bench/workloads.json):
# har_json, mnv2_raw, mnv2_json (whole tensors), har_readings (one JSON
# message per reading, windowed by the target) and mnv2_jpeg (a JPEG photo).
# The daemon and the baseline load the models of the selected workloads.
#
#   scripts/bench.sh            # full run: 30 s sustained confirmations (~30-40 min)
#   scripts/bench.sh --quick    # short runs, to iterate (~8-10 min)
#   scripts/bench.sh --only har_json --targets edge-infer,baseline --quick
#
# Options: --quick, --only W1,W2 (workloads from bench/workloads.json, all
# by default),
# --targets echo,edge-infer,baseline, --threads N (XNNPACK threads, both
# targets), --workers N (edge-infer workers per model), --cpus LIST (pin
# edge-infer and the baseline with taskset, e.g. 1 for "the daemon has one
# core"), --repeat N (run each target N times, interleaved, and report
# medians), --seconds S (sustained confirmation), --out FILE (default
# BENCHMARKS.md), --no-build.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

QUICK=0
ONLY=""
TARGETS="echo,edge-infer,baseline"
THREADS=1
WORKERS=1
CPUS=""
REPEAT=1
SECONDS_CONFIRM=""
OUT="BENCHMARKS.md"
BUILD=1
CMDLINE="scripts/bench.sh $*"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY="$2"; shift ;;
    --targets) TARGETS="$2"; shift ;;
    --threads) THREADS="$2"; shift ;;
    --workers) WORKERS="$2"; shift ;;
    --cpus) CPUS="$2"; shift ;;
    --repeat) REPEAT="$2"; shift ;;
    --seconds) SECONDS_CONFIRM="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $QUICK == 1 ]]; then
  FIXED=3; TRIAL=2; CONFIRM=${SECONDS_CONFIRM:-5}; COLD=3; FLOOR_ITERS_SMALL=20000; FLOOR_ITERS_BIG=300
else
  FIXED=10; TRIAL=5; CONFIRM=${SECONDS_CONFIRM:-30}; COLD=5; FLOOR_ITERS_SMALL=200000; FLOOR_ITERS_BIG=2000
fi

for tool in mosquitto python3; do
  if ! command -v "$tool" >/dev/null && [[ ! -x /usr/sbin/$tool ]]; then
    echo "bench.sh: $tool is missing: run scripts/setup-deps.sh" >&2; exit 1
  fi
done
if [[ ! -f runtime/$(uname -m)/libLiteRt.so ]]; then
  echo "bench.sh: runtime/$(uname -m)/libLiteRt.so is missing: run scripts/setup-deps.sh" >&2; exit 1
fi

if [[ $BUILD == 1 ]]; then
  cargo build --release -p edge-infer -p bench
fi
# What the binaries were built from, read now: the run takes long enough for
# the tree to change before the report is written.
COMMIT_AT_START=$(git rev-parse HEAD 2>/dev/null || echo "?")
DIRTY_AT_START=$(git status --porcelain --untracked-files=no 2>/dev/null | tr '\n' ' ')
BENCH=$REPO/target/release/edge-infer-bench
DAEMON=$REPO/target/release/edge-infer

VENV=$REPO/.venv-bench
if [[ ! -x $VENV/bin/python ]] || ! cmp -s bench/requirements.txt "$VENV/.requirements"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
  cp bench/requirements.txt "$VENV/.requirements"
fi

WORK=$(mktemp -d /tmp/edge-infer-bench.XXXXXX)
RES=$WORK/results
mkdir -p "$RES"
source bench/broker.sh
start_bench_broker "$WORK"
echo "mosquitto on 127.0.0.1:$PORT (work dir $WORK)"

# edge-infer: the models of the selected workloads, QoS 0 like the load, no
# session. Only those, so a workload can be measured before the daemon can
# load another one's configuration; the baseline gets the same set (RSS and
# cold start compare like with like).
cat > "$WORK/edge-infer.toml" <<EOF
device_id = "bench"

[mqtt]
host = "127.0.0.1"
port = $PORT
qos = 0
clean_session = true

[log]
level = "warn"
EOF
ALL_WORKLOADS=$(python3 -c 'import json, sys; print(",".join(w["name"] for w in json.load(open(sys.argv[1]))))' bench/workloads.json)
IFS=, read -ra WLIST <<< "${ONLY:-$ALL_WORKLOADS}"
BASELINE_MODELS=()
ECHO_ROUTES=()
MODEL_SET=()
for w in "${WLIST[@]}"; do
  case "$w" in
    har_json)
      cat >> "$WORK/edge-infer.toml" <<EOF

[[models]]
name = "har"
path = "$REPO/models/har_accel_int8.tflite"
labels = "$REPO/models/har_accel.labels"
input_topic = "bench/har/in"
output_topic = "bench/har/out"
threads = $THREADS
workers = $WORKERS
EOF
      BASELINE_MODELS+=(--model "name=har,path=models/har_accel_int8.tflite,input=bench/har/in,output=bench/har/out,payload=json,labels=models/har_accel.labels")
      ECHO_ROUTES+=(--in bench/har/in --out bench/har/out)
      MODEL_SET+=("har_accel_int8 (JSON)") ;;
    mnv2_raw)
      cat >> "$WORK/edge-infer.toml" <<EOF

[[models]]
name = "mnv2raw"
path = "$REPO/models/mobilenet_v2_int8.tflite"
input_topic = "bench/mnv2raw/in/+"
output_topic = "bench/mnv2raw/out/{1}"
payload = "raw"
threads = $THREADS
workers = $WORKERS
EOF
      BASELINE_MODELS+=(--model "name=mnv2raw,path=models/mobilenet_v2_int8.tflite,input=bench/mnv2raw/in/+,output=bench/mnv2raw/out/{1},payload=raw")
      ECHO_ROUTES+=(--in 'bench/mnv2raw/in/+' --out 'bench/mnv2raw/out/{1}')
      MODEL_SET+=("mobilenet_v2_int8 (raw)") ;;
    mnv2_json)
      cat >> "$WORK/edge-infer.toml" <<EOF

[[models]]
name = "mnv2json"
path = "$REPO/models/mobilenet_v2_int8.tflite"
input_topic = "bench/mnv2json/in"
output_topic = "bench/mnv2json/out"
threads = $THREADS
workers = $WORKERS
EOF
      BASELINE_MODELS+=(--model "name=mnv2json,path=models/mobilenet_v2_int8.tflite,input=bench/mnv2json/in,output=bench/mnv2json/out,payload=json")
      ECHO_ROUTES+=(--in bench/mnv2json/in --out bench/mnv2json/out)
      MODEL_SET+=("mobilenet_v2_int8 (JSON)") ;;
    har_readings)
      # Windows of readings (issue 11), otherwise the daemon's defaults; the
      # fields, size, stride and timestamp match the workload's.
      cat >> "$WORK/edge-infer.toml" <<EOF

[[models]]
name = "har_stream"
path = "$REPO/models/har_accel_int8.tflite"
labels = "$REPO/models/har_accel.labels"
input_topic = "bench/imu/+"
output_topic = "bench/imu-out/{1}"
threads = $THREADS
workers = $WORKERS

[models.window]
fields = ["ax", "ay", "az"]
size = 128
stride = 64
key = "{1}"
timestamp = "ts"
EOF
      BASELINE_MODELS+=(--model "name=har_stream,path=models/har_accel_int8.tflite,input=bench/imu/+,output=bench/imu-out/{1},payload=readings,labels=models/har_accel.labels,fields=ax:ay:az,size=128,stride=64,timestamp=ts")
      ECHO_ROUTES+=(--in 'bench/imu/+' --out 'bench/imu-out/{1}' --window 'bench/imu/+=128:64')
      MODEL_SET+=("har_accel_int8 (readings, windows of 128)") ;;
    mnv2_jpeg)
      if [[ ! -f models/samples/photo_640x480.jpg ]]; then
        echo "bench.sh: workload mnv2_jpeg needs models/samples/photo_640x480.jpg" >&2; exit 1
      fi
      # The model's input is [-1, 1] quantized to int8 (models/README.md).
      cat >> "$WORK/edge-infer.toml" <<EOF

[[models]]
name = "mnv2jpeg"
path = "$REPO/models/mobilenet_v2_int8.tflite"
input_topic = "bench/mnv2jpeg/in/+"
output_topic = "bench/mnv2jpeg/out/{1}"
payload = "image"
threads = $THREADS
workers = $WORKERS

[models.image]
mean = 127.5
std = 127.5
EOF
      BASELINE_MODELS+=(--model "name=mnv2jpeg,path=models/mobilenet_v2_int8.tflite,input=bench/mnv2jpeg/in/+,output=bench/mnv2jpeg/out/{1},payload=image,mean=127.5,std=127.5")
      ECHO_ROUTES+=(--in 'bench/mnv2jpeg/in/+' --out 'bench/mnv2jpeg/out/{1}')
      MODEL_SET+=("mobilenet_v2_int8 (JPEG)") ;;
    *) echo "bench.sh: unknown workload $w (bench/workloads.json has $ALL_WORKLOADS)" >&2; exit 2 ;;
  esac
done

# The demo config (every shipped model) on our broker: cold start and RSS.
sed -e "s/^port = .*/port = $PORT/" -e 's/^level = .*/level = "warn"/' config/demo.toml > "$WORK/all-models.toml"
sed -i -e "s|\"\.\./models/|\"$REPO/models/|" "$WORK/all-models.toml"

DRIVE=(--port "$PORT" --workloads bench/workloads.json --repo "$REPO"
       --errors 'edge-infer/bench/errors' --fixed-seconds "$FIXED" --trial-seconds "$TRIAL"
       --seconds "$CONFIRM" --cold-starts "$COLD")
[[ -n $ONLY ]] && DRIVE+=(--only "$ONLY")

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

IFS=, read -ra TLIST <<< "$TARGETS"
# Targets take turns within each repetition, so slow drifts in the machine's
# load hit them alike.
for rep in $(seq "$REPEAT"); do
for target in "${TLIST[@]}"; do
  out=$RES/$target.json
  [[ $REPEAT -gt 1 ]] && out=$RES/$target.rep$rep.json
  echo "== $target (run $rep of $REPEAT)"
  case "$target" in
    echo)
      "$BENCH" drive --name echo --ready line:READY "${DRIVE[@]}" --out "$out" \
        --log "$WORK/echo.log" -- "$BENCH" echo --port "$PORT" "${ECHO_ROUTES[@]}" ;;
    edge-infer)
      "$BENCH" drive --name edge-infer --ready notify "${DRIVE[@]}" --out "$out" \
        --log "$WORK/edge-infer.log" -- "${PIN[@]}" "$DAEMON" run --config "$WORK/edge-infer.toml" ;;
    baseline)
      "$BENCH" drive --name baseline --ready line:READY "${DRIVE[@]}" --out "$out" \
        --log "$WORK/baseline.log" -- "${PIN[@]}" "$VENV/bin/python" bench/baseline.py --port "$PORT" \
        --device-id bench --threads "$THREADS" "${BASELINE_MODELS[@]}" ;;
    *) echo "bench.sh: unknown target $target" >&2; exit 2 ;;
  esac
done
done
if [[ $REPEAT -gt 1 ]]; then
  for target in "${TLIST[@]}"; do
    python3 bench/median.py "$RES" "$target" "$REPEAT"
  done
fi

# Metadata for the report.
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
    "command": """$CMDLINE""", "quick": $QUICK == 1, "threads": $THREADS,
    "workers": $WORKERS, "cpus": "$CPUS", "repeat": $REPEAT,
    "fixed_seconds": $FIXED, "trial_seconds": $TRIAL, "confirm_seconds": $CONFIRM, "cold_starts": $COLD,
    "model_set": sys.argv[2:],
    "mosquitto": sh("$MOSQUITTO", "-h").splitlines()[0] if sh("$MOSQUITTO", "-h") else "?",
    "loadavg": open("/proc/loadavg").read().split()[:3],
}, open(sys.argv[1], "w"), indent=1)
EOF
python3 bench/report.py "$RES" "$OUT"
echo "wrote $OUT (raw results in $RES)"
