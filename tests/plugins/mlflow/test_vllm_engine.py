"""`-C engine=vllm`: a tiny Llama logged with MLflow's transformers flavor (weights in the
artifact), deployed with the real MLflow CLI, answering `predict` and `predict_stream`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import mlflow
import pytest

pytest.importorskip("vllm", reason="the llm extra (vLLM) is not installed")

from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException

from tests.plugins.llm.tiny_llama import build_tiny_llama
from tests.plugins.mlflow.test_target import cli

NAME = "tiny-chat"
ENGINE_ARGS = {"max_model_len": 256, "kv_cache_memory_bytes": 64 * 2**20}
pytestmark = pytest.mark.timeout(600)


def log_transformers_llm(root: Path, name: str, task: str) -> str:
    """Log the tiny Llama with mlflow.transformers (weights saved) and register it."""
    import torch
    import transformers

    folder = build_tiny_llama(root / name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    experiment = mlflow.get_experiment_by_name("servekit-tests").experiment_id
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.transformers.log_model(
            {"model": model, "tokenizer": tokenizer},
            name="model",
            task=task,  # given: MLflow would otherwise ask the Hub
            registered_model_name=name,
            # MLflow's default requirements name torchvision, which this venv lacks.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "transformers"],
        )
    return f"models:/{name}/{info.registered_model_version}"


@pytest.fixture(scope="module")
def chat_model(registry, runtime, tmp_path_factory):
    os.environ["HF_HUB_OFFLINE"] = "1"  # logging looks for a model card; nothing is fetched
    uri = log_transformers_llm(tmp_path_factory.mktemp("tf"), NAME, "llm/v1/chat")
    created = cli(
        "create", "-t", "serve", "--name", NAME, "-m", uri,
        "-C", "engine=vllm", "-C", f"engine_args={json.dumps(ENGINE_ARGS)}", "-C", "num_cpus=1",
        timeout=500,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    yield runtime.url(NAME)
    cli("delete", "-t", "serve", "--name", NAME)


HELLO = [{"role": "user", "content": "Hello"}]


def test_predict_answers_mlflow_chat_completions(chat_model):
    client = get_deploy_client("serve")
    reply = client.predict(NAME, {"messages": HELLO, "max_tokens": 5, "temperature": 0})
    [answer] = reply["predictions"]
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["usage"]["completion_tokens"] <= 5
    assert answer["usage"]["total_tokens"] == (
        answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    )


def test_http_answers_are_mlflow_scoring_server_shapes(chat_model):
    unwrapped = httpx.post(f"{chat_model}/invocations", json={"messages": HELLO}, timeout=120)
    assert unwrapped.status_code == 200, unwrapped.text
    assert unwrapped.json()[0]["object"] == "chat.completion"  # a bare list, as MLflow answers
    body = {"dataframe_records": [{"messages": HELLO, "max_tokens": 2}] * 2}
    reply = httpx.post(f"{chat_model}/invocations", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert [p["object"] for p in reply.json()["predictions"]] == ["chat.completion"] * 2


def test_predict_stream_yields_chunks_token_by_token(chat_model):
    client = get_deploy_client("serve")
    body = {"messages": HELLO, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    chunks = list(client.predict_stream(NAME, body))
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) >= 2
    [whole] = client.predict(NAME, body)["predictions"]
    assert "".join(p for p in pieces if p) == whole["choices"][0]["message"]["content"]


def test_bad_input_is_an_mlflow_400(chat_model):
    reply = httpx.post(f"{chat_model}/invocations", json={"prompt": "hi"}, timeout=60)
    assert reply.status_code == 400
    assert "messages" in reply.json()["message"]
    too_long = {"messages": [{"role": "user", "content": "fox " * 300}]}
    reply = httpx.post(f"{chat_model}/invocations", json=too_long, timeout=60)
    assert reply.status_code == 400 and "256" in reply.json()["message"]
    with pytest.raises(MlflowException, match="256"):
        list(get_deploy_client("serve").predict_stream(NAME, {**too_long}))


def test_a_bad_engine_value_names_the_option(registry):
    done = cli("create", "-t", "serve", "--name", "x", "-m", "models:/iris/1", "-C", "engine=tgi")
    assert done.returncode != 0
    assert "engine" in done.stderr and "vllm" in done.stderr
    done = cli(
        "create", "-t", "serve", "--name", "x", "-m", "models:/iris/1", "-C", "engine_args=[1"
    )
    assert done.returncode != 0 and "engine_args" in done.stderr and "JSON" in done.stderr
