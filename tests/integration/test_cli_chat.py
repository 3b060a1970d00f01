"""`fenlo chat`, `fenlo conversations list` and `fenlo leads list` against a running
server, as a user runs them (a subprocess; Ctrl-C is a real SIGINT)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fenlo.v1 import conversation_pb2 as C
from fenlo_server.app import FenloApp
from tests.conftest import _sqlite_url, make_settings, start_app
from tests.helpers import Api

FENLO = str(Path(sys.executable).with_name("fenlo"))
WAIT = 60.0


@pytest.fixture
async def slow_app(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[FenloApp]:
    """Answers stream at 15 tokens a second, so Ctrl-C can land mid-answer."""
    url = _sqlite_url(sqlite_template, tmp_path / "db")
    app = await start_app(make_settings(tmp_path, url, offline_tokens_per_second=15.0))
    yield app
    await app.stop(grace=0)


@pytest.fixture
async def slow_api(slow_app: FenloApp) -> AsyncIterator[Api]:
    async with Api(slow_app) as helper:
        yield helper


def _env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENLO_")}
    env["FENLO_TOKEN"] = token
    return env


async def fenlo(*args: str, token: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        FENLO,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(token),
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), WAIT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _read_until(
    stream: asyncio.StreamReader, needle: str, seen: list[str], count: int = 1
) -> str:
    """Read stdout into ``seen`` until ``needle`` has appeared ``count`` times (bounded)."""
    deadline = time.monotonic() + WAIT
    while "".join(seen).count(needle) < count:
        assert time.monotonic() < deadline, f"no {needle!r} in {''.join(seen)!r}"
        chunk = await asyncio.wait_for(stream.read(256), WAIT)
        assert chunk, f"the chat ended before {needle!r}: {''.join(seen)!r}"
        seen.append(chunk.decode())
    return "".join(seen)


async def test_chat_streams_answers_shows_the_analysis_and_ctrl_c_interrupts(
    slow_app: FenloApp, slow_api: Api
) -> None:
    sqlite_api = slow_api
    workspace, token = await sqlite_api.create_workspace("CLI chat")
    target = ["--target", f"127.0.0.1:{slow_app.port}", "--workspace", workspace]
    process = await asyncio.create_subprocess_exec(
        FENLO,
        "chat",
        *target,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(token),
    )
    assert process.stdin and process.stdout and process.stderr
    seen: list[str] = []
    try:
        await _read_until(process.stdout, "new conversation workspaces/", seen)
        process.stdin.write(b"Hello! How much does a booking for four cost? I'm ana@example.com\n")
        await process.stdin.drain()
        await _read_until(process.stdout, "assistant> ", seen)
        await asyncio.sleep(0.5)  # a few tokens in, of many
        process.send_signal(signal.SIGINT)  # Ctrl-C: interrupt the answer
        await _read_until(process.stdout, "(interrupted)", seen)
        process.stdin.write(b"Thanks, bye\n")
        await process.stdin.drain()
        await _read_until(process.stdout, "intent ", seen, count=2)
        process.stdin.close()  # Ctrl-D
        rest, errors = await asyncio.wait_for(process.communicate(), WAIT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    printed = "".join(seen) + rest.decode()
    assert process.returncode == 0, errors.decode()
    assert "Traceback" not in errors.decode()
    assert printed.count("assistant> ") == 2
    assert "lead " in printed and "email ana@example.com" in printed

    [conversation] = (
        await sqlite_api.conversations.ListConversations(
            C.ListConversationsRequest(parent=f"workspaces/{workspace}"),
            metadata=sqlite_api.md(token),
        )
    ).conversations
    stored = (
        await sqlite_api.conversations.ListMessages(
            C.ListMessagesRequest(parent=conversation.name), metadata=sqlite_api.md(token)
        )
    ).messages
    assert [m.role for m in stored] == [C.MESSAGE_ROLE_USER, C.MESSAGE_ROLE_ASSISTANT] * 2
    first_answer = stored[1]
    assert first_answer.interrupted
    shown = printed.split("assistant> ", 1)[1].split("\n", 1)[0]
    assert first_answer.text and first_answer.text.startswith(shown.strip()[:10])

    code, out, err = await fenlo("conversations", "list", *target, token=token)
    assert code == 0, err
    [line] = out.strip().splitlines()
    assert line.startswith(conversation.name) and "4 messages" in line
    code, out, err = await fenlo("leads", "list", *target, token=token)
    assert code == 0, err
    assert "ana@example.com" in out and "/leads/" in out


async def test_chat_json_lines_resume_and_one_line_errors(
    sqlite_api: Api, sqlite_app: FenloApp
) -> None:
    workspace, token = await sqlite_api.create_workspace("CLI chat JSON")
    target = ["--target", f"127.0.0.1:{sqlite_app.port}", "--workspace", workspace]
    code, out, err = await fenlo(
        "chat", *target, "--json", token=token, stdin=b"When do you open?\n\n/quit\nignored\n"
    )
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    kinds = [next(k for k in e if k != "@type") for e in events]
    assert kinds[0] == "sessionStarted" and kinds[-1] == "turnCompleted"
    assert kinds.count("turnStarted") == 1 and "delta" in kinds  # the blank line sent nothing
    conversation = events[0]["sessionStarted"]["conversation"]["name"]

    code, out, err = await fenlo(
        "chat",
        *target,
        "--conversation",
        conversation.rsplit("/", 1)[1],
        token=token,
        stdin=b"And on Sunday?\n",
    )
    assert code == 0, err
    assert out.startswith(f"(resumed {conversation};")

    code, out, err = await fenlo("conversations", "list", *target, "--json", token=token)
    assert code == 0, err
    [listed] = json.loads(out)["conversations"]
    assert listed["name"] == conversation and listed["messageCount"] == 4
    code, out, err = await fenlo("leads", "list", *target, "--min-score", "100", token=token)
    assert (code, out.strip()) == (0, "No leads."), err
    code, out, err = await fenlo("leads", "list", *target, "--min-score", "101", token=token)
    assert (code, out) == (1, "")
    assert err.startswith("fenlo: INVALID_ARGUMENT INVALID_ARGUMENT: invalid min_score"), err

    other, _ = await sqlite_api.create_workspace("Not yours")
    elsewhere = ["--target", f"127.0.0.1:{sqlite_app.port}", "--workspace", other]
    for command in (["chat"], ["conversations", "list"], ["leads", "list"]):
        code, out, err = await fenlo(*command, *elsewhere, token=token, stdin=b"hi\n")
        assert code == 1 and "Traceback" not in err, err
        assert err.startswith("fenlo: PERMISSION_DENIED "), err
        assert len(err.strip().splitlines()) == 1, err


def _drive_terminal(target: str, workspace: str, token: str) -> tuple[str, int]:
    """``fenlo chat`` on a pseudo-terminal, typed at like a person: a question,
    Ctrl-C while it answers, Ctrl-C at the prompt. What the terminal showed, and
    the exit code."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on the terminal
        os.environ.update(_env(token))
        os.execv(FENLO, ["fenlo", "chat", "--target", target, "--workspace", workspace])
    shown = b""

    def read_until(needle: bytes) -> None:
        nonlocal shown
        deadline = time.monotonic() + WAIT
        while needle not in shown:
            assert time.monotonic() < deadline, f"no {needle!r} in {shown!r}"
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    shown += os.read(fd, 4096)
                except OSError:  # the CLI exited
                    assert needle in shown, f"exited without {needle!r}: {shown!r}"

    try:
        read_until(b"you> ")
        os.write(fd, b"Hello! What does a booking for four cost?\r")
        read_until(b"assistant> ")
        time.sleep(0.5)
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT
        read_until(b"(interrupted)")
        read_until(b"you> ")
        os.write(fd, b"\x03")  # Ctrl-C at the prompt: leave
        read_until(b"resume with --conversation")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return shown.decode(errors="replace"), os.waitstatus_to_exitcode(status)


async def test_chat_in_a_terminal_prompts_and_ctrl_c_interrupts_then_leaves(
    slow_app: FenloApp, slow_api: Api
) -> None:
    workspace, token = await slow_api.create_workspace("CLI terminal")
    shown, code = await asyncio.to_thread(
        _drive_terminal, f"127.0.0.1:{slow_app.port}", workspace, token
    )
    assert code == 0, shown
    assert shown.count("you> ") == 2 and "(interrupted)" in shown
    assert "Traceback" not in shown
