"""save_sae / load_sae: round trips, SAELens-written layouts (built here by hand), every bad input.

The SAELens formulas used as references are written out in numpy below; the interop test
(tests/core/test_saelens_interop.py) checks them against SAELens itself where it is installed.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import sauce_jax
from sauce_jax import CheckpointError, ConfigError, InputError, SauceError
from sauce_jax import sae as sae_lib
from sauce_jax import sae_io
from sauce_jax.sae import SAE, SAEConfig

D_IN, D_SAE = 8, 32
CONFIGS = {
    "standard": SAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=3e-4, l1_decoder_norm=True),
    "topk": SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=5, aux_k=7, aux_coefficient=0.1),
    "batchtopk": SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture="batchtopk", k=4),
}


def make_sae(architecture: str, seed: int = 0, dtype=jnp.float32, metadata=None) -> SAE:
    """Random params (init_params, then every tensor perturbed so biases are non-zero)."""
    config = CONFIGS[architecture]
    params = sae_lib.init_params(jax.random.key(seed), config)
    rng = np.random.default_rng(seed)
    params = {name: value + 0.3 * rng.standard_normal(value.shape).astype(np.float32)
              for name, value in params.items()}
    if "threshold" in params:  # mostly positive, some negative, like a trained one could be
        params["threshold"] = jnp.asarray(rng.uniform(-0.2, 0.8, D_SAE), jnp.float32)
    params = {name: jnp.asarray(value, dtype) for name, value in params.items()}
    return SAE(params=params, config=config, metadata=dict(metadata or {}))


def inputs(seed: int = 1, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D_IN)).astype(np.float32) * 2


def outputs(sae: SAE, x) -> tuple[np.ndarray, np.ndarray]:
    z = sae_lib.encode(sae.params, jnp.asarray(x), sae.config)
    return np.asarray(z), np.asarray(sae_lib.decode(sae.params, z))


def close(a, b, tol=1e-5) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and np.linalg.norm(a - b) <= tol * max(np.linalg.norm(b), 1e-12)


# -- SAELens' inference formulas (saes/{standard,topk,jumprelu}_sae.py), in numpy ---------------
def saelens_outputs(cfg: dict, t: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    pre = sae_in @ t["W_enc"] + t["b_enc"]
    norms = np.linalg.norm(t["W_dec"], axis=-1)
    rescale = cfg["architecture"] == "topk" and cfg.get("rescale_acts_by_decoder_norm", False)
    if rescale:
        pre = pre * norms
    if cfg["architecture"] == "standard":
        z = np.maximum(pre, 0)
    elif cfg["architecture"] == "topk":
        idx = np.argsort(-pre, axis=-1)[:, : cfg["k"]]
        z = np.zeros_like(pre)
        np.put_along_axis(z, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    else:  # jumprelu
        z = np.maximum(pre, 0) * (pre > t["threshold"])
    x_hat = (z / norms if rescale else z) @ t["W_dec"] + t["b_dec"]
    return z, x_hat


def random_tensors(seed: int = 0, threshold: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = {"W_enc": rng.standard_normal((D_IN, D_SAE)), "b_enc": 0.3 * rng.standard_normal(D_SAE),
         "W_dec": rng.standard_normal((D_SAE, D_IN)) * rng.uniform(0.2, 3.0, (D_SAE, 1)),
         "b_dec": rng.standard_normal(D_IN)}
    if threshold:
        t["threshold"] = rng.uniform(-0.5, 1.0, D_SAE)
    return {k: v.astype(np.float32) for k, v in t.items()}


def saelens_cfg(architecture: str, **extra) -> dict:
    """A cfg.json as SAELens 6 writes it (SAE.save_model)."""
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                        "hook_name": "blocks.3.hook_resid_post"},
           "architecture": architecture}
    if architecture == "topk":
        cfg.update(k=5, rescale_acts_by_decoder_norm=False)
    cfg.update(extra)
    return cfg


def write_dir(path, cfg: dict | None, tensors: dict | None):
    path.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        (path / "cfg.json").write_text(json.dumps(cfg))
    if tensors is not None:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path / "sae_weights.safetensors"))
    return path


# -- round trips -------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", list(CONFIGS))
def test_round_trip(tmp_path, architecture):
    sae = make_sae(architecture, metadata={"model": "openai/clip-vit-large-patch14-336", "layer": -2})
    returned = sauce_jax.save_sae(sae, tmp_path / "sae")
    assert returned == tmp_path / "sae"
    assert sorted(os.listdir(returned)) == ["cfg.json", "sae_weights.safetensors"]
    loaded = sauce_jax.load_sae(returned)
    assert loaded.config == sae.config
    assert loaded.metadata == sae.metadata
    assert sorted(loaded.params) == sorted(sae.params)
    for name in sae.params:
        assert loaded.params[name].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(loaded.params[name]), np.asarray(sae.params[name]))
    assert loaded.fingerprint() == sae.fingerprint()
    x = inputs()
    for ours, theirs in zip(outputs(loaded, x), outputs(sae, x)):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("architecture", list(CONFIGS))
def test_written_cfg_is_what_saelens_reads(tmp_path, architecture):
    """The SAELens view of the file matches the SAELens formulas on the written tensors."""
    sae = make_sae(architecture)
    path = sauce_jax.save_sae(sae, tmp_path / "sae")
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == {"standard": "standard", "topk": "topk", "batchtopk": "jumprelu"}[architecture]
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D_IN, D_SAE, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    from sauce_jax.ports.weights import read_safetensors

    tensors = read_safetensors(path / "sae_weights.safetensors")
    assert {k: v.dtype for k, v in tensors.items()} == {k: np.dtype(np.float32) for k in sae.params}
    x = inputs()
    for ours, reference in zip(outputs(sae, x), saelens_outputs(cfg, tensors, x)):
        assert close(ours, reference)


def test_bfloat16_round_trip(tmp_path):
    sae = make_sae("topk", dtype=jnp.bfloat16)
    path = sauce_jax.save_sae(sae, tmp_path / "sae")
    assert json.loads((path / "cfg.json").read_text())["dtype"] == "bfloat16"
    loaded = sauce_jax.load_sae(path)
    for name in sae.params:
        assert loaded.params[name].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(loaded.params[name], np.float32),
                                      np.asarray(sae.params[name], np.float32))


def test_mixed_dtypes_are_saved_as_float32(tmp_path):
    sae = make_sae("standard")
    sae.params["W_dec"] = sae.params["W_dec"].astype(jnp.bfloat16)
    loaded = sauce_jax.load_sae(sauce_jax.save_sae(sae, tmp_path / "sae"))
    assert {p.dtype for p in loaded.params.values()} == {jnp.dtype(jnp.float32)}
    np.testing.assert_array_equal(np.asarray(loaded.params["W_dec"]), np.asarray(sae.params["W_dec"], np.float32))


def test_metadata_round_trip(tmp_path):
    metadata = {"model": "clip", "layer": -2, "tokens": "all", "lr": 4e-4, "resumed": False,
                "figures": {"explained_variance": 0.83, "dead": [1, 5, 9], "nested": {"a": None, "b": [True, "x"]}},
                "empty": {}, "none": None, "numpy": np.float32(0.5), "count": np.int64(12)}
    sae = make_sae("standard", metadata=metadata)
    loaded = sauce_jax.load_sae(sauce_jax.save_sae(sae, tmp_path / "sae"))
    assert loaded.metadata == metadata
    assert type(loaded.metadata["count"]) is int and type(loaded.metadata["numpy"]) is float


def test_overwrite_replaces_everything(tmp_path):
    path = sauce_jax.save_sae(make_sae("standard", seed=1, metadata={"run": 1}), tmp_path / "sae")
    second = make_sae("batchtopk", seed=2, metadata={"run": 2})
    sauce_jax.save_sae(second, path)
    loaded = sauce_jax.load_sae(path)
    assert loaded.config == second.config and loaded.metadata == {"run": 2}
    assert loaded.fingerprint() == second.fingerprint()
    assert sorted(os.listdir(path)) == ["cfg.json", "sae_weights.safetensors"]


def test_lazy_exports():
    assert sauce_jax.save_sae is sae_io.save_sae and sauce_jax.load_sae is sae_io.load_sae
    assert sauce_jax.SAE is SAE and sauce_jax.SAEConfig is SAEConfig


# -- semantics of SAELens layouts ------------------------------------------------------------
def test_jumprelu_rule_equals_batchtopk_inference():
    """relu(pre) * (pre > t) == relu(pre) where relu(pre) > t, for t of either sign and ties."""
    rng = np.random.default_rng(0)
    pre = np.concatenate([rng.standard_normal((50, D_SAE)), np.zeros((1, D_SAE))]).astype(np.float32)
    threshold = rng.uniform(-1, 1, D_SAE).astype(np.float32)
    threshold[:4] = [0.0, -0.0, 1e-30, -1e-30]
    pre[0] = threshold  # exact ties: both rules drop them
    ours, _ = sae_lib.activate(jnp.asarray(pre), CONFIGS["batchtopk"], threshold=jnp.asarray(threshold))
    np.testing.assert_array_equal(np.asarray(ours), np.maximum(pre, 0) * (pre > threshold))


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_loads_saelens_layout(tmp_path, architecture):
    cfg, tensors = saelens_cfg(architecture), random_tensors(threshold=architecture == "jumprelu")
    sae = sauce_jax.load_sae(write_dir(tmp_path / "sae", cfg, tensors))
    assert sae.config.architecture == {"jumprelu": "batchtopk"}.get(architecture, architecture)
    assert sae.metadata == cfg["metadata"]
    x = inputs()
    for ours, reference in zip(outputs(sae, x), saelens_outputs(cfg, tensors, x)):
        assert close(ours, reference)


def test_jumprelu_k_comes_from_batchtopk_training_details(tmp_path):
    cfg = saelens_cfg("jumprelu")
    sae = sauce_jax.load_sae(write_dir(tmp_path / "a", cfg, random_tensors(threshold=True)))
    assert sae.config.k == D_SAE  # a JumpReLU SAE has no k
    cfg["metadata"].update(training_architecture="batchtopk", training_architecture_details={"k": 6.0})
    sae = sauce_jax.load_sae(write_dir(tmp_path / "b", cfg, random_tensors(threshold=True)))
    assert sae.config.k == 6


def test_apply_b_dec_to_input_false_is_folded_into_b_enc(tmp_path):
    cfg, tensors = saelens_cfg("standard", apply_b_dec_to_input=False), random_tensors()
    sae = sauce_jax.load_sae(write_dir(tmp_path / "sae", cfg, tensors))
    np.testing.assert_array_equal(np.asarray(sae.params["b_dec"]), tensors["b_dec"])
    x = inputs()
    for ours, reference in zip(outputs(sae, x), saelens_outputs(cfg, tensors, x)):
        assert close(ours, reference)
    assert not close(outputs(sae, x)[0], saelens_outputs(saelens_cfg("standard"), tensors, x)[0])


def test_topk_rescale_by_decoder_norm_is_folded(tmp_path):
    cfg, tensors = saelens_cfg("topk", rescale_acts_by_decoder_norm=True), random_tensors()
    sae = sauce_jax.load_sae(write_dir(tmp_path / "sae", cfg, tensors))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(sae.params["W_dec"]), axis=-1), 1.0, rtol=1e-6)
    x = inputs(n=20)
    for ours, reference in zip(outputs(sae, x), saelens_outputs(cfg, tensors, x)):
        assert close(ours, reference)


def test_pre_6_layout(tmp_path):
    """No sae_lens_version and no architecture: SAELens 5 named topk through activation_fn."""
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "activation_fn": "topk",
           "activation_fn_kwargs": {"k": 5}, "normalize_activations": False, "hook_name": "blocks.0"}
    tensors = {**random_tensors(), "scaling_factor": np.ones(D_SAE, np.float32)}
    sae = sauce_jax.load_sae(write_dir(tmp_path / "sae", cfg, tensors))
    assert (sae.config.architecture, sae.config.k) == ("topk", 5)
    x = inputs()
    for ours, reference in zip(outputs(sae, x), saelens_outputs({**cfg, "architecture": "topk", "k": 5}, tensors, x)):
        assert close(ours, reference)


# -- bad inputs to load_sae ------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    return sauce_jax.save_sae(make_sae("topk"), tmp_path / "sae")


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="'.*nowhere' does not exist"):
        sauce_jax.load_sae(tmp_path / "nowhere")


def test_file_instead_of_directory(saved):
    with pytest.raises(CheckpointError, match="is a file"):
        sauce_jax.load_sae(saved / "cfg.json")


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        sauce_jax.load_sae(tmp_path / "empty")


@pytest.mark.parametrize("name", ["cfg.json", "sae_weights.safetensors"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name} is missing"):
        sauce_jax.load_sae(saved)


def test_cfg_not_json(saved):
    (saved / "cfg.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cfg.json' is not valid JSON"):
        sauce_jax.load_sae(saved)


def test_truncated_weights(saved):
    path = saved / "sae_weights.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="sae_weights.safetensors' is truncated"):
        sauce_jax.load_sae(saved)


def test_weights_shorter_than_a_header(saved):
    (saved / "sae_weights.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="sae_weights.safetensors' is truncated"):
        sauce_jax.load_sae(saved)


def test_corrupt_header(saved):
    path = saved / "sae_weights.safetensors"
    data = bytearray(path.read_bytes())
    data[8] = ord("#")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sae_weights.safetensors' has a corrupt safetensors header"):
        sauce_jax.load_sae(saved)


def test_flipped_weight_bytes_fail_the_checksum(saved):
    path = saved / "sae_weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum in cfg.json"):
        sauce_jax.load_sae(saved)


@pytest.mark.parametrize("name", ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"])
def test_missing_tensor(tmp_path, name):
    tensors = random_tensors(threshold=True)
    del tensors[name]
    write_dir(tmp_path / "sae", saelens_cfg("jumprelu"), tensors)
    with pytest.raises(CheckpointError, match=f"lacks tensor '{name}'"):
        sauce_jax.load_sae(tmp_path / "sae")


def test_unexpected_tensor(tmp_path):
    write_dir(tmp_path / "sae", saelens_cfg("standard"), random_tensors(threshold=True))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['threshold'\]"):
        sauce_jax.load_sae(tmp_path / "sae")


@pytest.mark.parametrize("key, value, culprit", [("d_in", D_IN + 1, "W_enc"), ("d_sae", D_SAE * 2, "W_enc")])
def test_shapes_disagree_with_cfg(saved, key, value, culprit):
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg[key] = value
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"tensor '{culprit}' has shape .*{key}={value}"):
        sauce_jax.load_sae(saved)


def test_wrong_shape_of_one_tensor(tmp_path):
    tensors = random_tensors()
    tensors["b_dec"] = tensors["b_dec"][:-1]
    write_dir(tmp_path / "sae", saelens_cfg("standard"), tensors)
    with pytest.raises(CheckpointError, match=rf"tensor 'b_dec' has shape \({D_IN - 1},\)"):
        sauce_jax.load_sae(tmp_path / "sae")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights(tmp_path, bad):
    tensors = random_tensors()
    tensors["W_dec"][3, 2] = bad
    write_dir(tmp_path / "sae", saelens_cfg("standard"), tensors)
    with pytest.raises(CheckpointError, match="tensor 'W_dec' holds " + ("NaN" if np.isnan(bad) else "infinite")):
        sauce_jax.load_sae(tmp_path / "sae")


def test_integer_tensor(tmp_path):
    tensors = {**random_tensors(), "b_enc": np.zeros(D_SAE, np.int32)}
    write_dir(tmp_path / "sae", saelens_cfg("standard"), tensors)
    with pytest.raises(CheckpointError, match="tensor 'b_enc' has dtype int32"):
        sauce_jax.load_sae(tmp_path / "sae")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"architecture": "gated"}, "architecture 'gated' is not supported"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations='expected_average_only_in'"),
        ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z'"),
        ({"d_sae": None}, "'d_sae' must be a positive integer"),
        ({"d_in": 0}, "'d_in' must be a positive integer"),
        ({"d_in": "8"}, "'d_in' must be a positive integer"),
        ({"dtype": "int8"}, "dtype 'int8'"),
        ({"apply_b_dec_to_input": "yes"}, "'apply_b_dec_to_input' must be true or false"),
        ({"metadata": [1]}, "'metadata' must be a JSON object"),
        ({"activation_fn": "tanh-relu"}, "activation_fn='tanh-relu'"),
    ],
)
def test_bad_cfg_values(tmp_path, change, match):
    write_dir(tmp_path / "sae", {**saelens_cfg("standard"), **change}, random_tensors())
    with pytest.raises(ConfigError, match=match):
        sauce_jax.load_sae(tmp_path / "sae")


def test_cfg_without_d_in(tmp_path):
    cfg = saelens_cfg("standard")
    del cfg["d_in"]
    write_dir(tmp_path / "sae", cfg, random_tensors())
    with pytest.raises(ConfigError, match="cfg.json' has no 'd_in'"):
        sauce_jax.load_sae(tmp_path / "sae")


@pytest.mark.parametrize("k, match", [(None, "integer 'k'"), (2.5, "integer 'k'"), (D_SAE + 1, "1 <= k <= d_sae")])
def test_bad_topk_k(tmp_path, k, match):
    write_dir(tmp_path / "sae", saelens_cfg("topk", k=k), random_tensors())
    with pytest.raises(ConfigError, match=match):
        sauce_jax.load_sae(tmp_path / "sae")


def test_scaling_factor_other_than_one(tmp_path):
    tensors = {**random_tensors(), "scaling_factor": np.full(D_SAE, 2.0, np.float32)}
    write_dir(tmp_path / "sae", saelens_cfg("standard"), tensors)
    with pytest.raises(ConfigError, match="scaling_factor"):
        sauce_jax.load_sae(tmp_path / "sae")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.update(architecture="standard"), "architecture 'standard' contradicts"),
        (lambda c: c.update(k=3), "k=3 contradicts"),
        (lambda c: c["metadata"]["sauce_jax"]["config"].update(colour="red"), r"unknown field\(s\) \['colour'\]"),
        (lambda c: c["metadata"]["sauce_jax"].pop("config"), "must be an object with a 'config'"),
        (lambda c: c["metadata"]["sauce_jax"]["config"].update(k=0), "1 <= k <= d_sae"),
        (lambda c: c["metadata"]["sauce_jax"]["config"].update(l1_coefficient="big"), r"\['config'\] is invalid"),
    ],
)
def test_our_block_must_agree(saved, edit, match):
    cfg = json.loads((saved / "cfg.json").read_text())
    edit(cfg)
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=match):
        sauce_jax.load_sae(saved)


# -- bad inputs to save_sae ------------------------------------------------------------------
@pytest.mark.parametrize(
    "metadata, match",
    [
        ({"size": (224, 224)}, r"metadata\['size'\] is a tuple"),
        ({"figures": {"ev": jnp.ones(2)}}, r"metadata\['figures'\]\['ev'\] is a "),
        ({"ids": [1, {2}]}, r"metadata\['ids'\]\[1\] is a set"),
        ({3: "x"}, "key 3 is not a string"),
        ({"nested": {4: "x"}}, "key 4"),
        ({"sauce_jax": 1}, "'sauce_jax' is reserved"),
        ({"keys": 1}, "'keys' is reserved"),
    ],
)
def test_save_rejects_metadata_json_cannot_keep(tmp_path, metadata, match):
    with pytest.raises(ConfigError, match=match):
        sauce_jax.save_sae(make_sae("standard", metadata=metadata), tmp_path / "sae")
    assert not (tmp_path / "sae").exists()


def test_save_rejects_bad_params(tmp_path):
    sae = make_sae("batchtopk")
    del sae.params["threshold"]
    with pytest.raises(InputError, match="missing parameter 'threshold'"):
        sauce_jax.save_sae(sae, tmp_path / "a")
    sae = make_sae("standard")
    sae.params["b_enc"] = sae.params["b_enc"].at[3].set(jnp.nan)
    with pytest.raises(InputError, match="'b_enc' holds NaN"):
        sauce_jax.save_sae(sae, tmp_path / "b")


def test_save_into_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        sauce_jax.save_sae(make_sae("standard"), tmp_path / "f")


# -- atomic writes ---------------------------------------------------------------------------
def test_failed_write_leaves_the_old_sae(tmp_path, monkeypatch):
    old = make_sae("standard", seed=1, metadata={"run": "old"})
    path = sauce_jax.save_sae(old, tmp_path / "sae")
    before = {name: (path / name).read_bytes() for name in os.listdir(path)}
    calls = []

    def failing_write(f, array):
        calls.append(array.shape)
        if len(calls) == 2:  # part of the new weights are written by now
            raise OSError("disk full")
        f.write(memoryview(array.view(np.uint8).reshape(-1)))

    monkeypatch.setattr(sae_io, "_write_array", failing_write)
    with pytest.raises(CheckpointError, match="disk full"):
        sauce_jax.save_sae(make_sae("topk", seed=2), path)
    assert {name: (path / name).read_bytes() for name in os.listdir(path)} == before  # no temp file left
    assert sauce_jax.load_sae(path).fingerprint() == old.fingerprint()


def test_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    def failing_write(f, array):
        raise KeyboardInterrupt  # even an interrupt leaves no temporary file

    monkeypatch.setattr(sae_io, "_write_array", failing_write)
    with pytest.raises(KeyboardInterrupt):
        sauce_jax.save_sae(make_sae("topk"), tmp_path / "sae")
    assert os.listdir(tmp_path / "sae") == []


def test_crash_between_renames_never_pairs_old_cfg_with_new_weights(tmp_path, monkeypatch):
    path = sauce_jax.save_sae(make_sae("standard", seed=1), tmp_path / "sae")
    real_replace, calls = os.replace, []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the weights are in place; the new cfg.json is not
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(sae_io.os, "replace", replace_then_crash)
    with pytest.raises(CheckpointError, match="power cut"):
        sauce_jax.save_sae(make_sae("standard", seed=2), path)
    monkeypatch.undo()
    assert sorted(os.listdir(path)) == ["sae_weights.safetensors"]
    with pytest.raises(CheckpointError, match="cfg.json is missing"):
        sauce_jax.load_sae(path)


# -- PyTorch ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_to_torch_state_dict(dtype):
    torch = pytest.importorskip("torch")
    sae = make_sae("batchtopk", dtype=dtype)
    state = sae_io.to_torch_state_dict(sae)
    assert sorted(state) == sorted(sae.params)
    for name, tensor in state.items():
        assert tensor.dtype == (torch.bfloat16 if dtype == jnp.bfloat16 else torch.float32)
        np.testing.assert_array_equal(tensor.float().numpy(), np.asarray(sae.params[name], np.float32))


def test_to_torch_state_dict_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(SauceError, match="needs torch"):
        sae_io.to_torch_state_dict(make_sae("standard"))


def test_bfloat16_params_are_bfloat16_on_disk(tmp_path):
    from sauce_jax.ports.weights import read_safetensors

    path = sauce_jax.save_sae(make_sae("standard", dtype=jnp.bfloat16), tmp_path / "sae")
    tensors = read_safetensors(path / "sae_weights.safetensors")
    assert {t.dtype for t in tensors.values()} == {np.dtype(ml_dtypes.bfloat16)}
