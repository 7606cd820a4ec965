"""SSRF through names: hosts in `allowed_hosts` that resolve (or re-resolve) to internal addresses.

The scenario (`tests/support/ssrf_netns.py`) runs a real satapi server in its own network and
mount namespaces, where /etc/hosts and a DNS server that changes its answers are the test's, and
trap servers listen on the internal addresses those names point to. Each case here checks one
answer and that no trap ever saw a request. Skipped without root/unshare unless
SATAPI_REQUIRE_NETNS=1. A unit test of the guard itself is in tests/test_netguard.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import namespaces_available, netns_argv
from tests.support.ssrf_netns import ADDRESSES, HOSTS

ROOT = Path(__file__).resolve().parent.parent
TRAPS = ("loop", "loop6", "private", "metadata")


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = namespaces_available()
    if reason is not None:
        if os.environ.get("SATAPI_REQUIRE_NETNS") == "1":
            pytest.fail(f"SATAPI_REQUIRE_NETNS=1 but {reason}")
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("netns")
    argv, env = netns_argv(
        [sys.executable, "-m", "tests.support.ssrf_netns", "18080"],
        workdir=workdir,
        hosts=HOSTS,
        addresses=ADDRESSES,
    )
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


def no_trap_reached(case: dict[str, Any]) -> None:
    assert {name: case["hits"][name] for name in TRAPS} == dict.fromkeys(TRAPS, 0), case


def test_a_public_name_is_fetched_from_its_address(outcome: dict[str, Any]) -> None:
    case = outcome["public"]
    assert case["status"] == 200, case
    assert case["hits"]["public"] == 1
    no_trap_reached(case)


@pytest.mark.parametrize("case", ["loopback", "loopback6", "private", "metadata", "mixed"])
def test_a_name_resolving_to_an_internal_address_is_refused(
    outcome: dict[str, Any], case: str
) -> None:
    answer = outcome[case]
    assert (answer["status"], answer["code"]) == (400, "url_not_allowed"), answer
    assert "internal address" in answer["error"]
    assert answer["hits"]["public"] == 0
    no_trap_reached(answer)


def test_rebinding_connects_to_the_address_that_was_checked(outcome: dict[str, Any]) -> None:
    # The first lookup answers public, any later one loopback: a guard that looked the name up
    # again to connect would reach the loopback trap here.
    first = outcome["rebind_first"]
    assert first["status"] == 200, first
    assert first["hits"]["public"] == 1
    assert first["dns"]["rebind.test"] == 1, "one lookup per connection"
    no_trap_reached(first)
    # The next connection looks up again and gets loopback: refused, nothing sent.
    second = outcome["rebind_second"]
    assert (second["status"], second["code"]) == (400, "url_not_allowed"), second
    assert second["hits"]["public"] == 0
    no_trap_reached(second)


def test_rebinding_the_other_way_round_is_refused(outcome: dict[str, Any]) -> None:
    case = outcome["rebind_first_internal"]
    assert (case["status"], case["code"]) == (400, "url_not_allowed"), case
    assert case["hits"]["public"] == 0
    no_trap_reached(case)


def test_an_allowed_name_that_does_not_resolve_is_an_upstream_error(
    outcome: dict[str, Any],
) -> None:
    # A failed lookup is a connection that could not be made (502), not a timeout (504).
    case = outcome["unknown"]
    assert (case["status"], case["code"]) == (502, "upstream_error"), case
    assert "could not be reached" in case["error"]
    assert case["hits"]["public"] == 0
    no_trap_reached(case)


def test_a_redirect_to_a_name_resolving_to_loopback_is_refused(outcome: dict[str, Any]) -> None:
    case = outcome["redirect"]
    assert (case["status"], case["code"]) == (502, "redirect_not_allowed"), case
    assert case["hits"]["public"] == 1  # the redirect itself
    no_trap_reached(case)


def test_an_operator_provider_may_point_at_loopback(outcome: dict[str, Any]) -> None:
    case = outcome["provider"]
    assert case["status"] == 200, case
    assert case["hits"]["loop"] == 1


def test_the_server_logged_no_traceback(outcome: dict[str, Any]) -> None:
    assert "Traceback" not in outcome["log"]["text"], outcome["log"]["text"]
