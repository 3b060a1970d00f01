from __future__ import annotations

import pytest

from fenlo_server.errors import InvalidArgument
from fenlo_server.pagination import TOKEN_LIFETIME_SECONDS, PageTokens, page_size


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def reason(error: InvalidArgument) -> str:
    return error.reason_name


def test_round_trip() -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.encode("ws:a", {"m": "List", "state": "OPEN"}, {"id": "x1"})
    assert tokens.decode(token, "ws:a", {"state": "OPEN", "m": "List"}) == {"id": "x1"}


@pytest.mark.parametrize(
    ("scope", "query", "why"),
    [
        ("ws:b", {"m": "List"}, "another workspace"),
        ("ws:a", {"m": "List", "state": "CLOSED"}, "different query"),
        ("platform", {"m": "List"}, "another workspace"),
    ],
)
def test_bound_to_scope_and_query(scope: str, query: dict[str, str], why: str) -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.encode("ws:a", {"m": "List"}, {"id": "x1"})
    with pytest.raises(InvalidArgument) as caught:
        tokens.decode(token, scope, query)
    assert reason(caught.value) == "PAGE_TOKEN_INVALID"
    assert why in caught.value.message


def test_every_altered_character_is_refused() -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.encode("ws:a", {"m": "List"}, {"id": "x1"})
    for i in range(len(token)):
        replacement = "A" if token[i] != "A" else "B"
        forged = token[:i] + replacement + token[i + 1 :]
        with pytest.raises(InvalidArgument):
            tokens.decode(forged, "ws:a", {"m": "List"})


def test_other_server_secret_is_refused() -> None:
    token = PageTokens(b"k" * 32).encode("ws:a", {}, {"id": "x"})
    with pytest.raises(InvalidArgument) as caught:
        PageTokens(b"j" * 32).decode(token, "ws:a", {})
    assert "not issued by this server" in caught.value.message


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "!!!.???", "e30.e30"])
def test_garbage_is_refused(garbage: str) -> None:
    with pytest.raises(InvalidArgument):
        PageTokens(b"k" * 32).decode(garbage, "ws:a", {})


def test_tokens_expire() -> None:
    clock = Clock()
    tokens = PageTokens(b"k" * 32, now=clock)
    token = tokens.encode("ws:a", {}, {"id": "x"})
    clock.now += TOKEN_LIFETIME_SECONDS - 1
    assert tokens.decode(token, "ws:a", {}) == {"id": "x"}
    clock.now += 2
    with pytest.raises(InvalidArgument) as caught:
        tokens.decode(token, "ws:a", {})
    assert "expired" in caught.value.message


def test_page_size() -> None:
    assert page_size(0, 50, 1000) == 50
    assert page_size(7, 50, 1000) == 7
    assert page_size(5000, 50, 1000) == 1000
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1, 50, 1000)
    assert caught.value.violations[0].field == "page_size"
