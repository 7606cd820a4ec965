"""`satapi jobs submit|show|watch|cancel`: long work on a running service, through
`SatapiClient` (same --url/--api-key, same one-line failures as the other client commands)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from satapi.client.api import SatapiClient
from satapi.client.commands import (
    KEY_ENV,
    URL_ENV,
    _one_line,
    _with_client,
    add_service_options,
)
from satapi.client.errors import SatapiError
from satapi.client.events import ErrorEvent, JobProgressEvent, JobResultEvent
from satapi.models import JobOut

EPILOG = f"""examples:
  satapi jobs submit timeseries --params '{{"bbox": [10, 45, 12, 46], "start": "2024-01-01",
      "end": "2024-12-01", "step": "P1M"}}' --watch
  satapi jobs submit analyze --params @vision.json --webhook-url https://hooks.example.com/x \\
      --webhook-secret s3cret
  satapi jobs show 5f0c...   satapi jobs watch 5f0c...   satapi jobs cancel 5f0c...

The service: --url (default ${URL_ENV}); its API key: --api-key (default ${KEY_ENV}).
watch (and submit --watch) exit with 1 when the job failed or was cancelled."""


def add_commands(sub: Any) -> None:
    """Add `satapi jobs ...` to the `satapi` parser's subparsers."""
    jobs = sub.add_parser(
        "jobs",
        help="submit, follow and cancel jobs (long time series, analyses, comparisons)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        add_service_options(parser, after_command=True)
        return parser

    submit = action("submit", "submit a job; prints its id")
    submit.add_argument("kind", choices=("timeseries", "analyze", "compare"))
    submit.add_argument(
        "--params", required=True, help="the route's JSON body, or @FILE holding it"
    )
    submit.add_argument("--webhook-url", help="POSTed the job's JSON when it ends")
    submit.add_argument("--webhook-secret", help="signs the webhook (X-Satapi-Signature)")
    submit.add_argument("--watch", action="store_true", help="then follow it to its end")
    submit.add_argument("--json", action="store_true", help="print the job as JSON")
    for name, text in (
        ("show", "print a job (with --json: all of it, result included)"),
        ("watch", "follow a job's progress; print its result"),
        ("cancel", "cancel a job"),
    ):
        parser = action(name, text)
        parser.add_argument("job_id")
        if name != "watch":
            parser.add_argument("--json", action="store_true", help="print the job as JSON")


def run(args: argparse.Namespace) -> int:
    """Run a `jobs` command; 0 on success, 1 (one line on stderr) on failure."""
    try:
        return asyncio.run(_with_client(args, lambda client: _run(client, args, sys.stdout)))
    except SatapiError as exc:
        print(f"satapi: {exc.code}: {_one_line(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("satapi: interrupted", file=sys.stderr)
        return 130


async def _run(client: SatapiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.jobs_command == "submit":
        job = await client.submit_job(
            args.kind,
            _params(args.params),
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
        )
        if args.watch:
            print(job.id, file=sys.stderr)
            return await _watch(client, job.id, out)
        _print(job, args.json, out)
        return 0
    if args.jobs_command == "watch":
        return await _watch(client, args.job_id, out)
    if args.jobs_command == "cancel":
        job = await client.cancel_job(args.job_id)
    else:
        job = await client.job(args.job_id)
    _print(job, args.json, out)
    return 0


def _params(value: str) -> dict[str, Any]:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        params = json.loads(text)
    except ValueError as exc:
        raise SatapiError(f"--params is not JSON: {exc}.", code="invalid_params") from None
    except OSError as exc:
        raise SatapiError(f"--params file: {exc.strerror}.", code="invalid_params") from None
    if not isinstance(params, dict):
        raise SatapiError("--params must be a JSON object.", code="invalid_params")
    return params


def _print(job: JobOut, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(job.model_dump_json(indent=2, exclude_none=True), file=out)
        return
    line = f"{job.id}  {job.kind}  {job.state}  {job.progress.done}/{job.progress.total}"
    if job.error is not None:
        line += f"  {job.error.get('code')}: {_one_line(str(job.error.get('error')))}"
    print(line, file=out)


async def _watch(client: SatapiClient, job_id: str, out: TextIO) -> int:
    """Progress on stderr, the result as JSON on `out`; 1 when the job did not succeed."""
    async for event in client.job_events(job_id):
        if isinstance(event, JobProgressEvent):
            print(f"{event.state}  {event.done}/{event.total}", file=sys.stderr)
        elif isinstance(event, JobResultEvent):
            print(json.dumps(event.result, indent=2), file=out)
            return 0
        elif isinstance(event, ErrorEvent):
            print(f"satapi: {event.code}: {_one_line(event.error)}", file=sys.stderr)
            return 1
    return 1
