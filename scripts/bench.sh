#!/usr/bin/env bash
# Load benchmarks of ringchatd, driven by ringchat-load.
#
# Usage: scripts/bench.sh [closed|open|idle|all]      (default: all)
#
# Each scenario gets a fresh daemon (own data directory, 127.0.0.1, ephemeral port) so figures
# do not mix; the daemon's PID is handed to the load tool, which reports the daemon's CPU time
# per delivery (and RSS per connection for idle). Only the daemon started here is stopped.
#
# Environment knobs (defaults are the reference scenarios):
#   CLOSED_ROOMS=1 CLOSED_MEMBERS=50 CLOSED_MESSAGES=2000
#   OPEN_ROOMS=1 OPEN_MEMBERS=50 OPEN_RATE=500 OPEN_DURATION=20
#   IDLE_CONNECTIONS=10000 IDLE_MAX_CONNECTIONS=12000
#   TEXT_BYTES=32   JSON=1 (one JSON object per scenario)   NO_BUILD=1 (skip cargo build)
#   BENCH_DIR=/some/dir (where data directories go; default: mktemp under $TMPDIR or /tmp)
#   RUST_LOG=warn (daemon log level)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scenario=${1:-all}
case "$scenario" in
closed | open | idle | all) ;;
-h | --help)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: $0 [closed|open|idle|all]" >&2
    exit 2
    ;;
esac

CLOSED_ROOMS=${CLOSED_ROOMS:-1}
CLOSED_MEMBERS=${CLOSED_MEMBERS:-50}
CLOSED_MESSAGES=${CLOSED_MESSAGES:-2000}
OPEN_ROOMS=${OPEN_ROOMS:-1}
OPEN_MEMBERS=${OPEN_MEMBERS:-50}
OPEN_RATE=${OPEN_RATE:-500}
OPEN_DURATION=${OPEN_DURATION:-20}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
IDLE_MAX_CONNECTIONS=${IDLE_MAX_CONNECTIONS:-12000}
TEXT_BYTES=${TEXT_BYTES:-32}
export RUST_LOG=${RUST_LOG:-warn}

daemon=target/release/ringchatd
load=target/release/ringchat-load

if [ -z "${NO_BUILD:-}" ]; then
    echo "== cargo build --release --bins" >&2
    cargo build --release --bins
fi
for bin in "$daemon" "$load"; do
    [ -x "$bin" ] || {
        echo "missing $bin (build failed?)" >&2
        exit 2
    }
done

if [ -n "${BENCH_DIR:-}" ]; then
    mkdir -p "$BENCH_DIR"
    tmp=$(mktemp -d "$BENCH_DIR/ringchat-bench.XXXXXX")
else
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/ringchat-bench.XXXXXX")
fi

daemon_pid=""
addr=""

stop_daemon() {
    [ -n "$daemon_pid" ] || return 0
    local pid=$daemon_pid
    daemon_pid=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        # Graceful stop, bounded: 5 s, then SIGKILL (this daemon only).
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "ringchatd $pid did not stop on SIGTERM within 5 s; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop_daemon
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_daemon NAME [extra ringchatd flags...]: a fresh daemon in $tmp/NAME; sets daemon_pid, addr.
start_daemon() {
    local name=$1
    shift
    local dir=$tmp/$name
    mkdir -p "$dir/data"
    # The subshell raises its fd limit to the hard limit, then becomes ringchatd (same PID).
    (
        ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        exec "$daemon" --listen 127.0.0.1:0 --port-file "$dir/port" --data-dir "$dir/data" "$@"
    ) 2>"$dir/daemon.log" &
    daemon_pid=$!
    local content=""
    for _ in $(seq 100); do # at most 10 s
        if [ -s "$dir/port" ]; then
            content=$(tr -d '[:space:]' <"$dir/port")
            # The port file holds the bound address (host:port), or just a port.
            if [[ "$content" =~ ^[0-9]+$ ]]; then
                addr=127.0.0.1:$content
                break
            elif [[ "$content" =~ :[0-9]+$ ]]; then
                addr=$content
                break
            fi
        fi
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            echo "ringchatd exited during startup; its log:" >&2
            cat "$dir/daemon.log" >&2
            daemon_pid=""
            return 1
        fi
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "ringchatd wrote no usable port file in 10 s (content: '$content'); its log:" >&2
        cat "$dir/daemon.log" >&2
        return 1
    fi
    echo "== ringchatd pid $daemon_pid on $addr, data in $dir/data ($(stat -f -c %T "$dir/data") filesystem)"
}

failed=0

# run NAME DAEMON_FLAGS -- LOAD_ARGS...: fresh daemon, one load run, daemon stopped.
run() {
    local name=$1
    shift
    local dflags=()
    while [ "$1" != "--" ]; do
        dflags+=("$1")
        shift
    done
    shift
    addr=""
    start_daemon "$name" "${dflags[@]}" || {
        failed=1
        return 0
    }
    local cmd=("$load" "$@" --server "$addr" --pid "$daemon_pid")
    [ -z "${JSON:-}" ] || cmd+=(--json)
    echo "== ${cmd[*]}"
    local status=0
    "${cmd[@]}" || status=$?
    if [ "$status" -ne 0 ]; then
        echo "== $name: ringchat-load exit status $status" >&2
        failed=1
    fi
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "== $name: ringchatd died during the run; its log:" >&2
        cat "$tmp/$name/daemon.log" >&2
        failed=1
    fi
    stop_daemon
    echo
}

echo "== $(nproc) cores, $(uname -srm); figures are from a shared machine unless it was idle"

if [ "$scenario" = closed ] || [ "$scenario" = all ]; then
    run closed -- closed --rooms "$CLOSED_ROOMS" --members "$CLOSED_MEMBERS" \
        --messages "$CLOSED_MESSAGES" --text-bytes "$TEXT_BYTES"
fi
if [ "$scenario" = open ] || [ "$scenario" = all ]; then
    run open -- open --rooms "$OPEN_ROOMS" --members "$OPEN_MEMBERS" \
        --rate "$OPEN_RATE" --duration "$OPEN_DURATION" --text-bytes "$TEXT_BYTES"
fi
if [ "$scenario" = idle ] || [ "$scenario" = all ]; then
    run idle --max-connections "$IDLE_MAX_CONNECTIONS" -- idle --connections "$IDLE_CONNECTIONS"
fi

exit "$failed"
