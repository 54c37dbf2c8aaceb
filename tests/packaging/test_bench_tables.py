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
    """In every generated table (docs/benchmarks.md's and README's block), a changed figure is put back."""
    import re

    tables = bench_tables()
    for path in tables.DOCS:
        text = path.read_text()
        blocks = list(tables.BLOCK.finditer(text))
        assert blocks, path
        for block in blocks:
            start, end = block.span(4)  # the rendered table
            doctored = text[:start] + re.sub(r"\d+", "99999", text[start:end], count=1) + text[end:]
            assert doctored != text and tables.rendered(doctored) == text, (path, block.group(2))


def test_readme_and_docs_carry_the_tables_of_every_benchmark_that_records_figures():
    text = (REPO / "docs" / "benchmarks.md").read_text()
    for name in ("finetune", "optimize", "int4_sweep", "serve", "operator"):
        assert f"<!-- table: {name} bench/results/{name}.json -->" in text, name
    assert "<!-- table: summary bench/results -->" in (REPO / "README.md").read_text()


def test_readmes_summary_takes_each_benchmarks_newest_run_from_any_machine(tmp_path):
    import json

    (tmp_path / "other-cpu").mkdir()
    runs = {
        "finetune.json": "2026-12-05",
        "other-cpu/finetune.json": "2026-12-07",  # newer: taken
        "optimize.json": "2026-12-06",
        "other-cpu/optimize.json": "2026-12-06",  # the same day: the folder's own is kept
        "other-cpu/serve.json": "2026-12-01",  # only there
    }
    for name, date in runs.items():
        (tmp_path / name).write_text(json.dumps({"date": date, "machine": name}))
    newest = bench_tables().figures_at(tmp_path)
    assert {stem: figures["machine"] for stem, figures in newest.items()} == {
        "finetune": "other-cpu/finetune.json",
        "optimize": "optimize.json",
        "serve": "other-cpu/serve.json",
    }


def test_of_two_runs_on_one_day_the_later_by_its_time_is_the_newest(tmp_path):
    """Two machines measured the same day: the run that wrote the later time wins, whatever
    the folders' order; a run without a time (older scripts) loses to one with it."""
    import json

    for folder in ("a-cpu", "b-cpu", "c-cpu"):
        (tmp_path / folder).mkdir()
    runs = {
        "a-cpu/serve.json": {"time": "08:30"},  # first by name, yet earlier in the day
        "b-cpu/serve.json": {},  # written before runs recorded their time
        "c-cpu/serve.json": {"time": "19:01"},  # the later of the day: taken
        "a-cpu/optimize.json": {},
        "c-cpu/optimize.json": {"time": "00:05"},  # the only one with a time: taken
    }
    for name, when in runs.items():
        (tmp_path / name).write_text(json.dumps({"date": "2026-12-07", **when, "machine": name}))
    newest = bench_tables().figures_at(tmp_path)
    assert {stem: figures["machine"] for stem, figures in newest.items()} == {
        "serve": "c-cpu/serve.json",
        "optimize": "c-cpu/optimize.json",
    }
