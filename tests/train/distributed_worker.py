"""Run by test_distributed.py in a subprocess: one SAE training run on planted activations,
as one of several processes (`jax.distributed`) or on several simulated CPU devices."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
parser.add_argument("--process-id", type=int, default=0)
parser.add_argument("--num-processes", type=int, default=1)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--architecture", default="topk")
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--model-parallel", type=int, default=1)
parser.add_argument("--stop-after", type=int, help="die after this many steps of this run")
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()

if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{args.port}", num_processes=args.num_processes, process_id=args.process_id)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import sauce_jax.train.loop as loop  # noqa: E402
from synthetic import planted  # noqa: E402
from sauce_jax.sae import SAEConfig  # noqa: E402
from sauce_jax.train import TrainConfig, train_sae  # noqa: E402

if args.stop_after:
    original, calls = loop.global_batch, []

    def dying(local, mesh):
        calls.append(1)
        if len(calls) > args.stop_after:
            sys.exit(3)
        return original(local, mesh)

    loop.global_batch = dying

x, _ = planted(n=4000)
k = None if args.architecture == "standard" else 3
sae = train_sae(Path(args.out) / "run", activations=x, resume=args.resume,
                sae_config=SAEConfig(d_in=32, d_sae=96, architecture=args.architecture, k=k, l1_coefficient=0.1),
                train_config=TrainConfig(lr=3e-3, batch_size=128, steps=args.steps, log_every=5, checkpoint_every=10,
                                         model_parallel=args.model_parallel),
                progress=False)
np.savez(Path(args.out) / f"params_{args.process_id}.npz", **{k: np.asarray(v) for k, v in sae.params.items()})
(Path(args.out) / f"info_{args.process_id}.json").write_text(json.dumps(
    {"devices": jax.device_count(), "local_devices": jax.local_device_count(), "processes": jax.process_count(),
     "mesh": sae.metadata["mesh"], "shards": sae.metadata["param_shard_shapes"],
     "resumed_from_step": sae.metadata["resumed_from_step"]}))
