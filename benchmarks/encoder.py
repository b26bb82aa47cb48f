"""Our CLIP vision encoder against transformers' CLIPVisionModel: same config, weights and batch.

    python -m benchmarks.encoder                       # CPU: ViT-B/16-224, float32, batch 8
    python -m benchmarks.encoder --preset L/14-336 --layer -2 --dtype bfloat16 --batch 256   # GPU

Both sides run up to the same hidden state (`--layer`; transformers gets its later blocks
removed, we stop early), warm up first, then report the median of `--repeats` timed runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

PRESETS = {  # big_vision-style names -> CLIPVisionConfig fields
    "B/16-224": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     image_size=224, patch_size=16),
    "L/14-224": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=14),
    "L/14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=336, patch_size=14),
}


def median_seconds(calls: dict, warmup: int, repeats: int) -> dict:
    """Median wall time of each callable. Calls are interleaved round by round, so a slow
    phase of a shared machine hits every contender alike instead of one of them."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="B/16-224", choices=sorted(PRESETS))
    parser.add_argument("--layer", type=int, default=-1, help="hidden-state index to compute up to")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import jax
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    import sauce_jax

    fields = PRESETS[args.preset]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    reference = CLIPVisionModel(CLIPVisionConfig(**fields, attn_implementation="sdpa")).eval()
    encoder = sauce_jax.load_encoder(reference, dtype=args.dtype)
    stop = encoder.layer_index(args.layer)
    # transformers has no early stop: drop the blocks past `stop` so both sides do the same work.
    reference.encoder.layers = reference.encoder.layers[:stop]
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    reference = reference.to(device=device, dtype=torch_dtype)

    size = fields["image_size"]
    pixels = np.random.default_rng(0).standard_normal((args.batch, size, size, 3)).astype(np.float32)
    pixels_jax = jax.device_put(pixels)
    pixels_torch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(device=device, dtype=torch_dtype)

    def ours():
        encoder.hidden_state(pixels_jax, stop).block_until_ready()

    def theirs():
        with torch.inference_mode():
            reference(pixel_values=pixels_torch).last_hidden_state
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds({"ours": ours, "theirs": theirs}, args.warmup, args.repeats)
    t_ours, t_theirs = seconds["ours"], seconds["theirs"]
    result = {
        "preset": args.preset, "blocks": stop, "dtype": args.dtype, "batch": args.batch,
        "jax_device": str(jax.devices()[0]), "torch_device": device, "torch_threads": torch.get_num_threads(),
        "ours_images_per_s": args.batch / t_ours, "transformers_images_per_s": args.batch / t_theirs,
    }
    result["ratio"] = result["ours_images_per_s"] / result["transformers_images_per_s"]
    print(f"CLIP {args.preset} up to hidden state {stop} ({stop} blocks), {args.dtype}, batch {args.batch}, "
          f"jax on {result['jax_device']}, torch on {device} ({result['torch_threads']} threads)")
    print(f"  sauce-jax     {result['ours_images_per_s']:9.1f} images/s")
    print(f"  transformers  {result['transformers_images_per_s']:9.1f} images/s")
    print(f"  ratio         {result['ratio']:9.2f}x")
    return result


if __name__ == "__main__":
    main()
