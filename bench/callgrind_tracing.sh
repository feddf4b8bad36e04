#!/usr/bin/env bash
# Instructions per API request (or, with UNIT=run, per agent run) with tracing off and with OTLP
# gRPC export to a local rotel collector, counted by valgrind's callgrind over the whole
# `jobpilot serve` process (every thread: the request handlers, the worker and the export task
# that converts, encodes and sends the spans). Each configuration runs serve under callgrind
# twice, with N1 and N2 units: requests to GET /api/v1/agents, or job_match runs submitted and
# waited for; the difference of the two totals divided by N2 - N1 is the cost of one unit,
# start-up, connection set-up and shutdown cancelled out. The collector runs outside
# callgrind, so its work is not counted: the figure is jobpilot's own cost.
#
# Metrics are off in both configurations (`OTEL_METRICS_EXPORTER=none`; the untraced one sets
# `OTEL_SDK_DISABLED=true`, which turns off both), so "traced - untraced" is the cost of the
# server span alone (for a run: its ten spans, three in the API and seven in the worker). The spans of the traced runs are all exported before serve exits (its
# shutdown flushes the pipeline), so the export is inside the count.
#
# Usage: bench/callgrind_tracing.sh
# Environment:
#   UNIT       request (default) or run
#   N1, N2     units of the short and the long run (default 300 and 1300 requests, 100 and 400 runs)
#   ROUNDS     rounds, each measuring every binary and configuration (default 1)
#   BINS       "label=path ..." binaries measured side by side, alternating from round to round
#              (default: "new=$JOBPILOT_BIN", i.e. target/release/jobpilot)
#   CONFIGS    configurations (default "untraced traced")
#   EXTRA_ENV  extra NAME=value settings for serve, space-separated
#   RESULTS    also write the raw rows (TSV: round, label, config, N, instructions) to this file
#   BENCH_KEEP_WORK=1 keeps the callgrind output files (for callgrind_annotate --inclusive=yes)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v valgrind >/dev/null || die "valgrind is not installed"

unit="${UNIT:-request}"
case "$unit" in
    request) n1="${N1:-300}"; n2="${N2:-1300}" ;;
    run)     n1="${N1:-100}"; n2="${N2:-400}" ;;
    *) die "UNIT must be request or run" ;;
esac
rounds="${ROUNDS:-1}"
callgrind_setup

# measure <label> <binary> <config> <count>: total instructions (Ir) of one serve process.
measure() {
    local label="$1" bin="$2" config="$3" count="$4" port data out
    port="$(free_port)"; data="$work_dir/data-$label-$config-$count"; out="$work_dir/cg-$label-$config-$count"
    rm -rf "$data"; mkdir -p "$data"
    local -a env=(JOBPILOT_DATA_DIR="$data" JOBPILOT_LOG=warn OTEL_METRICS_EXPORTER=none)
    case "$config" in
        untraced) env+=(OTEL_SDK_DISABLED=true) ;;
        traced)   env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_grpc_port") ;;
        *) die "unknown configuration $config" ;;
    esac
    # shellcheck disable=SC2206 # word splitting is the point
    [ -n "${EXTRA_ENV:-}" ] && env+=($EXTRA_ENV)
    spawn "$out.stdout" "$out.stderr" env "${env[@]}" valgrind --tool=callgrind \
        --callgrind-out-file="$out.cg" "$bin" serve --init --listen "127.0.0.1:$port"
    local pid="$last_pid"
    wait_http "http://127.0.0.1:$port/health" 120 || { cat "$out.stderr" >&2; die "serve did not start"; }
    if [ "$unit" = request ]; then
        python3 "$bench_dir/callgrind.py" get "$port" "$token" "$count"
    else
        python3 "$bench_dir/callgrind.py" submit "$port" "$token" "$count"
        python3 "$bench_dir/callgrind.py" wait "$port" "$token" "$count"
    fi
    stop_pid "$pid" 120
    callgrind_total "$label $config serve" "$out.stderr" "$out.cg"
}

callgrind_rounds

[ -n "${RESULTS:-}" ] && cp "$rows" "$RESULTS"
if [ "$unit" = request ]; then what="GET /api/v1/agents"; else what="job_match run"; fi
python3 "$bench_dir/callgrind.py" table "$rows" "$n1" "$n2" "$what"
