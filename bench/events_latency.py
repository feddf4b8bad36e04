#!/usr/bin/env python3
"""Time from a run's finish to its `finished` event at a Server-Sent Events client
(bench/console_latency.sh; Python 3 standard library only).

Opens GET /api/v1/admin/events, submits `--runs` resume_review runs at `--rate` per second from
one thread, and for every `finished` event of those runs takes arrival time minus the event's
`at_ms` (the time the write that finished the run was made). Same machine, same clock.
"""

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlsplit

BODY = json.dumps({"input": {"resume": "Summary: backend engineer\nExperience: Rust, Python\nSkills: Docker"}}).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()
    url = urlsplit(args.base)
    auth = {"Authorization": f"Bearer {args.token}"}

    lags = {}
    submitted = set()
    lock = threading.Lock()
    ready = threading.Event()

    def read_events():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=args.timeout)
        conn.request("GET", "/api/v1/admin/events?agent_type=resume_review", headers=auth)
        res = conn.getresponse()
        assert res.status == 200, res.status
        ready.set()
        name = None
        while True:
            line = res.fp.readline()
            if not line:
                return
            line = line.decode().rstrip("\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and name == "finished":
                event = json.loads(line[5:].strip())
                arrived = time.time() * 1000
                with lock:
                    lags[event["run_id"]] = arrived - event["at_ms"]

    threading.Thread(target=read_events, daemon=True).start()
    ready.wait(30)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    start = time.monotonic()
    for i in range(args.runs):
        due = start + i / args.rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        conn.request("POST", "/api/v1/agents/resume_review/runs", body=BODY,
                     headers={**auth, "Content-Type": "application/json"})
        res = conn.getresponse()
        data = res.read()
        assert res.status == 202, (res.status, data)
        submitted.add(json.loads(data)["run_id"])
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with lock:
            if submitted <= lags.keys():
                break
        time.sleep(0.1)
    with lock:
        seen = sorted(lags[r] for r in submitted if r in lags)
    missing = len(submitted) - len(seen)

    def q(p):
        return seen[min(len(seen) - 1, int(p * len(seen)))] if seen else float("nan")

    print(f"finished->seen over {len(seen)} runs ({missing} missing): "
          f"p50 {q(0.50):.1f} ms, p95 {q(0.95):.1f} ms, max {seen[-1] if seen else float('nan'):.1f} ms")


if __name__ == "__main__":
    main()
