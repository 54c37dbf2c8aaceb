"""Reading manifests: multi-document YAML in, validated resources (or precise problems) out.

Every place that reads manifests -- ``slmops validate``, ``slmops run``, the tests -- uses
:func:`load_resources`, so a problem is reported the same way everywhere: the document
(file and index, kind/name when known), the field path in manifest spelling
(``spec.training.maxSteps``, ``spec.targets[1].precision``) and the reason.

``slmops validate`` reads folders of manifests that hold other resources too (an Argo CD
Application, a Secret): :func:`load_manifests` skips a document of another API group and
says so, while a document of the slmops.io group must be one of its kinds.  Everything else
(``slmops run``, ``slmops compile``) uses :func:`load_resources`, which refuses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from slmops_operator.api.resources import API_VERSION, GROUP, Resource, resource_of, resources


@dataclass(frozen=True)
class Problem:
    document: str  # "job.yaml#1 (FineTuneJob demo)"
    path: str  # "spec.training.maxSteps" ("" for the whole document)
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.document}: {where}{self.reason}"


class ManifestError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Document:
    source: str
    index: int  # 1-based position in the file
    body: Any

    @property
    def label(self) -> str:
        label = f"{self.source}#{self.index}"
        if isinstance(self.body, dict):
            kind = self.body.get("kind")
            name = (
                (self.body.get("metadata") or {}).get("name")
                if isinstance(self.body.get("metadata"), dict)
                else None
            )
            if kind or name:
                label += f" ({kind or '?'} {name or '?'})"
        return label


@dataclass(frozen=True)
class Skipped:
    """A document of another API group, left alone by ``slmops validate``."""

    document: str  # "apps.yaml#1 (Application demo)"
    api_version: str
    kind: str | None
    name: str | None
    namespace: str | None

    @property
    def reason(self) -> str:
        return f"not an {GROUP} resource"

    def __str__(self) -> str:
        return f"{self.kind or '?'}/{self.name or '?'} ({self.reason})"


@dataclass(frozen=True)
class Manifests:
    resources: list[Resource]
    skipped: list[Skipped]


def foreign(doc: Document) -> Skipped | None:
    """The document as skipped when its apiVersion names another API group; None for slmops.io.

    A document without an apiVersion is not skipped: it is more likely a broken slmops
    manifest than someone else's resource.
    """
    body = doc.body
    if not isinstance(body, dict):
        return None
    api_version = body.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        return None
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""  # "v1": the core group
    if group == GROUP:
        return None
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    kind, name, namespace = body.get("kind"), metadata.get("name"), metadata.get("namespace")
    return Skipped(
        document=doc.label,
        api_version=api_version,
        kind=kind if isinstance(kind, str) else None,
        name=name if isinstance(name, str) else None,
        namespace=namespace if isinstance(namespace, str) else None,
    )


def format_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def describe_error(error: ErrorDetails) -> str:
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif error["type"] in ("literal_error", "enum") and "input" in error:
        message += f" (got {error['input']!r})"
    return message


def read_documents(path: Path) -> list[Document]:
    """Non-empty YAML documents of a file ('-' reads standard input)."""
    import sys

    source = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if source == "<stdin>" else Path(path).read_text()
        bodies = list(yaml.safe_load_all(text))
    except FileNotFoundError:
        raise ManifestError([Problem(source, "", "file not found")]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([Problem(source, "", f"invalid YAML: {exc}")]) from None
    return [Document(source, i, body) for i, body in enumerate(bodies, start=1) if body is not None]


def parse_document(doc: Document) -> Resource:
    """Validate one document into its resource model, or raise ManifestError."""
    body = doc.body
    if not isinstance(body, dict):
        raise ManifestError([Problem(doc.label, "", "a manifest must be a mapping")])
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if api_version != API_VERSION:
        raise ManifestError(
            [Problem(doc.label, "apiVersion", f"must be {API_VERSION} (got {api_version!r})")]
        )
    if kind not in resources():
        raise ManifestError(
            [Problem(doc.label, "kind", f"must be one of {', '.join(resources())} (got {kind!r})")]
        )
    try:
        return resource_of(kind).model_validate(body)
    except ValidationError as exc:
        raise ManifestError(
            [
                Problem(doc.label, format_loc(e["loc"]), describe_error(e))
                for e in exc.errors(include_url=False)
            ]
        ) from None


def load_resources(paths: Iterable[Path]) -> list[Resource]:
    """All resources of all files, or ManifestError listing every problem found."""
    return _load(paths, skip_foreign=False).resources


def load_manifests(paths: Iterable[Path]) -> Manifests:
    """Like :func:`load_resources`, but documents of other API groups are skipped (and listed)."""
    return _load(paths, skip_foreign=True)


def _load(paths: Iterable[Path], *, skip_foreign: bool) -> Manifests:
    resources: list[Resource] = []
    skipped: list[Skipped] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            documents = read_documents(path)
        except ManifestError as exc:
            problems += exc.problems
            continue
        if not documents:
            problems.append(Problem(str(path), "", "no YAML documents"))
        for doc in documents:
            other = foreign(doc) if skip_foreign else None
            if other is not None:
                skipped.append(other)
                continue
            try:
                resources.append(parse_document(doc))
            except ManifestError as exc:
                problems += exc.problems
    if problems:
        raise ManifestError(problems)
    return Manifests(resources, skipped)
