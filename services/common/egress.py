"""Requests a service sends to an address a user gave it (a judge's base URL, a webhook).

Such a request comes from our network on the user's behalf, so it must not reach what only our
network can: loopback, link-local (the cloud metadata service at 169.254.169.254), private and
other non-global addresses. The check is made on every address the host resolves to, before any
connection, and the request then goes to the address that was checked (the URL's host is kept
for the Host header and TLS), so a name that resolves differently a moment later cannot slip
through. Redirects are not followed: each would need the same check, and an API endpoint has no
reason to redirect. An operator can allow networks (an internal model server) in configuration.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host -> the addresses it resolves to (tests replace the system's resolver).
Resolver = Callable[[str], Awaitable[Sequence[str]]]


class EgressRefused(Exception):
    """A URL this service may not send a request to; the message says why (safe to show)."""


@dataclass(frozen=True)
class Target:
    url: httpx.URL
    addresses: tuple[IPAddress, ...]

    @property
    def pinned(self) -> httpx.URL:
        """The URL with its host replaced by the first checked address."""
        return self.url.copy_with(host=str(self.addresses[0]))


def parse_allowlist(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Networks an operator allows ("10.0.0.0/8", "127.0.0.1"); a bad entry is a ValueError."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry)


async def system_resolver(host: str) -> Sequence[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def vet(
    url: str,
    allow: Sequence[IPNetwork] = (),
    resolve: Resolver = system_resolver,
) -> Target:
    """The URL and the addresses it may be sent to, or EgressRefused."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise EgressRefused(f"{url!r} is not a URL") from None
    if parsed.scheme not in ("http", "https"):
        raise EgressRefused(f"the URL must start with https:// or http://, not {parsed.scheme!r}")
    if parsed.userinfo:
        raise EgressRefused("the URL must not carry a user name or password")
    host = parsed.host
    if not host:
        raise EgressRefused("the URL has no host")
    try:
        found = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            found = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await resolve(host)]
        except OSError:
            raise EgressRefused(f"{host} does not resolve") from None
    if not found:
        raise EgressRefused(f"{host} does not resolve")
    for address in found:
        if why := _refused(address, allow):
            raise EgressRefused(
                f"{host} is {address}, {why}: requests on a user's behalf may not go to "
                "loopback, link-local, private or other non-global addresses (an operator "
                "can allow a network in the service's egress allowlist)"
            )
    return Target(parsed, tuple(found))


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    allow: Sequence[IPNetwork] = (),
    resolve: Resolver = system_resolver,
    **kwargs: Any,
) -> httpx.Response:
    """`client.request` to a vetted address, redirects refused."""
    target = await vet(url, allow, resolve)
    headers = httpx.Headers(kwargs.pop("headers", None))
    headers["Host"] = target.url.netloc.decode("ascii")
    extensions = dict(kwargs.pop("extensions", None) or {})
    if target.url.scheme == "https":
        extensions["sni_hostname"] = target.url.host  # and the certificate is checked for it
    response = await client.request(
        method,
        target.pinned,
        headers=headers,
        extensions=extensions,
        follow_redirects=False,
        **kwargs,
    )
    if response.is_redirect:
        await response.aclose()
        raise EgressRefused(
            f"{target.url.host} answered with a redirect ({response.status_code}), which is not "
            "followed: give the endpoint's final URL"
        )
    return response


def _refused(address: IPAddress, allow: Sequence[IPNetwork]) -> str | None:
    """Why a request may not go to `address`, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if any(address in network for network in allow):
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a global address"
    return None
