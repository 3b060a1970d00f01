"""Which webhook URLs may be called: http(s) only, and (unless the operator allows
it) no host that resolves to a private, loopback, link-local, multicast, reserved,
unspecified or otherwise non-public address. Checked when a webhook is created or updated and again
before every request, against the addresses the request then connects to, so a
name that later resolves elsewhere (DNS rebinding) is caught too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

MAX_URL_CHARS = 2048
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(ValueError):
    """The URL may not be called; ``str()`` says why, for the caller."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the URL with the host replaced by a checked address,
    and the original host for the ``Host`` header and TLS (SNI, certificate)."""

    url: str
    host_header: str
    tls_hostname: str | None


def check_shape(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a well-formed http(s) URL, or raise UrlRefused."""
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"must be at most {MAX_URL_CHARS} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise UrlRefused("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not contain a user name or password")
    host = parts.hostname
    if not host:
        raise UrlRefused("must have a host")
    return scheme, host, port or (443 if scheme == "https" else 80)


def refused_reason(address: IpAddress) -> str | None:
    """Why ``address`` may not be called, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return f"resolves to a {kind} address ({address}), which webhooks may not call"
    if not address.is_global:  # shared (CGNAT), benchmarking and other special ranges
        return f"resolves to a non-public address ({address}), which webhooks may not call"
    return None


async def resolve(host: str, port: int) -> list[IpAddress]:
    """The addresses of ``host`` (an IP literal or a name resolved off the event loop)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"host {host!r} could not be resolved ({exc})") from None
    addresses: list[IpAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefused(f"host {host!r} has no address")
    return addresses


async def check(url: str, *, allow_private: bool) -> Target:
    """Check ``url`` and pin it to a checked address; raise UrlRefused when refused."""
    scheme, host, port = check_shape(url)
    addresses = await resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = refused_reason(address)
            if reason is not None:
                raise UrlRefused(reason)
    address = addresses[0]
    parts = urlsplit(url)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{port}"
    pinned = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    default_port = 443 if scheme == "https" else 80
    host_header = host if port == default_port else f"{host}:{port}"
    if ":" in host and port == default_port:
        host_header = f"[{host}]"
    elif ":" in host:
        host_header = f"[{host}]:{port}"
    return Target(pinned, host_header, host if scheme == "https" else None)
