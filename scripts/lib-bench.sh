# Shell functions shared by scripts/bench.sh, bench-durable.sh and bench-partition.sh; source it, do not run it.
#
# The caller sets `daemon` (the ringchatd binary; `client`, the ringchat binary, defaults to
# target/release/ringchat) and declares `cluster_pids=()`; it stops the
# processes it started itself (its cleanup trap calls stop_process on every PID in
# cluster_pids). Everything listens on 127.0.0.1 only.
#
#   require_bins BIN...           exits 2 naming the first BIN that is not an executable
#   make_tmp NAME                 prints a fresh directory NAME.XXXXXX under $BENCH_DIR (if
#                                 set, created as needed) or $TMPDIR or /tmp
#   stop_process NAME PID         SIGTERM, then SIGKILL after 5 s, of that one process only
#   free_ports N                  prints N distinct free loopback ports, space separated
#   cluster_start_node DIR ID [FLAGS...]
#                                 (re)starts node ID of the cluster (data in DIR/nodeID/data,
#                                 log DIR/nodeID/daemon.log, client address written to
#                                 DIR/nodeID/port); its PID goes to cluster_pids[ID-1]
#   cluster_wait_port DIR ID      waits (at most 10 s) for node ID's port file; sets node_addr
#   start_cluster DIR [FLAGS...]  3 fresh nodes on free ports, each started with FLAGS; waits
#                                 (bounded) for their port files and for a leader; sets
#                                 cluster_addrs (array), servers and pids (comma separated)
#   stop_cluster                  stop_process on every node of cluster_pids, then empties it

# stop_process NAME PID: SIGTERM, then (after 5 s) SIGKILL, of that one process only.
require_bins() {
    local bin
    for bin in "$@"; do
        [ -x "$bin" ] || {
            echo "missing $bin (build failed?)" >&2
            exit 2
        }
    done
}

make_tmp() {
    if [ -n "${BENCH_DIR:-}" ]; then
        mkdir -p "$BENCH_DIR"
        mktemp -d "$BENCH_DIR/$1.XXXXXX"
    else
        mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX"
    fi
}

stop_process() {
    local name=$1 pid=$2
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$name $pid did not stop on SIGTERM within 5 s; SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# free_ports N: N distinct free ports on 127.0.0.1, from below the kernel's ephemeral range (as
# tests/support does): a port the kernel handed out for port 0 could be taken, before our daemon
# binds it, by another daemon's 127.0.0.1:0 listener or by an outgoing connection.
free_ports() {
    python3 -c 'import random, socket, sys
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
first = 10000
span = max(low - first, 1000)
start = random.randrange(span)
ports = []
for i in range(span):
    port = first + (start + i) % span
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    ports.append(port)
    if len(ports) == int(sys.argv[1]):
        break
if len(ports) < int(sys.argv[1]):
    sys.exit("no free ports below the ephemeral range")
print(" ".join(map(str, ports)))' "$1"
}

# Peer ports of the current cluster (set by start_cluster, kept for restarts of its nodes).
cluster_peer_ports=()

# cluster_start_node DIR ID [FLAGS...]: starts node ID (1-3) of the cluster whose peer ports are
# cluster_peer_ports, in DIR/nodeID, with its client port chosen by the kernel (port file
# DIR/nodeID/port, removed first so that a restart does not read a stale one). The log is
# appended to, so a restarted node's earlier lines are kept.
cluster_start_node() {
    local dir=$1/node$2 i=$2
    shift 2
    local peers="" j
    for j in 1 2 3; do
        [ "$j" = "$i" ] || peers="$peers,$j=127.0.0.1:${cluster_peer_ports[$((j - 1))]}"
    done
    mkdir -p "$dir/data"
    rm -f "$dir/port"
    # The subshell raises its fd limit to the hard limit, then becomes ringchatd (same PID).
    (
        ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        exec "$daemon" --id "$i" --listen 127.0.0.1:0 --port-file "$dir/port" \
            --data-dir "$dir/data" --peer-listen "127.0.0.1:${cluster_peer_ports[$((i - 1))]}" \
            --peers "${peers#,}" "$@"
    ) 2>>"$dir/daemon.log" &
    cluster_pids[$((i - 1))]=$!
}

# cluster_wait_port DIR ID: waits at most 10 s for node ID's port file; sets node_addr. Returns 1
# (with the node's log on stderr) if the node exited or wrote no port file in time.
cluster_wait_port() {
    local dir=$1/node$2 pid=${cluster_pids[$(($2 - 1))]}
    node_addr=""
    for _ in $(seq 1000); do # at most 10 s
        if [ -s "$dir/port" ]; then
            node_addr=$(tr -d '[:space:]' <"$dir/port")
            [[ "$node_addr" =~ :[0-9]+$ ]] && return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "ringchatd node $2 (pid $pid) exited during startup; its log:" >&2
            cat "$dir/daemon.log" >&2
            return 1
        fi
        sleep 0.01
    done
    echo "ringchatd node $2 (pid $pid) wrote no port file in 10 s; its log:" >&2
    cat "$dir/daemon.log" >&2
    return 1
}

# start_cluster DIR [FLAGS...]: a fresh 3-node cluster on free loopback ports, data under
# DIR/node1..3, every node started with FLAGS. Sets cluster_addrs, servers, pids. Waits at most
# 10 s per port file, then at most 10 s for a leader (`ringchat admin status`).
start_cluster() {
    local dir=$1 i
    shift
    read -r -a cluster_peer_ports < <(free_ports 3)
    for i in 1 2 3; do
        cluster_start_node "$dir" "$i" "$@"
    done
    cluster_addrs=()
    for i in 1 2 3; do
        cluster_wait_port "$dir" "$i" || return 1
        cluster_addrs+=("$node_addr")
    done
    servers=$(IFS=,; echo "${cluster_addrs[*]}")
    pids=$(IFS=,; echo "${cluster_pids[*]}")
    for _ in $(seq 100); do # a leader within 10 s
        "${client:-target/release/ringchat}" -s "$servers" admin status 2>/dev/null | grep -q leader && break
        sleep 0.1
    done
}

# stop_cluster: SIGTERM (then SIGKILL) the nodes of the current cluster.
stop_cluster() {
    local pid
    for pid in "${cluster_pids[@]}"; do
        stop_process ringchatd "$pid"
    done
    cluster_pids=()
}
