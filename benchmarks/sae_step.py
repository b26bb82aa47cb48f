"""One SAE train step (Adam), ours against PyTorch, same shapes, in one run: ReLU-L1, or TopK.

    python -m benchmarks.sae_step                                   # CPU-sized: d_in 256, d_sae 8192, batch 1024
    python -m benchmarks.sae_step --d-in 1024 --d-sae 65536 --batch 4096 --compute-dtype bfloat16   # GPU
    python -m benchmarks.sae_step --d-in 1024 --d-sae 65536 --batch 4096 --compute-dtype bfloat16 \\
        --k 64 --sparse-decode                                      # TopK, ours decoding sparsely

The PyTorch side is the SAELens recipe: an nn.Module with W_enc, b_enc, W_dec, b_dec, the
paper's loss (or, with --k, TopK latents decoded densely and the MSE), torch.optim.Adam, and
bf16 autocast when --compute-dtype bfloat16 on CUDA. Our TopK step also computes the AuxK loss
over dead latents (Gao et al.), which the PyTorch side leaves out.
"""

from __future__ import annotations

import argparse

import numpy as np


def torch_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype, k=None):
    """A PyTorch train step: ReLU-L1 when k is None, else dense TopK (top-k pre-activations kept,
    the rest zeroed, decoded by a dense matmul). Returns (step, device)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    params = {"W_enc": w_dec.T.clone(), "b_enc": torch.zeros(d_sae), "W_dec": w_dec, "b_dec": torch.zeros(d_in)}
    params = {k_: torch.nn.Parameter(v.to(device)) for k_, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    x = torch.randn(batch, d_in, generator=g).to(device)
    autocast = compute_dtype == "bfloat16" and device == "cuda"

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]  # [B, F]
            if k is None:
                z = torch.relu(pre)
            else:
                top = torch.topk(pre, k, dim=-1)
                z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            x_hat = z @ params["W_dec"] + params["b_dec"]  # [B, D]
        loss = (x - x_hat.float()).pow(2).sum(-1).mean()
        if k is None:
            loss = loss + alpha * z.float().abs().sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return step, device


def our_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype, k=None, sparse=False, model_parallel=1):
    """Our jitted sharded train step on one fixed batch; the state is carried between calls."""
    import jax

    from sauce_jax import sae as sae_lib
    from sauce_jax.train.config import TrainConfig
    from sauce_jax.train.sharding import make_mesh, shard_state
    from sauce_jax.train.step import global_batch, init_state, jit_train_step, make_optimizer

    config = sae_lib.SAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=alpha,
                               architecture="standard" if k is None else "topk", k=k)
    cfg = TrainConfig(lr=lr, batch_size=batch, compute_dtype=compute_dtype, sparse_decode=sparse,
                      model_parallel=model_parallel)
    mesh = make_mesh(model_parallel)
    optimizer = make_optimizer(cfg, 10**6)
    holder = {"state": shard_state(init_state(sae_lib.init_params(jax.random.key(0), config), optimizer, config), mesh)}
    step = jit_train_step(mesh, holder["state"], sae_config=config, cfg=cfg, optimizer=optimizer)
    x = global_batch(np.random.default_rng(0).standard_normal((batch, d_in)).astype(np.float32), mesh)

    def ours():
        holder["state"], metrics = step(holder["state"], x)
        jax.block_until_ready(metrics["loss"])

    return ours, config, mesh


def compare_step(d_in: int, d_sae: int, batch: int, compute_dtype: str, *, k: int | None = None,
                 sparse: bool = False, warmup: int = 3, repeats: int = 10) -> dict:
    """Tokens/s of our train step and PyTorch's at one shape (interleaved rounds, median)."""
    import jax

    from benchmarks.encoder import median_seconds

    alpha, lr = 8e-5, 4e-4
    ours, _, _ = our_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype, k=k, sparse=sparse)
    theirs, device = torch_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype, k=k)
    seconds = median_seconds({"ours": ours, "theirs": theirs}, warmup, repeats)
    t_ours, t_theirs = seconds["ours"], seconds["theirs"]
    flops = 6 * 2 * batch * d_in * d_sae  # two dense matmuls, forward + two backward each
    result = {"d_in": d_in, "d_sae": d_sae, "batch": batch, "k": k, "sparse_decode": sparse,
              "compute_dtype": compute_dtype,
              "ours_tokens_per_s": batch / t_ours, "torch_tokens_per_s": batch / t_theirs,
              "ours_dense_equivalent_tflops": flops / t_ours / 1e12, "jax_device": str(jax.devices()[0]),
              "torch_device": device}
    result["ratio"] = result["ours_tokens_per_s"] / result["torch_tokens_per_s"]
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--k", type=int, help="TopK SAE with k active latents (default: ReLU-L1)")
    parser.add_argument("--sparse-decode", action="store_true", help="with --k: our step decodes sparsely")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    result = compare_step(args.d_in, args.d_sae, args.batch, args.compute_dtype, k=args.k,
                          sparse=args.sparse_decode, warmup=args.warmup, repeats=args.repeats)
    kind = "ReLU-L1" if args.k is None else f"TopK k {args.k}{' (ours sparse decode)' if args.sparse_decode else ''}"
    print(f"SAE train step, {kind}, d_in {args.d_in}, d_sae {args.d_sae}, batch {args.batch}, {args.compute_dtype}; "
          f"jax on {result['jax_device']}, torch on {result['torch_device']}")
    print(f"  sauce-jax  {result['ours_tokens_per_s']:12,.0f} tokens/s  "
          f"({result['ours_dense_equivalent_tflops']:.2f} dense-equivalent TFLOP/s)")
    print(f"  PyTorch    {result['torch_tokens_per_s']:12,.0f} tokens/s")
    print(f"  ratio      {result['ratio']:12.2f}x")
    return result


if __name__ == "__main__":
    main()
