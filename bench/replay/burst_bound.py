#!/usr/bin/env python3
"""How much TTFT any router could save on the trace's arrival bursts: a clairvoyant bound.

The Mooncake trace's timestamps come in 3 s ticks of ~10 requests (up to 28) that arrive
together. Requests sharing a worker in a tick share prefill passes, and every request in a pass
sees its first token at the pass's end, so part of each policy's TTFT above the floor is the
price of who shares with whom. This script takes one replay's per-request records (uncached
tokens as the engines saw them), and for every tick assigns that tick's requests to idle
workers with full knowledge of the whole tick (greedy by marginal total TTFT, then single moves
until none helps), packing each worker's requests first-come-first-served into passes of
8,192 tokens under Dynamo's step-time fit plus DECODE_MS of decode per pass.

It is optimistic for the router: it knows the future of the tick, ignores where each prefix is
cached (every request keeps its uncached count wherever it goes), and starts every tick with
idle workers (no pass in flight, no queue from the previous tick).

    cargo run --release -p kvroute-replay --example sweep -- TRACE --records /tmp/rec 8:ttft:3:1:0
    python3 bench/replay/burst_bound.py /tmp/rec/8:ttft:3:1:0.jsonl 8 10
"""
import json
import sys
from collections import defaultdict

BATCH = 8192


def pass_ms(tokens):
    return 0.0 if tokens == 0 else 4.209989e-7 * tokens * tokens + 1.518344e-2 * tokens + 16.50142


def alone_ms(uncached):
    """Prefill alone on an idle worker, no decode: the floor's own figure."""
    total = 0.0
    while True:
        chunk = min(uncached, BATCH)
        total += pass_ms(chunk)
        uncached -= chunk
        if uncached <= 0:
            return total


def fifo_ttfts(uncached, decode_ms):
    """First-token times of requests queued in this order on one worker."""
    queue = [[i, u] for i, u in enumerate(uncached)]
    out, clock = [0.0] * len(uncached), 0.0
    while queue:
        budget = BATCH
        for item in queue:
            take = min(budget, item[1])
            item[1] -= take
            budget -= take
            if budget == 0:
                break
        clock += pass_ms(BATCH - budget) + decode_ms
        out_now = [item for item in queue if item[1] == 0]
        for item in out_now:
            out[item[0]] = clock
        queue = [item for item in queue if item[1] > 0]
    return out


def tick_total(uncached, assign, workers, decode_ms):
    total = 0.0
    for w in range(workers):
        mine = [uncached[k] for k in range(len(assign)) if assign[k] == w]
        if mine:
            total += sum(fifo_ttfts(mine, decode_ms))
    return total


def main():
    path, workers, decode_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    records = [json.loads(line) for line in open(path)]
    ticks = defaultdict(list)
    for r in records:
        ticks[r["arrival_ms"]].append(max(1, r["input_length"] - r["cached_tokens"]))
    total = alone = 0.0
    for uncached in ticks.values():
        assign = []
        for _ in uncached:
            costs = [(tick_total(uncached, assign + [w], workers, decode_ms), w) for w in range(workers)]
            assign.append(min(costs)[1])
        best, improved = tick_total(uncached, assign, workers, decode_ms), True
        while improved:
            improved = False
            for k in range(len(assign)):
                for w in range(workers):
                    old, assign[k] = assign[k], w
                    t = tick_total(uncached, assign, workers, decode_ms)
                    if t < best - 1e-9:
                        best, improved = t, True
                    else:
                        assign[k] = old
        total += best
        alone += sum(alone_ms(u) for u in uncached)
    n = len(records)
    actual = sum(r["first_token_ms"] - r["arrival_ms"] for r in records) / n
    print(f"{n} requests, {workers} workers, {decode_ms} ms decode per pass")
    print(f"this replay:      mean TTFT {actual:.1f} ms")
    print(f"clairvoyant ticks: mean TTFT {total / n:.1f} ms (alone {alone / n:.1f} + sharing {(total - alone) / n:.1f})")


if __name__ == "__main__":
    main()
