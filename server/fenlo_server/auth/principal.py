"""The authenticated caller of the current request, kept in a contextvar."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Literal

ADMIN = "admin"
AGENT = "agent"
SERVICE = "service"
PLATFORM_ADMIN = "platform_admin"
WORKSPACE_ROLES = frozenset({ADMIN, AGENT, SERVICE})
ALL_ROLES = WORKSPACE_ROLES | {PLATFORM_ADMIN}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token subject or an API key, its workspace and roles."""

    subject: str
    workspace_id: str | None
    roles: frozenset[str]
    kind: Literal["jwt", "api_key"]
    api_key_id: str | None = None

    @property
    def is_platform_admin(self) -> bool:
        return PLATFORM_ADMIN in self.roles

    @property
    def rate_key(self) -> str:
        """The key of this principal's own rate limit."""
        return f"key:{self.api_key_id}" if self.api_key_id else f"sub:{self.subject}"

    @property
    def scope(self) -> str:
        """What page tokens are bound to: the workspace, or the platform."""
        return "platform" if self.is_platform_admin else f"ws:{self.workspace_id}"


current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "fenlo_principal", default=None
)


def get_principal() -> Principal:
    """The current request's principal; only callable inside an authenticated RPC."""
    principal = current_principal.get()
    if principal is None:  # pragma: no cover - the auth interceptor always sets it
        raise RuntimeError("no principal: the auth interceptor did not run")
    return principal
