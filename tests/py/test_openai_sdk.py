"""The official `openai` Python package, unmodified, pointed at switchboard."""

import openai
import pytest


def expected(model, prompt):
    # The mock's deterministic reply (fixtures/mockllm reply_text).
    return f"[{model}] You said: {prompt}. The quick brown fox jumps over the lazy dog."


@pytest.fixture()
def client(broker):
    return openai.OpenAI(base_url=broker + "/v1", api_key="unused-here", max_retries=0)


def test_model_listing(client):
    models = {m.id: m for m in client.models.list()}
    assert {"sdk-model", "sdk-tools"} <= set(models)
    assert models["sdk-model"].owned_by == "switchboard"
    one = client.models.retrieve("sdk-model")
    assert (one.id, one.owned_by) == ("sdk-model", "switchboard")
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.code == "model_not_found"


def test_chat_completion(client):
    r = client.chat.completions.create(model="sdk-model", messages=[{"role": "user", "content": "ping"}])
    assert r.choices[0].message.content == expected("sdk-model", "ping")
    assert r.usage.completion_tokens > 0


def test_chat_completion_with_raw_headers(client):
    raw = client.chat.completions.with_raw_response.create(
        model="sdk-model", messages=[{"role": "user", "content": "hdr"}]
    )
    assert raw.headers.get("x-switchboard-backend")
    assert raw.headers.get("x-request-id")
    assert raw.parse().choices[0].message.content == expected("sdk-model", "hdr")


def test_streaming_chat_completion_with_usage(client):
    stream = client.chat.completions.create(
        model="sdk-model",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, chunks = "", None, 0
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert text == expected("sdk-model", "stream please")
    assert chunks > 5
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize("model", ["sdk-tools", "sdk-ollamatools"])
def test_streaming_tool_calls(client, model):
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "weather?"}], stream=True
    )
    names, finish = [], None
    for chunk in stream:
        if not chunk.choices:
            continue
        for call in chunk.choices[0].delta.tool_calls or []:
            if call.function and call.function.name:
                names.append(call.function.name)
        finish = chunk.choices[0].finish_reason or finish
    assert len(names) == 2
    assert finish == "tool_calls"


def test_completions(client):
    r = client.completions.create(model="sdk-model", prompt="hello")
    assert r.choices[0].text == expected("sdk-model", "hello")
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="sdk-model", prompt="hi", stream=True) if c.choices)
    assert streamed == expected("sdk-model", "hi")


def test_embeddings(client):
    r = client.embeddings.create(model="sdk-model", input=["one", "two"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 8
    assert r.data[0].embedding != r.data[1].embedding


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"


def test_all_backends_failing_is_gateway_timeout(client):
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="sdk-error503", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 504
