"""Every adapter measured: each separate adapter on its own data, against its own reference, with its own gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from slmops_operator.api import OptimizeJob
from slmops_pipelines.local.optimize import GateError, run_optimize
from slmops_pipelines.stages import optimize as stages
from tests.conftest import TONE_DATA, job_run
from tests.optimize.test_adapters import make_adapter

TARGET = {
    "name": "cpu-fp32-adapters",
    "provider": "CPUExecutionProvider",
    "precision": "fp32",  # matches PyTorch: each adapter's row must equal its own reference
    "mergeAdapter": False,
}
TONE = {
    "uri": str(TONE_DATA),
    "evalSplit": "eval",
    "promptTemplate": "Tone of: {phrase}",
    "completionTemplate": "{tone}",
}


@pytest.fixture(scope="module")
def two_adapters(tiny_model: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("two-adapters")
    all_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return {
        "tone": make_adapter(tiny_model, root / "tone", 11, all_modules),
        "sql": make_adapter(tiny_model, root / "sql", 12, ["q_proj", "v_proj"]),
    }


@pytest.fixture(scope="module")
def sql_data(tmp_path_factory) -> dict:
    """Another task: three rows with columns of their own (the tone data has four here)."""
    path = tmp_path_factory.mktemp("sql-data") / "sql.jsonl"
    rows = [
        {"question": f"How many rows has t{i}?", "query": f"SELECT COUNT(*) FROM t{i};"} for i in range(3)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"uri": str(path), "promptTemplate": "Q: {question}\nSQL:", "completionTemplate": " {query}"}


def adapters_job(
    name: str, tiny_model: Path, adapters: dict[str, Path], sql: dict | None, **evaluation
) -> OptimizeJob:
    sql_ref = {"name": "sql", "uri": str(adapters["sql"])}
    if sql is not None:
        sql_ref["evaluation"] = {"dataset": sql}
    spec = {
        "source": {
            "model": {"uri": str(tiny_model)},
            "adapters": [{"name": "tone", "uri": str(adapters["tone"])}, sql_ref],
        },
        "targets": [TARGET],
        "evaluation": {"dataset": TONE, "maxNewTokens": 4, "maxSamples": 4, **evaluation},
    }
    return OptimizeJob.model_validate(
        {"apiVersion": "slmops.io/v1alpha1", "kind": "OptimizeJob", "metadata": {"name": name}, "spec": spec}
    )


@pytest.fixture(scope="module")
def measured(tiny_model, two_adapters, sql_data, tmp_path_factory) -> tuple[dict, str, str]:
    """The job run by ``slmops run``: metrics.json, the table it printed, report.html."""
    from slmops_operator.cli.main import cli

    job = adapters_job(
        "every-adapter",
        tiny_model,
        two_adapters,
        sql_data,
        metrics=["accuracy", "perplexity", "latency", "size"],
        gates={"maxPerplexityIncrease": 0.05, "maxSizeMb": 100},
    )
    root = tmp_path_factory.mktemp("every-adapter")
    (root / "job.yaml").write_text(
        yaml.safe_dump(job.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    result = CliRunner(env={"COLUMNS": "240"}).invoke(
        cli, ["run", str(root / "job.yaml"), "--runs-dir", str(root / "runs")], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    out = root / "runs" / "every-adapter"
    return json.loads((out / "metrics.json").read_text()), result.output, (out / "report.html").read_text()


def test_each_adapter_has_its_own_row_data_and_reference(measured, sql_data):
    doc, _, _ = measured
    references = doc["reference"]["byAdapter"]
    assert list(references) == ["tone", "sql"]  # spec order
    assert references["tone"]["rows"] == 4 and references["tone"]["dataset"] == TONE["uri"]
    assert references["sql"]["rows"] == 3 and references["sql"]["dataset"] == sql_data["uri"]
    rows = doc["targets"]["cpu-fp32-adapters"]["byAdapter"]
    assert list(rows) == ["tone", "sql"]
    for name in ("tone", "sql"):
        ours, theirs = rows[name]["metrics"], references[name]["finetuned_pytorch"]
        assert ours["total"] == references[name]["rows"]
        # fp32 ONNX with this adapter active equals PyTorch with this adapter merged, on this adapter's data.
        assert ours["perplexity"] == pytest.approx(theirs["perplexity"], rel=1e-3)
        assert rows[name]["vsFinetuned"]["perplexity"] == pytest.approx(0, abs=theirs["perplexity"] * 1e-3)
        assert ours["latency"] is None  # measured once per target
    # Apart by more than ONNX and PyTorch are: the rows above cannot pass with the adapters swapped.
    assert rows["tone"]["metrics"]["perplexity"] != pytest.approx(
        rows["sql"]["metrics"]["perplexity"], rel=2e-3
    )


def test_single_adapter_readers_still_find_the_targets_figures(measured):
    doc, _, _ = measured
    target = doc["targets"]["cpu-fp32-adapters"]
    assert target["adapters"] == ["sql", "tone"]
    assert (
        target["metrics"]["accuracy"] is not None
        and target["metrics"]["latency"]["decode_tokens_per_s_p50"] > 0
    )
    assert target["metrics"]["total"] == 4  # the first adapter's, as before
    assert (
        doc["reference"]["finetuned_pytorch"]["perplexity"]
        == doc["reference"]["byAdapter"]["tone"]["finetuned_pytorch"]["perplexity"]
    )


def test_gates_apply_to_each_adapter_and_speed_gates_to_the_target(measured):
    doc, _, _ = measured
    checked = {(g["gate"], g["adapter"]) for g in doc["gates"]}
    assert checked == {("perplexityIncrease", "tone"), ("perplexityIncrease", "sql"), ("sizeMb", None)}
    assert all(g["passed"] for g in doc["gates"])


def test_the_table_and_the_report_show_every_adapter(measured):
    _, printed, report = measured
    lines = printed.splitlines()
    for name in ("tone", "sql"):
        assert any("cpu-fp32-adapters" in line and f" {name} " in line for line in lines), printed
        assert any("pytorch fp32 base" in line and f" {name} " in line for line in lines), printed
        assert f"<td>cpu-fp32-adapters (CPU fp32)</td><td>{name}</td>" in report
    assert "<th>adapter</th>" in report  # the comparison's column
    assert "<td>cpu-fp32-adapters, adapter sql</td><td>perplexity increase</td>" in report  # the gates' table
    assert "✓ sql: perplexity increase ≤ 0.05" in report  # the target card's badges


def test_a_gate_violated_by_one_adapter_fails_the_job_naming_it(
    tiny_model, two_adapters, sql_data, tmp_path, monkeypatch
):
    """The ONNX model scores adapter 'sql''s answers worse than PyTorch does (doubled log-loss)."""
    from slmops_pipelines.steps.optimize.runtime import GenaiEngine

    original = GenaiEngine.answer_nll

    def worse_for_sql(self, prompt_ids, answer_ids):
        nll = original(self, prompt_ids, answer_ids)
        return 2 * nll if self.active_adapter == "sql" else nll

    monkeypatch.setattr(GenaiEngine, "answer_nll", worse_for_sql)
    job = adapters_job(
        "gated",
        tiny_model,
        two_adapters,
        sql_data,
        metrics=["perplexity"],
        gates={"maxPerplexityIncrease": 0.5},
    )
    out = tmp_path / "gated"
    with pytest.raises(GateError) as info:
        run_optimize(job_run(job, str(out)), locate_job=lambda n: n)
    doc = json.loads((out / "metrics.json").read_text())
    sql_reference = doc["reference"]["byAdapter"]["sql"]["finetuned_pytorch"]["perplexity"]
    assert sql_reference > 1.5  # so that squaring it is more than a 50% increase
    message = str(info.value)
    assert (
        "target 'cpu-fp32-adapters', adapter 'sql': perplexityIncrease" in message and "VIOLATED" in message
    )
    assert "adapter 'tone'" not in message
    assert not (out / "manifest.json").exists()


def test_without_their_own_data_every_adapter_uses_the_jobs(tiny_model, two_adapters, tmp_path):
    job = adapters_job("default", tiny_model, two_adapters, None, metrics=["perplexity"])
    stages.prepare_source(job.spec, locate_job=lambda n: n, prepared_dir=tmp_path)
    references = json.loads((tmp_path / stages.REFERENCE_JSON).read_text())["byAdapter"]
    assert {name: (r["dataset"], r["rows"]) for name, r in references.items()} == {
        "tone": (TONE["uri"], 4),
        "sql": (TONE["uri"], 4),
    }
    tone, sql = (references[n]["finetuned_pytorch"]["perplexity"] for n in ("tone", "sql"))
    assert tone != pytest.approx(sql, rel=2e-3)  # the same rows, each through its own adapter


class DashboardMetrics:
    """What a KFP ``Metrics`` artifact offers a task."""

    def __init__(self, path: Path) -> None:
        self.path, self.metadata = str(path), {}

    def log_metric(self, metric: str, value: float) -> None:
        self.metadata[metric] = value


def test_the_pipelines_tasks_measure_every_adapter_too(tiny_model, two_adapters, sql_data, tmp_path):
    """The KFP component bodies, in this process: the same rows, and per-adapter scalars on the dashboard."""
    from slmops_pipelines.kubeflow import tasks

    job = adapters_job("kfp", tiny_model, two_adapters, sql_data, metrics=["perplexity"])
    spec, out = job.spec.to_manifest(), str(tmp_path / "out")
    context = {"name": "kfp", "kind": "OptimizeJob", "apiVersion": "slmops.io/v1alpha1"}
    fingerprint, started, source_view = tasks.inspect_optimize(
        spec=spec, job=context, output_uri=out, source_uri=""
    )
    prepared, target_dir = tmp_path / "prepared", tmp_path / "target"
    tasks.prepare_source(
        spec=source_view,
        output_uri=out,
        source_uri="",
        fingerprint=fingerprint,
        prepared=str(prepared),
        reference_metrics=DashboardMetrics(tmp_path / "m1"),
    )
    [view] = tasks.plan_targets(spec=spec)
    built = DashboardMetrics(tmp_path / "m2")
    tasks.build_target(
        spec=view, output_uri=out, prepared=str(prepared), target=str(target_dir), target_metrics=built
    )
    assert {"tone_perplexity", "sql_perplexity"} <= built.metadata.keys()
    published = DashboardMetrics(tmp_path / "m3")
    tasks.publish_optimize(
        spec=spec,
        job=context,
        output_uri=out,
        started_at=started,
        prepared=str(prepared),
        targets=[str(target_dir)],
        report=str(tmp_path / "report.html"),
        artifacts=str(tmp_path / "summary.md"),
        summary=published,
    )
    assert "cpu-fp32-adapters_sql_perplexity" in published.metadata
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    rows = doc["targets"]["cpu-fp32-adapters"]["byAdapter"]
    assert {name: row["rows"] for name, row in rows.items()} == {"tone": 4, "sql": 3}
    assert (tmp_path / "out" / "manifest.json").exists()
