"""The web layer: ASGI middleware, error envelopes, API keys, the offline API explorer."""
