"""Build small random CLIP, SigLIP, DINOv2 and Mllama towers with transformers, load them
through sauce-jax, compare every layer.

This is what `sauce-jax selfcheck` runs: proof on a fresh machine that conversion, the port
and the hidden-state contract agree with the PyTorch reference.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from sauce_jax.errors import SauceError

# (name, transformers model family, config fields): small enough to run in seconds on a CPU.
CONFIGS = {
    "clip tiny/8 quick_gelu": ("clip", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                            num_attention_heads=4, image_size=64, patch_size=8,
                                            hidden_act="quick_gelu")),
    "clip tiny/14 gelu": ("clip", dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                                       num_attention_heads=6, image_size=56, patch_size=14, hidden_act="gelu")),
    "siglip tiny/8 + head": ("siglip", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                            num_attention_heads=4, image_size=48, patch_size=8)),
    "dinov2 tiny/8 swiglu": ("dinov2", dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3, mlp_ratio=2,
                                            image_size=48, patch_size=8, use_swiglu_ffn=True)),
    "mllama tiny/4 4 tiles": ("mllama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                             num_global_layers=2, attention_heads=4, image_size=16, patch_size=4,
                                             max_num_tiles=4, intermediate_layers_indices=[0, 2])),
}
# The transformers classes of each family (configs and models are named alike).
_CLASSES = {"clip": "CLIPVision", "siglip": "SiglipVision", "dinov2": "Dinov2", "mllama": "MllamaVision"}


def relative_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


def run(tolerance: float = 1e-5, seed: int = 0, log=print) -> bool:
    """Returns True when every hidden state of every config is within `tolerance`."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise SauceError("the self-check compares against PyTorch: pip install 'sauce-jax[torch]'") from exc
    from sauce_jax.loading import load_encoder

    ok = True
    for name, (family, fields) in CONFIGS.items():
        torch.manual_seed(seed)
        prefix = _CLASSES[family]
        config = getattr(transformers, f"{prefix}Config")(**fields)
        reference = getattr(transformers, f"{prefix}Model")(config).eval()
        # transformers' init zeroes the biases and sets layernorms to 1, which would hide a
        # misplaced bias or layernorm: every parameter gets noise of its own
        generator = torch.Generator().manual_seed(1000 + seed)
        with torch.no_grad():
            for parameter in reference.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        with tempfile.TemporaryDirectory() as tmp:
            reference.save_pretrained(tmp)
            encoder = load_encoder(Path(tmp))
        compare = _compare_mllama if family == "mllama" else _compare_vit
        errors, states = compare(torch, reference, encoder, fields, seed)
        worst = max(errors)
        passed = worst <= tolerance and states > 0
        ok &= passed
        log(f"{name:24s} {states} hidden states + output: worst relative error {worst:.2e} "
            f"({'ok' if passed else 'FAIL'}, tolerance {tolerance:.0e})")
    return ok


def _compare_vit(torch, reference, encoder, fields, seed) -> tuple[list[float], int]:
    """Relative errors of every hidden state and the pooled output on random images, and the
    number of hidden states (0 when ours and transformers' counts differ)."""
    size = fields["image_size"]
    pixels = np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    ours = encoder(pixels)
    errors = [relative_error(a, b) for a, b in zip(ours.hidden_states, expected.hidden_states)]
    if expected.pooler_output is not None:
        errors.append(relative_error(ours.pooler_output, expected.pooler_output))
    return errors, len(ours.hidden_states) if len(ours.hidden_states) == len(expected.hidden_states) else 0


def _compare_mllama(torch, reference, encoder, fields, seed) -> tuple[list[float], int]:
    """As `_compare_vit` for the tiled Mllama tower: one image of every tile and one of a single
    tile (the rest padding), every local and global hidden state (captured with hooks: the
    vision model returns none) and last_hidden_state."""
    from sauce_jax.mllama_processor import mllama_inputs, supported_aspect_ratios

    n, size = fields["max_num_tiles"], fields["image_size"]
    ratios = supported_aspect_ratios(n)
    full = 1 + max(range(len(ratios)), key=lambda i: ratios[i][0] * ratios[i][1])
    mask = np.zeros((2, n), np.int64)
    mask[0, : ratios[full - 1][0] * ratios[full - 1][1]] = 1
    mask[1, 0] = 1
    pixels = np.random.default_rng(seed).standard_normal((2, n, size, size, 3)).astype(np.float32)
    pixels *= mask[:, :, None, None, None]
    inputs = mllama_inputs(pixels, np.array([full, 1]), mask)
    states = []
    blocks = list(reference.transformer.layers) + list(reference.global_transformer.layers)
    handles = [reference.transformer.register_forward_pre_hook(  # state 0: the local transformer's input
        lambda m, args, kwargs: states.append((args[0] if args else kwargs["hidden_states"]).clone()),
        with_kwargs=True)]
    handles += [b.register_forward_hook(lambda m, args, out: states.append(out.clone())) for b in blocks]
    try:
        with torch.no_grad():
            last = reference(pixel_values=torch.from_numpy(pixels).permute(0, 1, 4, 2, 3)[:, None],
                             aspect_ratio_ids=torch.from_numpy(np.array([[full], [1]])),
                             aspect_ratio_mask=torch.from_numpy(mask)[:, None]).last_hidden_state[:, 0]
    finally:
        for handle in handles:
            handle.remove()
    ours = encoder(inputs)
    errors = [relative_error(a, b) for a, b in zip(ours.hidden_states, states)]
    errors.append(relative_error(ours.last_hidden_state, last))
    return errors, len(states) if len(ours.hidden_states) == len(states) else 0
