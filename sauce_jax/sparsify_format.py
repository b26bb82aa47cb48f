"""EleutherAI sparsify's SAE layout, translated to and from ours (pure: no file access).

A sparsify SAE directory (`Sae.save_to_disk`, eai-sparsify >= 1.0, and its predecessor `sae`)
holds `cfg.json` (the `SparseCoderConfig` fields plus `d_in`) and `sae.safetensors` with

    encoder.weight [d_sae, d_in]   encoder.bias [d_sae]   W_dec [d_sae, d_in]   b_dec [d_in]

Its inference rule is ours for `topk`: pre = (x - b_dec) @ encoder.weight^T + encoder.bias,
the k largest of relu(pre) per token are kept (the same latents as our k largest pre with
relu applied: a latent sparsify keeps with value 0 contributes nothing either way), and the
reconstruction is z @ W_dec + b_dec. So W_enc = encoder.weight^T, b_enc = encoder.bias, and
W_dec, b_dec are shared. `d_sae` is `num_latents`, or `d_in * expansion_factor` when it is 0.

Not representable here, and refused on load: transcoders (`transcode`: they predict another
module's output and skip the b_dec shift), skip connections (`W_skip`) and the `groupmax`
activation. `multi_topk` and `normalize_decoder` only change training. sparsify drops cfg
fields it does not know, so ours (the SAEConfig, metadata, a weights checksum) travel in
`cfg.json` under "sauce_jax".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sauce_jax.errors import CheckpointError, ConfigError
from sauce_jax.sae import SAEConfig, stored_config

WEIGHTS_FILENAME = "sae.safetensors"
OUR_KEY = "sauce_jax"
_SPARSIFY_DEFAULTS = {"expansion_factor": 32, "k": 32, "activation": "topk"}  # SparseCoderConfig's defaults


def is_sparsify_cfg(cfg: dict[str, Any]) -> bool:
    """Whether a cfg.json dict is sparsify's: it names latents by count or expansion, never `d_sae`."""
    return "d_sae" not in cfg and ("num_latents" in cfg or "expansion_factor" in cfg)


def sparsify_cfg(config: SAEConfig, ours: dict[str, Any]) -> dict[str, Any]:
    """The cfg.json dict sparsify's `Sae.load_from_disk` reads for a topk SAE; `ours` is stored beside it.

    Raises ConfigError for an architecture sparsify cannot express (only TopK SAEs exist there).
    """
    if not config.is_topk:
        raise ConfigError(f"sparsify stores TopK SAEs only; this SAE is {config.architecture!r} "
                          "(save it in SAELens' format instead: format='saelens')")
    return {
        "activation": "topk",
        "expansion_factor": max(config.d_sae // config.d_in, 1),  # informative: num_latents decides
        "normalize_decoder": True,
        "num_latents": int(config.d_sae),
        "k": int(config.k),
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": int(config.d_in),
        OUR_KEY: ours,
    }


def to_sparsify_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our host arrays (W_enc [d_in, d_sae], ...) under sparsify's names and layout."""
    return {
        "W_dec": arrays["W_dec"],  # [d_sae, d_in]
        "b_dec": arrays["b_dec"],  # [d_in]
        "encoder.bias": arrays["b_enc"],  # [d_sae]
        "encoder.weight": np.ascontiguousarray(arrays["W_enc"].T),  # [d_sae, d_in]
    }


def parse_sparsify_cfg(cfg: dict[str, Any], where: str) -> tuple[SAEConfig, dict[str, Any] | None]:
    """(our SAEConfig, our stored block or None) from a sparsify cfg.json dict.

    An SAE sauce-jax saved gets its full SAEConfig back (checked against sparsify's fields);
    one sparsify trained gets a topk SAEConfig with our defaults for training-only fields.
    Raises ConfigError for what sparsify can hold but our SAE cannot (see the module docstring).
    """
    def flag(key: str) -> bool:
        value = cfg.get(key, False)
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key!r} must be true or false, got {value!r}")
        return value

    if flag("transcode"):
        raise ConfigError(f"{where}: a sparsify transcoder (transcode: true) predicts another module's output; "
                          "only sparse autoencoders can be loaded")
    if flag("skip_connection"):
        raise ConfigError(f"{where}: sparsify SAEs with a skip connection (W_skip) are not supported")
    activation = cfg.get("activation", _SPARSIFY_DEFAULTS["activation"])
    if activation != "topk":
        raise ConfigError(f"{where}: sparsify activation {activation!r} is not supported (only 'topk')")
    if cfg.get("signed", False):  # the pre-1.0 `sae` package's signed TopK
        raise ConfigError(f"{where}: signed TopK SAEs (signed: true) are not supported")
    d_in = _positive_int(cfg.get("d_in"), "d_in", where)
    latents = cfg.get("num_latents", 0)
    if latents in (0, None):
        latents = _positive_int(cfg.get("expansion_factor", _SPARSIFY_DEFAULTS["expansion_factor"]),
                                "expansion_factor", where) * d_in
    d_sae = _positive_int(latents, "num_latents", where)
    k = _positive_int(cfg.get("k", _SPARSIFY_DEFAULTS["k"]), "k", where)

    ours = cfg.get(OUR_KEY)
    if ours is None:
        try:
            return SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k), None
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    stored = ours.get("config") if isinstance(ours, dict) else None
    config = stored_config(stored, d_in, d_sae, where, repr(OUR_KEY))
    if not config.is_topk or config.k != k:
        raise ConfigError(f"{where}: sparsify's k={k} (TopK) contradicts {OUR_KEY!r}['config'] "
                          f"({config.architecture!r}, k={config.k})")
    return config, ours


def from_sparsify_tensors(tensors: dict[str, np.ndarray], config: SAEConfig, path: str) -> dict[str, np.ndarray]:
    """sparsify's tensors as our float32 arrays, checked for presence, shape and finiteness."""
    d_in, d_sae = config.d_in, config.d_sae
    expected = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    extra = sorted(set(tensors) - set(expected))
    if extra:
        hint = " (a skip connection is not supported)" if "W_skip" in extra else ""
        raise CheckpointError(f"{path!r} holds unexpected tensor(s) {extra} for a sparsify SAE "
                              f"(expected {sorted(expected)}){hint}")
    arrays = {}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{path!r} lacks tensor {name!r} (a sparsify SAE needs {', '.join(expected)}; "
                                  "an SAE saved without its decoder cannot be loaded)")
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(f"{path!r}: tensor {name!r} has shape {tuple(tensors[name].shape)}, but cfg.json's "
                                  f"d_in={d_in}, num_latents={d_sae} need {shape}")
        array = np.array(tensors[name], np.float32)  # a copy: nothing keeps the file mapped
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path!r}: tensor {name!r} holds NaN or infinite values")
        arrays[name] = array
    return {"W_enc": np.ascontiguousarray(arrays["encoder.weight"].T), "b_enc": arrays["encoder.bias"],
            "W_dec": arrays["W_dec"], "b_dec": arrays["b_dec"]}


def _positive_int(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    return value
