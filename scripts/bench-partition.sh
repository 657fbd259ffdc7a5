#!/usr/bin/env bash
# Recovery of a follower after a SILENT network partition (packets dropped, no RST), in network
# namespaces. Needs root; builds nothing (run `make build` first, as yourself).
#
# Usage: sudo scripts/bench-partition.sh        (or: sudo make bench-partition)
#
# Network: 5 namespaces named rcp<PID>-sw, -n1, -n2, -n3 and -cl. -sw holds a bridge; each other
# namespace has one veth (eth0) to it: node i on SUBNET.i (clients on :7070, peers on :7170), the
# client on SUBNET.100, /24. The namespaces have no link to the root namespace or any real
# network, so the subnet cannot clash with the machine's. All of it is deleted at exit.
#
# Each round (for every cut length in CUTS, ROUNDS times): a fresh 3-node cluster, one ringchatd
# per node namespace, --storage memory, default timing flags (heartbeat, failure timeout). The
# follower X is the highest id that is not the leader. One client, `ringchat --send - --json`
# connected to X only (in -cl), sends RATE messages/s; every ack it prints is timestamped. After
# WARMUP s of acks X is cut for CUT s: every packet between X and the two other nodes is dropped,
# both ways, on input (nft or iptables DROP in X's namespace for packets from them, and in theirs
# for packets from X), so no sender gets an error (an OUTPUT drop makes the sender's send fail
# with EPERM: not silent). The client<->X path is untouched. Just before the heal, `ss -tin` of
# the peer links on both ends (rto, backoff). Then the rules are deleted (the heal) and measured:
#   heal->ack     from the heal (the last rule deleted) to the first ack the client prints after it
#                 (the CLI prints an ack when it next reads a line or waits for room in its
#                 window: resolution 1/RATE s);
#   heal->leader  from the heal to the first `ringchat admin status --json` of X (polled every
#                 50 ms from -cl, stamped when the answer came) that names a leader (X forgets it
#                 a failure timeout after the cut);
# and printed per round, with the median per cut length when ROUNDS > 1.
#
# Figures are printed, never asserted. Only the processes started here are stopped, by PID.
# Every wait is bounded. Exit status: 1 if a round could not be measured (a daemon died, no
# leader, no ack before the cut or none within HEAL_TIMEOUT after the heal), 2 if it cannot run.
#
# Environment knobs (defaults in parentheses):
#   CUTS ("1 8 30", seconds)  ROUNDS (1)  RATE (50 messages/s)  WARMUP (2 s of acks before a cut)
#   HEAL_TIMEOUT (180 s: longest wait after a heal for the first ack and for X to name a leader)
#   SUBNET (10.203.0: the first three octets of the namespaces' /24)
#   FIREWALL (nft if installed, else iptables)  DAEMON_FLAGS (extra ringchatd flags, e.g.
#   "--failure-timeout-ms 500"; none by default)  BIN_DIR (target/release)  DAEMON=path (another
#   ringchatd build, for side-by-side comparisons; ringchat, the client, stays BIN_DIR's)
#   BENCH_DIR (where the temp dir goes)  KEEP=1 (keep daemon logs, acks and status polls)
#   RUST_LOG (info)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# require_bins, make_tmp, stop_process
. scripts/lib-bench.sh

case "${1:-}" in
-h | --help)
    sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
"") ;;
*)
    echo "usage: $0   (--help for the knobs)" >&2
    exit 2
    ;;
esac

CUTS=${CUTS:-1 8 30}
ROUNDS=${ROUNDS:-1}
RATE=${RATE:-50}
WARMUP=${WARMUP:-2}
HEAL_TIMEOUT=${HEAL_TIMEOUT:-180}
SUBNET=${SUBNET:-10.203.0}
DAEMON_FLAGS=${DAEMON_FLAGS:-}
export RUST_LOG=${RUST_LOG:-info}
export LC_ALL=C

bin_dir=${BIN_DIR:-target/release}
daemon=${DAEMON:-$bin_dir/ringchatd}
client=$bin_dir/ringchat

# --- what the machine must have ---------------------------------------------------------------
if [ "$(id -u)" != 0 ]; then
    echo "$0 needs root: it creates network namespaces, veth pairs and a bridge, and adds packet" >&2
    echo "filter rules inside them (nothing outside them is touched). Build as yourself, then run it" >&2
    echo "as root:  make build && sudo make bench-partition   (or sudo scripts/bench-partition.sh)" >&2
    exit 2
fi
command -v ip >/dev/null 2>&1 || {
    echo "$0 needs ip (Debian package iproute2: apt-get install iproute2)" >&2
    exit 2
}
command -v ss >/dev/null 2>&1 || {
    echo "$0 needs ss (Debian package iproute2: apt-get install iproute2)" >&2
    exit 2
}
FIREWALL=${FIREWALL:-}
if [ -z "$FIREWALL" ]; then
    if command -v nft >/dev/null 2>&1; then
        FIREWALL=nft
    elif command -v iptables >/dev/null 2>&1; then
        FIREWALL=iptables
    else
        echo "$0 needs nft (Debian package nftables) or iptables (Debian package iptables) to drop" >&2
        echo "packets: apt-get install nftables" >&2
        exit 2
    fi
fi
case "$FIREWALL" in
nft | iptables)
    command -v "$FIREWALL" >/dev/null 2>&1 || {
        echo "FIREWALL=$FIREWALL but $FIREWALL is not installed (Debian package $([ "$FIREWALL" = nft ] && echo nftables || echo iptables))" >&2
        exit 2
    }
    ;;
*)
    echo "FIREWALL must be nft or iptables, not '$FIREWALL'" >&2
    exit 2
    ;;
esac
for v in ROUNDS RATE WARMUP HEAL_TIMEOUT; do
    if ! [[ "${!v}" =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
        echo "$v must be a positive integer, not '${!v}'" >&2
        exit 2
    fi
done
for c in $CUTS; do
    if ! [[ "$c" =~ ^[0-9]+$ ]] || [ "$c" -eq 0 ]; then
        echo "CUTS must be positive integers (seconds), not '$CUTS'" >&2
        exit 2
    fi
done
[[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || {
    echo "SUBNET must be three octets such as 10.203.0, not '$SUBNET'" >&2
    exit 2
}
if [ ! -x "$daemon" ] || [ ! -x "$client" ]; then
    echo "missing $daemon or $client: run \`make build\` first (as yourself: this script never builds)" >&2
    exit 2
fi
read -r -a daemon_flags <<<"$DAEMON_FLAGS"

# --- state, cleanup -----------------------------------------------------------------------------
pfx="rcp$$"
ns_sw=$pfx-sw
ns_cl=$pfx-cl
ns_node=("" "$pfx-n1" "$pfx-n2" "$pfx-n3") # index = node id
made_ns=()                                  # the namespaces created, deleted at exit
node_pids=("" "" "" "")
client_loop_pid=""
poller_pid=""
nap_pid="" # a long sleep of the main script (nap)
cur_dir="" # the current round's directory
tmp=$(make_tmp ringchat-bench-partition)

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local i ns
    [ -z "$nap_pid" ] || kill "$nap_pid" 2>/dev/null || true
    stop_client
    stop_poller
    for i in 1 2 3; do
        stop_process ringchatd "${node_pids[$i]}"
    done
    # Deleting a namespace deletes its veth end (and so the pair), the bridge and the rules.
    for ((i = ${#made_ns[@]} - 1; i >= 0; i--)); do
        ns=${made_ns[$i]}
        ip netns del "$ns" 2>/dev/null || echo "could not delete network namespace $ns" >&2
    done
    if [ -n "${KEEP:-}" ]; then
        echo "== KEEP: logs kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ms_since T0: milliseconds from T0 (an $EPOCHREALTIME) to now.
ms_since() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (b - a) * 1000 }'
}

# nap SECS: sleep in the background and wait for it, so that a signal (Ctrl-C, kill) runs the
# cleanup at once rather than after the sleep; the cleanup stops that sleep.
nap() {
    sleep "$1" &
    nap_pid=$!
    wait "$nap_pid" || true
    nap_pid=""
}

# sleep_until T: sleeps until the $EPOCHREALTIME T (at once if it has passed).
sleep_until() {
    local s
    s=$(awk -v t="$1" -v now="$EPOCHREALTIME" 'BEGIN { d = t - now; printf "%.3f", (d > 0 ? d : 0) }')
    [ "$s" = 0.000 ] || nap "$s"
}

# --- the network --------------------------------------------------------------------------------
add_ns() {
    ip netns add "$1" || {
        echo "cannot create the network namespace $1 (ip netns add failed): this needs root with" >&2
        echo "CAP_SYS_ADMIN and CAP_NET_ADMIN (in a container: --privileged or those capabilities)" >&2
        exit 2
    }
    made_ns+=("$1")
    ip -n "$1" link set lo up
}

# add_host NS ADDR VETH: NS gets eth0 with ADDR/24, linked to the bridge by VETH in the switch.
add_host() {
    add_ns "$1"
    ip -n "$ns_sw" link add "$3" type veth peer name eth0 netns "$1"
    ip -n "$ns_sw" link set "$3" master br0
    ip -n "$ns_sw" link set "$3" up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
}

node_ip() { echo "$SUBNET.$1"; }

setup_network() {
    local i
    add_ns "$ns_sw"
    ip -n "$ns_sw" link add br0 type bridge
    ip -n "$ns_sw" link set br0 up
    for i in 1 2 3; do
        add_host "${ns_node[$i]}" "$(node_ip "$i")" "v$i"
    done
    add_host "$ns_cl" "$SUBNET.100" vcl
}

# --- the silent partition -----------------------------------------------------------------------
# drop_from NS ADDR...: NS drops every packet it receives from ADDRs (input, so senders see
# nothing). undrop NS removes that again.
drop_from() {
    local ns=$1 a
    shift
    if [ "$FIREWALL" = nft ]; then
        local set
        set=$(IFS=,; echo "$*")
        ip netns exec "$ns" nft -f - <<EOF
table inet rcpart {
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr { $set } drop
    }
}
EOF
    else
        for a in "$@"; do
            ip netns exec "$ns" iptables -w -I INPUT -s "$a" -j DROP
        done
    fi
}
undrop() {
    local ns=$1 a
    shift
    if [ "$FIREWALL" = nft ]; then
        ip netns exec "$ns" nft delete table inet rcpart
    else
        for a in "$@"; do
            ip netns exec "$ns" iptables -w -D INPUT -s "$a" -j DROP
        done
    fi
}

# partition X / heal_partition X: every packet between node X and the two others dropped / let
# through again. The three namespaces' rules are changed at once (one background job each), so
# that the cut and the heal each take effect within a few ms everywhere.
others_of() {
    local i
    for i in 1 2 3; do [ "$i" = "$1" ] || echo "$i"; done
}
# on_all_three FN X: FN NS ADDR... in X's namespace (the others' addresses) and in each other
# node's (X's address), in parallel; fails if one of them did.
on_all_three() {
    local fn=$1 x=$2 o others=() waits=() rc=0 j
    for o in $(others_of "$x"); do others+=("$(node_ip "$o")"); done
    "$fn" "${ns_node[$x]}" "${others[@]}" &
    waits+=($!)
    for o in $(others_of "$x"); do
        "$fn" "${ns_node[$o]}" "$(node_ip "$x")" &
        waits+=($!)
    done
    for j in "${waits[@]}"; do
        wait "$j" || rc=1
    done
    return "$rc"
}
partition() { on_all_three drop_from "$1"; }
heal_partition() { on_all_three undrop "$1"; }

# peer_links NS ADDR: `ss -tin` of the peer links (port 7170) in NS with the node at ADDR, one
# line each: "[STATE] local -> peer rto:N backoff:N unacked:N retrans:N/N lastsnd:N lastrcv:N".
# Sockets in TIME-WAIT (closed links of earlier rounds in the same namespaces) are left out.
peer_links() {
    ip netns exec "$1" ss -tinH state connected exclude time-wait '( sport = :7170 or dport = :7170 )' 2>/dev/null |
        awk -v want="$2" '
            /^[^ \t]/ { st = ($1 ~ /^[0-9]/) ? "" : $1 " "; loc = $(NF - 1); peer = $NF; next }
            {
                if (index(loc, want ":") != 1 && index(peer, want ":") != 1) next
                out = st loc " -> " peer
                n = split("rto backoff unacked retrans lastsnd lastrcv", k, " ")
                for (j = 1; j <= n; j++)
                    for (f = 1; f <= NF; f++)
                        if (index($f, k[j] ":") == 1) out = out " " $f
                if (out !~ /backoff:/) out = out " backoff:0"
                print out
            }'
}

# link_summary FILE XADDR: "nN:rto/backoff" of each link in FILE, N the node at its end that is
# not X, e.g. "n1:26112/7 n3:26624/7".
link_summary() {
    awk -v x="$2" '{ r = "-"; b = "0"; n = "?"
           for (f = 1; f <= NF; f++) {
               if ($f ~ /^rto:/) r = substr($f, 5)
               if ($f ~ /^backoff:/) b = substr($f, 9)
               if ($f ~ /^[0-9.]+:[0-9]+$/ && index($f, x ":") != 1) { n = $f; sub(/:.*/, "", n); sub(/.*\./, "", n) }
           }
           s = s (s ? " " : "") "n" n ":" r "/" b }
         END { print (s ? s : "none") }' "$1"
}

# --- the cluster, the client, the status poller -------------------------------------------------
start_node() {
    local i=$1 dir=$2/node$1 peers="" j
    for j in 1 2 3; do
        [ "$j" = "$i" ] || peers="$peers,$j=$(node_ip "$j"):7170"
    done
    mkdir -p "$dir/data"
    (
        ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        exec ip netns exec "${ns_node[$i]}" "$daemon" --id "$i" \
            --listen "$(node_ip "$i"):7070" --port-file "$dir/port" \
            --peer-listen "$(node_ip "$i"):7170" --peers "${peers#,}" \
            --data-dir "$dir/data" --storage memory "${daemon_flags[@]}"
    ) 2>>"$dir/daemon.log" &
    node_pids[i]=$!
}

# status ADDR: X's `admin status --json` line (from the client namespace), 1 s timeout.
status() {
    ip netns exec "$ns_cl" "$client" -s "$1" admin status --json --timeout 1 2>/dev/null | head -n1
}

# json_val LINE KEY: the first "KEY":value of LINE (a number, null or a quoted string).
json_val() {
    grep -oE "\"$2\":(\"[^\"]*\"|[^,}]*)" <<<"$1" | head -n1 | cut -d: -f2- | tr -d '"'
}

# leader_id: the id of the node that says it leads (empty if none within 10 s).
leader_id() {
    local line i
    for _ in $(seq 50); do
        for i in 1 2 3; do
            line=$(status "$(node_ip "$i"):7070")
            if [ "$(json_val "$line" role)" = leader ]; then
                json_val "$line" id
                return 0
            fi
        done
        sleep 0.2
    done
}

# The client: `ringchat --send - --json` against X only, fed RATE lines/s; each line it prints
# (acks as JSON) is appended to acks.log after an $EPOCHREALTIME. Restarted (same --client-id,
# so the same device resumes) if it exits before the round stops it.
client_loop() {
    local addr=$1 dir=$2 room=$3 id=$4 until=$5 k=0 gap
    gap=$(awk -v r="$RATE" 'BEGIN { printf "%.4f", 1 / r }')
    while [ ! -e "$dir/client.stop" ] && [ "$(ms_since "$until")" -lt 0 ]; do
        k=$((k + 1))
        {
            local i
            for ((i = 1; i <= RATE * (HEAL_TIMEOUT + 120); i++)); do
                printf 'k%s m%s\n' "$k" "$i"
                sleep "$gap"
            done
        } | {
            echo "$BASHPID" >"$dir/client.pid"
            exec ip netns exec "$ns_cl" "$client" -s "$addr" --json --timeout "$((HEAL_TIMEOUT + 120))" \
                --client-id "$id" benchcut "$room" --send - 2>>"$dir/client.err"
        } | while IFS= read -r line; do
            printf '%s %s\n' "$EPOCHREALTIME" "$line"
        done >>"$dir/acks.log" || true
        printf '%s client run %s ended\n' "$EPOCHREALTIME" "$k" >>"$dir/client.err"
        [ -e "$dir/client.stop" ] || sleep 0.2
    done
}

# wait_exit PID SECS: waits at most SECS s for PID to exit by itself.
wait_exit() {
    local k
    for ((k = 0; k < $2 * 20; k++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.05
    done
}

# stop_client: the client (ringchat), then its loop, which ends once it sees client.stop.
stop_client() {
    [ -n "$client_loop_pid" ] || return 0
    local dir=$cur_dir
    touch "$dir/client.stop"
    if [ -s "$dir/client.pid" ]; then stop_process ringchat "$(cat "$dir/client.pid")"; fi
    wait_exit "$client_loop_pid" 3
    stop_process "client loop" "$client_loop_pid"
    client_loop_pid=""
}

# stop_poller: the status poller ends by itself once FILE.stop exists (a query takes at most 1 s).
stop_poller() {
    [ -n "$poller_pid" ] || return 0
    touch "$cur_dir/x-status.log.stop"
    wait_exit "$poller_pid" 3
    stop_process "status poller" "$poller_pid"
    poller_pid=""
}

# status_poller ADDR FILE UNTIL: X's role, leader and epoch every 50 ms (a query that takes
# longer delays the next), each line after the $EPOCHREALTIME its answer came at, until FILE.stop
# exists or UNTIL passes. Parsed with bash's own regexes: no process but the query per poll.
status_poller() {
    local line role leader epoch t0 until_us=$((${3/./}))
    while [ ! -e "$2.stop" ] && [ $((${EPOCHREALTIME/./})) -lt "$until_us" ]; do
        t0=$((${EPOCHREALTIME/./}))
        line=$(status "$1")
        role="" leader="" epoch=""
        [[ "$line" =~ \"role\":\"([a-z]*)\" ]] && role=${BASH_REMATCH[1]}
        [[ "$line" =~ \"leader\":([0-9]+|null) ]] && leader=${BASH_REMATCH[1]}
        [[ "$line" =~ \"epoch\":([0-9]+) ]] && epoch=${BASH_REMATCH[1]}
        printf '%s role=%s leader=%s epoch=%s\n' "$EPOCHREALTIME" "$role" "$leader" "$epoch" >>"$2"
        t0=$((t0 + 50000 - ${EPOCHREALTIME/./}))
        if [ "$t0" -gt 0 ]; then sleep "0.$(printf '%06d' "$t0")"; fi
    done
}

# --- one round ----------------------------------------------------------------------------------
failed=0
results=() # "cut round heal_ack_ms heal_leader_ms"

# first_ack_after FILE T: ms from T to the first ack in FILE stamped after T (empty if none).
first_ack_after() {
    awk -v t="$2" '$0 ~ /"seq"/ && $1 > t { printf "%.0f\n", ($1 - t) * 1000; exit }' "$1" 2>/dev/null
}

one_round() {
    local cut_s=$1 round=$2 dir=$tmp/cut$1-round$2 i ldr x line t_cut t_heal t_heal0 t_end
    cur_dir=$dir
    mkdir -p "$dir"
    echo
    echo "=== cut $cut_s s, round $round/$ROUNDS"
    for i in 1 2 3; do
        start_node "$i" "$dir"
    done
    for i in 1 2 3; do
        for _ in $(seq 100); do # 10 s
            [ -s "$dir/node$i/port" ] && break
            kill -0 "${node_pids[$i]}" 2>/dev/null || break
            sleep 0.1
        done
        [ -s "$dir/node$i/port" ] || {
            echo "== node $i (pid ${node_pids[$i]}) did not start within 10 s; its log:" >&2
            cat "$dir/node$i/daemon.log" >&2
            return 1
        }
    done
    ldr=$(leader_id)
    [ -n "$ldr" ] || {
        echo "== no leader within 10 s" >&2
        return 1
    }
    x=3
    [ "$ldr" != 3 ] || x=2
    local xaddr
    xaddr=$(node_ip "$x"):7070
    echo "   nodes pids ${node_pids[1]} ${node_pids[2]} ${node_pids[3]} on $SUBNET.1-3; leader node $ldr; X = node $x ($xaddr)"

    t_end=$(awk -v n="$EPOCHREALTIME" -v s="$((WARMUP + 15 + cut_s + HEAL_TIMEOUT + 10))" 'BEGIN { printf "%.6f", n + s }')
    : >"$dir/acks.log"
    : >"$dir/client.err"
    status_poller "$xaddr" "$dir/x-status.log" "$t_end" &
    poller_pid=$!
    # (its shell's own notices, such as "Terminated" when the client is stopped, go to loop.err)
    client_loop "$xaddr" "$dir" "partition-$$-c$cut_s-r$round" "$((RANDOM * 32768 + RANDOM + 1))" "$t_end" 2>>"$dir/loop.err" &
    client_loop_pid=$!
    # Acks flowing (at most 15 s), then WARMUP s of them.
    for _ in $(seq 150); do
        grep -q '"seq"' "$dir/acks.log" && break
        sleep 0.1
    done
    grep -q '"seq"' "$dir/acks.log" || {
        echo "== the client got no ack from node $x within 15 s; its stderr:" >&2
        cat "$dir/client.err" >&2
        return 1
    }
    nap "$WARMUP"
    for i in 1 2 3; do
        kill -0 "${node_pids[$i]}" 2>/dev/null || {
            echo "== node $i died before the cut; its log:" >&2
            tail -n 30 "$dir/node$i/daemon.log" >&2
            return 1
        }
    done
    local lines0 t_cut0
    lines0=$(wc -l <"$dir/node$x/daemon.log")
    t_cut0=$EPOCHREALTIME
    partition "$x" || {
        echo "== could not put the $FIREWALL rules of the cut in place" >&2
        return 1
    }
    t_cut=$EPOCHREALTIME
    echo "   cut: node $x <-/-> nodes $(others_of "$x" | paste -sd' ') ($FIREWALL rules in place after $(ms_since "$t_cut0") ms); client <-> node $x untouched"
    # The links just before the heal (ss takes a few ms per namespace).
    sleep_until "$(awk -v t="$t_cut" -v c="$cut_s" 'BEGIN { printf "%.6f", t + c - 0.15 }')"
    peer_links "${ns_node[$x]}" "$(node_ip "$x")" >"$dir/ss-x.txt"
    : >"$dir/ss-others.txt"
    for i in $(others_of "$x"); do
        peer_links "${ns_node[$i]}" "$(node_ip "$x")" >>"$dir/ss-others.txt"
    done
    sleep_until "$(awk -v t="$t_cut" -v c="$cut_s" 'BEGIN { printf "%.6f", t + c }')"
    t_heal0=$EPOCHREALTIME
    heal_partition "$x" || {
        echo "== could not delete the $FIREWALL rules of the cut" >&2
        return 1
    }
    t_heal=$EPOCHREALTIME
    echo "   heal after $(awk -v a="$t_cut" -v b="$t_heal0" 'BEGIN { printf "%.2f", b - a }') s of cut (rules gone after $(ms_since "$t_heal0") ms)"
    echo "   node $x's peer links just before the heal (ss -tin in its namespace):"
    sed 's/^/     /' "$dir/ss-x.txt"
    [ -s "$dir/ss-x.txt" ] || echo "     (none)"
    echo "   the other nodes' links to node $x:"
    sed 's/^/     /' "$dir/ss-others.txt"
    [ -s "$dir/ss-others.txt" ] || echo "     (none)"

    # Wait (at most HEAL_TIMEOUT) for an ack after the heal and for X to name a leader.
    local a="" l="" deadline
    deadline=$(awk -v t="$t_heal" -v s="$HEAL_TIMEOUT" 'BEGIN { printf "%.6f", t + s }')
    while [ "$(ms_since "$deadline")" -lt 0 ]; do
        a=$(first_ack_after "$dir/acks.log" "$t_heal")
        l=$(awk -v t="$t_heal" '$1 > t && $3 ~ /^leader=[0-9]+$/ { printf "%.0f\n", ($1 - t) * 1000; exit }' "$dir/x-status.log" 2>/dev/null)
        [ -z "$a" ] || [ -z "$l" ] || break
        sleep 0.1
    done
    stop_client
    stop_poller

    # When X dropped the leader during the cut, acks during the cut, the client's errors.
    local lost last_before in_cut errs
    lost=$(awk -v t="$t_cut" -v h="$t_heal" '$1 > t && $1 < h && $3 !~ /^leader=[0-9]+$/ { printf "%.0f", ($1 - t) * 1000; exit }' "$dir/x-status.log")
    last_before=$(awk -v t="$t_cut" '$0 ~ /"seq"/ && $1 <= t { v = $1 } END { if (v) printf "%.0f", (t - v) * 1000 }' "$dir/acks.log")
    in_cut=$(awk -v t="$t_cut" -v h="$t_heal" '$0 ~ /"seq"/ && $1 > t && $1 <= h { n++ } END { print n + 0 }' "$dir/acks.log")
    errs=$(grep -c '^!' "$dir/client.err" || true)
    if [ -n "$lost" ]; then lost="$lost ms after the cut"; else lost="never seen gone during the cut"; fi
    echo "   X's status: leader gone $lost;" \
        "last ack $last_before ms before the cut; acks during the cut: $in_cut; client errors: $errs"
    grep '^!' "$dir/client.err" | sort | uniq -c | sort -rn | head -n 5 | sed 's/^/     /' || true
    grep -v '^!' "$dir/client.err" | grep -v 'client run .* ended' | head -n 5 | sed 's/^/     client: /' || true
    echo "   heal -> first ack: ${a:-none within $HEAL_TIMEOUT s}${a:+ ms}; heal -> X names a leader: ${l:-not within $HEAL_TIMEOUT s}${l:+ ms}"
    echo "   node $x's log from the cut on (peer links, leader, elections; first 15 lines, failed pre-elections counted):"
    tail -n +"$((lines0 + 1))" "$dir/node$x/daemon.log" | grep -iE 'peer|leader|elect|lost|link|connect' |
        grep -v 'pre-election .* failed' | head -n 15 | sed 's/^/     /' || true
    echo "     ($(tail -n +"$((lines0 + 1))" "$dir/node$x/daemon.log" | grep -c 'pre-election .* failed' || true) failed pre-elections)"
    for i in 1 2 3; do
        kill -0 "${node_pids[$i]}" 2>/dev/null || {
            echo "== node $i died during the round; its log:" >&2
            tail -n 30 "$dir/node$i/daemon.log" >&2
            failed=1
        }
        stop_process ringchatd "${node_pids[$i]}"
        node_pids[i]=""
    done
    results+=("$cut_s $round ${a:--} ${l:--} $(link_summary "$dir/ss-x.txt" "$(node_ip "$x")" | tr ' ' ',') $(link_summary "$dir/ss-others.txt" "$(node_ip "$x")" | tr ' ' ',')")
    [ -n "$a" ] || failed=1
    [ -n "${KEEP:-}" ] || rm -rf "$dir"
    return 0
}

# median_of CUT FIELD: the median of FIELD (3: heal->ack, 4: heal->leader) of CUT's results.
median_of() {
    printf '%s\n' "${results[@]}" | awk -v c="$1" -v k="$2" '$1 == c && $k != "-" { print $k }' | sort -n |
        awk '{ a[NR] = $1 } END { if (!NR) print "-"; else printf "%.0f\n", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'
}

# --- main ---------------------------------------------------------------------------------------
setup_network
# The packet filter must work inside a namespace (kernel support): try it once.
if ! drop_from "${ns_node[1]}" "$SUBNET.250" 2>"$tmp/fw.err" || ! undrop "${ns_node[1]}" "$SUBNET.250" 2>>"$tmp/fw.err"; then
    echo "$FIREWALL cannot add or delete a DROP rule inside a network namespace:" >&2
    cat "$tmp/fw.err" >&2
    [ "$FIREWALL" = nft ] && echo "(try FIREWALL=iptables if it is installed)" >&2
    exit 2
fi
echo "== $(nproc) cores, $(uname -srm); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== namespaces $pfx-{sw,n1,n2,n3,cl}, nodes on $SUBNET.1-3 (clients :7070, peers :7170), client on $SUBNET.100;" \
    "partition by $FIREWALL input DROP"
echo "== daemon $daemon ($(stat -c %y "$daemon" | cut -d. -f1)), --storage memory${DAEMON_FLAGS:+ $DAEMON_FLAGS};" \
    "client $client at $RATE msgs/s; CUTS=\"$CUTS\" ROUNDS=$ROUNDS"

for c in $CUTS; do
    for r in $(seq "$ROUNDS"); do
        if ! one_round "$c" "$r"; then
            failed=1
            stop_client
            stop_poller
            for i in 1 2 3; do
                stop_process ringchatd "${node_pids[$i]}"
                node_pids[i]=""
            done
        fi
    done
done

echo
echo "=== partition: recovery after a silent cut of a follower X (heal = the last DROP rule deleted)"
printf '   %-6s %-6s %13s %16s   %-32s %s\n' "cut s" round "heal->ack ms" "heal->leader ms" "X's peer links: rto ms/backoff" "the others' links to X"
for line in "${results[@]}"; do
    read -r c r a l sx so <<<"$line"
    printf '   %-6s %-6s %13s %16s   %-32s %s\n' "$c" "$r" "$a" "$l" "${sx//,/ }" "${so//,/ }"
done
if [ "$ROUNDS" -gt 1 ]; then
    echo "   medians over the rounds measured:"
    printf '   %-6s %13s %16s\n' "cut s" "heal->ack ms" "heal->leader ms"
    for c in $CUTS; do
        printf '   %-6s %13s %16s\n' "$c" "$(median_of "$c" 3)" "$(median_of "$c" 4)"
    done
fi
echo "   (ack resolution about $((1000 / RATE)) ms: the CLI prints an ack when it next reads a line; rto in ms as ss shows it)"
echo "== load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$failed"
