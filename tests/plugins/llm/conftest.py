"""A tiny Llama and three LoRA adapters for it, built once per session: nothing is downloaded."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="the llm extra (vLLM) is not installed")

from tests.plugins.llm.tiny_llama import build_lora_adapter, build_tiny_llama

ADAPTERS = ("a", "b", "c")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """The model folder, and a folder holding adapters ``a``, ``b`` and ``c``."""
    root = tmp_path_factory.mktemp("llm")
    model = build_tiny_llama(root / "tiny")
    for seed, name in enumerate(ADAPTERS, start=1):
        build_lora_adapter(model, root / "adapters" / name, seed=seed)
    return model, root / "adapters"
