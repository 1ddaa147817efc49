"""Per-service authentication on a real local Ray: 401 with a JSON body on every route
(streams and health included) without a valid token, through an endpoint's Router too;
tokens from a file rotate without a redeploy and never reach a log."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from servekit.core import Auth, DeployError, NotFound, ServiceSpec, SpecError, client_headers
from servekit.core._private.auth import Credentials

from tests.conftest import SAMPLE_MODELS

TOKEN = "sk-test-2f1c9a7e41d84b0b"
OTHER = "sk-rotated-77aa10c3"


# -- without Ray ---------------------------------------------------------------------


def _headers(**pairs: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in pairs.items()]


def test_bearer_tokens_from_env_and_file(tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# rotated monthly\n{TOKEN}\n")
    monkeypatch.setenv("SK_TEST_TOKENS", "from-env-1, from-env-2")
    creds = Credentials(Auth(tokens_env="SK_TEST_TOKENS", tokens_file=str(tokens)))
    for good in (TOKEN, "from-env-1", "from-env-2"):
        assert creds.allows(_headers(authorization=f"Bearer {good}"))
        assert creds.allows(_headers(Authorization=f"bearer  {good} "))
    assert not creds.allows(_headers(authorization="Bearer nope"))
    assert not creds.allows(_headers(authorization=TOKEN))  # no scheme
    assert not creds.allows(_headers(authorization="Basic " + TOKEN))
    assert not creds.allows(_headers(authorization="Bearer # rotated monthly"))
    assert not creds.allows([])


def test_api_key_header(monkeypatch):
    monkeypatch.setenv("SK_TEST_KEYS", TOKEN)
    creds = Credentials(Auth(type="api_key", header="X-Model-Key", tokens_env="SK_TEST_KEYS"))
    assert creds.allows(_headers(x_model_key=TOKEN))
    assert not creds.allows(_headers(authorization=f"Bearer {TOKEN}"))
    assert "X-Model-Key" in creds.challenge()


def test_missing_tokens_are_a_spec_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SK_NOT_SET", raising=False)
    with pytest.raises(SpecError, match="no token found in environment variable 'SK_NOT_SET'"):
        Credentials(Auth(tokens_env="SK_NOT_SET"))
    with pytest.raises(SpecError, match=r"auth\.tokens_file: cannot read"):
        Credentials(Auth(tokens_file=str(tmp_path / "absent")))
    with pytest.raises(SpecError, match=r"auth: name where the tokens are"):
        ServiceSpec(name="x", source="python:m:M", auth={"type": "bearer"})
    with pytest.raises(SpecError, match=r"auth\.type"):
        ServiceSpec(name="x", source="python:m:M", auth={"type": "basic", "tokens_env": "X"})


def test_client_headers_carry_servekit_token(monkeypatch):
    monkeypatch.delenv("SERVEKIT_TOKEN", raising=False)
    assert "authorization" not in client_headers()
    monkeypatch.setenv("SERVEKIT_TOKEN", TOKEN)
    assert client_headers()["authorization"] == f"Bearer {TOKEN}"


# -- on Ray ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def guarded(runtime, sample_spec, tokens_file):
    spec = sample_spec("guarded", "Echo", auth={"tokens_file": str(tokens_file)})
    runtime.deploy(spec, timeout_s=180)
    yield runtime.url("guarded")
    runtime.delete("guarded")


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.timeout(300)
def test_every_route_needs_the_token(guarded):
    for method, path in (("POST", ""), ("POST", "/predict"), ("GET", "/healthz")):
        refused = httpx.request(method, guarded + path, json={"x": 1}, timeout=30)
        assert refused.status_code == 401, (path, refused.text)
        assert refused.json()["error"]["code"] == "unauthorized"
        assert "Authorization: Bearer" in refused.json()["error"]["message"]
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.request(method, guarded + path, json={"x": 1}, headers=_bearer("x"))
        assert wrong.status_code == 401
    ok = httpx.post(guarded, json={"x": 1}, headers=_bearer(TOKEN), timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json()["echo"] == {"x": 1}
    assert httpx.get(guarded + "/healthz", headers=_bearer(TOKEN)).json()["status"] == "ok"


@pytest.mark.timeout(300)
def test_handles_are_not_http_and_need_no_token(runtime, guarded):
    # A DeploymentHandle needs access to the Ray cluster itself (Ray's own token).
    assert runtime.predict("guarded", {"x": 2})["echo"] == {"x": 2}


@pytest.mark.timeout(300)
def test_an_endpoint_relays_credentials_and_refusals(runtime, guarded):
    runtime.route("guarded-ep", {"guarded": 100})
    try:
        url = runtime.http_url + "/guarded-ep"
        assert httpx.post(url, json=1, timeout=30).status_code == 401
        ok = httpx.post(url, json=1, headers=_bearer(TOKEN), timeout=30)
        assert ok.status_code == 200 and ok.json()["echo"] == 1
    finally:
        runtime.delete_endpoint("guarded-ep")


@pytest.mark.timeout(300)
def test_a_rotated_file_takes_effect_without_a_redeploy(guarded, tokens_file):
    tokens_file.write_text(OTHER + "\n")
    os.utime(tokens_file, (time.time() + 5, time.time() + 5))  # a new mtime, even if fast
    deadline = time.monotonic() + 30
    while httpx.post(guarded, json=1, headers=_bearer(OTHER), timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "the new token was never accepted"
        time.sleep(1)
    assert httpx.post(guarded, json=1, headers=_bearer(TOKEN), timeout=30).status_code == 401
    tokens_file.write_text(TOKEN + "\n")  # back, for the other tests
    os.utime(tokens_file, (time.time() + 10, time.time() + 10))


@pytest.mark.timeout(300)
def test_tokens_never_reach_a_log(guarded, servekit_env):
    httpx.post(guarded, json=1, headers=_bearer("sk-wrong-3b9d6f"), timeout=30)
    httpx.post(guarded, json=1, headers=_bearer(TOKEN), timeout=30)
    time.sleep(1)  # log lines are flushed by the replica's handler
    logs = Path(servekit_env["SERVEKIT_HOME"])
    found = []
    for path in logs.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".txt", ""):
            try:
                text = path.read_text(errors="ignore")
            except OSError:
                continue
            if TOKEN in text or "sk-wrong-3b9d6f" in text:
                found.append(str(path))
    assert not found


@pytest.mark.timeout(300)
def test_a_service_without_its_tokens_does_not_start(runtime, tmp_path):
    spec = ServiceSpec(
        name="no-tokens",
        source="python:sample_models:Echo",
        runtime_env={"py_modules": [SAMPLE_MODELS]},
        resources={"num_cpus": 0.25},
        auth={"tokens_env": "SK_NOWHERE_SET"},
    )
    with pytest.raises(
        DeployError, match="no token found in environment variable 'SK_NOWHERE_SET'"
    ):
        runtime.deploy(spec, timeout_s=240)
    with pytest.raises(NotFound):
        runtime.status("no-tokens")


@pytest.mark.timeout(300)
def test_a_chains_stream_and_schema_routes_need_the_token(runtime, tokens_file):
    pytest.importorskip("langchain_core", reason="the langchain extra is not installed")
    from servekit.plugins.langchain import serve_runnable

    serve_runnable(
        "sample_models.chains:speller",
        name="guarded-chain",
        runtime_env={"py_modules": [SAMPLE_MODELS]},
        resources={"num_cpus": 0.25},
        auth={"tokens_file": str(tokens_file)},
    )
    try:
        url = runtime.url("guarded-chain")
        for path in ("/stream", "/invoke", "/input_schema"):
            method = "GET" if path.endswith("schema") else "POST"
            refused = httpx.request(method, url + path, json={"input": "ab"}, timeout=30)
            assert refused.status_code == 401, (path, refused.text)
            assert refused.json()["error"]["code"] == "unauthorized"
        with httpx.stream(
            "POST", url + "/stream", json={"input": "ab"}, headers=_bearer(TOKEN), timeout=30
        ) as reply:
            assert reply.status_code == 200
            events = [line for line in reply.iter_lines() if line.startswith("event:")]
        assert events[-1] == "event: end"
    finally:
        runtime.delete("guarded-chain")
