"""Runtime: the only object in servekit that talks to Ray."""

from __future__ import annotations

import builtins
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servekit.core._private.cluster import ClusterInfo, LocalCluster
from servekit.core._private.errors import (
    ClusterUnavailable,
    DeployError,
    NotFound,
    ServekitError,
    SpecError,
    Timeout,
)
from servekit.core._private.server import DEPLOYMENT_NAME, build_application
from servekit.core._private.spec import ServiceSpec

logger = logging.getLogger("servekit.runtime")

Progress = Callable[[str], None]
_FAILED = {"DEPLOY_FAILED", "UNHEALTHY"}


@dataclass
class ServiceStatus:
    """What ``Runtime.status`` reports for one service."""

    name: str
    status: str
    route_prefix: str | None
    url: str | None
    message: str = ""
    replicas: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "route_prefix": self.route_prefix,
            "url": self.url,
            "message": self.message,
            "replicas": self.replicas,
        }


class Runtime:
    """A connection to a Ray cluster with Serve, and the services on it.

    Example::

        runtime = Runtime.connect()           # embedded local cluster, started if absent
        runtime.deploy(ServiceSpec(name="echo", source="python:my_models:Echo"))
        runtime.predict("echo", {"x": 1})
        runtime.url("echo")                   # http://127.0.0.1:8000/echo

    Raises :class:`ClusterUnavailable` when no cluster can be reached or started.
    """

    def __init__(self, address: str, http_url: str, ingress: str, local: LocalCluster | None):
        self.address = address
        self.http_url = http_url
        self.ingress = ingress
        self.local = local
        self._routes: dict[tuple[str, float], str | None] = {}
        # One handle per service: a handle's router learns which replica holds which
        # multiplexed model, and a fresh handle would not know yet.
        self._handles: dict[str, Any] = {}

    # -- connecting ------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        address: str | None = None,
        *,
        home: str | Path | None = None,
        start: bool = True,
        http_port: int | None = None,
        num_cpus: float | None = None,
        progress: Progress | None = None,
    ) -> Runtime:
        """Connect to ``address`` (or ``RAY_ADDRESS``: ``auto``, ``host:port``, ``ray://...``),
        or else to the embedded local cluster of ``home``, starting it if ``start``."""
        import ray
        from ray._private import auto_init_hook

        # Never start a stray default cluster: without this, Ray's background threads
        # (a handle's metrics push) call ray.init() again after ray.shutdown().
        auto_init_hook.enable_auto_connect = False
        address = address or os.environ.get("RAY_ADDRESS") or None
        local: LocalCluster | None = None
        if address is None:
            local = LocalCluster(Path(home) if home else None)
            info = local.info()
            if info is None:
                if not start:
                    raise ClusterUnavailable(
                        "no servekit cluster is running; start one with `servekit up`"
                    )
                info = local.start(http_port=http_port, num_cpus=num_cpus, progress=progress)
            os.environ.update(
                {"RAY_SERVE_ENABLE_HA_PROXY": "1" if info.ingress == "haproxy" else "0"}
            )
            _use_auth_env(local.auth_env())
            address = info.address
        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if current != address and not address.startswith(("auto", "ray://")):
                ray.shutdown()
        if not ray.is_initialized():
            try:
                ray.init(
                    address=address,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterUnavailable(
                    f"cannot reach a Ray cluster at {address!r}: {exc}. "
                    "Start one with `servekit up`, or set RAY_ADDRESS to a running cluster."
                ) from None
        return cls._with_serve(address, local.info() if local else None, local)

    @classmethod
    def _with_serve(
        cls, address: str, info: ClusterInfo | None, local: LocalCluster | None
    ) -> Runtime:
        from ray import serve

        if info is not None:
            host, port = info.http_host, info.http_port
        else:
            host, port = "0.0.0.0", int(os.environ.get("SERVEKIT_HTTP_PORT", "8000"))
        serve.start(proxy_location="EveryNode", http_options={"host": host, "port": port})
        ingress = info.ingress if info else _detect_ingress()
        shown_host = "127.0.0.1" if host == "0.0.0.0" else host
        return cls(address, f"http://{shown_host}:{port}", ingress, local)

    # -- services --------------------------------------------------------------------
    def deploy(
        self,
        spec: ServiceSpec,
        *,
        wait: bool = True,
        timeout_s: float = 300.0,
        progress: Progress | None = None,
    ) -> ServiceStatus:
        """Create ``spec``'s service, or update it in place if it exists.

        Blocks until RUNNING when ``wait``. On failure raises :class:`DeployError` with the
        replica's own error, and leaves nothing half-deployed: a new service is deleted,
        an updated one is put back to its previous spec.
        """
        if spec.name in self.endpoints():
            raise SpecError("name", f"{spec.name!r} is an endpoint; name the service apart")
        existed = spec.name in self._apps()
        previous = self._current_spec(spec.name) if existed else None
        say = progress or (lambda message: logger.info(message))
        say(f"{'updating' if existed else 'deploying'} {spec.name!r} ({spec.source})")
        self._submit(spec)
        if not wait:
            status = self.status(spec.name)
            status.route_prefix = status.route_prefix or spec.route
            status.url = status.url or self._url_for(spec.route)
            return status
        try:
            return self._wait_running(spec.name, timeout_s, say)
        except (DeployError, Timeout) as failure:
            self._undo(spec.name, existed, previous, timeout_s, say, failure)
            raise

    def _undo(
        self,
        name: str,
        existed: bool,
        previous: ServiceSpec | None,
        timeout_s: float,
        say: Progress,
        failure: Exception,
    ) -> None:
        """Leave nothing half-deployed: remove a new service, restore an updated one."""
        try:
            if not existed:
                say(f"removing the failed service {name!r}")
                self.delete(name)
            elif previous is not None:
                say(f"restoring the previous spec of {name!r}")
                self._submit(previous)
                self._wait_running(name, timeout_s, say)
            else:
                say(f"{name!r} was not running before this deploy; leaving it for inspection")
        except Exception as exc:  # the deploy's own failure is what the caller must see
            logger.error("could not undo the failed deploy of %r: %s", name, exc)
            failure.add_note(f"undoing the failed deploy also failed: {exc}")

    def update(
        self,
        spec: ServiceSpec,
        *,
        wait: bool = True,
        timeout_s: float = 300.0,
        progress: Progress | None = None,
    ) -> ServiceStatus:
        """Change a running service in place. Replicas roll one by one, so it keeps
        serving; changes to batching, user_config, replicas, autoscaling and the other
        live fields (see ``spec.LIVE_FIELDS``) restart nothing.
        Raises :class:`NotFound` if the service does not exist."""
        if spec.name not in self._apps():
            raise NotFound(f"no service named {spec.name!r}; deploy it first")
        return self.deploy(spec, wait=wait, timeout_s=timeout_s, progress=progress)

    def delete(self, name: str, *, wait: bool = True) -> None:
        """Delete a service. Raises :class:`NotFound` if there is none by that name."""
        from ray import serve

        if name not in self._apps():
            raise NotFound(f"no service named {name!r}")
        self._handles.pop(name, None)
        serve.delete(name, _blocking=wait)

    def list(self) -> list[ServiceStatus]:
        """Every servekit service on the cluster (other Serve apps are left out)."""
        return [self._status_of(name, app) for name, app in sorted(self._apps().items())]

    def status(self, name: str) -> ServiceStatus:
        """One service's status. Raises :class:`NotFound`."""
        apps = self._apps()
        if name not in apps:
            raise NotFound(f"no service named {name!r}")
        return self._status_of(name, apps[name])

    def spec(self, name: str) -> ServiceSpec:
        """The spec a service runs with. Raises :class:`NotFound`."""
        found = self._current_spec(name)
        if found is None:
            raise NotFound(f"no service named {name!r}")
        return found

    def handle(self, name: str) -> Any:
        """A Ray Serve DeploymentHandle to the service's ModelServer."""
        from ray import serve

        if name not in self._handles:
            if name not in self._apps():
                raise NotFound(f"no service named {name!r}")
            self._handles[name] = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name)
        return self._handles[name]

    def url(self, name: str) -> str:
        """The service's HTTP address, e.g. ``http://127.0.0.1:8000/echo``."""
        status = self.status(name)
        if status.route_prefix is None:
            spec = self._current_spec(name)
            if spec is None:
                raise NotFound(f"{name!r} has no running replica yet, so its route is unknown")
            return self._url_for(spec.route)
        return self._url_for(status.route_prefix)

    def _url_for(self, route: str) -> str:
        return f"{self.http_url}{'' if route == '/' else route}"

    def predict(
        self, name: str, data: Any, *, model_id: str | None = None, timeout_s: float = 60.0
    ) -> Any:
        """Predict one input through the service's handle (batched like HTTP requests)."""
        handle = self.handle(name)
        if model_id:
            handle = handle.options(multiplexed_model_id=model_id)
        from ray.exceptions import RayTaskError

        try:
            return handle.predict.remote(data).result(timeout_s=timeout_s)
        except RayTaskError as exc:  # raised in the replica: a bad input or the model's error
            if isinstance(exc.cause, ServekitError):
                raise exc.cause from None
            cause, _ = _root_cause(str(exc))
            raise ServekitError(f"{name!r} failed on this input: {cause}") from None
        except TimeoutError:
            raise Timeout(f"{name!r} did not answer within {timeout_s:g}s") from None
        except Exception as exc:  # the replica or its handle went away
            if name not in self._apps():  # deleted meanwhile, maybe by another process
                self._handles.pop(name, None)
                raise NotFound(f"no service named {name!r}") from None
            cause, _ = _root_cause(str(exc))
            raise ServekitError(f"{name!r} failed on this input: {cause}") from None

    # -- endpoints: one route in front of several services ----------------------------
    def route(
        self,
        endpoint: str,
        weights: dict[str, float],
        *,
        sticky_header: str | None = None,
        shadow: str | None = None,
        route_prefix: str | None = None,
        timeout_s: float = 120.0,
    ) -> dict[str, Any]:
        """Create or update endpoint ``endpoint`` (served at ``/<endpoint>``) splitting its
        requests between services by ``weights`` (e.g. ``{"iris-v1": 90, "iris-v2": 10}``).
        A weight change is applied live: nothing restarts, no request is dropped.
        ``sticky_header`` sends every request with the same header value to the same
        service; ``shadow`` names a service that gets a copy of each request (its answers
        are dropped, its metrics kept). Returns the endpoint's traffic. Raises SpecError for
        bad weights or a name clash, NotFound for a service that does not exist."""
        from pydantic import ValidationError
        from ray import serve
        from servekit.core._private.router import Traffic, build_router

        try:
            traffic = Traffic(weights=weights, sticky_header=sticky_header, shadow=shadow)
        except ValidationError as exc:
            raise SpecError("weights", exc.errors()[0]["msg"]) from None
        services = self._apps()
        if endpoint in services:
            raise SpecError("endpoint", f"{endpoint!r} is a service; name the endpoint apart")
        for name in [*traffic.weights, *([shadow] if shadow else [])]:
            if name not in services:
                raise NotFound(f"endpoint {endpoint!r} names {name!r}, which is not a service")
            traffic.urls[name] = self.url(name)
        existed = endpoint in self.endpoints()
        prefix = route_prefix or self._endpoint_prefix(endpoint) or f"/{endpoint}"
        target = serve.RunTarget(
            target=build_router(endpoint, traffic, prefix), name=endpoint, route_prefix=prefix
        )
        serve.run_many([target, *self._hub_targets()], wait_for_applications_running=False)
        deadline = time.monotonic() + timeout_s
        while True:
            app = serve.status().applications.get(endpoint)
            state = str(getattr(app.status, "value", app.status)) if app else "MISSING"
            if state == "RUNNING" and self.traffic(endpoint) == traffic.percentages():
                return self.traffic(endpoint)
            if state in _FAILED:
                cause, details = _root_cause(app.message if app else "")
                if not existed:  # leave nothing half-made
                    serve.delete(endpoint, _blocking=True)
                raise DeployError(endpoint, cause, details)
            if time.monotonic() > deadline:
                raise Timeout(f"endpoint {endpoint!r} was not running after {timeout_s:g}s")
            time.sleep(0.2)

    def traffic(self, endpoint: str) -> dict[str, float]:
        """The endpoint's current split, in percent: ``{"iris-v1": 90.0, "iris-v2": 10.0}``."""
        return dict(self.endpoint_stats(endpoint, 0.0)["traffic"])

    def endpoint_stats(self, endpoint: str, window_s: float = 60.0) -> dict[str, Any]:
        """Per service behind the endpoint, over the last ``window_s`` seconds: requests,
        errors, error_rate, p50_ms, p99_ms; and the traffic split. Raises NotFound."""
        return self._router(endpoint).stats.remote(window_s).result(timeout_s=30)  # type: ignore[no-any-return]

    def endpoints(self) -> builtins.list[str]:
        """The names of the endpoints on the cluster."""
        from ray import serve
        from servekit.core._private.router import ROUTER_NAME

        apps = serve.status().applications
        return sorted(name for name, app in apps.items() if ROUTER_NAME in app.deployments)

    def delete_endpoint(self, endpoint: str) -> None:
        """Delete an endpoint (the services behind it stay). Raises NotFound."""
        from ray import serve

        if endpoint not in self.endpoints():
            raise NotFound(f"no endpoint named {endpoint!r}")
        serve.delete(endpoint, _blocking=True)

    def _router(self, endpoint: str) -> Any:
        from ray import serve
        from servekit.core._private.router import ROUTER_NAME

        if endpoint not in self.endpoints():
            raise NotFound(f"no endpoint named {endpoint!r}")
        return serve.get_deployment_handle(ROUTER_NAME, app_name=endpoint)

    def _endpoint_prefix(self, endpoint: str) -> str | None:
        from ray import serve

        app = serve.status().applications.get(endpoint)
        return getattr(app, "route_prefix", None) if app else None

    @property
    def metrics_url(self) -> str:
        """servekit's Prometheus endpoint: every service's and endpoint's metrics, once a
        first service is deployed, e.g. ``http://127.0.0.1:8000/-/metrics``."""
        from servekit.core._private.metrics_hub import HUB_ROUTE

        return self._url_for(HUB_ROUTE)

    def describe(self) -> dict[str, Any]:
        """The cluster: address, HTTP URL, ingress (haproxy or python), embedded or not."""
        data: dict[str, Any] = {
            "address": self.address,
            "http_url": self.http_url,
            "metrics_url": self.metrics_url,
            "ingress": self.ingress,
            "embedded": self.local is not None,
        }
        if self.local is not None:
            data["home"] = str(self.local.home)
            info = self.local.info()
            if info is not None and info.metrics_port:
                data["ray_metrics_url"] = f"http://{info.http_host}:{info.metrics_port}/metrics"
        return data

    # -- internals -------------------------------------------------------------------
    def _submit(self, spec: ServiceSpec) -> None:
        from ray import serve

        target = serve.RunTarget(
            target=build_application(spec, upload_local_dirs),
            name=spec.name,
            route_prefix=spec.route,
        )
        try:
            serve.run_many([target, *self._hub_targets()], wait_for_applications_running=False)
        except Exception as exc:  # Serve refused the app (route clash, bad runtime_env, ...)
            cause, details = _root_cause(str(exc))
            raise DeployError(spec.name, cause, details) from None

    def _hub_targets(self) -> builtins.list[Any]:
        """The metrics hub's app when the cluster has none yet (it starts alongside)."""
        from ray import serve
        from servekit.core._private.metrics_hub import HUB_APP, HUB_ROUTE, build_hub

        if HUB_APP in serve.status().applications:
            return []
        return [serve.RunTarget(target=build_hub(), name=HUB_APP, route_prefix=HUB_ROUTE)]

    def _wait_running(self, name: str, timeout_s: float, say: Progress) -> ServiceStatus:
        deadline = time.monotonic() + timeout_s
        last = said = ""
        while True:
            apps = self._apps()
            app = apps.get(name)
            if app is not None:
                status = self._status_of(name, app)
                line = f"{status.status.lower()}: " + ", ".join(
                    f"{count} {state.lower()}" for state, count in sorted(status.replicas.items())
                )
                if line != last:
                    say(line)
                    last = line
                # Serve explains slow starts (no free CPUs, a runtime_env being installed).
                if status.message and status.message != said and status.status != "RUNNING":
                    said = status.message
                    say(said.splitlines()[0])
                if status.status == "RUNNING":
                    return status
                if status.status in _FAILED:
                    cause, details = _root_cause(status.message)
                    raise DeployError(name, cause, details)
            if time.monotonic() > deadline:
                why = f": {said.splitlines()[0]}" if said else ""
                raise Timeout(
                    f"service {name!r} was not running after {timeout_s:g}s ({last}){why}"
                )
            time.sleep(0.5)

    def _apps(self) -> dict[str, Any]:
        from ray import serve

        return {
            name: app
            for name, app in serve.status().applications.items()
            if DEPLOYMENT_NAME in app.deployments
        }

    def _status_of(self, name: str, app: Any) -> ServiceStatus:
        deployment = app.deployments.get(DEPLOYMENT_NAME)
        replicas = (
            {str(k): v for k, v in (deployment.replica_states or {}).items()} if deployment else {}
        )
        # The deployment's message carries the replica's traceback; the app's is generic.
        message = "\n".join(m for m in (deployment.message if deployment else "", app.message) if m)
        route = self._route_of(name, app)
        url = self._url_for(route) if route is not None else None
        return ServiceStatus(
            name=name,
            status=str(getattr(app.status, "value", app.status)),
            route_prefix=route,
            url=url,
            message=message,
            replicas=replicas,
        )

    def _route_of(self, name: str, app: Any) -> str | None:
        key = (name, float(app.last_deployed_time_s))
        if key not in self._routes:
            if str(getattr(app.status, "value", app.status)) != "RUNNING":
                return None
            spec = self._current_spec(name)
            self._routes[key] = spec.route if spec else None
        return self._routes[key]

    def _current_spec(self, name: str) -> ServiceSpec | None:
        apps = self._apps()
        if name not in apps or str(getattr(apps[name].status, "value", "")) == "DELETING":
            return None
        deployment = apps[name].deployments.get(DEPLOYMENT_NAME)
        if not deployment or not (deployment.replica_states or {}).get("RUNNING"):
            return None  # no replica to ask (still starting, failed, or scaled to zero)
        from ray import serve

        try:
            handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name)
            described = handle.describe.remote().result(timeout_s=30)
        except Exception:
            return None  # not running (yet): nothing to restore
        return ServiceSpec(**described["spec"])


def upload_local_dirs(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """Replace local ``working_dir``/``py_modules`` paths with packages uploaded to the
    cluster, as ``ray.init(runtime_env=...)`` does; Serve deployments accept only URIs."""
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    # Ray zips into the current directory unless told otherwise; when that directory is
    # the working_dir itself, the zip can end up zipping itself until the disk is full.
    with tempfile.TemporaryDirectory(prefix="servekit-upload-") as scratch:
        runtime_env = upload_py_modules_if_needed(
            runtime_env, include_gitignore=True, scratch_dir=scratch, logger=logger
        )
        runtime_env = upload_working_dir_if_needed(
            runtime_env, include_gitignore=True, scratch_dir=scratch, logger=logger
        )
    runtime_env.pop("excludes", None)
    return runtime_env


def _use_auth_env(env: dict[str, str]) -> None:
    """Make this process use the cluster's token, even if Ray read its settings already."""
    if all(os.environ.get(k) == v for k, v in env.items()):
        return
    os.environ.update(env)
    # Ray caches the auth mode and token at import; reload them from the environment.
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _root_cause(message: str) -> tuple[str, str]:
    """The user's own exception line from a Ray Serve failure message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and not head.startswith(("ray.", "Ray")):
            return line, message
    return (lines[-1] if lines else "unknown error"), message


def _detect_ingress() -> str:
    """Which ingress a cluster we did not start runs: HAProxy or Ray Serve's Python proxy."""
    from ray.util.state import list_actors

    try:
        actors = list_actors(
            filters=[("class_name", "=", "HAProxyManager"), ("state", "=", "ALIVE")]
        )
        return "haproxy" if actors else "python"
    except Exception:
        return "unknown"


def service_handle(name: str) -> Any:
    """A DeploymentHandle to service ``name`` for code running inside the cluster, such
    as a replica that composes services. Example::

        answer = await service_handle("embedder").predict.remote("some text")
    """
    from ray import serve

    return serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=name)
