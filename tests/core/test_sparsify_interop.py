"""EleutherAI sparsify reads what `save_sae(..., format="sparsify")` writes, and `load_sae` reads
what sparsify writes, with equal outputs: sparsify's own `Sae` is the reference.

Needs `eai-sparsify` (extra `sauce-jax[sparsify]`), and so torch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sparsify = pytest.importorskip("sparsify", reason="interop tests need eai-sparsify (pip install 'sauce-jax[sparsify]')")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import sauce_jax  # noqa: E402
from sauce_jax import sae as sae_lib  # noqa: E402
from sauce_jax.errors import CheckpointError, ConfigError  # noqa: E402
from sauce_jax.sae import SAE, SAEConfig  # noqa: E402

D_IN, D_SAE, K, TOL = 16, 64, 5, 1e-5


def inputs(n: int = 24, seed: int = 1) -> np.ndarray:
    return (2 * np.random.default_rng(seed).standard_normal((n, D_IN))).astype(np.float32)


def their_sae(seed: int = 0, **cfg):
    """A sparsify TopK SAE with random weights: non-zero biases, decoder rows of unequal norms."""
    torch.manual_seed(seed)
    sae = sparsify.Sae(D_IN, sparsify.SaeConfig(num_latents=D_SAE, k=K, **cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.randn(D_SAE, D_IN, generator=g))
        sae.encoder.bias.copy_(torch.randn(D_SAE, generator=g))
        sae.W_dec.copy_(torch.randn(D_SAE, D_IN, generator=g) * (torch.rand(D_SAE, 1, generator=g) + 0.3))
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
    return sae


def their_outputs(sae, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense latents [N, d_sae] and reconstruction from sparsify's encode/decode."""
    with torch.no_grad():
        top_acts, top_indices, _ = sae.encode(torch.from_numpy(x))
        x_hat = sae.decode(top_acts, top_indices)
        z = torch.zeros(len(x), sae.num_latents).scatter_(1, top_indices, top_acts)
    return z.numpy(), x_hat.numpy()


def our_outputs(sae: SAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = sae_lib.encode(sae.params, jnp.asarray(x), sae.config)
    return np.asarray(z), np.asarray(sae_lib.decode(sae.params, z))


def assert_same_outputs(ours: SAE, theirs, x: np.ndarray) -> None:
    z, x_hat = our_outputs(ours, x)
    z_ref, x_hat_ref = their_outputs(theirs, x)
    assert np.array_equal(z > 0, z_ref > 0), "different active latents"
    assert ((z > 0).sum(-1) == K).all()  # the inputs activate k latents each: TopK is exercised
    np.testing.assert_allclose(z, z_ref, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(x_hat, x_hat_ref, rtol=TOL, atol=TOL)


def test_an_sae_sparsify_saved_loads_with_its_outputs(tmp_path):
    theirs = their_sae()
    theirs.save_to_disk(tmp_path / "layers.3")
    ours = sauce_jax.load_sae(tmp_path / "layers.3")
    assert ours.config == SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=K)
    assert ours.metadata["sparsify"]["k"] == K
    assert_same_outputs(ours, theirs, inputs())
    # sparsify's multi-hookpoint run folder: one SAE per subfolder, named in the error
    with pytest.raises(CheckpointError, match=r"several SAEs.*layers\.3"):
        sauce_jax.load_sae(tmp_path)


def test_expansion_factor_decides_without_num_latents(tmp_path):
    theirs = sparsify.Sae(D_IN, sparsify.SaeConfig(expansion_factor=D_SAE // D_IN, k=K))
    theirs.save_to_disk(tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["num_latents"] == 0
    ours = sauce_jax.load_sae(tmp_path / "sae")
    assert ours.config.d_sae == D_SAE
    assert_same_outputs(ours, theirs, inputs())


def test_an_sae_we_save_loads_in_sparsify_with_our_outputs(tmp_path):
    config = SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=K, aux_k=9)
    rng = np.random.default_rng(3)
    params = {name: jnp.asarray(np.asarray(v) + 0.3 * rng.standard_normal(v.shape), jnp.float32)
              for name, v in sae_lib.init_params(jax.random.key(0), config).items()}
    ours = SAE(params, config, {"layer": -2, "figures": {"ev": 0.8}})
    sauce_jax.save_sae(ours, tmp_path / "saelens")  # a SAELens save first: switching formats replaces it
    sauce_jax.save_sae(ours, tmp_path / "saelens", format="sparsify")
    assert sorted(p.name for p in (tmp_path / "saelens").iterdir()) == ["cfg.json", "sae.safetensors"]
    theirs = sparsify.Sae.load_from_disk(tmp_path / "saelens")
    assert theirs.num_latents == D_SAE and theirs.cfg.k == K
    assert_same_outputs(ours, theirs, inputs())
    back = sauce_jax.load_sae(tmp_path / "saelens")  # ours again, config and metadata included
    assert back.config == config and back.metadata == ours.metadata
    for name in params:
        assert np.array_equal(np.asarray(back.params[name]), np.asarray(params[name])), name


def test_what_sparsify_cannot_hold_or_we_cannot_load_is_refused(tmp_path):
    standard = SAE(sae_lib.init_params(jax.random.key(0), SAEConfig(d_in=D_IN, d_sae=D_SAE)),
                   SAEConfig(d_in=D_IN, d_sae=D_SAE), {})
    with pytest.raises(ConfigError, match="TopK SAEs only.*'standard'"):
        sauce_jax.save_sae(standard, tmp_path / "s", format="sparsify")
    with pytest.raises(ConfigError, match="format 'torch'"):
        sauce_jax.save_sae(standard, tmp_path / "s", format="torch")
    assert not (tmp_path / "s").exists()  # refused before anything is written

    their_sae(transcode=True).save_to_disk(tmp_path / "transcoder")
    with pytest.raises(ConfigError, match="transcoder"):
        sauce_jax.load_sae(tmp_path / "transcoder")
    their_sae(skip_connection=True).save_to_disk(tmp_path / "skip")
    with pytest.raises(ConfigError, match="skip connection"):
        sauce_jax.load_sae(tmp_path / "skip")
    their_sae().save_to_disk(tmp_path / "groupmax")
    cfg = json.loads((tmp_path / "groupmax" / "cfg.json").read_text())
    (tmp_path / "groupmax" / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(ConfigError, match="groupmax"):
        sauce_jax.load_sae(tmp_path / "groupmax")
    (tmp_path / "groupmax" / "cfg.json").write_text(json.dumps({**cfg, "num_latents": D_SAE * 2}))
    with pytest.raises(CheckpointError, match="encoder.weight.*shape"):
        sauce_jax.load_sae(tmp_path / "groupmax")
