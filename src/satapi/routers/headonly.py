"""HEAD answers: the GET route's status and headers, no body (download managers and caches ask
for them before fetching)."""

from __future__ import annotations

from starlette.responses import Response, StreamingResponse


async def without_body(response: Response) -> Response:
    """The same status and headers (`Content-Type`, `Content-Length`, `ETag`...) with no body;
    a streamed body is closed unread."""
    if isinstance(response, StreamingResponse):
        close = getattr(response.body_iterator, "aclose", None)
        if close is not None:
            await close()
    head = Response(status_code=response.status_code)
    head.raw_headers = list(response.raw_headers)
    return head
