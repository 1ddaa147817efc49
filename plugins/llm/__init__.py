"""LLMs on servekit: vLLM behind OpenAI-compatible routes, LoRA adapters multiplexed.

    from servekit.plugins.llm import serve_llm

    serve_llm("/models/llama-3-8b", name="llm", max_model_len=4096,
              adapters={"sql": "/adapters/sql"}, multiplexing={"max_models_per_replica": 4})
    # openai.OpenAI(base_url="http://127.0.0.1:8000/llm/v1", api_key="-")
    #   .chat.completions.create(model="llama-3-8b:sql", messages=[...])

The same service from a spec file (``servekit deploy llm.yaml``)::

    name: llm
    source: llm:/models/llama-3-8b
    options: {max_model_len: 4096, adapters: {sql: /adapters/sql}}
    multiplexing: {max_models_per_replica: 4}
    resources: {num_cpus: 1, num_gpus: 1}

vLLM loads only inside the replica: importing this module costs nothing.
"""

from __future__ import annotations

from typing import Any

from servekit.plugins.llm._engine import VllmEngine

SCHEME = "llm"


def serve_llm(
    model: str,
    *,
    name: str,
    address: str | None = None,
    wait: bool = True,
    timeout_s: float = 600.0,
    **options: Any,
) -> Any:
    """Serve the model in folder ``model`` (a Hugging Face layout) as service ``name``;
    returns its ``ServiceStatus``.

    ``options`` are ServiceSpec fields (``replicas``, ``autoscaling``, ``multiplexing``,
    ``resources``, ``runtime_env``, ``route_prefix``, ...); every other keyword is an LLM
    option: ``served_model_name``, ``adapters`` (name -> LoRA folder), ``adapter_dir``,
    ``frontend`` (vLLM OpenAI server options) or a vLLM engine argument
    (``max_model_len``, ``dtype``, ``gpu_memory_utilization``, ``enforce_eager``, ...).
    Example::

        serve_llm("/models/tiny", name="tiny", max_model_len=512,
                  gpu_memory_utilization=0.2, resources={"num_cpus": 1})

    Raises SpecError for a bad spec field and DeployError when the engine fails to start
    (an unknown engine argument among them).
    """
    from servekit.core import Runtime, ServiceSpec

    spec_fields = set(ServiceSpec.model_fields)
    llm = dict(options.pop("options", None) or {})
    llm.update({key: options.pop(key) for key in list(options) if key not in spec_fields})
    options.setdefault("resources", {"num_cpus": 1})
    spec = ServiceSpec(name=name, source=f"{SCHEME}:{model}", options=llm, **options)
    return Runtime.connect(address).deploy(spec, wait=wait, timeout_s=timeout_s)


__all__ = ["VllmEngine", "serve_llm"]
