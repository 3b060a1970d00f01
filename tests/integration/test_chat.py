"""ChatService.Chat: the bidirectional stream's protocol (start, turns, deltas, replay,
end, errors), checked against what ConversationService stores. These tests check
the protocol, never the wording of the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from fenlo.v1 import chat_pb2, conversation_pb2
from fenlo_server.storage.repositories import ConversationRepository
from tests.chat_helpers import ChatStream, Turn
from tests.helpers import Api, decode_status

C = conversation_pb2


@pytest.fixture
async def workspace(api: Api) -> AsyncIterator[tuple[str, str]]:
    yield await api.create_workspace("Chat")


async def messages(api: Api, token: str, conversation: str) -> list[C.Message]:
    page = await api.conversations.ListMessages(
        C.ListMessagesRequest(parent=conversation, page_size=1000), metadata=api.md(token)
    )
    return list(page.messages)


def split_turns(responses: list[chat_pb2.ChatResponse]) -> list[Turn]:
    turns: list[Turn] = []
    current: list[chat_pb2.ChatResponse] = []
    for response in responses:
        current.append(response)
        if response.WhichOneof("kind") == "turn_completed":
            turns.append(Turn(current))
            current = []
    assert current == [], current
    return turns


# A session and its turns


async def test_start_new_conversation_and_one_turn(api: Api, workspace: tuple[str, str]) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    session = await stream.start(
        parent=f"workspaces/{workspace_id}",
        channel=C.CHANNEL_WEB,
        external_contact_id="visitor-7",
        metadata={"page": "/pricing"},
    )
    assert session.resumed is False
    conversation = session.conversation
    assert conversation.name.startswith(f"workspaces/{workspace_id}/conversations/")
    assert conversation.channel == C.CHANNEL_WEB
    assert conversation.external_contact_id == "visitor-7"
    assert dict(conversation.metadata) == {"page": "/pricing"}
    assert conversation.state == C.CONVERSATION_STATE_OPEN
    assert conversation.message_count == 0
    stored = await api.conversations.GetConversation(
        C.GetConversationRequest(name=conversation.name), metadata=api.md(token)
    )
    assert stored.name == conversation.name and stored.create_time == conversation.create_time

    await stream.say("Hello there", client_message_id="cm-1")
    turn = await stream.turn()
    assert turn.started.replayed is False
    assert turn.started.client_message_id == "cm-1"
    assert turn.started.user_message.startswith(conversation.name + "/messages/")
    assert turn.completed.assistant_message.startswith(conversation.name + "/messages/")
    assert turn.completed.assistant_message != turn.completed.user_message
    assert turn.deltas, "the answer is streamed as deltas"
    assert turn.sentences == []  # not asked for

    user, assistant = await messages(api, token, conversation.name)
    assert (user.name, user.role, user.text) == (
        turn.started.user_message,
        C.MESSAGE_ROLE_USER,
        "Hello there",
    )
    assert user.client_message_id == "cm-1"
    assert (assistant.name, assistant.role) == (
        turn.completed.assistant_message,
        C.MESSAGE_ROLE_ASSISTANT,
    )
    assert assistant.text == turn.text
    assert user.turn_id == assistant.turn_id == turn.started.turn_id

    await stream.send(end=chat_pb2.EndChat())
    assert await stream.rest() == []


async def test_sentence_events_only_when_asked(api: Api, workspace: tuple[str, str]) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    session = await stream.start(
        parent=f"workspaces/{workspace_id}",
        options=chat_pb2.ChatOptions(sentence_events=True),
    )
    await stream.say("Speak to me")
    turn = await stream.turn()
    assert turn.sentences
    for sentence in turn.sentences:
        assert sentence.text and sentence.text == sentence.text.lstrip()
    for sentence in turn.sentences[:-1]:
        assert sentence.text.rstrip()[-1] in ".!?", sentence.text
    assert " ".join(s.text.strip() for s in turn.sentences) == " ".join(turn.text.split())
    [_, assistant] = await messages(api, token, session.conversation.name)
    assert assistant.text == turn.text
    await stream.call.done_writing()
    assert await stream.rest() == []

    # The same conversation resumed without the option: no sentence events.
    plain = ChatStream(api, token)
    await plain.start(conversation=session.conversation.name)
    await plain.say("Again")
    assert (await plain.turn()).sentences == []
    await plain.call.done_writing()
    await plain.rest()


async def test_several_turns_run_in_order(api: Api, workspace: tuple[str, str]) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    session = await stream.start(parent=f"workspaces/{workspace_id}")
    texts = ["first", "second", "third", "fourth"]
    for text in texts:  # sent at once: they queue and run one at a time
        await stream.say(text)
    turns = [await stream.turn() for _ in texts]
    await stream.send(end=chat_pb2.EndChat())
    assert await stream.rest() == []

    assert len({t.started.turn_id for t in turns}) == len(texts)
    stored = await messages(api, token, session.conversation.name)
    assert [m.role for m in stored] == [C.MESSAGE_ROLE_USER, C.MESSAGE_ROLE_ASSISTANT] * 4
    assert [m.text for m in stored[::2]] == texts
    assert [m.name for m in stored[::2]] == [t.started.user_message for t in turns]
    assert [m.name for m in stored[1::2]] == [t.completed.assistant_message for t in turns]
    assert [m.text for m in stored[1::2]] == [t.text for t in turns]


async def test_resume_keeps_history(api: Api, workspace: tuple[str, str]) -> None:
    workspace_id, token = workspace
    first = ChatStream(api, token)
    session = await first.start(parent=f"workspaces/{workspace_id}", external_contact_id="c")
    await first.say("before")
    await first.turn()
    await first.call.done_writing()
    await first.rest()
    before = await messages(api, token, session.conversation.name)

    again = ChatStream(api, token)
    resumed = await again.start(conversation=session.conversation.name)
    assert resumed.resumed is True
    assert resumed.conversation.name == session.conversation.name
    assert resumed.conversation.external_contact_id == "c"
    assert resumed.conversation.message_count == 2
    await again.say("after")
    turn = await again.turn()
    await again.call.done_writing()
    await again.rest()

    after = await messages(api, token, session.conversation.name)
    assert after[:2] == before
    assert [m.text for m in after[2:3]] == ["after"]
    assert after[3].name == turn.completed.assistant_message
    conversations = await api.conversations.ListConversations(
        C.ListConversationsRequest(parent=f"workspaces/{workspace_id}"), metadata=api.md(token)
    )
    assert [c.name for c in conversations.conversations] == [session.conversation.name]

    # A conversation created through ConversationService can be resumed as well, also
    # by an agent or a service.
    created = await api.create_conversation(
        workspace_id, token, state=C.CONVERSATION_STATE_HANDED_OFF
    )
    service = ChatStream(api, api.token(workspace_id, "service"))
    started = await service.start(conversation=created.name)
    assert started.resumed is True
    assert started.conversation == created
    await service.call.done_writing()
    await service.rest()


# Turn errors keep the stream open


async def test_invalid_user_messages_fail_only_their_turn(
    api: Api, workspace: tuple[str, str]
) -> None:
    workspace_id, token = workspace
    limit = api.app.settings.max_user_text_chars
    stream = ChatStream(api, token)
    session = await stream.start(parent=f"workspaces/{workspace_id}")
    for text, client_message_id, bad_field in [
        ("", "", "user_message.text"),
        ("   \n\t", "", "user_message.text"),
        ("x" * (limit + 1), "", "user_message.text"),
        ("fine", "c" * 129, "user_message.client_message_id"),
    ]:
        await stream.say(text, client_message_id)
        error = await stream.turn_error()
        status = decode_status(error.status)
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (status.reason, status.domain) == ("INVALID_ARGUMENT", "fenlo.ai")
        assert [f for f, _ in status.violations] == [bad_field]
        assert error.turn_id == ""  # no turn started

    # The stream is still usable, and text of exactly the limit is accepted.
    await stream.say("y" * limit)
    turn = await stream.turn()
    await stream.say("ok")
    await stream.turn()
    await stream.call.done_writing()
    assert await stream.rest() == []
    stored = await messages(api, token, session.conversation.name)
    assert [m.text for m in stored[::2]] == ["y" * limit, "ok"]
    assert stored[0].name == turn.started.user_message


# Replays


async def test_repeated_client_message_id_replays_the_turn(
    api: Api, workspace: tuple[str, str]
) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    session = await stream.start(parent=f"workspaces/{workspace_id}")
    name = session.conversation.name
    await stream.say("Where is my order?", client_message_id="msg-1")
    original = await stream.turn()
    await stream.say("Something else", client_message_id="msg-2")
    await stream.turn()
    stored = await messages(api, token, name)
    assert len(stored) == 4

    def check_replay(replay: Turn) -> None:
        assert replay.started.replayed is True and replay.completed.replayed is True
        assert replay.started.turn_id == original.started.turn_id
        assert replay.started.user_message == original.started.user_message
        assert replay.started.client_message_id == "msg-1"
        assert replay.completed.assistant_message == original.completed.assistant_message
        assert replay.text == original.text

    # On the same stream, even with other text: the stored turn is replayed.
    await stream.say("Where is my order?", client_message_id="msg-1")
    check_replay(await stream.turn())
    await stream.say("a retry with other text", client_message_id="msg-1")
    check_replay(await stream.turn())
    await stream.call.done_writing()
    await stream.rest()

    # After a reconnect, on the resumed conversation.
    resumed = ChatStream(api, token)
    await resumed.start(conversation=name)
    await resumed.say("Where is my order?", client_message_id="msg-1")
    check_replay(await resumed.turn())
    await resumed.call.done_writing()
    await resumed.rest()
    assert await messages(api, token, name) == stored

    # A client_message_id belongs to its conversation: elsewhere it starts a new turn.
    elsewhere = ChatStream(api, token)
    other = await elsewhere.start(parent=f"workspaces/{workspace_id}")
    await elsewhere.say("Where is my order?", client_message_id="msg-1")
    fresh = await elsewhere.turn()
    assert fresh.started.replayed is False
    assert fresh.started.turn_id != original.started.turn_id
    await elsewhere.call.done_writing()
    await elsewhere.rest()
    assert len(await messages(api, token, other.conversation.name)) == 2


async def test_a_new_client_message_id_costs_no_lookup_and_a_repeat_is_still_found(
    api: Api, workspace: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace_id, token = workspace
    lookups: list[str] = []
    real = ConversationRepository.find_user_message

    async def counted(repo: ConversationRepository, conversation: str, client_id: str) -> object:
        lookups.append(client_id)
        return await real(repo, conversation, client_id)

    monkeypatch.setattr(ConversationRepository, "find_user_message", counted)
    stream = ChatStream(api, token)
    name = (await stream.start(parent=f"workspaces/{workspace_id}")).conversation.name
    for n in range(3):
        await stream.say(f"question {n}", client_message_id=f"new-{n}")
        assert (await stream.turn()).started.replayed is False
    assert lookups == []
    await stream.say("question 1 again", client_message_id="new-1")
    assert (await stream.turn()).started.replayed is True
    assert lookups == ["new-1"]
    await stream.call.done_writing()
    await stream.rest()

    # A stream that resumes the conversation knows its stored ids from the start.
    resumed = ChatStream(api, token)
    await resumed.start(conversation=name)
    await resumed.say("question 0 again", client_message_id="new-0")
    assert (await resumed.turn()).started.replayed is True
    await resumed.say("question 3", client_message_id="new-3")
    assert (await resumed.turn()).started.replayed is False
    assert lookups == ["new-1", "new-0"]
    await resumed.call.done_writing()
    await resumed.rest()
    assert len(await messages(api, token, name)) == 8  # four turns, none stored twice


# Ending the stream


async def test_end_closes_the_stream_after_running_turns(
    api: Api, workspace: tuple[str, str]
) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    await stream.send(start=chat_pb2.StartChat(parent=f"workspaces/{workspace_id}"))
    await stream.say("one")
    await stream.say("two")
    await stream.send(end=chat_pb2.EndChat())
    # The request side stays open: the server ends the call by itself.
    responses = await stream.rest()
    assert responses[0].WhichOneof("kind") == "session_started"
    turns = split_turns(responses[1:])
    assert len(turns) == 2
    stored = await messages(api, token, responses[0].session_started.conversation.name)
    assert [m.text for m in stored[::2]] == ["one", "two"]


async def test_closing_the_request_side_closes_the_stream(
    api: Api, workspace: tuple[str, str]
) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    await stream.send(start=chat_pb2.StartChat(parent=f"workspaces/{workspace_id}"))
    await stream.say("one")
    await stream.say("two")
    await stream.call.done_writing()
    responses = await stream.rest()
    assert responses[0].WhichOneof("kind") == "session_started"
    assert len(split_turns(responses[1:])) == 2

    # Closing right after start, or at once, ends the stream cleanly as well.
    quiet = ChatStream(api, token)
    await quiet.start(parent=f"workspaces/{workspace_id}")
    await quiet.call.done_writing()
    assert await quiet.rest() == []
    silent = ChatStream(api, token)
    await silent.call.done_writing()
    assert await silent.rest() == []


# Stream errors


@pytest.mark.parametrize(
    "first",
    [
        chat_pb2.ChatRequest(user_message=chat_pb2.UserMessage(text="hi")),
        chat_pb2.ChatRequest(end=chat_pb2.EndChat()),
        chat_pb2.ChatRequest(interrupt=chat_pb2.Interrupt(turn_id="x")),
        chat_pb2.ChatRequest(),
    ],
)
async def test_first_message_must_be_start(
    api: Api, workspace: tuple[str, str], first: chat_pb2.ChatRequest
) -> None:
    _, token = workspace
    stream = ChatStream(api, token)
    await stream.call.write(first)
    await stream.failure(grpc.StatusCode.FAILED_PRECONDITION, "CHAT_NOT_STARTED")


async def test_second_start_is_refused(api: Api, workspace: tuple[str, str]) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    session = await stream.start(parent=f"workspaces/{workspace_id}")
    await stream.say("hi")
    await stream.turn()
    await stream.send(start=chat_pb2.StartChat(conversation=session.conversation.name))
    await stream.failure(grpc.StatusCode.INVALID_ARGUMENT, "CHAT_ALREADY_STARTED")
    assert len(await messages(api, token, session.conversation.name)) == 2


async def test_resuming_a_closed_conversation_is_refused(
    api: Api, workspace: tuple[str, str]
) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    session = await stream.start(parent=f"workspaces/{workspace_id}")
    await stream.say("bye")
    await stream.turn()
    await stream.call.done_writing()
    await stream.rest()
    await api.conversations.UpdateConversation(
        C.UpdateConversationRequest(
            conversation=C.Conversation(
                name=session.conversation.name, state=C.CONVERSATION_STATE_CLOSED
            ),
            update_mask={"paths": ["state"]},
        ),
        metadata=api.md(token),
    )
    closed = ChatStream(api, token)
    await closed.send(start=chat_pb2.StartChat(conversation=session.conversation.name))
    error = await closed.failure(grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_CLOSED")
    assert session.conversation.name in error.message
    assert len(await messages(api, token, session.conversation.name)) == 2

    created_closed = await api.create_conversation(
        workspace_id, token, state=C.CONVERSATION_STATE_CLOSED
    )
    again = ChatStream(api, token)
    await again.send(start=chat_pb2.StartChat(conversation=created_closed.name))
    await again.failure(grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_CLOSED")


async def test_start_without_target_is_invalid(api: Api, workspace: tuple[str, str]) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    await stream.send(start=chat_pb2.StartChat(channel=C.CHANNEL_WEB))
    error = await stream.failure(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [f for f, _ in error.violations] == ["start"]
    listed = await api.conversations.ListConversations(
        C.ListConversationsRequest(parent=f"workspaces/{workspace_id}"), metadata=api.md(token)
    )
    assert list(listed.conversations) == []


async def test_invalid_starts_are_refused(api: Api, workspace: tuple[str, str]) -> None:
    workspace_id, token = workspace
    other_id, other_token = await api.create_workspace("Other")
    theirs = await api.create_conversation(other_id, other_token)
    cases: list[tuple[str, chat_pb2.StartChat, grpc.StatusCode, str, list[str]]] = [
        (
            token,
            chat_pb2.StartChat(parent="workspace/x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "RESOURCE_NAME_INVALID",
            ["start.parent"],
        ),
        (
            token,
            chat_pb2.StartChat(conversation=f"workspaces/{workspace_id}"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "RESOURCE_NAME_INVALID",
            ["start.conversation"],
        ),
        (
            token,
            chat_pb2.StartChat(
                parent=f"workspaces/{workspace_id}",
                channel=99,
                metadata={f"k{i}": "v" for i in range(65)},
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            ["start.channel", "start.metadata"],
        ),
        (
            token,
            chat_pb2.StartChat(conversation=f"workspaces/{workspace_id}/conversations/01none"),
            grpc.StatusCode.NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            [],
        ),
        (
            token,
            chat_pb2.StartChat(parent=f"workspaces/{other_id}"),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED_WORKSPACE",
            [],
        ),
        (
            token,
            chat_pb2.StartChat(conversation=theirs.name),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED_WORKSPACE",
            [],
        ),
        (
            api.platform_token,
            chat_pb2.StartChat(parent="workspaces/01nosuchworkspace"),
            grpc.StatusCode.NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            [],
        ),
    ]
    for caller, start, code, reason, bad_fields in cases:
        stream = ChatStream(api, caller)
        await stream.send(start=start)
        error = await stream.failure(code, reason)
        assert sorted(f for f, _ in error.violations) == bad_fields, start
    for parent, caller in ((workspace_id, token), (other_id, other_token)):
        listed = await api.conversations.ListConversations(
            C.ListConversationsRequest(parent=f"workspaces/{parent}"), metadata=api.md(caller)
        )
        assert len(listed.conversations) == (0 if parent == workspace_id else 1)


async def test_turns_after_the_conversation_closes_fail_and_the_stream_stays_open(
    api: Api, workspace: tuple[str, str]
) -> None:
    workspace_id, token = workspace
    stream = ChatStream(api, token)
    session = await stream.start(parent=f"workspaces/{workspace_id}")
    name = session.conversation.name
    await stream.say("first", client_message_id="m1")
    first = await stream.turn()
    await api.conversations.UpdateConversation(
        C.UpdateConversationRequest(
            conversation=C.Conversation(name=name, state=C.CONVERSATION_STATE_CLOSED),
            update_mask={"paths": ["state"]},
        ),
        metadata=api.md(token),
    )
    await stream.say("second")
    error = await stream.turn_error()
    status = decode_status(error.status)
    assert (status.code, status.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONVERSATION_CLOSED",
    )
    # A stored turn can still be replayed; nothing new is stored.
    await stream.say("first", client_message_id="m1")
    replay = await stream.turn()
    assert replay.started.replayed and replay.started.turn_id == first.started.turn_id
    await stream.send(end=chat_pb2.EndChat())
    assert await stream.rest() == []
    assert [m.text for m in await messages(api, token, name)][::2] == ["first"]

    # A conversation deleted under a live stream: the turn fails with NOT_FOUND.
    live = ChatStream(api, token)
    started = await live.start(parent=f"workspaces/{workspace_id}")
    await api.conversations.DeleteConversation(
        C.DeleteConversationRequest(name=started.conversation.name), metadata=api.md(token)
    )
    await live.say("anyone there?")
    status = decode_status((await live.turn_error()).status)
    assert (status.code, status.reason) == (grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    await live.call.done_writing()
    assert await live.rest() == []
