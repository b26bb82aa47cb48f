"""SAE train-step speed and per-device memory against d_sae: dense ReLU, dense TopK and
sparse TopK, in one run.

    python -m benchmarks.sae_scale                                  # CPU: d_in 256, d_sae 16k-64k
    python -m benchmarks.sae_scale --d-in 1024 --d-sae 16384 65536 262144 1048576 --batch 4096 --k 64 \\
        --compute-dtype bfloat16                                    # GPU / TPU
"""

from __future__ import annotations

import argparse

import numpy as np


VARIANTS = {"dense relu": ("standard", False), "dense topk": ("topk", False), "sparse topk": ("topk", True)}


def compare_variants(d_in: int, d_sae: int, batch: int, k: int, compute_dtype: str, *,
                     variants=tuple(VARIANTS), model_parallel: int = 1, warmup: int = 2, repeats: int = 5) -> dict:
    """Train-step tokens/s and planned bytes per device of each variant at one shape (interleaved
    rounds, median). Returns {variant: {"tokens_per_s", "bytes_per_device"}}."""
    import jax

    from benchmarks.encoder import median_seconds
    from sauce_jax import sae as sae_lib
    from sauce_jax.train.config import TrainConfig
    from sauce_jax.train.sharding import make_mesh, memory_plan, shard_state
    from sauce_jax.train.step import global_batch, init_state, jit_train_step, make_optimizer

    mesh = make_mesh(model_parallel)
    x = global_batch(np.random.default_rng(0).standard_normal((batch, d_in)).astype(np.float32), mesh)
    calls, plans = {}, {}
    for name in variants:
        architecture, sparse = VARIANTS[name]
        config = sae_lib.SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture,
                                   k=None if architecture == "standard" else k)
        cfg = TrainConfig(batch_size=batch, compute_dtype=compute_dtype, decode="sparse" if sparse else "dense",
                          model_parallel=model_parallel)
        optimizer = make_optimizer(cfg, 10**6)
        holder = {"state": shard_state(init_state(sae_lib.init_params(jax.random.key(0), config), optimizer,
                                                  config), mesh)}
        step = jit_train_step(mesh, holder["state"], sae_config=config, cfg=cfg, optimizer=optimizer)

        def call(holder=holder, step=step):
            holder["state"], metrics = step(holder["state"], x)
            jax.block_until_ready(metrics["loss"])

        calls[name] = call
        plans[name] = memory_plan(config, batch, mesh, sparse=sparse)
    seconds = median_seconds(calls, warmup, repeats)
    return {name: {"tokens_per_s": batch / seconds[name], "bytes_per_device": plans[name].total}
            for name in variants}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--model-parallel", type=int, default=1)
    parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import jax

    rows = []
    print(f"SAE step, d_in {args.d_in}, batch {args.batch}, k {args.k}, {args.compute_dtype}, model parallel "
          f"{args.model_parallel} on {jax.devices()[0].platform}")
    print(f"{'d_sae':>9} {'variant':>12} {'tokens/s':>12} {'MiB/device':>11} {'vs dense topk':>14}")
    for d_sae in args.d_sae:
        measured = compare_variants(args.d_in, d_sae, args.batch, args.k, args.compute_dtype,
                                    model_parallel=args.model_parallel, warmup=args.warmup, repeats=args.repeats)
        for name, m in measured.items():
            row = {"d_sae": d_sae, "variant": name, **m,
                   "speedup_vs_dense_topk": m["tokens_per_s"] / measured["dense topk"]["tokens_per_s"]}
            rows.append(row)
            print(f"{d_sae:>9} {name:>12} {row['tokens_per_s']:>12,.0f} {row['bytes_per_device'] / 2**20:>11.1f} "
                  f"{row['speedup_vs_dense_topk']:>13.2f}x")
    return rows


if __name__ == "__main__":
    main()
