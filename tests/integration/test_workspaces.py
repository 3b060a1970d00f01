"""WorkspaceService: CRUD, settings, quotas, update masks, validation, idempotency,
pagination and resource names, over a real channel on both databases."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from grpc import aio
from sqlalchemy import select

from fenlo.v1 import conversation_pb2, workspace_pb2
from fenlo_server.storage.models import WorkspaceRow
from tests.conftest import make_settings, start_app
from tests.helpers import Api, RichError, rich_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
W = workspace_pb2


async def expect_error(
    call: Awaitable[Any], code: grpc.StatusCode, reason: str, case: object = None
) -> RichError:
    with pytest.raises(aio.AioRpcError) as info:
        await call
    error = rich_error(info.value)
    assert (error.code, error.reason, error.domain) == (code, reason, "fenlo.ai"), (case, error)
    return error


def unique(prefix: str = "ws") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def full_settings() -> W.WorkspaceSettings:
    params = struct_pb2.Struct()
    params.update({"passages": 5, "curated": False})
    return W.WorkspaceSettings(
        assistant_name="Ada",
        system_prompt="Be brief.",
        language="pt-BR",
        business_hours=W.BusinessHours(
            time_zone="Europe/Lisbon",
            intervals=[
                W.BusinessHoursInterval(
                    weekday=W.WEEKDAY_MONDAY, open_time="09:00", close_time="17:30"
                ),
                W.BusinessHoursInterval(
                    weekday=W.WEEKDAY_SATURDAY, open_time="10:00", close_time="13:00"
                ),
            ],
        ),
        handoff_contact=W.HandoffContact(
            display_name="Support team",
            email="help@example.com",
            phone="+351210000000",
            url="https://help.example.com/queue",
        ),
        llm=W.LlmPreferences(
            providers=[
                W.LlmProviderChoice(provider=W.LLM_PROVIDER_GROQ, model="llama-3.1-8b"),
                W.LlmProviderChoice(provider=W.LLM_PROVIDER_OFFLINE),
            ],
            temperature=0.0,
            max_output_tokens=512,
        ),
        retention_days=30,
        pipeline=[
            W.PipelineStep(name="rag_retrieval", params=params),
            W.PipelineStep(name="llm_stream"),
        ],
    )


async def get(api: Api, workspace_id: str, token: str | None = None) -> W.Workspace:
    return await api.workspaces.GetWorkspace(
        W.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
        metadata=api.md(token or api.platform_token),
    )


async def update(
    api: Api, workspace: W.Workspace, paths: list[str] | None, token: str | None = None
) -> W.Workspace:
    request = W.UpdateWorkspaceRequest(workspace=workspace)
    if paths is not None:
        request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    return await api.workspaces.UpdateWorkspace(
        request, metadata=api.md(token or api.platform_token)
    )


async def list_all(api: Api, token: str | None = None, page_size: int = 1000) -> list[W.Workspace]:
    """Every workspace the caller sees, following next_page_token."""
    workspaces: list[W.Workspace] = []
    page_token = ""
    while True:
        page = await api.workspaces.ListWorkspaces(
            W.ListWorkspacesRequest(page_size=page_size, page_token=page_token),
            metadata=api.md(token or api.platform_token),
        )
        workspaces += page.workspaces
        page_token = page.next_page_token
        if not page_token:
            return workspaces


async def list_names(api: Api, token: str | None = None) -> list[str]:
    return [w.name for w in await list_all(api, token)]


async def count_named(api: Api, display_name: str) -> int:
    return sum(1 for w in await list_all(api) if w.display_name == display_name)


async def stored_ids(api: Api) -> list[str]:
    """The ground truth: every workspace id in the database, newest first."""
    async with api.app.db.unscoped("test: list every workspace") as session:
        rows = await session.execute(select(WorkspaceRow.id).order_by(WorkspaceRow.id.desc()))
        return list(rows.scalars())


# CRUD and roles


async def test_create_get_list_update_delete_as_platform_admin(api: Api) -> None:
    name = unique()
    created = await api.workspaces.CreateWorkspace(
        W.CreateWorkspaceRequest(
            workspace=W.Workspace(
                name="workspaces/chosen-by-caller",
                display_name=name,
                create_time={"seconds": 1},
            )
        ),
        metadata=api.md(api.platform_token),
    )
    workspace_id = created.name.removeprefix("workspaces/")
    assert workspace_id != "chosen-by-caller"  # name and create_time are ignored
    assert created.create_time.seconds > 1
    assert workspace_id.isalnum() and workspace_id == workspace_id.lower()
    assert created.display_name == name
    assert created.HasField("create_time") and created.create_time == created.update_time

    got = await get(api, workspace_id)
    assert got == created
    assert created.name in await list_names(api)

    changed = await update(api, W.Workspace(name=created.name, display_name="Renamed"), None)
    assert changed.display_name == "Renamed"
    assert changed.create_time == created.create_time
    assert changed.update_time.ToDatetime() >= created.update_time.ToDatetime()
    assert (await get(api, workspace_id)).display_name == "Renamed"

    await api.workspaces.DeleteWorkspace(
        W.DeleteWorkspaceRequest(name=created.name), metadata=api.md(api.platform_token)
    )
    error = await expect_error(
        get(api, workspace_id), grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND"
    )
    assert error.metadata == {"resource": created.name}
    await expect_error(
        api.workspaces.DeleteWorkspace(
            W.DeleteWorkspaceRequest(name=created.name), metadata=api.md(api.platform_token)
        ),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
    )
    await expect_error(
        update(api, W.Workspace(name=created.name, display_name="x"), ["display_name"]),
        grpc.StatusCode.NOT_FOUND,
        "RESOURCE_NOT_FOUND",
    )
    assert created.name not in await list_names(api)


async def test_workspace_admin_sees_and_manages_only_its_own(api: Api) -> None:
    mine, admin = await api.create_workspace("Mine")
    other, _ = await api.create_workspace("Other")

    assert (await get(api, mine, admin)).display_name == "Mine"
    assert await list_names(api, admin) == [f"workspaces/{mine}"]
    await expect_error(
        get(api, other, admin), grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED_WORKSPACE"
    )
    await expect_error(
        update(api, W.Workspace(name=f"workspaces/{other}", display_name="x"), None, admin),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED_WORKSPACE",
    )
    await expect_error(
        api.workspaces.CreateWorkspace(
            W.CreateWorkspaceRequest(workspace=W.Workspace(display_name="x")),
            metadata=api.md(admin),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED_ROLE",
    )

    changed = await update(
        api,
        W.Workspace(name=f"workspaces/{mine}", settings=W.WorkspaceSettings(system_prompt="Hi")),
        ["settings.system_prompt"],
        admin,
    )
    assert changed.settings.system_prompt == "Hi"
    # Quotas are the platform's to change, whichever way the mask names them.
    for paths in (["quotas"], ["quotas.turns_per_minute"], ["*"]):
        error = await expect_error(
            update(
                api,
                W.Workspace(
                    name=f"workspaces/{mine}", quotas=W.WorkspaceQuotas(turns_per_minute=1)
                ),
                paths,
                admin,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED_ROLE",
        )
        assert error.metadata["field"].startswith("quotas")
    agent = api.token(mine, "agent")
    await expect_error(
        update(api, W.Workspace(name=f"workspaces/{mine}", display_name="x"), None, agent),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED_ROLE",
    )
    assert (await get(api, mine)).quotas.turns_per_minute == (
        api.app.settings.default_turns_per_minute
    )

    # An admin may delete its own workspace; its credentials stop working.
    await api.workspaces.DeleteWorkspace(
        W.DeleteWorkspaceRequest(name=f"workspaces/{mine}"), metadata=api.md(admin)
    )
    await expect_error(
        get(api, mine, admin), grpc.StatusCode.PERMISSION_DENIED, "WORKSPACE_NOT_ACTIVE"
    )
    await expect_error(get(api, mine), grpc.StatusCode.NOT_FOUND, "RESOURCE_NOT_FOUND")
    assert (await get(api, other)).display_name == "Other"


async def test_admin_can_send_back_what_get_returned(api: Api) -> None:
    """Get shows the effective quotas; sending them back unchanged is no quota change."""
    workspace_id, admin = await api.create_workspace("Round trip", settings=full_settings())
    workspace = await get(api, workspace_id, admin)
    workspace.display_name = "Round trip 2"
    workspace.settings.system_prompt = "Changed"
    for paths in ([], ["*"]):
        updated = await update(api, workspace, paths, admin)
        assert updated.display_name == "Round trip 2"
        assert updated.settings == workspace.settings
        assert updated.quotas == workspace.quotas
    # The quotas stay unset, so they keep following the server's defaults.
    async with api.app.db.unscoped("test: read quotas") as session:
        row = await session.get(WorkspaceRow, workspace_id)
        assert row is not None and row.quotas == {}
    # Changing a quota is still refused.
    workspace.quotas.turns_per_minute += 1
    await expect_error(
        update(api, workspace, [], admin),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED_ROLE",
    )


# Settings and quotas


async def test_settings_round_trip(api: Api) -> None:
    settings = full_settings()
    workspace_id, admin = await api.create_workspace("Settings", settings=settings)
    got = await get(api, workspace_id, admin)
    assert got.settings == settings
    assert got.settings.llm.HasField("temperature")
    params = got.settings.pipeline[0].params
    assert params["passages"] == 5 and params["curated"] is False

    # The whole settings message can be replaced, and replacing clears what is omitted.
    replacement = W.WorkspaceSettings(language="en", retention_days=0)
    changed = await update(
        api, W.Workspace(name=got.name, settings=replacement), ["settings"], admin
    )
    assert changed.settings == replacement
    assert (await get(api, workspace_id, admin)).settings == replacement


async def test_zero_quotas_show_server_defaults(api: Api) -> None:
    defaults = api.app.settings
    workspace_id, _ = await api.create_workspace(
        "Quotas", quotas=W.WorkspaceQuotas(turns_per_minute=7)
    )
    got = await get(api, workspace_id)
    assert got.quotas == W.WorkspaceQuotas(
        requests_per_minute=defaults.default_requests_per_minute,
        concurrent_chat_streams=defaults.default_concurrent_chat_streams,
        turns_per_minute=7,
        tokens_per_day=defaults.default_tokens_per_day,
        max_document_bytes=defaults.default_max_document_bytes,
        principal_requests_per_minute=0,
    )
    changed = await update(
        api,
        W.Workspace(name=got.name, quotas=W.WorkspaceQuotas(tokens_per_day=123_456_789)),
        ["quotas"],
    )
    # Replacing the quotas message drops turns_per_minute back to the default.
    assert changed.quotas.turns_per_minute == defaults.default_turns_per_minute
    assert changed.quotas.tokens_per_day == 123_456_789
    # Setting a quota back to zero shows the default again.
    reset = await update(api, W.Workspace(name=got.name), ["quotas.tokens_per_day"])
    assert reset.quotas.tokens_per_day == defaults.default_tokens_per_day
    assert (await get(api, workspace_id)).quotas == reset.quotas


# Update masks


async def test_nested_mask_changes_only_that_field(api: Api) -> None:
    settings = full_settings()
    workspace_id, admin = await api.create_workspace("Nested", settings=settings)
    name = f"workspaces/{workspace_id}"
    changed = await update(
        api,
        W.Workspace(
            name=name,
            display_name="ignored",
            settings=W.WorkspaceSettings(system_prompt="New prompt", language="fr"),
        ),
        ["settings.system_prompt"],
        admin,
    )
    expected = W.WorkspaceSettings()
    expected.CopyFrom(settings)
    expected.system_prompt = "New prompt"
    assert changed.settings == expected
    assert changed.display_name == "Nested"
    assert await get(api, workspace_id, admin) == changed

    # A path named in the mask but unset in the request is cleared (AIP-134).
    cleared = await update(api, W.Workspace(name=name), ["settings.system_prompt"], admin)
    expected.system_prompt = ""
    assert cleared.settings == expected

    # Deeper paths and repeated fields work the same way.
    deeper = await update(
        api,
        W.Workspace(
            name=name,
            settings=W.WorkspaceSettings(
                business_hours=W.BusinessHours(time_zone="America/New_York"),
                llm=W.LlmPreferences(max_output_tokens=9),
            ),
        ),
        ["settings.business_hours.time_zone", "settings.llm.max_output_tokens"],
        admin,
    )
    assert deeper.settings.business_hours.time_zone == "America/New_York"
    assert list(deeper.settings.business_hours.intervals) == list(settings.business_hours.intervals)
    assert deeper.settings.llm.max_output_tokens == 9
    assert list(deeper.settings.llm.providers) == list(settings.llm.providers)


async def test_star_mask_replaces_every_updatable_field(api: Api) -> None:
    workspace_id, _ = await api.create_workspace(
        "Star", settings=full_settings(), quotas=W.WorkspaceQuotas(turns_per_minute=3)
    )
    before = await get(api, workspace_id)
    changed = await update(
        api,
        W.Workspace(
            name=before.name,
            display_name="Starred",
            settings=W.WorkspaceSettings(assistant_name="Bo"),
        ),
        ["*"],
    )
    assert changed.display_name == "Starred"
    assert changed.settings == W.WorkspaceSettings(assistant_name="Bo")
    assert changed.quotas.turns_per_minute == api.app.settings.default_turns_per_minute
    assert changed.create_time == before.create_time
    assert await get(api, workspace_id) == changed


async def test_empty_mask_updates_the_fields_that_are_set(api: Api) -> None:
    settings = full_settings()
    workspace_id, admin = await api.create_workspace("Empty mask", settings=settings)
    name = f"workspaces/{workspace_id}"
    renamed = await update(api, W.Workspace(name=name, display_name="Renamed"), [], admin)
    assert renamed.display_name == "Renamed"
    assert renamed.settings == settings  # not set in the request: untouched

    replaced = await update(
        api, W.Workspace(name=name, settings=W.WorkspaceSettings(language="de")), [], admin
    )
    assert replaced.display_name == "Renamed"
    assert replaced.settings == W.WorkspaceSettings(language="de")

    error = await expect_error(
        update(api, W.Workspace(name=name), [], admin), INVALID, "UPDATE_MASK_INVALID"
    )
    assert [f for f, _ in error.violations] == ["update_mask"]


MASKS_REFUSED = [
    ["settings.no_such_field"],
    ["no_such_field"],
    ["name"],
    ["create_time"],
    ["update_time"],
    ["display_name", "create_time"],
    ["*", "display_name"],
    ["settings.pipeline.name"],
    ["display_name.length"],
    [""],
]


async def test_invalid_mask_paths_are_refused(api: Api) -> None:
    workspace_id, admin = await api.create_workspace("Mask")
    for paths in MASKS_REFUSED:
        error = await expect_error(
            update(
                api,
                W.Workspace(name=f"workspaces/{workspace_id}", display_name="Changed"),
                paths,
                admin,
            ),
            INVALID,
            "UPDATE_MASK_INVALID",
            paths,
        )
        assert [f for f, _ in error.violations] == ["update_mask"], paths
    assert (await get(api, workspace_id)).display_name == "Mask"


# Validation


def _bad_workspace() -> W.Workspace:
    return W.Workspace(
        display_name="",
        settings=W.WorkspaceSettings(
            language="not a language",
            business_hours=W.BusinessHours(
                time_zone="Mars/Olympus_Mons",
                intervals=[
                    W.BusinessHoursInterval(
                        weekday=W.WEEKDAY_FRIDAY, open_time="18:00", close_time="09:00"
                    )
                ],
            ),
            llm=W.LlmPreferences(
                providers=[
                    W.LlmProviderChoice(provider=W.LLM_PROVIDER_OPENAI),
                    W.LlmProviderChoice(provider=W.LLM_PROVIDER_OPENAI, model="other"),
                ],
                temperature=3.0,
            ),
            pipeline=[W.PipelineStep(name="Bad Step!")],
        ),
    )


BAD_FIELDS = [
    "workspace.display_name",
    "workspace.settings.language",
    "workspace.settings.business_hours.time_zone",
    "workspace.settings.business_hours.intervals[0].close_time",
    "workspace.settings.llm.providers[1].provider",
    "workspace.settings.llm.temperature",
    "workspace.settings.pipeline[0].name",
]


async def test_create_reports_every_bad_field_at_once(api: Api) -> None:
    before = await stored_ids(api)
    error = await expect_error(
        api.workspaces.CreateWorkspace(
            W.CreateWorkspaceRequest(workspace=_bad_workspace()),
            metadata=api.md(api.platform_token),
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    fields = [f for f, _ in error.violations]
    assert sorted(fields) == sorted(BAD_FIELDS)
    assert all(description for _, description in error.violations)
    assert await stored_ids(api) == before


async def test_update_reports_every_bad_field_and_changes_nothing(api: Api) -> None:
    workspace_id, admin = await api.create_workspace("Valid", settings=full_settings())
    before = await get(api, workspace_id)
    bad = _bad_workspace()
    bad.name = before.name
    error = await expect_error(
        update(api, bad, ["display_name", "settings"], admin), INVALID, "INVALID_ARGUMENT"
    )
    assert sorted(f for f, _ in error.violations) == sorted(BAD_FIELDS)
    assert await get(api, workspace_id) == before


@pytest.mark.parametrize(
    ("workspace", "field"),
    [
        (W.Workspace(display_name="x" * 201), "workspace.display_name"),
        (W.Workspace(display_name="   "), "workspace.display_name"),
        (
            W.Workspace(display_name="ok", settings=W.WorkspaceSettings(assistant_name="a" * 101)),
            "workspace.settings.assistant_name",
        ),
        (
            W.Workspace(display_name="ok", settings=W.WorkspaceSettings(retention_days=-1)),
            "workspace.settings.retention_days",
        ),
        (
            W.Workspace(
                display_name="ok",
                settings=W.WorkspaceSettings(
                    business_hours=W.BusinessHours(
                        intervals=[
                            W.BusinessHoursInterval(
                                weekday=W.WEEKDAY_MONDAY, open_time="09:00", close_time="10:00"
                            )
                        ]
                    )
                ),
            ),
            "workspace.settings.business_hours.time_zone",
        ),
        (
            W.Workspace(
                display_name="ok",
                settings=W.WorkspaceSettings(
                    business_hours=W.BusinessHours(
                        time_zone="UTC",
                        intervals=[W.BusinessHoursInterval(open_time="09:00", close_time="24:00")],
                    )
                ),
            ),
            None,
        ),
        (
            W.Workspace(
                display_name="ok",
                settings=W.WorkspaceSettings(
                    handoff_contact=W.HandoffContact(email="nope", url="ftp://x")
                ),
            ),
            None,
        ),
        (
            W.Workspace(
                display_name="ok",
                settings=W.WorkspaceSettings(
                    llm=W.LlmPreferences(providers=[W.LlmProviderChoice()], max_output_tokens=-1)
                ),
            ),
            None,
        ),
        (
            W.Workspace(display_name="ok", quotas=W.WorkspaceQuotas(requests_per_minute=-5)),
            "workspace.quotas.requests_per_minute",
        ),
    ],
)
async def test_create_refuses_invalid_fields(
    api: Api, workspace: W.Workspace, field: str | None
) -> None:
    error = await expect_error(
        api.workspaces.CreateWorkspace(
            W.CreateWorkspaceRequest(workspace=workspace), metadata=api.md(api.platform_token)
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    fields = [f for f, _ in error.violations]
    assert len(fields) == len(set(fields)) >= 1
    if field is not None:
        assert fields == [field]
    if workspace.settings.business_hours.intervals and field is None:
        assert sorted(fields) == [
            "workspace.settings.business_hours.intervals[0].close_time",
            "workspace.settings.business_hours.intervals[0].weekday",
        ]
    if workspace.settings.handoff_contact.email:
        assert sorted(fields) == [
            "workspace.settings.handoff_contact.email",
            "workspace.settings.handoff_contact.url",
        ]
    if workspace.settings.llm.providers:
        assert sorted(fields) == [
            "workspace.settings.llm.max_output_tokens",
            "workspace.settings.llm.providers[0].provider",
        ]


# request_id idempotency


async def test_request_id_makes_create_idempotent(api: Api) -> None:
    display_name = unique()
    request_id = str(uuid.uuid4())
    request = W.CreateWorkspaceRequest(
        workspace=W.Workspace(display_name=display_name, settings=full_settings()),
        request_id=request_id,
    )
    first = await api.workspaces.CreateWorkspace(request, metadata=api.md(api.platform_token))
    again = await api.workspaces.CreateWorkspace(request, metadata=api.md(api.platform_token))
    assert again == first
    # The same UUID in another spelling is the same request_id.
    request.request_id = request_id.upper()
    assert (
        await api.workspaces.CreateWorkspace(request, metadata=api.md(api.platform_token))
    ) == first
    assert await count_named(api, display_name) == 1

    different = W.CreateWorkspaceRequest(
        workspace=W.Workspace(display_name=display_name + "!"), request_id=request_id
    )
    error = await expect_error(
        api.workspaces.CreateWorkspace(different, metadata=api.md(api.platform_token)),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_CONFLICT",
    )
    assert [f for f, _ in error.violations] == ["request_id"]
    assert await count_named(api, display_name) == 1
    assert await count_named(api, display_name + "!") == 0

    # Without a request_id every call creates a new workspace.
    plain = W.CreateWorkspaceRequest(workspace=W.Workspace(display_name=display_name))
    await api.workspaces.CreateWorkspace(plain, metadata=api.md(api.platform_token))
    await api.workspaces.CreateWorkspace(plain, metadata=api.md(api.platform_token))
    assert await count_named(api, display_name) == 3


@pytest.mark.parametrize(
    "request_id", ["not-a-uuid", "1234", "6f1c1d0e-zzzz-4000-8000-000000000000"]
)
async def test_non_uuid_request_id_is_invalid(api: Api, request_id: str) -> None:
    display_name = unique()
    error = await expect_error(
        api.workspaces.CreateWorkspace(
            W.CreateWorkspaceRequest(
                workspace=W.Workspace(display_name=display_name), request_id=request_id
            ),
            metadata=api.md(api.platform_token),
        ),
        INVALID,
        "INVALID_ARGUMENT",
    )
    assert [f for f, _ in error.violations] == ["request_id"]
    assert await count_named(api, display_name) == 0


async def test_concurrent_creates_with_one_request_id_make_one_workspace(api: Api) -> None:
    display_name = unique()
    request = W.CreateWorkspaceRequest(
        workspace=W.Workspace(display_name=display_name), request_id=str(uuid.uuid4())
    )
    results = await asyncio.gather(
        *(
            api.workspaces.CreateWorkspace(request, metadata=api.md(api.platform_token))
            for _ in range(5)
        )
    )
    assert len({r.name for r in results}) == 1
    assert all(r == results[0] for r in results)
    assert await count_named(api, display_name) == 1


# Pagination


@pytest.fixture
async def small_pages(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """A server with page size 2 by default and at most 3, on the test's database."""
    settings = make_settings(tmp_path / "small", database_url, default_page_size=2, max_page_size=3)
    app = await start_app(settings)
    try:
        async with Api(app) as helper:
            yield helper
    finally:
        await app.stop(grace=0)


async def test_list_pages_without_duplicates_or_gaps(api: Api) -> None:
    created = [(await api.create_workspace(f"Page {i}"))[0] for i in range(7)]
    expected = [f"workspaces/{i}" for i in await stored_ids(api)]
    # Three or more pages, however many workspaces earlier tests left in the database.
    size = max(3, len(expected) // 4)
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await api.workspaces.ListWorkspaces(
            W.ListWorkspacesRequest(page_size=size, page_token=token),
            metadata=api.md(api.platform_token),
        )
        pages.append([w.name for w in page.workspaces])
        token = page.next_page_token
        if not token:
            break
        assert len(page.workspaces) == size
    listed = [name for page in pages for name in page]
    assert len(pages) >= 3
    assert 1 <= len(pages[-1]) <= size
    assert len(listed) == len(set(listed))
    assert listed == expected  # newest first, every workspace exactly once
    assert listed[:7] == [f"workspaces/{i}" for i in reversed(created)]


async def test_page_size_default_cap_and_negative(small_pages: Api) -> None:
    api = small_pages
    for i in range(5):
        await api.create_workspace(f"Size {i}")

    async def size_of(page_size: int) -> int:
        page = await api.workspaces.ListWorkspaces(
            W.ListWorkspacesRequest(page_size=page_size), metadata=api.md(api.platform_token)
        )
        assert page.next_page_token
        return len(page.workspaces)

    assert await size_of(0) == 2
    assert await size_of(1) == 1
    assert await size_of(3) == 3
    assert await size_of(1000) == 3
    assert await size_of(2**31 - 1) == 3
    error = await expect_error(size_of(-1), INVALID, "INVALID_ARGUMENT")
    assert [f for f, _ in error.violations] == ["page_size"]


def _flip(text: str, position: int) -> str:
    """``text`` with the character at ``position`` changed to a near neighbour."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    char = text[position]
    replacement = alphabet[alphabet.index(char) ^ 1] if char in alphabet else "A"
    return text[:position] + replacement + text[position + 1 :]


async def test_altered_page_token_is_refused(api: Api) -> None:
    for i in range(3):
        await api.create_workspace(f"Token {i}")
    first = await api.workspaces.ListWorkspaces(
        W.ListWorkspacesRequest(page_size=1), metadata=api.md(api.platform_token)
    )
    token = first.next_page_token
    assert token
    # The untouched token works.
    second = await api.workspaces.ListWorkspaces(
        W.ListWorkspacesRequest(page_size=1, page_token=token),
        metadata=api.md(api.platform_token),
    )
    assert second.workspaces[0].name != first.workspaces[0].name

    altered = {_flip(token, i) for i in range(len(token))}
    # Standard-alphabet characters and padding decode to the same bytes, but are not
    # the token the server issued.
    altered |= {token.replace("-", "+", 1), token.replace("_", "/", 1), token + "="}
    altered |= {token[:-1], token + "A", token.replace(".", ""), "garbage", "a.b.c"}
    altered.discard(token)
    for bad in sorted(altered):
        error = await expect_error(
            api.workspaces.ListWorkspaces(
                W.ListWorkspacesRequest(page_size=1, page_token=bad),
                metadata=api.md(api.platform_token),
            ),
            INVALID,
            "PAGE_TOKEN_INVALID",
        )
        assert [f for f, _ in error.violations] == ["page_token"], bad


async def test_page_token_is_bound_to_its_caller_and_query(api: Api) -> None:
    workspace_id, admin = await api.create_workspace("Bound")
    await api.create_workspace("Bound 2")
    page = await api.workspaces.ListWorkspaces(
        W.ListWorkspacesRequest(page_size=1), metadata=api.md(api.platform_token)
    )
    token = page.next_page_token
    assert token
    # Another caller (a workspace admin) cannot use the platform's token.
    await expect_error(
        api.workspaces.ListWorkspaces(
            W.ListWorkspacesRequest(page_size=1, page_token=token), metadata=api.md(admin)
        ),
        INVALID,
        "PAGE_TOKEN_INVALID",
    )
    # A ListWorkspaces token is not a token of another list.
    await expect_error(
        api.conversations.ListConversations(
            conversation_pb2.ListConversationsRequest(
                parent=f"workspaces/{workspace_id}", page_token=token
            ),
            metadata=api.md(api.platform_token),
        ),
        INVALID,
        "PAGE_TOKEN_INVALID",
    )
    await expect_error(
        api.workspaces.ListApiKeys(
            W.ListApiKeysRequest(parent=f"workspaces/{workspace_id}", page_token=token),
            metadata=api.md(api.platform_token),
        ),
        INVALID,
        "PAGE_TOKEN_INVALID",
    )
    # A token issued by another server (another secret) is refused as well.
    body = base64.urlsafe_b64encode(b'{"s":"platform","q":"x","c":{"id":"z"},"t":0}')
    forged = body.decode().rstrip("=") + "." + "A" * 27
    await expect_error(
        api.workspaces.ListWorkspaces(
            W.ListWorkspacesRequest(page_token=forged), metadata=api.md(api.platform_token)
        ),
        INVALID,
        "PAGE_TOKEN_INVALID",
    )


# Resource names


MALFORMED_NAMES = [
    "",
    "workspaces/",
    "workspaces",
    "workspace/abc",
    "workspaces/ABC",
    "workspaces/abc/",
    "/workspaces/abc",
    "workspaces/abc/conversations/def",
    "workspaces/a b",
    "workspaces/abc\n",
    "workspaces/" + "a" * 64,
    "workspaces/-abc",
    "https://fenlo.ai/workspaces/abc",
    "workspaces/" + "a" * 400,
]


async def test_malformed_names_are_refused(api: Api) -> None:
    md = api.md(api.platform_token)
    for name in MALFORMED_NAMES:
        for call, field in (
            (api.workspaces.GetWorkspace(W.GetWorkspaceRequest(name=name), metadata=md), "name"),
            (
                api.workspaces.DeleteWorkspace(W.DeleteWorkspaceRequest(name=name), metadata=md),
                "name",
            ),
            (
                update(api, W.Workspace(name=name, display_name="x"), ["display_name"]),
                "workspace.name",
            ),
            (
                api.workspaces.ListApiKeys(W.ListApiKeysRequest(parent=name), metadata=md),
                "parent",
            ),
        ):
            error = await expect_error(call, INVALID, "RESOURCE_NAME_INVALID", name)
            assert [f for f, _ in error.violations] == [field], name
