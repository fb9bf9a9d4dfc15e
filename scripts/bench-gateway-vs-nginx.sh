#!/usr/bin/env bash
# `roster gateway` against nginx on the same backends, in one run, each pair
# interleaved round by round; prints requests/s, p50/p99 and CPU per
# request for both and the gateway/nginx ratios, then medians over rounds.
#
# Setups (--setups, comma-separated; default all that can run):
#   echo       plain HTTP/1.1 (wrk) to three gateway-echo backends; nginx
#              with an upstream block and keepalive.
#   nginx      plain HTTP/1.1 (wrk) to three nginx `server` blocks inside
#              the peer nginx process itself (nginx's own proxying is then
#              at its cheapest); the gateway finds them in the registry.
#   grpc       gRPC unary calls (hello.Hello/Say) over h2c (h2load) through
#              the gateway and through nginx grpc_pass, to the same three
#              hello-server instances.
#   hardening  the fast path of an older gateway (--before BIN, a `roster`
#              binary) against this one, same echo backends (ratio
#              after/before).
#
#   scripts/bench-gateway-vs-nginx.sh [--duration SECS] [--conns N] [--rounds N]
#       [--setups LIST] [--before BIN] [--grpc-requests N] [--grpc-streams N]
#
# Loopback only; stops only the processes it started, by PID; every load
# run is bounded (wrk -d, h2load -n, both under `timeout`).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10
CONNS=64
ROUNDS=3
SETUPS=""
BEFORE=""
GRPC_REQUESTS=100000
GRPC_STREAMS=4
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION=$2; shift 2 ;;
        --conns) CONNS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --setups) SETUPS=$2; shift 2 ;;
        --before) BEFORE=$2; shift 2 ;;
        --grpc-requests) GRPC_REQUESTS=$2; shift 2 ;;
        --grpc-streams) GRPC_STREAMS=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is not installed (Debian: apt-get install nginx)" >&2; exit 1; }
if [ -z "$SETUPS" ]; then
    SETUPS=echo,nginx
    if command -v h2load >/dev/null; then SETUPS+=,grpc; else echo "h2load not installed (Debian: nghttp2-client): no grpc setup" >&2; fi
    [ -n "$BEFORE" ] && SETUPS+=,hardening
fi
want() { [[ ",$SETUPS," == *",$1,"* ]]; }
if want grpc; then command -v h2load >/dev/null || { echo "h2load is not installed (Debian: apt-get install nghttp2-client)" >&2; exit 1; }; fi
if want hardening; then [ -x "$BEFORE" ] || { echo "--setups hardening needs --before <roster binary>" >&2; exit 2; }; fi

echo "== building (release)" >&2
cargo build --release -q -p roster-cli -p roster-gateway -p hello
BIN="${CARGO_TARGET_DIR:-target}/release"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/roster-gw-bench.XXXXXX")
PIDS=()
cleanup() {
    # Last started first: the registry goes after everything that uses it.
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
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

# Three gateway-echo backends (service echo).
BACKENDS=()
for i in 1 2 3; do
    p=$(port)
    "$BIN/gateway-echo" --listen "127.0.0.1:$p" --id "b$i" --register echo --endpoints "127.0.0.1:$REG" >/dev/null &
    PIDS+=($!)
    BACKENDS+=("127.0.0.1:$p")
done
for b in "${BACKENDS[@]}"; do wait_port "${b#*:}"; done

# Three nginx server blocks as backends (service nx), registered by `roster register`.
NX=()
for i in 1 2 3; do NX+=("127.0.0.1:$(port)"); done
for i in 0 1 2; do
    "$BIN/roster" register nx "${NX[$i]}" --id "n$((i + 1))" --endpoints "127.0.0.1:$REG" --log warn &
    PIDS+=($!)
done

# Three hello instances (service hello), registered by themselves.
HELLO=()
if want grpc; then
    for i in 1 2 3; do
        p=$(port)
        "$BIN/hello-server" --port "$p" --id "h$i" --endpoints "127.0.0.1:$REG" &
        PIDS+=($!)
        HELLO+=("127.0.0.1:$p")
    done
    for h in "${HELLO[@]}"; do wait_port "${h#*:}"; done
fi

printf '[[route]]\nservice = "hello"\ngrpc = ["hello.Hello"]\n' > "$WORK/gateway.toml"
GW=$(port)
"$BIN/roster" gateway --listen "127.0.0.1:$GW" --no-admin --endpoints "127.0.0.1:$REG" --config "$WORK/gateway.toml" --log warn &
PIDS+=($!)
GW_PID=$!
wait_port "$GW"
if want hardening; then
    GWB=$(port)
    "$BEFORE" gateway --listen "127.0.0.1:$GWB" --no-admin --endpoints "127.0.0.1:$REG" --log warn &
    PIDS+=($!)
    GWB_PID=$!
    wait_port "$GWB"
fi

NG=$(port)
NGG=$(port)
mkdir -p "$WORK/nginx/logs"
{
    echo "worker_processes auto; pid $WORK/nginx/nginx.pid; error_log $WORK/nginx/logs/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http { access_log off; client_body_temp_path $WORK/nginx/body; proxy_temp_path $WORK/nginx/proxy;"
    echo "  fastcgi_temp_path $WORK/nginx/fcgi; uwsgi_temp_path $WORK/nginx/uwsgi; scgi_temp_path $WORK/nginx/scgi;"
    echo "  upstream echo { keepalive 128;"
    for b in "${BACKENDS[@]}"; do echo "    server $b;"; done
    echo "  }"
    echo "  upstream nx { keepalive 128;"
    for b in "${NX[@]}"; do echo "    server $b;"; done
    echo "  }"
    if want grpc; then
        echo "  upstream hello { keepalive 128;"
        for h in "${HELLO[@]}"; do echo "    server $h;"; done
        echo "  }"
        echo "  server { listen 127.0.0.1:$NGG http2;"
        echo "    location / { grpc_pass grpc://hello; }"
        echo "  }"
    fi
    # The backends of the nginx setup: a fixed JSON answer about as long as gateway-echo's.
    for i in 0 1 2; do
        echo "  server { listen ${NX[$i]}; default_type application/json;"
        echo "    location / { return 200 '{\"id\":\"n$((i + 1))\",\"method\":\"GET\",\"path\":\"/bench\",\"x_forwarded_for\":\"127.0.0.1\"}\n'; }"
        echo "  }"
    done
    echo "  server { listen 127.0.0.1:$NG;"
    echo "    location /echo/ { proxy_pass http://echo/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
    echo "    location /nx/ { proxy_pass http://nx/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
    echo "  }"
    echo "}"
} > "$WORK/nginx/nginx.conf"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
NGINX_PID=$!
wait_port "$NG"

# Both must answer from a backend before measuring.
check_http() { # url pattern
    for _ in $(seq 1 50); do curl -sf "$1" >/dev/null && break; sleep 0.1; done
    curl -sf "$1" | grep -q "$2" || { echo "$1 does not reach a backend" >&2; exit 1; }
}
for u in "http://127.0.0.1:$GW/echo/x" "http://127.0.0.1:$NG/echo/x"; do check_http "$u" '"id":"b'; done
want nginx && for u in "http://127.0.0.1:$GW/nx/x" "http://127.0.0.1:$NG/nx/x"; do check_http "$u" '"id":"n'; done
want hardening && check_http "http://127.0.0.1:$GWB/echo/x" '"id":"b'
if want grpc; then
    # hello.SayRequest { name: "bench" }, gRPC-framed: no compression, length 7.
    printf '\x00\x00\x00\x00\x07\x0a\x05bench' > "$WORK/say.bin"
    for p in "$GW" "$NGG"; do
        ok=""
        for _ in $(seq 1 50); do
            if curl -s --http2-prior-knowledge -o /dev/null -D "$WORK/grpc-check" -H 'content-type: application/grpc' -H 'te: trailers' \
                --data-binary @"$WORK/say.bin" "http://127.0.0.1:$p/hello.Hello/Say" && grep -qi '^grpc-status: 0' "$WORK/grpc-check"; then
                ok=1; break
            fi
            sleep 0.1
        done
        [ -n "$ok" ] || { echo "gRPC through 127.0.0.1:$p does not reach hello:" >&2; cat "$WORK/grpc-check" >&2; exit 1; }
    done
fi

# CPU time (user + system, in clock ticks) of the given processes.
ticks() {
    local t=0 p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
cpu_per_request() { # ticks requests
    awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN { printf "%.1f", (n > 0) ? t / hz * 1e6 / n : 0 }'
}
to_ms() { # wrk prints 512.00us, 1.20ms or 2.00s
    awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}

# wrk --latency → "rps p50_ms p99_ms cpu_us_per_request" for the proxy
# processes given after the URL.
measure_http() {
    local url=$1 out rps p50 p99 t0 t1 reqs
    shift
    t0=$(ticks "$@")
    out=$(timeout $((DURATION + 30)) wrk -t2 -c"$CONNS" -d"${DURATION}s" --timeout 5s --latency "$url")
    t1=$(ticks "$@")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
        echo "wrk reported errors for $url:" >&2
        grep "Non-2xx\|Socket errors" <<<"$out" >&2
    fi
    echo "$rps $(to_ms "$p50") $(to_ms "$p99") $(cpu_per_request $((t1 - t0)) "$reqs")"
}

# h2load, GRPC_REQUESTS unary calls on CONNS connections with GRPC_STREAMS
# streams each → "rps p50_ms p99_ms cpu_us_per_request"; percentiles from
# h2load's per-request log.
measure_grpc() {
    local url=$1 out rps t0 t1 log=$WORK/h2load.log done_n
    shift
    t0=$(ticks "$@")
    out=$(timeout 300 h2load -n "$GRPC_REQUESTS" -c "$CONNS" -m "$GRPC_STREAMS" -t 2 \
        -H 'content-type: application/grpc' -H 'te: trailers' -d "$WORK/say.bin" --log-file="$log" "$url")
    t1=$(ticks "$@")
    rps=$(awk '/^finished in/ {gsub(",", "", $4); print $4}' <<<"$out")
    done_n=$(awk '/^requests:/ {print $8}' <<<"$out")
    if ! grep -q "^status codes: $GRPC_REQUESTS 2xx" <<<"$out" || [ "$done_n" != "$GRPC_REQUESTS" ]; then
        echo "h2load reported failures for $url:" >&2
        grep "^requests:\|^status codes:" <<<"$out" >&2
    fi
    # Columns: start (us since epoch), status, microseconds to the end of the response.
    read -r p50 p99 < <(awk '{ print $3 }' "$log" | sort -n | awk '{ v[NR] = $1 } END {
        a = int(NR * 0.50); if (a < 1) a = 1; b = int(NR * 0.99); if (b < 1) b = 1
        printf "%.3f %.3f\n", v[a] / 1000, v[b] / 1000 }')
    rm -f "$log"
    echo "$rps $p50 $p99 $(cpu_per_request $((t1 - t0)) "$GRPC_REQUESTS")"
}

# One pair, interleaved over ROUNDS: kind (http|grpc), label, then the
# peer's label; URLs and PIDs come from the globals set by the caller.
SUMMARY=()
pair() {
    local title=$1 kind=$2 a_name=$3 a_url=$4 b_name=$5 b_url=$6 r ratios=()
    shift 6
    local a_pids=$1 b_pids=$2
    echo
    echo "== $title"
    printf "%-6s %-10s %12s %10s %10s %12s\n" round proxy "req/s" "p50 ms" "p99 ms" "CPU us/req"
    for r in $(seq 1 "$ROUNDS"); do
        # The order alternates, so neither side always runs on a warmer machine.
        local first=a
        [ $((r % 2)) -eq 0 ] && first=b
        local a_out b_out
        if [ $first = a ]; then
            # shellcheck disable=SC2086
            a_out=$(measure_$kind "$a_url" $a_pids); b_out=$(measure_$kind "$b_url" $b_pids)
        else
            # shellcheck disable=SC2086
            b_out=$(measure_$kind "$b_url" $b_pids); a_out=$(measure_$kind "$a_url" $a_pids)
        fi
        read -r a_rps a_p50 a_p99 a_cpu <<<"$a_out"
        read -r b_rps b_p50 b_p99 b_cpu <<<"$b_out"
        printf "%-6s %-10s %12s %10s %10s %12s\n" "$r" "$a_name" "$a_rps" "$a_p50" "$a_p99" "$a_cpu" "$r" "$b_name" "$b_rps" "$b_p50" "$b_p99" "$b_cpu"
        read -r t_ratio p_ratio c_ratio < <(awk -v a="$a_rps" -v b="$b_rps" -v c="$a_p99" -v d="$b_p99" -v e="$a_cpu" -v f="$b_cpu" \
            'BEGIN { printf "%.4f %.4f %.4f\n", a/b, (d > 0) ? c/d : 0, (f > 0) ? e/f : 0 }')
        printf "%-6s ratio      throughput %.2fx   p99 %.2fx   CPU per request %.2fx (%s/%s)\n" "$r" "$t_ratio" "$p_ratio" "$c_ratio" "$a_name" "$b_name"
        ratios+=("$t_ratio $p_ratio $c_ratio")
    done
    median() { # column of ratios
        printf '%s\n' "${ratios[@]}" | awk -v c="$1" '{ print $c }' | sort -g |
            awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); printf "%.2f", (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'
    }
    local line
    line=$(printf "%-28s throughput %sx   p99 %sx   CPU/req %sx   (%s/%s, median of %s rounds)" "$title" "$(median 1)" "$(median 2)" "$(median 3)" "$a_name" "$b_name" "$ROUNDS")
    echo "median $line"
    SUMMARY+=("$line")
}

echo "== warm-up" >&2
for u in "http://127.0.0.1:$GW/echo/bench" "http://127.0.0.1:$NG/echo/bench"; do wrk -t2 -c"$CONNS" -d2s "$u" >/dev/null; done
want nginx && for u in "http://127.0.0.1:$GW/nx/bench" "http://127.0.0.1:$NG/nx/bench"; do wrk -t2 -c"$CONNS" -d2s "$u" >/dev/null; done
want hardening && wrk -t2 -c"$CONNS" -d2s "http://127.0.0.1:$GWB/echo/bench" >/dev/null

NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
want echo && pair "HTTP/1.1, gateway-echo" http gateway "http://127.0.0.1:$GW/echo/bench" nginx "http://127.0.0.1:$NG/echo/bench" "$GW_PID" "$NGINX_PIDS"
# nginx's CPU here includes its three backend server blocks; the gateway's does not.
want nginx && pair "HTTP/1.1, nginx backends" http gateway "http://127.0.0.1:$GW/nx/bench" nginx "http://127.0.0.1:$NG/nx/bench" "$GW_PID" "$NGINX_PIDS"
want grpc && pair "gRPC unary over h2c" grpc gateway "http://127.0.0.1:$GW/hello.Hello/Say" nginx "http://127.0.0.1:$NGG/hello.Hello/Say" "$GW_PID" "$NGINX_PIDS"
want hardening && pair "fast path, hardening cost" http after "http://127.0.0.1:$GW/echo/bench" before "http://127.0.0.1:$GWB/echo/bench" "$GW_PID" "$GWB_PID"

echo
echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
echo "(wrk -t2 -c$CONNS -d${DURATION}s; h2load -n$GRPC_REQUESTS -c$CONNS -m$GRPC_STREAMS -t2; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg))"
