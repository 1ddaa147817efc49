"""ModelServer: the one Ray Serve deployment that hosts every adapter's Servable."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import inspect
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import trace
from ray import serve
from ray.serve import Application
from servekit.core._private import telemetry
from servekit.core._private.auth import Credentials
from servekit.core._private.batching import Batcher
from servekit.core._private.errors import BadRequest, SpecError
from servekit.core._private.limits import BodyRejected, read_body, refuse, replay
from servekit.core._private.metrics_hub import start_pushing
from servekit.core._private.servable import Servable
from servekit.core._private.sources import servable_class
from servekit.core._private.spec import LIVE_FIELDS, ServiceSpec, default_max_ongoing
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("servekit.server")

MODEL_ID_HEADER = "serve_multiplexed_model_id"
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,255}")
DEPLOYMENT_NAME = "ModelServer"
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# Measured on 2 cores (bench/ingress.py): Serve's per-request access log and its
# hop from the HTTP loop to a separate user-code thread halve a replica's req/s.
# ModelServer never blocks its loop (model code runs in Servable.run_blocking),
# so the user-code thread buys nothing here.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
# A user factory that raises is not worth 20 retries: fail the deploy fast.
_CONSTRUCTOR_RETRIES = 2


class ServingContext:
    """What a Servable's routes use to reach the model: batching and multiplexing included."""

    def __init__(self, server: ModelServer) -> None:
        self._server = server

    @property
    def spec(self) -> ServiceSpec:
        return self._server.spec

    def model_id(self, request: Request | None = None) -> str:
        """The model id a request asks for: header, handle option, or the spec's default.

        Raises BadRequest when the service is multiplexed and no id was given.
        """
        return self._server.model_id(request)

    async def infer(self, item: Any, model_id: str | None = None) -> Any:
        """Predict one input through the batcher; ``model_id`` defaults to the request's."""
        return await self._server.infer(item, model_id)

    async def model(self, model_id: str = "") -> Any:
        """The loaded model for ``model_id`` (for routes that bypass batching, e.g. streams)."""
        return await self._server.get_model(model_id)


@serve.ingress()
class ModelServer:
    """Hosts one Servable: batching, multiplexing, health checks, live reconfigure."""

    async def __init__(self, spec: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        self.spec = ServiceSpec(**spec)
        self.replica_id = _replica_id()
        self.metrics = telemetry.ReplicaMetrics(
            self.spec.name, code_version(self.spec), self.replica_id
        )
        telemetry.set_replica_metrics(self.metrics)
        if not self.replica_id.startswith("pid-"):  # inside a Serve replica
            self._pusher = start_pushing(f"{self.spec.name}/{self.replica_id}", self.metrics.text)
        self._servable: Servable = servable_class(self.spec.scheme)(
            self.spec.target, dict(self.spec.options)
        )
        batching = self.spec.batching
        # One span per batch the model computes: what a trace shows as the model's work.
        self._batcher = Batcher(
            self._run_batch,
            batching.max_batch_size,
            batching.max_wait_ms,
            span_name=f"predict {self.spec.name}",
        )
        self._asgi: Any = None
        # Read before the model loads: a service whose tokens are missing must not start.
        self.credentials = Credentials(self.spec.auth) if self.spec.auth else None
        self._model: Any = None
        self._load_multiplexed: Any = None
        self._queued_models: dict[str, Any] = {}
        await self._servable.start()
        if self.spec.multiplexing is not None:
            limit = self.spec.multiplexing.max_models_per_replica

            async def load(model_id: str) -> _Loaded:
                return _Loaded(await self._load(model_id), self._servable, self.metrics)

            self._load_multiplexed = serve.multiplexed(max_num_models_per_replica=limit)(load)
            default = self.spec.multiplexing.default_model_id
            if default:
                # The default model loads at start, so a model that cannot load fails
                # the deploy instead of the first request.
                await self._load_multiplexed(default)
        else:
            self._model = await self._load("")

    # -- model loading ---------------------------------------------------------------
    async def _load(self, model_id: str) -> Any:
        started = time.perf_counter()
        logger.info("loading model %r for service %r", model_id or self.spec.target, self.spec.name)
        attributes = {"servekit.service": self.spec.name, "servekit.model_id": model_id}
        # A multiplexed load on a request's behalf is a child of that request's span.
        with telemetry.span(f"load {self.spec.target}", attributes):
            if inspect.iscoroutinefunction(self._servable.load):
                model = await self._servable.load(model_id)
            else:
                loop = asyncio.get_running_loop()
                context = contextvars.copy_context()
                model = await loop.run_in_executor(None, context.run, self._servable.load, model_id)
        self.metrics.model_loaded()
        logger.info("loaded model %r in %.2fs", model_id, time.perf_counter() - started)
        return model

    async def get_model(self, model_id: str) -> Any:
        if self._load_multiplexed is None:
            return self._model
        return (await self._load_multiplexed(model_id)).model

    def model_id(self, request: Request | None = None) -> str:
        if self.spec.multiplexing is None:
            return ""
        model_id = ""
        if request is not None:
            model_id = request.headers.get(MODEL_ID_HEADER) or request.headers.get(
                MODEL_ID_HEADER.replace("_", "-"), ""
            )
        model_id = model_id or serve.get_multiplexed_model_id()
        model_id = model_id or (self.spec.multiplexing.default_model_id or "")
        if model_id and (not _MODEL_ID.fullmatch(model_id) or ".." in model_id.split("/")):
            # An id only selects among the models the spec's source holds; it is never
            # a path or an import spec, so anything shaped like one is refused here.
            raise BadRequest(
                f"{model_id[:80]!r} is not a model id: use letters, digits and . _ - : @ /",
                code="invalid_model_id",
            )
        if not model_id:
            raise BadRequest(
                f"service {self.spec.name!r} serves several models: "
                f"name one in the {MODEL_ID_HEADER!r} header",
                code="model_id_required",
            )
        return model_id

    # -- prediction ------------------------------------------------------------------
    async def infer(self, item: Any, model_id: str | None = None) -> Any:
        if model_id is None:
            model_id = self.model_id()
        if self._load_multiplexed is not None:
            # Load (or touch in the LRU) before queueing, so a batch never waits on a load;
            # the batch then uses the model this request saw, without a second lookup.
            self._queued_models[model_id] = (await self._load_multiplexed(model_id)).model
        return await self._batcher.submit(model_id, item)

    async def _run_batch(self, model_id: str, items: list[Any]) -> list[Any]:
        # pop: a model evicted from the LRU must not live on here.
        model = self._queued_models.pop(model_id, None) if self._load_multiplexed else self._model
        if model is None:
            model = await self.get_model(model_id)
        started = time.perf_counter()
        try:
            return await self._servable.predict(model, items)
        finally:
            self.metrics.batch(len(items), time.perf_counter() - started)

    async def predict(self, item: Any, model_id: str | None = None) -> Any:
        """Handle entry point: ``handle.predict.remote(item)``; the model id may come
        from ``handle.options(multiplexed_model_id=...)``."""
        started = time.perf_counter()
        code = 500
        try:
            with self._batcher.arriving():
                answer = await self.infer(item, model_id or None)
            code = 200
            return answer
        except BadRequest as exc:
            code = exc.status_code
            raise
        finally:
            self.metrics.request("handle:predict", code, time.perf_counter() - started)

    def describe(self) -> dict[str, Any]:
        """The spec this replica runs and what it holds, for ``Runtime.status``."""
        return {
            "spec": self.spec.model_dump(mode="json"),
            "replica_id": self.replica_id,
            "pid": os.getpid(),
            "batch_sizes": dict(self._batcher.batch_sizes),
            **self._servable.describe(),
        }

    # -- Ray Serve hooks -------------------------------------------------------------
    def reconfigure(self, config: dict[str, Any]) -> None:
        """Take the spec's live parts: batching limits and the Servable's user_config."""
        spec = ServiceSpec(**config["spec"])
        if spec.batching != self.spec.batching:
            logger.info("batching now %s", spec.batching)
        self._batcher.configure(spec.batching.max_batch_size, spec.batching.max_wait_ms)
        if spec.auth != self.spec.auth:
            self.credentials = Credentials(spec.auth) if spec.auth else None
        self.spec = spec
        self._servable.reconfigure(dict(spec.user_config))

    def check_health(self) -> None:
        self._servable.check_health()

    def __serve_build_asgi_app__(self) -> Any:
        if self._asgi is None:
            app = FastAPI(title=f"servekit: {self.spec.name}", docs_url=None, redoc_url=None)
            app.state.servekit = self
            app.include_router(self._servable.routes(ServingContext(self)))
            _install_error_handlers(app, self._servable)
            self._asgi = _Ingress(app, self)
        return self._asgi

    async def http(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Serve one HTTP request that arrived elsewhere (a Router) through this replica's
        routes, yielding its ASGI messages: the response start, then its body chunks.
        ``request`` holds ``method``, ``path`` (under the service), ``query_string``,
        ``headers`` (a list of byte pairs) and ``body``. Call with ``stream=True``."""
        async for message in self._serve_http(request):
            yield message

    async def http_unary(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """``http`` in one round trip: every ASGI message of the answer, as a list. Each
        item a streaming handle yields costs a Ray object; a plain answer needs none."""
        return [message async for message in self._serve_http(request)]

    async def _serve_http(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "http",
            "method": request["method"],
            "path": request["path"],
            "raw_path": request["path"].encode(),
            "root_path": "",
            "query_string": request.get("query_string", b""),
            "headers": request.get("headers", []),
            "client": None,
            "server": None,
        }
        sent = asyncio.Event()
        messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def receive() -> dict[str, Any]:
            if not sent.is_set():
                sent.set()
                body = request.get("body", b"")
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the caller cancels us instead
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await messages.put(message)

        async def run() -> None:
            try:
                await self.__serve_build_asgi_app__()(scope, receive, send)
            finally:
                await messages.put(None)

        task = asyncio.create_task(run())
        try:
            while (message := await messages.get()) is not None:
                yield message
            await task  # re-raise what the app raised
        finally:
            task.cancel()


class _Loaded:
    """A model in Serve's multiplexing LRU. Serve calls ``__del__`` when it evicts one,
    which hands the model to ``Servable.unload`` (once; Python's own ``__del__`` at
    garbage collection then finds nothing left to do)."""

    def __init__(self, model: Any, servable: Servable, metrics: telemetry.ReplicaMetrics) -> None:
        self.model = model
        self._servable: Servable | None = servable
        self._metrics = metrics

    def __del__(self) -> None:
        servable, self._servable = self._servable, None
        if servable is not None:
            self._metrics.model_evicted()
            try:
                servable.unload(self.model)
            except Exception:
                logger.exception("unloading a model failed")


class _Ingress:
    """The replica's ASGI entry: refuses requests without the service's credentials (401)
    and bodies over its limits (413, 408) before any model code runs, serves the bare
    route prefix (``POST /echo``) without a redirect, marks each POST as arriving until
    it reaches the batcher, counts each request in the replica's metrics and gives Serve's
    request span its HTTP attributes."""

    def __init__(self, app: Any, server: ModelServer) -> None:
        self.app = app
        self._server = server
        self._batcher = server._batcher
        self._metrics = server.metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root = scope.get("root_path", "")
        if scope["path"] in ("", root):
            scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        status = 500  # what the client sees if the app fails before answering

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        credentials = self._server.credentials
        limits = self._server.spec.limits
        error_body = self._server._servable.error_body
        try:
            if credentials is not None and not credentials.allows(scope.get("headers") or []):
                message = f"missing or invalid credentials: {credentials.challenge()}"
                challenge = [(b"www-authenticate", b'Bearer realm="servekit"')]
                await refuse(
                    send_status,
                    401,
                    error_body(401, "unauthorized", message),
                    *(challenge if credentials.auth.type == "bearer" else []),
                )
                return
            post = scope.get("method") == "POST"
            with self._batcher.arriving() if post else contextlib.nullcontext():
                try:
                    body = await read_body(scope, receive, limits.max_body, limits.body_timeout_s)
                except BodyRejected as exc:
                    error = error_body(exc.status, exc.code, str(exc))
                    await refuse(send_status, exc.status, error)
                    return
                if body is None:
                    return  # the client left before sending its request
                await self.app(scope, replay(body, receive), send_status)
        finally:
            # FastAPI leaves the matched route in the scope: a bounded label, unlike a path.
            matched = scope.get("route")
            route = root + getattr(matched, "path_format", "") if matched else "unmatched"
            self._metrics.request(route, status, time.perf_counter() - started)
            telemetry.annotate_http(
                trace.get_current_span(), scope.get("method", ""), scope["path"], route, status
            )


def _install_error_handlers(app: FastAPI, servable: Servable) -> None:
    def reply(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse(servable.error_body(status, code, message), status_code=status)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return reply(exc.status_code, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        return reply(422, "invalid_input", problems or "invalid input")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return reply(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        logger.exception("request %s failed", request_id)
        return reply(
            500, "internal_error", f"the model failed on this input (request {request_id})"
        )


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (unit use)
        return f"pid-{os.getpid()}"


def build_application(
    spec: ServiceSpec,
    prepare_env: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Application:
    """The Ray Serve application for ``spec``: one ModelServer deployment.

    ``prepare_env`` turns the spec's runtime_env into one the cluster can use
    (uploading local folders); the replicas still get the spec as written.
    """
    threads = str(spec.resources.thread_count())
    runtime_env = dict(spec.runtime_env)
    if prepare_env is not None:
        runtime_env = prepare_env(runtime_env)
    env_vars = {name: threads for name in _THREAD_VARS}
    env_vars.update(REPLICA_ENV)
    env_vars.update(telemetry.replica_env(spec.name))
    env_vars.update(runtime_env.get("env_vars") or {})
    runtime_env["env_vars"] = env_vars
    actor_options: dict[str, Any] = {
        "num_cpus": spec.resources.num_cpus,
        "runtime_env": runtime_env,
    }
    if spec.resources.num_gpus:
        actor_options["num_gpus"] = spec.resources.num_gpus
    if spec.resources.memory:
        actor_options["memory"] = spec.resources.memory
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": spec.max_ongoing_requests or default_max_ongoing(spec),
        # The whole spec rides in user_config, so the replicas always know the spec they
        # run, and the parts reconfigure() applies change without a restart.
        "user_config": {"spec": spec.model_dump(mode="json")},
        "health_check_period_s": spec.health_check.period_s,
        "health_check_timeout_s": spec.health_check.timeout_s,
        "graceful_shutdown_timeout_s": spec.graceful_shutdown_timeout_s,
        "max_constructor_retry_count": _CONSTRUCTOR_RETRIES,
        "logging_config": {"enable_access_log": spec.access_log},
    }
    if spec.autoscaling is not None:
        options["autoscaling_config"] = spec.autoscaling.model_dump()
    else:
        options["num_replicas"] = 1 if spec.replicas is None else spec.replicas
    # A stable version makes Serve restart replicas only when a field outside
    # LIVE_FIELDS changed (the model source, its options, resources, runtime_env).
    deployment = serve.deployment(ModelServer).options(
        version=code_version(spec), _internal=True, **options
    )
    return deployment.bind(spec.model_dump(mode="json"))


def code_version(spec: ServiceSpec) -> str:
    from importlib.metadata import version

    fixed = spec.model_dump(mode="json", exclude=LIVE_FIELDS)
    payload = json.dumps([version("servekit"), fixed], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_service(args: dict[str, Any]) -> Application:
    """Ray Serve's application builder for a servekit service, the ``import_path`` of the
    Serve configs servekit renders for KubeRay and ``serve deploy``::

        applications:
          - name: iris
            import_path: servekit.core:build_service
            args: {spec: {name: iris, source: "mlflow:models:/iris/1"}}

    Raises SpecError when ``args["spec"]`` is not a valid spec (Serve reports it as the
    application's DEPLOY_FAILED message).
    """
    spec = args.get("spec") if isinstance(args, dict) else None
    if not isinstance(spec, dict):
        raise SpecError("args.spec", "the builder needs the service spec as a mapping")
    return build_application(ServiceSpec(**spec))
