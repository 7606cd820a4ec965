"""The imports point one way: no module of satapi (or of the benchmark) imports, directly or
through others, a module that imports it. Function-level and TYPE_CHECKING imports count."""

from __future__ import annotations

import grimp
import pytest


@pytest.mark.parametrize("package", ["satapi", "bench"])
def test_no_import_circles(package: str) -> None:
    graph = grimp.build_graph(package, include_external_packages=False)
    circles = sorted(
        f"{importer} -> {imported} -> ... -> {importer}"
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )
    assert circles == []


def test_seams_do_not_import_their_backends() -> None:
    """Seams hold protocols and value types; the packages beside them hold the backends and the
    factories that choose one (the arrows: composition -> backends -> seams)."""
    graph = grimp.build_graph("satapi", include_external_packages=False)
    for seam, backends in {
        "satapi.storage": "satapi.stores",
        "satapi.wms_client": "satapi.providers",
        "satapi.limits": "satapi.coordination",
        "satapi.tokens": "satapi.coordination",
    }.items():
        assert not graph.chain_exists(importer=seam, imported=backends, as_packages=True), seam
