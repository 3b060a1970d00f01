"""The ``fenlo`` command.

    fenlo serve [--demo]                         run the server
    fenlo migrate                                bring the database schema up to date
    fenlo workspace create DISPLAY_NAME          prints the new workspace id last
    fenlo token create --workspace ID [--role R] [--ttl 24h]   prints the JWT last
    fenlo apikey create --workspace ID [--role R] [--name N]   prints the key last
    fenlo llm ask QUESTION [--base-url URL] [--order ...]       stream one answer via the router
    fenlo kb add FILE... --workspace ID [--token T]   upload, wait until READY/FAILED
    fenlo kb search QUERY --workspace ID [--token T]  search a knowledge base
    fenlo chat --workspace ID [--conversation C]      chat in the terminal (Ctrl-C interrupts)
    fenlo conversations list --workspace ID           a workspace's conversations
    fenlo leads list --workspace ID [--min-score S]   a workspace's leads, best first
    fenlo worker                                      run ARQ jobs (needs FENLO_REDIS_URL)
    fenlo retention run [--workspace ID]              one retention run now
    fenlo bench [--quick] [--json] [--write [DIR]]    Fenlo vs a bare gRPC baseline

The operator commands work on the database directly with the server's settings
(FENLO_DATA_DIR, FENLO_DATABASE_URL, ...), so they need no token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shlex
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fenlo_server import logs
from fenlo_server.auth import apikeys
from fenlo_server.auth.principal import ADMIN, ALL_ROLES, PLATFORM_ADMIN, WORKSPACE_ROLES
from fenlo_server.cli_chat import add_chat_commands, run_remote
from fenlo_server.cli_remote import add_kb_commands, run_kb
from fenlo_server.config import Settings
from fenlo_server.loops import run_on

DEMO_REQUEST_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://fenlo.ai/demo-workspace"))
DEMO_TOKEN_TTL = 24 * 3600


def parse_ttl(text: str) -> int:
    """Seconds from `90`, `30m`, `24h` or `7d`."""
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 3600, 30m, 24h, 7d")
    value = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fenlo", description="Fenlo conversational AI backend")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--host", help="listen address (FENLO_HOST)")
    serve.add_argument("--port", type=int, help="listen port (FENLO_PORT)")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="create a demo workspace on first start and print a token and a first call",
    )

    commands.add_parser("migrate", help="apply database migrations")

    workspace = commands.add_parser("workspace", help="manage workspaces").add_subparsers(
        dest="action", required=True
    )
    ws_create = workspace.add_parser("create", help="create a workspace; prints its id last")
    ws_create.add_argument("display_name")

    token = commands.add_parser("token", help="issue JWTs").add_subparsers(
        dest="action", required=True
    )
    token_create = token.add_parser("create", help="issue a JWT; prints it last")
    token_create.add_argument("--workspace", help="workspace id (omit for platform_admin)")
    token_create.add_argument(
        "--role",
        action="append",
        choices=sorted(ALL_ROLES),
        help="role to grant (repeatable; default admin)",
    )
    token_create.add_argument(
        "--ttl",
        type=parse_ttl,
        default=parse_ttl("24h"),
        help="lifetime, e.g. 30m, 24h, 7d (default 24h)",
    )
    token_create.add_argument("--subject", default="operator", help="the token's sub")

    apikey = commands.add_parser("apikey", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    key_create = apikey.add_parser("create", help="create an API key; prints it last")
    key_create.add_argument("--workspace", required=True, help="workspace id")
    key_create.add_argument(
        "--role",
        action="append",
        choices=sorted(WORKSPACE_ROLES),
        help="role to grant (repeatable; default service)",
    )
    key_create.add_argument("--name", default="", help="display name")

    llm = commands.add_parser("llm", help="drive the LLM router on its own").add_subparsers(
        dest="action", required=True
    )
    ask = llm.add_parser(
        "ask",
        help="stream one answer through the router (provider settings from FENLO_*)",
        description="Streams the answer to stdout and a summary (providers, attempts, "
        "usage) to stderr. Example against any OpenAI-compatible server: fenlo llm ask "
        "--base-url http://127.0.0.1:11434/v1 --model llama3.2 --order openai 'Hello?'",
    )
    ask.add_argument("question")
    ask.add_argument("--order", help="provider order, e.g. openai,offline (FENLO_LLM_ORDER)")
    ask.add_argument("--base-url", help="OpenAI-compatible base URL for the openai provider")
    ask.add_argument("--model", help="model for the openai provider")
    ask.add_argument("--api-key", help="key for the openai provider (default: its setting)")
    ask.add_argument("--groq-base-url", help="base URL for the groq provider")
    ask.add_argument("--system", default="", help="a system prompt")
    ask.add_argument(
        "--no-fallback",
        action="store_true",
        help="do not fall back to the offline provider (FENLO_LLM_OFFLINE_FALLBACK=false)",
    )
    ask.add_argument(
        "--passage", action="append", default=[], help="a knowledge passage (repeatable)"
    )
    add_kb_commands(commands)
    add_chat_commands(commands)
    commands.add_parser(
        "worker",
        help="run background jobs (document ingestion, retention) on ARQ; needs FENLO_REDIS_URL",
    )
    retention = commands.add_parser(
        "retention", help="remove data older than the workspaces' retention_days"
    ).add_subparsers(dest="action", required=True)
    retention_run = retention.add_parser(
        "run",
        help="one bounded retention run now; prints one JSON line per workspace",
    )
    retention_run.add_argument("--workspace", help="only this workspace id")
    bench = commands.add_parser(
        "bench", help="measure Fenlo against a bare grpc.aio baseline in the same run"
    )
    bench.add_argument("--quick", action="store_true", help="fewer repeats (a few minutes)")
    bench.add_argument("--json", action="store_true", help="end with one JSON summary line")
    bench.add_argument(
        "--write",
        type=Path,
        nargs="?",
        const=Path("bench/results"),
        help="write latest.json and latest.png here (default bench/results)",
    )
    bench.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop of every process (auto: the server's own choice)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"fenlo: invalid configuration: {_settings_errors(exc)}", file=sys.stderr)
        return 1
    logs.configure(settings.log_level, settings.log_format if args.command == "serve" else "text")
    try:
        if args.command == "serve":
            return run_on(settings.event_loop, _serve(settings, demo=args.demo))
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "workspace":
            return asyncio.run(_workspace_create(settings, args.display_name))
        if args.command == "token":
            return _token_create(settings, args)
        if args.command == "apikey":
            return asyncio.run(_apikey_create(settings, args))
        if args.command == "llm":
            return asyncio.run(_llm_ask(settings, args))
        if args.command == "kb":
            return run_kb(args)
        if args.command in ("chat", "conversations", "leads"):
            return run_remote(args)
        if args.command == "worker":
            return _worker(settings)
        if args.command == "retention":
            return asyncio.run(_retention_run(settings, args.workspace))
        if args.command == "bench":
            from fenlo_server.bench.command import run_bench

            return run_bench(args)
    except Exception as exc:
        message = _operator_error(exc)
        if message is None:
            raise
        print(f"fenlo: {message}", file=sys.stderr)
        return 1
    return 2


def _settings_errors(error: ValidationError) -> str:
    return "; ".join(
        f"FENLO_{'_'.join(str(part) for part in item['loc']).upper()}: {item['msg']}"
        for item in error.errors()
    )


def _operator_error(exc: Exception) -> str | None:
    """One line for an error an operator can fix (bad input, configuration, database);
    None for anything else, which is a bug and keeps its traceback."""
    from fenlo_server.errors import FenloError

    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return "database error: " + re.sub(r"^\([\w.]+\) ", "", first)
    if isinstance(exc, RuntimeError | ValueError | OSError | FenloError):
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


async def _serve(settings: Settings, *, demo: bool) -> int:
    from fenlo_server.app import FenloApp

    app = await FenloApp.create(settings)
    await app.start()
    running = type(asyncio.get_running_loop()).__module__
    flavour = "uvloop" if running.startswith("uvloop") else "asyncio"
    print(f"fenlo: listening on {settings.host}:{app.port} (event loop: {flavour})", flush=True)
    if demo:
        await _print_demo(app)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stop)
    await app.wait_for_termination()
    await app.stop()
    return 0


async def _print_demo(app: object) -> None:
    from fenlo.v1 import workspace_pb2
    from fenlo_server.app import FenloApp
    from fenlo_server.storage.repositories import WorkspaceStore

    assert isinstance(app, FenloApp)
    async with app.db.unscoped("demo workspace") as session:
        store = WorkspaceStore(session)
        row = await store.find_by_request_id(DEMO_REQUEST_ID)
        if row is None:
            settings = workspace_pb2.WorkspaceSettings(
                assistant_name="Harbour Café assistant",
                system_prompt="You are the friendly assistant of Harbour Café, a small café "
                "and bakery. Answer briefly, from the café's guide.",
                language="en",
            )
            from fenlo_server.api.workspaces import settings_to_json

            row = await store.create(
                display_name="Demo workspace",
                settings=settings_to_json(settings),
                quotas={},
                request_id=DEMO_REQUEST_ID,
                request_hash="demo",
            )
    await _seed_demo_knowledge(app, row.id)
    token = app.tokens.issue(
        subject="demo-admin", workspace_id=row.id, roles=[ADMIN], ttl_seconds=DEMO_TOKEN_TTL
    )
    target = f"{'https' if app.tls else 'http'}://{app.settings.host}:{app.port}"
    body = json.dumps({"name": f"workspaces/{row.id}"})
    command = (
        ".venv/bin/buf curl --protocol grpc --http2-prior-knowledge "
        f"-H {shlex.quote('authorization: Bearer ' + token)} "
        f"-d {shlex.quote(body)} "
        f"{target}/fenlo.v1.WorkspaceService/GetWorkspace"
    )
    chat = (
        "printf '%s\\n' "
        + shlex.quote(
            json.dumps(
                {"start": {"parent": f"workspaces/{row.id}", "options": {"sentenceEvents": True}}}
            )
        )
        + " "
        + shlex.quote(json.dumps({"userMessage": {"text": "When are you open on Sunday?"}}))
        + " "
        + shlex.quote(json.dumps({"userMessage": {"text": "Can I pay in cash?"}}))
        + ' | .venv/bin/buf curl --protocol grpc --http2-prior-knowledge -H "authorization: '
        'Bearer $FENLO_TOKEN" -d @- '
        f"{target}/fenlo.v1.ChatService/Chat"
    )
    print(
        "\n"
        f"Demo workspace: workspaces/{row.id}\n"
        f"Token (admin, valid 24h):\n  export FENLO_TOKEN={token}\n"
        "First call (paste it in another terminal at the repository root):\n"
        f"  {command}\n"
        "A chat with the demo café (after the export above):\n"
        f"  {chat}\n",
        flush=True,
    )


async def _seed_demo_knowledge(app: Any, workspace_id: str) -> None:
    """Give the demo workspace its café guide on first start (processed in the background)."""
    await seed_demo_document(app, workspace_id, only_if_empty=True)


async def seed_demo_document(app: Any, workspace_id: str, *, only_if_empty: bool) -> str | None:
    """Add the café guide to a workspace and queue its processing; its document id
    (None when ``only_if_empty`` and the workspace has documents already)."""
    import hashlib

    from fenlo_server.demo import DEMO_DOCUMENT, DEMO_DOCUMENT_TITLE
    from fenlo_server.storage.knowledge import DocumentFilter, DocumentRepository

    async with app.db.workspace(workspace_id) as session:
        repo = DocumentRepository(session)
        if only_if_empty and await repo.list_page(
            filters=DocumentFilter(), limit=1, before_id=None
        ):
            return None
        content = DEMO_DOCUMENT.encode()
        row = await repo.create(
            title=DEMO_DOCUMENT_TITLE,
            source_uri="harbour-cafe-guide.md",
            mime_type="text/markdown",
            tags=["demo"],
            content=content,
            content_sha256=hashlib.sha256(content).hexdigest(),
        )
    await app.jobs.enqueue_ingest(workspace_id, row.id, row.generation)
    return str(row.id)


async def _migrate(settings: Settings) -> int:
    from fenlo_server.storage import migrate
    from fenlo_server.storage.db import Database

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()
    print("fenlo: database is up to date")
    return 0


async def _workspace_create(settings: Settings, display_name: str) -> int:
    from fenlo_server.app import open_database
    from fenlo_server.storage.repositories import WorkspaceStore

    if not display_name.strip() or len(display_name) > 200:
        raise ValueError("the display name must be 1 to 200 characters")
    db = await open_database(settings)
    try:
        async with db.unscoped("operator creates workspace") as session:
            row = await WorkspaceStore(session).create(
                display_name=display_name, settings={}, quotas={}
            )
    finally:
        await db.dispose()
    print(f"created workspace workspaces/{row.id} ({display_name})", file=sys.stderr)
    print(row.id)
    return 0


def _token_create(settings: Settings, args: argparse.Namespace) -> int:
    from fenlo_server.app import build_token_service

    roles = args.role or [ADMIN]
    if args.workspace is None and PLATFORM_ADMIN not in roles:
        raise ValueError("--workspace is required unless --role platform_admin")
    tokens = build_token_service(settings)
    token = tokens.issue(
        subject=args.subject, workspace_id=args.workspace, roles=roles, ttl_seconds=args.ttl
    )
    print(token)
    return 0


async def _apikey_create(settings: Settings, args: argparse.Namespace) -> int:
    from fenlo_server.app import open_database
    from fenlo_server.storage.repositories import ApiKeyRepository, WorkspaceStore

    db = await open_database(settings)
    key = apikeys.generate()
    try:
        async with db.workspace(args.workspace) as session:
            if await WorkspaceStore(session).get(args.workspace) is None:
                raise ValueError(f"workspace {args.workspace} does not exist")
            row = await ApiKeyRepository(session).create(
                display_name=args.name,
                roles=sorted(set(args.role or ["service"])),
                secret_hash=apikeys.hash_key(key),
                prefix=apikeys.shown_prefix(key),
            )
    finally:
        await db.dispose()
    print(f"created API key workspaces/{row.workspace_id}/apiKeys/{row.id}", file=sys.stderr)
    print(key)
    return 0


def _worker(settings: Settings) -> int:
    if not settings.redis_url:
        raise ValueError(
            "fenlo worker needs FENLO_REDIS_URL; without Redis, fenlo serve runs the jobs itself"
        )
    from arq.worker import run_worker

    from fenlo_server.jobs.arq_worker import worker_settings

    logs.configure(settings.log_level, settings.log_format)
    run_worker(worker_settings(settings))
    return 0


async def _retention_run(settings: Settings, workspace_id: str | None) -> int:
    from fenlo_server.app import open_database
    from fenlo_server.jobs.retention import RetentionLimits, run_retention
    from fenlo_server.storage.repositories import WorkspaceStore

    db = await open_database(settings)
    try:
        if workspace_id is not None:
            async with db.workspace(workspace_id) as session:
                if await WorkspaceStore(session).get(workspace_id) is None:
                    raise ValueError(f"workspace {workspace_id} does not exist")
        results = await run_retention(
            db,
            limits=RetentionLimits.from_settings(settings),
            workspace_id=workspace_id,
        )
    finally:
        await db.dispose()
    for workspace, pruned in results.items():
        line = {
            "workspace": f"workspaces/{workspace}",
            "messages": pruned.messages,
            "conversations": pruned.conversations,
            "leads": pruned.leads,
            "events": pruned.events,
            "deliveries": pruned.deliveries,
            "more": not pruned.done,
        }
        print(json.dumps(line))
    print(f"fenlo: retention ran for {len(results)} workspace(s)", file=sys.stderr)
    return 0


async def _llm_ask(settings: Settings, args: argparse.Namespace) -> int:
    from fenlo_server.llm.errors import AllProvidersFailed, ProviderRequestError
    from fenlo_server.llm.factory import build_router
    from fenlo_server.llm.router import RouteResult
    from fenlo_server.llm.types import ChatMessage, LlmRequest, Passage

    overrides: dict[str, object] = {}
    if args.order:
        overrides["llm_order"] = args.order
    if args.base_url:
        overrides["openai_base_url"] = args.base_url
        if settings.openai_api_key is None and not args.api_key:
            overrides["openai_api_key"] = "unused"  # keyless local servers
    if args.api_key:
        overrides["openai_api_key"] = args.api_key
    if args.model:
        overrides["openai_model"] = args.model
    if args.groq_base_url:
        overrides["groq_base_url"] = args.groq_base_url
    if args.no_fallback:
        overrides["llm_offline_fallback"] = False
    if overrides:
        settings = Settings(**{**settings.model_dump(), **overrides})
    router = build_router(settings)
    messages = [ChatMessage("system", args.system)] if args.system else []
    messages.append(ChatMessage("user", args.question))
    passages = tuple(
        Passage(marker=i + 1, text=text, score=1.0) for i, text in enumerate(args.passage)
    )
    result = RouteResult()
    try:
        async for text in router.stream(LlmRequest(tuple(messages), passages), result=result):
            sys.stdout.write(text)
            sys.stdout.flush()
        print()
    except (AllProvidersFailed, ProviderRequestError) as error:
        print(f"fenlo: {error}", file=sys.stderr)
        return 1
    finally:
        attempts = "; ".join(f"{a.provider}: {a.outcome}" for a in result.attempts)
        usage = result.usage
        print(
            f"providers: {' -> '.join(result.providers) or 'none'} | attempts: {attempts} | "
            f"tokens: {usage.prompt_tokens} in, {usage.completion_tokens} out"
            f"{' (estimated)' if usage.estimated else ''}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
    logging.shutdown()
