"""Ownership of an output location: a claim names its job (and uid); deleting touches only what a job owns.

The same rules for a local folder and for S3 (a real SeaweedFS).
"""

from __future__ import annotations

import json

import pytest

from slmops_pipelines import jobs
from slmops_pipelines.errors import InputError
from slmops_pipelines.specs import FineTuneJobSpec
from slmops_pipelines.steps.publish import CLAIM, claim_output, delete_owned_output
from slmops_pipelines.storage import open_store
from tests.conftest import finetune_manifest

SPEC = FineTuneJobSpec.model_validate(finetune_manifest("j", "/models/tiny")["spec"])


def identity(name: str, uid: str) -> dict:
    kind = jobs.job_kind("FineTuneJob")
    return kind.new_run(name, SPEC, default_output="unused", namespace="team-a", uid=uid).identity()


def write_output(uri: str, owner: dict, files=("adapter/adapter_model.safetensors", "metrics.json")) -> None:
    store = open_store(uri)
    claim_output(store, owner)
    for key in files:
        store.write_text(key, "x")


def keys(uri: str) -> list[str]:
    return [info.key for info in open_store(uri).list("")]


def test_the_claim_records_the_uid_and_refuses_another_job(root):
    write_output(f"{root}/a", identity("a", "uid-a"))
    assert json.loads(open_store(f"{root}/a").read_text(CLAIM))["uid"] == "uid-a"
    with pytest.raises(InputError, match="already holds the output of FineTuneJob team-a/a"):
        claim_output(open_store(f"{root}/a"), identity("b", "uid-b"))


def test_a_recreated_job_takes_its_claim_over(root):
    write_output(f"{root}/a", identity("a", "uid-old"))
    claim_output(open_store(f"{root}/a"), identity("a", "uid-new"))
    assert json.loads(open_store(f"{root}/a").read_text(CLAIM))["uid"] == "uid-new"


def test_deleting_removes_everything_the_job_owns(root):
    write_output(f"{root}/a", identity("a", "uid-a"))
    cleanup = delete_owned_output(open_store(f"{root}/a"), uid="uid-a")
    assert cleanup.deleted == 3 and cleanup.kept == []
    assert keys(f"{root}/a") == []


def test_another_jobs_output_is_never_deleted(root):
    """Job B pointed its output at A's and was refused: deleting B leaves A's output alone."""
    write_output(f"{root}/a", identity("a", "uid-a"))
    before = keys(f"{root}/a")
    cleanup = delete_owned_output(open_store(f"{root}/a"), uid="uid-b")
    assert cleanup.deleted == 0 and "claimed by FineTuneJob team-a/a (uid uid-a)" in cleanup.kept[0]
    assert keys(f"{root}/a") == before


def test_an_unclaimed_output_is_never_deleted(root):
    store = open_store(f"{root}/never-claimed")
    store.write_text("precious.bin", "x")
    cleanup = delete_owned_output(store, uid="uid-a")
    assert cleanup.deleted == 0 and "never claimed" in cleanup.kept[0]
    assert keys(f"{root}/never-claimed") == ["precious.bin"]
    assert delete_owned_output(open_store(f"{root}/a"), uid="").deleted == 0


def test_outputs_of_other_jobs_nested_inside_are_kept(root):
    write_output(f"{root}/a", identity("a", "uid-a"))
    write_output(f"{root}/a/nested-b", identity("b", "uid-b"))
    cleanup = delete_owned_output(open_store(f"{root}/a"), uid="uid-a")
    assert cleanup.deleted == 3
    assert sorted(keys(f"{root}/a")) == [
        "nested-b/.slmops/job.json",
        "nested-b/adapter/adapter_model.safetensors",
        "nested-b/metrics.json",
    ]
    assert "team-a/b" in cleanup.kept[0]
