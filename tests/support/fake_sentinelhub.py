"""A fake Sentinel Hub / CDSE on 127.0.0.1: an OAuth token endpoint and the Process API.

`FakeSentinelHub` is a real HTTP server (Starlette under uvicorn, on its own event loop in a
background thread), so it serves in-process tests and a satapi server in another process alike.

* ``POST /oauth/token``: the client-credentials grant (form encoded). Right credentials get a
  fresh random token lasting `token_ttl_s`; wrong ones (or `refuse_credentials`) get 401
  ``{"error": "invalid_client"}``. `token_script` answers the next token requests with a
  status instead (429 with ``Retry-After`` in seconds, 503...). `token_delay_s` holds every
  answer back, so concurrent requests really overlap.
* ``POST /api/v1/process``: checks the bearer token (known, not revoked, not expired: else 401
  with the error JSON) and the body as satapi must send it (else 400 ``COMMON_BAD_PAYLOAD``),
  then answers a PNG (or JPEG) of exactly the requested size whose colour depends on the time
  range. `process_script` answers the next calls otherwise: ``Busy(retry_after_ms)`` (429),
  ``Fail(status, code, message, wrapped)`` (error JSON with or without the ``error`` wrapper),
  ``Revoke()`` (revoke every token, then check as usual: a 401).

Everything seen is recorded (token requests, process calls with their bodies and tokens) for
the tests to assert on. Run by hand (`python -m tests.support.fake_sentinelhub --port P`), it
is controlled over HTTP: ``GET /_stats``; ``POST /_control/revoke|busy?ms=N|refuse|fail|reset``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import io
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.fault_upstream import free_port

CLIENT_ID = "satapi-test-client"
CLIENT_SECRET = "s3cr3t-Cl!ent+Value/42="  # the fake's test credential
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
CRS3857 = "http://www.opengis.net/def/crs/EPSG/0/3857"


@dataclass(frozen=True)
class Busy:
    """Answer 429 with ``Retry-After`` in milliseconds."""

    retry_after_ms: int = 50


@dataclass(frozen=True)
class Fail:
    """Answer `status` with a Process API error JSON (``wrapped``: inside ``{"error": ...}``)."""

    status: int = 400
    code: str = "RENDERER_EXCEPTION"
    message: str = "Evaluation of the evalscript failed."
    wrapped: bool = True


@dataclass(frozen=True)
class Revoke:
    """Revoke every token issued so far, then handle the request as usual (a 401)."""


@dataclass
class TokenCall:
    """One request to the token endpoint."""

    at: float
    form: dict[str, str]
    status: int


@dataclass
class ProcessCall:
    """One request to the Process API."""

    at: float
    token: str | None
    body: dict[str, Any] | None
    status: int
    headers: dict[str, str] = field(default_factory=dict)


def colour_for(time_from: str) -> tuple[int, int, int]:
    """A stable colour per time range start: green in summer months, brown otherwise."""
    month = int(time_from[5:7]) if len(time_from) >= 7 and time_from[5:7].isdigit() else 1
    return (34, 139, 34) if 4 <= month <= 9 else (150, 110, 70)


def image_bytes(width: int, height: int, fmt: str, colour: tuple[int, int, int]) -> bytes:
    """A solid image of the given size and format."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG" if fmt == "image/png" else "JPEG")
    return buf.getvalue()


def check_body(body: Any) -> str | None:
    """What is wrong with a Process API body, or None (the shape satapi promises to send)."""
    try:
        bounds = body["input"]["bounds"]
        bbox = bounds["bbox"]
        crs = bounds["properties"]["crs"]
        data = body["input"]["data"]
        flt = data[0]["dataFilter"]
        rng = flt["timeRange"]
        out = body["output"]
        responses = out["responses"]
        script = body["evalscript"]
    except (KeyError, IndexError, TypeError):
        return "missing field"
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
    ):
        return "bbox must be four numbers"
    if not (bbox[0] < bbox[2] and bbox[1] < bbox[3]):
        return "bbox must be ordered"
    if crs not in (CRS84, CRS3857):
        return f"unsupported crs {crs}"
    if len(data) != 1 or not isinstance(data[0].get("type"), str):
        return "input.data must be one collection"
    for key in ("from", "to"):
        value = rng.get(key)
        if not (isinstance(value, str) and value.endswith("Z") and "T" in value):
            return f"timeRange.{key} must be an RFC 3339 UTC time"
    if rng["from"] > rng["to"]:
        return "timeRange ends before it starts"
    if flt.get("mosaickingOrder") not in ("mostRecent", "leastRecent", "leastCC"):
        return "bad mosaickingOrder"
    if not isinstance(flt.get("maxCloudCoverage"), int | float):
        return "bad maxCloudCoverage"
    width, height = out.get("width"), out.get("height")
    if not (isinstance(width, int) and isinstance(height, int)):
        return "output width/height must be integers"
    if not (1 <= width <= 2500 and 1 <= height <= 2500):
        return "output width/height must be 1..2500"
    if len(responses) != 1 or responses[0].get("identifier") != "default":
        return "one response with identifier default"
    if responses[0].get("format", {}).get("type") not in ("image/png", "image/jpeg"):
        return "bad output format"
    if not (isinstance(script, str) and script.startswith("//VERSION=3")):
        return "evalscript must be a VERSION=3 script"
    return None


class FakeSentinelHub:
    """The fake token endpoint + Process API; a context manager that starts and stops it."""

    def __init__(
        self,
        *,
        client_id: str = CLIENT_ID,
        client_secret: str = CLIENT_SECRET,
        token_ttl_s: float = 600.0,
        port: int | None = None,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl_s = token_ttl_s
        self.token_delay_s = 0.0
        self.process_delay_s = 0.0
        self.refuse_credentials = False
        self.always_busy_ms: int | None = None
        self.token_script: collections.deque[tuple[int, dict[str, str]]] = collections.deque()
        self.process_script: collections.deque[Busy | Fail | Revoke] = collections.deque()
        self.tokens: dict[str, float] = {}  # token -> expiry (monotonic)
        self.revoked: set[str] = set()
        self.token_calls: list[TokenCall] = []
        self.process_calls: list[ProcessCall] = []
        self._lock = threading.Lock()
        self.port = port or free_port()
        app = Starlette(
            routes=[
                Route("/oauth/token", self._token, methods=["POST"]),
                Route("/api/v1/process", self._process, methods=["POST"]),
                Route("/_stats", self._stats, methods=["GET"]),
                Route("/_control/{action}", self._control, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    # -- addresses ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API base (a provider's `url`)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        """The token endpoint (a provider's `token_url`)."""
        return f"{self.url}/oauth/token"

    def provider(self, **overrides: Any) -> dict[str, Any]:
        """A satapi provider table pointing at this fake, with the right credentials."""
        return {
            "kind": "sentinelhub",
            "url": self.url,
            "token_url": self.token_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            **overrides,
        }

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> FakeSentinelHub:
        """Serve in a background thread; return when the port accepts connections."""
        self._thread = threading.Thread(target=self._server.run, name="fake-sentinelhub")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake Sentinel Hub did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeSentinelHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every token, call and script entry."""
        with self._lock:
            self.tokens.clear()
            self.revoked.clear()
            self.token_calls.clear()
            self.process_calls.clear()
            self.token_script.clear()
            self.process_script.clear()
            self.refuse_credentials = False
            self.always_busy_ms = None
            self.token_delay_s = 0.0
            self.process_delay_s = 0.0

    def revoke_all(self) -> None:
        """Revoke every token issued so far (the next call with one gets a 401)."""
        with self._lock:
            self.revoked.update(self.tokens)

    def issued(self) -> int:
        """Tokens issued (token requests answered 200)."""
        return sum(1 for c in self.token_calls if c.status == 200)

    def seen_text(self) -> str:
        """Every token this fake issued, for leak checks."""
        return " ".join(self.tokens)

    # -- control over HTTP (for a fake run by hand, `main`) ----------------------------------

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "token_requests": [c.status for c in self.token_calls],
                "tokens_issued": self.issued(),
                "process_calls": [c.status for c in self.process_calls],
            }
        )

    async def _control(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action == "revoke":
            self.revoke_all()
        elif action == "busy":
            self.always_busy_ms = int(request.query_params.get("ms", "50"))
        elif action == "refuse":
            self.refuse_credentials = True
        elif action == "fail":
            wrapped = request.query_params.get("wrapped", "1") == "1"
            self.process_script.append(Fail(wrapped=wrapped))
        elif action == "reset":
            self.reset()
        else:
            return JSONResponse({"error": f"unknown action {action}"}, 404)
        return JSONResponse({"ok": action})

    # -- endpoints ----------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        if self.token_delay_s:
            await asyncio.sleep(self.token_delay_s)
        with self._lock:
            scripted = self.token_script.popleft() if self.token_script else None
        if scripted is not None:
            status, headers = scripted
            self.token_calls.append(TokenCall(time.monotonic(), form, status))
            return JSONResponse({"error": "temporarily_unavailable"}, status, headers=headers)
        good = (
            form.get("grant_type") == "client_credentials"
            and form.get("client_id") == self.client_id
            and form.get("client_secret") == self.client_secret
            and request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"
            )
        )
        if not good or self.refuse_credentials:
            self.token_calls.append(TokenCall(time.monotonic(), form, 401))
            return JSONResponse(
                {"error": "invalid_client", "error_description": "Invalid client credentials"},
                401,
            )
        token = "tok-" + secrets.token_urlsafe(24)
        with self._lock:
            self.tokens[token] = time.monotonic() + self.token_ttl_s
        self.token_calls.append(TokenCall(time.monotonic(), form, 200))
        return JSONResponse(
            {
                "access_token": token,
                "expires_in": self.token_ttl_s,
                "token_type": "Bearer",
                "refresh_expires_in": 0,
                "not-before-policy": 0,
                "scope": "email profile",
            }
        )

    def _authorised(self, header: str | None) -> str | None:
        if not header or not header.startswith("Bearer "):
            return None
        token = header.removeprefix("Bearer ")
        with self._lock:
            expiry = self.tokens.get(token)
            if expiry is None or token in self.revoked or time.monotonic() >= expiry:
                return None
        return token

    async def _process(self, request: Request) -> Response:
        raw = await request.body()
        header = request.headers.get("authorization")
        token = header.removeprefix("Bearer ") if header else None
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        call = ProcessCall(time.monotonic(), token, body, 0, dict(request.headers))
        self.process_calls.append(call)
        if self.process_delay_s:
            await asyncio.sleep(self.process_delay_s)
        with self._lock:
            scripted = self.process_script.popleft() if self.process_script else None
        if isinstance(scripted, Revoke):
            self.revoke_all()
        elif isinstance(scripted, Busy):
            return self._answer(call, _busy(scripted.retry_after_ms))
        elif isinstance(scripted, Fail):
            return self._answer(call, _error(scripted))
        if self.always_busy_ms is not None:
            return self._answer(call, _busy(self.always_busy_ms))
        if self._authorised(header) is None:
            return self._answer(
                call,
                _error(Fail(401, "COMMON_UNAUTHORIZED", "Token is invalid or expired.")),
            )
        if request.headers.get("content-type") != "application/json":
            return self._answer(call, _error(Fail(415, "COMMON_BAD_PAYLOAD", "Not JSON.")))
        problem = "body is not JSON" if body is None else check_body(body)
        if problem is not None:
            return self._answer(call, _error(Fail(400, "COMMON_BAD_PAYLOAD", problem)))
        out = body["output"]
        fmt = out["responses"][0]["format"]["type"]
        colour = colour_for(body["input"]["data"][0]["dataFilter"]["timeRange"]["from"])
        data = image_bytes(out["width"], out["height"], fmt, colour)
        return self._answer(call, Response(data, 200, media_type=fmt))

    @staticmethod
    def _answer(call: ProcessCall, response: Response) -> Response:
        call.status = response.status_code
        return response


def _busy(retry_after_ms: int) -> Response:
    return _error(
        Fail(429, "COMMON_RATE_LIMIT", "You have exceeded the rate limit."),
        headers={"Retry-After": str(retry_after_ms)},
    )


def _error(fail: Fail, headers: dict[str, str] | None = None) -> Response:
    reasons = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests"}
    inner = {
        "status": fail.status,
        "reason": reasons.get(fail.status, "Error"),
        "message": fail.message,
        "code": fail.code,
    }
    doc = {"error": inner} if fail.wrapped else inner
    return JSONResponse(doc, fail.status, headers=headers)


def body_digest(body: dict[str, Any]) -> str:
    """A short hash of a Process API body (to tell calls apart in assertions)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def main() -> None:
    """Run the fake by hand: `python -m tests.support.fake_sentinelhub [--port P] [--ttl S]`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--ttl", type=float, default=600.0, help="token lifetime, seconds")
    args = parser.parse_args()
    fake = FakeSentinelHub(port=args.port, token_ttl_s=args.ttl)
    print(f"fake Sentinel Hub on {fake.url} (token endpoint {fake.token_url})", flush=True)
    print(f"client_id = {fake.client_id!r}, client_secret = {fake.client_secret!r}", flush=True)
    fake._server.run()  # in the foreground; Ctrl-C (or SIGTERM) stops it


if __name__ == "__main__":
    main()
