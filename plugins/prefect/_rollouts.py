"""Prefect tasks and flows over servekit's rollout engine (servekit.core.Rollout)."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from servekit.core import (
    Analysis,
    Rollout,
    RolloutResult,
    ServiceSpec,
    Thresholds,
    client_headers,
)

_SCHEMES = ("python:", "langchain:", "llm:", "mlflow:")


class RolledBack(RuntimeError):
    """A rollout ended by rolling back: the flow run fails (so Prefect's alerts fire) after
    its table artifact is written. ``result`` holds the RolloutResult as a dict."""

    def __init__(self, result: dict[str, Any]) -> None:
        last = result["steps"][-1]["reasons"] if result["steps"] else []
        why = "; ".join(last) or "see the rollout's table artifact"
        super().__init__(f"{result['candidate']} rolled back on {result['endpoint']}: {why}")
        self.result = result


def _runtime(address: str | None = None) -> Any:
    from servekit.core import Runtime

    return Runtime.connect(address)


# -- tasks -------------------------------------------------------------------------------
@task(name="deploy_service", retries=1, retry_delay_seconds=10, timeout_seconds=1800)
def deploy_service(
    spec: ServiceSpec | dict[str, Any], address: str | None = None, timeout_s: float = 900.0
) -> dict[str, Any]:
    """Deploy (or update in place) a service; returns its status. A failed deploy leaves
    nothing half-done (servekit restores the previous spec) and fails the task."""
    spec = spec if isinstance(spec, ServiceSpec) else ServiceSpec(**spec)
    logger = get_run_logger()
    status = _runtime(address).deploy(spec, timeout_s=timeout_s, progress=logger.info)
    return dict(status.to_dict())


@task(name="set_traffic", retries=2, retry_delay_seconds=2, timeout_seconds=300)
def set_traffic(
    endpoint: str,
    weights: dict[str, float],
    sticky_header: str | None = None,
    shadow: str | None = None,
    address: str | None = None,
) -> dict[str, float]:
    """Route ``endpoint`` by ``weights`` (creating it if needed), live; returns the split."""
    split = _runtime(address).route(endpoint, weights, sticky_header=sticky_header, shadow=shadow)
    get_run_logger().info("%s traffic: %s", endpoint, split)
    return dict(split)


@task(name="analyze_canary", timeout_seconds=120)
def analyze_canary(
    endpoint: str,
    candidate: str,
    stable: str | None,
    window_s: float = 30.0,
    thresholds: Thresholds | dict[str, Any] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Judge ``candidate`` on the endpoint's live metrics: ``outcome`` is successful,
    failed or inconclusive, with the reasons and both versions' metrics."""
    from servekit.core import analyze

    limits = thresholds if isinstance(thresholds, Thresholds) else Thresholds(**(thresholds or {}))
    found = analyze(
        _runtime(address), endpoint, candidate, stable, window_s=window_s, thresholds=limits
    )
    get_run_logger().info("%s: %s %s", candidate, found.outcome, "; ".join(found.reasons))
    return asdict(found)


@task(name="promote", retries=2, retry_delay_seconds=2, timeout_seconds=300)
def promote(
    endpoint: str, candidate: str, retire: str | None = None, address: str | None = None
) -> dict[str, float]:
    """All of ``endpoint``'s traffic to ``candidate``; then delete service ``retire``."""
    runtime = _runtime(address)
    split = runtime.route(endpoint, {candidate: 100.0})
    if retire and retire != candidate:
        runtime.delete(retire)
        get_run_logger().info("retired %s", retire)
    return dict(split)


@task(name="rollback", retries=2, retry_delay_seconds=2, timeout_seconds=300)
def rollback(endpoint: str, stable: str, address: str | None = None) -> dict[str, float]:
    """All of ``endpoint``'s traffic back to ``stable``."""
    split = _runtime(address).route(endpoint, {stable: 100.0})
    get_run_logger().warning("%s rolled back to %s", endpoint, stable)
    return dict(split)


@task(name="smoke_test", retries=2, retry_delay_seconds=5, timeout_seconds=120)
def smoke_test(
    service: str,
    body: Any = None,
    path: str = "",
    expect_status: int = 200,
    address: str | None = None,
) -> dict[str, Any]:
    """POST ``body`` (JSON) to ``service`` at ``path`` directly (not through an endpoint)
    and fail unless it answers ``expect_status``; returns the status and the answer."""
    url = _runtime(address).url(service) + path
    reply = httpx.post(url, json=body, headers=client_headers(), timeout=60)
    if reply.status_code != expect_status:
        raise RuntimeError(f"{url} answered {reply.status_code}: {reply.text[:300]}")
    return {"status": reply.status_code, "body": reply.text[:1000]}


# -- flows -------------------------------------------------------------------------------
class _TaskRollout(Rollout):
    """servekit's rollout engine, with each traffic change and analysis a Prefect task."""

    address: str | None = None

    def route(self, weights: dict[str, float]) -> None:
        set_traffic(self.endpoint, weights, address=self.address)

    def analyze(self) -> Analysis:
        found = analyze_canary(
            self.endpoint,
            self.candidate,
            self.stable,
            window_s=self.window_s,
            thresholds=self.thresholds,
            address=self.address,
        )
        return Analysis(**found)


@flow(name="canary_rollout", log_prints=True)
def canary_rollout(
    service: str,
    model_uri: str,
    steps: list[float] = [10, 50, 100],  # noqa: B006 - Prefect records defaults as parameters
    pause_s: float = 60.0,
    interval_s: float = 10.0,
    window_s: float = 30.0,
    thresholds: dict[str, Any] | None = None,
    candidate: str | None = None,
    spec: dict[str, Any] | None = None,
    promote_alias: str | None = None,
    retire_stable: bool = False,
    keep_failed: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Deploy ``model_uri`` as a candidate service and move endpoint ``service`` to it in
    ``steps`` (percent), analysing live metrics after each; roll back on a failure.

    ``model_uri`` is an MLflow URI (``models:/iris@challenger``, ``runs:/...``) or a
    servekit source (``python:...``, ``langchain:...``, ``llm:...``); an alias is pinned
    to its version first. ``spec`` adds ServiceSpec fields (or MLflow ``-C`` keys for an
    MLflow URI). On success ``promote_alias`` (e.g. ``"champion"``) moves to the rolled
    out MLflow version and ``retire_stable`` deletes the old service. Leaves a table
    artifact of every step; returns the RolloutResult as a dict. A rollback deletes the
    candidate (unless ``keep_failed``) and fails the run with ``RolledBack``.
    """
    rollout, version, model_uri = _prepare(
        service,
        model_uri,
        candidate,
        spec,
        promote_alias,
        thresholds,
        window_s,
        interval_s,
        address,
    )
    if rollout.stable in (None, rollout.candidate):  # a new endpoint: nothing to compare
        result = rollout.promote()
    else:
        result = rollout.canary(list(steps), pause_s=pause_s)
    return _finish(result, rollout, version, model_uri, promote_alias, retire_stable, keep_failed)


@flow(name="blue_green_rollout", log_prints=True)
def blue_green_rollout(
    service: str,
    model_uri: str,
    smoke_body: Any = None,
    smoke_path: str = "",
    pause_s: float = 30.0,
    interval_s: float = 5.0,
    window_s: float = 30.0,
    thresholds: dict[str, Any] | None = None,
    candidate: str | None = None,
    spec: dict[str, Any] | None = None,
    promote_alias: str | None = None,
    retire_stable: bool = False,
    keep_failed: bool = False,
    address: str | None = None,
) -> dict[str, Any]:
    """Deploy ``model_uri`` beside the live service (green beside blue), smoke-test it
    directly, switch all of ``service``'s traffic at once, watch it for ``pause_s`` and
    switch back on a failed analysis. Parameters as for ``canary_rollout``."""
    rollout, version, model_uri = _prepare(
        service,
        model_uri,
        candidate,
        spec,
        promote_alias,
        thresholds,
        window_s,
        interval_s,
        address,
    )

    def check(url: str) -> None:
        smoke_test(rollout.candidate, smoke_body, path=smoke_path, address=address)

    if rollout.stable in (None, rollout.candidate):  # a new endpoint: nothing to switch from
        result = rollout.promote()
    else:
        result = rollout.blue_green(check, pause_s=pause_s)
    return _finish(result, rollout, version, model_uri, promote_alias, retire_stable, keep_failed)


def _prepare(
    service: str,
    model_uri: str,
    candidate: str | None,
    spec: dict[str, Any] | None,
    promote_alias: str | None,
    thresholds: dict[str, Any] | None,
    window_s: float,
    interval_s: float,
    address: str | None,
) -> tuple[_TaskRollout, str | None, str]:
    """What both flows do first: pin the MLflow alias, deploy the candidate, find the
    stable service. Returns the rollout, the pinned version and the pinned URI."""
    model_uri, version = _pin_alias(model_uri)
    if promote_alias and version is None:
        raise ValueError(
            f"promote_alias needs a registered model version (models:/name/N or "
            f"models:/name@alias), not {model_uri!r}"
        )
    name = candidate or _candidate_name(service, model_uri)
    deploy_service(_spec_for(name, model_uri, spec), address=address)
    runtime = _runtime(address)
    rollout = _TaskRollout(
        runtime,
        service,
        stable=_stable_of(runtime, service),
        candidate=name,
        thresholds=Thresholds(**(thresholds or {})),
        window_s=window_s,
        interval_s=interval_s,
        say=get_run_logger().info,
    )
    rollout.address = address
    return rollout, version, model_uri


def _finish(
    result: RolloutResult,
    rollout: Rollout,
    version: str | None,
    model_uri: str,
    promote_alias: str | None,
    retire_stable: bool,
    keep_failed: bool,
) -> dict[str, Any]:
    logger = get_run_logger()
    runtime = rollout.runtime
    create_table_artifact(
        key=_artifact_key(result.endpoint),
        table=result.table(),
        description=(
            f"Rollout of {result.candidate} ({model_uri}) on {result.endpoint}: "
            f"**{result.decision}** (stable: {result.stable})"
        ),
    )
    if result.decision == "promoted":
        if promote_alias and version is not None:
            _move_alias(model_uri, promote_alias, version)
            logger.info("MLflow alias %r now points at version %s", promote_alias, version)
        if retire_stable and result.stable and result.stable != result.candidate:
            runtime.delete(result.stable)
    logger.info("%s: %s", result.endpoint, result.decision)
    if result.decision == "rolled_back":
        if not keep_failed and result.candidate != result.stable:
            runtime.delete(result.candidate)
        raise RolledBack(result.to_dict())
    return result.to_dict()


def _stable_of(runtime: Any, endpoint: str) -> str | None:
    """The service taking most of the endpoint's traffic, or None for a new endpoint."""
    if endpoint not in runtime.endpoints():
        return None
    split = runtime.traffic(endpoint)
    return max(split, key=split.get) if split else None


def _spec_for(name: str, model_uri: str, fields: dict[str, Any] | None) -> ServiceSpec:
    if model_uri.startswith(_SCHEMES):
        return ServiceSpec(name=name, source=model_uri, **(fields or {}))
    from servekit.plugins.mlflow import build_spec
    from servekit.plugins.mlflow._config import TargetConfig

    return build_spec(name, model_uri, TargetConfig.parse(fields or {}))  # type: ignore[no-any-return]


def _pin_alias(model_uri: str) -> tuple[str, str | None]:
    """``models:/iris@challenger`` -> (``models:/iris/7``, ``"7"``): the rollout keeps
    the version it started with even if the alias moves meanwhile."""
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        return model_uri, None
    name, alias, number = match.groups()
    if number:
        return model_uri, number
    from mlflow import MlflowClient

    version = str(MlflowClient().get_model_version_by_alias(name, alias).version)
    return f"models:/{name}/{version}", version


def _move_alias(model_uri: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    name = model_uri.split("/")[1]
    MlflowClient().set_registered_model_alias(name, alias, version)


def _candidate_name(service: str, model_uri: str) -> str:
    """``iris`` + ``models:/iris/7`` -> ``iris-v7``; other sources get a short slug."""
    match = re.fullmatch(r"models:/[^/@]+/(\d+)", model_uri)
    if match:
        return f"{service}-v{match.group(1)}"
    import hashlib

    return f"{service}-{hashlib.sha1(model_uri.encode()).hexdigest()[:8]}"


def _artifact_key(endpoint: str) -> str:
    # Prefect artifact keys: lowercase letters, digits and dashes.
    return "rollout-" + re.sub(r"[^a-z0-9-]+", "-", endpoint.lower())
