"""Image and analysis store backends behind the `satapi.storage` protocols, and the factory
that picks one from the settings (the seam never imports its backends)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from satapi.storage import AnalysisStore, ImageStore

if TYPE_CHECKING:
    from pydantic import SecretStr

    from satapi.config import Settings


def open_stores(
    settings: Settings, *, on_error: Callable[[str, str], None] | None = None
) -> tuple[ImageStore, AnalysisStore]:
    """The image and analysis stores `settings.store_url` names (not started yet).

    Unset or `file:///path`: files (in data_dir, or the path). `s3://bucket/prefix`: any
    S3-compatible store, reached with the standard AWS settings. `on_error(operation, kind)`
    hears of each failed call to a shared store (for metrics).
    """
    url = settings.store_url
    if url is None or url.startswith("file:"):
        from satapi.stores.local import LocalAnalysisStore, LocalImageStore

        root = settings.data_dir if url is None else Path(unquote(urlsplit(url).path))
        return (
            LocalImageStore(root, max_bytes=settings.store_max_bytes),
            LocalAnalysisStore(root),
        )
    # Imported here: the object-store client is loaded only by processes that use it.
    from satapi.stores.s3 import S3Options, open_s3_stores

    def secret(value: SecretStr | None) -> str | None:
        return None if value is None else value.get_secret_value()

    options = S3Options(
        endpoint_url=settings.aws_endpoint_url,
        region=settings.aws_region,
        access_key_id=secret(settings.aws_access_key_id),
        secret_access_key=secret(settings.aws_secret_access_key),
        session_token=secret(settings.aws_session_token),
        allow_http=settings.aws_allow_http,
        timeout_s=settings.store_timeout_s,
    )
    # Downloads are verified in a local temp file before they go to the bucket.
    return open_s3_stores(url, options, temp_dir=settings.data_dir / "tmp", on_error=on_error)
