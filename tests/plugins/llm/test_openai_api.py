"""A tiny Llama served by vLLM inside a servekit replica, called with OpenAI's own client:
completions, chat, streaming, LoRA adapters through multiplexing, bad input, a dying engine."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from unittest import mock

import httpx
import pytest

openai = pytest.importorskip("openai", reason="the openai client (dev extra) is not installed")

from servekit.core import DeployError, ServiceSpec  # noqa: E402

NAME = "llm"
MODEL = "tiny"
CONTEXT = 256
# Every request gets exactly max_tokens tokens: a random model may emit </s> at any step.
EXACT = {"ignore_eos": True}
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def service(runtime, tiny_llama, tracing_env):
    model, adapters = tiny_llama
    spec = ServiceSpec(
        name=NAME,
        source=f"llm:{model}",
        options={
            "served_model_name": MODEL,
            "adapter_dir": str(adapters),
            "max_model_len": CONTEXT,
            "max_lora_rank": 8,
            "max_loras": 2,
            "kv_cache_memory_bytes": 64 * 2**20,
        },
        multiplexing={"max_models_per_replica": 2},
        resources={"num_cpus": 1},
        health_check={"period_s": 2, "timeout_s": 30},
    )
    with mock.patch.dict(os.environ, tracing_env):  # traced: GenAI spans are checked below
        status = runtime.deploy(spec, timeout_s=400)
    yield status.url
    runtime.delete(NAME)


@pytest.fixture(scope="module")
def client(service):
    return openai.OpenAI(base_url=f"{service}/v1", api_key="unused", timeout=120, max_retries=0)


def complete(client, model: str = MODEL, prompt: str = "The quick brown fox", **kwargs):
    kwargs.setdefault("max_tokens", 6)
    return client.completions.create(
        model=model, prompt=prompt, temperature=0, extra_body=EXACT, **kwargs
    )


def test_models_lists_the_base_and_every_adapter(client):
    ids = {model.id for model in client.models.list()}
    assert ids == {MODEL, f"{MODEL}:a", f"{MODEL}:b", f"{MODEL}:c"}


def test_completion_answers_with_token_usage(client):
    reply = complete(client)
    assert reply.model == MODEL
    assert isinstance(reply.choices[0].text, str) and reply.choices[0].text
    assert reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens > 3
    assert complete(client).choices[0].text == reply.choices[0].text  # greedy: repeatable


def test_chat_applies_the_template_and_counts_tokens(client):
    messages = [{"role": "system", "content": "Be short."}, {"role": "user", "content": "Hello"}]
    reply = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=5, temperature=0, extra_body=EXACT
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 5
    # The template adds role markers and a generation prompt around the two contents.
    assert reply.usage.prompt_tokens > 8


def test_streams_end_with_usage_and_match_the_whole_answer(client):
    whole = complete(client, max_tokens=8).choices[0].text
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="The quick brown fox",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=EXACT,
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens == 8

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=7,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=EXACT,
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices]
    pieces = [piece for piece in pieces if piece]
    assert len(pieces) >= 2  # token by token, not one lump
    assert stream.response.headers["content-type"].startswith("text/event-stream")


def test_sse_framing_ends_with_done(service):
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 3, "stream": True, **EXACT}
    with httpx.stream("POST", f"{service}/v1/completions", json=body, timeout=60) as reply:
        lines = [line for line in reply.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_a_stream_without_include_usage_gets_no_usage_chunk(service):
    # servekit asks vLLM for usage to count tokens; the client did not ask, so never sees it.
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 3, "stream": True, **EXACT}
    with httpx.stream("POST", f"{service}/v1/completions", json=body, timeout=60) as reply:
        events = [line for line in reply.iter_lines() if line.startswith("data: {")]
    assert len(events) == 3 and not any('"usage"' in event for event in events)


def test_llm_requests_are_genai_spans_and_count_tokens(client, service, runtime, otlp_receiver):
    from prometheus_client.parser import text_string_to_metric_families

    def tokens() -> dict[str, float]:
        text = httpx.get(runtime.metrics_url, timeout=10).text
        counted = {"input": 0.0, "output": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "servekit_llm_tokens_total" and sample.labels["service"] == NAME:
                    counted[sample.labels["kind"]] += sample.value
        return counted

    def settled() -> dict[str, float]:  # replicas push every second: wait for a stable count
        last, now = None, tokens()
        while now != last:
            time.sleep(2.5)
            last, now = now, tokens()
        return now

    before = settled()
    trace_id = secrets.token_hex(16)
    traceparent = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    reply = complete(client, max_tokens=5, extra_headers=traceparent)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        stream=True,
        extra_body=EXACT,
        extra_headers=traceparent,
    )
    assert [c for c in stream if not c.choices] == []  # no usage chunk: not asked for
    spans = otlp_receiver.wait_for(
        lambda spans: {"text_completion tiny", "chat tiny"} <= {s.name for s in spans}, trace_id
    )
    completion = next(s.attributes for s in spans if s.name == "text_completion tiny")
    assert completion["gen_ai.operation.name"] == "text_completion"
    assert completion["gen_ai.request.model"] == MODEL
    assert completion["gen_ai.request.max_tokens"] == 5
    assert completion["gen_ai.usage.input_tokens"] == reply.usage.prompt_tokens
    assert completion["gen_ai.usage.output_tokens"] == 5
    chat = next(s.attributes for s in spans if s.name == "chat tiny")
    assert chat["gen_ai.operation.name"] == "chat"
    assert chat["gen_ai.usage.output_tokens"] == 4
    assert chat["gen_ai.usage.input_tokens"] > 0
    assert 0 < chat["gen_ai.response.time_to_first_chunk"] < 60
    assert chat["gen_ai.response.finish_reasons"] == ["length"]
    # Both are children of Serve's request span, in the client's trace.
    assert {s.name for s in spans} >= {"POST /llm/v1/completions", "POST /llm/v1/chat/completions"}

    want_input = before["input"] + reply.usage.prompt_tokens + chat["gen_ai.usage.input_tokens"]
    deadline = time.monotonic() + 20
    while tokens() != {"input": want_input, "output": before["output"] + 9}:
        assert time.monotonic() < deadline, (tokens(), before)
        time.sleep(0.5)


def test_an_adapter_is_its_own_model(client):
    base = complete(client).choices[0].text
    tuned = complete(client, f"{MODEL}:a")
    assert tuned.model == f"{MODEL}:a"
    assert tuned.choices[0].text != base


def test_adapters_load_on_demand_and_the_least_recently_used_is_evicted(client, runtime):
    def loaded() -> list[str]:
        return runtime.handle(NAME).describe.remote().result(timeout_s=30)["adapters_loaded"]

    for adapter in ("a", "b", "c"):
        complete(client, f"{MODEL}:{adapter}", max_tokens=1)
    assert loaded() == [f"{MODEL}:b", f"{MODEL}:c"]  # two per replica: "a" went first
    complete(client, f"{MODEL}:a", max_tokens=1)  # back on demand, evicting "b"
    assert loaded() == [f"{MODEL}:a", f"{MODEL}:c"]
    assert complete(client, f"{MODEL}:b").choices[0].text  # and "b" still answers


def test_unknown_models_are_openai_404s(client, service):
    for model in ("nope", f"{MODEL}:nope", f"{MODEL}:../b", "other:a"):
        with pytest.raises(openai.NotFoundError) as caught:
            complete(client, model)
        error = caught.value.body
        assert error["type"] == "NotFoundError" and model in error["message"], error


def test_a_prompt_longer_than_the_context_is_a_400_naming_the_limit(client):
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, prompt="fox " * (CONTEXT + 10))
    assert str(CONTEXT) in caught.value.body["message"]


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        ("/v1/chat/completions", b"{not json", "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", "JSON object"),
        ("/v1/chat/completions", b'{"model": "tiny"}', "messages"),
        ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "max_tokens": "x"}', "max_tokens"),
        ("/v1/completions", b'{"model": "tiny", "prompt": "hi", "temperature": -1}', "temperature"),
    ],
)
def test_malformed_bodies_are_400s_in_openai_format(service, path, body, problem):
    reply = httpx.post(
        f"{service}{path}", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert problem in error["message"] and error["code"] == 400
    assert "Traceback" not in reply.text


def test_handle_calls_chat_and_complete(runtime):
    # A multiplexed service's handle calls name their model, the base's or an adapter's.
    hello = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    chat = runtime.predict(NAME, hello, model_id=MODEL)
    assert chat["object"] == "chat.completion" and chat["model"] == MODEL
    done = runtime.predict(NAME, {"prompt": "Hi", "max_tokens": 2}, model_id=f"{MODEL}:c")
    assert done["object"] == "text_completion" and done["model"] == f"{MODEL}:c"


def test_langchain_chat_model_invokes_and_streams(service):
    pytest.importorskip("langchain_core", reason="the langchain extra is not installed")
    from servekit.plugins.langchain import ServekitChatModel

    llm = ServekitChatModel(base_url=service, model=MODEL, max_tokens=4, temperature=0)
    reply = llm.invoke("Hello")
    assert reply.content and reply.usage_metadata["output_tokens"] <= 4
    chunks = list(llm.stream("Hello"))
    assert len([c for c in chunks if c.content]) >= 2
    assert "".join(str(c.content) for c in chunks) == reply.content


def test_an_unknown_engine_option_fails_the_deploy_naming_it(runtime, tiny_llama):
    spec = ServiceSpec(
        name="llm-typo", source=f"llm:{tiny_llama[0]}", options={"max_model_lenn": 64}
    )
    with pytest.raises(DeployError, match=r"max_model_lenn.*did you mean max_model_len"):
        runtime.deploy(spec, timeout_s=120)
    assert "llm-typo" not in {status.name for status in runtime.list()}


def test_an_engine_that_dies_fails_requests_in_flight_and_the_replica_is_replaced(
    runtime, client, service
):
    import psutil

    replica = psutil.Process(runtime.handle(NAME).describe.remote().result(timeout_s=30)["pid"])
    engines = [p for p in replica.children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
    engines = engines or replica.children()
    assert engines, "the replica has no engine process"
    outcome: dict[str, object] = {}
    streaming = threading.Event()

    def long_stream() -> None:
        chunks = 0
        try:
            stream = client.completions.create(
                model=MODEL, prompt="Hi", max_tokens=CONTEXT - 10, stream=True, extra_body=EXACT
            )
            for _ in stream:
                chunks += 1
                streaming.set()
        except Exception as exc:  # the user-visible error
            outcome["error"] = exc
        outcome["chunks"] = chunks
        streaming.set()

    reader = threading.Thread(target=long_stream)
    reader.start()
    assert streaming.wait(timeout=60)
    for engine in engines:
        os.kill(engine.pid, signal.SIGKILL)
    reader.join(timeout=60)
    assert not reader.is_alive(), "the request in flight hung after the engine died"
    assert "error" in outcome or outcome.get("chunks", 0) < CONTEXT - 10

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # Serve's health check replaces the replica
        try:
            if complete(client, max_tokens=2).choices[0].text:
                break
        except (openai.APIError, httpx.HTTPError):
            time.sleep(3)
    else:
        pytest.fail("the service did not come back after its engine died")
    new_pid = runtime.handle(NAME).describe.remote().result(timeout_s=30)["pid"]
    assert new_pid != replica.pid


@pytest.mark.timeout(900)
def test_fuzzed_openai_routes_never_get_a_server_error(service):
    """schemathesis on /v1/completions and /v1/chat/completions: unknown models, bad
    messages, out-of-range parameters are OpenAI-style 4xx, never a 5xx."""
    from tests.fuzz import fuzz

    seen = fuzz(service, paths="^/v1/(chat/)?completions$", max_examples=20, timeout_s=120)
    assert seen["examples"] >= 40
    assert any(400 <= status < 500 for status in seen["statuses"]), seen
