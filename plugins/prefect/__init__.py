"""Prefect on servekit: tasks and flows that roll a new model version out step by step,
judge it on live metrics, and roll back on their own.

    from servekit.plugins.prefect import canary_rollout

    canary_rollout("iris", "models:/iris@challenger", steps=[10, 50, 100],
                   promote_alias="champion")

On a schedule, through Prefect's own deployments::

    from servekit.plugins.prefect import canary_rollout, schedule_rollout

    deployment = schedule_rollout(canary_rollout, "nightly-iris", cron="0 3 * * *",
                                  service="iris", model_uri="models:/iris@challenger")
    prefect.serve(deployment)  # or deployment.apply() / a work pool

On Kubernetes, ``k8s_rollout("services.yaml")`` applies the same specs as a KubeRay
RayService and waits for it (docs/kubernetes.md).
"""

from __future__ import annotations

from typing import Any

from servekit.plugins.prefect._k8s import k8s_rollout
from servekit.plugins.prefect._rollouts import (
    RolledBack,
    analyze_canary,
    blue_green_rollout,
    canary_rollout,
    deploy_service,
    promote,
    rollback,
    set_traffic,
    smoke_test,
)


def schedule_rollout(
    rollout_flow: Any, name: str, *, cron: str, timezone: str | None = None, **parameters: Any
) -> Any:
    """A Prefect deployment (``RunnerDeployment``) running ``rollout_flow`` (``canary_rollout``
    or ``blue_green_rollout``) on ``cron`` with ``parameters``; serve it with
    ``prefect.serve(deployment)`` or register it with ``deployment.apply()``. Example::

        schedule_rollout(canary_rollout, "nightly-iris", cron="0 3 * * *",
                         service="iris", model_uri="models:/iris@challenger")
    """
    from prefect.client.schemas.schedules import CronSchedule

    schedule = CronSchedule(cron=cron, timezone=timezone) if timezone else None
    if schedule is not None:
        return rollout_flow.to_deployment(name=name, schedule=schedule, parameters=parameters)
    return rollout_flow.to_deployment(name=name, cron=cron, parameters=parameters)


__all__ = [
    "RolledBack",
    "analyze_canary",
    "blue_green_rollout",
    "canary_rollout",
    "deploy_service",
    "k8s_rollout",
    "promote",
    "rollback",
    "schedule_rollout",
    "set_traffic",
    "smoke_test",
]
