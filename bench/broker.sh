# Sourced by scripts/bench.sh and bench/batching.sh: a Mosquitto of the
# benchmark's own on a free loopback port, configured like the tests' broker
# plus set_tcp_nodelay (without it Mosquitto's Nagle holds small results for
# up to a delayed-ACK period: measured p95 32 ms instead of 2 ms at 100 msg/s
# for edge-infer; see BENCHMARKS.md).
#
#   start_bench_broker WORK_DIR   # sets PORT and MOSQ_PID, stops it on exit

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
MOSQ_PID=""

stop_bench_broker() {
  if [[ -n $MOSQ_PID ]]; then kill "$MOSQ_PID" 2>/dev/null || true; wait "$MOSQ_PID" 2>/dev/null || true; fi
}

start_bench_broker() {
  local work=$1 ok
  trap stop_bench_broker EXIT
  # A free port can be taken between choosing and binding it: retry.
  for _ in 1 2 3 4 5; do
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$work/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
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
    "$MOSQUITTO" -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
    MOSQ_PID=$!
    ok=0
    for _ in $(seq 50); do
      if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then ok=1; break; fi
      kill -0 "$MOSQ_PID" 2>/dev/null || break
      sleep 0.1
    done
    [[ $ok == 1 ]] && return 0
    kill "$MOSQ_PID" 2>/dev/null || true; MOSQ_PID=""
  done
  echo "could not start mosquitto (log: $work/mosquitto.log)" >&2
  exit 1
}
