"""One SAE train step (Adam), ours against PyTorch (and sparsify), same shapes, in one run.

    python -m benchmarks.sae_step                                   # CPU-sized: d_in 256, d_sae 8192, batch 1024
    python -m benchmarks.sae_step --d-in 1024 --d-sae 65536 --batch 4096 --compute-dtype bfloat16   # GPU
    python -m benchmarks.sae_step --k 64 --decode dense             # TopK, both sides decode densely
    python -m benchmarks.sae_step --k 64 --decode dense --auxk      # ... with AuxK on half the latents dead
    python -m benchmarks.sae_step --d-in 128 --d-sae 2048 --k 16 --auxk --dead-fraction 0.06   # the demo's SAE late on
    python -m benchmarks.sae_step --k 64 --architecture batchtopk   # BatchTopK
    python -m benchmarks.sae_step --k 64 --decode auto --peer sparsify   # ours by cost vs sparsify's TopK

The PyTorch side is the SAELens recipe: an nn.Module with W_enc, b_enc, W_dec, b_dec, the
paper's loss (or, with --k, TopK / BatchTopK latents decoded densely and the MSE, plus AuxK over
the dead latents with --auxk, as ours computes it), torch.optim.Adam, and bf16 autocast when
--compute-dtype bfloat16 on CUDA. With --auxk both sides see the same latents dead for the
whole run (half, the even ones, or --dead-fraction of them, spread evenly): their encoder bias
is -1e4, so they never fire, and AuxK runs on every step. The sparsify side is EleutherAI sparsify's `SparseCoder` (fused TopK
encoder with sparse gradients, sparse decoder; Triton on CUDA, embedding_bag elsewhere), its
forward with the dead mask, backward and torch.optim.Adam: the step its trainer takes, without
its decoder renormalisation.
"""

from __future__ import annotations

import argparse

import numpy as np

DEAD_BIAS = -1e4  # what keeps the latents that --auxk marks dead from ever firing


def _dead_mask(d_sae: int, fraction: float = 0.5) -> np.ndarray:
    """Every (1 / fraction)-th latent, spread over the feature axis (0.5: the even ones)."""
    return (np.arange(d_sae) * fraction) % 1 < fraction


def torch_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype, k=None, *, architecture="topk", auxk=False,
                  aux_coefficient=1 / 32, dead_fraction=0.5):
    """A PyTorch train step: ReLU-L1 when k is None, else dense TopK (top-k pre-activations kept,
    the rest zeroed, decoded by a dense matmul) or dense BatchTopK (the k * batch largest
    activations of the batch), with AuxK over half the latents dead when `auxk`. Returns
    (step, device)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(d_sae, d_in, generator=g)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    b_enc = torch.zeros(d_sae)
    dead = torch.from_numpy(_dead_mask(d_sae, dead_fraction)).to(device)
    if auxk:
        b_enc[dead.cpu()] = DEAD_BIAS
    params = {"W_enc": w_dec.T.clone(), "b_enc": b_enc, "W_dec": w_dec, "b_dec": torch.zeros(d_in)}
    params = {k_: torch.nn.Parameter(v.to(device)) for k_, v in params.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    x = torch.randn(batch, d_in, generator=g).to(device)
    autocast = compute_dtype == "bfloat16" and device == "cuda"
    aux_k = min(d_in // 2, d_sae)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
            pre = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]  # [B, F]
            if k is None:
                z = torch.relu(pre)
            elif architecture == "batchtopk":
                relu = torch.relu(pre)
                top = torch.topk(relu.flatten(), k * batch)
                z = torch.zeros_like(relu).flatten().scatter(-1, top.indices, top.values).view_as(relu)
            else:
                top = torch.topk(pre, k, dim=-1)
                z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            x_hat = z @ params["W_dec"] + params["b_dec"]  # [B, D]
        residual = x - x_hat.float()
        loss = residual.pow(2).sum(-1).mean()
        if k is None:
            loss = loss + alpha * z.float().abs().sum(-1).mean()
        elif auxk:
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
                masked = torch.where(dead[None], pre, -torch.inf)
                top = torch.topk(masked, aux_k, dim=-1)
                z_aux = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
                recon = z_aux @ params["W_dec"]
            scale = min(int(dead.sum()) / aux_k, 1.0)
            loss = loss + aux_coefficient * scale * (recon.float() - residual.detach()).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return step, device


def sparsify_step_fn(d_in, d_sae, batch, lr, k, *, auxk=False, dead_fraction=0.5):
    """EleutherAI sparsify's TopK SAE step: `SparseCoder.forward(x, dead_mask=...)`, fvu + AuxK
    backward, torch.optim.Adam. Returns (step, device)."""
    import os

    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "0")
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=device)
    dead = torch.from_numpy(_dead_mask(d_sae, dead_fraction)).to(device) if auxk else None
    if auxk:
        with torch.no_grad():
            sae.encoder.bias[dead] = DEAD_BIAS
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(0)).to(device)

    def step():
        out = sae(x, dead_mask=dead)
        loss = out.fvu + out.auxk_loss / 32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    return step, device


def our_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype, k=None, sparse=None, model_parallel=1, *,
                architecture="topk", decode=None, auxk=False, topk_recall=None, dead_fraction=0.5):
    """Our jitted sharded train step on one fixed batch; the state is carried between calls.
    `decode` is TrainConfig.decode ("auto", "dense", "sparse"; `sparse` True/False is the older
    spelling of "sparse"/"dense"); with `auxk` the even latents are dead from the start."""
    import jax
    import jax.numpy as jnp

    from sauce_jax import sae as sae_lib
    from sauce_jax.train.config import TrainConfig
    from sauce_jax.train.sharding import make_mesh, shard_state
    from sauce_jax.train.step import global_batch, init_state, jit_train_step, make_optimizer

    if decode is None:
        decode = "auto" if sparse is None else ("sparse" if sparse else "dense")
    config = sae_lib.SAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=alpha,
                               architecture="standard" if k is None else architecture, k=k)
    cfg = TrainConfig(lr=lr, batch_size=batch, compute_dtype=compute_dtype, decode=decode,
                      model_parallel=model_parallel, topk_recall=topk_recall)
    mesh = make_mesh(model_parallel)
    optimizer = make_optimizer(cfg, 10**6)
    params = sae_lib.init_params(jax.random.key(0), config)
    state = init_state(params, optimizer, config)
    if auxk:
        dead = jnp.asarray(_dead_mask(d_sae, dead_fraction))
        params = {**params, "b_enc": jnp.where(dead, DEAD_BIAS, params["b_enc"])}
        state = state._replace(params=params, since_fired=jnp.where(dead, cfg.dead_after_steps, 0).astype(jnp.int32))
    holder = {"state": shard_state(state, mesh)}
    step = jit_train_step(mesh, holder["state"], sae_config=config, cfg=cfg, optimizer=optimizer)
    x = global_batch(np.random.default_rng(0).standard_normal((batch, d_in)).astype(np.float32), mesh)

    def ours():
        holder["state"], metrics = step(holder["state"], x)
        jax.block_until_ready(metrics["loss"])

    ours.holder = holder
    return ours, config, mesh


def compare_step(d_in: int, d_sae: int, batch: int, compute_dtype: str, *, k: int | None = None,
                 sparse: bool | None = None, decode: str | None = None, architecture: str = "topk",
                 auxk: bool = False, peer: str = "torch", peers: tuple[str, ...] | None = None, warmup: int = 3,
                 repeats: int = 10, dead_fraction: float = 0.5) -> dict:
    """Tokens/s of our train step and the peers' (PyTorch; sparsify's TopK) at one shape, all
    timed in the same interleaved rounds (median). `decode` picks ours (default "auto");
    PyTorch always decodes densely, sparsify always sparsely. `ratio` is ours against the
    fastest peer, whose name is `peer`; `torch_tokens_per_s` holds that peer's rate."""
    import jax

    from benchmarks.encoder import median_seconds
    from sauce_jax.train.config import TrainConfig

    alpha, lr = 8e-5, 4e-4
    if decode is None:
        decode = "auto" if sparse is None else ("sparse" if sparse else "dense")
    peers = tuple(peers or (peer,))
    ours, config, _ = our_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype, k=k, architecture=architecture,
                                  decode=decode, auxk=auxk, dead_fraction=dead_fraction)
    calls, device = {"ours": ours}, None
    for name in peers:
        if name == "sparsify":
            calls[name], device = sparsify_step_fn(d_in, d_sae, batch, lr, k, auxk=auxk, dead_fraction=dead_fraction)
        else:
            calls[name], device = torch_step_fn(d_in, d_sae, batch, alpha, lr, compute_dtype, k=k,
                                                architecture=architecture, auxk=auxk, dead_fraction=dead_fraction)
    seconds = median_seconds(calls, warmup, repeats)
    best = min(peers, key=lambda name: seconds[name])
    t_ours, t_theirs = seconds["ours"], seconds[best]
    flops = 6 * 2 * batch * d_in * d_sae  # two dense matmuls, forward + two backward each
    used_sparse = TrainConfig(decode=decode).sparse(config)
    result = {"d_in": d_in, "d_sae": d_sae, "batch": batch, "k": k, "architecture": config.architecture,
              "decode": decode, "sparse_decode": used_sparse, "auxk": auxk,
              "dead_fraction": dead_fraction if auxk else 0.0, "peer": best,
              "peers_tokens_per_s": {name: batch / seconds[name] for name in peers},
              "compute_dtype": compute_dtype,
              "ours_tokens_per_s": batch / t_ours, "torch_tokens_per_s": batch / t_theirs,
              "ours_dense_equivalent_tflops": flops / t_ours / 1e12, "jax_device": str(jax.devices()[0]),
              "torch_device": device}
    if auxk:  # the forced-dead latents stayed dead: AuxK ran on every step
        result["ours_dead_latents"] = int((np.asarray(ours.holder["state"].since_fired) >= 1000).sum())
    result["ratio"] = result["ours_tokens_per_s"] / result["torch_tokens_per_s"]
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--k", type=int, help="TopK SAE with k active latents (default: ReLU-L1)")
    parser.add_argument("--architecture", default="topk", choices=["topk", "batchtopk"], help="with --k")
    parser.add_argument("--decode", default="auto", choices=["auto", "dense", "sparse"], help="ours, with --k")
    parser.add_argument("--sparse-decode", action="store_true", help="the same as --decode sparse")
    parser.add_argument("--auxk", action="store_true", help="with --k: latents dead from the start, AuxK on both sides")
    parser.add_argument("--dead-fraction", type=float, default=0.5,
                        help="with --auxk: the share of latents dead (0.5: the even ones; a trained SAE has a few %%)")
    parser.add_argument("--peer", default="torch", help="torch, sparsify, or both comma-separated (best counts)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    decode = "sparse" if args.sparse_decode else args.decode
    result = compare_step(args.d_in, args.d_sae, args.batch, args.compute_dtype, k=args.k, decode=decode,
                          architecture=args.architecture, auxk=args.auxk, peers=tuple(args.peer.split(",")),
                          warmup=args.warmup, repeats=args.repeats, dead_fraction=args.dead_fraction)
    kind = ("ReLU-L1" if args.k is None else
            f"{args.architecture} k {args.k}, ours decode {decode} ({'sparse' if result['sparse_decode'] else 'dense'})"
            + (f", AuxK on {args.dead_fraction:.0%} dead" if args.auxk else ""))
    print(f"SAE train step, {kind}, d_in {args.d_in}, d_sae {args.d_sae}, batch {args.batch}, {args.compute_dtype}; "
          f"jax on {result['jax_device']}, peers on {result['torch_device']}")
    print(f"  sauce-jax  {result['ours_tokens_per_s']:12,.0f} tokens/s  "
          f"({result['ours_dense_equivalent_tflops']:.2f} dense-equivalent TFLOP/s)")
    for name, rate in result["peers_tokens_per_s"].items():
        print(f"  {name:9s}  {rate:12,.0f} tokens/s")
    print(f"  ratio      {result['ratio']:12.2f}x")
    return result


if __name__ == "__main__":
    main()
