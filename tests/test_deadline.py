"""Every request has a deadline: past it the request is cancelled and answered 504."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import respx

from satapi.config import Settings
from tests.conftest import WMS_URL, store_files
from tests.test_images_api import BODY, SlowWMS, _app_client, permits_back


async def test_request_past_its_deadline_is_504_and_cancels_the_download(
    make_settings: Callable[..., Settings], wms: respx.Router
) -> None:
    settings = make_settings(request_timeout_s=0.3, wms_total_timeout_s=30)
    upstream = SlowWMS(latency=5)
    wms.get(WMS_URL).mock(side_effect=upstream)
    async with _app_client(settings, wms=wms) as c:
        r = await c.post("/api/images", json=BODY)
        assert r.status_code == 504
        body = r.json()
        assert body["code"] == "request_timeout" and body["request_id"] == r.headers["x-request-id"]
        images = c.app.state.resources.images  # type: ignore[attr-defined]
        for _ in range(200):
            if upstream.cancelled and images.downloads_in_progress == 0:
                break
            await asyncio.sleep(0.01)
        assert upstream.cancelled == 1
        assert permits_back(c)
        assert store_files(settings.data_dir) == []
