"""Specs as KubeRay RayServices: every rendered manifest validates against the RayService
CRD's own schema, its serveConfigV2 against Ray Serve's config schema, and the Serve config
deploys on a real Ray exactly as KubeRay would hand it to Serve."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytest.importorskip("jsonschema", reason="needs the k8s extra")

from servekit.core import (
    KubeOptions,
    NotFound,
    ServiceSpec,
    SpecError,
    render_rayservice,
    serve_config,
)

from tests.conftest import SERVEKIT
from tests.kube_schema import assert_serve_config_valid, rayservice_validator

IMAGE = "registry.example.com/servekit:0.1"


def _specs(**fields) -> list[ServiceSpec]:
    return [
        ServiceSpec(name="iris", source="mlflow:models:/iris/1", **fields),
        ServiceSpec(
            name="qa",
            source="langchain:app.chains:qa",
            route_prefix="/chains/qa",
            autoscaling={"min_replicas": 1, "max_replicas": 6},
            resources={"num_cpus": 2, "num_gpus": 0.5, "memory": "4Gi"},
        ),
    ]


def _with(spec: ServiceSpec, **fields) -> ServiceSpec:
    return ServiceSpec(**{**spec.model_dump(), **fields})


CASES = {
    "one service, defaults": ([ServiceSpec(name="echo", source="python:m:Echo")], {}),
    "gpu group, autoscaling, two services": (
        _specs(batching={"max_batch_size": 32, "max_wait_ms": 5}, replicas=3),
        {
            "name": "models",
            "namespace": "ml",
            "workers": [
                {"name": "cpu", "cpu": 4, "memory": "16Gi", "min_replicas": 1, "max_replicas": 5},
                {
                    "name": "gpu",
                    "cpu": "8",
                    "memory": "32Gi",
                    "gpus": 1,
                    "replicas": 0,
                    "max_replicas": 2,
                },
            ],
            "idle_timeout_s": 120,
        },
    ),
    "incremental upgrade": (
        [ServiceSpec(name="echo", source="python:m:Echo")],
        {
            "upgrade": {
                "strategy": "NewClusterWithIncrementalUpgrade",
                "gateway_class_name": "istio",
                "step_size_percent": 20,
                "interval_s": 30,
                "max_surge_percent": 50,
            }
        },
    ),
    "python ingress, env, secrets, no auth, no hub": (
        [ServiceSpec(name="echo", source="python:m:Echo", runtime_env={"pip": ["numpy"]})],
        {
            "ingress": "python",
            "env": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
            "env_from_secrets": ["mlflow-credentials"],
            "service_account": "serving",
            "image_pull_policy": "Always",
            "ray_auth": "disabled",
            "metrics": False,
            "head": {"cpu": "2", "memory": "8Gi", "run_replicas": True},
            "labels": {"team": "ml"},
        },
    ),
    "no upgrades": (
        [ServiceSpec(name="echo", source="python:m:Echo")],
        {"upgrade": {"strategy": "None"}},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rendered_manifest_validates_against_the_crd_and_serve_schema(case):
    specs, options = CASES[case]
    manifest = render_rayservice(specs, KubeOptions(image=IMAGE, **options))
    errors = sorted(rayservice_validator().iter_errors(manifest), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert_serve_config_valid(config)
    apps = {app["name"]: app for app in config["applications"]}
    for spec in specs:
        app = apps[spec.name]
        assert app["route_prefix"] == spec.route
        # What the replicas receive rebuilds the very spec that was rendered.
        assert ServiceSpec(**app["deployments"][0]["user_config"]["spec"]) == spec
    assert ("servekit-metrics" in apps) == options.get("metrics", True)


def test_the_schema_check_catches_a_misspelt_field():
    manifest = render_rayservice(
        CASES["incremental upgrade"][0], KubeOptions(image=IMAGE, **CASES["incremental upgrade"][1])
    )
    options = manifest["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]
    options["stepSizePercentage"] = options.pop("stepSizePercent")
    errors = list(rayservice_validator().iter_errors(manifest))
    assert any("stepSizePercentage" in e.message for e in errors), errors
    bad = serve_config(CASES["one service, defaults"][0])
    bad["applications"][0]["deployments"][0]["num_replica"] = 2
    with pytest.raises(AssertionError, match="num_replica"):
        assert_serve_config_valid(bad)


def test_cluster_options_reach_the_manifest():
    specs, options = CASES["gpu group, autoscaling, two services"]
    manifest = render_rayservice(specs, KubeOptions(image=IMAGE, **options))
    cluster = manifest["spec"]["rayClusterConfig"]
    assert manifest["metadata"]["namespace"] == "ml"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas there
    gpu = cluster["workerGroupSpecs"][1]
    assert (gpu["replicas"], gpu["minReplicas"], gpu["maxReplicas"]) == (0, 0, 2)
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"] == IMAGE
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # the ingress servekit uses locally
    assert manifest["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_live_fields_go_to_deployment_overrides_not_to_builder_args():
    # Serve restarts every replica of an app whose args change, so a new batch size or
    # replica count must only touch the deployment overrides, as a local update does.
    base = ServiceSpec(name="echo", source="python:m:Echo", options={"greeting": "hi"})
    live = _with(base, batching={"max_batch_size": 16}, replicas=4)
    restart = _with(base, options={"greeting": "ho"})
    (a,), (b,), (c,) = (
        serve_config([s], KubeOptions(metrics=False))["applications"] for s in (base, live, restart)
    )
    assert a["args"] == b["args"]
    assert b["deployments"][0]["num_replicas"] == 4
    assert b["deployments"][0]["user_config"]["spec"]["batching"]["max_batch_size"] == 16
    assert a["args"] != c["args"]


@pytest.mark.parametrize(
    ("specs", "options", "field", "words"),
    [
        (
            [ServiceSpec(name="e", source="python:m:E")],
            {"image": None},
            "kubernetes.image",
            "--image",
        ),
        (_specs(), {}, "kubernetes.name", "--name"),
        (
            [
                ServiceSpec(
                    name="e", source="python:m:E", runtime_env={"working_dir": "/home/me/app"}
                )
            ],
            {},
            "services[0].runtime_env.working_dir",
            "local folder",
        ),
        (
            [ServiceSpec(name="e", source="python:m:E", resources={"num_cpus": 4})],
            {},
            "services[0].resources",
            "needs 4 CPU",
        ),
        (
            [ServiceSpec(name="e", source="python:m:E", resources={"num_gpus": 1})],
            {},
            "services[0].resources",
            "1 GPU",
        ),
    ],
)
def test_manifests_that_could_not_work_are_refused(specs, options, field, words):
    with pytest.raises(SpecError) as caught:
        render_rayservice(specs, KubeOptions(**{"image": IMAGE, **options}))
    assert caught.value.field == field
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("options", "field", "words"),
    [
        (
            {"upgrade": {"strategy": "NewClusterWithIncrementalUpgrade"}},
            "upgrade",
            "gateway_class_name",
        ),
        ({"upgrade": {"strategy": "Rolling"}}, "upgrade.strategy", "NewCluster"),
        ({"workers": [{"cpu": "lots"}]}, "workers.0.cpu", "quantity"),
        ({"workers": [{"name": "a"}, {"name": "a"}]}, "workers", "unique"),
        ({"workers": [{"replicas": 5, "max_replicas": 2}]}, "workers.0", "max_replicas"),
        ({"wokers": []}, "wokers", "workers"),
    ],
)
def test_bad_options_name_the_option(options, field, words):
    with pytest.raises(SpecError) as caught:
        KubeOptions(**options)
    assert caught.value.field == field
    assert words in str(caught.value)


# -- the CLI -------------------------------------------------------------------------


def _servekit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SERVEKIT, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_cli_render_merges_the_file_section_and_flags(tmp_path):
    (tmp_path / "services.yaml").write_text(
        yaml.safe_dump(
            {
                "kubernetes": {
                    "image": IMAGE,
                    "namespace": "ml",
                    "env": {"A": "1"},
                    "workers": [{"cpu": 4, "memory": "16Gi"}],
                },
                "services": [{"name": "iris", "source": "mlflow:models:/iris/1"}],
            }
        )
    )
    done = _servekit(
        "k8s",
        "render",
        "services.yaml",
        "-o",
        "rs.yaml",
        "--max-workers",
        "3",
        "--env",
        "B=2",
        "--upgrade",
        "NewClusterWithIncrementalUpgrade",
        "--gateway-class",
        "istio",
        "--step-size",
        "25",
        "--interval",
        "60",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load((tmp_path / "rs.yaml").read_text())
    assert not list(rayservice_validator().iter_errors(manifest))
    worker = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (
        worker["maxReplicas"],
        worker["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
    ) == (3, "4")
    env = {e["name"]: e["value"] for e in worker["template"]["spec"]["containers"][0]["env"]}
    assert (env["A"], env["B"]) == ("1", "2")
    assert manifest["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]["stepSizePercent"] == 25
    # The embedded Serve config is a readable block, not an escaped one-liner.
    assert "serveConfigV2: |" in (tmp_path / "rs.yaml").read_text()

    serve = _servekit("k8s", "render", "services.yaml", "--serve-config", "--json", cwd=tmp_path)
    assert serve.returncode == 0, serve.stderr
    assert_serve_config_valid(json.loads(serve.stdout))


def test_cli_render_errors_name_the_option(tmp_path):
    (tmp_path / "s.yaml").write_text("name: iris\nsource: mlflow:models:/iris/1\n")
    missing = _servekit("k8s", "render", "s.yaml", cwd=tmp_path)
    assert missing.returncode == 1
    assert "kubernetes.image" in missing.stderr and "--image" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = _servekit(
        "k8s", "render", "s.yaml", "--image", IMAGE, "--upgrade", "Rolling", cwd=tmp_path
    )
    assert bad.returncode == 2
    assert "NewClusterWithIncrementalUpgrade" in bad.stderr
    quantity = _servekit(
        "k8s", "render", "s.yaml", "--image", IMAGE, "--worker-cpu", "two", cwd=tmp_path
    )
    assert quantity.returncode == 1
    assert "workers.0.cpu" in quantity.stderr


# -- the Serve config on a real Ray ----------------------------------------------------


@pytest.mark.timeout(300)
def test_serve_config_deploys_on_ray_and_updates_in_place(runtime, sample_spec):
    """The serveConfigV2 goes to Serve's declarative API (what KubeRay calls through the
    dashboard): the app serves, and a new batch size reaches the same replica."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema
    from servekit.core._private.runtime import upload_local_dirs

    client = _get_global_client()
    spec = sample_spec("k8s-echo", "Echo", options={"greeting": "from-config"})
    # Pods cannot see local folders: ship the sample models as an uploaded package.
    spec = _with(spec, runtime_env=upload_local_dirs(dict(spec.runtime_env)))

    def deploy(current: ServiceSpec) -> None:
        config = serve_config([current], KubeOptions(metrics=False))
        client.deploy_apps(ServeDeploySchema.model_validate(config))

    def answer() -> dict:
        deadline = time.monotonic() + 240
        while True:
            assert time.monotonic() < deadline, "k8s-echo never answered"
            try:
                status = runtime.status("k8s-echo")
            except NotFound:  # Serve is still building it
                time.sleep(1)
                continue
            if status.status == "RUNNING":
                reply = httpx.post(runtime.url("k8s-echo"), json={"x": 1}, timeout=30)
                if reply.status_code == 200:
                    return reply.json()
            assert status.status != "DEPLOY_FAILED", status.message
            assert time.monotonic() < deadline, status
            time.sleep(1)

    try:
        deploy(spec)
        first = answer()
        assert first["greeting"] == "from-config"
        assert runtime.spec("k8s-echo") == spec
        deploy(_with(spec, batching={"max_batch_size": 4, "max_wait_ms": 2}))
        deadline = time.monotonic() + 60
        while runtime.spec("k8s-echo").batching.max_batch_size != 4:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert answer()["pid"] == first["pid"]  # reconfigured, not restarted
    finally:
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": []}))
        deadline = time.monotonic() + 60
        while "k8s-echo" in {s.name for s in runtime.list()} and time.monotonic() < deadline:
            time.sleep(0.5)


def test_the_example_in_the_docs_is_what_render_writes(tmp_path):
    """docs/kubernetes.md shows a spec file and 'the manifest render writes' from it."""
    text = (Path(__file__).parents[2] / "docs" / "kubernetes.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    (spec_file,) = [b for b in blocks if isinstance(b, dict) and "services" in b]
    (shown,) = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "RayService"]
    path = tmp_path / "services.yaml"
    path.write_text(yaml.safe_dump(spec_file))
    rendered = render_rayservice(ServiceSpec.from_yaml(path), KubeOptions.from_yaml(path))
    assert not list(rayservice_validator().iter_errors(shown))
    assert shown == json.loads(json.dumps(rendered))
