"""The `satapi` command: `satapi serve [--host --port --workers --reload]`, `worker` (jobs from
Redis), `check-config`, `jobs submit|show|watch|cancel`, and
the client commands `image`, `analyze`, `compare`, `timeseries` (see `satapi.client.commands`).

The server's modules are imported only by the server's commands: a client command starts fast
and does not read the server's settings."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

from satapi import __version__
from satapi.client import commands, job_commands

if TYPE_CHECKING:
    from satapi.config import Settings

log = logging.getLogger("satapi")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="satapi",
        description="Satellite imagery analysis API: run it, or use a running one.",
        epilog="`satapi <command> --help` shows a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"satapi {__version__}")
    commands.add_service_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--reload", action="store_true", help="restart on code changes (dev)")
    serve.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop (default asyncio; uvloop: less CPU for some loads, more for others)",
    )
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish on SIGTERM (default 30)",
    )
    serve.add_argument(
        "--shutdown-delay",
        type=float,
        default=None,
        help="seconds between SIGTERM and closing the listener, /readyz answering 503 meanwhile"
        " (default: the shutdown_delay_s setting, 0)",
    )
    sub.add_parser("check-config", help="validate the settings and print them (secrets hidden)")
    worker = sub.add_parser("worker", help="run jobs from the Redis queue (needs redis_url)")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="jobs run at once (default: the worker_concurrency setting, 4)",
    )
    worker.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port"
    )
    commands.add_commands(sub)
    job_commands.add_commands(sub)
    return parser


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `satapi` console script."""
    # No cyclic collection during start-up's imports (see __main__); one serving process turns
    # it on once its app is ready (satapi.app), every other command at once.
    gc.disable()
    try:
        return _command(argv)
    finally:
        gc.enable()


def _command(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve" or args.workers > 1 or args.reload:
        gc.enable()
    try:
        if getattr(args, "client_command", None):
            status = commands.run(args)
        elif getattr(args, "jobs_command", None):
            status = job_commands.run(args)
        else:
            status = _server_command(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return status
    except BrokenPipeError:
        # The reader left (`satapi check-config | head`): end quietly, as `cat` does. stdout is
        # pointed at /dev/null so the interpreter's own flush at exit finds no closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _server_command(args: argparse.Namespace) -> int:
    import uvicorn

    from satapi.config import SettingsError, load_settings
    from satapi.coordination.shares import ShareError, local_caps
    from satapi.observability.logs import setup_logging

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"satapi: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(json.dumps(settings.shown(), indent=2))
        return 0
    setup_logging(settings.log_format, settings.log_level, settings.secrets)
    if args.command == "worker":
        return _worker(settings, args.concurrency, args.metrics_port)
    if args.shutdown_delay is not None:
        # The app (built by uvicorn's factory, in each worker) reads its settings from here.
        os.environ["SATAPI_SHUTDOWN_DELAY_S"] = str(args.shutdown_delay)
    workers = args.workers if not args.reload else 1
    if workers > 1:
        # Each worker builds its own settings from the environment: tell it how many share.
        os.environ["SATAPI_WORKER_PROCESSES"] = str(workers)
        settings = settings.model_copy(update={"worker_processes": workers})
    if settings.redis_url is not None:
        if workers > 1:
            log.info("%d worker processes share every cap through Redis", workers)
    else:
        try:
            caps = local_caps(settings)
        except ShareError as exc:
            print(f"satapi: {exc}", file=sys.stderr)
            return 2
        if caps.workers > 1:
            log.info("%s", caps.describe(settings))
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the handler that
    # was installed before it ran: with the default one, a clean shutdown would still end the
    # process "killed by SIGTERM" (exit status 143) instead of 0.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.run(
        "satapi.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=workers if not args.reload else None,
        reload=args.reload,
        log_config=None,
        access_log=False,
        # asyncio by default, not uvloop. First chosen when anyio's stream protocol (under
        # httpx2) queued all libuv read per wake-up (scenario 5 peaked at 1060 MB instead of
        # ~430); re-measured with the aiohttp transport (2026-12-04, bench/RESULTS.md): uvloop
        # took ~16 % off scenario 6's CPU per request but added ~8 % to scenario 1's, and
        # scenario 5 peaked at 229 MB against 169-210: no clear win.
        loop=args.loop,
        timeout_graceful_shutdown=args.graceful_timeout,
        proxy_headers=False,
        server_header=False,
    )
    return 0


def _worker(settings: Settings, concurrency: int | None, metrics_port: int | None) -> int:
    import asyncio

    from satapi.jobs.worker import run_worker

    if settings.redis_url is None:
        print("satapi: `satapi worker` needs redis_url (SATAPI_REDIS_URL)", file=sys.stderr)
        return 2
    asyncio.run(run_worker(settings, concurrency=concurrency, metrics_port=metrics_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
