"""A python: service on a real local Ray: HTTP, handles, batching, errors, live updates."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
from servekit.core import ServekitError

NAME = "echo-batched"


@pytest.fixture(scope="module")
def echo(runtime, sample_spec):
    spec = sample_spec(
        NAME,
        "Echo",
        options={"greeting": "hi", "delay_s": 0.05},
        batching={"max_batch_size": 8, "max_wait_ms": 1000},
    )
    runtime.deploy(spec, timeout_s=180)
    yield spec
    runtime.delete(NAME)


def test_http_predict_answers_at_the_route_prefix(runtime, echo):
    url = runtime.url(NAME)
    assert url.endswith("/echo-batched")
    for path in ("", "/", "/predict"):
        reply = httpx.post(url + path, json={"x": 1}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["echo"] == {"x": 1}
        assert reply.json()["greeting"] == "hi"
    assert httpx.get(url + "/healthz", timeout=30).json()["status"] == "ok"


def test_concurrent_requests_are_batched(runtime, echo):
    url = runtime.url(NAME)

    def call(i: int) -> dict:
        reply = httpx.post(url, json=i, timeout=60)
        reply.raise_for_status()
        return reply.json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(call, range(48)))
    assert [r["echo"] for r in replies] == list(range(48))
    sizes = [r["batch_size"] for r in replies]
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8


def test_single_request_is_not_held_for_max_wait(runtime, echo):
    url = runtime.url(NAME)
    httpx.post(url, json=0, timeout=30)  # warm the connection path
    started = time.perf_counter()
    reply = httpx.post(url, json=1, timeout=30)
    elapsed = time.perf_counter() - started
    assert reply.json()["batch_size"] == 1
    # max_wait_ms is 1000: a lone request that waited for company would take over 1 s.
    assert elapsed < 0.9, elapsed


def test_handle_predict_goes_through_the_same_model(runtime, echo):
    output = runtime.predict(NAME, {"via": "handle"})
    assert output["echo"] == {"via": "handle"}
    assert output["greeting"] == "hi"


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "invalid_json"),
        (b"", {}, 400, "empty_body"),
        (b"\xff\xfe", {"content-type": "application/json"}, 400, "invalid_json"),
    ],
)
def test_malformed_input_gets_a_json_4xx_and_the_replica_keeps_serving(
    runtime, echo, body, headers, status, code
):
    url = runtime.url(NAME)
    reply = httpx.post(url, content=body, headers=headers, timeout=30)
    assert reply.status_code == status
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["error"]["code"] == code
    assert "Traceback" not in reply.text
    assert httpx.post(url, json="still alive", timeout=30).json()["echo"] == "still alive"


def test_model_error_is_a_500_with_request_id_and_no_traceback(runtime, echo):
    url = runtime.url(NAME)
    reply = httpx.post(url, json="explode", timeout=30)
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert error["code"] == "internal_error"
    assert "(request " in error["message"]
    assert "Traceback" not in reply.text
    with pytest.raises(ServekitError, match="failed on this input: ValueError: cannot echo"):
        runtime.predict(NAME, "explode")
    assert httpx.post(url, json="fine", timeout=30).json()["echo"] == "fine"


def test_unknown_route_and_method_are_json_errors(runtime, echo):
    url = runtime.url(NAME)
    missing = httpx.post(url + "/nope", json=1, timeout=30)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(url + "/predict", timeout=30)
    assert wrong.status_code == 405
    assert "error" in wrong.json()


def test_list_and_status_show_the_service(runtime, echo):
    names = [s.name for s in runtime.list()]
    assert NAME in names
    status = runtime.status(NAME)
    assert status.status == "RUNNING"
    assert status.replicas == {"RUNNING": 1}
    assert runtime.spec(NAME) == echo
    assert runtime.describe()["ingress"] == "haproxy"


def test_batching_change_applies_live_without_restart(runtime, echo):
    before = runtime.predict(NAME, "before")
    changed = echo.model_copy(
        update={"batching": echo.batching.model_copy(update={"max_batch_size": 2})}
    )
    runtime.update(changed, timeout_s=120)
    after = runtime.predict(NAME, "after")
    assert after["pid"] == before["pid"]  # same replica process: not restarted
    assert runtime.spec(NAME).batching.max_batch_size == 2

    url = runtime.url(NAME)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sizes = list(
            pool.map(lambda i: httpx.post(url, json=i, timeout=60).json()["batch_size"], range(24))
        )
    assert max(sizes) <= 2
    runtime.update(echo, timeout_s=120)


def test_options_change_rolls_replicas_and_takes_effect(runtime, echo):
    before = runtime.predict(NAME, 1)
    changed = echo.model_copy(update={"options": {**echo.options, "greeting": "hey"}})
    runtime.update(changed, timeout_s=180)
    after = runtime.predict(NAME, 1)
    assert after["greeting"] == "hey"
    assert after["pid"] != before["pid"]
    runtime.update(echo, timeout_s=180)
    assert runtime.predict(NAME, 1)["greeting"] == "hi"


def test_sync_model_runs_with_threads_from_resources(runtime, sample_spec):
    spec = sample_spec("sync-echo", "SyncEcho", resources={"num_cpus": 0.5, "threads": 3})
    runtime.deploy(spec, timeout_s=180)
    try:
        output = runtime.predict("sync-echo", "x")
        assert output["echo"] == "x"
        assert output["threads"] == "3"
    finally:
        runtime.delete("sync-echo")
