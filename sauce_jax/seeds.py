"""Random streams named by ints and strings: the same words give the same numbers on any
machine and Python version (names go through crc32, never Python's salted `hash`)."""

from __future__ import annotations

import zlib

import numpy as np


def key(*words: int | str) -> int:
    """A stable 32-bit key from ints and names."""
    value = 0
    for word in words:
        part = zlib.crc32(word.encode()) if isinstance(word, str) else int(word) & 0xFFFFFFFF
        value = zlib.crc32(part.to_bytes(4, "little"), value)
    return value


def rng_for(*words: int | str) -> np.random.Generator:
    """numpy's PCG64 seeded with `key(*words)`."""
    return np.random.Generator(np.random.PCG64(key(*words)))
