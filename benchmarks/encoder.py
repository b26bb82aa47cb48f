"""Our vision encoders against transformers' PyTorch models: same config, weights and batch.

    python -m benchmarks.encoder                       # CPU: CLIP ViT-B/16-224, float32, batch 8
    python -m benchmarks.encoder --preset L/14-336 --layer -2 --dtype bfloat16 --batch 256   # GPU
    python -m benchmarks.encoder --preset siglip-B/16-224 --batch 8                           # CPU
    python -m benchmarks.encoder --preset mllama-small --batch 2                              # CPU
    python -m benchmarks.encoder --preset mllama-11B --dtype bfloat16 --batch 8               # GPU

CLIP and SigLIP run up to the same hidden state (`--layer`; transformers gets its later
blocks removed, we stop early). Mllama runs the whole tower (every image 4 tiles): its
output concatenates intermediate local layers, so there is no early stop to compare.
Both sides warm up first, then report the median of `--repeats` timed runs.
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
SIGLIP_PRESETS = {  # -> SiglipVisionConfig fields
    "siglip-B/16-224": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            image_size=224, patch_size=16),
    "siglip-So400m/14-384": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                 num_attention_heads=16, image_size=384, patch_size=14),
}
MLLAMA_PRESETS = {  # -> MllamaVisionConfig fields
    "mllama-small": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=4, num_global_layers=2,
                         attention_heads=6, image_size=224, patch_size=14, max_num_tiles=4,
                         intermediate_layers_indices=[1, 3]),
    # Llama-3.2-11B-Vision's tower: 32 local + 8 global blocks, 560 px tiles, 4 tiles of 1601 (1608) tokens.
    "mllama-11B": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_global_layers=8,
                       attention_heads=16, image_size=560, patch_size=14, max_num_tiles=4,
                       intermediate_layers_indices=[3, 7, 15, 23, 30]),
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


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def random_reference(model_cls, config):
    """A randomly initialised transformers model, built on the GPU when there is one (random init of
    a large tower is slow on the host), in float32 so both sides start from the same weights."""
    import torch

    torch.manual_seed(0)
    with torch.device(torch_device()):
        return model_cls(config).eval()


def compare_vit(family: str, fields: dict, *, layer: int, dtype: str, batch: int, warmup: int, repeats: int) -> dict:
    """A CLIP or SigLIP tower up to hidden state `layer`: our encoder against transformers (SDPA),
    the same random weights, batch and dtype. Returns images/s of both sides and their ratio."""
    import jax
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    import sauce_jax

    config_cls, model_cls = ((SiglipVisionConfig, SiglipVisionModel) if family == "SigLIP"
                             else (CLIPVisionConfig, CLIPVisionModel))
    device = torch_device()
    reference = random_reference(model_cls, config_cls(**fields, attn_implementation="sdpa"))
    encoder = sauce_jax.load_encoder(reference, dtype=dtype)
    stop = encoder.layer_index(layer)
    # transformers has no early stop: drop the blocks past `stop` so both sides do the same work.
    reference.encoder.layers = reference.encoder.layers[:stop]
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    reference = reference.to(device=device, dtype=torch_dtype)

    size = fields["image_size"]
    pixels = np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32)
    pixels_jax = jax.device_put(pixels)
    pixels_torch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(device=device, dtype=torch_dtype)

    def ours():
        encoder.hidden_state(pixels_jax, stop).block_until_ready()

    def theirs():
        with torch.inference_mode():
            reference(pixel_values=pixels_torch).last_hidden_state
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds({"ours": ours, "theirs": theirs}, warmup, repeats)
    result = {
        "family": family, "blocks": stop, "dtype": dtype, "batch": batch,
        "jax_device": str(jax.devices()[0]), "torch_device": device, "torch_threads": torch.get_num_threads(),
        "ours_images_per_s": batch / seconds["ours"], "transformers_images_per_s": batch / seconds["theirs"],
    }
    result["ratio"] = result["ours_images_per_s"] / result["transformers_images_per_s"]
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="B/16-224", choices=sorted({**PRESETS, **SIGLIP_PRESETS, **MLLAMA_PRESETS}))
    parser.add_argument("--layer", type=int, default=-1, help="hidden-state index to compute up to")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    timing = dict(dtype=args.dtype, batch=args.batch, warmup=args.warmup, repeats=args.repeats)

    if args.preset in MLLAMA_PRESETS:
        result = compare_mllama(MLLAMA_PRESETS[args.preset], **timing)
        print(f"Mllama {args.preset}: whole tower ({result['blocks']} blocks), {result['tiles']} tiles per image, "
              f"{args.dtype}, batch {args.batch}, jax on {result['jax_device']}, torch on {result['torch_device']} "
              f"({result['torch_threads']} threads)")
    else:
        family = "SigLIP" if args.preset in SIGLIP_PRESETS else "CLIP"
        fields = SIGLIP_PRESETS[args.preset] if family == "SigLIP" else PRESETS[args.preset]
        result = compare_vit(family, fields, layer=args.layer, **timing)
        stop = result["blocks"]
        print(f"{family} {args.preset} up to hidden state {stop} ({stop} blocks), {args.dtype}, batch {args.batch}, "
              f"jax on {result['jax_device']}, torch on {result['torch_device']} ({result['torch_threads']} threads)")
    result["preset"] = args.preset
    _report(result)
    return result


def _report(result: dict) -> None:
    print(f"  sauce-jax     {result['ours_images_per_s']:9.1f} images/s")
    print(f"  transformers  {result['transformers_images_per_s']:9.1f} images/s")
    print(f"  ratio         {result['ratio']:9.2f}x")


def compare_mllama(fields: dict, *, dtype: str, batch: int, warmup: int, repeats: int) -> dict:
    """The whole Mllama tower on images of max_num_tiles tiles each (the aspect ratio using them all),
    ours against transformers (SDPA) on the same random weights."""
    import jax
    import torch
    from transformers import MllamaVisionConfig, MllamaVisionModel

    import sauce_jax
    from sauce_jax.mllama_processor import mllama_inputs

    device = torch_device()
    reference = random_reference(MllamaVisionModel, MllamaVisionConfig(**fields, attn_implementation="sdpa"))
    encoder = sauce_jax.load_encoder(reference, dtype=dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    reference = reference.to(device=device, dtype=torch_dtype)

    n, size = fields["max_num_tiles"], fields["image_size"]
    ratios = encoder.model_config.supported_aspect_ratios
    ratio_id = 1 + max(range(len(ratios)), key=lambda k: ratios[k][0] * ratios[k][1])  # first arrangement of n tiles
    pixels = np.random.default_rng(0).standard_normal((batch, n, size, size, 3)).astype(np.float32)
    ids, mask = np.full(batch, ratio_id), np.ones((batch, n), np.int64)
    inputs = mllama_inputs(pixels, ids, mask)
    inputs_jax = tuple(jax.device_put(inputs[f]) for f in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"))
    pixels_torch = torch.from_numpy(pixels).permute(0, 1, 4, 2, 3)[:, None].contiguous().to(device=device,
                                                                                              dtype=torch_dtype)
    ids_torch = torch.from_numpy(ids)[:, None].to(device)
    mask_torch = torch.from_numpy(mask)[:, None].to(device)

    def ours():
        encoder(inputs_jax).last_hidden_state.block_until_ready()

    def theirs():
        with torch.inference_mode():
            reference(pixel_values=pixels_torch, aspect_ratio_ids=ids_torch, aspect_ratio_mask=mask_torch)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = median_seconds({"ours": ours, "theirs": theirs}, warmup, repeats)
    result = {
        "family": "Mllama", "blocks": encoder.config.num_layers, "dtype": dtype, "batch": batch,
        "tiles": n, "jax_device": str(jax.devices()[0]), "torch_device": device,
        "torch_threads": torch.get_num_threads(),
        "ours_images_per_s": batch / seconds["ours"], "transformers_images_per_s": batch / seconds["theirs"],
    }
    result["ratio"] = result["ours_images_per_s"] / result["transformers_images_per_s"]
    return result


if __name__ == "__main__":
    main()
