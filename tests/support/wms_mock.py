"""The respx-mocked WMS as the app's HTTP transport, injected through `create_app`.

The service's WMS client does its I/O with aiohttp (`satapi.providers.transport`), which respx
does not patch; a test that mocks the WMS with a respx router hands the app this transport
instead (`create_app(settings, http_transport=mock_transport(router))`), so every request the
WMS client sends is answered (and recorded) by the router, and an unmocked one fails loudly.
"""

from __future__ import annotations

import httpx2
import respx


def mock_transport(router: respx.Router | None) -> httpx2.AsyncBaseTransport | None:
    """A transport answering from `router` (None without one: the app's real transport)."""
    if router is None:
        return None
    return httpx2.MockTransport(router.async_handler)
