#!/usr/bin/env bash
# Latency of the operator's views with a large history, and how fast a finished run reaches a
# live view. For each backend (a private redis-server with `jobpilot api` + `jobpilot worker`,
# and `jobpilot serve` on its embedded store):
#   1. seeds RUNS finished runs (examples/seed_runs.rs: 100 users, three agent types, one in
#      ten failed) through the store's ordinary inserts;
#   2. wrk --latency for SECONDS on GET /api/v1/runs (admin, newest 50), on the same with
#      status=failed (a filter the index does not answer: one run in ten matches), and on the
#      console's Runs page (session cookie);
#   3. opens the SSE stream /api/v1/admin/events, submits EVENT_RUNS resume_review runs at
#      EVENT_RATE per second, and reports, per finished run, the time from its finish (the
#      event's at_ms, set by the write that finished it) to the event's arrival (p50/p95/max).
#
# Usage: bench/console_latency.sh
# Environment: RUNS (default 100000), SECONDS_PER_URL (default 10), EVENT_RUNS (default 500),
#   EVENT_RATE (default 100), BACKENDS (default "redis embedded"), JOBPILOT_BIN
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v wrk >/dev/null || die "wrk is not installed"
command -v redis-server >/dev/null || die "redis-server is not installed"
ensure_jobpilot

runs="${RUNS:-100000}"
seconds="${SECONDS_PER_URL:-10}"
event_runs="${EVENT_RUNS:-500}"
event_rate="${EVENT_RATE:-100}"
backends="${BACKENDS:-redis embedded}"
seed_bin="$(dirname "$jobpilot_bin")/examples/seed_runs"
if [ ! -x "$seed_bin" ]; then
    log "building the seed_runs example"
    (cd "$repo_root" && cargo build --release -q -p jobpilot --example seed_runs)
fi
admin="$("$jobpilot_bin" token --user bench-admin --admin)"

# latency <name> <url> [header]: one wrk run, prints "name p50 p99 req/s".
latency() {
    local name="$1" url="$2" header="${3:-Authorization: Bearer $admin}" out
    out="$work_dir/wrk-$name.txt"
    wrk -t2 -c8 -d"${seconds}s" --latency -H "$header" "$url" >"$out"
    local p50 p99 rps
    p50="$(awk '$1 == "50%" {print $2}' "$out")"
    p99="$(awk '$1 == "99%" {print $2}' "$out")"
    rps="$(awk '/Requests\/sec/ {print $2}' "$out")"
    local non2xx; non2xx="$(awk '/Non-2xx/ {print $NF}' "$out")"
    [ -z "$non2xx" ] || die "$name: $non2xx answers were not 2xx ($out)"
    printf '%-28s p50 %-9s p99 %-9s %s req/s\n' "$name" "$p50" "$p99" "$rps"
}

for backend in $backends; do
    dir="$work_dir/$backend"; mkdir -p "$dir"
    port="$(free_port)"
    export JOBPILOT_LOG=warn OTEL_TRACES_EXPORTER=none
    case "$backend" in
        redis)
            redis_port="$(free_port)"; mkdir -p "$dir/redis"
            spawn "$dir/redis.out" "$dir/redis.err" redis-server --port "$redis_port" \
                --bind 127.0.0.1 --save "" --appendonly no --dir "$dir/redis" --daemonize no
            for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.05; done
            url="redis://127.0.0.1:$redis_port"
            "$seed_bin" "$runs" redis "$url" jobpilot
            spawn "$dir/api.out" "$dir/api.err" env REDIS_URL="$url" "$jobpilot_bin" api --listen "127.0.0.1:$port"
            spawn "$dir/worker.out" "$dir/worker.err" env REDIS_URL="$url" "$jobpilot_bin" worker
            ;;
        embedded)
            "$seed_bin" "$runs" embedded "$dir/data"
            spawn "$dir/serve.out" "$dir/serve.err" env JOBPILOT_DATA_DIR="$dir/data" "$jobpilot_bin" serve --listen "127.0.0.1:$port"
            ;;
        *) die "unknown backend $backend" ;;
    esac
    wait_http "http://127.0.0.1:$port/health" 60 || die "$backend did not start"
    base="http://127.0.0.1:$port"
    echo "== $backend, $runs runs stored"
    latency "$backend-list-newest-50" "$base/api/v1/runs?limit=50"
    latency "$backend-list-failed-50" "$base/api/v1/runs?limit=50&status=failed"
    latency "$backend-console-runs-page" "$base/console" "Cookie: jobpilot_console=$admin"
    python3 "$bench_dir/events_latency.py" --base "$base" --token "$admin" \
        --runs "$event_runs" --rate "$event_rate" | sed "s/^/$backend-events /"
    for pid in "${spawned_pids[@]}"; do stop_pid "$pid" 20; done
    spawned_pids=()
done
