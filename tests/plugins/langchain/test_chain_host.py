"""Chains served by servekit, called the way LangServe users call them: langserve's own
RemoteRunnable as the client, plus raw HTTP for the wire details and the failure cases."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import struct
import subprocess
import time

import httpx
import pytest

pytest.importorskip("langchain_core", reason="the langchain extra is not installed")
langserve = pytest.importorskip("langserve", reason="langserve (dev extra) is not installed")

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from servekit.core import DeployError, ServiceSpec  # noqa: E402
from servekit.plugins.langchain import serve_runnable  # noqa: E402

from tests.conftest import SAMPLE_MODELS, SERVEKIT  # noqa: E402

CHAINS = "sample_models.chains"


@pytest.fixture(scope="module")
def chains(runtime, tmp_path_factory):
    """One service per runnable the tests need; the URL of each by short name."""
    cancel_dir = tmp_path_factory.mktemp("cancel")
    env = {"py_modules": [SAMPLE_MODELS], "env_vars": {"SK_CANCEL_DIR": str(cancel_dir)}}
    small = {"num_cpus": 0.25}
    services = {
        "joke": dict(target="joke"),
        "chat": dict(target="make_chat"),  # a factory
        "shout": dict(target="shouter", batching={"max_batch_size": 8, "max_wait_ms": 20}),
        "spell": dict(target="speller"),
        "who": dict(
            target="who",
            config={"configurable": {"team": "search"}},
            config_headers={"x-user-id": "user_id"},
            per_request_modifier=f"{CHAINS}:add_tenant",
        ),
        "slow": dict(target="slow"),
        "retrieve": dict(target="retrieve"),
    }
    runtime.deploy(
        ServiceSpec(
            name="lc-retriever",
            source="python:sample_models:Echo",
            runtime_env={"py_modules": [SAMPLE_MODELS]},
            resources=small,
        )
    )
    for short, options in services.items():
        target = options.pop("target")
        serve_runnable(
            f"{CHAINS}:{target}", name=f"lc-{short}", runtime_env=env, resources=small, **options
        )
    yield {short: runtime.url(f"lc-{short}") for short in services} | {"cancel_dir": cancel_dir}
    for name in [*(f"lc-{short}" for short in services), "lc-retriever"]:
        runtime.delete(name, wait=False)  # replicas drain in the background


def remote(url: str):
    return langserve.RemoteRunnable(url + "/")


def test_remote_runnable_invoke_and_batch(chains):
    joke = remote(chains["joke"])
    assert joke.invoke({"topic": "cats"}) == "echo: Tell me about cats"
    assert joke.batch([{"topic": "a"}, {"topic": "b"}]) == [
        "echo: Tell me about a",
        "echo: Tell me about b",
    ]
    # Messages travel as messages, both ways.
    answer = remote(chains["chat"]).invoke([HumanMessage("hi there")])
    assert isinstance(answer, AIMessage) and answer.content == "echo: hi there"


def test_invoke_answers_with_output_and_run_id(chains):
    reply = httpx.post(chains["joke"] + "/invoke", json={"input": {"topic": "owls"}}, timeout=30)
    assert reply.status_code == 200
    body = reply.json()
    assert body["output"] == "echo: Tell me about owls"
    assert len(body["metadata"]["run_id"]) == 36  # a UUID


def test_remote_runnable_stream(chains):
    chunks = list(remote(chains["joke"]).stream({"topic": "dogs"}))
    assert len(chunks) > 1  # token by token, not one blob
    assert "".join(chunks) == "echo: Tell me about dogs"
    assert list(remote(chains["spell"]).stream("abc")) == ["a", "b", "c"]


def test_stream_is_langserves_event_sequence(chains):
    with httpx.stream("POST", chains["spell"] + "/stream", json={"input": "hi"}) as reply:
        events = [line for line in reply.iter_lines() if line.startswith("event:")]
    assert events == ["event: metadata", "event: data", "event: data", "event: end"]


def test_remote_runnable_astream_events(chains):
    async def collect():
        return [e async for e in remote(chains["joke"]).astream_events({"topic": "x"})]

    events = asyncio.run(collect())
    kinds = {e["event"] for e in events}
    assert {"on_chain_start", "on_chat_model_stream", "on_chain_end"} <= kinds
    tokens = [e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream"]
    assert "".join(tokens) == "echo: Tell me about x"


def test_schema_routes(chains):
    schema = httpx.get(chains["joke"] + "/input_schema").json()
    assert schema["required"] == ["topic"]
    assert httpx.get(chains["joke"] + "/output_schema").json()["type"] == "string"
    assert httpx.get(chains["who"] + "/config_schema").status_code == 200


def test_bad_input_is_a_422_naming_the_problem(chains):
    reply = httpx.post(chains["joke"] + "/invoke", json={"input": {"subject": "cats"}})
    assert reply.status_code == 422
    assert "topic" in reply.json()["error"]["message"]
    typed = httpx.post(chains["shout"] + "/invoke", json={"input": 5})
    assert typed.status_code == 422 and "valid string" in typed.json()["error"]["message"]
    no_input = httpx.post(chains["shout"] + "/invoke", json={"inputs": "x"})
    assert no_input.status_code == 422 and "'input'" in no_input.json()["error"]["message"]
    not_json = httpx.post(chains["shout"] + "/invoke", content=b"{nope")
    assert not_json.status_code == 400
    with pytest.raises(httpx.HTTPStatusError) as raised:
        remote(chains["shout"]).invoke(5)
    assert raised.value.response.status_code == 422


def test_a_failing_chain_is_a_500_with_a_request_id_and_no_details(chains):
    reply = httpx.post(chains["shout"] + "/invoke", json={"input": "boom"})
    assert reply.status_code == 500
    message = reply.json()["error"]["message"]
    assert "request" in message and "secret" not in reply.text and "Traceback" not in reply.text
    # In a stream: the letters before the failure, an error event, then end.
    with httpx.stream("POST", chains["spell"] + "/stream", json={"input": "ab!c"}) as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[-1] == "event: end"
    assert "event: error" in lines and "secret" not in "\n".join(lines)
    with pytest.raises(httpx.HTTPStatusError, match="Internal Server Error"):
        list(remote(chains["spell"]).stream("x!"))
    # The replica keeps serving.
    assert remote(chains["shout"]).invoke("fine") == "FINE"


def test_concurrent_invokes_are_batched(chains, runtime):
    shout = remote(chains["shout"])
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(shout.invoke, [f"word{i}" for i in range(32)]))
    assert results == [f"WORD{i}" for i in range(32)]
    sizes = runtime.handle("lc-shout").describe.remote().result()["batch_sizes"]
    assert max(int(size) for size in sizes) > 1


def test_config_allowlist_headers_and_modifier(chains):
    url = chains["who"] + "/invoke"
    reply = httpx.post(
        url,
        json={"input": "hi", "config": {"configurable": {"mood": "calm"}}},
        headers={"x-user-id": "u-7", "x-tenant": "acme"},
    )
    assert reply.json()["output"] == {
        "text": "hi",
        "team": "search",  # the service's config
        "mood": "calm",  # the request's configurable
        "user_id": "u-7",  # a mapped header
        "tenant": "acme",  # the modifier hook
    }
    # Keys outside the allowlist are dropped (LangServe's client always sends a few).
    dropped = httpx.post(url, json={"input": "hi", "config": {"run_name": "x", "tags": ["t"]}})
    assert dropped.status_code == 200, dropped.text
    bad = httpx.post(url, json={"input": "hi", "config": {"configurable": "x"}})
    assert bad.status_code == 422 and "configurable" in bad.json()["error"]["message"]


def test_a_client_that_disconnects_cancels_its_run(chains):
    marker = chains["cancel_dir"] / "leave-early"
    url = httpx.URL(chains["slow"] + "/invoke")
    body = b'{"input": "leave-early"}'
    with socket.create_connection((url.host, url.port)) as client:
        client.sendall(
            f"POST {url.path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 30
        while not marker.exists() or marker.read_text() != "started":
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        # Leave abruptly (a reset, as when a client process dies).
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # The close travels HAProxy -> the replica's HTTP server -> Serve, which cancels the
    # request's task; the chain sees CancelledError and marks it.
    deadline = time.monotonic() + 30
    while marker.read_text() != "cancelled":
        assert time.monotonic() < deadline, f"the run was not cancelled: {marker.read_text()}"
        time.sleep(0.1)


def test_a_chain_step_calls_another_service_by_handle(chains):
    assert remote(chains["retrieve"]).invoke("rivers") == "context: rivers"


def test_a_target_that_is_not_a_runnable_fails_the_deploy(runtime):
    with pytest.raises(DeployError, match="not a LangChain Runnable"):
        serve_runnable(
            f"{CHAINS}:add_tenant",  # a function that takes arguments
            name="lc-bad",
            runtime_env={"py_modules": [SAMPLE_MODELS]},
            resources={"num_cpus": 0.25},
        )
    assert "lc-bad" not in [s.name for s in runtime.list()]


def test_unknown_chain_options_are_refused_before_deploying():
    from servekit.core import SpecError

    with pytest.raises(SpecError, match="config_header"):
        serve_runnable(f"{CHAINS}:joke", name="lc-typo", config_header={"x": "y"})


def test_servekit_deploy_of_a_langchain_spec_file(runtime, tmp_path):
    spec = tmp_path / "shout.yaml"
    spec.write_text(
        f"name: lc-from-file\n"
        f"source: langchain:{CHAINS}:shouter\n"
        f"resources: {{num_cpus: 0.25}}\n"
        f"runtime_env:\n  py_modules: [{SAMPLE_MODELS}]\n"
    )
    deployed = subprocess.run(
        [SERVEKIT, "deploy", str(spec)], capture_output=True, text=True, timeout=300
    )
    try:
        assert deployed.returncode == 0, deployed.stderr
        reply = httpx.post(runtime.url("lc-from-file") + "/invoke", json={"input": "yaml"})
        assert reply.json()["output"] == "YAML"
    finally:
        runtime.delete("lc-from-file")


@pytest.mark.timeout(600)
def test_fuzzed_chain_routes_never_get_a_server_error(chains):
    """schemathesis on LangServe's invoke, batch and stream routes of a prompt | model |
    parser chain: bad inputs and configs are 4xx with JSON bodies, never a 5xx."""
    from tests.fuzz import fuzz

    seen = fuzz(chains["joke"], paths="^/(invoke|batch|stream)$", max_examples=25)
    assert seen["examples"] >= 75
    assert any(400 <= status < 500 for status in seen["statuses"]), seen
