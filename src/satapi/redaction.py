"""Removing secret values from text that may reach a client or a log."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by `***`, also where it is URL-encoded.

    A server that echoes the request URL sends a secret such as ``a+b/c=`` back as
    ``a%2Bb%2Fc%3D`` (any hex case), which a plain search for the value would miss.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
            for encoded in {quote(secret, safe=""), quote_plus(secret)} - {secret}:
                text = re.sub(re.escape(encoded), "***", text, flags=re.IGNORECASE)
    return text
