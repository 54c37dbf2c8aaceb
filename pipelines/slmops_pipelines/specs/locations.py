"""Every place a job reads or writes, found from the spec's types: declared once, walked everywhere.

A spec part that names a location says so in its class (:attr:`SpecModel.location`): a
:class:`ModelSpec` is read with the model's Secret, a :class:`DatasetSpec` with the
dataset's, an adapter with the model's, an :class:`OutputSpec` is written with the
output's.  :func:`spec_locations` walks a validated spec and finds every such part
wherever it sits (``source.adapters[2].evaluation.dataset`` included), with its field path
in manifest spelling.

Admission (allowed roots, reserved paths, PVCs), the Secrets a job may use, the claims its
pods mount and pre-flight all walk this one list, so a new input field is covered
everywhere by being declared with one of these types (``tests/api/test_locations.py``
adds one in a test-only kind and shows every check sees it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

Purpose = Literal["output", "model", "dataset"]


@dataclass(frozen=True)
class LocationKind:
    """What a spec part that names a location is for: declared on its class."""

    purpose: Purpose  # whose credentials read it (see slmops_pipelines.credentials)
    read_only: bool  # an input (True) or the job's output (False)
    secret_attr: str | None  # the attribute naming its Secret; None: it has none of its own
    code_attr: str | None = None  # the attribute that lets the location's own Python run (trustRemoteCode)


@dataclass(frozen=True)
class Location:
    """One place a job reads or writes, as its spec names it."""

    field: str  # manifest spelling, without "spec.": "source.adapters[1].evaluation.dataset"
    uri: str  # "" for an output left to the engine's default
    purpose: Purpose
    read_only: bool
    secret: str | None = None  # the Secret it is read or written with
    secret_key: str = ""  # that Secret's field name: accessSecret, credentialsSecret
    code_field: str = ""  # set when the job runs code the location holds: "model.trustRemoteCode"

    @property
    def claim(self) -> str:
        """The PersistentVolumeClaim a ``pvc://`` location names ("" for any other)."""
        from slmops_pipelines.uris import pvc_claims

        return next(iter(pvc_claims([self.uri])), "")

    @property
    def uri_field(self) -> str:
        return f"{self.field}.uri"

    @property
    def secret_field(self) -> str:
        return f"{self.field}.{self.secret_key}" if self.secret_key else ""


@functools.cache
def _aliases(cls: type[BaseModel]) -> dict[str, str]:
    """A spec class's fields, attribute -> manifest spelling: asked once per class, since the
    operator walks every job's spec on every tick."""
    return {name: info.alias or name for name, info in cls.model_fields.items()}


def _alias(model: BaseModel, name: str) -> str:
    return _aliases(type(model))[name]


def _walk(value: object, path: str) -> Iterator[Location]:
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if isinstance(item, BaseModel | list | tuple):
                yield from _walk(item, f"{path}[{index}]")
        return
    if not isinstance(value, BaseModel):
        return
    kind: LocationKind | None = getattr(type(value), "location", None)
    if kind is not None:
        secret = getattr(value, kind.secret_attr) if kind.secret_attr else None
        secret_key = _alias(value, kind.secret_attr) if kind.secret_attr else ""
        runs_code = bool(kind.code_attr and getattr(value, kind.code_attr))
        code_field = f"{path}.{_alias(value, kind.code_attr)}" if runs_code and kind.code_attr else ""
        yield Location(
            field=path,
            uri=getattr(value, "uri", None) or "",
            purpose=kind.purpose,
            read_only=kind.read_only,
            secret=secret,
            secret_key=secret_key,
            code_field=code_field,
        )
    for name, alias in _aliases(type(value)).items():
        child = getattr(value, name)
        if isinstance(child, BaseModel | list | tuple):  # a scalar holds no location: not walked
            yield from _walk(child, f"{path}.{alias}" if path else alias)


def spec_locations(spec: object) -> list[Location]:
    """Every location the spec names, inputs and output, in field order."""
    return list(_walk(spec, ""))


def spec_inputs(spec: object) -> list[Location]:
    """What the job reads: models, adapters, datasets (each with its Secret, if any)."""
    return [loc for loc in spec_locations(spec) if loc.read_only]


def spec_remote_code(spec: object) -> list[Location]:
    """The locations whose own Python the job runs (a model with trustRemoteCode)."""
    return [loc for loc in spec_locations(spec) if loc.code_field]


def spec_claims(spec: object) -> list[str]:
    """The PersistentVolumeClaims the spec's locations name (its pods mount them), once each."""
    from slmops_pipelines.uris import pvc_claims

    return pvc_claims([loc.uri for loc in spec_locations(spec)])


def secret_conflicts(spec: object) -> list[str]:
    """Two locations of one purpose naming different Secrets (a pod gets one set of keys per purpose)."""
    first: dict[str, Location] = {}
    problems = []
    for loc in spec_locations(spec):
        if not loc.secret:
            continue
        seen = first.setdefault(loc.purpose, loc)
        if seen.secret != loc.secret:
            problems.append(
                f"{loc.secret_field}: must name the same Secret as {seen.secret_field} "
                f"({seen.secret!r}): a job's pods get one set of {loc.purpose} credentials"
            )
    return problems
