"""A real HTTP fake of the Kubernetes API for KubeRay's `rayservices.ray.io` (v1), so a client
built on `kubernetes.client.CustomObjectsApi` is tested over the wire, not against mocks.

Status behaviour mirrors ray-project/kuberay, ray-operator/ (v1.4 and master/v1.5):
controllers/ray/rayservice_controller.go (`Reconcile`, `calculateStatus`, `calculateConditions`,
`shouldPrepareNewCluster`, `isClusterSpecHashEqual`, `reconcileServe`, `getAndCheckServeStatus`),
apis/ray/v1/rayservice_types.go (conditions, reasons, `ServiceStatus` "Running" or "" which
omitempty drops) and controllers/ray/utils/util.go (`GenerateRayClusterName`: the cluster is
`<name>-raycluster-<rand.String(5)>`). One controller step is one reconcile:
- create: a pending cluster is named, Ready and UpgradeInProgress are False/Initializing; next step
  its Serve apps are submitted (NOT_STARTED), then DEPLOYING, then RUNNING, and in that step the
  cluster is promoted to active. The serve Service has no endpoints yet, so Ready turns True
  (NonZeroServeEndpoints, numServeEndpoints 1) one step later.
- rayClusterConfig changed (KubeRay's hash ignores worker replicas/minReplicas/maxReplicas): a new
  pending cluster, UpgradeInProgress True/BothActivePendingClustersExist. KubeRay stops polling the
  active cluster meanwhile, so `activeServiceStatus.applicationStatuses` is absent until the
  promotion. Appending worker groups updates in place; `upgradeStrategy.type: None` never rolls out.
- only serveConfigV2 changed: changed apps go DEPLOYING then RUNNING (or DEPLOY_FAILED), removed
  apps DELETING then gone, on the serving cluster; Ready stays True since endpoints stay up.
- both service-status blocks are always present (Go never omits a struct); `rayClusterStatus` is
  a minimal stand-in (zero values, plus state "ready" once the head is up).
"""

from __future__ import annotations

import copy
import json
import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import yaml

from tests.kube_schema import rayservice_validator

GROUP, VERSION, PLURAL, KIND = "ray.io", "v1", "rayservices", "RayService"
RESOURCE = f"{PLURAL}.{GROUP}"
USER = "system:serviceaccount:default:ci"
_RAND = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand's alphabet
_NO_CLUSTER = dict(desiredCPU="0", desiredGPU="0", desiredMemory="0", desiredTPU="0", head={})
_PATH = re.compile(
    rf"/apis/{GROUP}/{VERSION}(?:/namespaces/([^/]+))?/{PLURAL}(?:/([^/]+))?(/status)?"
)
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SYSTEM = ("uid", "name", "namespace", "creationTimestamp", "generation", "resourceVersion")
_VERBS = ("get", "list", "create", "update", "patch", "delete")
_DEPLOYMENT_STATE = dict(DEPLOYING="UPDATING", RUNNING="HEALTHY", DEPLOY_FAILED="DEPLOY_FAILED")
_RESOURCES = [
    dict(name=PLURAL, singularName="rayservice", namespaced=True, kind=KIND, categories=["all"],
         verbs=["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]),
    dict(name=f"{PLURAL}/status", singularName="", namespaced=True, kind=KIND,
         verbs=["get", "patch", "update"]),
]  # fmt: skip
_RESOURCE_LIST = dict(
    kind="APIResourceList", apiVersion="v1", groupVersion=f"{GROUP}/{VERSION}", resources=_RESOURCES
)
_VERSION_INFO = dict(
    major="1", minor="32", gitVersion="v1.32.0", gitCommit="0" * 40, gitTreeState="clean",
    buildDate="2025-01-01T00:00:00Z", goVersion="go1.23.4", compiler="gc", platform="linux/amd64",
)  # fmt: skip


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """A failure answered with a `Status` body, as the apiserver does."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.body: dict[str, Any] = dict(kind="Status", apiVersion="v1", status="Failure")
        self.body.update(metadata={}, message=message, reason=reason, code=code)
        if details:
            self.body["details"] = {**details, "group": GROUP}


def _bad(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _not_found(name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{RESOURCE} "{name}" not found', name=name, kind=PLURAL)


def _field(path: Any, *more: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in [*path, *more]).lstrip(".")


def _causes(validator: jsonschema.Draft7Validator, obj: dict[str, Any]) -> list[dict[str, str]]:
    """Schema violations as the apiserver's `details.causes`: (reason, message, field)."""
    causes = []
    name = obj["metadata"].get("name")
    if name is None:
        causes.append(("FieldValueRequired", "Required value: name is required", "metadata.name"))
    elif not isinstance(name, str) or len(name) > 253 or not _DNS_NAME.fullmatch(name):
        rule = "a lowercase RFC 1123 subdomain must consist of alphanumerics, '-' or '.'"
        message = f"Invalid value: {json.dumps(name)}: {rule}"
        causes.append(("FieldValueInvalid", message, "metadata.name"))
    for e in validator.iter_errors(obj):
        at, value = _field(e.absolute_path), json.dumps(e.instance)
        if e.validator == "required":
            missing = [p for p in e.validator_value if p not in e.instance]
            causes += [("FieldValueRequired", "Required value", _field(e.path, p)) for p in missing]
        elif e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema["properties"]))
            unknown = [_field(e.path, p) for p in extra]
            causes += [("FieldValueInvalid", f'unknown field "{f}"', f) for f in unknown]
        elif e.validator == "type":
            must = f"{at} in body must be of type {e.validator_value}"
            causes.append(("FieldValueTypeInvalid", f"Invalid value: {value}: {must}", at))
        elif e.validator == "enum":
            allowed = ", ".join(json.dumps(v) for v in e.validator_value)
            message = f"Unsupported value: {value}: supported values: {allowed}"
            causes.append(("FieldValueNotSupported", message, at))
        else:
            causes.append(("FieldValueInvalid", f"Invalid value: {value}: {e.message}", at))
    return [{"reason": r, "message": m, "field": f} for r, m, f in dict.fromkeys(causes)]


def _default(schema: dict[str, Any], value: Any) -> None:
    """Fill in the schema's defaults, in place, as the apiserver does before it validates."""
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(schema["items"], item)
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for item in value.values():
            _default(schema["additionalProperties"], item)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 add, remove, replace and test, applied to a copy of `doc`."""
    if not isinstance(ops, list):
        raise _bad("a json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, value, path = op.get("op"), copy.deepcopy(op.get("value")), op.get("path", "")
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]
        try:
            if not tokens and kind in ("add", "replace"):
                doc = value
                continue
            parent = doc
            for token in tokens[:-1]:
                parent = parent[int(token) if isinstance(parent, list) else token]
            last: Any = tokens[-1]
            if isinstance(parent, list):
                last = len(parent) if last == "-" else int(last)
            elif kind != "add" and last not in parent:
                raise KeyError(last)
            if kind == "add" and isinstance(parent, list):
                parent.insert(last, value)
            elif kind in ("add", "replace"):
                parent[last] = value
            elif kind == "remove":
                del parent[last]
            elif kind != "test" or parent[last] != value:
                raise ValueError(f"{kind} failed")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            message = f"jsonpatch {kind} operation does not apply: {path}: {e}"
            raise ApiError(422, "Invalid", message) from None
    return doc


def _cluster_config(spec: dict[str, Any]) -> dict[str, Any]:
    """rayClusterConfig without what KubeRay's cluster hash mutes (fields the autoscaler owns)."""
    config = copy.deepcopy(spec.get("rayClusterConfig") or {})
    for group in config.get("workerGroupSpecs") or []:
        for key in ("replicas", "minReplicas", "maxReplicas"):
            group.pop(key, None)
        (group.get("scaleStrategy") or {}).pop("workersToDelete", None)
    return config


def _applications(serve_config: str) -> dict[str, dict[str, Any]]:
    """The Serve apps of a serveConfigV2 YAML by name ("" is "default", as in KubeRay)."""
    try:
        doc = yaml.safe_load(serve_config or "") or {}
    except yaml.YAMLError:
        return {}
    apps = doc.get("applications") if isinstance(doc, dict) else None
    return {a.get("name") or "default": a for a in apps or [] if isinstance(a, dict)}


@dataclass
class _Cluster:
    """A simulated RayCluster and the Serve apps its dashboard reports."""

    name: str
    config: dict[str, Any]
    serve_config: str | None = None  # last serveConfigV2 submitted; None until the head is up
    apps: dict[str, str] = field(default_factory=dict)  # app -> Serve ApplicationStatus
    app_configs: dict[str, Any] = field(default_factory=dict)
    fails: dict[str, str] = field(default_factory=dict)  # app -> message its deploy fails with

    def ready(self) -> bool:
        return bool(self.apps) and all(s == "RUNNING" for s in self.apps.values())

    def status(self, with_apps: bool) -> dict[str, Any]:
        """This cluster's block of the RayService status."""
        head = {"state": "ready"} if self.serve_config is not None else {}
        out: dict[str, Any] = {"rayClusterName": self.name}
        out["rayClusterStatus"] = {**_NO_CLUSTER, **head}
        if with_apps and self.apps:
            out["applicationStatuses"] = {app: self._app(app, s) for app, s in self.apps.items()}
        return out

    def _app(self, app: str, state: str) -> dict[str, Any]:
        message = {"message": self.fails[app]} if state == "DEPLOY_FAILED" else {}
        out: dict[str, Any] = {"status": state, **message}
        if state in _DEPLOYMENT_STATE:
            listed = self.app_configs.get(app, {}).get("deployments") or []
            names = [d["name"] for d in listed if d.get("name")] or [app]
            entry = {"status": _DEPLOYMENT_STATE[state], **message}
            out["serveDeploymentStatuses"] = {name: dict(entry) for name in names}
        return out


@dataclass
class _Sim:
    active: _Cluster | None = None
    pending: _Cluster | None = None


class FakeKubeAPI:
    """A threaded HTTP apiserver serving RayServices, with a simulated KubeRay controller.

    Example:
        with FakeKubeAPI() as fake:
            client = kubernetes.config.new_client_from_config(str(fake.kubeconfig(tmp_path / "kc")))
    """

    def __init__(
        self, *, token: str = "test-token", crd_installed: bool = True, step_s: float = 0.3,
    ) -> None:  # fmt: skip
        self.token, self.crd_installed, self.step_s = token, crd_installed, step_s
        self.denied_verbs: set[str] = set()
        self.fail_apps: dict[str, str] = {}
        self.delete_delay_s = 0.5
        self.requests: list[dict[str, Any]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.url = ""
        self._validator = rayservice_validator()  # the CRD's schema, strict
        self._lock = threading.RLock()
        self._rv = 0
        self._sims: dict[str, _Sim] = {}  # by uid, so a re-created object starts afresh
        self._frozen: set[str] = set()  # uids whose status a test wrote by hand
        self._stop = threading.Event()

    def start(self) -> FakeKubeAPI:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        serve, control = self._server.serve_forever, self._run
        self._threads = [threading.Thread(target=f, daemon=True) for f in (serve, control)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig for this server (context "fake", namespace "default")."""
        context = {"cluster": "fake", "user": "fake", "namespace": "default"}
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": context}],
        }  # fmt: skip
        Path(path).write_text(yaml.safe_dump(config))
        return Path(path)

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Overwrite a status; the simulated controller leaves that object alone from then on.

        Raises KeyError if there is no such object, ValueError if the CRD schema rejects `status`.
        """
        with self._lock:
            obj = self.objects[(namespace, name)]
            self._frozen.add(obj["metadata"]["uid"])
            try:
                self._write({**obj, "status": copy.deepcopy(status)}, validate=True)
            except ApiError as e:
                raise ValueError(e.body["message"]) from None

    # -- the API ---------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: Any, raw: bytes
    ) -> tuple[int, Any]:
        """Answer one request with (code, JSON-able body), or a str for a text/plain body."""
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        auth = headers.get("Authorization")
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = ValueError
        entry = dict(method=method, path=path, query=query, content_type=ctype, auth=auth)
        self.requests.append({**entry, "body": None if body is ValueError else body})
        if auth != f"Bearer {self.token}":
            return 401, ApiError(401, "Unauthorized", "Unauthorized").body
        if path in ("/version", "/version/"):
            return 200, _VERSION_INFO
        match = _PATH.fullmatch(path)
        if not self.crd_installed or not (match or path == f"/apis/{GROUP}/{VERSION}"):
            return 404, "404 page not found\n"  # Go's mux: nothing serves that group
        if not match:
            return 200, _RESOURCE_LIST
        namespace, name, sub = match.groups()
        try:
            if body is ValueError:
                raise _bad("the request body is not valid JSON")
            with self._lock:
                return self._serve(method, namespace, name, sub, ctype, body)
        except ApiError as e:
            return e.code, e.body

    def _serve(
        self, method: str, ns: str | None, name: str | None, sub: str | None, ctype: str, body: Any
    ) -> tuple[int, Any]:
        verb = {"GET": "get" if name else "list", "POST": "create", "PUT": "update"}.get(method)
        verb = verb or method.lower()
        known = verb in _VERBS and (ns is not None or verb == "list")
        if not known or (name is None) != (verb in ("list", "create")):
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {PLURAL} here")
        if verb in self.denied_verbs:
            who = f'{RESOURCE} "{name}"' if name else RESOURCE
            where = f'in the namespace "{ns}"' if ns else "at the cluster scope"
            what = f'"{PLURAL}{sub or ""}" in API group "{GROUP}" {where}'
            message = f'{who} is forbidden: User "{USER}" cannot {verb} resource {what}'
            details = {"name": name} if name else {}
            raise ApiError(403, "Forbidden", message, kind=PLURAL, **details)
        if verb == "list":
            items = [o for (n, _), o in sorted(self.objects.items()) if ns in (None, n)]
            listing = dict(apiVersion=f"{GROUP}/{VERSION}", kind=f"{KIND}List", items=items)
            return 200, {**listing, "metadata": {"resourceVersion": str(self._rv)}}
        if verb == "create":
            return 201, self._create(ns or "", body)
        old = self.objects.get((ns or "", name or ""))
        if old is None:
            raise _not_found(name or "")
        if verb == "get":
            return 200, old
        if verb == "delete":
            return 200, self._delete(old)
        if verb == "patch" and ctype == "application/merge-patch+json":
            body = _merge_patch(old, body)
        elif verb == "patch" and ctype == "application/json-patch+json":
            body = _json_patch(old, body)
        elif verb == "patch":
            message = "the body of the request was in an unknown format - accepted media types "
            message += "include: application/json-patch+json, application/merge-patch+json"
            raise ApiError(415, "UnsupportedMediaType", message)
        return 200, self._update(old, body, bool(sub))

    def _checked(self, body: Any, name: str) -> dict[str, Any]:
        """A copy of `body` without status, if the apiserver would accept it for a write."""
        if not isinstance(body, dict) or not isinstance(body.get("metadata") or {}, dict):
            raise _bad("the request body must be a JSON object")
        if (body.get("apiVersion"), body.get("kind")) != (f"{GROUP}/{VERSION}", KIND):
            got = f"{body.get('apiVersion')}, {body.get('kind')}"
            raise _bad(f"the apiVersion and kind ({got}) do not match {GROUP}/{VERSION}, {KIND}")
        obj = {k: copy.deepcopy(v) for k, v in body.items() if k != "status"}
        obj["metadata"] = obj.get("metadata") or {}
        self._validate(obj, name)
        return obj

    def _validate(self, obj: dict[str, Any], name: str) -> None:
        """Default `obj` in place; raise 422 Invalid (a cause per field) if the CRD rejects it."""
        _default(self._validator.schema, obj)
        causes = _causes(self._validator, obj)
        if causes:
            text = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
            text = f"[{text}]" if len(causes) > 1 else text
            message = f'{KIND}.{GROUP} "{name}" is invalid: {text}'
            raise ApiError(422, "Invalid", message, name=name, kind=KIND, causes=causes)

    def _create(self, ns: str, body: Any) -> dict[str, Any]:
        meta = body.get("metadata") if isinstance(body, dict) else None
        name = meta.get("name", "") if isinstance(meta, dict) else ""
        if isinstance(meta, dict) and meta.get("namespace", ns) != ns:
            raise _bad("the namespace of the object does not match the namespace of the request")
        obj = self._checked(body, name)
        if (ns, name) in self.objects:
            dying = "deletionTimestamp" in self.objects[(ns, name)]["metadata"]
            message = f'{RESOURCE} "{name}" already exists'
            message = f"object is being deleted: {message}" if dying else message
            raise ApiError(409, "AlreadyExists", message, name=name, kind=PLURAL)
        system = dict(namespace=ns, uid=str(uuid.uuid4()), generation=1, creationTimestamp=_now())
        kept = {k: v for k, v in obj["metadata"].items() if not k.startswith("deletion")}
        return self._write({**obj, "metadata": {**kept, **system}})

    def _update(self, old: dict[str, Any], body: Any, status_only: bool) -> dict[str, Any]:
        """PUT semantics (a patch arrives here already applied): spec and status stay apart."""
        meta, name = old["metadata"], old["metadata"]["name"]
        sent = body.get("metadata") if isinstance(body, dict) else None
        if not isinstance(sent, dict):
            raise _bad("the request body must be a JSON object with metadata")
        if sent.get("name", name) != name:
            raise _bad(f"the name of the object does not match the name on the URL ({name})")
        if sent.get("resourceVersion") not in (None, "", meta["resourceVersion"]):
            message = f'Operation cannot be fulfilled on {RESOURCE} "{name}": the object has been '
            message += "modified; please apply your changes to the latest version and try again"
            raise ApiError(409, "Conflict", message, name=name, kind=PLURAL)
        if status_only:
            self._frozen.add(meta["uid"])
            status = copy.deepcopy(body.get("status") or {})
            return self._write({**old, "status": status}, validate=True)
        system = {k: v for k, v in meta.items() if k in _SYSTEM or k.startswith("deletion")}
        obj = self._checked({**body, "metadata": {**sent, **system}}, name)
        if "status" in old:
            obj["status"] = old["status"]
        if {**obj, "metadata": {}, "status": {}} != {**old, "metadata": {}, "status": {}}:
            obj["metadata"]["generation"] += 1  # for CRs, any change outside metadata and status
        return old if obj == old else self._write(obj)

    def _delete(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        if "deletionTimestamp" not in meta:
            marks = {"deletionTimestamp": _now(), "deletionGracePeriodSeconds": 0}
            self._write({**obj, "metadata": {**meta, **marks}})
            key = (meta["namespace"], meta["name"])
            timer = threading.Timer(self.delete_delay_s, self._purge, (key, meta["uid"]))
            timer.daemon = True
            timer.start()
        details = dict(name=meta["name"], group=GROUP, kind=PLURAL, uid=meta["uid"])
        return dict(kind="Status", apiVersion="v1", metadata={}, status="Success", details=details)

    def _purge(self, key: tuple[str, str], uid: str) -> None:
        with self._lock:
            if self.objects.get(key, {}).get("metadata", {}).get("uid") == uid:
                del self.objects[key]
            self._sims.pop(uid, None)

    def _write(self, obj: dict[str, Any], validate: bool = False) -> dict[str, Any]:
        """Store `obj` under a fresh resourceVersion; `validate` checks a status write."""
        if validate:
            self._validate(obj, obj["metadata"]["name"])
        self._rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._rv)}}
        self.objects[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj
        return obj

    # -- the simulated KubeRay controller --------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.step_s):
            with self._lock:
                for obj in list(self.objects.values()):
                    uid = obj["metadata"]["uid"]
                    if "deletionTimestamp" in obj["metadata"] or uid in self._frozen:
                        continue
                    old = dict(obj.get("status") or {})
                    old.pop("lastUpdateTime", None)
                    new = self._reconcile(obj, self._sims.setdefault(uid, _Sim()))
                    if new != old:  # KubeRay writes (and stamps lastUpdateTime) only on a change
                        status = {"lastUpdateTime": _now(), **new}
                        self._write({**obj, "status": status}, validate=True)

    def _reconcile(self, obj: dict[str, Any], sim: _Sim) -> dict[str, Any]:
        """One reconcile over the simulated clusters; returns the status sans lastUpdateTime."""
        spec, generation = obj["spec"], obj["metadata"]["generation"]
        endpoints = 1 if sim.active else 0  # the serve Service selects a promoted cluster only
        want, current = _cluster_config(spec), sim.pending or sim.active
        rollout = "new" if current is None else _rollout(current.config, want, spec)
        if rollout == "new":  # named now; its RayCluster's head is up by the next reconcile
            suffix = "".join(random.choices(_RAND, k=5))
            sim.pending = _Cluster(f"{obj['metadata']['name']}-raycluster-{suffix}", want)
        elif current is not None:
            current.config = want if rollout == "update" else current.config
            self._reconcile_serve(current, spec.get("serveConfigV2", ""))
        if sim.pending and sim.pending.ready():
            sim.active, sim.pending = sim.pending, None  # Services switched over: promote
        conditions = _conditions(obj.get("status") or {}, generation, endpoints, sim)
        status: dict[str, Any] = {
            "conditions": conditions,
            "activeServiceStatus": _block(sim.active, with_apps=not sim.pending),
            "pendingServiceStatus": _block(sim.pending, with_apps=True),
            "observedGeneration": generation,
        }
        if endpoints:
            status["numServeEndpoints"] = endpoints
        if conditions[0]["status"] == "True":
            status["serviceStatus"] = "Running"
        return copy.deepcopy(status)

    def _reconcile_serve(self, cluster: _Cluster, serve_config: str) -> None:
        """reconcileServe: submit serveConfigV2 if the cluster lacks it, else poll Serve."""
        if cluster.serve_config == serve_config:
            for app, state in list(cluster.apps.items()):
                if state == "DELETING":
                    del cluster.apps[app]
                elif state == "NOT_STARTED":
                    cluster.apps[app] = "DEPLOYING"
                elif state == "DEPLOYING":
                    cluster.apps[app] = "DEPLOY_FAILED" if app in cluster.fails else "RUNNING"
            return
        cluster.serve_config, wanted = serve_config, _applications(serve_config)
        for app in cluster.apps.keys() - wanted.keys():
            cluster.apps[app] = "DELETING"
        for app, config in wanted.items():
            kept = cluster.apps.get(app, "DELETING") != "DELETING"
            if kept and cluster.app_configs[app] == config:
                continue  # Ray Serve leaves an app whose config did not change alone
            cluster.apps[app] = "DEPLOYING" if app in cluster.apps else "NOT_STARTED"
            cluster.app_configs[app] = config
            cluster.fails.pop(app, None)
            if app in self.fail_apps:
                cluster.fails[app] = self.fail_apps[app]


def _block(cluster: _Cluster | None, with_apps: bool) -> dict[str, Any]:
    return cluster.status(with_apps) if cluster else {"rayClusterStatus": dict(_NO_CLUSTER)}


def _rollout(have: dict[str, Any], want: dict[str, Any], spec: dict[str, Any]) -> str:
    """KubeRay's answer to a rayClusterConfig change: "none", "update" in place, or "new"."""
    if have == want:
        return "none"
    had, groups = have.get("workerGroupSpecs") or [], want.get("workerGroupSpecs") or []
    trimmed = {**want, "workerGroupSpecs": groups[: len(had)]}
    if len(groups) > len(had) and trimmed == {**have, "workerGroupSpecs": had}:
        return "update"  # only worker groups appended
    return "none" if (spec.get("upgradeStrategy") or {}).get("type") == "None" else "new"


def _conditions(
    old: dict[str, Any], generation: int, endpoints: int, sim: _Sim
) -> list[dict[str, Any]]:
    """calculateConditions, with meta.SetStatusCondition's rule for lastTransitionTime."""
    conds = {c["type"]: c for c in old.get("conditions") or []}

    def put(kind: str, status: str, reason: str, message: str) -> None:
        prev = conds.get(kind)
        since = prev["lastTransitionTime"] if prev and prev["status"] == status else _now()
        conds[kind] = dict(type=kind, status=status, observedGeneration=generation)
        conds[kind].update(lastTransitionTime=since, reason=reason, message=message)

    if not conds:
        put("Ready", "False", "Initializing", "RayService is initializing")
        put("UpgradeInProgress", "False", "Initializing", "RayService is initializing")
    if endpoints > 0:
        put("Ready", "True", "NonZeroServeEndpoints", "Number of serve endpoints is greater than 0")
    elif conds.get("Ready", {}).get("status") == "True":
        put("Ready", "False", "ZeroServeEndpoints", "Number of serve endpoints dropped to 0")
    if sim.active and sim.pending:
        put(
            "UpgradeInProgress",
            "True",
            "BothActivePendingClustersExist",
            "Both active and pending Ray clusters exist",
        )
    elif sim.active:
        put(
            "UpgradeInProgress",
            "False",
            "NoPendingCluster",
            "Active Ray cluster exists and no pending Ray cluster",
        )
    elif conds.get("UpgradeInProgress", {}).get("reason") != "Initializing":
        put("UpgradeInProgress", "Unknown", "NoActiveCluster", "No active Ray cluster exists")
    return sorted(conds.values(), key=lambda c: c["type"] != "Ready")


def _handler(fake: FakeKubeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            query = dict(parse_qsl(url.query))
            try:
                code, payload = fake.handle(self.command, url.path, query, self.headers, raw)
            except Exception as e:  # a bug in the fake: answer, so the client does not retry
                code, payload = 500, ApiError(500, "InternalError", repr(e)).body
            text = isinstance(payload, str)
            data = payload.encode() if text else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header(
                "Content-Type", "text/plain; charset=utf-8" if text else "application/json"
            )
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    return Handler
