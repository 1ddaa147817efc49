"""ServekitChatModel against an OpenAI-compatible server the test starts (a real uvicorn
server speaking /v1/chat/completions); the LLM engine's own routes come with the LLM issue."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest

pytest.importorskip("langchain_core", reason="the langchain extra is not installed")

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from servekit.plugins.langchain import ServekitChatModel


def openai_app(seen: list[dict]) -> FastAPI:
    """Reverses the last user message; streams it a word at a time with usage at the end."""
    app = FastAPI()

    @app.post("/llm/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("authorization")})
        if body["model"] != "tiny":
            return JSONResponse(
                {"error": {"message": f"model {body['model']!r} not found", "code": 404}}, 404
            )
        words = body["messages"][-1]["content"].split()[::-1]
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": len(words),
            "total_tokens": 7 + len(words),
        }
        if not body.get("stream"):
            message = {"role": "assistant", "content": " ".join(words)}
            return {
                "model": "tiny",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }

        async def events():
            for index, word in enumerate(words):
                delta = {"content": word if index == 0 else f" {word}"}
                yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': delta}]})}\n\n"
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(done)}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def server():
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    seen: list[dict] = []
    config = uvicorn.Config(openai_app(seen), host="127.0.0.1", port=port, log_level="warning")
    uvi = uvicorn.Server(config)
    thread = threading.Thread(target=uvi.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uvi.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/llm", seen
    uvi.should_exit = True
    thread.join(10)


def test_invoke_sends_openai_messages_and_returns_usage(server):
    url, seen = server
    llm = ServekitChatModel(base_url=url, model="tiny", temperature=0.0, api_key="k-1")
    answer = llm.invoke([SystemMessage("be brief"), HumanMessage("one two three")])
    assert isinstance(answer, AIMessage) and answer.content == "three two one"
    assert answer.usage_metadata == {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    body = seen[-1]["body"]
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two three"},
    ]
    assert body["temperature"] == 0.0 and body["stream"] is False
    assert seen[-1]["auth"] == "Bearer k-1"


def test_stream_yields_tokens_as_they_come(server):
    url, _ = server
    llm = ServekitChatModel(base_url=url, model="tiny")
    chunks = list(llm.stream("a b c d"))
    text_chunks = [c.content for c in chunks if c.content]
    assert text_chunks == ["d", " c", " b", " a"]
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.content == "d c b a"
    assert merged.usage_metadata["output_tokens"] == 4


def test_async_and_inside_a_chain(server):
    url, _ = server
    llm = ServekitChatModel(base_url=url, model="tiny")
    chain = ChatPromptTemplate.from_messages([("human", "{a} {b}")]) | llm | StrOutputParser()

    async def run():
        whole = await chain.ainvoke({"a": "left", "b": "right"})
        parts = [p async for p in chain.astream({"a": "x", "b": "y"})]
        return whole, parts

    whole, parts = asyncio.run(run())
    assert whole == "right left"
    assert [p for p in parts if p] == ["y", " x"]


def test_server_errors_raise_with_the_servers_message(server):
    url, _ = server
    llm = ServekitChatModel(base_url=url, model="huge")
    with pytest.raises(httpx.HTTPStatusError, match="model 'huge' not found"):
        llm.invoke("hi")
    with pytest.raises(httpx.HTTPStatusError, match="model 'huge' not found"):
        list(llm.stream("hi"))
