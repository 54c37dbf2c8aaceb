"""Build the model, the data and a ``transformers.Trainer``, and train.

This runs inside every torchrun process.  The Trainer (through accelerate) sets up DDP from
the torchrun environment: NCCL on GPUs, gloo on CPUs, so ``processesPerNode: 2`` on a laptop
really trains with two processes and still produces one adapter.

Speed choices, measured on CPU (see docs/benchmarks.md): SDPA attention, no gradient
checkpointing unless asked (it recomputes activations: ~25% slower), padding to the longest
row of a batch rather than to maxSeqLength, and batches grouped by length so that little
padding is computed at all.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time

from slmops_pipelines.steps.cpus import usable_cpus
from slmops_pipelines.steps.train.callbacks import (
    EventLog,
    MarkCompleteCheckpoints,
    ProgressEvents,
    StopOnRequest,
)
from slmops_pipelines.steps.train.checkpoints import checkpoint_step, latest_complete_checkpoint
from slmops_pipelines.steps.train.methods import get_method
from slmops_pipelines.steps.train.precision import with_resolved_precision
from slmops_pipelines.steps.train.request import TrainRequest, TrainResult


def _world() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _training_arguments(request: TrainRequest, *, has_eval: bool, world_size: int):
    import torch
    from transformers import TrainingArguments

    spec = request.spec
    training = spec.training
    on_gpu = torch.cuda.is_available()
    eval_every = training.eval_steps if has_eval else None
    kwargs = dict(
        output_dir=str(request.checkpoints_dir),
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        lr_scheduler_type=training.scheduler,
        warmup_steps=training.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=training.weight_decay,
        max_steps=training.max_steps or -1,
        num_train_epochs=training.epochs or 1.0,
        logging_steps=training.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.save_total_limit,
        seed=training.seed,
        data_seed=training.seed,
        bf16=training.precision == "bf16",
        fp16=training.precision == "fp16",
        gradient_checkpointing=training.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if training.gradient_checkpointing else None,
        report_to=["tensorboard"],
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        disable_tqdm=True,
        use_cpu=not on_gpu,
        ddp_backend=None if on_gpu or world_size == 1 else "gloo",
        ddp_find_unused_parameters=False if world_size > 1 else None,
        save_only_model=False,
        prediction_loss_only=True,  # eval loss is all we need; never gather full logits
    )
    if training.early_stopping is not None and eval_every:
        kwargs.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
    return TrainingArguments(**kwargs)


def _set_threads(local_world_size: int) -> None:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, usable_cpus() // max(1, local_world_size)))


def _load_model_and_tokenizer(request: TrainRequest):
    from slmops_pipelines.models.load import load_tokenizer

    spec = request.spec
    tokenizer = load_tokenizer(request.model_path, trust_remote_code=spec.model.trust_remote_code)
    method = get_method(spec.method)
    model = method.load_model(request.model_path, spec)
    if spec.training.gradient_checkpointing:
        model.config.use_cache = False
    return method, method.wrap(model, spec), tokenizer


def _callbacks(
    spec, events: EventLog, stop: StopOnRequest, *, world_size: int, resumed_from: int | None, has_eval: bool
) -> list:
    from transformers import EarlyStoppingCallback

    callbacks = [
        ProgressEvents(events, world_size=world_size, resumed_from=resumed_from),
        MarkCompleteCheckpoints(),
        stop,
    ]
    if spec.training.early_stopping is not None and has_eval:
        callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=spec.training.early_stopping.patience,
                early_stopping_threshold=spec.training.early_stopping.min_delta,
            )
        )
    return callbacks


def _training_seconds(elapsed: float, log_history: list[dict], resumed_from: int | None) -> float:
    """Wall time of train() minus the periodic evaluations it ran: the figure speeds are based on."""
    evaluating = sum(
        h.get("eval_runtime", 0.0) for h in log_history if h.get("step", 0) > (resumed_from or 0)
    )
    return max(elapsed - evaluating, 1e-9)


def _final_eval_loss(trainer, has_eval: bool) -> float | None:
    """The eval loss of the model being saved, without evaluating twice at the same step."""
    if not has_eval:
        return None
    state = trainer.state
    if not trainer.args.load_best_model_at_end:
        for entry in reversed(state.log_history):
            if "eval_loss" in entry and entry.get("step") == state.global_step:
                return entry["eval_loss"]
    return trainer.evaluate().get("eval_loss")


def train(request: TrainRequest) -> TrainResult | None:
    """Train as the request says; None when stopped by a stop request (``logs/preempted.json``)."""
    import datasets
    from transformers import DataCollatorForSeq2Seq, set_seed

    from slmops_pipelines.steps.train.losses import DEFAULT as DEFAULT_LOSS
    from slmops_pipelines.steps.train.losses import get_loss
    from slmops_pipelines.steps.train.sparse_logits import SparseLogitsTrainer

    rank, _local_rank, world_size = _world()
    _set_threads(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    request = request.model_copy(update={"spec": with_resolved_precision(request.spec)})
    spec = request.spec
    set_seed(spec.training.seed)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(request.work_dir / "tensorboard")
    events = EventLog(request.events_path, enabled=rank == 0)
    method, model, tokenizer = _load_model_and_tokenizer(request)

    train_ds = datasets.load_from_disk(str(request.data_dir / "train"))
    eval_path = request.data_dir / "eval"
    eval_ds = datasets.load_from_disk(str(eval_path)) if eval_path.exists() else None
    has_eval = eval_ds is not None

    resume = latest_complete_checkpoint(request.checkpoints_dir)
    resumed_from = checkpoint_step(resume) if resume else None
    stop = StopOnRequest(request.stop_path)
    trainer = SparseLogitsTrainer(
        model=model,
        args=_training_arguments(request, has_eval=has_eval, world_size=world_size),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=_WithoutLength(
            DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        ),
        callbacks=_callbacks(
            spec, events, stop, world_size=world_size, resumed_from=resumed_from, has_eval=has_eval
        ),
        # SLMOPS_DENSE_LOGITS=1 turns the sparse LM head off (for benchmarks and debugging).
        sparse_logits=spec.dataset.loss_on_completion_only and not os.environ.get("SLMOPS_DENSE_LOGITS"),
        # SLMOPS_NO_SHARED_PREFIX=1 computes each row's prefix again (for benchmarks).
        shared_prefix=not os.environ.get("SLMOPS_NO_SHARED_PREFIX"),
        loss_fn=None if spec.training.loss == DEFAULT_LOSS else get_loss(spec.training.loss),
    )
    started = time.time()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stop.stopped_at is not None and stop.stopped_at < trainer.state.max_steps:
        if trainer.is_world_process_zero():  # the checkpoint of that step is saved and marked
            stop.write_preempted(request.preempted_path, trainer.state)
        _barrier()
        return None
    stop.restore_signal()
    runtime = _training_seconds(time.time() - started, trainer.state.log_history, resumed_from)
    eval_loss = _final_eval_loss(trainer, has_eval)
    if eval_loss is not None:
        events.emit("evaluate", step=trainer.state.global_step, eval_loss=eval_loss)

    final_dir = request.work_dir / ("adapter" if method.uses_adapter else "model")
    trainer.save_model(str(final_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(final_dir))

    result = _result(
        trainer,
        model,
        output,
        runtime=runtime,
        resumed_from=resumed_from,
        eval_loss=eval_loss,
        saved_as=final_dir.name,
        precision=spec.training.precision,
    )
    if trainer.is_world_process_zero():
        request.result_path.write_text(json.dumps(result.model_dump(), indent=2))
    _barrier()
    return result


def _on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()  # what _training_arguments decided by (use_cpu)


def _barrier() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _result(
    trainer,
    model,
    output,
    *,
    runtime: float,
    resumed_from: int | None,
    eval_loss: float | None,
    saved_as: str,
    precision: str = "fp32",
) -> TrainResult:
    state = trainer.state
    steps_this_run = state.global_step - (resumed_from or 0)
    # ``runtime`` is train()'s wall time net of its periodic evaluations (_training_seconds);
    # the final evaluation runs after train() and was never part of it.
    return TrainResult(
        global_step=state.global_step,
        total_steps=state.max_steps,
        world_size=trainer.args.world_size,
        gpus=trainer.args.world_size if _on_gpu() else 0,  # each process trains on one GPU, or none does
        resumed_from_step=resumed_from,
        stopped_early=state.global_step < state.max_steps,
        train_loss=_finite(output.training_loss),
        eval_loss=_finite(eval_loss),
        train_runtime_s=runtime,
        seconds_per_step=runtime / steps_this_run if steps_this_run > 0 else None,
        tokens_seen=int(state.num_input_tokens_seen or 0),
        positions_computed=_summed_over_processes(trainer, getattr(trainer, "positions_computed", None)),
        tokens_per_second=_tokens_per_second(state, runtime, resumed_from),
        peak_memory_mb=_peak_memory_mb(),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_parameters=sum(p.numel() for p in model.parameters()),
        output=saved_as,
        precision=precision,
        log_history=state.log_history,
    )


class _WithoutLength:
    """Drop the ``length`` column (used by the length-grouped sampler) before batching."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict:
        return self.collator([{k: v for k, v in f.items() if k != "length"} for f in features])


def _summed_over_processes(trainer, value: int | None) -> int | None:
    """A per-process count summed over the run's processes (itself without distribution)."""
    if value is None:
        return None
    import torch

    return int(trainer.accelerator.reduce(torch.tensor(value, device=trainer.args.device), reduction="sum"))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _tokens_per_second(state, runtime: float, resumed_from: int | None) -> float | None:
    # After a resume the Trainer restores the token count of the earlier run; count this run only.
    seen = int(state.num_input_tokens_seen or 0)
    if resumed_from:
        history = [
            h.get("num_input_tokens_seen") for h in state.log_history if h.get("step", 0) <= resumed_from
        ]
        earlier = max((h for h in history if h), default=0)
        seen -= earlier
    return seen / runtime if runtime > 0 and seen > 0 else None
