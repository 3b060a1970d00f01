"""Fenlo as the benchmark runs it: ``fenlo serve`` on the embedded defaults, plus fixtures.

In its own process, on a fresh data directory: SQLite, in-process limits and
jobs, the offline provider at ``rate`` tokens a second, quotas lifted so the
load is never refused. Before it listens it creates

- ``plain``: a workspace whose pipeline has no retrieval (every other step on);
- ``rag``: a workspace on the default pipeline with the demo café guide
  (indexed before the server listens);
- ``history``: conversations with 10 and with ``history`` prior messages in
  ``plain``;
- ``workspaces - 1`` more workspaces like ``plain`` (for the 1 vs many curve).

It prints one JSON line (port, JWT secret, workspace ids, conversation names)
and serves until SIGTERM::

    python -m fenlo_server.bench.fenlo_proc --data-dir DIR --rate 500

``--llm-order openai,offline`` (with ``OPENAI_API_KEY`` and
``FENLO_OPENAI_BASE_URL`` set) puts a local OpenAI-compatible server in front
of the offline provider, for failover under load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from fenlo_server.loops import run_on

# The guard's per-conversation pace would refuse a benchmark's fast turns.
GUARD = {"name": "prompt_guard", "params": {"conversation_turns_per_minute": 100000}}
SETTINGS_ENV = {
    "FENLO_LLM_ORDER": "offline",
    "FENLO_METRICS_PORT": "0",
    "FENLO_LOG_LEVEL": "WARNING",
    "FENLO_DEFAULT_REQUESTS_PER_MINUTE": "100000000",
    "FENLO_DEFAULT_CONCURRENT_CHAT_STREAMS": "100000",
    "FENLO_DEFAULT_TURNS_PER_MINUTE": "100000000",
    "FENLO_DEFAULT_TOKENS_PER_DAY": "1000000000000",
}


def pipeline(retrieval: bool) -> list[dict[str, Any]]:
    from fenlo_server.pipeline.registry import DEFAULT_PIPELINE

    steps: list[dict[str, Any]] = []
    for name in DEFAULT_PIPELINE:
        if name == "prompt_guard":
            steps.append(GUARD)
        elif name != "rag_retrieval" or retrieval:
            steps.append({"name": name})
    return steps


async def _workspace(app: Any, name: str, retrieval: bool) -> str:
    from fenlo_server.storage.repositories import WorkspaceStore

    async with app.db.unscoped("benchmark fixtures") as session:
        row = await WorkspaceStore(session).create(
            display_name=name,
            settings={"language": "en", "pipeline": pipeline(retrieval)},
            quotas={},
        )
    return str(row.id)


async def _knowledge(app: Any, workspace_id: str) -> None:
    """The demo café guide, indexed before the server listens."""
    from fenlo_server.cli import seed_demo_document
    from fenlo_server.storage.knowledge import DocumentRepository

    document_id = await seed_demo_document(app, workspace_id, only_if_empty=False)
    assert document_id is not None
    async with asyncio.timeout(120):
        while True:
            async with app.db.workspace(workspace_id) as session:
                doc = await DocumentRepository(session).get(document_id)
            if doc is not None and doc.status == "READY":
                return
            if doc is None or doc.status == "FAILED":
                raise RuntimeError("the benchmark's knowledge base failed to index")
            await asyncio.sleep(0.05)


async def _conversation(app: Any, workspace_id: str, messages: int) -> str:
    from fenlo_server.storage.repositories import ConversationRepository

    async with app.db.workspace(workspace_id) as session:
        repo = ConversationRepository(session)
        row = await repo.create(channel="API", external_contact_id="", labels={}, state="OPEN")
        for i in range(messages):
            user = i % 2 == 0
            await repo.append_message(
                row.id,
                role="user" if user else "assistant",
                text=(
                    f"Question {i}: what would a table for {i % 6 + 1} on Saturday cost?"
                    if user
                    else f"Answer {i}: a table for {i % 6 + 1} is free to book; food is extra."
                ),
                turn_id=f"seed{i // 2}",
            )
    return f"workspaces/{workspace_id}/conversations/{row.id}"


async def serve(
    data_dir: Path, rate: float, history: int, workspaces: int, llm_order: str = "offline"
) -> None:
    from fenlo_server.app import FenloApp
    from fenlo_server.config import Settings

    os.environ.update(SETTINGS_ENV)
    os.environ["FENLO_LLM_ORDER"] = llm_order
    os.environ["FENLO_OFFLINE_TOKENS_PER_SECOND"] = str(rate)
    settings = Settings(data_dir=data_dir, port=0)
    app = await FenloApp.create(settings)
    await app.start()
    plain = await _workspace(app, "bench plain", retrieval=False)
    rag = await _workspace(app, "bench rag", retrieval=True)
    await _knowledge(app, rag)
    short = await _conversation(app, plain, 10)
    long = await _conversation(app, plain, history)
    many = [plain] + [
        await _workspace(app, f"bench {i}", retrieval=False) for i in range(1, workspaces)
    ]
    for warm in getattr(app, "_warming", []):
        await warm
    from fenlo_server.auth.principal import ADMIN

    def token(workspace_id: str) -> str:
        return app.tokens.issue(
            subject="bench", workspace_id=workspace_id, roles=[ADMIN], ttl_seconds=24 * 3600
        )

    print(
        json.dumps(
            {
                "port": app.port,
                "pid": os.getpid(),
                "plain": {"parent": f"workspaces/{plain}", "token": token(plain)},
                "rag": {"parent": f"workspaces/{rag}", "token": token(rag)},
                "history_short": {"conversation": short, "token": token(plain)},
                "history_long": {"conversation": long, "token": token(plain)},
                "workspaces": [{"parent": f"workspaces/{w}", "token": token(w)} for w in many],
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await app.stop(grace=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--workspaces", type=int, default=1000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument(
        "--llm-order",
        default="offline",
        help="FENLO_LLM_ORDER, e.g. openai,offline (the openai provider also needs "
        "OPENAI_API_KEY and FENLO_OPENAI_BASE_URL in the environment)",
    )
    args = parser.parse_args(argv)
    run_on(
        args.loop,
        serve(args.data_dir, args.rate, args.history, args.workspaces, args.llm_order),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
