"""Chat turns answered through the LLM router: real SDKs against the local
OpenAI-compatible server, errors as the API reports them, and no orphan calls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fenlo.v1 import conversation_pb2, workspace_pb2
from fenlo_server.app import FenloApp
from tests.chat_helpers import ChatStream
from tests.conftest import make_settings, start_app
from tests.fakes.openai_server import FakeLlmServer, Reply
from tests.helpers import Api, decode_status

WORDS = ["Our", " hours", " are", " nine", " to", " five."]


@pytest.fixture
async def llm() -> AsyncIterator[FakeLlmServer]:
    async with FakeLlmServer(Reply(tokens=WORDS)) as server:
        yield server


@pytest.fixture
async def groq() -> AsyncIterator[FakeLlmServer]:
    async with FakeLlmServer(Reply(tokens=WORDS)) as server:
        yield server


async def serve(tmp_path: Path, database_url: str, **overrides: Any) -> FenloApp:
    return await start_app(make_settings(tmp_path, database_url, **overrides))


@pytest.fixture
async def chat_api(
    database_url: str, tmp_path: Path, llm: FakeLlmServer, groq: FakeLlmServer
) -> AsyncIterator[Api]:
    app = await serve(
        tmp_path,
        database_url,
        openai_api_key="test",
        openai_base_url=llm.openai_url,
        groq_api_key="test",
        groq_base_url=groq.groq_url,
        llm_order="groq,openai",
        llm_offline_fallback=False,
        llm_first_token_timeout_seconds=1.0,
        llm_stall_timeout_seconds=1.0,
    )
    async with Api(app) as api:
        yield api
    await app.stop(grace=0)


async def stored_messages(api: Api, token: str, conversation: str) -> list[Any]:
    page = await api.conversations.ListMessages(
        conversation_pb2.ListMessagesRequest(parent=conversation), metadata=api.md(token)
    )
    return list(page.messages)


async def test_a_turn_streams_the_providers_answer(chat_api: Api, groq: FakeLlmServer) -> None:
    workspace, token = await chat_api.create_workspace(
        "Llm", settings=workspace_pb2.WorkspaceSettings(system_prompt="You are Acme's assistant.")
    )
    chat = ChatStream(chat_api, token)
    session = await chat.start(parent=f"workspaces/{workspace}")
    await chat.say("When are you open?")
    turn = await chat.turn()
    assert [d.text for d in turn.deltas] == WORDS
    assert list(turn.completed.providers) == ["groq"]
    assert (turn.completed.usage.prompt_tokens, turn.completed.usage.completion_tokens) == (
        11,
        len(WORDS),
    )
    assert groq.requests[-1].messages == [
        {"role": "system", "content": "You are Acme's assistant."},
        {"role": "user", "content": "When are you open?"},
    ]
    stored = await stored_messages(chat_api, token, session.conversation.name)
    assert [m.text for m in stored] == ["When are you open?", "".join(WORDS)]
    await chat.call.done_writing()
    await chat.rest()


async def test_workspace_provider_order_and_model(
    chat_api: Api, llm: FakeLlmServer, groq: FakeLlmServer
) -> None:
    settings = workspace_pb2.WorkspaceSettings(
        llm=workspace_pb2.LlmPreferences(
            providers=[
                workspace_pb2.LlmProviderChoice(
                    provider=workspace_pb2.LLM_PROVIDER_OPENAI, model="gpt-4o-mini"
                )
            ]
        )
    )
    workspace, token = await chat_api.create_workspace("Order", settings=settings)
    chat = ChatStream(chat_api, token)
    await chat.start(parent=f"workspaces/{workspace}")
    await chat.say("Hi")
    turn = await chat.turn()
    assert list(turn.completed.providers) == ["openai"]
    assert llm.requests[-1].body["model"] == "gpt-4o-mini"
    assert groq.requests == []
    chat.call.cancel()


async def test_mid_stream_failover_reaches_the_caller_once(
    chat_api: Api, llm: FakeLlmServer, groq: FakeLlmServer
) -> None:
    groq.script(Reply(tokens=WORDS, cut_after=3))
    llm.script(Reply(tokens=[" nine", " to", " five."], repeat_last_words=2))
    workspace, token = await chat_api.create_workspace("Failover")
    chat = ChatStream(chat_api, token)
    session = await chat.start(parent=f"workspaces/{workspace}", options={"sentence_events": True})
    await chat.say("Hours?")
    turn = await chat.turn()
    assert turn.text == "".join(WORDS)
    assert list(turn.completed.providers) == ["groq", "openai"]
    assert [s.text for s in turn.sentences] == ["Our hours are nine to five."]
    stored = await stored_messages(chat_api, token, session.conversation.name)
    assert stored[-1].text == "".join(WORDS)
    assert not stored[-1].interrupted
    chat.call.cancel()


async def test_all_providers_failing_is_an_unavailable_turn_error(
    chat_api: Api, llm: FakeLlmServer, groq: FakeLlmServer
) -> None:
    groq.script(Reply(status=500))
    llm.script(Reply(status=503))
    workspace, token = await chat_api.create_workspace("Down")
    chat = ChatStream(chat_api, token)
    await chat.start(parent=f"workspaces/{workspace}")
    await chat.say("Anyone there?")
    started = await chat.read()
    assert started.WhichOneof("kind") == "turn_started"
    error = await chat.turn_error()
    assert error.turn_id == started.turn_started.turn_id
    status = decode_status(error.status)
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.reason == "LLM_UNAVAILABLE"
    assert "no LLM provider could answer" in status.message
    assert status.metadata["attempts"] == "groq: server_error; openai: server_error"
    assert status.retry_delay is not None
    # The stream stays open: the next turn is answered.
    await chat.say("And now?")
    turn = await chat.turn()
    assert turn.text == "".join(WORDS)
    chat.call.cancel()


async def test_a_refused_request_is_failed_precondition_without_failover(
    chat_api: Api, llm: FakeLlmServer, groq: FakeLlmServer
) -> None:
    groq.script(Reply(status=404, error_body={"error": {"message": "model not found"}}))
    workspace, token = await chat_api.create_workspace("Refused")
    chat = ChatStream(chat_api, token)
    await chat.start(parent=f"workspaces/{workspace}")
    await chat.say("Hi")
    await chat.read()  # turn_started
    status = decode_status((await chat.turn_error()).status)
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION
    assert status.reason == "LLM_REQUEST_REFUSED"
    assert "model not found" in status.message
    assert llm.requests == []
    chat.call.cancel()


async def test_a_client_that_goes_away_stops_the_llm_call(
    chat_api: Api, groq: FakeLlmServer
) -> None:
    groq.script(Reply(tokens=WORDS * 50, token_delay=0.05))
    workspace, token = await chat_api.create_workspace("Gone")
    chat = ChatStream(chat_api, token)
    await chat.start(parent=f"workspaces/{workspace}")
    await chat.say("Tell me everything")
    assert (await chat.read()).WhichOneof("kind") == "turn_started"
    await chat.read_until("delta")
    chat.call.cancel()
    await groq.wait_disconnect(groq.requests[-1], within=2.0)


async def test_the_offline_provider_answers_by_default(api: Api) -> None:
    workspace, token = await api.create_workspace("Offline")
    chat = ChatStream(api, token)
    await chat.start(parent=f"workspaces/{workspace}")
    await chat.say("What are your opening hours?")
    turn = await chat.turn()
    assert list(turn.completed.providers) == ["offline"]
    assert "don't have any information" in turn.text  # no knowledge base yet: says so
    await asyncio.wait_for(chat.call.done_writing(), 5)
    await chat.rest()
