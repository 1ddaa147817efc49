"""MetricsHub: servekit's Prometheus endpoint, ``GET /-/metrics`` on the cluster's ingress.

Prometheus cannot scrape one replica among many through a load-balanced ingress, and
replicas come and go. So every replica (services and endpoints' Routers) pushes its own
registry's text to the hub every ``SERVEKIT_METRICS_PUSH_S`` seconds (default 5), and the
hub serves the union, each series labelled with its replica. A replica that stops pushing
drops out after ``_EXPIRE_PUSHES`` missed pushes. Ray's own metrics are not here: Ray
exports them from every node (see docs/observability.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from ray import serve
from ray.serve import Application

logger = logging.getLogger("servekit.metrics")

HUB_APP = "servekit-metrics"
HUB_DEPLOYMENT = "MetricsHub"
HUB_ROUTE = "/-/metrics"
_EXPIRE_PUSHES = 6


def push_interval_s() -> float:
    try:
        return max(0.2, float(os.environ.get("SERVEKIT_METRICS_PUSH_S", "5")))
    except ValueError:
        return 5.0


class _Union:
    """A prometheus-client collector yielding the merged families of many texts."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        for text in self._texts:
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                merged.samples.extend(family.samples)
        return list(families.values())


def merge(texts: list[str]) -> str:
    """Prometheus texts (one per replica) as one exposition, families merged."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Union(texts))
    return generate_latest(registry).decode()


@serve.ingress()
class MetricsHub:
    """Holds the latest metrics text of every replica; serves their union."""

    def __init__(self) -> None:
        self._texts: dict[str, tuple[float, str]] = {}

    def push(self, replica: str, text: str) -> None:
        self._texts[replica] = (time.monotonic(), text)

    def text(self) -> str:
        horizon = time.monotonic() - _EXPIRE_PUSHES * push_interval_s()
        for replica, (at, _) in list(self._texts.items()):
            if at < horizon:
                del self._texts[replica]
        return merge([text for _, text in self._texts.values()])

    def __serve_build_asgi_app__(self) -> Any:
        return _HubApp(self)


class _HubApp:
    """The hub's ASGI app: every GET under /-/metrics gets the union."""

    def __init__(self, hub: MetricsHub) -> None:
        self._hub = hub

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # Serve runs the app's startup and shutdown
            while True:
                kind = (await receive())["type"].rpartition(".")[2]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        body = self._hub.text().encode()
        headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def build_hub() -> Application:
    """The hub's Serve application: one replica, no CPU reserved."""
    deployment = serve.deployment(MetricsHub).options(
        name=HUB_DEPLOYMENT,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": False},
        _internal=True,
    )
    return deployment.bind()


def start_pushing(replica: str, text: Callable[[], str]) -> asyncio.Task[None]:
    """Push ``text()`` to the hub every interval from the running replica, for good."""
    return asyncio.get_running_loop().create_task(_push_forever(replica, text))


async def _push_forever(replica: str, text: Callable[[], str]) -> None:
    interval = push_interval_s()
    handle: Any = None
    warned = False
    while True:
        await asyncio.sleep(interval)
        try:
            if handle is None:
                handle = serve.get_deployment_handle(HUB_DEPLOYMENT, app_name=HUB_APP)
            await asyncio.wait_for(handle.push.remote(replica, text()), timeout=interval * 2)
            warned = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no hub (yet), or it is restarting: try again later
            handle = None
            if not warned:
                logger.info("metrics hub not reachable (%s); retrying", type(exc).__name__)
                warned = True


def build_metrics_hub(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder for the hub (``servekit.core:build_metrics_hub``),
    used by the Serve configs servekit renders; takes no arguments."""
    return build_hub()
