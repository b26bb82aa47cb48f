"""The names eq. 6's intervention takes (modes and token sets): jax-free, so the command line
lists them without loading jax. `sauce_jax.intervention` implements each."""

MODES = ("reconstruct", "delta", "gated", "replace")
PAPER_MODES = ("reconstruct", "delta")  # scale by gamma at every masked token; need nothing but gamma
GATED_MODES = ("gated", "replace")  # edit only the tokens where the concept is active
WHERE = ("all", "patch", "cls")
