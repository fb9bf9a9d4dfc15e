#!/usr/bin/env bash
# wrk through `roster gateway` and through nginx (a static upstream block,
# HTTP/1.1 keepalive to the backends), in front of the same three
# gateway-echo backends, in one run. Prints requests/s and latency for both
# and the gateway/nginx ratios. Loopback only; stops only the processes it
# started, by PID; every wrk run is bounded by --duration.
#
#   scripts/bench-gateway-vs-nginx.sh [--duration SECS] [--conns N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10
CONNS=64
ROUNDS=2
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "usage: $0 [--duration SECS] [--conns N] [--rounds N]" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is not installed (Debian: apt-get install nginx)" >&2; exit 1; }

echo "== building (release)" >&2
cargo build --release -q -p roster-cli -p roster-gateway
BIN="${CARGO_TARGET_DIR:-target}/release"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/roster-gw-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port: until something listens, at most 10 s
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2; exit 1
}

REG=$(port)
"$BIN/roster" serve --in-memory --listen "127.0.0.1:$REG" --no-http --log warn &
PIDS+=($!)
wait_port "$REG"

BACKENDS=()
for i in 1 2 3; do
    p=$(port)
    "$BIN/gateway-echo" --listen "127.0.0.1:$p" --id "b$i" --register echo --endpoints "127.0.0.1:$REG" >/dev/null &
    PIDS+=($!)
    BACKENDS+=("127.0.0.1:$p")
done
for b in "${BACKENDS[@]}"; do wait_port "${b#*:}"; done

GW=$(port)
"$BIN/roster" gateway --listen "127.0.0.1:$GW" --no-admin --endpoints "127.0.0.1:$REG" --log warn &
PIDS+=($!)
GW_PID=$!
wait_port "$GW"

NG=$(port)
mkdir -p "$WORK/nginx/logs"
{
    echo "worker_processes auto; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/logs/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http { access_log off; client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;"
    echo "  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;"
    echo "  upstream echo { keepalive 128;"
    for b in "${BACKENDS[@]}"; do echo "    server $b;"; done
    echo "  }"
    echo "  server { listen 127.0.0.1:$NG;"
    echo "    location /echo/ { proxy_pass http://echo/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
    echo "  }"
    echo "}"
} > "$WORK/nginx/nginx.conf"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
NGINX_PID=$!
wait_port "$NG"

# Both must answer from a backend before measuring.
for u in "http://127.0.0.1:$GW/echo/x" "http://127.0.0.1:$NG/echo/x"; do
    for _ in $(seq 1 50); do curl -sf "$u" >/dev/null && break; sleep 0.1; done
    curl -sf "$u" | grep -q '"id":"b' || { echo "$u does not reach a backend" >&2; exit 1; }
done

# CPU time (user + system, in clock ticks) of the given processes.
ticks() {
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}

# wrk --latency output → "rps p50_ms p99_ms cpu_us_per_request"; the CPU is
# that of the proxy processes given after the URL, read from /proc.
measure() {
    local url=$1 out rps p50 p99 t0 t1 reqs
    shift
    t0=$(ticks "$@")
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "$url")
    t1=$(ticks "$@")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        echo "wrk reported errors for $url:" >&2
        grep "Non-2xx\|Socket errors" <<<"$out" >&2
    fi
    echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')"
}
to_ms() { # wrk prints 512.00us, 1.20ms or 2.00s
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}

echo "== warm-up" >&2
wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$GW/echo/bench" >/dev/null
wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$NG/echo/bench" >/dev/null

printf "%-8s %-10s %12s %10s %10s %12s\n" round proxy "req/s" "p50 ms" "p99 ms" "CPU us/req"
RATIOS=()
for r in $(seq 1 "$ROUNDS"); do
    # nginx's workers are its children; its master is counted too.
    read -r g_rps g_p50 g_p99 g_cpu < <(measure "http://127.0.0.1:$GW/echo/bench" "$GW_PID")
    read -r n_rps n_p50 n_p99 n_cpu < <(measure "http://127.0.0.1:$NG/echo/bench" "$NGINX_PID" $(pgrep -P "$NGINX_PID"))
    printf "%-8s %-10s %12s %10s %10s %12s\n" "$r" gateway "$g_rps" "$g_p50" "$g_p99" "$g_cpu" "$r" nginx "$n_rps" "$n_p50" "$n_p99" "$n_cpu"
    read -r t_ratio p_ratio c_ratio < <(awk -v a="$g_rps" -v b="$n_rps" -v c="$g_p99" -v d="$n_p99" -v e="$g_cpu" -v f="$n_cpu" \
        'BEGIN { printf "%.4f %.4f %.4f\n", a/b, c/d, e/f }')
    printf "%-8s ratio      throughput %.2fx   p99 %.2fx   CPU per request %.2fx (gateway/nginx)\n" "$r" "$t_ratio" "$p_ratio" "$c_ratio"
    RATIOS+=("$t_ratio $p_ratio")
done
# The machine may be shared: the median over rounds says more than any one.
median() { # column: the median of that column of RATIOS
    printf '%s\n' "${RATIOS[@]}" | awk -v c="$1" '{ print $c }' | sort -g |
        awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); printf "%.2f", (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'
}
echo "median   ratio      throughput $(median 1)x   p99 $(median 2)x over $ROUNDS rounds (gateway/nginx)"
echo "(wrk -t2 -c$CONNS -d${DURATION}s, 3 gateway-echo backends, $(nproc) cores)"
