#!/usr/bin/env bash
# Proxy benchmark: wrk against the same fast upstream, directly, through
# transom, through nginx, and through hyper-proxy (the least a proxy on
# tokio and hyper costs: bench/src/hyper_proxy.rs). See bench/README.md.
#
# The proxies are started once and stay up; the targets are then measured
# in turn, ROUNDS times over, so that transom and nginx run seconds apart and
# the machine's drift hits both alike. The report shows per-round medians and
# the median of the per-round transom/nginx ratios.
#
# Environment (all optional):
#   DURATION=5s         length of each measured wrk run
#   WARMUP=2s           length of the warm-up run before each measured run
#   ROUNDS=3            how many times every target x connection count is measured
#   CONNS="1 16 64"     connection counts to measure
#   TARGETS="direct transom nginx hyper"   also the order within a round
#   WRK_THREADS=1       wrk threads (capped at the connection count)
#   UPSTREAM_THREADS=1  bench-upstream tokio threads
#   BODY_SIZE=64        upstream response body size in bytes
#   PROXY_CPU=0         CPU the proxies under test are pinned to
#   LOAD_CPU=1          CPU wrk and the upstream are pinned to
#   UPSTREAM_PORT, TRANSOM_PORT, NGINX_PORT, HYPER_PORT   fixed ports (default: free ports)
#   STARTUP_TIMEOUT=15  seconds to wait for a server to answer
#   TRANSOM_ARGS="--threads 1"  extra arguments appended to `transom run --config FILE`
#                       (one worker thread, like the one nginx worker)
#   SKIP_BUILD=1        do not run cargo build
#   KEEP_TMP=1          keep the temp dir (configs, logs, raw wrk output, runs.txt)
set -euo pipefail

DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-"1 16 64"}
TARGETS=${TARGETS:-"direct transom nginx hyper"}
WRK_THREADS=${WRK_THREADS:-1}
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
BODY_SIZE=${BODY_SIZE:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-15}
TRANSOM_ARGS=${TRANSOM_ARGS:---threads 1}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}

HOST=127.0.0.1

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- locations

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
[[ -f "$ROOT/Cargo.toml" && -d "$ROOT/bench" ]] ||
    die "cannot find the workspace root (expected $ROOT/Cargo.toml)"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
TRANSOM_BIN="$TARGET_DIR/release/transom"
UPSTREAM_BIN="$TARGET_DIR/release/bench-upstream"
HYPER_BIN="$TARGET_DIR/release/hyper-proxy"

# ------------------------------------------------------------ sanity checks

for c in $CONNS; do
    [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "CONNS must be positive integers, got '$c'"
done
for t in $TARGETS; do
    case "$t" in direct | transom | nginx | hyper) ;; *) die "unknown target '$t' in TARGETS" ;; esac
done
[[ "$WRK_THREADS" =~ ^[1-9][0-9]*$ ]] || die "WRK_THREADS must be a positive integer"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$STARTUP_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "STARTUP_TIMEOUT must be a positive integer"

[[ -r /proc/self/stat ]] || die "/proc is required (Linux only)"

# ------------------------------------------------------------- dependencies

have() { command -v "$1" >/dev/null 2>&1; }

# nginx lives in /usr/sbin, which is not on every PATH.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

missing=()
have wrk || missing+=(wrk)
have nginx || missing+=(nginx)
have curl || missing+=(curl)
if ((${#missing[@]})); then
    log "installing missing tools: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        die "missing ${missing[*]} and not root; install them (apt-get install -y ${missing[*]})"
    fi
    have apt-get || die "missing ${missing[*]} and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update && apt-get install -y "${missing[@]}"
    for t in "${missing[@]}"; do have "$t" || die "$t still not found after installing"; done
fi

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# ---------------------------------------------------------------- pinning

PIN_PROXY=()
PIN_LOAD=()
if have taskset && taskset -c "$PROXY_CPU" true 2>/dev/null && taskset -c "$LOAD_CPU" true 2>/dev/null; then
    if [[ "$PROXY_CPU" == "$LOAD_CPU" ]]; then
        warn "PROXY_CPU and LOAD_CPU are both $PROXY_CPU; results will be noisy"
    fi
    PIN_PROXY=(taskset -c "$PROXY_CPU")
    PIN_LOAD=(taskset -c "$LOAD_CPU")
    PINNING="proxy on CPU $PROXY_CPU, wrk + upstream on CPU $LOAD_CPU"
else
    warn "cannot pin to CPUs $PROXY_CPU and $LOAD_CPU (taskset missing or CPUs unavailable); running unpinned"
    PINNING="none"
fi

# ------------------------------------------------------------------- build

TRANSOM_BUILD_ERROR=""
if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building (cargo build --release -p transom -p transom-bench)"
    if ! (cd "$ROOT" && cargo build --release -p transom -p transom-bench); then
        # Keep going with what can still be measured: the upstream alone.
        TRANSOM_BUILD_ERROR="cargo build --release -p transom failed"
        warn "$TRANSOM_BUILD_ERROR; building bench-upstream alone"
        (cd "$ROOT" && cargo build --release -p transom-bench) ||
            die "cargo build --release -p transom-bench failed"
    fi
fi
[[ -x "$UPSTREAM_BIN" ]] || die "$UPSTREAM_BIN not found (build it or unset SKIP_BUILD)"
if [[ -z "$TRANSOM_BUILD_ERROR" && ! -x "$TRANSOM_BIN" ]]; then
    TRANSOM_BUILD_ERROR="$TRANSOM_BIN not found"
fi

# ------------------------------------------------------- temp dir & cleanup

TMP=$(mktemp -d "${TMPDIR:-/tmp}/transom-bench.XXXXXX")
PIDS=() # every server process this script started

stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    { wait "$pid"; } 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ "$KEEP_TMP" == 1 ]]; then
        echo "temp dir kept: $TMP" >&2
    else
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------- ports

free_ports() { # print N free TCP ports on 127.0.0.1, one per line
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
EOF
}

if have python3 && ports=$(free_ports 4 2>/dev/null); then
    read -r -d '' p1 p2 p3 p4 <<<"$ports" || true
else
    p1=18081 p2=18082 p3=18083 p4=18084
fi
UPSTREAM_PORT=${UPSTREAM_PORT:-$p1}
TRANSOM_PORT=${TRANSOM_PORT:-$p2}
NGINX_PORT=${NGINX_PORT:-$p3}
HYPER_PORT=${HYPER_PORT:-$p4}

# ------------------------------------------------------------ /proc helpers

# Fields of /proc/PID/stat after "(comm) ": index 0 is field 3 (state), so
# field 4 (ppid) is index 1, field 14 (utime) index 11, field 15 (stime) 12.
stat_fields() {
    local s
    s=$(<"/proc/$1/stat") || return 1
    printf '%s\n' "${s##*) }"
}

children_of() { # direct children of PID
    local parent=$1 p line
    local -a f
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        line=$(stat_fields "$p" 2>/dev/null) || continue
        read -r -a f <<<"$line"
        if [[ "${f[1]:-}" == "$parent" ]]; then echo "$p"; fi
    done
    return 0
}

cpu_ticks() { # "UTIME STIME" (clock ticks), each summed over the given PIDs
    local user=0 sys=0 pid line
    local -a f
    for pid in "$@"; do
        line=$(stat_fields "$pid" 2>/dev/null) || continue
        read -r -a f <<<"$line"
        user=$((user + f[11]))
        sys=$((sys + f[12]))
    done
    echo "$user $sys"
}

rss_kib() { # sum of VmRSS (KiB) over the given PIDs
    local total=0 pid kb
    for pid in "$@"; do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

alive() { kill -0 "$1" 2>/dev/null; }

# wait_http NAME URL PID LOGFILE: wait until URL answers with an HTTP
# status, failing early if PID exits and after STARTUP_TIMEOUT seconds.
wait_http() {
    local name=$1 url=$2 pid=$3 logfile=$4 code status
    local deadline=$((SECONDS + STARTUP_TIMEOUT))
    while :; do
        if ! alive "$pid"; then
            status=0
            { wait "$pid"; } 2>/dev/null || status=$?
            echo "error: $name exited (status $status) before answering on $url" >&2
            dump_log "$name" "$logfile"
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)
        if [[ -n "$code" && "$code" != 000 ]]; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "error: $name did not answer on $url within ${STARTUP_TIMEOUT}s" >&2
            dump_log "$name" "$logfile"
            return 1
        fi
        sleep 0.1
    done
}

dump_log() {
    local name=$1 logfile=$2
    if [[ -s "$logfile" ]]; then
        echo "---- $name log ($logfile, last 50 lines) ----" >&2
        tail -n 50 -- "$logfile" >&2
        echo "---- end of $name log ----" >&2
    else
        echo "($name log $logfile is empty)" >&2
    fi
}

# check_response NAME URL: one request must come back 200 with the
# upstream's body, or the proxy is not proxying and the numbers mean nothing.
check_response() {
    local name=$1 url=$2 out code size
    out=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' --max-time 5 "$url" 2>/dev/null || true)
    read -r code size <<<"${out:-000 0}"
    if [[ "$code" != 200 || "$size" != "$BODY_SIZE" ]]; then
        echo "error: $name: GET $url gave status $code with $size body bytes (want 200 with $BODY_SIZE)" >&2
        return 1
    fi
}

# ------------------------------------------------------------- wrk helpers

to_us() { # wrk time ("103.00us", "1.25ms", "2.00s", "1.00m") -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000
        else if (u == "m") f = 60000000; else if (u == "h") f = 3600000000; else f = -1
        if (f < 0) print "nan"; else printf "%.1f\n", n * f
    }'
}

# run_wrk URL CONNS DURATION OUTFILE
run_wrk() {
    local url=$1 conns=$2 dur=$3 out=$4 threads=$WRK_THREADS
    ((threads > conns)) && threads=$conns
    "${PIN_LOAD[@]}" wrk -t"$threads" -c"$conns" -d"$dur" --latency "$url" >"$out" 2>&1
}

# parse_wrk OUTFILE -> "rps requests p50_us p99_us errors"
parse_wrk() {
    local file=$1 rps reqs p50 p99 errs
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$file")
    reqs=$(awk '/ requests in / { print $1 }' "$file")
    p50=$(awk '/Latency Distribution/ { d = 1; next } d && $1 == "50%" { print $2; exit }' "$file")
    p99=$(awk '/Latency Distribution/ { d = 1; next } d && $1 == "99%" { print $2; exit }' "$file")
    errs=$(awk '
        /Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
        /Non-2xx or 3xx responses:/ { e += $NF }
        END { print e + 0 }' "$file")
    [[ -n "$rps" && -n "$reqs" && -n "$p50" && -n "$p99" ]] || return 1
    echo "$rps $reqs $(to_us "$p50") $(to_us "$p99") $errs"
}

# ---------------------------------------------------------------- targets

# Per target: T_URL is what wrk drives, T_PID the process whose CPU and RSS
# count (none for direct), T_LOG its log. A target without a URL is not
# measured (any more): it failed to start or died; T_NOTE says which.
declare -A T_URL T_PID T_LOG T_NOTE
FAILED=()

fail_target() { # fail_target TARGET REASON
    FAILED+=("$1: $2")
    T_NOTE[$1]="not run"
    unset "T_URL[$1]" "T_PID[$1]"
}

# still_up TARGET: false if the target's proxy has exited. The first time,
# it is reported (with its log) and left out of the remaining runs.
still_up() {
    local t=$1 pid=${T_PID[$1]:-} status=0
    [[ -z "$pid" ]] && return 0
    alive "$pid" && return 0
    { wait "$pid"; } 2>/dev/null || status=$?
    echo "error: $t exited (status $status) during the benchmark" >&2
    dump_log "$t" "${T_LOG[$t]}"
    FAILED+=("$t: exited during the benchmark")
    T_NOTE[$t]="proxy died"
    unset "T_URL[$t]" "T_PID[$t]"
    return 1
}

# proxy_pids TARGET: the process(es) whose CPU and RSS are attributed to the
# proxy. Empty for direct.
proxy_pids() {
    local pid=${T_PID[$1]:-}
    [[ -n "$pid" ]] || return 0
    echo "$pid"
    # nginx does its work in the worker, a child of the master.
    if [[ "$1" == nginx ]]; then children_of "$pid"; fi
    return 0
}

# proxy_up TARGET URL PID LOGFILE: wait for the proxy to answer and check
# that it proxies; on failure it is stopped and left out of the runs.
proxy_up() {
    local t=$1 url=$2 pid=$3 logfile=$4
    if ! wait_http "$t" "$url" "$pid" "$logfile"; then
        stop_pid "$pid"
        fail_target "$t" "did not come up on ${url#http://}"
        return 1
    fi
    if ! check_response "$t" "$url"; then
        dump_log "$t" "$logfile"
        stop_pid "$pid"
        fail_target "$t" "does not proxy to the upstream"
        return 1
    fi
}

start_upstream() {
    log "starting bench-upstream on $HOST:$UPSTREAM_PORT"
    "${PIN_LOAD[@]}" "$UPSTREAM_BIN" --listen "$HOST:$UPSTREAM_PORT" \
        --body-size "$BODY_SIZE" --threads "$UPSTREAM_THREADS" >"$TMP/upstream.log" 2>&1 &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    wait_http bench-upstream "http://$HOST:$UPSTREAM_PORT/" "$UPSTREAM_PID" "$TMP/upstream.log" ||
        die "bench-upstream did not come up"
    check_response bench-upstream "http://$HOST:$UPSTREAM_PORT/" || die "bench-upstream answers wrongly"
}

start_direct() {
    T_URL[direct]="http://$HOST:$UPSTREAM_PORT/"
}

start_transom() {
    if [[ -n "$TRANSOM_BUILD_ERROR" ]]; then
        echo "error: transom: $TRANSOM_BUILD_ERROR" >&2
        fail_target transom "$TRANSOM_BUILD_ERROR"
        return 0
    fi
    local conf="$TMP/transom.toml" logfile="$TMP/transom.log" pid
    cat >"$conf" <<EOF
[upstreams.bench]
endpoints = ["$HOST:$UPSTREAM_PORT"]

[frontends.bench]
listen = "$HOST:$TRANSOM_PORT"

[[frontends.bench.routes]]
match = { path_prefix = "/" }
upstream = "bench"
EOF
    log "starting transom on $HOST:$TRANSOM_PORT"
    local -a extra=()
    [[ -n "$TRANSOM_ARGS" ]] && read -r -a extra <<<"$TRANSOM_ARGS"
    RUST_LOG=warn "${PIN_PROXY[@]}" "$TRANSOM_BIN" run --config "$conf" "${extra[@]}" >"$logfile" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    if ! proxy_up transom "http://$HOST:$TRANSOM_PORT/" "$pid" "$logfile"; then
        echo "---- transom config ($conf) ----" >&2
        cat "$conf" >&2
        echo "---- end of transom config ----" >&2
        return 0
    fi
    T_URL[transom]="http://$HOST:$TRANSOM_PORT/"
    T_PID[transom]=$pid
    T_LOG[transom]=$logfile
}

start_hyper() {
    local logfile="$TMP/hyper-proxy.log" pid
    if [[ ! -x "$HYPER_BIN" ]]; then
        fail_target hyper "$HYPER_BIN not found"
        return 0
    fi
    log "starting hyper-proxy on $HOST:$HYPER_PORT"
    "${PIN_PROXY[@]}" "$HYPER_BIN" --listen "$HOST:$HYPER_PORT" \
        --upstream "$HOST:$UPSTREAM_PORT" >"$logfile" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    proxy_up hyper "http://$HOST:$HYPER_PORT/" "$pid" "$logfile" || return 0
    T_URL[hyper]="http://$HOST:$HYPER_PORT/"
    T_PID[hyper]=$pid
    T_LOG[hyper]=$logfile
}

start_nginx() {
    local dir="$TMP/nginx" pid
    mkdir -p "$dir/logs"
    local conf="$dir/nginx.conf" logfile="$dir/logs/error.log"
    cat >"$conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $logfile warn;

events {
    worker_connections 1024;
}

http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

    upstream bench {
        server $HOST:$UPSTREAM_PORT;
        keepalive 64;
    }

    server {
        listen $HOST:$NGINX_PORT;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    if ! nginx -t -q -c "$conf" -p "$dir/" -e "$logfile" 2>"$dir/configtest.log"; then
        echo "error: nginx rejected its config $conf:" >&2
        cat "$dir/configtest.log" >&2
        fail_target nginx "config test failed"
        return 0
    fi
    log "starting nginx on $HOST:$NGINX_PORT"
    "${PIN_PROXY[@]}" nginx -c "$conf" -p "$dir/" -e "$logfile" >"$dir/stdout.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    proxy_up nginx "http://$HOST:$NGINX_PORT/" "$pid" "$logfile" || return 0
    local workers
    workers=$(children_of "$pid" | tr '\n' ' ')
    log "nginx master $pid, workers: ${workers:-none found}"
    T_URL[nginx]="http://$HOST:$NGINX_PORT/"
    T_PID[nginx]=$pid
    T_LOG[nginx]=$logfile
}

# ------------------------------------------------------------ measurement

# One value per measured run, keyed TARGET:CONNS:ROUND. A run that gave no
# numbers leaves no key, and its reason in NOTE[TARGET:CONNS].
declare -A R_RPS R_P50 R_P99 R_CPU R_USR R_SYS R_RSS0 R_RSS1 R_ERR NOTE

per_req() { # per_req TICKS REQUESTS -> microseconds of CPU per request
    awk -v d="$1" -v hz="$CLK_TCK" -v n="$2" \
        'BEGIN { if (n > 0) printf "%.4f", d / hz * 1e6 / n; else print "nan" }'
}

# measure TARGET CONNS ROUND: one warm-up and one measured run.
# shellcheck disable=SC2034 # the R_ arrays are read through namerefs in values()
measure() {
    local t=$1 c=$2 r=$3 k="$1:$2:$3" raw parsed rps reqs p50 p99 errs
    local u0 s0 u1 s1 rss0 rss1
    local -a pids
    still_up "$t" || return 0
    log "round $r/$ROUNDS, $t: warm-up ${WARMUP} at $c connections"
    run_wrk "${T_URL[$t]}" "$c" "$WARMUP" "$TMP/wrk-$t-$c-r$r-warmup.txt" ||
        warn "$t: warm-up wrk run failed (see $TMP/wrk-$t-$c-r$r-warmup.txt)"

    mapfile -t pids < <(proxy_pids "$t")
    read -r u0 s0 <<<"$(cpu_ticks "${pids[@]}")"
    rss0=$(rss_kib "${pids[@]}")
    log "round $r/$ROUNDS, $t: measuring ${DURATION} at $c connections"
    raw="$TMP/wrk-$t-$c-r$r.txt"
    if ! run_wrk "${T_URL[$t]}" "$c" "$DURATION" "$raw"; then
        warn "$t: wrk failed at $c connections in round $r:"
        cat "$raw" >&2
        NOTE[$t:$c]="wrk failed"
        return 0
    fi
    # A proxy that died during the run leaves numbers that mean nothing.
    if ! still_up "$t"; then
        NOTE[$t:$c]="proxy died"
        return 0
    fi
    # Re-read the PID list in case nginx replaced a worker mid-run.
    mapfile -t pids < <(proxy_pids "$t")
    read -r u1 s1 <<<"$(cpu_ticks "${pids[@]}")"
    rss1=$(rss_kib "${pids[@]}")

    if ! parsed=$(parse_wrk "$raw"); then
        warn "$t: cannot parse wrk output at $c connections in round $r:"
        cat "$raw" >&2
        NOTE[$t:$c]="unparsable"
        return 0
    fi
    read -r rps reqs p50 p99 errs <<<"$parsed"
    R_RPS[$k]=$rps
    R_P50[$k]=$p50
    R_P99[$k]=$p99
    R_ERR[$k]=$errs
    if [[ "$t" != direct ]]; then
        R_CPU[$k]=$(per_req $((u1 - u0 + s1 - s0)) "$reqs")
        R_USR[$k]=$(per_req $((u1 - u0)) "$reqs")
        R_SYS[$k]=$(per_req $((s1 - s0)) "$reqs")
        R_RSS0[$k]=$rss0
        R_RSS1[$k]=$rss1
    fi
    echo "$r $t $c $rps $reqs $p50 $p99 ${R_CPU[$k]:--} ${R_USR[$k]:--} ${R_SYS[$k]:--}" \
        "${R_RSS0[$k]:--} ${R_RSS1[$k]:--} $errs" >>"$TMP/runs.txt"
    if ((errs > 0)); then
        warn "$t: $errs errors / non-2xx responses at $c connections in round $r (see $raw)"
    fi
}

# --------------------------------------------------------------------- run

git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
wrk_version=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true)

echo "round target conns requests/s requests p50_us p99_us cpu_us user_us sys_us" \
    "rss0_kib rss1_kib errors" >"$TMP/runs.txt"

# Everything is started up front and stays up, so that within a round the
# targets are measured seconds apart; the idle proxy costs next to nothing.
start_upstream
for t in $TARGETS; do
    "start_$t"
done

for ((round = 1; round <= ROUNDS; round++)); do
    for c in $CONNS; do
        for t in $TARGETS; do
            [[ -n "${T_URL[$t]:-}" ]] || continue
            measure "$t" "$c" "$round"
        done
    done
done

# A proxy that died in the last run is reported here, then all are stopped
# (the trap would too, but the report should not wait for it).
for t in $TARGETS; do
    still_up "$t" || true
done
for pid in "${PIDS[@]}"; do stop_pid "$pid"; done

# ------------------------------------------------------------------ report

# values ARRAY TARGET CONNS: the array's per-round values, one a line.
values() {
    local -n _vals=$1
    local r
    for ((r = 1; r <= ROUNDS; r++)); do
        if [[ -n "${_vals[$2:$3:$r]:-}" ]]; then echo "${_vals[$2:$3:$r]}"; fi
    done
    return 0
}

# median: of the numbers on stdin ("nan" lines skipped), the middle one, or
# the mean of the middle two for an even count; "nan" if there are none.
median() {
    awk '$1 != "" && $1 != "nan"' | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) print "nan"
            else if (NR % 2) printf "%.4f\n", v[(NR + 1) / 2]
            else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}

# round_ratios ARRAY CONNS A B: A / B within each round, one a line, "nan"
# for a round where either is missing.
round_ratios() {
    local -n _vals=$1
    local r
    for ((r = 1; r <= ROUNDS; r++)); do
        awk -v a="${_vals[$3:$2:$r]:-}" -v b="${_vals[$4:$2:$r]:-}" 'BEGIN {
            if (a == "" || b == "" || a == "nan" || b == "nan" || b + 0 == 0) print "nan"
            else printf "%.4f\n", a / b }'
    done
}

fmt_num() { # fmt_num PRINTF-FORMAT VALUE: "?" for nan
    awk -v f="$1" -v v="$2" 'BEGIN { if (v == "" || v == "nan") print "?"; else printf f "\n", v }'
}
fmt_ms() { # microseconds -> milliseconds with 3 decimals
    awk -v v="$1" 'BEGIN { if (v == "" || v == "nan") print "?"; else printf "%.3f", v / 1000 }'
}
fmt_mib() { # KiB -> MiB with 1 decimal
    awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.1f", v / 1024 }'
}
fmt_ratio() {
    awk -v v="$1" 'BEGIN { if (v == "" || v == "nan") print "n/a"; else printf "%.2fx", v }'
}

echo
echo "Proxy benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')  rev $git_rev"
echo "  machine: ${cpu_model:-unknown CPU}, $(nproc) CPUs, kernel $(uname -r)"
echo "  pinning: $PINNING"
echo "  wrk $wrk_version, $WRK_THREADS thread(s), ${DURATION} per run after ${WARMUP} warm-up"
echo "  rounds: $ROUNDS, targets in turn within each round; medians over the rounds"
echo "  upstream: bench-upstream, $BODY_SIZE-byte body, $UPSTREAM_THREADS thread(s)"
echo "  nginx $nginx_version: 1 worker, keepalive 64 to the upstream"
echo "  hyper-proxy: 1 thread, one upstream connection per client connection, nothing else"
echo
fmt='%-8s %6s %12s %10s %10s %12s %9s %9s %12s %12s %7s%s\n'
# shellcheck disable=SC2059
printf "$fmt" target conns "requests/s" "p50 ms" "p99 ms" "cpu us/req" "user us" "sys us" \
    "rss MiB pre" "rss MiB post" errors ""
# shellcheck disable=SC2059
printf "$fmt" -------- ------ ------------ ---------- ---------- ------------ --------- --------- \
    ------------ ------------ ------- ""
for t in $TARGETS; do
    for c in $CONNS; do
        mapfile -t rps < <(values R_RPS "$t" "$c")
        if ((${#rps[@]} == 0)); then
            # shellcheck disable=SC2059
            printf "$fmt" "$t" "$c" "${NOTE[$t:$c]:-${T_NOTE[$t]:-no data}}" - - - - - - - - ""
            continue
        fi
        cpu=- usr=- sys=- rss0=- rss1=- partial=""
        if [[ "$t" != direct ]]; then
            cpu=$(fmt_num %.2f "$(values R_CPU "$t" "$c" | median)")
            usr=$(fmt_num %.2f "$(values R_USR "$t" "$c" | median)")
            sys=$(fmt_num %.2f "$(values R_SYS "$t" "$c" | median)")
            rss0=$(fmt_mib "$(values R_RSS0 "$t" "$c" | head -n 1)")
            rss1=$(fmt_mib "$(values R_RSS1 "$t" "$c" | tail -n 1)")
        fi
        errs=$(values R_ERR "$t" "$c" | awk '{ s += $1 } END { print s + 0 }')
        if ((${#rps[@]} < ROUNDS)); then
            partial="  (${#rps[@]}/$ROUNDS rounds: ${NOTE[$t:$c]:-${T_NOTE[$t]:-?}})"
        fi
        # shellcheck disable=SC2059
        printf "$fmt" "$t" "$c" "$(fmt_num %.0f "$(printf '%s\n' "${rps[@]}" | median)")" \
            "$(fmt_ms "$(values R_P50 "$t" "$c" | median)")" \
            "$(fmt_ms "$(values R_P99 "$t" "$c" | median)")" \
            "$cpu" "$usr" "$sys" "$rss0" "$rss1" "$errs" "$partial"
    done
done

# ratios A B: the A / B block, when both were measured.
ratios() {
    local a=$1 b=$2 c per_round
    [[ " $TARGETS " == *" $a "* && " $TARGETS " == *" $b "* ]] || return 0
    echo
    echo "$a / $b, median of the per-round ratios"
    echo "(requests/s: higher is better; cpu, user, sys: lower is better)"
    rfmt='%6s %12s %12s %9s %9s  %s\n'
    # shellcheck disable=SC2059
    printf "$rfmt" conns "requests/s" "cpu us/req" "user us" "sys us" "cpu us/req per round"
    for c in $CONNS; do
        per_round=$(round_ratios R_CPU "$c" "$a" "$b" |
            awk '{ printf "%s%s", (NR > 1 ? " " : ""), ($1 == "nan" ? "n/a" : sprintf("%.2f", $1)) }')
        # shellcheck disable=SC2059
        printf "$rfmt" "$c" \
            "$(fmt_ratio "$(round_ratios R_RPS "$c" "$a" "$b" | median)")" \
            "$(fmt_ratio "$(round_ratios R_CPU "$c" "$a" "$b" | median)")" \
            "$(fmt_ratio "$(round_ratios R_USR "$c" "$a" "$b" | median)")" \
            "$(fmt_ratio "$(round_ratios R_SYS "$c" "$a" "$b" | median)")" \
            "[$per_round]"
    done
}
ratios transom nginx
# hyper-proxy is the floor for a proxy on tokio and hyper: against nginx,
# what the stack costs; transom against it, what transom adds.
ratios hyper nginx
ratios transom hyper

if ((${#FAILED[@]})); then
    echo
    echo "FAILED:"
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
