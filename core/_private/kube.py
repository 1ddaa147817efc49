"""RayServiceClient: apply, watch and delete KubeRay RayServices.

A small client over the ``kubernetes`` package's CustomObjectsApi: KubeRay's own Python
client is not on PyPI and has no RayService support. Every API failure becomes a
servekit error saying what to do: the CRD missing (install KubeRay), access denied (which
verbs on which resource), the API server unreachable (which address, which kubeconfig).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from servekit.core._private.errors import (
    AccessDenied,
    ClusterUnavailable,
    DeployError,
    NotFound,
    ServekitError,
    SpecError,
    Timeout,
)

logger = logging.getLogger("servekit.kube")

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
Progress = Callable[[str], None]
_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_INSTALL = "install the KubeRay operator (docs/kubernetes.md: helm install kuberay-operator)"
_VERBS = "get, list, create, update, patch and delete"
_FAILED = {"DEPLOY_FAILED"}


@dataclass
class RayServiceStatus:
    """A RayService as KubeRay reports it: conditions, clusters and Serve applications."""

    name: str
    namespace: str
    generation: int
    observed_generation: int
    ready: bool
    upgrading: bool
    conditions: dict[str, dict[str, str]] = field(default_factory=dict)
    service_status: str = ""
    active_cluster: str = ""
    pending_cluster: str = ""
    applications: dict[str, dict[str, str]] = field(default_factory=dict)
    pending_applications: dict[str, dict[str, str]] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)
    serve_endpoints: int = 0
    expected_applications: list[str] = field(default_factory=list)

    @property
    def settled(self) -> bool:
        """KubeRay has acted on the latest spec, serves it everywhere, and upgrades nothing."""
        running = all(
            self.applications.get(name, {}).get("status") == "RUNNING"
            for name in self.expected_applications
        )
        current = self.observed_generation >= self.generation
        return current and self.ready and not self.upgrading and running

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "settled": self.settled}

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> RayServiceStatus:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        conditions = {
            c["type"]: {k: str(c.get(k, "")) for k in ("status", "reason", "message")}
            for c in status.get("conditions") or []
            if "type" in c
        }
        active = status.get("activeServiceStatus") or {}
        pending = status.get("pendingServiceStatus") or {}
        traffic = {
            side["rayClusterName"]: int(side["trafficRoutedPercent"])
            for side in (active, pending)
            if side.get("rayClusterName") and side.get("trafficRoutedPercent") is not None
        }
        # KubeRay before 1.3 has no conditions, only serviceStatus.
        ready = conditions.get("Ready", {}).get("status") == "True" or (
            not conditions and status.get("serviceStatus") == "Running"
        )
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            ready=ready,
            upgrading=conditions.get("UpgradeInProgress", {}).get("status") == "True",
            conditions=conditions,
            service_status=str(status.get("serviceStatus") or ""),
            active_cluster=str(active.get("rayClusterName") or ""),
            pending_cluster=str(pending.get("rayClusterName") or ""),
            applications=_apps(active),
            pending_applications=_apps(pending),
            traffic=traffic,
            serve_endpoints=int(status.get("numServeEndpoints") or 0),
            expected_applications=_config_apps(obj),
        )


def _apps(side: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        name: {"status": str(app.get("status", "")), "message": str(app.get("message", ""))}
        for name, app in (side.get("applicationStatuses") or {}).items()
    }


def _config_apps(obj: dict[str, Any]) -> list[str]:
    try:
        config = yaml.safe_load((obj.get("spec") or {}).get("serveConfigV2") or "") or {}
        return [str(app["name"]) for app in config.get("applications") or []]
    except (yaml.YAMLError, AttributeError, KeyError, TypeError):
        return []


class RayServiceClient:
    """RayServices in one namespace, through kubeconfig or the pod's service account.

    Example::

        client = RayServiceClient(namespace="ml")
        client.apply(render_rayservice(specs, options))
        client.wait("iris", timeout_s=900, progress=print)

    ``kubeconfig``/``context`` pick a kubeconfig (default: ``KUBECONFIG`` or
    ``~/.kube/config``); inside a pod without one, the service account is used. The
    namespace defaults to the context's, else the pod's, else ``default``.
    Raises ClusterUnavailable when no configuration is found.
    """

    def __init__(
        self,
        namespace: str | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        request_timeout_s: float = 30.0,
    ) -> None:
        from kubernetes import client, config

        try:
            if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
                api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=context
                )
                contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig
                )
                chosen = next((c for c in contexts if c["name"] == context), active)
                default_ns = (chosen or {}).get("context", {}).get("namespace")
            else:
                configuration = client.Configuration()
                config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
                api_client = client.ApiClient(configuration)
                default_ns = _IN_CLUSTER_NAMESPACE.read_text().strip()
        except (config.ConfigException, OSError) as exc:
            raise ClusterUnavailable(
                f"no Kubernetes configuration ({exc}): pass --kubeconfig, set KUBECONFIG, "
                "or run inside a pod with a service account"
            ) from None
        # One retry for a flaky network; the default 3 makes an unreachable server slow.
        api_client.configuration.retries = 1
        self.host = str(api_client.configuration.host)
        self.namespace = namespace or default_ns or "default"
        self._api = client.CustomObjectsApi(api_client)
        self._timeout = (min(5.0, request_timeout_s), request_timeout_s)

    # -- the verbs ---------------------------------------------------------------------
    def get(self, name: str) -> dict[str, Any]:
        """The RayService object; raises NotFound."""
        found: dict[str, Any] = self._call(
            "get", name, self._api.get_namespaced_custom_object, GROUP, VERSION,
            self.namespace, PLURAL, name,
        )  # fmt: skip
        return found

    def list(self) -> list[dict[str, Any]]:
        """Every RayService in the namespace."""
        found = self._call(
            "list", "", self._api.list_namespaced_custom_object, GROUP, VERSION,
            self.namespace, PLURAL,
        )  # fmt: skip
        return list(found.get("items") or [])

    def status(self, name: str) -> RayServiceStatus:
        """What KubeRay reports for ``name``; raises NotFound."""
        return RayServiceStatus.from_object(self.get(name))

    def apply(self, manifest: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
        """Create the RayService, or replace the spec of the one by that name (labels and
        annotations others set are kept). Returns the stored object; its
        ``metadata.generation`` is what :meth:`wait` waits for.
        """
        say = progress or logger.info
        name = _name_of(manifest)
        body = json.loads(json.dumps(manifest))  # a copy the client may serialise
        wanted = body["metadata"].setdefault("namespace", self.namespace)
        if wanted != self.namespace:
            raise SpecError(
                "metadata.namespace",
                f"the manifest is for namespace {wanted!r}, this client works in "
                f"{self.namespace!r}: pass that namespace, or drop it from the manifest",
            )
        for attempt in range(3):
            try:
                current = self.get(name)
            except NotFound:
                created = self._call(
                    "create", name, self._api.create_namespaced_custom_object, GROUP, VERSION,
                    self.namespace, PLURAL, body, field_validation="Strict",
                )  # fmt: skip
                say(f"created RayService {self.namespace}/{name}")
                return dict(created)
            meta = current.get("metadata") or {}
            body["metadata"]["resourceVersion"] = meta.get("resourceVersion")
            for key in ("labels", "annotations"):
                body["metadata"][key] = {**(meta.get(key) or {}), **body["metadata"].get(key, {})}
            try:
                replaced = self._call(
                    "update", name, self._api.replace_namespaced_custom_object, GROUP, VERSION,
                    self.namespace, PLURAL, name, body, field_validation="Strict",
                )  # fmt: skip
            except _Conflict:
                say(f"RayService {name} changed while applying; retrying ({attempt + 1}/3)")
                continue
            changed = (replaced.get("metadata") or {}).get("generation") != meta.get("generation")
            say(f"{'updated' if changed else 'unchanged'}: RayService {self.namespace}/{name}")
            return dict(replaced)
        raise ServekitError(f"RayService {name} kept changing while being applied; try again")

    def delete(self, name: str, *, wait: bool = True, timeout_s: float = 300.0) -> None:
        """Delete ``name`` (and, through KubeRay, its Ray clusters); with ``wait``, return
        once it is gone. Raises NotFound, Timeout."""
        self._call(
            "delete", name, self._api.delete_namespaced_custom_object, GROUP, VERSION,
            self.namespace, PLURAL, name,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while wait:
            try:
                self.get(name)
            except NotFound:
                return
            if time.monotonic() > deadline:
                raise Timeout(f"RayService {name} still exists {timeout_s:g}s after delete")
            time.sleep(1.0)

    def wait(
        self,
        name: str,
        *,
        timeout_s: float = 900.0,
        progress: Progress | None = None,
        poll_s: float = 2.0,
    ) -> RayServiceStatus:
        """Follow ``name`` until KubeRay serves its latest spec: the ``Ready`` condition
        true, no ``UpgradeInProgress``, every application RUNNING. Each change of a
        condition, an application or the traffic split is reported through ``progress``.

        Raises DeployError when an application fails to deploy (its Serve message),
        Timeout with the last state, NotFound.
        """
        say = progress or logger.info
        deadline = time.monotonic() + timeout_s
        seen: dict[str, str] = {}
        while True:
            state = self.status(name)
            for key, line in _events(state).items():
                if seen.get(key) != line:
                    seen[key] = line
                    say(line)
            if state.observed_generation >= state.generation:
                for side in (state.pending_applications, state.applications):
                    for app, info in side.items():
                        if info["status"] in _FAILED:
                            raise DeployError(app, info["message"] or info["status"])
            if state.settled:
                return state
            if time.monotonic() > deadline:
                raise Timeout(
                    f"RayService {name} not ready after {timeout_s:g}s; last state: "
                    + "; ".join(seen.values())
                )
            time.sleep(poll_s)

    # -- errors ------------------------------------------------------------------------
    def _call(self, verb: str, name: str, method: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(*args, _request_timeout=self._timeout, **kw)
        except ApiException as exc:
            raise self._error(verb, name, exc) from None
        except HTTPError as exc:
            raise ClusterUnavailable(
                f"cannot reach the Kubernetes API at {self.host} ({type(exc).__name__}): "
                "check the cluster is up and the kubeconfig's server and context"
            ) from None

    def _error(self, verb: str, name: str, exc: Any) -> ServekitError:
        status, body = int(exc.status or 0), _json(exc.body)
        message = str(body.get("message") or exc.reason or "")
        what = f"RayService {self.namespace}/{name}" if name else f"RayServices in {self.namespace}"
        if status == 404 and body.get("kind") != "Status":
            return ClusterUnavailable(
                f"the RayService CRD ({PLURAL}.{GROUP}/{VERSION}) is not installed on the "
                f"cluster at {self.host}: {_INSTALL}"
            )
        if status == 404:
            return NotFound(f"{what} not found")
        if status == 401:
            return AccessDenied(
                f"the Kubernetes API at {self.host} refused the credentials (401): check the "
                "kubeconfig's user or token"
            )
        if status == 403:
            return AccessDenied(
                f"not allowed to {verb} {what}: {message}. The account needs {_VERBS} on "
                f"{PLURAL}.{GROUP} in namespace {self.namespace} (docs/kubernetes.md has a Role)"
            )
        if status == 409 and verb == "update":
            return _Conflict(message)
        if status in (400, 422):
            causes = (body.get("details") or {}).get("causes") or []
            fields = "; ".join(f"{c.get('field', '')}: {c.get('message', '')}" for c in causes)
            return SpecError("manifest", f"the API server rejected it: {fields or message}")
        return ServekitError(f"Kubernetes API error {status} on {verb} {what}: {message}")


class _Conflict(ServekitError):
    """Someone changed the object between our read and our write."""


def _events(state: RayServiceStatus) -> dict[str, str]:
    """The lines worth reporting about ``state``, keyed by what they describe."""
    lines = {}
    for kind, c in state.conditions.items():
        note = f": {c['message']}" if c["message"] else ""
        lines[f"condition {kind}"] = f"{kind}={c['status']} ({c['reason']}){note}"
    if not state.conditions and state.service_status:
        lines["service"] = f"service status {state.service_status}"
    for label, cluster, apps in (
        ("active", state.active_cluster, state.applications),
        ("pending", state.pending_cluster, state.pending_applications),
    ):
        for app, info in apps.items():
            note = f": {info['message']}" if info["message"] else ""
            lines[f"{label} {app}"] = f"{app} on {label} cluster {cluster}: {info['status']}{note}"
    if len(state.traffic) > 1:
        lines["traffic"] = "traffic " + ", ".join(f"{c} {p}%" for c, p in state.traffic.items())
    return lines


def _name_of(manifest: dict[str, Any]) -> str:
    if manifest.get("kind") != "RayService" or manifest.get("apiVersion") != f"{GROUP}/{VERSION}":
        raise SpecError("manifest", f"expected kind RayService, apiVersion {GROUP}/{VERSION}")
    name = (manifest.get("metadata") or {}).get("name")
    if not name:
        raise SpecError("metadata.name", "the manifest has no name")
    return str(name)


def _json(body: Any) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
