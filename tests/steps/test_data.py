"""Data prep: loading, slicing, rendering, masking, counting, fingerprinting and bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from slmops_pipelines.errors import InputError
from slmops_pipelines.specs import DatasetSpec
from slmops_pipelines.steps.data import IGNORE_INDEX, prepare_data, read_eval_examples


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    return AutoTokenizer.from_pretrained(tiny_model)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prep(tokenizer, tmp_path: Path, **dataset):
    spec = DatasetSpec.model_validate(dataset)
    return prepare_data(
        spec, tokenizer=tokenizer, out_dir=tmp_path / "out", seed=0, cache_dir=tmp_path / "cache"
    )


def test_chat_prompt_completion_masks_the_prompt(tokenizer, tmp_path, tone_data):
    stats = prep(
        tokenizer,
        tmp_path,
        uri=str(tone_data),
        trainSplit="train[:10]",
        evalSplit="eval[:4]",
        chatTemplate=True,
        promptTemplate="Tone of: {phrase}",
        completionTemplate="{tone}",
    )
    assert stats.mode == "chat-prompt-completion"
    assert (stats.train.rows, stats.eval.rows) == (10, 4)
    import datasets

    row = datasets.load_from_disk(str(tmp_path / "out" / "train"))[0]
    labels = row["labels"]
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert all(label == IGNORE_INDEX for label in labels[:first])
    answer = tokenizer.decode(labels[first:])
    first_row = json.loads((tone_data / "train.jsonl").read_text().splitlines()[0])
    assert answer == first_row["tone"] + "<|im_end|>\n"
    examples = read_eval_examples(tmp_path / "out")
    assert len(examples) == 4 and examples[0].prompt_text.endswith("<|im_start|>assistant\n")
    assert stats.train.label_tokens < stats.train.tokens


def test_text_template_trains_on_every_token(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello world"}, {"text": "tone calm"}])
    stats = prep(tokenizer, tmp_path, uri=str(data), textTemplate="{text}")
    assert stats.mode == "text" and stats.train.label_tokens == stats.train.tokens


def test_messages_column(tokenizer, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "calm"}]}] * 3
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    stats = prep(tokenizer, tmp_path, uri=str(data), chatTemplate=True, evalFraction=0.34)
    assert stats.mode == "chat-messages"
    assert stats.train.rows + stats.eval.rows == 3


def test_csv_and_parquet_and_slices(tokenizer, tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"q": [f"q{i}" for i in range(20)], "a": [f"a{i}" for i in range(20)]})
    frame.to_csv(tmp_path / "data.csv", index=False)
    frame.to_parquet(tmp_path / "data.parquet")
    for name in ("data.csv", "data.parquet"):
        stats = prep(
            tokenizer,
            tmp_path,
            uri=str(tmp_path / name),
            trainSplit="train[:12]",
            evalSplit="train[12:15]",
            promptTemplate="{q} ->",
            completionTemplate=" {a}",
        )
        assert (stats.train.rows, stats.eval.rows) == (12, 3)


def test_fingerprint_is_stable_and_sensitive(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"row {i}"} for i in range(5)])
    first = prep(tokenizer, tmp_path / "a", uri=str(data), textTemplate="{text}").fingerprint
    again = prep(tokenizer, tmp_path / "b", uri=str(data), textTemplate="{text}").fingerprint
    write_jsonl(data, [{"text": f"row {i}"} for i in range(4)] + [{"text": "changed"}])
    changed = prep(tokenizer, tmp_path / "c", uri=str(data), textTemplate="{text}").fingerprint
    assert first == again != changed and first.startswith("sha256:")


def test_truncation_is_counted_and_answerless_rows_dropped(tokenizer, tmp_path):
    rows = [{"p": "word " * 40, "c": "answer"}, {"p": "short", "c": "answer"}]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    stats = prep(
        tokenizer, tmp_path, uri=str(data), promptTemplate="{p}", completionTemplate="{c}", maxSeqLength=16
    )
    assert stats.train.truncated == 1 and stats.train.dropped == 1 and stats.train.rows == 2


# -- bad data: one clear message naming the field --------------------------------------------


def test_missing_template_field_names_field_and_columns(tokenizer, tmp_path, tone_data):
    with pytest.raises(InputError) as info:
        prep(tokenizer, tmp_path, uri=str(tone_data), promptTemplate="{phrase}", completionTemplate="{label}")
    assert info.value.field == "dataset.completionTemplate"
    assert "field 'label' is not in the data; columns found: phrase, tone" in info.value.message


def test_missing_file(tokenizer, tmp_path):
    with pytest.raises(InputError) as info:
        prep(tokenizer, tmp_path, uri=str(tmp_path / "nope.jsonl"), textTemplate="{t}")
    assert info.value.field == "dataset.uri" and "file not found" in info.value.message


def test_empty_dataset(tokenizer, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    with pytest.raises(InputError) as info:
        prep(tokenizer, tmp_path, uri=str(data), textTemplate="{t}")
    assert info.value.field in ("dataset.trainSplit", "dataset.uri")
    assert "no rows" in info.value.message or "empty" in info.value.message.lower()


def test_unknown_split(tokenizer, tmp_path, tone_data):
    with pytest.raises(InputError) as info:
        prep(tokenizer, tmp_path, uri=str(tone_data), evalSplit="validation", textTemplate="{phrase}")
    assert info.value.field == "dataset.evalSplit"
    assert "split 'validation' not found; splits: eval, train" in info.value.message


def test_chat_without_prompt_source(tokenizer, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"x": 1}])
    with pytest.raises(InputError) as info:
        prep(tokenizer, tmp_path, uri=str(data), chatTemplate=True)
    assert info.value.field == "dataset.chatTemplate" and "columns found: x" in info.value.message
