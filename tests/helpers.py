"""Test helpers: typed stubs on a real channel, tokens, and rich-error decoding."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from fenlo.v1 import (
    chat_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)
from fenlo_server.app import FenloApp


@dataclass
class RichError:
    """The parts of a Fenlo error a test checks."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]
    retry_delay: float | None
    quota_violations: list[tuple[str, str]]


def decode_status(status: status_pb2.Status) -> RichError:
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    retry: float | None = None
    quota: list[tuple[str, str]] = []
    infos = 0
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            infos += 1
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info_retry = error_details_pb2.RetryInfo()
            detail.Unpack(info_retry)
            retry = info_retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            quota = [(v.subject, v.description) for v in failure.violations]
    assert infos == 1, f"expected exactly one ErrorInfo, got {infos}"
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    return RichError(code, status.message, reason, domain, metadata, violations, retry, quota)


def rich_error(error: aio.AioRpcError) -> RichError:
    """Decode the google.rpc.Status a Fenlo error carries in its trailers."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            decoded = decode_status(status)
            assert decoded.code == error.code(), (decoded.code, error.code())
            return decoded
    raise AssertionError(f"no rich status on {error.code()}: {error.details()}")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Api:
    """Stubs on one channel to ``app`` plus token and workspace helpers."""

    def __init__(self, app: FenloApp) -> None:
        self.app = app
        self.target = f"127.0.0.1:{app.port}"
        self.channel = aio.insecure_channel(self.target)
        self.workspaces = workspace_pb2_grpc.WorkspaceServiceStub(self.channel)
        self.conversations = conversation_pb2_grpc.ConversationServiceStub(self.channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.platform_token = self.token(None, "platform_admin", subject="platform")

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.channel.close()

    def token(
        self,
        workspace_id: str | None,
        *roles: str,
        subject: str = "tester",
        ttl: int = 3600,
    ) -> str:
        return self.app.tokens.issue(
            subject=subject,
            workspace_id=workspace_id,
            roles=list(roles) or ["admin"],
            ttl_seconds=ttl,
        )

    def md(self, token: str) -> tuple[tuple[str, str], ...]:
        return bearer(token)

    async def create_workspace(self, display_name: str = "Acme", **fields: Any) -> tuple[str, str]:
        """Create a workspace as platform admin; return (workspace id, admin token)."""
        workspace = await self.workspaces.CreateWorkspace(
            workspace_pb2.CreateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(display_name=display_name, **fields)
            ),
            metadata=bearer(self.platform_token),
        )
        workspace_id = workspace.name.split("/")[1]
        return workspace_id, self.token(workspace_id, "admin")

    async def create_conversation(
        self, workspace_id: str, token: str, **fields: Any
    ) -> conversation_pb2.Conversation:
        return await self.conversations.CreateConversation(
            conversation_pb2.CreateConversationRequest(
                parent=f"workspaces/{workspace_id}",
                conversation=conversation_pb2.Conversation(**fields),
            ),
            metadata=bearer(token),
        )
