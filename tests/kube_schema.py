"""The schemas a RayService manifest must meet: the RayService CRD's openAPIV3Schema (from
KubeRay, in tests/kuberay) checked as strictly as an API server with strict field
validation does, and Ray Serve's own config schema for its serveConfigV2."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

CRD_PATH = Path(__file__).parent / "kuberay" / "ray.io_rayservices.yaml"


def crd_schema(version: str = "v1") -> dict[str, Any]:
    """The CRD's openAPIV3Schema for ``version`` as JSON Schema, made strict: an object
    schema that lists its properties (and does not preserve unknown fields) rejects
    unknown keys, as ``kubectl apply --validate=strict`` and field_validation=Strict do.
    ``metadata`` is the API server's ObjectMeta, which a CRD does not spell out."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 18k lines
    crd = yaml.load(CRD_PATH.read_text(), loader)
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert "status" in found.get("subresources", {}), "status is expected as a subresource"
    schema: dict[str, Any] = _strict(found["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    kept = {
        k: v for k, v in node.items() if k != "properties" and not k.startswith("x-kubernetes-")
    }
    out = {k: _strict(v) for k, v in kept.items()}
    if "properties" in node:
        out["properties"] = {name: _strict(s) for name, s in node["properties"].items()}
        if "additionalProperties" not in node:
            out["additionalProperties"] = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


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
