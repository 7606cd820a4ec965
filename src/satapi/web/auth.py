"""API keys: checking the `Authorization: Bearer` or `X-API-Key` a request carries."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from satapi.errors import Unauthorized


def check_api_key(bearer: str | None, header: str | None, keys: Sequence[SecretStr]) -> None:
    """Raise `Unauthorized` unless one of `keys` was given (no keys configured: anyone)."""
    if not keys:
        return
    given = bearer or header
    if not given:
        raise Unauthorized(
            "An API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`."
        )
    candidate = given.encode()
    # Compare against every key, without stopping early, in constant time per key.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(candidate, key.get_secret_value().encode())
    if not matched:
        raise Unauthorized("The API key is not valid.")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
