"""`sauce-jax inspect`: a static feature browser of concepts' SAE features (see `.site`).

Modules: `config` (`InspectConfig`), `activations` (the one pass over the images),
`before_after` (probe and answers, clean and unlearned), `graphics` (heatmap PNGs, histogram
SVGs), `pages` (the HTML), `output` (the atomic site folder) and `site` (`build_site`, which
ties them together). The names load on first use, so the command line's parser stays jax-free.
"""

from __future__ import annotations

import importlib

_LAZY = {"InspectConfig": "sauce_jax.eval.inspect.config", "build_site": "sauce_jax.eval.inspect.site"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sauce_jax.eval.inspect' has no attribute {name!r}")
