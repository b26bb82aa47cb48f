"""Training hyperparameters (paper defaults) and their validation."""

from __future__ import annotations

import dataclasses

from sauce_jax.errors import ConfigError

COMPUTE_DTYPES = ("float32", "bfloat16")
DECODES = ("auto", "dense", "sparse")
LR_DECAYS = ("none", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train an SAE. Defaults are the paper's recipe (Section 4 / Appendix)."""

    lr: float = 4e-4  # Adam learning rate
    batch_size: int = 1024  # activations per step, over all devices and processes
    steps: int | None = None  # total steps; when None, `epochs` decides
    epochs: float = 2.0  # passes over the activations (paper: 2 epochs of ImageNet-1k)
    lr_warmup_steps: int = 0  # linear warm-up from 0 to lr
    lr_decay: str = "none"  # after warm-up: constant, or linear/cosine decay to lr_final
    lr_final_fraction: float = 0.0  # lr at the last step as a fraction of lr (with a decay)
    l1_warmup_steps: int = 0  # linear warm-up of alpha from 0 (standard SAEs)
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    compute_dtype: str = "float32"  # matmul inputs; params and optimizer state stay float32
    normalize_decoder: bool = False  # renormalize decoder rows to unit norm after each step
    model_parallel: int = 1  # devices the feature axis (d_sae) is split over; the rest split the batch
    # topk/batchtopk: "sparse" works from the k active latents of each token only (decoder, its
    # gradient and the encoder's gradient), "dense" multiplies the whole [batch, d_sae] latents;
    # "auto" picks the cheaper for d_sae, k and the backend (`sauce_jax.sae.sparse_pays`), and dense
    # when the feature axis is split over devices. The results are the same either way.
    decode: str = "auto"
    sparse_decode: bool = False  # the older switch: True means decode="sparse"
    # topk: None selects the k latents exactly (`lax.top_k`); a recall in (0, 1) uses
    # `lax.approx_max_k` with that recall_target, which is faster on TPUs (exact on CPU and GPU).
    topk_recall: float | None = None
    dead_after_steps: int = 1000  # a latent silent this many steps counts as dead (AuxK, metrics)
    threshold_decay: float = 0.99  # batchtopk: EMA decay of the inference threshold
    geometric_median_samples: int = 4096  # activations used to initialise b_dec
    decoder_init_norm: float | None = None  # initial decoder row norm; None: sae.DECODER_INIT_NORM (1)
    seed: int = 0
    log_every: int = 100  # steps between logged metrics
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 2

    def __post_init__(self):
        def positive(name, value, allow_zero=False):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
            if not ok:
                raise ConfigError(f"train config {name}={value!r} must be {'>= 0' if allow_zero else '> 0'}")

        positive("lr", self.lr)
        if self.decoder_init_norm is not None and not self.decoder_init_norm > 0:
            raise ConfigError(f"train config decoder_init_norm={self.decoder_init_norm!r} must be > 0 (or None)")
        positive("batch_size", self.batch_size)
        positive("epochs", self.epochs)
        positive("log_every", self.log_every)
        positive("checkpoint_every", self.checkpoint_every)
        positive("keep_checkpoints", self.keep_checkpoints)
        positive("dead_after_steps", self.dead_after_steps)
        positive("geometric_median_samples", self.geometric_median_samples)
        positive("model_parallel", self.model_parallel)
        for name in ("lr_warmup_steps", "l1_warmup_steps", "lr_final_fraction"):
            positive(name, getattr(self, name), allow_zero=True)
        if self.steps is not None:
            positive("steps", self.steps)
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"train config compute_dtype={self.compute_dtype!r} is not one of {COMPUTE_DTYPES}")
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"train config lr_decay={self.lr_decay!r} is not one of {LR_DECAYS}")
        if self.decode not in DECODES:
            raise ConfigError(f"train config decode={self.decode!r} is not one of {DECODES}")
        if self.topk_recall is not None and not (isinstance(self.topk_recall, (int, float))
                                                 and not isinstance(self.topk_recall, bool)
                                                 and 0 < self.topk_recall <= 1):
            raise ConfigError(f"train config topk_recall={self.topk_recall!r} must be None or in (0, 1]")
        if not 0 <= self.threshold_decay < 1:
            raise ConfigError(f"train config threshold_decay={self.threshold_decay!r} must be in [0, 1)")

    # Fields that may change between a run and its --resume without changing what is computed.
    # (dense and sparse decoding compute the same step.)
    RESUMABLE_CHANGES = ("log_every", "checkpoint_every", "keep_checkpoints", "model_parallel", "decode",
                         "sparse_decode")

    def sparse(self, sae_config) -> bool:
        """Whether the step decodes sparsely for `sae_config` on JAX's default backend."""
        from sauce_jax.sae import sparse_pays

        if not sae_config.uses_k or self.decode == "dense":
            return False
        if self.decode == "sparse" or self.sparse_decode:
            return True
        return self.model_parallel == 1 and sparse_pays(sae_config)
