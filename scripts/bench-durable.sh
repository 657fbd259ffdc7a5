#!/usr/bin/env bash
# Benchmarks of ringchatd's durable storage (the write-ahead log), driven by ringchat-load.
#
# Usage: scripts/bench-durable.sh [commit|restart|catchup|all]      (default: all)
#
# commit:  ROUNDS interleaved rounds of a fresh 3-node cluster with --storage file, then a fresh
#          one with --storage memory (new data dirs each time). In each: the closed loop of
#          `scripts/bench.sh cluster` (1 room x COMMIT_MEMBERS members spread over the 3 nodes;
#          deliveries/s and daemon CPU µs per delivery summed over the 3 daemons), then an open
#          loop at OPEN_RATE msgs/s for OPEN_DURATION s (send -> delivery p50/p99). Prints the
#          medians per storage and the ratios file/memory.
# restart: one node (--storage file) is loaded with MESSAGES messages in one room, killed with
#          SIGKILL and restarted on the same data dir, RESTARTS times. The restart time runs from
#          the spawn until the port file is written, `ringchat admin status` answers and
#          `ringchat --history` of the room returns its last message (the load tool does not
#          print its room's name: it is found in the data files). Prints the data dir (du,
#          segment and snapshot files), every restart, the median, and the daemon's recovery
#          log lines.
# catchup: a 3-node cluster (--storage file) is loaded with MESSAGES messages (members on the
#          leader); then one follower is killed with SIGKILL, its data dir deleted and the node
#          restarted empty. Measures the time from its spawn until its applied index reaches the
#          leader's commit index (`admin status --json` every 50 ms). An open loop (CATCHUP_RATE
#          msgs/s, 1 room x CATCHUP_MEMBERS members, all on the leader) runs before, during
#          and after the catch-up; prints the leader's added latency (difference and ratio), the
#          leader's and the new node's log lines about snapshots, and when snapshots and
#          elections happened (the leader is looked up again after the load).
#
# Figures are printed, never asserted. Only the processes started here are stopped, by PID.
# Everything listens on 127.0.0.1 (free ports); data dirs are under a mktemp dir, removed at exit.
# Exit status: 1 if a load run was not clean, a daemon died or a bounded wait ran out.
#
# Environment knobs (defaults in parentheses):
#   commit:  ROUNDS (3)  COMMIT_MEMBERS (50)  COMMIT_MESSAGES (2000 per member, closed loop)
#            OPEN_RATE (2000)  OPEN_DURATION (10)
#   restart and catchup: MESSAGES (1000000, in one room)  LOAD_MEMBERS (25 members send them,
#            closed loop, MESSAGES/LOAD_MEMBERS each, rounded up)  LOAD_TIMEOUT (900 s)
#   restart: RESTARTS (3)  RESTART_TIMEOUT (120 s per stage)
#   catchup: CATCHUP_RATE (200)  CATCHUP_MEMBERS (10)  CATCHUP_OPEN_DURATION (4 s per open
#            loop; a catch-up of 1M messages took 0.7-1.4 s here: a longer loop dilutes it)
#            CATCHUP_LEAD (0.5 s of the open loop before the kill)  CATCHUP_TIMEOUT (300 s)
#            CATCHUP_SETTLE (5 s of quiet between the load and the first open loop)
#   SNAPSHOT_ENTRIES (empty: the daemon's default)  TEXT_BYTES (32)
#   DAEMON_FLAGS="..." (more ringchatd flags for every node, e.g. --replication-linger-us 0)
#   NO_BUILD=1 (skip cargo build --release)  BIN_DIR=/some/dir (use the binaries there instead
#   of target/release; no build)  BENCH_DIR=/some/dir (where the temp dir goes; default $TMPDIR
#   or /tmp)  KEEP=1 (keep the data dirs and daemon logs; the path is printed)
#   RUST_LOG (info: the recovery and snapshot lines are info)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# stop_process, free_ports, start_cluster, cluster_start_node, cluster_wait_port
. scripts/lib-bench.sh

scenario=${1:-all}
case "$scenario" in
commit | restart | catchup | all) ;;
-h | --help)
    sed -n '2,46p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "usage: $0 [commit|restart|catchup|all]   (--help for the knobs)" >&2
    exit 2
    ;;
esac
command -v python3 >/dev/null 2>&1 || {
    echo "$0 needs python3 (free ports, JSON figures)" >&2
    exit 2
}

ROUNDS=${ROUNDS:-3}
COMMIT_MEMBERS=${COMMIT_MEMBERS:-50}
COMMIT_MESSAGES=${COMMIT_MESSAGES:-2000}
OPEN_RATE=${OPEN_RATE:-2000}
OPEN_DURATION=${OPEN_DURATION:-10}
MESSAGES=${MESSAGES:-1000000}
LOAD_MEMBERS=${LOAD_MEMBERS:-25}
LOAD_TIMEOUT=${LOAD_TIMEOUT:-900}
RESTARTS=${RESTARTS:-3}
RESTART_TIMEOUT=${RESTART_TIMEOUT:-120}
CATCHUP_RATE=${CATCHUP_RATE:-200}
CATCHUP_MEMBERS=${CATCHUP_MEMBERS:-10}
CATCHUP_OPEN_DURATION=${CATCHUP_OPEN_DURATION:-4}
CATCHUP_LEAD=${CATCHUP_LEAD:-0.5}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-300}
CATCHUP_SETTLE=${CATCHUP_SETTLE:-5}
SNAPSHOT_ENTRIES=${SNAPSHOT_ENTRIES:-}
TEXT_BYTES=${TEXT_BYTES:-32}
export RUST_LOG=${RUST_LOG:-info}
export LC_ALL=C

bin_dir=${BIN_DIR:-target/release}
daemon=$bin_dir/ringchatd
load=$bin_dir/ringchat-load
client=$bin_dir/ringchat

if [ -z "${NO_BUILD:-}" ] && [ -z "${BIN_DIR:-}" ]; then
    echo "== cargo build --release --bins" >&2
    cargo build --release --bins
fi
require_bins "$daemon" "$load" "$client"
tmp=$(make_tmp ringchat-bench-durable)

storage_flags=()
[ -z "$SNAPSHOT_ENTRIES" ] || storage_flags+=(--snapshot-entries "$SNAPSHOT_ENTRIES")
# More ringchatd flags for every node, e.g. DAEMON_FLAGS="--replication-linger-us 0".
read -r -a daemon_flags <<<"${DAEMON_FLAGS:-}"
storage_flags+=("${daemon_flags[@]}")

cluster_pids=() # the 3 nodes of the current cluster (lib-bench.sh)
single_pid=""   # the restart scenario's node
bg_pid=""       # an open loop run in the background

cleanup() {
    stop_process ringchat-load "$bg_pid"
    stop_process ringchatd "$single_pid"
    for pid in "${cluster_pids[@]}"; do
        stop_process ringchatd "$pid"
    done
    if [ -n "${KEEP:-}" ]; then
        echo "== KEEP: data dirs and logs kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

failed=0

# kill9 PID: SIGKILL that process and reap it.
kill9() {
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ms_since T0: milliseconds from T0 (an $EPOCHREALTIME) to now.
ms_since() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (b - a) * 1000 }'
}

# ms_until VAR CMD...: runs CMD every 5 ms until it succeeds, then sets VAR to the ms since $t0;
# leaves VAR alone if the restarted node ($single_pid) exits or RESTART_TIMEOUT passes first.
ms_until() {
    local var=$1
    shift
    while [ "$(ms_since "$t0")" -lt $((RESTART_TIMEOUT * 1000)) ]; do
        if "$@"; then
            printf -v "$var" '%s' "$(ms_since "$t0")"
            return 0
        fi
        kill -0 "$single_pid" 2>/dev/null || return 0
        sleep 0.005
    done
}

# The restart scenario's stages (they read $dir, $addr, $room, $expected; the last sets $got).
port_written() {
    [ -s "$dir/port" ] && [[ "$(tr -d '[:space:]' <"$dir/port")" =~ :[0-9]+$ ]]
}
status_up() {
    status_json "$addr" | grep -q '"up":true'
}
history_ends_with_the_last_message() {
    got=$("$client" -s "$addr" --json --timeout 2 --no-reconnect benchprobe "$room" --history --limit 1 2>/dev/null) || true
    [ "$got" = "$expected" ]
}

# jget FILE EXPR: a python expression over the JSON object `r` read from FILE's last line.
jget() {
    python3 -c 'import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
r = json.loads(lines[-1]) if lines else {}
v = eval(sys.argv[2])
print("-" if v is None else v)' "$1" "$2"
}

# load_room SERVERS PIDS OUT: MESSAGES messages in one room (LOAD_MEMBERS members on SERVERS,
# closed loop), the load tool's JSON in OUT; prints a summary. Returns 1 if not clean.
load_room() {
    local per=$(((MESSAGES + LOAD_MEMBERS - 1) / LOAD_MEMBERS))
    local cmd=("$load" closed --rooms 1 --members "$LOAD_MEMBERS" --messages "$per"
        --text-bytes "$TEXT_BYTES" --server "$1" --pid "$2" --timeout-secs "$LOAD_TIMEOUT"
        --stall-secs 60 --json)
    echo "== loading $((per * LOAD_MEMBERS)) messages: ${cmd[*]}"
    local status=0
    "${cmd[@]}" >"$3" || status=$?
    python3 - "$3" <<'PY' || true
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f'   loaded {r["acked"]:,} acked messages in {r["elapsed_s"]:.1f} s = {r["acked"] / max(r["elapsed_s"], 1e-9):,.0f} msgs/s '
      f'({r["deliveries_per_s"]:,.0f} deliveries/s, ack p50 {r["ack_latency_us"]["p50"]:,.0f} µs p99 {r["ack_latency_us"]["p99"]:,.0f} µs, '
      f'daemon CPU {r.get("daemon_cpu_s")} s), outcome {r["outcome"]}, clean {r["clean"]}')
PY
    if [ "$status" -ne 0 ] || [ "$(jget "$3" 'r.get("clean")')" != True ]; then
        echo "== the load run was not clean (ringchat-load exit status $status)" >&2
        failed=1
        return 1
    fi
}

# status_json ADDRS: `ringchat admin status --json` of those nodes (one object per line).
status_json() {
    "$client" -s "$1" admin status --json --timeout 2 2>/dev/null
}

# leader_of ADDRS: prints "ID ADDR" of the node that reports itself leader.
leader_of() {
    status_json "$1" | python3 -c 'import json, sys
for l in sys.stdin:
    r = json.loads(l)
    if r.get("up") and r.get("role") == "leader":
        print(r["id"], r["addr"]); break'
}

# data_dir_report DIR: du, segment and snapshot files of a node's data dir.
data_dir_report() {
    local nseg nsnap
    nseg=$(find "$1/wal" -maxdepth 1 -type f 2>/dev/null | wc -l)
    nsnap=$(find "$1/snapshot" -maxdepth 1 -type f 2>/dev/null | wc -l)
    echo "   data dir $(du -sh "$1" | cut -f1) (du -sh): $nseg wal segment file(s) ($(du -sh "$1/wal" | cut -f1)), $nsnap snapshot file(s) ($(du -sh "$1/snapshot" | cut -f1))"
    (cd "$1" && find wal snapshot -maxdepth 1 -type f -printf '     %p %s bytes\n' | sort)
}

# fsync_probe DIR: the disk's own cost, for context: 300 appends of 4 KiB, each followed by
# fdatasync, in a file under DIR (one writer, nothing else of ours running).
fsync_probe() {
    python3 - "$1" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
lat = []
for _ in range(300):
    t = time.perf_counter()
    os.write(fd, b"x" * 4096)
    os.fdatasync(fd)
    lat.append((time.perf_counter() - t) * 1e6)
os.close(fd)
os.unlink(path)
lat.sort()
print(f"== fdatasync probe (4 KiB append + fdatasync, 300 times, one writer): p50 {lat[149]:,.0f} µs, "
      f"p99 {lat[296]:,.0f} µs, max {lat[-1]:,.0f} µs")
PY
}

# ---------------------------------------------------------------------------------------------
# commit: file against memory storage on fresh 3-node clusters, interleaved rounds.
scenario_commit() {
    echo
    echo "=== commit: $ROUNDS rounds x (file, memory); 3 nodes, 1 room x $COMMIT_MEMBERS members spread over them;"
    echo "=== closed loop $COMMIT_MESSAGES messages per member, open loop $OPEN_RATE msgs/s for $OPEN_DURATION s"
    local runs=$tmp/commit.jsonl round storage dir kind out status cmd
    : >"$runs"
    fsync_probe "$tmp"
    for round in $(seq "$ROUNDS"); do
        for storage in file memory; do
            dir=$tmp/commit-$round-$storage
            start_cluster "$dir" --storage "$storage" "${storage_flags[@]}" || {
                failed=1
                stop_cluster
                continue
            }
            echo "== round $round/$ROUNDS, --storage $storage: 3 nodes, clients on $servers, pids $pids"
            for kind in closed open; do
                if [ "$kind" = closed ]; then
                    cmd=("$load" closed --rooms 1 --members "$COMMIT_MEMBERS" --messages "$COMMIT_MESSAGES")
                else
                    cmd=("$load" open --rooms 1 --members "$COMMIT_MEMBERS" --rate "$OPEN_RATE"
                        --duration "$OPEN_DURATION")
                fi
                cmd+=(--text-bytes "$TEXT_BYTES" --server "$servers" --pid "$pids" --json)
                echo "== ${cmd[*]}"
                status=0
                out=$("${cmd[@]}") || status=$?
                if [ -n "$out" ]; then
                    python3 -c 'import json, sys
r = json.loads(sys.argv[1]); r["storage"] = sys.argv[2]; r["round"] = int(sys.argv[3])
print(json.dumps(r))' "$out" "$storage" "$round" >>"$runs"
                    python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
l = r["latency_us"]
print(f'   {r["mode"]}: {r["deliveries_per_s"]:,.0f} deliveries/s, sent {r["sent_per_s"]:,.0f} msgs/s, '
      f'daemon CPU {r.get("daemon_cpu_us_per_delivery")} µs/delivery, latency p50 {l["p50"]:,.0f} p99 {l["p99"]:,.0f} µs, clean {r["clean"]}')
PY
                fi
                if [ "$status" -ne 0 ]; then
                    echo "== $kind/$storage: ringchat-load exit status $status" >&2
                    failed=1
                fi
            done
            for pid in "${cluster_pids[@]}"; do
                kill -0 "$pid" 2>/dev/null || {
                    echo "== a daemon (pid $pid) died during round $round/$storage; logs in $dir" >&2
                    failed=1
                }
            done
            stop_cluster
            [ -n "${KEEP:-}" ] || rm -rf "$dir"
        done
    done
    python3 - "$runs" <<'PY'
import json, statistics, sys

runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
metrics = [
    # mode, label, getter, format, higher is better
    ("closed", "closed deliveries/s", lambda r: r.get("deliveries_per_s"), "{:,.0f}", True),
    ("closed", "closed sent msgs/s", lambda r: r.get("sent_per_s"), "{:,.0f}", True),
    ("closed", "closed CPU µs/delivery", lambda r: r.get("daemon_cpu_us_per_delivery"), "{:.3f}", False),
    ("closed", "closed latency p50 µs", lambda r: r["latency_us"]["p50"], "{:,.0f}", False),
    ("closed", "closed latency p99 µs", lambda r: r["latency_us"]["p99"], "{:,.0f}", False),
    ("closed", "closed ack p50 µs", lambda r: r["ack_latency_us"]["p50"], "{:,.0f}", False),
    ("open", "open deliveries/s", lambda r: r.get("deliveries_per_s"), "{:,.0f}", True),
    ("open", "open CPU µs/delivery", lambda r: r.get("daemon_cpu_us_per_delivery"), "{:.3f}", False),
    ("open", "open latency p50 µs", lambda r: r["latency_us"]["p50"], "{:,.0f}", False),
    ("open", "open latency p99 µs", lambda r: r["latency_us"]["p99"], "{:,.0f}", False),
    ("open", "open latency p99.9 µs", lambda r: r["latency_us"]["p999"], "{:,.0f}", False),
    ("open", "open ack p99 µs", lambda r: r["ack_latency_us"]["p99"], "{:,.0f}", False),
]
print()
print("=== commit: medians of clean runs per storage (3 nodes; CPU summed over the daemons)")
w = 26
print(f'{"":<{w}} {"file":>12} {"memory":>12} {"file/memory":>12}')
for mode in ("closed", "open"):
    c = {s: sum(1 for r in runs if r["mode"] == mode and r["storage"] == s and r.get("clean")) for s in ("file", "memory")}
    a = {s: sum(1 for r in runs if r["mode"] == mode and r["storage"] == s) for s in ("file", "memory")}
    cf, cm = f'{c["file"]}/{a["file"]}', f'{c["memory"]}/{a["memory"]}'
    print(f'{mode + " runs (clean/all)":<{w}} {cf:>12} {cm:>12}')
ratio_tp = None
for mode, label, get, fmt, higher in metrics:
    med = {}
    for s in ("file", "memory"):
        vals = [v for v in (get(r) for r in runs if r["mode"] == mode and r["storage"] == s and r.get("clean")) if v is not None]
        med[s] = statistics.median(vals) if vals else None
    ratio = med["file"] / med["memory"] if med["file"] is not None and med["memory"] else None
    if label == "closed deliveries/s":
        ratio_tp = ratio
    cell = lambda v: fmt.format(v) if v is not None else "-"
    print(f'{label:<{w}} {cell(med["file"]):>12} {cell(med["memory"]):>12} {(f"{ratio:.2f}" if ratio is not None else "-"):>12}'
          f'  ({"higher" if higher else "lower"} is better)')
print("per run: round storage mode, deliveries/s, CPU µs/delivery, p50 µs, p99 µs, clean")
for r in runs:
    l = r["latency_us"]
    print(f'  {r["round"]} {r["storage"]:<6} {r["mode"]:<6} {r["deliveries_per_s"]:>12,.0f} {str(r.get("daemon_cpu_us_per_delivery")):>8} '
          f'{l["p50"]:>9,.0f} {l["p99"]:>9,.0f}  {r.get("clean")}')
if ratio_tp is not None:
    print(f"closed-loop throughput file/memory = {ratio_tp:.2f} (target: file within 2x of memory, i.e. >= 0.50): "
          f"{'within' if ratio_tp >= 0.5 else 'NOT within'} 2x")
else:
    print("closed-loop throughput file/memory: no clean runs of both storages")
PY
}

# ---------------------------------------------------------------------------------------------
# restart: one node loaded with MESSAGES messages, SIGKILLed and restarted RESTARTS times.

# start_single DIR LOG: the restart scenario's node (--storage file) on DIR/data; sets single_pid.
start_single() {
    rm -f "$1/port"
    (
        ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        exec "$daemon" --id 1 --listen 127.0.0.1:0 --port-file "$1/port" --data-dir "$1/data" \
            --storage file "${storage_flags[@]}"
    ) 2>"$2" &
    single_pid=$!
}

# find_room DATA_DIR: the load tool names its room load-XXXXXX-r0 and does not print it; the name
# is found in the node's snapshot or log files (the only room in this data dir).
find_room() {
    { grep -aohE -m1 'load-[0-9a-z]{6}-r0' "$1"/wal/* "$1"/snapshot/* 2>/dev/null || true; } | head -n1
}

scenario_restart() {
    echo
    echo "=== restart: 1 node (--storage file${SNAPSHOT_ENTRIES:+, --snapshot-entries $SNAPSHOT_ENTRIES}), $MESSAGES messages in 1 room, SIGKILL and restart x $RESTARTS"
    local dir=$tmp/restart addr room expected k t0 t_port t_status t_hist got times=()
    mkdir -p "$dir"
    start_single "$dir" "$dir/daemon-0.log"
    t0=$EPOCHREALTIME
    for _ in $(seq 1000); do # 10 s
        [ -s "$dir/port" ] && break
        kill -0 "$single_pid" 2>/dev/null || break
        sleep 0.01
    done
    [ -s "$dir/port" ] || {
        echo "ringchatd did not start; its log:" >&2
        cat "$dir/daemon-0.log" >&2
        failed=1
        return 0
    }
    addr=$(tr -d '[:space:]' <"$dir/port")
    echo "== ringchatd pid $single_pid on $addr, data in $dir/data ($(stat -f -c %T "$dir/data") filesystem)"
    load_room "$addr" "$single_pid" "$dir/load.json" || true
    room=$(find_room "$dir/data")
    [ -n "$room" ] || {
        echo "== cannot find the load room's name in $dir/data" >&2
        failed=1
        return 0
    }
    expected=$("$client" -s "$addr" --json --timeout 10 --no-reconnect benchprobe "$room" --history --limit 1) || true
    echo "== room $room, last message: $expected"
    [ -n "$expected" ] || {
        echo "== no history for $room before the restarts" >&2
        failed=1
        return 0
    }
    for k in $(seq "$RESTARTS"); do
        kill9 "$single_pid"
        single_pid=""
        echo "== restart $k/$RESTARTS: SIGKILLed; the data dir:"
        data_dir_report "$dir/data"
        t0=$EPOCHREALTIME
        start_single "$dir" "$dir/daemon-$k.log"
        t_port="" t_status="" t_hist="" got=""
        # 1. the port file, 2. admin status answers, 3. the room's history ends with the last
        # message: each stage bounded by RESTART_TIMEOUT.
        ms_until t_port port_written
        [ -z "$t_port" ] || addr=$(tr -d '[:space:]' <"$dir/port")
        [ -z "$t_port" ] || ms_until t_status status_up
        [ -z "$t_status" ] || ms_until t_hist history_ends_with_the_last_message
        if [ -z "$t_hist" ]; then
            local alive="still running" rc=0
            if ! kill -0 "$single_pid" 2>/dev/null; then
                wait "$single_pid" || rc=$?
                alive="exited with status $rc"
                single_pid=""
            fi
            echo "== restart $k: the node did not come back (stages bounded by $RESTART_TIMEOUT s each;" \
                "$(ms_since "$t0") ms since the spawn; port file ${t_port:-never}, status ${t_status:-never};" \
                "history returned: '${got:-}'); ringchatd $alive; port file: '$(cat "$dir/port" 2>/dev/null)'; its log:" >&2
            cat "$dir/daemon-$k.log" >&2
            failed=1
            return 0
        fi
        times+=("$t_hist")
        echo "   restart $k: port file after $t_port ms, admin status answers after $t_status ms, history returns the last message after $t_hist ms"
        echo "   its log (recovery):"
        grep -E 'starting|recover|replay|snapshot|trunc|torn|segment|listening' "$dir/daemon-$k.log" | sed 's/^/     /' || true
    done
    echo "=== restart: $MESSAGES messages loaded (1 node, --storage file); restart times (spawn -> port file, status and history answer): ${times[*]} ms; median $(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }') ms"
    stop_process ringchatd "$single_pid"
    single_pid=""
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
}

# ---------------------------------------------------------------------------------------------
# catchup: a wiped follower catches up while the leader serves an open loop.

# wait_converged ADDRS SECS: until every node's applied index equals the highest commit index.
wait_converged() {
    local t0=$EPOCHREALTIME
    while [ "$(ms_since "$t0")" -lt $(($2 * 1000)) ]; do
        if status_json "$1" | python3 -c 'import json, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
ok = len(rs) == 3 and all(r.get("up") for r in rs) and len({r["applied_index"] for r in rs} | {max(r["commit_index"] for r in rs)}) == 1
sys.exit(0 if ok else 1)'; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# latency_line FILE LABEL
latency_line() {
    python3 - "$1" "$2" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
l, a = r["latency_us"], r["ack_latency_us"]
print(f'   {sys.argv[2]:<7} p50 {l["p50"]:>8,.0f}  p99 {l["p99"]:>8,.0f}  p99.9 {l["p999"]:>8,.0f}  max {l["max"]:>9,.0f} µs'
      f'  (ack p50 {a["p50"]:,.0f} p99 {a["p99"]:,.0f} µs; {r["sent"]} sent, leader CPU {r.get("daemon_cpu_s")} s, clean {r["clean"]})')
PY
}

# max_epoch ADDRS: the highest epoch reported by the nodes that answer.
max_epoch() {
    status_json "$1" | python3 -c 'import json, sys
print(max([json.loads(l).get("epoch", 0) for l in sys.stdin if l.strip()] or [0]))'
}

# count_elections DIR: "elected" lines in the 3 nodes' logs (one per epoch, epoch 1 included).
count_elections() {
    cat "$1"/node*/daemon.log | grep -c 'elected node' || true
}

# log_marks DIR: the line counts of the 3 nodes' logs; log_since DIR MARKS: the lines after them.
log_marks() {
    local i
    for i in 1 2 3; do wc -l <"$1/node$i/daemon.log"; done | paste -sd' '
}
log_since() {
    local -a m
    read -r -a m <<<"$2"
    local i
    for i in 1 2 3; do tail -n +"$((m[i - 1] + 1))" "$1/node$i/daemon.log"; done
}

# open_loop_run LABEL OUT: the open loop (cmd) in the foreground, with a note if the epoch changed.
open_loop_run() {
    local e0 e1
    e0=$(max_epoch "$servers")
    "${cmd[@]}" >"$2" || {
        echo "== the open loop $1 the catch-up was not clean" >&2
        failed=1
    }
    e1=$(max_epoch "$servers")
    latency_line "$2" "$1"
    [ "$e0" = "$e1" ] || echo "   note: epoch $e0 -> $e1 during this loop (elections): its figures include them"
}

scenario_catchup() {
    echo
    echo "=== catchup: 3 nodes (--storage file${SNAPSHOT_ENTRIES:+, --snapshot-entries $SNAPSHOT_ENTRIES}), $MESSAGES messages, then a follower wiped and restarted"
    local dir=$tmp/catchup leader_id leader_addr leader_pid victim i lines0 t0 t_port status
    local target_commit=""
    start_cluster "$dir" --storage file "${storage_flags[@]}" || {
        failed=1
        stop_cluster
        return 0
    }
    read -r leader_id leader_addr < <(leader_of "$servers") || true
    [ -n "${leader_id:-}" ] || {
        echo "== no leader in 10 s" >&2
        failed=1
        return 0
    }
    leader_pid=${cluster_pids[$((leader_id - 1))]}
    echo "== 3 nodes: clients on $servers, pids $pids; leader node $leader_id ($leader_addr, pid $leader_pid)"
    load_room "$leader_addr" "$pids" "$dir/load.json" || true
    if ! wait_converged "$servers" 120; then
        echo "== the nodes did not converge (applied == commit on all) within 120 s" >&2
        failed=1
    fi
    "$client" -s "$servers" admin status || true
    for i in 1 2 3; do
        echo "   node $i:"
        data_dir_report "$dir/node$i/data"
    done
    sleep "$CATCHUP_SETTLE" # let the load's writes settle before the reference run
    local n_load marks e0 e1
    n_load=$(count_elections "$dir")
    marks=$(log_marks "$dir")
    # The leader may have changed during the load (elections): ask again.
    leader_id="" leader_addr=""
    read -r leader_id leader_addr < <(leader_of "$servers") || true
    [ -n "${leader_id:-}" ] || {
        echo "== no leader after the load" >&2
        failed=1
        return 0
    }
    leader_pid=${cluster_pids[$((leader_id - 1))]}
    echo "== elections during the load: $n_load (epoch 1 included); the leader is node $leader_id ($leader_addr, pid $leader_pid), epoch $(max_epoch "$servers")"
    # When, during the load: snapshots (node 1's, all nodes take them at the same indexes) and
    # elections (UTC, to the second, as the daemons log them).
    echo "   load: node 1 snapshots at $(head -n "${marks%% *}" "$dir/node1/daemon.log" | grep 'snapshot at index' |
        sed -E 's/^\[[0-9-]+T([0-9:]+)Z.*snapshot at index ([0-9]+).*\(epoch [0-9]+, ([0-9]+) bytes\).*/\1 (\2, \3 B)/' | paste -sd' ')"
    echo "   load: elections at $(cat "$dir"/node*/daemon.log | grep 'elected node' | sed -E 's/^\[[0-9-]+T([0-9:]+)Z.*/\1/' | sort | paste -sd' ')"
    # The follower to wipe: the highest id that is not the leader.
    victim=3
    [ "$leader_id" != 3 ] || victim=2
    # The open loop, against the leader only.
    local cmd=("$load" open --rooms 1 --members "$CATCHUP_MEMBERS" --rate "$CATCHUP_RATE"
        --duration "$CATCHUP_OPEN_DURATION" --text-bytes "$TEXT_BYTES" --server "$leader_addr"
        --pid "$leader_pid" --json)
    echo "== before: ${cmd[*]}"
    open_loop_run before "$dir/before.json"

    echo "== during: the same open loop, started $CATCHUP_LEAD s before node $victim is SIGKILLed, wiped and restarted"
    e0=$(max_epoch "$servers")
    "${cmd[@]}" >"$dir/during.json" &
    bg_pid=$!
    sleep "$CATCHUP_LEAD"
    target_commit=$(status_json "$leader_addr" | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["commit_index"])')
    kill9 "${cluster_pids[$((victim - 1))]}"
    rm -rf "$dir/node$victim/data"
    lines0=$(wc -l <"$dir/node$leader_id/daemon.log")
    local vlines0
    vlines0=$(wc -l <"$dir/node$victim/daemon.log")
    t0=$EPOCHREALTIME
    cluster_start_node "$dir" "$victim" --storage file "${storage_flags[@]}"
    cluster_wait_port "$dir" "$victim" || {
        failed=1
        wait "$bg_pid" || true
        bg_pid=""
        return 0
    }
    t_port=$(ms_since "$t0")
    cluster_addrs[$((victim - 1))]=$node_addr
    servers=$(IFS=,; echo "${cluster_addrs[*]}")
    echo "   node $victim (pid ${cluster_pids[$((victim - 1))]}) restarted empty on $node_addr; port file after $t_port ms; leader commit index at the kill: $target_commit"
    # Poll every 50 ms: the leader first, then the new node, each with its own status query.
    status=0
    python3 - "$client" "$leader_addr" "$node_addr" "$t0" "$target_commit" "$CATCHUP_TIMEOUT" >"$dir/catchup.txt" <<'PY' || status=$?
import json, subprocess, sys, time

client, leader, node, t0, target, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])

def status(addr):
    try:
        out = subprocess.run([client, "-s", addr, "admin", "status", "--json", "--timeout", "1"],
                             capture_output=True, text=True, timeout=5).stdout
        r = json.loads(out.splitlines()[0])
        return r if r.get("up") else None
    except Exception:
        return None

t_target = t_equal = None
last_print = 0.0
first_applied = None
while True:
    now = time.time() - t0
    if now > timeout:
        break
    l = status(leader)
    n = status(node)
    now = time.time() - t0
    if l and n:
        if first_applied is None and n["applied_index"] > 0:
            first_applied = now
        if t_target is None and n["applied_index"] >= target:
            t_target = now
        if n["applied_index"] >= l["commit_index"]:
            t_equal = now
            print(f"caught_up {t_equal:.3f} {t_target:.3f} {n['applied_index']} {l['commit_index']} {n['role']}", flush=True)
            break
        if now - last_print >= 1.0:
            last_print = now
            print(f"progress {now:.1f} s: node applied {n['applied_index']} last {n['last_index']} commit {n['commit_index']} role {n['role']}; leader commit {l['commit_index']}",
                  file=sys.stderr, flush=True)
    time.sleep(0.05)
if t_equal is None:
    print(f"timeout {timeout}", flush=True)
    sys.exit(1)
PY
    local t_caught t_tgt applied lcommit role
    if [ "$status" -eq 0 ] && read -r _ t_caught t_tgt applied lcommit role <"$dir/catchup.txt"; then
        echo "   node $victim caught up: applied $applied >= leader commit $lcommit (role $role) after $t_caught s from its spawn" \
            "(applied >= the commit index at the kill, $target_commit, after $t_tgt s)"
    else
        echo "== node $victim did not catch up within $CATCHUP_TIMEOUT s" >&2
        "$client" -s "$servers" admin status >&2 || true
        failed=1
        t_caught=""
    fi
    if wait "$bg_pid"; then :; else
        echo "== the open loop during the catch-up was not clean" >&2
        failed=1
    fi
    bg_pid=""
    e1=$(max_epoch "$servers")
    latency_line "$dir/during.json" during
    [ "$e0" = "$e1" ] || echo "   note: epoch $e0 -> $e1 during this loop (elections): its figures include them"
    if [ -n "$t_caught" ]; then
        awk -v c="$t_caught" -v d="$CATCHUP_OPEN_DURATION" -v l="$CATCHUP_LEAD" 'BEGIN {
            printf "   the catch-up (%.2f s) covered %.0f%% of the %s s open loop (it began %s s into it)\n", c, 100 * (c < d - l ? c : d - l) / d, d, l }'
    fi
    echo "== after: the same open loop once the node has caught up"
    open_loop_run after "$dir/after.json"
    local now_leader=""
    read -r now_leader _ < <(leader_of "$servers") || true
    [ "$now_leader" = "$leader_id" ] ||
        echo "   note: the leader changed from node $leader_id to node ${now_leader:-none}: the open loops ran against node $leader_id"
    python3 - "$dir/before.json" "$dir/during.json" "$dir/after.json" <<'PY'
import json, sys
r = [json.loads(open(f).read().strip().splitlines()[-1]) for f in sys.argv[1:4]]
print("=== catchup: the leader's open-loop latency (send -> delivery, µs), during the catch-up against before it")
for k, name in (("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"), ("max", "max")):
    b, d, a = (x["latency_us"][k] for x in r)
    ratio = f"{d / b:.2f}x" if b else "-"
    print(f"   {name:<6} before {b:>9,.0f}  during {d:>9,.0f}  after {a:>9,.0f}   added {d - b:>+9,.0f} µs  ratio {ratio}")
PY
    echo "   leader (node $leader_id) log lines about snapshots and node $victim since the restart:"
    tail -n +"$((lines0 + 1))" "$dir/node$leader_id/daemon.log" | grep -iE 'snapshot|node '"$victim"'|peer '"$victim" | sed 's/^/     /' | head -50 || true
    grep -qi snapshot <(tail -n +"$((lines0 + 1))" "$dir/node$leader_id/daemon.log") ||
        echo "     (no line about snapshots in the leader's log since the restart, at RUST_LOG=$RUST_LOG)"
    echo "   elections: $n_load during the load, $(($(count_elections "$dir") - n_load)) from the first open loop on;" \
        "elections, lost leaders and snapshots from the first open loop on (every node's log, by time):"
    log_since "$dir" "$marks" | grep -E 'elected node|lost:|snapshot at index|installing snapshot' |
        sort -s -k1,1 | sed 's/^/     /' | head -40 || true
    echo "   node $victim log lines since its restart:"
    tail -n +"$((vlines0 + 1))" "$dir/node$victim/daemon.log" | sed 's/^/     /' | head -50 || true
    "$client" -s "$servers" admin status || true
    stop_cluster
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
}

# machine_load: the load average and the CPU pressure (other work on a shared machine).
machine_load() {
    local psi=""
    [ -r /proc/pressure/cpu ] && psi="; CPU pressure: $(head -n1 /proc/pressure/cpu)"
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg)$psi"
}

echo "== $(nproc) cores, $(uname -srm); data under $tmp ($(stat -f -c %T "$tmp") filesystem); figures are from a shared machine unless it was idle"
for s in commit restart catchup; do
    if [ "$scenario" = "$s" ] || [ "$scenario" = all ]; then
        echo "== before $s: $(machine_load)"
        t_scenario=$EPOCHREALTIME
        "scenario_$s"
        echo "== $s took $(($(ms_since "$t_scenario") / 1000)) s; $(machine_load)"
    fi
done
exit "$failed"
