"""The event loop a process runs on: uvloop when it is installed (``auto``), or asyncio.

``fenlo serve``, ``fenlo worker`` and every process of the benchmark choose
through here, so the baseline runs on the same loop as the server.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopChoice = Literal["auto", "asyncio", "uvloop"]


def resolve(choice: str) -> Literal["asyncio", "uvloop"]:
    """``auto`` is uvloop when it can be imported, else asyncio."""
    if choice == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    if choice not in ("asyncio", "uvloop"):
        raise ValueError(f"unknown event loop {choice!r}: auto, asyncio or uvloop")
    return "uvloop" if choice == "uvloop" else "asyncio"


def run_on(choice: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on the chosen loop."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
