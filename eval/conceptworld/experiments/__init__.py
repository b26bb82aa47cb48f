"""The paper's further experiments on ConceptWorld, one module each: multi, robust, transfer,
features, ablate. A module holds its config and `run`; its command, `sauce-jax experiment
NAME`, is in `sauce_jax.cli.experiments`."""

NAMES: tuple[str, ...] = ("multi", "robust", "transfer", "features", "ablate")
