"""ServiceSpec: YAML in, validated data out, and errors that name the field."""

from __future__ import annotations

import pytest
from servekit.core import ServiceSpec, SpecError


def write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_yaml_spec_loads_with_defaults(tmp_path):
    (spec,) = ServiceSpec.from_yaml(
        write(
            tmp_path,
            """
name: iris
source: python:models:Iris
batching: {max_batch_size: 32, max_wait_ms: 5}
resources: {num_cpus: 2, num_gpus: 0.25, memory: 2Gi}
""",
        )
    )
    assert spec.route == "/iris"
    assert spec.batching.max_batch_size == 32
    assert spec.resources.memory == 2 * 2**30
    assert spec.resources.num_gpus == 0.25
    assert spec.resources.thread_count() == 2
    assert spec.multiplexing is None


def test_yaml_with_several_services_and_relative_paths(tmp_path):
    (tmp_path / "code").mkdir()
    specs = ServiceSpec.from_yaml(
        write(
            tmp_path,
            """
services:
  - name: a
    source: python:m:A
    runtime_env: {working_dir: code}
  - name: b
    source: python:m:B
    route_prefix: /
""",
        )
    )
    assert [s.name for s in specs] == ["a", "b"]
    assert specs[0].runtime_env["working_dir"] == str((tmp_path / "code").resolve())
    assert specs[1].route == "/"


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        (
            "name: a\nsource: python:m:A\nbatching: {max_batch: 4}\n",
            "batching.max_batch",
            "allowed: max_batch_size, max_wait_ms",
        ),
        ("name: a\nsource: pythn:m:A\n", "source", "allowed: langchain, llm, mlflow, python"),
        ("name: Bad_Name\nsource: python:m:A\n", "name", "lowercase"),
        ("name: a\nsource: python:m:A\nresources: {memory: lots}\n", "resources.memory", "2Gi"),
        (
            "name: a\nsource: python:m:A\nreplicas: 2\nautoscaling: {max_replicas: 3}\n",
            "replicas",
            "not both",
        ),
        (
            "name: a\nsource: python:m:A\nautoscaling: {min_replicas: 4, max_replicas: 2}\n",
            "autoscaling",
            "larger than max_replicas",
        ),
        ("name: a\nsource: python:m:A\nroute_prefix: api/\n", "route_prefix", "start with '/'"),
        ("name: a\n", "source", "required"),
        (
            "name: a\nsource: python:m:A\nreplica: 2\n",
            "replica",
            "allowed: access_log, auth, autoscaling",
        ),
        (
            "name: a\nsource: python:m:A\nresources: {num_gpus: 1.5}\n",
            "resources.num_gpus",
            "whole number",
        ),
    ],
)
def test_bad_spec_names_the_field(tmp_path, text, field, fragment):
    with pytest.raises(SpecError) as info:
        ServiceSpec.from_yaml(write(tmp_path, text))
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert fragment in str(info.value)


def test_unreadable_or_invalid_yaml(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        ServiceSpec.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        ServiceSpec.from_yaml(write(tmp_path, "name: [unclosed"))
    with pytest.raises(SpecError, match="mapping of spec fields"):
        ServiceSpec.from_yaml(write(tmp_path, "- just\n- strings\n"))
