"""Run a coroutine on the stdlib asyncio loop or on uvloop (the same choice for every process)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def server_loop() -> str:
    """The loop ``fenlo serve`` runs on."""
    return "asyncio"
