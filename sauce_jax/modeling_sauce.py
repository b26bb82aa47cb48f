"""The SAUCE intervention in pure PyTorch, and transformers models that carry it.

This file is self-contained (torch and transformers only): `sauce-jax export` copies it into
the exported model directory, where transformers loads it with `trust_remote_code=True`, so a
serving stack runs the unlearned model without sauce-jax or JAX installed. `sauce_jax.torch_bridge`
builds its `torch_hook` on the same code, so the two cannot drift apart.

The intervention (paper eq. 6) on one hidden state x [B, T, D] at the tokens a mask selects:

    reconstruct: x -> decode(z'),  z'_i = gamma * z_i for i in F, z'_i = z_i otherwise
    delta:       x -> x + sum_{i in F} (gamma - 1) z_i W_dec[i]
    gated:       x -> x + g(x) sum_{i in F} (gamma - 1) z_i W_dec[i]
    replace:     x -> x + g(x) sum_{i in F} (target_i - z_i) W_dec[i]

    with the gate g(x) = 1 if max_{i in F} z_i > threshold else 0 (per token)

Hidden-state index i follows sauce-jax (and transformers' `output_hidden_states`): 0 is the
input of the first block, i the output of block i - 1. For Mllama the index runs through the
local blocks and then the global ones (L + j = output of global block j - 1). The rewrite is a
forward hook on the module that *produces* state i, put first in the hook order, so that
transformers' own output recording sees the rewritten value, as in our JAX encoder.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from transformers import (CLIPVisionModel, Dinov2Model, LlavaForConditionalGeneration, MllamaForConditionalGeneration,
                          SiglipVisionModel)

MODES = ("reconstruct", "delta", "gated", "replace")
GATED_MODES = ("gated", "replace")  # edit only the tokens where the concept is active
WHERE = ("all", "patch", "cls")
ACTIVATIONS = ("standard", "topk", "batchtopk")


def token_mask(num_tokens: int, where: str, device: Any = None) -> torch.Tensor:
    """[T] bool: every token, the patch tokens only (all but 0), or the class token only (0)."""
    if where not in WHERE:
        raise ValueError(f"token mask {where!r} is not one of {WHERE}")
    mask = torch.ones(num_tokens, dtype=torch.bool, device=device)
    if where == "patch":
        mask[0] = False
    elif where == "cls":
        mask[1:] = False
    return mask


class SauceIntervention(torch.nn.Module):
    """One SAE and a feature set as buffers; `forward(hidden)` returns the rewritten state.

    Args:
      d_in, d_sae: the SAE's width and number of latents.
      architecture: "standard" (ReLU), "topk" (k largest per token) or "batchtopk" (a learned
        per-latent threshold at inference).
      k: TopK's active latents per token (None otherwise).
      num_ids: the feature set's size (the last axis of `feature_ids`).
      per_image: feature ids [B, k] and gamma [B] (one set per image) instead of [k] and [].
      mode, where: as in `sauce_jax.unlearn`.

    Buffers (persistent, so `save_pretrained` writes them): W_enc [D, S], b_enc [S], W_dec [S, D],
    b_dec [D], threshold [S] (batchtopk), feature_ids int64 [k] or [B, k] (-1 pads) and gamma;
    for the gated modes gate_threshold ([] or [B]), and for replace targets (the ids' shape).
    Only the buffers a mode uses exist, so the older modes' weights files are unchanged.
    """

    def __init__(self, d_in: int, d_sae: int, architecture: str = "standard", k: int | None = None,
                 num_ids: int = 1, mode: str = "reconstruct", where: str = "all", per_image: int | None = None):
        super().__init__()
        if architecture not in ACTIVATIONS or mode not in MODES or where not in WHERE:
            raise ValueError(f"unknown SAE architecture {architecture!r}, mode {mode!r} or token mask {where!r}")
        self.d_in, self.d_sae, self.architecture, self.k = int(d_in), int(d_sae), architecture, k
        self.mode, self.where = mode, where
        f32 = dict(dtype=torch.float32)  # whatever the default dtype a model is built under
        self.register_buffer("W_enc", torch.zeros(d_in, d_sae, **f32))
        self.register_buffer("b_enc", torch.zeros(d_sae, **f32))
        self.register_buffer("W_dec", torch.zeros(d_sae, d_in, **f32))
        self.register_buffer("b_dec", torch.zeros(d_in, **f32))
        if architecture == "batchtopk":
            self.register_buffer("threshold", torch.zeros(d_sae, **f32))
        ids_shape = (num_ids,) if per_image is None else (per_image, num_ids)
        self.register_buffer("feature_ids", torch.full(ids_shape, -1, dtype=torch.long))
        self.register_buffer("gamma", torch.zeros(() if per_image is None else (per_image,), **f32))
        if mode in GATED_MODES:
            self.register_buffer("gate_threshold", torch.zeros(() if per_image is None else (per_image,), **f32))
        if mode == "replace":
            self.register_buffer("targets", torch.zeros(ids_shape, **f32))

    def _apply(self, fn, recurse=True):
        """`.half()`, `.to(dtype)` and the like move the buffers but keep them float32: the
        SAE computes in float32, as in JAX, whatever dtype the model around it runs in."""
        super()._apply(fn, recurse)
        for name, buffer in self._buffers.items():
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != torch.float32:
                self._buffers[name] = buffer.float()
        return self

    def spec(self) -> dict:
        """The constructor's arguments, as the exported config.json records them."""
        per_image = None if self.feature_ids.ndim == 1 else int(self.feature_ids.shape[0])
        return dict(d_in=self.d_in, d_sae=self.d_sae, architecture=self.architecture, k=self.k,
                    num_ids=int(self.feature_ids.shape[-1]), mode=self.mode, where=self.where, per_image=per_image)

    # The parts of the computation -------------------------------------------------------
    def _selected(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image ids [B, k] (padding clipped to 0) and validity [B, k]."""
        ids = self.feature_ids
        if ids.ndim == 2 and ids.shape[0] not in (1, batch):
            raise ValueError(f"per-image feature ids are for {ids.shape[0]} images, the batch has {batch}")
        ids = ids.reshape(-1, ids.shape[-1]).expand(batch, -1)
        return ids.clamp(0, self.d_sae - 1), ids >= 0

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The SAE's activation at inference: ReLU, then TopK per token or the BatchTopK threshold."""
        relu = torch.relu(pre)
        if self.architecture == "topk":
            top = torch.topk(pre, self.k, dim=-1).indices
            keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(-1, top, True)
            return torch.where(keep, relu, torch.zeros_like(relu))
        if self.architecture == "batchtopk":
            return torch.where(relu > self.threshold, relu, torch.zeros_like(relu))
        return relu

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae] of x [..., d_in] (float32)."""
        return self._activate((x - self.b_dec) @ self.W_enc + self.b_enc)

    def selected_latents(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The latents of the selected ids [B, k] at every token of x [B, T, D] -> [B, T, k]."""
        b, t, _ = x.shape
        if self.architecture == "topk":
            # Whether a latent survives TopK depends on all pre-activations: encode fully.
            return torch.gather(self.encode(x), -1, ids[:, None, :].expand(b, t, -1))
        w_enc = self.W_enc[:, ids].permute(1, 0, 2)  # [B, D, k]
        z = torch.relu(torch.einsum("btd,bdk->btk", x - self.b_dec, w_enc) + self.b_enc[ids][:, None, :])
        if self.architecture == "batchtopk":
            z = torch.where(z > self.threshold[ids][:, None, :], z, torch.zeros_like(z))
        return z

    def _per_image(self, value: torch.Tensor, batch: int, name: str) -> torch.Tensor:
        """A scalar or one value per image -> float32 [B]."""
        value = value.float()
        if value.ndim == 1 and value.shape[0] not in (1, batch):
            raise ValueError(f"{name} has {value.shape[0]} values (one per image), the batch has {batch}")
        return value.expand(batch)

    def _per_image_targets(self, batch: int, k: int) -> torch.Tensor:
        targets = self.targets.float()
        return targets.reshape(-1, k).expand(batch, k)  # [k] or [1 | B, k] -> [B, k]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The rewritten hidden state [B, T, D] (same dtype as `hidden`)."""
        if hidden.ndim != 3 or hidden.shape[-1] != self.d_in:
            raise ValueError(f"the hooked hidden state has shape {tuple(hidden.shape)}, expected [B, T, D={self.d_in}]")
        b, t, _ = hidden.shape
        x = hidden.float()  # the SAE runs in float32, as in JAX
        ids, valid = self._selected(b)  # [B, k]
        gamma = self._per_image(self.gamma, b, "gamma")  # [B]
        mask = token_mask(t, self.where, hidden.device)[None, :].expand(b, t)  # [B, T]
        if self.mode == "reconstruct":
            # Per-image scale of every latent: gamma on F, 1 elsewhere. [B, d_sae]. A max-scatter,
            # as in JAX: padding (clipped to id 0, invalid) must not clear a real id 0.
            hit = torch.zeros(b, self.d_sae, dtype=torch.int8, device=hidden.device)
            hit = hit.scatter_reduce(1, ids, valid.to(torch.int8), reduce="amax").bool()
            scale = torch.where(hit, gamma[:, None], torch.ones((), device=hidden.device))
            z = self.encode(x) * scale[:, None, :]  # [B, T, d_sae]
            edited = z @ self.W_dec + self.b_dec
        else:
            z = self.selected_latents(x, ids)  # [B, T, k]
            if self.mode == "replace":
                coeff = self._per_image_targets(b, ids.shape[-1])[:, None, :] - z
            else:
                coeff = (gamma[:, None, None] - 1.0) * z
            coeff = torch.where(valid[:, None, :], coeff, torch.zeros_like(coeff))  # [B, T, k]
            edited = x + torch.einsum("btk,bkd->btd", coeff, self.W_dec[ids])  # W_dec[ids]: [B, k, D]
            if self.mode in GATED_MODES:
                # Only where the concept is active: a token none of F fires on stays bit-identical.
                threshold = self._per_image(self.gate_threshold, b, "the gate threshold")  # [B]
                mask = mask & (valid[:, None, :] & (z > threshold[:, None, None])).any(dim=-1)
        return torch.where(mask[:, :, None], edited.to(hidden.dtype), hidden)


# -- where the vision tower's hidden states are produced ----------------------------------
class Tower:
    """A transformers vision tower seen as sauce-jax sees it: its family, width and the module
    producing each hidden state. `producer(i)` is (module, "output") for a forward hook on the
    module's output, or (module, "input") for a pre-hook on its first argument."""

    def __init__(self, family: str, module: torch.nn.Module, width: int, first: tuple, blocks: list):
        self.family, self.module, self.width = family, module, int(width)
        self._first, self._blocks = first, blocks
        self.num_states = len(blocks) + 1

    def producer(self, index: int) -> tuple[torch.nn.Module, str]:
        return self._first if index == 0 else (self._blocks[index - 1], "output")


def _module_list(module: Any, path: str) -> list | None:
    for name in path.split("."):
        module = getattr(module, name, None)
    return list(module) if isinstance(module, torch.nn.ModuleList) else None


def _width(module: Any) -> int:
    return int(module.config.hidden_size)


def as_tower(module: Any) -> Tower | None:
    """The `Tower` of a CLIP, SigLIP, DINOv2 or Mllama vision transformer module, else None.
    CLIP is told from SigLIP by its pre-layernorm; both hold `embeddings` and `encoder.layers`."""
    if not isinstance(module, torch.nn.Module):
        return None
    layers, global_layers = _module_list(module, "transformer.layers"), _module_list(module, "global_transformer.layers")
    if layers is not None and global_layers is not None and hasattr(module, "layernorm_pre"):
        # Mllama: state 0 is the local transformer's (padded) input, then local, then global blocks.
        return Tower("mllama", module, _width(module), (module.transformer, "input"), layers + global_layers)
    layers = _module_list(module, "encoder.layers")
    if layers is not None and isinstance(getattr(module, "pre_layrnorm", None), torch.nn.LayerNorm):
        return Tower("clip", module, module.pre_layrnorm.normalized_shape[-1], (module.pre_layrnorm, "output"), layers)
    embeddings = getattr(module, "embeddings", None)
    if layers is not None and isinstance(embeddings, torch.nn.Module) and hasattr(module, "post_layernorm"):
        return Tower("siglip", module, _width(module), (embeddings, "output"), layers)
    layers = _module_list(module, "encoder.layer")
    if layers is not None and isinstance(embeddings, torch.nn.Module) and hasattr(module, "layernorm"):
        return Tower("dinov2", module, _width(module), (embeddings, "output"), layers)
    return None


# Where a tower sits: CLIP/SigLIP vision models' vision_model; LLaVA's vision_tower (on the
# model itself before transformers 4.52, on `.model` since); Mllama's vision_model (the same).
_TOWER_PATHS = ("vision_model", "vision_tower", "model.vision_tower", "model.vision_model")


def find_tower(model: Any) -> Tower:
    """The vision tower of a transformers CLIP, SigLIP, DINOv2, LLaVA or Mllama model (or of
    the tower module itself). Raises ValueError naming the model for anything else."""
    frontier = [model] if isinstance(model, torch.nn.Module) else []
    seen = []
    for _ in range(3):  # LlavaForConditionalGeneration.model.vision_tower.vision_model is the deepest
        for module in frontier:
            tower = as_tower(module)
            if tower is not None:
                return tower
        nxt = []
        for module in frontier:
            for path in _TOWER_PATHS:
                sub = module
                for name in path.split("."):
                    sub = getattr(sub, name, None)
                if isinstance(sub, torch.nn.Module):
                    nxt.append(sub)
        frontier = nxt
        seen += frontier
    if seen:
        raise ValueError(f"{type(model).__name__}'s vision tower {type(seen[-1]).__name__} is not a CLIP, SigLIP, "
                         "DINOv2 or Mllama vision transformer")
    raise ValueError(f"{type(model).__name__} is not a transformers CLIP, SigLIP, DINOv2, LLaVA or Mllama model "
                     "(no vision tower found)")


def register_intervention(model: Any, rewrite: Callable[[torch.Tensor], torch.Tensor], layer: int,
                          tower: Tower | None = None):
    """Rewrite hidden state `layer` of `model`'s vision tower with `rewrite` (a [B, T, D] ->
    [B, T, D] function) until the returned handle's `.remove()`. `layer` must be in range."""
    tower = tower or find_tower(model)
    module, kind = tower.producer(int(layer) % tower.num_states)
    if kind == "input":
        def rewrite_input(mod, args, kwargs):
            if args:
                return (rewrite(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": rewrite(kwargs["hidden_states"])}

        return module.register_forward_pre_hook(rewrite_input, with_kwargs=True, prepend=True)

    def rewrite_output(mod, args, output):
        # transformers 4's blocks return a tuple (hidden, attentions?), 5's a tensor.
        if isinstance(output, tuple):
            return (rewrite(output[0]), *output[1:])
        return rewrite(output)

    # prepend: run before transformers' own output-recording hooks, so they record the rewrite.
    return module.register_forward_hook(rewrite_output, prepend=True)


# -- transformers models carrying the intervention -----------------------------------------
def install_sauce(model: torch.nn.Module) -> None:
    """Add `model.sauce` (a `SauceIntervention` shaped by `config.sauce`) and hook it at
    `config.sauce["layer"]`. The buffers are filled by `from_pretrained` from the weights file."""
    spec = dict(getattr(model.config, "sauce", None) or {})
    if "layer" not in spec:
        raise ValueError(f"{type(model).__name__}'s config has no 'sauce' entry: not a sauce-jax export")
    layer = spec.pop("layer")
    spec.pop("concepts", None)
    model.sauce = SauceIntervention(**spec)
    model._sauce_handle = register_intervention(model, model.sauce, layer)


def _sauce_class(base: type) -> type:
    """`base` with the intervention: same weights, config and forward, plus `sauce.*` buffers."""

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        install_sauce(self)

    keep = list(getattr(base, "_keep_in_fp32_modules", None) or [])
    cls = type(f"Sauce{base.__name__}", (base,), {
        "__init__": __init__,
        "__doc__": f"{base.__name__} with a SAUCE intervention on its vision tower (see `config.sauce`).",
        "__module__": __name__,
        # The SAE stays float32 whatever dtype the model is loaded in: it computes in float32.
        "_keep_in_fp32_modules": keep + ["sauce"],
        # transformers 5 renames checkpoint keys (e.g. LLaVA's legacy `language_model.lm_head`)
        # only for its own classes; this one loads and saves exactly as `base` does.
        "is_custom_code": classmethod(lambda cls: False),
    })
    _share_conversions(cls, base)
    return cls


def _share_conversions(cls: type, base: type) -> None:
    """Give `cls` the key renamings transformers 5 keeps for `base` by class name (e.g.
    DINOv2's legacy attention names); transformers 4 inherits `_checkpoint_conversion_mapping`."""
    try:
        from transformers.conversion_mapping import (get_checkpoint_conversion_mapping,
                                                     register_checkpoint_conversion_mapping)
    except ImportError:
        return
    mapping = get_checkpoint_conversion_mapping(base.__name__)
    if mapping is not None:
        register_checkpoint_conversion_mapping(cls.__name__, mapping, overwrite=True)


SauceLlavaForConditionalGeneration = _sauce_class(LlavaForConditionalGeneration)
SauceMllamaForConditionalGeneration = _sauce_class(MllamaForConditionalGeneration)
SauceCLIPVisionModel = _sauce_class(CLIPVisionModel)
SauceSiglipVisionModel = _sauce_class(SiglipVisionModel)
SauceDinov2Model = _sauce_class(Dinov2Model)

# The checkpoint class each exported class extends, by the checkpoint's model_type, and the
# Auto classes an export maps to it.
EXPORTS = {
    "llava": (SauceLlavaForConditionalGeneration, ("AutoModelForImageTextToText",)),
    "mllama": (SauceMllamaForConditionalGeneration, ("AutoModelForImageTextToText",)),
    "clip_vision_model": (SauceCLIPVisionModel, ("AutoModel",)),
    "siglip_vision_model": (SauceSiglipVisionModel, ("AutoModel",)),
    "dinov2": (SauceDinov2Model, ("AutoModel",)),
}
