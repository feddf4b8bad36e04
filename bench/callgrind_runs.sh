#!/usr/bin/env bash
# Instructions per agent run of one `jobpilot worker` process on Redis (or, with PROCESS=api,
# of one `jobpilot api` process accepting runs; with PROCESS=redis, of the redis-server that
# both use), untraced and with OTLP gRPC export to a local rotel collector, counted by
# valgrind's callgrind over every thread of the process (the runs, the Redis client, the
# export task that encodes and sends the spans).
#
# For each configuration and count: a private redis-server and a `jobpilot api` that accepts
# N job_match runs. With PROCESS=worker (the default) the API is not measured (tracing off)
# and a worker under callgrind then drains the runs and is stopped once every run has
# finished; with PROCESS=api the API runs under callgrind and no worker is started. Stopping
# the process flushes its spans, so the export is inside the count. The difference of the
# totals for N1 and N2 runs divided by N2 - N1 is the cost of one run, start-up and shutdown
# cancelled out.
#
# Usage: bench/callgrind_runs.sh
# Environment:
#   PROCESS    worker (default), api or redis (the worker runs as with worker, not measured;
#              the count includes the few listings that check the runs have finished)
#   N1, N2     runs of the short and the long measurement (default 100 and 400)
#   ROUNDS     rounds, each measuring every binary and configuration (default 1)
#   BINS       "label=path ..." binaries measured side by side (default "new=$JOBPILOT_BIN")
#   CONFIGS    configurations (default "untraced traced")
#   METRICS    OTEL_METRICS_EXPORTER of the measured process (default none; the untraced
#              configuration turns metrics off with the rest of telemetry)
#   EXTRA_ENV  extra NAME=value settings for the worker, space-separated
#   RESULTS    also write the raw rows (TSV: round, label, config, N, instructions) to this file
#   BENCH_KEEP_WORK=1 keeps the callgrind output files (for callgrind_annotate --inclusive=yes)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v valgrind >/dev/null || die "valgrind is not installed"
command -v redis-server >/dev/null || die "redis-server is not installed"

n1="${N1:-100}"; n2="${N2:-400}"; rounds="${ROUNDS:-1}"
process="${PROCESS:-worker}"
case "$process" in worker | api | redis) ;; *) die "PROCESS must be worker, api or redis" ;; esac
callgrind_setup

# measure <label> <binary> <config> <count>: total instructions (Ir) of the measured process.
measure() {
    local label="$1" bin="$2" config="$3" count="$4" dir redis_port api_port i
    dir="$work_dir/$label-$config-$count"
    rm -rf "$dir"; mkdir -p "$dir/redis"
    redis_port="$(free_port)"
    local -a redis_cmd=(redis-server)
    [ "$process" = redis ] && redis_cmd=(valgrind --tool=callgrind --callgrind-out-file="$dir/redis.cg" redis-server)
    spawn "$dir/redis.out" "$dir/redis.err" "${redis_cmd[@]}" --port "$redis_port" --bind 127.0.0.1 \
        --save "" --appendonly no --dir "$dir/redis" --daemonize no
    local redis_pid="$last_pid"
    for i in $(seq 400); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.05
    done
    local -a common=(REDIS_URL="redis://127.0.0.1:$redis_port" JOBPILOT_LOG=warn OTEL_METRICS_EXPORTER=${METRICS:-none})
    local -a env=("${common[@]}")
    case "$config" in
        untraced) env+=(OTEL_SDK_DISABLED=true) ;;
        traced)   env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_grpc_port") ;;
        *) die "unknown configuration $config" ;;
    esac
    # shellcheck disable=SC2206 # word splitting is the point
    [ -n "${EXTRA_ENV:-}" ] && env+=($EXTRA_ENV)
    local -a api_cmd=(env "${common[@]}" OTEL_SDK_DISABLED=true)
    [ "$process" = api ] && api_cmd=(env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$dir/api.cg")
    api_port="$(free_port)"
    spawn "$dir/api.out" "$dir/api.err" "${api_cmd[@]}" "$bin" api --listen "127.0.0.1:$api_port"
    local api_pid="$last_pid"
    wait_http "http://127.0.0.1:$api_port/ready" 120 || { cat "$dir/api.err" >&2; die "api did not start"; }
    python3 "$bench_dir/callgrind.py" submit "$api_port" "$token" "$count"
    if [ "$process" != api ]; then
        local -a worker_cmd=(env "${env[@]}")
        [ "$process" = worker ] && worker_cmd+=(valgrind --tool=callgrind --callgrind-out-file="$dir/worker.cg")
        spawn "$dir/worker.out" "$dir/worker.err" "${worker_cmd[@]}" "$bin" worker
        local worker_pid="$last_pid"
        python3 "$bench_dir/callgrind.py" wait "$api_port" "$token" "$count"
        stop_pid "$worker_pid" 120
    fi
    stop_pid "$api_pid" 120
    stop_pid "$redis_pid" 60
    callgrind_total "$label $config $process" "$dir/$process.err" "$dir/$process.cg"
}

callgrind_rounds

[ -n "${RESULTS:-}" ] && cp "$rows" "$RESULTS"
python3 "$bench_dir/callgrind.py" table "$rows" "$n1" "$n2" "job_match run, $process process"
