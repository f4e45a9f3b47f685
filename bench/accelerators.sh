#!/usr/bin/env bash
# The issue 13 benchmark (accelerators with CPU fallback), in one command:
#
# 1. Per model (har_accel_f32, har_accel_int8, multi_io_f32, shapes_int8,
#    mobilenet_v2_int8): the runtime floor (edge-infer-bench floor, 1
#    XNNPACK thread, inputs from the model's fixture) on `cpu` and on `gpu`
#    (har_accel_f32 also with fp16 allowed): the accelerator, how
#    much of the graph it took, load + compile + warm-up (load_ms), invoke
#    p50/p95/p99, and the largest difference of the outputs from the same
#    model on the CPU and from the fixture's reference. When the GPU
#    cannot run a model here, the reason is recorded instead.
# 2. The cost of the fallback switch, end to end: the daemon on a Mosquitto
#    of its own with a model on `accelerators = ["testdelegate", "cpu"]`,
#    the test delegate (tests/delegate/test_delegate.cc, built here with
#    g++) failing its Nth invoke and `retry_secs = 1`, so the model falls
#    back to the CPU, comes back to the delegate a second later and fails
#    again: one switch every ~1.5 s. Messages at a steady 20/s
#    (edge-infer-bench load --trace); each result names its accelerator and
#    carries latency_ms, so the failing message's figures are compared with
#    the others'. Models: multi_io_f32 (ops RELU,LOGISTIC,MUL) and
#    har_accel_f32 (every op it computes: 5 of 9 nodes). The test delegate
#    only computes float32 ops, so it takes no node of an int8 model and
#    never counts or fails an invoke there: mobilenet_v2_int8 is checked to
#    show that (floor with the delegate and fail_invoke_at=2), and its
#    switch cost is estimated from its CPU load_ms (what a switch loads).
# 3. bench/accelerators_report.py writes the section
#    "## Issue 13: accelerators" of BENCHMARKS.md (replaced if there, else
#    before "## Notes and findings") and prints it.
#
#   bench/accelerators.sh           # ~8 min: 20 s per floor run, 60 s per switch run
#   bench/accelerators.sh --quick   # ~4 min: 5 s per floor run, 20 s per switch run
# (lavapipe compiles MobileNetV2's shaders for ~50 s at its first load.)
#
# Options: --quick, --out FILE (default BENCHMARKS.md; --out - prints the
# section only), --no-build.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

QUICK=0
OUT=BENCHMARKS.md
BUILD=1
CMDLINE="bench/accelerators.sh $*"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT="$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "accelerators.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $QUICK == 1 ]]; then
  FLOOR_S=5; ITERS_SMALL=20000; ITERS_BIG=300; SWITCH_S=20
else
  FLOOR_S=20; ITERS_SMALL=200000; ITERS_BIG=2000; SWITCH_S=60
fi
RATE=20
# Invoke 1 of each delegate instance is the warm-up (at start and after
# every retry), so message 10 on it fails.
FAIL_AT=11
T_START=$(date +%s)

for tool in mosquitto mosquitto_sub g++ python3; do
  if ! command -v "$tool" >/dev/null && [[ ! -x /usr/sbin/$tool ]]; then
    echo "accelerators.sh: $tool is missing: run scripts/setup-deps.sh" >&2; exit 1
  fi
done
if [[ -z ${EDGE_INFER_RUNTIME_LIBRARY:-} ]]; then
  lib=$REPO/runtime/$(uname -m)/libLiteRt.so
  if [[ ! -f $lib ]]; then
    echo "accelerators.sh: $lib is missing: run scripts/setup-deps.sh (or set EDGE_INFER_RUNTIME_LIBRARY)" >&2; exit 1
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

WORK=$(mktemp -d /tmp/edge-infer-accel.XXXXXX)
RES=$WORK/results
mkdir -p "$RES"
echo "work dir $WORK"

# What else runs on the machine: timings taken while other builds or tests
# run are skewed, and the report says so.
busy() {
  ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 >= 20 {printf "%s %s%%; ", $2, $1}'
}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_START=$(busy)

# The test delegate, as tests/common/delegate.rs builds it: g++ against the
# TensorFlow Lite headers vendored in edgefirst-tflite-sys.
HEADERS=$(cargo metadata --format-version 1 --locked | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "edgefirst-tflite-sys"))')
DELEGATE=$WORK/libedge_infer_test_delegate.so
g++ -std=c++17 -O2 -shared -fPIC -Wall -Wextra -Werror -I"$HEADERS" tests/delegate/test_delegate.cc -o "$DELEGATE"

# 1. The floor, cpu then gpu, per model.
MODELS=(
  "har_accel_f32:walking:$ITERS_SMALL"
  "har_accel_int8:walking:$ITERS_SMALL"
  "multi_io_f32:random_0:$ITERS_SMALL"
  "shapes_int8:image_circle:$ITERS_SMALL"
  "mobilenet_v2_int8:noise:$ITERS_BIG"
)
# LiteRT prints some of its lines (OpenCL probing) on stdout: keep the JSON
# line, the rest goes to the log.
floor() {
  local out=$1 rc=0
  shift
  "$BENCH" floor "$@" 2>>"$WORK/floor.log" > "$out.raw" || rc=$?
  grep '^{' "$out.raw" > "$out" || true
  grep -v '^{' "$out.raw" >> "$WORK/floor.log" || true
  rm -f "$out.raw"
  return $rc
}
# A gpu run that fails after loading (an invoke error) is recorded, not fatal.
floor_or_record() {
  local out=$1
  if ! floor "$@"; then
    python3 - "$out" "$(tail -n 1 "$WORK/floor.log")" <<'PY'
import json, sys
json.dump({"unavailable": "the floor failed: " + sys.argv[2]}, open(sys.argv[1], "w"))
PY
  fi
}
for entry in "${MODELS[@]}"; do
  IFS=: read -r model case iters <<< "$entry"
  accels=(cpu gpu)
  # fp16 once: whether the device uses it shows in the accelerator's description.
  [[ $model == har_accel_f32 ]] && accels+=(gpu16)
  for acc in "${accels[@]}"; do
    args=(--accelerator "${acc%16}")
    [[ $acc == gpu16 ]] && args+=(--gpu-fp16)
    echo "== floor $model on $acc (load $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "== $model $acc" >> "$WORK/floor.log"
    # Mesa keeps compiled shaders on disk (~/.cache/mesa_shader_cache): the
    # first load of a model on the gpu runs with an empty cache of its own,
    # as on a fresh device, then once more with that cache filled.
    export MESA_SHADER_CACHE_DIR=$WORK/mesa-cache-$model-$acc
    run=floor
    [[ $acc != cpu ]] && run=floor_or_record
    $run "$RES/floor_${model}_$acc.json" "models/$model.tflite" "${args[@]}" --unavailable-ok --threads 1 \
      --iters "$iters" --max-seconds "$FLOOR_S" --fixture "tests/fixtures/$model.json" --case "$case"
    cat "$RES/floor_${model}_$acc.json"
    if [[ $acc != cpu ]] && grep -q '"load_ms"' "$RES/floor_${model}_$acc.json"; then
      floor_or_record "$RES/floor_${model}_$acc.cached.json" "models/$model.tflite" "${args[@]}" --unavailable-ok \
        --threads 1 --iters 5 --warmup 1 --fixture "tests/fixtures/$model.json" --case "$case"
    fi
    unset MESA_SHADER_CACHE_DIR
  done
done
# The test delegate on an int8 model: it claims no node, so it counts no
# invoke and its fail_invoke_at never fires (no switch to measure there).
echo "== mobilenet_v2_int8 with the test delegate, fail_invoke_at=2"
floor "$RES/delegate_mobilenet_v2_int8.json" models/mobilenet_v2_int8.tflite --delegate "$DELEGATE" \
  --delegate-option ops=ADD,RELU6,FULLY_CONNECTED,RESHAPE,SOFTMAX --delegate-option fail_invoke_at=2 \
  --iters 5 --warmup 1 --fixture tests/fixtures/mobilenet_v2_int8.json --case noise \
  || echo "{\"failed\": true}" > "$RES/delegate_mobilenet_v2_int8.json"
cat "$RES/delegate_mobilenet_v2_int8.json"

# 2. The fallback switch, end to end.
source bench/broker.sh
start_bench_broker "$WORK"
echo "mosquitto on 127.0.0.1:$PORT"
DAEMON_PID=""
cleanup() {
  if [[ -n $DAEMON_PID ]]; then kill "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
  stop_bench_broker
}
trap cleanup EXIT

# multi_io_f32 takes two inputs: the whole-tensors message of its fixture.
python3 - "$WORK/multi_io_f32.payload.json" <<'PY'
import json, sys
case = json.load(open("tests/fixtures/multi_io_f32.json"))["cases"][0]
json.dump({"inputs": [i["values"] for i in case["inputs"]]}, open(sys.argv[1], "w"))
PY

# Every op the test delegate computes: it takes 5 of har_accel_f32's 9 nodes.
ALL_OPS=ADD,SUB,MUL,RELU,RELU6,LOGISTIC,TANH,FULLY_CONNECTED,SOFTMAX,CONCATENATION,RESHAPE
run_switch() {
  local name=$1 ops=$2 dir=$WORK/switch-$1
  shift 2
  mkdir -p "$dir"
  cat > "$dir/daemon.toml" <<EOF
device_id = "bench"

[mqtt]
host = "127.0.0.1"
port = $PORT
qos = 0
clean_session = true

[health]
interval_secs = 1

[delegates.testdelegate]
library = "$DELEGATE"
options = { ops = "$ops", fail_invoke_at = "$FAIL_AT" }

[[models]]
name = "acc"
path = "$REPO/models/$name.tflite"
input_topic = "bench/acc/in"
output_topic = "bench/acc/out"
accelerators = ["testdelegate", "cpu"]
retry_secs = 1
EOF
  "$DAEMON" check-config --config "$dir/daemon.toml" > /dev/null
  "$DAEMON" run --config "$dir/daemon.toml" 2> "$dir/daemon.log" &
  DAEMON_PID=$!
  for _ in $(seq 300); do
    grep -qs "ready: serving" "$dir/daemon.log" && break
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "ready: serving" "$dir/daemon.log" || { echo "the daemon did not get ready: $dir/daemon.log" >&2; cat "$dir/daemon.log" >&2; exit 1; }
  echo "== switch $name: $RATE msg/s for $SWITCH_S s, delegate ops $ops, fail_invoke_at $FAIL_AT, retry_secs 1 (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$BENCH" load --port "$PORT" --topic bench/acc/in --results bench/acc/out \
    --errors 'edge-infer/bench/errors' --rate "$RATE" --seconds "$SWITCH_S" \
    --trace "$RES/switch_$name.trace" "$@" > "$RES/switch_$name.json"
  cat "$RES/switch_$name.json"
  # The retained health record, published every second.
  sleep 1.5
  mosquitto_sub -h 127.0.0.1 -p "$PORT" -t 'edge-infer/bench/health' -C 1 -W 5 > "$RES/switch_$name.health.json" || true
  kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""
  grep -c "moved from accelerator testdelegate to cpu" "$dir/daemon.log" > "$RES/switch_$name.moved" || true
  grep -c "back on accelerator testdelegate" "$dir/daemon.log" > "$RES/switch_$name.back" || true
  grep " ERROR " "$dir/daemon.log" > "$RES/switch_$name.errors" || true
}
run_switch multi_io_f32 RELU,LOGISTIC,MUL --payload "$WORK/multi_io_f32.payload.json"
run_switch har_accel_f32 "$ALL_OPS" --fixture tests/fixtures/har_accel_f32.json --case walking

python3 - "$RES/meta.json" <<EOF
import json, os, subprocess
def sh(*c):
    try: return subprocess.run(c, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
import re
log = open("$WORK/floor.log", errors="replace").read()
adapters = sorted(set(re.findall(r"Selected adapter: (.*)", log)))
try:
    litert = open("$REPO/runtime/$(uname -m)/VERSION").read().strip()
except OSError:
    litert = "?"
json.dump({
    "cores": os.cpu_count(), "cpu": cpu, "kernel": sh("uname", "-r"),
    "commit": "$COMMIT_AT_START", "dirty": "$DIRTY_AT_START".strip(),
    "command": """$CMDLINE""", "quick": $QUICK == 1,
    "floor_max_seconds": $FLOOR_S, "switch_seconds": $SWITCH_S, "rate": $RATE, "fail_invoke_at": $FAIL_AT,
    "mosquitto": (sh("$MOSQUITTO", "-h").splitlines() or ["?"])[0],
    "litert": litert,
    "mesa": sh("dpkg-query", "-W", "-f", "\${Version}", "mesa-vulkan-drivers"),
    "vulkan_icds": sorted(os.listdir("/usr/share/vulkan/icd.d")) if os.path.isdir("/usr/share/vulkan/icd.d") else [],
    "adapters": adapters[:5],
    "loadavg_start": "$LOAD_START".split(), "loadavg_end": open("/proc/loadavg").read().split()[:3],
    "busy_start": "$BUSY_START", "busy_end": """$(busy)""",
    "minutes": round(($(date +%s) - $T_START) / 60, 1),
}, open("$RES/meta.json", "w"), indent=1)
EOF
python3 bench/accelerators_report.py "$RES" "$OUT"
echo "done in $(( ($(date +%s) - T_START) / 60 )) min; raw results in $RES"
