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


def compare_unlearn(fields: dict, *, expansion: int, k: int, batch: int, dtype: str, warmup: int,
                    repeats: int) -> dict:
    """A random CLIP tower up to hidden state -2, plain and unlearned (`delta` and `reconstruct`,
    the SAE hook on all tokens), same batch, interleaved rounds. Returns images/s, each mode's
    overhead over plain and the overhead its FLOPs predict."""
    import jax
    from transformers import CLIPVisionConfig, CLIPVisionModel

    import sauce_jax
    from benchmarks.encoder import median_seconds, random_reference
    from sauce_jax.sae import SAE, SAEConfig, init_params

    encoder = sauce_jax.load_encoder(random_reference(CLIPVisionModel, CLIPVisionConfig(**fields)), dtype=dtype)
    d = fields["hidden_size"]
    config = SAEConfig(d_in=d, d_sae=expansion * d)
    sae = SAE(init_params(jax.random.key(0), config, dtype=jax.numpy.dtype(dtype)), config)
    ids = np.arange(k) * 7 % config.d_sae
    layer = encoder.layer_index(-2)
    pixels = jax.device_put(np.random.default_rng(0).standard_normal(
        (batch, fields["image_size"], fields["image_size"], 3)).astype(np.float32))
    runs = {"plain": encoder}
    for mode in ("delta", "reconstruct"):
        runs[mode] = sauce_jax.unlearn(encoder, sae, ids, layer=layer, mode=mode)
    calls = {name: (lambda e=e: e.hidden_state(pixels, layer).block_until_ready()) for name, e in runs.items()}
    seconds = median_seconds(calls, warmup, repeats)
    base = encoder_flops(fields, layer)
    tokens = (fields["image_size"] // fields["patch_size"]) ** 2 + 1
    predicted = {"delta": 2 * 2 * tokens * d * k / base, "reconstruct": 2 * 2 * tokens * d * config.d_sae / base}
    result = {"layer": layer, "d_sae": config.d_sae, "k": k, "batch": batch, "dtype": dtype,
              "device": str(jax.devices()[0]), "plain_images_per_s": batch / seconds["plain"]}
    for mode in ("delta", "reconstruct"):
        result[f"{mode}_images_per_s"] = batch / seconds[mode]
        result[f"{mode}_overhead"] = seconds[mode] / seconds["plain"] - 1
        result[f"{mode}_predicted_overhead"] = predicted[mode]
    return result


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

    from benchmarks.encoder import PRESETS

    result = compare_unlearn(PRESETS[args.preset], expansion=args.expansion, k=args.k, batch=args.batch,
                             dtype=args.dtype, warmup=args.warmup, repeats=args.repeats)
    print(f"CLIP {args.preset} to hidden state {result['layer']}, SAE {result['d_sae'] // args.expansion} x "
          f"{result['d_sae']}, k={args.k}, {args.dtype}, batch {args.batch}, on {result['device']}")
    print(f"  plain        {result['plain_images_per_s']:8.2f} images/s")
    for mode in ("delta", "reconstruct"):
        print(f"  {mode:12s} {result[f'{mode}_images_per_s']:8.2f} images/s   overhead "
              f"{100 * result[f'{mode}_overhead']:+6.1f}% (FLOPs predict {100 * result[f'{mode}_predicted_overhead']:+6.1f}%)")
    return result


if __name__ == "__main__":
    main()
