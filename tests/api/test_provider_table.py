"""One table per (provider, precision, algorithm): validation, the CRD, placement and export agree with it."""

from __future__ import annotations

import itertools
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from slmops_pipelines.specs.optimize import Int4Algorithm, Int8Mode, OptimizeTarget, Provider, TargetPrecision
from slmops_pipelines.specs.providers import PROVIDERS, RECIPES, image_family, recipe

COMBINATIONS = [
    (provider, precision, algorithm)
    for provider, precision in itertools.product(typing.get_args(Provider), typing.get_args(TargetPrecision))
    for algorithm in (
        typing.get_args(Int4Algorithm)
        if precision == "int4"
        else typing.get_args(Int8Mode)
        if precision == "int8"
        else ("",)
    )
]


def target(provider: str, precision: str, algorithm: str) -> dict:
    quantization = {"int4": {"int4Algorithm": algorithm}, "int8": {"int8Mode": algorithm}}.get(precision, {})
    return {"name": "t", "provider": provider, "precision": precision, "quantization": quantization}


def test_the_table_has_a_row_for_every_combination_the_api_accepts():
    assert set(PROVIDERS) == set(typing.get_args(Provider))
    assert set(RECIPES) == set(COMBINATIONS)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=lambda c: "-".join(filter(None, c)))
def test_validation_accepts_exactly_what_the_table_supports(combination):
    row = recipe(*combination)
    try:
        OptimizeTarget.model_validate(target(*combination))
    except ValidationError as refused:
        assert not row.supported, str(refused)
        assert row.why_not in str(refused)
    else:
        assert row.supported, row.why_not


@pytest.mark.parametrize("combination", [c for c in COMBINATIONS if recipe(*c).supported], ids=str)
def test_export_builds_what_the_table_says(combination, tmp_path: Path):
    from slmops_pipelines.steps.optimize.export import builder_command

    command = builder_command(
        OptimizeTarget.model_validate(target(*combination)), tmp_path, tmp_path, tmp_path
    )
    row = recipe(*combination)
    assert command[command.index("-p") + 1] == row.builder_precision
    assert command[command.index("-e") + 1] == PROVIDERS[combination[0]].builder_ep


def test_gpu_providers_are_placed_in_the_cuda_image():
    assert {p for p in PROVIDERS if image_family(p) == "cuda"} == {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
    }
