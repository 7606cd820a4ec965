"""Run the test suite's MapServer WMS in the foreground, for manual testing.

    python scripts/mapserver_dev.py [--port 8081] [--dir /tmp/wms] [--procs 4]

Prints the WMS URL, sample requests and a satapi settings TOML snippet; Ctrl-C stops it.
Needs the Debian packages in .ci/apt-packages.txt.
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


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="keep data, configs and logs here (default: temp)"
    )
    parser.add_argument("--procs", type=int, default=4, help="mapserv FastCGI processes")
    args = parser.parse_args(argv)

    missing = mapserver_available()
    if missing:
        print(missing, file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _raise_interrupt)
    wms = MapServerWMS(args.dir, port=args.port, procs=args.procs)
    try:
        with wms:
            b = wms.bbox
            print(f"MapServer WMS running at {wms.url}  (started in {wms.startup_seconds:.2f} s)")
            print(f"files and logs: {wms.tmpdir}")
            print(f"layers: {wms.layer} (TIME {','.join(wms.times)}), {wms.static_layer}")
            print(f"        {CLOUDY_LAYER} (clouds of known extent; TIME {','.join(CLOUDY_TIMES)})")
            print(f"bbox lon/lat: {b}")
            print()
            print("GetCapabilities:")
            print(f"  {wms.url}?SERVICE=WMS&REQUEST=GetCapabilities&VERSION=1.3.0")
            print("GetMap (1.3.0, EPSG:4326 is lat/lon):")
            print(
                f"  {wms.url}?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS={wms.layer}"
                f"&STYLES=&CRS=EPSG:4326&BBOX={b[1]},{b[0]},{b[3]},{b[2]}"
                f"&WIDTH=400&HEIGHT=200&FORMAT=image/png&TIME={wms.times[0]}"
            )
            print()
            print("satapi settings (SATAPI_CONFIG=file.toml):")
            print(providers_toml(wms))
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
