"""WorkspaceService: workspaces and their API keys."""

from __future__ import annotations

from typing import Any

from google.protobuf import empty_pb2, field_mask_pb2, json_format
from grpc import aio
from sqlalchemy.ext.asyncio import AsyncSession

from fenlo.v1 import workspace_pb2, workspace_pb2_grpc
from fenlo_server import names
from fenlo_server.api.common import (
    Deps,
    Pager,
    authorize_workspace,
    check_text,
    create_once,
    list_by_id,
    request_hash,
    request_id_of,
    to_timestamp,
    update_paths,
)
from fenlo_server.api.workspace_validation import MAX_PIPELINE_STEPS, validate_workspace
from fenlo_server.auth import apikeys
from fenlo_server.auth.permissions import PLATFORM_ONLY_FIELDS
from fenlo_server.auth.principal import ADMIN, AGENT, SERVICE, get_principal
from fenlo_server.directory import effective_quotas
from fenlo_server.errors import (
    PermissionDenied,
    Reason,
    Violations,
    not_found,
)
from fenlo_server.lifecycle import DataLifecycle
from fenlo_server.storage.models import ApiKeyRow, WorkspaceRow
from fenlo_server.storage.repositories import ApiKeyRepository, WorkspaceStore

Ctx = aio.ServicerContext[Any, Any]
UPDATABLE = ("display_name", "settings", "quotas")
ROLE_NAMES = {
    workspace_pb2.ROLE_ADMIN: ADMIN,
    workspace_pb2.ROLE_AGENT: AGENT,
    workspace_pb2.ROLE_SERVICE: SERVICE,
}
ROLE_VALUES = {name: value for value, name in ROLE_NAMES.items()}
_UPDATE = "/fenlo.v1.WorkspaceService/UpdateWorkspace"


def settings_to_json(settings: workspace_pb2.WorkspaceSettings) -> dict[str, Any]:
    return json_format.MessageToDict(settings, preserving_proto_field_name=True)


def settings_from_json(data: dict[str, Any]) -> workspace_pb2.WorkspaceSettings:
    return json_format.ParseDict(
        data, workspace_pb2.WorkspaceSettings(), ignore_unknown_fields=True
    )


def quotas_to_json(quotas: workspace_pb2.WorkspaceQuotas) -> dict[str, Any]:
    return json_format.MessageToDict(quotas, preserving_proto_field_name=True)


class WorkspaceServicer(workspace_pb2_grpc.WorkspaceServiceServicer):
    def __init__(self, deps: Deps, lifecycle: DataLifecycle) -> None:
        self._deps = deps
        self._lifecycle = lifecycle

    def _to_proto(self, row: WorkspaceRow) -> workspace_pb2.Workspace:
        quotas = effective_quotas(row.quotas, self._deps.settings)
        return workspace_pb2.Workspace(
            name=names.workspace(row.id),
            display_name=row.display_name,
            settings=settings_from_json(row.settings),
            quotas=workspace_pb2.WorkspaceQuotas(
                requests_per_minute=quotas.requests_per_minute,
                concurrent_chat_streams=quotas.concurrent_chat_streams,
                turns_per_minute=quotas.turns_per_minute,
                tokens_per_day=quotas.tokens_per_day,
                principal_requests_per_minute=quotas.principal_requests_per_minute,
                max_document_bytes=quotas.max_document_bytes,
            ),
            create_time=to_timestamp(row.create_time),
            update_time=to_timestamp(row.update_time),
        )

    async def CreateWorkspace(
        self, request: workspace_pb2.CreateWorkspaceRequest, context: Ctx
    ) -> workspace_pb2.Workspace:
        violations = Violations()
        validate_workspace(violations, request.workspace)
        self._check_pipeline(violations, request.workspace, "workspace")
        violations.raise_if_any()
        request_id = request_id_of(request.request_id)
        workspace = request.workspace

        async def create(session: AsyncSession) -> WorkspaceRow:
            return await WorkspaceStore(session).create(
                display_name=workspace.display_name,
                settings=settings_to_json(workspace.settings),
                quotas=quotas_to_json(workspace.quotas),
                request_id=request_id,
                request_hash=digest,
            )

        digest = request_hash(request) if request_id else None
        row, _ = await create_once(
            lambda: self._deps.db.unscoped("create workspace"),
            request_id,
            digest,
            lambda session, rid: WorkspaceStore(session).find_by_request_id(rid),
            create,
        )
        return self._to_proto(row)

    def _check_pipeline(
        self, violations: Violations, workspace: workspace_pb2.Workspace, prefix: str
    ) -> None:
        """Every step of the pipeline must be registered and accept its parameters."""
        reported = {v.field for v in violations.items}
        steps = workspace.settings.pipeline[:MAX_PIPELINE_STEPS]  # more are refused anyway
        config = [
            # Parameters already refused (too large, not finite) are left out.
            {"name": step.name}
            if f"{prefix}.settings.pipeline[{i}].params" in reported
            else json_format.MessageToDict(step, preserving_proto_field_name=True)
            for i, step in enumerate(steps)
        ]
        for index, part, problem in self._deps.steps.check(config):
            path = f"{prefix}.settings.pipeline[{index}]"
            if f"{path}.name" not in reported:  # a malformed name is reported once
                violations.add(f"{path}.{part}", problem)

    async def GetWorkspace(
        self, request: workspace_pb2.GetWorkspaceRequest, context: Ctx
    ) -> workspace_pb2.Workspace:
        workspace_id = names.workspace_id(request.name)
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            row = await WorkspaceStore(session).get(workspace_id)
        if row is None:
            raise not_found("workspace", request.name)
        return self._to_proto(row)

    async def ListWorkspaces(
        self, request: workspace_pb2.ListWorkspacesRequest, context: Ctx
    ) -> workspace_pb2.ListWorkspacesResponse:
        principal = get_principal()
        pager = Pager(
            self._deps,
            principal,
            request.page_size,
            request.page_token,
            {"method": "ListWorkspaces"},
        )
        before = pager.cursor.get("id")
        db = self._deps.db
        if principal.is_platform_admin:
            async with db.unscoped("platform admin lists workspaces") as session:
                rows = await WorkspaceStore(session).list_page(limit=pager.limit, before_id=before)
        else:
            assert principal.workspace_id is not None
            async with db.workspace(principal.workspace_id) as session:
                rows = await WorkspaceStore(session).list_page(limit=pager.limit, before_id=before)
        rows, token = pager.finish(rows, lambda row: {"id": row.id})
        return workspace_pb2.ListWorkspacesResponse(
            workspaces=[self._to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateWorkspace(
        self, request: workspace_pb2.UpdateWorkspaceRequest, context: Ctx
    ) -> workspace_pb2.Workspace:
        workspace_id = names.workspace_id(request.workspace.name, "workspace.name")
        principal = authorize_workspace(workspace_id)
        paths = update_paths(request.update_mask, request.workspace, UPDATABLE, nested=True)
        platform_only = [p for p in paths if p.split(".")[0] in PLATFORM_ONLY_FIELDS[_UPDATE]]
        async with self._deps.db.workspace(workspace_id) as session:
            store = WorkspaceStore(session)
            row = await store.get(workspace_id)
            if row is None:
                raise not_found("workspace", request.workspace.name)
            merged = workspace_pb2.Workspace(
                display_name=row.display_name,
                settings=settings_from_json(row.settings),
                quotas=json_format.ParseDict(row.quotas, workspace_pb2.WorkspaceQuotas()),
            )
            field_mask_pb2.FieldMask(paths=paths).MergeMessage(
                _with_mask_parents(request.workspace, paths),
                merged,
                replace_message_field=True,
                replace_repeated_field=True,
            )
            if platform_only and not principal.is_platform_admin:
                # Only a change is refused: a workspace read with GetWorkspace (which shows
                # the effective quotas) can be sent back with an empty mask.
                stored = json_format.ParseDict(row.quotas, workspace_pb2.WorkspaceQuotas())
                defaults = self._deps.settings
                if effective_quotas(quotas_to_json(merged.quotas), defaults) != effective_quotas(
                    row.quotas, defaults
                ):
                    raise PermissionDenied(
                        Reason.ERROR_REASON_PERMISSION_DENIED_ROLE,
                        f"only a platform admin may change {platform_only[0]}",
                        metadata={"field": platform_only[0]},
                    )
                merged.quotas.CopyFrom(stored)
            violations = Violations()
            validate_workspace(violations, merged)
            self._check_pipeline(violations, merged, "workspace")
            violations.raise_if_any()
            row.display_name = merged.display_name
            row.settings = settings_to_json(merged.settings)
            row.quotas = quotas_to_json(merged.quotas)
            row = await store.save(row)
        await self._deps.directory.invalidate(workspace_id)
        return self._to_proto(row)

    async def DeleteWorkspace(
        self, request: workspace_pb2.DeleteWorkspaceRequest, context: Ctx
    ) -> empty_pb2.Empty:
        workspace_id = names.workspace_id(request.name)
        authorize_workspace(workspace_id)
        # Rows of every table, vectors, caches, live streams and Redis keys.
        if not await self._lifecycle.delete_workspace(workspace_id):
            raise not_found("workspace", request.name)
        return empty_pb2.Empty()

    # API keys

    async def CreateApiKey(
        self, request: workspace_pb2.CreateApiKeyRequest, context: Ctx
    ) -> workspace_pb2.CreateApiKeyResponse:
        workspace_id = names.workspace_id(request.parent, "parent")
        authorize_workspace(workspace_id)
        violations = Violations()
        check_text(violations, "api_key.display_name", request.api_key.display_name, max_chars=200)
        roles: list[str] = []
        for i, role in enumerate(request.api_key.roles):
            if role not in ROLE_NAMES:
                violations.add(
                    f"api_key.roles[{i}]",
                    "must be ROLE_ADMIN, ROLE_AGENT or ROLE_SERVICE (platform admin is "
                    "never granted to a key)",
                )
            elif ROLE_NAMES[role] not in roles:
                roles.append(ROLE_NAMES[role])
        violations.raise_if_any()
        secret = apikeys.generate()
        async with self._deps.db.workspace(workspace_id) as session:
            if await WorkspaceStore(session).get(workspace_id) is None:
                raise not_found("workspace", request.parent)
            row = await ApiKeyRepository(session).create(
                display_name=request.api_key.display_name,
                roles=roles or [SERVICE],
                secret_hash=apikeys.hash_key(secret),
                prefix=apikeys.shown_prefix(secret),
            )
        return workspace_pb2.CreateApiKeyResponse(api_key=_key_to_proto(row), secret=secret)

    async def ListApiKeys(
        self, request: workspace_pb2.ListApiKeysRequest, context: Ctx
    ) -> workspace_pb2.ListApiKeysResponse:
        _, rows, token = await list_by_id(self._deps, request, "ListApiKeys", ApiKeyRepository)
        return workspace_pb2.ListApiKeysResponse(
            api_keys=[_key_to_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteApiKey(
        self, request: workspace_pb2.DeleteApiKeyRequest, context: Ctx
    ) -> empty_pb2.Empty:
        workspace_id, key_id = names.parse("api_key", request.name, "name")
        authorize_workspace(workspace_id)
        async with self._deps.db.workspace(workspace_id) as session:
            row = await ApiKeyRepository(session).delete(key_id)
        if row is None:
            raise not_found("API key", request.name)
        await self._deps.authenticator.forget_api_key(row.secret_hash)
        return empty_pb2.Empty()


def _key_to_proto(row: ApiKeyRow) -> workspace_pb2.ApiKey:
    return workspace_pb2.ApiKey(
        name=names.api_key(row.workspace_id, row.id),
        display_name=row.display_name,
        roles=[ROLE_VALUES[r] for r in row.roles if r in ROLE_VALUES],
        prefix=row.prefix,
        create_time=to_timestamp(row.create_time),
        last_use_time=to_timestamp(row.last_use_time),
    )


def _with_mask_parents(
    workspace: workspace_pb2.Workspace, paths: list[str]
) -> workspace_pb2.Workspace:
    """A copy of ``workspace`` in which every message on a masked path is present.

    ``FieldMask.MergeMessage`` skips a nested path such as ``settings.system_prompt``
    when the source does not set ``settings``; AIP-134 says a masked field that the
    request leaves unset is cleared, so the parents are marked present first.
    """
    source = workspace_pb2.Workspace()
    source.CopyFrom(workspace)
    for path in paths:
        message = source
        for part in path.split(".")[:-1]:
            message = getattr(message, part)
            message.SetInParent()
    return source
