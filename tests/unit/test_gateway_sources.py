"""The gateway's reader of granted download URLs (gateway/sources.py) against real sockets:
what it asks, what it takes, and every way a source can fail it: silent, broken off, garbled,
too long, not HTTP at all, over TLS, and a client slower than the source."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.sources import Fetched, SourceError, Sources

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MIB = 1 << 20


class Server:
    """A one-connection-at-a-time TCP server running the test's handler."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self, handler: Handler, context: ssl.SSLContext | None = None) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                self.heads.append(await reader.readuntil(b"\r\n\r\n"))
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = Server()
    try:
        yield running
    finally:
        await running.stop()


def answer(body: bytes, status: str = "200 OK", extra: str = "") -> Handler:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    return handler


async def read_all(fetched: Fetched) -> bytes:
    try:
        return b"".join([chunk async for chunk in fetched.body()])
    finally:
        fetched.close()


async def test_it_asks_for_the_url_exactly_and_takes_the_whole_body(server: Server) -> None:
    body = bytes(range(256)) * 20_000  # 5 MB: many reads
    port = await server.start(answer(body, extra="X-Thing: a\r\n"))
    sources = Sources(64 * 1024)
    url = f"http://127.0.0.1:{port}/blobs/ab12?expires=9&signature=s%2Fx"
    fetched = await sources.get(url, {"Range": "bytes=0-", "Accept-Encoding": "identity"})
    assert fetched.status == 200
    assert fetched.headers["content-length"] == str(len(body))
    assert fetched.length == len(body)
    assert fetched.headers["x-thing"] == "a"
    assert await read_all(fetched) == body
    [head] = server.heads
    lines = head.decode().split("\r\n")
    assert lines[0] == "GET /blobs/ab12?expires=9&signature=s%2Fx HTTP/1.1"
    assert {line.lower() for line in lines[1:] if line} == {
        f"host: 127.0.0.1:{port}",
        "connection: close",
        "range: bytes=0-",
        "accept-encoding: identity",
    }


def test_the_gateways_event_loop_uvloop_reads_it_too() -> None:
    """The gateway runs on uvloop, whose transports and buffered reads are its own."""
    body = bytes(range(256)) * 8192

    async def fetch() -> bytes:
        server = Server()
        port = await server.start(answer(body))
        try:
            fetched = await Sources(64 * 1024).get(f"http://127.0.0.1:{port}/x", {})
            return await read_all(fetched)
        finally:
            await server.stop()

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(fetch()) == body
    finally:
        loop.close()


async def test_credentials_in_the_url_are_neither_sent_as_host_nor_shown(server: Server) -> None:
    port = await server.start(answer(b"ok"))
    fetched = await Sources().get(f"http://user:hunter2@127.0.0.1:{port}/x", {})
    assert await read_all(fetched) == b"ok"
    assert b"hunter2" not in server.heads[0]
    assert f"host: 127.0.0.1:{port}\r\n".encode() in server.heads[0].lower()


async def test_a_body_is_read_only_at_its_stated_length(server: Server) -> None:
    async def chunked(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        await writer.drain()

    port = await server.start(chunked)
    fetched = await Sources().get(f"http://127.0.0.1:{port}/x", {})
    assert fetched.length is None
    with pytest.raises(SourceError, match="states no Content-Length"):
        await read_all(fetched)


async def test_a_source_that_never_answers_times_out(server: Server) -> None:
    async def silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes

    port = await server.start(silent)
    with pytest.raises(SourceError, match=r"no byte came from the source for 0\.2 s"):
        await Sources(read_timeout=0.2).get(f"http://127.0.0.1:{port}/x", {})


async def test_a_source_that_stalls_mid_body_times_out(server: Server) -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await reader.read()

    port = await server.start(stalls)
    fetched = await Sources(read_timeout=0.2).get(f"http://127.0.0.1:{port}/x", {})
    with pytest.raises(SourceError, match="no byte came"):
        await read_all(fetched)


async def test_a_source_that_breaks_off_is_an_error_not_a_short_body(server: Server) -> None:
    async def breaks_off(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n" + b"x" * 200_000)
        await writer.drain()

    port = await server.start(breaks_off)
    fetched = await Sources(64 * 1024).get(f"http://127.0.0.1:{port}/x", {})
    with pytest.raises(SourceError, match="broke off 100000 bytes short"):
        await read_all(fetched)


async def test_a_source_that_sends_more_than_it_said_is_refused(server: Server) -> None:
    async def too_much(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # so that the body comes in a read of its own
        writer.write(b"y" * 1000)
        await writer.drain()

    port = await server.start(too_much)
    fetched = await Sources().get(f"http://127.0.0.1:{port}/x", {})
    with pytest.raises(SourceError, match="more than its Content-Length"):
        await read_all(fetched)


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000,  # a head without end
    ],
    ids=["not-http", "two-lengths", "huge-head"],
)
async def test_a_garbled_answer_is_an_error(server: Server, garbage: bytes) -> None:
    async def garbled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(garbage)
        await writer.drain()
        await reader.read()  # and keeps the connection open

    port = await server.start(garbled)
    with pytest.raises(SourceError, match="not an HTTP answer") as caught:
        await Sources().get(f"http://127.0.0.1:{port}/x?signature=secret", {})
    assert "secret" not in str(caught.value)


async def test_a_source_that_hangs_up_without_answering_is_an_error(server: Server) -> None:
    async def hangs_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    port = await server.start(hangs_up)
    with pytest.raises(SourceError):
        await Sources().get(f"http://127.0.0.1:{port}/x", {})


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/x",
        "http:///no-host",
        "http://127.0.0.1:notaport/x",
        "",
    ],
)
async def test_what_is_not_an_http_url_is_refused_before_connecting(url: str) -> None:
    with pytest.raises(SourceError) as caught:
        await Sources().get(url, {})
    assert "passwd" not in str(caught.value)


async def test_nothing_listening_is_an_error_naming_the_host_only() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    with pytest.raises(SourceError) as caught:
        await Sources().get(f"http://127.0.0.1:{port}/blobs/k?signature=secret", {})
    assert str(caught.value) == f"127.0.0.1:{port}: ConnectionRefusedError"


async def test_a_slow_client_holds_the_source_back(server: Server) -> None:
    """What waits in the gateway for a slow client stays within a few buffers, however much
    the source has to send: the socket is paused, and TCP holds the source back."""
    body = b"z" * (64 * MIB)
    port = await server.start(answer(body))
    fetched = await Sources(256 * 1024).get(f"http://127.0.0.1:{port}/x", {})
    received, most_waiting = 0, 0
    try:
        async for chunk in fetched.body():
            received += len(chunk)
            most_waiting = max(most_waiting, fetched.waiting_bytes)
            if received < 8 * MIB:
                await asyncio.sleep(0.002)  # the client is slow at first
    finally:
        fetched.close()
    assert received == len(body)
    assert 0 < most_waiting <= 3 * 256 * 1024


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test source")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_sources_are_read_over_verified_tls(server: Server, tmp_path: Path) -> None:
    """S3 endpoints are HTTPS: the certificate is checked (here against the test's own CA,
    in production against the system's), and the body comes through the TLS layer whole."""
    server_context, client_context = _self_signed(tmp_path)
    body = bytes(range(256)) * 4096
    port = await server.start(answer(body), server_context)
    url = f"https://127.0.0.1:{port}/bucket/key?X-Amz-Signature=s"
    fetched = await Sources(64 * 1024, ssl_context=client_context).get(url, {})
    assert fetched.status == 200
    assert await read_all(fetched) == body

    with pytest.raises(SourceError, match="SSLCertVerificationError"):
        await Sources().get(url, {})  # the system's CAs do not know this certificate
