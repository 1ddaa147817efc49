"""LangServe's wire format: JSON encoding, input decoding, server-sent events.

Decoding turns only well-known data back into objects (messages and documents,
recognised by their ``type``), never arbitrary classes: no request can make a
replica import or unpickle anything.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from pydantic import BaseModel, RootModel, ValidationError
from servekit.core import BadRequest

_MESSAGE_TYPES = {
    "human",
    "ai",
    "system",
    "tool",
    "chat",
    "function",
    "AIMessageChunk",
    "HumanMessageChunk",
    "SystemMessageChunk",
    "ToolMessageChunk",
    "ChatMessageChunk",
    "FunctionMessageChunk",
}


def dumps(value: Any) -> bytes:
    """JSON as LangServe writes it: pydantic objects (messages, documents) as their fields."""
    return orjson.dumps(value, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, BaseException):  # e.g. in stream_events data: never the traceback
        return {"type": type(value).__name__}
    if isinstance(value, set | frozenset):
        return list(value)
    return repr(value)


def parse_input(runnable: Any, raw: Any) -> Any:
    """Decode well-known objects, then validate against the runnable's input schema;
    a mismatch is a 422 naming each problem."""
    schema = runnable.get_input_schema()
    try:
        validated = schema.model_validate(decode(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}"
            for err in exc.errors()[:10]
        )
        raise BadRequest(
            f"the input does not match {runnable.get_name()}'s input schema: {problems}",
            status_code=422,
            code="invalid_input",
        ) from None
    if isinstance(validated, RootModel):
        return validated.root
    # Named fields (a prompt's variables): what the client sent, as validated.
    fields = {name: getattr(validated, name) for name in validated.model_fields_set}
    fields.update(validated.__pydantic_extra__ or {})
    return fields


def decode(value: Any) -> Any:
    """Messages and documents sent as dicts become objects again; nothing else does."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    value = {key: decode(item) for key, item in value.items()}
    kind = value.get("type")
    try:
        if kind in _MESSAGE_TYPES and "content" in value:
            return _message_adapter().validate_python(value)
        if kind == "Document" and "page_content" in value:
            from langchain_core.documents import Document

            return Document.model_validate(value)
    except ValidationError:
        pass  # a dict that only looks like a message stays a dict
    return value


@cache
def _message_adapter() -> Any:
    from langchain_core.messages import AnyMessage
    from pydantic import TypeAdapter

    return TypeAdapter(AnyMessage)


def sse(event: str, data: Any) -> str:
    """One server-sent event; ``end`` carries no data, as in LangServe."""
    if event == "end":
        return "event: end\r\n\r\n"
    return f"event: {event}\r\ndata: {dumps(data).decode()}\r\n\r\n"


def error_event(status_code: int, message: str) -> str:
    return sse("error", {"status_code": status_code, "message": message})
