"""The MLflow deployment target ``serve``: registered models on servekit.

    mlflow deployments create -t serve --name iris -m models:/iris/1
    mlflow deployments predict -t serve --name iris --input-path in.json

Target URIs: ``serve`` (the embedded local cluster, started if absent),
``serve:/<ray address>`` or ``serve://host:port`` (an existing Ray cluster).
This module is what MLflow loads for the target: it holds ``run_local``,
``target_help`` and exactly one ``BaseDeploymentClient`` subclass, and imports
Ray only when a method needs it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click
from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException
from servekit.core import client_headers
from servekit.plugins.mlflow._config import TargetConfig, describe_keys

logger = logging.getLogger("servekit.mlflow")

FLAVOR = "python_function"
SCHEME = "mlflow"


class ServeDeploymentClient(BaseDeploymentClient):
    """MLflow's deployment client for servekit. Example::

    from mlflow.deployments import get_deploy_client

    client = get_deploy_client("serve")
    client.create_deployment("iris", "models:/iris/1", config={"max_batch_size": "32"})
    client.predict("iris", {"dataframe_split": {"columns": [...], "data": [[...]]}})
    """

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)
        self.address = _address_of(target_uri)
        self._runtime: Any = None

    # -- deployments -----------------------------------------------------------------
    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        _check_flavor(flavor)
        with _clean_errors():
            parsed = TargetConfig.parse(config)  # before connecting: a typo fails fast
        runtime = self._connect()
        if name in {s.name for s in runtime.list()}:
            raise _error(f"deployment {name!r} already exists; use `update` to change it")
        return self._apply(runtime, name, model_uri, parsed)

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        _check_flavor(flavor)
        with _clean_errors():
            TargetConfig.parse(config)  # before connecting: a typo fails fast
        runtime = self._connect()
        current = self._spec_of(runtime, name)
        uri = model_uri or current.options["model_uri"]
        merged = {**current.user_config.get("target_config", {}), **(config or {})}
        with _clean_errors():
            parsed = TargetConfig.parse(merged)
        return self._apply(runtime, name, uri, parsed)

    def delete_deployment(self, name, config=None, endpoint=None):
        runtime = self._connect()
        _call(runtime.status, name)  # NotFound -> a one-line error
        try:
            spec = runtime.spec(name)
        except Exception:
            spec = None  # no running replica (failed or starting): delete it all the same
        if spec is not None and spec.scheme != SCHEME:
            raise _error(f"{name!r} is a servekit service but not an MLflow deployment")
        _call(runtime.delete, name)

    def list_deployments(self, endpoint=None):
        runtime = self._connect()
        found = []
        for status in runtime.list():
            try:
                spec = runtime.spec(status.name)
            except Exception:
                continue  # not running: no spec to tell whether it is an MLflow model
            if spec.scheme == SCHEME:
                found.append(_describe(spec, status))
        return found

    def get_deployment(self, name, endpoint=None):
        runtime = self._connect()
        status = _call(runtime.status, name)
        try:
            spec = runtime.spec(name)
        except Exception:
            return {
                "name": name,
                "flavor": FLAVOR,
                "status": status.status,
                "message": status.message,
                "url": status.url,
            }
        if spec.scheme != SCHEME:
            raise _error(f"{name!r} is a servekit service but not an MLflow deployment")
        return _describe(spec, status)

    # -- endpoints: one route, traffic split between deployments -----------------------
    def create_endpoint(self, name, config=None):
        """Route ``/<name>`` to deployments by weight. ``config``: ``{"deployments":
        {"iris-v1": 90, "iris-v2": 10}}`` (or a list of ``{"name", "weight"}``), optional
        ``sticky_header`` and ``shadow``. Weights change live with ``update_endpoint``."""
        runtime = self._connect()
        if name in runtime.endpoints():
            raise _error(f"endpoint {name!r} already exists; use update_endpoint to change it")
        return self._route(runtime, name, config)

    def update_endpoint(self, endpoint, config=None):
        runtime = self._connect()
        if endpoint not in runtime.endpoints():
            raise _error(f"no endpoint named {endpoint!r}", 404)
        return self._route(runtime, endpoint, config)

    def delete_endpoint(self, endpoint):
        _call(self._connect().delete_endpoint, endpoint)

    def list_endpoints(self):
        runtime = self._connect()
        return [_endpoint(runtime, name) for name in runtime.endpoints()]

    def get_endpoint(self, endpoint):
        runtime = self._connect()
        if endpoint not in runtime.endpoints():
            raise _error(f"no endpoint named {endpoint!r}", 404)
        return _endpoint(runtime, endpoint)

    def _route(self, runtime: Any, endpoint: str, config: Any) -> dict[str, Any]:
        weights, options = _endpoint_config(config)
        with _clean_errors():
            runtime.route(endpoint, weights, **options)
        return _endpoint(runtime, endpoint)

    # -- predictions ------------------------------------------------------------------
    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        import httpx

        runtime = self._connect()
        self._spec_of(runtime, deployment_name)
        url = runtime.url(deployment_name) + "/invocations"
        headers = {"content-type": "application/json", **client_headers()}
        reply = httpx.post(url, content=_to_json_body(inputs), headers=headers, timeout=600)
        if reply.status_code != 200:
            raise _error(_error_text(reply), reply.status_code)
        answer = json.loads(reply.text)
        if isinstance(answer, list):  # an LLM's unwrapped answer to {"messages": [...]}
            answer = {"predictions": answer}
        return PredictionsResponse(answer)

    def predict_stream(self, deployment_name=None, inputs=None, endpoint=None):
        """Yield the chunks of a model's ``predict_stream``. ``inputs`` is a dict such as
        ``{"messages": [...]}`` or ``{"inputs": "text", "params": {...}}``; it is sent with
        ``"stream": true``, as Databricks endpoints take it."""
        import httpx

        runtime = self._connect()
        self._spec_of(runtime, deployment_name)
        url = runtime.url(deployment_name) + "/invocations"
        body = {**(inputs if isinstance(inputs, dict) else {"inputs": inputs}), "stream": True}
        headers = client_headers()
        with httpx.stream("POST", url, json=body, headers=headers, timeout=600) as reply:
            if reply.status_code != 200:
                reply.read()
                raise _error(_error_text(reply), reply.status_code)
            for line in reply.iter_lines():
                if not line.startswith("data:"):
                    continue
                value = line[len("data:") :].strip()
                if value == "[DONE]":
                    return
                chunk = json.loads(value)
                if isinstance(chunk, dict) and set(chunk) == {"error_code", "message"}:
                    raise _error(f"{chunk['error_code']}: {chunk['message']}")
                yield chunk

    def explain(self, deployment_name=None, df=None, endpoint=None):
        raise _error("explain is not supported by the serve target")

    # -- internals --------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._runtime is None:
            import ray.serve
            from servekit.core import Runtime

            # Serve's driver-side INFO lines would bury MLflow's own output.
            logging.getLogger(ray.serve.__name__).setLevel(logging.WARNING)

            with _clean_errors():
                self._runtime = Runtime.connect(self.address, progress=_say)
        return self._runtime

    def _spec_of(self, runtime: Any, name: str) -> Any:
        spec = _call(runtime.spec, name)
        if spec.scheme != SCHEME:
            raise _error(f"{name!r} is a servekit service but not an MLflow deployment")
        return spec

    def _apply(self, runtime: Any, name: str, model_uri: str, config: TargetConfig) -> dict:
        with _clean_errors():
            spec = build_spec(name, model_uri, config)
        _say(f"serving {spec.options['model_uri']} as {name!r}")
        with _clean_errors():
            status = runtime.deploy(
                spec, wait=config.blocking, timeout_s=config.timeout_s, progress=_say
            )
        return _describe(spec, status)


def build_spec(name: str, model_uri: str, config: TargetConfig) -> Any:
    """The ServiceSpec for an MLflow model: resolved URIs, batching, versions, resources."""
    from servekit.core import ServiceSpec

    uri = resolve_model_uri(model_uri)
    base, default_id = split_registry_uri(uri)
    env_vars = {k: v for k, v in _tracking_env().items() if v}
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if config.env_manager != "local":
        runtime_env.update(_requirements_env(uri, config.env_manager))
    fields: dict[str, Any] = {
        "name": name,
        "source": f"{SCHEME}:{base}",
        "route_prefix": config.route_prefix,
        "options": {"model_uri": uri},
        # -C values ride in user_config: changing replicas or batching restarts nothing.
        "user_config": {
            "target_config": config.model_dump(
                exclude_defaults=True, exclude={"blocking", "timeout_s"}
            )
        },
        "batching": {"max_batch_size": config.max_batch_size, "max_wait_ms": config.batch_wait_ms},
        "resources": {
            "num_cpus": config.num_cpus,
            "num_gpus": config.num_gpus,
            "memory": config.memory,
        },
        "runtime_env": runtime_env,
    }
    if config.engine == "vllm":
        # One engine holds one version: the service serves the URI's version only.
        fields["source"] = f"{SCHEME}:{uri}"
        fields["options"].update(engine="vllm", engine_args=config.engine_args)
    elif default_id is not None:
        fields["multiplexing"] = {
            "max_models_per_replica": config.max_models_per_replica,
            "default_model_id": default_id,
        }
    autoscaling = config.autoscaling()
    if autoscaling:
        fields["autoscaling"] = autoscaling
    elif config.num_replicas:
        fields["replicas"] = config.num_replicas
    return ServiceSpec(**fields)


def resolve_model_uri(model_uri: str) -> str:
    """Make a model URI usable from any process: local paths become absolute."""
    parsed = urlparse(model_uri)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme else model_uri).expanduser().resolve()
        if not path.exists():
            raise _error(f"no model at {path}")
        return str(path)
    return model_uri


def split_registry_uri(uri: str) -> tuple[str, str | None]:
    """``models:/iris/3`` -> (``models:/iris``, ``3``); ``models:/iris@champion`` ->
    (``models:/iris``, ``champion``). Other URIs serve one model: (uri, None)."""
    if not uri.startswith("models:/"):
        return uri, None
    rest = uri[len("models:/") :]
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return f"models:/{name}", alias
    name, _, version = rest.rpartition("/")
    if name and version.isdigit():
        return f"models:/{name}", version
    # models:/<name>/latest, a stage, or an MLflow 3 model id: served as one model.
    return uri, None


def _tracking_env() -> dict[str, str]:
    """Tracking and registry URIs for the replicas, absolute so they do not depend on
    the working directory of the process that deployed the model."""
    import mlflow

    return {
        "MLFLOW_TRACKING_URI": _absolute_store_uri(mlflow.get_tracking_uri()),
        "MLFLOW_REGISTRY_URI": _absolute_store_uri(mlflow.get_registry_uri()),
    }


def _absolute_store_uri(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    parsed = urlparse(uri)
    if parsed.scheme == "" and ("/" in uri or uri.startswith((".", "~"))):
        return str(Path(uri).expanduser().resolve())
    if parsed.scheme == "file":
        return "file://" + str(Path(parsed.path).resolve())
    return uri  # a server, or a bare name such as "databricks"


def _requirements_env(uri: str, manager: str) -> dict[str, Any]:
    """A runtime_env that installs the model's own requirements (pip or uv)."""
    import mlflow.pyfunc

    with _clean_errors():
        requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text().split("\n")
    packages = [r.strip() for r in requirements if r.strip() and not r.startswith("#")]
    return {"pip": packages} if manager == "virtualenv" else {"uv": packages}


def _endpoint_config(config: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """An endpoint's config (from Python, or CLI strings holding JSON) -> weights, options."""
    config = dict(config or {})
    unknown = sorted(set(config) - {"deployments", "sticky_header", "shadow"})
    if unknown:
        raise _error(
            f"endpoint config: unknown key {unknown[0]!r} "
            "(allowed: deployments, sticky_header, shadow)"
        )
    deployments = config.get("deployments")
    if isinstance(deployments, str):
        try:
            deployments = json.loads(deployments)
        except ValueError:
            raise _error("endpoint config: deployments must be JSON") from None
    if isinstance(deployments, list):
        pairs = [d for d in deployments if isinstance(d, dict)]
        deployments = {d.get("name"): d.get("weight", 0) for d in pairs}
    if not isinstance(deployments, dict) or not deployments:
        raise _error(
            "endpoint config: 'deployments' must name deployments and weights, "
            'e.g. {"iris-v1": 90, "iris-v2": 10}'
        )
    try:
        weights = {str(name): float(weight) for name, weight in deployments.items()}
    except (TypeError, ValueError):
        raise _error("endpoint config: every weight must be a number") from None
    options = {k: config[k] for k in ("sticky_header", "shadow") if config.get(k)}
    return weights, options


def _endpoint(runtime: Any, name: str) -> dict[str, Any]:
    traffic = _call(runtime.traffic, name)
    return {
        "name": name,
        "url": f"{runtime.http_url}/{name}",
        "traffic": traffic,
        "deployments": [{"name": k, "weight": v} for k, v in traffic.items()],
    }


def _describe(spec: Any, status: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "flavor": FLAVOR,
        "model_uri": spec.options.get("model_uri"),
        "status": status.status,
        "url": status.url,
        "message": status.message,
        "replicas": status.replicas,
        "config": spec.user_config.get("target_config", {}),
    }


def _to_json_body(inputs: Any) -> str:
    import pandas as pd

    if isinstance(inputs, pd.DataFrame):
        return json.dumps(
            {"dataframe_split": json.loads(inputs.to_json(orient="split", index=False))}
        )
    if isinstance(inputs, str):
        return inputs
    return json.dumps(inputs)


def _error_text(reply: Any) -> str:
    try:
        body = reply.json()
        return f"{body.get('error_code', reply.status_code)}: {body.get('message', reply.text)}"
    except ValueError:
        return reply.text


def _address_of(target_uri: str) -> str | None:
    """``serve`` -> embedded cluster; ``serve:/auto``, ``serve:/host:port``,
    ``serve://host:port`` -> that Ray cluster."""
    if target_uri == "serve":
        return None
    if target_uri.startswith("serve://"):
        return target_uri[len("serve://") :]
    if target_uri.startswith("serve:/"):
        return target_uri[len("serve:/") :] or None
    raise _error(f"target {target_uri!r} is not serve, serve:/<ray address> or serve://host:port")


def _check_flavor(flavor: str | None) -> None:
    if flavor not in (None, FLAVOR):
        raise _error(f"flavor {flavor!r} is not supported (allowed: {FLAVOR})")


def _call(fn: Any, *args: Any) -> Any:
    with _clean_errors():
        return fn(*args)


class _clean_errors:
    """servekit's errors, as MLflow errors: the CLI prints them as one message."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        from servekit.core import NotFound, ServekitError

        if isinstance(exc, NotFound):
            raise _error(str(exc), 404) from None
        if isinstance(exc, ServekitError):
            raise _error(str(exc)) from None
        return False


class ServeTargetError(MlflowException, click.ClickException):
    """An MlflowException that MLflow's click CLI prints as one ``Error: ...`` line."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message, error_code=error_code)

    def format_message(self) -> str:
        return str(self.message)


def _error(message: str, status: int = 400) -> MlflowException:
    from mlflow.protos import databricks_pb2

    code = {404: databricks_pb2.RESOURCE_DOES_NOT_EXIST}.get(status, databricks_pb2.BAD_REQUEST)
    return ServeTargetError(message, error_code=code)


def _say(message: str) -> None:
    if os.environ.get("SERVEKIT_QUIET") != "1":  # stderr: stdout is the command's result
        print(f"[serve] {message}", file=sys.stderr, flush=True)


def run_local(name, model_uri, flavor=None, config=None):
    """Serve the model on the embedded local cluster until Ctrl-C, then remove it."""
    client = ServeDeploymentClient("serve")
    deployment = client.create_deployment(name, model_uri, flavor, config=config)
    print(f"serving {name!r} at {deployment['url']}/invocations; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        client.delete_deployment(name)
        print(f"deleted {name!r}", flush=True)


def target_help():
    return (
        "servekit's `serve` target: MLflow models on Ray Serve, batched and autoscaled.\n\n"
        "Target URIs:\n"
        "  serve                   the embedded local cluster (started if absent)\n"
        "  serve:/<ray address>    an existing cluster, e.g. serve:/auto or serve:/10.0.0.5:6379\n"
        "  serve://host:port       the same, host:port form\n\n"
        "Models: models:/<name>/<version>, models:/<name>@<alias>, runs:/..., local paths.\n"
        "Registry models serve every version: the serve_multiplexed_model_id header\n"
        "(a version or an alias) picks one; the -m version is the default.\n\n"
        "Config (-C key=value):\n" + describe_keys()
    )
