"""The numbered examples: thirteen, each valid, each saying what it shows and how to run it.

The slow suite runs those that can run on this machine (tests/slow/test_examples.py); here
every one passes ``slmops validate``, names files that exist and jobs that the examples
define, and the cluster ones pull everything they need from hf://, s3:// or pvc://.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from slmops_operator.cli.main import cli
from tests.conftest import REPO

EXAMPLES_DIR = REPO / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
NUMBERED = re.compile(r"^(\d\d)-[a-z0-9]+(-[a-z0-9]+)*\.yaml$")
# Where each runs: on this machine (slmops run) or on a cluster only (kubectl, Argo CD).
CLUSTER_ONLY = {"10", "11", "12", "13", "14", "15"}
COMMAND = re.compile(r"^#\s+(slmops run|kubectl (-n \S+ )?apply -f)\s")
REMOTE = ("hf://", "s3://", "pvc://")


def number(path: Path) -> str:
    return path.name[:2]


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def jobs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in documents(path) if doc["apiVersion"].startswith("slmops.io/")]


def comment_block(path: Path) -> list[str]:
    """The lines of the comment block the file opens with."""
    block = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        block.append(line)
    return block


def uris(node: Any) -> list[str]:
    """Every ``uri`` value in a manifest, at any depth."""
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "uri" and isinstance(v, str)]
        return found + [u for k, v in node.items() if k != "uri" for u in uris(v)]
    if isinstance(node, list):
        return [u for item in node for u in uris(item)]
    return []


def all_jobs() -> dict[str, tuple[Path, dict[str, Any]]]:
    return {job["metadata"]["name"]: (path, job) for path in EXAMPLES for job in jobs(path)}


def test_there_are_exactly_fifteen_numbered_examples():
    names = [path.name for path in EXAMPLES]
    assert all(NUMBERED.match(name) for name in names), names
    assert [number(path) for path in EXAMPLES] == [f"{n:02d}" for n in range(1, 16)], names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_slmops_validate(path: Path):
    result = CliRunner().invoke(cli, ["validate", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for doc in documents(path):
        name = doc["metadata"]["name"]
        if doc["apiVersion"].startswith("slmops.io/"):
            assert f"valid {doc['kind']} {name}" in lines, result.output
        else:
            assert f"skipped: {doc['kind']}/{name} (not an slmops.io resource)" in lines, result.output


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_opens_with_what_it_shows_and_how_to_run_it(path: Path):
    block = comment_block(path)
    assert block and re.match(rf"^# {number(path)}: \S", block[0]), f"{path.name}: no '# NN: title' line"
    assert any(line.startswith("# Shows: ") for line in block), f"{path.name}: no 'Shows:' paragraph"
    commands = [line for line in block if COMMAND.match(line)]
    assert any(f"examples/{path.name}" in line for line in commands), (
        f"{path.name}: no `slmops run` or `kubectl apply -f` command naming examples/{path.name}"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_files_the_comments_name_exist(path: Path):
    text = "\n".join(comment_block(path))
    # Repository paths, not the tails of URIs (s3://slmops/examples/... names a bucket's prefix).
    named = set(re.findall(r"(?<![\w/:.-])((?:examples|deploy|docs|scripts)/[\w./-]*[\w-])", text))
    missing = sorted(name for name in named if not (REPO / name).exists())
    assert not missing, f"{path.name} names files that do not exist: {missing}"


def test_job_names_are_unique_across_examples():
    names = [job["metadata"]["name"] for path in EXAMPLES for job in jobs(path)]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("path", [p for p in EXAMPLES if number(p) not in CLUSTER_ONLY], ids=lambda p: p.name)
def test_local_examples_read_files_that_exist(path: Path):
    """Paths are relative to the repository root; the demo model and the runs/ of earlier examples are made."""
    produced = {job["metadata"]["name"] for _, job in all_jobs().values()}
    for job in jobs(path):
        for uri in uris(job["spec"]):
            if uri.startswith(("s3://", "hf://")) or uri == ".cache/models/SmolLM2-135M-Instruct":
                continue
            if uri.startswith("runs/"):
                assert uri.split("/")[1] in produced, f"{uri}: no example job writes runs/{uri.split('/')[1]}"
                continue
            assert (REPO / uri).exists(), f"{path.name}: {uri} does not exist"


@pytest.mark.parametrize("path", [p for p in EXAMPLES if number(p) in CLUSTER_ONLY], ids=lambda p: p.name)
def test_cluster_examples_pull_everything_they_need(path: Path):
    """A pod has none of this repository's files: models, data and outputs come by URI."""
    for job in jobs(path):
        for uri in uris(job["spec"]):
            assert uri.startswith(REMOTE), f"{path.name}: {uri} is a local path, which a cluster's pods lack"


def test_optimize_examples_refer_to_example_jobs_and_say_to_run_them_first():
    found = all_jobs()
    refs = 0
    for path, job in found.values():
        ref = job["spec"].get("source", {}).get("fineTuneJobRef")
        if ref is None:
            continue
        refs += 1
        assert ref["name"] in found, f"{path.name}: fineTuneJobRef {ref['name']} is not an example's job"
        source_path, source = found[ref["name"]]
        assert source["kind"] == "FineTuneJob"
        commands = [line for line in comment_block(path) if COMMAND.match(line)]
        assert any(f"examples/{source_path.name}" in line for line in commands), (
            f"{path.name}: its run commands do not run {source_path.name} first"
        )
    assert refs >= 2


def test_the_multi_adapter_example_has_two_adapters_of_one_base_from_earlier_examples():
    [path] = [p for p in EXAMPLES if number(p) == "09"]
    [job] = jobs(path)
    source = job["spec"]["source"]
    assert len(source["adapters"]) == 2 and "fineTuneJobRef" not in source
    assert all(t["mergeAdapter"] is False for t in job["spec"]["targets"])
    for adapter in source["adapters"]:
        producer = all_jobs()[adapter["uri"].split("/")[1]][1]
        assert producer["spec"]["model"]["uri"] == source["model"]["uri"], adapter
        assert producer["spec"]["method"] == "lora", "only plain LoRA adapters can be kept separate"


def test_the_argocd_application_syncs_the_cluster_examples():
    [path] = [p for p in EXAMPLES if number(p) == "12"]
    [app] = documents(path)
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    source = app["spec"]["source"]
    assert source["path"] == "examples"
    included = re.fullmatch(r"\{(.+)\}", source["directory"]["include"])
    assert included, source["directory"]["include"]
    synced = [EXAMPLES_DIR / name for name in included.group(1).split(",")]
    assert synced and all(p.is_file() and number(p) in CLUSTER_ONLY for p in synced), synced
    names = {job["metadata"]["name"] for p in synced for job in jobs(p)}
    for p in synced:  # an OptimizeJob synced without its FineTuneJob would wait forever
        for job in jobs(p):
            ref = job["spec"].get("source", {}).get("fineTuneJobRef")
            assert ref is None or ref["name"] in names, f"{p.name}: {ref} is not synced"
    assert app["spec"]["destination"]["namespace"]


def test_the_readme_lists_every_example():
    readme = (REPO / "README.md").read_text()
    for path in EXAMPLES:
        assert f"examples/{path.name}" in readme, f"README.md does not list {path.name}"


@pytest.mark.parametrize("number", ["01", "02", "03", "04", "05", "06", "07", "08", "09"])
def test_what_the_slow_suite_runs_is_still_a_valid_job(number, tmp_path):
    """tests/slow/test_examples.py runs the local examples with small overrides: still valid jobs."""
    from slmops_operator.api.manifests import load_resources
    from tests.slow.test_examples import CASES, SMALL_TRAINING, prepared

    assert number in CASES or number == "06"  # 06 has a test of its own, with an S3 server
    [resource] = load_resources([Path(prepared(number, tmp_path))])
    if resource.kind_name == "FineTuneJob":
        assert resource.spec.training.max_steps == SMALL_TRAINING["maxSteps"]
    for adapter in resource.spec.model_dump().get("source", {}).get("adapters") or []:
        assert Path(adapter["uri"]).is_relative_to(tmp_path / "runs"), adapter
