"""Model sources: resolve a model URI to a local folder that ``from_pretrained`` can load."""

from slmops_pipelines.models.resolve import cache_root, resolve_model

__all__ = ["cache_root", "resolve_model"]
