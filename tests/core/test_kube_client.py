"""RayServiceClient and `servekit k8s` against an HTTP-level fake Kubernetes API server
(tests/kube_fake.py) that validates objects against the RayService CRD and moves their
status over time the way KubeRay does. No Ray is involved."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kubernetes", reason="needs the k8s extra")

from servekit.core import (
    AccessDenied,
    ClusterUnavailable,
    DeployError,
    KubeOptions,
    NotFound,
    RayServiceClient,
    ServiceSpec,
    SpecError,
    Timeout,
    render_rayservice,
)

from tests.conftest import SERVEKIT
from tests.kube_fake import FakeKubeAPI

pytestmark = pytest.mark.timeout(120)
IMAGE = "registry.example.com/servekit:0.1"
SPECS = [
    ServiceSpec(name="iris", source="mlflow:models:/iris/1"),
    ServiceSpec(name="qa", source="langchain:app.chains:qa"),
]


def _manifest(name: str = "models", **options) -> dict:
    options.setdefault("namespace", "ml")
    return render_rayservice(SPECS, KubeOptions(name=name, image=IMAGE, **options))


@pytest.fixture
def api(kube_api):
    return kube_api


@pytest.fixture
def client(api):
    return RayServiceClient("ml", kubeconfig=str(api.kubeconfig_path))


def test_apply_creates_and_wait_follows_it_to_ready(api, client):
    lines: list[str] = []
    created = client.apply(_manifest(), progress=lines.append)
    assert created["metadata"]["generation"] == 1
    assert lines == ["created RayService ml/models"]
    state = client.wait("models", timeout_s=30, progress=lines.append, poll_s=0.05)
    assert state.settled and state.ready and not state.upgrading
    assert set(state.applications) == {"iris", "qa", "servekit-metrics"}
    assert {app["status"] for app in state.applications.values()} == {"RUNNING"}
    # Progress showed the way there, not just the end.
    assert any("Ready=False" in line for line in lines), lines
    assert any("DEPLOYING" in line for line in lines), lines
    assert any("Ready=True" in line for line in lines), lines
    create = [r for r in api.requests if r["method"] == "POST"]
    assert len(create) == 1 and create[0]["query"]["fieldValidation"] == "Strict"


def test_reapplying_the_same_spec_changes_nothing_and_keeps_others_labels(api, client):
    client.apply(_manifest())
    client.wait("models", timeout_s=30, poll_s=0.05)
    # Someone else labels the object; servekit's next apply keeps the label.
    raw = client._api  # the same CustomObjectsApi the client uses
    raw.patch_namespaced_custom_object(
        "ray.io", "v1", "ml", "rayservices", "models", {"metadata": {"labels": {"owner": "ops"}}}
    )
    lines: list[str] = []
    stored = client.apply(_manifest(), progress=lines.append)
    assert lines == ["unchanged: RayService ml/models"]
    assert stored["metadata"]["generation"] == 1
    assert stored["metadata"]["labels"]["owner"] == "ops"
    assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "servekit"


def test_a_cluster_change_upgrades_to_a_new_cluster(api, client):
    client.apply(_manifest())
    before = client.wait("models", timeout_s=30, poll_s=0.05)
    lines: list[str] = []
    client.apply(_manifest(workers=[{"cpu": "4", "memory": "16Gi"}]), progress=lines.append)
    after = client.wait("models", timeout_s=30, progress=lines.append, poll_s=0.05)
    assert lines[0] == "updated: RayService ml/models"
    assert any("UpgradeInProgress=True" in line for line in lines), lines
    assert any("on pending cluster" in line for line in lines), lines
    assert after.generation == 2 and after.observed_generation == 2
    assert after.active_cluster != before.active_cluster
    assert not after.pending_cluster


def test_a_services_only_change_redeploys_in_place(api, client):
    client.apply(_manifest())
    before = client.wait("models", timeout_s=30, poll_s=0.05)
    changed = [SPECS[0], ServiceSpec(name="qa", source="langchain:app.chains:qa2")]
    lines: list[str] = []
    client.apply(
        render_rayservice(changed, KubeOptions(name="models", image=IMAGE, namespace="ml"))
    )
    after = client.wait("models", timeout_s=30, progress=lines.append, poll_s=0.05)
    assert after.active_cluster == before.active_cluster
    assert any("qa on active cluster" in line and "DEPLOYING" in line for line in lines), lines


def test_a_failing_application_fails_the_wait_with_serves_message(api, client):
    api.fail_apps = {"qa": "ModuleNotFoundError: No module named 'app'"}
    client.apply(_manifest())
    with pytest.raises(DeployError, match="No module named 'app'") as caught:
        client.wait("models", timeout_s=30, poll_s=0.05)
    assert caught.value.service == "qa"


def test_wait_times_out_with_the_last_state(api, client):
    api.step_s = 5.0  # KubeRay is slow today
    client.apply(_manifest())
    with pytest.raises(Timeout, match=r"not ready after 0.5s; last state: .*Ready=False"):
        client.wait("models", timeout_s=0.5, poll_s=0.05)


def test_delete_waits_until_gone(api, client):
    api.delete_delay_s = 0.5
    client.apply(_manifest())
    started = time.monotonic()
    client.delete("models")
    assert time.monotonic() - started >= 0.4  # it waited for the finalizer
    with pytest.raises(NotFound, match="ml/models not found"):
        client.get("models")
    with pytest.raises(NotFound):
        client.delete("models")
    assert client.list() == []


# -- errors ----------------------------------------------------------------------------


def test_missing_crd_says_to_install_kuberay(api, client):
    api.crd_installed = False
    with pytest.raises(ClusterUnavailable, match=r"CRD .* is not installed.*KubeRay"):
        client.apply(_manifest())
    with pytest.raises(ClusterUnavailable, match="not installed"):
        client.status("models")


def test_denied_access_names_the_verb_and_the_permissions_needed(api, client):
    api.denied_verbs = {"create"}
    with pytest.raises(AccessDenied) as caught:
        client.apply(_manifest())
    message = str(caught.value)
    assert "not allowed to create RayService ml/models" in message
    assert "cannot create resource" in message  # the API server's own reason
    assert "rayservices.ray.io in namespace ml" in message


def test_bad_credentials_and_unreachable_servers_are_clear(api, tmp_path):
    config = yaml.safe_load(api.kubeconfig_path.read_text())
    config["users"][0]["user"]["token"] = "wrong"
    wrong = tmp_path / "wrong"
    wrong.write_text(yaml.safe_dump(config))
    with pytest.raises(AccessDenied, match="refused the credentials"):
        RayServiceClient("ml", kubeconfig=str(wrong)).list()

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    gone = tmp_path / "gone"
    gone.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match=f"cannot reach the Kubernetes API at .*:{port}"):
        RayServiceClient("ml", kubeconfig=str(gone)).list()
    assert time.monotonic() - started < 15  # no long retry loop

    with pytest.raises(ClusterUnavailable, match="no Kubernetes configuration"):
        RayServiceClient("ml", kubeconfig=str(tmp_path / "missing"))


def test_the_api_servers_validation_errors_name_the_field(api, client):
    manifest = _manifest()
    manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replica"] = 2
    with pytest.raises(SpecError, match=r"manifest: the API server rejected it: .*replica"):
        client.apply(manifest)
    with pytest.raises(SpecError, match="expected kind RayService"):
        client.apply({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "x"}})


def test_namespace_comes_from_the_kubeconfig_context(api):
    client = RayServiceClient(kubeconfig=str(api.kubeconfig_path))
    assert client.namespace == "default"  # the fake's context namespace
    client.apply(_manifest(namespace=None))  # rendered without a namespace
    assert ("default", "models") in api.objects
    with pytest.raises(SpecError, match="manifest is for namespace 'ml'"):
        client.apply(_manifest(namespace="ml"))


# -- the CLI ---------------------------------------------------------------------------


def _k8s(api: FakeKubeAPI, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(api.kubeconfig_path)}
    return subprocess.run(
        [SERVEKIT, "k8s", *args], capture_output=True, text=True, timeout=90, env=env, cwd=cwd
    )


def test_cli_apply_status_wait_delete(api, tmp_path):
    (tmp_path / "services.yaml").write_text(
        yaml.safe_dump(
            {
                "kubernetes": {"image": IMAGE, "namespace": "ml", "name": "models"},
                "services": [spec.model_dump(exclude_defaults=True) for spec in SPECS],
            }
        )
    )
    applied = _k8s(api, "apply", "services.yaml", "--wait", "--timeout", "60", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "created RayService ml/models" in applied.stderr
    assert "Ready=True" in applied.stderr  # progress lines
    assert "models serves generation 1" in applied.stdout

    status = _k8s(api, "status", "models", "-n", "ml", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    assert found["settled"] and found["applications"]["iris"]["status"] == "RUNNING"
    table = _k8s(api, "status", "models", "-n", "ml", cwd=tmp_path)
    assert "Ready=True" in table.stdout and "iris" in table.stdout

    # A rendered manifest applies as well as the spec file it came from.
    rendered = _k8s(
        api, "render", "services.yaml", "--image", IMAGE + "-2", "-o", "rs.yaml", cwd=tmp_path
    )
    assert rendered.returncode == 0, rendered.stderr
    again = _k8s(api, "apply", "rs.yaml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "updated: RayService ml/models" in again.stderr
    waited = _k8s(api, "wait", "models", "-n", "ml", "--timeout", "60", cwd=tmp_path)
    assert waited.returncode == 0, waited.stderr
    assert "models serves generation 2" in waited.stdout
    assert api.objects[("ml", "models")]["status"]["observedGeneration"] == 2

    deleted = _k8s(api, "delete", "models", "-n", "ml", cwd=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert ("ml", "models") not in api.objects
    missing = _k8s(api, "status", "models", "-n", "ml", cwd=tmp_path)
    assert missing.returncode == 1
    assert "RayService ml/models not found" in missing.stderr


def test_cli_errors_are_one_line_without_a_traceback(api, tmp_path):
    api.crd_installed = False
    failed = _k8s(api, "status", "models", cwd=tmp_path)
    assert failed.returncode == 1
    assert "install the KubeRay operator" in failed.stderr
    assert "Traceback" not in failed.stderr
    as_json = _k8s(api, "status", "models", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout)["error"] == "ClusterUnavailable"
