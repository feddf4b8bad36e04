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
configs="${CONFIGS:-untraced traced}"
if [ -z "${BINS:-}" ]; then
    ensure_jobpilot
    bins="new=$jobpilot_bin"
else
    bins="$BINS"
fi
read -r -a bin_list <<<"$bins"
read -r -a config_list <<<"$configs"

start_rotel
log "rotel on grpc :$rotel_grpc_port (pid $rotel_pid)"
first_bin="${bin_list[0]#*=}"
token="$("$first_bin" token --user bench)"
rows="$work_dir/rows.tsv"
: >"$rows"

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
    python3 - "$port" "$token" "$count" "$unit" <<'PY'
import http.client, json, sys, time
port, token, count, unit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
auth = {"Authorization": f"Bearer {token}", "User-Agent": "bench/1.0"}
body = json.dumps({"input": {"resume": "Rust engineer, 6 years of Kubernetes and PostgreSQL.",
                             "job": "Senior Rust developer\nRequirements: Rust, Kubernetes, 5+ years."}})
for _ in range(count):
    if unit == "request":
        c.request("GET", "/api/v1/agents", headers=auth)
    else:
        c.request("POST", "/api/v1/agents/job_match/runs", body=body,
                  headers={**auth, "Content-Type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status in (200, 202), (r.status, data)
# Runs: wait, polling about once a second (a handful of requests, the same in every
# configuration), until none is queued or running, then check that every run succeeded.
def count_in(status):
    c.request("GET", f"/api/v1/runs?status={status}&limit=200", headers=auth)
    r = c.getresponse(); page = json.loads(r.read())
    assert r.status == 200, page
    return len(page["runs"])
deadline = time.time() + 900
while unit == "run" and count_in("queued") + count_in("running") > 0:
    assert time.time() < deadline, "runs did not finish in 15 minutes"
    time.sleep(1)
if unit == "run":
    assert count_in("failed") == 0, "some runs failed"
PY
    stop_pid "$pid" 120
    if grep -qiE 'panic|error' "$out.stderr"; then
        log "$label $config: serve logged errors:"; grep -iE 'panic|error' "$out.stderr" | head -5 >&2
    fi
    awk '/^(summary|totals):/ {print $2; exit}' "$out.cg"
}

for round in $(seq "$rounds"); do
    nb=${#bin_list[@]}
    for k in $(seq 0 $((nb - 1))); do
        spec="${bin_list[$(( (k + round - 1) % nb ))]}"
        label="${spec%%=*}"; bin="${spec#*=}"
        for config in "${config_list[@]}"; do
            for count in "$n1" "$n2"; do
                ir="$(measure "$label" "$bin" "$config" "$count")"
                printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$label" "$config" "$count" "$ir" >>"$rows"
                log "round $round, $label, $config x$count: $ir instructions"
            done
        done
    done
done

[ -n "${RESULTS:-}" ] && cp "$rows" "$RESULTS"

python3 - "$rows" "$n1" "$n2" "$unit" <<'PY'
import statistics, sys
rows_path, n1, n2, unit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ir = {}
for line in open(rows_path):
    rnd, label, config, count, value = line.split("\t")
    ir[(rnd, label, config, int(count))] = int(value)
per = {}
for (rnd, label, config, count), value in ir.items():
    if count == n2 and (rnd, label, config, n1) in ir:
        per[(rnd, label, config)] = (value - ir[(rnd, label, config, n1)]) / (n2 - n1)
print()
what = "GET /api/v1/agents" if unit == "request" else "job_match run"
print(f"Instructions per {what} (callgrind, ({n2} - {n1}) {unit}s)")
print()
print("| round | binary | untraced | traced | traced - untraced |")
print("|---|---|---:|---:|---:|")
for (rnd, label) in sorted({(r, l) for (r, l, _) in per}):
    u = per.get((rnd, label, "untraced")); t = per.get((rnd, label, "traced"))
    diff = f"{t - u:,.0f}" if u is not None and t is not None else "—"
    fmt = lambda v: "—" if v is None else f"{v:,.0f}"
    print(f"| {rnd} | {label} | {fmt(u)} | {fmt(t)} | {diff} |")
labels = sorted({l for (_, l, _) in per})
if len({r for (r, _, _) in per}) > 1:
    print()
    print("| binary | untraced (median) | traced (median) | traced - untraced (median of rounds) |")
    print("|---|---:|---:|---:|")
    for l in labels:
        us = [v for (r, ll, c), v in per.items() if ll == l and c == "untraced"]
        ts = [v for (r, ll, c), v in per.items() if ll == l and c == "traced"]
        ds = [per[(r, l, "traced")] - per[(r, l, "untraced")] for (r, ll, c) in per
              if ll == l and c == "traced" and (r, l, "untraced") in per]
        m = lambda xs: f"{statistics.median(xs):,.0f}" if xs else "—"
        print(f"| {l} | {m(us)} | {m(ts)} | {m(ds)} |")
PY
