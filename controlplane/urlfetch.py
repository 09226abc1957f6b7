"""Fetching a file from an http(s) URL: the one adapter for the web servers images come from.

Only ``http`` and ``https``, on every hop: redirects (at most ``max_redirects``)
are followed here, one by one, and each is checked like the first URL. Every
address a fetch connects to is checked once resolved, so a name that
resolves to a refused address (or a redirect to one) is refused before any
connection is made: the checking resolver hands aiohttp only the addresses
``FetchPolicy.refusal`` lets through, and literal addresses are checked
before the request. Refused by default: loopback, link-local, private and
shared ranges, unspecified, multicast and reserved addresses, and the
cluster's own networks (given per fetch); ``allow`` lifts that for some
networks (a test's own image server on loopback), ``deny`` refuses more.

A fetch answers its size (when the server says), then its bytes in chunks;
more than ``max_bytes`` (announced or sent) is refused. The caller bounds
the whole fetch in time; ``connect_timeout`` bounds each connection.
Environment proxies are never used.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
SCHEMES = ("http", "https")
CHUNK = 1024 * 1024
USER_AGENT = "minicloud-controlplane"

# (network, why it is refused unless allowed).
REFUSED_BY_DEFAULT: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "an unspecified address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("192.0.0.0/24", "a reserved address"),
        ("198.18.0.0/15", "a reserved address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("fe80::/10", "a link-local address"),
        ("fc00::/7", "a private address"),
        ("ff00::/8", "a multicast address"),
        ("64:ff9b::/96", "a NAT64 address"),
    )
)


class FetchError(Exception):
    """A fetch that failed: the message says why (it goes into the artifact's events)."""


class Refused(FetchError):
    """A fetch refused by the address policy or the size limit, before or while connecting."""


class _RefusedAddress(OSError):
    """Raised inside aiohttp's connector by the checking resolver (carries the reason)."""


@dataclass(frozen=True)
class FetchPolicy:
    """Which addresses a fetch may reach, how much it may bring, how long it may connect."""

    max_bytes: int
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    connect_timeout: float = 30.0
    max_redirects: int = 5

    def refusal(self, address: str, cluster: Sequence[IPNetwork] = ()) -> str | None:
        """Why the address may not be reached, or None when it may."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.deny):
            return f"{ip} is refused by the control plane's settings"
        if any(ip in net for net in self.allow):
            return None
        for net, why in REFUSED_BY_DEFAULT:
            if ip in net:
                return f"{ip} is {why}"
        if any(ip.version == net.version and ip in net for net in cluster):
            return f"{ip} is in one of the cluster's own networks"
        return None


def check_url(url: str) -> str:
    """The URL if it can be fetched here (http or https, with a host); ValueError otherwise."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"URL {url[:200]!r} is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"URL {url[:200]!r}: only http and https URLs can be fetched, not {scheme or 'none'!r}"
        )
    if not host:
        raise ValueError(f"URL {url[:200]!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"URL {url[:200]!r}: credentials in a URL are not accepted")
    return url


class _CheckingResolver(AbstractResolver):
    """Resolves names, then hands on only the addresses the policy lets through."""

    def __init__(self, policy: FetchPolicy, cluster: Sequence[IPNetwork]) -> None:
        self._inner = ThreadedResolver()
        self._policy = policy
        self._cluster = cluster

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if self._policy.refusal(r["host"], self._cluster) is None]
        if not allowed:
            reasons = sorted({str(self._policy.refusal(r["host"], self._cluster)) for r in found})
            raise _RefusedAddress(
                f"{host.rstrip('.')} resolves only to refused addresses: {'; '.join(reasons)}"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class Response:
    """An answered fetch: the URL that answered, its size when announced, its bytes."""

    url: str
    size: int | None
    chunks: AsyncIterator[bytes]


@asynccontextmanager
async def open_url(
    url: str, policy: FetchPolicy, cluster: Sequence[IPNetwork] = ()
) -> AsyncIterator[Response]:
    """GET the URL (following redirects, each checked); FetchError or Refused when it fails."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout)
    connector = aiohttp.TCPConnector(
        resolver=_CheckingResolver(policy, cluster), use_dns_cache=False
    )
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, trust_env=False, auto_decompress=False
    ) as session:
        current = url
        for _hop in range(policy.max_redirects + 1):
            _check_hop(current, policy, cluster)
            try:
                answer = await session.get(
                    current, allow_redirects=False, headers={"User-Agent": USER_AGENT}
                )
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, _RefusedAddress):
                    raise Refused(f"refused: {exc.os_error}") from None
                raise FetchError(f"cannot connect to {_where(current)}: {exc.os_error}") from None
            except aiohttp.InvalidURL as exc:
                raise Refused(f"refused: {exc}") from None
            except aiohttp.ClientError as exc:
                raise FetchError(f"fetching {_where(current)} failed: {exc}") from None
            async with answer:
                if answer.status in (301, 302, 303, 307, 308):
                    location = answer.headers.get("Location", "")
                    if not location:
                        raise FetchError(f"{_where(current)} redirects nowhere")
                    try:
                        current = str(answer.url.join(URL(location)))
                    except ValueError:
                        raise FetchError(
                            f"{_where(current)} redirects to a malformed URL"
                        ) from None
                    continue
                if answer.status != 200:
                    raise FetchError(f"{_where(current)} answered HTTP {answer.status}")
                size = answer.content_length
                if size is not None and size > policy.max_bytes:
                    raise Refused(
                        f"refused: {_where(current)} is {size} bytes, "
                        f"more than the {policy.max_bytes} allowed"
                    )
                yield Response(current, size, _read(answer, policy.max_bytes))
                return
        raise FetchError(f"more than {policy.max_redirects} redirects from {_where(url)}")


def _check_hop(url: str, policy: FetchPolicy, cluster: Sequence[IPNetwork]) -> None:
    try:
        check_url(url)
    except ValueError as exc:
        raise Refused(f"refused: {exc}") from None
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return  # a name: checked once resolved
    why = policy.refusal(host, cluster)
    if why is not None:
        raise Refused(f"refused: {why}")


async def _read(answer: Any, limit: int) -> AsyncIterator[bytes]:
    total = 0
    try:
        async for chunk in answer.content.iter_chunked(CHUNK):
            total += len(chunk)
            if total > limit:
                raise Refused(f"refused: more than the {limit} bytes allowed")
            yield chunk
    except aiohttp.ClientError as exc:
        raise FetchError(f"the download broke off after {total} bytes: {exc}") from None
    if answer.content_length is not None and total < answer.content_length:
        raise FetchError(f"the download broke off after {total} of {answer.content_length} bytes")


def _where(url: str) -> str:
    """The URL without its query (which may hold a token), cut short."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:300]
