#!/usr/bin/env bash
# What a loaded document costs the server: for each shape and size, one
# server stores the document, compacts it and stops; a fresh server on the
# same SQLite file (its compactor off, so only the document is measured) is
# asked for it by one client, and its RSS is read before and after.
#
#   bash bench/memory.sh                    # text and map, 1 20 100 MB
#   SIZES="1 20" SHAPES=text bash bench/memory.sh
#   YRELAY=/tmp/old/yrelay bash bench/memory.sh   # another build of the server
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
sizes=${SIZES:-1 20 100}
shapes=${SHAPES:-text map}
port=${PORT:-4971}
bin=target/release
server=${YRELAY:-$bin/yrelay}   # the server binary to measure
cargo build --release --locked -p yrelay -p yrelay-bench >&2
data=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
serve() {
  "$server" serve --listen "127.0.0.1:$port" --store "sqlite://$data/y.db" \
    --max-updates-per-sec 100000 --compact-idle-secs 1 "$@" 2>"$data/server.log" & pid=$!
  wait_port "$port"
}
# compacted: until the writing server has compacted the document.
compacted() {
  for _ in $(seq 600); do
    grep -q "compacted" "$data/server.log" && return 0
    sleep 0.1
  done
  echo "the document was not compacted" >&2; return 1
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }
for shape in $shapes; do
  for mb in $sizes; do
    room="memory-$shape-$mb-$RANDOM"
    url="ws://127.0.0.1:$port/v1/ws/bench/$room"
    echo "== $shape, $mb MB" >&2
    serve; "$bin/yrelay-bench" memory write --url "$url" --mb "$mb" --shape "$shape" >&2; compacted; stop
    serve --no-compactor; echo -n "$shape $mb MB: "; "$bin/yrelay-bench" memory load --url "$url" --server-pid "$pid" --settle 6; stop
  done
done
