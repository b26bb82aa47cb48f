"""Activation extraction: a folder of JPEGs -> decode -> preprocess -> encoder (stopped at the
hooked layer) -> token choice -> the activation cache, in images/s; and the projected wall time
of the paper's recipe (ImageNet-1k, 2 epochs, expansion 64) from that and the SAE step speed.

    python -m benchmarks.extract                          # CPU: ViT-B/16-224, 64 images
    python -m benchmarks.extract --preset L/14-336 --dtype bfloat16 --images 4096 --encode-batch 256 \\
        --workers 8 --sae-tokens-per-s 500000            # GPU

Epoch 1 runs the encoder; epoch 2 reads the cache, so the projection is
1.28M / extract_rate + 2 * 1.28M / sae_rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_IMAGES = 1_281_167


def write_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    """ImageNet-like files: about 500x375 JPEGs, smooth structure plus noise (realistic decode cost)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        f = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(xx * f[c] + yy * f[(c + 1) % 3]) for c in range(3)], -1) * 100 + 128
        image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        sub = folder / f"n{i % 10:08d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"{i:06d}.JPEG", quality=90)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="B/16-224")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--encode-batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--layer", type=int, default=-2)
    parser.add_argument("--sae-tokens-per-s", type=float, default=None,
                        help="SAE train speed for the projection (benchmarks/sae_step.py at the paper's shape)")
    args = parser.parse_args(argv)

    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    import sauce_jax
    from benchmarks.encoder import PRESETS
    from sauce_jax.train.activations import CachedSource, EncoderSource

    torch.manual_seed(0)
    encoder = sauce_jax.load_encoder(CLIPVisionModel(CLIPVisionConfig(**PRESETS[args.preset])), dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_jpegs(folder, args.images)
        # Warm-up: compile the encoder at the batch shape on a throwaway chunk.
        warm = EncoderSource(encoder, folder, layer=args.layer, chunk_images=args.encode_batch,
                             encode_batch=args.encode_batch)
        warm.chunk(0, 0)
        source = CachedSource(EncoderSource(encoder, folder, layer=args.layer, chunk_images=args.images,
                                            encode_batch=args.encode_batch, workers=args.workers))
        start = time.perf_counter()
        acts = source.chunk(0, 0)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        source.chunk(1, 0)  # epoch 2: from the cache
        cached_seconds = time.perf_counter() - start
    rate = args.images / seconds
    result = {"images_per_s": rate, "cached_images_per_s": args.images / cached_seconds,
              "activations": list(acts.shape)}
    print(f"extract: {args.images} JPEGs, CLIP {args.preset} to hidden state {args.layer}, {args.dtype}, "
          f"encode batch {args.encode_batch}, workers {args.workers}")
    print(f"  first epoch (decode + preprocess + encoder): {rate:10.1f} images/s")
    print(f"  later epochs (cache):                        {result['cached_images_per_s']:10.1f} images/s")
    epoch1_hours = IMAGENET_IMAGES / rate / 3600
    print(f"  ImageNet-1k epoch through the encoder:       {epoch1_hours:10.2f} h at this rate")
    if args.sae_tokens_per_s:
        sae_hours = 2 * IMAGENET_IMAGES / args.sae_tokens_per_s / 3600
        result["projected_hours"] = epoch1_hours + sae_hours
        print(f"  paper recipe (2 epochs, last token):         {result['projected_hours']:10.2f} h "
              f"(encoder {epoch1_hours:.2f} h + SAE {sae_hours:.2f} h); the paper: about 54 h on an H100")
    return result


if __name__ == "__main__":
    main()
