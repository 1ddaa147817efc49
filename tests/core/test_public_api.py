"""The public surface is what servekit.core exports; this test pins it."""

import servekit.core


def test_public_names_are_pinned():
    assert sorted(servekit.core.__all__) == sorted(
        [
            "MODEL_ID_HEADER",
            "Analysis",
            "Auth",
            "client_headers",
            "build_metrics_hub",
            "build_service",
            "RayServiceStatus",
            "RayServiceClient",
            "serve_config",
            "render_rayservice",
            "WorkerGroup",
            "Upgrade",
            "KubeOptions",
            "HeadGroup",
            "AccessDenied",
            "Autoscaling",
            "BadRequest",
            "Batching",
            "ClusterUnavailable",
            "DeployError",
            "HealthCheck",
            "ModelServer",
            "Multiplexing",
            "NotFound",
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
            "analyze",
            "import_object",
            "parse_options",
            "replica_metrics",
            "service_handle",
        ]
    )
    for name in servekit.core.__all__:
        obj = getattr(servekit.core, name)
        assert not isinstance(obj, str) or name == "MODEL_ID_HEADER"
        assert obj.__doc__ or isinstance(obj, str), f"{name} has no docstring"
