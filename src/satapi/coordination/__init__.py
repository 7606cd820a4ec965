"""Coordination backends: limiters (`satapi.limits`, concurrency caps, leases) and OAuth token
caches (`satapi.tokens`), in-process (`local.py`) or Redis for a fleet (`redis.py`)."""
