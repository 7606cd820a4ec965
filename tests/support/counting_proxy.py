"""An HTTP proxy on 127.0.0.1 that counts the requests reaching a server, and how many at once.

Put it in front of the MapServer WMS to see what satapi really asks the server for: every
request's query, and the most requests in flight at the same time. Each request is forwarded on a
fresh upstream connection with `Connection: close` (so the answer ends at EOF) and the client's
connection is closed after the answer, which httpx handles like any server that closes.
An optional `delay` holds each request before forwarding it, so concurrent ones overlap for sure.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 64 * 1024


class CountingProxy:
    """`async with CountingProxy(host, port) as proxy:` then send requests to `proxy.url`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.targets: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The proxy's base URL (append the upstream's path)."""
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget the requests seen so far and the in-flight peak."""
        self.targets.clear()
        self.max_in_flight = self.in_flight

    def queries(self, request: str = "GetMap") -> list[dict[str, str]]:
        """The query parameters (upper-case names) of the requests of one WMS REQUEST type."""
        found = []
        for target in self.targets:
            params = {k.upper(): v for k, v in parse_qsl(urlsplit(target).query)}
            if params.get("REQUEST", "").lower() == request.lower():
                found.append(params)
        return found

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        self.targets.append(target)
        headers = [
            line
            for line in lines[1:]
            if line and not line.lower().startswith(("connection:", "keep-alive:"))
        ]
        forwarded = "\r\n".join([f"{method} {target} {version}", *headers, "Connection: close"])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            try:
                up_writer.write(forwarded.encode("latin-1") + b"\r\n\r\n")
                await up_writer.drain()
                answer = await up_reader.read()
            finally:
                up_writer.close()
                with contextlib.suppress(ConnectionError):
                    await up_writer.wait_closed()
        finally:
            self.in_flight -= 1
        with contextlib.suppress(ConnectionError):
            writer.write(answer)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
