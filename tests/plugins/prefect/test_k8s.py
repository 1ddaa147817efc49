"""k8s_rollout in a Prefect flow, against a real Prefect test server and the HTTP-level fake
Kubernetes API server (tests/kube_fake.py): a good spec is applied and waited for, a failing
one is set back to the spec that served before it, and both leave a table artifact."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("prefect", reason="the prefect extra is not installed")
pytest.importorskip("kubernetes", reason="the k8s extra is not installed")

from prefect import flow
from prefect.artifacts import Artifact
from servekit.core import DeployError
from servekit.plugins.prefect import k8s_rollout

IMAGE = "registry.example.com/servekit:0.1"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def api(kube_api):
    return kube_api


def _spec_file(tmp_path, source: str) -> str:
    path = tmp_path / f"services-{abs(hash(source))}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kubernetes": {"name": "models", "namespace": "ml", "image": IMAGE},
                "services": [{"name": "iris", "source": source}],
            }
        )
    )
    return str(path)


@flow
def release(file: str, kubeconfig: str, image: str | None = None) -> dict:
    return k8s_rollout(
        file, {"image": image} if image else None, kubeconfig=kubeconfig, timeout_s=30
    )


def test_rollout_applies_waits_and_records_the_outcome(api, tmp_path):
    result = release(_spec_file(tmp_path, "mlflow:models:/iris/1"), str(api.kubeconfig_path))
    assert result["settled"]
    assert result["applications"]["iris"]["status"] == "RUNNING"
    stored = api.objects[("ml", "models")]
    assert "mlflow:models:/iris/1" in stored["spec"]["serveConfigV2"]
    artifact = Artifact.get("k8s-models")
    assert "serving generation 1" in artifact.description
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert rows[0]["application"] == "iris" and rows[0]["status"] == "RUNNING"


def test_a_failing_rollout_is_set_back_to_the_previous_spec(api, tmp_path):
    kubeconfig = str(api.kubeconfig_path)
    release(_spec_file(tmp_path, "mlflow:models:/iris/1"), kubeconfig)
    good = api.objects[("ml", "models")]["spec"]
    api.fail_apps = {"iris": "RESOURCE_DOES_NOT_EXIST: Registered Model 'iris' has no version 9"}
    with pytest.raises(DeployError, match="no version 9"):
        release(_spec_file(tmp_path, "mlflow:models:/iris/9"), kubeconfig)
    restored = api.objects[("ml", "models")]
    assert restored["spec"]["serveConfigV2"] == good["serveConfigV2"]
    assert restored["metadata"]["generation"] == 3  # the bad spec, then the good one again
    assert "failed" in Artifact.get("k8s-models").description
