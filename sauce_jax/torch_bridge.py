"""PyTorch interop: DLPack array conversion, and the SAUCE intervention as a transformers hook.

`to_torch` / `from_torch` move arrays between JAX and PyTorch through DLPack, sharing the
buffer where the device allows (always on CPU). `torch_hook` applies exactly what
`sauce_jax.unlearn` applies (same modes, token masks, padding and per-image ids), but in pure
PyTorch inside a transformers vision tower (CLIP, SigLIP, DINOv2, Mllama) or the tower of a
LLaVA or Mllama model, so a served PyTorch model can be unlearned without running JAX at
inference. The PyTorch side lives in `sauce_jax.modeling_sauce`, which `sauce-jax export`
copies into exported models.

Hidden-state index i follows transformers' `output_hidden_states` (0 = after CLIP's
pre-layernorm, SigLIP's and DINOv2's embeddings, Mllama's local-transformer input; i = output
of block i - 1, negative from the end; Mllama counts its local, then its global blocks). The
hook rewrites state i before block i reads it, and the rewritten value is what transformers
returns as `hidden_states[i]`, as in our JAX encoder. To get that, the rewrite is a forward
hook on the module that *produces* state i (`pre_layrnorm` or `embeddings` for i = 0, block
i - 1 otherwise; for Mllama's state 0, a pre-hook on the local transformer), put first in the
hook order: transformers 5 records hidden states with forward hooks on the blocks
(the block's input for 0, its output after), transformers 4 from the blocks' return values,
and both then see the rewritten tensor. A forward *pre*-hook on block i would not do: the
recorded state i is block i - 1's output, taken before the pre-hook runs.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import numpy as np

from sauce_jax.errors import ConfigError, InputError, SauceError
from sauce_jax.intervention import Edit, resolve_edit, token_mask
from sauce_jax.sae import SAE

try:
    import torch
except ImportError as exc:  # pragma: no cover - the torch extra is optional
    raise SauceError("sauce_jax.torch_bridge needs torch: pip install 'sauce-jax[torch]'") from exc

from sauce_jax.modeling_sauce import SauceIntervention, Tower, find_tower, register_intervention

__all__ = ["TorchHook", "clip_vision_tower", "from_torch", "intervention_module", "to_torch", "torch_hook",
           "vision_tower"]


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


# -- finding the vision tower in a transformers model -------------------------------------
def vision_tower(model: Any) -> Tower:
    """The vision tower of a transformers CLIP, SigLIP, DINOv2, LLaVA or Mllama model, as a
    `sauce_jax.modeling_sauce.Tower` (family, width, the module producing each hidden state).
    Raises ConfigError for anything else."""
    try:
        return find_tower(model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def clip_vision_tower(model: Any) -> torch.nn.Module:
    """The module of a transformers CLIP or LLaVA model that holds `pre_layrnorm` and
    `encoder.layers` (the CLIP vision transformer). Raises ConfigError for anything else."""
    tower = vision_tower(model)
    if tower.family != "clip":
        raise ConfigError(f"{type(model).__name__}'s vision tower {type(tower.module).__name__} is not a CLIP "
                          "vision transformer")
    return tower.module


# -- the intervention in torch ------------------------------------------------------------
class TorchHook:
    """The SAUCE intervention on one hidden state, in PyTorch. Build it with `torch_hook`.

    Call it on a hidden state [B, T, D] to get the rewritten state, or `register` it on a
    model. The arithmetic is `sauce_jax.modeling_sauce.SauceIntervention` (what an exported
    model runs), built once with the SAE params as float32 buffers and copied once per device
    it is used on.
    """

    def __init__(self, sae: SAE, edit: Edit, mode: str, where: str):
        self.config = sae.config
        self.mode, self.where = mode, where
        self.default_layer = edit.layer
        self.feature_ids = edit.ids  # int32 [k] or [B, k]; -1 pads
        self.module = intervention_module(sae, edit.ids, edit.gamma, mode, where, threshold=edit.threshold,
                                          targets=edit.targets)
        self._on_device: dict[torch.device, SauceIntervention] = {}

    def _on(self, device: torch.device) -> SauceIntervention:
        """The intervention's buffers on `device` (cached: one copy per device)."""
        if device not in self._on_device:
            self._on_device[device] = copy.deepcopy(self.module).to(device)
        return self._on_device[device]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """The rewritten hidden state [B, T, D] (same dtype as `hidden`)."""
        if hidden.ndim != 3 or hidden.shape[-1] != self.config.d_in:
            raise InputError(f"the hooked hidden state has shape {tuple(hidden.shape)}, "
                             f"expected [B, T, D={self.config.d_in}]")
        try:
            return self._on(hidden.device)(hidden)
        except ValueError as exc:  # a batch that does not fit per-image ids or gamma
            raise InputError(str(exc)) from exc

    # Registration ------------------------------------------------------------------------
    def register(self, model: Any, layer: int | None = None):
        """Apply the intervention inside `model` until the returned handle's `.remove()`.

        Args:
          model: a transformers CLIP (CLIPVisionModel, CLIPVisionModelWithProjection, CLIPModel's
            vision half), SigLIP vision, DINOv2 or Mllama vision model, a LLaVA
            (LlavaForConditionalGeneration / LlavaModel) or an MllamaForConditionalGeneration /
            MllamaModel, or their vision transformer module.
          layer: hidden-state index (sauce-jax's and transformers' `output_hidden_states`
            indexing, negative from the end; for Mllama through the local then the global
            blocks); defaults to the FeatureSet's layer, else -2, as `unlearn` does.

        Returns a torch `RemovableHandle` (also a context manager).
        """
        tower = vision_tower(model)
        layer = self.default_layer if layer is None else layer
        layer = -2 if layer is None else layer
        check_layer(tower, layer)
        if tower.width != self.config.d_in:
            raise InputError(f"SAE d_in={self.config.d_in} differs from the width {tower.width} of "
                             f"{type(model).__name__}'s vision tower")
        return register_intervention(model, self, int(layer), tower)


def check_layer(tower: Tower, layer: Any) -> int:
    """`layer` as a non-negative hidden-state index of `tower`; ConfigError when out of range."""
    n = tower.num_states
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
        raise ConfigError(f"hidden-state index {layer!r} is out of range for {n} hidden states [-{n}, {n - 1}]")
    return int(layer) % n


def intervention_module(sae: SAE, feature_ids: np.ndarray, gamma: Any, mode: str, where: str,
                        threshold: Any = 0.0, targets: Any = None) -> SauceIntervention:
    """A `SauceIntervention` holding `sae`'s params (float32), the ids, gamma and, for the
    modes that use them, the gate threshold and targets (all checked by the caller)."""
    ids = np.asarray(feature_ids)
    module = SauceIntervention(sae.config.d_in, sae.config.d_sae, sae.config.architecture, sae.config.k,
                               num_ids=ids.shape[-1], mode=mode, where=where,
                               per_image=ids.shape[0] if ids.ndim == 2 else None)
    module.gamma = torch.from_numpy(np.array(gamma, np.float32))  # scalar or [B]
    module.feature_ids = torch.from_numpy(ids.astype(np.int64))
    if "gate_threshold" in module._buffers:
        module.gate_threshold = torch.from_numpy(np.array(threshold, np.float32))  # scalar or [B]
    if "targets" in module._buffers:
        module.targets = torch.from_numpy(np.array(np.zeros(ids.shape) if targets is None else targets, np.float32))
    for name, value in sae.params.items():
        if name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            setattr(module, name, torch.from_numpy(np.array(jax.device_get(value), np.float32)))
    return module


def torch_hook(sae: SAE, features: Any, gamma: float | Any | None = None, mode: str = "reconstruct",
               where: str = "all", threshold: Any = None, targets: Any = None) -> TorchHook:
    """The SAUCE intervention of `sauce_jax.unlearn`, for a transformers PyTorch model.

    Args:
      sae: the SAE trained on the hooked layer.
      features: a FeatureSet (checked against the SAE's fingerprint), a list of them (their
        union), feature ids [k], or ids [B, k] (one set per image, -1 pads).
      gamma: the scale of the selected activations; defaults to the FeatureSet's, else -0.5.
        A scalar, or one value per image [B].
      mode: "reconstruct" (the paper), "delta" (keeps the SAE's reconstruction error), "gated"
        or "replace" (only at the tokens where the concept is active), as in `unlearn`.
      where: "all" tokens, "patch" tokens only, or the "cls" token only.
      threshold, targets: the gate threshold (gated, replace) and the target latents
        (replace), as `unlearn` takes them.

    Returns a `TorchHook`: `hook.register(model, layer)` applies it, `hook(hidden)` computes it.
    No JAX runs at inference.
    """
    token_mask(1, where)  # raises ConfigError for an unknown token mask
    edit = resolve_edit(features, sae, mode=mode, gamma=gamma, threshold=threshold, targets=targets)
    if sae.config.has_threshold and "threshold" not in sae.params:
        raise ConfigError("a batchtopk SAE needs its inference 'threshold' to be applied per image")
    return TorchHook(sae, edit, mode, where)
