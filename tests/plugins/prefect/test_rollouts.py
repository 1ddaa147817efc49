"""Rollouts as Prefect flows against a real Prefect test server and a real local Ray:
a healthy candidate reaches 100% under load with no failed request, a bad one is rolled
back within one analysis interval, and each run leaves its table artifact."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

pytest.importorskip("prefect", reason="the prefect extra is not installed")

from prefect.artifacts import Artifact
from servekit.plugins.prefect import (
    RolledBack,
    blue_green_rollout,
    canary_rollout,
    schedule_rollout,
)

from tests.conftest import SAMPLE_MODELS

ENDPOINT = "ro"
STABLE = "ro-v1"
SPEC = {"runtime_env": {"py_modules": [SAMPLE_MODELS]}, "resources": {"num_cpus": 0.25}}
# A replica that has just started answers its first requests slower than a warm one:
# on 2 busy cores a p99 ratio limit judges warm-up, not the release.
FAST = dict(
    pause_s=4.0, interval_s=2.0, window_s=4.0, thresholds={"min_requests": 4, "max_p99_ratio": 20}
)
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def stable(runtime):
    """Endpoint ``ro`` on ``ro-v1`` alone, as a first rollout leaves it."""
    result = canary_rollout(
        ENDPOINT,
        "python:sample_models:Echo",
        candidate=STABLE,
        spec={**SPEC, "options": {"greeting": "v1"}},
    )
    assert result["decision"] == "promoted" and result["stable"] is None
    assert runtime.traffic(ENDPOINT) == {STABLE: 100.0}
    yield f"{runtime.http_url}/{ENDPOINT}"
    for name in runtime.endpoints():
        runtime.delete_endpoint(name)
    for status in runtime.list():
        if status.name.startswith("ro-"):
            runtime.delete(status.name)


class Load:
    """Constant requests to a URL from a thread; every answer kept with its time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                reply = client.post(self.url, json="hi")
                greeting = reply.json().get("greeting", "") if reply.status_code == 200 else ""
                self.answers.append((time.time(), reply.status_code, greeting))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def failures(self, start: float = 0.0, end: float = float("inf")) -> tuple[int, int]:
        window = [status for at, status, _ in self.answers if start <= at <= end]
        return sum(status != 200 for status in window), len(window)


def test_a_healthy_candidate_reaches_all_traffic_without_a_failed_request(runtime, stable):
    with Load(stable) as load:
        result = canary_rollout(
            ENDPOINT,
            "python:sample_models:Echo",
            steps=[25, 60, 100],
            candidate="ro-v2",
            spec={**SPEC, "options": {"greeting": "v2"}},
            **FAST,
        )
    assert result["decision"] == "promoted", result["steps"]
    assert runtime.traffic(ENDPOINT) == {"ro-v2": 100.0}
    assert load.failures() == (0, len(load.answers)) and len(load.answers) > 50
    assert {greeting for _, _, greeting in load.answers} == {"v1", "v2"}
    weights = [s["weight"] for s in result["steps"] if s["action"] == "set weight"]
    assert weights == [25, 60, 100]
    table = Artifact.get(f"rollout-{ENDPOINT}")
    assert table is not None and table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [row["action"] for row in rows][-1] == "promoted"
    assert "promoted" in table.description


def test_a_failing_candidate_is_rolled_back_within_one_analysis_interval(
    runtime, stable, memory_spans
):
    memory_spans.clear()
    with Load(stable) as load, pytest.raises(RolledBack, match="error rate") as caught:
        canary_rollout(
            ENDPOINT,
            "python:sample_models:Failing",
            steps=[10, 50, 100],
            candidate="ro-bad",
            spec=SPEC,
            **{**FAST, "pause_s": 60.0, "thresholds": {"min_requests": 2}},
        )
    result = caught.value.result  # the run failed, so that Prefect's alerts fire
    assert result["decision"] == "rolled_back"
    assert "ro-bad" not in {status.name for status in runtime.list()}  # cleaned up
    assert runtime.traffic(ENDPOINT) == {STABLE: 100.0}
    steps = result["steps"]
    started = next(s["at"] for s in steps if s["action"] == "set weight")
    caught_at = next(s["at"] for s in steps if s["outcome"] == "failed")
    rolled_back = next(s["at"] for s in steps if s["action"] == "rolled back")
    assert [s["weight"] for s in steps if s["action"] == "set weight"] == [10]
    # The first analysis caught it: one analysis ran (each is a span, see below), one
    # interval after the candidate got traffic (plus Prefect's task-run overhead, a few
    # seconds on 2 busy cores); the rollback came right after.
    analyses = [s for s in memory_spans.get_finished_spans() if s.name.startswith("rollout an")]
    assert len(analyses) == 1
    assert caught_at - started <= FAST["interval_s"] + 6.0
    assert rolled_back - caught_at <= 5.0
    failed, total = load.failures(started, rolled_back + 1.0)
    assert failed > 0 and failed <= 0.3 * total  # about the candidate's 10% share
    assert load.failures(rolled_back + 2.0)[0] == 0  # the stable version answers again

    # The rollout as a trace: Prefect's flow run, a task run per step, servekit's
    # rollout spans inside them.
    spans = memory_spans.get_finished_spans()
    (flow_run,) = [s for s in spans if s.attributes.get("prefect.run.type") == "flow"]
    tasks = {s.context.span_id: s for s in spans if s.attributes.get("prefect.run.type") == "task"}
    by_id = {s.context.span_id: s for s in spans}

    def ancestors(span) -> list[str]:
        names = []
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    # Every step's task run is inside the flow run (some inside the canary span, which
    # is itself inside the flow run).
    assert all(flow_run.name in ancestors(s) for s in tasks.values())
    names = [s.attributes["prefect.run.name"].rsplit("-", 1)[0] for s in tasks.values()]
    assert {"deploy_service", "set_traffic", "analyze_canary"} <= set(names)
    assert analyses[0].name == f"rollout analyze {ENDPOINT}"
    assert all(s.parent.span_id in tasks for s in analyses)
    assert analyses[-1].attributes["servekit.rollout.outcome"] == "failed"
    (canary,) = [s for s in spans if s.name == f"rollout canary {ENDPOINT}"]
    assert canary.attributes["servekit.rollout.decision"] == "rolled_back"
    assert canary.context.trace_id == flow_run.context.trace_id


def test_blue_green_switches_after_the_smoke_test_or_not_at_all(runtime, stable):
    with pytest.raises(RolledBack, match="smoke test") as caught:
        blue_green_rollout(
            ENDPOINT, "python:sample_models:Failing", smoke_body=1, candidate="ro-red", spec=SPEC
        )
    assert caught.value.result["steps"][0]["action"] == "smoke test"
    assert runtime.traffic(ENDPOINT) == {STABLE: 100.0}  # never switched
    with Load(stable) as load:
        good = blue_green_rollout(
            ENDPOINT,
            "python:sample_models:Echo",
            smoke_body="ping",
            candidate="ro-green",
            spec={**SPEC, "options": {"greeting": "green"}},
            pause_s=3.0,
            interval_s=1.0,
        )
    assert good["decision"] == "promoted"
    assert runtime.traffic(ENDPOINT) == {"ro-green": 100.0}
    assert load.failures()[0] == 0


def test_a_schedule_is_built_and_registered_with_prefect():
    deployment = schedule_rollout(
        canary_rollout,
        "nightly-iris",
        cron="0 3 * * *",
        service="iris",
        model_uri="models:/iris@challenger",
        promote_alias="champion",
    )
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 3 * * *"
    assert deployment.parameters["model_uri"] == "models:/iris@challenger"
    deployment_id = deployment.apply()
    from prefect import get_client

    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert stored.schedules[0].schedule.cron == "0 3 * * *"
    assert stored.parameters["promote_alias"] == "champion"
