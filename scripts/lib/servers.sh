# Sourced by scripts/bench-vs-etcd.sh and scripts/bench-auth.sh: builds the
# release `roster`, makes a temp dir, and starts / stops `roster serve` and
# etcd side by side in it on free loopback ports, fsync on for both. Stops
# only the servers it started, by PID (also on exit). The caller sets LIMIT
# (seconds per `bench` run) before sourcing.
# Defines: ROSTER, WORK, ROSTER_PID, ETCD_PID, RP, EP (client ports),
# running, stop, port, wait_up, start_both TAG, stop_both, bench ARGS...

command -v etcd >/dev/null || { echo "etcd is not installed (Debian: apt-get install etcd-server)" >&2; exit 1; }
command -v etcdctl >/dev/null || { echo "etcdctl is not installed (Debian: apt-get install etcd-client)" >&2; exit 1; }

echo "== building roster (release)" >&2
cargo build --release -q -p roster-cli
ROSTER="${CARGO_TARGET_DIR:-target}/release/roster"
[ -x "$ROSTER" ] || { echo "no $ROSTER after the build" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/roster-bench.XXXXXX")
ROSTER_PID=""
ETCD_PID=""
running() { # pid: alive and not yet a zombie
    local state
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}
stop() { # pid...: SIGTERM, SIGKILL after 10 s; only the PIDs given (our children)
    local p
    for p in "$@"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "$@"; do
        [ -n "$p" ] || continue
        for _ in $(seq 1 100); do running "$p" || break; sleep 0.1; done
        running "$p" && kill -9 "$p" 2>/dev/null
        wait "$p" 2>/dev/null || true
    done
}
cleanup() {
    stop "$ROSTER_PID" "$ETCD_PID"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: bind port 0 and read what the kernel chose.
port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
    else
        echo $((20000 + RANDOM % 30000))
    fi
}

wait_up() { # name addr pid log
    for _ in $(seq 1 150); do
        if ETCDCTL_API=3 etcdctl --endpoints "$2" --dial-timeout=1s --command-timeout=1s endpoint health >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$3" 2>/dev/null; then
            echo "$1 exited on start; its log:" >&2; tail -20 "$4" >&2; exit 1
        fi
        sleep 0.1
    done
    echo "$1 did not answer on $2 within 15 s; its log:" >&2; tail -20 "$4" >&2; exit 1
}

start_both() { # tag
    RP=$(port); RH=$(port); EP=$(port); EPP=$(port)
    "$ROSTER" --log warn serve --listen "127.0.0.1:$RP" --http "127.0.0.1:$RH" --data-dir "$WORK/roster-$1" \
        >"$WORK/roster-$1.log" 2>&1 &
    ROSTER_PID=$!
    # etcd with its defaults (fsync on), but a backend quota of 8 GiB so the
    # bench cannot run into NOSPACE.
    etcd --name bench --data-dir "$WORK/etcd-$1" \
        --listen-client-urls "http://127.0.0.1:$EP" --advertise-client-urls "http://127.0.0.1:$EP" \
        --listen-peer-urls "http://127.0.0.1:$EPP" --initial-advertise-peer-urls "http://127.0.0.1:$EPP" \
        --initial-cluster "bench=http://127.0.0.1:$EPP" --quota-backend-bytes 8589934592 \
        --log-level error >"$WORK/etcd-$1.log" 2>&1 &
    ETCD_PID=$!
    wait_up roster "127.0.0.1:$RP" "$ROSTER_PID" "$WORK/roster-$1.log"
    wait_up etcd "127.0.0.1:$EP" "$ETCD_PID" "$WORK/etcd-$1.log"
}

stop_both() {
    stop "$ROSTER_PID" "$ETCD_PID"
    ROSTER_PID=""
    ETCD_PID=""
}

bench() { # args...: one bench run, stopped after $LIMIT seconds
    timeout --kill-after=10 "$LIMIT" "$ROSTER" --log warn bench "$@"
}

