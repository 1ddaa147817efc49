"""servekit's serving runtime on Ray Serve: the public API.

Example::

    from servekit.core import Runtime, ServiceSpec

    runtime = Runtime.connect()
    runtime.deploy(ServiceSpec(name="echo", source="python:my_models:Echo"))
    print(runtime.predict("echo", {"hello": "world"}))
"""

from typing import TYPE_CHECKING, Any

from servekit.core._private.auth import client_headers
from servekit.core._private.errors import (
    AccessDenied,
    BadRequest,
    ClusterUnavailable,
    DeployError,
    NotFound,
    ServekitError,
    SpecError,
    Timeout,
)
from servekit.core._private.kube import RayServiceClient, RayServiceStatus
from servekit.core._private.kuberay import (
    HeadGroup,
    KubeOptions,
    Upgrade,
    WorkerGroup,
    render_rayservice,
    serve_config,
)
from servekit.core._private.rollout import Analysis, Rollout, RolloutResult, Thresholds, analyze
from servekit.core._private.servable import Servable
from servekit.core._private.sources import import_object
from servekit.core._private.spec import (
    Auth,
    Autoscaling,
    Batching,
    HealthCheck,
    Multiplexing,
    Resources,
    ServiceSpec,
    parse_options,
)

if TYPE_CHECKING:
    from servekit.core._private.metrics_hub import build_metrics_hub
    from servekit.core._private.runtime import Runtime, ServiceStatus, service_handle
    from servekit.core._private.server import (
        MODEL_ID_HEADER,
        ModelServer,
        ServingContext,
        build_service,
    )
    from servekit.core._private.telemetry import ReplicaMetrics, replica_metrics

# These pull in Ray and FastAPI; importing servekit.core (an MLflow plugin entry point,
# a spec check) stays cheap until one of them is used.
_LAZY = {
    "Runtime": "servekit.core._private.runtime",
    "ServiceStatus": "servekit.core._private.runtime",
    "service_handle": "servekit.core._private.runtime",
    "MODEL_ID_HEADER": "servekit.core._private.server",
    "ModelServer": "servekit.core._private.server",
    "ServingContext": "servekit.core._private.server",
    "build_service": "servekit.core._private.server",
    "build_metrics_hub": "servekit.core._private.metrics_hub",
    "ReplicaMetrics": "servekit.core._private.telemetry",
    "replica_metrics": "servekit.core._private.telemetry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'servekit.core' has no attribute {name!r}")


__all__ = [
    "MODEL_ID_HEADER",
    "AccessDenied",
    "Analysis",
    "Auth",
    "Autoscaling",
    "BadRequest",
    "Batching",
    "ClusterUnavailable",
    "DeployError",
    "HeadGroup",
    "HealthCheck",
    "KubeOptions",
    "ModelServer",
    "Multiplexing",
    "NotFound",
    "RayServiceClient",
    "RayServiceStatus",
    "ReplicaMetrics",
    "Resources",
    "Rollout",
    "RolloutResult",
    "Runtime",
    "Servable",
    "ServekitError",
    "ServiceSpec",
    "ServiceStatus",
    "ServingContext",
    "SpecError",
    "Thresholds",
    "Timeout",
    "Upgrade",
    "WorkerGroup",
    "analyze",
    "build_metrics_hub",
    "build_service",
    "client_headers",
    "import_object",
    "parse_options",
    "render_rayservice",
    "replica_metrics",
    "serve_config",
    "service_handle",
]
