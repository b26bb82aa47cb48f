"""Weight quantization for the quantization attack (Zhang et al. 2025; the paper's Figure 7).

The scheme is symmetric round-to-nearest (RTN) with one scale per output channel: for a
channel (row) w, scale = max|w| / qmax with qmax = 2**(bits-1) - 1 (7 at 4 bits), the codes
q = clip(round(w / scale), -qmax, qmax) and the stored weight q * scale. That gives at most
2 * qmax + 1 = 15 levels per row at 4 bits (symmetric, so -8 is unused), an error of at most
scale / 2 per entry, and an all-zero row stays exactly zero. The quantized weights are kept
dequantized in their original dtype (fake quantization): the forward pass sees exactly the
4-bit grid's values, which is what an attack on the unlearned weights needs, without a
low-bit kernel.

What is quantized, as 4-bit LLM quantizers (GPTQ, AWQ, bitsandbytes) do: the weight matrices
of every linear (and convolution) layer. Biases, norms, embeddings and the tied `lm_head`
(the ConceptWorld LLaVA ties it to the token embeddings) stay in full precision.
- PyTorch LLaVA (`quantize_llava`): every `nn.Linear` / `nn.Conv*` weight of the projector
  and the language model, channel axis 0 ([out, in, ...]).
- JAX vision tower (`quantize_encoder`): every `kernel` (linear [in, out], patch convolution
  [kh, kw, in, out]), channel axis -1; class / position embeddings, norms and biases kept.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from sauce_jax.errors import ConfigError, InputError

__all__ = ["quantize_encoder", "quantize_llava", "quantize_per_channel"]


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ConfigError(f"quantization bits={bits!r} must be an integer in [2, 8]")
    return int(bits)


def quantize_per_channel(weight: Any, bits: int = 4, axis: int = 0, name: str = "weight") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel round-to-nearest quantization of `weight` (see the module doc).

    Args:
      weight: a floating array of rank >= 2 (numpy, or anything `np.asarray` takes).
      bits: code width; the codes are the integers in [-(2**(bits-1) - 1), 2**(bits-1) - 1].
      axis: the output-channel axis; each slice along it gets its own scale.
      name: how errors name the tensor.

    Returns (dequantized weight, same shape and dtype as `weight`; scales [C] float32).
    """
    bits = _check_bits(bits)
    w = np.asarray(weight)
    if not np.issubdtype(w.dtype, np.floating):
        raise InputError(f"{name}: quantization takes a floating array, got dtype {w.dtype}")
    if w.ndim < 2:
        raise InputError(f"{name}: per-channel quantization needs rank >= 2, got shape {w.shape}")
    if not -w.ndim <= axis < w.ndim:
        raise InputError(f"{name}: channel axis {axis} is out of range for shape {w.shape}")
    if not np.isfinite(w).all():
        raise InputError(f"{name}: the weight holds NaN or infinite values; it cannot be quantized")
    rows = np.moveaxis(w, axis, 0)
    flat = rows.reshape(rows.shape[0], -1).astype(np.float64)  # [C, rest]
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(flat).max(axis=1) / qmax if flat.shape[1] else np.zeros(flat.shape[0])  # [C]
    safe = np.where(scale > 0, scale, 1.0)  # an all-zero row: codes 0, stays zero
    codes = np.clip(np.rint(flat / safe[:, None]), -qmax, qmax)
    out = (codes * scale[:, None]).reshape(rows.shape)
    return np.moveaxis(out, 0, axis).astype(w.dtype), scale.astype(np.float32)


def _relative_error(before: np.ndarray, after: np.ndarray) -> float:
    norm = float(np.linalg.norm(before))
    return float(np.linalg.norm(after - before)) / norm if norm else 0.0


def quantize_llava(llava: Any, bits: int = 4) -> tuple[Any, dict]:
    """A copy of a PyTorch LLaVA whose projector and language-model linear weights are
    quantized per output channel (the input model is not modified).

    Returns (the copy, a summary: {"tensors", "parameters", "mean_relative_error"})."""
    import torch

    bits = _check_bits(bits)
    quantized = copy.deepcopy(llava)
    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    errors, count = [], 0
    with torch.no_grad():
        for name, module in quantized.named_modules():
            # The tower runs in JAX (quantize_encoder); lm_head is tied to the kept embeddings.
            if not isinstance(module, layers) or "vision_tower" in name or name.endswith("lm_head"):
                continue
            if "multi_modal_projector" not in name and "language_model" not in name:
                continue
            before = module.weight.detach().cpu().float().numpy().copy()  # not a view: the weight is overwritten
            after, _ = quantize_per_channel(before, bits, axis=0, name=f"{name}.weight")
            module.weight.copy_(torch.from_numpy(after).to(module.weight.dtype))
            errors.append(_relative_error(before, after))
            count += before.size
    if not errors:
        raise ConfigError(f"{type(llava).__name__} has no projector / language-model linear layer to quantize")
    return quantized.eval(), {"tensors": len(errors), "parameters": count,
                              "mean_relative_error": round(float(np.mean(errors)), 5)}


def quantize_encoder(encoder: Any, bits: int = 4) -> tuple[Any, dict]:
    """A copy of a sauce-jax `VisionEncoder` whose every `kernel` param (linear and patch
    convolution weights) is quantized per output channel (last axis); hooks are kept.

    Returns (the copy, a summary as `quantize_llava`'s)."""
    import jax
    import jax.numpy as jnp

    bits = _check_bits(bits)
    errors, count = [], [0]

    def one(path, value):
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if "kernel" not in keys:
            return value
        before = np.asarray(value)
        after, _ = quantize_per_channel(before, bits, axis=-1, name=jax.tree_util.keystr(path))
        errors.append(_relative_error(before, after))
        count[0] += before.size
        return jnp.asarray(after)

    state = jax.tree_util.tree_map_with_path(one, encoder.state)
    if not errors:
        raise ConfigError(f"{type(encoder).__name__} has no `kernel` param to quantize")
    quantized = object.__new__(type(encoder))
    quantized.__dict__.update(encoder.__dict__)  # graphdef, configs, hooks: all but the params shared
    quantized.state = state
    return quantized, {"tensors": len(errors), "parameters": count[0],
                       "mean_relative_error": round(float(np.mean(errors)), 5)}
