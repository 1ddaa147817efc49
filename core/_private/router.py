"""Router: one endpoint in front of several services (versions), traffic split by weight.

The Router is its own Ray Serve application. It reads each HTTP request once, picks a
version by weight (or by a sticky header), and relays the request over HTTP through the
cluster's ingress to that service (its own span as the ``traceparent`` when tracing),
streaming the answer back: any protocol a service speaks (MLflow, LangServe, OpenAI
streams) passes through unchanged.
Weights live in ``user_config``, so changing them restarts nothing and drops nothing.
Per version it counts requests, errors and latency, for Prometheus (``GET
<prefix>/-/metrics``) and for rollout analysis (``stats``).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application
from servekit.core._private import telemetry
from servekit.core._private.limits import BodyRejected, read_body, refuse
from servekit.core._private.metrics_hub import start_pushing
from servekit.core._private.spec import Limits

logger = logging.getLogger("servekit.router")

ROUTER_NAME = "Router"
METRICS_PATH = "/-/metrics"
_WINDOW_S = 900.0  # the longest analysis window a Router keeps samples for
_MAX_SHADOWS = 64  # shadow copies in flight per Router replica
# Connection-level headers are the hop's own; the rest pass through both ways.
_HOP_HEADERS = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"content-length"}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Traffic(BaseModel):
    """How an endpoint splits its requests: service name -> weight (any positive scale),
    an optional sticky header, an optional shadow service (gets copies, answers dropped)."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(min_length=1)
    sticky_header: str | None = None
    shadow: str | None = None
    # Each service's HTTP address on the cluster's ingress, filled in by Runtime.route.
    urls: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid(self) -> Traffic:
        if any(weight < 0 for weight in self.weights.values()):
            raise ValueError("weights cannot be negative")
        if sum(self.weights.values()) <= 0:
            raise ValueError("at least one weight must be above 0")
        if self.shadow is not None and self.weights.get(self.shadow, 0) > 0:
            raise ValueError(f"{self.shadow!r} takes live traffic; it cannot also shadow")
        return self

    def percentages(self) -> dict[str, float]:
        total = sum(self.weights.values())
        return {name: round(100.0 * w / total, 3) for name, w in self.weights.items()}


@dataclass
class _Sample:
    at: float
    seconds: float
    error: bool


class _VersionStats:
    def __init__(self) -> None:
        self.samples: deque[_Sample] = deque()
        self.requests = 0
        self.errors = 0
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.seconds_sum = 0.0

    def record(self, seconds: float, error: bool) -> None:
        now = time.monotonic()
        self.samples.append(_Sample(now, seconds, error))
        while self.samples and self.samples[0].at < now - _WINDOW_S:
            self.samples.popleft()
        self.requests += 1
        self.errors += error
        self.seconds_sum += seconds
        self.buckets[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1

    def window(self, seconds: float) -> dict[str, Any]:
        since = time.monotonic() - seconds
        recent = [s for s in self.samples if s.at >= since]
        latencies = sorted(s.seconds for s in recent)
        errors = sum(s.error for s in recent)

        def quantile(q: float) -> float | None:
            if not latencies:
                return None
            return 1000.0 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

        return {
            "requests": len(recent),
            "errors": errors,
            "error_rate": errors / len(recent) if recent else None,
            "p50_ms": quantile(0.5),
            "p99_ms": quantile(0.99),
        }


@serve.ingress()
class Router:
    """Splits an endpoint's HTTP traffic between services by weight."""

    async def __init__(self, endpoint: str, traffic: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        self.endpoint = endpoint
        self.traffic = Traffic(**traffic)
        self._handles: dict[str, Any] = {}
        self._client: Any = None
        self._stats: dict[str, _VersionStats] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._cumulative: list[tuple[float, str]] = []
        self.reconfigure({"traffic": traffic})
        self._pusher = start_pushing(f"endpoint:{endpoint}", self.metrics_text)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """New weights, live: requests already routed finish where they went."""
        self.traffic = Traffic(**config["traffic"])
        total, cumulative = 0.0, []
        for name, weight in sorted(self.traffic.weights.items()):
            if weight > 0:
                total += weight
                cumulative.append((total, name))
        self._cumulative = [(edge / total, name) for edge, name in cumulative]
        logger.info("endpoint %r traffic now %s", self.endpoint, self.traffic.percentages())

    # -- routing -------------------------------------------------------------------
    def _pick(self, headers: list[tuple[bytes, bytes]]) -> str:
        point = random.random()
        header = self.traffic.sticky_header
        if header:
            wanted = header.lower().encode()
            value = next((v for k, v in headers if k.lower() == wanted), None)
            if value is not None:  # the same value always lands on the same version
                point = int.from_bytes(hashlib.sha256(value).digest()[:8], "big") / 2.0**64
        for edge, name in self._cumulative:
            if point < edge:
                return name
        return self._cumulative[-1][1]

    def _handle(self, service: str) -> Any:
        if service not in self._handles:
            from servekit.core._private.server import DEPLOYMENT_NAME

            handle = serve.get_deployment_handle(DEPLOYMENT_NAME, service)
            self._handles[service] = (handle, handle.options(stream=True))
        return self._handles[service]

    def _record(self, service: str, seconds: float, error: bool) -> None:
        self._stats.setdefault(service, _VersionStats()).record(seconds, error)

    async def _forward(self, service: str, request: dict[str, Any], send: Any) -> None:
        started = time.perf_counter()
        status, broken = 0, False
        try:
            async for message in self._relay(service, request):
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)
        except Exception as exc:  # the service failed or went away, maybe mid-stream
            broken = True
            logger.warning("endpoint %r: %s failed: %s", self.endpoint, service, exc)
            if status == 0:
                await _reply(send, 503, f"service {service!r} is unavailable")
        finally:
            failed = broken or status == 0 or status >= 500
            self._record(service, time.perf_counter() - started, failed)

    async def _relay(self, service: str, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The service's answer as ASGI messages: over HTTP through the cluster's ingress
        when its address is known (cheapest, measured in bench/router.py), else over a
        DeploymentHandle."""
        url = self.traffic.urls.get(service)
        if url is None:
            unary, streaming = self._handle(service)
            if _streams(request):
                async for message in streaming.http.remote(request):
                    yield message
            else:
                for message in await unary.http_unary.remote(request):
                    yield message
            return
        if self._client is None:
            import aiohttp  # Ray Serve's own dependency; measured faster here than httpx

            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(total=None)
            self._client = aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            )
        query = request["query_string"].decode()
        target = url.rstrip("/") + (request["path"] if request["path"] != "/" else "")
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request["headers"]
            if k.lower() not in _HOP_HEADERS
        ]
        if telemetry.current_context() is not None:
            # The service's span becomes a child of this Router's, not a sibling.
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            headers = [(k, v) for k, v in headers if k.lower() not in carrier] + list(
                carrier.items()
            )
        async with self._client.request(
            request["method"],
            target + (f"?{query}" if query else ""),
            headers=headers,
            data=request["body"],
            allow_redirects=False,
        ) as reply:
            kept = [(k, v) for k, v in reply.raw_headers if k.lower() not in _HOP_HEADERS]
            yield {"type": "http.response.start", "status": reply.status, "headers": kept}
            async for chunk in reply.content.iter_any():
                yield {"type": "http.response.body", "body": chunk, "more_body": True}
            yield {"type": "http.response.body", "body": b"", "more_body": False}

    async def _shadow(self, service: str, request: dict[str, Any]) -> None:
        async def discard(message: dict[str, Any]) -> None:
            return None

        await self._forward(service, request, discard)

    # -- handle methods ------------------------------------------------------------
    def stats(self, window_s: float = 60.0) -> dict[str, Any]:
        """Per service over the last ``window_s`` seconds: requests, errors, error_rate,
        p50_ms, p99_ms; plus the current traffic percentages."""
        return {
            "traffic": self.traffic.percentages(),
            "shadow": self.traffic.shadow,
            "versions": {name: s.window(window_s) for name, s in sorted(self._stats.items())},
        }

    def describe(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "traffic": self.traffic.model_dump()}

    def metrics_text(self) -> str:
        """Prometheus exposition of the per-version counters and latency histogram."""
        out = []

        def family(name: str, kind: str, text: str) -> None:
            out.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])

        def labels(version: str, extra: str = "") -> str:
            return f'{{endpoint="{self.endpoint}",version="{version}"{extra}}}'

        stats = sorted(self._stats.items())
        family("servekit_endpoint_requests_total", "counter", "Requests routed, by version.")
        out += [f"servekit_endpoint_requests_total{labels(v)} {s.requests}" for v, s in stats]
        family("servekit_endpoint_errors_total", "counter", "Requests answered 5xx or not at all.")
        out += [f"servekit_endpoint_errors_total{labels(v)} {s.errors}" for v, s in stats]
        name = "servekit_endpoint_request_seconds"
        family(name, "histogram", "Latency through the endpoint, by version.")
        for version, s in stats:
            count = 0
            for edge, hits in zip((*_LATENCY_BUCKETS, float("inf")), s.buckets, strict=True):
                count += hits
                le = "+Inf" if edge == float("inf") else repr(edge)
                bound = f',le="{le}"'
                out.append(f"{name}_bucket{labels(version, bound)} {count}")
            out.append(f"{name}_sum{labels(version)} {s.seconds_sum}")
            out.append(f"{name}_count{labels(version)} {s.requests}")
        return "\n".join(out) + "\n"

    # -- HTTP ----------------------------------------------------------------------
    def __serve_build_asgi_app__(self) -> Any:
        return _App(self)

    async def _asgi(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # Serve runs the app's startup and shutdown
            while True:
                message = await receive()
                kind = message["type"].rpartition(".")[2]  # startup or shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        path = scope["path"][len(root) :] if scope["path"].startswith(root) else scope["path"]
        path = path or "/"
        if path == METRICS_PATH and scope["method"] == "GET":
            text = self.metrics_text().encode()
            headers = [(b"content-type", b"text/plain; version=0.0.4")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": text})
            return
        limits = Limits()  # the service behind applies its own on top
        try:
            body = await read_body(scope, receive, limits.max_body, limits.body_timeout_s)
        except BodyRejected as exc:
            await refuse(send, exc.status, {"error": {"code": exc.code, "message": str(exc)}})
            return
        if body is None:
            return  # the client left
        request = {
            "method": scope["method"],
            "path": path,
            "query_string": scope.get("query_string", b""),
            "headers": [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])],
            "body": body,
        }
        shadow = self.traffic.shadow
        # A copy, not awaited: the client never waits for the shadow. A slow shadow must
        # not pile up copies in the Router: beyond a limit, copies are skipped.
        if shadow and len(self._shadows) < _MAX_SHADOWS:
            task = asyncio.create_task(self._shadow(shadow, request))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        await self._forward(self._pick(request["headers"]), request, send)


def _streams(request: dict[str, Any]) -> bool:
    """Whether the answer may be a stream, relayed chunk by chunk: an SSE ``Accept``,
    LangServe's ``/stream`` routes, or ``"stream": true`` (OpenAI, MLflow). Other answers
    come back in one round trip."""
    if request["path"].rstrip("/").endswith(("/stream", "/stream_events", "/stream_log")):
        return True
    for key, value in request["headers"]:
        if key.lower() == b"accept" and b"text/event-stream" in value:
            return True
    body = request["body"]
    return b'"stream"' in body and (b'"stream":true' in body or b'"stream": true' in body)


class _App:
    """The Router's ASGI app (an object, so uvicorn sees ASGI 3 rather than a bound method)."""

    def __init__(self, router: Router) -> None:
        self._router = router

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._router._asgi(scope, receive, send)


async def _reply(send: Any, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": {"code": "unavailable", "message": message}}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def build_router(
    endpoint: str, traffic: Traffic, route_prefix: str, num_replicas: int = 1
) -> Application:
    """The Ray Serve application of an endpoint: one Router deployment whose weights ride
    in user_config (a fixed version, so a weight change never restarts it)."""
    from importlib.metadata import version

    from servekit.core._private.server import REPLICA_ENV

    deployment = serve.deployment(Router).options(
        name=ROUTER_NAME,
        version=f"router-{version('servekit')}",
        _internal=True,
        num_replicas=num_replicas,
        ray_actor_options={
            "num_cpus": 0.1,
            "runtime_env": {"env_vars": {**REPLICA_ENV, **telemetry.replica_env(endpoint)}},
        },
        max_ongoing_requests=256,
        user_config={"traffic": traffic.model_dump()},
        logging_config={"enable_access_log": False},
    )
    return deployment.bind(endpoint, traffic.model_dump())
