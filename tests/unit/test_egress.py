"""Requests on a user's behalf never reach loopback, link-local, private or other non-global
addresses, and the refusal comes before any connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import httpx
import pytest

from services.common.egress import EgressRefused, Resolver, parse_allowlist, send, vet


class CountingServer:
    """A loopback HTTP server that counts connections and answers each request with `answer`."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def __aenter__(self) -> CountingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(self.answer)
        await writer.drain()
        writer.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def resolver(table: dict[str, Sequence[str]]) -> Resolver:
    async def resolve(host: str) -> Sequence[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as http:
        yield http


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/v1", "loopback"),
        ("http://127.1/v1", "loopback"),  # short form
        ("http://2130706433/v1", "loopback"),  # 127.0.0.1 as one number
        ("http://[::1]/v1", "loopback"),
        ("http://[::ffff:127.0.0.1]/v1", "loopback"),  # IPv4-mapped
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/v1", "link-local"),
        ("http://10.0.0.5/v1", "private"),
        ("http://172.16.3.4/v1", "private"),
        ("http://192.168.1.1/v1", "private"),
        ("http://[fd00::1]/v1", "private"),
        ("http://0.0.0.0/v1", "unspecified"),
        ("http://224.0.0.1/v1", "multicast"),
        ("http://100.64.0.1/v1", "not a global address"),  # carrier-grade NAT
    ],
)
async def test_non_global_addresses_are_refused(url: str, why: str) -> None:
    with pytest.raises(EgressRefused) as refused:
        await vet(url, resolve=resolver({"2130706433": ["127.0.0.1"], "127.1": ["127.0.0.1"]}))
    assert why in str(refused.value)


async def test_a_name_is_checked_on_every_address_it_resolves_to() -> None:
    names = resolver({"judge.example": ["93.184.215.14", "10.1.2.3"], "ok.example": ["8.8.8.8"]})
    with pytest.raises(EgressRefused, match=r"judge\.example is 10\.1\.2\.3, a private address"):
        await vet("https://judge.example/v1", resolve=names)
    target = await vet("https://ok.example:8443/v1/chat", resolve=names)
    assert target.pinned == httpx.URL("https://8.8.8.8:8443/v1/chat")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://judge.example/", "must start with https:// or http://"),
        ("https://user:secret@judge.example/", "must not carry a user name or password"),
        ("https://nowhere.example/", "does not resolve"),
        ("not a url at all", "must start with"),
    ],
)
async def test_malformed_targets_are_refused(url: str, message: str) -> None:
    with pytest.raises(EgressRefused) as refused:
        await vet(url, resolve=resolver({"judge.example": ["8.8.8.8"]}))
    assert message in str(refused.value)
    assert "secret" not in str(refused.value)


async def test_the_refusal_comes_before_any_connection(client: httpx.AsyncClient) -> None:
    async with CountingServer(OK) as server:
        for url in (f"http://127.0.0.1:{server.port}/", f"http://localhost:{server.port}/"):
            with pytest.raises(EgressRefused):
                await send(client, "POST", url, json={"x": 1})
        assert server.connections == 0


async def test_an_allowlisted_network_is_reached_at_the_checked_address(
    client: httpx.AsyncClient,
) -> None:
    names = resolver({"model.internal": ["127.0.0.1"]})
    async with CountingServer(OK) as server:
        response = await send(
            client,
            "GET",
            f"http://model.internal:{server.port}/v1/models",
            allow=parse_allowlist(["127.0.0.0/8"]),
            resolve=names,
        )
        assert response.text == "ok"
        assert server.connections == 1
        assert f"host: model.internal:{server.port}" in server.requests[0].decode().lower()


async def test_a_redirect_is_not_followed(client: httpx.AsyncClient) -> None:
    redirect = (
        b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/latest/meta-data/\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    async with CountingServer(redirect) as server:
        with pytest.raises(EgressRefused, match="redirect"):
            await send(
                client,
                "GET",
                f"http://127.0.0.1:{server.port}/",
                allow=parse_allowlist(["127.0.0.1"]),
            )
        assert server.connections == 1


def test_a_bad_allowlist_entry_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        parse_allowlist(["10.0.0.0/33"])
