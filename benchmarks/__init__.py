"""Performance benchmarks: each figure is a ratio to a ceiling (or floor) measured in the same run.

Run one with ``python -m benchmarks.<name>`` (embed_throughput, search, query_latency, train_cost,
build_memory); each writes ``benchmarks/results/<name>.json`` and ``.md`` through :mod:`benchmarks.common`.
See docs/performance.md for the targets and the figures.
"""
