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


def run_workers(out: Path, devices_per_process: int, processes: int, architecture: str, steps: int = 30,
                *extra: str, expect_rc: int = 0):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
           "JAX_PLATFORMS": "cpu"}
    port = 0
    if processes > 1:
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(WORKER), "--out", str(out), "--process-id", str(i),
                               "--num-processes", str(processes), "--port", str(port), "--architecture",
                               architecture, "--steps", str(steps), *extra],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(processes)]
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == expect_rc, output[-3000:]
    if expect_rc:
        return None, None
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


def logged(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("architecture", ["standard", "topk", "batchtopk"])
def test_features_sharded_over_model_equal_one_device(tmp_path, architecture):
    """data = 2 x model = 4 on 8 devices: the same SAE as 1 device, a quarter of it per device."""
    (one,), _ = run_workers(tmp_path / "one", 1, 1, architecture)
    (sharded,), (info,) = run_workers(tmp_path / "sharded", 8, 1, architecture, 30, "--model-parallel", "4")
    assert info["mesh"] == {"data": 2, "model": 4}
    assert info["shards"]["W_enc"] == [32, 96 // 4] and info["shards"]["W_dec"] == [96 // 4, 32]
    assert info["shards"]["b_enc"] == [96 // 4] and info["shards"]["b_dec"] == [32]
    for name in one:
        np.testing.assert_allclose(sharded[name], one[name], rtol=2e-4, atol=2e-5, err_msg=name)


@pytest.mark.slow
def test_checkpoint_restores_onto_other_meshes(tmp_path):
    """Saved on 8 devices (2 x 4), resumed on 4 (2 x 2) and on 1; and back: saved on 1, resumed
    on 8. Every resumed run logs the losses of an uninterrupted one."""
    import shutil

    run_workers(tmp_path / "whole", 8, 1, "topk", 30, "--model-parallel", "4")
    run_workers(tmp_path / "cut", 8, 1, "topk", 30, "--model-parallel", "4", "--stop-after", "22", expect_rc=3)
    run_workers(tmp_path / "cut_on_one", 1, 1, "topk", 30, "--stop-after", "22", expect_rc=3)
    for name, source, devices, model in (("four", "cut", 4, "2"), ("single", "cut", 1, "1"),
                                         ("back", "cut_on_one", 8, "4")):
        shutil.copytree(tmp_path / source, tmp_path / name)
        before = logged(tmp_path / name / "run")
        _, (info,) = run_workers(tmp_path / name, devices, 1, "topk", 30, "--model-parallel", model, "--resume")
        whole, resumed = logged(tmp_path / "whole" / "run"), logged(tmp_path / name / "run")
        # a resume, not a restart: it starts at the checkpoint of step 20 and keeps the log
        # (wall-clock seconds included) that the interrupted run wrote up to there
        assert info["resumed_from_step"] == 20
        assert resumed[:4] == [r for r in before if r["step"] <= 20] and len(resumed[:4]) == 4
        assert [r["step"] for r in resumed] == [r["step"] for r in whole]
        np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in whole], rtol=1e-4)


@pytest.mark.slow
def test_two_processes_train_one_sharded_sae(tmp_path):
    params, infos = run_workers(tmp_path, 4, 2, "batchtopk", 20, "--model-parallel", "4")
    assert all(i["processes"] == 2 and i["devices"] == 8 and i["mesh"] == {"data": 2, "model": 4} for i in infos)
    assert all(i["shards"]["W_dec"] == [24, 32] for i in infos)
    for name in params[0]:
        np.testing.assert_array_equal(params[0][name], params[1][name])
    log = logged(tmp_path / "run")
    assert log[-1]["loss"] < log[0]["loss"]
