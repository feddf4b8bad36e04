#!/usr/bin/env python3
"""Shares of a jobpilot process's CPU samples by part (Python 3.11 standard library only).

Reads the output of `perf script -F comm,tid,ip,sym` (samples with call stacks, innermost frame
first) on stdin and gives each sample to the first part whose pattern matches one of its
frames, innermost first: an allocation or a copy counts toward the code that asked for it.

    perf record -e cpu-clock -F 400 --call-graph dwarf,16384 -p <pid> -o perf.data -- sleep 5
    perf script -i perf.data -F comm,tid,ip,sym | bench/perf_parts.py
"""

import re
import sys
from collections import Counter

# In order: the first part whose pattern matches a frame wins.
PARTS = [
    ("export: encoding, tonic, h2",
     r"otlp_encode|otlp_grpc|tonic::|h2::|pipeline::send_all|pipeline::run"),
    ("metrics", r"opentelemetry_sdk::metrics|jobpilot_telemetry::metrics"),
    ("spans: start, attributes, end, the queue",
     r"opentelemetry_sdk::trace|opentelemetry::trace|jobpilot_telemetry::span"
     r"|PipelineProcessor|propagation"),
    ("the agents' steps",
     r"jobpilot_agents::(text|resume|job|skills|scoring|years|llm::offline|agents)"),
    ("run store and queue (Redis client, commands, replies)",
     r"jobpilot_queue|redis::|combine::"),
    ("JSON", r"serde_json"),
    ("waiting (epoll, parked threads)", r"park|epoll_wait"),
]


def main() -> None:
    compiled = [(name, re.compile(pattern)) for name, pattern in PARTS]
    counts: Counter[str] = Counter()
    total = 0
    for sample in sys.stdin.read().split("\n\n"):
        frames = [line for line in sample.splitlines()[1:] if line.strip()]
        if not frames:
            continue
        total += 1
        part = next((name for frame in frames for name, pattern in compiled
                     if pattern.search(frame)), "other")
        counts[part] += 1
    if total == 0:
        sys.exit("no samples on stdin (expected `perf script` output with call stacks)")
    print(f"{total} samples")
    for name, n in counts.most_common():
        print(f"{100 * n / total:5.1f} %  {name}")


if __name__ == "__main__":
    main()
