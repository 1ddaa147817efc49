"""Model source schemes (``python:``, ``mlflow:``, ...) and the Servable class behind each.

Core serves ``python:`` itself; each plugin registers its scheme under the
``servekit.sources`` entry point group, so core never imports a plugin.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from servekit.core._private.errors import SpecError

_BUILTIN = {"python": "servekit.core._private.python_source:PythonServable"}
# Schemes a plugin provides, and the extra that installs it.
_EXTRAS = {"mlflow": "mlflow", "langchain": "langchain", "llm": "llm"}


@cache
def _registered() -> dict[str, str]:
    found = dict(_BUILTIN)
    for ep in entry_points(group="servekit.sources"):
        found.setdefault(ep.name, ep.value)
    return found


def known_schemes() -> set[str]:
    """Every scheme a spec may use here: installed ones and those an extra would add."""
    return set(_registered()) | set(_EXTRAS)


def servable_class(scheme: str) -> type[Any]:
    """The Servable class for ``scheme``; SpecError if the scheme's extra is not installed."""
    target = _registered().get(scheme)
    if target is None:
        if scheme in _EXTRAS:
            raise SpecError(
                "source",
                f"the {scheme!r} scheme needs its extra: pip install 'servekit[{_EXTRAS[scheme]}]'",
            )
        raise SpecError("source", f"unknown scheme {scheme!r}", allowed=sorted(known_schemes()))
    return import_object(target)  # type: ignore[no-any-return]


def import_object(target: str) -> Any:
    """Import ``pkg.mod:attr`` (or ``pkg.mod.attr``); raises ImportError naming what is missing."""
    module_name, sep, attr = target.partition(":")
    if not sep:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{target!r} is not an import path of the form 'package.module:name'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj
