"""Data prep: load, slice, render and tokenize a dataset; count and fingerprint it.

The output is a folder that the training step (possibly N torchrun processes) and the
evaluation step read::

    data/train/            tokenized training rows (datasets ``save_to_disk``):
                           input_ids, labels, length
    data/eval/             tokenized eval rows (when there is an eval split)
    data/eval_prompts.jsonl  prompt (messages or text) and expected answer, for generation
    data/stats.json        rows, tokens, truncated and dropped rows, columns, fingerprint

Rendering has three modes, chosen by the spec:

* ``textTemplate``: one text per row, loss on every token;
* ``promptTemplate`` + ``completionTemplate`` without chat: prompt text followed by answer text;
* ``chatTemplate: true``: the tokenizer's chat template over a ``messages`` column, or over a
  user prompt and assistant answer (from the templates or ``prompt``/``completion`` columns).

Labels mask the prompt with -100 when the loss is on the completion only.  The prompt and
the answer are tokenized separately and concatenated, so the boundary between them is exact
whatever the tokenizer merges.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slmops_pipelines.credentials import hf_token, s3_credentials
from slmops_pipelines.errors import InputError
from slmops_pipelines.specs import DatasetSpec
from slmops_pipelines.specs.common import template_fields
from slmops_pipelines.uris import parse_uri

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_SLICE_RE = re.compile(r"^(?P<name>[^\[]+)(?P<slice>\[.*\])?$")


@dataclass
class SplitStats:
    rows: int = 0
    tokens: int = 0
    label_tokens: int = 0
    truncated: int = 0
    dropped: int = 0  # rows whose answer was truncated away entirely
    max_length: int = 0


@dataclass
class DataStats:
    fingerprint: str
    columns: list[str]
    mode: str
    train: SplitStats
    eval: SplitStats | None = None
    splits: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Example:
    """One rendered example: the prompt (text or chat messages) and the answer."""

    prompt_text: str  # everything the model sees before the answer (chat template applied)
    completion_text: str  # the answer, as trained on (ends with the end-of-turn marker in chat mode)
    answer: str  # the bare answer, as compared in accuracy evaluation


# -- loading ---------------------------------------------------------------------------------


def _local_data_files(path: Path, fmt: str) -> tuple[str, dict[str, str]]:
    if not path.exists():
        raise InputError(f"file not found: {path}", field="dataset.uri")
    if path.is_file():
        files = {"train": path}
    else:
        files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix in _FORMATS}
        if not files:
            raise InputError(f"folder {path} has no .json/.jsonl/.csv/.parquet files", field="dataset.uri")
    empty = [p for p in files.values() if p.stat().st_size == 0]
    if empty:
        raise InputError(f"dataset file {empty[0]} is empty: no rows to train on", field="dataset.uri")
    builders = {_FORMATS.get(p.suffix) for p in files.values()}
    if fmt != "auto":
        builder = "json" if fmt == "jsonl" else fmt
    elif len(builders) == 1 and (only := next(iter(builders))) is not None:
        builder = only
    else:
        raise InputError(
            f"cannot tell the format of {path} from its extension; set dataset.format", field="dataset.uri"
        )
    return builder, {name: str(p) for name, p in files.items()}


def _fetch_s3_dataset(uri: str, field: str = "dataset.uri") -> Path:
    """The dataset (one object or a folder) as the bucket holds it now, listed with the dataset's keys."""
    from slmops_pipelines.models import input_cache
    from slmops_pipelines.storage import open_store

    parsed = parse_uri(uri)
    parent, _, leaf = parsed.key.rpartition("/")
    store = open_store(
        f"s3://{parsed.bucket}/{parent}" if parent else f"s3://{parsed.bucket}",
        field=field,
        credentials=s3_credentials("dataset"),
    )
    entry = input_cache.fetch(store, leaf, field=field, kind="dataset")
    single = entry / leaf
    return single if single.is_file() else entry


def _split_name(split: str) -> str:
    match = _SLICE_RE.match(split)
    return match["name"] if match else split


def load_split(
    spec: DatasetSpec, split: str, *, cache_dir: Path, field_name: str, uri_field: str = "dataset.uri"
) -> datasets.Dataset:
    """Load one split expression (``train[:4096]``) of the spec's dataset (its URI read as ``uri_field``)."""
    import datasets

    datasets.disable_progress_bars()
    parsed = parse_uri(spec.uri)
    hf_cache = str(cache_dir / "hf-datasets")
    try:
        if parsed.scheme == "hf":
            return datasets.load_dataset(
                parsed.repo,
                revision=parsed.revision,
                split=split,
                cache_dir=hf_cache,
                token=hf_token("dataset"),
            )
        path = _fetch_s3_dataset(spec.uri, uri_field) if parsed.scheme == "s3" else parsed.local_path
        builder, files = _local_data_files(path.expanduser().resolve(), spec.format)
        if _split_name(split) not in files:
            raise InputError(
                f"split {_split_name(split)!r} not found; splits: {', '.join(sorted(files))}",
                field=field_name,
            )
        return datasets.load_dataset(builder, data_files=files, split=split, cache_dir=hf_cache)
    except InputError:
        raise
    except (ValueError, KeyError, StopIteration) as exc:
        raise InputError(f"cannot load {split!r} from {spec.uri}: {exc}", field=field_name) from exc
    except datasets.exceptions.DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise InputError(f"cannot parse {spec.uri}: {cause}", field="dataset.uri") from exc


def load_splits(
    spec: DatasetSpec, *, seed: int, cache_dir: Path, uri_field: str = "dataset.uri"
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    train = load_split(
        spec, spec.train_split, cache_dir=cache_dir, field_name="dataset.trainSplit", uri_field=uri_field
    )
    evaluation = None
    if spec.eval_split:
        evaluation = load_split(
            spec, spec.eval_split, cache_dir=cache_dir, field_name="dataset.evalSplit", uri_field=uri_field
        )
    elif spec.eval_fraction:
        if len(train) < 2:
            raise InputError("too few rows to hold out an eval fraction", field="dataset.evalFraction")
        parts = train.train_test_split(test_size=spec.eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    if len(train) == 0:
        raise InputError(f"{spec.train_split!r} selected no rows from {spec.uri}", field="dataset.trainSplit")
    if evaluation is not None and len(evaluation) == 0:
        raise InputError(f"the eval split selected no rows from {spec.uri}", field="dataset.evalSplit")
    return train, evaluation


# -- rendering -------------------------------------------------------------------------------


def _require_columns(template: str | None, columns: list[str], field_name: str) -> None:
    if template is None:
        return
    missing = [name for name in template_fields(template) if name not in columns]
    if missing:
        raise InputError(
            f"field {missing[0]!r} is not in the data; columns found: {', '.join(columns)}", field=field_name
        )


def render_mode(spec: DatasetSpec, columns: list[str]) -> str:
    """Decide how rows become examples, and check every field the spec names exists."""
    _require_columns(spec.text_template, columns, "dataset.textTemplate")
    _require_columns(spec.prompt_template, columns, "dataset.promptTemplate")
    _require_columns(spec.completion_template, columns, "dataset.completionTemplate")
    if spec.text_template:
        return "text"
    if not spec.chat_template:
        return "prompt-completion"
    if spec.messages_field in columns and not spec.prompt_template:
        return "chat-messages"
    if not spec.prompt_template and "prompt" not in columns:
        raise InputError(
            f"chatTemplate needs a {spec.messages_field!r} column, a 'prompt' column or promptTemplate; "
            f"columns found: {', '.join(columns)}",
            field="dataset.chatTemplate",
        )
    if not spec.completion_template and "completion" not in columns:
        raise InputError(
            f"chatTemplate needs a 'completion' column or completionTemplate; columns found: {', '.join(columns)}",
            field="dataset.chatTemplate",
        )
    return "chat-prompt-completion"


def _chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], *, generation_prompt: bool
) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _template(template: str | None, field_name: str) -> str:
    """A template the rendering mode is built on: render_mode chose the mode because it is set."""
    if template is None:  # not reached: DatasetSpec's validators and render_mode guarantee it
        raise InputError("this rendering mode needs the template", field=field_name)
    return template


def render_example(
    row: dict[str, Any], spec: DatasetSpec, mode: str, tokenizer: PreTrainedTokenizerBase
) -> Example:
    """Turn one row into prompt text and answer text."""
    if mode == "text":
        text = _template(spec.text_template, "dataset.textTemplate").format(**row)
        return Example(prompt_text="", completion_text=text, answer="")
    if mode == "prompt-completion":
        answer = _template(spec.completion_template, "dataset.completionTemplate").format(**row)
        eos = tokenizer.eos_token or ""
        prompt_text = _template(spec.prompt_template, "dataset.promptTemplate").format(**row)
        return Example(prompt_text, answer + eos, answer)
    if mode == "chat-messages":
        messages = list(row[spec.messages_field])
        if not messages or messages[-1].get("role") != "assistant":
            raise InputError(
                f"each {spec.messages_field!r} list must end with an assistant message",
                field="dataset.messagesField",
            )
        prompt = _chat(tokenizer, messages[:-1], generation_prompt=True)
        full = _chat(tokenizer, messages, generation_prompt=False)
        return _split_chat(prompt, full, messages[-1]["content"])
    prompt_text = spec.prompt_template.format(**row) if spec.prompt_template else str(row["prompt"])
    answer = spec.completion_template.format(**row) if spec.completion_template else str(row["completion"])
    messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    messages.append({"role": "user", "content": prompt_text})
    prompt = _chat(tokenizer, messages, generation_prompt=True)
    full = _chat(tokenizer, [*messages, {"role": "assistant", "content": answer}], generation_prompt=False)
    return _split_chat(prompt, full, answer)


def _split_chat(prompt: str, full: str, answer: str) -> Example:
    if not full.startswith(prompt):
        raise InputError(
            "the tokenizer's chat template renders the prompt differently with and without the answer; "
            "use promptTemplate/completionTemplate without chatTemplate",
            field="dataset.chatTemplate",
        )
    return Example(prompt_text=prompt, completion_text=full[len(prompt) :], answer=answer)


def tokenize_example(
    example: Example, tokenizer: PreTrainedTokenizerBase, *, max_length: int, completion_only: bool
) -> tuple[list[int], list[int], bool]:
    """input_ids and labels (prompt masked when ``completion_only``), and whether it was truncated."""
    prompt_ids = (
        tokenizer(example.prompt_text, add_special_tokens=False)["input_ids"] if example.prompt_text else []
    )
    completion_ids = tokenizer(example.completion_text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    # Chat templates carry their own start tokens; plain text gets BOS if the model uses one.
    needs_bos = (
        bos is not None
        and not example.prompt_text.startswith(tokenizer.bos_token or "\0")
        and getattr(tokenizer, "add_bos_token", False)
    )
    if needs_bos:
        prompt_ids = [bos, *prompt_ids]
    input_ids = prompt_ids + completion_ids
    prompt_labels = [IGNORE_INDEX] * len(prompt_ids) if completion_only else list(prompt_ids)
    labels = prompt_labels + completion_ids
    truncated = len(input_ids) > max_length
    return input_ids[:max_length], labels[:max_length], truncated


# -- the step --------------------------------------------------------------------------------


def _fingerprint(splits: dict[str, datasets.Dataset], spec: DatasetSpec) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"train": spec.train_split, "eval": spec.eval_split}, sort_keys=True).encode())
    for name in sorted(splits):
        digest.update(f"\0split:{name}\0".encode())
        for row in splits[name]:
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
            digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def _tokenize_split(
    ds: datasets.Dataset, spec: DatasetSpec, mode: str, tokenizer: PreTrainedTokenizerBase
) -> tuple[dict[str, list], list[Example], SplitStats]:
    stats = SplitStats(rows=len(ds))
    columns: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    examples: list[Example] = []
    for row in ds:
        example = render_example(row, spec, mode, tokenizer)
        input_ids, labels, truncated = tokenize_example(
            example, tokenizer, max_length=spec.max_seq_length, completion_only=spec.loss_on_completion_only
        )
        stats.truncated += truncated
        if all(label == IGNORE_INDEX for label in labels):
            stats.dropped += 1  # the answer was cut off: no training signal left
            continue
        stats.tokens += len(input_ids)
        stats.label_tokens += sum(label != IGNORE_INDEX for label in labels)
        stats.max_length = max(stats.max_length, len(input_ids))
        columns["input_ids"].append(input_ids)
        columns["labels"].append(labels)
        columns["length"].append(len(input_ids))
        examples.append(example)
    return columns, examples, stats


def check_dataset(
    spec: DatasetSpec, *, seed: int, cache_dir: Path, field_prefix: str = "dataset"
) -> tuple[datasets.Dataset, datasets.Dataset | None, str]:
    """Load the splits and check every field the spec names: fails fast, before any model is loaded.

    ``field_prefix``: where the dataset sits in the spec (``evaluation.dataset``); its URI is
    read (pinned, recorded in the lineage) under that field.  Other errors name ``dataset.*``
    fields, which the caller places (:func:`field_under`).
    """
    train_raw, eval_raw = load_splits(spec, seed=seed, cache_dir=cache_dir, uri_field=f"{field_prefix}.uri")
    mode = render_mode(spec, list(train_raw.column_names))
    if eval_raw is not None:
        render_mode(spec, list(eval_raw.column_names))
    return train_raw, eval_raw, mode


def field_under(prefix: str, field: str | None) -> str | None:
    """A ``dataset.*`` error field placed where the dataset sits in the spec (``prefix``)."""
    if field is None or field.startswith(f"{prefix}.") or not field.startswith("dataset"):
        return field
    return f"{prefix}{field.removeprefix('dataset')}"


def fingerprint_dataset(spec: DatasetSpec, *, seed: int, cache_dir: Path) -> str:
    """Check the dataset (as :func:`check_dataset`) and return the fingerprint data prep would record."""
    train_raw, eval_raw, _mode = check_dataset(spec, seed=seed, cache_dir=cache_dir)
    return _fingerprint({"train": train_raw, **({"eval": eval_raw} if eval_raw is not None else {})}, spec)


def prepare_data(
    spec: DatasetSpec,
    *,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    seed: int,
    cache_dir: Path,
    loaded: tuple[datasets.Dataset, datasets.Dataset | None, str] | None = None,
) -> DataStats:
    """Run data prep into ``out_dir`` and return the statistics it also writes to stats.json."""
    import datasets

    train_raw, eval_raw, mode = loaded or check_dataset(spec, seed=seed, cache_dir=cache_dir)
    columns = list(train_raw.column_names)

    train_cols, _, train_stats = _tokenize_split(train_raw, spec, mode, tokenizer)
    if not train_cols["input_ids"]:
        raise InputError(
            f"every training row was truncated before its answer; raise maxSeqLength ({spec.max_seq_length})",
            field="dataset.maxSeqLength",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(train_cols).save_to_disk(str(out_dir / "train"))

    eval_stats = None
    if eval_raw is not None:
        eval_cols, eval_examples, eval_stats = _tokenize_split(eval_raw, spec, mode, tokenizer)
        if eval_cols["input_ids"]:
            datasets.Dataset.from_dict(eval_cols).save_to_disk(str(out_dir / "eval"))
        with (out_dir / "eval_prompts.jsonl").open("w") as fh:
            for example in eval_examples:
                fh.write(json.dumps(asdict(example)) + "\n")

    splits = {"train": train_raw, **({"eval": eval_raw} if eval_raw is not None else {})}
    stats = DataStats(
        fingerprint=_fingerprint(splits, spec),
        columns=columns,
        mode=mode,
        train=train_stats,
        eval=eval_stats,
        splits={
            "train": spec.train_split,
            "eval": spec.eval_split or (f"{spec.eval_fraction:g} of train" if spec.eval_fraction else ""),
        },
    )
    (out_dir / "stats.json").write_text(json.dumps(stats.to_json(), indent=2))
    return stats


def evaluation_examples(
    spec: DatasetSpec,
    *,
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    cache_dir: Path,
    field_prefix: str = "dataset",
) -> list[Example]:
    """Rendered examples of the spec's eval split (or of its train split when it has none)."""
    try:
        _train, eval_raw, mode = check_dataset(
            spec, seed=seed, cache_dir=cache_dir, field_prefix=field_prefix
        )
    except InputError as exc:
        raise InputError(exc.message, field=field_under(field_prefix, exc.field)) from exc
    rows = eval_raw if eval_raw is not None else _train
    return [render_example(row, spec, mode, tokenizer) for row in rows]


def calibration_token_rows(
    spec: DatasetSpec, *, tokenizer: PreTrainedTokenizerBase, cache_dir: Path, limit: int
) -> list[list[int]]:
    """Token ids of the first ``limit`` training rows (prompt and answer), for quantizer calibration."""
    train = load_split(spec, spec.train_split, cache_dir=cache_dir, field_name="dataset.trainSplit")
    mode = render_mode(spec, list(train.column_names))
    rows = []
    for row in train.select(range(min(limit, len(train)))):
        example = render_example(row, spec, mode, tokenizer)
        ids, _labels, _truncated = tokenize_example(
            example, tokenizer, max_length=spec.max_seq_length, completion_only=False
        )
        rows.append(ids)
    return rows


def read_eval_examples(data_dir: Path) -> list[Example]:
    path = data_dir / "eval_prompts.jsonl"
    if not path.exists():
        return []
    return [Example(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
