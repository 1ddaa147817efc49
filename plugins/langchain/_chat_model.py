"""ServekitChatModel: a LangChain chat model over an OpenAI-compatible servekit service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field
from servekit.core import client_headers

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


class ServekitChatModel(BaseChatModel):
    """Chat with a model served by servekit (or any OpenAI-compatible server), streaming
    included. Example::

        from servekit.plugins.langchain import ServekitChatModel

        llm = ServekitChatModel(base_url="http://127.0.0.1:8000/llm", model="tiny-llama")
        llm.invoke("Hello!")                # AIMessage
        for chunk in llm.stream("Hello!"):  # AIMessageChunk, token by token
            print(chunk.content, end="")

    ``base_url`` is the service URL; requests go to ``<base_url>/v1/chat/completions``.
    HTTP errors raise ``httpx.HTTPStatusError`` with the server's message.
    """

    base_url: str
    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    api_key: str | None = Field(default=None, repr=False)
    timeout_s: float = 120.0
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "servekit"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model}

    # -- sync -----------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with httpx.Client(timeout=self.timeout_s) as client:
            reply = client.post(
                self._url, json=self._body(messages, stop, False, kwargs), headers=self._headers
            )
        return _result(_checked(reply).json())

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        body = self._body(messages, stop, True, kwargs)
        with (
            httpx.Client(timeout=self.timeout_s) as client,
            client.stream("POST", self._url, json=body, headers=self._headers) as reply,
        ):
            if reply.status_code >= 400:
                reply.read()
                _checked(reply)
            for line in reply.iter_lines():
                chunk = _chunk(line)
                if chunk is None:
                    continue
                if run_manager is not None:
                    run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                yield chunk

    # -- async ----------------------------------------------------------------------
    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            reply = await client.post(
                self._url, json=self._body(messages, stop, False, kwargs), headers=self._headers
            )
        return _result(_checked(reply).json())

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        body = self._body(messages, stop, True, kwargs)
        async with (
            httpx.AsyncClient(timeout=self.timeout_s) as client,
            client.stream("POST", self._url, json=body, headers=self._headers) as reply,
        ):
            if reply.status_code >= 400:
                await reply.aread()
                _checked(reply)
            async for line in reply.aiter_lines():
                chunk = _chunk(line)
                if chunk is None:
                    continue
                if run_manager is not None:
                    await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                yield chunk

    # -- request --------------------------------------------------------------------
    @property
    def _url(self) -> str:
        return self.base_url.rstrip("/") + "/v1/chat/completions"

    @property
    def _headers(self) -> dict[str, str]:
        headers = client_headers()  # the active span's traceparent; SERVEKIT_TOKEN
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    def _body(
        self, messages: list[BaseMessage], stop: list[str] | None, stream: bool, kwargs: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_to_openai(m) for m in messages],
            "stream": stream,
            **self.extra_body,
            **kwargs,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if stop:
            body["stop"] = stop
        if self.temperature is not None:
            body.setdefault("temperature", self.temperature)
        if self.max_tokens is not None:
            body.setdefault("max_tokens", self.max_tokens)
        return body


def _to_openai(message: BaseMessage) -> dict[str, Any]:
    role = _ROLES.get(message.type, getattr(message, "role", "user"))
    out: dict[str, Any] = {"role": role, "content": message.content}
    if message.type == "tool":
        out["tool_call_id"] = getattr(message, "tool_call_id", "")
    return out


def _usage(data: dict[str, Any] | None) -> UsageMetadata | None:
    if not data:
        return None
    return UsageMetadata(
        input_tokens=int(data.get("prompt_tokens", 0)),
        output_tokens=int(data.get("completion_tokens", 0)),
        total_tokens=int(data.get("total_tokens", 0)),
    )


def _result(data: dict[str, Any]) -> ChatResult:
    choice = data["choices"][0]
    message = AIMessage(
        content=choice["message"].get("content") or "",
        usage_metadata=_usage(data.get("usage")),
        response_metadata={
            "model_name": data.get("model"),
            "finish_reason": choice.get("finish_reason"),
        },
    )
    return ChatResult(
        generations=[
            ChatGeneration(
                message=message, generation_info={"finish_reason": choice.get("finish_reason")}
            )
        ],
        llm_output={"model_name": data.get("model"), "token_usage": data.get("usage")},
    )


def _chunk(line: str) -> ChatGenerationChunk | None:
    """One ``data: {...}`` line of an OpenAI stream as a chunk; None for others."""
    if not line.startswith("data:"):
        return None
    payload = line[len("data:") :].strip()
    if not payload or payload == "[DONE]":
        return None
    data = json.loads(payload)
    choices = data.get("choices") or []
    content = (choices[0].get("delta") or {}).get("content") or "" if choices else ""
    finish = choices[0].get("finish_reason") if choices else None
    message = AIMessageChunk(content=content, usage_metadata=_usage(data.get("usage")))
    info = {"finish_reason": finish} if finish else None
    return ChatGenerationChunk(message=message, generation_info=info)


def _checked(reply: httpx.Response) -> httpx.Response:
    if reply.status_code >= 400:
        try:
            body = reply.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = error.get("message") or reply.text
        else:
            message = str(error) if error else reply.text
        raise httpx.HTTPStatusError(
            f"{reply.status_code} from {reply.request.url}: {message}",
            request=reply.request,
            response=reply,
        )
    return reply
