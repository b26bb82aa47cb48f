"""The one pass over a folder of images: per-image activations of the features a site shows,
the patch maps of each feature's top images, and (for the probe) each image's pooled output.

Per image, a feature's activation follows the FeatureSet's token choice, as in selection
(`scoring.image_activations`): the mean over every token for "all", the class or last token's
value for "cls" / "last", the SAE code of the mean patch token for "mean", and the mean over the
patch tokens for "random-K" (the expectation of what K random patches give).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sauce_jax import sae as sae_lib
from sauce_jax.encoder import pad_batch
from sauce_jax.image_processor import preprocess
from sauce_jax.images import open_image


@dataclasses.dataclass
class Pass:
    """What one pass over N images keeps, for F features (the union of the sets' ids)."""

    items: list  # the N readable images (paths or arrays), in order
    values: np.ndarray  # [N, F] per-image activation of each feature
    top_rows: np.ndarray  # [n, F] indices into `items` of each feature's n top images, best first (-1: none)
    top_values: np.ndarray  # [n, F]
    top_maps: np.ndarray | None  # [n, g, g, F] patch-grid activations of those images (None: no grid)
    pooled: np.ndarray | None  # [N, D] mean over tokens of the last hidden state (with `pooled=True`)


def tiled(encoder) -> bool:
    """Mllama's towers: tiles of patches with a class token each, padded; no single grid."""
    return encoder.config.model_type.startswith("mllama")


def patch_grid(encoder) -> int | None:
    """The side of the square patch grid whose tokens end the sequence, or None when the tokens
    are not one square grid (Mllama's tiles)."""
    c = encoder.config
    if tiled(encoder) or not c.patch_size:
        return None
    side = c.image_size // c.patch_size
    return side if 0 < side * side <= c.num_tokens else None


@functools.partial(jax.jit, static_argnames=("config", "token", "grid"))
def feature_values(params, hidden, ids, *, config, token: str, grid: int | None):
    """SAE codes of one batch's hidden state [b, T, D] -> per-image values [b, F] of the
    features `ids` [F] and their patch maps [b, g, g, F] (or None)."""
    z = sae_lib.encode(params, hidden, config)[:, :, ids]  # [b, T, F]
    if token == "all":
        values = z.mean(axis=1)
    elif token == "cls":
        values = z[:, 0]
    elif token == "last":
        values = z[:, -1]
    elif token == "mean":
        values = sae_lib.encode(params, hidden[:, 1:].mean(axis=1), config)[:, ids]  # [b, F]
    else:  # random-K: its expectation, the mean over patch tokens
        values = z[:, 1:].mean(axis=1)
    maps = None
    if grid is not None:
        b, _, f = z.shape
        maps = z[:, -grid * grid:].reshape(b, grid, grid, f)  # patches are the last g*g tokens
    return values, maps


def _merge_top(top, batch, n: int):
    """Keep the n best rows per feature of (values [m, F], rows [m, F], maps [m, g, g, F] | None)
    stacked over the current top and a batch; the earlier image wins a tie."""
    values = np.concatenate([top[0], batch[0]])
    rows = np.concatenate([top[1], batch[1]])
    order = np.argsort(-values, axis=0, kind="stable")[:n]  # [n, F]
    maps = None
    if top[2] is not None:
        maps = np.take_along_axis(np.concatenate([top[2], batch[2]]), order[:, None, None, :], axis=0)
    return np.take_along_axis(values, order, 0), np.take_along_axis(rows, order, 0), maps


def run_pass(encoder, sae, items, *, layer: int, token: str, ids, n_top: int, batch_size: int = 32,
             pooled: bool = False, progress: bool = True, desc: str = "images") -> Pass:
    """Encode every image once (the jitted tower up to `layer`, or to the end with `pooled`,
    then the jitted SAE) and keep what a site shows. Unreadable files are skipped."""
    ids = jnp.asarray(np.asarray(ids, np.int32))
    f = int(ids.shape[0])
    grid = patch_grid(encoder)
    params = {k: jnp.asarray(v) for k, v in sae.params.items()}
    top = (np.full((0, f), -np.inf, np.float32), np.zeros((0, f), np.int64),
           None if grid is None else np.zeros((0, grid, grid, f), np.float32))
    kept, values, pools = [], [], []
    for start in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress):
        batch = [(item, open_image(item)) for item in items[start:start + batch_size]]
        batch = [(item, image) for item, image in batch if image is not None]
        if not batch:
            continue
        b = len(batch)
        # padded to one batch shape so the tower and the SAE compile once
        px = pad_batch(preprocess([image for _, image in batch], encoder), batch_size)
        if pooled:
            states = encoder.hidden_states(px)
            hidden = states[layer]
            pools.append(np.asarray(states[-1][:b].mean(axis=1)))  # [b, D]
        else:
            hidden = encoder.hidden_state(px, layer)  # [B, T, D]
        v, maps = feature_values(params, hidden, ids, config=sae.config, token=token, grid=grid)
        v = np.asarray(v[:b], np.float32)
        rows = np.broadcast_to(np.arange(len(kept), len(kept) + b)[:, None], (b, f))
        top = _merge_top(top, (v, rows, None if maps is None else np.asarray(maps[:b], np.float32)), n_top)
        kept += [item for item, _ in batch]
        values.append(v)
    values = np.concatenate(values) if values else np.zeros((0, f), np.float32)
    top_values, top_rows, top_maps = top
    pad = n_top - len(top_rows)  # fewer images than n_top
    if pad > 0:
        top_values = np.concatenate([top_values, np.full((pad, f), -np.inf, np.float32)])
        top_rows = np.concatenate([top_rows, np.full((pad, f), -1)])
        if top_maps is not None:
            top_maps = np.concatenate([top_maps, np.zeros((pad,) + top_maps.shape[1:], np.float32)])
    return Pass(items=kept, values=values, top_rows=top_rows, top_values=top_values, top_maps=top_maps,
                pooled=np.concatenate(pools) if pools else None)


def model_view(encoder, image: Any, size: int) -> np.ndarray:
    """The image as the encoder sees it (preprocessed, then un-normalized) as uint8 [size, size, 3],
    so a patch map lies exactly over its pixels; Mllama's tiles fall back to a center crop."""
    from PIL import Image

    cfg = encoder.preprocess_config
    if not tiled(encoder) and encoder.config.num_channels == 3:
        px = np.asarray(preprocess([image], encoder))[0].astype(np.float64)  # [H, W, 3]
        if cfg.image_std is not None:
            px = px * np.asarray(cfg.image_std) + np.asarray(cfg.image_mean)
        if cfg.rescale_factor:
            px = px / cfg.rescale_factor
        pic = Image.fromarray(np.clip(np.round(px), 0, 255).astype(np.uint8))
    else:
        from sauce_jax.images import to_rgb_array

        pic = Image.fromarray(to_rgb_array(image, 0))
        side = min(pic.size)
        left, upper = (pic.width - side) // 2, (pic.height - side) // 2
        pic = pic.crop((left, upper, left + side, upper + side))
    return np.asarray(pic.resize((size, size), Image.BICUBIC if pic.width < size else Image.LANCZOS))
