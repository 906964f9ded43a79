"""Added latency of the kvroute proxy-wasm filter in a real Envoy (issue 6), on loopback.

    CARGO_TARGET_DIR=/var/tmp/kvroute-release-target cargo build --release -p kvroute-cli
    cargo build --release --target wasm32-wasip1 -p kvroute-filter
    KVROUTE_BIN=/var/tmp/kvroute-release-target/release/kvroute \
      /var/tmp/kvroute-venv/bin/python bench/envoy/bench_filter.py [--rounds 10] [--per-round 50]

(run from the repository root; ENVOY_BIN overrides the envoy found next to the Python.)

One `kvroute up` stack: 4 pools (a..d) × 1 mocker (speed-up 1000), each behind its kv-router.
Envoys (`--concurrency 1`, log level warn), all built from the shipped `envoy/envoy.yaml`:
  - `plain`:  the same config with the wasm filter removed; default route -> pool a's router.
  - `filter-N` (N = 1, 2, 4): the filter probing the routers of pools a.. (N groups).
  - `stub-4`: the filter probing 4 "groups" that are a second Envoy answering a fixed
    best_worker JSON with `direct_response` (no work behind it): the bare-callout floor.
    Every pool route still goes to pool a's router, so the upstream work is identical.
Also timed directly (no Envoy in front): pool a's `POST /best_worker` (one probe's own time) and
the stub Envoy's answer. The 220 KB prompt is text (--big-chars characters), max_tokens 1;
each measured one differs in its last characters (the router caches recent tokenizations).
Requests are sequential on one keep-alive connection per Envoy (http.client); figures are
interleaved in rounds (every figure gets a slice of every round) so machine drift hits them alike.
The 64-token prompt is warmed into pool a first, so every filtered request is routed to pool a
(checked on the x-kvroute-pool header) and hits the same cached prefix as the baseline.
"""
import argparse
import copy
import http.client
import itertools
import json
import os
import shutil
import yaml
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
WASM = TARGET_DIR / "wasm32-wasip1/release/kvroute_filter.wasm"
ENVOY = os.environ.get("ENVOY_BIN") or shutil.which("envoy", path=str(Path(sys.executable).parent)) or shutil.which("envoy")
KVROUTE = os.environ.get("KVROUTE_BIN", "/var/tmp/kvroute-release-target/release/kvroute")
MODEL = "kvroute-mock"

sys.path.insert(0, str(REPO / "tests" / "python"))
from envoy_process import EnvoyProcess  # noqa: E402  (the tests' Envoy launcher)
STUB_ANSWER = ('{"worker_id":1,"dp_rank":0,"overlap_blocks":0,"request_blocks":4,'
               '"potential_prefill_tokens":64,"potential_decode_blocks":4,"cost":8.0}')


# ---------------------------------------------------------------- processes


def Envoy(home, cfg):
    """An Envoy on `cfg` with its log at warn (exits the script if it cannot start)."""
    try:
        return EnvoyProcess(ENVOY, home, cfg)
    except RuntimeError as e:
        sys.exit(str(e))


def spawn_stack(tmp):
    spec = tmp / "stack.yaml"
    spec.write_text(
        f"model: {MODEL}\nblock_size: 16\npools:\n"
        + "".join(f"  - {{name: {n}, workers: 1, router_port: 0, mocker: {{speedup_ratio: 1000, num_gpu_blocks: 65536}}}}\n"
                  for n in "abcd"))
    proc = subprocess.Popen([KVROUTE, "up", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"}, text=True)
    line = proc.stdout.readline()
    if not line:
        sys.exit("kvroute up exited before reporting ready")
    return proc, {p["name"]: p["router"] for p in json.loads(line)["up"]["pools"]}


def port_of(url):
    return int(url.rsplit(":", 1)[1])


def cluster(name, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "per_connection_buffer_limit_bytes": 16777216,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def envoy_config(routes_to, probes, filter_on, filter_extra=None):
    """routes_to: {pool: router url} (first = default route); probes: [(pool, probe target url)]."""
    cfg = yaml.safe_load(((REPO / "envoy/envoy.yaml").read_text()))
    cfg["admin"]["address"]["socket_address"]["port_value"] = 0
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = 0
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    header_route, default_route = routes[0], copy.deepcopy(routes[-1])
    new_routes, clusters = [], []
    for name, url in routes_to.items():
        r = copy.deepcopy(header_route)
        r["match"]["headers"][0]["string_match"]["exact"] = name
        r["route"]["cluster"] = f"pool_{name}"
        new_routes.append(r)
        clusters.append(cluster(f"pool_{name}", port_of(url)))
    default_route["route"]["cluster"] = f"pool_{next(iter(routes_to))}"
    routes[:] = new_routes + [default_route]
    for i, (_, url) in enumerate(probes):
        clusters.append(cluster(f"probe_{i}", port_of(url)))
    cfg["static_resources"]["clusters"] = clusters
    wasm = hcm["http_filters"][0]["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    fc = json.loads(wasm["configuration"]["value"])
    fc["groups"] = [{"pool": p, "cluster": f"probe_{i}"} for i, (p, _) in enumerate(probes)]
    fc["pools"] = [{"name": n} for n in routes_to]
    fc["probe_timeout_ms"] = 300
    fc.pop("fallback_pool", None)
    fc.update(filter_extra or {})
    wasm["configuration"]["value"] = json.dumps(fc)
    if not filter_on:
        del hcm["http_filters"][0]
    return cfg


def stub_config():
    """An Envoy whose only listener answers every request with STUB_ANSWER."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "stub", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "per_connection_buffer_limit_bytes": 16777216,
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "stub",
                    "route_config": {"name": "stub", "virtual_hosts": [{"name": "stub", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": STUB_ANSWER}},
                        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
                    }]}]},
                    # The buffer filter reads the whole probe body before the direct response:
                    # answering earlier makes Envoy close the connection (no keep-alive).
                    "http_filters": [{"name": "envoy.filters.http.buffer", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                        "max_request_bytes": 16777216}},
                        {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                }}]}]}]}}


# ---------------------------------------------------------------- measuring


class Client:
    """One keep-alive connection; `post` returns (status, pool header, seconds)."""

    def __init__(self, hostport):
        self.hostport = hostport
        self.conn = http.client.HTTPConnection(hostport, timeout=30)

    def post(self, path, body):
        hdrs = {"content-type": "application/json"}
        t0 = time.perf_counter()
        self.conn.request("POST", path, body, hdrs)
        r = self.conn.getresponse()
        r.read()
        dt = time.perf_counter() - t0
        if r.will_close:
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.hostport, timeout=30)
        return r.status, r.getheader("x-kvroute-pool"), dt


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=50, help="64-token requests per figure per round")
    ap.add_argument("--big-per-round", type=int, default=15, help="220 KB requests per figure per round")
    ap.add_argument("--big-chars", type=int, default=220_000)
    args = ap.parse_args()
    for what, path in (("envoy", ENVOY), ("kvroute", KVROUTE), ("filter", WASM)):
        if not path or not Path(path).exists():
            sys.exit(f"missing {what}: {path}")

    tmp = Path(tempfile.mkdtemp(prefix="kvroute-envoy-bench-"))
    procs, envoys = [], []
    try:
        stack, routers = spawn_stack(tmp)
        procs.append(stack)
        stub = Envoy(tmp / "stub", stub_config())
        envoys.append(stub)
        routes = {n: routers[n] for n in "abcd"}
        only_a = {n: routers["a"] for n in "abcd"}  # stub run: every pool's route -> pool a
        e = {
            "plain": Envoy(tmp / "plain", envoy_config(routes, [], filter_on=False)),
            "filter-1": Envoy(tmp / "f1", envoy_config(routes, [("a", routers["a"])], True)),
            # The filter loaded but acting on no path the benchmark sends: its bare presence.
            "bystander": Envoy(tmp / "fb", envoy_config(routes, [("a", routers["a"])], True, {"paths": ["/elsewhere"]})),
            # Only pool a known to the filter: nothing to decide, so no probe.
            "one-pool": Envoy(tmp / "fo", envoy_config(routes, [("a", routers["a"])], True, {"pools": [{"name": "a"}]})),
            "filter-2": Envoy(tmp / "f2", envoy_config(routes, [(n, routers[n]) for n in "ab"], True)),
            "filter-4": Envoy(tmp / "f4", envoy_config(routes, [(n, routers[n]) for n in "abcd"], True)),
            "stub-4": Envoy(tmp / "s4", envoy_config(only_a, [(n, stub.url) for n in "abcd"], True)),
        }
        envoys.extend(e.values())

        small = json.dumps({"model": MODEL, "prompt": [(i * 31) % 3000 + 5 for i in range(64)], "max_tokens": 1})
        words = "the quick brown fox jumps over a lazy dog while kv caches warm up "
        text = (words * (args.big_chars // len(words) + 1))[:args.big_chars]
        big = json.dumps({"model": MODEL, "prompt": text, "max_tokens": 1})
        # Every measured 220 KB request ends differently (its last block only): its prefix is
        # still cached in pool a, but no router has tokenized this exact text before (a router
        # that saw a text beginning the same way reuses that one's ids for the shared part).
        # The "new text" ones begin differently: nothing is shared with any earlier text.
        big_new = json.dumps({"model": MODEL, "prompt": "new text", "max_tokens": 1})
        variants = itertools.count()
        def body_of(body):
            if body is big:
                return json.dumps({"model": MODEL, "prompt": text[:-12] + f"{next(variants):012d}", "max_tokens": 1})
            if body is big_new:
                return json.dumps({"model": MODEL, "prompt": f"{next(variants):012d}" + text[12:], "max_tokens": 1})
            return body
        # Warm both prompts into pool a (its router's index must see the blocks before probing).
        ca = Client(routers["a"].split("//")[1])
        for body in (small, big):
            assert ca.post("/v1/completions", body)[0] == 200
            for _ in range(200):
                ca.conn.request("POST", "/best_worker", body, {"content-type": "application/json"})
                if json.loads(ca.conn.getresponse().read()).get("overlap_blocks", 0) > 0:
                    break
                time.sleep(0.05)
            else:
                sys.exit("pool a's router never reported the warmed prompt as cached")

        figures = [  # (label, envoy, body, per round, expected pool header)
            ("64 tok: no filter", "plain", small, args.per_round, None),
            ("64 tok: filter loaded, path not acted on", "bystander", small, args.per_round, None),
            ("64 tok: filter, one pool configured (decided without a probe)", "one-pool", small, args.per_round, "a"),
            ("64 tok: filter, 1 group", "filter-1", small, args.per_round, "a"),
            ("64 tok: filter, 2 groups", "filter-2", small, args.per_round, "a"),
            ("64 tok: filter, 4 groups", "filter-4", small, args.per_round, "a"),
            ("64 tok: filter, 4 stub groups", "stub-4", small, args.per_round, "*"),
            ("64 tok: kv-router /best_worker direct", "router-a", small, args.per_round, None),
            ("64 tok: stub Envoy direct (its answer time)", "stub", small, args.per_round, None),
            ("220 KB: no filter", "plain", big, args.big_per_round, None),
            ("220 KB: filter, 4 groups", "filter-4", big, args.big_per_round, "a"),
            ("220 KB: filter, 4 stub groups", "stub-4", big, args.big_per_round, "*"),
            ("220 KB: kv-router /best_worker direct", "router-a", big, args.big_per_round, None),
            ("220 KB: stub Envoy direct (its answer time)", "stub", big, args.big_per_round, None),
            ("220 KB new text: no filter", "plain", big_new, args.big_per_round, None),
            ("220 KB new text: filter, 4 groups", "filter-4", big_new, args.big_per_round, "*"),
            ("220 KB new text: kv-router /best_worker direct", "router-a", big_new, args.big_per_round, None),
        ]
        clients = {k: Client(v.addr) for k, v in e.items()}
        clients["router-a"] = Client(routers["a"].split("//")[1])
        clients["stub"] = Client(stub.addr)
        samples = {f[0]: [] for f in figures}
        pools_seen = {f[0]: {} for f in figures}
        # Warm-up: connections, wasm VMs, upstream pools.
        for label, key, body, _, _ in figures:
            path = "/best_worker" if key in ("router-a", "stub") else "/v1/completions"
            for _ in range(20 if body is small else 3):  # (the 220 KB ones also seed the routers' recent texts)
                clients[key].post(path, body_of(body))
        def counters():
            return {k: (sum((v.stat(f"wasmcustom.kvroute.probe_failures.probe_{i}") or 0) for i in range(4)),
                        v.stat("wasmcustom.kvroute.fallbacks") or 0) for k, v in e.items() if k != "plain"}
        counted_before = counters()
        load_before = loadavg()
        started = time.time()
        for _ in range(args.rounds):
            for label, key, body, n, _ in figures:
                path = "/best_worker" if key in ("router-a", "stub") else "/v1/completions"
                for _ in range(n):
                    st, pool, dt = clients[key].post(path, body_of(body))
                    if st != 200:
                        sys.exit(f"{label}: HTTP {st}")
                    samples[label].append(dt)
                    pools_seen[label][pool] = pools_seen[label].get(pool, 0) + 1
        elapsed = time.time() - started
        load_after = loadavg()

        for label, key, _, _, want in figures:
            seen = pools_seen[label]
            if want == "a" and set(seen) != {"a"}:
                print(f"WARNING: {label}: pools seen {seen}")
            if want == "*" and None in seen:
                print(f"WARNING: {label}: some requests not routed: {seen}")
        counted_after = counters()
        failures = {k: counted_after[k][0] - counted_before[k][0] for k in counted_after}
        fallbacks = {k: counted_after[k][1] - counted_before[k][1] for k in counted_after}

        ms = lambda s: s * 1000
        stats = {l: (ms(statistics.median(s)), ms(pct(s, 99)), len(s)) for l, s in samples.items()}
        base_small, base_big = stats["64 tok: no filter"], stats["220 KB: no filter"]
        base_new = stats["220 KB new text: no filter"]
        print(f"\n{len(figures)} figures, {args.rounds} interleaved rounds, {elapsed:.0f} s; "
              f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
        print(f"measured phase: probe failures {failures}; fallbacks {fallbacks}; "
              f"stub Envoy: {stub.stat('http.stub.downstream_rq_total')} requests on "
              f"{stub.stat('http.stub.downstream_cx_total')} connections\n")
        print("| figure | n | p50 ms | p99 ms | added p50 ms | added p99 ms | p50 ratio |")
        print("|---|---|---|---|---|---|---|")
        for label, key, *_ in figures:
            p50, p99, n = stats[label]
            base = base_new if label.startswith("220 KB new") else base_big if label.startswith("220") else base_small
            if key in ("plain", "router-a", "stub"):
                print(f"| {label} | {n} | {p50:.3f} | {p99:.3f} | | | |")
            else:
                print(f"| {label} | {n} | {p50:.3f} | {p99:.3f} | {p50 - base[0]:+.3f} | {p99 - base[1]:+.3f} | {p50 / base[0]:.2f}× |")
        print(f"\nfilter-4 added p50 {stats['64 tok: filter, 4 groups'][0] - base_small[0]:.3f} ms (goal <= 0.5); "
              f"220 KB added p50 {stats['220 KB: filter, 4 groups'][0] - base_big[0]:.3f} ms (goal <= 10)")
    finally:
        for x in envoys:
            x.close()
        for p in procs:
            p.kill()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
