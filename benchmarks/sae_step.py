"""One SAE train step (ReLU-L1 + Adam), ours against PyTorch, same shapes, in one run.

    python -m benchmarks.sae_step                                   # CPU-sized: d_in 256, d_sae 8192, batch 1024
    python -m benchmarks.sae_step --d-in 1024 --d-sae 65536 --batch 4096 --compute-dtype bfloat16   # GPU

The PyTorch side is the SAELens recipe: an nn.Module with W_enc, b_enc, W_dec, b_dec, the
paper's loss, torch.optim.Adam, and bf16 autocast when --compute-dtype bfloat16 on CUDA.
"""

from __future__ import annotations

import argparse

import numpy as np


def torch_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    params = {"W_enc": w_dec.T.clone(), "b_enc": torch.zeros(d_sae), "W_dec": w_dec, "b_dec": torch.zeros(d_in)}
    params = {k: torch.nn.Parameter(v.to(device)) for k, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    x = torch.randn(batch, d_in, generator=g).to(device)
    autocast = compute_dtype == "bfloat16" and device == "cuda"

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            z = torch.relu((x - params["b_dec"]) @ params["W_enc"] + params["b_enc"])
            x_hat = z @ params["W_dec"] + params["b_dec"]
        loss = (x - x_hat.float()).pow(2).sum(-1).mean() + alpha * z.float().abs().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return step, device


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import jax

    from benchmarks.encoder import median_seconds
    from sauce_jax import sae as sae_lib
    from sauce_jax.train.config import TrainConfig
    from sauce_jax.train.sharding import make_mesh, shard_state
    from sauce_jax.train.step import global_batch, init_state, jit_train_step, make_optimizer

    alpha, lr = 8e-5, 4e-4
    config = sae_lib.SAEConfig(d_in=args.d_in, d_sae=args.d_sae, l1_coefficient=alpha)
    cfg = TrainConfig(lr=lr, batch_size=args.batch, compute_dtype=args.compute_dtype)
    mesh = make_mesh()
    optimizer = make_optimizer(cfg, 10**6)
    holder = {"state": shard_state(init_state(sae_lib.init_params(jax.random.key(0), config), optimizer, config), mesh)}
    step = jit_train_step(mesh, holder["state"], sae_config=config, cfg=cfg, optimizer=optimizer)
    x = global_batch(np.random.default_rng(0).standard_normal((args.batch, args.d_in)).astype(np.float32), mesh)

    def ours():
        holder["state"], metrics = step(holder["state"], x)
        jax.block_until_ready(metrics["loss"])

    theirs, device = torch_step_fn(args.d_in, args.d_sae, args.batch, alpha, lr, args.compute_dtype)
    seconds = median_seconds({"ours": ours, "theirs": theirs}, args.warmup, args.repeats)
    t_ours, t_theirs = seconds["ours"], seconds["theirs"]
    flops = 6 * 2 * args.batch * args.d_in * args.d_sae  # two matmuls, forward + two backward each
    result = {"ours_tokens_per_s": args.batch / t_ours, "torch_tokens_per_s": args.batch / t_theirs,
              "ours_tflops": flops / t_ours / 1e12, "jax_device": str(jax.devices()[0]), "torch_device": device}
    result["ratio"] = result["ours_tokens_per_s"] / result["torch_tokens_per_s"]
    print(f"SAE train step, d_in {args.d_in}, d_sae {args.d_sae}, batch {args.batch}, {args.compute_dtype}; "
          f"jax on {result['jax_device']}, torch on {device}")
    print(f"  sauce-jax  {result['ours_tokens_per_s']:12,.0f} tokens/s  ({result['ours_tflops']:.2f} TFLOP/s)")
    print(f"  PyTorch    {result['torch_tokens_per_s']:12,.0f} tokens/s")
    print(f"  ratio      {result['ratio']:12.2f}x")
    return result


if __name__ == "__main__":
    main()
