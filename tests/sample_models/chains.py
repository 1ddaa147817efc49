"""LangChain runnables the chain-host tests serve (shipped to replicas with py_modules):
real langchain-core prompts, parsers, lambdas and generators around a fake chat model."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig, RunnableGenerator, RunnableLambda
from servekit.plugins.langchain import service_runnable


class EchoChatModel(BaseChatModel):
    """Answers ``echo: <last message>``; streams it word by word."""

    @property
    def _llm_type(self) -> str:
        return "echo"

    def _answer(self, messages: list[BaseMessage]) -> str:
        return f"echo: {messages[-1].content}"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(self._answer(messages)))])

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        for index, word in enumerate(self._answer(messages).split(" ")):
            chunk = ChatGenerationChunk(message=AIMessageChunk(word if index == 0 else f" {word}"))
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


prompt = ChatPromptTemplate.from_messages(
    [("system", "You are terse."), ("human", "Tell me about {topic}")]
)
# prompt -> chat model -> parser: served as a module attribute.
joke = prompt | EchoChatModel() | StrOutputParser()


def make_chat() -> Any:
    """A zero-argument factory: the chat model alone (messages in, a message out)."""
    return EchoChatModel()


def shout(text: str) -> str:
    if text == "boom":
        raise RuntimeError("secret internal detail")
    return text.upper()


shouter = RunnableLambda(shout)


async def spell(texts: AsyncIterator[str]) -> AsyncIterator[str]:
    """Streams each letter; fails midway at a ``!``."""
    async for text in texts:
        for letter in text:
            if letter == "!":
                raise ValueError("secret internal detail")
            yield letter


speller = RunnableGenerator(spell)


async def whoami(text: str, config: RunnableConfig) -> dict:
    configurable = config.get("configurable", {})
    return {"text": text, **{k: v for k, v in configurable.items() if not k.startswith("__")}}


who = RunnableLambda(whoami)


def add_tenant(config: dict, request: Any) -> dict:
    """A per-request modifier: the tenant comes from a header only the server trusts."""
    config.setdefault("configurable", {})["tenant"] = request.headers.get("x-tenant", "none")
    return config


async def wait_long(text: str) -> str:
    """Marks its start and whether it was cancelled, in $SK_CANCEL_DIR/<text>."""
    marker = Path(os.environ["SK_CANCEL_DIR"]) / text
    marker.write_text("started")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        marker.write_text("cancelled")
        raise
    marker.write_text("finished")
    return text


slow = RunnableLambda(wait_long)

# Composition: a step calls another servekit service (here the Echo sample model) by handle.
retrieve = service_runnable("lc-retriever") | RunnableLambda(
    lambda found: f"context: {found['echo']}"
)
