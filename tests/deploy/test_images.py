"""The Dockerfiles follow the rules that can be checked without a Docker engine."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))
EXACT_TAG = re.compile(r"^[\w.\-/]+:\d[\w.\-]*$")  # name:1.2.3... (a version, not a moving tag)


def instructions(path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def args_of(steps) -> dict[str, str]:
    found = {}
    for op, rest in steps:
        if op == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            found[name.strip()] = value.strip()
    return found


def test_there_is_one_image_per_role():
    assert {p.parent.name for p in DOCKERFILES} == {
        "operator",
        "trainer",
        "optimizer",
        "optimizer-cuda",
        "server",
    }


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_bases_are_pinned_exactly(path):
    steps = instructions(path)
    args = args_of(steps)
    bases = [rest.split()[0] for op, rest in steps if op == "FROM"]
    assert len(bases) >= 2, "multi-stage: build and runtime stages"
    for base in bases:
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
        name, _, digest = resolved.partition("@")
        assert EXACT_TAG.match(name), resolved  # a readable version ...
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), resolved  # ... and the bytes it was tested with


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_final_stage_runs_as_a_non_root_user(path):
    steps = instructions(path)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [rest.split(":")[0] for op, rest in final if op == "USER"]
    assert users and users[-1] not in ("root", "0"), users


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.parent.name)
def test_installs_are_constrained_and_hold_no_secrets(path):
    steps = instructions(path)
    installs = [rest for op, rest in steps if op == "RUN" and "pip install" in rest]
    assert installs and all("-c /src/constraints.txt" in rest for rest in installs)
    for op, rest in steps:
        if op in ("ENV", "ARG"):
            names = re.findall(r"(\w+)\s*=", rest)
            leaks = [
                n
                for n in names
                if re.search(r"(SECRET|PASSWORD|_TOKEN$|^TOKEN$|ACCESS_KEY)", n, re.IGNORECASE)
            ]
            assert not leaks, leaks


def test_the_build_context_is_small():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[0] == "**" or "**" in ignore  # everything out, then what the images need back in
    assert {"!pyproject.toml", "!constraints.txt", "!operator/", "!pipelines/"} <= set(ignore)
