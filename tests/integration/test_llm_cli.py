"""`fenlo llm ask` drives the router on its own against any OpenAI-compatible URL."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.fakes.openai_server import FakeLlmServer, Reply

FENLO = str(Path(sys.executable).with_name("fenlo"))


async def run(*args: str, data_dir: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FENLO_", "GROQ_", "OPENAI_"))}
    env["FENLO_DATA_DIR"] = str(data_dir)
    process = await asyncio.create_subprocess_exec(
        FENLO,
        "llm",
        "ask",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_ask_streams_from_an_openai_compatible_url(tmp_path: Path) -> None:
    async with FakeLlmServer(Reply(tokens=["Hi", " there", "!"])) as server:
        code, out, err = await run(
            "--base-url",
            server.openai_url,
            "--model",
            "my-model",
            "--order",
            "openai",
            "--system",
            "Be nice.",
            "Hello?",
            data_dir=tmp_path,
        )
        assert code == 0, err
        assert out == "Hi there!\n"
        assert "providers: openai | attempts: openai: ok | tokens: 11 in, 3 out" in err
        body = server.requests[-1].body
        assert body["model"] == "my-model"
        assert body["messages"] == [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hello?"},
        ]


async def test_ask_falls_back_to_offline_or_fails_in_one_line(tmp_path: Path) -> None:
    async with FakeLlmServer(Reply(status=500)) as server:
        code, out, err = await run(
            "--base-url",
            server.openai_url,
            "--order",
            "openai",
            "--passage",
            "Parking is free for customers.",
            "Is parking free?",
            data_dir=tmp_path,
        )
        assert code == 0, err
        assert out == "Parking is free for customers [1].\n"
        assert "attempts: openai: server_error; offline: ok" in err

        code, out, err = await run(
            "--base-url",
            server.openai_url,
            "--order",
            "openai",
            "--no-fallback",
            "Hi",
            data_dir=tmp_path,
        )
        assert code == 1
        assert out == ""
        errors = [line for line in err.splitlines() if line.startswith("fenlo:")]
        assert errors == ["fenlo: no LLM provider could answer (openai: server_error)"]
        assert "Traceback" not in err
