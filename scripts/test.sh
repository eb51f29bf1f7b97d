#!/usr/bin/env bash
# The test command (README, and .ci/run): installs what is missing on a fresh
# Debian machine with the Rust toolchain, Node 20 and npm, then runs every
# check and test: formatting, clippy, Rust unit + integration tests, and the
# Node interop tests against the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "system packages: redis-server and PostgreSQL (the tests start private processes), chromium (browser test), python3-venv (schemathesis), openssl (TLS test certificate)"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
[ -x /usr/bin/chromium ] || [ -n "${CHROMIUM:-}" ] || missing+=(chromium)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "redis-server, PostgreSQL, chromium, python3-venv and openssl are installed"
fi

step "npm packages (tests/interop, clients/js)"
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
npm ci --prefix clients/js --no-audit --no-fund --loglevel=error

step "schemathesis (checks the server against its OpenAPI document)"
st_venv=target/tools/schemathesis-4.32.5
if [ ! -x "$st_venv/bin/st" ]; then
  python3 -m venv "$st_venv"
  "$st_venv/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5
fi

step "format and lints"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "rustfmt not installed: skipped"
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --locked -- -D warnings
else
  echo "clippy not installed: skipped"
fi

step "Rust tests"
cargo build --workspace --locked
cargo test --workspace --locked

step "chaos: 60 s of killed instances, Redis restarts, PostgreSQL stops and a full disk under writers on every transport; nothing acknowledged may be lost"
target/debug/yrelay-bench chaos --seconds 60 --yrelay target/debug/yrelay

step "a live server for the load generator smoke run and the OpenAPI check"
smoke_dir=$(mktemp -d)
# (the acks run posts from one address as fast as it can)
target/debug/yrelay serve --listen 127.0.0.1:0 --store "sqlite://$smoke_dir/yrelay.db" --max-posts-per-sec 1000000 2>"$smoke_dir/server.log" &
smoke_pid=$!
trap 'kill $smoke_pid 2>/dev/null || true; rm -rf "$smoke_dir"' EXIT
for _ in $(seq 100); do
  addr=$(grep -o 'listening on http://[^ ]*' "$smoke_dir/server.log" | sed 's|listening on http://||' || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$smoke_dir/server.log"; echo "smoke server did not start"; exit 1; }

step "load generator smoke run (tiny sizes; no timing is checked)"
target/debug/yrelay-bench fanout --url "ws://$addr/v1/ws/smoke/{room}" --readers 3 --updates 50 --rate 1000
target/debug/yrelay-bench fanout --url "ws://$addr/v1/ws/smoke/{room}" --readers 4 --updates 50 --rate 1000 --readers-over sse --processes 2
target/debug/yrelay-bench fanout --url "ws://$addr/v1/ws/smoke/{room}" --readers 4 --updates 50 --rate 1000 --readers-over socketio --processes 2
target/debug/yrelay-bench fanout --url "ws://$addr/v1/ws/smoke/{room}" --readers 4 --updates 50 --rate 1000 --readers-over socketio-batch --processes 2
target/debug/yrelay-bench fanout --url "ws://$addr/v1/ws/smoke/{room}" --readers 4 --updates 50 --rate 1000 --readers-over hocuspocus --processes 2
target/debug/yrelay-bench many-docs --url "ws://$addr/v1/ws/smoke/{room}" --docs 3 --clients 3 --updates 20 --rate 200
target/debug/yrelay-bench idle --url "ws://$addr/v1/ws/smoke/{room}" --connections 20 --docs 4 --server-pid $smoke_pid --hold 0.2
target/debug/yrelay-bench acks --addr "$addr" --workers 2 --docs 1 --seconds 0.5
target/debug/yrelay-bench join --url "ws://$addr/v1/ws/smoke/{room}" --updates 50 --joins 2
target/debug/yrelay-bench join --url "ws://$addr/v1/ws/smoke/{room}" --updates 4 --payload-bytes 100000 --joins 1
relay_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/debug/yrelay-bench relay --listen "127.0.0.1:$relay_port" 2>"$smoke_dir/relay.log" &
relay_pid=$!
for _ in $(seq 100); do grep -q listening "$smoke_dir/relay.log" && break; sleep 0.1; done
target/debug/yrelay-bench fanout --url "ws://127.0.0.1:$relay_port/{room}" --readers 3 --updates 50 --rate 1000
kill $relay_pid; wait $relay_pid 2>/dev/null || true

step "OpenAPI contract: schemathesis against the same server"
# Binary bodies are Yjs encodings a schema cannot describe, so random bytes
# that fit the schema are rightly refused: positive_data_acceptance is off.
# Event streams never end, so they are tested elsewhere (SSE tests).
"$st_venv/bin/st" run "http://$addr/v1/openapi.json" --checks all \
  --exclude-checks positive_data_acceptance \
  --exclude-path '/v1/docs/{space}/{doc}/events' --exclude-path '/v1/spaces/{space}/events' \
  --max-examples 30 --seed 1 --no-color
kill $smoke_pid; wait $smoke_pid 2>/dev/null || true

step "Node interop tests (yjs, y-websocket, socket.io-client, @hocuspocus/provider 3 and 4, @y-sweet/client and sdk; TLS and tokens)"
YRELAY_BIN="$PWD/target/debug/yrelay" npm test --prefix tests/interop

step "TypeScript SseProvider, the demos and the inspector (tsc + esbuild; tests against the binary; chromium pages on the map demo, the Tiptap/Hocuspocus editor and the inspector)"
YRELAY_BIN="$PWD/target/debug/yrelay" npm test --prefix clients/js

step "the inspector's bundle: the committed files are what the build made"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git diff --exit-code --stat -- crates/yrelay/inspect || {
    echo "crates/yrelay/inspect differs from a fresh build: run npm run build --prefix clients/js and commit it"
    exit 1
  }
else
  echo "not a git checkout: skipped"
fi
