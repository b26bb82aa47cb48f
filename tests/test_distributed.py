"""Data parallelism: 8 simulated CPU devices, and 2 processes with jax.distributed, on CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def run_workers(out: Path, devices_per_process: int, processes: int, architecture: str, steps: int = 30):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
           "JAX_PLATFORMS": "cpu"}
    port = 0
    if processes > 1:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--out", str(out), "--process-id", str(i),
                               "--num-processes", str(processes), "--port", str(port), "--architecture",
                               architecture, "--steps", str(steps)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(processes)]
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-3000:]
    return [dict(np.load(out / f"params_{i}.npz")) for i in range(processes)], \
        [json.loads((out / f"info_{i}.json").read_text()) for i in range(processes)]


@pytest.mark.parametrize("architecture", ["standard", "topk", "batchtopk"])
def test_eight_devices_equal_one(tmp_path, architecture):
    (one,), (info1,) = run_workers(tmp_path / "one", 1, 1, architecture)
    (eight,), (info8,) = run_workers(tmp_path / "eight", 8, 1, architecture)
    assert info1["devices"] == 1 and info8["devices"] == 8
    for name in one:
        np.testing.assert_allclose(eight[name], one[name], rtol=2e-4, atol=2e-5, err_msg=name)


@pytest.mark.slow
def test_two_processes_train_and_checkpoint_together(tmp_path):
    params, infos = run_workers(tmp_path, 2, 2, "topk", steps=20)
    assert all(i["processes"] == 2 and i["devices"] == 4 and i["local_devices"] == 2 for i in infos)
    for name in params[0]:  # replicated state: both processes hold the same SAE
        np.testing.assert_array_equal(params[0][name], params[1][name])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 20
