"""Reading manifests: multi-document YAML in, validated resources (or precise problems) out.

Every place that reads manifests -- ``slmops validate``, ``slmops run``, the tests -- uses
:func:`load_resources`, so a problem is reported the same way everywhere: the document
(file and index, kind/name when known), the field path in manifest spelling
(``spec.training.maxSteps``, ``spec.targets[1].precision``) and the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from slmops_operator.api.resources import API_VERSION, KINDS, Resource


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
    if kind not in KINDS:
        raise ManifestError([Problem(doc.label, "kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")])
    try:
        return KINDS[kind].model_validate(body)
    except ValidationError as exc:
        raise ManifestError(
            [
                Problem(doc.label, format_loc(e["loc"]), describe_error(e))
                for e in exc.errors(include_url=False)
            ]
        ) from None


def load_resources(paths: Iterable[Path]) -> list[Resource]:
    """All resources of all files, or ManifestError listing every problem found."""
    resources: list[Resource] = []
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
            try:
                resources.append(parse_document(doc))
            except ManifestError as exc:
                problems += exc.problems
    if problems:
        raise ManifestError(problems)
    return resources
