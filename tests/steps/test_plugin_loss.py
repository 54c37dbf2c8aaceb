"""Training losses by name: a plug-in from another package replaces cross-entropy in the trainers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from slmops_operator.api import FineTuneJob
from slmops_pipelines.errors import InputError
from slmops_pipelines.local import run_finetune
from slmops_pipelines.steps.train.losses import available_losses, get_loss
from tests.conftest import finetune_manifest, job_run


@pytest.fixture
def doubled_loss(tmp_path: Path, monkeypatch) -> str:
    """A package registering ``doubled`` (twice the cross-entropy) under slmops.losses."""
    root = tmp_path / "plugins"
    (root / "my_losses").mkdir(parents=True)
    (root / "my_losses" / "__init__.py").write_text(
        "import torch.nn.functional as F\n"
        "def doubled(logits, targets):\n"
        "    return 2 * F.cross_entropy(logits, targets, reduction='sum')\n"
    )
    info = root / "my_losses-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-losses\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[slmops.losses]\ndoubled = my_losses:doubled\n")
    monkeypatch.syspath_prepend(str(root))
    # The training processes find it too: they inherit PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    return "doubled"


def first_loss(out: Path) -> float:
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    return next(entry["loss"] for entry in history if "loss" in entry)


def test_a_plugin_loss_is_found_and_trains(doubled_loss, tiny_model, tmp_path):
    assert doubled_loss in available_losses() and callable(get_loss(doubled_loss))
    # One step with a vanishing learning rate: the first logged loss is the loss at the start.
    overrides = {"maxSteps": 1, "loggingSteps": 1, "learningRate": 1e-9}
    plain = FineTuneJob.model_validate(finetune_manifest("plain", tiny_model, training=overrides))
    run_finetune(job_run(plain, str(tmp_path / "plain")))
    doubled = FineTuneJob.model_validate(
        finetune_manifest("doubled", tiny_model, training={**overrides, "loss": doubled_loss})
    )
    run_finetune(job_run(doubled, str(tmp_path / "doubled")))
    assert first_loss(tmp_path / "doubled") == pytest.approx(2 * first_loss(tmp_path / "plain"), rel=1e-3)


def test_an_unknown_loss_fails_before_training(tiny_model, tmp_path):
    job = FineTuneJob.model_validate(finetune_manifest("typo", tiny_model, training={"loss": "focal"}))
    with pytest.raises(InputError) as raised:
        run_finetune(job_run(job, str(tmp_path / "out")))
    assert raised.value.field == "training.loss" and "cross_entropy" in raised.value.message
    assert not (tmp_path / "out").exists()
