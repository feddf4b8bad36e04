#!/usr/bin/env python3
"""Load client of bench/runs_throughput.sh (Python 3.11 standard library only).

Submits `job_match` runs from N client threads for a bounded time and count, waits until the
queue is drained, reads every run record back and prints one JSON object with the rates, the
enqueue->start latencies and the CPU time of the processes named with --pid.
"""

import argparse
import http.client
import json
import os
import resource
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

BODY = json.dumps({
    "input": {
        "resume": "Rust engineer, 6 years of Kubernetes and PostgreSQL, some AWS and Terraform.\n"
                  "Built an OpenTelemetry pipeline and a Redis-backed job queue.",
        "job": "Senior Rust developer\nRequirements: Rust, Kubernetes, AWS, PostgreSQL, 5+ years.",
    }
}).encode()
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINISHED = {"succeeded", "failed"}


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return float("nan")


def machine_seconds():
    """(busy, steal) CPU seconds of the whole machine; busy = user+nice+system+irq+softirq."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, v[7] / CLK_TCK


def peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


class Client:
    def __init__(self, base, token):
        u = urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn = None

    def request(self, method, path, body=None):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers=self.headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise


def wrk_ms(value):
    """A wrk duration (`512.00us`, `1.20ms`, `1.02s`) in milliseconds."""
    for suffix, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float("nan")


def submit_with_wrk(args):
    """Runs wrk with submit_runs.lua for --duration; returns (submitted, errors, (p50, p99) ms).

    POST latencies come from wrk's own histogram, so `submitted` carries no per-run latency.
    """
    import subprocess
    import tempfile
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "submit_runs.lua")
    with tempfile.TemporaryDirectory() as ids_dir:
        env = dict(os.environ, RUN_IDS_DIR=ids_dir, RUN_BODY=BODY.decode(), RUN_TOKEN=args.token,
                   MAX_RUNS_PER_THREAD=str(max(1, args.max_runs // 2)))
        out = subprocess.run(
            ["wrk", "-t2", f"-c{args.clients}", f"-d{max(1, round(args.duration))}s", "--latency",
             "-s", script, f"{args.base}/api/v1/agents/job_match/runs"],
            env=env, capture_output=True, text=True, check=True).stdout
        submitted, errors = [], []
        for name in sorted(os.listdir(ids_dir)):
            with open(os.path.join(ids_dir, name)) as f:
                lines = [line.strip() for line in f if line.strip()]
            if name.startswith("ids-"):
                submitted += [(run_id, None) for run_id in lines]
            else:
                errors += lines
    latency = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            latency[parts[0]] = round(wrk_ms(parts[1]), 2)
    return submitted, errors, (latency.get("50%"), latency.get("99%"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--admin-token", required=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--max-runs", type=int, default=100000)
    ap.add_argument("--rate", type=float, default=0, help="total submits/s; 0 = as fast as possible")
    ap.add_argument("--drain-timeout", type=float, default=300)
    ap.add_argument("--pid", action="append", default=[], help="name=pid, repeatable")
    ap.add_argument("--wrk", action="store_true",
                    help="submit with wrk (bench/submit_runs.lua, --clients connections on 2 threads)"
                         " instead of Python threads; --rate is not supported then")
    args = ap.parse_args()
    pids = dict(p.split("=", 1) for p in args.pid)

    lock = threading.Lock()
    issued = 0
    submitted = []  # (run_id, post latency s)
    errors = []
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, steal0 = machine_seconds()
    t_start = time.time()
    deadline = time.monotonic() + args.duration

    def submitter():
        nonlocal issued
        c = Client(args.base, args.token)
        interval = args.clients / args.rate if args.rate > 0 else 0
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            if interval:
                next_at += interval
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            with lock:
                if issued >= args.max_runs:
                    return
                issued += 1
            t = time.monotonic()
            try:
                status, body = c.request("POST", "/api/v1/agents/job_match/runs", BODY)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(repr(e))
                continue
            dt = time.monotonic() - t
            with lock:
                if status == 202:
                    submitted.append((json.loads(body)["run_id"], dt))
                else:
                    errors.append(f"HTTP {status}: {body[:200]!r}")

    if args.wrk:
        submitted, errors, wrk_latency = submit_with_wrk(args)
    else:
        wrk_latency = None
        threads = [threading.Thread(target=submitter) for _ in range(args.clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    t_submitted = time.time()

    # Drain: the queue is empty and nothing is in flight.
    admin = Client(args.base, args.admin_token)
    drained = False
    drain_deadline = time.monotonic() + args.drain_timeout
    while time.monotonic() < drain_deadline:
        status, body = admin.request("GET", "/api/v1/admin/queue")
        q = json.loads(body)
        if status == 200 and q["depth"] == 0 and q["in_flight"] == 0:
            drained = True
            break
        time.sleep(0.1)
    t_drained = time.time()
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, steal1 = machine_seconds()
    rss = {name: peak_rss_mib(pid) for name, pid in pids.items()}

    # Read every record back (each fetching thread keeps its own connection).
    local = threading.local()

    def fetch(run_id):
        if not hasattr(local, "c"):
            local.c = Client(args.base, args.admin_token)
        for _ in range(50):
            status, body = local.c.request("GET", f"/api/v1/runs/{run_id}")
            rec = json.loads(body)
            if status == 200 and rec.get("status") in FINISHED:
                return rec
            time.sleep(0.1)
        return rec

    with ThreadPoolExecutor(max_workers=8) as pool:
        records = list(pool.map(fetch, [r for r, _ in submitted]))

    by_status = {}
    for r in records:
        by_status[r.get("status")] = by_status.get(r.get("status"), 0) + 1
    done = [r for r in records if r.get("status") in FINISHED and r.get("finished_at_ms")]
    wait_ms = [r["started_at_ms"] - r["created_at_ms"] for r in done if r.get("started_at_ms")]
    run_ms = [r["finished_at_ms"] - r["started_at_ms"] for r in done if r.get("started_at_ms")]
    e2e_ms = [r["finished_at_ms"] - r["created_at_ms"] for r in done]
    first_created = min((r["created_at_ms"] for r in done), default=0)
    last_finished = max((r["finished_at_ms"] for r in done), default=0)
    last_created = max((r["created_at_ms"] for r in done), default=0)
    window = (last_finished - first_created) / 1000 if done else float("nan")
    submit_window = (last_created - first_created) / 1000 if done else float("nan")
    post_ms = [dt * 1000 for _, dt in submitted if dt is not None]

    out = {
        "clients": args.clients,
        "rate": args.rate,
        "submitted": len(submitted),
        "submit_errors": len(errors),
        "first_errors": errors[:3],
        "drained": drained,
        "by_status": by_status,
        "finished": len(done),
        "window_s": round(window, 3),
        "runs_per_s": round(len(done) / window, 1) if done else 0,
        "submit_window_s": round(submit_window, 3),
        "submits_per_s": round(len(submitted) / submit_window, 1) if done and submit_window > 0 else 0,
        "post_ms_p50": wrk_latency[0] if wrk_latency else round(percentile(post_ms, 50), 2),
        "post_ms_p99": wrk_latency[1] if wrk_latency else round(percentile(post_ms, 99), 2),
        "wait_ms_p50": percentile(wait_ms, 50),
        "wait_ms_p99": percentile(wait_ms, 99),
        "wait_ms_max": max(wait_ms, default=float("nan")),
        "run_ms_p50": percentile(run_ms, 50),
        "run_ms_p99": percentile(run_ms, 99),
        "e2e_ms_p50": percentile(e2e_ms, 50),
        "e2e_ms_p99": percentile(e2e_ms, 99),
        "attempts_gt1": sum(1 for r in done if (r.get("attempts") or 1) > 1),
        "client_wall_s": round(t_drained - t_start, 3),
        "submit_phase_s": round(t_submitted - t_start, 3),
        "cpu_s": {name: round(cpu1[name] - cpu0[name], 2) for name in pids},
        "client_cpu_s": round((self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
                              + (children1.ru_utime + children1.ru_stime)
                              - (children0.ru_utime + children0.ru_stime), 2),
        "load": "wrk" if args.wrk else "python",
        "machine_busy_s": round(busy1 - busy0, 2),
        "machine_steal_s": round(steal1 - steal0, 2),
        "cpus": os.cpu_count(),
        "peak_rss_mib": {name: round(v, 1) for name, v in rss.items()},
    }
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
