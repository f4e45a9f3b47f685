# Sourced by scripts/bench.sh and bench/*.sh: a Mosquitto of the
# benchmark's own on a free loopback port, configured like the tests' broker
# plus set_tcp_nodelay (without it Mosquitto's Nagle holds small results for
# up to a delayed-ACK period: measured p95 32 ms instead of 2 ms at 100 msg/s
# for edge-infer; see BENCHMARKS.md).
#
#   start_bench_broker WORK_DIR [EXTRA]  # sets PORT and MOSQ_PID, stops it on exit;
#                                        # EXTRA: more config lines (another listener)
#   free_port                            # prints a free loopback port
#   bench_broker_conf PORT               # prints the config above for PORT
#   start_mosquitto CONF LOG PORT        # starts one, sets LAST_MOSQ_PID once PORT accepts

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
MOSQ_PID=""
LAST_MOSQ_PID=""

stop_bench_broker() {
  if [[ -n $MOSQ_PID ]]; then kill "$MOSQ_PID" 2>/dev/null || true; wait "$MOSQ_PID" 2>/dev/null || true; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_broker_conf() {
  cat <<CONF
listener $1 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 0
max_queued_messages 100000
message_size_limit 0
log_dest stderr
log_type error
log_type warning
log_type notice
set_tcp_nodelay true
CONF
}

# Returns 1 if it exited or PORT did not accept within 5 s (then it is stopped).
start_mosquitto() {
  local conf=$1 log=$2 port=$3
  "$MOSQUITTO" -c "$conf" 2>>"$log" &
  LAST_MOSQ_PID=$!
  for _ in $(seq 50); do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then return 0; fi
    kill -0 "$LAST_MOSQ_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill "$LAST_MOSQ_PID" 2>/dev/null || true
  wait "$LAST_MOSQ_PID" 2>/dev/null || true
  LAST_MOSQ_PID=""
  return 1
}

start_bench_broker() {
  local work=$1 extra=${2:-}
  trap stop_bench_broker EXIT
  # A free port can be taken between choosing and binding it: retry.
  for _ in 1 2 3 4 5; do
    PORT=$(free_port)
    { bench_broker_conf "$PORT"; [[ -n $extra ]] && printf '%s\n' "$extra"; } > "$work/mosquitto.conf"
    : > "$work/mosquitto.log"
    if start_mosquitto "$work/mosquitto.conf" "$work/mosquitto.log" "$PORT"; then
      MOSQ_PID=$LAST_MOSQ_PID
      return 0
    fi
  done
  echo "could not start mosquitto (log: $work/mosquitto.log)" >&2
  exit 1
}
