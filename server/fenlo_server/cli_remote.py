"""CLI commands that call a running server: ``fenlo kb add`` and ``fenlo kb search``.

They take ``--target`` (default ``FENLO_TARGET`` or 127.0.0.1:50051),
``--workspace`` and a token from ``--token`` or ``FENLO_TOKEN``; errors print the
server's reason on one line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from fenlo.v1 import knowledge_pb2, knowledge_pb2_grpc

UPLOAD_CHUNK = 256 * 1024
K = knowledge_pb2


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=os.environ.get("FENLO_TARGET", "127.0.0.1:50051"),
        help="server address (default: $FENLO_TARGET or 127.0.0.1:50051)",
    )
    parser.add_argument("--workspace", required=True, help="workspace id")
    parser.add_argument("--token", help="JWT or API key (default: $FENLO_TOKEN)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-cert", help="PEM file of the CA to trust (with --tls)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def add_kb_commands(commands: Any) -> None:
    kb = commands.add_parser("kb", help="manage a workspace's knowledge base").add_subparsers(
        dest="action", required=True
    )
    add = kb.add_parser("add", help="upload files and wait until each is READY or FAILED")
    add.add_argument("files", nargs="+", type=Path)
    add.add_argument("--tag", action="append", default=[], help="tag (repeatable)")
    add.add_argument("--no-wait", action="store_true", help="return once uploaded")
    add.add_argument("--timeout", type=float, default=300.0, help="seconds to wait per file")
    add_remote_options(add)
    search = kb.add_parser("search", help="search the knowledge base")
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=5)
    search.add_argument("--tag", default="")
    add_remote_options(search)


class RemoteError(Exception):
    """A failed call, as one line: the code, the reason and the message."""


def describe(error: aio.AioRpcError) -> str:
    reason = ""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = info.reason
    code = error.code().name if error.code() else "UNKNOWN"
    return f"{code}{' ' + reason if reason else ''}: {error.details()}"


def _channel(args: argparse.Namespace) -> aio.Channel:
    if args.tls:
        root = Path(args.ca_cert).read_bytes() if args.ca_cert else None
        return aio.secure_channel(args.target, grpc.ssl_channel_credentials(root))
    return aio.insecure_channel(args.target)


def _metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    token = args.token or os.environ.get("FENLO_TOKEN")
    if not token:
        raise RemoteError("no token: pass --token or set FENLO_TOKEN")
    return (("authorization", f"Bearer {token}"),)


def run_reporting_errors(main: Coroutine[Any, Any, int]) -> int:
    """Run a command that calls the server; a failed call is one line and exit 1."""
    try:
        return asyncio.run(main)
    except aio.AioRpcError as error:
        print(f"fenlo: {describe(error)}", file=sys.stderr)
        return 1
    except RemoteError as error:
        print(f"fenlo: {error}", file=sys.stderr)
        return 1


def run_kb(args: argparse.Namespace) -> int:
    return run_reporting_errors(_kb_add(args) if args.action == "add" else _kb_search(args))


class Progress:
    """One status line per file: redrawn in place on a terminal, printed once per
    change elsewhere."""

    def __init__(self, name: str, quiet: bool) -> None:
        self.name = name
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last = ""

    def show(self, fraction: float, state: str) -> None:
        if self.quiet:
            return
        filled = int(fraction * 20)
        line = (
            f"[{'#' * filled}{'.' * (20 - filled)}] {int(fraction * 100):3d}% {self.name}: {state}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
        elif state != self._last:
            print(line, file=sys.stderr)
        self._last = state

    def done(self, line: str) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\r\x1b[2K")
        print(line, file=sys.stderr if self.quiet else sys.stdout)


async def _upload(
    stub: Any, md: Any, parent: str, path: Path, *, tags: list[str], progress: Progress
) -> knowledge_pb2.Document:
    size = await asyncio.to_thread(os.path.getsize, path)
    mime = mimetypes.guess_type(path.name)[0] or ""

    async def requests() -> AsyncIterator[knowledge_pb2.UploadDocumentRequest]:
        yield K.UploadDocumentRequest(
            metadata=K.DocumentMetadata(
                parent=parent,
                document=K.Document(
                    title=path.stem.replace("-", " ").replace("_", " ").strip() or path.name,
                    source_uri=path.name,
                    mime_type=mime,
                    tags=tags,
                ),
            )
        )
        sent = 0
        with path.open("rb") as handle:
            while chunk := handle.read(UPLOAD_CHUNK):
                sent += len(chunk)
                progress.show(0.5 * sent / max(size, 1), "uploading")
                yield K.UploadDocumentRequest(chunk=chunk)

    document: knowledge_pb2.Document = await stub.UploadDocument(requests(), metadata=md)
    return document


async def _kb_add(args: argparse.Namespace) -> int:
    md = _metadata(args)
    parent = f"workspaces/{args.workspace}"
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        raise RemoteError(f"no such file: {', '.join(missing)}")
    failures = 0
    results = []
    async with _channel(args) as channel:
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
        for path in args.files:
            progress = Progress(path.name, quiet=args.json)
            document = await _upload(stub, md, parent, path, tags=args.tag, progress=progress)
            if not args.no_wait:
                document = await _wait(stub, md, document, progress, args.timeout)
            status = K.DocumentStatus.Name(document.status).removeprefix("DOCUMENT_STATUS_")
            if status == "FAILED":
                failures += 1
                detail = f" ({document.failure.message})"
            elif status == "READY":
                detail = f" ({document.chunk_count} passages)"
            else:
                detail = ""
            results.append(json_format.MessageToDict(document))
            if not args.json:
                progress.done(f"{path.name}: {status}{detail} {document.name}")
    if args.json:
        print(json.dumps({"documents": results}))
    return 1 if failures else 0


async def _wait(
    stub: Any,
    md: Any,
    document: knowledge_pb2.Document,
    progress: Progress,
    patience: float,
) -> knowledge_pb2.Document:
    deadline = time.monotonic() + patience
    delay = 0.1
    done = (K.DOCUMENT_STATUS_READY, K.DOCUMENT_STATUS_FAILED)
    while document.status not in done:
        if time.monotonic() > deadline:
            raise RemoteError(f"{document.name} is still being processed after {patience:g}s")
        state = "processing" if document.status == K.DOCUMENT_STATUS_PROCESSING else "queued"
        progress.show(0.5 if state == "queued" else 0.75, state)
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 1.0)
        document = await stub.GetDocument(K.GetDocumentRequest(name=document.name), metadata=md)
    progress.show(1.0, "done")
    return document


async def _kb_search(args: argparse.Namespace) -> int:
    md = _metadata(args)
    async with _channel(args) as channel:
        stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
        response = await stub.SearchKnowledge(
            K.SearchKnowledgeRequest(
                parent=f"workspaces/{args.workspace}",
                query=args.query,
                page_size=args.limit,
                tag=args.tag,
            ),
            metadata=md,
        )
    if args.json:
        print(json.dumps(json_format.MessageToDict(response)))
        return 0
    if response.HasField("curated_answer"):
        print(f"Curated answer: {response.curated_answer.answer}\n")
    if not response.results:
        print("No results.")
    for i, result in enumerate(response.results, 1):
        where = " > ".join([result.title, *result.heading_path])
        print(f"{i}. [{result.score:.2f}] {where}  ({result.source_uri or result.document})")
        print(f"   {result.passage[:300]}")
    return 0
