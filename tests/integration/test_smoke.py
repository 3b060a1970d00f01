"""The harness itself: a real server answers a real channel on both databases."""

from __future__ import annotations

from fenlo.v1 import workspace_pb2
from tests.helpers import Api


async def test_create_and_get_workspace(api: Api) -> None:
    workspace_id, token = await api.create_workspace("Smoke")
    got = await api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
        metadata=api.md(token),
    )
    assert got.display_name == "Smoke"
    assert got.quotas.requests_per_minute == api.app.settings.default_requests_per_minute
