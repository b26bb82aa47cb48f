"""Build small random CLIP and SigLIP towers with transformers, load them through sauce-jax,
compare every layer.

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
}


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
        prefix = {"clip": "CLIP", "siglip": "Siglip"}[family]
        config = getattr(transformers, f"{prefix}VisionConfig")(**fields)
        reference = getattr(transformers, f"{prefix}VisionModel")(config).eval()
        # transformers' init zeroes the biases and sets layernorms to 1, which would hide a
        # misplaced bias or layernorm: every parameter gets noise of its own
        generator = torch.Generator().manual_seed(1000 + seed)
        with torch.no_grad():
            for parameter in reference.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        with tempfile.TemporaryDirectory() as tmp:
            reference.save_pretrained(tmp)
            encoder = load_encoder(Path(tmp))
        size = fields["image_size"]
        pixels = np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            expected = reference(torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
        ours = encoder(pixels)
        errors = [relative_error(a, b) for a, b in zip(ours.hidden_states, expected.hidden_states)]
        if expected.pooler_output is not None:
            errors.append(relative_error(ours.pooler_output, expected.pooler_output))
        worst = max(errors)
        ok &= worst <= tolerance and len(ours.hidden_states) == len(expected.hidden_states)
        log(f"{name:24s} {len(ours.hidden_states)} hidden states + pooled: worst relative error {worst:.2e} "
            f"({'ok' if worst <= tolerance else 'FAIL'}, tolerance {tolerance:.0e})")
    return ok
