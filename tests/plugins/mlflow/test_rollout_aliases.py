"""The MLflow step of a Prefect rollout: the version behind ``@challenger`` is rolled out,
and ``@champion`` moves to it once it holds all the traffic."""

from __future__ import annotations

import os
import threading

import httpx
import mlflow
import pytest

pytest.importorskip("prefect", reason="the prefect extra is not installed")

from prefect.testing.utilities import prefect_test_harness
from servekit.plugins.prefect import canary_rollout

ENDPOINT = "iris-live"
SPEC = {"num_cpus": "0.25"}  # MLflow URIs take the target's -C keys
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_challenger_is_rolled_out_and_becomes_champion(registry, runtime):
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("iris", "champion", "2")
    first = canary_rollout(ENDPOINT, "models:/iris@champion", spec=SPEC)
    assert first["candidate"] == f"{ENDPOINT}-v2"  # the alias was pinned to its version
    client.set_registered_model_alias("iris", "challenger", "1")
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        body = {"dataframe_split": {"columns": registry["features"], "data": registry["rows"]}}
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                statuses.append(
                    http.post(f"{runtime.http_url}/{ENDPOINT}/invocations", json=body).status_code
                )

    worker = threading.Thread(target=load)
    worker.start()
    try:
        result = canary_rollout(
            ENDPOINT,
            "models:/iris@challenger",
            steps=[50, 100],
            pause_s=3.0,
            interval_s=1.5,
            window_s=3.0,
            thresholds={"min_requests": 3, "max_p99_ratio": 20},
            spec=SPEC,
            promote_alias="champion",
            retire_stable=True,
        )
        champion = client.get_model_version_by_alias("iris", "champion").version
    finally:
        stop.set()
        worker.join()
        client.set_registered_model_alias("iris", "champion", "2")  # as the fixture left it
        client.delete_registered_model_alias("iris", "challenger")
    try:
        assert result["decision"] == "promoted"
        assert str(champion) == "1"  # @champion moved to the version rolled out
        assert runtime.traffic(ENDPOINT) == {f"{ENDPOINT}-v1": 100.0}
        assert set(statuses) == {200}
        assert f"{ENDPOINT}-v2" not in {s.name for s in runtime.list()}  # retired
    finally:
        runtime.delete_endpoint(ENDPOINT)
        for status in runtime.list():
            if status.name.startswith(ENDPOINT):
                runtime.delete(status.name)


def test_promote_alias_needs_a_registered_version(registry):
    with pytest.raises(ValueError, match="promote_alias"):
        canary_rollout(ENDPOINT, "runs:/abc/model", promote_alias="champion")
