"""The site's pictures: patch heatmaps as transparent PNG overlays and activation histograms
as inline SVG (no plotting library, no script needed to draw them)."""

from __future__ import annotations

from html import escape

import numpy as np
from PIL import Image

HEAT_RGB = (255, 40, 0)
MAX_ALPHA = 0.8


def heat_overlay(grid_values: np.ndarray, scale: float, size: int) -> Image.Image:
    """A patch map [g, g] as an RGBA image [size, size]: one square per patch, its opacity the
    activation over `scale` (a feature's largest patch value, so its images compare)."""
    level = np.clip(np.asarray(grid_values, np.float64) / scale, 0, 1) if scale > 0 else np.zeros_like(grid_values)
    g = level.shape[0]
    rgba = np.zeros((g, g, 4), np.uint8)
    rgba[..., :3] = HEAT_RGB
    rgba[..., 3] = np.round(255 * MAX_ALPHA * level).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA").resize((size, size), Image.NEAREST)


def histogram_svg(series: list[tuple[str, np.ndarray, str]], *, bins: int = 30, width: int = 420,
                  height: int = 160, title: str = "") -> str:
    """Histograms of the non-zero values of one or more series (label, values [N], colour),
    on shared bins; the share of zeros (images where the feature does not fire) is in the legend."""
    live = [v[v > 0] for _, v, _ in series]
    top = max([float(v.max()) for v in live if v.size] + [1e-12])
    edges = np.linspace(0.0, top, bins + 1)
    counts = [np.histogram(v, edges)[0] / max(len(full), 1) for v, (_, full, _) in zip(live, series)]  # shares
    peak = max([float(c.max()) for c in counts] + [1e-12])
    left, bottom, plot_w, plot_h = 40, 28, width - 50, height - 48
    parts = [f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img"><title>{escape(title)}</title>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{left + plot_w}" y2="{height - bottom}" stroke="#444"/>',
             f'<line x1="{left}" y1="{height - bottom - plot_h}" x2="{left}" y2="{height - bottom}" stroke="#444"/>']
    bar_w = plot_w / bins / len(series)
    for s, ((label, full, colour), share) in enumerate(zip(series, counts)):
        for i, c in enumerate(share):
            if c > 0:
                h = plot_h * c / peak
                x = left + i * plot_w / bins + s * bar_w
                parts.append(f'<rect x="{x:.1f}" y="{height - bottom - h:.1f}" width="{max(bar_w - 0.5, 0.5):.1f}" '
                             f'height="{h:.1f}" fill="{colour}"><title>{escape(label)}: {100 * c:.1f}% in '
                             f'[{edges[i]:.3g}, {edges[i + 1]:.3g})</title></rect>')
        zeros = float(np.mean(full <= 0)) if len(full) else 0.0
        parts.append(f'<text x="{left + 6 + 190 * s}" y="12" font-size="11" fill="{colour}">{escape(label)}: '
                     f'{len(full)} images, {100 * zeros:.0f}% zero</text>')
    parts += [f'<text x="{left}" y="{height - 8}" font-size="10">0</text>',
              f'<text x="{left + plot_w}" y="{height - 8}" font-size="10" text-anchor="end">{top:.3g}</text>',
              f'<text x="{left + plot_w / 2}" y="{height - 8}" font-size="10" text-anchor="middle">activation</text>',
              f'<text x="4" y="{height - bottom - plot_h + 8}" font-size="10">{100 * peak:.0f}%</text>', "</svg>"]
    return "".join(parts)
