"""The DNS half of the SSRF tests, run by `tests/test_ssrf_dns.py` inside its own namespaces.

`python -m tests.support.ssrf_netns <port>` expects to run in the network namespace that
`tests.support.netns.netns_argv` makes (loopback with the extra addresses below, /etc/hosts
naming the hosts below, resolv.conf pointing at 127.0.0.1). It starts:

* a WMS at the "public" 93.184.216.34:<port> (reachable only inside the namespace),
* trap WMSs on 127.0.0.1, ::1, 10.0.0.5 and 169.254.169.254, same port, that count requests,
* a DNS server on 127.0.0.1:53 whose answers change between lookups (`rebind.test` is public
  first, loopback after; `rebind-first-internal.test` the other way round),
* a real `satapi serve` with these names in `allowed_hosts` and its one provider on
  `provider.test` (loopback: the operator's own provider may point anywhere),

sends the cases below, and prints one JSON object: per case the status, error code and the
requests each server received.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

import httpx

from tests.support.fault_upstream import FaultUpstream, SatapiProcess

PUBLIC = "93.184.216.34"
TRAPS = {"loop": "127.0.0.1", "loop6": "::1", "private": "10.0.0.5", "metadata": "169.254.169.254"}
HOSTS = [
    (PUBLIC, "public.test"),
    ("127.0.0.1", "loop.test"),
    ("127.0.0.1", "provider.test"),
    ("::1", "loop6.test"),
    ("10.0.0.5", "private.test"),
    ("169.254.169.254", "metadata.test"),
    (PUBLIC, "mixed.test"),
    ("127.0.0.1", "mixed.test"),
]
ADDRESSES = [f"{PUBLIC}/32", "10.0.0.5/32", "169.254.169.254/32"]
# Names only the DNS server knows, with the A answers it gives, lookup after lookup (the last
# one repeats).
UNKNOWN = "nowhere.test"  # allowed, but neither /etc/hosts nor the DNS server knows it
DNS_ANSWERS = {
    "rebind.test": [PUBLIC, "127.0.0.1"],
    "rebind-first-internal.test": ["127.0.0.1", PUBLIC],
}


class RebindingDns:
    """A UDP DNS server answering A queries from `DNS_ANSWERS`, one step further each time."""

    def __init__(self, host: str = "127.0.0.1", port: int = 53) -> None:
        self.queries: Counter[str] = Counter()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self._sock.recvfrom(512)
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        if len(data) < 12:
            return None
        ident = data[:2]
        labels, pos = [], 12
        while pos < len(data) and data[pos]:
            size = data[pos]
            labels.append(data[pos + 1 : pos + 1 + size].decode("ascii", "replace"))
            pos += 1 + size
        qtype, _qclass = struct.unpack("!HH", data[pos + 1 : pos + 5])
        question = data[12 : pos + 5]
        name = ".".join(labels).lower()
        answers = DNS_ANSWERS.get(name)
        if answers is None:
            return ident + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        if qtype != 1:  # AAAA and the rest: the name exists, with no such records
            return ident + struct.pack("!HHHHH", 0x8180, 1, 0, 0, 0) + question
        step = self.queries[name]
        self.queries[name] += 1
        address = answers[min(step, len(answers) - 1)]
        record = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
        return ident + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + question + record

    def close(self) -> None:
        self._sock.close()


def getmap(host: str, port: int, layer: str = "ok", width: int = 64) -> str:
    query = urlencode(
        {
            "SERVICE": "WMS",
            "VERSION": "1.3.0",
            "REQUEST": "GetMap",
            "LAYERS": layer,
            "STYLES": "",
            "CRS": "EPSG:4326",
            "BBOX": "45,10,47,14",
            "WIDTH": str(width),
            "HEIGHT": "32",
            "FORMAT": "image/png",
        }
    )
    return f"http://{host}:{port}/wms?{query}"


def main(port: int) -> None:
    dns = RebindingDns()
    public = FaultUpstream(host=PUBLIC, port=port).start()
    traps = {name: FaultUpstream(host=addr, port=port).start() for name, addr in TRAPS.items()}
    # The public server's redirect_trap mode redirects to a name that resolves to loopback.
    public.trap_url = getmap("loop.test", port)
    # `nowhere.test` is allowed but no one knows it (the DNS server answers NXDOMAIN).
    names = sorted({name for _, name in HOSTS} - {"provider.test"} | set(DNS_ANSWERS))
    names.append(UNKNOWN)
    settings: dict[str, object] = {
        "default_provider": "local",
        # The operator's own provider may be anywhere, loopback included.
        "providers": {"local": {"url": f"http://provider.test:{port}/wms", "default_layer": "ok"}},
        "allowed_hosts": [f"http://{name}:{port}" for name in names],
        "retry_attempts": 1,
        "wms_total_timeout_s": 5.0,
    }
    results: dict[str, dict[str, object]] = {}

    def hits() -> dict[str, int]:
        counts = {name: trap.requests() for name, trap in traps.items()}
        counts["public"] = public.requests()
        return counts

    def record(case: str, response: httpx.Response) -> None:
        body = response.json()
        results[case] = {
            "status": response.status_code,
            "code": body.get("code"),
            "error": body.get("error"),
            "hits": hits(),
            "dns": dict(dns.queries),
        }
        public.reset()
        for trap in traps.values():
            trap.reset()

    with tempfile.TemporaryDirectory() as tmp, SatapiProcess(Path(tmp), settings) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for case, host in [
                ("public", "public.test"),
                ("loopback", "loop.test"),
                ("loopback6", "loop6.test"),
                ("private", "private.test"),
                ("metadata", "metadata.test"),
                ("mixed", "mixed.test"),
                ("rebind_first", "rebind.test"),
                ("rebind_second", "rebind.test"),
                ("rebind_first_internal", "rebind-first-internal.test"),
                ("unknown", UNKNOWN),
            ]:
                # Each case a distinct image (never a cache hit of the one before).
                url = getmap(host, port, width=64 + len(results))
                record(case, client.post("/api/images", json={"wms_url": url}))
            redirect = getmap("public.test", port, layer="redirect_trap")
            record("redirect", client.post("/api/images", json={"wms_url": redirect}))
            record("provider", client.post("/api/images", json={"layer": "ok", **BOX}))
        results["log"] = {"text": server.log()[-4000:]}
    public.stop()
    for trap in traps.values():
        trap.stop()
    dns.close()
    print(json.dumps(results))


BOX = {"bbox": [10, 45, 14, 47], "width": 64, "height": 32}

if __name__ == "__main__":
    main(int(sys.argv[1]))
