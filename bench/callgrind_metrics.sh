#!/usr/bin/env bash
# Instructions per API request and per agent run with metrics on and off, counted by
# valgrind's callgrind: unlike req/s on a shared machine, an instruction count does not depend
# on what else runs. Each configuration runs `jobpilot serve` under callgrind twice, with N1 and
# N2 units of work (requests to GET /api/v1/agents, or resume_review runs); the difference of the
# two totals divided by N2 - N1 is the cost of one unit, start-up and shutdown cancelled out.
#
# Usage: bench/callgrind_metrics.sh            (N1=500, N2=1500 requests; R1=50, R2=150 runs)
# Environment: N1, N2, R1, R2, JOBPILOT_BIN (default target/release/jobpilot, built if missing)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v valgrind >/dev/null || die "valgrind is not installed"
ensure_jobpilot

n1="${N1:-500}"; n2="${N2:-1500}"; r1="${R1:-50}"; r2="${R2:-150}"
token="$("$jobpilot_bin" token --user bench)"

# measure <config> <kind> <count>: total instructions (Ir) of one serve process.
measure() {
    local config="$1" kind="$2" count="$3" port data out
    port="$(free_port)"; data="$work_dir/data-$config-$kind-$count"; out="$work_dir/cg-$config-$kind-$count"
    mkdir -p "$data"
    local -a env=(JOBPILOT_DATA_DIR="$data" JOBPILOT_LOG=warn OTEL_TRACES_EXPORTER=none)
    case "$config" in
        metrics-on)  env+=(OTEL_METRICS_EXPORTER=prometheus) ;;
        metrics-off) env+=(OTEL_METRICS_EXPORTER=none) ;;
    esac
    spawn "$out.stdout" "$out.stderr" env "${env[@]}" valgrind --tool=callgrind \
        --callgrind-out-file="$out.cg" "$jobpilot_bin" serve --init --listen "127.0.0.1:$port"
    local pid="$last_pid"
    wait_http "http://127.0.0.1:$port/health" 120 || { cat "$out.stderr" >&2; die "serve did not start"; }
    python3 - "$port" "$token" "$kind" "$count" <<'PY'
import http.client, json, sys, time
port, token, kind, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
auth = {"Authorization": f"Bearer {token}"}
ids = []
for _ in range(count):
    if kind == "request":
        c.request("GET", "/api/v1/agents", headers=auth)
    else:
        body = json.dumps({"input": {"resume": "Summary: engineer\nExperience: Rust\nSkills: Docker"}})
        c.request("POST", "/api/v1/agents/resume_review/runs", body=body,
                  headers={**auth, "Content-Type": "application/json"})
    r = c.getresponse(); data = r.read()
    assert r.status in (200, 202), (r.status, data)
    if kind == "run":
        ids.append(json.loads(data)["run_id"])
# Runs: wait until the last one has finished.
deadline = time.time() + 600
while kind == "run" and time.time() < deadline:
    c.request("GET", f"/api/v1/runs/{ids[-1]}", headers=auth)
    r = c.getresponse(); run = json.loads(r.read())
    if run["status"] in ("succeeded", "failed"):
        break
    time.sleep(0.5)
PY
    stop_pid "$pid" 120
    awk '/^(summary|totals):/ {print $2; exit}' "$out.cg"
}

declare -A ir
for config in metrics-off metrics-on; do
    for spec in "request $n1" "request $n2" "run $r1" "run $r2"; do
        set -- $spec
        ir["$config-$1-$2"]="$(measure "$config" "$1" "$2")"
        log "$config $1 x$2: ${ir[$config-$1-$2]} instructions"
    done
done

echo
echo "| unit | metrics off (instructions) | metrics on | on / off |"
echo "|---|---:|---:|---:|"
for kind in request run; do
    if [ "$kind" = request ]; then a="$n1"; b="$n2"; else a="$r1"; b="$r2"; fi
    off=$(( (ir[metrics-off-$kind-$b] - ir[metrics-off-$kind-$a]) / (b - a) ))
    on=$(( (ir[metrics-on-$kind-$b] - ir[metrics-on-$kind-$a]) / (b - a) ))
    echo "| one $kind | $off | $on | $(python3 -c "print(f'{$on / $off:.2%}')") |"
done
