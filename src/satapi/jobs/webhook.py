"""Job webhooks: which URLs are allowed, the signature, and delivery once per job."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx2
import stamina

from satapi import __version__
from satapi.config import url_origin
from satapi.errors import WebhookNotAllowed
from satapi.jobs.model import JobRecord, JobStore
from satapi.providers.netguard import GuardedResolver
from satapi.providers.transport import AiohttpTransport

log = logging.getLogger("satapi.jobs")

SIGNATURE_HEADER = "X-Satapi-Signature"


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of body with secret>`, the value of `X-Satapi-Signature`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookPolicy:
    """A webhook URL must be http(s), without user information, and its scheme, host and port
    must equal a `webhook_allowed_hosts` entry (a bare entry means https on 443).

    The entries are the operator's own list, so like a provider's URL they may name an internal
    host; nothing else is reachable, and a name that resolves to a private address is refused
    when connecting (`GuardedResolver`), as for `wms_url`.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        self._origins = {url_origin(e if "://" in e else f"https://{e}") for e in allowed}

    @property
    def trusted(self) -> list[tuple[str, int]]:
        """(host, port) of every allowed origin, for the connection guard."""
        return [(host, port) for _, host, port in self._origins]

    def check(self, url: str) -> None:
        """Raise `WebhookNotAllowed` unless `url` may receive webhooks."""
        try:
            parts = urlsplit(url)
            origin = url_origin(url)
        except ValueError:
            raise WebhookNotAllowed("The webhook URL is not an absolute http(s) URL.") from None
        if origin[0] not in ("http", "https"):
            raise WebhookNotAllowed(f"Webhooks go to http or https URLs, not {origin[0]!r}.")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise WebhookNotAllowed("Webhook URLs with user information (user@host) are refused.")
        if origin not in self._origins:
            raise WebhookNotAllowed(
                f"The host {origin[1]!r} (port {origin[2]}) is not in webhook_allowed_hosts."
            )


def make_webhook_client(policy: WebhookPolicy, *, timeout_s: float) -> httpx2.AsyncClient:
    """The HTTP client webhooks are sent with: guarded connections, no redirects, no proxy."""
    guard = GuardedResolver(policy.trusted, lookup_timeout_s=timeout_s)
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout_s),
        transport=AiohttpTransport(max_connections=16, guard=guard),
        follow_redirects=False,
        headers={"User-Agent": f"satapi/{__version__}"},
        trust_env=False,
    )


class WebhookFailed(Exception):
    """One delivery attempt failed (a non-2xx answer or a connection error)."""


class WebhookSender:
    """POSTs a finished job's JSON to its webhook, signed, retried, and once per job.

    The store's claim makes one process the sender (`sending`); it notes `delivered` or `failed`.
    A sender that dies mid-way leaves a claim that lapses after the lease, so a later run of
    the job sends it then (a receiver can still see a repeat in that window: deduplicate on
    the job id).
    """

    def __init__(
        self,
        store: JobStore,
        http: httpx2.AsyncClient,
        *,
        attempts: int,
        timeout_s: float,
        wait_initial_s: float = 0.5,
        wait_max_s: float = 10.0,
    ) -> None:
        self._store = store
        self._http = http
        self._attempts = attempts
        self._wait = (wait_initial_s, wait_max_s)
        self._lease_s = attempts * (timeout_s + wait_max_s) + 30.0

    async def deliver(self, record: JobRecord) -> None:
        """Send `record`'s webhook if it has one and nobody sent or is sending it."""
        if record.webhook_url is None or record.webhook_secret is None or not record.final:
            return
        if not await self._store.claim_webhook(record.id, self._lease_s):
            return
        body = json.dumps(record.public(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(record.webhook_secret, body),
            "X-Satapi-Job": record.id,
        }
        try:
            async for attempt in stamina.retry_context(
                on=WebhookFailed,
                attempts=self._attempts,
                timeout=None,
                wait_initial=self._wait[0],
                wait_max=self._wait[1],
            ):
                with attempt:
                    await self._post(record.webhook_url, body, headers)
        except WebhookFailed as exc:
            log.warning(
                "job %s: webhook not delivered after %d attempts: %s",
                record.id,
                self._attempts,
                exc,
            )
            await self._store.note_webhook(record.id, "failed")
            return
        log.info("job %s: webhook delivered", record.id)
        await self._store.note_webhook(record.id, "delivered")

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            response = await self._http.post(url, content=body, headers=headers)
        except Exception as exc:  # refused by the guard, unreachable, timed out...
            raise WebhookFailed(type(exc).__name__) from None
        if not 200 <= response.status_code < 300:
            raise WebhookFailed(f"HTTP {response.status_code}")
