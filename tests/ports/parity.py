"""What every port's parity test does: save a transformers model, load it through our loader,
compare every hidden state (and the head outputs) with transformers' forward, in float32 and
bfloat16, and edit a saved checkpoint's tensors or config to provoke errors.

Imported as `from parity import ...` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

import sauce_jax
from tiny_models import reference_outputs, relative_error

F32_TOL, BF16_TOL = 1e-5, 2e-2  # float32 ports match to 1e-5; bfloat16 adds its rounding only


def save_and_load(model, path: Path, **load_kwargs):
    """`model.save_pretrained(path)`, then our encoder from that directory."""
    model.save_pretrained(path)
    return sauce_jax.load_encoder(path, **load_kwargs)


def as_float32(array) -> np.ndarray:
    return np.asarray(array, np.float32)


def assert_outputs_close(ours, ref_hidden_states, tol: float, *, pairs: Iterable = ()) -> None:
    """Our every hidden state against the reference's (same count), and each (ours, reference)
    pair of `pairs` (last_hidden_state, pooler_output, ...), all within relative error `tol`."""
    assert len(ours.hidden_states) == len(ref_hidden_states)
    errors = [relative_error(as_float32(a), b) for a, b in zip(ours.hidden_states, ref_hidden_states)]
    errors += [relative_error(as_float32(a), b) for a, b in pairs]
    assert max(errors) <= tol, errors


def check_outputs(encoder, reference, pixels: np.ndarray, tol: float, *, last: bool = True,
                  pooler: bool | None = True, no_embeds: bool = False):
    """Our encoder against transformers' `reference` on NHWC `pixels`: every hidden state, and
    last_hidden_state with `last`; pooler_output compared (True), required absent on both
    sides (None) or not looked at (False); with `no_embeds`, image_embeds must be None.
    Returns (ours, transformers' output)."""
    ours = encoder(pixels)
    ref = reference_outputs(reference, pixels)
    assert len(ours.hidden_states) == encoder.config.num_layers + 1
    pairs = [(ours.last_hidden_state, ref.last_hidden_state)] if last else []
    if pooler:
        pairs.append((ours.pooler_output, ref.pooler_output))
    elif pooler is None:
        assert ours.pooler_output is None and ref.pooler_output is None
    if no_embeds:
        assert ours.image_embeds is None
    assert_outputs_close(ours, ref.hidden_states, tol, pairs=pairs)
    return ours, ref


def assert_bfloat16(arrays) -> None:
    """Every array computed in bfloat16."""
    assert all(a.dtype == np.dtype("bfloat16") for a in arrays)


def relayout(directory: Path, rename: Callable[[str], str]) -> None:
    """Rewrite a saved checkpoint's tensor names, as another transformers version stores them."""
    tensors = load_file(directory / "model.safetensors")
    save_file({rename(k): v for k, v in tensors.items()}, directory / "model.safetensors")


def edit_tensors(path: Path, edit: Callable[[dict], None]) -> None:
    """Apply `edit` to the tensors of `path/model.safetensors` in place."""
    tensors = dict(load_file(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def edit_config(path: Path, **changes) -> None:
    """Set fields of `path/config.json`."""
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))
