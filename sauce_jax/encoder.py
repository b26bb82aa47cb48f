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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.image_processor import PreprocessConfig


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


def _blocks_from(model, hidden, hook_fns, hook_args, start: int, stop: int):
    """Hidden state `stop` from hidden state `start` (before its hook): the hooks at start..stop
    and the blocks between."""
    hooks = dict(zip((i for i, _ in hook_fns), zip((f for _, f in hook_fns), hook_args)))
    for i in range(start, stop + 1):
        if i > start:
            hidden = model.block(i - 1, hidden)
        if i in hooks:
            fn, args = hooks[i]
            hidden = fn(hidden, args)
    return hidden


@functools.partial(jax.jit, static_argnames=("graphdef", "start", "hook_fns", "precision"))
def _run_from(graphdef, state, hidden, hook_args, *, start, hook_fns, precision):
    """The jitted rest of the forward from hidden state `start` (before its hook): the hooks at
    `start` and later, the blocks after it, and the pooled output [B, D]."""
    model = nnx.merge(graphdef, state)
    with jax.default_matmul_precision(precision):
        return model.pool(_blocks_from(model, hidden, hook_fns, hook_args, start, model.num_layers))


@functools.partial(jax.jit, static_argnames=("graphdef", "start", "stop", "hook_fns", "precision"))
def _state_from(graphdef, state, hidden, hook_args, *, start, stop, hook_fns, precision):
    """The jitted hidden state `stop` [B, T, D] from hidden state `start` (before its hook)."""
    model = nnx.merge(graphdef, state)
    with jax.default_matmul_precision(precision):
        return _blocks_from(model, hidden, hook_fns, hook_args, start, stop)


def pad_batch(pixels: Any, size: int) -> np.ndarray:
    """Zero-pad a batch of preprocessed images [b, ...] to [size, ...], so the jitted tower sees
    one batch shape and compiles once; the caller keeps the first b rows of what it returns.

    Works on any numpy batch, Mllama's structured records included; a batch of `size` rows or
    more is returned unchanged.
    """
    pixels = np.asarray(pixels)
    if len(pixels) >= size:
        return pixels
    return np.concatenate([pixels, np.zeros((size - len(pixels),) + pixels.shape[1:], pixels.dtype)])


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

    def hidden_states_at(self, pixels: Any, layers: Sequence[Any], *,
                         hooks: Mapping[int, Any] | None = None) -> tuple[jax.Array, ...]:
        """The hidden states at several `layers` from one forward pass, in the order asked, each
        [B, T, D]; no block past the deepest runs (SAE training on several layers at once)."""
        indices = [self.layer_index(layer) for layer in layers]
        if not indices:
            raise ConfigError("hidden_states_at needs at least one layer")
        kept, _, _, _ = self._forward(pixels, indices, hooks, head=False)
        by_index = dict(zip(sorted(set(indices)), kept))
        return tuple(by_index[i] for i in indices)

    def pooled_from(self, hidden: Any, layer: int, *, hooks: Mapping[int, Any] | None = None) -> jax.Array:
        """`pooler_output` [B, D] from hidden state `layer` [B, T, D] as `hidden_state` returns it
        (before any hook at `layer`): the same value as the whole tower on the images, running
        only the blocks after `layer`, so edits at a cached layer cost a block, not the tower."""
        start, hidden, merged, precision = self._resume(hidden, layer, hooks)
        order = sorted(merged)
        return _run_from(self.graphdef, self.state, hidden, tuple(merged[i].args for i in order), start=start,
                         hook_fns=tuple((i, merged[i].fn) for i in order), precision=precision)

    def hidden_state_from(self, hidden: Any, layer: int, upto: int, *,
                          hooks: Mapping[int, Any] | None = None) -> jax.Array:
        """Hidden state `upto` [B, T, D] from hidden state `layer` [B, T, D] as `hidden_state`
        returns it (before any hook at `layer`): the same value as `hidden_state(pixels, upto)`,
        running only the hooks at layer..upto and the blocks between, so an evaluation that
        caches the clean tower's state pays for an edit, not the tower."""
        start, hidden, merged, precision = self._resume(hidden, layer, hooks)
        stop = self.layer_index(upto)
        if stop < start:
            raise ConfigError(f"hidden state {stop} lies before layer {start}, where the forward resumes")
        order = [i for i in sorted(merged) if i <= stop]  # later hooks cannot change state `stop`
        return _state_from(self.graphdef, self.state, hidden, tuple(merged[i].args for i in order), start=start,
                           stop=stop, hook_fns=tuple((i, merged[i].fn) for i in order), precision=precision)

    def _resume(self, hidden: Any, layer: int, hooks: Mapping[int, Any] | None):
        """(start index, hidden [B, T, D] checked, every hook, matmul precision) of a forward
        resumed at hidden state `layer`."""
        start = self.layer_index(layer)
        merged = dict(self.hooks)
        for index, hook in self._normalize_hooks(hooks or {}).items():
            if index in merged:
                raise ConfigError(f"hidden state {index} already has a hook on this encoder")
            merged[index] = hook
        early = sorted(i for i in merged if i < start)
        if early:
            raise ConfigError(f"hooks at hidden state(s) {early} lie before layer {start}, where the forward resumes")
        hidden = jnp.asarray(hidden)
        want = (self.config.num_tokens, self.config.hidden_size)
        if hidden.ndim != 3 or tuple(hidden.shape[1:]) != want:
            raise InputError(f"hidden states must be [B, {want[0]}, {want[1]}], got shape {tuple(hidden.shape)}")
        return start, hidden, merged, "highest" if self.config.dtype == "float32" else "default"

    def __call__(self, pixels: Any, *, hooks: Mapping[int, Any] | None = None) -> EncoderOutput:
        """The whole tower, as transformers' `CLIPVisionModel(WithProjection)` / `SiglipVisionModel` returns it."""
        kept, pooled, embeds, last = self._forward(pixels, range(self.config.num_layers + 1), hooks, head=True)
        return EncoderOutput(last, pooled, embeds, kept)
