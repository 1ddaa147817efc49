"""LangChain on servekit: chains served as LangServe-compatible endpoints, and a chat
model for LLMs served by servekit.

    from servekit.plugins.langchain import serve_runnable

    serve_runnable("app.chains:qa", name="qa", replicas=2)
    # POST http://127.0.0.1:8000/qa/invoke  {"input": {"question": "..."}}
    # langserve.RemoteRunnable("http://127.0.0.1:8000/qa/") works unchanged

The same service from a spec file (``servekit deploy qa.yaml``)::

    name: qa
    source: langchain:app.chains:qa
    runtime_env: {working_dir: .}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from servekit.plugins.langchain._chat_model import ServekitChatModel

SCHEME = "langchain"


def serve_runnable(
    target: str,
    *,
    name: str,
    address: str | None = None,
    wait: bool = True,
    timeout_s: float = 300.0,
    **options: Any,
) -> Any:
    """Serve the Runnable at ``target`` (``pkg.mod:attr``, a Runnable or a zero-argument
    function returning one) as service ``name``; returns its ``ServiceStatus``.

    ``options`` are ServiceSpec fields (``replicas``, ``autoscaling``, ``batching``,
    ``resources``, ``runtime_env``, ``route_prefix``, ...) and the chain's own options:
    ``config`` (merged under every request's config), ``config_keys`` (what a request
    may set, default ``["configurable"]``), ``config_headers`` (header -> configurable
    key) and ``per_request_modifier`` (``pkg.mod:fn``, ``fn(config, request) -> config``).
    The module must be importable on the cluster: pass ``runtime_env={"working_dir": "."}``
    when it lives in your project. Example::

        serve_runnable("app.chains:qa", name="qa", replicas=2,
                       config_headers={"x-user-id": "user_id"},
                       runtime_env={"working_dir": "."})

    Raises SpecError for a bad option and DeployError when the chain fails to build.
    """
    from servekit.core import Runtime, ServiceSpec
    from servekit.plugins.langchain._servable import ChainOptions

    chain = dict(options.pop("options", None) or {})
    chain.update(
        {key: options.pop(key) for key in list(options) if key in ChainOptions.model_fields}
    )
    ChainOptions.parse(chain)  # SpecError before connecting
    options.setdefault("resources", {"num_cpus": 0.5})
    spec = ServiceSpec(name=name, source=f"{SCHEME}:{target}", options=chain, **options)
    return Runtime.connect(address).deploy(spec, wait=wait, timeout_s=timeout_s)


def service_runnable(name: str) -> Any:
    """A Runnable step that calls servekit service ``name`` through its DeploymentHandle
    (inside the cluster, no HTTP): compose a chain with an embedding or retrieval service.
    Example::

        chain = service_runnable("retriever") | prompt | llm | StrOutputParser()
    """
    from langchain_core.runnables import RunnableLambda
    from servekit.core import service_handle

    handles: list[Any] = []  # looked up on first use, inside the replica that calls

    def handle() -> Any:
        if not handles:
            handles.append(service_handle(name))
        return handles[0]

    async def call(value: Any) -> Any:
        return await handle().predict.remote(value)

    def call_sync(value: Any) -> Any:
        return handle().predict.remote(value).result()

    return RunnableLambda(call_sync, afunc=call, name=f"service:{name}")


def __getattr__(attr: str) -> Any:
    if attr == "ServekitChatModel":  # langchain-core loads only when asked for
        from servekit.plugins.langchain._chat_model import ServekitChatModel

        return ServekitChatModel
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["ServekitChatModel", "serve_runnable", "service_runnable"]
