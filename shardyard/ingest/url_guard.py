"""Server-side request forgery guard for URL ingests: URLs from metadata someone else wrote must not make
the ingest machine fetch from itself, its private network or the cloud metadata service.

Three checks, each refusing loopback, private, link-local, multicast, reserved, unspecified and other
non-public addresses, and the metadata services (169.254.169.254, fd00:ec2::254) by name:

- `url_refusal` resolves a URL's host (DNS) before the first request and checks every address it resolves
  to (an IPv4 address inside IPv6, mapped, 6to4 or Teredo, is checked as itself);
- `check_redirect`, a `requests` response hook, does the same for the `Location` of every redirect before
  it is followed;
- `GuardedAdapter` checks the address each new connection actually reached, before a byte of the request
  is sent: the resolver may answer differently the second time (DNS rebinding), and this check is the one
  that holds whatever the name resolved to. A proxy (from the environment) resolves names itself: its
  connections are not checked here, only the names, by the first two checks.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urljoin

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util import parse_url

__all__ = ["METADATA_ADDRESSES", "GuardedAdapter", "RefusedURL", "address_refusal", "check_redirect", "url_refusal"]

METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))


class RefusedURL(Exception):
    """A URL (or a redirect's target, or the address a connection reached) that the guard refuses; the
    message names the host, the address and why."""


def address_refusal(address: str) -> str | None:
    """Why the IP `address` (text, an IPv6 zone allowed) may not be fetched from, or None when it is a
    public unicast address. Raises `ValueError` when `address` is not an IP address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip in METADATA_ADDRESSES:
        return "cloud metadata service"
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        why = None if embedded is None else address_refusal(str(embedded))
        if why:
            return f"{why} (IPv4 {embedded} inside IPv6)"
        if ip.ipv4_mapped is not None:  # the socket talks IPv4 to the mapped address: its verdict is the one
            return None
    for attr, why in (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                      ("is_unspecified", "unspecified"), ("is_reserved", "reserved"),
                      ("is_private", "private network")):
        if getattr(ip, attr):
            return why
    return None if ip.is_global else "not a public address"


def url_refusal(url: str) -> str | None:
    """Why `url` may not be fetched: its host resolves (DNS, every answer) to an address `address_refusal`
    refuses; None otherwise, and also when the URL has no host or does not resolve (the request then fails
    on its own, as any network error)."""
    if not isinstance(url, str):
        return None
    try:
        parsed = parse_url(url)  # the parser requests itself uses: no disagreement on which host is meant
    except (ValueError, urllib3.exceptions.LocationParseError):
        return None
    host = (parsed.host or "").strip("[]")
    if not host or parsed.scheme not in ("http", "https"):
        return None
    try:
        infos = socket.getaddrinfo(host, parsed.port or (443 if parsed.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for *_, sockaddr in infos:
        why = address_refusal(str(sockaddr[0]))
        if why:
            return f"host {host} resolves to {sockaddr[0]}: {why}"
    return None


def check_redirect(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """`requests` response hook: raise `RefusedURL` when `response` redirects to a URL `url_refusal`
    refuses (called for every response, each redirect hop included, before the next hop is requested)."""
    if response.is_redirect:
        target = urljoin(response.url, response.headers["location"])
        why = url_refusal(target)
        if why:
            response.close()
            raise RefusedURL(f"redirect from {response.url} to {target} refused: {why}")
    return response


class _PeerCheck:
    """Mixin for urllib3 connections: after `connect()`, refuse the address the socket actually reached."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        peer = self.sock.getpeername()[0]  # type: ignore[attr-defined]
        why = address_refusal(peer)
        if why:
            self.close()  # type: ignore[attr-defined]
            raise RefusedURL(f"host {self.host} connected to {peer}: {why}")  # type: ignore[attr-defined]


class _GuardedHTTPConnection(_PeerCheck, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_PeerCheck, HTTPSConnection):
    pass


class _GuardedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """`requests` adapter whose direct connections are refused (`RefusedURL`, raised out of the request)
    when they reach an address `address_refusal` refuses. Same arguments as `HTTPAdapter`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """`HTTPAdapter`'s pool manager, its pools making guarded connections."""
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}
