#!/usr/bin/env bash
# Authenticate at bcrypt cost 10 (both servers' default), roster against
# etcd in the same run: builds release, starts `roster serve` and etcd in a
# temp dir (scripts/lib/servers.sh), on each creates root (root role) and
# `bench` with etcdctl and turns auth on, then runs `roster bench
# authenticate` --rounds times at 2 conns x 16 clients (--total logins) and
# at 1x1 (--single logins), printing each run's table (with the roster/etcd
# ratio) and the load average around it. Loopback only; stops only the
# servers it started, by PID; each bench run is bounded by `timeout`
# (--limit seconds).
#
#   scripts/bench-auth.sh [--rounds N] [--total N] [--single N] [--limit SECS]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3    # rounds of both shapes
TOTAL=200   # logins per 2x16 run
SINGLE=40   # logins per 1x1 run
LIMIT=300   # seconds each bench invocation may take before it is stopped
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --total) TOTAL=$2; shift 2 ;;
        --single) SINGLE=$2; shift 2 ;;
        --limit) LIMIT=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--rounds N] [--total N] [--single N] [--limit SECS]" >&2; exit 2 ;;
    esac
done
# shellcheck source=lib/servers.sh
. scripts/lib/servers.sh

ROOT_PW="root-$RANDOM$RANDOM"
BENCH_PW="bench-$RANDOM$RANDOM"
secure() { # endpoint: root and bench, then auth on, with etcdctl
    local args
    for args in "user add root --new-user-password=$ROOT_PW" "user grant-role root root" \
        "user add bench --new-user-password=$BENCH_PW" "auth enable"; do
        # shellcheck disable=SC2086 # words on purpose
        ETCDCTL_API=3 etcdctl --endpoints "$1" --command-timeout=30s $args >/dev/null ||
            { echo "etcdctl $args on $1 failed" >&2; exit 1; }
    done
}

HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # pid: user + system CPU ticks
echo "== machine: $(nproc) cores, $(uname -r); $("$ROSTER" --version); etcd $(etcd --version | awk '/etcd Version/{print $3}')"
start_both auth
secure "127.0.0.1:$RP"
secure "127.0.0.1:$EP"
echo "== roster pid $ROSTER_PID on 127.0.0.1:$RP, etcd pid $ETCD_PID on 127.0.0.1:$EP; auth on, bcrypt cost 10"
for round in $(seq 1 "$ROUNDS"); do
    for shape in "2 16 $TOTAL" "1 1 $SINGLE"; do
        read -r conns clients total <<<"$shape"
        echo
        echo "== round $round, ${conns}x${clients}, $total logins; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
        r0=$(ticks "$ROSTER_PID"); e0=$(ticks "$ETCD_PID")
        bench authenticate --user "bench:$BENCH_PW" --conns "$conns" --clients "$clients" --total "$total" \
            --max-duration "$LIMIT" --target "roster=127.0.0.1:$RP" --target "etcd=127.0.0.1:$EP"
        r1=$(ticks "$ROSTER_PID"); e1=$(ticks "$ETCD_PID")
        # Server CPU per login (times its logins/s above: the cores it used).
        echo "== server CPU per login: roster $(( (r1 - r0) * 1000 / HZ / total )) ms," \
            "etcd $(( (e1 - e0) * 1000 / HZ / total )) ms; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    done
done
stop_both
