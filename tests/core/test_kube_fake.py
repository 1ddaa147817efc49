"""The fake Kubernetes API (tests/kube_fake.py) through the real `kubernetes` client: the fake is
only worth testing against if it answers the way an apiserver running KubeRay does."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytest.importorskip("kubernetes", reason="the kubernetes client is not installed")
from kubernetes.client import CustomObjectsApi
from kubernetes.client.rest import ApiException
from kubernetes.config import new_client_from_config

from tests.kube_fake import FakeKubeAPI
from tests.kube_schema import CRD_PATH

pytestmark = pytest.mark.timeout(60)

RS = ("ray.io", "v1", "default", "rayservices")
SERVE = """
applications:
- name: text
  import_path: models:text
  deployments: [{name: Tokenizer}, {name: Model}]
- name: image
  import_path: models:image
"""


def _body(name: str = "svc", image: str = "rayproject/ray:2.40.0") -> dict:
    container = {"name": "ray-head", "image": image}
    head = {"rayStartParams": {}, "template": {"spec": {"containers": [container]}}}
    spec = {"serveConfigV2": SERVE, "rayClusterConfig": {"headGroupSpec": head}}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": spec,
    }


def _error(call: Callable[[], Any]) -> tuple[int, dict]:
    """The HTTP status and parsed Status body of the ApiException that `call` raises."""
    with pytest.raises(ApiException) as failure:
        call()
    return failure.value.status, json.loads(failure.value.body)


def _until(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {check}")


def _condition(obj: dict, kind: str) -> tuple[str, str]:
    """(status, reason) of a condition, or ("", "") while the controller has not set it."""
    conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
    return (conds[kind]["status"], conds[kind]["reason"]) if kind in conds else ("", "")


def _apps(block: dict) -> dict[str, str]:
    return {name: app["status"] for name, app in block.get("applicationStatuses", {}).items()}


@pytest.fixture
def fake() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(step_s=0.1) as server:
        server.delete_delay_s = 0.2
        yield server


@pytest.fixture
def api(fake: FakeKubeAPI, tmp_path: Path) -> CustomObjectsApi:
    kubeconfig = fake.kubeconfig(tmp_path / "kc")
    return CustomObjectsApi(new_client_from_config(config_file=str(kubeconfig)))


def _get(api: CustomObjectsApi, name: str = "svc") -> dict:
    return api.get_namespaced_custom_object(*RS, name)


def _names(api: CustomObjectsApi) -> list[str]:
    return [o["metadata"]["name"] for o in api.list_namespaced_custom_object(*RS)["items"]]


def _wait_for(api: CustomObjectsApi, holds: Callable[[dict], bool]) -> dict:
    """The RayService "svc", once `holds` is true of it."""

    def check() -> dict | None:
        obj = _get(api)
        return obj if holds(obj) else None

    return _until(check)


def _ready(api: CustomObjectsApi) -> dict:
    return _wait_for(api, lambda o: _condition(o, "Ready") == ("True", "NonZeroServeEndpoints"))


def test_create_get_patch_delete(api: CustomObjectsApi, fake: FakeKubeAPI) -> None:
    created = api.create_namespaced_custom_object(
        *RS, {**_body(), "status": {"numServeEndpoints": 9}}
    )
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["generation"] == 1 and meta["uid"]
    assert "status" not in created, "status is a subresource: a create must not set it"
    assert _names(api) == ["svc"]
    code, body = _error(lambda: api.create_namespaced_custom_object(*RS, _body()))
    assert (code, body["reason"]) == (409, "AlreadyExists")

    labels = {"metadata": {"labels": {"team": "ml"}}}
    assert api.patch_namespaced_custom_object(*RS, "svc", labels)["metadata"]["generation"] == 1
    assert fake.requests[-1]["content_type"] == "application/merge-patch+json"
    ops = [{"op": "replace", "path": "/spec/serveConfigV2", "value": SERVE + "# v2\n"}]
    json_patch = "application/json-patch+json"
    patched = api.patch_namespaced_custom_object(*RS, "svc", ops, _content_type=json_patch)
    assert (patched["metadata"]["generation"], patched["metadata"]["labels"]) == (2, {"team": "ml"})

    stale = {**_body(), "metadata": {"name": "svc", "resourceVersion": meta["resourceVersion"]}}
    code, body = _error(lambda: api.replace_namespaced_custom_object(*RS, "svc", stale))
    assert (code, body["reason"]) == (409, "Conflict")

    done = api.delete_namespaced_custom_object(*RS, "svc")
    assert (done["kind"], done["status"]) == ("Status", "Success")
    assert "deletionTimestamp" in _get(api)["metadata"], "the object lingers while it is deleted"
    _until(lambda: not _names(api))


def test_not_found_differs_from_a_missing_crd(api: CustomObjectsApi, fake: FakeKubeAPI) -> None:
    code, body = _error(lambda: _get(api, "nope"))
    assert (code, body["reason"], body["details"]["name"]) == (404, "NotFound", "nope")
    assert body["message"] == 'rayservices.ray.io "nope" not found'
    assert api.get_api_resources("ray.io", "v1").resources[0].name == "rayservices"

    fake.crd_installed = False
    for call in (lambda: _get(api, "nope"), lambda: api.get_api_resources("ray.io", "v1")):
        with pytest.raises(ApiException) as absent:
            call()
        assert (absent.value.status, absent.value.body.strip()) == (404, "404 page not found")


def test_forbidden_and_unauthorized(
    api: CustomObjectsApi, fake: FakeKubeAPI, tmp_path: Path
) -> None:
    api.create_namespaced_custom_object(*RS, _body())
    fake.denied_verbs = {"patch"}
    code, body = _error(lambda: api.patch_namespaced_custom_object(*RS, "svc", {"spec": {}}))
    assert (code, body["reason"]) == (403, "Forbidden")
    assert 'cannot patch resource "rayservices" in API group "ray.io"' in body["message"]
    assert _get(api)["metadata"]["name"] == "svc", "other verbs stay allowed"

    config = yaml.safe_load(fake.kubeconfig(tmp_path / "kc").read_text())
    config["users"][0]["user"]["token"] = "wrong"
    (tmp_path / "bad").write_text(yaml.safe_dump(config))
    stranger = CustomObjectsApi(new_client_from_config(config_file=str(tmp_path / "bad")))
    code, body = _error(lambda: stranger.get_namespaced_custom_object(*RS, "svc"))
    assert (code, body["reason"]) == (401, "Unauthorized")
    assert fake.requests[-1]["auth"] == "Bearer wrong"


def test_schema_defaults_and_violations(api: CustomObjectsApi) -> None:
    ok = _body("defaulted")
    ok["spec"]["rayClusterConfig"]["workerGroupSpecs"] = [{"groupName": "g", "template": {}}]
    created = api.create_namespaced_custom_object(*RS, ok)
    group = created["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 2147483647), "the CRD's defaults"

    bad = _body()
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["bogus"] = 1
    bad["spec"]["serveConfigV2"] = 7
    code, body = _error(lambda: api.create_namespaced_custom_object(*RS, bad))
    assert (code, body["reason"]) == (422, "Invalid")
    fields = {c["field"] for c in body["details"]["causes"]}
    assert fields == {"spec.rayClusterConfig.headGroupSpec.bogus", "spec.serveConfigV2"}
    wrong_kind = {**_body(), "kind": "RayCluster"}
    assert _error(lambda: api.create_namespaced_custom_object(*RS, wrong_kind))[0] == 400


def test_status_goes_ready_like_kuberay(api: CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(*RS, _body())
    pending = _until(lambda: _get(api).get("status", {}).get("pendingServiceStatus", {}))
    assert pending["rayClusterName"].startswith("svc-raycluster-")
    assert _condition(_get(api), "Ready") == ("False", "Initializing")

    obj = _ready(api)
    _crd_schema().validate(obj)
    status, active = obj["status"], obj["status"]["activeServiceStatus"]
    assert active["rayClusterName"] == pending["rayClusterName"]
    assert "rayClusterName" not in status["pendingServiceStatus"]
    assert _apps(active) == {"text": "RUNNING", "image": "RUNNING"}
    deployments = active["applicationStatuses"]["text"]["serveDeploymentStatuses"]
    assert deployments == {"Tokenizer": {"status": "HEALTHY"}, "Model": {"status": "HEALTHY"}}
    assert (status["serviceStatus"], status["numServeEndpoints"]) == ("Running", 1)
    assert status["observedGeneration"] == 1
    assert _condition(obj, "UpgradeInProgress") == ("False", "NoPendingCluster")


def test_cluster_change_rolls_out_a_new_cluster(api: CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(*RS, _body())
    old = _ready(api)["status"]["activeServiceStatus"]["rayClusterName"]
    new_image = {"spec": _body(image="rayproject/ray:2.41.0")["spec"]}
    api.patch_namespaced_custom_object(*RS, "svc", new_image)

    upgrading = _wait_for(api, lambda o: _condition(o, "UpgradeInProgress")[0] == "True")
    status = upgrading["status"]
    assert _condition(upgrading, "UpgradeInProgress") == ("True", "BothActivePendingClustersExist")
    assert _condition(upgrading, "Ready")[0] == "True", "the old cluster keeps serving"
    assert status["activeServiceStatus"]["rayClusterName"] == old
    assert "applicationStatuses" not in status["activeServiceStatus"], "KubeRay stops polling it"
    new = status["pendingServiceStatus"]["rayClusterName"]

    done = _wait_for(api, lambda o: _condition(o, "UpgradeInProgress")[0] == "False")
    assert done["status"]["activeServiceStatus"]["rayClusterName"] == new != old
    assert _apps(done["status"]["activeServiceStatus"]) == {"text": "RUNNING", "image": "RUNNING"}
    assert done["status"]["observedGeneration"] == done["metadata"]["generation"] == 2


def test_serve_config_change_updates_in_place(api: CustomObjectsApi) -> None:
    api.create_namespaced_custom_object(*RS, _body())
    cluster = _ready(api)["status"]["activeServiceStatus"]["rayClusterName"]
    serve = SERVE.replace("models:image", "models:image_v2")
    api.patch_namespaced_custom_object(*RS, "svc", {"spec": {"serveConfigV2": serve}})

    def deploying(obj: dict) -> bool:
        return _apps(obj["status"]["activeServiceStatus"]).get("image") == "DEPLOYING"

    status = _wait_for(api, deploying)["status"]
    assert _apps(status["activeServiceStatus"]) == {"text": "RUNNING", "image": "DEPLOYING"}
    assert "rayClusterName" not in status["pendingServiceStatus"], "no new cluster"
    assert status["serviceStatus"] == "Running"
    active = _wait_for(api, lambda o: not deploying(o))["status"]["activeServiceStatus"]
    assert _apps(active) == {"text": "RUNNING", "image": "RUNNING"}
    assert active["rayClusterName"] == cluster


def test_failing_app_keeps_the_service_unready(api: CustomObjectsApi, fake: FakeKubeAPI) -> None:
    fake.fail_apps = {"image": "ImportError: no module named models"}
    api.create_namespaced_custom_object(*RS, _body())

    def failed(obj: dict) -> bool:
        pending = obj.get("status", {}).get("pendingServiceStatus", {})
        return _apps(pending).get("image") == "DEPLOY_FAILED"

    apps = _wait_for(api, failed)["status"]["pendingServiceStatus"]["applicationStatuses"]
    assert apps["image"]["message"] == "ImportError: no module named models"
    assert apps["text"]["status"] == "RUNNING"
    time.sleep(0.5)
    obj = _get(api)
    assert _condition(obj, "Ready") == ("False", "Initializing")
    assert "serviceStatus" not in obj["status"]
    assert "rayClusterName" not in obj["status"]["activeServiceStatus"], "never promoted"


def test_set_status_is_validated_and_sticks(api: CustomObjectsApi, fake: FakeKubeAPI) -> None:
    api.create_namespaced_custom_object(*RS, _body())
    with pytest.raises(ValueError, match="numServeEndpoints"):
        fake.set_status("default", "svc", {"numServeEndpoints": "many"})
    fake.set_status("default", "svc", {"observedGeneration": 0, "serviceStatus": "Running"})
    time.sleep(0.3)
    assert _get(api)["status"] == {"observedGeneration": 0, "serviceStatus": "Running"}


def _crd_schema() -> jsonschema.Draft7Validator:
    """The CRD's own schema, unmodified: what the fake writes must pass it as it is."""
    crd = yaml.load(CRD_PATH.read_text(), getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft7Validator(v1["schema"]["openAPIV3Schema"])
