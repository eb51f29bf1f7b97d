#!/usr/bin/env bash
# The test command (README, and .ci/run): installs what is missing on a fresh
# Debian machine with the Rust toolchain, Node 20 and npm, then runs every
# check and test: formatting, clippy, Rust unit + integration tests, and the
# Node interop tests against the built binary.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "system packages: redis-server and PostgreSQL (the tests start private processes), chromium (browser test)"
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
[ -x /usr/bin/chromium ] || [ -n "${CHROMIUM:-}" ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "redis-server, PostgreSQL and chromium are installed"
fi

step "npm packages (tests/interop, clients/js)"
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error
npm ci --prefix clients/js --no-audit --no-fund --loglevel=error

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

step "load generator smoke run (tiny sizes; no timing is checked)"
smoke_dir=$(mktemp -d)
target/debug/yrelay serve --listen 127.0.0.1:0 --store "sqlite://$smoke_dir/yrelay.db" 2>"$smoke_dir/server.log" &
smoke_pid=$!
trap 'kill $smoke_pid 2>/dev/null || true; rm -rf "$smoke_dir"' EXIT
for _ in $(seq 100); do
  addr=$(grep -o 'listening on http://[^ ]*' "$smoke_dir/server.log" | sed 's|listening on http://||' || true)
  [ -n "$addr" ] && break
  sleep 0.1
done
[ -n "$addr" ] || { cat "$smoke_dir/server.log"; echo "smoke server did not start"; exit 1; }
target/debug/yrelay-bench fanout --url "ws://$addr/v1/ws/smoke/{room}" --readers 3 --updates 50 --rate 1000
kill $smoke_pid; wait $smoke_pid 2>/dev/null || true

step "Node interop tests (yjs, y-websocket)"
YRELAY_BIN="$PWD/target/debug/yrelay" npm test --prefix tests/interop

step "TypeScript SseProvider (tsc build; tests against the binary, two chromium pages on the demo)"
YRELAY_BIN="$PWD/target/debug/yrelay" npm test --prefix clients/js
