"""`train_or_load`: the one "load the finished SAE, else train and resume" every caller uses."""

from __future__ import annotations

import numpy as np
import pytest

from sauce_jax.train import TrainConfig, train_or_load
from sauce_jax.train import loop
from sauce_jax.train.reuse import finished_sae

ACTS = np.random.default_rng(0).standard_normal((512, 8)).astype(np.float32)


def config(steps):
    return TrainConfig(steps=steps, batch_size=64, checkpoint_every=2, log_every=1, geometric_median_samples=64)


def test_trains_once_then_loads_and_resumes_an_interrupted_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = loop.train_sae
    calls = []

    def counted(out_dir, **kwargs):
        calls.append(kwargs["resume"])
        return real(out_dir, **kwargs)

    monkeypatch.setattr("sauce_jax.train.reuse.train_sae", counted)
    # An interrupted run: checkpoints but no finished SAE.
    real(out, activations=ACTS, expansion=2, train_config=config(4), progress=False)
    (out / "sae" / "cfg.json").unlink()
    assert finished_sae(out) is None
    resumed = train_or_load(out, activations=ACTS, expansion=2, train_config=config(4), progress=False)
    assert calls == [True]  # it resumed (a fresh start would refuse the folder's checkpoints)
    built = []
    again = train_or_load(out, activations=ACTS, expansion=2, train_config=config(4), progress=False,
                          lazy=lambda: built.append(1) or {})
    assert calls == [True] and built == []  # loaded: nothing trained, the lazy arguments never built
    assert again.fingerprint() == resumed.fingerprint()
    np.testing.assert_array_equal(np.asarray(again.params["W_dec"]), np.asarray(resumed.params["W_dec"]))


def test_a_fresh_folder_trains_with_the_lazy_arguments(tmp_path):
    sae = train_or_load(tmp_path / "run", expansion=2, train_config=config(2), progress=False,
                        lazy=lambda: {"activations": ACTS})
    assert sae.config.d_sae == 16 and finished_sae(tmp_path / "run") is not None


def test_a_fresh_start_on_a_used_folder_is_what_train_sae_refuses(tmp_path):
    """The control for the resume assertion above: without resume, train_sae refuses a folder
    that holds checkpoints, so `calls == [True]` is what made the resumed run possible."""
    from sauce_jax import ConfigError

    loop.train_sae(tmp_path / "run", activations=ACTS, expansion=2, train_config=config(4), progress=False)
    with pytest.raises(ConfigError, match="resume"):
        loop.train_sae(tmp_path / "run", activations=ACTS, expansion=2, train_config=config(4), progress=False)
