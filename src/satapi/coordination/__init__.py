"""Limiter backends (concurrency caps, leases) behind the `satapi.limits` protocol: in-process
(`local.py`), or Redis for a fleet (`redis.py`)."""
