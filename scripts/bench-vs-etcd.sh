#!/usr/bin/env bash
# Runs `roster bench all` against roster serve and etcd side by side, on the
# same disk with fsync on for both, then the memory workload on fresh
# servers. Prints each workload's figures and the roster/etcd ratio.
#
#   scripts/bench-vs-etcd.sh [--total N] [--keys N]
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=50000
KEYS=100000
while [ $# -gt 0 ]; do
    case "$1" in
        --total) TOTAL=$2; shift 2 ;;
        --keys) KEYS=$2; shift 2 ;;
        *) echo "usage: $0 [--total N] [--keys N]" >&2; exit 2 ;;
    esac
done
command -v etcd >/dev/null || { echo "etcd is not installed (Debian: apt-get install etcd-server)" >&2; exit 1; }

cargo build --release -q -p roster-cli
ROSTER=target/release/roster
WORK=$(mktemp -d "${TMPDIR:-/tmp}/roster-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_up() { # name addr pid
    for _ in $(seq 1 100); do
        if ETCDCTL_API=3 etcdctl --endpoints "$2" --command-timeout=1s endpoint health >/dev/null 2>&1; then return 0; fi
        kill -0 "$3" 2>/dev/null || { echo "$1 died on start" >&2; exit 1; }
        sleep 0.1
    done
    echo "$1 did not come up" >&2; exit 1
}

start_both() { # tag
    RP=$(port); RH=$(port); EP=$(port); EPP=$(port)
    "$ROSTER" serve --listen "127.0.0.1:$RP" --http "127.0.0.1:$RH" --data-dir "$WORK/roster-$1" --log warn \
        >"$WORK/roster-$1.log" 2>&1 &
    ROSTER_PID=$!
    etcd --name bench --data-dir "$WORK/etcd-$1" \
        --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
        --listen-peer-urls "http://127.0.0.1:$EPP" --initial-advertise-peer-urls "http://127.0.0.1:$EPP" \
        --initial-cluster "bench=http://127.0.0.1:$EPP" --quota-backend-bytes 8589934592 \
        --log-level error >"$WORK/etcd-$1.log" 2>&1 &
    ETCD_PID=$!
    PIDS+=("$ROSTER_PID" "$ETCD_PID")
    wait_up roster "127.0.0.1:$RP" "$ROSTER_PID"
    wait_up etcd "127.0.0.1:$EP" "$ETCD_PID"
}

stop_both() {
    kill "$ROSTER_PID" "$ETCD_PID" 2>/dev/null || true
    wait "$ROSTER_PID" "$ETCD_PID" 2>/dev/null || true
}

echo "== machine: $(nproc) cores; data dirs under $WORK ($(df -h "$WORK" | awk 'NR==2{print $1}')); etcd $(etcd --version | head -1 | awk '{print $3}')"
start_both run
"$ROSTER" --log warn bench all --total "$TOTAL" --target "roster=127.0.0.1:$RP" --target "etcd=127.0.0.1:$EP"
stop_both

start_both mem
"$ROSTER" --log warn bench memory --keys "$KEYS" --target "roster=127.0.0.1:$RP" --target "etcd=127.0.0.1:$EP" \
    --pid "roster=$ROSTER_PID" --pid "etcd=$ETCD_PID"
stop_both
