"""Benchmarks: performance (each figure a ratio to a ceiling or floor measured in the same run), retrieval quality
on validation and test splits, and reliability at length.

Run one from the repository root with ``python -m benchmarks.<name>`` (e.g. embed_throughput, search,
query_latency, train_cost, build_memory); every results file under ``benchmarks/results/`` is written through
:func:`benchmarks.common.write_results` (sweeps also append rows with :func:`benchmarks.common.append_jsonl`).
benchmarks/README.md lists every file and the command that regenerates it; docs/performance.md has the targets.
"""
