"""The official `openai` client talks to the mocker: a streamed chat and a plain completion."""
import openai


def client(mocker):
    return openai.OpenAI(base_url=f"{mocker['http']}/v1", api_key="unused", max_retries=0)


def test_chat_completion_streams_through_the_openai_client(mocker):
    stream = client(mocker).chat.completions.create(
        model="kvroute-mock",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c for c in chunks if c.choices]
    assert len(deltas) == 8
    assert deltas[0].choices[0].delta.role == "assistant"
    assert deltas[-1].choices[0].finish_reason == "length"
    usage = chunks[-1].usage
    assert usage.completion_tokens == 8
    assert usage.prompt_tokens > 8


def test_completion_reports_cached_tokens_on_reuse(mocker):
    c = client(mocker)
    prompt = [7] * 100
    first = c.completions.create(model="kvroute-mock", prompt=prompt, max_tokens=2)
    second = c.completions.create(model="kvroute-mock", prompt=prompt, max_tokens=2)
    assert first.usage.prompt_tokens == 100
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 96
    assert first.choices[0].text == second.choices[0].text


def test_unknown_model_is_a_not_found_error(mocker):
    try:
        client(mocker).completions.create(model="nope", prompt="hi", max_tokens=1)
    except openai.NotFoundError as e:
        assert "does not exist" in str(e)
    else:
        raise AssertionError("expected a 404")
