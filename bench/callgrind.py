"""Helpers of the callgrind bench scripts (Python 3 standard library only).

    callgrind.py get <api port> <token> <count>      <count> times GET /api/v1/agents
    callgrind.py submit <api port> <token> <count>   POST <count> job_match runs
    callgrind.py wait <api port> <token> <count>     until all <count> have finished, polling
                                                     once a second (a handful of requests, the
                                                     same in every configuration); exits
                                                     non-zero if one did not succeed
    callgrind.py table <rows.tsv> <n1> <n2> <what>   instructions per unit, as Markdown
"""

import http.client
import json
import statistics
import sys
import time

BODY = json.dumps({
    "input": {
        "resume": "Rust engineer, 6 years of Kubernetes and PostgreSQL, some AWS and Terraform.",
        "job": "Senior Rust developer\nRequirements: Rust, Kubernetes, AWS, PostgreSQL, 5+ years.",
    }
})


def connect(port, token):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    return c, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def get(port, token, count):
    c, _ = connect(port, token)
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "bench/1.0"}
    for _ in range(count):
        c.request("GET", "/api/v1/agents", headers=headers)
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            sys.exit(f"GET /api/v1/agents answered {r.status}: {data[:200]!r}")


def submit(port, token, count):
    c, headers = connect(port, token)
    for _ in range(count):
        c.request("POST", "/api/v1/agents/job_match/runs", body=BODY, headers=headers)
        r = c.getresponse()
        data = r.read()
        if r.status != 202:
            sys.exit(f"submit answered {r.status}: {data[:200]!r}")


def count_in(c, headers, status):
    """How many of this user's runs are in `status`, up to 200 (one page)."""
    c.request("GET", f"/api/v1/runs?status={status}&limit=200", headers=headers)
    r = c.getresponse()
    page = json.loads(r.read())
    if r.status != 200:
        sys.exit(f"listing runs answered {r.status}: {page}")
    return len(page["runs"])


def wait(port, token, count, timeout_s=900):
    c, headers = connect(port, token)
    deadline = time.time() + timeout_s
    while count_in(c, headers, "succeeded") < min(count, 200) or \
            count_in(c, headers, "queued") + count_in(c, headers, "running") > 0:
        if time.time() > deadline:
            sys.exit(f"the runs did not finish within {timeout_s} s")
        time.sleep(1)
    if count_in(c, headers, "failed") > 0:
        sys.exit("some runs failed")


def table(rows_path, n1, n2, what):
    """The instructions of one unit per round, binary and configuration: the difference of
    the totals for n2 and n1 units, divided by n2 - n1; with several rounds, their medians."""
    ir = {}
    for line in open(rows_path):
        rnd, label, config, count, value = line.rstrip("\n").split("\t")
        ir[(rnd, label, config, int(count))] = int(value)
    per = {}
    for (rnd, label, config, count), value in ir.items():
        if count == n2 and (rnd, label, config, n1) in ir:
            per[(rnd, label, config)] = (value - ir[(rnd, label, config, n1)]) / (n2 - n1)
    fmt = lambda v: "—" if v is None else f"{v:,.0f}"
    print()
    print(f"Instructions per {what} (callgrind, ({n2} - {n1}) units)")
    print()
    print("| round | binary | untraced | traced | traced - untraced |")
    print("|---|---|---:|---:|---:|")
    for (rnd, label) in sorted({(r, l) for (r, l, _) in per}):
        u = per.get((rnd, label, "untraced"))
        t = per.get((rnd, label, "traced"))
        diff = fmt(t - u) if u is not None and t is not None else "—"
        print(f"| {rnd} | {label} | {fmt(u)} | {fmt(t)} | {diff} |")
    if len({r for (r, _, _) in per}) > 1:
        med = lambda xs: fmt(statistics.median(xs)) if xs else "—"
        print()
        print("| binary | untraced (median) | traced (median) | traced - untraced (median of rounds) |")
        print("|---|---:|---:|---:|")
        for label in sorted({l for (_, l, _) in per}):
            of = lambda c: [v for (r, l, cc), v in per.items() if l == label and cc == c]
            diffs = [per[(r, label, "traced")] - per[(r, label, "untraced")]
                     for (r, l, c) in per
                     if l == label and c == "traced" and (r, label, "untraced") in per]
            print(f"| {label} | {med(of('untraced'))} | {med(of('traced'))} | {med(diffs)} |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "get":
        get(int(args[0]), args[1], int(args[2]))
    elif cmd == "submit":
        submit(int(args[0]), args[1], int(args[2]))
    elif cmd == "wait":
        wait(int(args[0]), args[1], int(args[2]))
    elif cmd == "table":
        table(args[0], int(args[1]), int(args[2]), args[3])
    else:
        sys.exit(__doc__)
