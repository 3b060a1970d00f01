"""The parts of webhook delivery that need no server: backoff, the URL policy,
the secret box and the signature (checked against the documented snippet)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag

from fenlo_server.events import url_policy
from fenlo_server.events.secret_box import SecretBox
from fenlo_server.events.signing import signature
from fenlo_server.events.webhooks import backoff_seconds

ROOT = Path(__file__).resolve().parents[2]


def test_backoff_is_full_jitter_under_a_growing_ceiling() -> None:
    base, cap = 1.0, 20.0
    for attempt in range(1, 8):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        samples = [backoff_seconds(attempt, base, cap) for _ in range(400)]
        assert all(0 <= s <= ceiling for s in samples), attempt
        # Full jitter: the waits spread over the whole range, not just near the top.
        assert min(samples) < ceiling * 0.1 and max(samples) > ceiling * 0.9, attempt
    assert backoff_seconds(500, base, cap) <= cap  # no overflow on huge attempt counts


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    reason = url_policy.refused_reason(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert url_policy.refused_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://1.1.1.1/",
        "file:///etc/passwd",
        "gopher://1.1.1.1/",
        "http://user:secret@1.1.1.1/",
        "https:///path",
        "http://1.1.1.1:99999/",
        "http://1.1.1.1/a b",
        "https://1.1.1.1/" + "a" * 2048,
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(url_policy.UrlRefused):
        url_policy.check_shape(url)


async def test_check_pins_the_request_to_the_checked_address() -> None:
    target = await url_policy.check("https://1.1.1.1:8443/hook?x=1", allow_private=False)
    assert target.url == "https://1.1.1.1:8443/hook?x=1"
    assert target.host_header == "1.1.1.1:8443" and target.tls_hostname == "1.1.1.1"
    names = await url_policy.check("http://localhost:8080/h", allow_private=True)
    assert re.fullmatch(r"http://(127\.0\.0\.1|\[::1\]):8080/h", names.url)
    assert names.host_header == "localhost:8080" and names.tls_hostname is None
    with pytest.raises(url_policy.UrlRefused, match="loopback"):
        await url_policy.check("http://localhost:8080/h", allow_private=False)
    v6 = await url_policy.check("http://[2606:4700:4700::1111]/", allow_private=False)
    assert (
        v6.url == "http://[2606:4700:4700::1111]:80/" and v6.host_header == "[2606:4700:4700::1111]"
    )


async def test_names_are_resolved_off_the_event_loop() -> None:
    # A name that cannot resolve is refused with a reason (not an exception of the
    # resolver), and resolving lets other tasks run meanwhile.
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(url_policy.UrlRefused, match="could not be resolved"):
            await url_policy.check("http://no-such-host.invalid/", allow_private=False)
    finally:
        ticker.cancel()
    assert ticks > 0


def test_secret_box_round_trip_and_binding() -> None:
    box = SecretBox(b"k" * 32)
    sealed = box.encrypt("whsec_abc", "hook1")
    assert "whsec_abc" not in sealed and sealed.startswith("v1:")
    assert box.decrypt(sealed, "hook1") == "whsec_abc"
    assert box.encrypt("whsec_abc", "hook1") != sealed  # a fresh nonce each time
    with pytest.raises(InvalidTag):
        box.decrypt(sealed, "hook2")  # copied onto another webhook
    with pytest.raises(InvalidTag):
        SecretBox(b"x" * 32).decrypt(sealed, "hook1")  # another key
    with pytest.raises(ValueError, match="16 bytes"):
        SecretBox(b"short")


def _documented_verify() -> Any:
    doc = (ROOT / "docs" / "webhooks.md").read_text()
    source = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def verify(" in b)
    namespace: dict[str, Any] = {}
    exec(compile(source, "docs/webhooks.md", "exec"), namespace)
    return namespace["verify"]


def test_the_documented_snippet_verifies_our_signature() -> None:
    verify = _documented_verify()
    body = b'{"id":"e1","seq":1}'
    now = int(time.time())
    headers = {"Fenlo-Timestamp": str(now), "Fenlo-Signature": signature("s3cret", now, body)}
    assert verify("s3cret", headers, body)
    assert not verify("other", headers, body)
    assert not verify("s3cret", headers, body + b"x")
    assert not verify("s3cret", {**headers, "Fenlo-Timestamp": str(now + 1)}, body)
    assert not verify("s3cret", headers, body, now=now + 301)  # a replay
    assert verify("s3cret", headers, body, now=now + 299)
    rotated = {**headers, "Fenlo-Signature": "v1=00," + headers["Fenlo-Signature"]}
    assert verify("s3cret", rotated, body)
    # The format itself: v1= and the hex HMAC-SHA256 of "{timestamp}.{body}".
    import hashlib
    import hmac

    expected = hmac.new(b"s3cret", f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["Fenlo-Signature"] == f"v1={expected}"
