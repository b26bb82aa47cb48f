"""Which tokens of a hooked hidden state become SAE training activations.

`last` is the paper's choice (the last image token), `cls` the class token, `mean` the mean
of the patch tokens, `all` every token, and `random-K` K patch tokens drawn per image.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from sauce_jax.errors import ConfigError

_RANDOM_K = re.compile(r"random-(\d+)")


def check_token_choice(choice: str) -> str:
    m = _RANDOM_K.fullmatch(choice)
    if choice in ("last", "cls", "mean", "all") or (m and int(m.group(1)) >= 1):
        return choice
    raise ConfigError(f"token choice {choice!r} is not one of 'last', 'cls', 'mean', 'all', 'random-K' (K >= 1)")


def tokens_per_image(choice: str, num_tokens: int) -> int:
    """How many activations one image yields."""
    if choice == "all":
        return num_tokens
    m = _RANDOM_K.fullmatch(choice)
    if m:
        k = int(m.group(1))
        if k > num_tokens - 1:
            raise ConfigError(f"token choice {choice!r} asks for more than the {num_tokens - 1} patch tokens")
        return k
    return 1


def select_tokens(hidden: jax.Array, choice: str, key: jax.Array | None = None) -> jax.Array:
    """[B, T, D] hidden state -> [B * tokens_per_image, D] activations."""
    b, t, d = hidden.shape
    if choice == "last":
        return hidden[:, -1]
    if choice == "cls":
        return hidden[:, 0]
    if choice == "mean":
        return hidden[:, 1:].mean(axis=1)
    if choice == "all":
        return hidden.reshape(b * t, d)
    k = tokens_per_image(choice, t)
    if key is None:
        raise ConfigError(f"token choice {choice!r} needs a random key")
    # k distinct patch tokens per image: the k smallest of t-1 uniform draws.
    picks = jnp.argsort(jax.random.uniform(key, (b, t - 1)), axis=1)[:, :k] + 1  # [B, k]
    return jnp.take_along_axis(hidden, picks[:, :, None], axis=1).reshape(b * k, d)
