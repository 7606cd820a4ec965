"""Benchmark of satapi against the old Flask design: slow WMS upstream, load driver, helpers."""
