"""`sauce-jax inspect`: a static feature browser of concepts' SAE features (see `.site`).

Modules: `activations` (the one pass over the images), `before_after` (probe and answers,
clean and unlearned), `graphics` (heatmap PNGs, histogram SVGs), `pages` (the HTML),
`output` (the atomic site folder) and `site` (`build_site`, which ties them together).
"""

from .site import InspectConfig, build_site

__all__ = ["InspectConfig", "build_site"]
