"""k8s_rollout: servekit specs onto Kubernetes as a KubeRay RayService, from a Prefect flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from servekit.core import (
    DeployError,
    KubeOptions,
    NotFound,
    RayServiceClient,
    ServiceSpec,
    Timeout,
    render_rayservice,
)


@task(name="k8s_rollout", timeout_seconds=3600)
def k8s_rollout(
    specs: str | list[ServiceSpec | dict[str, Any]],
    options: KubeOptions | dict[str, Any] | None = None,
    *,
    namespace: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout_s: float = 900.0,
    rollback_on_failure: bool = True,
) -> dict[str, Any]:
    """Apply ``specs`` (a spec file, whose ``kubernetes:`` section ``options`` extends, or
    a list of specs) as a RayService and wait until KubeRay serves them. Example::

        @flow
        def release():
            k8s_rollout("services.yaml", {"image": "registry.example.com/servekit:0.2"})

    Progress (conditions, applications, traffic) goes to the run's log, and the outcome to
    a table artifact. If the new spec fails to deploy or to become ready in ``timeout_s``,
    the RayService's previous spec is applied again (``rollback_on_failure``), so
    KubeRay keeps serving what it served, and the task fails with the cause. Returns the
    final RayServiceStatus as a dict.
    """
    logger = get_run_logger()
    if isinstance(specs, str):
        if isinstance(options, KubeOptions):
            options = options.model_dump(exclude_unset=True)
        kube = KubeOptions.from_yaml(specs, **(options or {}))
        services = ServiceSpec.from_yaml(Path(specs))
    else:
        kube = options if isinstance(options, KubeOptions) else KubeOptions(**(options or {}))
        services = [s if isinstance(s, ServiceSpec) else ServiceSpec(**s) for s in specs]
    manifest = render_rayservice(services, kube)
    name = manifest["metadata"]["name"]
    client = RayServiceClient(namespace or kube.namespace, kubeconfig=kubeconfig, context=context)
    try:
        previous: dict[str, Any] | None = client.get(name)
    except NotFound:
        previous = None
    client.apply(manifest, progress=logger.info)
    try:
        state = client.wait(name, timeout_s=timeout_s, progress=logger.info)
    except (DeployError, Timeout) as exc:
        if rollback_on_failure and previous is not None:
            logger.warning("rolling %s back to its previous spec: %s", name, exc)
            client.apply(_restorable(previous), progress=logger.info)
            exc.add_note(f"{name} was set back to its previous spec")
        _artifact(name, client.status(name).to_dict(), f"failed: {exc}")
        raise
    result = state.to_dict()
    _artifact(name, result, f"serving generation {state.generation}")
    return result


def _restorable(previous: dict[str, Any]) -> dict[str, Any]:
    """The object as it was, without what the API server owns (status, versions)."""
    meta = previous.get("metadata") or {}
    kept = {key: meta[key] for key in ("name", "namespace", "labels", "annotations") if key in meta}
    return {
        "apiVersion": previous["apiVersion"],
        "kind": previous["kind"],
        "metadata": kept,
        "spec": previous["spec"],
    }


def _artifact(name: str, state: dict[str, Any], outcome: str) -> None:
    rows = [
        {"application": app, "cluster": state["active_cluster"], **info}
        for app, info in state["applications"].items()
    ]
    rows += [
        {"application": app, "cluster": f"{state['pending_cluster']} (pending)", **info}
        for app, info in state["pending_applications"].items()
    ]
    create_table_artifact(
        key=f"k8s-{name}", table=rows, description=f"RayService {name}: {outcome}"
    )
