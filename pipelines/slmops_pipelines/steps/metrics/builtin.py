"""The metrics that ship with slmops."""

from __future__ import annotations


def _normalize(text: str) -> str:
    return " ".join(text.strip().casefold().split()).rstrip(".!")


def macro_f1(predictions: list[str], references: list[str]) -> float:
    """Macro F1 over the expected labels: per label, F1 of 'answered this label'; then the mean.

    For label-style answers (classification by generation).  A prediction that is no label
    at all is a miss for its reference's label and a false positive for none.
    """
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    predicted = [_normalize(p) for p in predictions]
    expected = [_normalize(r) for r in references]
    labels = sorted(set(expected))
    if not labels:
        return 0.0
    scores = []
    for label in labels:
        tp = sum(p == label and e == label for p, e in zip(predicted, expected, strict=True))
        fp = sum(p == label and e != label for p, e in zip(predicted, expected, strict=True))
        fn = sum(p != label and e == label for p, e in zip(predicted, expected, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def accuracy(predictions: list[str], references: list[str]) -> float:
    """Share of answers equal to the expected one (trimmed, case-folded, final period ignored)."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return 0.0
    hits = sum(_normalize(p) == _normalize(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


BUILTIN = {"f1": macro_f1, "accuracy": accuracy}
