"""`sauce-jax info --distributed`: the README's multi-host check. Two processes on this machine
join one job through the environment variables a GPU cluster sets (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID), the same path `train-sae --distributed` takes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def test_two_hosts_see_every_device(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    base = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen([sys.executable, "-m", "sauce_jax.cli", "info", "--distributed"],
                              env={**base, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    for i, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
        assert f"processes          2 (this is process {i})" in output, output
        assert "devices            4 in all, 2 here" in output, output


def test_a_malformed_process_count_is_one_line(monkeypatch, capsys):
    from sauce_jax.cli import main

    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")  # refused before JAX is asked to join anything
    assert main(["info", "--distributed"]) == 2
    assert capsys.readouterr().err.strip() == "sauce-jax info: error: JAX_NUM_PROCESSES='two' is not an integer"
