"""Helpers every servicer uses: the caller, tenancy checks, conversions, limits."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo_server import names
from fenlo_server.auth.authenticator import Authenticator
from fenlo_server.auth.principal import Principal, get_principal
from fenlo_server.auth.tokens import TokenService
from fenlo_server.config import Settings
from fenlo_server.directory import WorkspaceDirectory
from fenlo_server.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Reason,
    Violations,
    invalid,
)
from fenlo_server.jobs.ingestion import JobQueue
from fenlo_server.knowledge.search import KnowledgeSearch
from fenlo_server.knowledge.types import VectorStore
from fenlo_server.llm.router import LlmRouter
from fenlo_server.locks import ConversationLocks
from fenlo_server.pagination import PageTokens, page_size
from fenlo_server.pipeline.registry import StepRegistry
from fenlo_server.storage.db import Database
from fenlo_server.storage.repositories import DuplicateRequest

T = TypeVar("T")
Row = TypeVar("Row")
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 2048


@dataclass(frozen=True, slots=True)
class Deps:
    """What the servicers need, wired by the composition root."""

    settings: Settings
    db: Database
    page_tokens: PageTokens
    directory: WorkspaceDirectory
    authenticator: Authenticator
    tokens: TokenService
    llm: LlmRouter
    knowledge: KnowledgeSearch
    jobs: JobQueue
    external_store: VectorStore | None
    locks: ConversationLocks
    steps: StepRegistry


class Pager:
    """One List call's paging (AIP-158): its size, the cursor its token carries,
    and the token of the next page, bound to the caller's scope and the query."""

    def __init__(
        self,
        deps: Deps,
        principal: Principal,
        requested_size: int,
        page_token: str,
        query: Mapping[str, Any],
    ) -> None:
        settings = deps.settings
        self.size = page_size(requested_size, settings.default_page_size, settings.max_page_size)
        self._tokens = deps.page_tokens
        self._scope = principal.scope
        self._query = query
        self.cursor: dict[str, Any] = (
            self._tokens.decode(page_token, self._scope, query) if page_token else {}
        )

    @property
    def limit(self) -> int:
        """How many rows to fetch: one more than the page, to know if another follows."""
        return self.size + 1

    def finish(
        self, rows: list[T], cursor_of: Callable[[T], dict[str, Any]]
    ) -> tuple[list[T], str]:
        """The rows of this page and the next page's token ("" on the last page)."""
        if len(rows) <= self.size:
            return rows, ""
        rows = rows[: self.size]
        return rows, self._tokens.encode(self._scope, self._query, cursor_of(rows[-1]))


def authorize_workspace(workspace_id: str) -> Principal:
    """The caller, if it may act on ``workspace_id``; PERMISSION_DENIED otherwise.

    Runs before any lookup, so a caller never learns whether another
    workspace's resource exists.
    """
    principal = get_principal()
    if not principal.is_platform_admin and principal.workspace_id != workspace_id:
        raise PermissionDenied(
            Reason.ERROR_REASON_PERMISSION_DENIED_WORKSPACE,
            f"the caller's credentials are for another workspace than workspaces/{workspace_id}",
        )
    return principal


class _IdPaged(Protocol[Row]):
    async def list_page(self, *, limit: int, before_id: str | None) -> list[Row]: ...


async def list_by_id(
    deps: Deps,
    request: Any,
    method: str,
    repository: Callable[[AsyncSession], _IdPaged[Row]],
) -> tuple[str, list[Row], str]:
    """One page of a List method over a workspace's resources, newest id first:
    ``request`` has ``parent``, ``page_size`` and ``page_token``; returns the
    workspace id, the rows and the next page's token."""
    workspace_id = names.workspace_id(request.parent, "parent")
    principal = authorize_workspace(workspace_id)
    pager = Pager(
        deps,
        principal,
        request.page_size,
        request.page_token,
        {"method": method, "parent": request.parent},
    )
    async with deps.db.workspace(workspace_id) as session:
        rows = await repository(session).list_page(
            limit=pager.limit, before_id=pager.cursor.get("id")
        )
    page, token = pager.finish(rows, _id_cursor)
    return workspace_id, page, token


def _id_cursor(row: Any) -> dict[str, Any]:
    return {"id": row.id}


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def from_timestamp(
    holder: Message, field: str, path: str, violations: Violations
) -> datetime | None:
    """The datetime of an optional Timestamp field, or None when it is unset."""
    if not holder.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(holder, field)
    if not 0 <= stamp.nanos < 1_000_000_000:
        violations.add(path, "nanos must be in [0, 1e9)")
        return None
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        violations.add(path, "is out of range")
        return None


def request_hash(request: Message) -> str:
    """A digest of a Create request without its request_id, to detect reuse."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def request_id_of(value: str, field: str = "request_id") -> str | None:
    """A normalised request_id (a UUID, AIP-155), or None when empty."""
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise invalid(field, "must be a UUID such as 6f1c1d0e-...") from None


def check_text(
    violations: Violations,
    path: str,
    value: str,
    *,
    max_chars: int,
    required: bool = False,
) -> None:
    if required and not value.strip():
        violations.add(path, "is required")
    elif len(value) > max_chars:
        violations.add(path, f"must be at most {max_chars} characters, got {len(value)}")
    elif "\x00" in value:
        violations.add(path, "must not contain NUL characters")


def check_labels(violations: Violations, path: str, labels: dict[str, str]) -> None:
    if len(labels) > MAX_METADATA_ENTRIES:
        violations.add(path, f"must have at most {MAX_METADATA_ENTRIES} entries")
        return
    for key, value in labels.items():
        if not key or len(key) > MAX_METADATA_KEY:
            violations.add(f"{path}[{key[:40]!r}]", f"keys must be 1 to {MAX_METADATA_KEY} chars")
        elif len(value) > MAX_METADATA_VALUE:
            violations.add(f"{path}[{key!r}]", f"values must be at most {MAX_METADATA_VALUE} chars")


def request_id_conflict() -> AlreadyExists:
    return AlreadyExists(
        Reason.ERROR_REASON_REQUEST_ID_CONFLICT,
        "request_id was already used for a different request; use a new request_id",
        violations=[FieldViolation("request_id", "was used for a different request")],
    )


def update_paths(
    mask: field_mask_pb2.FieldMask,
    resource: Message,
    updatable: tuple[str, ...],
    *,
    nested: bool,
) -> list[str]:
    """The validated field paths an Update changes (AIP-134).

    An empty mask means every updatable top-level field that ``resource`` sets;
    ``*`` alone means every updatable field. With ``nested``, paths may reach
    into an updatable message field (``settings.system_prompt``).
    """
    paths = list(mask.paths)
    kind = type(resource).__name__.lower()
    if not paths:
        paths = [f.name for f, _ in resource.ListFields() if f.name in updatable]
        if not paths:
            raise _bad_mask(f"names no field to update, and {kind} sets none")
        return paths
    if "*" in paths:
        if len(paths) > 1:
            raise _bad_mask("`*` cannot be combined with other paths")
        return list(updatable)
    for path in paths:
        top = path.split(".")[0]
        if top not in updatable or (not nested and path != top):
            raise _bad_mask(f"{path!r} cannot be updated; use {', '.join(updatable)}")
    descriptor: Any = resource.DESCRIPTOR
    if not field_mask_pb2.FieldMask(paths=paths).IsValidForDescriptor(descriptor):
        raise _bad_mask(f"{', '.join(paths)} names a field {kind} does not have")
    return paths


def _bad_mask(description: str) -> InvalidArgument:
    return InvalidArgument(
        Reason.ERROR_REASON_UPDATE_MASK_INVALID,
        f"invalid update_mask: {description}",
        violations=[FieldViolation("update_mask", description)],
    )


class _Idempotent(Protocol):
    request_hash: str | None


R = TypeVar("R", bound=_Idempotent)
SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]


async def create_once(
    open_session: SessionFactory,
    request_id: str | None,
    digest: str | None,
    find: Callable[[AsyncSession, str], Awaitable[R | None]],
    create: Callable[[AsyncSession], Awaitable[R]],
) -> tuple[R, bool]:
    """Run ``create`` at most once per ``request_id`` (AIP-155); return (row, created).

    A retry with the same request gets the row the first call made; the same
    request_id with another request is ALREADY_EXISTS. Concurrent retries are
    settled by the database's unique constraint: the loser reads the winner's row.
    """
    try:
        async with open_session() as session:
            if request_id is not None:
                existing = await find(session, request_id)
                if existing is not None:
                    return _same_request(existing, digest), False
            return await create(session), True
    except DuplicateRequest:
        async with open_session() as session:
            existing = await find(session, request_id or "")
        if existing is None:
            raise request_id_conflict() from None
        return _same_request(existing, digest), False


def _same_request(row: R, digest: str | None) -> R:
    if row.request_hash != digest:
        raise request_id_conflict()
    return row
