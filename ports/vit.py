"""The pre-LN vision-transformer pieces CLIP and SigLIP share, with transformers' attribute
names (`self_attn.{q,k,v,out}_proj`, `mlp.fc1/fc2`, `layer_norm1/2`, `encoder.layers`), so
each port's conversion table is a list of renames.

A config passed here needs `hidden_size`, `num_attention_heads`, `intermediate_size`,
`hidden_act`, `layer_norm_eps` and `num_hidden_layers`.
"""

from __future__ import annotations

from einops.array_api import rearrange  # array-API form: no backend lookup through sys.modules
import jax
import jax.numpy as jnp
from flax import nnx

from sauce_jax.ports.attention import attention, merge_heads, split_heads
from sauce_jax.errors import ConfigError

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def check_config(cfg, family: str) -> None:
    """Raise ConfigError for a config field this ViT cannot run, naming the field."""
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_channels", "image_size", "patch_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{family} config {name!r} must be a positive integer, got {value!r}")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ConfigError(f"{family} config hidden_size={cfg.hidden_size} is not divisible by "
                          f"num_attention_heads={cfg.num_attention_heads}")
    if cfg.patch_size > cfg.image_size:
        raise ConfigError(f"{family} config patch_size={cfg.patch_size} exceeds image_size={cfg.image_size}")
    if cfg.hidden_act not in ACTIVATIONS:
        raise ConfigError(f"{family} config hidden_act={cfg.hidden_act!r} is not implemented; "
                          f"supported: {sorted(ACTIVATIONS)}")
    if not (isinstance(cfg.layer_norm_eps, (int, float)) and cfg.layer_norm_eps > 0):
        raise ConfigError(f"{family} config layer_norm_eps must be positive, got {cfg.layer_norm_eps!r}")


def dense(d_in: int, d_out: int, *, bias: bool = True, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=dtype, rngs=rngs)


def layer_norm(cfg, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance (use_fast_variance=False) as torch does: the residual streams have
    # large-mean outlier channels where E[x^2] - E[x]^2 loses float32 digits.
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, use_fast_variance=False,
                         dtype=dtype, param_dtype=dtype, rngs=rngs)


class PatchEmbedding(nnx.Module):
    """A stride-`patch` convolution, written as patchify + one matmul (NHWC)."""

    def __init__(self, patch_size: int, num_channels: int, hidden_size: int, *, bias: bool, dtype, rngs: nnx.Rngs):
        p, c, d = patch_size, num_channels, hidden_size
        self.patch_size = p
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), (p, p, c, d), dtype))
        self.bias = nnx.Param(jnp.zeros((d,), dtype)) if bias else None

    def __call__(self, pixels: jax.Array) -> jax.Array:
        _, h, w, c = pixels.shape  # [B, H, W, C]
        p = self.patch_size
        gh, gw = h // p, w // p
        # A strided conv ignores the pixels past the last whole patch; so do we.
        x = rearrange(pixels[:, : gh * p, : gw * p, :], "b (gh ph) (gw pw) c -> b (gh gw) (ph pw c)",
                             ph=p, pw=p)  # [B, N, p*p*C], row-major patches
        out = x @ self.kernel[...].reshape(p * p * c, -1)  # [B, N, D]
        return out + self.bias[...] if self.bias is not None else out


class Attention(nnx.Module):
    def __init__(self, cfg, *, dtype, attention_impl: str = "auto", rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.implementation = attention_impl
        self.q_proj = dense(d, d, dtype=dtype, rngs=rngs)
        self.k_proj = dense(d, d, dtype=dtype, rngs=rngs)
        self.v_proj = dense(d, d, dtype=dtype, rngs=rngs)
        self.out_proj = dense(d, d, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # x [B, T, D]
        # One [D, 3D] matmul instead of three: fewer, larger GEMMs run faster on every backend.
        kernel = jnp.concatenate([self.q_proj.kernel[...], self.k_proj.kernel[...], self.v_proj.kernel[...]], axis=1)
        bias = jnp.concatenate([self.q_proj.bias[...], self.k_proj.bias[...], self.v_proj.bias[...]])
        qkv = x @ kernel.astype(x.dtype) + bias.astype(x.dtype)  # [B, T, 3D]
        q, k, v = (split_heads(y, self.num_heads) for y in jnp.split(qkv, 3, axis=-1))  # [B, T, N, H] each
        out = attention(q, k, v, implementation=self.implementation)  # [B, T, N, H], scale 1/sqrt(H)
        return self.out_proj(merge_heads(out))


class MLP(nnx.Module):
    def __init__(self, cfg, *, dtype, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = dense(cfg.hidden_size, cfg.intermediate_size, dtype=dtype, rngs=rngs)
        self.fc2 = dense(cfg.intermediate_size, cfg.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nnx.Module):
    """A pre-LN block: x + attn(ln1(x)), then + mlp(ln2(.))."""

    def __init__(self, cfg, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        self.layer_norm1 = layer_norm(cfg, dtype, rngs)
        self.self_attn = Attention(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
        self.layer_norm2 = layer_norm(cfg, dtype, rngs)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nnx.Module):
    def __init__(self, cfg, *, dtype, attention_impl: str, rngs: nnx.Rngs):
        self.layers = nnx.List([EncoderLayer(cfg, dtype=dtype, attention_impl=attention_impl, rngs=rngs)
                                for _ in range(cfg.num_hidden_layers)])
