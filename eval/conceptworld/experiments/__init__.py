"""The paper's further experiments on ConceptWorld, one module and one command each
(`sauce-jax experiment NAME`): multi, robust, transfer, features, ablate."""

NAMES: tuple[str, ...] = ("multi", "robust", "transfer", "features", "ablate")  # each module registers itself
