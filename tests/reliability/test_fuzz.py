"""Fuzzing (bounded, for CI): the image opener and the annotation parsers never raise anything but their
own clear errors. ``benchmarks/reliability_fuzz.py`` runs the same targets for minutes and records counts."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from benchmarks.reliability.fuzz_targets import annotation_case, check_annotation, check_image, image_inputs  # noqa: E402

FAST = settings(max_examples=250, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(image_inputs)
def test_image_opener_never_raises_anything_but_image_load_error(data):
    check_image(data)


@settings(FAST, max_examples=60)
@given(annotation_case())
def test_annotation_parsers_return_a_dataset_or_a_one_line_annotation_error(case):
    check_annotation(case)
