"""Run the test suite's MapServer WMS in the foreground, for trying satapi offline.

    python3 dev.py mapserver [--port 8081] [--dir /tmp/wms] [--procs 4] [--max-size N]
                             [--config FILE]

Writes the satapi settings that use it to FILE (default `satapi.local.toml` beside dev.py) and
prints where; start satapi with `SATAPI_CONFIG=satapi.local.toml python3 dev.py serve`.
Ctrl-C stops it. Needs the Debian packages in .ci/apt-packages.txt.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.mapserver import (
    CLOUDY_LAYER,
    CLOUDY_TIMES,
    MapServerError,
    MapServerWMS,
    mapserver_available,
    providers_toml,
)

ROOT = Path(__file__).resolve().parents[1]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def write_local_config(path: Path, wms: MapServerWMS) -> Path:
    """Write the satapi settings that use ``wms`` (its provider as the default) to ``path``."""
    header = (
        "# satapi settings for the local MapServer started by `python3 dev.py mapserver`;\n"
        "# valid while it runs (its port changes on every start).\n"
    )
    path.write_text(header + providers_toml(wms))
    return path.resolve()


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="keep data, configs and logs here (default: temp)"
    )
    parser.add_argument("--procs", type=int, default=4, help="mapserv FastCGI processes")
    parser.add_argument(
        "--max-size",
        type=int,
        default=None,
        help="MapServer's MAXSIZE, the largest width/height of one GetMap (default: "
        "$WMS_MAXSIZE or 4096); larger areas are fetched by satapi in tiles",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "satapi.local.toml",
        help="write the satapi settings here (default: satapi.local.toml beside dev.py)",
    )
    args = parser.parse_args(argv)

    missing = mapserver_available()
    if missing:
        print(missing, file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _raise_interrupt)
    wms = MapServerWMS(args.dir, port=args.port, procs=args.procs, max_size=args.max_size)
    try:
        with wms:
            config = write_local_config(args.config, wms)
            b = wms.bbox
            print(f"MapServer WMS running at {wms.url}  (started in {wms.startup_seconds:.2f} s)")
            print(f"layers: {wms.layer} (TIME {','.join(wms.times)}), {wms.static_layer},")
            print(f"        {CLOUDY_LAYER} (clouds of known extent; TIME {','.join(CLOUDY_TIMES)})")
            print(f"area (lon/lat): {list(b)}; files and logs: {wms.tmpdir}")
            print(f"satapi settings written to {config}")
            print(f"start satapi with: SATAPI_CONFIG={_shown(config)} python3 dev.py serve")
            print("Ctrl-C to stop.", flush=True)
            while wms.running:
                time.sleep(0.5)
            print("lighttpd exited unexpectedly:\n" + wms.logs(), file=sys.stderr)
            return 1
    except MapServerError as exc:
        print(f"could not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopped.")
        return 0


if __name__ == "__main__":
    sys.exit(main())
