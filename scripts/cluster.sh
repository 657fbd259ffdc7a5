#!/usr/bin/env bash
# Runs a local 3-node ringchat cluster in the foreground (what `make run` does).
#
#   node N (N = 1, 2, 3): clients on 127.0.0.1:707(N-1), peers on 127.0.0.1:717(N-1),
#   data in $DATA_DIR/nodeN, log in $DATA_DIR/nodeN.log (or on stderr with a [nodeN] prefix
#   when LOGS=stderr).
#
# Ctrl-C or SIGTERM stops the three daemons (by PID, gracefully, SIGKILL after 5 s). A node
# that dies (try `kill -9` on the leader) is reported and the others go on; the script ends
# when all three are gone.
#
# Environment:
#   BIN_DIR     where ringchatd is              (default: target/release)
#   DATA_DIR    data directories and logs      (default: ./ringchat-data)
#   HOST        address to listen on            (default: 127.0.0.1)
#   LOGS        "files" or "stderr"             (default: files)
#   RUST_LOG    daemon log level                (default: info)
#   EXTRA_ARGS  more ringchatd flags for every node, e.g. "--heartbeat-ms 50"
set -euo pipefail

BIN_DIR=${BIN_DIR:-target/release}
DATA_DIR=${DATA_DIR:-./ringchat-data}
HOST=${HOST:-127.0.0.1}
LOGS=${LOGS:-files}
export RUST_LOG=${RUST_LOG:-info}
EXTRA_ARGS=${EXTRA_ARGS:-}
DAEMON="$BIN_DIR/ringchatd"
NODES=(1 2 3)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "cluster.sh: unexpected argument '$1' (see --help)" >&2; exit 2 ;;
esac
case "$LOGS" in files | stderr) ;; *) echo "cluster.sh: LOGS must be files or stderr" >&2; exit 2 ;; esac
if [[ ! -x "$DAEMON" ]]; then
  echo "cluster.sh: $DAEMON not found; run 'make build' (or set BIN_DIR)" >&2
  exit 1
fi

client_addr() { echo "$HOST:$((7069 + $1))"; }
peer_addr() { echo "$HOST:$((7169 + $1))"; }

mkdir -p "$DATA_DIR"
declare -A PIDS=()

stop_all() {
  local sig=$1 id
  for id in "${!PIDS[@]}"; do kill "-$sig" "${PIDS[$id]}" 2>/dev/null || true; done
}

shutdown() {
  local code=${1:-0}
  trap - INT TERM
  echo
  echo "stopping the cluster..."
  stop_all TERM
  local deadline=$((SECONDS + 5)) id alive
  while :; do
    alive=0
    for id in "${!PIDS[@]}"; do
      kill -0 "${PIDS[$id]}" 2>/dev/null && alive=1
    done
    ((alive)) || break
    if ((SECONDS >= deadline)); then
      echo "some nodes did not stop within 5 s: SIGKILL"
      stop_all KILL
      break
    fi
    sleep 0.1
  done
  wait 2>/dev/null || true
  echo "stopped."
  exit "$code"
}
trap shutdown INT TERM

# Each daemon in its own process group: a Ctrl-C in the terminal reaches only this script,
# which then stops every node once (a second signal would make a daemon skip its graceful stop).
set -m
for id in "${NODES[@]}"; do
  peers=""
  for other in "${NODES[@]}"; do
    [[ $other == "$id" ]] && continue
    peers+="${peers:+,}$other=$(peer_addr "$other")"
  done
  # shellcheck disable=SC2206 # EXTRA_ARGS is split on purpose
  args=(--id "$id" --listen "$(client_addr "$id")" --peer-listen "$(peer_addr "$id")"
        --peers "$peers" --data-dir "$DATA_DIR/node$id" $EXTRA_ARGS)
  if [[ $LOGS == stderr ]]; then
    "$DAEMON" "${args[@]}" 2> >(sed -u "s/^/[node$id] /" >&2) &
  else
    "$DAEMON" "${args[@]}" 2>>"$DATA_DIR/node$id.log" &
  fi
  PIDS[$id]=$!
  echo "node $id: pid ${PIDS[$id]}: $DAEMON ${args[*]}"
done
set +m

# A node that cannot start (port in use, data dir locked) exits at once.
sleep 0.5
for id in "${NODES[@]}"; do
  if ! kill -0 "${PIDS[$id]}" 2>/dev/null; then
    echo "cluster.sh: node $id failed to start" >&2
    if [[ $LOGS == files ]]; then tail -n 5 "$DATA_DIR/node$id.log" >&2; fi
    shutdown 1
  fi
done

servers="$(client_addr 1),$(client_addr 2),$(client_addr 3)"
cat <<EOF

ringchat cluster up: 3 nodes, clients on $servers
  chat:    $BIN_DIR/ringchat alice general        (another terminal: ... bob general)
  status:  $BIN_DIR/ringchat admin status
  (other hosts' clients: $BIN_DIR/ringchat -s $servers USER ROOM)
EOF
if [[ $LOGS == files ]]; then
  echo "  logs:    tail -f $DATA_DIR/node{1,2,3}.log"
fi
echo "Ctrl-C stops all three."

# Wait until every node is gone, reporting each exit.
while :; do
  running=0
  for id in "${NODES[@]}"; do
    [[ -n ${PIDS[$id]:-} ]] || continue
    if kill -0 "${PIDS[$id]}" 2>/dev/null; then
      running=1
    else
      status=0
      wait "${PIDS[$id]}" 2>/dev/null || status=$?
      echo "node $id (pid ${PIDS[$id]}) exited with status $status"
      unset "PIDS[$id]"
    fi
  done
  ((running)) || break
  sleep 0.2 &
  wait $! 2>/dev/null || true
done
echo "all nodes exited."
