"""Choosing the event loop (FENLO_EVENT_LOOP)."""

from __future__ import annotations

import asyncio

import pytest

from fenlo_server import loops


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_is_uvloop_when_installed_and_each_choice_runs_on_its_loop() -> None:
    assert loops.resolve("auto") == "uvloop"  # a dependency on Linux
    assert loops.run_on("uvloop", _loop_module()).startswith("uvloop")
    assert loops.run_on("asyncio", _loop_module()).startswith("asyncio")


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event loop"):
        loops.resolve("trio")
