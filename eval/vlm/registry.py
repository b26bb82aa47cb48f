"""The registry of answerers: the VLM families whose checkpoints the project can ask questions
(LLaVA, Mllama), each keyed by the `model_type` of its `config.json`. Adding a family is one
answerer module plus one entry here; the CLI and the feature site read only this table."""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

from sauce_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AnswererFamily:
    """One VLM family: the checkpoint `model_type` it reads and where its answerer class lives
    (imported only when a checkpoint of the family is loaded: it pulls in torch)."""

    model_type: str
    name: str  # as a message names it
    module: str  # dotted module of the answerer class
    cls: str  # the class; called as cls(checkpoint_dir, **options)

    def load(self, checkpoint: str | os.PathLike, **options) -> Any:
        """The answerer of `checkpoint` (a folder or hub-cache name) of this family."""
        from sauce_jax.ports.weights import resolve_checkpoint_dir

        return getattr(importlib.import_module(self.module), self.cls)(resolve_checkpoint_dir(checkpoint), **options)


ANSWERERS: tuple[AnswererFamily, ...] = (
    AnswererFamily("llava", "LLaVA", "sauce_jax.eval.vlm.llava_answerer", "LlavaAnswerer"),
    AnswererFamily("mllama", "Mllama", "sauce_jax.eval.vlm.mllama_answerer", "MllamaAnswerer"),
)


def _model_type(checkpoint: str | os.PathLike) -> str | None:
    """The model_type of the checkpoint's `config.json`; "onnx" for an ONNX file."""
    from sauce_jax.ports.weights import read_json, resolve_checkpoint_dir

    text = str(checkpoint)
    if text.startswith("onnx:") or text.lower().endswith(".onnx"):
        return "onnx"
    return read_json(resolve_checkpoint_dir(checkpoint) / "config.json").get("model_type")


def answerer_family(checkpoint: str | os.PathLike) -> AnswererFamily | None:
    """The family whose answerer reads `checkpoint` (a folder or hub-cache name), or None for a
    checkpoint no answerer reads (a bare vision tower, an ONNX file)."""
    model_type = _model_type(checkpoint)
    return next((family for family in ANSWERERS if family.model_type == model_type), None)


def load_answerer(checkpoint: str | os.PathLike, *, what: str = "this", **options) -> Any:
    """The answerer of a VLM checkpoint (`options` go to its class: batch_size, dtype, ...);
    ConfigError naming the checkpoint's type for any other. `what` names the option that
    needs a VLM in that message."""
    family = answerer_family(checkpoint)
    if family is None:
        known = " or ".join(f.name for f in ANSWERERS)
        raise ConfigError(f"{what} needs a {known} checkpoint; {str(checkpoint)!r} is {_model_type(checkpoint)!r}")
    return family.load(checkpoint, **options)
