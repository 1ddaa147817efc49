"""Service specs as a KubeRay RayService manifest (``ray.io/v1``) and as a Ray Serve config.

The Serve config is what a Ray cluster deploys from (``serveConfigV2`` in a RayService,
or ``serve deploy``): one application per spec, built in the cluster by
``servekit.core:build_service``. The parts of a spec that Serve changes on running
replicas (``spec.LIVE_FIELDS``) go into the config's deployment overrides, not into the
builder's arguments, because Serve restarts every replica when an application's
``args`` change; so a new batch size or replica count rolls out in place there too.

Nothing here talks to Kubernetes or imports Ray: rendering is pure data.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from servekit.core._private.errors import SpecError
from servekit.core._private.spec import (
    _NAME,
    LIVE_FIELDS,
    ServiceSpec,
    _spec_error,
    default_max_ongoing,
)

SERVICE_BUILDER = "servekit.core:build_service"
HUB_BUILDER = "servekit.core:build_metrics_hub"
DEPLOYMENT_NAME = "ModelServer"  # server.DEPLOYMENT_NAME, without importing Ray
HUB_APP, HUB_ROUTE = "servekit-metrics", "/-/metrics"
MANAGED_BY = "servekit"
# Ray's standard ports; KubeRay's Services point at these names.
_HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Pods(_Section):
    cpu: str
    memory: str

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> str:
        text = str(value)
        if not _QUANTITY.match(text):
            raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)")
        return text


class HeadGroup(_Pods):
    """The head pod: Ray's control processes, and replicas only if ``run_replicas``."""

    cpu: str = "1"
    memory: str = "4Gi"
    run_replicas: bool = Field(
        default=False, description="let Serve place replicas on the head (small clusters)"
    )


class WorkerGroup(_Pods):
    """One group of identical worker pods: where the replicas run."""

    name: str = "workers"
    replicas: int = Field(default=1, ge=0)
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    cpu: str = "2"
    memory: str = "8Gi"
    gpus: int = Field(default=0, ge=0)
    gpu_resource: str = "nvidia.com/gpu"
    image: str | None = None

    @model_validator(mode="after")
    def _bounds(self) -> WorkerGroup:
        low = self.replicas if self.min_replicas is None else self.min_replicas
        high = self.replicas if self.max_replicas is None else self.max_replicas
        if not low <= self.replicas <= high:
            raise ValueError(
                f"replicas ({self.replicas}) must lie within min_replicas ({low}) "
                f"and max_replicas ({high})"
            )
        return self

    @property
    def bounds(self) -> tuple[int, int]:
        low = self.replicas if self.min_replicas is None else self.min_replicas
        high = self.replicas if self.max_replicas is None else self.max_replicas
        return low, high


class Upgrade(_Section):
    """How KubeRay rolls out a change to the cluster config (see docs/kubernetes.md).

    ``NewCluster`` starts a new cluster and switches all traffic once it serves;
    ``NewClusterWithIncrementalUpgrade`` moves traffic in steps through a Gateway
    (``gateway_class_name``, ``step_size_percent`` every ``interval_s`` seconds, at most
    ``max_surge_percent`` extra capacity); ``None`` never replaces the cluster.
    """

    strategy: Literal["NewCluster", "NewClusterWithIncrementalUpgrade", "None"] = "NewCluster"
    gateway_class_name: str | None = None
    step_size_percent: int | None = Field(default=None, ge=1, le=100)
    interval_s: int | None = Field(default=None, ge=1)
    max_surge_percent: int = Field(default=100, ge=1, le=100)

    @model_validator(mode="after")
    def _incremental(self) -> Upgrade:
        options = ("gateway_class_name", "step_size_percent", "interval_s")
        if self.strategy == "NewClusterWithIncrementalUpgrade":
            missing = [name for name in options if getattr(self, name) is None]
            if missing:
                raise ValueError(f"{self.strategy} needs {', '.join(missing)}")
        elif any(getattr(self, name) is not None for name in options):
            raise ValueError(f"{', '.join(options)} apply only to NewClusterWithIncrementalUpgrade")
        return self


class KubeOptions(_Section):
    """Where and how the services run on Kubernetes: the RayService around the specs.

    Loadable from the ``kubernetes:`` section of a spec file (next to ``services:``);
    the CLI's flags override it. Example::

        options = KubeOptions(image="registry.example.com/servekit:0.1", namespace="ml",
                              workers=[{"cpu": 4, "memory": "16Gi", "max_replicas": 5}])
    """

    name: str | None = None
    namespace: str | None = Field(
        default=None, description="default: where it is applied (the kubeconfig context's)"
    )
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    service_account: str | None = None
    head: HeadGroup = Field(default_factory=HeadGroup)
    workers: list[WorkerGroup] = Field(default_factory=lambda: [WorkerGroup()])
    autoscaling: bool | None = Field(
        default=None, description="Ray's autoscaler; default: on when a group has a range"
    )
    idle_timeout_s: int = Field(default=60, ge=0)
    upgrade: Upgrade = Field(default_factory=Upgrade)
    ingress: Literal["haproxy", "python"] = "haproxy"
    http_port: int = Field(default=8000, ge=1, le=65535)
    ray_auth: Literal["token", "disabled"] = "token"
    metrics: bool = Field(default=True, description="deploy the /-/metrics hub")
    env: dict[str, str] = Field(default_factory=dict)
    env_from_secrets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _spec_error(exc, type(self)) from None

    @model_validator(mode="after")
    def _groups(self) -> KubeOptions:
        names = [group.name for group in self.workers]
        if len(set(names)) != len(names):
            raise SpecError("workers", f"group names must be unique, got {names}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> KubeOptions:
        """The ``kubernetes:`` section of a spec file (empty if none), ``overrides`` on top:
        ``None`` values are ignored, dotted keys like ``upgrade.strategy`` reach into
        sections, and a mapping (``env``) adds to the file's."""
        data = yaml.safe_load(Path(path).read_text())
        section = data.get("kubernetes") if isinstance(data, dict) else None
        if section is not None and not isinstance(section, dict):
            raise SpecError("kubernetes", f"{path}: must be a mapping of options")
        options: dict[str, Any] = dict(section or {})
        for key, value in overrides.items():
            if value is None:
                continue
            *parents, leaf = key.split(".")
            target = options
            for parent in parents:
                target = target.setdefault(parent, {})
            if isinstance(value, dict) and isinstance(target.get(leaf), dict):
                value = {**target[leaf], **value}
            target[leaf] = value
        return cls(**options)


def serve_config(specs: list[ServiceSpec], options: KubeOptions | None = None) -> dict[str, Any]:
    """The Ray Serve config (``ServeDeploySchema``) deploying ``specs``: one application
    each, plus the metrics hub unless ``options.metrics`` is off.

    Raises SpecError for a spec that cannot leave this machine (a local ``working_dir``).
    """
    options = options or KubeOptions()
    if not specs:
        raise SpecError("services", "no service to render")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise SpecError("services", f"service names must be unique, got {names}")
    applications = [_application(index, spec) for index, spec in enumerate(specs)]
    if options.metrics:
        applications.append(
            {"name": HUB_APP, "route_prefix": HUB_ROUTE, "import_path": HUB_BUILDER}
        )
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": options.http_port},
        "applications": applications,
    }


def _application(index: int, spec: ServiceSpec) -> dict[str, Any]:
    _check_portable(index, spec)
    overrides: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": spec.max_ongoing_requests or default_max_ongoing(spec),
        "user_config": {"spec": spec.model_dump(mode="json", exclude_defaults=True)},
        "health_check_period_s": spec.health_check.period_s,
        "health_check_timeout_s": spec.health_check.timeout_s,
        "graceful_shutdown_timeout_s": spec.graceful_shutdown_timeout_s,
    }
    if spec.autoscaling is not None:
        overrides["autoscaling_config"] = spec.autoscaling.model_dump()
    else:
        overrides["num_replicas"] = 1 if spec.replicas is None else spec.replicas
    return {
        "name": spec.name,
        "route_prefix": spec.route,
        "import_path": SERVICE_BUILDER,
        "args": {"spec": spec.model_dump(mode="json", exclude=LIVE_FIELDS, exclude_defaults=True)},
        "deployments": [overrides],
    }


def _check_portable(index: int, spec: ServiceSpec) -> None:
    env = spec.runtime_env
    paths = [("working_dir", env.get("working_dir"))]
    paths += [("py_modules", m) for m in env.get("py_modules") or []]
    for key, value in paths:
        if isinstance(value, str) and "://" not in value:
            raise SpecError(
                f"services[{index}].runtime_env.{key}",
                f"{value!r} is a local folder, which pods cannot see: use a remote URI "
                "(https://, s3://, gs://) or put the code into the image",
            )


def render_rayservice(specs: list[ServiceSpec], options: KubeOptions) -> dict[str, Any]:
    """A RayService manifest (``ray.io/v1``) serving ``specs`` on a cluster shaped by
    ``options``. Example::

        manifest = render_rayservice(ServiceSpec.from_yaml("iris.yaml"),
                                     KubeOptions(image="me/servekit:0.1"))

    Raises SpecError naming the option when the manifest could not work: no image, no
    name for several services, or a service whose replicas fit in no worker group.
    """
    if not options.image:
        raise SpecError(
            "kubernetes.image",
            "needed (or --image): an image with servekit installed; docs/kubernetes.md has one",
        )
    name = options.name or (specs[0].name if len(specs) == 1 else None)
    if name is None:
        raise SpecError("kubernetes.name", "needed (or --name) when a file holds several services")
    if not _NAME.match(name):
        raise SpecError("kubernetes.name", f"{name!r} is not a valid Kubernetes name (DNS label)")
    _check_fit(specs, options)
    config = serve_config(specs, options)
    autoscaling = options.autoscaling
    if autoscaling is None:
        autoscaling = any(low != high for low, high in (g.bounds for g in options.workers))
    cluster: dict[str, Any] = {
        "rayVersion": version("ray"),
        "enableInTreeAutoscaling": autoscaling,
        "headGroupSpec": {
            "rayStartParams": {} if options.head.run_replicas else {"num-cpus": "0"},
            "template": _pod(options, "ray-head", options.image, options.head, head=True),
        },
        "workerGroupSpecs": [
            {
                "groupName": group.name,
                "replicas": group.replicas,
                "minReplicas": group.bounds[0],
                "maxReplicas": group.bounds[1],
                "rayStartParams": {},
                "template": _pod(options, "ray-worker", group.image or options.image, group),
            }
            for group in options.workers
        ],
    }
    if autoscaling:
        cluster["autoscalerOptions"] = {"idleTimeoutSeconds": options.idle_timeout_s}
    if options.ray_auth == "token":
        cluster["authOptions"] = {"mode": "token"}
    upgrade: dict[str, Any] = {"type": options.upgrade.strategy}
    if options.upgrade.strategy == "NewClusterWithIncrementalUpgrade":
        upgrade["clusterUpgradeOptions"] = {
            "gatewayClassName": options.upgrade.gateway_class_name,
            "stepSizePercent": options.upgrade.step_size_percent,
            "intervalSeconds": options.upgrade.interval_s,
            "maxSurgePercent": options.upgrade.max_surge_percent,
        }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": name,
            **({"namespace": options.namespace} if options.namespace else {}),
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY, **options.labels},
            "annotations": {
                "servekit.io/services": ",".join(spec.name for spec in specs),
                "servekit.io/version": version("servekit"),
                **options.annotations,
            },
        },
        "spec": {
            "upgradeStrategy": upgrade,
            "serveConfigV2": to_yaml(config),
            "rayClusterConfig": cluster,
        },
    }


def _pod(
    options: KubeOptions,
    container: str,
    image: str,
    group: HeadGroup | WorkerGroup,
    head: bool = False,
) -> dict[str, Any]:
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1" if options.ingress == "haproxy" else "0"}
    env.update(options.env)
    resources: dict[str, Any] = {"cpu": group.cpu, "memory": group.memory}
    limits = dict(resources)
    if isinstance(group, WorkerGroup) and group.gpus:
        limits[group.gpu_resource] = str(group.gpus)
    spec: dict[str, Any] = {
        "name": container,
        "image": image,
        "resources": {"requests": resources, "limits": limits},
        "env": [{"name": key, "value": value} for key, value in sorted(env.items())],
        # Lets Ray leave the cluster cleanly before the pod goes.
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}},
    }
    if options.env_from_secrets:
        spec["envFrom"] = [{"secretRef": {"name": s}} for s in options.env_from_secrets]
    if options.image_pull_policy:
        spec["imagePullPolicy"] = options.image_pull_policy
    ports = dict(_HEAD_PORTS) if head else {}
    ports["serve"] = options.http_port
    spec["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    pod: dict[str, Any] = {"containers": [spec]}
    if options.service_account:
        pod["serviceAccountName"] = options.service_account
    return {"spec": pod}


def _check_fit(specs: list[ServiceSpec], options: KubeOptions) -> None:
    """Each service's replica must fit in some group, or Serve would wait for ever."""
    groups: list[tuple[str, float, float, int]] = [
        (g.name, _amount(g.cpu), _amount(g.memory), g.gpus) for g in options.workers
    ]
    if options.head.run_replicas:
        groups.append(("head", _amount(options.head.cpu), _amount(options.head.memory), 0))
    for index, spec in enumerate(specs):
        need = spec.resources
        fits = [
            name
            for name, cpu, memory, gpus in groups
            if need.num_cpus <= cpu and (need.memory or 0) <= memory and need.num_gpus <= gpus
        ]
        if not fits:
            offered = "; ".join(
                f"{n}: {c:g} CPU, {m / 2**30:g} GiB, {g} GPU" for n, c, m, g in groups
            )
            memory = f", {need.memory / 2**30:g} GiB" if need.memory else ""
            raise SpecError(
                f"services[{index}].resources",
                f"a replica of {spec.name!r} needs {need.num_cpus:g} CPU{memory} and "
                f"{need.num_gpus:g} GPU, more than any worker group has ({offered or 'none'}); "
                "raise a group's cpu, memory or gpus (or let the head run replicas)",
            )


_SUFFIX = {
    "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def _amount(quantity: str) -> float:
    number = re.match(r"^\d+(\.\d+)?", quantity)
    assert number is not None  # validated as a quantity
    suffix = quantity[number.end() :]
    return float(number.group()) * (_SUFFIX[suffix] if suffix else 1)


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (the embedded Serve config) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(data: Any) -> str:
    """YAML for a manifest or config, keys in the order servekit wrote them."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)
