"""One FastAPI route state per route and inclusion, shared by the apps a test process builds.

FastAPI builds each included route's state (its dependant, its request and response fields:
~100 pydantic TypeAdapters for satapi's routes) lazily for every app, on the app's first request
that reaches the route's router: 30-70 ms of CPU per app. The service builds one app per
process and pays it once; the suite builds an app for most tests and paid it ~1,500 times (half
the test processes' own CPU). satapi's routers are module-level objects included the same way
into every app, so that state is the same for every app but one field: the app that dependency
overrides would be read from. No satapi code uses `dependency_overrides`; an app that has any
still builds its own state (tests/test_route_state.py checks both).

If FastAPI's private names change, nothing is patched and the suite is only slower.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from fastapi import routing


def share_route_state_across_apps() -> bool:
    """Patch FastAPI to reuse route state across apps; False if its internals have moved."""
    context_cls: Any = getattr(routing, "_EffectiveRouteContext", None)
    from_api_route = getattr(context_cls, "from_api_route", None)
    build = getattr(from_api_route, "__func__", None)
    if build is None:
        return False
    built: dict[tuple[int, str], Any] = {}
    lock = threading.Lock()

    def from_api_route_shared(cls: Any, *, original_route: Any, include_context: Any) -> Any:
        provider = include_context.dependency_overrides_provider
        if getattr(provider, "dependency_overrides", None):
            return build(cls, original_route=original_route, include_context=include_context)
        inclusion = dataclasses.replace(include_context, dependency_overrides_provider=None)
        key = (id(original_route), repr(inclusion))
        with lock:
            state = built.get(key)
            if state is None:
                state = build(cls, original_route=original_route, include_context=include_context)
                # The key holds the route's id: keep the route alive with its state.
                built[key] = state
            return state

    context_cls.from_api_route = classmethod(from_api_route_shared)
    return True
