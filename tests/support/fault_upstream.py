"""A misbehaving WMS server on 127.0.0.1, plus a helper that runs satapi as a real uvicorn process.

`FaultUpstream` is a raw `asyncio.start_server` HTTP/1.1 server (so every byte on the wire is under
the test's control) running on its own event loop in a background thread. It therefore works for
in-process tests (ASGI transport) and for a satapi server in another process alike.

The behaviour is chosen per request, first match wins:

* the path ``/wms/<mode>``;
* the query parameter ``MODE``;
* the ``LAYERS`` parameter, as ``<mode>`` or ``<mode>:<latency seconds>`` (so one provider at
  ``/wms`` serves every mode and the API client picks one with the request's ``layer``).

GetCapabilities is answered 404 at once in every mode (and not counted).
``LATENCY`` (seconds) delays any mode's answer. ``WIDTH``/``HEIGHT`` size the images.

Modes
-----
``ok``           a PNG of WIDTH x HEIGHT.
``hang``         reads the request and never answers (until the client goes away).
``stall``        headers and half the PNG, then nothing more.
``drip``         headers, then the PNG two bytes every quarter second.
``slow``         a noisy (big) PNG in ten pieces spread over the ``:<seconds>`` given.
``reset``        headers and half the PNG, then a TCP reset (SO_LINGER 0 and close).
``500``          HTTP 500.
``503`` ``429``  that status with ``Retry-After: 1``.
``xml200``       HTTP 200 ``application/vnd.ogc.se_xml`` ServiceException echoing the query.
``html200``      HTTP 200 ``text/html`` page echoing the query.
``truncated``    the first half of a PNG (a complete HTTP message).
``corrupt``      a PNG with garbage overwriting its middle.
``wrongsize``    a PNG of another size than asked.
``huge``         a PNG padded to `huge_bytes`, with Content-Length.
``hugechunked``  the same body with ``Transfer-Encoding: chunked`` and no Content-Length.
``bomb``         a tiny PNG whose IHDR declares 30000 x 30000 pixels.
``redirect``     302 to ``http://169.254.169.254/latest/meta-data`` (cloud metadata).
``redirect_trap`` 302 to `trap_url` (e.g. another FaultUpstream, a host that is not allowed).

It counts requests per mode, requests in flight (per mode and in total, with maxima) and
connections the client closed before the answer was complete (`closed_by_client`), so a test can
prove that a timed-out or cancelled request was really abandoned.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

from PIL import Image

MODES = (
    "ok",
    "hang",
    "stall",
    "drip",
    "slow",
    "reset",
    "500",
    "503",
    "429",
    "xml200",
    "html200",
    "truncated",
    "corrupt",
    "wrongsize",
    "huge",
    "hugechunked",
    "bomb",
    "redirect",
    "redirect_trap",
)
METADATA_URL = "http://169.254.169.254/latest/meta-data"
MAX_HEAD = 64 * 1024
MAX_SIDE = 4096


# --- images ----------------------------------------------------------------------------------


def png(width: int, height: int, *, noise: bool = False) -> bytes:
    """A PNG of the given size: solid green, or random pixels (so it barely compresses)."""
    if noise:
        rng = random.Random(width * 100_003 + height)
        data = bytes(rng.getrandbits(8) for _ in range(width * height * 3))
        image = Image.frombytes("RGB", (width, height), data)
    else:
        image = Image.new("RGB", (width, height), (34, 139, 34))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A 1x1 PNG whose IHDR is rewritten to declare `width` x `height` (valid CRC)."""
    data = bytearray(png(1, 1))
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def corrupt_png(width: int, height: int) -> bytes:
    """A noisy PNG of the right length whose middle third is overwritten with garbage."""
    data = bytearray(png(width, height, noise=True))
    third = len(data) // 3
    data[third : 2 * third] = b"\xde\xad\xbe\xef" * (third // 4) + b"\x00" * (third % 4)
    return bytes(data)


# --- the server --------------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream received it."""

    mode: str
    path: str
    query: dict[str, str]
    raw_target: str
    at: float  # time.monotonic()


@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: dict[str, str]  # upper-cased names
    mode: str
    latency: float
    width: int
    height: int


class _ClientGone(Exception):
    """The client closed the connection while we were still answering."""


class _Stopping(Exception):
    """The upstream is shutting down."""


@dataclass
class _Stats:
    requests: Counter[str] = field(default_factory=Counter)
    closed_by_client: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    total_in_flight: int = 0
    max_total_in_flight: int = 0
    seen: list[Seen] = field(default_factory=list)


class FaultUpstream:
    """The fault-injecting WMS. `with FaultUpstream() as up:` or `start()`/`stop()`.

    `up.url` is the base (``http://127.0.0.1:<port>``); `up.wms_url` the endpoint ``.../wms``.
    Counters are read with the methods below (thread-safe) and cleared with `reset()`.
    """

    def __init__(
        self,
        *,
        huge_bytes: int = 256 * 1024,
        drip_interval_s: float = 0.25,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self.huge_bytes = huge_bytes
        self.drip_interval_s = drip_interval_s
        self.trap_url = METADATA_URL
        self._lock = threading.Lock()
        self._stats = _Stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping: asyncio.Event | None = None
        self._bind_port = port
        self.port = 0

    # -- control -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://<host>:<port>`` (127.0.0.1 unless another host was given)."""
        if not self.port:
            raise RuntimeError("FaultUpstream is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def wms_url(self) -> str:
        """The WMS endpoint whose mode is chosen by LAYERS (or MODE)."""
        return f"{self.url}/wms"

    def mode_url(self, mode: str) -> str:
        """An endpoint fixed to one mode: ``.../wms/<mode>``."""
        return f"{self.url}/wms/{mode}"

    def start(self) -> Self:
        """Start serving on `host` (port `port`, or a free one); returns once it accepts."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="fault-upstream", daemon=True
        )
        self._thread.start()
        self._call(self._open(), timeout=5)
        return self

    def stop(self) -> None:
        """Close every connection, stop the loop and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._close(), timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            self._loop = None
            self._thread = None
            self.port = 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget every counter and recorded request."""
        with self._lock:
            self._stats = _Stats()

    # -- counters ------------------------------------------------------------------------------

    def requests(self, mode: str | None = None) -> int:
        """Requests received (for `mode`, or in total)."""
        with self._lock:
            counts = self._stats.requests
            return counts[mode] if mode is not None else sum(counts.values())

    def closed_by_client(self, mode: str | None = None) -> int:
        """Connections the client closed before the answer for `mode` was complete."""
        with self._lock:
            counts = self._stats.closed_by_client
            return counts[mode] if mode is not None else sum(counts.values())

    def in_flight(self, mode: str | None = None) -> int:
        """Requests being answered now."""
        with self._lock:
            s = self._stats
            return s.in_flight[mode] if mode is not None else s.total_in_flight

    def max_in_flight(self, mode: str | None = None) -> int:
        """The most requests answered at once since the last `reset()`."""
        with self._lock:
            s = self._stats
            return s.max_in_flight[mode] if mode is not None else s.max_total_in_flight

    def seen(self, mode: str | None = None) -> list[Seen]:
        """The requests received, oldest first."""
        with self._lock:
            return [s for s in self._stats.seen if mode is None or s.mode == mode]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate()` every 10 ms until true or `timeout` seconds; blocks the caller."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    async def wait_for_async(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Like `wait_for`, without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            await asyncio.sleep(0.01)
        return predicate()

    # -- loop plumbing -------------------------------------------------------------------------

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, None], *, timeout: float) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _open(self) -> None:
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(self._connection, self.host, self._bind_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None and self._stopping is not None
        self._stopping.set()
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        await self._server.wait_closed()

    # -- connections ---------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # One request per connection (every answer says `Connection: close`), so nothing the
        # client sends can be mistaken for a disconnect while an answer is pending.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        reset = False
        try:
            request = await self._read_request(reader)
            if request is not None:
                reset = await self._serve_one(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self._tasks.discard(task)
            if reset:
                writer.transport.abort()  # with SO_LINGER 0: a TCP RST
            else:
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the client closed an idle keep-alive connection
        if len(head) > MAX_HEAD:
            raise ConnectionError("request head too large")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
        if length:
            await reader.readexactly(min(length, MAX_HEAD))
        parts = urlsplit(target)
        query = {k.upper(): v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
        path = parts.path
        latency = float(query.get("LATENCY", "0") or 0)
        mode = ""
        if path.startswith("/wms/"):
            mode = path.removeprefix("/wms/").strip("/")
        elif "MODE" in query:
            mode = query["MODE"]
        elif "LAYERS" in query:
            mode, _, suffix = query["LAYERS"].partition(":")
            if suffix:
                latency = float(suffix)
        width = _side(query.get("WIDTH"), 64)
        height = _side(query.get("HEIGHT"), 32)
        return _Request(method, target, path, query, mode, latency, width, height)

    async def _serve_one(
        self, req: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; returns True when the connection is to be reset."""
        if req.query.get("REQUEST", "").lower() == "getcapabilities":
            # No capabilities (answered at once, not counted): satapi skips its layer checks
            # and every mode's GetMap is sent as asked.
            await _send(writer, 404, b"no capabilities here", "text/plain")
            return False
        mode = req.mode
        with self._lock:
            s = self._stats
            s.requests[mode] += 1
            s.in_flight[mode] += 1
            s.max_in_flight[mode] = max(s.max_in_flight[mode], s.in_flight[mode])
            s.total_in_flight += 1
            s.max_total_in_flight = max(s.max_total_in_flight, s.total_in_flight)
            s.seen.append(Seen(mode, req.path, req.query, req.target, time.monotonic()))
        # Reading one byte completes (with b"") when the client closes the connection; an
        # HTTP/1.1 client sends nothing else while it waits for this answer.
        watch: asyncio.Task[bytes] = asyncio.ensure_future(reader.read(1))
        try:
            if req.latency > 0 and mode != "slow":  # slow spreads its body over the time
                await self._pause(watch, req.latency)
            return await self._answer(req, writer, watch)
        except _Stopping:
            return False
        except (_ClientGone, ConnectionError):
            with self._lock:
                self._stats.closed_by_client[mode] += 1
            return False
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await watch
            with self._lock:
                self._stats.in_flight[mode] -= 1
                self._stats.total_in_flight -= 1

    async def _pause(self, watch: asyncio.Task[bytes], seconds: float | None) -> None:
        """Wait `seconds` (None: until the client leaves); `_ClientGone` if the client leaves."""
        assert self._stopping is not None
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {watch, stopping}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
        if watch in done:
            raise _ClientGone
        if stopping in done:
            raise _Stopping

    async def _answer(
        self, req: _Request, writer: asyncio.StreamWriter, watch: asyncio.Task[bytes]
    ) -> bool:
        w, h, mode = req.width, req.height, req.mode
        if mode == "ok":
            await _send(writer, 200, png(w, h), "image/png")
        elif mode == "hang":
            await self._pause(watch, None)
        elif mode == "stall":
            body = png(w, h, noise=True)
            await _send_head(writer, 200, "image/png", len(body))
            writer.write(body[: len(body) // 2])
            await writer.drain()
            await self._pause(watch, None)
        elif mode == "slow":
            body = png(w, h, noise=True)
            await _send_head(writer, 200, "image/png", len(body))
            piece = -(-len(body) // 10)
            for i in range(0, len(body), piece):
                writer.write(body[i : i + piece])
                await writer.drain()
                await self._pause(watch, req.latency / 10)
        elif mode == "drip":
            body = png(w, h, noise=True)
            await _send_head(writer, 200, "image/png", len(body))
            for i in range(0, len(body), 2):
                writer.write(body[i : i + 2])
                await writer.drain()
                await self._pause(watch, self.drip_interval_s)
        elif mode == "reset":
            body = png(w, h, noise=True)
            await _send_head(writer, 200, "image/png", len(body))
            writer.write(body[: len(body) // 2])
            await writer.drain()
            await _flushed(writer)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return True
        elif mode in ("500", "503", "429"):
            extra = {} if mode == "500" else {"Retry-After": "1"}
            await _send(writer, int(mode), f"upstream says {mode}\n".encode(), "text/plain", extra)
        elif mode == "xml200":
            await _send(writer, 200, service_exception(req), "application/vnd.ogc.se_xml")
        elif mode == "html200":
            page = f"<html><body><h1>Oops</h1><p>{escape(req.target)}</p></body></html>"
            await _send(writer, 200, page.encode(), "text/html; charset=utf-8")
        elif mode == "truncated":
            body = png(w, h, noise=True)
            await _send(writer, 200, body[: len(body) // 2], "image/png")
        elif mode == "corrupt":
            await _send(writer, 200, corrupt_png(w, h), "image/png")
        elif mode == "wrongsize":
            await _send(writer, 200, png(w + 7, h + 3), "image/png")
        elif mode in ("huge", "hugechunked"):
            await self._send_huge(writer, png(w, h), chunked=mode == "hugechunked")
        elif mode == "bomb":
            await _send(writer, 200, bomb_png(), "image/png")
        elif mode in ("redirect", "redirect_trap"):
            location = METADATA_URL if mode == "redirect" else self.trap_url
            await _send(writer, 302, b"moved\n", "text/plain", {"Location": location})
        else:
            await _send(writer, 404, f"unknown mode {mode!r}\n".encode(), "text/plain")
        return False

    async def _send_huge(
        self, writer: asyncio.StreamWriter, image: bytes, *, chunked: bool
    ) -> None:
        body = image + b"\0" * max(0, self.huge_bytes - len(image))
        if chunked:
            head = "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n")
        else:
            await _send_head(writer, 200, "image/png", len(body))
        for i in range(0, len(body), 16 * 1024):
            piece = body[i : i + 16 * 1024]
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()


def service_exception(req: _Request) -> bytes:
    """An OGC ServiceExceptionReport echoing the request back, as some servers do."""
    echoed = "; ".join(f"{k}={v}" for k, v in req.query.items())
    text = f"Invalid request {escape(req.target)} with parameters {escape(echoed)}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ServiceExceptionReport version="1.1.1">\n'
        f'  <ServiceException code="InvalidParameterValue">{text}</ServiceException>\n'
        "</ServiceExceptionReport>\n"
    ).encode()


_REASONS = {200: "OK", 302: "Found", 404: "Not Found", 429: "Too Many Requests"}
_REASONS |= {500: "Internal Server Error", 503: "Service Unavailable"}


async def _send_head(
    writer: asyncio.StreamWriter,
    status: int,
    content_type: str,
    length: int,
    headers: Mapping[str, str] | None = None,
) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"Content-Type: {content_type}", f"Content-Length: {length}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    await _send_head(writer, status, content_type, len(body), headers)
    writer.write(body)
    await writer.drain()


async def _flushed(writer: asyncio.StreamWriter) -> None:
    for _ in range(100):
        if writer.transport.get_write_buffer_size() == 0:
            return
        await asyncio.sleep(0.01)


def _side(value: str | None, default: int) -> int:
    try:
        return max(1, min(MAX_SIDE, int(value))) if value else default
    except ValueError:
        return default


# --- satapi as a real server process -------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_value(value: object) -> str:
    """A TOML literal for a str, bool, number, list or table (JSON strings are TOML strings)."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def write_config(path: Path, settings: Mapping[str, object]) -> Path:
    """Write `settings` as a SATAPI_CONFIG TOML file; `providers` becomes one table each."""
    lines: list[str] = []
    for key, value in settings.items():
        if key != "providers":
            lines.append(f"{key} = {toml_value(value)}")
    providers = settings.get("providers") or {}
    assert isinstance(providers, Mapping)
    for name, table in providers.items():
        lines.append(f"\n[providers.{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class SatapiProcess:
    """`python -m satapi serve` on a free port of 127.0.0.1, configured by a TOML file.

    stderr (every log line) goes to `log_path`. `stop()` sends SIGTERM and waits; `kill()` if it
    does not exit. Only this process is ever signalled, by its pid.
    """

    def __init__(
        self,
        workdir: Path,
        settings: Mapping[str, object],
        *,
        env: Mapping[str, str] | None = None,
        graceful_timeout: float = 5.0,
        wrap: Callable[[list[str]], list[str]] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self._wrap = wrap  # e.g. run in a mount namespace with a tmpfs data dir
        self.args = list(args)  # more `satapi serve` options, e.g. ["--workers", "2"]
        self.data_dir = Path(str(settings.get("data_dir", workdir / "data")))
        self.config_path = write_config(
            workdir / "satapi.toml", {"data_dir": str(self.data_dir), **settings}
        )
        self.log_path = workdir / "satapi.log"
        self.port = free_port()
        self.graceful_timeout = graceful_timeout
        self._env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 30.0) -> Self:
        """Spawn the server and wait until /healthz answers."""
        argv = [sys.executable, "-m", "satapi", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--graceful-timeout", str(self.graceful_timeout)]
        argv += self.args
        if self._wrap is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            argv = self._wrap(argv)
        self._spawn(argv)
        assert self.proc is not None
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise RuntimeError(f"satapi exited with {self.proc.returncode}:\n{self.log()}")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"satapi did not become ready in {ready_timeout} s:\n{self.log()}")

    def _spawn(self, argv: list[str]) -> None:
        """Start `argv` with this process's TOML and env (no inherited SATAPI_ settings), its
        output appended to `log_path`."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SATAPI_")
            and k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "PROMETHEUS_MULTIPROC_DIR")
        }
        env.update({"SATAPI_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"})
        env.update(self._env)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )

    def healthy(self) -> bool:
        """True when GET /healthz answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM (only to this process)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.terminate()
            if self.wait(timeout) is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def data_view(self) -> Path:
        """The data dir as the server sees it (through /proc for a wrapped, running server
        whose mount namespace has its own filesystem there)."""
        if self._wrap is not None and self.alive():
            assert self.proc is not None
            return Path(f"/proc/{self.proc.pid}/root") / self.data_dir.relative_to("/")
        return self.data_dir

    def kill(self) -> None:
        """SIGKILL (only this process), and wait for it."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_log()

    def files(self) -> list[Path]:
        """Every file under the data dir."""
        root = self.data_view
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def temp_files(self) -> list[Path]:
        """Leftover ``.tmp-*`` files under the data dir."""
        return [p for p in self.files() if p.name.startswith(".tmp-")]

    def wipe_data(self) -> None:
        """Remove the data dir (between uses of one workdir)."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
