"""What ``slmops generate`` and ``slmops chat`` talk to: a TARGET resolved to a model and its rendering.

A TARGET is one of:

* **a job's output** (``runs/NAME``, ``s3://bucket/prefix``), or a folder inside one
  (``runs/opt/targets/cpu-int4``, ``runs/ft/merged``): :func:`find_job_output` finds the
  manifest, and the job's kind (``JobKind.chat_target``) picks what to load with
  :func:`finetune_output_target` or :func:`optimize_output_target`.  Either way the job's
  dataset spec comes along, so prompts are rendered as training rendered them;
* **an onnxruntime-genai folder** (``genai_config.json``), with its separate adapters
  (``<name>.onnx_adapter`` beside the model);
* **a PEFT adapter folder** (``adapter_config.json``): the base model is ``--model`` or the
  adapter's ``base_model_name_or_path``;
* **a transformers model folder** (``config.json``): a merged or fully fine-tuned model.

Remote folders are downloaded through the artifact store once into the cache
(``$SLMOPS_CACHE_DIR/generate``), keyed by their URI and the manifest's date, so a chat
starts from the local copy the second time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slmops_pipelines.errors import InputError, JobError
from slmops_pipelines.models import resolve_model
from slmops_pipelines.specs import DatasetSpec, FineTuneJobSpec, ModelSpec, OptimizeJobSpec
from slmops_pipelines.specs.optimize import default_adapter_name
from slmops_pipelines.steps import publish
from slmops_pipelines.steps.optimize.serving import read_prompts
from slmops_pipelines.storage import ArtifactStore, open_store
from slmops_pipelines.uris import UriError, parse_uri

ADAPTER_SUFFIX = ".onnx_adapter"


@dataclass
class ChatTarget:
    """What to load (runtime, model, adapters by name) and how the job rendered its prompts."""

    runtime: Literal["torch", "genai"]
    model_dir: Path  # torch: the (base) model folder; genai: the target folder
    adapters: dict[str, Path] = field(default_factory=dict)  # PEFT folders or .onnx_adapter files
    tokenizer_dir: Path | None = None  # default: model_dir
    dataset: DatasetSpec | None = None  # None: no job known, render with the chat template if any
    # An OptimizeJob's adapters with evaluation data of their own: rendered as that data was.
    adapter_datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    trust_remote_code: bool = False
    description: str = ""


@dataclass(frozen=True)
class JobOutput:
    """A job's succeeded output that TARGET is, or lies in."""

    store: ArtifactStore
    manifest: dict[str, Any]
    part: str  # the folder inside the output TARGET named ("" for the output itself)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("job", {}).get("kind", ""))


# -- finding out what TARGET is ----------------------------------------------------------------


def find_job_output(target: str) -> JobOutput | None:
    """The job output ``target`` is (an S3 prefix or folder) or lies in, up to two folders down."""
    scheme = uri_scheme(target)
    if scheme == "hf":  # a model on the Hub: no job's output
        return None
    if scheme == "s3":
        store = open_store(target, field="target")
        store.check()
        manifest = publish.read_json(store, publish.MANIFEST)
        return JobOutput(store, manifest, "") if manifest else None
    path = local_path(target)
    for root in (path, path.parent, path.parent.parent):
        if (root / publish.MANIFEST).is_file():
            manifest = json.loads((root / publish.MANIFEST).read_text())
            part = path.relative_to(root).as_posix()
            return JobOutput(open_store(str(root), field="target"), manifest, "" if part == "." else part)
    if (path / publish.CLAIM).is_file():
        raise InputError(
            f"{target} is a job output without manifest.json: it has not succeeded", field="target"
        )
    return None


def local_path(target: str) -> Path:
    path = parse_uri(target).local_path.expanduser().resolve()
    if not path.exists():
        raise InputError(f"{target} not found", field="target")
    return path


def uri_scheme(target: str) -> str:
    try:
        return parse_uri(target).scheme
    except UriError as exc:
        raise InputError(str(exc), field="target") from exc


def plain_target(target: str, *, model: str | None = None) -> ChatTarget:
    """A TARGET that is no job's output: a genai, adapter or model folder, local, on S3 or the Hub."""
    if uri_scheme(target) == "hf":
        return folder_target(resolve_model(ModelSpec.model_validate({"uri": target})), model=model)
    if uri_scheme(target) == "s3":
        store = open_store(target, field="target")
        return folder_target(local_copy(store, ""), model=model)
    return folder_target(local_path(target), model=model)


def folder_target(
    path: Path,
    *,
    model: str | None = None,
    dataset: DatasetSpec | None = None,
    adapter_name: str | None = None,
    description: str = "",
) -> ChatTarget:
    """What a local folder holds, by the file that marks each kind of model folder."""
    if (path / "genai_config.json").is_file():
        adapters = {p.name.removesuffix(ADAPTER_SUFFIX): p for p in sorted(path.glob(f"*{ADAPTER_SUFFIX}"))}
        _no_model_option(model, "an onnxruntime-genai folder holds its base model")
        carried, own = read_prompts(path)  # how the job rendered prompts, for a folder served alone
        target = ChatTarget(
            "genai", path, adapters, dataset=dataset or carried, description=description or f"{path} (onnx)"
        )
        target.adapter_datasets = own
        return target
    if (path / "adapter_config.json").is_file():
        base = adapter_base(path, model)
        name = adapter_name or default_adapter_name(str(path))
        return ChatTarget(
            "torch",
            base,
            {name: path},
            tokenizer_dir=path if has_tokenizer(path) else base,
            dataset=dataset,
            description=description or f"{path} (PEFT adapter on {base})",
        )
    if (path / "config.json").is_file():
        _no_model_option(model, "a model folder is the whole model")
        return ChatTarget("torch", path, dataset=dataset, description=description or f"{path} (transformers)")
    raise InputError(
        f"{path} is not a model: no genai_config.json (onnxruntime-genai), adapter_config.json (PEFT adapter) "
        "or config.json (transformers), and no job's manifest.json",
        field="target",
    )


def _no_model_option(model: str | None, why: str) -> None:
    if model is not None:
        raise InputError(f"--model is for adapter folders only: {why}", field="model")


def has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()


def adapter_base(adapter_dir: Path, model: str | None) -> Path:
    """The base model of a PEFT adapter: ``--model``, else its ``base_model_name_or_path``."""
    if model is not None:
        return resolve_model(ModelSpec.model_validate({"uri": model}))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path") or ""
    if base and Path(base).expanduser().is_dir():
        return Path(base).expanduser()
    if base.count("/") == 1 and not base.startswith((".", "/", "~")):  # a Hub name: org/model
        return resolve_model(ModelSpec.model_validate({"uri": f"hf://{base}"}))
    raise InputError(
        f"the adapter's base model {base or '(not recorded)'} is not on this machine: name it with --model",
        field="model",
    )


def local_copy(store: ArtifactStore, prefix: str) -> Path:
    """The folder ``prefix`` of ``store`` on this machine: in place, or its entry in the input cache.

    A remote folder is listed with the user's keys every time and cached by what it holds
    (:mod:`slmops_pipelines.models.input_cache`): an output published again at the same URI
    is downloaded again, and keys that may not read it get an error, whatever the cache holds.
    """
    from slmops_pipelines.models import input_cache

    root = store.local_root()
    if root is not None:
        return root / prefix if prefix else root
    return input_cache.fetch(store, prefix, field="target", kind="output")


# -- job outputs: what each kind's chat_target calls ---------------------------------------------


@dataclass(frozen=True)
class TargetChoice:
    """What the user asked to load from a job's output (what every kind's loader takes).

    ``target_name``: ``--target``, an OptimizeJob's target; ``model``: ``--model``, a PEFT
    adapter's base model; ``prefer_adapters`` (``slmops serve``): by default, a model whose
    adapters stay separate, where the output has one.
    """

    target_name: str | None = None
    model: str | None = None
    prefer_adapters: bool = False


def finetune_output_target(output: JobOutput, choice: TargetChoice) -> ChatTarget:
    """A FineTuneJob's adapter on its base model (or ``model/``, ``merged/`` when named or alone).

    ``choice.prefer_adapters`` changes nothing here: the adapter is what this output offers first.
    """
    model = choice.model
    if choice.target_name is not None:
        raise InputError(
            f"--target picks a target of an optimized output; a {output.kind}'s has none", field="target"
        )
    spec = FineTuneJobSpec.model_validate(output.manifest["spec"])
    name = str(output.manifest["job"].get("name", "adapter"))
    paths = {entry["path"] for entry in output.manifest.get("files", [])}
    held = [
        f for f in ("adapter", "model", "merged") if {f"{f}/config.json", f"{f}/adapter_config.json"} & paths
    ]
    if not held:
        raise InputError(
            f"{output.store.uri} holds no model (no adapter/, model/ or merged/)", field="target"
        )
    chosen = output.part or held[0]  # the adapter first: what the job trained
    if chosen not in held:
        raise InputError(
            f"{output.store.uri_of(chosen)} is not a model of this {output.kind} (it holds: {', '.join(held)})",
            field="target",
        )
    folder = local_copy(output.store, chosen)
    description = f"{output.kind} {name}: {chosen}/ of {output.store.uri}"
    if chosen != "adapter":
        target = folder_target(folder, model=model, dataset=spec.dataset, description=description)
    else:
        base = resolve_model(ModelSpec.model_validate({"uri": model})) if model else resolve_model(spec.model)
        target = ChatTarget(
            "torch",
            base,
            {name: folder},
            tokenizer_dir=folder if has_tokenizer(folder) else base,
            dataset=spec.dataset,
            description=f"{description} on {model or spec.model.uri}",
        )
    target.trust_remote_code = spec.model.trust_remote_code
    return target


def optimize_output_target(output: JobOutput, choice: TargetChoice) -> ChatTarget:
    """One target folder of an OptimizeJob (``--target``, the folder named, or the first that runs here).

    ``choice.prefer_adapters`` (``slmops serve``): by default, the first runnable target that
    keeps its adapters separate, where there is one: a server is where one base with several
    adapters pays off.
    """
    if choice.model is not None:
        raise InputError("--model is for adapter folders: a target holds its base model", field="model")
    spec = OptimizeJobSpec.model_validate(output.manifest["spec"])
    paths = {entry["path"] for entry in output.manifest.get("files", [])}
    built = [t.name for t in spec.targets if f"targets/{t.name}/genai_config.json" in paths]
    named = _named_target(output.part, choice.target_name, output.store.uri)
    note = ""
    if named is None:
        separate = [
            n
            for n in built
            if any(p.startswith(f"targets/{n}/") and p.endswith(ADAPTER_SUFFIX) for p in paths)
        ]
        named, note = default_target(spec, built, prefer=separate if choice.prefer_adapters else ())
    if named not in built:
        raise InputError(
            f"no target named {named!r} in {output.store.uri} (targets: {', '.join(built) or 'none'})",
            field="target",
        )
    folder = local_copy(output.store, f"targets/{named}")
    job = output.manifest["job"].get("name", "")
    target = folder_target(
        folder,
        dataset=optimize_dataset(spec, output.manifest),
        description=f"{output.kind} {job}: target {named}{note}",
    )
    target.adapter_datasets = spec.source.adapter_datasets()
    return target


def _named_target(part: str, target_name: str | None, uri: str) -> str | None:
    if not part:
        return target_name
    head, _, name = part.partition("/")
    if head != "targets" or not name or "/" in name:
        raise InputError(f"{uri}/{part} is not a target folder (targets/<name>)", field="target")
    if target_name is not None and target_name != name:
        raise InputError(f"--target {target_name} names another target than {part}", field="target")
    return name


def default_target(spec: OptimizeJobSpec, built: list[str], prefer: Iterable[str] = ()) -> tuple[str, str]:
    """The first target (in spec order; of ``prefer`` first) this machine can run, and a note naming the others."""
    from slmops_pipelines.steps.optimize.providers import available_providers

    here = available_providers()
    runnable = [t.name for t in spec.targets if t.name in built and t.provider in here]
    if not runnable:
        raise InputError(
            f"none of the targets ({', '.join(built) or 'none built'}) runs on this machine's providers",
            field="target",
        )
    preferred = set(prefer)
    runnable.sort(key=lambda name: name not in preferred)  # stable: spec order within each group
    others = [name for name in built if name != runnable[0]]
    return runnable[0], (f" (also: {', '.join(others)}; pick one with --target NAME)" if others else "")


def optimize_dataset(spec: OptimizeJobSpec, manifest: dict[str, Any]) -> DatasetSpec | None:
    """The data the OptimizeJob evaluated with: its own, or its source FineTuneJob's (best effort)."""
    if spec.evaluation.dataset is not None:
        return spec.evaluation.dataset
    source_uri = (manifest.get("inputs") or {}).get("source", {}).get("output")
    if not source_uri:
        return None
    try:
        upstream = publish.read_json(open_store(source_uri, field="source"), publish.MANIFEST)
        return FineTuneJobSpec.model_validate((upstream or {})["spec"]).dataset
    except (JobError, KeyError, ValueError):  # moved or unreachable: render without the job's templates
        return None
