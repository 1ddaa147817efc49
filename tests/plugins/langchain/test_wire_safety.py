"""No request can make a chain host import or instantiate a class: LangChain's own
serialized form ({"lc": 1, "type": "constructor", ...}), which langchain_core.load would
turn into objects of any importable class, stays plain data; only messages and documents
become objects again, and only by validation against their pydantic models."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("langchain_core", reason="the langchain extra is not installed")

from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from servekit.plugins.langchain._wire import decode

CONSTRUCTOR = {
    "lc": 1,
    "type": "constructor",
    "id": ["servekit_never_imported", "evil", "Payload"],
    "kwargs": {"command": "rm -rf /"},
}


def test_a_serialized_constructor_stays_data_and_imports_nothing():
    decoded = decode({"input": CONSTRUCTOR, "nested": [CONSTRUCTOR]})
    assert decoded == {"input": CONSTRUCTOR, "nested": [CONSTRUCTOR]}
    assert "servekit_never_imported" not in sys.modules


def test_secrets_and_not_implemented_markers_stay_data():
    secret = {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]}
    missing = {"lc": 1, "type": "not_implemented", "id": ["os", "system"]}
    assert decode([secret, missing]) == [secret, missing]


def test_messages_and_documents_are_the_only_objects():
    message, document = decode(
        [{"type": "human", "content": "hi"}, {"type": "Document", "page_content": "text"}]
    )
    assert isinstance(message, HumanMessage) and message.content == "hi"
    assert isinstance(document, Document) and document.page_content == "text"
    # A dict that only looks like a message (bad content) stays a dict.
    assert decode({"type": "human", "content": {"x": object}}) == {
        "type": "human",
        "content": {"x": object},
    }
