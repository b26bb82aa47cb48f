"""The Mllama (Llama 3.2 Vision) vision tower (transformers' `MllamaVisionModel`) in Flax NNX.

Attribute names mirror transformers, so the conversion table at the bottom is a list of
renames. An image enters as `max_num_tiles` tiles, NHWC: pixel_values [B, N, H, W, C] with
`aspect_ratio_ids` [B] (1-based index into `supported_aspect_ratios`, 0 = no image) and
`aspect_ratio_mask` [B, N] (1 for the image's tiles). The forward, as transformers runs it:

  patches + pre-tile aspect-ratio embedding, class token, gated position and tile-position
  embeddings, layernorm_pre, every tile padded with zero tokens to a multiple of 8 tokens
  -> the local transformer over all tiles at once [B, N * Tp, D] (num_hidden_layers blocks)
  -> layernorm_post + post-tile aspect-ratio embedding
  -> the gated global transformer (num_global_layers blocks, tanh gates on attn and MLP)
  -> last_hidden_state [B, N, P + 1, D * (1 + K)]: the global output, padding dropped,
     concatenated with the local outputs at `intermediate_layers_indices` (K of them).

The residual stream is one sequence of num_hidden_layers + num_global_layers blocks, and the
runner's hidden-state index follows it: 0 = embeddings (after layernorm_pre and the padding),
i <= L = output of local block i-1, L + j = output of global block j-1. Block L (the first
global block) reads layernorm_post(local output) + the post-tile embedding. In transformers 5
`intermediate_layers_indices` entry k is the output of local block k (hidden-state index k + 1).

Attention masking is transformers' own: the additive mask is outer(pad, pad) * finfo.min, so
only padding queries are kept off padding keys; real tokens attend to every token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from einops.array_api import rearrange  # array-API form: no backend lookup through sys.modules
import jax
import jax.numpy as jnp
from flax import nnx

from sauce_jax.ports.attention import check_implementation, heads_first, merge_heads, split_heads, tokens_first
from sauce_jax.ports.conversion import CONV2D, LINEAR, Rule, build_module, with_prefix
from sauce_jax.ports.vit import ACTIVATIONS, PatchEmbedding, check_config, dense
from sauce_jax.ports.family import EncoderFamily, vision_prefix
from sauce_jax.errors import ConfigError

MODEL_TYPE = "mllama_vision_model"
# The checkpoint model_types whose vision tower this port reads.
CHECKPOINT_TYPES = (MODEL_TYPE, "mllama")

_DEFAULT_RATIOS = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))
# transformers' MllamaVisionConfig defaults (Llama-3.2-11B-Vision's tower).
_HF_DEFAULTS = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_global_layers=8,
    attention_heads=16,
    num_channels=3,
    image_size=448,
    patch_size=14,
    hidden_act="gelu",
    norm_eps=1e-5,
    max_num_tiles=4,
    intermediate_layers_indices=(3, 7, 15, 23, 30),
    supported_aspect_ratios=_DEFAULT_RATIOS,
)
TORCH_LAYER_NORM_EPS = 1e-5  # layernorm_pre / layernorm_post are nn.LayerNorm with its default eps


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclasses.dataclass(frozen=True)
class MllamaVisionConfig:
    """Shape of an Mllama vision tower, built from transformers' `MllamaVisionConfig` fields."""

    hidden_size: int = 1280  # D, the residual width
    intermediate_size: int = 5120  # MLP width
    num_hidden_layers: int = 32  # local transformer blocks (L)
    num_global_layers: int = 8  # gated global transformer blocks (G)
    attention_heads: int = 16  # heads; D must divide evenly
    num_channels: int = 3
    image_size: int = 448  # square tile side in pixels
    patch_size: int = 14
    hidden_act: str = "gelu"  # a key of sauce_jax.ports.vit.ACTIVATIONS
    norm_eps: float = 1e-5  # the blocks' layernorms (layernorm_pre/post use torch's 1e-5)
    max_num_tiles: int = 4  # N: tiles per image, padded tiles included
    intermediate_layers_indices: tuple[int, ...] = (3, 7, 15, 23, 30)  # local blocks whose outputs are concatenated
    supported_aspect_ratios: tuple[tuple[int, int], ...] = _DEFAULT_RATIOS  # aspect_ratio_id k -> ratios[k - 1]

    def __post_init__(self):
        check_config(self, "Mllama")
        if not isinstance(self.num_global_layers, int) or isinstance(self.num_global_layers, bool) \
                or self.num_global_layers < 0:
            raise ConfigError(f"Mllama config 'num_global_layers' must be a non-negative integer, "
                              f"got {self.num_global_layers!r}")
        if not _positive_int(self.max_num_tiles):
            raise ConfigError(f"Mllama config 'max_num_tiles' must be a positive integer, got {self.max_num_tiles!r}")
        for k in self.intermediate_layers_indices:
            if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < self.num_hidden_layers:
                raise ConfigError(f"Mllama config 'intermediate_layers_indices' entry {k!r} is not a local block "
                                  f"in [0, {self.num_hidden_layers})")
        if not self.supported_aspect_ratios:
            raise ConfigError("Mllama config 'supported_aspect_ratios' is empty")
        for ratio in self.supported_aspect_ratios:
            if len(ratio) != 2 or not all(_positive_int(r) for r in ratio) or ratio[0] * ratio[1] > self.max_num_tiles:
                raise ConfigError(f"Mllama config 'supported_aspect_ratios' entry {list(ratio)!r} is not a pair of "
                                  f"positive tile counts with at most max_num_tiles={self.max_num_tiles} tiles")

    # the names sauce_jax.ports.vit.check_config reads
    @property
    def num_attention_heads(self) -> int:
        return self.attention_heads

    @property
    def layer_norm_eps(self) -> float:
        return self.norm_eps

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Tokens per tile: the class token + the patches (P + 1)."""
        return self.grid**2 + 1

    @property
    def padded_patches(self) -> int:
        """Tokens per tile after transformers pads to a multiple of 8 (Tp)."""
        return self.num_patches + (8 - self.num_patches % 8) % 8

    @property
    def num_tokens(self) -> int:
        """Tokens of one image's residual stream: N * Tp."""
        return self.max_num_tiles * self.padded_patches

    @property
    def max_aspect_ratio_id(self) -> int:
        return len(self.supported_aspect_ratios)

    @property
    def num_layers(self) -> int:
        """Blocks of the residual stream: local then global."""
        return self.num_hidden_layers + self.num_global_layers

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "MllamaVisionConfig":
        """Build from a transformers `MllamaVisionConfig` dict (missing fields take its defaults)."""
        model_type = hf.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"vision config has model_type={model_type!r}, the Mllama port reads {MODEL_TYPE!r}")
        fields = {k: hf.get(k, v) for k, v in _HF_DEFAULTS.items()}
        if "num_attention_heads" in hf and "attention_heads" not in hf:  # transformers' attribute_map alias
            fields["attention_heads"] = hf["num_attention_heads"]
        for name in ("image_size", "patch_size"):  # transformers also allows [h, w]; only squares are ported
            value = fields[name]
            if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
                fields[name] = value[0]
        for name in ("intermediate_layers_indices", "supported_aspect_ratios"):
            if fields[name] is None:
                fields[name] = _HF_DEFAULTS[name]
        try:
            fields["intermediate_layers_indices"] = tuple(fields["intermediate_layers_indices"])
            fields["supported_aspect_ratios"] = tuple(tuple(r) for r in fields["supported_aspect_ratios"])
        except TypeError as exc:
            raise ConfigError(f"Mllama config 'intermediate_layers_indices' / 'supported_aspect_ratios' must be "
                              f"lists: {exc}") from exc
        return cls(**fields)


def _layer_norm(size: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch computes it (see sauce_jax.ports.vit.layer_norm).
    return nnx.LayerNorm(size, epsilon=eps, use_fast_variance=False, dtype=dtype, param_dtype=dtype, rngs=rngs)


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, pad: jax.Array, *, implementation: str) -> jax.Array:
    """Softmax attention with Mllama's mask: a padding query ignores padding keys.

    q, k, v: [B, T, N, H]; pad: bool [B, T] (True = padding token). Returns [B, T, N, H].
    """
    if implementation == "auto":
        implementation = "dot_product" if jax.default_backend() == "gpu" else "einsum"
    if implementation != "einsum":
        allowed = ~(pad[:, :, None] & pad[:, None, :])  # [B, T, S]
        return jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None],
                                            implementation=None if implementation == "dot_product" else implementation)
    scale = q.shape[-1] ** -0.5
    q, k, v = (heads_first(x) for x in (q, k, v))  # [B, N, T, H]
    scores = jnp.einsum("bnth,bnsh->bnts", q * jnp.asarray(scale, q.dtype), k,
                        preferred_element_type=jnp.float32)  # [B, N, T, S]
    # transformers adds finfo.min (not -inf): a query with every key masked attends uniformly.
    # (score + finfo.min rounds to finfo.min in float32, so a select gives the same numbers.)
    scores = jnp.where((pad[:, :, None] & pad[:, None, :])[:, None], jnp.finfo(jnp.float32).min, scores)
    weights = jnp.exp(scores - scores.max(axis=-1, keepdims=True))
    out = jnp.einsum("bnts,bnsh->bnth", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out / weights.sum(axis=-1, keepdims=True)
    return tokens_first(out.astype(v.dtype))  # [B, T, N, H]


class MllamaVisionAttention(nnx.Module):
    def __init__(self, cfg: MllamaVisionConfig, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.attention_heads
        self.implementation = attention_impl
        self.q_proj = dense(d, d, bias=False, dtype=dtype, rngs=rngs)
        self.k_proj = dense(d, d, bias=False, dtype=dtype, rngs=rngs)
        self.v_proj = dense(d, d, bias=False, dtype=dtype, rngs=rngs)
        self.o_proj = dense(d, d, bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, pad: jax.Array) -> jax.Array:
        # x [B, T, D]
        kernel = jnp.concatenate([self.q_proj.kernel[...], self.k_proj.kernel[...], self.v_proj.kernel[...]], axis=1)
        qkv = x @ kernel.astype(x.dtype)  # [B, T, 3D]
        q, k, v = (split_heads(y, self.num_heads) for y in jnp.split(qkv, 3, axis=-1))  # [B, T, N, H] each
        out = masked_attention(q, k, v, pad, implementation=self.implementation)  # [B, T, N, H]
        return self.o_proj(merge_heads(out))


class MllamaVisionMLP(nnx.Module):
    def __init__(self, cfg: MllamaVisionConfig, *, dtype, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = dense(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, rngs=rngs)
        self.fc2 = dense(cfg.intermediate_size, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class MllamaVisionEncoderLayer(nnx.Module):
    """A pre-LN block; the global ones scale attn and MLP by tanh(gate_attn) / tanh(gate_ffn)."""

    def __init__(self, cfg: MllamaVisionConfig, *, is_gated: bool, dtype, attention_impl: str, rngs: nnx.Rngs):
        self.input_layernorm = _layer_norm(cfg.hidden_size, cfg.norm_eps, dtype, rngs)
        self.self_attn = MllamaVisionAttention(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.post_attention_layernorm = _layer_norm(cfg.hidden_size, cfg.norm_eps, dtype, rngs)
        self.mlp = MllamaVisionMLP(cfg, dtype=dtype, rngs=rngs)
        self.gate_attn = nnx.Param(jnp.full((1,), math.pi / 4, dtype)) if is_gated else None
        self.gate_ffn = nnx.Param(jnp.full((1,), math.pi / 4, dtype)) if is_gated else None

    def __call__(self, x: jax.Array, pad: jax.Array) -> jax.Array:
        h = self.self_attn(self.input_layernorm(x), pad)
        if self.gate_attn is not None:
            h = jnp.tanh(self.gate_attn[...]).astype(h.dtype) * h
        x = x + h
        h = self.mlp(self.post_attention_layernorm(x))
        if self.gate_ffn is not None:
            h = jnp.tanh(self.gate_ffn[...]).astype(h.dtype) * h
        return x + h


class MllamaVisionEncoder(nnx.Module):
    def __init__(self, cfg: MllamaVisionConfig, num_layers: int, *, is_gated: bool, dtype, attention_impl: str,
                 rngs: nnx.Rngs):
        self.layers = nnx.List([MllamaVisionEncoderLayer(cfg, is_gated=is_gated, dtype=dtype,
                                                         attention_impl=attention_impl, rngs=rngs)
                                for _ in range(num_layers)])


class MllamaPrecomputedAspectRatioEmbedding(nnx.Module):
    """One [N, D] embedding per aspect-ratio id, scaled by tanh(gate), added to every token of a tile."""

    def __init__(self, cfg: MllamaVisionConfig, *, dtype, rngs: nnx.Rngs):
        self.max_num_tiles, self.hidden_size = cfg.max_num_tiles, cfg.hidden_size
        self.embedding = nnx.Embed(cfg.max_aspect_ratio_id + 1, cfg.max_num_tiles * cfg.hidden_size, dtype=dtype,
                                   param_dtype=dtype, rngs=rngs)
        self.gate = nnx.Param(jnp.zeros((1,), dtype))

    def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        b = x.shape[0]  # x [B, N, T, D], ids [B]
        emb = self.embedding(aspect_ratio_ids).reshape(b, self.max_num_tiles, 1, self.hidden_size)
        return x + (emb * jnp.tanh(self.gate[...])).astype(x.dtype)


class MllamaPrecomputedPositionEmbedding(nnx.Module):
    """(1 - tanh(gate)) * position embedding + tanh(gate) * per-aspect-ratio tile-position embedding."""

    def __init__(self, cfg: MllamaVisionConfig, *, dtype, rngs: nnx.Rngs):
        self.max_num_tiles, self.num_patches, self.hidden_size = cfg.max_num_tiles, cfg.num_patches, cfg.hidden_size
        self.gate = nnx.Param(jnp.zeros((1,), dtype))
        self.embedding = nnx.Param(jax.random.normal(rngs.params(), (cfg.num_patches, cfg.hidden_size), dtype))
        self.tile_embedding = nnx.Embed(cfg.max_aspect_ratio_id + 1,
                                        cfg.max_num_tiles * cfg.num_patches * cfg.hidden_size,
                                        dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        b = x.shape[0]  # x [B, N, P + 1, D], ids [B]
        gate = jnp.tanh(self.gate[...])
        x = x + ((1 - gate) * self.embedding[...]).astype(x.dtype)[None, None]
        tiles = self.tile_embedding(aspect_ratio_ids).reshape(b, self.max_num_tiles, self.num_patches, self.hidden_size)
        return x + (gate * tiles).astype(x.dtype)


class MllamaVisionModel(nnx.Module):
    """Mllama's two-stage vision tower; see the module docstring for the indexing."""

    def __init__(self, cfg: MllamaVisionConfig, *, dtype=jnp.float32, attention_impl: str = "auto",
                 rngs: nnx.Rngs):
        attention_impl = check_implementation(attention_impl)
        self.config = cfg
        self.patch_embedding = PatchEmbedding(cfg.patch_size, cfg.num_channels, cfg.hidden_size, bias=False,
                                              dtype=dtype, rngs=rngs)
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (cfg.hidden_size,), dtype))
        self.gated_positional_embedding = MllamaPrecomputedPositionEmbedding(cfg, dtype=dtype, rngs=rngs)
        self.pre_tile_positional_embedding = MllamaPrecomputedAspectRatioEmbedding(cfg, dtype=dtype, rngs=rngs)
        self.post_tile_positional_embedding = MllamaPrecomputedAspectRatioEmbedding(cfg, dtype=dtype, rngs=rngs)
        self.layernorm_pre = _layer_norm(cfg.hidden_size, TORCH_LAYER_NORM_EPS, dtype, rngs)
        self.layernorm_post = _layer_norm(cfg.hidden_size, TORCH_LAYER_NORM_EPS, dtype, rngs)
        self.transformer = MllamaVisionEncoder(cfg, cfg.num_hidden_layers, is_gated=False, dtype=dtype,
                                               attention_impl=attention_impl, rngs=rngs)
        self.global_transformer = MllamaVisionEncoder(cfg, cfg.num_global_layers, is_gated=True, dtype=dtype,
                                                      attention_impl=attention_impl, rngs=rngs)

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    def padding(self, aspect_ratio_mask: jax.Array) -> jax.Array:
        """bool [B, N * Tp]: True for the tokens of masked tiles and the per-tile pad tokens."""
        c = self.config
        real_token = jnp.arange(c.padded_patches) < c.num_patches  # [Tp]
        real = (aspect_ratio_mask[:, :, None] != 0) & real_token[None, None]  # [B, N, Tp]
        return ~real.reshape(aspect_ratio_mask.shape[0], -1)

    def embed(self, pixel_values: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        """Hidden state 0. pixel_values [B, N, H, W, C], ids [B] -> [B, N * Tp, D]."""
        c = self.config
        b, n = pixel_values.shape[:2]
        # every tile through the patch embedding as one image
        patches = self.patch_embedding(rearrange(pixel_values, "b n h w c -> (b n) h w c"))  # [B*N, P, D]
        x = rearrange(patches, "(b n) p d -> b n p d", b=b)  # [B, N, P, D]
        x = self.pre_tile_positional_embedding(x, aspect_ratio_ids)
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, n, 1, c.hidden_size))
        x = jnp.concatenate([cls, x], axis=2)  # [B, N, P + 1, D]
        x = self.layernorm_pre(self.gated_positional_embedding(x, aspect_ratio_ids))
        x = jnp.pad(x, ((0, 0), (0, 0), (0, c.padded_patches - c.num_patches), (0, 0)))  # [B, N, Tp, D]
        return rearrange(x, "b n t d -> b (n t) d")  # the tiles side by side

    def global_input(self, local_last: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        """The global transformer's input: layernorm_post + post-tile embedding. [B, N*Tp, D] -> same."""
        c = self.config
        x = rearrange(self.layernorm_post(local_last), "b (n t) d -> b n t d", n=c.max_num_tiles)
        x = self.post_tile_positional_embedding(x, aspect_ratio_ids)  # [B, N, Tp, D]
        return rearrange(x, "b n t d -> b (n t) d")

    def block(self, i: int, hidden: jax.Array, pad: jax.Array, aspect_ratio_ids: jax.Array) -> jax.Array:
        """Hidden state i+1 from hidden state i (local blocks first, then global ones)."""
        n_local = self.config.num_hidden_layers
        if i < n_local:
            return self.transformer.layers[i](hidden, pad)
        if i == n_local:
            hidden = self.global_input(hidden, aspect_ratio_ids)
        return self.global_transformer.layers[i - n_local](hidden, pad)

    def unpad(self, hidden: jax.Array) -> jax.Array:
        """[B, N * Tp, ...] -> [B, N, P + 1, ...]: the per-tile pad tokens dropped."""
        c = self.config
        x = rearrange(hidden, "b (n t) ... -> b n t ...", n=c.max_num_tiles)  # [B, N, Tp, ...]
        return x[:, :, : c.num_patches]

    def intermediate_indices(self) -> tuple[int, ...]:
        """Hidden-state indices of the local outputs concatenated into last_hidden_state."""
        return tuple(k + 1 for k in self.config.intermediate_layers_indices)

    def last_hidden_state(self, last: jax.Array, intermediate: tuple[jax.Array, ...]) -> jax.Array:
        """transformers' `last_hidden_state` [B, N, P + 1, D * (1 + K)] from the last hidden state and
        the hidden states at `intermediate_indices()`."""
        b = last.shape[0]
        parts = [self.unpad(last)]
        if intermediate:
            # torch.stack(dim=-1) then a reshape: channel d of layer k lands at d * K + k.
            stacked = jnp.stack(intermediate, axis=-1).reshape(b, last.shape[1], -1)  # [B, N*Tp, D*K]
            parts.append(self.unpad(stacked))
        return jnp.concatenate(parts, axis=-1)


# transformers name (relative to the vision model) -> our parameter path.
RULES = (
    Rule("patch_embedding.weight", "patch_embedding.kernel", CONV2D),
    Rule("class_embedding", "class_embedding"),
    Rule("gated_positional_embedding.gate", "gated_positional_embedding.gate"),
    Rule("gated_positional_embedding.embedding", "gated_positional_embedding.embedding"),
    Rule("gated_positional_embedding.tile_embedding.weight", "gated_positional_embedding.tile_embedding.embedding"),
    Rule("{when}_tile_positional_embedding.embedding.weight", "{when}_tile_positional_embedding.embedding.embedding"),
    Rule("{when}_tile_positional_embedding.gate", "{when}_tile_positional_embedding.gate"),  # pre / post
    Rule("layernorm_{when}.weight", "layernorm_{when}.scale"),
    Rule("layernorm_{when}.bias", "layernorm_{when}.bias"),
    Rule("{enc}.layers.{i}.{ln}.weight", "{enc}.layers.{i}.{ln}.scale"),  # input_ / post_attention_layernorm
    Rule("{enc}.layers.{i}.{ln}.bias", "{enc}.layers.{i}.{ln}.bias"),
    Rule("{enc}.layers.{i}.self_attn.{proj}.weight", "{enc}.layers.{i}.self_attn.{proj}.kernel", LINEAR),
    Rule("{enc}.layers.{i}.mlp.{fc}.weight", "{enc}.layers.{i}.mlp.{fc}.kernel", LINEAR),
    Rule("{enc}.layers.{i}.mlp.{fc}.bias", "{enc}.layers.{i}.mlp.{fc}.bias"),
    Rule("global_transformer.layers.{i}.gate_{part}", "global_transformer.layers.{i}.gate_{part}"),  # attn / ffn
)

# Where the vision model sits: MllamaVisionModel "" (4.x and 5.x); MllamaForConditionalGeneration
# 4.x "vision_model.", 5.x "model.vision_model.".
VISION_PREFIXES = ("", "vision_model.", "model.vision_model.")
# The language model and the projector of MllamaForConditionalGeneration, in both layouts
# (4.x: language_model.model.*, language_model.lm_head.*; 5.x: model.language_model.*, lm_head.*).
IGNORED = {
    "mllama": (r"(model\.)?language_model\..*", r"lm_head\..*", r"(model\.)?multi_modal_projector\..*"),
}


def load(model_type: str, hf_config: dict, tensors, *, dtype, attention_impl: str = "auto", origin: str):
    """Build a `MllamaVisionModel` from a checkpoint's config dict and tensors.

    `model_type` is the checkpoint's own ("mllama_vision_model" or "mllama"); the vision
    config is taken from the right place inside `hf_config`.
    Returns (model, prefix, ignored tensor names).
    """
    vision_hf = hf_config if model_type == MODEL_TYPE else hf_config.get("vision_config") or {}
    if not isinstance(vision_hf, dict):
        raise ConfigError(f"{origin}: 'vision_config' must be an object, got {type(vision_hf).__name__}")
    if model_type == "mllama":  # MllamaConfig's vision_config may omit model_type
        vision_hf = {"model_type": MODEL_TYPE, **vision_hf}
    cfg = MllamaVisionConfig.from_hf(vision_hf)
    prefix = vision_prefix(tensors, VISION_PREFIXES, "patch_embedding.weight", "Mllama vision tower", origin)
    ignore = IGNORED.get(model_type, ())
    make = lambda: MllamaVisionModel(cfg, dtype=dtype, attention_impl=attention_impl, rngs=nnx.Rngs(0))
    model, ignored = build_module(make, with_prefix(RULES, prefix), tensors, ignore=ignore, origin=origin)
    return model, prefix, ignored


def preprocess_defaults(cfg: MllamaVisionConfig) -> dict[str, Any]:
    """`MllamaPreprocessConfig` fields matching the tower: its tile size and tile count."""
    return dict(tile_size=cfg.image_size, max_image_tiles=cfg.max_num_tiles)


# Runs on the core's `MllamaEncoder` (tiled inputs, two-stage hidden-state indices) and its
# `MllamaImageProcessor` preprocessing: the "mllama" runner.
FAMILY = EncoderFamily(
    model_type=MODEL_TYPE,
    checkpoint_types=CHECKPOINT_TYPES,
    load=load,
    preprocess_defaults=lambda cfg, size: preprocess_defaults(cfg),
    num_tokens=lambda cfg, size: cfg.num_tokens,
    runner="mllama",
)
