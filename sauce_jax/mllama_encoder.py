"""`MllamaEncoder`: the Mllama (Llama 3.2 Vision) tower behind the `VisionEncoder` contract.

Inputs are the structured batches of `sauce_jax.mllama_processor` (`preprocess` makes them;
`mllama_inputs` packs separate arrays), or a mapping / 3-tuple of pixel_values
[B, N, H, W, C] (NHWC tiles), aspect_ratio_ids [B] and aspect_ratio_mask [B, N]. Fewer than
`max_num_tiles` tiles are zero-padded (masked); more is an error.

Hidden states are the residual stream of the whole tower, [B, N * Tp, D]: all tiles of an
image side by side, each tile's tokens padded to a multiple of 8 (Tp), exactly the layout
transformers' local and global transformers run on. Integer hidden-state indices count
through both stages, `num_layers = num_hidden_layers + num_global_layers` (L + G):

  0          embeddings after layernorm_pre (the local transformer's input)   ("local", 0)
  i, i <= L  output of local block i - 1                                       ("local", i)
  L + j      output of global block j - 1, j = 1..G                            ("global", j)

so -1 is the global transformer's output and -2, the default SAE layer, is the output of
the penultimate global block: the paper's "penultimate layer" of the tower's main path.
Note that the language model also reads the local outputs at `intermediate_layers_indices`
directly (concatenated into the tower's output); a hook on a global layer leaves those
channels as they are, while a hook on local index i also changes every intermediate output
after it. `encoder(px).last_hidden_state` is transformers' [B, N, P + 1, D * (1 + K)].
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sauce_jax.ports import mllama
from sauce_jax.encoder import EncoderConfig, EncoderOutput, VisionEncoder
from sauce_jax.errors import ConfigError, InputError
from sauce_jax.mllama_processor import FIELDS, MllamaPreprocessConfig

STAGES = ("local", "global")


@functools.partial(jax.jit, static_argnames=("graphdef", "keep", "hook_fns", "head", "precision"))
def _run(graphdef, state, pixel_values, aspect_ratio_ids, aspect_ratio_mask, hook_args, *, keep, hook_fns, head,
         precision):
    """The jitted forward: hidden states at `keep` (sorted indices), hooks applied on the way,
    and with `head` transformers' last_hidden_state (else None)."""
    model = nnx.merge(graphdef, state)
    hooks = dict(zip((i for i, _ in hook_fns), zip((f for _, f in hook_fns), hook_args)))
    stop = model.num_layers if head else keep[-1]
    wanted = set(model.intermediate_indices()) if head else set()
    kept, intermediate = [], {}
    with jax.default_matmul_precision(precision):
        pad = model.padding(aspect_ratio_mask)  # [B, N*Tp]
        dtype = model.patch_embedding.kernel.dtype
        hidden = model.embed(pixel_values.astype(dtype), aspect_ratio_ids)  # [B, N*Tp, D]
        for i in range(stop + 1):
            if i > 0:
                hidden = model.block(i - 1, hidden, pad, aspect_ratio_ids)
            if i in hooks:
                fn, args = hooks[i]
                hidden = fn(hidden, args)
            if i in keep:
                kept.append(hidden)
            if i in wanted:
                intermediate[i] = hidden
        if not head:
            return tuple(kept), None
        last = model.last_hidden_state(hidden, tuple(intermediate[i] for i in model.intermediate_indices()))
        return tuple(kept), last


class MllamaEncoder(VisionEncoder):
    """A loaded Mllama vision tower; `model_config` is its `sauce_jax.ports.mllama.MllamaVisionConfig`."""

    def __init__(self, model: mllama.MllamaVisionModel, config: EncoderConfig,
                 preprocess_config: MllamaPreprocessConfig, hooks: Mapping[Any, Any] | None = None):
        self.model_config = model.config
        super().__init__(model, config, preprocess_config, hooks)

    # -- indices -----------------------------------------------------------------------
    def layer_index(self, layer: Any) -> int:
        """A hidden-state index (an int over both stages, or ("local", i) / ("global", j)) as
        its non-negative integer form."""
        c = self.model_config
        if isinstance(layer, tuple) and len(layer) == 2 and layer[0] in STAGES:
            stage, i = layer
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise ConfigError(f"hidden-state key {layer!r}: the index must be an integer")
            if stage == "local":
                n = c.num_hidden_layers + 1
                if not -n <= i < n:
                    raise ConfigError(f"hidden-state key {layer!r} is out of range for {n} local states [-{n}, {n - 1}]")
                return int(i) % n
            g = c.num_global_layers
            if i == 0:
                raise ConfigError(f"hidden-state key {layer!r}: the global transformer's input is "
                                  f"layernorm_post(local output) + the post-tile embedding, not a state of the "
                                  f"residual stream; hook ('local', {c.num_hidden_layers}) instead")
            if not -g <= i <= g:
                raise ConfigError(f"hidden-state key {layer!r} is out of range for {g} global blocks "
                                  f"[1, {g}] (or [-{g}, -1])")
            return c.num_hidden_layers + (int(i) if i > 0 else g + 1 + int(i))
        if isinstance(layer, tuple):
            raise ConfigError(f"hidden-state key {layer!r} is not ('local', i) or ('global', j)")
        return super().layer_index(layer)

    # -- inputs ------------------------------------------------------------------------
    def _split(self, pixels: Any) -> tuple[Any, Any, Any]:
        if isinstance(pixels, np.ndarray) and pixels.dtype.names is not None:
            missing = [f for f in FIELDS if f not in pixels.dtype.names]
            if missing:
                raise InputError(f"the structured input has no field(s) {missing}; expected {list(FIELDS)}")
            if pixels.ndim != 1:
                raise InputError(f"a structured Mllama batch must have shape [B], got {pixels.shape}")
            return tuple(pixels[f] for f in FIELDS)
        if isinstance(pixels, Mapping):
            missing = [f for f in FIELDS if f not in pixels]
            if missing:
                raise InputError(f"Mllama inputs lack {missing}; expected keys {list(FIELDS)}")
            return tuple(pixels[f] for f in FIELDS)
        if isinstance(pixels, (tuple, list)) and len(pixels) == 3:
            return tuple(pixels)
        raise InputError(
            "Mllama inputs must be a structured batch from sauce_jax.preprocess / mllama_inputs, a mapping or a "
            f"tuple of (pixel_values, aspect_ratio_ids, aspect_ratio_mask); got {type(pixels).__name__}"
        )

    def check_pixels(self, pixels: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Validate Mllama inputs; return (pixel_values [B, N, H, W, C], ids [B], mask [B, N]) as
        arrays with N = max_num_tiles (missing tiles zero-padded and masked)."""
        c = self.model_config
        values, ids, mask = self._split(pixels)
        shape, dtype = getattr(values, "shape", None), getattr(values, "dtype", None)
        if shape is None or dtype is None:
            raise InputError(f"pixel_values must be an array [B, N, H, W, C], got {type(values).__name__}")
        tile = (c.image_size, c.image_size, c.num_channels)
        if len(shape) != 5:
            raise InputError(f"pixel_values must have rank 5 [B, tiles, H, W, C], got shape {tuple(shape)}")
        b, n = int(shape[0]), int(shape[1])
        if tuple(shape[2:]) != tile:
            if shape[2] == c.num_channels and tuple(shape[3:]) == tile[:2]:
                raise InputError(f"pixel_values of shape {tuple(shape)} look NCHW; sauce-jax takes NHWC "
                                 f"{('B', 'tiles') + tile}")
            raise InputError(f"pixel_values tiles are {tuple(shape[2:])}, the encoder takes {tile} "
                             "(use sauce_jax.preprocess)")
        if b == 0 or n == 0:
            raise InputError(f"pixel_values of shape {tuple(shape)} hold no image or no tile")
        if n > c.max_num_tiles:
            raise InputError(f"pixel_values hold {n} tiles per image, the encoder takes at most "
                             f"max_num_tiles={c.max_num_tiles}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise InputError(f"pixel_values must be floating point (preprocessed), got dtype {dtype}")
        if isinstance(values, np.ndarray) and not np.isfinite(values).all():
            raise InputError("pixel_values contain NaN or infinite values")
        ids, mask = np.asarray(ids), np.asarray(mask)
        if ids.shape != (b,):
            raise InputError(f"aspect_ratio_ids must have shape ({b},) for {b} images, got {ids.shape}")
        if mask.shape != (b, n):
            raise InputError(f"aspect_ratio_mask must have shape ({b}, {n}) for {n} tiles, got {mask.shape}")
        if mask.dtype == np.bool_:
            mask = mask.astype(np.int32)
        if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(mask.dtype, np.integer)):
            raise InputError(f"aspect_ratio_ids / aspect_ratio_mask must be integers, got {ids.dtype} / {mask.dtype}")
        if not np.isin(mask, (0, 1)).all():
            raise InputError(f"aspect_ratio_mask must hold 0 and 1 only, got values {np.unique(mask).tolist()}")
        for row, (k, m) in enumerate(zip(ids.tolist(), mask)):
            if not 0 <= k <= c.max_aspect_ratio_id:
                raise InputError(f"image {row}: aspect_ratio_id {k} is outside [0, {c.max_aspect_ratio_id}] "
                                 f"(0 = no image, k = supported_aspect_ratios[k - 1])")
            if k == 0:
                if m[1:].any():
                    raise InputError(f"image {row}: aspect_ratio_id 0 (no image) but aspect_ratio_mask {m.tolist()} "
                                     "marks tiles past the first")
                continue
            ratio = c.supported_aspect_ratios[k - 1]
            tiles = ratio[0] * ratio[1]
            if tiles > n:
                raise InputError(f"image {row}: aspect_ratio_id {k} ({ratio[0]}x{ratio[1]}) means {tiles} tiles, "
                                 f"pixel_values hold {n}")
            if m.tolist() != [1] * tiles + [0] * (n - tiles):
                raise InputError(f"image {row}: aspect_ratio_mask {m.tolist()} does not match aspect_ratio_id {k} "
                                 f"({ratio[0]}x{ratio[1]} = {tiles} tiles)")
        values = jnp.asarray(values)
        if n < c.max_num_tiles:  # transformers needs all max_num_tiles; the missing ones are masked padding
            values = jnp.pad(values, ((0, 0), (0, c.max_num_tiles - n), (0, 0), (0, 0), (0, 0)))
            mask = np.pad(mask, ((0, 0), (0, c.max_num_tiles - n)))
        return values, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)

    # -- forward -----------------------------------------------------------------------
    def _forward(self, pixels, keep, hooks, head):
        values, ids, mask = self.check_pixels(pixels)
        merged = dict(self.hooks)
        for index, hook in self._normalize_hooks(hooks or {}).items():
            if index in merged:
                raise ConfigError(f"hidden state {index} already has a hook on this encoder")
            merged[index] = hook
        order = sorted(merged)
        precision = "highest" if self.config.dtype == "float32" else "default"
        kept, last = _run(self.graphdef, self.state, values, ids, mask, tuple(merged[i].args for i in order),
                          keep=tuple(sorted(set(keep))), hook_fns=tuple((i, merged[i].fn) for i in order),
                          head=head, precision=precision)
        return kept, None, None, last

    def __call__(self, pixels: Any, *, hooks: Mapping[Any, Any] | None = None) -> EncoderOutput:
        """The whole tower: last_hidden_state as transformers' `MllamaVisionModel` returns it
        (media folded into B: [B, N, P + 1, D * (1 + K)]), every hidden state, no pooler."""
        kept, _, _, last = self._forward(pixels, range(self.config.num_layers + 1), hooks, head=True)
        return EncoderOutput(last, None, None, kept)


def build(model: mllama.MllamaVisionModel, *, checkpoint_type: str, dtype: str, source: str,
          preprocess_config: MllamaPreprocessConfig | None) -> MllamaEncoder:
    """Wrap a converted `MllamaVisionModel`; the default preprocessing matches its tile size."""
    cfg = model.config
    config = EncoderConfig(
        model_type=mllama.MODEL_TYPE,
        checkpoint_type=checkpoint_type,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.num_channels,
        num_tokens=cfg.num_tokens,
        dtype=dtype,
        projection_dim=None,
        feature_layer=-2,
        source=source,
    )
    if preprocess_config is None:
        preprocess_config = MllamaPreprocessConfig(**mllama.preprocess_defaults(cfg))
    return MllamaEncoder(model, config, preprocess_config)
