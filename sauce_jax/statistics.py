"""Feature statistics of an SAE (paper eq. 7, 8) and their Figure 4 histograms.

    FS_i   = share of rows where z_i != 0                    (eq. 7, feature sparsity)
    FMAV_i = mean of z_i over the rows where z_i != 0        (eq. 8, mean activation value)

A row is one token (`feature_statistics`, streamed over activations) or one image
(`image_statistics`, over per-image activations such as `scoring.image_activations` returns).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sauce_jax import sae as sae_lib


def feature_statistics(params, config, activations: Iterable[np.ndarray], batch_size: int = 4096):
    """FS_i (share of activations where z_i != 0) and FMAV_i (mean z_i where active), over
    every row of every array in `activations` ([n, d_in] each; the paper: one row per image)."""
    encode = jax.jit(lambda p, x: sae_lib.encode(p, x, config))
    count = jnp.zeros((config.d_sae,), jnp.float32)
    total = jnp.zeros((config.d_sae,), jnp.float32)
    rows = 0
    for acts in activations:
        for start in range(0, len(acts), batch_size):
            z = encode(params, jnp.asarray(acts[start : start + batch_size], jnp.float32))  # [n, d_sae]
            count = count + jnp.sum(z != 0, axis=0)
            total = total + jnp.sum(z, axis=0)
            rows += len(z)
    count, total = np.asarray(count), np.asarray(total)
    fs = count / max(rows, 1)
    fmav = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return fs, fmav, rows


def plot_feature_statistics(fs: np.ndarray, fmav: np.ndarray, path: str | Path) -> Path:
    """The paper's Figure 4: log10 histograms of FS and FMAV over the features that ever fire."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = fs > 0
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, values, title in ((axes[0], fs[live], "feature sparsity (FS)"),
                              (axes[1], fmav[live], "mean activation when active (FMAV)")):
        if values.size:
            ax.hist(np.log10(values), bins=50, color="#3a6ea5")
        ax.set_xlabel(f"log10 {title.split(' (')[1][:-1]}")
        ax.set_ylabel("features")
        ax.set_title(title)
    fig.suptitle(f"{int(live.sum())} of {fs.size} features fire; {int((~live).sum())} dead")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def image_statistics(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 7 and 8 over per-image activations z [N, d_sae]: FS_i = share of images with z_i != 0,
    FMAV_i = mean of z_i over those images (0 for a feature that never fires)."""
    active = z != 0  # [N, d_sae]
    count = active.sum(axis=0)
    fmav = np.divide(z.sum(axis=0), count, out=np.zeros(z.shape[1]), where=count > 0)
    return count / max(len(z), 1), fmav


# -- SAEBench's `core` evaluation -----------------------------------------------------------
SAEBENCH_EVAL_TYPE = "core"
# SAEBench 0.6 `core` output: its metric groups and their keys, in its order. The model-splice
# groups need the hooked model run with the SAE spliced in; where a run has none they are null.
SAEBENCH_CORE_METRICS = {
    "model_behavior_preservation": ("kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
    "model_performance_preservation": ("ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae",
                                       "ce_loss_without_sae"),
    "reconstruction_quality": ("explained_variance", "mse", "cossim"),
    "shrinkage": ("l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"),
    "sparsity": ("l0", "l1"),
    "token_stats": ("total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"),
    "misc_metrics": ("frac_alive", "freq_over_1_percent", "freq_over_10_percent"),
}
SAEBENCH_FEATURE_KEYS = ("index", "feature_density", "encoder_bias", "encoder_norm", "encoder_decoder_cosine_sim")
MODEL_SPLICE_GROUPS = ("model_behavior_preservation", "model_performance_preservation")


def core_metrics(params, config, activations: Iterable[np.ndarray], batch_size: int = 4096) -> dict:
    """One pass over `activations` ([n, d_in] arrays): the reconstruction and sparsity figures of
    SAEBench's `core` evaluation, plus eq. 7-8's FS and FMAV per feature.

    Over all tokens: explained_variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2;
    mse = mean of (x - x_hat)^2 over tokens and dimensions; cossim, l2_norm_in, l2_norm_out and
    l2_ratio (||x_hat|| / ||x||) are means over tokens; relative_reconstruction_bias =
    mean ||x_hat||^2 / mean <x, x_hat> (Rajamanoharan et al. 2024, eq. 10); l0 and l1 are means
    over tokens of the active count and the sum of |z|. Per feature: fs (share of tokens where
    z_i != 0, SAEBench's feature_density) and fmav (mean z_i over those tokens)."""
    fn = jax.jit(lambda p, x: _batch_sums(p, x, config))
    sums = None
    rows = 0
    for acts in activations:
        for start in range(0, len(acts), batch_size):
            batch = jnp.asarray(acts[start : start + batch_size], jnp.float32)
            part = fn(params, batch)
            sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
            rows += len(batch)
    if sums is None:
        raise ValueError("core_metrics needs at least one activation")
    s = {name: np.asarray(value, np.float64) for name, value in jax.device_get(sums).items()}
    n, d_in = rows, config.d_in
    mean_x = s["x"] / n
    sst = float(s["x2"] - n * np.sum(mean_x**2))
    count, total = s["count"], s["total"]
    fs = (count / n).astype(np.float32)
    fmav = np.divide(total, count, out=np.zeros_like(total), where=count > 0).astype(np.float32)
    return {
        "explained_variance": 1.0 - float(s["sse"]) / max(sst, 1e-30),
        "mse": float(s["sse"]) / (n * d_in),
        "cossim": float(s["cos"]) / n,
        "l2_norm_in": float(s["norm_in"]) / n,
        "l2_norm_out": float(s["norm_out"]) / n,
        "l2_ratio": float(s["ratio"]) / n,
        "relative_reconstruction_bias": float(s["xhat2"]) / float(s["dot"]) if float(s["dot"]) != 0 else None,
        "l0": float(np.sum(count)) / n,
        "l1": float(s["l1"]) / n,
        "frac_alive": float(np.mean(count > 0)),
        "freq_over_1_percent": float(np.mean(fs > 0.01)),
        "freq_over_10_percent": float(np.mean(fs > 0.1)),
        "tokens": n, "fs": fs, "fmav": fmav,
    }


def _batch_sums(params, x, config):
    out = sae_lib.forward(params, x, config)
    z, x_hat = out.z, out.x_hat
    norm_in, norm_out = jnp.linalg.norm(x, axis=-1), jnp.linalg.norm(x_hat, axis=-1)
    dot = jnp.sum(x * x_hat, axis=-1)
    return {"x": jnp.sum(x, axis=0), "x2": jnp.sum(x**2), "sse": jnp.sum((x - x_hat) ** 2),
            "cos": jnp.sum(dot / jnp.maximum(norm_in * norm_out, 1e-30)), "norm_in": jnp.sum(norm_in),
            "norm_out": jnp.sum(norm_out), "ratio": jnp.sum(norm_out / jnp.maximum(norm_in, 1e-30)),
            "xhat2": jnp.sum(norm_out**2), "dot": jnp.sum(dot), "l1": jnp.sum(jnp.abs(z)),
            "count": jnp.sum(z != 0, axis=0).astype(jnp.float32), "total": jnp.sum(z, axis=0)}


def sae_eval_record(sae, metrics: dict, *, activations: str, splice: dict | None = None) -> dict:
    """SAEBench 0.6's `core` output (eval_type_id, eval_config, eval_id, datetime_epoch_millis,
    eval_result_metrics by group, eval_result_details per feature) for `sae` from `core_metrics`.
    `activations` says what the figures were measured on; `splice` holds the model-splice groups
    where the run has a model to splice into (else they are null, key by key)."""
    import time
    import uuid

    from sauce_jax.sae_io import saelens_cfg

    params = {name: np.asarray(jax.device_get(v), np.float32) for name, v in sae.params.items()}
    values = {**metrics, "total_tokens_eval_reconstruction": metrics["tokens"],
              "total_tokens_eval_sparsity_variance": metrics["tokens"]}
    groups = {}
    for group, keys in SAEBENCH_CORE_METRICS.items():
        source = (splice or {}).get(group, {}) if group in MODEL_SPLICE_GROUPS else values
        groups[group] = {key: source.get(key) for key in keys}
    w_enc, w_dec = params["W_enc"], params["W_dec"]
    enc_norm = np.linalg.norm(w_enc, axis=0)
    dec_norm = np.linalg.norm(w_dec, axis=1)
    cos = np.sum(w_enc.T * w_dec, axis=1) / np.maximum(enc_norm * dec_norm, 1e-30)
    details = [{"index": i, "feature_density": float(metrics["fs"][i]), "encoder_bias": float(params["b_enc"][i]),
                "encoder_norm": float(enc_norm[i]), "encoder_decoder_cosine_sim": float(cos[i])}
               for i in range(sae.config.d_sae)]
    return {
        "eval_type_id": SAEBENCH_EVAL_TYPE,
        "eval_config": {"activations": activations, "tokens": metrics["tokens"],
                        "model_splice": "computed" if splice else "not computed: this run has no model to splice into"},
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": groups,
        "eval_result_details": details,
        "eval_result_unstructured": None,
        "sae_bench_commit_hash": None,
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": None,
        "sae_cfg_dict": saelens_cfg(sae),
    }


def write_sae_eval(path: str | Path, record: dict) -> Path:
    """sae_eval.json: the metrics indented, the per-feature details one line each."""
    import json

    path = Path(path)
    head = {k: v for k, v in record.items() if k != "eval_result_details"}
    text = json.dumps(head, indent=1)
    details = ",\n".join("  " + json.dumps(d) for d in record["eval_result_details"])
    text = text[:-2] + ',\n "eval_result_details": [\n' + details + "\n ]\n}\n"
    path.write_text(text)
    return path
