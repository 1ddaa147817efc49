"""`mlflow deployments ... -t serve` end to end: the real MLflow CLI in subprocesses, a real
registry, real sklearn and pyfunc models, HTTP clients speaking MLflow's scoring protocol."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MLFLOW, "deployments", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "SERVEKIT_QUIET": "1"},
    )


@pytest.fixture(scope="module")
def iris(registry, runtime):
    created = cli(
        "create",
        "-t",
        "serve",
        "--name",
        "iris",
        "-m",
        "models:/iris/1",
        "-C",
        "num_cpus=0.5",
        "-C",
        "max_batch_size=16",
    )
    assert created.returncode == 0, created.stdout + created.stderr
    yield runtime.url("iris")
    cli("delete", "-t", "serve", "--name", "iris")


def frame(registry, rows=None):
    return {"columns": registry["features"], "data": rows or registry["rows"]}


def test_cli_create_get_list_and_predict(iris, registry, tmp_path):
    got = cli("get", "-t", "serve", "--name", "iris")
    assert got.returncode == 0, got.stderr
    assert "RUNNING" in got.stdout and "python_function" in got.stdout
    listed = cli("list", "-t", "serve")
    assert "iris" in listed.stdout

    records = [dict(zip(registry["features"], row, strict=True)) for row in registry["rows"]]
    (tmp_path / "in.json").write_text(json.dumps(records))
    predicted = cli(
        "predict", "-t", "serve", "--name", "iris", "--input-path", str(tmp_path / "in.json")
    )
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["predictions"] == registry["expected_v1"]


@pytest.mark.parametrize("form", ["dataframe_split", "dataframe_records", "instances", "inputs"])
def test_http_bodies_of_the_mlflow_scoring_protocol(iris, registry, form):
    rows, columns = registry["rows"], registry["features"]
    body = {
        "dataframe_split": {"dataframe_split": frame(registry)},
        "dataframe_records": {
            "dataframe_records": [dict(zip(columns, r, strict=True)) for r in rows]
        },
        "instances": {"instances": [dict(zip(columns, r, strict=True)) for r in rows]},
        "inputs": {"inputs": {c: [r[i] for r in rows] for i, c in enumerate(columns)}},
    }[form]
    reply = httpx.post(f"{iris}/invocations", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"predictions": registry["expected_v1"]}


def test_csv_and_health_routes(iris, registry):
    lines = [",".join(registry["features"])] + [",".join(map(str, r)) for r in registry["rows"]]
    reply = httpx.post(
        f"{iris}/invocations",
        content="\n".join(lines),
        headers={"content-type": "text/csv"},
        timeout=60,
    )
    assert reply.json() == {"predictions": registry["expected_v1"]}
    assert httpx.get(f"{iris}/ping", timeout=30).status_code == 200
    assert httpx.get(f"{iris}/health", timeout=30).status_code == 200
    import mlflow

    assert httpx.get(f"{iris}/version", timeout=30).text == mlflow.__version__


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "BAD_REQUEST"),
        (
            '{"dataframe_split": {"columns": ["a"], "data": [["x"]]}}',
            "application/json",
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        ('{"no_known_key": 1}', "application/json", 400, "BAD_REQUEST"),
        ("a,b\n1,2", "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
def test_bad_bodies_get_mlflow_errors_and_the_replica_keeps_serving(
    iris, registry, content, content_type, status, code
):
    reply = httpx.post(
        f"{iris}/invocations", content=content, headers={"content-type": content_type}, timeout=60
    )
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["error_code"] == code
    assert body["message"]
    ok = httpx.post(f"{iris}/invocations", json={"dataframe_split": frame(registry)}, timeout=60)
    assert ok.status_code == 200


def test_concurrent_requests_share_batches_and_get_their_own_predictions(iris, registry):
    rows = registry["rows"]

    def one(i: int):
        row = rows[i % len(rows)]
        reply = httpx.post(
            f"{iris}/invocations", json={"dataframe_split": frame(registry, [row])}, timeout=60
        )
        return i, reply.json()["predictions"]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for i, predictions in pool.map(one, range(64)):
            assert predictions == [registry["expected_v1"][i % len(rows)]]


def test_version_header_selects_the_model_version(iris, registry):
    body = {"dataframe_split": frame(registry)}
    by_version = httpx.post(
        f"{iris}/invocations", json=body, timeout=60, headers={"serve_multiplexed_model_id": "2"}
    )
    assert by_version.json()["predictions"] == [2] * 5
    by_alias = httpx.post(
        f"{iris}/invocations",
        json=body,
        timeout=60,
        headers={"serve_multiplexed_model_id": "champion"},
    )
    assert by_alias.json()["predictions"] == [2] * 5
    default = httpx.post(f"{iris}/invocations", json=body, timeout=60)
    assert default.json()["predictions"] == registry["expected_v1"]


def test_python_client_predict(iris, registry):
    import pandas as pd
    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("serve")
    df = pd.DataFrame(registry["rows"], columns=registry["features"])
    result = client.predict("iris", df)
    assert result["predictions"] == registry["expected_v1"]
    with pytest.raises(Exception, match="not supported"):
        client.explain("iris", df)


def test_streaming_a_model_that_does_not_stream_is_a_400(iris, registry):
    from mlflow.deployments import get_deploy_client
    from mlflow.exceptions import MlflowException

    body = {"dataframe_split": frame(registry), "stream": True}
    reply = httpx.post(f"{iris}/invocations", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    assert "does not support predict_stream" in reply.json()["message"]
    with pytest.raises(MlflowException, match="does not support predict_stream"):
        list(get_deploy_client("serve").predict_stream("iris", {"inputs": [[1, 2, 3, 4]]}))


def test_update_to_a_new_version_drops_no_request(iris, registry, runtime):
    body = {"dataframe_split": frame(registry)}
    failures, answers = [], set()
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    reply = client.post(f"{iris}/invocations", json=body)
                    if reply.status_code != 200:
                        failures.append(reply.status_code)
                    else:
                        answers.add(tuple(reply.json()["predictions"]))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        updated = cli("update", "-t", "serve", "--name", "iris", "-m", "models:/iris/2")
        assert updated.returncode == 0, updated.stderr
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == []
    assert tuple(registry["expected_v1"]) in answers and (2,) * 5 in answers
    after = httpx.post(f"{iris}/invocations", json=body, timeout=60)
    assert after.json()["predictions"] == [2] * 5
    assert runtime.spec("iris").user_config["target_config"]["max_batch_size"] == 16  # kept


def test_custom_pyfunc_with_params(registry, runtime):
    created = cli(
        "create",
        "-t",
        "serve",
        "--name",
        "adder",
        "-m",
        "models:/adder/1",
        "-C",
        "num_cpus=0.25",
        "-C",
        "max_batch_size=1",
    )
    assert created.returncode == 0, created.stderr
    try:
        url = runtime.url("adder")
        reply = httpx.post(f"{url}/invocations", json={"inputs": [[1.0, 2.0]]}, timeout=60)
        assert reply.json() == {"predictions": [[11.0, 12.0]]}
        with_params = httpx.post(
            f"{url}/invocations", json={"inputs": [[1.0, 2.0]], "params": {"n": 1}}, timeout=60
        )
        assert with_params.json() == {"predictions": [[2.0, 3.0]]}
    finally:
        cli("delete", "-t", "serve", "--name", "adder")


def test_model_that_fails_to_load_fails_create_and_leaves_nothing(registry, runtime):
    result = cli(
        "create", "-t", "serve", "--name", "broken", "-m", "models:/broken/1", "-C", "num_cpus=0.25"
    )
    assert result.returncode != 0
    assert "tokenizer.json is missing" in result.stdout + result.stderr
    assert "broken" not in [s.name for s in runtime.list()]


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("colour=blue", ["unknown key", "max_batch_size", "num_replicas", "env_manager"]),
        ("env_manager=conda", ["env_manager", "'local', 'virtualenv' or 'uv'"]),
        ("max_batch_size=lots", ["max_batch_size", "integer"]),
        ("num_gpus=-1", ["num_gpus", "greater than or equal to 0"]),
    ],
)
def test_bad_config_values_exit_non_zero_naming_the_key(registry, option, expected):
    result = cli("create", "-t", "serve", "--name", "x", "-m", "models:/iris/1", "-C", option)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for fragment in expected:
        assert fragment in output


def test_config_only_update_is_live(iris, registry, runtime):
    pid_before = runtime.handle("iris").describe.remote().result()["pid"]
    updated = cli("update", "-t", "serve", "--name", "iris", "-C", "batch_wait_ms=2")
    assert updated.returncode == 0, updated.stderr
    assert runtime.spec("iris").batching.max_wait_ms == 2
    assert runtime.handle("iris").describe.remote().result()["pid"] == pid_before


def test_unknown_version_in_header_is_a_404(iris, registry):
    reply = httpx.post(
        f"{iris}/invocations",
        json={"dataframe_split": frame(registry)},
        headers={"serve_multiplexed_model_id": "99"},
        timeout=60,
    )
    assert reply.status_code == 404, reply.text
    assert reply.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_get_and_delete_of_unknown_deployment(registry):
    result = cli("get", "-t", "serve", "--name", "ghost")
    assert result.returncode != 0
    assert "no service named 'ghost'" in result.stdout + result.stderr


def test_endpoints_split_traffic_between_deployments(registry, runtime):
    from mlflow.deployments import get_deploy_client
    from mlflow.exceptions import MlflowException

    client = get_deploy_client("serve")
    # Their own deployments: other tests move the module's "iris" between versions.
    client.create_deployment("iris-one", "models:/iris/1", config={"num_cpus": "0.25"})
    client.create_deployment("iris-two", "models:/iris/2", config={"num_cpus": "0.25"})
    try:
        created = client.create_endpoint(
            "iris-ep", config={"deployments": {"iris-one": 50, "iris-two": 50}}
        )
        assert created["traffic"] == {"iris-one": 50.0, "iris-two": 50.0}
        body = {"dataframe_split": frame(registry)}
        answers = {
            tuple(
                httpx.post(created["url"] + "/invocations", json=body, timeout=60).json()[
                    "predictions"
                ]
            )
            for _ in range(30)
        }
        assert answers == {tuple(registry["expected_v1"]), (2,) * 5}  # both versions answered
        client.update_endpoint("iris-ep", config={"deployments": '{"iris-two": 100}'})
        assert client.get_endpoint("iris-ep")["traffic"] == {"iris-two": 100.0}
        assert [e["name"] for e in client.list_endpoints()] == ["iris-ep"]
        with pytest.raises(MlflowException, match="deployments"):
            client.update_endpoint("iris-ep", config={"deployments": {}})
        with pytest.raises(MlflowException, match="nope"):
            client.update_endpoint("iris-ep", config={"deployments": {"nope": 1}})
    finally:
        client.delete_endpoint("iris-ep")
        client.delete_deployment("iris-one")
        client.delete_deployment("iris-two")
    assert client.list_endpoints() == []


@pytest.mark.timeout(600)
def test_fuzzed_invocations_never_get_a_server_error(iris):
    """schemathesis, from the service's own /openapi.json: valid and invalid bodies,
    JSON and CSV, wrong content types; no 5xx, every error a JSON body."""
    from tests.fuzz import fuzz

    seen = fuzz(iris, paths="^/invocations$", max_examples=60)
    assert seen["examples"] >= 60
    assert any(400 <= status < 500 for status in seen["statuses"]), seen  # mistakes were made
