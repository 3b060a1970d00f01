"""Per-workspace and per-principal request rates, and concurrent Chat streams.

Limits come from the workspace's quotas. A refusal is RESOURCE_EXHAUSTED with
``RetryInfo`` and ``QuotaFailure``. Platform admins are operators and are not
limited. A principal whose workspace no longer exists is refused here.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from grpc import aio

from fenlo_server import metrics
from fenlo_server.auth import permissions
from fenlo_server.auth.principal import current_principal
from fenlo_server.directory import WorkspaceDirectory
from fenlo_server.errors import PermissionDenied, QuotaViolation, Reason, ResourceExhausted
from fenlo_server.interceptors.base import Around, WrappingInterceptor
from fenlo_server.ratelimit.base import Lease, RateLimiter


class _Limit:
    __slots__ = ("_directory", "_lease", "_limiter", "_method")

    def __init__(self, limiter: RateLimiter, directory: WorkspaceDirectory, method: str) -> None:
        self._limiter = limiter
        self._directory = directory
        self._method = method
        self._lease: Lease | None = None

    async def __aenter__(self) -> None:
        principal = current_principal.get()
        if principal is None or principal.is_platform_admin or principal.workspace_id is None:
            return
        workspace = principal.workspace_id
        info = await self._directory.get(workspace)
        if info is None:
            raise PermissionDenied(
                Reason.ERROR_REASON_WORKSPACE_NOT_ACTIVE,
                f"workspace {workspace} no longer exists; its credentials are no longer valid",
            )
        quotas = info.quotas
        # The principal's own limit first: a request it refuses must not spend the
        # workspace's quota, or one runaway client would lock out all the others.
        if quotas.principal_requests_per_minute > 0:
            await self._take(
                f"rpm:{workspace}:{principal.rate_key}",
                quotas.principal_requests_per_minute,
                subject=principal.subject,
                quota="principal_requests_per_minute",
            )
        await self._take(
            f"rpm:{workspace}",
            quotas.requests_per_minute,
            subject=f"workspaces/{workspace}",
            quota="requests_per_minute",
        )
        if self._method in permissions.STREAM_LIMITED:
            self._lease = await self._limiter.acquire(
                f"streams:{workspace}", quotas.concurrent_chat_streams
            )
            if self._lease is None:
                metrics.RATE_LIMITED.labels("concurrent_chat_streams").inc()
                raise ResourceExhausted(
                    Reason.ERROR_REASON_CONCURRENCY_LIMITED,
                    f"workspace {workspace} already has {quotas.concurrent_chat_streams} open "
                    "chat streams; close one or retry later",
                    retry_after=1.0,
                    quota_violations=[
                        QuotaViolation(f"workspaces/{workspace}", "concurrent_chat_streams")
                    ],
                )

    async def _take(self, key: str, per_minute: int, *, subject: str, quota: str) -> None:
        """Take one request from the rate of ``key``; RESOURCE_EXHAUSTED if it is spent."""
        decision = await self._limiter.take(key, per_minute)
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(quota).inc()
            raise ResourceExhausted(
                Reason.ERROR_REASON_RATE_LIMITED,
                f"{subject} exceeded {per_minute} requests per minute; "
                f"retry in {decision.retry_after:.1f}s",
                retry_after=decision.retry_after,
                quota_violations=[QuotaViolation(subject, quota)],
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._lease is not None:
            self._lease.release()


class RateLimitInterceptor(WrappingInterceptor):
    def __init__(self, limiter: RateLimiter, directory: WorkspaceDirectory) -> None:
        self._limiter = limiter
        self._directory = directory

    def applies_to(self, method: str) -> bool:
        return not permissions.is_public(method)

    def around(self, method: str, context: aio.ServicerContext[Any, Any]) -> Around:
        return _Limit(self._limiter, self._directory, method)
