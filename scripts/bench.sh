#!/usr/bin/env bash
# Load benchmarks of ringchatd, driven by ringchat-load.
#
# Usage: scripts/bench.sh [closed|open|idle|all|compare|cluster]      (default: all)
#
# Each scenario gets a fresh daemon (own data directory, 127.0.0.1, ephemeral port) so figures
# do not mix; the daemon's PID is handed to the load tool, which reports the daemon's CPU time
# per delivery (and RSS per connection for idle). Only the daemon started here is stopped.
#
# compare (not part of all): ringchatd against redis-server PUBLISH/SUBSCRIBE on this machine.
# One fresh ringchatd and one fresh redis-server (127.0.0.1, a free port, no persistence; needs
# redis-server on PATH: apt-get install -y redis-server) serve COMPARE_ROUNDS interleaved
# closed-loop runs (ringchat, redis, ringchat, redis, ...); then a table of the medians per
# target and the ratios ringchat/redis. Needs python3. Exit 1 if any run was not clean.
#
# cluster (not part of all): the closed scenario against a fresh 3-node cluster (127.0.0.1, free
# ports), members spread over the three nodes; CPU per delivery is summed over the daemons.
#
# Environment knobs (defaults are the reference scenarios):
#   CLOSED_ROOMS=1 CLOSED_MEMBERS=50 CLOSED_MESSAGES=2000
#   OPEN_ROOMS=1 OPEN_MEMBERS=50 OPEN_RATE=500 OPEN_DURATION=20
#   IDLE_CONNECTIONS=10000 IDLE_MAX_CONNECTIONS=12000
#   COMPARE_ROUNDS=3 (runs per target)   COMPARE_OPEN=1 (compare open loop too, at
#   COMPARE_OPEN_RATE=500 msgs/s for COMPARE_OPEN_DURATION=10 s; rooms/members as CLOSED_*)
#   COMPARE_CLUSTER=1 (compare a 3-node cluster, members spread over it, with the one redis)
#   COMPARE_FRESH=1 (a fresh ringchat daemon or cluster for every round, as `closed` and
#   `cluster` run: by default one serves all rounds and keeps every message of them, as a
#   long-lived service does, while redis-server keeps none)
#   STORAGE=memory (the daemons' --storage: memory, like redis-server with persistence off, gives
#   the fan-out figures the targets are stated in; STORAGE=file adds an fdatasync per loop turn,
#   compared side by side by `make bench-commit`)
#   TEXT_BYTES=32   JSON=1 (one JSON object per scenario; compare: per run, then a summary)
#   NO_BUILD=1 (skip cargo build)
#   DAEMON=path (another ringchatd build, for A/B runs side by side; default target/release)
#   BENCH_DIR=/some/dir (where data directories go; default: mktemp under $TMPDIR or /tmp)
#   RUST_LOG=warn (daemon log level)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# stop_process, start_cluster (shared with scripts/bench-durable.sh)
. scripts/lib-bench.sh

scenario=${1:-all}
case "$scenario" in
closed | open | idle | all | compare | cluster) ;;
-h | --help)
    sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: $0 [closed|open|idle|all|compare|cluster]" >&2
    exit 2
    ;;
esac

if [ "$scenario" = compare ]; then
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "compare needs redis-server on PATH; install it with:" >&2
        echo "    apt-get install -y redis-server      (Debian/Ubuntu; run apt-get update first)" >&2
        exit 2
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        echo "compare needs python3 (for picking a port and the summary table)" >&2
        exit 2
    fi
fi

CLOSED_ROOMS=${CLOSED_ROOMS:-1}
CLOSED_MEMBERS=${CLOSED_MEMBERS:-50}
CLOSED_MESSAGES=${CLOSED_MESSAGES:-2000}
OPEN_ROOMS=${OPEN_ROOMS:-1}
OPEN_MEMBERS=${OPEN_MEMBERS:-50}
OPEN_RATE=${OPEN_RATE:-500}
OPEN_DURATION=${OPEN_DURATION:-20}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
IDLE_MAX_CONNECTIONS=${IDLE_MAX_CONNECTIONS:-12000}
COMPARE_ROUNDS=${COMPARE_ROUNDS:-3}
COMPARE_OPEN=${COMPARE_OPEN:-}
COMPARE_OPEN_RATE=${COMPARE_OPEN_RATE:-500}
COMPARE_OPEN_DURATION=${COMPARE_OPEN_DURATION:-10}
TEXT_BYTES=${TEXT_BYTES:-32}
STORAGE=${STORAGE:-memory}
export RUST_LOG=${RUST_LOG:-warn}

daemon=${DAEMON:-target/release/ringchatd}
load=target/release/ringchat-load

if [ -z "${NO_BUILD:-}" ]; then
    echo "== cargo build --release --bins" >&2
    cargo build --release --bins
fi
require_bins "$daemon" "$load"
tmp=$(make_tmp ringchat-bench)

daemon_pid=""
addr=""
redis_pid=""
redis_addr=""

stop_daemon() {
    stop_process ringchatd "$daemon_pid"
    daemon_pid=""
}

stop_redis() {
    stop_process redis-server "$redis_pid"
    redis_pid=""
}

cluster_pids=()

cleanup() {
    stop_daemon
    stop_redis
    for pid in "${cluster_pids[@]}"; do
        stop_process ringchatd "$pid"
    done
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
        exec "$daemon" --listen 127.0.0.1:0 --port-file "$dir/port" --data-dir "$dir/data" \
            --storage "$STORAGE" "$@"
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
    echo "== ringchatd pid $daemon_pid on $addr, storage $STORAGE, data in $dir/data ($(stat -f -c %T "$dir/data") filesystem)"
}

# start_redis: a fresh redis-server in $tmp/redis on a free loopback port, no persistence;
# sets redis_pid, redis_addr.
start_redis() {
    local dir=$tmp/redis
    mkdir -p "$dir"
    local port
    for _ in 1 2 3; do # the free port may be taken between picking and binding: retry
        port=$(free_ports 1)
        (
            ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
            exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
                --daemonize no --dir "$dir"
        ) >"$dir/redis.log" 2>&1 &
        redis_pid=$!
        for _ in $(seq 100); do # at most 10 s
            if ! kill -0 "$redis_pid" 2>/dev/null; then
                break
            fi
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                redis_addr=127.0.0.1:$port
                echo "== redis-server pid $redis_pid on $redis_addr ($(redis-server --version | cut -d' ' -f3))"
                return 0
            fi
            sleep 0.1
        done
        echo "redis-server did not come up on port $port; its log:" >&2
        cat "$dir/redis.log" >&2
        stop_redis
    done
    return 1
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

# compare_run SCENARIO TARGET LOAD_ARGS...: one run against the running ringchatd or redis-server,
# its JSON appended to $tmp/compare.jsonl.
compare_run() {
    local scen=$1 target=$2
    shift 2
    local server pid
    if [ "$target" = redis ]; then
        server=$redis_addr pid=$redis_pid
    elif [ -n "${COMPARE_CLUSTER:-}" ]; then
        server=$servers pid=$pids
    else
        server=$addr pid=$daemon_pid
    fi
    local cmd=("$load" "$scen" --target "$target" "$@" --server "$server" --pid "$pid" --json)
    echo "== ${cmd[*]}" >&2
    local status=0 out
    out=$("${cmd[@]}") || status=$?
    if [ -n "$out" ]; then
        printf '%s\n' "$out" >>"$tmp/compare.jsonl"
        [ -z "${JSON:-}" ] || printf '%s\n' "$out"
    fi
    if [ "$status" -ne 0 ]; then
        echo "== $scen/$target: ringchat-load exit status $status" >&2
        failed=1
    fi
    local p
    for p in ${pid//,/ }; do
        if ! kill -0 "$p" 2>/dev/null; then
            echo "== $scen/$target: the server (pid $p) died during the run" >&2
            return 1
        fi
    done
}

# The summary: medians per scenario and target, ratios ringchat/redis.
compare_table() {
    python3 - "$tmp/compare.jsonl" "${JSON:-}" <<'PY'
import json, statistics, sys

runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
want_json = bool(sys.argv[2])
metrics = [
    # key, label, getter, format, lower is better
    ("cpu_us", "daemon CPU µs/delivery", lambda r: r.get("daemon_cpu_us_per_delivery"), "{:.3f}", True),
    ("deliveries_per_s", "deliveries/s", lambda r: r.get("deliveries_per_s"), "{:,.0f}", False),
    ("p50_us", "latency p50 µs", lambda r: r["latency_us"]["p50"], "{:,.0f}", True),
    ("p99_us", "latency p99 µs", lambda r: r["latency_us"]["p99"], "{:,.0f}", True),
    ("p999_us", "latency p99.9 µs", lambda r: r["latency_us"]["p999"], "{:,.0f}", True),
    ("tool_cpu_us", "tool CPU µs/delivery", lambda r: r["tool_cpu_s"] * 1e6 / r["unique_deliveries"] if r.get("unique_deliveries") else None, "{:.3f}", True),
]
summary = {}
for mode in sorted({r["mode"] for r in runs}, key=lambda m: m != "closed"):
    rs = [r for r in runs if r["mode"] == mode]
    first = rs[0]
    load = first["load"]
    desc = (f'{load["messages_per_member"]} messages per member, closed loop' if mode == "closed"
            else f'{load["rate"]:g} msgs/s for {load["duration_s"]:g} s, open loop')
    print()
    print(f'{mode}: {first["rooms"]} room(s) x {first["members"]} members, {desc}, text {first["text_bytes"]} B')
    by = {}
    for t in ("ringchat", "redis"):
        tr = [r for r in rs if r.get("target") == t]
        med = {}
        for key, _, get, _, _ in metrics:
            vals = [v for v in (get(r) for r in tr if r.get("clean")) if v is not None]
            med[key] = statistics.median(vals) if vals else None
        med["runs"] = len(tr)
        med["clean_runs"] = sum(1 for r in tr if r.get("clean"))
        by[t] = med
    w = 24
    print(f'{"median of clean runs":<{w}} {"ringchat":>12} {"redis":>12} {"ringchat/redis":>15}')
    print(f'{"runs (clean/all)":<{w}} {str(by["ringchat"]["clean_runs"]) + "/" + str(by["ringchat"]["runs"]):>12} '
          f'{str(by["redis"]["clean_runs"]) + "/" + str(by["redis"]["runs"]):>12}')
    ratios = {}
    for key, label, _, fmt, lower in metrics:
        a, b = by["ringchat"][key], by["redis"][key]
        ratio = a / b if a is not None and b else None
        ratios[key] = ratio
        cell = lambda v: fmt.format(v) if v is not None else "-"
        better = "(lower is better)" if lower else "(higher is better)"
        print(f'{label:<{w}} {cell(a):>12} {cell(b):>12} {(f"{ratio:.2f}" if ratio is not None else "-"):>15}  {better}')
    print("per run (in run order): target, daemon CPU µs/delivery, deliveries/s, p99 µs, clean")
    for r in rs:
        cpu = r.get("daemon_cpu_us_per_delivery")
        print(f'  {r.get("target", "?"):<9} {cpu if cpu is not None else "-":>8} {r.get("deliveries_per_s", 0):>12,.0f} '
              f'{r["latency_us"]["p99"]:>9,.0f}  {r.get("clean")}')
    summary[mode] = {"ringchat": by["ringchat"], "redis": by["redis"], "ratio_ringchat_over_redis": ratios}
if want_json:
    print(json.dumps({"compare": summary}))
PY
}

# start_ringchat NAME: the ringchat side of compare, in $tmp/NAME: 3 nodes with the members spread
# over them (CPU summed over the daemons) under COMPARE_CLUSTER, else one daemon.
start_ringchat() {
    if [ -n "${COMPARE_CLUSTER:-}" ]; then
        stop_cluster
        start_cluster "$tmp/$1" --storage "$STORAGE" || return 1
        echo "== ringchat: 3 nodes (storage $STORAGE) on $servers, pids $pids"
    else
        stop_daemon
        start_daemon "$1" || return 1
    fi
}

if [ "$scenario" = compare ]; then
    start_ringchat compare1 || exit 2
    start_redis || exit 2
    : >"$tmp/compare.jsonl"
    closed_args=(--rooms "$CLOSED_ROOMS" --members "$CLOSED_MEMBERS" --messages "$CLOSED_MESSAGES"
        --text-bytes "$TEXT_BYTES")
    open_args=(--rooms "$CLOSED_ROOMS" --members "$CLOSED_MEMBERS" --rate "$COMPARE_OPEN_RATE"
        --duration "$COMPARE_OPEN_DURATION" --text-bytes "$TEXT_BYTES")
    alive=1
    for round in $(seq "$COMPARE_ROUNDS"); do
        for target in ringchat redis; do
            if [ "$target" = ringchat ] && [ -n "${COMPARE_FRESH:-}" ] && [ "$round" -gt 1 ]; then
                start_ringchat "compare$round" >&2 || { alive=0 && break 2; }
            fi
            echo "== closed round $round/$COMPARE_ROUNDS: $target" >&2
            compare_run closed "$target" "${closed_args[@]}" || { alive=0 && break 2; }
        done
    done
    if [ -n "$COMPARE_OPEN" ] && [ "$alive" = 1 ]; then
        for round in $(seq "$COMPARE_ROUNDS"); do
            for target in ringchat redis; do
                echo "== open round $round/$COMPARE_ROUNDS: $target" >&2
                compare_run open "$target" "${open_args[@]}" || { alive=0 && break 2; }
            done
        done
    fi
    [ "$alive" = 1 ] || failed=1
    if [ -s "$tmp/compare.jsonl" ]; then
        compare_table || failed=1
    else
        echo "== no run produced figures" >&2
        failed=1
    fi
    echo
    echo "== figures from a 2-core machine shared with other work: compare the ratios, not the absolute values"
    exit "$failed"
fi

# cluster: the closed scenario against 3 nodes, members spread over all of them, CPU summed
# over the three daemons (replication costs per message, fan-out per delivery).
if [ "$scenario" = cluster ]; then
    start_cluster "$tmp" --storage "$STORAGE" || exit 1
    echo "== 3 nodes (storage $STORAGE): clients on $servers, pids $pids"
    cmd=("$load" closed --rooms "$CLOSED_ROOMS" --members "$CLOSED_MEMBERS" \
        --messages "$CLOSED_MESSAGES" --text-bytes "$TEXT_BYTES" --server "$servers" --pid "$pids")
    [ -z "${JSON:-}" ] || cmd+=(--json)
    echo "== ${cmd[*]}"
    "${cmd[@]}" || failed=1
    exit "$failed"
fi

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
