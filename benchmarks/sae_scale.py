"""SAE train-step speed and per-device memory against d_sae: dense ReLU, dense TopK and
sparse TopK, in one run.

    python -m benchmarks.sae_scale                                  # CPU: d_in 256, d_sae 16k-64k
    python -m benchmarks.sae_scale --d-in 1024 --d-sae 16384 65536 262144 1048576 --batch 4096 --k 64 \\
        --compute-dtype bfloat16                                    # GPU / TPU
"""

from __future__ import annotations

import argparse

import numpy as np


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

    from benchmarks.encoder import median_seconds
    from sauce_jax import sae as sae_lib
    from sauce_jax.train.config import TrainConfig
    from sauce_jax.train.sharding import make_mesh, memory_plan, shard_state
    from sauce_jax.train.step import global_batch, init_state, jit_train_step, make_optimizer

    mesh = make_mesh(args.model_parallel)
    x = global_batch(np.random.default_rng(0).standard_normal((args.batch, args.d_in)).astype(np.float32), mesh)
    variants = {"dense relu": ("standard", False), "dense topk": ("topk", False), "sparse topk": ("topk", True)}
    rows = []
    print(f"SAE step, d_in {args.d_in}, batch {args.batch}, k {args.k}, {args.compute_dtype}, mesh "
          f"{dict(mesh.shape)} on {jax.devices()[0].platform}")
    print(f"{'d_sae':>9} {'variant':>12} {'tokens/s':>12} {'MiB/device':>11} {'vs dense topk':>14}")
    for d_sae in args.d_sae:
        calls, plans = {}, {}
        for name, (architecture, sparse) in variants.items():
            config = sae_lib.SAEConfig(d_in=args.d_in, d_sae=d_sae, architecture=architecture,
                                       k=None if architecture == "standard" else args.k)
            cfg = TrainConfig(batch_size=args.batch, compute_dtype=args.compute_dtype, sparse_decode=sparse,
                              model_parallel=args.model_parallel)
            optimizer = make_optimizer(cfg, 10**6)
            holder = {"state": shard_state(init_state(sae_lib.init_params(jax.random.key(0), config), optimizer,
                                                      config), mesh)}
            step = jit_train_step(mesh, holder["state"], sae_config=config, cfg=cfg, optimizer=optimizer)

            def call(holder=holder, step=step):
                holder["state"], metrics = step(holder["state"], x)
                jax.block_until_ready(metrics["loss"])

            calls[name] = call
            plans[name] = memory_plan(config, args.batch, mesh, sparse=sparse)
        seconds = median_seconds(calls, args.warmup, args.repeats)
        for name in variants:
            row = {"d_sae": d_sae, "variant": name, "tokens_per_s": args.batch / seconds[name],
                   "bytes_per_device": plans[name].total,
                   "speedup_vs_dense_topk": seconds["dense topk"] / seconds[name]}
            rows.append(row)
            print(f"{d_sae:>9} {name:>12} {row['tokens_per_s']:>12,.0f} {row['bytes_per_device'] / 2**20:>11.1f} "
                  f"{row['speedup_vs_dense_topk']:>13.2f}x")
    return rows


if __name__ == "__main__":
    main()
