"""The official `openai` client streams through a kv-router (started by `kvroute up`), and
repeated prompts come back from the worker that cached them."""
import time

import openai


def test_openai_client_streams_through_the_kv_router(stack):
    router = stack["pools"][0]["router"]
    client = openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model="kvroute-mock",
        messages=[{"role": "user", "content": "Explain prefix caching in one line."}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len([c for c in chunks if c.choices]) == 6
    assert chunks[-1].usage.completion_tokens == 6


def test_repeated_prompt_is_served_from_cache_through_the_router(stack):
    router = stack["pools"][1]["router"]
    client = openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    prompt = [(i * 13) % 3000 + 5 for i in range(800)]
    first = client.completions.with_raw_response.create(model="kvroute-mock", prompt=prompt, max_tokens=1)
    worker = first.headers["x-kvroute-worker"]
    assert first.parse().usage.prompt_tokens_details.cached_tokens == 0
    for _ in range(20):  # the router learns the blocks from the worker's KV events
        again = client.completions.with_raw_response.create(model="kvroute-mock", prompt=prompt, max_tokens=1)
        if again.headers["x-kvroute-overlap-blocks"] == "50":
            break
        time.sleep(0.05)
    assert again.headers["x-kvroute-worker"] == worker
    assert again.parse().usage.prompt_tokens_details.cached_tokens == 784


def test_openai_client_streams_through_the_global_router(stack):
    client = openai.OpenAI(base_url=f"{stack['global_router']}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="kvroute-mock",
        messages=[{"role": "user", "content": "Which pool am I in?"}],
        max_tokens=4,
        stream=True,
    )
    assert raw.headers["x-kvroute-pool"] in ("a", "b")
    assert raw.headers["x-kvroute-reason"].startswith("kv_overlap")
    chunks = [c for c in raw.parse() if c.choices]
    assert len(chunks) == 4
    assert chunks[-1].choices[0].finish_reason == "length"
