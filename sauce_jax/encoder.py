"""`VisionEncoder`: a ported vision tower with transformers' hidden-state contract and hooks.

Hidden-state index i follows transformers: 0 is the embedding output (after CLIP's
pre-layernorm), i is the output of block i-1; negative indices count from the end. A hook at
index i is a pure function `(hidden, args) -> hidden` that rewrites hidden state i before
block i reads it; its `args` are traced, so new SAE arrays or feature ids of the same shapes
reuse the compiled function. The forward stops at the deepest index it must return, so
LLaVA's layer -2 never runs the last block.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sauce_jax.ports import clip, dinov2, mllama, siglip
from sauce_jax.ports.weights import read_checkpoint_tensors, read_json, resolve_checkpoint_dir, torch_to_numpy
from sauce_jax.errors import ConfigError, InputError
from sauce_jax.image_processor import PreprocessConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# checkpoint model_types each port reads; a LLaVA checkpoint goes to the port of its vision_config
_CLIP_TYPES = ("clip_vision_model", "clip", "llava")
_SUPPORTED_TYPES = (_CLIP_TYPES + tuple(t for t in siglip.CHECKPOINT_TYPES if t not in _CLIP_TYPES)
                    + mllama.CHECKPOINT_TYPES
                    + dinov2.CHECKPOINT_TYPES)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """What a user needs to know about a loaded encoder."""

    model_type: str  # the port: transformers' model_type of the vision tower
    checkpoint_type: str  # the checkpoint's own model_type ("clip", "llava", ...)
    hidden_size: int  # D of every hidden state
    num_layers: int  # blocks; hidden_states returns num_layers + 1 arrays
    image_size: int  # the input is [B, image_size, image_size, num_channels]
    patch_size: int
    num_channels: int
    num_tokens: int  # T: class token + patches (CLIP), patches only (SigLIP), class + registers + patches (DINOv2)
    dtype: str  # parameter and compute dtype
    projection_dim: int | None  # image_embeds width, when the checkpoint has a projection
    feature_layer: int | tuple[int, ...]  # LLaVA's vision_feature_layer (-2 when the checkpoint has none)
    source: str  # where the weights came from


class Hook(NamedTuple):
    """A pure rewrite of one hidden state: `fn(hidden, args) -> hidden`, `args` traced."""

    fn: Callable[[jax.Array, Any], jax.Array]
    args: Any = None


class EncoderOutput(NamedTuple):
    last_hidden_state: jax.Array  # [B, T, D] as transformers returns it: CLIP before, SigLIP after the post-layernorm
    pooler_output: jax.Array | None  # [B, D]: CLIP post-layernorm of the class token, SigLIP head output (None without head)
    image_embeds: jax.Array | None  # [B, P] with a visual projection, else None
    hidden_states: tuple[jax.Array, ...]  # num_layers + 1 arrays [B, T, D]


@functools.partial(jax.jit, static_argnames=("graphdef", "keep", "hook_fns", "head", "precision"))
def _run(graphdef, state, pixels, hook_args, *, keep, hook_fns, head, precision):
    """The jitted forward: hidden states at `keep` (sorted indices), hooks applied on the way.

    Returns (kept hidden states, pooler_output, image_embeds, last_hidden_state); the last
    three are None unless `head`.
    """
    model = nnx.merge(graphdef, state)
    hooks = dict(zip((i for i, _ in hook_fns), zip((f for _, f in hook_fns), hook_args)))
    stop = model.num_layers if head else keep[-1]
    kept = []
    with jax.default_matmul_precision(precision):
        hidden = model.embed(pixels.astype(model.embeddings.patch_embedding.kernel.dtype))  # [B, T, D]
        for i in range(stop + 1):
            if i > 0:
                hidden = model.block(i - 1, hidden)
            if i in hooks:
                fn, args = hooks[i]
                hidden = fn(hidden, args)
            if i in keep:
                kept.append(hidden)
        if not head:
            return tuple(kept), None, None, None
        last = model.last_hidden_state(hidden)  # SigLIP post-layernorms it, CLIP does not
        pooled = model.pool(hidden)
        return tuple(kept), pooled, model.project(pooled), last


class VisionEncoder:
    """A loaded vision tower: pure params (`state`) plus the module structure (`graphdef`)."""

    def __init__(self, model: nnx.Module, config: EncoderConfig, preprocess_config: PreprocessConfig,
                 hooks: Mapping[int, Hook] | None = None):
        self.graphdef, self.state = nnx.split(model)
        self.config = config
        self.preprocess_config = preprocess_config
        self.hooks: dict[int, Hook] = self._normalize_hooks(hooks or {})

    # -- indices and hooks -------------------------------------------------------------
    def layer_index(self, layer: int) -> int:
        """A hidden-state index in [-(L+1), L] as its non-negative form."""
        n = self.config.num_layers + 1
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
            raise ConfigError(f"hidden-state index {layer!r} is out of range for {n} hidden states [-{n}, {n - 1}]")
        return int(layer) % n

    def _normalize_hooks(self, hooks: Mapping[int, Any]) -> dict[int, Hook]:
        out: dict[int, Hook] = {}
        for layer, hook in hooks.items():
            if callable(hook):
                hook = Hook(hook)
            elif isinstance(hook, tuple) and len(hook) == 2 and callable(hook[0]):
                hook = Hook(*hook)
            else:
                raise ConfigError(f"hook at index {layer!r} must be a callable or (fn, args), got {type(hook).__name__}")
            index = self.layer_index(layer)
            if index in out:
                raise ConfigError(f"two hooks target hidden state {index} (given as {layer!r})")
            out[index] = hook
        return out

    def with_hooks(self, hooks: Mapping[int, Any]) -> "VisionEncoder":
        """A copy (sharing params) that always applies `hooks` in addition to its own."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)  # params, configs, and whatever a subclass keeps
        extra = self._normalize_hooks(hooks)
        clash = set(extra) & set(self.hooks)
        if clash:
            raise ConfigError(f"hidden state(s) {sorted(clash)} already have a hook on this encoder")
        new.hooks = {**self.hooks, **extra}
        return new

    # -- forward -----------------------------------------------------------------------
    def check_pixels(self, pixels: Any) -> jax.Array:
        """Validate a batch of preprocessed images [B, H, W, C] and return it as an array."""
        c = self.config
        shape = getattr(pixels, "shape", None)
        dtype = getattr(pixels, "dtype", None)
        if shape is None or dtype is None:
            raise InputError(f"pixel values must be an array [B, H, W, C], got {type(pixels).__name__}")
        want = (c.image_size, c.image_size, c.num_channels)
        if len(shape) != 4:
            raise InputError(f"pixel values must have rank 4 [B, H, W, C], got shape {tuple(shape)}")
        if tuple(shape[1:]) != want:
            if shape[1] == c.num_channels and tuple(shape[2:]) == want[:2]:
                raise InputError(
                    f"pixel values of shape {tuple(shape)} look NCHW; sauce-jax takes NHWC {('B',) + want}"
                )
            if shape[3] != c.num_channels:
                raise InputError(f"pixel values have {shape[3]} channels, the encoder takes {c.num_channels}")
            raise InputError(
                f"pixel values are {shape[1]}x{shape[2]}, the encoder takes {c.image_size}x{c.image_size} "
                "(use sauce_jax.preprocess)"
            )
        if shape[0] == 0:
            raise InputError("pixel values hold an empty batch")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise InputError(f"pixel values must be floating point (preprocessed), got dtype {dtype}")
        if isinstance(pixels, np.ndarray) and not np.isfinite(pixels).all():
            raise InputError("pixel values contain NaN or infinite values")
        return jnp.asarray(pixels)

    def _forward(self, pixels, keep, hooks, head):
        pixels = self.check_pixels(pixels)
        merged = dict(self.hooks)
        for index, hook in self._normalize_hooks(hooks or {}).items():
            if index in merged:
                raise ConfigError(f"hidden state {index} already has a hook on this encoder")
            merged[index] = hook
        order = sorted(merged)
        precision = "highest" if self.config.dtype == "float32" else "default"
        return _run(self.graphdef, self.state, pixels, tuple(merged[i].args for i in order),
                    keep=tuple(sorted(set(keep))), hook_fns=tuple((i, merged[i].fn) for i in order),
                    head=head, precision=precision)

    def hidden_states(self, pixels: Any, *, upto: int | None = None,
                      hooks: Mapping[int, Any] | None = None) -> tuple[jax.Array, ...]:
        """Hidden states 0..upto (all num_layers + 1 by default), each [B, T, D].

        Args:
          pixels: preprocessed images [B, H, W, C] (see `sauce_jax.preprocess`).
          upto: the deepest index to compute (negative counts from the end); blocks past it
            do not run.
          hooks: {index: fn or (fn, args)}, applied on top of the encoder's own hooks.
        """
        stop = self.config.num_layers if upto is None else self.layer_index(upto)
        kept, _, _, _ = self._forward(pixels, range(stop + 1), hooks, head=False)
        return kept

    def hidden_state(self, pixels: Any, layer: int, *, hooks: Mapping[int, Any] | None = None) -> jax.Array:
        """The single hidden state at `layer`, [B, T, D], computing no block past it."""
        kept, _, _, _ = self._forward(pixels, (self.layer_index(layer),), hooks, head=False)
        return kept[0]

    def __call__(self, pixels: Any, *, hooks: Mapping[int, Any] | None = None) -> EncoderOutput:
        """The whole tower, as transformers' `CLIPVisionModel(WithProjection)` / `SiglipVisionModel` returns it."""
        kept, pooled, embeds, last = self._forward(pixels, range(self.config.num_layers + 1), hooks, head=True)
        return EncoderOutput(last, pooled, embeds, kept)


def _checkpoint_preprocess_config(directory: Path, parse=PreprocessConfig.from_hf):
    """The image processor saved beside the weights: `preprocessor_config.json`, or the
    `image_processor` entry of a transformers 5 `processor_config.json`, read by `parse`."""
    path = directory / "preprocessor_config.json"
    if path.is_file():
        return parse(read_json(path), origin=str(path))
    path = directory / "processor_config.json"
    if path.is_file():
        entry = read_json(path).get("image_processor")
        if isinstance(entry, dict):
            return parse(entry, origin=f"{path} (image_processor)")
    return None


def _input_size(cfg, preprocess_config: PreprocessConfig) -> int:
    """The square side a DINOv2 encoder takes: what its preprocessing crops to, else the config's."""
    final = preprocess_config.crop_hw or (preprocess_config.resize_hw if preprocess_config.do_resize else None)
    if final is not None and final[0] == final[1]:
        return final[0]
    return cfg.image_size


def _is_onnx_source(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike)) and (str(source).startswith("onnx:") or
                                                       str(source).lower().endswith(".onnx"))


def _load_onnx_encoder(source: str | os.PathLike, dtype: str, attention: str) -> VisionEncoder:
    """A DINOv2 encoder from an ONNX export: weights recovered by `ports.onnx_import`."""
    from sauce_jax.ports.onnx_import import load_onnx_dinov2

    path = Path(str(source).removeprefix("onnx:")).expanduser()
    model, found = load_onnx_dinov2(path, dtype=DTYPES[dtype], attention_impl=attention)
    cfg = model.config
    size = found.input_size or cfg.image_size
    config = EncoderConfig(
        model_type=dinov2.MODEL_TYPE, checkpoint_type="onnx", hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers, image_size=size, patch_size=cfg.patch_size,
        num_channels=cfg.num_channels, num_tokens=cfg.num_tokens(size), dtype=dtype, projection_dim=None,
        feature_layer=-2, source=str(path),
    )
    return VisionEncoder(model, config, PreprocessConfig.dinov2_defaults(size))


def _is_torch_model(source: Any) -> bool:
    return hasattr(source, "state_dict") and hasattr(source, "config") and hasattr(source.config, "to_dict")


def load_encoder(source: str | os.PathLike | Any, dtype: str = "float32", attention: str = "auto") -> VisionEncoder:
    """Load the vision tower of a CLIP, SigLIP, DINOv2, LLaVA or Mllama checkpoint into JAX.

    Args:
      source: a checkpoint directory written by `save_pretrained` (`config.json` with
        `model.safetensors`, sharded safetensors or `pytorch_model.bin`), a Hub id already in
        the local Hugging Face cache, or an in-memory transformers model (`CLIPVisionModel`,
        `CLIPVisionModelWithProjection`, `CLIPModel`, `SiglipVisionModel`, `SiglipModel`,
        `LlavaForConditionalGeneration` with a CLIP or SigLIP tower, `MllamaVisionModel`,
        `MllamaForConditionalGeneration`; an Mllama checkpoint gives a
        `sauce_jax.mllama_encoder.MllamaEncoder`), `Dinov2Model`,
        `Dinov2WithRegistersModel`, `Dinov2ForImageClassification`). A DINOv2 encoder takes
        the images its preprocessing makes (the saved processor's crop size, else the
        config's image_size) and resamples its position embeddings to that grid. A path
        ending in `.onnx` (or written `onnx:PATH`) is an ONNX export of a transformers DINOv2
        model, alone or under a task head; see `ports.onnx_import` (needs the onnx extra).
      dtype: "float32" (default) or "bfloat16", for parameters and compute.
      attention: "auto" (cuDNN-eligible `jax.nn.dot_product_attention` on GPU, the einsum
        path elsewhere), or force "einsum", "xla" or "cudnn".
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}")
    preprocess_config, directory = None, None
    if not _is_torch_model(source) and _is_onnx_source(source):
        return _load_onnx_encoder(source, dtype, attention)
    if _is_torch_model(source):
        hf_config = source.config.to_dict()
        tensors = {name: torch_to_numpy(t) for name, t in source.state_dict().items()}
        origin = f"in-memory {type(source).__name__}"
    else:
        directory = resolve_checkpoint_dir(source)
        origin = str(directory)
        hf_config = read_json(directory / "config.json")
        tensors, _ = read_checkpoint_tensors(directory)
    model_type = hf_config.get("model_type")
    if model_type not in _SUPPORTED_TYPES:
        raise ConfigError(
            f"{origin}: config model_type {model_type!r} is not a supported vision encoder; "
            f"supported: {list(_SUPPORTED_TYPES)}"
        )
    if mllama.is_mllama_checkpoint(hf_config):
        from sauce_jax import mllama_encoder
        from sauce_jax.mllama_processor import MllamaPreprocessConfig

        model, _, _ = mllama.load(model_type, hf_config, tensors, dtype=DTYPES[dtype], attention_impl=attention,
                                  origin=origin)
        if directory is not None:
            preprocess_config = _checkpoint_preprocess_config(directory, MllamaPreprocessConfig.from_hf)
        return mllama_encoder.build(model, checkpoint_type=model_type, dtype=dtype, source=origin,
                                    preprocess_config=preprocess_config)
    if directory is not None:
        preprocess_config = _checkpoint_preprocess_config(directory)
    if model_type in dinov2.CHECKPOINT_TYPES:
        port = dinov2
    else:
        port = siglip if siglip.is_siglip_checkpoint(hf_config) else clip
    model, _, _ = port.load(model_type, hf_config, tensors, dtype=DTYPES[dtype], attention_impl=attention,
                            origin=origin)
    cfg = model.config
    if port is dinov2 and preprocess_config is None:
        preprocess_config = PreprocessConfig.dinov2_defaults(cfg.image_size)
    input_size = _input_size(cfg, preprocess_config) if port is dinov2 else cfg.image_size
    feature_layer = hf_config.get("vision_feature_layer", -2)
    config = EncoderConfig(
        model_type=port.MODEL_TYPE,
        checkpoint_type=model_type,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        image_size=input_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.num_channels,
        num_tokens=cfg.num_tokens(input_size) if port is dinov2 else cfg.num_positions,
        dtype=dtype,
        projection_dim=getattr(cfg, "projection_dim", None),
        feature_layer=tuple(feature_layer) if isinstance(feature_layer, list) else feature_layer,
        source=origin,
    )
    if preprocess_config is None:
        preprocess_config = (PreprocessConfig.siglip_defaults(cfg.image_size) if port is siglip
                             else PreprocessConfig.for_image_size(cfg.image_size))
    return VisionEncoder(model, config, preprocess_config)
