"""Where models come from and how they answer: runs:/ URIs, local paths, streaming
models, `run-local`, and a model's own requirements installed through Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MLFLOW, "deployments", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env={**os.environ, "SERVEKIT_QUIET": "1"},
    )


def predictions(url: str, registry: dict) -> list:
    body = {"dataframe_split": {"columns": registry["features"], "data": registry["rows"]}}
    reply = httpx.post(f"{url}/invocations", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["predictions"]


def test_runs_uri_and_relative_local_path(registry, runtime, tmp_path, monkeypatch):
    import mlflow

    client = get_deploy_client("serve")
    run_uri = f"runs:/{registry['constant_run']}/model"
    mlflow.artifacts.download_artifacts(run_uri, dst_path=str(tmp_path / "download"))
    monkeypatch.chdir(tmp_path)
    try:
        client.create_deployment("from-run", run_uri, config={"num_cpus": "0.25"})
        assert predictions(runtime.url("from-run"), registry) == [2] * 5

        # A relative path, resolved by the client: the replica runs in another directory.
        client.create_deployment("from-path", "download/model", config={"num_cpus": "0.25"})
        assert predictions(runtime.url("from-path"), registry) == [2] * 5
        got = client.get_deployment("from-path")
        assert got["model_uri"] == str(tmp_path / "download" / "model")
    finally:
        for name in ("from-run", "from-path"):
            if name in [s.name for s in runtime.list()]:
                client.delete_deployment(name)


def test_a_missing_local_path_is_a_clear_error(registry):
    result = cli("create", "-t", "serve", "--name", "nowhere", "-m", "/no/such/model")
    assert result.returncode != 0
    assert "no model at /no/such/model" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def words(registry, runtime):
    client = get_deploy_client("serve")
    client.create_deployment(
        "words", "models:/words/1", config={"num_cpus": "0.25", "max_batch_size": "1"}
    )
    yield client
    client.delete_deployment("words")


def test_predict_stream_yields_the_models_chunks(words):
    chunks = list(
        words.predict_stream("words", {"inputs": "hello big world", "params": {"upper": True}})
    )
    assert chunks == [{"word": "HELLO"}, {"word": "BIG"}, {"word": "WORLD"}]


def test_stream_is_server_sent_events_over_plain_http(words, runtime):
    body = {"inputs": "one two", "stream": True}
    with httpx.stream("POST", runtime.url("words") + "/invocations", json=body) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    assert lines == ['data: {"word": "one"}', 'data: {"word": "two"}', "data: [DONE]"]


def test_a_stream_passes_through_an_endpoint_event_by_event(words, runtime):
    runtime.route("words-ep", {"words": 100})
    try:
        body = {"inputs": "one two", "stream": True}
        url = f"{runtime.http_url}/words-ep/invocations"
        with httpx.stream("POST", url, json=body, timeout=60) as reply:
            assert reply.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in reply.iter_lines() if line]
        assert lines == ['data: {"word": "one"}', 'data: {"word": "two"}', "data: [DONE]"]
    finally:
        runtime.delete_endpoint("words-ep")


def test_a_failure_midway_ends_the_stream_with_the_error(words, runtime):
    got = []
    with pytest.raises(MlflowException, match="boom is not a word"):
        for chunk in words.predict_stream("words", {"inputs": "fine then boom later"}):
            got.append(chunk)
    assert got == [{"word": "fine"}, {"word": "then"}]
    # The replica keeps serving.
    assert list(words.predict_stream("words", {"inputs": "still"})) == [{"word": "still"}]


def test_run_local_serves_until_ctrl_c_then_removes_the_deployment(registry, runtime):
    process = subprocess.Popen(
        [
            MLFLOW,
            "deployments",
            "run-local",
            "-t",
            "serve",
            "--name",
            "local-iris",
            "-m",
            "models:/iris/1",
            "-C",
            "num_cpus=0.25",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "SERVEKIT_QUIET": "1"},
    )
    try:
        deadline = time.monotonic() + 180
        line = ""
        while "Ctrl-C" not in line:
            assert time.monotonic() < deadline and process.poll() is None, line
            line = process.stdout.readline()
        assert predictions(runtime.url("local-iris"), registry) == registry["expected_v1"]
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
        assert "deleted 'local-iris'" in output
        assert "local-iris" not in [s.name for s in runtime.list()]
    finally:
        if process.poll() is None:
            process.kill()
        cli("delete", "-t", "serve", "--name", "local-iris")


@pytest.mark.parametrize("manager", ["virtualenv", "uv"])
def test_env_manager_installs_the_models_requirements(registry, runtime, manager):
    name = f"romanized-{manager}"
    created = cli(
        "create",
        "-t",
        "serve",
        "--name",
        name,
        "-m",
        "models:/romanized/1",
        "-C",
        "num_cpus=0.25",
        "-C",
        f"env_manager={manager}",
    )
    try:
        assert created.returncode == 0, created.stderr
        reply = httpx.post(
            runtime.url(name) + "/invocations",
            json={"dataframe_records": [{"n": 1994}]},
            timeout=60,
        )
        assert reply.json() == {"predictions": ["MCMXCIV"]}
    finally:
        cli("delete", "-t", "serve", "--name", name)


def test_env_manager_local_uses_the_clusters_packages(registry, runtime):
    created = cli(
        "create",
        "-t",
        "serve",
        "--name",
        "romanized-local",
        "-m",
        "models:/romanized/1",
        "-C",
        "num_cpus=0.25",
    )
    assert created.returncode != 0
    assert "No module named 'roman'" in created.stdout + created.stderr
    assert "romanized-local" not in [s.name for s in runtime.list()]
