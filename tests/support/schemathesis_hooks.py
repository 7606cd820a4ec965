"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS): checks of our own for the fuzz run."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def no_internal_error(ctx: Any, response: Any, case: Any) -> bool:
    """A 500 is a bug: nothing a client or an upstream does may cause one.

    502/503/504 are documented answers for upstream failures, so schemathesis's own
    `not_a_server_error` (any 5xx) is too strict for a gateway.
    """
    if response.status_code == 500:
        raise AssertionError(f"500 Internal Server Error: {response.text[:500]}")
    return True
