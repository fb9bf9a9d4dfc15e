#!/usr/bin/env bash
# Runs `roster bench all` against `roster serve` and etcd side by side, their
# data dirs in one temp dir on the same disk, fsync on for both; then restarts
# both fresh for the memory workload, and again for holding --instances SDK
# registrations with live keepalives, both read with the servers' PIDs.
# Prints every workload's figures and the roster/etcd ratio. Loopback only;
# stops only the servers it started, by PID; bounded in time (--limit seconds
# per bench run).
#
#   scripts/bench-vs-etcd.sh [--total N] [--keys N] [--instances N] [--limit SECS] [--storage] [--snapshot]
#
# --snapshot runs only the snapshot workload: --keys distinct keys (use
# 1000000) of 256 B loaded into both servers, then on each a snapshot saved
# with etcdctl (time, and the server's peak RSS over its RSS before), the
# snapshot's status, and its restore with the server's own tool (etcdctl
# snapshot restore for etcd's, roster snapshot restore for roster's).
#
# --storage runs only the storage and hostile-load workloads, each on fresh
# servers: put 10x100 on both client stacks with the servers' CPU per put,
# 10,000 leases expiring together, the registration storm (hold), and the
# hostile readers.
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL=50000   # requests per throughput workload
KEYS=100000   # keys (each on its own lease) for the memory workload
INSTANCES=10000 # SDK registrations held with live keepalives
LIMIT=900     # seconds each bench invocation may take before it is stopped
STORAGE=""    # set by --storage
SNAPSHOT=""   # set by --snapshot
while [ $# -gt 0 ]; do
    case "$1" in
        --total) TOTAL=$2; shift 2 ;;
        --keys) KEYS=$2; shift 2 ;;
        --instances) INSTANCES=$2; shift 2 ;;
        --limit) LIMIT=$2; shift 2 ;;
        --storage) STORAGE=1; shift ;;
        --snapshot) SNAPSHOT=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--total N] [--keys N] [--instances N] [--limit SECS] [--storage]" >&2; exit 2 ;;
    esac
done
# shellcheck source=lib/servers.sh
. scripts/lib/servers.sh

echo "== machine: $(nproc) cores, $(uname -r); data dirs under $WORK ($(df -P "$WORK" | awk 'NR==2{print $1}'))"
echo "== $("$ROSTER" --version); etcd $(etcd --version | awk '/etcd Version/{print $3}')"

rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
# name pid endpoint: saves a snapshot with etcdctl while sampling the
# server's RSS every 20 ms; prints "seconds peak_extra_mib".
save_snapshot() {
    local before peak t0 t1 saver r
    before=$(rss_kib "$2"); peak=$before
    t0=$(now)
    ETCDCTL_API=3 etcdctl --endpoints "$3" --command-timeout=600s snapshot save "$WORK/$1.snap" >"$WORK/$1-save.log" 2>&1 &
    saver=$!
    while running "$saver"; do
        r=$(rss_kib "$2"); [ "$r" -gt "$peak" ] && peak=$r
        sleep 0.02
    done
    wait "$saver" || { echo "$1: snapshot save failed:" >&2; cat "$WORK/$1-save.log" >&2; exit 1; }
    t1=$(now)
    echo "$(echo "$t1 - $t0" | bc) $(( (peak - before) / 1024 ))"
}
if [ -n "$SNAPSHOT" ]; then
    start_both snap
    echo "== loading $KEYS keys of 256 B into both (roster pid $ROSTER_PID, etcd pid $ETCD_PID)"
    bench put --conns 10 --clients 100 --total "$KEYS" --key-space "$KEYS" --sequential-keys --val-size 256 --max-duration "$LIMIT" \
        --target "roster=127.0.0.1:$RP" --target "etcd=127.0.0.1:$EP"
    read -r RS RM < <(save_snapshot roster "$ROSTER_PID" "127.0.0.1:$RP")
    read -r ES EM < <(save_snapshot etcd "$ETCD_PID" "127.0.0.1:$EP")
    echo "== snapshot status (etcdctl)"
    for n in roster etcd; do echo "$n: $(ETCDCTL_API=3 etcdctl snapshot status "$WORK/$n.snap" -w json)"; done
    stop_both
    t0=$(now); "$ROSTER" --log warn snapshot restore "$WORK/roster.snap" --data-dir "$WORK/roster-restored" >/dev/null; t1=$(now)
    RR=$(echo "$t1 - $t0" | bc)
    t0=$(now); ETCDCTL_API=3 etcdctl snapshot restore "$WORK/etcd.snap" --data-dir "$WORK/etcd-restored" >/dev/null 2>&1; t1=$(now)
    ER=$(echo "$t1 - $t0" | bc)
    printf '%-34s %14s %14s %8s\n' "snapshot ($KEYS keys of 256 B)" roster etcd ratio
    printf '%-34s %13.2fs %13.2fs %7.2fx\n' "save (etcdctl snapshot save)" "$RS" "$ES" "$(echo "$RS / $ES" | bc -l)"
    printf '%-34s %11s MiB %11s MiB %7.2fx\n' "server RSS growth during save" "$RM" "$EM" "$(echo "($RM + 0.001) / ($EM + 0.001)" | bc -l)"
    printf '%-34s %13.2fs %13.2fs %7.2fx\n' "restore (own tool)" "$RR" "$ER" "$(echo "$RR / $ER" | bc -l)"
    printf '%-34s %12s B %12s B\n' "snapshot size" "$(stat -c %s "$WORK/roster.snap")" "$(stat -c %s "$WORK/etcd.snap")"
    exit 0
fi

if [ -z "$STORAGE" ]; then
    start_both run
    echo "== roster pid $ROSTER_PID on 127.0.0.1:$RP, etcd pid $ETCD_PID on 127.0.0.1:$EP"
    bench all --total "$TOTAL" --target "roster=127.0.0.1:$RP" --target "etcd=127.0.0.1:$EP"
    stop_both
fi

# workload args...: one workload that reads the servers' memory, on fresh
# servers so that nothing earlier counts.
RUN=0
on_fresh_servers() {
    echo
    RUN=$((RUN + 1))
    start_both "$1-$RUN"
    echo "== fresh servers: roster pid $ROSTER_PID, etcd pid $ETCD_PID"
    bench "$@" --target "roster=127.0.0.1:$RP" --target "etcd=127.0.0.1:$EP" \
        --pid "roster=$ROSTER_PID" --pid "etcd=$ETCD_PID"
    stop_both
}
# workload args...: one workload on fresh servers that does not read them.
fresh() {
    echo
    RUN=$((RUN + 1))
    start_both "$1-$RUN"
    bench "$@" --target "roster=127.0.0.1:$RP" --target "etcd=127.0.0.1:$EP"
    stop_both
}
if [ -n "$STORAGE" ]; then
    for client in h2 tonic; do
        on_fresh_servers put --conns 10 --clients 100 --total "$TOTAL" --client "$client"
    done
    fresh expiry --leases 10000 --ttl 10
    on_fresh_servers hold --instances "$INSTANCES"
    exit 0
fi
on_fresh_servers memory --keys "$KEYS"
on_fresh_servers hold --instances "$INSTANCES"
