#!/usr/bin/env bash
# API throughput and latency of `GET /api/v1/agents` (JWT-authenticated) under wrk, with
# tracing off, with the console exporter (stdout to /dev/null) and with OTLP to a local rotel
# collector (gRPC, and HTTP/protobuf), measured back to back in one invocation.
#
# Usage: bench/api_throughput.sh [seconds]          (default 20 s per configuration)
# Environment:
#   CONFIGS      configurations to run, in order (default "disabled console otlp-grpc otlp-http")
#   ROUNDS       repeat the whole sequence, interleaved, each round rotated by one (default 1)
#   WARMUP       warm-up seconds before each measurement (default 3)
#   CONNECTIONS  wrk connections (default 32); THREADS wrk threads (default 2)
#   JOBPILOT_BIN the binary (default target/release/jobpilot, built if missing)
#   ROTEL_AGENT  the collector binary (default: the one ./scripts/test.sh installs)
#   EXTRA_ENV    extra NAME=value settings for the server, space-separated
#                (e.g. "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=256")
#   RESULTS      also write the raw rows (TSV) to this file
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

duration="${1:-${DURATION:-20}}"
configs="${CONFIGS:-disabled console otlp-grpc otlp-http}"
rounds="${ROUNDS:-1}"
warmup="${WARMUP:-3}"
connections="${CONNECTIONS:-32}"
threads="${THREADS:-2}"

command -v wrk >/dev/null || die "wrk is not installed"
ensure_jobpilot
start_rotel
log "rotel on grpc :$rotel_grpc_port, http :$rotel_http_port (pid $rotel_pid)"

token="$("$jobpilot_bin" token --user bench)"
admin_token="$("$jobpilot_bin" token --user bench-admin --admin)"
rows="$work_dir/rows.tsv"
: >"$rows"

# telemetry_stats <port>: "exported dropped failed_exports queued" from the admin endpoint.
telemetry_stats() {
    curl -fs --max-time 2 -H "Authorization: Bearer $admin_token" \
        "http://127.0.0.1:$1/api/v1/admin/telemetry" \
        | python3 -c 'import json,sys; s=json.load(sys.stdin)["stats"]; print(s["exported"], s["dropped"], s["failed_exports"], s["queued"])'
}

# wait_flushed <port>: until nothing is queued and the exported count has not moved for
# 1.5 s (longer than the 1 s schedule delay), at most 20 s. Prints the final stats.
wait_flushed() {
    local port="$1" last="" now stable=0 deadline=$((SECONDS + 20))
    while [ "$SECONDS" -lt "$deadline" ]; do
        now="$(telemetry_stats "$port")"
        if [ "$now" = "$last" ] && [ "$(echo "$now" | cut -d' ' -f4)" = 0 ]; then
            stable=$((stable + 1))
            [ "$stable" -ge 3 ] && break
        else
            stable=0
        fi
        last="$now"
        sleep 0.5
    done
    echo "$now"
}

# to_ms <wrk duration like 812.00us, 1.20ms, 1.01s>
to_ms() {
    python3 -c '
import re, sys
m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", sys.argv[1])
f = {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]
print(f"{float(m.group(1)) * f:.3f}")' "$1"
}

# server_alive <pid> <name> <stderr>: false (and a log line) when the server has exited before
# we stopped it, which makes the measurement worthless; the caller then runs it again.
server_alive() {
    kill -0 "$1" 2>/dev/null && return 0
    local rc=0
    wait "$1" 2>/dev/null || rc=$?
    log "$2: the server exited on its own (status $rc) during the measurement; discarding it"
    tail -3 "$3" >&2
    return 1
}

run_config() {
    local round="$1" name="$2"
    local port data out err
    port="$(free_port)"
    data="$work_dir/data-$name-$round"
    out="$work_dir/$name-$round.stdout"
    err="$work_dir/$name-$round.stderr"
    rm -rf "$data"; mkdir -p "$data"

    # Admin polling is excluded from tracing so that, over OTLP, spans exported during the
    # measurement are exactly the requests the server answered.
    local -a env=(JOBPILOT_DATA_DIR="$data" JOBPILOT_LOG=warn
        JOBPILOT_TRACE_EXCLUDED_URLS=/health,/ready,/docs,/openapi.json,/api/v1/admin/telemetry)
    case "$name" in
        disabled)  env+=(OTEL_SDK_DISABLED=true) ;;
        console)   env+=(OTEL_TRACES_EXPORTER=console); out=/dev/null ;;
        otlp-grpc) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_grpc_port") ;;
        # The cost of metrics: the same traces, with metrics pushed every 5 s (and served as
        # Prometheus text), or with metrics off.
        otlp-grpc-metrics) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_grpc_port"
                                 OTEL_METRICS_EXPORTER=otlp,prometheus OTEL_METRIC_EXPORT_INTERVAL=5000) ;;
        otlp-grpc-no-metrics) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_grpc_port"
                                    OTEL_METRICS_EXPORTER=none) ;;
        otlp-http) env+=(OTEL_EXPORTER_ENDPOINT="http://127.0.0.1:$rotel_http_port"
                         OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf) ;;
        *) die "unknown configuration $name" ;;
    esac
    # shellcheck disable=SC2206 # word splitting is the point
    [ -n "${EXTRA_ENV:-}" ] && env+=($EXTRA_ENV)
    spawn "$out" "$err" env "${env[@]}" "$jobpilot_bin" serve --init --listen "127.0.0.1:$port"
    local pid="$last_pid"
    wait_http "http://127.0.0.1:$port/health" 20 || { cat "$err" >&2; die "$name: server did not start"; }

    local url="http://127.0.0.1:$port/api/v1/agents"
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$url")"
    [ "$code" = 200 ] || die "$name: GET /api/v1/agents answered $code"

    wrk -t"$threads" -c"$connections" -d"${warmup}s" -H "Authorization: Bearer $token" "$url" >/dev/null || true

    local before=(0 0 0 0)
    server_alive "$pid" "$name" "$err" || return 1
    case "$name" in otlp-*) read -r -a before <<<"$(wait_flushed "$port")" ;; esac

    local load cpu0 rotel0 busy0 steal0
    load="$(loadavg)"
    cpu0="$(cpu_ticks "$pid")"; rotel0="$(cpu_ticks "$rotel_pid")"; read -r busy0 steal0 <<<"$(machine_ticks)"
    /usr/bin/time -f '%U %S' -o "$work_dir/wrk.time" \
        wrk -t"$threads" -c"$connections" -d"${duration}s" --latency \
        -H "Authorization: Bearer $token" "$url" >"$work_dir/wrk-$name-$round.txt"
    local cpu1 rotel1 busy1 steal1 hwm
    cpu1="$(cpu_ticks "$pid")"; rotel1="$(cpu_ticks "$rotel_pid")"; read -r busy1 steal1 <<<"$(machine_ticks)"
    hwm="$(peak_rss_kib "$pid")"

    local after=(0 0 0 0)
    server_alive "$pid" "$name" "$err" || return 1
    case "$name" in otlp-*) read -r -a after <<<"$(wait_flushed "$port")" ;; esac
    server_alive "$pid" "$name" "$err" || return 1

    stop_pid "$pid" 30
    if grep -qiE 'panic|error' "$err"; then
        log "$name: the server logged errors:"; grep -iE 'panic|error' "$err" | head -5 >&2
    fi

    local w="$work_dir/wrk-$name-$round.txt"
    local rps requests p50 p99 non2xx sockerr wrk_cpu
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$w")"
    requests="$(awk '/requests in/ {print $1}' "$w")"
    p50="$(to_ms "$(awk '$1 == "50%" {print $2}' "$w")")"
    p99="$(to_ms "$(awk '$1 == "99%" {print $2}' "$w")")"
    non2xx="$(awk '/Non-2xx/ {print $NF}' "$w")"; non2xx="${non2xx:-0}"
    sockerr="$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$w")"; sockerr="${sockerr:-0}"
    wrk_cpu="$(awk '{print $1 + $2}' "$work_dir/wrk.time")"

    local exported="-" dropped="-" failed="-"
    case "$name" in otlp-*)
        exported=$((after[0] - before[0])); dropped=$((after[1] - before[1])); failed=$((after[2] - before[2])) ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$name" "$rps" "$requests" "$p50" "$p99" "$non2xx" "$sockerr" \
        "$(( (cpu1 - cpu0) ))" "$(( (rotel1 - rotel0) ))" "$wrk_cpu" "$(( busy1 - busy0 ))" "$(( steal1 - steal0 ))" \
        "$hwm" "$exported" "$dropped" "$failed" "$load" >>"$rows"
    log "$name (round $round): $rps req/s, p50 ${p50} ms, p99 ${p99} ms, exported $exported, dropped $dropped, load $load"
}

log "machine load before: $(loadavg); ${duration}s per configuration, $rounds round(s)${EXTRA_ENV:+; extra: $EXTRA_ENV}"
run_rounds "$rounds" "$configs"

[ -n "${RESULTS:-}" ] && cp "$rows" "$RESULTS"

python3 - "$rows" "$clk_tck" "$duration" "$connections" <<'PY'
import statistics, sys
rows_path, tck, duration, conns = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
cols = ["round", "name", "rps", "requests", "p50", "p99", "non2xx", "sockerr", "cpu", "rotel_cpu",
        "wrk_cpu", "busy", "steal", "hwm", "exported", "dropped", "failed", "load"]
rows = [dict(zip(cols, line.rstrip("\n").split("\t"))) for line in open(rows_path) if line.strip()]

def sec(ticks):
    return int(ticks) / tck

print()
print(f"GET /api/v1/agents, wrk -t2 -c{conns} -d{duration:g}s --latency; CPU seconds over the measured window")
print()
print("| round | config | req/s | p50 ms | p99 ms | requests | errors | jobpilot CPU s (µs/req) | rotel CPU s | wrk CPU s | rest of machine CPU s | steal s | peak RSS MiB | spans exported | dropped | load 1/5/15 |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    cpu = sec(r["cpu"]); rotel = sec(r["rotel_cpu"]); wrk = float(r["wrk_cpu"])
    other = max(0.0, sec(r["busy"]) - cpu - rotel - wrk)
    req = int(r["requests"])
    errors = int(r["non2xx"]) + int(r["sockerr"])
    exported = r["exported"]
    if exported != "-":
        exported = f"{exported} ({int(exported) - req:+d})"
    rotel_s = f"{rotel:.2f}" if r["name"].startswith("otlp") else "—"
    print(f"| {r['round']} | {r['name']} | {float(r['rps']):,.0f} | {r['p50']} | {r['p99']} | {req:,} | {errors} | "
          f"{cpu:.2f} ({cpu / req * 1e6:.0f}) | {rotel_s} | {wrk:.2f} | {other:.2f} | {sec(r['steal']):.2f} | {int(r['hwm']) / 1024:.1f} | "
          f"{exported} | {r['dropped']} | {r['load']} |")
print()
print("spans exported: delta of the admin counter over the measured window (in brackets: minus wrk's")
print(f"completed requests; up to {conns} requests in flight when wrk stops are served but not counted by wrk).")
print(f"Machine capacity over the window: {duration:g} s x {__import__('os').cpu_count()} CPUs; 'rest of machine' is busy CPU")
print("not charged to jobpilot, rotel or wrk (other tenants, loopback softirq).")

by_name = {}
for r in rows:
    by_name.setdefault(r["name"], []).append(float(r["rps"]))
if "disabled" in by_name:
    base = statistics.median(by_name["disabled"])
    print()
    for name, values in by_name.items():
        if name == "disabled":
            continue
        med = statistics.median(values)
        print(f"throughput {name}/disabled: {med:,.0f} / {base:,.0f} = {med / base:.1%}"
              + (f"  (medians of {len(values)} rounds)" if len(values) > 1 else ""))
if "otlp-grpc-metrics" in by_name and "otlp-grpc-no-metrics" in by_name:
    on = statistics.median(by_name["otlp-grpc-metrics"]); off = statistics.median(by_name["otlp-grpc-no-metrics"])
    print(f"throughput metrics on/off: {on:,.0f} / {off:,.0f} = {on / off:.1%}"
          f"  (medians of {len(by_name['otlp-grpc-metrics'])} rounds)")
    pairs = {}
    for r in rows:
        pairs.setdefault(r["round"], {})[r["name"]] = float(r["rps"])
    for rnd, p in sorted(pairs.items()):
        if "otlp-grpc-metrics" in p and "otlp-grpc-no-metrics" in p:
            print(f"  round {rnd}: {p['otlp-grpc-metrics'] / p['otlp-grpc-no-metrics']:.1%}")
drops = sum(int(r["dropped"]) + int(r["failed"]) for r in rows if r["dropped"] != "-")
print(f"spans dropped or failed over OTLP, all rounds: {drops}")
PY
