#!/usr/bin/env bash
# Startup time of `jobpilot serve`: from fork/exec to the first `200` on GET /health, polled
# from bash over /dev/tcp (no process spawned per probe), and the time from SIGTERM to exit.
# Tracing disabled, console exporter, and OTLP gRPC to a local rotel collector.
# With hyperfine installed it also times a whole start → healthy → SIGTERM → exit cycle.
#
# Usage: bench/startup.sh [iterations]          (default 20 per configuration)
# Environment: CONFIGS (default "disabled console otlp-grpc"), JOBPILOT_BIN, ROTEL_AGENT
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

iterations="${1:-${ITERATIONS:-20}}"
configs="${CONFIGS:-disabled console otlp-grpc}"
ensure_jobpilot
start_rotel

# probe <port>: true when /health answers 200.
probe() {
    local status
    exec 7<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&7
    IFS= read -r -t 1 status <&7 || status=""
    exec 7>&- 7<&-
    [[ "$status" == *" 200 "* ]]
}

now_us() { local t="${EPOCHREALTIME/./}"; echo "$t"; }

env_for() {
    case "$1" in
        disabled)  echo "OTEL_SDK_DISABLED=true" ;;
        console)   echo "OTEL_TRACES_EXPORTER=console" ;;
        otlp-grpc) echo "OTEL_EXPORTER_ENDPOINT=http://127.0.0.1:$rotel_grpc_port" ;;
    esac
}

results="$work_dir/startup.tsv"
: >"$results"
log "load before: $(loadavg); $iterations iterations per configuration"
for name in $configs; do
    for i in $(seq "$iterations"); do
        port="$(free_port)"
        data="$work_dir/data-$name-$i"
        mkdir -p "$data"
        t0="$(now_us)"
        spawn /dev/null "$work_dir/$name.err" env "$(env_for "$name")" JOBPILOT_DATA_DIR="$data" \
            JOBPILOT_LOG=warn "$jobpilot_bin" serve --init --listen "127.0.0.1:$port"
        pid="$last_pid"
        until probe "$port" 2>/dev/null; do
            kill -0 "$pid" 2>/dev/null || die "$name: serve exited before it was healthy"
            [ $(( $(now_us) - t0 )) -lt 10000000 ] || die "$name: not healthy after 10 s"
        done
        t1="$(now_us)"
        kill -TERM "$pid"
        wait "$pid" || true
        t2="$(now_us)"
        printf '%s\t%s\t%s\n' "$name" $(( t1 - t0 )) $(( t2 - t1 )) >>"$results"
        rm -rf "$data"
    done
done

python3 - "$results" "$(loadavg)" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
by = {}
for name, up, down in rows:
    by.setdefault(name, ([], []))
    by[name][0].append(int(up) / 1000); by[name][1].append(int(down) / 1000)
print()
print("| config | runs | start → healthy median ms (min–max) | SIGTERM → exit median ms (min–max) |")
print("|---|---:|---:|---:|")
for name, (up, down) in by.items():
    print(f"| {name} | {len(up)} | {statistics.median(up):.1f} ({min(up):.1f}–{max(up):.1f}) | "
          f"{statistics.median(down):.1f} ({min(down):.1f}–{max(down):.1f}) |")
print(f"\nload after: {sys.argv[2]}")
PY

if command -v hyperfine >/dev/null; then
    # One whole cycle in a child bash: start, poll until healthy, SIGTERM, wait for the exit.
    # Every cycle reuses one port (the listener sets SO_REUSEADDR).
    cycle_port="$(free_port)"
    cycle="$work_dir/cycle.sh"
    cat >"$cycle" <<CYCLE
#!/usr/bin/env bash
set -u
port=$cycle_port
data=\$(mktemp -d "$work_dir/cycle.XXXXXX")
OTEL_SDK_DISABLED=true JOBPILOT_DATA_DIR=\$data JOBPILOT_LOG=warn "$jobpilot_bin" serve --init --listen 127.0.0.1:\$port >/dev/null 2>&1 &
pid=\$!
for _ in \$(seq 20000); do
    if exec 7<>/dev/tcp/127.0.0.1/\$port 2>/dev/null; then
        printf 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&7
        IFS= read -r -t 1 line <&7; exec 7>&- 7<&-
        [[ "\$line" == *" 200 "* ]] && break
    fi
done
kill -TERM \$pid; wait \$pid; rm -rf "\$data"
CYCLE
    chmod +x "$cycle"
    echo
    echo "hyperfine: whole cycle, start → healthy → SIGTERM → exit (tracing disabled):"
    hyperfine -N --warmup 2 --runs "$iterations" --style basic "$cycle" 2>&1 | sed 's/^/    /'
fi
