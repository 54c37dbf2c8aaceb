"""The input cache trusts nothing: every use lists the source with the job's own keys.

Reproductions of what an earlier release did (a cache entry keyed by the URI's text, served
without asking the store): a copy filled with team A's keys served to keys that cannot
read the bucket, and a model replaced in place never read again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from slmops_pipelines.errors import JobError
from slmops_pipelines.models import input_cache, resolve_model
from slmops_pipelines.specs import ModelSpec
from slmops_pipelines.storage import open_store


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SLMOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SLMOPS_CACHE_MAX_GB", raising=False)
    return tmp_path / "cache"


def upload(folder: Path, uri: str) -> None:
    open_store(uri).upload_dir(folder, "")


def test_a_cached_model_is_not_served_to_keys_that_cannot_read_it(
    tiny_model: Path, s3_env, s3_bucket, cache_dir, monkeypatch
):
    uri = f"s3://{s3_bucket}/private/model"
    upload(tiny_model, uri)
    monkeypatch.setenv("SLMOPS_MODEL_AWS_ACCESS_KEY_ID", s3_env.access_key)  # team A's keys
    monkeypatch.setenv("SLMOPS_MODEL_AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    assert (resolve_model(ModelSpec(uri=uri)) / "config.json").is_file()
    monkeypatch.setenv("SLMOPS_MODEL_AWS_ACCESS_KEY_ID", "team-b-key")  # team B's keys: not for this bucket
    monkeypatch.setenv("SLMOPS_MODEL_AWS_SECRET_ACCESS_KEY", "team-b-secret")
    with pytest.raises(JobError) as refused:
        resolve_model(ModelSpec(uri=uri))
    assert refused.value.field == "model.uri" and "credentials" in refused.value.message


def test_a_source_on_another_endpoint_is_another_source(
    tiny_model: Path, s3_env, s3_bucket, cache_dir, monkeypatch
):
    """The same URI text on an endpoint that does not hold it: the job fails, whatever the cache holds."""
    uri = f"s3://{s3_bucket}/models/tiny"
    upload(tiny_model, uri)
    resolve_model(ModelSpec(uri=uri))
    monkeypatch.setenv("SLMOPS_MODEL_AWS_ACCESS_KEY_ID", s3_env.access_key)
    monkeypatch.setenv("SLMOPS_MODEL_AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    monkeypatch.setenv("SLMOPS_MODEL_AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nobody serves it there
    with pytest.raises(JobError) as refused:
        resolve_model(ModelSpec(uri=uri))
    assert refused.value.field == "model.uri"


def test_a_model_replaced_in_place_is_read_again(tiny_model: Path, s3_env, s3_bucket, cache_dir, tmp_path):
    from slmops_pipelines.specs import FineTuneJobSpec
    from tests.conftest import finetune_manifest

    uri = f"s3://{s3_bucket}/models/replaced"
    upload(tiny_model, uri)
    manifest = finetune_manifest("replaced", tiny_model)
    manifest["spec"]["model"]["uri"] = uri
    spec = FineTuneJobSpec.model_validate(manifest["spec"])
    first = resolve_model(spec.model)
    [first_digest] = input_cache.read_digests(spec).values()  # what the manifest's lineage records
    config = json.loads((tiny_model / "config.json").read_text())
    config["slmops_revision"] = 2
    open_store(uri).write_text("config.json", json.dumps(config))
    second = resolve_model(ModelSpec(uri=uri))
    assert second != first and json.loads((second / "config.json").read_text())["slmops_revision"] == 2
    assert (first / "config.json").is_file()  # a job that started on the first keeps it
    assert input_cache.read_digests(spec) == {"model.uri": input_cache.READ["model.uri"][1]}
    assert first_digest.startswith("sha256:") and input_cache.READ["model.uri"][1] != first_digest


def test_two_jobs_filling_one_entry_at_once_share_one_complete_entry(
    tiny_model: Path, s3_env, s3_bucket, cache_dir
):
    uri = f"s3://{s3_bucket}/models/together"
    upload(tiny_model, uri)
    found: list[Path] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            found.append(resolve_model(ModelSpec(uri=uri)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(found)) == 1
    inputs = cache_dir / "inputs"
    assert [p.name for p in inputs.iterdir()] == [found[0].name], "a partial folder was left behind"
    assert sorted(p.name for p in found[0].iterdir() if not p.name.startswith(".slmops")) == sorted(
        p.name for p in tiny_model.iterdir()
    )


HOLD = """
import sys, time
from slmops_pipelines.models import resolve_model
from slmops_pipelines.specs import ModelSpec
print(resolve_model(ModelSpec(uri=sys.argv[1])), flush=True)
if sys.argv[2] == "hold":
    time.sleep(120)
"""


def test_eviction_keeps_what_is_in_use_and_the_cli_shows_it(tiny_model: Path, s3_env, s3_bucket, cache_dir):
    uris = [f"s3://{s3_bucket}/models/{name}" for name in ("old", "held")]
    for uri in uris:
        upload(tiny_model, uri)
    old = subprocess.run(
        [sys.executable, "-c", HOLD, uris[0], "exit"], capture_output=True, text=True, check=True
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, uris[1], "hold"], stdout=subprocess.PIPE, text=True
    )
    try:
        held = Path(holder.stdout.readline().strip())
        listed = json.loads(
            subprocess.run(
                [sys.executable, "-m", "slmops_operator.cli.main", "cache", "ls", "-o", "json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            or "[]"
        )
        by_path = {Path(e["path"]): e for e in listed}
        assert by_path[held]["inUse"] is True and by_path[Path(old.stdout.strip())]["inUse"] is False
        assert by_path[held]["uri"] == uris[1]
        removed = input_cache.prune(max_bytes=0)
        assert [e.path for e in removed] == [Path(old.stdout.strip())]
        assert held.is_dir()
    finally:
        holder.kill()
        holder.wait()
    assert [e.path for e in input_cache.prune(max_bytes=0)] == [held]  # nobody holds it now


def replace_config(uri: str, tiny_model: Path, revision: int) -> None:
    config = json.loads((tiny_model / "config.json").read_text())
    config["slmops_revision"] = revision
    open_store(uri).write_text("config.json", json.dumps(config))


def test_a_model_replaced_while_a_run_reads_it_fails_the_run_naming_the_field(
    tiny_model: Path, s3_env, s3_bucket, cache_dir
):
    """Inside one run the first read pins the source: a second version is never mixed in."""
    uri = f"s3://{s3_bucket}/models/mid-run"
    upload(tiny_model, uri)
    with input_cache.one_run():
        first = resolve_model(ModelSpec(uri=uri))
        assert resolve_model(ModelSpec(uri=uri)) == first  # unchanged: the same entry
        replace_config(uri, tiny_model, 2)
        with pytest.raises(JobError) as changed:
            resolve_model(ModelSpec(uri=uri))
    assert changed.value.field == "model.uri" and "changed while the job ran" in changed.value.message
    assert (resolve_model(ModelSpec(uri=uri)) / "config.json").is_file()  # a new run reads the new one


def test_a_pipelines_later_step_reads_the_inputs_its_first_step_read(
    tiny_model: Path, s3_env, s3_bucket, cache_dir, tmp_path
):
    """KFP steps run in their own pods: the pins travel in the output location, step to step."""
    from slmops_pipelines.kubeflow.tasks.common import pinned_inputs
    from slmops_pipelines.stages.outputs import recorded_inputs

    uri = f"s3://{s3_bucket}/models/pipeline"
    upload(tiny_model, uri)
    out = str(tmp_path / "out")

    @pinned_inputs(first_step=True)
    def inspect(*, output_uri: str) -> str:
        return input_cache.pins()["model.uri"] if resolve_model(ModelSpec(uri=uri)) else ""

    @pinned_inputs()
    def train(*, output_uri: str) -> Path:
        return resolve_model(ModelSpec(uri=uri))

    pinned = inspect(output_uri=out)
    assert recorded_inputs(out) == {"model.uri": pinned}
    assert (train(output_uri=out) / "config.json").is_file()  # unchanged: the step reads it
    replace_config(uri, tiny_model, 3)
    with pytest.raises(JobError) as changed:
        train(output_uri=out)  # another pod, after the model was replaced: refused
    assert changed.value.field == "model.uri"
    assert inspect(output_uri=out) != pinned  # a new run starts the record afresh
    assert (train(output_uri=out) / "config.json").is_file()


def test_the_optimize_source_fingerprint_follows_the_adapters_content(
    tiny_model, s3_env, s3_bucket, cache_dir
):
    """A pipeline's source step is cached on this fingerprint: an adapter replaced in place changes it."""
    from slmops_pipelines.kubeflow.tasks.optimize import source_fingerprint
    from slmops_pipelines.specs import OptimizeJobSpec

    upload(tiny_model, f"s3://{s3_bucket}/fp/base")
    for name in ("a", "b"):
        open_store(f"s3://{s3_bucket}/fp/{name}").write_text("adapter_config.json", json.dumps({"r": 8}))
    spec = OptimizeJobSpec.model_validate(
        {
            "source": {
                "model": {"uri": f"s3://{s3_bucket}/fp/base"},
                "adapters": [{"name": n, "uri": f"s3://{s3_bucket}/fp/{n}"} for n in ("a", "b")],
            },
            "targets": [
                {
                    "name": "cpu",
                    "provider": "CPUExecutionProvider",
                    "precision": "fp32",
                    "mergeAdapter": False,
                }
            ],
        }
    )
    before = source_fingerprint(spec, "")
    assert source_fingerprint(spec, "") == before
    open_store(f"s3://{s3_bucket}/fp/b").write_text("adapter_config.json", json.dumps({"r": 16}))
    assert source_fingerprint(spec, "") != before


def test_each_evaluation_dataset_is_read_under_its_own_field(s3_env, s3_bucket, cache_dir, tmp_path):
    """Two adapters' datasets in one run: each pinned and recorded under its spec field, not one."""
    from slmops_pipelines.specs import DatasetSpec
    from slmops_pipelines.steps.data import check_dataset

    fields = {}
    for n, rows in enumerate((["a", "b"], ["c", "d", "e"])):
        uri = f"s3://{s3_bucket}/eval/{n}.jsonl"
        open_store(uri.rsplit("/", 1)[0]).write_text(
            f"{n}.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in rows)
        )
        fields[f"source.adapters[{n}].evaluation.dataset"] = DatasetSpec.model_validate(
            {"uri": uri, "textTemplate": "{text}"}
        )
    with input_cache.one_run():
        for prefix, spec in fields.items():
            check_dataset(spec, seed=0, cache_dir=cache_dir, field_prefix=prefix)
        pinned = input_cache.pins()
    assert set(pinned) == {f"{prefix}.uri" for prefix in fields}
    assert len(set(pinned.values())) == 2
