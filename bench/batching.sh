#!/usr/bin/env bash
# The micro-batching measurement (issue 5): edge-infer alone, MobileNetV2
# int8 with a dynamic batch dimension, raw payloads, 2 XNNPACK threads, on a
# private Mosquitto configured like scripts/bench.sh's, with `max_batch` off,
# `max_batch = 4` and `max_batch = 4, max_delay_us = 2000`, interleaved,
# REPS times (default 2). Prints the driver's lines; the figures per config
# are in the "x 5s" (sustained confirmation) and fixed-rate lines.
#
#   bench/batching.sh            # after scripts/setup-deps.sh
#   REPS=3 bench/batching.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
REPS=${REPS:-2}
cargo build --release -p edge-infer -p bench
WORK=$(mktemp -d /tmp/edge-infer-batching.XXXXXX)
source bench/broker.sh
start_bench_broker "$WORK"
cat > "$WORK/workloads.json" <<W
[{"name": "mnv2dyn_raw", "model": "mobilenet_v2_dynamic_int8.tflite", "format": "raw",
  "fixture": "tests/fixtures/mobilenet_v2_int8.json", "case": "noise",
  "topic": "bench/mnv2raw/in", "results": "bench/mnv2raw/out/+",
  "rates": [100, 1000], "search_max": 5000}]
W
for cfg in "off:max_batch = 1" "b4:max_batch = 4" "b4wait:max_batch = 4
max_delay_us = 2000"; do
  name=${cfg%%:*}; extra=${cfg#*:}
  cat > "$WORK/$name.toml" <<C
device_id = "bench"
[mqtt]
host = "127.0.0.1"
port = $PORT
qos = 0
clean_session = true
[log]
level = "warn"
[[models]]
name = "mnv2dyn"
path = "$REPO/models/mobilenet_v2_dynamic_int8.tflite"
threads = 2
payload = "raw"
input_topic = "bench/mnv2raw/in/+"
output_topic = "bench/mnv2raw/out/{1}"
$extra
C
done
for rep in $(seq "$REPS"); do
  for name in off b4 b4wait; do
    echo "== rep $rep $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
    target/release/edge-infer-bench drive --name "$name" --ready notify --port "$PORT" \
      --workloads "$WORK/workloads.json" --repo "$REPO" --errors 'edge-infer/bench/errors' \
      --fixed-seconds 3 --trial-seconds 2 --seconds 5 --cold-starts 1 \
      --out "$WORK/${name}_$rep.json" --log "$WORK/${name}_$rep.log" \
      -- target/release/edge-infer run --config "$WORK/$name.toml"
  done
done
echo "results in $WORK"
