"""examples/voice_bridge.py against a running server: the caller barges in, the
stored answer is what the caller heard."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from fenlo.v1 import conversation_pb2 as C
from fenlo_server.app import FenloApp
from tests.helpers import Api

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "voice_bridge.py"


async def test_the_voice_bridge_barges_in_and_the_server_keeps_what_was_heard(
    sqlite_api: Api, sqlite_app: FenloApp
) -> None:
    workspace, token = await sqlite_api.create_workspace("Voice")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENLO_")}
    env["FENLO_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--target",
        f"127.0.0.1:{sqlite_app.port}",
        "--workspace",
        workspace,
        "--json",
        "--words-per-second",
        "12",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    printed = out.decode()
    assert "caller barges in after" in printed and printed.count("caller: ") == 3
    turns = json.loads(printed.strip().splitlines()[-1])["turns"]
    assert [t["interrupted"] for t in turns] == [True, False, False]
    first = turns[0]
    assert first["generated"].startswith(first["spoken"]) and first["spoken"]
    assert len(first["spoken"]) < len(first["generated"])

    [conversation] = (
        await sqlite_api.conversations.ListConversations(
            C.ListConversationsRequest(parent=f"workspaces/{workspace}"),
            metadata=sqlite_api.md(token),
        )
    ).conversations
    assert conversation.channel == C.CHANNEL_PHONE
    stored = (
        await sqlite_api.conversations.ListMessages(
            C.ListMessagesRequest(parent=conversation.name), metadata=sqlite_api.md(token)
        )
    ).messages
    answers = [m for m in stored if m.role == C.MESSAGE_ROLE_ASSISTANT]
    assert len(answers) == 3
    assert answers[0].interrupted and answers[0].text == first["spoken"]
    assert [a.text for a in answers[1:]] == [t["generated"] for t in turns[1:]]
