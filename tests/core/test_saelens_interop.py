"""SAELens reads what save_sae writes, and load_sae reads what SAELens writes, with equal outputs.

Needs `sae-lens` (and so torch); skipped where it is not installed. SAELens' classes are the
reference here: its encode/decode run on the same inputs as ours.
"""

from __future__ import annotations

import numpy as np
import pytest

sae_lens = pytest.importorskip("sae_lens", reason="interop tests need sae-lens (pip install sae-lens)")
torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import sauce_jax  # noqa: E402
from sauce_jax import sae as sae_lib  # noqa: E402
from sauce_jax import sae_io  # noqa: E402
from sauce_jax.sae import SAE, SAEConfig  # noqa: E402

D_IN, D_SAE, TOL = 16, 64, 1e-5
OURS = {
    "standard": SAEConfig(d_in=D_IN, d_sae=D_SAE),
    "topk": SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=6),
    "batchtopk": SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="batchtopk", k=6, aux_k=9),
}
SAELENS_CLASS = {"standard": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE"}


def relative_error(ours, ref) -> float:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref.detach().float().numpy() if hasattr(ref, "detach") else ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-12))


def random_inputs(n: int = 12, seed: int = 1) -> np.ndarray:
    return (2 * np.random.default_rng(seed).standard_normal((n, D_IN))).astype(np.float32)


def our_sae(architecture: str, seed: int = 0) -> SAE:
    config = OURS[architecture]
    rng = np.random.default_rng(seed)
    params = {name: np.asarray(value) + 0.3 * rng.standard_normal(value.shape)
              for name, value in sae_lib.init_params(jax.random.key(seed), config).items()}
    if "threshold" in params:
        params["threshold"] = rng.uniform(-0.2, 0.8, D_SAE)
    return SAE({k: jnp.asarray(v, jnp.float32) for k, v in params.items()}, config,
               {"model": "clip-vit", "layer": -2, "figures": {"ev": 0.8}})


def our_outputs(sae: SAE, x: np.ndarray):
    z = sae_lib.encode(sae.params, jnp.asarray(x), sae.config)
    return np.asarray(z), np.asarray(sae_lib.decode(sae.params, z))


def their_outputs(sae, x: np.ndarray):
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x))
        return z, sae.decode(z)


def assert_same_outputs(ours: SAE, theirs, x: np.ndarray):
    z, x_hat = our_outputs(ours, x)
    z_ref, x_hat_ref = their_outputs(theirs, x)
    assert np.array_equal(z > 0, z_ref.numpy() > 0), "different active latents"
    assert relative_error(z, z_ref) <= TOL
    assert relative_error(x_hat, x_hat_ref) <= TOL


def fill(sae, seed: int = 0, threshold_low: float = -0.3):
    """Random SAELens weights: non-zero biases, decoder rows of unequal norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g))
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g) * (torch.rand(D_SAE, 1, generator=g) * 2 + 0.3))
        sae.b_enc.copy_(0.5 * torch.randn(D_SAE, generator=g))
        sae.b_dec.copy_(torch.randn(D_IN, generator=g))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(D_SAE, generator=g) * (1 - threshold_low) + threshold_low)
    return sae


# -- SAELens reads ours ----------------------------------------------------------------------
@pytest.mark.parametrize("architecture", list(OURS))
def test_saelens_loads_ours(tmp_path, architecture):
    ours = our_sae(architecture)
    path = sauce_jax.save_sae(ours, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(path)
    assert type(theirs).__name__ == SAELENS_CLASS[architecture]
    assert (theirs.cfg.d_in, theirs.cfg.d_sae, theirs.cfg.dtype) == (D_IN, D_SAE, "float32")
    if architecture == "topk":
        assert theirs.cfg.k == ours.config.k
    assert theirs.cfg.metadata["layer"] == -2 and theirs.cfg.metadata["figures"] == {"ev": 0.8}
    assert_same_outputs(ours, theirs, random_inputs())


def test_saelens_loads_our_bfloat16(tmp_path):
    ours = our_sae("standard")
    ours.params = {k: v.astype(jnp.bfloat16) for k, v in ours.params.items()}
    theirs = sae_lens.SAE.load_from_disk(sauce_jax.save_sae(ours, tmp_path / "sae"))
    assert theirs.cfg.dtype == "bfloat16" and theirs.W_enc.dtype == torch.bfloat16
    np.testing.assert_array_equal(theirs.W_dec.detach().float().numpy(), np.asarray(ours.params["W_dec"], np.float32))


@pytest.mark.parametrize("architecture", list(OURS))
def test_state_dict_fits_saelens(architecture):
    ours = our_sae(architecture)
    cfg = sae_io.saelens_cfg(ours)
    theirs = sae_lens.SAE.from_dict(cfg)
    theirs.load_state_dict(sae_io.to_torch_state_dict(ours), strict=True)
    assert_same_outputs(ours, theirs, random_inputs())


# -- we read SAELens' ------------------------------------------------------------------------
def saelens_inference_sae(architecture: str, **cfg_fields):
    configs = {"standard": sae_lens.StandardSAEConfig, "topk": sae_lens.TopKSAEConfig,
               "jumprelu": sae_lens.JumpReLUSAEConfig}
    classes = {"standard": sae_lens.StandardSAE, "topk": sae_lens.TopKSAE, "jumprelu": sae_lens.JumpReLUSAE}
    return fill(classes[architecture](configs[architecture](d_in=D_IN, d_sae=D_SAE, **cfg_fields)))


@pytest.mark.parametrize(
    "architecture, fields",
    [
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("topk", {"k": 7}),
        ("topk", {"k": 7, "rescale_acts_by_decoder_norm": True}),
        ("topk", {"k": 7, "apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {}),
        ("jumprelu", {"apply_b_dec_to_input": False}),
    ],
)
def test_we_load_saelens_save_model(tmp_path, architecture, fields):
    theirs = saelens_inference_sae(architecture, **fields)
    theirs.save_model(tmp_path / "sae")
    ours = sauce_jax.load_sae(tmp_path / "sae")
    assert ours.config.architecture == {"jumprelu": "batchtopk"}.get(architecture, architecture)
    assert ours.metadata["sae_lens_version"] == sae_lens.__version__
    assert_same_outputs(ours, theirs, random_inputs(n=32))
    # and back: what we write from it, SAELens reads with the same outputs
    again = sae_lens.SAE.load_from_disk(sauce_jax.save_sae(ours, tmp_path / "again"))
    assert_same_outputs(ours, again, random_inputs(n=32, seed=5))
    assert relative_error(their_outputs(again, random_inputs())[1], their_outputs(theirs, random_inputs())[1]) <= TOL


@pytest.mark.parametrize("training", ["TopKTrainingSAE", "BatchTopKTrainingSAE", "StandardTrainingSAE"])
def test_we_load_saelens_save_inference_model(tmp_path, training):
    """How SAELens saves a trained SAE: BatchTopK becomes JumpReLU, decoder norms are folded."""
    cls = getattr(sae_lens, training)
    cfg_cls = getattr(sae_lens, training + "Config")
    extra = {"k": 6} if "TopK" in training else {}
    sae = fill(cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, **extra)))
    if training == "BatchTopKTrainingSAE":
        sae.topk_threshold.fill_(0.4)
    sae.save_inference_model(tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    ours = sauce_jax.load_sae(tmp_path / "sae")
    if training == "BatchTopKTrainingSAE":
        assert type(theirs).__name__ == "JumpReLUSAE"
        assert (ours.config.architecture, ours.config.k) == ("batchtopk", 6)
    assert_same_outputs(ours, theirs, random_inputs(n=32))
