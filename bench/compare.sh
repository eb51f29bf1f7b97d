#!/usr/bin/env bash
# Side-by-side fan-out: the same yrelay-bench scenario, in one run on this
# machine, against
#   - yrelay (embedded: SQLite, synchronous=FULL; every update fsynced before relay),
#   - yrelay with that SQLite file on tmpfs (the same path without the fsync),
#   - the floor: yrelay-bench's bare frame-forwarding relay (no CRDT, no storage),
#   - the reference y-websocket server, npm @y/websocket-server@0.1.1 (in memory),
#   - y-sweet 0.9.1 (`y-sweet serve`, in memory),
#   - Hocuspocus: npm @hocuspocus/server@4.7.0 (in memory, no extensions) and
#     yrelay's /v1/hocuspocus, both with the writer and the readers on the
#     Hocuspocus protocol (rows hocuspocus and yrelay-hocuspocus),
# and prints a markdown table with ratios to yrelay. Peers are installed under
# $BENCH_CACHE (default target/bench-cache) on first use; y-sweet takes a few
# minutes to build.
#
#   bash bench/compare.sh                 # readers 10 and 50, 2000 updates at 500/s
#   READERS="10 50 1000" UPDATES=500 RATE=100 bash bench/compare.sh
#   PROCESSES=2 ...                       # readers spread over 2 generator processes
#   SERVERS="yrelay floor hocuspocus" ... # only these rows (yrelay is always run: the ratios need it)
#   SVG_DIR=docs/img ...                  # also draw each reader count's latency CDFs (fanout-N.svg)
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${BENCH_CACHE:-target/bench-cache}
readers=${READERS:-10 50}
updates=${UPDATES:-2000}
rate=${RATE:-500}
processes=${PROCESSES:-1}
servers=${SERVERS:-yrelay yrelay-tmpfs floor y-websocket y-sweet yrelay-hocuspocus hocuspocus}
# want NAME: whether that row is asked for.
want() { [[ " yrelay $servers " == *" $1 "* ]]; }
mkdir -p "$cache"
. bench/common.sh

echo "== building yrelay and yrelay-bench (release)" >&2
cargo build --release --locked -p yrelay -p yrelay-bench >&2
if want y-websocket && [ ! -f "$cache/ws-server/node_modules/@y/websocket-server/src/server.js" ]; then
  echo "== installing @y/websocket-server@0.1.1" >&2
  mkdir -p "$cache/ws-server"
  (cd "$cache/ws-server" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error @y/websocket-server@0.1.1 >&2)
fi
if want hocuspocus && [ ! -f "$cache/hocuspocus/node_modules/@hocuspocus/server/package.json" ]; then
  echo "== installing @hocuspocus/server@4.7.0" >&2
  mkdir -p "$cache/hocuspocus"
  (cd "$cache/hocuspocus" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error @hocuspocus/server@4.7.0 >&2)
  cat > "$cache/hocuspocus/serve.mjs" <<'JS'
import { Server } from '@hocuspocus/server'
await new Server({ port: Number(process.env.PORT), address: '127.0.0.1', quiet: true }).listen()
JS
fi
if want y-sweet && [ ! -x "$cache/y-sweet/bin/y-sweet" ]; then
  echo "== building y-sweet 0.9.1 (a few minutes)" >&2
  cargo install y-sweet@0.9.1 --locked --root "$cache/y-sweet" >&2
fi

results=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$results"; }
trap cleanup EXIT


# run NAME URL [ARGS...]: the fan-out for every reader count against one server.
run() {
  for n in $readers; do
    echo "== $1: $n readers ($processes process(es)), $updates updates at $rate/s" >&2
    # A run whose readers diverged still prints its JSON (converged: false).
    if ! target/release/yrelay-bench fanout --url "$2" --readers "$n" --updates "$updates" --rate "$rate" --processes "$processes" --json "${@:3}" \
      > "$results/$1-$n.json"; then
      echo "   $1 with $n readers: see converged" >&2
      [ -s "$results/$1-$n.json" ] || rm -f "$results/$1-$n.json"
    fi
  done
}

data=$(mktemp -d)
target/release/yrelay serve --listen 127.0.0.1:4961 --store "sqlite://$data/yrelay.db" 2>/dev/null & pids+=($!)
wait_port 4961; run yrelay 'ws://127.0.0.1:4961/v1/ws/bench/{room}'
if want yrelay-hocuspocus; then
  run yrelay-hocuspocus 'ws://127.0.0.1:4961/v1/ws/bench/{room}' --readers-over hocuspocus --writer-over hocuspocus
fi
kill "${pids[-1]}"

# The same with the store on tmpfs: the server's own path, without the fsync.
if want yrelay-tmpfs && [ -d /dev/shm ]; then
  shm=$(mktemp -d -p /dev/shm)
  target/release/yrelay serve --listen 127.0.0.1:4965 --store "sqlite://$shm/yrelay.db" 2>/dev/null & pids+=($!)
  wait_port 4965; run yrelay-tmpfs 'ws://127.0.0.1:4965/v1/ws/bench/{room}'; kill "${pids[-1]}"
  rm -rf "$shm"
fi

if want floor; then
  target/release/yrelay-bench relay --listen 127.0.0.1:4962 2>/dev/null & pids+=($!)
  wait_port 4962; run floor 'ws://127.0.0.1:4962/{room}'; kill "${pids[-1]}"
fi

if want y-websocket; then
  HOST=127.0.0.1 PORT=4963 node "$cache/ws-server/node_modules/@y/websocket-server/src/server.js" >/dev/null 2>&1 & pids+=($!)
  wait_port 4963; run y-websocket 'ws://127.0.0.1:4963/{room}'; kill "${pids[-1]}"
fi

if want y-sweet; then
  "$cache/y-sweet/bin/y-sweet" serve --host 127.0.0.1 --port 4964 >/dev/null 2>&1 & pids+=($!)
  wait_port 4964; run y-sweet 'ws://127.0.0.1:4964/d/{room}/ws/{room}'; kill "${pids[-1]}"
fi

if want hocuspocus; then
  PORT=4966 node "$cache/hocuspocus/serve.mjs" >/dev/null 2>&1 & pids+=($!)
  wait_port 4966; run hocuspocus 'ws://127.0.0.1:4966/{room}' --readers-over hocuspocus --writer-over hocuspocus; kill "${pids[-1]}"
fi
rm -rf "$data"

# One picture per reader count: every server's latency CDF, side by side.
if [ -n "${SVG_DIR:-}" ]; then
  mkdir -p "$SVG_DIR"
  for n in $readers; do
    runs=()
    for s in yrelay $servers; do
      [ -s "$results/$s-$n.json" ] && [[ " ${runs[*]} " != *" $s="* ]] && runs+=("$s=$results/$s-$n.json")
    done
    target/release/yrelay-bench cdf --svg "$SVG_DIR/fanout-$n.svg" \
      --title "fan-out: $n readers, $updates updates at $rate/s" "${runs[@]}"
    echo "== drew $SVG_DIR/fanout-$n.svg" >&2
  done
fi

python3 - "$results" "$readers" "$servers" <<'PY'
import json, sys, os
results, readers, asked = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
order = ["yrelay", "yrelay-tmpfs", "floor", "y-websocket", "y-sweet", "yrelay-hocuspocus", "hocuspocus"]
servers = [s for s in order if s == "yrelay" or s in asked]
print("| server | readers | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | p99 vs yrelay | converged |")
print("|---|---|---|---|---|---|---|---|---|")
for n in readers:
    base = json.load(open(os.path.join(results, f"yrelay-{n}.json")))["latency_ms"]["p99"]
    for s in servers:
        path = os.path.join(results, f"{s}-{n}.json")
        if not os.path.exists(path):
            print(f"| {s} | {n} | failed | | | | | | |")
            continue
        r = json.load(open(path))
        l = r["latency_ms"]
        print(f"| {s} | {n} | {r['deliveries_per_second']:,.0f} | {l['p50']:.2f} | {l['p90']:.2f} | {l['p99']:.2f} | {l['max']:.2f} | {l['p99'] / base:.2f}x | {r['converged']} |")
PY
