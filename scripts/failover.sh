#!/usr/bin/env bash
# Failover benchmark of a 3-node ringchatd cluster (release build).
#
# Usage: scripts/failover.sh
#
# Starts 3 nodes on 127.0.0.1 (free ports, data under target/tmp/), writers on every node
# sending continuously through the client library, then kills the leader with SIGKILL
# FAILOVER_KILLS times, restarting it and waiting until it has caught up before the next kill.
# For each kill it measures the time from the kill to the next committed message (the first
# ack, received by any writer, of a message sent after the kill) and prints every sample, the
# median and the max, then the acknowledged messages lost and the duplicates found by the
# history checker, and whether the targets are met (median < 300 ms, max < 1 s, 0 lost,
# 0 duplicates). Only the daemons it started are killed, by PID.
#
# Exit status: non-zero if a message was lost or duplicated, an epoch had two leaders, or the
# cluster got stuck; missed time targets are reported but do not fail the run.
#
# Environment knobs:
#   FAILOVER_KILLS=20 FAILOVER_HEARTBEAT_MS=30 FAILOVER_TIMEOUT_MS=200
#   FAILOVER_WRITERS=6 FAILOVER_INTERVAL_MS=5   JSON=1 (one JSON summary line on stdout)
#   FAILOVER_FAULT=stop (SIGSTOP the leader instead of SIGKILL; SIGCONT after the election)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${1:-}" in
-h | --help)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
"") ;;
*)
    echo "usage: $0   (see --help for the environment knobs)" >&2
    exit 2
    ;;
esac

exec cargo test --release --test failover_bench -- --ignored --nocapture --test-threads=1
