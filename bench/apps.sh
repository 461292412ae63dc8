#!/usr/bin/env bash
# Application figures, kernel TCP against the shim, in one run with the same pinning:
#   redis-benchmark -c 1 and -c 50 (GET/SET), wrk against nginx (2 workers) -c 1 and -c 50,
#   sockperf ping-pong (16 B).
# Server pinned to vCPU 0, client to vCPU 1 (override with SERVER_CPU / CLIENT_CPU).
# Each configuration runs RUNS times (default 3), tcp and shim interleaved; the table shows
# the median (min-max) and the shim/tcp ratio. Every process is bounded by `timeout`.
#
# usage: bench/apps.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
DUR=${DUR:-3}
REQS=${REQS:-50000}
if [ "${1:-}" = "--quick" ]; then RUNS=1; DUR=1; REQS=5000; fi
SCPU=${SERVER_CPU:-0}
CCPU=${CLIENT_CPU:-1}
cargo build --release -q -p rdmasock
LIB=$PWD/target/release/librdmasock.so
WORK=$(mktemp -d /tmp/rdmasock-apps.XXXXXX)
export RDMASOCK_DIR=$WORK/registry
mkdir -m 700 "$RDMASOCK_DIR"
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$WORK"' EXIT

for b in redis-server redis-benchmark nginx wrk sockperf; do
    command -v $b >/dev/null || { echo "missing $b (apt-get install redis-server redis-tools nginx-light wrk sockperf)"; exit 1; }
done

# run MODE CMD...: MODE tcp (no preload) or shim
env_for() { if [ "$1" = shim ]; then echo "LD_PRELOAD=$LIB"; else echo "LD_PRELOAD="; fi; }

wait_port() { # wait until 127.0.0.1:$1 accepts (bounded)
    for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done
    echo "port $1 never opened" >&2; return 1
}

declare -A RES
record() { RES["$1|$2"]+="$3 "; }

redis_round() { # mode
    local m=$1 port=$((40000 + RANDOM % 20000))
    env $(env_for $m) timeout 120 taskset -c $SCPU redis-server --port $port --save '' --appendonly no >/dev/null 2>&1 &
    local pid=$!; wait_port $port
    for c in 1 50; do
        local out
        out=$(env $(env_for $m) timeout 120 taskset -c $CCPU redis-benchmark -p $port -c $c -n $REQS -t get -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1)
        record "redis-benchmark GET -c $c (req/s)" $m "$(echo "$out" | sed -E 's/.*GET: ([0-9.]+) requests.*/\1/')"
    done
    kill $pid; wait $pid 2>/dev/null || true
}

nginx_round() {
    local m=$1 port=$((40000 + RANDOM % 20000)) d=$WORK/nginx
    mkdir -p $d/html; echo hello > $d/html/index.html
    cat > $d/nginx.conf <<CONF
user root; worker_processes 2; daemon off; master_process on; pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http { access_log off; sendfile on; keepalive_timeout 60; keepalive_requests 1000000;
  client_body_temp_path $d/ct; proxy_temp_path $d/pt; fastcgi_temp_path $d/ft; uwsgi_temp_path $d/ut; scgi_temp_path $d/st;
  server { listen 127.0.0.1:$port; root $d/html; } }
CONF
    env $(env_for $m) timeout 120 taskset -c $SCPU nginx -c $d/nginx.conf -p $d >/dev/null 2>&1 &
    local pid=$!; wait_port $port
    for c in 1 50; do
        local out
        out=$(env $(env_for $m) timeout 60 taskset -c $CCPU wrk -t1 -c$c -d${DUR}s http://127.0.0.1:$port/index.html 2>/dev/null | awk '/Requests\/sec/ {print $2}')
        record "wrk+nginx -c $c (req/s)" $m "$out"
    done
    kill $pid; wait $pid 2>/dev/null || true
}

sockperf_round() {
    local m=$1 port=$((40000 + RANDOM % 20000))
    env $(env_for $m) timeout 120 taskset -c $SCPU sockperf server -i 127.0.0.1 -p $port --tcp >/dev/null 2>&1 &
    local pid=$!; wait_port $port
    local out
    out=$(env $(env_for $m) timeout 60 taskset -c $CCPU sockperf ping-pong -i 127.0.0.1 -p $port --tcp -t $DUR -m 16 2>&1 | awk '/percentile 50.000/ {print $NF}')
    record "sockperf ping-pong 16 B p50 (us, lower is better)" $m "$out"
    kill $pid; wait $pid 2>/dev/null || true
}

echo "server on vCPU $SCPU, client on vCPU $CCPU; $RUNS runs each, tcp and shim interleaved"
for r in $(seq $RUNS); do
    for m in tcp shim; do redis_round $m; nginx_round $m; sockperf_round $m; done
done

stats() { # values -> "median (min-max)"
    echo "$@" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f (%.2f-%.2f)", m, a[1], a[NR]}'
}
median() { echo "$@" | tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) {print 0; exit} print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }

printf '\n%-52s %-28s %-28s %s\n' metric tcp shim shim-vs-tcp
for k in "redis-benchmark GET -c 1 (req/s)" "redis-benchmark GET -c 50 (req/s)" "wrk+nginx -c 1 (req/s)" "wrk+nginx -c 50 (req/s)" "sockperf ping-pong 16 B p50 (us, lower is better)"; do
    t=${RES["$k|tcp"]:-}; s=${RES["$k|shim"]:-}
    mt=$(median $t); ms=$(median $s)
    if [[ $k == *lower* ]]; then ratio=$(awk -v a=$mt -v b=$ms 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "n/a"}')
    else ratio=$(awk -v a=$mt -v b=$ms 'BEGIN{ if (a>0) printf "%.2fx", b/a; else print "n/a"}'); fi
    printf '%-52s %-28s %-28s %s\n' "$k" "$(stats $t)" "$(stats $s)" "$ratio"
done
