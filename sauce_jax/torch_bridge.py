"""PyTorch interop: DLPack array conversion, and the SAUCE intervention as a transformers hook.

`to_torch` / `from_torch` move arrays between JAX and PyTorch through DLPack, sharing the
buffer where the device allows (always on CPU). `torch_hook` applies exactly what
`sauce_jax.unlearn` applies (same modes, token masks, padding and per-image ids), but in pure
PyTorch inside a transformers CLIP vision tower or LLaVA's vision tower, so a served PyTorch
model can be unlearned without running JAX at inference.

Hidden-state index i follows transformers' `output_hidden_states` (0 = after CLIP's
pre-layernorm, i = output of block i - 1, negative from the end). The hook rewrites state i
before block i reads it, and the rewritten value is what transformers returns as
`hidden_states[i]`, as in our JAX encoder. To get that, the rewrite is a forward hook on the
module that *produces* state i (`pre_layrnorm` for i = 0, block i - 1 otherwise), put first
in the hook order: transformers 5 records hidden states with forward hooks on the blocks
(the block's input for 0, its output after), transformers 4 from the blocks' return values,
and both then see the rewritten tensor. A forward *pre*-hook on block i would not do: the
recorded state i is block i - 1's output, taken before the pre-hook runs.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from sauce_jax.errors import ConfigError, InputError, SauceError
from sauce_jax.intervention import MODES, resolve_features, token_mask
from sauce_jax.sae import SAE

try:
    import torch
except ImportError as exc:  # pragma: no cover - the torch extra is optional
    raise SauceError("sauce_jax.torch_bridge needs torch: pip install 'sauce-jax[torch]'") from exc

__all__ = ["TorchHook", "clip_vision_tower", "from_torch", "to_torch", "torch_hook"]


# -- arrays -------------------------------------------------------------------------------
def _leaf_to_torch(x: Any) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype == jax.numpy.bfloat16:  # ml_dtypes' bfloat16, which torch.from_numpy rejects
            return torch.from_numpy(np.ascontiguousarray(x).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, jax.Array):
        raise InputError(f"to_torch converts JAX or NumPy arrays, got {type(x).__name__}")
    return torch.from_dlpack(x)


def to_torch(x: Any) -> Any:
    """A JAX array (or a pytree of them, e.g. `hidden_states` or an `EncoderOutput`) as torch
    tensors, via DLPack.

    Zero-copy where the device allows (the tensor then shares the JAX buffer: treat it as
    read-only, JAX assumes its arrays never change). Any dtype DLPack carries works,
    bfloat16 included. NumPy arrays (ml_dtypes bfloat16 too) go through `torch.from_numpy`,
    sharing memory when contiguous. None leaves stay None.
    """
    return jax.tree_util.tree_map(_leaf_to_torch, x)


def _leaf_from_torch(t: Any) -> jax.Array:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"from_torch converts torch tensors, got {type(t).__name__}")
    # DLPack refuses tensors that require grad; JAX wants a dense row-major buffer.
    return jax.numpy.from_dlpack(t.detach().contiguous())


def from_torch(t: Any) -> Any:
    """A torch tensor (or a pytree of them) as JAX arrays, via DLPack (zero-copy where the
    device and the tensor's layout allow)."""
    return jax.tree_util.tree_map(_leaf_from_torch, t, is_leaf=lambda v: isinstance(v, torch.Tensor))


# -- finding the CLIP tower in a transformers model ---------------------------------------
# Where a CLIP tower sits: CLIPVisionModel(WithProjection).vision_model and CLIPModel.vision_model
# (a CLIPVisionTransformer in transformers 4, a CLIPVisionModel in 5); LLaVA's vision_tower
# (on the model itself before transformers 4.52, on `.model` since).
_TOWER_PATHS = ("vision_model", "vision_tower", "model.vision_tower")


def _is_clip_tower(module: Any) -> bool:
    encoder = getattr(module, "encoder", None)
    return (isinstance(getattr(module, "pre_layrnorm", None), torch.nn.LayerNorm)
            and isinstance(getattr(encoder, "layers", None), torch.nn.ModuleList))


def _attr_path(module: Any, path: str) -> Any:
    for name in path.split("."):
        module = getattr(module, name, None)
    return module if isinstance(module, torch.nn.Module) else None


def clip_vision_tower(model: Any) -> torch.nn.Module:
    """The module of a transformers CLIP or LLaVA model that holds `pre_layrnorm` and
    `encoder.layers` (the CLIP vision transformer). Raises ConfigError for anything else."""
    frontier = [model] if isinstance(model, torch.nn.Module) else []
    seen = []
    for _ in range(3):  # LlavaForConditionalGeneration.model.vision_tower(.vision_model) is the deepest
        for module in frontier:
            if _is_clip_tower(module):
                return module
        frontier = [sub for module in frontier for path in _TOWER_PATHS
                    if (sub := _attr_path(module, path)) is not None]
        seen += frontier
    if seen:
        raise ConfigError(f"{type(model).__name__}'s vision tower {type(seen[-1]).__name__} is not a CLIP vision "
                          "transformer (sauce-jax hooks CLIP towers: pre_layrnorm and encoder.layers)")
    raise ConfigError(f"{type(model).__name__} is not a transformers CLIP vision model, CLIPModel or LLaVA "
                      "with a CLIP vision tower")


# -- the intervention in torch ------------------------------------------------------------
class TorchHook:
    """The SAUCE intervention on one hidden state, in PyTorch. Build it with `torch_hook`.

    Call it on a hidden state [B, T, D] to get the rewritten state, or `register` it on a
    model. The SAE params are converted to float32 torch tensors once (and copied once per
    device they are used on); the arithmetic follows `sauce_jax.intervention.make_hook`.
    """

    def __init__(self, sae: SAE, feature_ids: np.ndarray, gamma: Any, mode: str, where: str,
                 default_layer: int | None):
        self.config = sae.config
        self.mode, self.where = mode, where
        self.default_layer = default_layer
        self.feature_ids = feature_ids  # int32 [k] or [B, k]; -1 pads
        self._params = {name: torch.from_numpy(np.array(jax.device_get(v), np.float32))
                        for name, v in sae.params.items()}
        self._ids = torch.from_numpy(feature_ids.astype(np.int64))
        self._gamma = torch.as_tensor(np.asarray(gamma, np.float32))  # scalar or [B]
        self._on_device: dict[torch.device, tuple] = {}

    # The parts of the computation -------------------------------------------------------
    def _arrays(self, device: torch.device):
        """SAE params, ids and gamma on `device` (cached: one copy per device)."""
        if device not in self._on_device:
            params = {name: v.to(device) for name, v in self._params.items()}
            self._on_device[device] = (params, self._ids.to(device), self._gamma.to(device))
        return self._on_device[device]

    def _selected(self, ids: torch.Tensor, batch: int):
        """Per-image ids [B, k] (padding clipped to 0) and validity [B, k]."""
        if ids.ndim == 2 and ids.shape[0] not in (1, batch):
            raise InputError(f"per-image feature ids are for {ids.shape[0]} images, the batch has {batch}")
        ids = ids.reshape(-1, ids.shape[-1]).expand(batch, -1)
        return ids.clamp(0, self.config.d_sae - 1), ids >= 0

    def _activate(self, pre: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
        """sae.activate at inference: ReLU, then TopK per token or the BatchTopK threshold."""
        relu = torch.relu(pre)
        if self.config.is_topk:
            top = torch.topk(pre, self.config.k, dim=-1).indices
            keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, top, True)
            return torch.where(keep, relu, torch.zeros_like(relu))
        if self.config.has_threshold:
            return torch.where(relu > threshold, relu, torch.zeros_like(relu))
        return relu

    def _encode(self, p: dict, x: torch.Tensor) -> torch.Tensor:
        return self._activate((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], p.get("threshold"))  # [B, T, d_sae]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """The rewritten hidden state [B, T, D] (same dtype as `hidden`)."""
        if hidden.ndim != 3 or hidden.shape[-1] != self.config.d_in:
            raise InputError(f"the hooked hidden state has shape {tuple(hidden.shape)}, "
                             f"expected [B, T, D={self.config.d_in}]")
        b, t, _ = hidden.shape
        p, ids, gamma = self._arrays(hidden.device)
        x = hidden.float()  # the SAE runs in float32, as in JAX
        ids, valid = self._selected(ids, b)  # [B, k]
        if gamma.ndim == 1 and gamma.shape[0] not in (1, b):
            raise InputError(f"gamma has {gamma.shape[0]} values (one per image), the batch has {b}")
        gamma = gamma.expand(b)  # [B]
        if self.mode == "reconstruct":
            # Per-image scale of every latent: gamma on F, 1 elsewhere. [B, d_sae]. A max-scatter,
            # as in JAX: padding (clipped to id 0, invalid) must not clear a real id 0.
            hit = torch.zeros(b, self.config.d_sae, dtype=torch.int8, device=hidden.device)
            hit = hit.scatter_reduce(1, ids, valid.to(torch.int8), reduce="amax").bool()
            scale = torch.where(hit, gamma[:, None], torch.ones((), device=hidden.device))
            z = self._encode(p, x) * scale[:, None, :]  # [B, T, d_sae]
            edited = z @ p["W_dec"] + p["b_dec"]
        else:
            if self.config.is_topk:
                # Whether a latent survives TopK depends on all pre-activations: encode fully.
                z_all = self._encode(p, x)  # [B, T, d_sae]
                z = torch.gather(z_all, -1, ids[:, None, :].expand(b, t, -1))  # [B, T, k]
            else:
                w_enc = p["W_enc"][:, ids].permute(1, 0, 2)  # [B, D, k]
                pre = torch.einsum("btd,bdk->btk", x - p["b_dec"], w_enc) + p["b_enc"][ids][:, None, :]
                z = torch.relu(pre)
                if self.config.has_threshold:
                    z = torch.where(z > p["threshold"][ids][:, None, :], z, torch.zeros_like(z))
            coeff = torch.where(valid[:, None, :], (gamma[:, None, None] - 1.0) * z, torch.zeros_like(z))  # [B, T, k]
            w_dec = p["W_dec"][ids]  # [B, k, D]
            edited = x + torch.einsum("btk,bkd->btd", coeff, w_dec)
        mask = torch.from_numpy(token_mask(t, self.where)).to(hidden.device)  # [T]
        return torch.where(mask[None, :, None], edited.to(hidden.dtype), hidden)

    # Registration ------------------------------------------------------------------------
    def register(self, model: Any, layer: int | None = None):
        """Apply the intervention inside `model` until the returned handle's `.remove()`.

        Args:
          model: a transformers CLIPVisionModel, CLIPVisionModelWithProjection, CLIPModel (its
            vision half), a CLIP vision transformer module, or a LlavaForConditionalGeneration /
            LlavaModel with a CLIP vision tower.
          layer: hidden-state index (transformers' `output_hidden_states` indexing, negative
            from the end); defaults to the FeatureSet's layer, else -2, as `unlearn` does.

        Returns a torch `RemovableHandle` (also a context manager).
        """
        tower = clip_vision_tower(model)
        blocks = tower.encoder.layers
        n = len(blocks) + 1  # hidden states
        layer = self.default_layer if layer is None else layer
        layer = -2 if layer is None else layer
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
            raise ConfigError(f"hidden-state index {layer!r} is out of range for {n} hidden states [-{n}, {n - 1}]")
        width = tower.pre_layrnorm.normalized_shape[-1]
        if width != self.config.d_in:
            raise InputError(f"SAE d_in={self.config.d_in} differs from the width {width} of "
                             f"{type(model).__name__}'s vision tower")
        index = int(layer) % n
        producer = tower.pre_layrnorm if index == 0 else blocks[index - 1]

        def rewrite(module, args, output):
            # transformers 4's CLIPEncoderLayer returns a tuple (hidden, attentions?), 5's a tensor.
            if isinstance(output, tuple):
                return (self(output[0]), *output[1:])
            return self(output)

        # prepend: run before transformers' own output-recording hooks, so they record the rewrite.
        return producer.register_forward_hook(rewrite, prepend=True)


def torch_hook(sae: SAE, features: Any, gamma: float | Any | None = None, mode: str = "reconstruct",
               where: str = "all") -> TorchHook:
    """The SAUCE intervention of `sauce_jax.unlearn`, for a transformers PyTorch model.

    Args:
      sae: the SAE trained on the hooked layer.
      features: a FeatureSet (checked against the SAE's fingerprint), a list of them (their
        union), feature ids [k], or ids [B, k] (one set per image, -1 pads).
      gamma: the scale of the selected activations; defaults to the FeatureSet's, else -0.5.
        A scalar, or one value per image [B].
      mode: "reconstruct" (the paper) or "delta" (keeps the SAE's reconstruction error).
      where: "all" tokens, "patch" tokens only, or the "cls" token only.

    Returns a `TorchHook`: `hook.register(model, layer)` applies it, `hook(hidden)` computes it.
    No JAX runs at inference.
    """
    if mode not in MODES:
        raise ConfigError(f"intervention mode {mode!r} is not one of {MODES}")
    token_mask(1, where)  # raises ConfigError for an unknown token mask
    ids, set_gamma, set_layer = resolve_features(features, sae)
    gamma = (set_gamma if set_gamma is not None else -0.5) if gamma is None else gamma
    gamma_array = np.asarray(gamma, np.float64)
    if gamma_array.ndim > 1 or not np.isfinite(gamma_array).all():
        raise ConfigError(f"gamma must be a finite scalar or one value per image [B], got {gamma!r}")
    if sae.config.has_threshold and "threshold" not in sae.params:
        raise ConfigError("a batchtopk SAE needs its inference 'threshold' to be applied per image")
    return TorchHook(sae, ids, gamma, mode, where, set_layer)
