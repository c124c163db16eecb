"""Model resolution (HF id, local path, bundled name) and the inference engine."""

from optimus.models.engine import TransformersEngine
from optimus.models.registry import load_model, load_tokenizer, resolve_model_path

__all__ = ["TransformersEngine", "load_model", "load_tokenizer", "resolve_model_path"]
