"""Pre-flight: what can be checked in seconds, on a CPU pod, before any GPU step is scheduled.

A job that cannot work should fail while it costs nothing, not after an hour of queueing
for GPUs.  The inspect step of each pipeline (a CPU pod, never cached, the first step) and
the local engine run these checks and report **every** problem at once, each with its spec
field, as one :class:`PreflightError` (an InputError: the first problem's field, the others
listed after it; with one problem it is that problem's plain InputError):

* the model can be read (its ``config.json``: the repository exists, the token is good);
* for an OptimizeJob, its architecture is one the pinned model builder exports (the list
  is read from the installed onnxruntime-genai builder itself, so it follows the pin), and
  each adapter was trained on that base model (its ``adapter_config.json``);
* the dataset (FineTuneJob) or evaluation datasets (OptimizeJob: the job's, each adapter's)
  have the columns their templates name.

Everything here downloads at most a few kilobytes per check, except the dataset check,
which reads the dataset (data prep would read it next anyway).  The Secrets a job names are
checked by the operator before the run starts (``MissingCredentials``), and each target's
provider and precision by the CRD and the webhook.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmops_pipelines.errors import InputError
from slmops_pipelines.specs import DatasetSpec, FineTuneJobSpec, ModelSpec, OptimizeJobSpec
from slmops_pipelines.uris import parse_uri, pvc_root


@dataclass(frozen=True)
class Finding:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class PreflightError(InputError):
    """Every problem pre-flight found: the first one's field and reason, then the others."""

    def __init__(self, findings: list[Finding]) -> None:
        first, *rest = findings
        others = "".join(f"; also spec.{f.field}: {f.reason}" for f in rest)
        super().__init__(first.reason + others, field=first.field)
        self.findings = findings


def raise_findings(findings: list[Finding]) -> None:
    if findings:
        raise PreflightError(findings)


# -- reading a model's small files -----------------------------------------------------------------


def read_model_file(uri: str, name: str, *, purpose: str = "model") -> dict[str, Any] | None:
    """A model's JSON file (``config.json``, ``adapter_config.json``) without the weights; None for GGUF."""
    from slmops_pipelines.credentials import hf_token, s3_credentials

    parsed = parse_uri(uri)
    if parsed.scheme == "hf":
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(parsed.repo, name, revision=parsed.revision, token=hf_token(purpose))
        return json.loads(Path(path).read_text())
    if parsed.scheme == "s3":
        from slmops_pipelines.storage import open_store

        return json.loads(open_store(uri, credentials=s3_credentials(purpose)).read_text(name))
    path = parsed.local_path.expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return None  # its metadata is read when it is imported
    return json.loads((path / name).read_text())


def _readable(uri: str, name: str, field: str, findings: list[Finding], **kw: Any) -> dict[str, Any] | None:
    try:
        return read_model_file(uri, name, **kw)
    except Exception as exc:  # missing, gated, offline, refused: all say why here
        findings.append(
            Finding(field, f"cannot read {name} of {uri}: {type(exc).__name__}: {str(exc)[:300]}")
        )
        return None


# -- what the pinned model builder exports -----------------------------------------------------


@functools.cache
def builder_architectures() -> frozenset[str] | None:
    """The ``architectures[0]`` values onnxruntime-genai's installed builder handles; None without it.

    Read from the builder's own source (its ``create_model`` compares
    ``config.architectures[0]`` with each name), so that the list is the pinned version's.
    """
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime_genai.models.builder")
    if spec is None or spec.origin is None:
        return None
    tree = ast.parse(Path(spec.origin).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and "architectures" in ast.unparse(node.left):
            for compared in node.comparators:  # == "Name", or in ("Name", ...)
                values = compared.elts if isinstance(compared, ast.List | ast.Tuple | ast.Set) else [compared]
                names |= {v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)}
    return frozenset(names) or None


def _architecture(config: dict[str, Any]) -> str:
    return (config.get("architectures") or ["(none)"])[0]


def _model_identity(name: str) -> str | None:
    """What names a base model comparably: a hub id (``org/name``), or a local folder's real path."""
    try:
        parsed = parse_uri(name if "://" in name or name.startswith("/") else f"hf://{name}")
    except ValueError:  # not a URI we know: nothing to compare
        return None
    if parsed.scheme == "hf":
        return parsed.repo
    if parsed.scheme in ("file", "pvc") and parsed.path is not None and parsed.path.exists():
        return str(parsed.path.resolve())
    return None


# -- the checks --------------------------------------------------------------------------------


def _dataset_columns(dataset: DatasetSpec, field: str, findings: list[Finding], *, seed: int) -> None:
    from slmops_pipelines.models import cache_root
    from slmops_pipelines.steps.data import check_dataset, field_under

    try:
        check_dataset(dataset, seed=seed, cache_dir=cache_root(), field_prefix=field)
    except InputError as exc:
        findings.append(Finding(field_under(field, exc.field) or field, exc.message))


def declared_inputs_exist(spec: Any, findings: list[Finding]) -> list[Finding]:
    """Every local input the spec declares (specs/locations.py) that no check above reported exists.

    A kind's own checks read what they need of its inputs (a model's config, a dataset's
    columns); this covers the rest, so that an input a new kind declares is checked by being
    declared.  Local paths and claims only: a remote input is read by its own check or step.
    """
    from slmops_pipelines.specs.locations import spec_inputs

    reported = [finding.field for finding in findings]
    for loc in spec_inputs(spec):
        if any(
            field == loc.field or field.startswith((f"{loc.field}.", f"{loc.field}[")) for field in reported
        ):
            continue
        parsed = parse_uri(loc.uri)
        if parsed.scheme in ("file", "pvc") and not parsed.local_path.expanduser().exists():
            where = (
                f" (claim {parsed.claim!r}, mounted at {parsed.local_path})" if parsed.scheme == "pvc" else ""
            )
            findings.append(Finding(loc.uri_field, f"{loc.uri} does not exist{where}"))
    return findings


def claims_stay_inside(spec: Any) -> None:
    """No file of a claimed input is a link out of its claim; InputError naming the field and the file.

    A claim's content is a tenant's and is read in a pod beside its service-account token
    (in standalone KFP, KFP's own account's): a link to it must never be read as a model or
    a dataset.  Runs before anything reads the inputs.
    """
    from slmops_pipelines.specs.locations import spec_inputs
    from slmops_pipelines.storage.local import links_out_of

    for loc in spec_inputs(spec):
        parsed = parse_uri(loc.uri) if loc.uri.startswith("pvc://") else None
        if parsed is None or not parsed.local_path.exists():
            continue
        claim_root = Path(pvc_root()) / parsed.claim
        top = parsed.local_path
        paths = [top, *top.rglob("*")] if top.is_dir() else [top]
        for path in paths:
            if links_out_of(path, claim_root):
                raise InputError(
                    f"{path.relative_to(claim_root).as_posix()!r} on claim {parsed.claim!r} is a link to a file "
                    "outside the claim: refusing to read it",
                    field=loc.uri_field,
                )


def check_finetune_model(spec: FineTuneJobSpec) -> list[Finding]:
    """A FineTuneJob's model is readable.  Its dataset is checked as it is fingerprinted (one read of it):
    the inspect step adds that problem with :func:`finding_of`."""
    findings: list[Finding] = []
    _readable(spec.model.uri, "config.json", "model.uri", findings)
    return findings


def finding_of(exc: InputError, default_field: str) -> Finding:
    return Finding(exc.field or default_field, exc.message)


def _optimize_base(spec: OptimizeJobSpec, locate_job: Callable[[str], str]) -> tuple[ModelSpec | None, str]:
    """The base model an OptimizeJob exports, and the spec field that names it."""
    ref = spec.source.fine_tune_job_ref
    if ref is None:
        return spec.source.model, "source.model.uri"
    from slmops_pipelines.steps import publish
    from slmops_pipelines.storage import open_store

    manifest = publish.read_json(open_store(locate_job(ref.name)), publish.MANIFEST)
    if manifest is None:
        return None, "source.fineTuneJobRef"  # refused with its own message by the source stage
    return FineTuneJobSpec.model_validate(manifest["spec"]).model, "source.fineTuneJobRef"


def _check_architecture(config: dict[str, Any], field: str, findings: list[Finding]) -> None:
    supported = builder_architectures()
    architecture = _architecture(config)
    if supported is not None and architecture not in supported:
        findings.append(
            Finding(
                field,
                f"{architecture} is not an architecture the pinned onnxruntime-genai model builder exports "
                f"(it exports {', '.join(sorted(supported))})",
            )
        )


def _check_adapters(spec: OptimizeJobSpec, base: ModelSpec, findings: list[Finding]) -> None:
    refs = spec.source.adapter_refs()
    field = "source.adapter.uri" if spec.source.adapter else "source.adapters"
    base_id = _model_identity(base.uri)
    for number, ref in enumerate(refs):
        where = field if spec.source.adapter else f"{field}[{number}].uri"
        adapter = _readable(ref.uri, "adapter_config.json", where, findings)
        trained_on = (adapter or {}).get("base_model_name_or_path") or ""
        adapter_base = _model_identity(trained_on) if trained_on else None
        # Only names that compare: two hub ids, or two local folders (a path and an id may be one model).
        comparable = base_id and adapter_base and (base_id.startswith("/") == adapter_base.startswith("/"))
        if comparable and adapter_base != base_id:
            reason = (
                f"adapter {ref.name!r} was trained on {trained_on}: it does not fit the base model {base.uri}"
            )
            findings.append(Finding(where, reason))


def check_optimize(spec: OptimizeJobSpec, *, locate_job: Callable[[str], str]) -> list[Finding]:
    """An OptimizeJob's base model is exportable, its adapters fit it, its evaluation data fits the templates."""
    claims_stay_inside(spec)
    findings: list[Finding] = []
    base, field = _optimize_base(spec, locate_job)
    config = _readable(base.uri, "config.json", field, findings) if base is not None else None
    if config is not None:
        _check_architecture(config, field, findings)
    if base is not None and spec.source.fine_tune_job_ref is None:
        _check_adapters(spec, base, findings)
    if spec.evaluation.dataset is not None:
        _dataset_columns(spec.evaluation.dataset, "evaluation.dataset", findings, seed=0)
    for index, ref in enumerate(spec.source.adapter_refs()):  # an adapter's own evaluation data
        if ref.evaluation is not None and ref.evaluation.dataset is not None:
            where = f"{spec.source.adapter_field(index)}.evaluation.dataset"
            _dataset_columns(ref.evaluation.dataset, where, findings, seed=0)
    return declared_inputs_exist(spec, findings)
