"""The benchmark's chain: prompt -> a fake chat model (echoes, streams word by word) ->
string parser; the same object under LangServe and under servekit."""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate


class EchoChatModel(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "echo"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        text = f"echo: {messages[-1].content}"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        for index, word in enumerate(f"echo: {messages[-1].content}".split(" ")):
            yield ChatGenerationChunk(message=AIMessageChunk(word if index == 0 else f" {word}"))


prompt = ChatPromptTemplate.from_messages(
    [("system", "You are terse."), ("human", "Tell me a joke about {topic}")]
)
chain = prompt | EchoChatModel() | StrOutputParser()
