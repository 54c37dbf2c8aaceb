"""Credentials a job reads its inputs and writes its output with: which Secret, which keys, which variables.

A job names Secrets, never values: ``spec.output.credentialsSecret`` (S3 keys for the
output), ``spec.model.accessSecret`` and ``spec.dataset.accessSecret`` (``HF_TOKEN`` for a
gated or private ``hf://`` repository, or S3 keys for an ``s3://`` one).  Each Secret has a
**purpose**, and each purpose its own environment variables, so that a model's token and a
dataset's keys never meet:

===========  ===========================  ============================================
purpose      spec field                   variables (Secret key ``K``)
===========  ===========================  ============================================
output       output.credentialsSecret     ``K`` (the AWS SDK's own: ``AWS_ACCESS_KEY_ID``...)
model        model.accessSecret           ``SLMOPS_MODEL_K``
dataset      dataset.accessSecret         ``SLMOPS_DATASET_K``
tracking     tracking.mlflow.             ``K`` (MLflow's own: ``MLFLOW_TRACKING_USERNAME``...)
             credentialsSecret
===========  ===========================  ============================================

On a cluster the operator reads each Secret in the job's namespace (a missing one fails the
job with reason ``MissingCredentials``) and mounts exactly the keys it holds, never as
``optional``; the steps then read the variables through :func:`s3_credentials` and
:func:`hf_token`.  A local ``slmops run`` has no Secrets: the user's own environment
(``AWS_*``, ``HF_TOKEN``) is used, as every other tool does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypedDict

S3_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
)
HF_KEYS = ("HF_TOKEN",)
# MLflow's client reads these itself (basic auth, or a bearer token).
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# What the local backend never hands its workers from its own environment: every cloud's and
# the Hub's credentials, and the operator's own way into the cluster.
AMBIENT_CREDENTIALS = (
    "AWS_",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_API_TOKEN",
    "SLMOPS_MODEL_",
    "SLMOPS_DATASET_",
    "KUBECONFIG",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_",
    "SLMOPS_KFP_TOKEN_PATH",
    "MLFLOW_TRACKING_",
)


@dataclass(frozen=True)
class Purpose:
    name: str
    env_prefix: str
    keys: tuple[str, ...]


PURPOSES = {
    "output": Purpose("output", "", S3_KEYS),
    "model": Purpose("model", "SLMOPS_MODEL_", S3_KEYS + HF_KEYS),
    "dataset": Purpose("dataset", "SLMOPS_DATASET_", S3_KEYS + HF_KEYS),
    "tracking": Purpose("tracking", "", MLFLOW_KEYS),
}


@dataclass(frozen=True)
class SecretRef:
    """A Secret a spec names: for what, where in the spec, and its name."""

    purpose: str
    field: str  # in manifest spelling, without "spec."
    name: str

    @property
    def keys(self) -> tuple[str, ...]:
        return PURPOSES[self.purpose].keys

    def env_name(self, key: str) -> str:
        return PURPOSES[self.purpose].env_prefix + key


def secret_refs(spec: Any) -> list[SecretRef]:
    """Every Secret the spec names (its declared locations'), once each: by purpose, then field order."""
    from slmops_pipelines.specs.locations import spec_locations

    refs: list[SecretRef] = []
    for loc in spec_locations(spec):
        if loc.secret and not any(r.purpose == loc.purpose and r.name == loc.secret for r in refs):
            refs.append(SecretRef(loc.purpose, loc.secret_field, loc.secret))
    mlflow = spec.tracking.mlflow if getattr(spec, "tracking", None) else None
    if mlflow is not None and mlflow.credentials_secret:  # a server, not a location: no URI rules apply
        refs.append(SecretRef("tracking", "tracking.mlflow.credentialsSecret", mlflow.credentials_secret))
    return sorted(refs, key=lambda ref: list(PURPOSES).index(ref.purpose))  # output, model, dataset, tracking


def required_keys(spec: Any, ref: SecretRef) -> tuple[str, ...]:
    """The keys a named Secret must hold for what it reads: an HF token, an S3 key pair, or both."""
    from slmops_pipelines.specs.locations import spec_locations

    if (
        ref.purpose == "tracking"
    ):  # MLflow's basic auth (a token works too; the operator mounts what is there)
        return MLFLOW_KEYS[:2]

    schemes = {
        loc.uri.split("://", 1)[0]
        for loc in spec_locations(spec)
        if loc.purpose == ref.purpose and loc.secret == ref.name
    }
    keys: tuple[str, ...] = HF_KEYS if "hf" in schemes else ()
    if schemes - {"hf"} or not keys:
        keys += ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    return keys


def assumed_mounts(spec: Any) -> list[dict[str, Any]]:
    """Mounts of the spec's Secrets without reading them (``slmops compile``): their required keys.

    The operator mounts exactly the keys each Secret holds (optional ones such as
    ``AWS_ENDPOINT_URL`` too); a pipeline compiled without a cluster can only assume these.
    """
    return [
        {"name": ref.name, "keyToEnv": {key: ref.env_name(key) for key in required_keys(spec, ref)}}
        for ref in secret_refs(spec)
    ]


# -- what the steps read -------------------------------------------------------------------------


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value or None


class S3Credentials(TypedDict, total=False):
    """Keyword arguments for :class:`slmops_pipelines.storage.s3.S3Store` (only the ones set)."""

    access_key: str
    secret_key: str
    session_token: str
    endpoint_url: str
    region: str


def s3_credentials(purpose: str) -> S3Credentials:
    """Keyword arguments for S3Store from the purpose's variables; empty: the default AWS_* ones."""
    prefix = PURPOSES[purpose].env_prefix
    if not prefix or not _env(prefix + "AWS_ACCESS_KEY_ID"):
        return {}
    return s3_credentials_from({key: _env(prefix + key) or "" for key in S3_KEYS})


_S3_ARGUMENTS = {
    "AWS_ACCESS_KEY_ID": "access_key",
    "AWS_SECRET_ACCESS_KEY": "secret_key",
    "AWS_SESSION_TOKEN": "session_token",
    "AWS_ENDPOINT_URL": "endpoint_url",
    "AWS_REGION": "region",
}


def s3_credentials_from(values: dict[str, str]) -> S3Credentials:
    """S3Store keyword arguments from a Secret's keys (``AWS_ACCESS_KEY_ID``...); unset keys left out."""
    found: dict[str, str] = {
        _S3_ARGUMENTS[key]: value for key, value in values.items() if key in _S3_ARGUMENTS and value
    }
    return S3Credentials(**found)  # type: ignore[typeddict-item]


def hf_token(purpose: str) -> str | None:
    """The purpose's Hugging Face token; None: the library's default (``HF_TOKEN``, a login)."""
    return _env(PURPOSES[purpose].env_prefix + "HF_TOKEN")


def without_ambient_credentials(env: dict[str, str]) -> dict[str, str]:
    """``env`` less every credential variable (the local backend's workers start from this)."""
    return {k: v for k, v in env.items() if not k.startswith(AMBIENT_CREDENTIALS)}
