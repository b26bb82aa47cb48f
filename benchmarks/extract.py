"""Activation extraction: a folder of JPEGs -> decode -> preprocess -> encoder (stopped at the
hooked layer) -> token choice -> the activation cache, in images/s, against our encoder alone on
ready device tensors at the same batch; and the projected wall time of the paper's recipe
(ImageNet-1k, 2 epochs, expansion 64) from that and the SAE step speed.

    python -m benchmarks.extract                          # CPU: ViT-B/16-224, 64 images
    python -m benchmarks.extract --preset L/14-336 --dtype bfloat16 --images 4096 --encode-batch 256 \\
        --workers 8 --sae-tokens-per-s 500000            # GPU

Epoch 1 runs the encoder; epoch 2 reads the cache, so the projection is
1.28M / extract_rate + 2 * 1.28M / sae_rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

IMAGENET_IMAGES = 1_281_167


def _write_jpeg(folder: Path, i: int, seed: int) -> None:
    rng = np.random.default_rng([seed, i])
    yy, xx = np.mgrid[0:375, 0:500]
    f = rng.uniform(0.005, 0.05, 3)
    base = np.stack([np.sin(xx * f[c] + yy * f[(c + 1) % 3]) for c in range(3)], -1) * 100 + 128
    image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)  # [375, 500, 3]
    sub = folder / f"n{i % 10:08d}"
    sub.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(sub / f"{i:06d}.JPEG", quality=90)


def write_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    """ImageNet-like files: about 500x375 JPEGs, smooth structure plus noise (realistic decode
    cost), in 10 class folders. Written by a thread pool (Pillow and numpy release the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(lambda i: _write_jpeg(Path(folder), i, seed), range(n)))


def jpeg_folder(work: Path, distinct: int, total: int | None = None) -> Path:
    """A folder of `total` JPEG files holding `distinct` different images (the rest are hard links
    to them, so decode work is real but generation and disk space are not), made once per work
    folder and reused."""
    total = total or distinct
    folder = Path(work) / f"jpegs-{distinct}-{total}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    originals = Path(work) / f"jpegs-{distinct}"
    if not (originals / ".complete").is_file():
        write_jpegs(originals, distinct)
        (originals / ".complete").touch()
    if total == distinct:
        return originals
    files = sorted(originals.rglob("*.JPEG"))
    for i in range(total):
        src = files[i % distinct]
        dst = folder / src.parent.name / f"{i:07d}.JPEG"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:  # a file system without hard links
                dst.symlink_to(src.resolve())
    done.touch()
    return folder


def compare_extract(fields: dict, folder: Path, *, dtype: str, encode_batch: int, workers: int = 0,
                    layer: int = -2) -> dict:
    """Images/s of the whole extraction path (grain decode + preprocess + encoder + last token)
    over every image of `folder`, against our encoder alone on ready device tensors at the same
    batch and number of images. Both are compiled first."""
    import jax
    from transformers import CLIPVisionConfig, CLIPVisionModel

    import sauce_jax
    from benchmarks.encoder import random_reference
    from sauce_jax.train.activations import EncoderSource

    encoder = sauce_jax.load_encoder(random_reference(CLIPVisionModel, CLIPVisionConfig(**fields)), dtype=dtype)
    source = EncoderSource(encoder, folder, layer=layer, chunk_images=10**9, encode_batch=encode_batch,
                           workers=workers)
    n = len(source.items)
    # Warm-up: compile the encoder at the batch shape on a throwaway one-batch source.
    EncoderSource(encoder, source.items[:encode_batch], layer=layer, chunk_images=encode_batch,
                  encode_batch=encode_batch).chunk(0, 0)
    start = time.perf_counter()
    acts = source.chunk(0, 0)
    pipeline_seconds = time.perf_counter() - start

    stop = encoder.layer_index(layer)
    size = fields["image_size"]
    pixels = jax.device_put(np.random.default_rng(0).standard_normal((encode_batch, size, size, 3)).astype(np.float32))
    encoder.hidden_state(pixels, stop).block_until_ready()
    calls = -(-n // encode_batch)
    start = time.perf_counter()
    for _ in range(calls):
        encoder.hidden_state(pixels, stop).block_until_ready()
    encoder_seconds = time.perf_counter() - start
    result = {"images": n, "activations": list(acts.shape), "encode_batch": encode_batch, "workers": workers,
              "dtype": dtype, "device": str(jax.devices()[0]),
              "pipeline_images_per_s": n / pipeline_seconds, "encoder_images_per_s": calls * encode_batch / encoder_seconds}
    result["ratio"] = result["pipeline_images_per_s"] / result["encoder_images_per_s"]
    return result


def projected_recipe_hours(extract_images_per_s: float, sae_tokens_per_s: float) -> dict:
    """The paper's recipe (2 epochs of ImageNet-1k, last token, so one token per image): epoch 1
    runs the encoder, SAE training reads 2 epochs of tokens (epoch 2 from the cache)."""
    encoder_hours = IMAGENET_IMAGES / extract_images_per_s / 3600
    sae_hours = 2 * IMAGENET_IMAGES / sae_tokens_per_s / 3600
    return {"encoder_hours": encoder_hours, "sae_hours": sae_hours, "hours": encoder_hours + sae_hours}


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

    from benchmarks.encoder import PRESETS

    with tempfile.TemporaryDirectory() as tmp:
        folder = jpeg_folder(Path(tmp), args.images)
        result = compare_extract(PRESETS[args.preset], folder, dtype=args.dtype, encode_batch=args.encode_batch,
                                 workers=args.workers, layer=args.layer)
    rate = result["pipeline_images_per_s"]
    print(f"extract: {args.images} JPEGs, CLIP {args.preset} to hidden state {args.layer}, {args.dtype}, "
          f"encode batch {args.encode_batch}, workers {args.workers}, on {result['device']}")
    print(f"  decode + preprocess + encoder + last token: {rate:10.1f} images/s")
    print(f"  encoder alone on ready tensors:            {result['encoder_images_per_s']:10.1f} images/s "
          f"({100 * result['ratio']:.0f}% of it)")
    epoch1_hours = IMAGENET_IMAGES / rate / 3600
    print(f"  ImageNet-1k epoch through the encoder:     {epoch1_hours:10.2f} h at this rate")
    if args.sae_tokens_per_s:
        result.update(projected_recipe_hours(rate, args.sae_tokens_per_s))
        print(f"  paper recipe (2 epochs, last token):       {result['hours']:10.2f} h "
              f"(encoder {result['encoder_hours']:.2f} h + SAE {result['sae_hours']:.2f} h); "
              f"the paper: about 54 h on an H100")
    return result


if __name__ == "__main__":
    main()
