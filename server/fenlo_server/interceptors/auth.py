"""Authentication and the permission table, for every RPC but health and reflection.

Sets the Principal in a contextvar. Refuses missing or bad credentials (and a
request with more than one ``authorization`` header) with UNAUTHENTICATED and a
role the permission table does not list with PERMISSION_DENIED. Checking the
workspace of each resource a request names is done by the handlers (before any
lookup), since only they know the fields.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from grpc import aio

from fenlo_server.auth import permissions
from fenlo_server.auth.authenticator import Authenticator
from fenlo_server.auth.principal import current_principal
from fenlo_server.errors import PermissionDenied, Reason, Unauthenticated
from fenlo_server.interceptors.base import Around, WrappingInterceptor, current_call


class _Authenticate:
    __slots__ = ("_auth", "_context", "_method")

    def __init__(
        self, auth: Authenticator, method: str, context: aio.ServicerContext[Any, Any]
    ) -> None:
        self._auth = auth
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        values = [
            value if isinstance(value, str) else value.decode()
            for key, value in self._context.invocation_metadata() or ()
            if key == "authorization"
        ]
        if len(values) > 1:
            # Which one counts would be a guess, and a proxy in front may guess otherwise.
            raise Unauthenticated(
                Reason.ERROR_REASON_CREDENTIALS_INVALID,
                f"the request has {len(values)} authorization headers; send exactly one",
            )
        principal = await self._auth.authenticate(values[0] if values else None)
        state = current_call.get()
        if state is not None:
            state.principal = principal
        if not permissions.allowed(self._method, principal.roles):
            raise PermissionDenied(
                Reason.ERROR_REASON_PERMISSION_DENIED_ROLE,
                f"roles {sorted(principal.roles)} may not call {self._method.lstrip('/')}",
                metadata={"method": self._method.lstrip("/")},
            )
        current_principal.set(principal)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class AuthInterceptor(WrappingInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    def applies_to(self, method: str) -> bool:
        return not permissions.is_public(method)

    def around(self, method: str, context: aio.ServicerContext[Any, Any]) -> Around:
        return _Authenticate(self._auth, method, context)
