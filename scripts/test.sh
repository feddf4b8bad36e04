#!/usr/bin/env bash
# Checks formatting and clippy lints, then runs the whole test suite with the real components
# it needs, each installed here if missing: a Redis server (started on a free loopback port and
# stopped on exit), an OpenTelemetry collector (rotel) and the schemathesis API fuzzer from PyPI,
# a headless Chromium with chromedriver for the browser tests, promtool to check the Prometheus
# text, and openssl to make keys. Tests start and stop the collector and the driver themselves.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/target/test-tools"
mkdir -p "$tools"

# --- Redis -------------------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
    echo "test.sh: installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

# --- promtool (validates the Prometheus text of /metrics), from Debian's prometheus package.
# The package also ships a Prometheus server; it is never started here, and if the package's
# scripts started one, it is stopped again.
if ! command -v promtool >/dev/null 2>&1; then
    echo "test.sh: installing promtool (Debian package prometheus)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
fi

# --- Chromium and chromedriver (browser tests; each test starts and stops its own driver) --
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    echo "test.sh: installing chromium and chromium-driver"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
export JOBPILOT_TEST_CHROMEDRIVER="$(command -v chromedriver)"

# --- openssl (the JWT tests make their RSA, EC and Ed25519 keys with it) ----------------
if ! command -v openssl >/dev/null 2>&1; then
    echo "test.sh: installing openssl"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

# --- rotel (an OpenTelemetry collector) and schemathesis (an OpenAPI fuzzer), from PyPI --
rotel_version="0.0.1a15"
schemathesis_version="4.32.5"
if [ ! -x "$tools/venv/bin/python" ]; then
    python3 -m venv "$tools/venv"
fi
if ! "$tools/venv/bin/python" -c "import rotel" 2>/dev/null; then
    echo "test.sh: installing rotel $rotel_version"
    "$tools/venv/bin/pip" install -q "rotel==$rotel_version"
fi
rotel_agent="$("$tools/venv/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
chmod +x "$rotel_agent"
export JOBPILOT_TEST_ROTEL="$rotel_agent"
if [ ! -x "$tools/venv/bin/schemathesis" ]; then
    echo "test.sh: installing schemathesis $schemathesis_version"
    "$tools/venv/bin/pip" install -q "schemathesis==$schemathesis_version"
fi
export JOBPILOT_TEST_SCHEMATHESIS="$tools/venv/bin/schemathesis"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

redis_dir="$(mktemp -d)"
redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$redis_dir" --daemonize yes --pidfile "$redis_dir/redis.pid" \
    --logfile "$redis_dir/redis.log"
cleanup() {
    local status=$? pid
    if [ -f "$redis_dir/redis.pid" ]; then
        pid="$(cat "$redis_dir/redis.pid")"
        kill "$pid" 2>/dev/null || true
        # Redis writes its log as it shuts down: removing its directory before it has exited
        # can fail with "Directory not empty". Wait for it, at most 5 s.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -rf "$redis_dir"
    exit "$status"
}
trap cleanup EXIT
for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
export JOBPILOT_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"

cd "$root"
# Formatting and lints first: a style or lint failure is reported before the slow tests run.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast -- --include-ignored
