"""Generate CustomResourceDefinitions from the pydantic models.

pydantic emits JSON Schema 2020-12; a CRD wants a *structural* OpenAPI v3 schema.  The
translation is mechanical and lives here so that the models stay the single source of
truth (``slmops crds`` writes the files; a test fails when the committed ones drift):

* ``$ref``/``$defs`` are inlined (CRD schemas cannot reference);
* ``anyOf: [X, null]`` (an optional field) becomes ``X`` with ``nullable: true``;
* ``const`` becomes a one-value ``enum``; ``exclusiveMinimum: n`` becomes
  ``minimum: n, exclusiveMinimum: true`` (OpenAPI v3.0 form);
* ``additionalProperties: false`` (``extra="forbid"``) is dropped: structural schemas forbid
  it beside ``properties``; the API server prunes unknown fields and ``kubectl`` reports them
  with ``--validate=strict``, and ``slmops validate`` / the webhook reject them;
* ``title`` is dropped; descriptions, defaults, enums, bounds, patterns and ``required`` stay;
* CEL rules declared on the models (``x-kubernetes-validations``, see
  :func:`slmops_pipelines.specs.base.cel_rules`) stay where they were declared, and the spec
  gets one transition rule (``oldSelf``) per immutable field: every field but
  :data:`~slmops_operator.api.resources.MUTABLE_SPEC_FIELDS`.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from slmops_operator.api.resources import GROUP, MUTABLE_SPEC_FIELDS, VERSION, Resource, resources
from slmops_operator.api.status import JobStatus
from slmops_pipelines.specs.base import CEL_KEY

_DROP_KEYS = {"title", "$defs", "discriminator"}

# Printer columns shown by `kubectl get`.
PrinterColumn = dict[str, str | int]
_COLUMNS_COMMON_HEAD: list[PrinterColumn] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Job phase."},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.progress.percent",
        "description": "Overall progress in percent.",
    },
]
_COLUMNS_COMMON_TAIL: list[PrinterColumn] = [
    {
        "name": "Message",
        "type": "string",
        "jsonPath": ".status.message",
        "priority": 1,
        "description": "Latest message.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve_ref(ref: str, defs: dict[str, Any]) -> dict[str, Any]:
    name = ref.rsplit("/", 1)[-1]
    return copy.deepcopy(defs[name])


def to_structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON schema node into a structural OpenAPI v3 node."""
    node = dict(schema)
    if "$ref" in node:
        ref = node.pop("$ref")
        resolved = _resolve_ref(ref, defs)
        resolved.update({k: v for k, v in node.items() if k in ("description", "default")})
        node = resolved

    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions other than Optional[X] are not structural: {schema}")
        inner = to_structural(options[0], defs)
        # The outer node's description/default win over the inner type's.
        for key in ("description", "default"):
            if key in node:
                inner[key] = node[key]
        if inner.get("default", ...) is None:
            del inner["default"]  # "default: null" is meaningless beside nullable
        if len(options) < len(node["anyOf"]):
            inner["nullable"] = True
        return _order(inner)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            out["maximum"] = value
            out["exclusiveMaximum"] = True
        elif key == "properties":
            out["properties"] = {name: to_structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out["items"] = to_structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = to_structural(value, defs)
            # False (extra="forbid") cannot stand beside properties in a structural schema.
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    return _order(out)


_KEY_ORDER = ["description", "type", "format", "enum", "default", "nullable", "minimum", "exclusiveMinimum"]


def _order(node: dict[str, Any]) -> dict[str, Any]:
    """Stable, readable key order: description and type first, properties last."""
    head = {k: node[k] for k in _KEY_ORDER if k in node}
    tail: dict[str, Any] = {
        k: node[k] for k in ("required", "items", "additionalProperties", "properties") if k in node
    }
    middle = {k: v for k, v in sorted(node.items()) if k not in head and k not in tail}
    return {**head, **middle, **tail}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    return to_structural(raw, raw.get("$defs", {}))


def immutability_rules(spec_schema: dict[str, Any]) -> list[dict[str, str]]:
    """One transition rule per immutable spec field: present as before, and equal to it."""
    rules = []
    for name in spec_schema.get("properties", {}):
        if name in MUTABLE_SPEC_FIELDS:
            continue
        rules.append(
            {
                "rule": f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})",
                "message": (
                    f"spec.{name} is immutable once created (only {' and '.join(sorted(MUTABLE_SPEC_FIELDS))} "
                    "may change); create a new job instead"
                ),
                "fieldPath": f".{name}",
            }
        )
    return rules


def crd_for(resource: type[Resource]) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CRD of one resource kind."""
    spec_model = resource.model_fields["spec"].annotation
    if not (isinstance(spec_model, type) and issubclass(spec_model, BaseModel)):
        raise TypeError(f"{resource.__name__}.spec is not a pydantic model: {spec_model!r}")
    spec_schema = model_schema(spec_model)
    spec_schema["description"] = (resource.__doc__ or "").strip() or spec_schema.get("description", "")
    spec_schema[CEL_KEY] = [*spec_schema.get(CEL_KEY, []), *immutability_rules(spec_schema)]
    status_schema = model_schema(JobStatus)
    plural = resource.plural
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "slmops", "app.kubernetes.io/part-of": "slmops"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": resource.kind_name,
                "listKind": f"{resource.kind_name}List",
                "plural": plural,
                "singular": resource.kind_name.lower(),
                "shortNames": list(resource.short_names),
                "categories": ["slmops", "all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *_COLUMNS_COMMON_HEAD,
                        *resource.job_kind.printer_columns,
                        *_COLUMNS_COMMON_TAIL,
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": (resource.__doc__ or "").strip(),
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for every kind."""
    return {f"{GROUP}_{cls.plural}.yaml": crd_for(cls) for cls in resources().values()}


def render_yaml(crd: dict[str, Any]) -> str:
    import yaml

    header = "# Generated by `slmops crds` from slmops_operator.api -- do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100, allow_unicode=True)
