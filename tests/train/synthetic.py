"""Synthetic activations with a planted sparse dictionary, shared by the training tests."""

from __future__ import annotations

import numpy as np


def planted(n=20000, d=32, atoms=64, active=3, noise=0.01, seed=0):
    """x = sum of `active` random unit atoms with positive coefficients, plus noise.
    Returns (activations [n, d] float32, atoms [atoms, d])."""
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    picks = np.argsort(rng.random((n, atoms)), axis=1)[:, :active]
    codes = np.zeros((n, atoms))
    np.put_along_axis(codes, picks, rng.exponential(1.0, (n, active)) + 0.5, axis=1)
    x = codes @ dictionary + noise * rng.standard_normal((n, d))
    return x.astype(np.float32), dictionary


def recovered_fraction(decoder, dictionary, threshold=0.9) -> float:
    """Share of planted atoms that some decoder row matches with cosine >= threshold."""
    rows = np.asarray(decoder, np.float64)
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return float(((dictionary @ rows.T).max(axis=1) >= threshold).mean())
