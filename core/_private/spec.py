"""ServiceSpec: what to serve and how, as validated data loadable from YAML."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from servekit.core._private.errors import SpecError
from servekit.core._private.sources import known_schemes

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|B)?\s*$")
_UNITS = {
    None: 1,
    "B": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _size(value: Any) -> Any:
    """``512Mi``, ``2Gi``, ``1e9``-style strings as bytes; anything else as it is."""
    if isinstance(value, str):
        match = _MEMORY.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size such as 512Mi, 2Gi or 1000000000")
        return int(float(match.group(1)) * _UNITS[match.group(2)])
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Batching(_Section):
    """Dynamic batching: up to ``max_batch_size`` requests run together.

    A request that arrives while nothing else is queued or arriving runs at once;
    ``max_wait_ms`` only bounds how long a batch waits for requests already in flight.
    ``max_batch_size: 1`` turns batching off.
    """

    max_batch_size: int = Field(default=1, ge=1, le=4096)
    max_wait_ms: float = Field(default=5.0, ge=0, le=60_000)


class Multiplexing(_Section):
    """Several models (or versions) per deployment, loaded on demand, LRU-evicted per replica."""

    max_models_per_replica: int = Field(default=3, ge=1)
    default_model_id: str | None = None


class Autoscaling(_Section):
    """Replica count follows load: Ray Serve's autoscaler on ongoing requests per replica."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is larger than "
                f"max_replicas ({self.max_replicas})"
            )
        return self


class Resources(_Section):
    """What one replica reserves. ``threads`` caps the model's math threads
    (default: ``num_cpus`` rounded up, at least 1)."""

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory: int | None = Field(default=None, description="bytes, or a string such as '2Gi'")
    threads: int | None = Field(default=None, ge=1)

    _memory = field_validator("memory", mode="before")(lambda v: _size(v))

    @field_validator("num_gpus")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and not float(value).is_integer():
            raise ValueError("more than one GPU must be a whole number")
        return value

    def thread_count(self) -> int:
        return self.threads or max(1, math.ceil(self.num_cpus))


class HealthCheck(_Section):
    """How often Serve asks a replica whether it is healthy, and how long it waits."""

    period_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)


class Limits(_Section):
    """What a replica accepts from a client before any model code runs: the largest body
    (bytes, or a size such as ``16Mi``; larger gets 413) and how long the whole body may
    take to arrive (longer gets 408, and the replica's slot is free again)."""

    max_body: int = Field(default=16 * 2**20, ge=1)
    body_timeout_s: float = Field(default=30.0, gt=0)

    _max_body = field_validator("max_body", mode="before")(lambda v: _size(v))


class Auth(_Section):
    """Who may call a service: a bearer token (``Authorization: Bearer <token>``, what
    OpenAI clients send) or an API key in a header. The tokens come from an environment
    variable and/or a file (one or more tokens, separated by newlines, spaces or commas;
    ``#`` starts a comment line) that the replica reads; the spec never holds them.
    """

    type: Literal["bearer", "api_key"] = "bearer"
    header: str = Field(default="x-api-key", description="the API key's header (api_key)")
    tokens_env: str | None = None
    tokens_file: str | None = None

    @model_validator(mode="after")
    def _source(self) -> Auth:
        if not self.tokens_env and not self.tokens_file:
            raise ValueError("name where the tokens are: tokens_env, tokens_file or both")
        return self


class ServiceSpec(BaseModel):
    """One service: a model source, how many replicas, and how requests reach it.

    Example::

        spec = ServiceSpec(name="echo", source="python:my_models:Echo",
                           batching={"max_batch_size": 16, "max_wait_ms": 5})
        spec = ServiceSpec.from_yaml("echo.yaml")

    Raises :class:`SpecError` naming the field (and the allowed values) on bad input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str
    route_prefix: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    replicas: int | None = Field(default=None, ge=1)
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    batching: Batching = Field(default_factory=Batching)
    multiplexing: Multiplexing | None = None
    resources: Resources = Field(default_factory=Resources)
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    user_config: dict[str, Any] = Field(default_factory=dict)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    graceful_shutdown_timeout_s: float = Field(default=20.0, ge=0)
    access_log: bool = Field(
        default=False, description="log every request in the replica (costs throughput)"
    )
    auth: Auth | None = None
    limits: Limits = Field(default_factory=Limits)
    kind: Literal["service"] = "service"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _spec_error(exc, type(self)) from None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid name: use 1-63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit"
            )
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        scheme, sep, rest = value.partition(":")
        schemes = known_schemes()
        if not sep or not rest:
            raise ValueError(f"{value!r} has no scheme; write it as <scheme>:<target>")
        if scheme not in schemes:
            raise SpecError("source", f"unknown scheme {scheme!r}", allowed=sorted(schemes))
        return value

    @field_validator("route_prefix")
    @classmethod
    def _route(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or (value != "/" and value.endswith("/")):
            raise ValueError(f"{value!r} must start with '/' and not end with '/' (or be '/')")
        return value

    @model_validator(mode="after")
    def _scale(self) -> ServiceSpec:
        if self.replicas is not None and self.autoscaling is not None:
            raise SpecError("replicas", "set either replicas or autoscaling, not both")
        return self

    @property
    def scheme(self) -> str:
        return self.source.partition(":")[0]

    @property
    def target(self) -> str:
        return self.source.partition(":")[2]

    @property
    def route(self) -> str:
        """The HTTP route prefix: ``route_prefix`` or ``/<name>``."""
        return self.route_prefix or f"/{self.name}"

    @classmethod
    def from_yaml(cls, path: str | Path) -> list[ServiceSpec]:
        """Load the specs in a YAML file: one mapping, a list, or ``{services: [...]}``.

        Relative ``runtime_env`` paths (``working_dir``, ``py_modules``) are resolved
        against the file's folder, so a spec works from any current directory.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError("", f"cannot read {path}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError("", f"{path} is not valid YAML: {exc}") from None
        if isinstance(data, dict) and "services" in data:
            data = data["services"]
        items = data if isinstance(data, list) else [data]
        specs = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise SpecError(
                    f"services[{index}]" if len(items) > 1 else "",
                    f"{path} must hold a mapping of spec fields, got {type(item).__name__}",
                )
            item = dict(item)
            if isinstance(item.get("runtime_env"), dict):
                item["runtime_env"] = _resolve_paths(item["runtime_env"], path.parent)
            specs.append(cls(**item))
        return specs


def _resolve_paths(runtime_env: dict[str, Any], base: Path) -> dict[str, Any]:
    def resolve(value: Any) -> Any:
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            return str((base / value).resolve())
        return value

    env = dict(runtime_env)
    if "working_dir" in env:
        env["working_dir"] = resolve(env["working_dir"])
    if isinstance(env.get("py_modules"), list):
        env["py_modules"] = [resolve(m) for m in env["py_modules"]]
    return env


def _spec_error(exc: ValidationError, model: type[BaseModel]) -> SpecError:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    field = ".".join(loc)
    ctx = error.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, SpecError):
        return SpecError(inner.field or field, inner.problem, inner.allowed)
    if error["type"] == "extra_forbidden":
        return SpecError(field, "unknown field", allowed=_fields_at(model, loc[:-1]))
    message = str(error["msg"]).removeprefix("Value error, ")
    return SpecError(field, message)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if a is not None]
        nested = [a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def parse_options(
    model: type[OptionsT], values: Mapping[str, Any] | None, *, prefix: str = ""
) -> OptionsT:
    """Validate an adapter's options (string values from a CLI included) against its
    pydantic model, which should forbid extra keys. The first problem becomes a SpecError
    naming the option, and for an unknown one the allowed names. Example::

        config = parse_options(TargetConfig, {"max_batch_size": "8"}, prefix="-C ")
    """
    try:
        return model(**dict(values or {}))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = prefix + ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            raise SpecError(key, "unknown key", allowed=sorted(model.model_fields)) from None
        raise SpecError(key, str(error["msg"]).removeprefix("Value error, ")) from None


# Spec fields Serve or reconfigure() apply to running replicas; the rest restart them.
LIVE_FIELDS = {
    "batching",
    "user_config",
    "replicas",
    "autoscaling",
    "max_ongoing_requests",
    "health_check",
    "graceful_shutdown_timeout_s",
    "route_prefix",
    "auth",
    "limits",
}


def default_max_ongoing(spec: ServiceSpec) -> int:
    """Enough concurrency per replica to fill two batches (and never below 32)."""
    return max(32, 2 * spec.batching.max_batch_size)
