"""Jobs: long work submitted over HTTP, run by workers (Redis, saq) or in-process, followed,
cancelled, and announced by a signed webhook."""
