#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: transom
# and hyper-proxy (the floor on the same stack), each run under callgrind
# with instrumentation switched on only while wrk drives a fixed load. See
# bench/README.md ("Instructions per request").
#
# Unlike CPU time, an instruction count repeats from run to run within a
# fraction of a percent whatever else the machine is doing, so a change that
# saves a few hundred instructions per request shows here when it is lost in
# the noise of bench/proxy.sh. It does not show cache misses or syscalls:
# use it to compare two builds of transom's own code, not transom with nginx.
#
# Environment (all optional):
#   TARGETS="transom hyper plugin"   what to count (plugin: transom with
#                       the add-header plugin in reuse mode on the route;
#                       plugin-fresh: the same with an instance per request)
#   CONNS=8             wrk connections
#   DURATION=10s        counted wrk run (after a 3 s uncounted warm-up)
#   TRANSOM_ARGS="--threads 1"
#   SKIP_BUILD=1        do not run cargo build
#   KEEP_TMP=1          keep the temp dir (configs, logs, callgrind files)
set -euo pipefail

TARGETS=${TARGETS:-"transom hyper plugin"}
CONNS=${CONNS:-8}
DURATION=${DURATION:-10s}
TRANSOM_ARGS=${TRANSOM_ARGS:---threads 1}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
HOST=127.0.0.1

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
log() { printf '==> %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/release"

for t in $TARGETS; do
    case "$t" in transom | hyper | plugin | plugin-fresh) ;; *) die "unknown target '$t' in TARGETS" ;; esac
done
missing=()
for t in valgrind callgrind_control wrk curl; do have "$t" || missing+=("$t"); done
if ((${#missing[@]})); then
    pkgs=$(printf '%s\n' "${missing[@]}" | sed 's/callgrind_control/valgrind/' | sort -u | tr '\n' ' ')
    [[ $(id -u) -eq 0 ]] && have apt-get || die "missing: $pkgs(apt-get install -y $pkgs)"
    log "installing $pkgs"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y $pkgs >/dev/null
fi

if [[ "$SKIP_BUILD" != 1 ]]; then
    log "building (cargo build --release -p transom -p transom-bench)"
    (cd "$ROOT" && cargo build --release -p transom -p transom-bench)
fi
PLUGIN_WASM=""
if [[ " $TARGETS " == *" plugin"* ]]; then
    if [[ "$SKIP_BUILD" != 1 ]]; then
        log "building the add-header plugin"
        (cd "$ROOT/plugins" && cargo build --release --target wasm32-wasip2 -p add-header)
    fi
    PLUGIN_WASM="$ROOT/plugins/target/wasm32-wasip2/release/add_header.wasm"
    [[ -f "$PLUGIN_WASM" ]] || die "$PLUGIN_WASM not found"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/transom-instr.XXXXXX")
PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ "$KEEP_TMP" == 1 ]]; then echo "temp dir kept: $TMP" >&2; else rm -rf -- "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_up() { # URL PID LOG
    local i
    for ((i = 0; i < 600; i++)); do
        kill -0 "$2" 2>/dev/null || {
            tail -n 30 "$3" >&2
            die "process for $1 exited"
        }
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true) == 200 ]] && return 0
        sleep 0.2
    done
    tail -n 30 "$3" >&2
    die "$1 did not answer 200"
}

UPSTREAM_PORT=$(port)
"$BIN/bench-upstream" --listen "$HOST:$UPSTREAM_PORT" --threads 1 >"$TMP/upstream.log" 2>&1 &
PIDS+=($!)
wait_up "http://$HOST:$UPSTREAM_PORT/" "$!" "$TMP/upstream.log"

# count NAME PORT CMD...: start CMD under callgrind, warm it up, count the
# instructions of DURATION of load; prints "NAME IR REQUESTS".
count() {
    local name=$1 port=$2 pid out reqs ir
    shift 2
    valgrind --tool=callgrind --instr-atstart=no --dump-instr=no \
        --callgrind-out-file="$TMP/callgrind.$name.out" "$@" >"$TMP/$name.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_up "http://$HOST:$port/" "$pid" "$TMP/$name.log"
    wrk -t1 -c"$CONNS" -d3s "http://$HOST:$port/" >/dev/null
    callgrind_control -i on "$pid" >/dev/null
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" "http://$HOST:$port/")
    callgrind_control -i off "$pid" >/dev/null
    grep -q 'Non-2xx' <<<"$out" && die "$name answered errors: $out"
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    ir=$(awk '/^totals:/ { print $2; exit }' "$TMP/callgrind.$name.out")
    [[ -n "$ir" && -n "$reqs" && "$reqs" -gt 0 ]] || die "$name: no count (see $TMP)"
    echo "$name $ir $reqs"
}

read -r -a extra <<<"$TRANSOM_ARGS"
results=()
for t in $TARGETS; do
    p=$(port)
    case "$t" in
    hyper)
        log "counting hyper-proxy"
        results+=("$(count hyper "$p" "$BIN/hyper-proxy" --listen "$HOST:$p" --upstream "$HOST:$UPSTREAM_PORT")")
        ;;
    transom | plugin | plugin-fresh)
        conf="$TMP/$t.toml"
        plugins=""
        if [[ "$t" == plugin* ]]; then
            mode=reuse
            [[ "$t" == plugin-fresh ]] && mode=per-request
            mkdir -p "$TMP/plugins"
            cp "$PLUGIN_WASM" "$TMP/plugins/add-header@1.0.0.wasm"
            plugins="plugins = [{ name = \"add-header\", version = \"1.0.0\", instance = \"$mode\", config = { request = { \"x-team\" = \"bench\" }, response = { \"x-served-by\" = \"transom\" } } }]"
            printf '[plugins]\ndir = "%s"\nmax_instances = %s\n\n' "$TMP/plugins" "$((CONNS + 4))" >"$conf"
        else
            : >"$conf"
        fi
        cat >>"$conf" <<EOF
[upstreams.bench]
endpoints = ["$HOST:$UPSTREAM_PORT"]

[frontends.bench]
listen = "$HOST:$p"

[[frontends.bench.routes]]
match = { path_prefix = "/" }
upstream = "bench"
$plugins
EOF
        log "counting $t"
        results+=("$(RUST_LOG=warn count "$t" "$p" "$BIN/transom" run --config "$conf" "${extra[@]}")")
        ;;
    esac
done

printf '\n%-8s %14s %10s %14s\n' target instructions requests "per request"
for r in "${results[@]}"; do
    read -r name ir reqs <<<"$r"
    printf '%-8s %14s %10s %14.0f\n' "$name" "$ir" "$reqs" "$(awk -v a="$ir" -v b="$reqs" 'BEGIN { print a / b }')"
done
