from __future__ import annotations

import re

import pytest

from fenlo_server import names
from fenlo_server.errors import InvalidArgument
from fenlo_server.ids import new_id


def test_ids_are_url_safe_unique_and_ordered() -> None:
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9a-z]{26}", i) for i in ids)


def test_parse_names() -> None:
    assert names.parse("conversation", "workspaces/w1/conversations/c1", "name") == ("w1", "c1")
    assert names.parse("message", "workspaces/w1/conversations/c1/messages/m1", "name") == (
        "w1",
        "c1",
        "m1",
    )
    assert names.workspace_id("workspaces/abc") == "abc"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "workspaces/",
        "workspaces/W1",
        "workspaces/w1/",
        "workspaces/w1/conversations/c1",
        "projects/w1",
        "workspaces/w1\n",
        "workspaces/" + "a" * 100,
        "workspaces/../x",
    ],
)
def test_bad_workspace_names(bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        names.workspace_id(bad, "parent")
    assert caught.value.reason_name == "RESOURCE_NAME_INVALID"
    assert caught.value.violations[0].field == "parent"
