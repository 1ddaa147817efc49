"""servekit's serving runtime on Ray Serve: the public API.

Example::

    from servekit.core import Runtime, ServiceSpec

    runtime = Runtime.connect()
    runtime.deploy(ServiceSpec(name="echo", source="python:my_models:Echo"))
    print(runtime.predict("echo", {"hello": "world"}))
"""

from servekit.core._private.errors import (
    BadRequest,
    ClusterUnavailable,
    DeployError,
    NotFound,
    ServekitError,
    SpecError,
    Timeout,
)
from servekit.core._private.runtime import Runtime, ServiceStatus
from servekit.core._private.servable import Servable
from servekit.core._private.server import MODEL_ID_HEADER, ModelServer, ServingContext
from servekit.core._private.spec import (
    Autoscaling,
    Batching,
    HealthCheck,
    Multiplexing,
    Resources,
    ServiceSpec,
)

__all__ = [
    "MODEL_ID_HEADER",
    "Autoscaling",
    "BadRequest",
    "Batching",
    "ClusterUnavailable",
    "DeployError",
    "HealthCheck",
    "ModelServer",
    "Multiplexing",
    "NotFound",
    "Resources",
    "Runtime",
    "Servable",
    "ServekitError",
    "ServiceSpec",
    "ServiceStatus",
    "ServingContext",
    "SpecError",
    "Timeout",
]
