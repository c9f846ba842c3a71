"""A TCP relay from the container pods' network to the gateway.

Container pods sit on a network of their own, `internal` by default: no route out of the host,
and the host's loopback (where the gateway, PostgreSQL and the services listen in a default
install) is not theirs to reach. The relay listens on the host's address on that network and
passes each connection to the gateway, and to nothing else: the one way out a pod has.

The address is bound with IP_FREEBIND because the engine makes the network's bridge (and so
the address) only when its first container starts. The container provider starts the relay on
first use, so a service that never runs a container pod never listens there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from services.deploy.providers.base import ProviderError, ProviderErrorKind

log = logging.getLogger(__name__)

_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; not exported by every Python
_CHUNK = 64 * 1024


class Relay:
    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    async def ensure(self) -> None:
        """Listening from now on (a no-op once it is)."""
        async with self._lock:
            if self._server is None:
                await self._start()

    async def _start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            sock.bind(self.listen)
        except OSError as exc:
            sock.close()
            raise ProviderError(
                ProviderErrorKind.UNAVAILABLE,
                f"the container pods' relay to the gateway cannot listen on {self.listen[0]}:"
                f"{self.listen[1]} ({exc.strerror}): set TUNELAB_DEPLOY_CONTAINER_RELAY_PORT to a "
                "free port, or TUNELAB_DEPLOY_CONTAINER_API_URL where pods reach the gateway "
                "without it",
            ) from None
        sock.setblocking(False)
        self._server = await asyncio.start_server(self._accept, sock=sock, backlog=128)
        log.info(
            "container pods' relay listening",
            extra={"address": f"{self.listen[0]}:{self.listen[1]}", "target": self.target},
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(*self.target), timeout=10
                )
            except (OSError, TimeoutError) as exc:
                log.warning("relay: the gateway cannot be reached", extra={"error": str(exc)})
                writer.close()
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
                writer.close()
        finally:
            self._links.discard(task)

    def address(self) -> tuple[str, int]:
        """Where it listens (the port chosen, when it was asked for port 0)."""
        assert self._server is not None, "not listening"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of file, then half-close, so each side sees the other's end."""
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()  # backpressure: never buffer more than the peer takes
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
    except asyncio.CancelledError:
        writer.close()
        raise
