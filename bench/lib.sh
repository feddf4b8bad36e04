# Shared helpers of the bench scripts; sourced, not run. Everything started through `spawn` is
# remembered by pid and stopped (TERM, then KILL after a grace period) when the script exits.

bench_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$bench_dir/.." && pwd)"

# Read the overrides the scripts honour before clearing the environment of anything that
# would change how jobpilot behaves (a stray OTEL_* or REDIS_URL from the caller's shell).
jobpilot_bin="${JOBPILOT_BIN:-$repo_root/target/release/jobpilot}"
rotel_agent="${ROTEL_AGENT:-}"
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(OTEL_|JOBPILOT_|REDIS_URL$|RUST_LOG$|SENTRY_DSN$)')
export JOBPILOT_JWT_SECRET="bench-only-secret-0123456789abcdef0123456789"
# Benchmarks measure throughput, not the edge's quotas and caps: 0 turns each of them off.
export JOBPILOT_RUNS_PER_USER_PER_SEC=0 JOBPILOT_MAX_QUEUED_RUNS_PER_USER=0 \
    JOBPILOT_MAX_QUEUE_DEPTH=0 JOBPILOT_MAX_CONNECTIONS=0

work_dir="$(mktemp -d /tmp/jobpilot-bench.XXXXXX)"
declare -a spawned_pids=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Stops one process we started: SIGTERM, up to `grace` seconds, then SIGKILL.
stop_pid() {
    local pid="$1" grace="${2:-10}"
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((grace * 10)) ]; do
        sleep 0.1; waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still alive after ${grace}s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local i
    for ((i = ${#spawned_pids[@]} - 1; i >= 0; i--)); do
        stop_pid "${spawned_pids[$i]}" 5
    done
    if [ -n "${BENCH_KEEP_WORK:-}" ]; then
        log "work files kept in $work_dir"
    else
        rm -rf "$work_dir"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# spawn <stdout> <stderr> <command...>: starts a background process, sets $last_pid.
spawn() {
    local out="$1" err="$2"; shift 2
    "$@" >"$out" 2>"$err" &
    last_pid=$!
    spawned_pids+=("$last_pid")
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http <url> <seconds>: until the URL answers 2xx.
wait_http() {
    local url="$1" deadline=$((SECONDS + ${2:-15}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        curl -fs -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.05
    done
    return 1
}

ensure_jobpilot() {
    if [ ! -x "$jobpilot_bin" ]; then
        log "building jobpilot (cargo build --release -p jobpilot)"
        (cd "$repo_root" && cargo build --release -p jobpilot) >&2 || die "build failed"
    fi
    [ -x "$jobpilot_bin" ] || die "no jobpilot binary at $jobpilot_bin (set JOBPILOT_BIN)"
}

ensure_rotel() {
    if [ -z "$rotel_agent" ]; then
        local venv_py="$repo_root/target/test-tools/venv/bin/python"
        if [ -x "$venv_py" ]; then
            rotel_agent="$("$venv_py" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))' 2>/dev/null || true)"
        fi
    fi
    if [ -z "$rotel_agent" ] || [ ! -x "$rotel_agent" ]; then
        [ -x /tmp/rx/rotel/rotel-agent ] && rotel_agent=/tmp/rx/rotel/rotel-agent
    fi
    [ -n "$rotel_agent" ] && [ -x "$rotel_agent" ] \
        || die "rotel-agent not found: run ./scripts/test.sh once (it installs rotel) or set ROTEL_AGENT"
}

# start_rotel: a local collector that accepts OTLP and discards it; sets rotel_pid,
# rotel_grpc_port and rotel_http_port.
start_rotel() {
    ensure_rotel
    rotel_grpc_port="$(free_port)"
    rotel_http_port="$(free_port)"
    spawn "$work_dir/rotel.out" "$work_dir/rotel.err" "$rotel_agent" start \
        --otlp-grpc-endpoint "127.0.0.1:$rotel_grpc_port" \
        --otlp-http-endpoint "127.0.0.1:$rotel_http_port" \
        --exporter blackhole \
        --pid-file "$work_dir/rotel.pid" --log-file "$work_dir/rotel.log"
    rotel_pid="$last_pid"
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$rotel_grpc_port") 2>/dev/null && return 0
        kill -0 "$rotel_pid" 2>/dev/null || break
        sleep 0.05
    done
    cat "$work_dir/rotel.out" "$work_dir/rotel.err" >&2
    die "rotel did not start"
}

# CPU time (user + system) of a process in clock ticks.
cpu_ticks() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    # Fields after the command name, which is in parentheses and may hold spaces.
    set -- ${stat##*) }
    echo $(( ${12} + ${13} ))
}

# Peak resident memory (VmHWM) of a process in KiB.
peak_rss_kib() {
    awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0
}

# Clock ticks of the whole machine (all CPUs) from /proc/stat: "busy steal", where busy is
# user + nice + system + irq + softirq, and steal is time the hypervisor gave to others.
machine_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

clk_tck="$(getconf CLK_TCK)"

# run_rounds <rounds> <"config ...">: calls the script's `run_config <round> <config>` for every
# configuration, each round starting one configuration later so that none always runs first; a
# failed measurement (e.g. a server that exited early) is retried up to three times.
run_rounds() {
    local rounds="$1" round k n name attempt
    local -a config_list
    read -r -a config_list <<<"$2"
    n=${#config_list[@]}
    for round in $(seq "$rounds"); do
        for k in $(seq 0 $((n - 1))); do
            name="${config_list[$(( (k + round - 1) % n ))]}"
            attempt=1
            until run_config "$round" "$name"; do
                attempt=$((attempt + 1))
                [ "$attempt" -le 3 ] || die "$name: three attempts failed"
                log "$name: attempt $attempt"
            done
        done
    done
}

# callgrind_setup: what the callgrind scripts share before measuring. Reads BINS ("label=path
# ...", default the release build) and CONFIGS (default "untraced traced") into bin_list and
# config_list, starts rotel, makes a token with the first binary and an empty rows file.
callgrind_setup() {
    local bins
    if [ -z "${BINS:-}" ]; then
        ensure_jobpilot
        bins="new=$jobpilot_bin"
    else
        bins="$BINS"
    fi
    read -r -a bin_list <<<"$bins"
    read -r -a config_list <<<"${CONFIGS:-untraced traced}"
    start_rotel
    log "rotel on grpc :$rotel_grpc_port (pid $rotel_pid)"
    token="$("${bin_list[0]#*=}" token --user bench)"
    rows="$work_dir/rows.tsv"
    : >"$rows"
}

# callgrind_rounds: for each of $rounds rounds, binary (rotated by one each round),
# configuration and count ($n1, $n2), calls the script's
# `measure <label> <binary> <config> <count>`, which prints a process's total instructions,
# and appends "round label config count instructions" to $rows (tab-separated).
callgrind_rounds() {
    local round k nb spec label bin config count ir
    nb=${#bin_list[@]}
    for round in $(seq "$rounds"); do
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
}

# callgrind_total <name> <stderr file> <callgrind file>: warns when the process logged an
# error, and prints its total instructions.
callgrind_total() {
    if grep -qiE 'panic|error' "$2"; then
        log "$1: the process logged errors:"; grep -iE 'panic|error' "$2" | head -5 >&2
    fi
    awk '/^(summary|totals):/ {print $2; exit}' "$3"
}
