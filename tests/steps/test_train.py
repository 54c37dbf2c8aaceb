"""The training step through torchrun: every method, two processes, errors from the children."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slmops_pipelines.errors import InputError
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.steps.data import prepare_data
from slmops_pipelines.steps.train.launch import Rendezvous, one_device, run_training, training_command
from slmops_pipelines.steps.train.request import TrainRequest
from tests.conftest import finetune_manifest


@pytest.fixture(scope="module")
def data_dir(tiny_model: Path, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    spec = FineTuneJobSpec.model_validate(finetune_manifest("t", tiny_model)["spec"])
    out = tmp_path_factory.mktemp("data")
    prepare_data(
        spec.dataset,
        tokenizer=AutoTokenizer.from_pretrained(tiny_model),
        out_dir=out,
        seed=0,
        cache_dir=out / "c",
    )
    return out


def train(tiny_model: Path, data_dir: Path, work: Path, **overrides):
    spec = FineTuneJobSpec.model_validate(finetune_manifest("t", tiny_model, **overrides)["spec"])
    events: list[dict] = []
    result = run_training(
        TrainRequest(spec=spec, model_path=tiny_model, data_dir=data_dir, work_dir=work),
        on_event=events.append,
    )
    return result, events


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_methods_produce_a_loadable_adapter(method, tiny_model, data_dir, tmp_path):
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    result, events = train(tiny_model, data_dir, tmp_path, method=method)
    assert result.global_step == 4 and result.world_size == 1 and result.output == "adapter"
    assert result.trainable_parameters < result.total_parameters
    assert result.train_loss is not None and result.eval_loss is not None and result.tokens_per_second > 0
    # The rows begin alike (the chat template, "Tone of:"): their shared prefix ran once a batch.
    assert 0 < result.positions_computed < result.tokens_seen
    config = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert set(config.target_modules) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert getattr(config, "use_dora", False) is (method == "dora")
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), tmp_path / "adapter")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "train_begin" and "step" in kinds and "save" in kinds and kinds[-1] == "evaluate"
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_full_fine_tuning_saves_a_whole_model(tiny_model, data_dir, tmp_path):
    result, _ = train(tiny_model, data_dir, tmp_path, method="full")
    assert result.output == "model" and result.trainable_parameters == result.total_parameters
    assert (tmp_path / "model" / "config.json").exists()


def test_qlora_trains_a_4bit_base_on_cpu(tiny_model, data_dir, tmp_path):
    result, _ = train(
        tiny_model, data_dir, tmp_path, method="qlora", lora={"targetModules": ["q_proj", "v_proj"]}
    )
    assert result.global_step == 4
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    request = json.loads((tmp_path / "logs" / "train_request.json").read_text())
    assert request["spec"]["method"] == "qlora"


def test_two_processes_train_one_adapter(tiny_model, data_dir, tmp_path):
    result, events = train(tiny_model, data_dir, tmp_path, resources={"processesPerNode": 2})
    assert result.world_size == 2
    assert events[0]["world_size"] == 2
    assert len(list(tmp_path.glob("adapter/adapter_model.safetensors"))) == 1
    # Both processes saw data: the token count is gathered over the world.
    one, _ = train(tiny_model, data_dir, tmp_path / "single")
    assert result.tokens_seen > one.tokens_seen
    assert result.positions_computed > one.positions_computed  # summed over the processes too


def test_error_in_the_training_process_comes_back_with_its_field(tiny_model, data_dir, tmp_path):
    with pytest.raises(InputError) as info:
        train(tiny_model, data_dir, tmp_path, lora={"targetModules": ["attn_q"]})
    assert info.value.field == "lora.targetModules"
    assert "'attn_q' is not a linear layer" in info.value.message
    assert not (tmp_path / "adapter").exists()


def test_resumes_from_the_latest_complete_checkpoint_only(tiny_model, data_dir, tmp_path):
    train(tiny_model, data_dir, tmp_path, training={"maxSteps": 4, "saveSteps": 2})
    checkpoints = tmp_path / "checkpoints"
    # A checkpoint without the completeness marker (a save cut short) must be ignored.
    shutil.copytree(checkpoints / "checkpoint-4", checkpoints / "checkpoint-5")
    (checkpoints / "checkpoint-5" / ".slmops-complete").unlink()
    result, events = train(tiny_model, data_dir, tmp_path, training={"maxSteps": 6, "saveSteps": 2})
    assert result.resumed_from_step == 4 and result.global_step == 6
    assert events[0]["resumed_from"] == 4


def test_early_stopping_stops_when_eval_loss_stops_improving(tiny_model, data_dir, tmp_path):
    # A decrease smaller than minDelta is no improvement.  A loss made to diverge (a learning
    # rate far too high) did not diverge on every CPU's kernels; no two steps of a tiny model
    # lower the eval loss by 10, so this stops after the first evaluation plus `patience`.
    result, events = train(
        tiny_model,
        data_dir,
        tmp_path,
        training={
            "maxSteps": 40,
            "evalSteps": 2,
            "saveSteps": 2,
            "earlyStopping": {"patience": 2, "minDelta": 10.0},
        },
    )
    assert result.stopped_early and result.global_step == 6
    evals = [e["eval_loss"] for e in events if e["event"] == "log" and "eval_loss" in e]
    assert len(evals) >= 3
    # The best checkpoint is what gets saved, and its loss is what is reported.
    assert result.eval_loss == pytest.approx(min(evals), rel=1e-4)


def test_training_speed_counts_the_whole_loop_and_not_the_final_evaluation_twice():
    from types import SimpleNamespace

    import torch

    from slmops_pipelines.steps.train.trainer import _result, _training_seconds

    history = [
        {"step": 10, "eval_loss": 1.0, "eval_runtime": 2.0},  # a periodic evaluation inside train()
        {"step": 20, "train_runtime": 12.0},
    ]
    runtime = _training_seconds(12.0, history, None)
    assert runtime == 10.0
    history.append({"step": 20, "eval_loss": 0.5, "eval_runtime": 3.0})  # the final one, after train()
    state = SimpleNamespace(global_step=20, max_steps=20, log_history=history, num_input_tokens_seen=1000)
    trainer = SimpleNamespace(state=state, args=SimpleNamespace(world_size=1))
    result = _result(
        trainer,
        torch.nn.Linear(2, 2),
        SimpleNamespace(training_loss=0.7),
        runtime=runtime,
        resumed_from=None,
        eval_loss=0.5,
        saved_as="adapter",
    )
    assert result.train_runtime_s == 10.0 and result.tokens_per_second == 100.0
    assert result.seconds_per_step == 0.5


def test_one_process_on_one_node_starts_without_torchrun(tmp_path):
    request = tmp_path / "train_request.json"
    alone = training_command(request, 1)
    assert alone[1:] == ["-m", "slmops_pipelines.steps.train", str(request)]
    assert "torch.distributed.run" in training_command(request, 2)
    rendezvous = Rendezvous(nodes=2, node_rank=1, master_addr="trainer-0", master_port=29500)
    joined = training_command(request, 1, rendezvous)  # one process per node, several nodes
    assert "torch.distributed.run" in joined and "--node-rank=1" in joined


@pytest.mark.parametrize(
    ("visible", "seen"), [(None, "0"), ("2,3", "2"), ("GPU-a1b2, GPU-c3d4", "GPU-a1b2"), ("", "")]
)
def test_a_trainer_without_torchrun_sees_one_gpu(visible, seen):
    """As torchrun's one process trains on cuda:0, not on every GPU through DataParallel."""
    assert one_device(visible) == seen
