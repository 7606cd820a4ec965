"""Run a command in its own network and mount namespaces (`unshare`, needs root).

Inside, only a loopback interface exists (brought up, with any extra addresses the caller
lists, e.g. a "public" 93.184.216.34 that nothing outside can reach), and `/etc/hosts` and
`/etc/resolv.conf` are the caller's files, bind-mounted over the real ones for that command
only. So a test can make names resolve to internal addresses, or run its own DNS server on
127.0.0.1:53, without touching the machine; nothing inside can reach the outside network.
Also: `mount_tmpfs_argv` runs a command with a small tmpfs over a directory (a disk that fills).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

NETNS_SETUP = (
    'ip link set lo up && for a in $SATAPI_NETNS_ADDRS; do ip addr add "$a" dev lo; done'
    ' && mount --bind "$SATAPI_NETNS_HOSTS" /etc/hosts'
    ' && mount --bind "$SATAPI_NETNS_RESOLV" /etc/resolv.conf'
    ' && exec "$@"'
)


def namespaces_available() -> str | None:
    """None when `unshare` can make network and mount namespaces here, else why not."""
    if os.geteuid() != 0:
        return "needs root (unshare of network and mount namespaces)"
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"unshare failed: {probe.stderr.decode(errors='replace').strip()}"
    return None


def netns_argv(
    argv: Sequence[str],
    *,
    workdir: Path,
    hosts: Sequence[tuple[str, str]],
    addresses: Sequence[str] = (),
    nameserver: str = "127.0.0.1",
) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) running `argv` in fresh network + mount namespaces.

    `hosts` are (address, name) lines of the namespace's /etc/hosts; `addresses` (CIDR) are
    added to its loopback interface; its resolv.conf names only `nameserver`.
    """
    hosts_file = workdir / "netns-hosts"
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    lines += [f"{address} {name}" for address, name in hosts]
    hosts_file.write_text("\n".join(lines) + "\n")
    resolv = workdir / "netns-resolv.conf"
    resolv.write_text(f"nameserver {nameserver}\noptions timeout:1 attempts:1\n")
    env = {
        "SATAPI_NETNS_HOSTS": str(hosts_file),
        "SATAPI_NETNS_RESOLV": str(resolv),
        "SATAPI_NETNS_ADDRS": " ".join(addresses),
    }
    unshare = ["unshare", "--net", "--mount", "--propagation", "private"]
    return [*unshare, "sh", "-c", NETNS_SETUP, "sh", *argv], env


def tmpfs_argv(argv: Sequence[str], *, directory: Path, size: str) -> list[str]:
    """`argv` in its own mount namespace, with a tmpfs of `size` (e.g. "2m") over `directory`.

    The command `exec`s in place (same pid); from outside, the tmpfs is visible under
    ``/proc/<pid>/root/<directory>``.
    """
    script = 'mount -t tmpfs -o "size=$1" satapi-test "$2" && shift 2 && exec "$@"'
    unshare = ["unshare", "--mount", "--propagation", "private"]
    return [*unshare, "sh", "-c", script, "sh", size, str(directory), *argv]
