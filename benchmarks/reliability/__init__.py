"""What the reliability tests (``tests/reliability``, fast, in CI) and the reliability benchmarks
(``python -m benchmarks.reliability_fuzz`` / ``reliability_crash`` / ``reliability_ui_load``, minutes) share: the
hostile corpus (:mod:`.hostile`), the fuzz targets (:mod:`.fuzz_targets`), the index-writer kill scenarios
(:mod:`.crashlib`, :mod:`.crash_driver`), simulated browser sessions (:mod:`.ui_sessions`) and a clean gallery
(:mod:`.gallery`).

The benchmarks write one shared results file, ``benchmarks/results/reliability.{md,json}``, one section per
command (``benchmarks.common.write_results(..., section=...)``).
"""

#: the results file of the reliability benchmarks, its sections in file order, and its opening text
RESULTS_NAME = "reliability"
SECTIONS = ("inputs", "fuzz", "crash", "training", "ui_load")
PREAMBLE = """# Reliability and security results (issue 6)

Produced by the `python -m benchmarks.reliability_*` scripts; each section names the command that wrote it and
the machine it ran on. The fast versions of the same checks run in CI as `tests/reliability/`
(see `docs/reliability.md`).
"""
