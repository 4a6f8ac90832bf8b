#!/usr/bin/env bash
# BFF showcase benchmarks, in one run (see bench/README.md):
#
#   1. JWT RS256 cost: gateway CPU per request on a route with only jwt-auth
#      versus the same route without a plugin (and, for scale, with a no-op
#      plugin), all proxying to the fast bench-upstream.
#   2. Mobile /home: jwt-auth + shape + aggregate making three parallel calls
#      (users, orders, recommendations) to the demo services, each slowed to
#      20 ms. Throughput, latency and gateway CPU at CONNS connections, and
#      the gateway-added latency at 1 connection.
#   3. What aggregation saves: the three calls made one after another by a
#      client (sum of their p50s, straight to the services) versus one /home.
#
#   bench/bff.sh                     # DURATION=5s CONNS=64 by default
#
# The gateway runs pinned to CPU 0 with one worker thread; wrk, the upstream
# and the demo services share CPU 1. The demo services run in a
# `transom demo` process serving a config of this script's own (one empty
# frontend), so the showcase's frontends are not started; the services take
# their fixed ports 7101, 7102, 7201, 7301 and 7401, which must be free.
#
# Environment (all optional):
#   DURATION=5s      length of each measured wrk run
#   WARMUP=2s        warm-up run before each measured run
#   CONNS=64         connections for the /home throughput run (step 2)
#   JWT_CONNS=16     connections for the JWT runs (step 1)
#   LATENCY=20ms     latency of each demo service the aggregation calls
#   UP_PORT=18190 GW_PORT=18191 SVC_PORT=18192   bench-upstream, gateway,
#                    and the demo process's empty frontend
#   STARTUP_TIMEOUT=60  seconds to wait for a server (the gateway compiles
#                    its plugins on first start)
#   SKIP_BUILD=1     use the existing release binaries and plugins
#   KEEP_TMP=1       keep the temp dir (configs, logs, raw wrk output)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
JWT_CONNS=${JWT_CONNS:-16}
LATENCY=${LATENCY:-20ms}
UP_PORT=${UP_PORT:-18190}
GW_PORT=${GW_PORT:-18191}
SVC_PORT=${SVC_PORT:-18192}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-60}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
H=127.0.0.1
# The demo services' fixed addresses (gateway/src/demo.rs, SERVICES).
USERS_PORT=7101 ORDERS_PORT=7201 RECS_PORT=7401
SERVICE_PORTS="7101 7102 7201 7301 7401"

die() { printf 'error: %s\n' "$*" >&2; exit 1; }
for v in CONNS JWT_CONNS STARTUP_TIMEOUT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ "$LATENCY" =~ ^[0-9]+ms$ ]] || die "LATENCY must be whole milliseconds like 20ms, got '$LATENCY'"
LATENCY_MS=${LATENCY%ms}

TMP=$(mktemp -d "${TMPDIR:-/tmp}/transom-bff.XXXXXX")
PIDS=()
stop_pid() {
  kill -0 "$1" 2>/dev/null || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  { wait "$1"; } 2>/dev/null || true
}
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [[ "$KEEP_TMP" == 1 ]]; then echo "temp dir kept: $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need curl; then apt-get update -qq && apt-get install -y -qq wrk curl >/dev/null; fi
need taskset || die "taskset is required (util-linux)"

cd "$ROOT"
if [[ "$SKIP_BUILD" != 1 ]]; then
  rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
  cargo build --release -q -p transom -p transom-bench
  cargo build --release -q --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
fi
TRANSOM=target/release/transom
WASM=plugins/target/wasm32-wasip2/release
for f in "$TRANSOM" target/release/bench-upstream; do [[ -x $f ]] || die "$f not found (unset SKIP_BUILD)"; done
mkdir -p "$TMP/plugins" "$TMP/services"
cp "$WASM/fixture_noop.wasm" "$TMP/plugins/noop@1.0.0.wasm"
cp "$WASM/jwt_auth.wasm" "$TMP/plugins/jwt-auth@1.0.0.wasm"
cp "$WASM/shape.wasm" "$TMP/plugins/shape@1.0.0.wasm"
cp "$WASM/aggregate.wasm" "$TMP/plugins/aggregate@1.0.0.wasm"
cp examples/bff/keys/demo-public.pem "$TMP/demo-public.pem"

# ------------------------------------------------------------------ configs

# Every /home request holds up to three plugin instances at once.
MAX_INSTANCES=$((3 * CONNS + 64 > 256 ? 3 * CONNS + 64 : 256))
JWT='{ name = "jwt-auth", version = "1.0.0", keys = ["demo"], config = { keys = "demo", issuer = "https://id.transom.example", audience = "bench", required_claims = ["sub"], claims_to_headers = { sub = "x-user-id" } } }'
cat >"$TMP/transom.toml" <<EOF
[plugins]
dir = "plugins"
max_instances = $MAX_INSTANCES

# The showcase's demo key (examples/bff/keys/demo-public.pem).
[keys.demo]
pem = "demo-public.pem"
kid = "demo"
algorithms = ["RS256"]
leeway = "30s"

[upstreams.bench]
endpoints = ["$H:$UP_PORT"]

[upstreams.users]
endpoints = ["$H:$USERS_PORT"]
request_timeout = "1s"

[upstreams.orders]
endpoints = ["$H:$ORDERS_PORT"]
request_timeout = "1s"

[upstreams.recommendations]
endpoints = ["$H:$RECS_PORT"]
request_timeout = "1s"

[frontends.bench]
listen = "$H:$GW_PORT"

[[frontends.bench.routes]]
name = "none"
match = { path = "/none" }
upstream = "bench"

[[frontends.bench.routes]]
name = "noop"
match = { path = "/noop" }
upstream = "bench"
plugins = [{ name = "noop", version = "1.0.0" }]

[[frontends.bench.routes]]
name = "jwt"
match = { path = "/jwt" }
upstream = "bench"
plugins = [$JWT]

# Like examples/bff/frontends/mobile.toml, with one stage of three calls.
# All three are required, so a failed or timed-out call is a 502 that wrk
# counts as an error instead of a quietly partial answer.
[[frontends.bench.routes]]
name = "home"
match = { path = "/home", methods = ["GET"] }
upstream = "users"   # never called: aggregate answers
plugins = [
  $JWT,
  { name = "shape", version = "1.0.0", body = true, config = {
      include = ["profile.id", "profile.name", "profile.avatar_url", "profile.tier",
                 "orders.orders[].id", "orders.orders[].status", "orders.orders[].total", "orders.orders[].placed_at",
                 "recommendations.items[].product_id", "recommendations.items[].title"],
      truncate = { "orders.orders" = 3, "recommendations.items" = 3 },
      rename = { "recommendations.items" = "recommendations" },
      flatten = ["orders", "recommendations"],
      drop_nulls = true } },
  { name = "aggregate", version = "1.0.0", timeout = "3s", memory = "32MiB", upstreams = ["users", "orders", "recommendations"], config = {
      stages = [
        { calls = [
          { name = "profile", upstream = "users", path = "/users/{header.x-user-id}", required = true, timeout = "1s" },
          { name = "orders", upstream = "orders", path = "/orders?user={header.x-user-id}&limit=5", required = true, timeout = "1s" },
          { name = "recommendations", upstream = "recommendations", path = "/recommendations/{header.x-user-id}?limit=5", required = true, timeout = "1s" },
        ] },
      ] } },
]
EOF
# The calls /home makes, for a client making them itself (step 3).
DIRECT=(
  "users http://$H:$USERS_PORT/users/alice"
  "orders http://$H:$ORDERS_PORT/orders?user=alice&limit=5"
  "recommendations http://$H:$RECS_PORT/recommendations/alice?limit=5"
)
# `transom demo` starts the services and serves this: one frontend, no
# routes, no plugins (so nothing is installed into examples/bff/plugins).
printf '[frontends.services]\nlisten = "%s:%s"\n' "$H" "$SVC_PORT" >"$TMP/services/transom.toml"

# ------------------------------------------------------------------ start

alive() { kill -0 "$1" 2>/dev/null; }
port_busy() { (exec 3<>"/dev/tcp/$H/$1") 2>/dev/null; }
for p in $SERVICE_PORTS $UP_PORT $GW_PORT $SVC_PORT; do
  if port_busy "$p"; then die "port $p is in use (a running \`transom demo\`?); stop it or change the *_PORT settings"; fi
done
wait_http() { # NAME URL PID LOG: until URL answers with any status
  local deadline=$((SECONDS + STARTUP_TIMEOUT)) code
  while :; do
    if ! alive "$3"; then echo "error: $1 exited before answering on $2; its log:" >&2; tail -n 40 "$4" >&2; return 1; fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$2" 2>/dev/null || true)
    [[ -n "$code" && "$code" != 000 ]] && return 0
    if ((SECONDS >= deadline)); then echo "error: $1 did not answer on $2 in ${STARTUP_TIMEOUT}s; its log:" >&2; tail -n 40 "$4" >&2; return 1; fi
    sleep 0.1
  done
}

taskset -c 1 target/release/bench-upstream --listen "$H:$UP_PORT" >"$TMP/upstream.log" 2>&1 & PIDS+=("$!")
wait_http bench-upstream "http://$H:$UP_PORT/" "$!" "$TMP/upstream.log"
RUST_LOG=warn taskset -c 1 "$TRANSOM" demo --no-build --config "$TMP/services/transom.toml" --plugins "$ROOT/plugins" \
  --latency "users=$LATENCY" --latency "orders=$LATENCY" --latency "recommendations=$LATENCY" \
  >"$TMP/services.log" 2>&1 & SVC=$!; PIDS+=("$SVC")
for p in $SERVICE_PORTS; do wait_http "demo services" "http://$H:$p/health" "$SVC" "$TMP/services.log"; done
RUST_LOG=warn taskset -c 0 "$TRANSOM" run --config "$TMP/transom.toml" --threads 1 --no-watch >"$TMP/gw.log" 2>&1 & GW=$!; PIDS+=("$GW")
wait_http gateway "http://$H:$GW_PORT/none" "$GW" "$TMP/gw.log"

# ------------------------------------------------------------------ checks

TOKEN=$("$TRANSOM" token --demo --sub alice --aud bench)
# The same token with one character of its signature changed.
sig=${TOKEN##*.}
c=${sig:20:1}; [[ "$c" == A ]] && r=B || r=A
BAD="${TOKEN%.*}.${sig:0:20}$r${sig:21}"
status() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }
check() { # WANT DESCRIPTION curl-args...
  local want=$1 what=$2 got; shift 2
  got=$(status "$@")
  [[ "$got" == "$want" ]] || { echo "error: $what: status $got, want $want" >&2; tail -n 20 "$TMP/gw.log" >&2; exit 1; }
  printf 'check: %-48s %s\n' "$what" "$got"
}
echo
for s in "${DIRECT[@]}"; do
  read -r name url <<<"$s"
  knob=$(curl -s --max-time 5 "$(sed -E 's#(http://[^/]+)/.*#\1#' <<<"$url")/_knobs" || true)
  [[ "$knob" == *"\"latency_ms\":$LATENCY_MS"* ]] || die "demo service $name: knobs $knob, want latency_ms $LATENCY_MS"
  check 200 "$name, direct (${LATENCY_MS} ms)" "$url"
done
check 200 "/none, no plugin" "http://$H:$GW_PORT/none"
check 200 "/noop, no-op plugin" "http://$H:$GW_PORT/noop"
check 200 "/jwt, valid RS256 token" -H "authorization: Bearer $TOKEN" "http://$H:$GW_PORT/jwt"
check 401 "/jwt, bad signature" -H "authorization: Bearer $BAD" "http://$H:$GW_PORT/jwt"
check 401 "/jwt, no token" "http://$H:$GW_PORT/jwt"
check 401 "/home, bad signature" -H "authorization: Bearer $BAD" "http://$H:$GW_PORT/home"
check 200 "/home, valid token" -H "authorization: Bearer $TOKEN" "http://$H:$GW_PORT/home"
hdrs=$(curl -s -D - -o "$TMP/home.json" -H "authorization: Bearer $TOKEN" "http://$H:$GW_PORT/home")
if grep -qi '^x-transom-partial' <<<"$hdrs"; then die "/home answered partially: $(grep -i '^x-transom-partial' <<<"$hdrs")"; fi
for k in '"profile"' '"orders"' '"recommendations"'; do
  grep -q "$k" "$TMP/home.json" || die "/home answer lacks $k: $(head -c 300 "$TMP/home.json")"
done
www=$(curl -s -D - -o /dev/null -H "authorization: Bearer $BAD" "http://$H:$GW_PORT/jwt" | tr -d '\r' | grep -i '^www-authenticate' || true)
echo "bad signature answer: $www"
echo "/home answer ($(wc -c <"$TMP/home.json") bytes): $(head -c 160 "$TMP/home.json")..."

# ------------------------------------------------------------------ runs

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
to_us() { # wrk time ("103.00us", "1.25ms", "2.00s") -> microseconds
  awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    f = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : (u == "m") ? 60000000 : -1
    if (f < 0) print "nan"; else printf "%.1f\n", n * f }'
}
declare -A RPS P50 P99 CPU BUSY ERR
# measure KEY CONNS URL [with-token]: warm-up, then the measured run; the
# gateway's CPU is read around the measured run only (not for direct runs).
measure() {
  local key=$1 conns=$2 url=$3 auth=${4:-} out=$TMP/wrk-$1.txt t0 t1 reqs secs
  local -a hdr=()
  [[ -n "$auth" ]] && hdr=(-H "authorization: Bearer $TOKEN")
  taskset -c 1 wrk -t1 -c"$conns" -d"$WARMUP" "${hdr[@]}" "$url" >/dev/null
  t0=$(cpu "$GW")
  taskset -c 1 wrk -t1 -c"$conns" -d"$DURATION" --latency "${hdr[@]}" "$url" >"$out"
  t1=$(cpu "$GW")
  alive "$GW" || { echo "error: the gateway exited during $key" >&2; tail -n 40 "$TMP/gw.log" >&2; exit 1; }
  reqs=$(awk '/ requests in / {print $1}' "$out")
  secs=$(to_us "$(awk '/ requests in / {sub(/,$/, "", $4); print $4}' "$out")")
  [[ "${reqs:-0}" -gt 0 ]] || { echo "error: $key: no requests completed" >&2; cat "$out" >&2; exit 1; }
  RPS[$key]=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
  P50[$key]=$(to_us "$(awk '/Latency Distribution/ {d=1; next} d && $1=="50%" {print $2; exit}' "$out")")
  P99[$key]=$(to_us "$(awk '/Latency Distribution/ {d=1; next} d && $1=="99%" {print $2; exit}' "$out")")
  ERR[$key]=$(awk '/Socket errors:/ {gsub(/,/, ""); e += $4 + $6 + $8 + $10} /Non-2xx or 3xx responses:/ {e += $NF} END {print e + 0}' "$out")
  if [[ "$key" == direct-* ]]; then
    CPU[$key]=- BUSY[$key]=-
  else
    CPU[$key]=$(awk -v a="$t0" -v b="$t1" -v t="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.1f", (b - a) * 1e6 / t / n}')
    BUSY[$key]=$(awk -v a="$t0" -v b="$t1" -v t="$CLK_TCK" -v s="$secs" 'BEGIN {printf "%.0f", (b - a) / t * 1e8 / s}')
  fi
}

# What the gateway burns with nothing to do (timers, the plugin engine's
# epoch ticker): it weighs on the 1-connection rows, hardly on the others.
i0=$(cpu "$GW"); sleep 2; i1=$(cpu "$GW")
IDLE=$(awk -v a="$i0" -v b="$i1" -v t="$CLK_TCK" 'BEGIN {printf "%.1f", (b - a) * 1000 / t / 2}')

echo
echo "running: step 1 (JWT), step 2 (/home at $CONNS and 1 connection), step 3 (direct calls); $WARMUP warm-up + $DURATION each"
measure none "$JWT_CONNS" "http://$H:$GW_PORT/none" auth
measure noop "$JWT_CONNS" "http://$H:$GW_PORT/noop" auth
measure jwt "$JWT_CONNS" "http://$H:$GW_PORT/jwt" auth
measure home "$CONNS" "http://$H:$GW_PORT/home" auth
measure home-1 1 "http://$H:$GW_PORT/home" auth
for s in "${DIRECT[@]}"; do
  read -r name url <<<"$s"
  measure "direct-$name" 1 "$url"
done

# ------------------------------------------------------------------ report

ms() { awk -v v="$1" 'BEGIN { if (v == "-" || v == "nan") print v; else printf "%.3f", v / 1000 }'; }
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
echo
echo "BFF benchmarks  $(date -u '+%Y-%m-%d %H:%M:%S UTC')  rev $git_rev"
echo "  machine: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) CPUs"
echo "  gateway: transom run --threads 1 on CPU 0; wrk, bench-upstream and the demo services on CPU 1"
echo "  wrk 1 thread, $DURATION per run after $WARMUP warm-up; demo services users, orders, recommendations at $LATENCY"
echo "  gateway idle: $IDLE ms CPU per second (in every cpu us/req; it dominates the 1-connection row)"
echo
fmt='%-4s %-38s %5s %10s %9s %9s %10s %6s %6s\n'
# shellcheck disable=SC2059
printf "$fmt" step run conns "requests/s" "p50 ms" "p99 ms" "cpu us/req" "gw cpu" errors
# shellcheck disable=SC2059
printf "$fmt" ---- -------------------------------------- ----- ---------- --------- --------- ---------- ------ ------
row() { # STEP KEY LABEL CONNS
  local busy=${BUSY[$2]}
  [[ "$busy" != - ]] && busy="$busy%"
  # shellcheck disable=SC2059
  printf "$fmt" "$1" "$3" "$4" "${RPS[$2]}" "$(ms "${P50[$2]}")" "$(ms "${P99[$2]}")" "${CPU[$2]}" "$busy" "${ERR[$2]}"
}
row 1 none "/none  proxy, no plugin" "$JWT_CONNS"
row 1 noop "/noop  no-op plugin + proxy" "$JWT_CONNS"
row 1 jwt "/jwt   jwt-auth RS256 + proxy" "$JWT_CONNS"
row 2 home "/home  jwt+shape+aggregate(3 calls)" "$CONNS"
row 2 home-1 "/home  jwt+shape+aggregate(3 calls)" 1
for s in "${DIRECT[@]}"; do
  read -r name _ <<<"$s"
  row 3 "direct-$name" "$name direct (no gateway)" 1
done

f() { awk "BEGIN { $1 }"; }
jwt_added=$(f "printf \"%.1f\", ${CPU[jwt]} - ${CPU[none]}")
jwt_ratio=$(f "printf \"%.2f\", ${CPU[jwt]} / ${CPU[none]}")
jwt_ok=$(f "print (${CPU[jwt]} - ${CPU[none]} <= 40) ? \"met\" : \"missed\"")
slowest=0
seq_sum=0
for s in "${DIRECT[@]}"; do
  read -r name _ <<<"$s"
  v=${P50[direct-$name]}
  slowest=$(f "print ($v > $slowest) ? $v : $slowest")
  seq_sum=$(f "print $seq_sum + $v")
done
home1=${P50[home-1]}
added_nominal=$(f "printf \"%.3f\", ($home1 - $LATENCY_MS * 1000) / 1000")
added=$(f "printf \"%.3f\", ($home1 - $slowest) / 1000")
added_ok=$(f "print ($home1 - $slowest <= 1000) ? \"met\" : \"missed\"")
noop_added=$(f "printf \"%.1f\", ${CPU[noop]} - ${CPU[none]}")
saved=$(f "printf \"%.3f\", ($seq_sum - $home1) / 1000")
seq_ratio=$(f "printf \"%.2f\", $seq_sum / $home1")
echo
echo "Results"
echo "  1. JWT verification adds $jwt_added us/request of gateway CPU (${CPU[jwt]} vs ${CPU[none]} us without a plugin: ${jwt_ratio}x;"
echo "     a no-op plugin adds $noop_added us); target: verification <= 40 us of gateway CPU per request: $jwt_ok"
echo "  2. /home at $CONNS connections: ${RPS[home]} requests/s, p50 $(ms "${P50[home]}") ms, p99 $(ms "${P99[home]}") ms, ${CPU[home]} us gateway CPU/request"
echo "     (${CPU[home]} / ${CPU[none]} = $(f "printf \"%.1f\", ${CPU[home]} / ${CPU[none]}")x a plain proxied request; 3 upstream calls each);"
bound=$(f "printf \"%.0f\", $CONNS * 1e6 / ${P50[home]}")
if ((BUSY[home] < 90)); then why="the backends' latency bounds it, not the gateway"; else why="and the gateway's CPU is close to saturated"; fi
echo "     $CONNS connections / p50 = $bound requests/s at most: $why (gw cpu ${BUSY[home]}%)"
echo "     gateway-added latency at p50 (1 connection): $added ms = /home p50 $(ms "$home1") ms - slowest call's direct p50 $(ms "$slowest") ms"
echo "     (target <= 1 ms: $added_ok); over the nominal ${LATENCY_MS} ms it is $added_nominal ms, which includes the services' own timer slack"
echo "  3. a client calling users, orders, recommendations one after another: $(ms "$seq_sum") ms (sum of p50s)"
echo "     one /home through transom: $(ms "$home1") ms (p50); saved $saved ms per screen, ${seq_ratio}x faster"
total_err=0
for k in "${!ERR[@]}"; do total_err=$((total_err + ERR[$k])); done
if ((total_err)); then echo; echo "WARNING: $total_err errors in the runs above (see the errors column)"; exit 1; fi
