"""The CLIP vision transformer (transformers' `CLIPVisionModel`) in Flax NNX.

Attribute names mirror transformers, so the conversion table at the bottom is a list of
renames. Images are NHWC. The model exposes the pieces the encoder runner needs to stop
early and to hook any hidden state: `embed` (hidden state 0, after the pre-layernorm),
`encoder.layers[i]` (hidden state i+1), `pool` and `project`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sauce_jax.ports.attention import check_implementation
from sauce_jax.ports.conversion import CONV2D, LINEAR, Rule, build_module, with_prefix
from sauce_jax.ports.vit import Encoder, PatchEmbedding, check_config, dense, layer_norm
from sauce_jax.ports.family import EncoderFamily, vision_prefix
from sauce_jax.errors import ConfigError

MODEL_TYPE = "clip_vision_model"
# The checkpoint model_types whose vision tower this port reads (a LLaVA's unless its tower is SigLIP's).
CHECKPOINT_TYPES = (MODEL_TYPE, "clip", "llava")
# CLIPImageProcessor's mean and std (OpenAI CLIP's training statistics).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# transformers' CLIPVisionConfig defaults: LLaVA configs often store only the fields that differ.
_HF_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Shape of a CLIP vision tower, built from transformers' `CLIPVisionConfig` fields."""

    hidden_size: int = 768  # D, the residual width
    intermediate_size: int = 3072  # MLP width
    num_hidden_layers: int = 12  # transformer blocks; hidden states are num_hidden_layers + 1
    num_attention_heads: int = 12  # heads; D must divide evenly
    num_channels: int = 3  # image channels
    image_size: int = 224  # square input side in pixels
    patch_size: int = 32  # square patch side; the conv has stride patch_size
    hidden_act: str = "quick_gelu"  # a key of sauce_jax.ports.vit.ACTIVATIONS
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None  # set when the checkpoint has `visual_projection`

    def __post_init__(self):
        check_config(self, "CLIP")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        return self.grid**2 + 1

    @classmethod
    def from_hf(cls, hf: dict[str, Any], projection_dim: int | None = None) -> "CLIPVisionConfig":
        """Build from a transformers `CLIPVisionConfig` dict (missing fields take its defaults)."""
        model_type = hf.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"vision config has model_type={model_type!r}, the CLIP port reads {MODEL_TYPE!r}")
        if hf.get("pruned_heads"):
            raise ConfigError("CLIP config 'pruned_heads' is set; pruned attention heads are not implemented")
        fields = {k: hf.get(k, v) for k, v in _HF_DEFAULTS.items()}
        return cls(**fields, projection_dim=projection_dim)


class CLIPVisionEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, dtype, rngs: nnx.Rngs):
        self.patch_embedding = PatchEmbedding(cfg.patch_size, cfg.num_channels, cfg.hidden_size, bias=False,
                                              dtype=dtype, rngs=rngs)
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (cfg.hidden_size,), dtype))
        self.position_embedding = nnx.Embed(cfg.num_positions, cfg.hidden_size, dtype=dtype,
                                            param_dtype=dtype, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixels)  # [B, N, D]
        cls = jnp.broadcast_to(self.class_embedding[...], (patches.shape[0], 1, patches.shape[-1]))
        tokens = jnp.concatenate([cls.astype(patches.dtype), patches], axis=1)  # [B, T, D]
        return tokens + self.position_embedding.embedding[...][None]


class CLIPVisionModel(nnx.Module):
    """CLIP's vision tower; `visual_projection` exists only when `cfg.projection_dim` is set."""

    def __init__(self, cfg: CLIPVisionConfig, *, dtype=jnp.float32, attention_impl: str = "auto", rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = CLIPVisionEmbeddings(cfg, dtype=dtype, rngs=rngs)
        self.pre_layrnorm = layer_norm(cfg, dtype, rngs)  # sic: transformers' spelling
        self.encoder = Encoder(cfg, dtype=dtype, attention_impl=check_implementation(attention_impl), rngs=rngs)
        self.post_layernorm = layer_norm(cfg, dtype, rngs)
        self.visual_projection = (
            dense(cfg.hidden_size, cfg.projection_dim, bias=False, dtype=dtype, rngs=rngs)
            if cfg.projection_dim
            else None
        )

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def embed(self, pixels: jax.Array) -> jax.Array:
        """Hidden state 0: patch + class embeddings, positions, pre-layernorm. [B, H, W, C] -> [B, T, D]."""
        return self.pre_layrnorm(self.embeddings(pixels))

    def block(self, i: int, hidden: jax.Array) -> jax.Array:
        """Hidden state i+1 from hidden state i."""
        return self.encoder.layers[i](hidden)

    def last_hidden_state(self, last_hidden: jax.Array) -> jax.Array:
        """transformers' `last_hidden_state`: for CLIP the last hidden state itself."""
        return last_hidden

    def pool(self, last_hidden: jax.Array) -> jax.Array:
        """transformers' `pooler_output`: post-layernorm of the class token. [B, T, D] -> [B, D]."""
        return self.post_layernorm(last_hidden[:, 0])

    def project(self, pooled: jax.Array) -> jax.Array | None:
        """`image_embeds` of `CLIPVisionModelWithProjection`, or None without a projection."""
        return self.visual_projection(pooled) if self.visual_projection is not None else None


# transformers name (relative to the vision model) -> our parameter path.
RULES = (
    Rule("embeddings.patch_embedding.weight", "embeddings.patch_embedding.kernel", CONV2D),
    Rule("embeddings.class_embedding", "embeddings.class_embedding"),
    Rule("embeddings.position_embedding.weight", "embeddings.position_embedding.embedding"),
    Rule("pre_layrnorm.weight", "pre_layrnorm.scale"),
    Rule("pre_layrnorm.bias", "pre_layrnorm.bias"),
    Rule("post_layernorm.weight", "post_layernorm.scale"),
    Rule("post_layernorm.bias", "post_layernorm.bias"),
    Rule("encoder.layers.{i}.{ln}.weight", "encoder.layers.{i}.{ln}.scale"),  # layer_norm1/2
    Rule("encoder.layers.{i}.{ln}.bias", "encoder.layers.{i}.{ln}.bias"),
    Rule("encoder.layers.{i}.self_attn.{proj}.weight", "encoder.layers.{i}.self_attn.{proj}.kernel", LINEAR),
    Rule("encoder.layers.{i}.self_attn.{proj}.bias", "encoder.layers.{i}.self_attn.{proj}.bias"),
    Rule("encoder.layers.{i}.mlp.{fc}.weight", "encoder.layers.{i}.mlp.{fc}.kernel", LINEAR),
    Rule("encoder.layers.{i}.mlp.{fc}.bias", "encoder.layers.{i}.mlp.{fc}.bias"),
)
# The projection sits beside the vision model, not inside it: matched without the prefix.
PROJECTION_RULES = (Rule("visual_projection.weight", "visual_projection.kernel", LINEAR),)

# Where the vision model sits inside the checkpoints that hold one, by transformers version:
# CLIPVisionModel 5.x "", 4.x "vision_model."; CLIPModel and CLIPVisionModelWithProjection
# "vision_model."; LlavaForConditionalGeneration 5.x "vision_tower." or
# "model.vision_tower.", 4.x "vision_tower.vision_model." (and 4.52+ "model.vision_tower.vision_model.").
VISION_PREFIXES = (
    "",
    "vision_model.",
    "vision_tower.",
    "vision_tower.vision_model.",
    "model.vision_tower.",
    "model.vision_tower.vision_model.",
)
# Tensors of the other halves of multi-part checkpoints, which the vision encoder does not use.
IGNORED = {
    "clip": (r"text_model\..*", r"text_projection\.weight", r"logit_scale"),
    "llava": (r"(model\.)?language_model\..*", r"lm_head\..*", r"(model\.)?multi_modal_projector\..*"),
}
# Non-persistent buffers that older transformers versions saved anyway.
IGNORED_BUFFERS = (r".*embeddings\.position_ids",)


def load(model_type: str, hf_config: dict, tensors, *, dtype, attention_impl: str = "auto", origin: str):
    """Build a `CLIPVisionModel` from a checkpoint's config dict and tensors.

    `model_type` is the checkpoint's own ("clip_vision_model", "clip" or "llava"); the CLIP
    vision config is taken from the right place inside `hf_config`.
    Returns (model, prefix, ignored tensor names).
    """
    vision_hf = hf_config if model_type == MODEL_TYPE else hf_config.get("vision_config") or {}
    if not isinstance(vision_hf, dict):
        raise ConfigError(f"{origin}: 'vision_config' must be an object, got {type(vision_hf).__name__}")
    prefix = vision_prefix(tensors, VISION_PREFIXES, "embeddings.patch_embedding.weight", "CLIP vision tower", origin)
    projection = tensors.get("visual_projection.weight")
    cfg = CLIPVisionConfig.from_hf(vision_hf, projection_dim=int(projection.shape[0]) if projection is not None else None)
    rules = with_prefix(RULES, prefix) + (PROJECTION_RULES if projection is not None else ())
    ignore = IGNORED.get(model_type, ()) + IGNORED_BUFFERS
    make = lambda: CLIPVisionModel(cfg, dtype=dtype, attention_impl=attention_impl, rngs=nnx.Rngs(0))
    model, ignored = build_module(make, rules, tensors,
                                  ignore=ignore, origin=origin)
    return model, prefix, ignored


def preprocess_defaults(size: int) -> dict[str, Any]:
    """`CLIPImageProcessor`'s defaults scaled to a model that takes `size` x `size` images:
    shortest edge `size`, center crop `size`, OpenAI CLIP's mean and std."""
    return dict(shortest_edge=size, crop_hw=(size, size), image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)


FAMILY = EncoderFamily(
    model_type=MODEL_TYPE,
    checkpoint_types=CHECKPOINT_TYPES,
    load=load,
    preprocess_defaults=lambda cfg, size: preprocess_defaults(size),
    num_tokens=lambda cfg, size: cfg.num_positions,
)
