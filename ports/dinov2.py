"""The DINOv2 vision transformer (transformers' `Dinov2Model`, `Dinov2WithRegistersModel`) in Flax NNX.

Attribute names mirror the tensor names `save_pretrained` writes (the 4.x layout, which
transformers 5 still writes to disk), so the conversion table at the bottom is a list of
renames; the 5.x in-memory names (`q_proj`, `gate_proj`, ...) are mapped onto them first by
`saved_layout`. Images are NHWC. Differences from CLIP: the patch convolution has a bias, no
pre-layernorm, LayerScale on both residual branches, an optional SwiGLU MLP, optional
register tokens (inserted after the class token, without positions), and the position
embeddings are resampled (bicubic, as `interpolate_pos_encoding` does) whenever the input
grid differs from the checkpoint's. The mask token is pre-training only and is ignored.

transformers' indexing, which the runner's interface follows:
  hidden_states[0]   = [CLS, registers, patches] + positions, `embed`
  hidden_states[i+1] = block i of hidden_states[i], `block`
  last_hidden_state  = layernorm(hidden_states[-1]), `last_hidden_state`
  pooler_output      = last_hidden_state[:, 0], `pool`
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sauce_jax.ports.attention import attention, check_implementation, merge_heads, split_heads
from sauce_jax.ports.conversion import CONV2D, LINEAR, Rule, build_module, with_prefix
from sauce_jax.ports.vit import ACTIVATIONS, PatchEmbedding, check_config, dense, layer_norm
from sauce_jax.ports.family import EncoderFamily, vision_prefix
from sauce_jax.errors import CheckpointError, ConfigError

MODEL_TYPE = "dinov2"
REGISTERS_TYPE = "dinov2_with_registers"
# The checkpoint model_types this port reads.
CHECKPOINT_TYPES = (MODEL_TYPE, REGISTERS_TYPE)
# BitImageProcessor's mean and std as DINOv2 checkpoints save them (ImageNet's statistics).
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# transformers' Dinov2Config / Dinov2WithRegistersConfig defaults.
_HF_DEFAULTS = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    mlp_ratio=4,
    hidden_act="gelu",
    layer_norm_eps=1e-6,
    image_size=224,
    patch_size=14,
    num_channels=3,
    qkv_bias=True,
    use_swiglu_ffn=False,
)


# -- position-embedding resampling -------------------------------------------------------
def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """The Keys cubic convolution kernel with parameter `a`, for |x| < 2 (0 beyond)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((x - 5) * x + 8) * x * a - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(in_size: int, out_size: int, *, antialias: bool = False) -> np.ndarray:
    """The [out, in] matrix of torch's 1-D bicubic resize (`align_corners=False`, size given).

    `antialias=False` is `F.interpolate(mode="bicubic")`: 4 taps of the a = -0.75 kernel at
    `(i + 0.5) * in / out - 0.5`, edge indices clamped. `antialias=True` is torch's
    antialiased path (PIL's filter): the a = -0.5 kernel stretched by in / out when
    shrinking, taps outside the input dropped and the rest renormalized. Rows sum to 1.
    """
    scale = in_size / out_size
    out = np.zeros((out_size, in_size), np.float64)
    if not antialias:
        for i in range(out_size):
            real = scale * (i + 0.5) - 0.5
            base = math.floor(real)
            t = real - base
            weights = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for k, w in enumerate(weights):
                out[i, min(max(base - 1 + k, 0), in_size - 1)] += w
        return out.astype(np.float32)
    support = 2.0 * scale if scale >= 1 else 2.0
    invscale = 1 / scale if scale >= 1 else 1.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        weights = _cubic((np.arange(lo, hi) - center + 0.5) * invscale, -0.5)
        total = weights.sum()
        out[i, lo:hi] = weights / total if total != 0 else weights
    return out.astype(np.float32)


def resize_positions(grid_positions: jax.Array, out_hw: tuple[int, int], *, antialias: bool) -> jax.Array:
    """Bicubic resize of a [gh, gw, D] grid of position embeddings to [out_h, out_w, D], in float32."""
    gh, gw, _ = grid_positions.shape
    rows = jnp.asarray(bicubic_matrix(gh, out_hw[0], antialias=antialias))  # [out_h, gh]
    cols = jnp.asarray(bicubic_matrix(gw, out_hw[1], antialias=antialias))  # [out_w, gw]
    x = jnp.einsum("ow,hwd->hod", cols, grid_positions.astype(jnp.float32))  # [gh, out_w, D]
    return jnp.einsum("ph,hod->pod", rows, x)  # [out_h, out_w, D]


# -- config ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    """Shape of a DINOv2 tower, built from transformers' `Dinov2Config` fields."""

    hidden_size: int = 768  # D, the residual width
    num_hidden_layers: int = 12  # transformer blocks; hidden states are num_hidden_layers + 1
    num_attention_heads: int = 12
    mlp_ratio: float = 4  # MLP width = int(hidden_size * mlp_ratio)
    hidden_act: str = "gelu"  # a key of sauce_jax.ports.vit.ACTIVATIONS (the SwiGLU MLP always uses SiLU)
    layer_norm_eps: float = 1e-6
    image_size: int = 224  # the pretraining size: the position grid is image_size // patch_size
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    use_swiglu_ffn: bool = False
    num_register_tokens: int = 0  # > 0 only for `dinov2_with_registers`
    antialias: bool = False  # how positions are resampled: registers models use torch's antialiased bicubic

    def __post_init__(self):
        check_config(self, "DINOv2")
        for name in ("qkv_bias", "use_swiglu_ffn", "antialias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"DINOv2 config {name} must be true or false, got {getattr(self, name)!r}")
        r = self.num_register_tokens
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ConfigError(f"DINOv2 config 'num_register_tokens' must be a non-negative integer, got {r!r}")

    @property
    def intermediate_size(self) -> int:
        """The plain MLP's width (transformers derives it from mlp_ratio)."""
        ratio = self.mlp_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio <= 0:
            raise ConfigError(f"DINOv2 config 'mlp_ratio' must be a positive number, got {ratio!r}")
        return int(self.hidden_size * ratio)

    @property
    def swiglu_size(self) -> int:
        """The SwiGLU MLP's width: two thirds of the plain one, rounded up to a multiple of 8."""
        return (int(self.intermediate_size * 2 / 3) + 7) // 8 * 8

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Rows of the stored position table: the pretraining grid plus the class token."""
        return self.grid**2 + 1

    def num_tokens(self, input_size: int) -> int:
        """T for a square input of `input_size` pixels: class token, registers, patches."""
        return 1 + self.num_register_tokens + (input_size // self.patch_size) ** 2

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "Dinov2Config":
        """Build from a transformers `Dinov2Config` or `Dinov2WithRegistersConfig` dict."""
        model_type = hf.get("model_type", MODEL_TYPE)
        if model_type not in CHECKPOINT_TYPES:
            raise ConfigError(f"config has model_type={model_type!r}, the DINOv2 port reads {list(CHECKPOINT_TYPES)}")
        if hf.get("pruned_heads"):
            raise ConfigError("DINOv2 config 'pruned_heads' is set; pruned attention heads are not implemented")
        fields = {k: hf.get(k, v) for k, v in _HF_DEFAULTS.items()}
        if model_type == REGISTERS_TYPE:
            fields["patch_size"] = hf.get("patch_size", 16)  # the registers config's own default
        for name in ("image_size", "patch_size"):  # transformers also allows [h, w]; only squares are ported
            value = fields[name]
            if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
                fields[name] = value[0]
        registers = model_type == REGISTERS_TYPE
        return cls(**fields, num_register_tokens=hf.get("num_register_tokens", 4) if registers else 0,
                   antialias=registers)


# -- modules -----------------------------------------------------------------------------
class Dinov2PatchEmbeddings(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, dtype, rngs: nnx.Rngs):
        self.projection = PatchEmbedding(cfg.patch_size, cfg.num_channels, cfg.hidden_size, bias=True,
                                         dtype=dtype, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        return self.projection(pixels)  # [B, N, D]


class Dinov2Embeddings(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.config = cfg
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, d), dtype))
        self.position_embeddings = nnx.Param(jax.random.normal(rngs.params(), (1, cfg.num_positions, d), dtype))
        self.register_tokens = (nnx.Param(jax.random.normal(rngs.params(), (1, cfg.num_register_tokens, d), dtype))
                                if cfg.num_register_tokens else None)
        self.patch_embeddings = Dinov2PatchEmbeddings(cfg, dtype=dtype, rngs=rngs)

    @property
    def patch_embedding(self) -> PatchEmbedding:
        """The patch convolution under the name the encoder runner reads the parameter dtype from."""
        return self.patch_embeddings.projection

    def positions(self, height: int, width: int) -> jax.Array:
        """transformers' `interpolate_pos_encoding` for an input of height x width pixels. -> [1, 1+N, D]."""
        cfg = self.config
        table = self.position_embeddings[...]  # [1, 1 + grid^2, D]
        gh, gw = height // cfg.patch_size, width // cfg.patch_size
        if gh * gw == cfg.grid**2 and height == width:
            return table
        patch = table[0, 1:].reshape(cfg.grid, cfg.grid, -1)  # [grid, grid, D]
        patch = resize_positions(patch, (gh, gw), antialias=cfg.antialias).astype(table.dtype)
        return jnp.concatenate([table[:, :1], patch.reshape(1, gh * gw, -1)], axis=1)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        b, h, w, _ = pixels.shape  # [B, H, W, C]
        patches = self.patch_embeddings(pixels)  # [B, N, D]
        d = patches.shape[-1]
        cls = jnp.broadcast_to(self.cls_token[...].astype(patches.dtype), (b, 1, d))
        tokens = jnp.concatenate([cls, patches], axis=1) + self.positions(h, w).astype(patches.dtype)  # [B, 1+N, D]
        if self.register_tokens is None:
            return tokens
        registers = jnp.broadcast_to(self.register_tokens[...].astype(patches.dtype),
                                     (b, self.config.num_register_tokens, d))
        return jnp.concatenate([tokens[:, :1], registers, tokens[:, 1:]], axis=1)  # [B, 1+R+N, D]


class Dinov2SelfAttention(nnx.Module):
    """The query/key/value projections and softmax attention; the output projection is separate."""

    def __init__(self, cfg: Dinov2Config, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.implementation = attention_impl
        self.query = dense(d, d, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.key = dense(d, d, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.value = dense(d, d, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # x [B, T, D]
        projections = (self.query, self.key, self.value)
        # One [D, 3D] matmul instead of three, as in sauce_jax.ports.vit.Attention.
        kernel = jnp.concatenate([p.kernel[...] for p in projections], axis=1).astype(x.dtype)
        qkv = x @ kernel  # [B, T, 3D]
        if self.query.bias is not None:
            qkv = qkv + jnp.concatenate([p.bias[...] for p in projections]).astype(x.dtype)
        q, k, v = (split_heads(y, self.num_heads) for y in jnp.split(qkv, 3, axis=-1))  # [B, T, N, H] each
        out = attention(q, k, v, implementation=self.implementation)  # [B, T, N, H], scale 1/sqrt(H)
        return merge_heads(out)


class Dinov2SelfOutput(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, dtype, rngs: nnx.Rngs):
        self.dense = dense(cfg.hidden_size, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense(x)


class Dinov2Attention(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        self.attention = Dinov2SelfAttention(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.output = Dinov2SelfOutput(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.output(self.attention(x))


class Dinov2LayerScale(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, dtype):
        self.lambda1 = nnx.Param(jnp.ones((cfg.hidden_size,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.lambda1[...].astype(x.dtype)


class Dinov2MLP(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, dtype, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = dense(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, rngs=rngs)
        self.fc2 = dense(cfg.intermediate_size, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class Dinov2SwiGLUFFN(nnx.Module):
    """`weights_in` holds the gate and the up projection side by side: [D, 2H]."""

    def __init__(self, cfg: Dinov2Config, *, dtype, rngs: nnx.Rngs):
        h = cfg.swiglu_size
        self.weights_in = dense(cfg.hidden_size, 2 * h, dtype=dtype, rngs=rngs)
        self.weights_out = dense(h, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate, up = jnp.split(self.weights_in(x), 2, axis=-1)  # [B, T, H] each
        return self.weights_out(jax.nn.silu(gate) * up)


class Dinov2Layer(nnx.Module):
    """x + ls1 * attn(norm1(x)), then + ls2 * mlp(norm2(.))."""

    def __init__(self, cfg: Dinov2Config, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        self.norm1 = layer_norm(cfg, dtype, rngs)
        self.attention = Dinov2Attention(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.layer_scale1 = Dinov2LayerScale(cfg, dtype=dtype)
        self.norm2 = layer_norm(cfg, dtype, rngs)
        self.mlp = (Dinov2SwiGLUFFN if cfg.use_swiglu_ffn else Dinov2MLP)(cfg, dtype=dtype, rngs=rngs)
        self.layer_scale2 = Dinov2LayerScale(cfg, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Dinov2Encoder(nnx.Module):
    def __init__(self, cfg: Dinov2Config, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        self.layer = nnx.List([Dinov2Layer(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
                               for _ in range(cfg.num_hidden_layers)])


class Dinov2Model(nnx.Module):
    """DINOv2 (with or without registers) as `Dinov2Model` computes it, any input size."""

    def __init__(self, cfg: Dinov2Config, *, dtype=jnp.float32, attention_impl: str = "auto", rngs: nnx.Rngs):
        self.config = cfg
        self.embeddings = Dinov2Embeddings(cfg, dtype=dtype, rngs=rngs)
        self.encoder = Dinov2Encoder(cfg, dtype=dtype, attention_impl=check_implementation(attention_impl), rngs=rngs)
        self.layernorm = layer_norm(cfg, dtype, rngs)

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def embed(self, pixels: jax.Array) -> jax.Array:
        """Hidden state 0: class token, registers, patches, positions. [B, H, W, C] -> [B, T, D]."""
        return self.embeddings(pixels)

    def block(self, i: int, hidden: jax.Array) -> jax.Array:
        """Hidden state i+1 from hidden state i."""
        return self.encoder.layer[i](hidden)

    def last_hidden_state(self, last_hidden: jax.Array) -> jax.Array:
        """transformers' `last_hidden_state`: the final layernorm of the last hidden state."""
        return self.layernorm(last_hidden)

    def pool(self, last_hidden: jax.Array) -> jax.Array:
        """transformers' `pooler_output`: the class token of the layernormed last hidden state. -> [B, D]."""
        return self.layernorm(last_hidden[:, 0])

    def project(self, pooled: jax.Array) -> None:
        """DINOv2 has no projection."""
        return None


# -- conversion --------------------------------------------------------------------------
# Checkpoint name (as `save_pretrained` writes it, transformers 4.x and 5.x) -> our parameter path.
RULES = (
    Rule("embeddings.cls_token", "embeddings.cls_token"),
    Rule("embeddings.position_embeddings", "embeddings.position_embeddings"),
    Rule("embeddings.register_tokens", "embeddings.register_tokens"),
    Rule("embeddings.patch_embeddings.projection.weight", "embeddings.patch_embeddings.projection.kernel", CONV2D),
    Rule("embeddings.patch_embeddings.projection.bias", "embeddings.patch_embeddings.projection.bias"),
    Rule("encoder.layer.{i}.{norm}.weight", "encoder.layer.{i}.{norm}.scale"),  # norm1/2
    Rule("encoder.layer.{i}.{norm}.bias", "encoder.layer.{i}.{norm}.bias"),
    Rule("encoder.layer.{i}.attention.attention.{proj}.weight", "encoder.layer.{i}.attention.attention.{proj}.kernel",
         LINEAR),  # query/key/value
    Rule("encoder.layer.{i}.attention.attention.{proj}.bias", "encoder.layer.{i}.attention.attention.{proj}.bias"),
    Rule("encoder.layer.{i}.attention.output.dense.weight", "encoder.layer.{i}.attention.output.dense.kernel", LINEAR),
    Rule("encoder.layer.{i}.attention.output.dense.bias", "encoder.layer.{i}.attention.output.dense.bias"),
    Rule("encoder.layer.{i}.{scale}.lambda1", "encoder.layer.{i}.{scale}.lambda1"),  # layer_scale1/2
    Rule("encoder.layer.{i}.mlp.{fc}.weight", "encoder.layer.{i}.mlp.{fc}.kernel", LINEAR),  # fc1/2, weights_in/out
    Rule("encoder.layer.{i}.mlp.{fc}.bias", "encoder.layer.{i}.mlp.{fc}.bias"),
    Rule("layernorm.weight", "layernorm.scale"),
    Rule("layernorm.bias", "layernorm.bias"),
)

# transformers 5.x in-memory names (a live model's state_dict) -> the saved names above.
_CURRENT_TO_SAVED = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
    (".mlp.down_proj.", ".mlp.weights_out."),
)

# Where the DINOv2 model sits: Dinov2Model "", Dinov2ForImageClassification "dinov2."
# (registers: "dinov2_with_registers."), an exported backbone+head model "backbone.".
PREFIXES = ("", "dinov2.", "dinov2_with_registers.", "backbone.")
# Never used for inference: the pre-training mask token and the classification head.
IGNORED = (r"(.*\.)?embeddings\.mask_token", r"classifier\..*")


def saved_layout(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors named as `save_pretrained` writes them: 5.x live names renamed, SwiGLU's
    `gate_proj` and `up_proj` joined into `weights_in` (gate first) as transformers splits it."""
    out: dict[str, np.ndarray] = {}
    for key, array in tensors.items():
        name = key
        for old, new in _CURRENT_TO_SAVED:
            name = name.replace(old, new)
        if ".mlp.up_proj." in key:
            if key.replace(".mlp.up_proj.", ".mlp.gate_proj.") not in tensors:
                raise CheckpointError(f"tensor {key!r} has no matching "
                                      f"{key.replace('.mlp.up_proj.', '.mlp.gate_proj.')!r}")
            continue
        if ".mlp.gate_proj." in key:
            up = key.replace(".mlp.gate_proj.", ".mlp.up_proj.")
            if up not in tensors:
                raise CheckpointError(f"tensor {key!r} has no matching {up!r}")
            array = np.concatenate([np.asarray(array), np.asarray(tensors[up])], axis=0)
            name = name.replace(".mlp.gate_proj.", ".mlp.weights_in.")
        out[name] = array
    return out


def build(cfg: Dinov2Config, tensors, *, prefix: str = "", dtype=jnp.float32, attention_impl: str = "auto",
          ignore=(), origin: str = "checkpoint"):
    """A `Dinov2Model` of shape `cfg` filled from saved-layout `tensors` under `prefix`.

    Returns (model, ignored tensor names).
    """
    make = lambda: Dinov2Model(cfg, dtype=dtype, attention_impl=attention_impl, rngs=nnx.Rngs(0))
    return build_module(make, with_prefix(RULES, prefix), tensors, ignore=IGNORED + tuple(ignore), origin=origin)


def load(model_type: str, hf_config: dict, tensors, *, dtype, attention_impl: str = "auto", origin: str):
    """Build a `Dinov2Model` from a checkpoint's config dict and tensors.

    `model_type` is the checkpoint's own ("dinov2" or "dinov2_with_registers").
    Returns (model, prefix, ignored tensor names).
    """
    cfg = Dinov2Config.from_hf({**hf_config, "model_type": model_type})
    tensors = saved_layout(tensors)
    prefix = vision_prefix(tensors, PREFIXES, "embeddings.patch_embeddings.projection.weight", "DINOv2 model", origin)
    model, ignored = build(cfg, tensors, prefix=prefix, dtype=dtype, attention_impl=attention_impl, origin=origin)
    return model, prefix, ignored


def preprocess_defaults(size: int) -> dict[str, Any]:
    """What DINOv2 checkpoints save (`BitImageProcessor`: shortest edge 256, crop 224, ImageNet
    mean and std), scaled to a model that takes `size` x `size` images."""
    return dict(shortest_edge=round(size * 256 / 224), crop_hw=(size, size),
                image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)


FAMILY = EncoderFamily(
    model_type=MODEL_TYPE,
    checkpoint_types=CHECKPOINT_TYPES,
    load=load,
    preprocess_defaults=lambda cfg, size: preprocess_defaults(size),
    num_tokens=lambda cfg, size: cfg.num_tokens(size),
    input_size_from_preprocessing=True,
)
