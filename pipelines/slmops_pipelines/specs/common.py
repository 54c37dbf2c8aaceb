"""Spec parts shared by FineTuneJob and OptimizeJob: model, dataset, output (resources: :mod:`.resources`)."""

from __future__ import annotations

import re
import string
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import Field, field_validator, model_validator

from slmops_pipelines.specs.base import SECRET_NAME, SpecModel, cel_rules, has_true
from slmops_pipelines.specs.locations import LocationKind, secret_conflicts
from slmops_pipelines.specs.tracking import TrackingSpec
from slmops_pipelines.uris import UriError, parse_uri

if TYPE_CHECKING:
    from slmops_pipelines.specs.resources import ResourcesSpec

# Bounds the runtime has: numpy/torch seeds are 32-bit; beyond these a job cannot finish anyway.
MAX_SEED = 2**32 - 1
MAX_STEPS = 10_000_000
MAX_SAMPLES = 1_000_000
MAX_TTL_SECONDS = 366 * 24 * 3600  # a year: longer is "keep it", which is no TTL at all

ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
DatasetFormat = Literal["auto", "json", "jsonl", "csv", "parquet"]

# "train", "train[:4096]", "train[4096:4224]", "train[:90%]", "validation[10%:]"
_SPLIT_RE = re.compile(r"^[A-Za-z_][\w\-]*(\[-?\d*%?:-?\d*%?\])?$")


def check_uri(value: str) -> str:
    """Field validator body: a URI in one of the accepted forms."""
    try:
        parse_uri(value)
    except UriError as exc:
        raise ValueError(str(exc)) from None
    return value


def is_filesystem_root(path: str | PurePath) -> bool:
    """``/``, ``//``, ``/.``, ``/..``: every spelling of the root (no disk access)."""
    import posixpath

    text = str(path)
    return text.startswith("/") and posixpath.normpath(text) in ("/", "//")


def access_secret_field() -> Any:
    return Field(
        default=None,
        description=(
            "Name of a Secret in the job's namespace for a gated or private source: HF_TOKEN for hf://, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (optionally AWS_ENDPOINT_URL, AWS_REGION) for s3://."
        ),
        pattern=SECRET_NAME,
        max_length=253,
    )


def template_fields(template: str) -> list[str]:
    """The ``{field}`` placeholders of a template, in order of first appearance."""
    seen: list[str] = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise ValueError(
                f"placeholder {{{name}}} is not a column name (use {{column}}; escape braces as {{{{ }}}})"
            )
        if name not in seen:
            seen.append(name)
    return seen


class ModelSpec(SpecModel):
    """Where the base model comes from and how to load it."""

    location = LocationKind(
        "model", read_only=True, secret_attr="access_secret", code_attr="trust_remote_code"
    )

    uri: str = Field(
        description=(
            "The base model: hf://org/name[@revision] (Hugging Face Hub), s3://bucket/prefix (a folder "
            "saved with save_pretrained), pvc://claim/path (a folder on a PersistentVolumeClaim, mounted "
            "by the pipeline's pods), file:///path or a local path (a model folder, or a .gguf file "
            "that is dequantized into a cached model folder)."
        ),
        min_length=1,
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow model code from the model repository to run (only for models you trust).",
    )
    dtype: ModelDtype = Field(
        default="auto",
        description="Dtype the base weights are loaded in; auto follows training.precision.",
    )
    access_secret: str | None = access_secret_field()

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        return check_uri(value)


_CHAT = has_true("self.chatTemplate")


class DatasetSpec(SpecModel):
    """The training data and how each row becomes a training example."""

    location = LocationKind("dataset", read_only=True, secret_attr="access_secret")

    model_config = cel_rules(
        (
            "!has(self.textTemplate) || (!has(self.promptTemplate) && !has(self.completionTemplate))",
            "textTemplate excludes promptTemplate/completionTemplate: use one or the other",
        ),
        (f"!(has(self.textTemplate) && {_CHAT})", "textTemplate excludes chatTemplate"),
        (
            f"{_CHAT} || has(self.promptTemplate) == has(self.completionTemplate)",
            "promptTemplate and completionTemplate go together (or set chatTemplate: true)",
        ),
        (
            f"has(self.textTemplate) || has(self.promptTemplate) || {_CHAT}",
            "set textTemplate, promptTemplate+completionTemplate, or chatTemplate: true",
        ),
        (
            "!(has(self.textTemplate) && has(self.completionOnlyLoss) && self.completionOnlyLoss)",
            "completionOnlyLoss needs to know the answer: not with textTemplate",
        ),
        ("!(has(self.evalSplit) && has(self.evalFraction))", "evalSplit and evalFraction exclude each other"),
    )

    uri: str = Field(
        description=(
            "hf://org/name[@revision], s3://bucket/key, pvc://claim/path, file:// or a local path.  A file "
            "(.json, .jsonl, "
            ".csv, .parquet) is the split 'train'; a folder's files are splits named after the file stems "
            "(train.jsonl, eval.jsonl, ...)."
        ),
        min_length=1,
    )
    format: DatasetFormat = Field(default="auto", description="File format; auto decides by file extension.")
    access_secret: str | None = access_secret_field()
    train_split: str = Field(
        default="train",
        description="Split used for training, with optional slice: train, train[:4096], train[:90%].",
    )
    eval_split: str | None = Field(
        default=None,
        description="Held-out split for evaluation, with optional slice, e.g. train[4096:4224] or eval.",
    )
    eval_fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Without evalSplit: fraction of the training rows held out for evaluation (seeded).",
    )
    text_template: str | None = Field(
        default=None,
        description="Whole training text from {column} placeholders; loss on every token.",
    )
    prompt_template: str | None = Field(
        default=None,
        description="The prompt from {column} placeholders (with completionTemplate, or with chatTemplate).",
    )
    completion_template: str | None = Field(
        default=None,
        description="The answer from {column} placeholders; the text the model learns to produce.",
    )
    chat_template: bool = Field(
        default=False,
        description=(
            "Render examples with the tokenizer's chat template: from the messages column if the data has "
            "one, else from promptTemplate/completionTemplate, else from the prompt and completion columns."
        ),
    )
    messages_field: str = Field(
        default="messages", description="Column holding chat messages (role, content)."
    )
    system_prompt: str | None = Field(
        default=None, description="System message put before each prompt when chatTemplate is true."
    )
    completion_only_loss: bool | None = Field(
        default=None,
        description="Compute the loss on the answer tokens only.  Default: true whenever the answer is known.",
    )
    max_seq_length: int = Field(
        default=512, ge=8, le=131072, description="Examples longer than this are truncated (and counted)."
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str) -> str:
        return check_uri(value)

    @field_validator("train_split", "eval_split")
    @classmethod
    def _check_split(cls, value: str | None) -> str | None:
        if value is not None and not _SPLIT_RE.match(value):
            raise ValueError(
                f"{value!r} is not a split (expected name or name[start:end], e.g. train[:4096])"
            )
        return value

    @field_validator("text_template", "prompt_template", "completion_template")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        if value is not None:
            template_fields(value)
        return value

    @model_validator(mode="after")
    def _check_rendering(self) -> DatasetSpec:
        if self.text_template and (self.prompt_template or self.completion_template):
            raise ValueError("textTemplate excludes promptTemplate/completionTemplate: use one or the other")
        if self.text_template and self.chat_template:
            raise ValueError(
                "textTemplate excludes chatTemplate: a chat is rendered from prompt and completion"
            )
        if not self.chat_template and bool(self.prompt_template) != bool(self.completion_template):
            raise ValueError("promptTemplate and completionTemplate go together (or set chatTemplate: true)")
        if not (self.text_template or self.prompt_template or self.chat_template):
            raise ValueError("set textTemplate, promptTemplate+completionTemplate, or chatTemplate: true")
        if self.text_template and self.completion_only_loss:
            raise ValueError(
                "completionOnlyLoss needs to know the answer: use promptTemplate+completionTemplate "
                "or chatTemplate instead of textTemplate"
            )
        if self.eval_split and self.eval_fraction:
            raise ValueError("evalSplit and evalFraction exclude each other")
        return self

    @property
    def has_completion(self) -> bool:
        return not self.text_template

    @property
    def loss_on_completion_only(self) -> bool:
        if self.completion_only_loss is None:
            return self.has_completion
        return self.completion_only_loss


class OutputSpec(SpecModel):
    """Where the job's artifacts go."""

    location = LocationKind("output", read_only=False, secret_attr="credentials_secret")

    uri: str | None = Field(
        default=None,
        description=(
            "s3://bucket/prefix, pvc://claim/path (a folder on a PersistentVolumeClaim: the pipeline's "
            "pods mount the claim) or a local folder.  Default for local runs: ./runs/<metadata.name>; "
            "the operator's configured default bucket on a cluster."
        ),
    )
    credentials_secret: str | None = Field(
        default=None,
        description=(
            "Name of a Secret in the job's namespace with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
            "optionally AWS_ENDPOINT_URL / AWS_REGION.  Credentials are never written inline."
        ),
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
    )
    merged_model: bool = Field(
        default=False, description="Also save the base model with the adapter merged into its weights."
    )

    @field_validator("uri")
    @classmethod
    def _check_output_uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = parse_uri(check_uri(value))
        if parsed.scheme == "hf":
            raise ValueError("outputs go to s3:// or a local folder, not to hf://")
        if parsed.scheme == "s3" and not parsed.key:
            raise ValueError(
                f"{value!r} names a bucket only: add a prefix, e.g. s3://{parsed.bucket}/jobs/name"
            )
        if parsed.scheme == "pvc" and not parsed.key:
            raise ValueError(
                f"{value!r} names a whole volume: add a folder, e.g. pvc://{parsed.claim}/jobs/name"
            )
        if parsed.scheme == "file" and parsed.path is not None and is_filesystem_root(parsed.path):
            raise ValueError(
                f"{value!r} is the filesystem root: a job writes (and, when deleted, may remove) its whole "
                "output folder, so give it a folder of its own"
            )
        return value


class LocalObjectReference(SpecModel):
    """A reference to an object in the job's namespace, by name (as in a Pod's imagePullSecrets)."""

    name: str = Field(pattern=SECRET_NAME, max_length=253, description="The object's name.")


class JobSpecBase(SpecModel):
    """What every job kind's spec has, whatever it does: the pods' image and identity, and how it is operated.

    ``suspend`` and ``ttlSecondsAfterFinished`` change how a job is run, never what it
    produces: they are the only spec fields that may change after creation (see
    OPERATIONAL_FIELDS).
    """

    image: str | None = Field(
        default=None,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._\-/:@]*$",
        max_length=512,
        description=(
            "Container image for every pod of the job (pipeline steps and training nodes), instead of slmops' "
            "own images: your build of them, from your registry, with slmops and the extras the steps need."
        ),
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets in the job's namespace for pulling its images from a private registry.",
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=SECRET_NAME,
        max_length=253,
        description=(
            "ServiceAccount the job's pods run as (the KFP run, the training nodes); it needs what the "
            "default one has (with nodes > 1: create, get and delete PyTorchJobs or TrainJobs)."
        ),
    )
    suspend: bool = Field(
        default=False,
        description="Stop the job's run (or keep it from starting); false again resumes it from its last checkpoint.",
    )
    tracking: TrackingSpec | None = Field(
        default=None, description="Experiment tracking (MLflow) for the job's runs: off unless set."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description=(
            "Delete the resource this many seconds after it finished (at most a year).  Its artifacts stay, "
            "unless the operator is set to delete artifacts with their job (SLMOPS_DELETE_ARTIFACTS)."
        ),
    )

    @model_validator(mode="after")
    def _one_secret_per_purpose(self) -> JobSpecBase:
        problems = secret_conflicts(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class JobSpec(Protocol):
    """What every job kind's spec has: the fields the operator reads whatever the kind."""

    output: OutputSpec
    resources: ResourcesSpec
    image: str | None
    image_pull_secrets: list[LocalObjectReference]
    service_account_name: str | None
    suspend: bool
    ttl_seconds_after_finished: int | None

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...
