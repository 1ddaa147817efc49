"""The servekit command, each call a separate process against the session's cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

SERVEKIT = str(Path(sys.executable).with_name("servekit"))
SAMPLE_MODELS = str(Path(__file__).parents[1] / "sample_models")


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVEKIT, *args], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


@pytest.fixture(scope="module")
def spec_file(cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    path = folder / "cli-echo.yaml"
    path.write_text(
        f"""
name: cli-echo
source: python:sample_models:Echo
options: {{greeting: from-yaml}}
resources: {{num_cpus: 0.25}}
runtime_env:
  py_modules: [{SAMPLE_MODELS}]
"""
    )
    return path


def test_deploy_in_one_process_predict_in_another(spec_file):
    deployed = run("deploy", str(spec_file))
    assert deployed.returncode == 0, deployed.stderr
    assert "cli-echo" in deployed.stdout and "running" in deployed.stdout
    try:
        predicted = run("predict", "cli-echo", "--data", '{"n": 7}')
        assert predicted.returncode == 0, predicted.stderr
        output = json.loads(predicted.stdout)
        assert output["echo"] == {"n": 7}
        assert output["greeting"] == "from-yaml"

        listed = json.loads(run("list", "--json").stdout)
        (entry,) = [s for s in listed if s["name"] == "cli-echo"]
        assert entry["status"] == "RUNNING"
        assert httpx.post(entry["url"], json=3, timeout=30).json()["echo"] == 3

        status = json.loads(run("status", "--json").stdout)
        assert status["cluster"]["ingress"] == "haproxy"
        assert status["cluster"]["embedded"] is True
        # Where metrics are: servekit's endpoint and Ray's own exporter, both answering.
        assert httpx.get(status["cluster"]["metrics_url"], timeout=30).status_code == 200
        ray_metrics = httpx.get(status["cluster"]["ray_metrics_url"], timeout=30)
        assert "# TYPE ray_" in ray_metrics.text
    finally:
        deleted = run("delete", "cli-echo")
    assert deleted.returncode == 0, deleted.stderr
    gone = run("predict", "cli-echo", "--data", "1")
    assert gone.returncode == 1
    assert "no service named 'cli-echo'" in gone.stderr


def test_bad_spec_file_is_one_line_naming_the_field(cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: python:m:M\nbatching: {max_batch: 3}\n")
    result = run("deploy", str(bad))
    assert result.returncode == 1
    assert "batching.max_batch: unknown field" in result.stderr
    assert "max_batch_size" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_failed_deploy_exits_non_zero_with_the_model_error(cluster, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text(
        "name: cli-broken\nsource: python:sample_models:Broken\n"
        f"resources: {{num_cpus: 0.25}}\nruntime_env: {{py_modules: [{SAMPLE_MODELS}]}}\n"
    )
    result = run("deploy", str(bad), "--json")
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert body["error"] == "DeployError"
    assert "missing.bin" in body["message"]
    assert "Traceback" not in result.stderr


def test_usage_errors_name_the_option(cluster):
    result = run("predict", "x", "--data", "{oops")
    assert result.returncode == 1
    assert "--data: not valid JSON" in result.stderr
    missing = run("predict", "x")
    assert missing.returncode == 2
    assert "--data" in missing.stderr
    unknown = run("frobnicate")
    assert unknown.returncode == 2
    assert "invalid choice" in unknown.stderr
