"""The benchmark tables in the docs are made from the figures the scripts wrote: none drifts."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def bench_tables():
    spec = importlib.util.spec_from_file_location("bench_tables", REPO / "scripts" / "bench_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_table_matches_its_figures():
    assert bench_tables().main(["--check"]) == 0  # else: run scripts/bench_tables.py


def test_a_figure_typed_by_hand_is_caught():
    tables = bench_tables()
    text = (REPO / "docs" / "benchmarks.md").read_text()
    assert "<!-- table: serve bench/results/serve.json -->" in text
    doctored = text.replace("| 8 | 318 | 2.23 |", "| 8 | 400 | 2.81 |")
    assert doctored != text and tables.rendered(doctored) == text  # regenerating puts the figure back
