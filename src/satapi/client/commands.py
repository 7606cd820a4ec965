"""The client commands of the `satapi` CLI: `image`, `analyze`, `compare`, `timeseries`.

They talk to a running service through `SatapiClient`. The service's URL and API key come from
`--url`/`--api-key`, else `SATAPI_URL`/`SATAPI_API_KEY` (read here: the server's settings are
the server's). A failure prints one line, `satapi: <code>: <sentence>`, and exits with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from satapi.client.api import DEFAULT_URL, SatapiClient
from satapi.client.errors import SatapiError
from satapi.client.events import (
    DeltaEvent,
    ImageEvent,
    ProgressEvent,
    R,
    SelectionEvent,
    StatusEvent,
)
from satapi.client.streams import AnalysisStream
from satapi.models import TimeseriesResponse

URL_ENV = "SATAPI_URL"
# Exit status of `timeseries` when some dates failed: not 1 (the request failed), not 2 (usage).
PARTIAL = 3
KEY_ENV = "SATAPI_API_KEY"
SERIES_COLUMNS = ["vegetation", "water", "bare", "built", "cloud", "nodata"]

EXAMPLES = {
    "image": """examples:
  satapi image --bbox 10 45 12 46 --time 2024-06-01 -o scene.png
  satapi image --bbox=-10,35,5,44 --provider gibs --width 1024 --height 614 --json
  satapi image --bbox 10 45 12 46 --clearest 2024-05-01/2024-09-30 -o clearest.png""",
    "analyze": """examples:
  satapi analyze --bbox 10 45 12 46 --time 2024-06-01
  satapi analyze --bbox 10 45 12 46 --prompt "Is there standing water?" --analyzer claude
  satapi analyze --bbox 10 45 12 46 --json > answer.json
  satapi analyze --bbox 10 45 12 46 --clearest 2024-05-01/2024-09-30 --max-cloud 0.3""",
    "compare": """examples:
  satapi compare --bbox 10 45 12 46 --before 2024-01-01 --after 2024-06-01 -o change.png
  satapi compare --bbox 10 45 12 46 --before 2024-01-01 --after 2024-06-01 --json
  satapi compare --bbox 10 45 12 46 --before 2024-04-01/2024-05-31 --after 2024-07-01/2024-08-31""",
    "timeseries": """examples:
  satapi timeseries --bbox 10 45 12 46 --times 2024-01-01,2024-06-01
  satapi timeseries --bbox 10 45 12 46 --start 2024-01-01 --end 2024-12-01 --step P1M --csv
  satapi timeseries --bbox 10 45 12 46 --start 2024-01-01 --end 2024-12-01 --step P1M -o s.csv
  satapi timeseries --bbox 10 45 12 46 --start 2024-01-01 --end 2024-12-31 --clearest-per P1M""",
}

COMMON_EPILOG = f"""
The service: --url (default ${URL_ENV}, else {DEFAULT_URL}); its API key: --api-key (default
${KEY_ENV}). A bbox with a negative first number needs --bbox=W,S,E,N (or --bbox W S E N).
On failure one line "satapi: <code>: <what went wrong>" goes to stderr and the exit status is 1;
a time series some of whose dates failed prints its rows, then exits with 3."""


def add_commands(sub: Any) -> None:
    """Add the client commands to the `satapi` parser's subparsers."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=EXAMPLES[name] + "\n" + COMMON_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_service_options(parser.add_argument_group("service"), after_command=True)
        area = parser.add_argument_group("image")
        where = area.add_mutually_exclusive_group(required=True)
        where.add_argument(
            "--bbox",
            nargs="+",
            metavar="BBOX",
            help="W,S,E,N or W S E N: west, south, east, north (lon/lat for EPSG:4326)",
        )
        where.add_argument(
            "--geometry",
            metavar="FILE|JSON",
            help="instead of --bbox: a GeoJSON Polygon or MultiPolygon (a Feature, or a "
            "FeatureCollection of one), in a file or inline; metrics count only its inside",
        )
        area.add_argument("--provider", help="a configured provider (default: the service's)")
        area.add_argument("--layer", help="WMS layer (default: the provider's)")
        area.add_argument("--crs", default=None, help="CRS of the bbox (default EPSG:4326)")
        area.add_argument("--width", type=int, default=None, help="pixels (default 512)")
        area.add_argument("--height", type=int, default=None, help="pixels (default 512)")
        area.add_argument(
            "--resolution",
            type=float,
            default=None,
            metavar="M",
            help="instead of --width/--height: metres per pixel (large areas come in tiles)",
        )
        area.add_argument(
            "--format",
            choices=sorted(FORMATS),
            default=None,
            help="png (default), jpeg, or tiff: a georeferenced GeoTIFF",
        )
        parser.add_argument("--json", action="store_true", help="print the answer as JSON")
        parser.set_defaults(client_command=name)
        return parser

    image = command("image", "fetch (or reuse) a map image; save it with -o")
    _time_options(image)
    image.add_argument("-o", "--output", type=Path, help="save the image to this file")

    analyze = command("analyze", "analyse an image, streaming the text as it is written")
    _time_options(analyze)
    _analysis_options(analyze)
    analyze.add_argument("-o", "--output", type=Path, help="save the analysed image")

    compare = command("compare", "compare two dates of one area (change mask with -o)")
    compare.add_argument(
        "--before", required=True, help="the earlier date, or START/END for its clearest date"
    )
    compare.add_argument(
        "--after", required=True, help="the later date, or START/END for its clearest date"
    )
    _analysis_options(compare)
    compare.add_argument(
        "-o", "--output", type=Path, help="save the change mask (local analyzer; else the after)"
    )

    series = command("timeseries", "local metrics of one area over many dates")
    series.add_argument("--times", help="comma-separated dates")
    series.add_argument("--start", help="first date (with --end and --step)")
    series.add_argument("--end", help="last date")
    series.add_argument("--step", help="ISO 8601 duration between dates, e.g. P1M")
    series.add_argument(
        "--clearest-per",
        help="instead of --step: the clearest date of each period (e.g. P1M) from start to end",
    )
    series.add_argument("--csv", action="store_true", help="print CSV")
    series.add_argument("-o", "--output", type=Path, help="write the CSV to this file")


def add_service_options(parser: Any, *, after_command: bool = False) -> None:
    """`--url`/`--api-key`, accepted before the command (`satapi --url U image ...`) and after it.

    After the command they default to "not given" (SUPPRESS), so the value given before it stays.
    """
    default = argparse.SUPPRESS if after_command else None
    parser.add_argument(
        "--url", default=default, help=f"satapi's base URL (${URL_ENV}, else {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", default=default, help=f"API key (${KEY_ENV})")


def _time_options(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--time", help="ISO date sent as the WMS TIME")
    when.add_argument(
        "--clearest",
        metavar="START/END",
        help="instead of --time: the least cloudy of the layer's dates in this window",
    )
    parser.add_argument(
        "--max-candidates", type=int, help="with --clearest: dates previewed (default 12)"
    )
    parser.add_argument(
        "--max-cloud", type=float, help="with --clearest: refuse a best score above this"
    )


def _clearest(window: str, args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"window": window}
    for name in ("max_candidates", "max_cloud"):
        if getattr(args, name, None) is not None:
            spec[name] = getattr(args, name)
    return spec


def _side(value: str) -> dict[str, Any]:
    """`--before`/`--after`: a date, or a window START/END whose clearest date is used."""
    return {"clearest": {"window": value}} if "/" in value else {"time": value}


def _analysis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="a question about the image(s)")
    parser.add_argument(
        "--analyzer",
        choices=("auto", "local", "claude"),
        default=None,
        help="auto (default): Claude when the service has a key, else local",
    )


def run(args: argparse.Namespace) -> int:
    """Run a client command; 0 on success, 1 (with one line on stderr) on failure."""
    out, err = sys.stdout, sys.stderr
    handler = HANDLERS[args.client_command]
    try:
        fields = _image_fields(args)
        return asyncio.run(_with_client(args, lambda client: handler(client, args, fields, out)))
    except SatapiError as exc:
        print(f"satapi: {exc.code}: {_one_line(exc.message)}", file=err)
        return 1
    except BrokenPipeError:
        raise  # stdout's reader left: `satapi.cli.main` ends quietly
    except OSError as exc:  # writing -o
        print(f"satapi: output: {exc.strerror or exc}: {exc.filename or ''}".rstrip(), file=err)
        return 1
    except KeyboardInterrupt:
        print("satapi: interrupted", file=err)
        return 130


def _one_line(text: str) -> str:
    return " ".join(text.split())


async def _with_client(
    args: argparse.Namespace, work: Callable[[SatapiClient], Coroutine[Any, Any, int]]
) -> int:
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    key = args.api_key or os.environ.get(KEY_ENV) or None
    async with SatapiClient(url, api_key=key) as client:
        return await work(client)


FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff"}


def read_geometry(value: str | Path) -> dict[str, Any]:
    """The GeoJSON geometry `value` holds (inline JSON, or a file's path): a Polygon,
    MultiPolygon or Feature as it is; a FeatureCollection must hold exactly one Feature."""
    inline = isinstance(value, str) and value.lstrip().startswith("{")
    path = Path(value) if not inline else Path("the --geometry value")
    try:
        data = json.loads(str(value) if inline else path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SatapiError(
            f"--geometry: cannot read {path}: {exc.strerror}.", code="invalid_geometry"
        ) from None
    except ValueError as exc:
        raise SatapiError(
            f"--geometry: {path} is not JSON ({exc}).", code="invalid_geometry"
        ) from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
        if len(features) != 1:
            raise SatapiError(
                f"--geometry: {path} holds {len(features)} features; give a file with one "
                "Polygon or MultiPolygon (or merge them into a MultiPolygon).",
                code="invalid_geometry",
            )
        data = features[0]
    if not isinstance(data, dict):
        raise SatapiError(f"--geometry: {path} holds no GeoJSON object.", code="invalid_geometry")
    return data


def _image_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.geometry is not None:
        fields["geometry"] = read_geometry(args.geometry)
    else:
        fields["bbox"] = _bbox(args.bbox)
    for name in ("provider", "layer", "crs", "width", "height", "resolution"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.format is not None:
        fields["format"] = FORMATS[args.format]
    for name in ("time", "prompt", "analyzer"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if getattr(args, "clearest", None) is not None:
        fields["clearest"] = _clearest(args.clearest, args)
    return fields


def _bbox(parts: list[str]) -> list[float]:
    raw = ",".join(parts).replace(" ", ",")
    try:
        bbox = [float(v) for v in raw.split(",") if v]
    except ValueError:
        bbox = []
    if len(bbox) != 4:
        raise SatapiError(
            f"--bbox needs four numbers west,south,east,north, not {raw!r}.", code="invalid_bbox"
        )
    return bbox


def _print_json(model: BaseModel, out: TextIO) -> None:
    print(model.model_dump_json(indent=2), file=out)


async def _save(client: SatapiClient, image_id: str, path: Path | None) -> bool:
    if path is None:
        return False
    data = await client.image_bytes(image_id)
    tmp = path.with_name(path.name + ".part")
    # Written whole, then renamed: an interrupted save leaves no half image under the name.
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


async def _image(
    client: SatapiClient, args: argparse.Namespace, fields: dict[str, Any], out: TextIO
) -> int:
    answer = await client.fetch_image(**fields)
    saved = await _save(client, answer.image.id, args.output)
    if args.json:
        _print_json(answer, out)
        return 0
    image = answer.image
    chosen = f", clearest date {image.time}" if answer.selection is not None else ""
    print(
        f"{image.id}  {image.width}x{image.height} {image.content_type}, {image.bytes} bytes"
        f"{chosen}{' (stored)' if image.cached else ''}"
        f"{f', saved to {args.output}' if saved else ''}",
        file=out,
    )
    return 0


async def _echo(stream: AnalysisStream[R], out: TextIO) -> R:
    """Narrate the stream's events on stderr, its text on `out` as it arrives; the result."""
    async for event in stream:
        _narrate(event)
        if isinstance(event, DeltaEvent):
            out.write(event.text)
            out.flush()
    result = await stream.final()
    out.write("\n")
    return result


async def _analyze(
    client: SatapiClient, args: argparse.Namespace, fields: dict[str, Any], out: TextIO
) -> int:
    if args.json:
        answer = await client.analyze(**fields)
        await _save(client, answer.image.id, args.output)
        _print_json(answer, out)
        return 0
    async with client.analyze_stream(**fields) as stream:
        result = await _echo(stream, out)
    if await _save(client, result.image.id, args.output):
        print(f"saved the image to {args.output}", file=sys.stderr)
    return 0


async def _compare(
    client: SatapiClient, args: argparse.Namespace, fields: dict[str, Any], out: TextIO
) -> int:
    fields = {**fields, "before": _side(args.before), "after": _side(args.after)}
    if args.json:
        answer = await client.compare(**fields)
        images = answer.images
        await _save(client, (images.get("change_mask") or images["after"]).id, args.output)
        _print_json(answer, out)
        return 0
    async with client.compare_stream(**fields) as stream:
        result = await _echo(stream, out)
    mask = result.images.get("change_mask")
    image = mask or result.images["after"]
    if await _save(client, image.id, args.output):
        what = "change mask" if image is mask else "after image"
        print(f"saved the {what} to {args.output}", file=sys.stderr)
    return 0


def _narrate(event: Any) -> None:
    """Stages go to stderr (when it is a terminal), so stdout carries only the text. The chosen
    clearest date goes to stderr always: it says which image the text is about."""
    if isinstance(event, SelectionEvent):
        side = f"{event.side} " if event.side else ""
        chosen = event.chosen or "none"
        print(f"[{side}clearest date {chosen} of {len(event.candidates)}]", file=sys.stderr)
        return
    if not sys.stderr.isatty():
        return
    if isinstance(event, ProgressEvent):
        side = f" ({event.side})" if event.side else ""
        print(f"[tiles {event.done} of {event.total}{side}]", file=sys.stderr)
    elif isinstance(event, StatusEvent):
        side = f" ({event.side})" if event.side else ""
        attempt = event.data.get("attempt")
        retry = f", attempt {attempt} of {event.data.get('attempts')}" if attempt else ""
        print(f"[{event.stage}{side}{retry}]", file=sys.stderr)
    elif isinstance(event, ImageEvent):
        side = f"{event.side} " if event.side else ""
        print(f"[{side}image {event.image.width}x{event.image.height}]", file=sys.stderr)


async def _timeseries(
    client: SatapiClient, args: argparse.Namespace, fields: dict[str, Any], out: TextIO
) -> int:
    if args.times:
        fields["times"] = [t.strip() for t in args.times.split(",") if t.strip()]
    for name in ("start", "end", "step", "clearest_per"):
        if getattr(args, name):
            fields[name] = getattr(args, name)
    if args.csv or args.output:
        text = await client.timeseries_csv(**fields)
        if args.output:
            tmp = args.output.with_name(args.output.name + ".part")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(args.output)
        else:
            out.write(text)
        failed = sum(row.get("status") == "error" for row in csv.DictReader(io.StringIO(text)))
        return _series_status(failed)
    series = await client.timeseries(**fields)
    if args.json:
        _print_json(series, out)
    else:
        _print_table(series, out)
    return _series_status(sum(p.error is not None for p in series.points))


def _series_status(failed: int) -> int:
    """0 when every date has its figures; PARTIAL (one line on stderr) when some failed."""
    if not failed:
        return 0
    dates = "date" if failed == 1 else "dates"
    print(f"satapi: partial: {failed} {dates} failed (their rows say why)", file=sys.stderr)
    return PARTIAL


def _print_table(series: TimeseriesResponse, out: TextIO) -> None:
    width = max([len(p.time) for p in series.points] + [4])
    chosen = any(p.chosen_time for p in series.points)  # clearest_per: the date of each period
    cwidth = max([len(p.chosen_time or "") for p in series.points] + [6]) + 2 if chosen else 0
    head = "time".ljust(width) + ("  " + "chosen".ljust(cwidth - 2) if chosen else "")
    print(head + "".join(f"{c:>11}" for c in SERIES_COLUMNS), file=out)
    for p in series.points:
        row = p.time.ljust(width) + (
            "  " + (p.chosen_time or "").ljust(cwidth - 2) if chosen else ""
        )
        if p.metrics is None:
            print(f"{row}  {p.code}: {_one_line(p.error or '')}", file=out)
            continue
        cells = "".join(f"{p.metrics.get(c + '_fraction', 0.0):>11.3f}" for c in SERIES_COLUMNS)
        print(row + cells, file=out)
    if series.partial:
        print("(some dates failed)", file=out)


Handler = Callable[
    [SatapiClient, argparse.Namespace, dict[str, Any], TextIO], Coroutine[Any, Any, int]
]
HANDLERS: dict[str, Handler] = {
    "image": _image,
    "analyze": _analyze,
    "compare": _compare,
    "timeseries": _timeseries,
}
