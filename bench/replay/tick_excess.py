#!/usr/bin/env python3
"""Where a replay's TTFT above each request's own prefill goes, tick by tick.

The Mooncake trace's requests arrive in 3 s ticks. For one replay's per-request records this
splits the mean TTFT into each request's own prefill alone (its uncached tokens on an idle
worker, Dynamo's step-time fit, as in burst_bound.py) and the excess above it, for requests
alone on their worker in their tick and for those sharing it; then, for the requests placed
on a worker already taken in their tick, how much they had cached there, and what the request
placed first on that worker had cached.

    cargo run --release -p kvroute-replay --example sweep -- TRACE --records /tmp/rec 16:ttft:3:1:0
    python3 bench/replay/tick_excess.py /tmp/rec/16:ttft:3:1:0.jsonl
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from burst_bound import alone_ms  # noqa: E402


def size_class(cached):
    if cached == 0:
        return "0"
    return "<2k" if cached < 2048 else ("<8k" if cached < 8192 else ">=8k")


def main():
    records = [json.loads(line) for line in open(sys.argv[1])]
    n = len(records)
    ticks = defaultdict(list)
    for r in records:
        ticks[r["arrival_ms"]].append(r)
    split = defaultdict(lambda: [0, 0.0, 0.0])  # requests, own prefill, excess
    later = defaultdict(lambda: [0, 0.0])  # placed after another on its worker: count, excess
    first_of_big = defaultdict(int)
    for rs in ticks.values():
        by_worker = defaultdict(list)
        for r in rs:
            by_worker[r["worker"]].append(r)
        for lst in by_worker.values():
            lst.sort(key=lambda r: r["index"])
            for k, r in enumerate(lst):
                own = alone_ms(max(1, r["input_length"] - r["cached_tokens"]))
                excess = r["first_token_ms"] - r["arrival_ms"] - own
                s = split["shares its worker in its tick" if len(lst) > 1 else "alone on its worker in its tick"]
                s[0] += 1
                s[1] += own
                s[2] += excess
                if k > 0:
                    c = later[size_class(r["cached_tokens"])]
                    c[0] += 1
                    c[1] += excess
            if len(lst) > 1 and any(r["cached_tokens"] >= 8192 for r in lst[1:]):
                first_of_big[size_class(lst[0]["cached_tokens"])] += 1
    own = sum(s[1] for s in split.values()) / n
    excess = sum(s[2] for s in split.values()) / n
    print(f"{n} requests: mean TTFT = own prefill alone {own:.1f} + excess {excess:.1f} ms")
    for name, (count, _, x) in sorted(split.items()):
        print(f"  {name}: {count} requests, {x / count:.1f} ms excess each, {x / n:.1f} of the mean")
    print("placed on a worker already taken in their tick, by tokens cached there:")
    for name, (count, x) in sorted(later.items()):
        print(f"  cached {name}: {count} requests, {x / count:.1f} ms excess each")
    print(f"ticks where a later request had >= 8k cached on the shared worker: {sum(first_of_big.values())};"
          f" the first request's cached tokens there: {dict(sorted(first_of_big.items()))}")


if __name__ == "__main__":
    main()
