"""Observability: events the service reports, and the sinks that turn them into logs and metrics."""
