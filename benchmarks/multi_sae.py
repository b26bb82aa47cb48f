"""Several SAEs from one pass of the images (`train_saes`) against one `train_sae` run per
setting, in one process on the same images: wall time of each and the ratio.

    python -m benchmarks.multi_sae                       # CPU: ViT-B/16-224, 64 images, layers -2 -4 -8
    python -m benchmarks.multi_sae --images 2048 --encode-batch 256 --dtype bfloat16   # GPU

Both sides train the same SAEs (same seeds, same steps; the results are equal, tested in
tests/train/test_multi_sae.py) from a memory cache, so the difference is the encoder: the
separate runs push the images through the tower once per layer (up to that layer), the
shared run once (up to the deepest). The two sides alternate for `--rounds` rounds; every
round compiles the SAE steps afresh on both sides, as a new run does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="B/16-224")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--layers", type=int, nargs="+", default=[-2, -4, -8])
    parser.add_argument("--expansion", type=int, nargs="+", default=[4])
    parser.add_argument("--k", type=int, nargs="+", default=[32])
    parser.add_argument("--token", default="all")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--encode-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    import sauce_jax
    from benchmarks.encoder import PRESETS
    from benchmarks.extract import write_jpegs
    from sauce_jax.train import TrainConfig, sweep_settings, train_sae, train_saes

    torch.manual_seed(0)
    encoder = sauce_jax.load_encoder(CLIPVisionModel(CLIPVisionConfig(**PRESETS[args.preset])), dtype=args.dtype)
    settings = sweep_settings(encoder.config.hidden_size, args.layers, args.expansion, args.k, architecture="topk")
    cfg = TrainConfig(batch_size=args.batch_size, epochs=args.epochs, log_every=10**6, checkpoint_every=10**6)
    source = dict(token=args.token, chunk_images=args.images, encode_batch=args.encode_batch)
    times: dict[str, list[float]] = {"separate": [], "one pass": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        write_jpegs(folder, args.images)
        # Warm-up: compile the tower at every stop layer and at the shared one, at the encode batch.
        from PIL import Image

        pixels = sauce_jax.preprocess([Image.open(next(folder.rglob("*.JPEG")))] * args.encode_batch, encoder)
        for setting in settings:
            encoder.hidden_state(pixels, setting.layer)
        encoder.hidden_states_at(pixels, [s.layer for s in settings])
        for r in range(args.rounds):
            start = time.perf_counter()
            for setting in settings:
                train_sae(Path(tmp) / f"separate{r}" / setting.name, encoder=encoder, images=folder,
                          layer=setting.layer, sae_config=setting.sae_config, train_config=cfg, progress=False,
                          **source)
            times["separate"].append(time.perf_counter() - start)
            start = time.perf_counter()
            train_saes(Path(tmp) / f"shared{r}", settings, encoder=encoder, images=folder, train_config=cfg,
                       progress=False, **source)
            times["one pass"].append(time.perf_counter() - start)
            print(f"round {r + 1}: separate {times['separate'][-1]:.1f} s, one pass {times['one pass'][-1]:.1f} s")
    separate, shared = (statistics.median(times[k]) for k in ("separate", "one pass"))
    ratios = [a / b for a, b in zip(times["separate"], times["one pass"])]
    print(f"{len(settings)} SAEs ({', '.join(s.name for s in settings)}) on {args.images} images, {args.preset} "
          f"{args.dtype}, token {args.token}, {args.epochs} epoch(s), batch {args.batch_size}")
    print(f"separate runs: {separate:.1f} s   one pass: {shared:.1f} s   ratio {separate / shared:.2f}x "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)")
    return {"separate_s": separate, "one_pass_s": shared, "ratio": separate / shared, "rounds": times}


if __name__ == "__main__":
    main()
