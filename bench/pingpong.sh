#!/usr/bin/env bash
# Ping-pong latency: kernel TCP vs the librdmasock shim, side by side.
#
# Builds release, then in one run measures 127.0.0.1 round trips for
#   tcp   - no preload at all (plain kernel TCP, LD_PRELOAD removed)
#   shim  - LD_PRELOAD=target/release/librdmasock.so on both server and client
# in two placements
#   cross-cpu - server on vCPU 0, client on vCPU 1 (taskset -c 0 / taskset -c 1)
#   same-cpu  - both on vCPU 0 (taskset -c 0 both)
# Every configuration is repeated --runs times, interleaved (tcp, shim, tcp, shim, ...)
# so that drift on the machine hits both modes alike. Prints a table of p50 (median of
# the runs, min-max) and writes every run to bench/results/pingpong-latest.json.
#
# If the shim is not built (or its build fails) the script says so and runs tcp only.
# Shim runs are checked against the shim's own log (RDMASOCK_LOG=info, see
# docs/contract.md): a run whose connection did not take path=shm is reported as a
# fallback and left out of the shim figures.
#
# usage: bench/pingpong.sh [--iters N] [--warmup N] [--size N] [--runs N] [--quick]
#                          [--tcp-only]
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/pingpong.sh [options]
  --iters N    timed round trips per run (default 50000)
  --warmup N   untimed round trips before them (default iters/10)
  --size N     message size in bytes (default 16)
  --runs N     repetitions of each configuration, interleaved (default 3)
  --quick      smoke test: 2000 round trips per run
  --tcp-only   do not build or run the shim
Environment: RDMASOCK_* settings (docs/contract.md) are passed to the shim runs;
CARGO_TARGET_DIR is honoured.
EOF
}

ITERS=50000 # a default run (tcp+shim, 2 placements x 3 runs) stays well under a minute
            # on a 2-vCPU VM, where cross-vCPU kernel TCP round trips take ~70 us
WARMUP=""
SIZE=16
RUNS=3
TCP_ONLY=0
TIMEOUT_S=60 # bound on every server and client process
READY_TIMEOUT_S=10

while (($#)); do
    case "$1" in
        --iters) ITERS=${2:?--iters needs a value}; shift 2 ;;
        --warmup) WARMUP=${2:?--warmup needs a value}; shift 2 ;;
        --size) SIZE=${2:?--size needs a value}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a value}; shift 2 ;;
        --quick) ITERS=2000; shift ;;
        --tcp-only) TCP_ONLY=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "pingpong.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in ITERS SIZE RUNS ${WARMUP:+WARMUP}; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "pingpong.sh: ${v,,} must be a number" >&2; exit 2; }
done
((ITERS > 0 && SIZE > 0 && RUNS > 0)) || { echo "pingpong.sh: iters, size and runs must be > 0" >&2; exit 2; }
WARMUP=${WARMUP:-$((ITERS / 10))}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET_DIR/release/pingpong"
LIB="$TARGET_DIR/release/librdmasock.so"
RESULTS_DIR="$ROOT/bench/results"
OUT_JSON="$RESULTS_DIR/pingpong-latest.json"

T_START=$(date +%s.%N)
TMP="$(mktemp -d "${TMPDIR:-/tmp}/pingpong.XXXXXX")"
SERVER_PID=""
cleanup() {
    # Only the server can be left behind (the client runs in the foreground).
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

json_str() { # JSON string literal for $1
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

# ---------------------------------------------------------------------------------------
echo "== build"
SHIM=1
SHIM_NOTE=""
if ((TCP_ONLY)); then
    SHIM=0
    SHIM_NOTE="skipped (--tcp-only)"
    cargo build --release -p rdmasock-bench
elif ! cargo build --release -p rdmasock -p rdmasock-bench; then
    SHIM=0
    SHIM_NOTE="not built: 'cargo build --release -p rdmasock' failed"
    echo "pingpong.sh: building the shim failed (errors above); building the benchmark alone" >&2
    cargo build --release -p rdmasock-bench
fi
# Only a library built just now is used, never a stale one from an earlier build.
if ((SHIM)) && [[ ! -f $LIB ]]; then
    SHIM=0
    SHIM_NOTE="missing: $LIB"
fi
if ((SHIM)); then
    MODES=(tcp shim)
else
    MODES=(tcp)
    echo "NOTE: shim $SHIM_NOTE -- running kernel TCP only"
fi

NCPU=$(nproc)
if ((NCPU >= 2)); then
    PLACEMENTS=(cross-cpu same-cpu)
else
    PLACEMENTS=(same-cpu)
    echo "NOTE: only $NCPU CPU available to this process; skipping the cross-cpu placement"
fi
placement_cpus() { # -> "SERVER_CPU CLIENT_CPU"
    case "$1" in
        cross-cpu) echo "0 1" ;;
        same-cpu) echo "0 0" ;;
    esac
}

# The shim logs one line per connect/accept decision at RDMASOCK_LOG=info; that is how a
# shim run proves it took the shared-memory path. A user's debug level is kept.
SHIM_LOG=info
[[ ${RDMASOCK_LOG:-} == debug ]] && SHIM_LOG=debug

# Builds SRV_CMD and CLI_CMD for a configuration; the client's port is the literal @PORT@
# until the server's READY line names it. LD_PRELOAD is applied to the benchmark binary
# only (by `env`, innermost), never to timeout or taskset.
build_cmds() {
    local mode=$1 placement=$2 scpu ccpu
    read -r scpu ccpu < <(placement_cpus "$placement")
    local -a envp
    if [[ $mode == shim ]]; then
        envp=(env "LD_PRELOAD=$LIB" "RDMASOCK_LOG=$SHIM_LOG")
    else
        envp=(env -u LD_PRELOAD)
    fi
    SRV_CMD=(timeout "$TIMEOUT_S" taskset -c "$scpu" "${envp[@]}" "$BIN" server 0)
    CLI_CMD=(timeout "$TIMEOUT_S" taskset -c "$ccpu" "${envp[@]}" "$BIN" client 127.0.0.1 @PORT@
        --size "$SIZE" --iters "$ITERS" --warmup "$WARMUP")
}

echo
echo "== configuration"
echo "host: $(uname -n), kernel $(uname -r), $NCPU CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo))"
echo "size $SIZE B, $ITERS timed + $WARMUP warmup round trips per run, $RUNS runs per configuration, interleaved"
echo "shim: $( ((SHIM)) && echo "$LIB" || echo "$SHIM_NOTE")"
env | grep '^RDMASOCK_' | sed 's/^/shim setting from the environment: /' || true
echo "commands (PORT comes from the server's 'READY PORT' line; the client starts after it):"
CMDS_JSON=""
for placement in "${PLACEMENTS[@]}"; do
    for mode in "${MODES[@]}"; do
        build_cmds "$mode" "$placement"
        srv="${SRV_CMD[*]}"
        cli="${CLI_CMD[*]/@PORT@/PORT}"
        printf '  %-4s %-9s server: %s\n' "$mode" "$placement" "$srv"
        printf '  %-4s %-9s client: %s\n' "$mode" "$placement" "$cli"
        CMDS_JSON+="${CMDS_JSON:+,}{\"mode\":\"$mode\",\"placement\":\"$placement\",\"server\":$(json_str "$srv"),\"client\":$(json_str "$cli")}"
    done
done

# ---------------------------------------------------------------------------------------
# One measurement. Appends one JSON object (a line) to $TMP/runs.jsonl.
RUNS_FILE="$TMP/runs.jsonl"
: >"$RUNS_FILE"
run_one() {
    local mode=$1 placement=$2 run=$3 scpu ccpu
    read -r scpu ccpu < <(placement_cpus "$placement")
    build_cmds "$mode" "$placement"
    local tag="{\"placement\":\"$placement\",\"server_cpu\":$scpu,\"client_cpu\":$ccpu,\"mode\":\"$mode\",\"run\":$run"
    local label
    label=$(printf '%-9s %-4s run %d' "$placement" "$mode" "$run")

    # The server's stdout goes through a FIFO so we can block on its READY line (no
    # sleeps); EOF on it (the server died) or READY_TIMEOUT_S ends the wait.
    local fifo="$TMP/ready" rfd ready="" port=""
    rm -f "$fifo" "$TMP/server.err" "$TMP/client.err" "$TMP/client.out"
    mkfifo "$fifo"
    "${SRV_CMD[@]}" >"$fifo" 2>"$TMP/server.err" &
    SERVER_PID=$!
    exec {rfd}<"$fifo"
    read -r -t "$READY_TIMEOUT_S" -u "$rfd" ready port || true

    local crc=0 src=0 err=""
    if [[ $ready != READY || ! $port =~ ^[0-9]+$ ]]; then
        err="server did not print READY"
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    else
        "${CLI_CMD[@]/@PORT@/$port}" >"$TMP/client.out" 2>"$TMP/client.err" || crc=$?
        # On success the client's close ends the server; on failure it may still sit in
        # accept() or read(), so stop it rather than wait out its timeout.
        ((crc == 0)) || kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" || src=$?
        if ((crc == 124)); then
            err="client timed out after ${TIMEOUT_S}s"
        elif ((crc != 0)); then
            err="client exited $crc"
        elif ((src != 0)); then
            err="server exited $src"
        fi
    fi
    exec {rfd}<&-
    SERVER_PID=""

    if [[ -n $err ]]; then
        echo "  $label: FAILED: $err"
        for f in server.err client.err client.out; do
            [[ -s $TMP/$f ]] && sed "s/^/    $f: /" "$TMP/$f" | tail -n 5
        done
        echo "$tag,\"ok\":false,\"error\":$(json_str "$err")}" >>"$RUNS_FILE"
        return
    fi

    # path: "kernel" for tcp; for the shim, what its connect/accept log lines say.
    local path=kernel reason=""
    if [[ $mode == shim ]]; then
        local cline aline
        cline=$(grep -m1 -E 'rdmasock\[[0-9]+\]: connect fd=.* path=' "$TMP/client.err" || true)
        aline=$(grep -m1 -E 'rdmasock\[[0-9]+\]: accept fd=.* path=' "$TMP/server.err" || true)
        if [[ $cline == *path=shm* && $aline == *path=shm* ]]; then
            path=shm
        elif [[ -z $cline || -z $aline ]]; then
            path=unknown
            reason="no connect/accept log line from the shim"
        else
            path=tcp
            reason=$(sed -n 's/.* reason=\([^ ]*\).*/\1/p' <<<"$cline $aline" | head -n1)
            reason=${reason:-unspecified}
        fi
    fi

    local result human
    result=$(grep -m1 '^{' "$TMP/client.out")
    human=$(grep -v '^{' "$TMP/client.out" | head -n1)
    echo "  $label: ${human#pingpong }${reason:+  [path=$path: $reason]}"
    echo "$tag,\"ok\":true,\"path\":\"$path\",\"fallback_reason\":$(json_str "$reason"),${result#\{}" >>"$RUNS_FILE"
}

echo
echo "== runs"
for ((run = 1; run <= RUNS; run++)); do
    for placement in "${PLACEMENTS[@]}"; do
        for mode in "${MODES[@]}"; do
            run_one "$mode" "$placement" "$run"
        done
    done
done

# ---------------------------------------------------------------------------------------
# Summary: p50 per (placement, mode) over the successful runs - median, min, max. Shim
# runs count only when both sides logged path=shm.
SUMMARY_JSON="$TMP/summary.json"
echo
echo "== p50 round trip, microseconds: median of runs (min-max)"
awk -v placements="${PLACEMENTS[*]}" -v shim="$SHIM" -v shim_note="$SHIM_NOTE" \
    -v summary_json="$SUMMARY_JSON" '
function field(line, key,    s) {        # value of "key": in one flat JSON line
    if (!match(line, "\"" key "\":(\"[^\"]*\"|[^,}]*)")) return ""
    s = substr(line, RSTART + length(key) + 3, RLENGTH - length(key) - 3)
    gsub(/"/, "", s)
    return s
}
function stats(list,    a, n, i, j, t) {  # list "v1 v2 ..." -> sets MED MIN MAX, returns n
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) {            # insertion sort (portable awk has no sort)
        t = a[i] + 0
        for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]
        a[j + 1] = t
    }
    if (n == 0) return 0
    MED = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    MIN = a[1]; MAX = a[n]
    return n
}
{
    key = field($0, "placement") SUBSEP field($0, "mode")
    cpus[field($0, "placement")] = "vCPU " field($0, "server_cpu") "/" field($0, "client_cpu")
    total[key]++
    if (field($0, "ok") != "true") { failed[key]++; next }
    if (field($0, "mode") == "shim" && field($0, "path") != "shm") {
        fallback[key]++; why[key] = field($0, "fallback_reason"); next
    }
    vals[key] = vals[key] " " field($0, "p50_us")
}
END {
    printf "%-10s %-14s %-28s %-32s %s\n", "placement", "server/client", "tcp p50", "shim p50", "tcp/shim"
    np = split(placements, pl, " ")
    out = ""
    for (p = 1; p <= np; p++) {
        P = pl[p]
        tn = stats(vals[P SUBSEP "tcp"]); tmed = MED
        tcell = tn ? sprintf("%.2f (%.2f-%.2f) n=%d", MED, MIN, MAX, tn) : "n/a (all runs failed)"
        tjs = tn ? sprintf("{\"median\":%.3f,\"min\":%.3f,\"max\":%.3f,\"n\":%d}", MED, MIN, MAX, tn) : "null"
        sn = 0; sjs = "null"; ratio = "-"; rjs = "null"
        if (!shim) {
            scell = "n/a (shim " (shim_note ~ /^skipped/ ? "skipped" : "not built") ")"
        } else {
            k = P SUBSEP "shim"
            sn = stats(vals[k]); smed = MED
            if (sn) {
                scell = sprintf("%.2f (%.2f-%.2f) n=%d", MED, MIN, MAX, sn)
                sjs = sprintf("{\"median\":%.3f,\"min\":%.3f,\"max\":%.3f,\"n\":%d}", MED, MIN, MAX, sn)
            } else if (fallback[k]) {
                scell = "n/a (fell back: " why[k] ")"
            } else {
                scell = "n/a (all runs failed)"
            }
            if (fallback[k] && sn) scell = scell " +" fallback[k] " fallback"
            if (tn && sn && smed > 0) { ratio = sprintf("%.2fx", tmed / smed); rjs = sprintf("%.3f", tmed / smed) }
        }
        printf "%-10s %-14s %-28s %-32s %s\n", P, cpus[P], tcell, scell, ratio
        out = out (out == "" ? "" : ",") sprintf("{\"placement\":\"%s\",\"tcp_p50_us\":%s,\"shim_p50_us\":%s,\"ratio_tcp_over_shim\":%s,\"tcp_failed_runs\":%d,\"shim_failed_runs\":%d,\"shim_fallback_runs\":%d}", \
            P, tjs, sjs, rjs, failed[P SUBSEP "tcp"], failed[P SUBSEP "shim"], fallback[P SUBSEP "shim"])
    }
    print "[" out "]" > summary_json
}' "$RUNS_FILE"

T_END=$(date +%s.%N)
WALL=$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.1f", b - a }')

mkdir -p "$RESULTS_DIR"
{
    printf '{"bench":"pingpong","generated":%s,' "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")"
    printf '"host":%s,"kernel":%s,"cpus":%d,' "$(json_str "$(uname -n)")" "$(json_str "$(uname -r)")" "$NCPU"
    printf '"git":%s,' "$(json_str "$(git rev-parse --short HEAD 2>/dev/null || echo none)")"
    printf '"size":%d,"iters":%d,"warmup":%d,"runs_per_config":%d,"timeout_s":%d,' \
        "$SIZE" "$ITERS" "$WARMUP" "$RUNS" "$TIMEOUT_S"
    printf '"shim":{"used":%s,"lib":%s,"note":%s},' "$( ((SHIM)) && echo true || echo false)" \
        "$(json_str "$LIB")" "$(json_str "$SHIM_NOTE")"
    printf '"wall_s":%s,"commands":[%s],' "$WALL" "$CMDS_JSON"
    printf '"summary":%s,' "$(cat "$SUMMARY_JSON")"
    printf '"runs":['
    paste -sd, "$RUNS_FILE"
    printf ']}\n'
} >"$OUT_JSON.tmp"
mv "$OUT_JSON.tmp" "$OUT_JSON"

echo
echo "wall time ${WALL}s; results: ${OUT_JSON#"$ROOT"/}"
# Fail the script (after writing results) if any run failed.
! grep -q '"ok":false' "$RUNS_FILE" || { echo "pingpong.sh: some runs failed (see above)" >&2; exit 1; }
