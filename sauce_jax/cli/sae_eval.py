"""`sauce-jax sae-eval RUN`: SAEBench's `core` report (`sae_eval.json`) for an SAE already trained.

The handler imports JAX and the SAE code only when it runs, so the parser stays light.
"""

from __future__ import annotations

import argparse

from sauce_jax.errors import ConfigError, InputError


def add_sae_eval(sub) -> None:
    p = sub.add_parser(
        "sae-eval", help="write sae_eval.json (SAEBench core keys) for a trained SAE",
        description="Measure a trained SAE as SAEBench's `core` evaluation reports it (explained variance, mse, "
                    "cossim, l2 ratio, relative reconstruction bias, l0, l1, alive fraction, feature density) and "
                    "write RUN/sae_eval.json; the model-splice scores are null (no model is run). Also writes "
                    "RUN/sae/sparsity.safetensors (SAELens' log10 feature density) when it is missing. The "
                    "activations come from --activations, --cache-dir, or RUN/cache when that is an activation cache.")
    p.add_argument("run", help="a train-sae run folder (holding sae/), or an SAE folder itself")
    p.add_argument("--activations", help="a .npy file of activations [N, d_in] to measure on")
    p.add_argument("--cache-dir", help="an activation cache folder written by train-sae --cache disk")
    p.add_argument("--out", help="where to write the JSON (default: RUN/sae_eval.json)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.set_defaults(func=run_sae_eval)


def _cache_chunks(directory):
    """The chunks of an activation cache folder, in order, as float32 arrays."""
    import json
    from pathlib import Path

    import ml_dtypes
    import numpy as np

    manifest_path = Path(directory) / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{str(directory)!r} is not an activation cache (no manifest.json)")
    manifest = json.loads(manifest_path.read_text())
    for index in sorted(manifest.get("chunks", {}), key=int):
        array = np.load(Path(directory) / manifest["chunks"][index]["file"], mmap_mode="r")
        if array.dtype.kind == "V" and array.dtype.itemsize == 2:
            array = array.view(ml_dtypes.bfloat16)
        yield np.asarray(array, np.float32)


def run_sae_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from sauce_jax.sae_io import SPARSITY_FILENAME, load_sae, save_sparsity
    from sauce_jax.statistics import core_metrics, sae_eval_record, write_sae_eval

    run = Path(args.run)
    sae_dir = run / "sae" if (run / "sae").is_dir() else run
    sae = load_sae(sae_dir)
    if args.activations and args.cache_dir:
        raise ConfigError("pass --activations or --cache-dir, not both")
    if args.activations:
        array = np.load(args.activations, mmap_mode="r")
        if array.ndim != 2 or array.shape[1] != sae.config.d_in:
            raise InputError(f"--activations {args.activations!r} has shape {array.shape}; the SAE needs [N, "
                             f"{sae.config.d_in}]")
        chunks, what = [array], f"activations from {args.activations}"
    else:
        cache = args.cache_dir
        if cache is None and (run / "cache" / "manifest.json").is_file():
            cache = run / "cache"
        if cache is None:
            raise ConfigError(f"no activations for {str(run)!r}: pass --activations FILE.npy or --cache-dir DIR")
        chunks, what = _cache_chunks(cache), f"the activation cache {cache}"
    metrics = core_metrics(sae.params, sae.config, chunks, batch_size=args.batch_size)
    out = Path(args.out) if args.out else (run if sae_dir != run else sae_dir) / "sae_eval.json"
    write_sae_eval(out, sae_eval_record(sae, metrics, activations=what))
    if not (sae_dir / SPARSITY_FILENAME).is_file():
        save_sparsity(metrics["fs"], sae_dir)
    print(f"sae_eval.json: explained variance {metrics['explained_variance']:.4f}, l0 {metrics['l0']:.2f}, "
          f"alive {metrics['frac_alive']:.3f} over {metrics['tokens']} tokens -> {out}")
    return 0
