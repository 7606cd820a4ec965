"""Limiter backends (concurrency caps, leases) behind the `satapi.limits` protocol."""
