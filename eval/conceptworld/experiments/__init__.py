"""The paper's further experiments on ConceptWorld, one module and one command each
(`sauce-jax experiment NAME`): multi, robust, transfer, features, ablate."""

NAMES: tuple[str, ...] = ("ablate",)  # each experiment module adds its name here
