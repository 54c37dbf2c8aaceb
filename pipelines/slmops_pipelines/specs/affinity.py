"""A Kubernetes Affinity, typed: ``spec.resources.affinity`` of both job kinds.

The same fields as a Pod's ``spec.affinity`` (core/v1 ``Affinity``), in the same spelling,
so that a platform team's affinity moves from a Deployment to a job unchanged, and the CRD
shows it to ``kubectl explain``.  Dumped with ``by_alias=True, exclude_none=True`` it is the
Pod's JSON again: what the PyTorchJob/TrainJob nodes get, and (``nodeAffinity``) the
pipeline pods through kfp-kubernetes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from slmops_pipelines.specs.base import SpecModel

_LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


class NodeSelectorRequirement(SpecModel):
    """A node label (or field) and how its values must relate to ``values``."""

    key: str = Field(max_length=317, description="The label key the selector applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[str] | None = Field(default=None, description="Values for In/NotIn (one for Gt/Lt).")


class NodeSelectorTerm(SpecModel):
    """Requirements that must all hold (the terms of a NodeSelector are ORed)."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, description="Requirements on node labels."
    )
    match_fields: list[NodeSelectorRequirement] | None = Field(
        default=None, description="Requirements on node fields."
    )


class NodeSelector(SpecModel):
    """Nodes matching any of the terms."""

    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, description="The terms, ORed.")


class PreferredSchedulingTerm(SpecModel):
    """A node preference with its weight."""

    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    preference: NodeSelectorTerm = Field(description="The preferred nodes.")


class NodeAffinity(SpecModel):
    """Which nodes the pods may, or would rather, run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pods must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = Field(
        default=None, description="Nodes the pods would rather run on."
    )


class LabelSelectorRequirement(SpecModel):
    """A label and how its values must relate to ``values``."""

    key: str = Field(pattern=_LABEL_KEY, max_length=317, description="The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] | None = Field(default=None, description="Values for In/NotIn.")


class LabelSelector(SpecModel):
    """Objects whose labels match (both parts ANDed)."""

    match_labels: dict[str, str] | None = Field(default=None, description="Labels that must be equal.")
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, description="Requirements on labels."
    )


class PodAffinityTerm(SpecModel):
    """Pods (by labels, in some namespaces) that must or must not share a topology domain with these."""

    label_selector: LabelSelector | None = Field(default=None, description="The pods.")
    namespaces: list[str] | None = Field(default=None, description="Their namespaces (default: the pod's).")
    namespace_selector: LabelSelector | None = Field(default=None, description="Their namespaces, by labels.")
    topology_key: str = Field(
        min_length=1, description="The node label of the domain, e.g. kubernetes.io/hostname."
    )
    match_label_keys: list[str] | None = Field(
        default=None, description="Label keys whose values must match."
    )
    mismatch_label_keys: list[str] | None = Field(
        default=None, description="Label keys whose values must differ."
    )


class WeightedPodAffinityTerm(SpecModel):
    """A pod (anti-)affinity preference with its weight."""

    weight: int = Field(ge=1, le=100, description="Weight, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(SpecModel):
    """Pods these pods must, or would rather, be near (or, as podAntiAffinity, away from)."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, description="Terms that must hold."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = Field(
        default=None, description="Terms that would rather hold."
    )


class Affinity(SpecModel):
    """A Pod's affinity: node affinity, pod affinity and pod anti-affinity."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Which nodes.")
    pod_affinity: PodAffinity | None = Field(default=None, description="Near which pods.")
    pod_anti_affinity: PodAffinity | None = Field(default=None, description="Away from which pods.")

    def to_pod(self) -> dict[str, Any]:
        """The Pod's ``spec.affinity`` JSON."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
