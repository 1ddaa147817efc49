"""The schemas a RayService manifest must meet: the RayService CRD's openAPIV3Schema (from
KubeRay, in ../shared/kuberay) checked as strictly as an API server with strict field
validation does, and Ray Serve's own config schema for its serveConfigV2."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

CRD_PATH = Path(__file__).resolve().parents[2] / "shared" / "kuberay" / "ray.io_rayservices.yaml"


def crd_schema(version: str = "v1") -> dict[str, Any]:
    """The CRD's openAPIV3Schema for ``version``, made strict: an object schema that lists
    its properties (and neither preserves unknown fields nor declares a map) rejects
    unknown keys, as ``kubectl apply --validate=strict`` and field_validation=Strict do."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(found["schema"]["openAPIV3Schema"])

    def tighten(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for value in node:
                tighten(value)

    tighten(schema)
    # metadata is the API server's ObjectMeta, not spelt out in a CRD.
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


@functools.cache
def rayservice_validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(crd_schema())


def assert_serve_config_valid(config: dict[str, Any]) -> None:
    """``config`` parses as Ray Serve's ServeDeploySchema, and every key in it is one the
    schema knows (Serve's models accept unknown keys silently, so a typo would pass)."""
    from ray.serve.schema import ServeDeploySchema

    parsed = ServeDeploySchema.model_validate(config)
    _known_keys(config, parsed, "config")


def _known_keys(data: Any, model: Any, where: str) -> None:
    fields = type(model).model_fields
    for key, value in data.items():
        assert key in fields, f"{where}.{key} is not a field of {type(model).__name__}"
        parsed = getattr(model, key)
        if isinstance(value, dict) and isinstance(parsed, BaseModel):
            _known_keys(value, parsed, f"{where}.{key}")
        elif isinstance(value, list) and parsed and isinstance(parsed[0], BaseModel):
            for index, (item, sub) in enumerate(zip(value, parsed, strict=True)):
                _known_keys(item, sub, f"{where}.{key}[{index}]")
