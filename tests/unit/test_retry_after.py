from __future__ import annotations

import email.utils
import time

import pytest

from fenlo_server.llm.openai_compat import _retry_after


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({}, None),
        (None, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "abc"}, None),
    ],
)
def test_retry_after_values(headers: dict[str, str] | None, expected: float | None) -> None:
    assert _retry_after(headers) == expected


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    value = _retry_after({"retry-after": when})
    assert value is not None
    assert 27 <= value <= 31
