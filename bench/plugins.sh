#!/usr/bin/env bash
# Plugin overhead, in one run against one fast upstream: CPU time per request
# of the gateway with no plugin, a no-op plugin and a header plugin, in both
# instance modes; then start-up time with 20 cached plugins.
#
#   bench/plugins.sh                 # DURATION=5s CONNS=16 ROUNDS=3 by default
#   DELAY_MS=1 bench/plugins.sh      # each connection pauses 1 ms between requests
#
# By default wrk saturates the gateway; with DELAY_MS every route runs at
# about the same rate (CONNS / DELAY_MS per millisecond) below saturation,
# where the gateway idles between requests as most do.
#
# Then `plugin-calls` (bench/src/plugin_calls.rs) runs the same plugins in
# process, without the network, for the runtime's own CPU per request:
# back to back, with CONNS requests in flight, and with idle gaps.
#
# The gateway runs pinned to CPU 0 with one worker thread; wrk and the
# upstream share CPU 1. The routes are measured in turn, ROUNDS times over;
# each round's "added" is a route's CPU per request minus the no-plugin
# route's in the same round, and the table shows the median round (and the
# spread), because a shared machine's speed drifts over minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-16}
DELAY_MS=${DELAY_MS:-}
UP_PORT=${UP_PORT:-18180}
GW_PORT=${GW_PORT:-18181}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null; fi

cd "$ROOT"
WRK_SCRIPT=()
if [[ -n "$DELAY_MS" ]]; then
  [[ "$DELAY_MS" =~ ^[0-9]+$ ]] || { echo "DELAY_MS must be a whole number of milliseconds" >&2; exit 1; }
  printf 'function delay()\n  return %s\nend\n' "$DELAY_MS" > "$TMP/delay.lua"
  WRK_SCRIPT=(-s "$TMP/delay.lua")
fi
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --release -q -p transom -p transom-bench
cargo build --release -q --target wasm32-wasip2 --manifest-path plugins/Cargo.toml
WASM=plugins/target/wasm32-wasip2/release
mkdir -p "$TMP/plugins"
cp "$WASM/fixture_noop.wasm" "$TMP/plugins/noop@1.0.0.wasm"
cp "$WASM/add_header.wasm" "$TMP/plugins/add-header@1.0.0.wasm"

route() { # path plugin-entry
  printf '[[frontends.bench.routes]]\nmatch = { path_prefix = "%s" }\nupstream = "bench"\n%s\n\n' "$1" "$2"
}
{
  printf '[plugins]\ndir = "plugins"\n\n[upstreams.bench]\nendpoints = ["127.0.0.1:%s"]\n\n[frontends.bench]\nlisten = "127.0.0.1:%s"\n\n' "$UP_PORT" "$GW_PORT"
  route /none ""
  for mode in reuse per-request; do
    route "/noop-$mode" "plugins = [{ name = \"noop\", version = \"1.0.0\", instance = \"$mode\" }]"
    route "/header-$mode" "plugins = [{ name = \"add-header\", version = \"1.0.0\", instance = \"$mode\", config = { request = { \"x-a\" = \"1\" }, response = { \"x-b\" = \"2\" } } }]"
  done
} > "$TMP/transom.toml"

taskset -c 1 target/release/bench-upstream --listen "127.0.0.1:$UP_PORT" >/dev/null 2>&1 & PIDS+=($!)
RUST_LOG=warn taskset -c 0 target/release/transom run --config "$TMP/transom.toml" --threads 1 >"$TMP/gw.log" 2>&1 & GW=$!; PIDS+=("$GW")
for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/none" && break; sleep 0.05; done
curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/none" || { cat "$TMP/gw.log"; exit 1; }

cpu() { awk '{print $14 + $15}' "/proc/$GW/stat"; }
ROUTES=(/none /noop-reuse /header-reuse /noop-per-request /header-per-request)
# One line per measured run: round route requests/s p99 cpu-us-per-request
for round in $(seq "$ROUNDS"); do
  for path in "${ROUTES[@]}"; do
    url="http://127.0.0.1:$GW_PORT$path"
    taskset -c 1 wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null
    t0=$(cpu)
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"$DURATION" "${WRK_SCRIPT[@]}" --latency "$url")
    t1=$(cpu)
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    echo "$round $path $rps $p99 $(python3 -c "print(($t1-$t0)*1e6/100/$reqs)")"
  done
done > "$TMP/runs.txt"
python3 - "$TMP/runs.txt" "${ROUTES[@]}" <<'PY'
import statistics, sys
runs = [l.split() for l in open(sys.argv[1])]
routes = sys.argv[2:]
by = {(int(r), p): (float(rps), p99, float(us)) for r, p, rps, p99, us in runs}
rounds = sorted({k[0] for k in by})
print(f"\n{'route':<22} {'requests/s':>12} {'p99':>10} {'cpu us/req':>11} {'added us':>9}  added per round")
for route in routes:
    rows = [by[(r, route)] for r in rounds]
    added = [by[(r, route)][2] - by[(r, routes[0])][2] for r in rounds]
    mid = statistics.median(added)
    i = added.index(mid) if mid in added else 0
    rps, p99, us = rows[i]
    spread = " ".join(f"{a:.1f}" for a in added)
    print(f"{route:<22} {rps:>12.0f} {p99:>10} {us:>11.2f} {mid:>9.2f}  [{spread}]")
PY
kill "$GW"; wait "$GW" 2>/dev/null || true

# The same plugins in-process, no network: the runtime's own cost, one
# request at a time, then with as many requests in flight as the HTTP load
# has connections (each holding its instance, as the gateway does while the
# upstream answers).
taskset -c 0 target/release/plugin-calls "$TMP/plugins" --iterations 20000 --rounds 5
if [[ "$CONNS" != 1 ]]; then
  taskset -c 0 target/release/plugin-calls "$TMP/plugins" --iterations 20000 --rounds 5 --inflight "$CONNS"
fi
# And with the thread idle for 100 us between requests, as a gateway below
# saturation is: each request starts with colder caches.
taskset -c 0 target/release/plugin-calls "$TMP/plugins" --iterations 5000 --rounds 5 --gap 100

# Start-up with 20 plugins: first start compiles and fills the cache, the
# second loads from it. Time until the listener answers.
for i in $(seq 0 19); do cp "$WASM/add_header.wasm" "$TMP/plugins/add-header@2.0.$i.wasm"; done
startup() {
  local start end
  start=$(date +%s%N)
  RUST_LOG=warn taskset -c 0 target/release/transom run --config "$TMP/transom.toml" --threads 1 >"$TMP/gw.log" 2>&1 & GW=$!; PIDS+=("$GW")
  until curl -sf -o /dev/null "http://127.0.0.1:$GW_PORT/none"; do sleep 0.005; done
  end=$(date +%s%N)
  kill "$GW"; wait "$GW" 2>/dev/null || true
  echo $(( (end - start) / 1000000 ))
}
rm -rf "$TMP/plugins/.cache"
cold=$(startup)
warm=$(startup)
printf '\nstart-up with 22 plugins: %s ms compiling (empty cache), %s ms from the cache\n' "$cold" "$warm"
