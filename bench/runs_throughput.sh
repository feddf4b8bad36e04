#!/usr/bin/env bash
# End-to-end agent runs per second through Redis: a private redis-server, `jobpilot api` and two
# `jobpilot worker` processes (offline LLM provider), loaded by bench/run_load.py (16 client
# threads POSTing job_match runs for a bounded time and count), then drained. Runs once with
# OTLP export to a local rotel collector and once with tracing disabled, back to back.
# With MODE=serve, one `jobpilot serve` process on a fresh embedded store takes the place of
# Redis, the API and the workers.
#
# Usage: bench/runs_throughput.sh [seconds]            (default 20 s of submissions)
# Environment:
#   CONFIGS      configurations, in order (default "otlp-grpc disabled"); also otlp-http,
#                otlp-grpc-metrics, otlp-grpc-no-metrics, and otlp-down (the collector's port
#                closed for the whole measurement)
#   ROUNDS       repeat the whole sequence, interleaved, each round rotated by one (default 1)
#   CLIENTS      client threads (default 16); MAX_RUNS bound on submissions (default 100000)
#   RATE         total submissions per second (default 0: as fast as the clients can)
#   WORKERS      worker processes (default 2)
#   MODE         redis (default) or serve
#   LOAD         python (default: run_load.py's client threads) or wrk (CLIENTS connections on
#                two wrk threads, bench/submit_runs.lua; lighter on the machine, no RATE)
#   JOBPILOT_BIN, ROTEL_AGENT, EXTRA_ENV, RESULTS: as in api_throughput.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

duration="${1:-${DURATION:-20}}"
configs="${CONFIGS:-otlp-grpc disabled}"
rounds="${ROUNDS:-1}"
clients="${CLIENTS:-16}"
max_runs="${MAX_RUNS:-100000}"
rate="${RATE:-0}"
workers="${WORKERS:-2}"
mode="${MODE:-redis}"
load_wrk=""
case "${LOAD:-python}" in python) ;; wrk) load_wrk=1; command -v wrk >/dev/null || die "wrk is not installed" ;;
    *) die "LOAD must be python or wrk" ;; esac
case "$mode" in redis|serve) ;; *) die "MODE must be redis or serve" ;; esac

[ "$mode" = serve ] || command -v redis-server >/dev/null || die "redis-server is not installed"
ensure_jobpilot
start_rotel
log "rotel on grpc :$rotel_grpc_port (pid $rotel_pid)"
token="$("$jobpilot_bin" token --user bench)"
admin_token="$("$jobpilot_bin" token --user bench-admin --admin)"
rows="$work_dir/rows.jsonl"
: >"$rows"

# The shutdown line of a jobpilot process: "exported dropped" (empty if missing).
flushed_counts() {
    sed -n 's/.*telemetry flushed.*exported=\([0-9]*\) dropped=\([0-9]*\).*/\1 \2/p' "$1" | tail -1
}

run_config() {
    local round="$1" name="$2" dir="$work_dir/$2-$1"
    rm -rf "$dir"; mkdir -p "$dir/redis"

    local redis_port api_port redis_pid="" i
    if [ "$mode" = redis ]; then
        redis_port="$(free_port)"
        spawn "$dir/redis.out" "$dir/redis.err" redis-server --port "$redis_port" --bind 127.0.0.1 \
            --save "" --appendonly no --dir "$dir/redis" --daemonize no
        redis_pid="$last_pid"
        for i in $(seq 100); do
            redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
            sleep 0.05
        done
        redis-cli -p "$redis_port" ping >/dev/null || die "redis did not start"
    fi

    # Only the start and shutdown lines of the binary itself (they carry the span counts);
    # everything else at warn, as in the API benchmark.
    local filter="warn,jobpilot=info,jobpilot_api=warn,jobpilot_worker=warn,jobpilot_queue=warn,jobpilot_agents=warn,jobpilot_telemetry=warn"
    local -a env=(JOBPILOT_LOG="$filter"
        JOBPILOT_TRACE_EXCLUDED_URLS=/health,/ready,/docs,/openapi.json,/api/v1/admin/queue,/api/v1/admin/telemetry)
    case "$name" in
        disabled)  env+=(OTEL_SDK_DISABLED=true) ;;
        otlp-grpc) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_grpc_port") ;;
        # The cost of metrics: the same traces, with metrics pushed every 5 s (and served as
        # Prometheus text), or with metrics off.
        otlp-grpc-metrics) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_grpc_port"
                                 OTEL_METRICS_EXPORTER=otlp,prometheus OTEL_METRIC_EXPORT_INTERVAL=5000) ;;
        otlp-grpc-no-metrics) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_grpc_port"
                                    OTEL_METRICS_EXPORTER=none) ;;
        otlp-http) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_http_port"
                         OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf) ;;
        # A collector outage for the whole measurement: a port nothing listens on.
        otlp-down) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$(free_port)") ;;
        *) die "unknown configuration $name" ;;
    esac
    # shellcheck disable=SC2206 # word splitting is the point
    [ -n "${EXTRA_ENV:-}" ] && env+=($EXTRA_ENV)

    api_port="$(free_port)"
    local api_pid
    local -a worker_pids=() pid_args=()
    if [ "$mode" = serve ]; then
        spawn "$dir/api.out" "$dir/api.err" env "${env[@]}" JOBPILOT_DATA_DIR="$dir/data" \
            "$jobpilot_bin" serve --init --listen "127.0.0.1:$api_port"
        api_pid="$last_pid"; pid_args=(--pid "api=$api_pid")
    else
        env+=(REDIS_URL="redis://127.0.0.1:$redis_port")
        spawn "$dir/api.out" "$dir/api.err" env "${env[@]}" "$jobpilot_bin" api --listen "127.0.0.1:$api_port"
        api_pid="$last_pid"; pid_args=(--pid "api=$api_pid" --pid "redis=$redis_pid")
        for i in $(seq "$workers"); do
            spawn "$dir/worker$i.out" "$dir/worker$i.err" env "${env[@]}" "$jobpilot_bin" worker
            worker_pids+=("$last_pid"); pid_args+=(--pid "worker$i=$last_pid")
        done
    fi
    case "$name" in otlp-*) pid_args+=(--pid "rotel=$rotel_pid") ;; esac
    wait_http "http://127.0.0.1:$api_port/ready" 20 || { cat "$dir/api.err" >&2; die "$name: api not ready"; }
    sleep 0.5  # let the workers join the consumer group

    local load
    load="$(loadavg)"
    log "$name (round $round): submitting for ${duration}s with $clients clients (load $load)"
    python3 "$bench_dir/run_load.py" ${load_wrk:+--wrk} --base "http://127.0.0.1:$api_port" --token "$token" \
        --admin-token "$admin_token" --clients "$clients" --duration "$duration" \
        --max-runs "$max_runs" --rate "$rate" "${pid_args[@]}" >"$dir/result.json"

    local api_stats alive=1
    api_stats="$(curl -fs -H "Authorization: Bearer $admin_token" "http://127.0.0.1:$api_port/api/v1/admin/telemetry" || echo '{}')"
    for pid in "$api_pid" "${worker_pids[@]}"; do kill -0 "$pid" 2>/dev/null || alive=0; done
    # Redis's own account of its time, per command (a script's calls are counted under the
    # script and again under each command it runs).
    [ -z "$redis_pid" ] || redis-cli -p "$redis_port" INFO commandstats >"$dir/commandstats.txt"
    # Stop the workers and the API (they flush their spans and log the totals), then Redis.
    for pid in "${worker_pids[@]}" "$api_pid"; do stop_pid "$pid" 30; done
    [ -z "$redis_pid" ] || stop_pid "$redis_pid" 10
    if [ "$alive" = 0 ]; then
        log "$name: a jobpilot process exited on its own during the measurement; discarding it"
        return 1
    fi

    local spans="{}" counts
    case "$name" in otlp-*)
        spans="{"
        for f in "$dir/api.err" "$dir"/worker*.err; do
            [ -e "$f" ] || continue
            counts="$(flushed_counts "$f")"
            if [ -z "$counts" ]; then
                # With the collector down the last flush may not complete, and says so.
                [ "$name" = otlp-down ] && continue
                die "$name: no 'telemetry flushed' line in $f"
            fi
            spans+="\"$(basename "$f" .err)\": [${counts/ /, }], "
        done
        spans="${spans%, }}"
    esac
    python3 - "$dir/result.json" "$round" "$name" "$load" "$spans" "$api_stats" >>"$rows" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r.update(round=sys.argv[2], name=sys.argv[3], load=sys.argv[4], spans=json.loads(sys.argv[5]),
         api_admin=json.loads(sys.argv[6]).get("stats"))
print(json.dumps(r))
PY
    python3 - "$rows" >&2 <<'PY2'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print("[{name}] {finished} runs, {runs_per_s} runs/s, enqueue->start p50 {wait_ms_p50} ms p99 {wait_ms_p99} ms,"
      " submit errors {submit_errors}, spans {spans}".format(**r))
PY2
    if [ -s "$dir/commandstats.txt" ]; then
        python3 - "$dir/commandstats.txt" "$rows" >&2 <<'PY3'
import json, sys
runs = max(1, json.loads(open(sys.argv[2]).read().splitlines()[-1])["finished"])
stats = []
for line in open(sys.argv[1]):
    if line.startswith("cmdstat_"):
        name, fields = line.strip()[len("cmdstat_"):].split(":", 1)
        f = dict(kv.split("=") for kv in fields.split(","))
        stats.append((int(f["usec"]), int(f["calls"]), name))
print("redis time per run (us) and calls per run, by command: " + ", ".join(
    f"{name} {usec / runs:.1f} us / {calls / runs:.2f}" for usec, calls, name in sorted(stats, reverse=True)[:12]))
PY3
    fi
    return 0
}

log "machine load before: $(loadavg); ${duration}s of submissions, $clients clients, rate ${rate:-0} (0 = unpaced), $rounds round(s)${EXTRA_ENV:+; extra: $EXTRA_ENV}"
run_rounds "$rounds" "$configs"

[ -n "${RESULTS:-}" ] && cp "$rows" "$RESULTS"

python3 - "$rows" "$duration" "$clients" "$workers" "$mode" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
duration, clients, workers = sys.argv[2], sys.argv[3], sys.argv[4]
print()
procs = "one serve process (embedded store)" if sys.argv[5] == "serve" else f"Redis, api + {workers} workers"
print(f"job_match runs, {procs}: {clients} client threads for {duration} s;"
      " CPU seconds from the first submit to the drained queue")
print()
print("| round | config | runs | runs/s | submits/s | enqueue→start p50 / p99 ms | run p50 / p99 ms | "
      "POST p50 / p99 ms | failed | CPU s api / workers / redis / rotel / client / rest | wall s | peak RSS MiB api / worker | "
      "spans exported (dropped) | load 1/5/15 |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|")
for r in rows:
    cpu = r["cpu_s"]
    wcpu = sum(v for k, v in cpu.items() if k.startswith("worker"))
    wrss = max((v for k, v in r["peak_rss_mib"].items() if k.startswith("worker")), default=0)
    rotel = f"{cpu['rotel']:.1f}" if "rotel" in cpu else "—"
    rest = r["machine_busy_s"] - sum(cpu.values()) - r["client_cpu_s"]
    failed = r["by_status"].get("failed", 0) + r["submit_errors"]
    if r["spans"]:
        exp = sum(v[0] for v in r["spans"].values()); drop = sum(v[1] for v in r["spans"].values())
        spans = f"{exp:,} ({drop})"
    else:
        spans = "—"
    print(f"| {r['round']} | {r['name']} | {r['finished']:,} | {r['runs_per_s']:,.0f} | {r['submits_per_s']:,.0f} | "
          f"{r['wait_ms_p50']} / {r['wait_ms_p99']} | {r['run_ms_p50']} / {r['run_ms_p99']} | "
          f"{r['post_ms_p50']} / {r['post_ms_p99']} | {failed} | "
          f"{cpu['api']:.1f} / {wcpu:.1f} / {cpu.get('redis', 0):.1f} / {rotel} / {r['client_cpu_s']:.1f} / {rest:.1f} | "
          f"{r['client_wall_s']:.1f} | "
          f"{r['peak_rss_mib']['api']:.0f} / {wrss:.0f} | {spans} | {r['load']} |")
print()
print("wall s: first submit to drained queue (machine capacity = wall x CPUs); rest: busy CPU not charged to")
print("the processes listed (other tenants, kernel softirq). Spans per process are in the lines below.")
print()
by = {}
for r in rows:
    by.setdefault(r["name"], []).append(r["runs_per_s"])
if "disabled" in by:
    base = statistics.median(by["disabled"])
    for name, v in by.items():
        if name != "disabled":
            m = statistics.median(v)
            print(f"runs/s {name}/disabled: {m:,.0f} / {base:,.0f} = {m / base:.1%}")
if "otlp-grpc-metrics" in by and "otlp-grpc-no-metrics" in by:
    on, off = statistics.median(by["otlp-grpc-metrics"]), statistics.median(by["otlp-grpc-no-metrics"])
    print(f"runs/s metrics on/off: {on:,.0f} / {off:,.0f} = {on / off:.1%} (medians of {len(by['otlp-grpc-metrics'])} rounds)")
    pairs = {}
    for r in rows:
        pairs.setdefault(r["round"], {})[r["name"]] = r["runs_per_s"]
    for rnd, p in sorted(pairs.items()):
        if "otlp-grpc-metrics" in p and "otlp-grpc-no-metrics" in p:
            print(f"  round {rnd}: {p['otlp-grpc-metrics'] / p['otlp-grpc-no-metrics']:.1%}")
for r in rows:
    if r["spans"]:
        per = {k: f"{v[0]:,} exported, {v[1]} dropped" for k, v in r["spans"].items()}
        workers_exp = sum(v[0] for k, v in r["spans"].items() if k.startswith("worker"))
        print(f"round {r['round']} {r['name']}: " + "; ".join(f"{k}: {v}" for k, v in per.items())
              + f" -> worker spans per run {workers_exp / max(1, r['finished']):.2f}, api spans per submitted run"
              f" {r['spans']['api'][0] / max(1, r['submitted']):.2f} (POST: server + producer; 1 GET to read it back)")
PY
