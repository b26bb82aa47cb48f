"""`SAEConfig`, the shape and loss of an SAE: a plain dataclass without jax, so the command
line lists its defaults and choices without loading jax (`sauce_jax.sae` re-exports it)."""

from __future__ import annotations

import dataclasses

import numpy as np

from sauce_jax.errors import ConfigError

ARCHITECTURES = ("standard", "topk", "batchtopk")


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Shape and loss of an SAE. Hashable: it is a static argument of the jitted functions."""

    d_in: int  # width of the hooked activations
    d_sae: int  # number of features (paper: 64 * d_in)
    architecture: str = "standard"  # one of ARCHITECTURES
    k: int | None = None  # active latents per token for topk / batchtopk
    l1_coefficient: float = 8e-5  # alpha of eq. 3 (standard only)
    l1_decoder_norm: bool = False  # weight |z_i| by ||W_dec[i]|| (SAELens' standard SAE)
    aux_k: int | None = None  # dead latents used by AuxK; None = d_in // 2 (Gao et al.)
    aux_coefficient: float = 1 / 32  # weight of the AuxK loss

    def __post_init__(self):
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"SAE {name} must be a positive integer, got {value!r}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"SAE architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        if self.uses_k:
            if self.k is None or not 1 <= self.k <= self.d_sae:
                raise ConfigError(f"{self.architecture} SAE needs 1 <= k <= d_sae={self.d_sae}, got k={self.k!r}")
        if self.l1_coefficient < 0 or self.aux_coefficient < 0:
            raise ConfigError("SAE loss coefficients must be >= 0")

    # What the architecture implies, asked here so no module compares architecture strings.
    @property
    def uses_l1(self) -> bool:
        """The standard ReLU SAE: sparsity comes from eq. 3's L1 penalty; there is no k."""
        return self.architecture == "standard"

    @property
    def uses_k(self) -> bool:
        """TopK or BatchTopK: k active latents per token (BatchTopK: on average over a batch)."""
        return not self.uses_l1

    @property
    def is_topk(self) -> bool:
        """TopK: exactly the k largest latents of every token survive."""
        return self.architecture == "topk"

    @property
    def has_threshold(self) -> bool:
        """BatchTopK: a learned per-feature `threshold` parameter replaces the batch at inference."""
        return self.architecture == "batchtopk"

    @property
    def uses_auxk(self) -> bool:
        return self.uses_k and self.aux_coefficient > 0

    @property
    def resolved_aux_k(self) -> int:
        return min(self.aux_k or max(self.d_in // 2, 1), self.d_sae)
