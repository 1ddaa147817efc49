"""A small LangChain chain for the demo: prompt -> a stand-in chat model -> parser.

The stand-in answers by echoing the prompt, word by word when streamed; swap in a real
chat model (for example ServekitChatModel in front of a served LLM) without changing
anything else.
"""

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
        text = f"You asked: {messages[-1].content}"
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        for index, word in enumerate(f"You asked: {messages[-1].content}".split(" ")):
            yield ChatGenerationChunk(message=AIMessageChunk(word if index == 0 else f" {word}"))


def make_chain():
    """Built inside each replica: real chains hold clients that cannot be pickled."""
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer in one line."), ("human", "Explain {topic} to a new engineer.")]
    )
    return prompt | EchoChatModel() | StrOutputParser()
