"""The SigLIP vision transformer (transformers' `SiglipVisionModel`) in Flax NNX.

Attribute names mirror transformers, so the conversion table at the bottom is a list of
renames. Images are NHWC. Differences from CLIP: the patch convolution has a bias, there is
no class token (every token is a patch, token 0 included), no pre-layernorm, and the
post-layernorm applies to the whole last hidden state. The optional attention-pooling head
(`vision_use_head`) turns that into transformers' `pooler_output`.

transformers' indexing, which the runner's interface follows:
  hidden_states[0]   = embeddings (patches + positions), `embed`
  hidden_states[i+1] = block i of hidden_states[i], `block`
  last_hidden_state  = post_layernorm(hidden_states[-1]), `last_hidden_state`
  pooler_output      = head(last_hidden_state), or None without a head, `pool`
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sauce_jax.ports.attention import attention, check_implementation, merge_heads, split_heads
from sauce_jax.ports.clip import IGNORED_BUFFERS, VISION_PREFIXES
from sauce_jax.ports.clip import IGNORED as CLIP_IGNORED
from sauce_jax.ports.conversion import CONV2D, LINEAR, Rule, build_module, with_prefix
from sauce_jax.ports.vit import MLP, Encoder, PatchEmbedding, check_config, dense, layer_norm
from sauce_jax.ports.family import EncoderFamily, vision_prefix
from sauce_jax.errors import ConfigError

MODEL_TYPE = "siglip_vision_model"
# SiglipImageProcessor's mean and std (transformers' IMAGENET_STANDARD_MEAN / _STD).
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)

# transformers' SiglipVisionConfig defaults: configs nested in SiglipModel / LLaVA may omit them.
_HF_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    vision_use_head=True,
)


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    """Shape of a SigLIP vision tower, built from transformers' `SiglipVisionConfig` fields."""

    hidden_size: int = 768  # D, the residual width
    intermediate_size: int = 3072  # MLP width (blocks and head)
    num_hidden_layers: int = 12  # transformer blocks; hidden states are num_hidden_layers + 1
    num_attention_heads: int = 12  # heads of the blocks and of the pooling head
    num_channels: int = 3
    image_size: int = 224  # square input side in pixels
    patch_size: int = 16  # square patch side; the conv has stride patch_size
    hidden_act: str = "gelu_pytorch_tanh"  # a key of sauce_jax.ports.vit.ACTIVATIONS
    layer_norm_eps: float = 1e-6
    vision_use_head: bool = True  # the attention-pooling head that makes `pooler_output`

    def __post_init__(self):
        check_config(self, "SigLIP")
        if not isinstance(self.vision_use_head, bool):
            raise ConfigError(f"SigLIP config vision_use_head must be true or false, got {self.vision_use_head!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Tokens per image: the patches (SigLIP has no class token)."""
        return self.grid**2

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "SiglipVisionConfig":
        """Build from a transformers `SiglipVisionConfig` dict (missing fields take its defaults)."""
        model_type = hf.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"vision config has model_type={model_type!r}, the SigLIP port reads {MODEL_TYPE!r}")
        if hf.get("pruned_heads"):
            raise ConfigError("SigLIP config 'pruned_heads' is set; pruned attention heads are not implemented")
        fields = {k: hf.get(k, v) for k, v in _HF_DEFAULTS.items()}
        for name in ("image_size", "patch_size"):  # transformers also allows [h, w]; only squares are ported
            value = fields[name]
            if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
                fields[name] = value[0]
        return cls(**fields)


class SiglipVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: SiglipVisionConfig, *, dtype, rngs: nnx.Rngs):
        self.patch_embedding = PatchEmbedding(cfg.patch_size, cfg.num_channels, cfg.hidden_size, bias=True,
                                              dtype=dtype, rngs=rngs)
        self.position_embedding = nnx.Embed(cfg.num_positions, cfg.hidden_size, dtype=dtype,
                                            param_dtype=dtype, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixels)  # [B, N, D]
        return patches + self.position_embedding.embedding[...][None].astype(patches.dtype)


class MultiheadAttention(nnx.Module):
    """torch.nn.MultiheadAttention (batch_first, with biases) under its own parameter names.

    `in_proj_weight` stacks the query, key and value projections along its output axis; here
    it is stored transposed, [D, 3D], and split into thirds in that order.
    """

    def __init__(self, cfg: SiglipVisionConfig, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.implementation = attention_impl
        self.in_proj_weight = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (d, 3 * d), dtype))
        self.in_proj_bias = nnx.Param(jnp.zeros((3 * d,), dtype))
        self.out_proj = dense(d, d, dtype=dtype, rngs=rngs)

    def __call__(self, query: jax.Array, key_value: jax.Array) -> jax.Array:
        # query [B, S, D], key_value [B, T, D] (keys = values)
        wq, wk, wv = jnp.split(self.in_proj_weight[...].astype(query.dtype), 3, axis=1)  # [D, D] each
        bq, bk, bv = jnp.split(self.in_proj_bias[...].astype(query.dtype), 3)
        q = split_heads(query @ wq + bq, self.num_heads)  # [B, S, N, H]
        kv = key_value @ jnp.concatenate([wk, wv], axis=1) + jnp.concatenate([bk, bv])  # [B, T, 2D]
        k, v = (split_heads(y, self.num_heads) for y in jnp.split(kv, 2, axis=-1))  # [B, T, N, H] each
        out = attention(q, k, v, implementation=self.implementation)  # [B, S, N, H], scale 1/sqrt(H)
        return self.out_proj(merge_heads(out))


class SiglipMultiheadAttentionPoolingHead(nnx.Module):
    """A learned probe attends over the tokens; layernorm + MLP residual; one vector per image."""

    def __init__(self, cfg: SiglipVisionConfig, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        self.probe = nnx.Param(jax.random.normal(rngs.params(), (1, 1, cfg.hidden_size), dtype))
        self.attention = MultiheadAttention(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.layernorm = layer_norm(cfg, dtype, rngs)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        b, _, d = hidden.shape  # [B, T, D]
        probe = jnp.broadcast_to(self.probe[...].astype(hidden.dtype), (b, 1, d))
        x = self.attention(probe, hidden)  # [B, 1, D]
        x = x + self.mlp(self.layernorm(x))
        return x[:, 0]  # [B, D]


class SiglipVisionModel(nnx.Module):
    """SigLIP's vision tower; `head` exists only when `cfg.vision_use_head`."""

    def __init__(self, cfg: SiglipVisionConfig, *, dtype=jnp.float32, attention_impl: str = "auto",
                 rngs: nnx.Rngs):
        attention_impl = check_implementation(attention_impl)
        self.config = cfg
        self.dtype = dtype
        self.embeddings = SiglipVisionEmbeddings(cfg, dtype=dtype, rngs=rngs)
        self.encoder = Encoder(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.post_layernorm = layer_norm(cfg, dtype, rngs)
        self.head = (
            SiglipMultiheadAttentionPoolingHead(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
            if cfg.vision_use_head
            else None
        )

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def embed(self, pixels: jax.Array) -> jax.Array:
        """Hidden state 0: patch embeddings + positions (no class token, no layernorm). [B, H, W, C] -> [B, N, D]."""
        return self.embeddings(pixels)

    def block(self, i: int, hidden: jax.Array) -> jax.Array:
        """Hidden state i+1 from hidden state i."""
        return self.encoder.layers[i](hidden)

    def last_hidden_state(self, last_hidden: jax.Array) -> jax.Array:
        """transformers' `last_hidden_state`: the post-layernorm of the last hidden state."""
        return self.post_layernorm(last_hidden)

    def pool(self, last_hidden: jax.Array) -> jax.Array | None:
        """transformers' `pooler_output`: head(post_layernorm(last)), or None without a head. [B, N, D] -> [B, D]."""
        if self.head is None:
            return None
        return self.head(self.post_layernorm(last_hidden))

    def project(self, pooled: jax.Array | None) -> None:
        """SigLIP's vision tower has no projection: `image_embeds` is the pooler output itself."""
        return None


# transformers name (relative to the vision model) -> our parameter path.
RULES = (
    Rule("embeddings.patch_embedding.weight", "embeddings.patch_embedding.kernel", CONV2D),
    Rule("embeddings.patch_embedding.bias", "embeddings.patch_embedding.bias"),
    Rule("embeddings.position_embedding.weight", "embeddings.position_embedding.embedding"),
    Rule("post_layernorm.weight", "post_layernorm.scale"),
    Rule("post_layernorm.bias", "post_layernorm.bias"),
    Rule("encoder.layers.{i}.{ln}.weight", "encoder.layers.{i}.{ln}.scale"),  # layer_norm1/2
    Rule("encoder.layers.{i}.{ln}.bias", "encoder.layers.{i}.{ln}.bias"),
    Rule("encoder.layers.{i}.self_attn.{proj}.weight", "encoder.layers.{i}.self_attn.{proj}.kernel", LINEAR),
    Rule("encoder.layers.{i}.self_attn.{proj}.bias", "encoder.layers.{i}.self_attn.{proj}.bias"),
    Rule("encoder.layers.{i}.mlp.{fc}.weight", "encoder.layers.{i}.mlp.{fc}.kernel", LINEAR),
    Rule("encoder.layers.{i}.mlp.{fc}.bias", "encoder.layers.{i}.mlp.{fc}.bias"),
)
HEAD_RULES = (
    Rule("head.probe", "head.probe"),
    Rule("head.attention.in_proj_weight", "head.attention.in_proj_weight", LINEAR),  # (3D, D) -> (D, 3D)
    Rule("head.attention.in_proj_bias", "head.attention.in_proj_bias"),
    Rule("head.attention.out_proj.weight", "head.attention.out_proj.kernel", LINEAR),
    Rule("head.attention.out_proj.bias", "head.attention.out_proj.bias"),
    Rule("head.layernorm.weight", "head.layernorm.scale"),
    Rule("head.layernorm.bias", "head.layernorm.bias"),
    Rule("head.mlp.{fc}.weight", "head.mlp.{fc}.kernel", LINEAR),
    Rule("head.mlp.{fc}.bias", "head.mlp.{fc}.bias"),
)

# Tensors of the other halves of multi-part checkpoints, which the vision encoder does not use.
IGNORED = {
    "siglip": (r"text_model\..*", r"logit_scale", r"logit_bias"),
    "llava": CLIP_IGNORED["llava"],
}

# The checkpoint model_types whose vision tower this port reads.
CHECKPOINT_TYPES = (MODEL_TYPE, "siglip", "llava")


def is_siglip_checkpoint(hf_config: dict) -> bool:
    """Whether a checkpoint's config describes a SigLIP vision tower (alone, SiglipModel or LLaVA)."""
    model_type = hf_config.get("model_type")
    if model_type in (MODEL_TYPE, "siglip"):
        return True
    vision = hf_config.get("vision_config")
    return model_type == "llava" and isinstance(vision, dict) and vision.get("model_type") == MODEL_TYPE


def load(model_type: str, hf_config: dict, tensors, *, dtype, attention_impl: str = "auto", origin: str):
    """Build a `SiglipVisionModel` from a checkpoint's config dict and tensors.

    `model_type` is the checkpoint's own ("siglip_vision_model", "siglip" or "llava"); the
    vision config is taken from the right place inside `hf_config`.
    Returns (model, prefix, ignored tensor names).
    """
    vision_hf = hf_config if model_type == MODEL_TYPE else hf_config.get("vision_config") or {}
    if not isinstance(vision_hf, dict):
        raise ConfigError(f"{origin}: 'vision_config' must be an object, got {type(vision_hf).__name__}")
    if model_type == "siglip":  # SiglipConfig's vision_config may omit model_type
        vision_hf = {"model_type": MODEL_TYPE, **vision_hf}
    cfg = SiglipVisionConfig.from_hf(vision_hf)
    prefix = vision_prefix(tensors, VISION_PREFIXES, "embeddings.patch_embedding.weight", "SigLIP vision tower",
                           origin)
    rules = with_prefix(RULES + (HEAD_RULES if cfg.vision_use_head else ()), prefix)
    ignore = IGNORED.get(model_type, ()) + IGNORED_BUFFERS
    make = lambda: SiglipVisionModel(cfg, dtype=dtype, attention_impl=attention_impl, rngs=nnx.Rngs(0))
    model, ignored = build_module(make, rules, tensors, ignore=ignore, origin=origin)
    return model, prefix, ignored


def preprocess_defaults(size: int) -> dict[str, Any]:
    """`SiglipImageProcessor`'s defaults for a model that takes `size` x `size` images: resize
    to exactly `size` x `size` (bicubic), no crop, mean = std = 0.5."""
    return dict(shortest_edge=None, resize_hw=(size, size), crop_hw=None,
                image_mean=IMAGENET_STANDARD_MEAN, image_std=IMAGENET_STANDARD_STD)


FAMILY = EncoderFamily(
    model_type=MODEL_TYPE,
    checkpoint_types=CHECKPOINT_TYPES,
    load=load,
    preprocess_defaults=lambda cfg, size: preprocess_defaults(size),
    num_tokens=lambda cfg, size: cfg.num_positions,
    matches=is_siglip_checkpoint,
)
