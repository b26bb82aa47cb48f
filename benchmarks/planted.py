"""Planted-feature recovery: our trainer against SAELens' on the same samples of SAELens'
synthetic data (`sae_lens.synthetic`: ground-truth directions, Zipfian firing), scored alike.

    python -m benchmarks.planted --out benchmarks/results/DATE-planted.md          # the issue's grid
    python -m benchmarks.planted --widths 256 --ks 4 --samples 200000 --seeds 3 --out x.md   # one cell

Per cell (width d_sae, k, sample count) and seed: one synthetic model (`num_features`
ground-truth directions in `hidden_dim` dimensions, orthogonalised, Zipfian firing
probabilities), one fixed set of training samples and one of evaluation samples; each trainer
sees the same training samples in the same order (lr 3e-4, batch 1,024, Adam, constant lr).
Ours: `standard` (ReLU + L1), `topk` and `batchtopk` through `sauce_jax.train.step` (the step
`train_sae` takes, b_dec at the geometric median); SAELens: its `TopKTrainingSAE` through its
`SAETrainer` with `train_toy_sae`'s settings. Every SAE is scored on the evaluation samples:
MCC (Hungarian-matched |cos| of decoder rows against the planted directions, SAELens'
`mean_correlation_coefficient`), explained variance, dead latents (never active on the
evaluation samples) and L0.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import numpy as np

NUM_FEATURES, HIDDEN_DIM = 256, 64  # the synthetic model
LR, BATCH = 3e-4, 1024


def synthetic(seed: int, num_features: int = NUM_FEATURES, hidden_dim: int = HIDDEN_DIM):
    """SAELens' synthetic model: (feature dictionary, activation generator), seeded."""
    import torch
    from sae_lens.synthetic import ActivationGenerator, FeatureDictionary, zipfian_firing_probabilities

    torch.manual_seed(seed)
    features = FeatureDictionary(num_features, hidden_dim, seed=seed)
    generator = ActivationGenerator(num_features, zipfian_firing_probabilities(num_features))
    return features, generator


def samples(features, generator, n: int, seed: int) -> np.ndarray:
    """n hidden activations [n, hidden_dim] float32 from the synthetic model."""
    import torch

    torch.manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, n, 65536):
            out.append(features(generator.sample(min(65536, n - start))).float().numpy())
    return np.concatenate(out)


_STEPS: dict = {}


def train_ours(x: np.ndarray, architecture: str, d_sae: int, k: int | None, seed: int, *, lr: float = LR,
               batch: int = BATCH, l1: float = 5.0, init=None) -> dict:
    """Our SAE trained on x (rows in order, whole batches): W_dec and an encode/decode function.
    `init(key, config, sample)` replaces `sae.init_params` (a test breaks it on purpose)."""
    import jax

    from sauce_jax import sae as sae_lib
    from sauce_jax.train.config import TrainConfig
    from sauce_jax.train.step import init_state, make_optimizer, train_step

    config = sae_lib.SAEConfig(d_in=x.shape[1], d_sae=d_sae, architecture=architecture,
                               k=None if architecture == "standard" else k, l1_coefficient=l1)
    steps = len(x) // batch
    cfg = TrainConfig(lr=lr, batch_size=batch, steps=steps, seed=seed, decoder_init_norm=0.1)  # as SAELens' TopK
    key = (config, lr, batch, steps)  # the seed is in the params, not the step: one compile per shape
    if key not in _STEPS:
        optimizer = make_optimizer(cfg, steps)
        _STEPS[key] = optimizer, jax.jit(lambda s, b: train_step(s, b, sae_config=config, cfg=cfg, optimizer=optimizer),
                                         donate_argnums=0)
    optimizer, step = _STEPS[key]
    params = (init or functools.partial(sae_lib.init_params, decoder_norm=cfg.decoder_init_norm))(
        jax.random.key(seed), config, x[: cfg.geometric_median_samples])
    state = init_state(params, optimizer, config)
    for i in range(steps):
        state, _ = step(state, x[i * batch : (i + 1) * batch])
    params = jax.device_get(state.params)
    forward = jax.jit(lambda p, x: sae_lib.forward(p, x, config))

    def encode_decode(x_eval):
        out = forward(params, x_eval)
        return np.asarray(out.z), np.asarray(out.x_hat)

    return {"W_dec": np.asarray(params["W_dec"]), "_encode_decode": encode_decode}


def train_saelens(x: np.ndarray, d_sae: int, k: int, seed: int, *, lr: float = LR, batch: int = BATCH) -> dict:
    """SAELens' TopK SAE trained on x (same rows, same order) with train_toy_sae's trainer
    settings. Returns the params as our names and layout (W_dec rows [d_sae, d_in])."""
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=d_sae, k=k, device="cpu"))
    steps = len(x) // batch
    data = torch.from_numpy(x[: steps * batch])
    batches = iter(data.split(batch))
    trainer_cfg = SAETrainerConfig(
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False, total_training_samples=steps * batch,
        device="cpu", autocast=False, lr=lr, lr_end=lr, lr_scheduler_name="constant", lr_warm_up_steps=0,
        adam_beta1=0.9, adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1, train_batch_size_samples=batch,
        dead_feature_window=1000, feature_sampling_window=2000,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1), n_batches_for_norm_estimate=1000)
    SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=batches).fit()
    sae.eval()

    def encode_decode(x_eval):
        with torch.no_grad():
            z = sae.encode(torch.from_numpy(x_eval))
            return z.numpy(), sae.decode(z).numpy()

    return {"W_dec": sae.W_dec.detach().cpu().numpy(), "_encode_decode": encode_decode}


def score(trained: dict, features, x_eval: np.ndarray) -> dict:
    """MCC of the decoder rows against the planted directions (SAELens' function), and
    explained variance, dead latents and L0 on the evaluation samples, each SAE through its own
    library's inference encode and decode."""
    import torch
    from sae_lens.synthetic import mean_correlation_coefficient

    z, x_hat = trained["_encode_decode"](x_eval)
    mcc = mean_correlation_coefficient(torch.from_numpy(np.array(trained["W_dec"], np.float32)),
                                       features.feature_vectors.detach().float())
    sst = ((x_eval - x_eval.mean(0)) ** 2).sum()
    return {"mcc": float(mcc), "explained_variance": float(1 - ((x_eval - x_hat) ** 2).sum() / sst),
            "dead": int(((z != 0).sum(0) == 0).sum()), "l0": float((z != 0).sum(1).mean())}


TRAINERS = ("saelens topk", "ours topk", "ours batchtopk", "ours standard")


def run_cell(d_sae: int, k: int, n_samples: int, seed: int, trainers=TRAINERS, n_eval: int = 20000, *,
             num_features: int = NUM_FEATURES, hidden_dim: int = HIDDEN_DIM, batch: int = BATCH, lr: float = LR,
             init=None) -> dict:
    features, generator = synthetic(seed, num_features, hidden_dim)
    x = samples(features, generator, n_samples, seed=1000 + seed)
    x_eval = samples(features, generator, n_eval, seed=2000 + seed)
    results = {}
    for name in trainers:
        start = time.perf_counter()
        if name == "saelens topk":
            trained = train_saelens(x, d_sae, k, seed, lr=lr, batch=batch)
        else:
            trained = train_ours(x, name.split()[1], d_sae, k, seed, lr=lr, batch=batch, init=init)
        results[name] = {**score(trained, features, x_eval), "seconds": time.perf_counter() - start}
    return results


def render(cells: dict, command: str, trainers=TRAINERS) -> str:
    lines = ["# Planted-feature recovery: sauce-jax against SAELens on the same samples", "",
             f"`{command}`", "",
             f"SAELens' synthetic model: {NUM_FEATURES} planted directions in {HIDDEN_DIM} dimensions (orthogonalised), "
             f"Zipfian firing; lr {LR}, batch {BATCH}, Adam, constant lr; every trainer on the same training samples "
             "in the same order; scored on 20,000 held-out samples. Mean over seeds (spread = max - min).", "",
             "| d_sae | k | samples | trainer | MCC | MCC spread | explained variance | dead | L0 | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (d_sae, k, n), per_seed in cells.items():
        for name in trainers:
            got = [r[name] for r in per_seed if name in r]
            if not got:
                continue
            mcc = [g["mcc"] for g in got]
            lines.append(f"| {d_sae} | {k} | {n:,} | {name} | {statistics.mean(mcc):.3f} | {max(mcc) - min(mcc):.3f} | "
                         f"{statistics.mean(g['explained_variance'] for g in got):.3f} | "
                         f"{statistics.mean(g['dead'] for g in got):.1f} | {statistics.mean(g['l0'] for g in got):.2f} | "
                         f"{len(got)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--samples", type=int, nargs="+", default=[200_000])
    parser.add_argument("--extra", action="store_true", help="also 2M samples at width 256 (the issue's grid)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    parser.add_argument("--out", help="write the markdown table here (rewritten after every cell)")
    args = parser.parse_args(argv)
    trainers = tuple(t.strip() for t in args.trainers.split(","))
    grid = [(w, k, n) for n in args.samples for w in args.widths for k in args.ks]
    if args.extra:
        grid += [(256, k, 2_000_000) for k in args.ks]
    command = "python -m benchmarks.planted " + " ".join(argv if argv is not None else sys.argv[1:])
    cells = {}
    for cell in grid:
        cells[cell] = [run_cell(*cell, seed=seed, trainers=trainers) for seed in range(args.seeds)]
        text = render(cells, command, trainers)
        print(text.splitlines()[-len(trainers):], flush=True)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
    return cells


if __name__ == "__main__":
    main()
