"""The unlearned forward against the plain forward: same encoder, batch and layer, one run.

    python -m benchmarks.unlearn                                  # CPU: ViT-B/16-224, expansion 16, batch 4
    python -m benchmarks.unlearn --preset L/14-336 --expansion 64 --batch 64 --dtype bfloat16   # GPU

Both run up to hidden state -2 (LLaVA's), the unlearned one with the SAE hook there on all
tokens. Prints the measured overhead of `delta` and `reconstruct` next to what their FLOPs predict.
"""

from __future__ import annotations

import argparse

import numpy as np


def encoder_flops(cfg: dict, blocks: int) -> float:
    """Matmul FLOPs per image of `blocks` ViT blocks plus the patch embedding."""
    d, t, ff = cfg["hidden_size"], (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1, cfg["intermediate_size"]
    per_block = 2 * t * (4 * d * d + 2 * d * ff) + 2 * 2 * t * t * d
    return blocks * per_block + 2 * (t - 1) * d * 3 * cfg["patch_size"] ** 2


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="B/16-224")
    parser.add_argument("--expansion", type=int, default=16)
    parser.add_argument("--k", type=int, default=32, help="features unlearned")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)

    import jax
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    import sauce_jax
    from benchmarks.encoder import PRESETS, median_seconds
    from sauce_jax.sae import SAE, SAEConfig, init_params

    fields = PRESETS[args.preset]
    torch.manual_seed(0)
    encoder = sauce_jax.load_encoder(CLIPVisionModel(CLIPVisionConfig(**fields)), dtype=args.dtype)
    d = fields["hidden_size"]
    config = SAEConfig(d_in=d, d_sae=args.expansion * d)
    sae = SAE(init_params(jax.random.key(0), config, dtype=jax.numpy.dtype(args.dtype)), config)
    ids = np.arange(args.k) * 7 % config.d_sae
    layer = encoder.layer_index(-2)
    pixels = jax.device_put(np.random.default_rng(0).standard_normal(
        (args.batch, fields["image_size"], fields["image_size"], 3)).astype(np.float32))
    runs = {"plain": encoder}
    for mode in ("delta", "reconstruct"):
        runs[mode] = sauce_jax.unlearn(encoder, sae, ids, layer=layer, mode=mode)
    calls = {name: (lambda e=e: e.hidden_state(pixels, layer).block_until_ready()) for name, e in runs.items()}
    seconds = median_seconds(calls, args.warmup, args.repeats)
    base = encoder_flops(fields, layer)
    tokens = (fields["image_size"] // fields["patch_size"]) ** 2 + 1
    predicted = {"delta": 2 * 2 * tokens * d * args.k / base, "reconstruct": 2 * 2 * tokens * d * config.d_sae / base}
    print(f"CLIP {args.preset} to hidden state {layer}, SAE {d} x {config.d_sae}, k={args.k}, {args.dtype}, "
          f"batch {args.batch}, on {jax.devices()[0]}")
    print(f"  plain        {args.batch / seconds['plain']:8.2f} images/s")
    result = {"plain_images_per_s": args.batch / seconds["plain"]}
    for mode in ("delta", "reconstruct"):
        overhead = seconds[mode] / seconds["plain"] - 1
        result[f"{mode}_overhead"] = overhead
        print(f"  {mode:12s} {args.batch / seconds[mode]:8.2f} images/s   overhead {100 * overhead:+6.1f}% "
              f"(FLOPs predict {100 * predicted[mode]:+6.1f}%)")
    return result


if __name__ == "__main__":
    main()
