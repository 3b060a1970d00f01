"""CLI commands that talk to a running server: ``fenlo chat``, ``fenlo conversations
list`` and ``fenlo leads list``.

Same options as ``fenlo kb`` (``--target``, ``--workspace``, ``--token`` or
``FENLO_TOKEN``, ``--tls``, ``--json``); errors print the reason on one line.

``fenlo chat`` reads one user message per line from the terminal (or from a
pipe), prints the answer as it streams, then one compact line of what the
server made of the turn (sentiment, intent, lead score, quality) and the
cited sources. Ctrl-C while an answer streams interrupts it (the server keeps
what was shown); Ctrl-C at the prompt, Ctrl-D or ``/quit`` ends the chat.
Messages a human agent posts meanwhile are printed as they arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
import uuid
from typing import Any, TextIO

from google.protobuf import json_format
from grpc import aio

from fenlo.v1 import (
    analysis_pb2,
    chat_pb2,
    chat_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    lead_pb2,
    lead_pb2_grpc,
)
from fenlo_server.cli_remote import (
    RemoteError,
    _channel,
    _metadata,
    add_remote_options,
    run_reporting_errors,
)

QUIT = {"/quit", "/exit"}


def add_chat_commands(commands: Any) -> None:
    chat = commands.add_parser(
        "chat", help="chat with a workspace's assistant in the terminal (Ctrl-C interrupts)"
    )
    chat.add_argument("--conversation", help="resume this conversation (its id or name)")
    chat.add_argument("--sentences", action="store_true", help="ask for sentence events")
    add_remote_options(chat)

    conversations = commands.add_parser(
        "conversations", help="a workspace's conversations"
    ).add_subparsers(dest="action", required=True)
    listed = conversations.add_parser("list", help="list conversations, newest first")
    listed.add_argument("--limit", type=int, default=20, help="at most this many")
    listed.add_argument(
        "--state", choices=("open", "handed_off", "closed"), help="only in this state"
    )
    add_remote_options(listed)

    leads = commands.add_parser("leads", help="a workspace's leads").add_subparsers(
        dest="action", required=True
    )
    leads_list = leads.add_parser("list", help="list leads, highest score first")
    leads_list.add_argument("--limit", type=int, default=20, help="at most this many")
    leads_list.add_argument("--min-score", type=float, default=0.0, help="score at least")
    leads_list.add_argument(
        "--status",
        action="append",
        default=[],
        choices=("new", "contacted", "qualified", "won", "lost"),
        help="only these statuses (repeatable)",
    )
    add_remote_options(leads_list)


def run_remote(args: argparse.Namespace) -> int:
    """Run ``chat``, ``conversations list`` or ``leads list``; 1 on a failed call."""
    if args.command == "chat":
        return run_reporting_errors(_chat(args, sys.stdin, sys.stdout))
    if args.command == "conversations":
        return run_reporting_errors(_conversations_list(args))
    return run_reporting_errors(_leads_list(args))


# ---------------------------------------------------------------- fenlo chat


def _enum(value: int, enum: Any, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


def summary(analysis: analysis_pb2.TurnAnalysis) -> str:
    """One line of a turn's analysis, e.g. ``sentiment positive 0.62 · intent booking``."""
    parts = []
    if analysis.HasField("sentiment"):
        label = _enum(analysis.sentiment.label, analysis_pb2.SentimentLabel, "SENTIMENT_LABEL_")
        parts.append(f"sentiment {label} {analysis.sentiment.score:+.2f}")
    if analysis.HasField("intent"):
        kind = _enum(analysis.intent.kind, analysis_pb2.IntentKind, "INTENT_KIND_")
        parts.append(f"intent {kind} {analysis.intent.confidence:.2f}")
    if analysis.HasField("lead_score"):
        lead = analysis.lead_score
        change = f" ({lead.change:+.0f})" if lead.change else ""
        parts.append(f"lead {lead.score:.0f}{change}")
    if analysis.HasField("quality"):
        parts.append(f"quality {analysis.quality.score:.2f}")
    if analysis.entities:
        found = ", ".join(
            f"{_enum(e.kind, analysis_pb2.EntityKind, 'ENTITY_KIND_')} {e.text}"
            for e in analysis.entities[:4]
        )
        parts.append(found)
    return " · ".join(parts)


class ChatPrinter:
    """Turns the stream's responses into terminal lines (or JSON lines)."""

    def __init__(self, out: TextIO, *, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.turn_id = ""  # the turn that is streaming ("" between turns)
        self.delivered = 0  # code points of it shown so far
        self.turn_done = asyncio.Event()
        self.turn_done.set()
        self.conversation = ""
        self._open_line = False

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _end_line(self) -> None:
        if self._open_line:
            self.write("\n")
            self._open_line = False

    def show(self, response: chat_pb2.ChatResponse) -> None:
        kind = response.WhichOneof("kind")
        if kind == "turn_started":
            self.turn_id = response.turn_started.turn_id
            self.delivered = 0
        elif kind == "delta":
            self.delivered += len(response.delta.text)
        if self.as_json:
            self.write(json_format.MessageToJson(response, indent=None) + "\n")
        else:
            self._show_text(kind, response)
        if kind in ("turn_completed", "error"):
            self.turn_id = ""
            self.turn_done.set()

    def _show_text(self, kind: str | None, response: chat_pb2.ChatResponse) -> None:
        if kind == "session_started":
            self.conversation = response.session_started.conversation.name
            how = "resumed" if response.session_started.resumed else "new conversation"
            self.write(f"({how} {self.conversation}; Ctrl-C interrupts, Ctrl-D quits)\n")
        elif kind == "delta":
            if not self._open_line:
                self.write("assistant> ")
                self._open_line = True
            self.write(response.delta.text)
        elif kind == "citations":
            self._end_line()
            for citation in response.citations.citations:
                where = " > ".join([citation.title, *citation.heading_path])
                self.write(f"  [{citation.index}] {where}\n")
        elif kind == "annotations":
            phase = response.annotations.phase
            analysis = response.annotations.analysis
            if phase == chat_pb2.ANNOTATION_PHASE_GUARD:
                guard = analysis.guard
                if guard.outcome == analysis_pb2.GUARD_OUTCOME_BLOCKED:
                    self._end_line()
                    self.write("  (the guard refused this message)\n")
            elif line := summary(analysis):
                self._end_line()
                self.write(f"  {line}\n")
        elif kind == "handoff":
            self._end_line()
            reason = _enum(response.handoff.reason, chat_pb2.HandoffReason, "HANDOFF_REASON_")
            self.write(f"  (handed to a person: {reason}) {response.handoff.summary}\n")
        elif kind == "agent_message":
            self._end_line()
            message = response.agent_message.message
            self.write(f"agent> {message.text}\n")
        elif kind == "turn_completed":
            self._end_line()
            if response.turn_completed.interrupted:
                self.write("  (interrupted)\n")
        elif kind == "error":
            self._end_line()
            status = response.error.status
            self.write(f"  (turn failed: {status.message})\n")
        elif kind == "draining":
            self._end_line()
            self.write("  (the server is shutting down; reconnect with --conversation)\n")


def _stdin_lines(stdin: TextIO, loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str]:
    """Lines of ``stdin`` ("" at its end), read by a daemon thread: a read still
    waiting when the chat ends does not hold the process."""
    lines: asyncio.Queue[str] = asyncio.Queue()

    def read() -> None:
        try:
            for line in iter(stdin.readline, ""):
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, "")
        except (RuntimeError, ValueError, OSError):
            pass  # the loop or stdin is closed: the chat is over

    threading.Thread(target=read, name="fenlo-chat-stdin", daemon=True).start()
    return lines


async def _next_line(lines: asyncio.Queue[str], *stops: asyncio.Event) -> str | None:
    """The next line, or None once one of ``stops`` is set first."""
    get = asyncio.ensure_future(lines.get())
    waits = [asyncio.ensure_future(stop.wait()) for stop in stops]
    await asyncio.wait({get, *waits}, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if get.done():
        return get.result()
    get.cancel()
    return None


def _start_request(args: argparse.Namespace) -> chat_pb2.ChatRequest:
    options = chat_pb2.ChatOptions(sentence_events=args.sentences)
    start = chat_pb2.StartChat(channel=conversation_pb2.CHANNEL_API, options=options)
    if args.conversation:
        name = args.conversation
        if "/" not in name:
            name = f"workspaces/{args.workspace}/conversations/{name}"
        start.conversation = name
    else:
        start.parent = f"workspaces/{args.workspace}"
    return chat_pb2.ChatRequest(start=start)


async def _chat(args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    md = _metadata(args)
    interactive = stdin.isatty() and not args.json
    printer = ChatPrinter(out, as_json=args.json)
    loop = asyncio.get_running_loop()
    async with _channel(args) as channel:
        call: Any = chat_pb2_grpc.ChatServiceStub(channel).Chat(metadata=md)
        await call.write(_start_request(args))
        first = await call.read()
        if first is aio.EOF:
            raise RemoteError("the server closed the chat before it started")
        printer.show(first)
        ended = asyncio.Event()
        failure: list[BaseException] = []

        async def responses() -> None:
            try:
                while (response := await call.read()) is not aio.EOF:
                    printer.show(response)
            except aio.AioRpcError as error:
                failure.append(error)
            finally:
                printer.turn_done.set()
                ended.set()

        reader = loop.create_task(responses())
        lines = _stdin_lines(stdin, loop)
        leave = asyncio.Event()  # Ctrl-C at the prompt
        writes: set[asyncio.Task[None]] = set()

        def on_interrupt() -> None:
            if printer.turn_id:
                interrupt = chat_pb2.Interrupt(
                    turn_id=printer.turn_id, delivered_code_points=printer.delivered
                )
                task = loop.create_task(call.write(chat_pb2.ChatRequest(interrupt=interrupt)))
                writes.add(task)
                task.add_done_callback(writes.discard)
            else:
                leave.set()  # at the prompt: leave

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
        try:
            while not ended.is_set():
                if interactive:
                    printer.write("you> ")
                line = await _next_line(lines, ended, leave)
                if line is None or not line or line.strip() in QUIT:
                    break
                text = line.rstrip("\n")
                if not text.strip():
                    continue
                printer.turn_done.clear()
                message = chat_pb2.UserMessage(text=text, client_message_id=uuid.uuid4().hex)
                await call.write(chat_pb2.ChatRequest(user_message=message))
                await printer.turn_done.wait()
            if not ended.is_set():
                with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
                    await call.write(chat_pb2.ChatRequest(end=chat_pb2.EndChat()))
                    await call.done_writing()
            async with asyncio.timeout(30):
                await reader
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)
            reader.cancel()
        if failure:
            raise failure[0]
    if interactive and printer.conversation:
        printer.write(f"\n(resume with --conversation {printer.conversation})\n")
    return 0


# ---------------------------------------------------------------- lists


async def _conversations_list(args: argparse.Namespace) -> int:
    md = _metadata(args)
    request = conversation_pb2.ListConversationsRequest(
        parent=f"workspaces/{args.workspace}", page_size=args.limit
    )
    if args.state:
        request.state = conversation_pb2.ConversationState.Value(
            f"CONVERSATION_STATE_{args.state.upper()}"
        )
    async with _channel(args) as channel:
        stub = conversation_pb2_grpc.ConversationServiceStub(channel)
        response = await stub.ListConversations(request, metadata=md)
    if args.json:
        print(json.dumps(json_format.MessageToDict(response)))
        return 0
    if not response.conversations:
        print("No conversations.")
    for conversation in response.conversations:
        state = conversation_pb2.ConversationState.Name(conversation.state)
        when = (
            conversation.last_message_time
            if conversation.HasField("last_message_time")
            else conversation.create_time
        )
        channel_name = conversation_pb2.Channel.Name(conversation.channel)
        print(
            f"{conversation.name}  {state.removeprefix('CONVERSATION_STATE_').lower():<10} "
            f"{conversation.message_count:>4} messages  "
            f"{channel_name.removeprefix('CHANNEL_').lower():<9} "
            f"lead {conversation.analysis.lead_score:>3.0f}  "
            f"{when.ToDatetime().isoformat(timespec='seconds')}Z"
        )
    if response.next_page_token:
        print(f"(more: raise --limit; at most {args.limit} shown)")
    return 0


async def _leads_list(args: argparse.Namespace) -> int:
    md = _metadata(args)
    request = lead_pb2.ListLeadsRequest(
        parent=f"workspaces/{args.workspace}",
        page_size=args.limit,
        min_score=args.min_score,
        statuses=[lead_pb2.LeadStatus.Value(f"LEAD_STATUS_{s.upper()}") for s in args.status],
    )
    async with _channel(args) as channel:
        response = await lead_pb2_grpc.LeadServiceStub(channel).ListLeads(request, metadata=md)
    if args.json:
        print(json.dumps(json_format.MessageToDict(response)))
        return 0
    if not response.leads:
        print("No leads.")
    for lead in response.leads:
        status = lead_pb2.LeadStatus.Name(lead.status).removeprefix("LEAD_STATUS_").lower()
        contact = ", ".join(
            v for v in (lead.contact.name, lead.contact.email, lead.contact.phone) if v
        )
        signals = ", ".join(sorted({s.kind for s in lead.signals}))
        print(
            f"{lead.score:>3.0f}  {status:<9} {lead.name}  {contact or '-'}"
            f"{'  [' + signals + ']' if signals else ''}"
        )
    if response.next_page_token:
        print(f"(more: raise --limit; at most {args.limit} shown)")
    return 0
