"""The ``-C key=value`` options of the ``serve`` target, as a typed schema."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from servekit.core import SpecError, parse_options


class TargetConfig(BaseModel):
    """Every ``-C`` key the ``serve`` target accepts. Values arrive as strings from the
    CLI and are converted here; an unknown key or a bad value raises SpecError."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(default=None, ge=1, description="fixed replica count")
    min_replicas: int | None = Field(default=None, ge=0, description="autoscaling lower bound")
    max_replicas: int | None = Field(default=None, ge=1, description="autoscaling upper bound")
    target_ongoing_requests: float | None = Field(
        default=None, gt=0, description="autoscaling target per replica"
    )
    max_batch_size: int = Field(default=32, ge=1, description="1 turns batching off")
    batch_wait_ms: float = Field(default=5.0, ge=0, description="longest wait to fill a batch")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs per replica")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica, fractions allowed")
    memory: str | None = Field(default=None, description="memory per replica, e.g. 2Gi")
    max_models_per_replica: int = Field(default=3, ge=1, description="versions kept loaded")
    route_prefix: str | None = Field(default=None, description="HTTP prefix, default /<name>")
    env_manager: Literal["local", "virtualenv", "uv"] = Field(
        default="local", description="where the model's requirements come from"
    )
    engine: Literal["pyfunc", "vllm"] = Field(
        default="pyfunc", description="vllm: a transformers-flavor LLM served by vLLM"
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments, JSON (engine=vllm)"
    )
    timeout_s: float = Field(default=600.0, gt=0, description="how long create/update wait")
    blocking: bool = Field(default=True, description="wait until ready (false: return at once)")

    @field_validator("engine_args", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):  # from the CLI: -C engine_args='{"max_model_len": 512}'
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError("must be a JSON object, e.g. '{\"max_model_len\": 512}'") from None
        return value

    @classmethod
    def parse(cls, config: dict[str, Any] | None) -> TargetConfig:
        return parse_options(cls, config, prefix="-C ")

    def autoscaling(self) -> dict[str, Any] | None:
        keys = ("min_replicas", "max_replicas", "target_ongoing_requests")
        chosen = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if not chosen:
            return None
        if self.num_replicas is not None:
            raise SpecError(
                "-C num_replicas", "set num_replicas or min/max_replicas (autoscaling), not both"
            )
        chosen.setdefault("max_replicas", max(chosen.get("min_replicas", 1), 2))
        return chosen


def describe_keys() -> str:
    lines = []
    for name, field in TargetConfig.model_fields.items():
        default = field.default if field.default is not None else "-"
        lines.append(f"  {name:<24} {field.description} (default: {default})")
    return "\n".join(lines)
