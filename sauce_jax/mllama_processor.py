"""Image preprocessing that reproduces transformers' `MllamaImageProcessor` (PIL path), NHWC.

One image becomes up to `max_image_tiles` square tiles: pick the tile arrangement (canvas)
that needs the least upscaling (or, when every canvas is smaller, the least downscaling),
resize the image to fit that canvas keeping its aspect ratio (PIL, bilinear by default),
pad bottom/right with zeros to the canvas, rescale and normalize (mean = std = 0.5), and cut
the canvas into tiles row by row. Tiles past the image's own count are zeros.

The result of one image is one record of a numpy structured array, so a batch is an
ordinary `np.stack` of records (shape [B]) and every generic code path that stacks, pads or
slices preprocessed images works unchanged. Its fields:

  pixel_values       float32 [N, tile, tile, C]  (N = max_image_tiles, NHWC tiles)
  aspect_ratio_ids   int32 []  1 + index of the (tiles high, tiles wide) arrangement, 0 = no image
  aspect_ratio_mask  int32 [N]  1 for the image's tiles
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

from einops.array_api import rearrange  # array-API form: no backend lookup through sys.modules
import numpy as np
from PIL import Image

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.image_processor import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD
from sauce_jax.images import to_rgb_array

FIELDS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")


@dataclasses.dataclass(frozen=True)
class MllamaPreprocessConfig:
    """The fields of an Mllama `preprocessor_config.json`."""

    tile_size: int = 560  # `size` {"height": s, "width": s}: the side of one tile
    max_image_tiles: int = 4
    resample: int = 2  # a PIL resampling filter; 2 = bilinear
    rescale_factor: float | None = 1 / 255  # None skips rescaling
    image_mean: tuple[float, ...] | None = IMAGENET_STANDARD_MEAN  # None skips normalization
    image_std: tuple[float, ...] | None = IMAGENET_STANDARD_STD
    do_convert_rgb: bool = True

    def __post_init__(self):
        for name in ("tile_size", "max_image_tiles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Mllama preprocessing {name!r} must be a positive integer, got {value!r}")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], origin: str = "preprocessor_config.json") -> "MllamaPreprocessConfig":
        """Read a transformers `MllamaImageProcessor` dict."""
        kind = str(hf.get("image_processor_type", "MllamaImageProcessor"))
        if not kind.startswith("MllamaImageProcessor"):
            raise ConfigError(f"{origin}: image_processor_type {kind!r} is not an MllamaImageProcessor")
        for flag in ("do_resize", "do_pad"):
            if not hf.get(flag, True):
                raise ConfigError(f"{origin}: {flag}=false is not supported (MllamaImageProcessor rejects it too)")
        size = hf.get("size", {"height": 224, "width": 224})
        if not (isinstance(size, Mapping) and size.get("height") and size.get("height") == size.get("width")):
            raise ConfigError(f"{origin}: 'size' must be a square {{'height': s, 'width': s}}, got {size!r}")
        normalize = hf.get("do_normalize", True)
        return cls(
            tile_size=int(size["height"]),
            max_image_tiles=int(hf.get("max_image_tiles", 4)),
            resample=int(hf.get("resample", 2)),
            rescale_factor=float(hf.get("rescale_factor", 1 / 255)) if hf.get("do_rescale", True) else None,
            image_mean=tuple(hf.get("image_mean", IMAGENET_STANDARD_MEAN)) if normalize else None,
            image_std=tuple(hf.get("image_std", IMAGENET_STANDARD_STD)) if normalize else None,
            do_convert_rgb=bool(hf.get("do_convert_rgb", True)),
        )

    def apply(self, image: Any, index: int = 0) -> np.ndarray:
        """One image -> one record (a 0-d structured array) exactly as `MllamaImageProcessor` makes it."""
        array = to_rgb_array(image, index)  # [H, W, 3] uint8
        height, width = array.shape[:2]
        tile = self.tile_size
        canvas_h, canvas_w = optimal_canvas(height, width, self.max_image_tiles, tile)
        new_h, new_w = fit_to_canvas(height, width, canvas_h, canvas_w, tile)
        resized = np.asarray(Image.fromarray(array).resize((new_w, new_h), resample=Image.Resampling(self.resample)))
        padded = np.zeros((canvas_h, canvas_w, 3), np.uint8)  # zero padding before rescale/normalize
        padded[:new_h, :new_w] = resized
        if self.rescale_factor is not None:
            out = (padded.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            out = padded.astype(np.float32)
        if self.image_mean is not None:
            out = (out - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        rows, cols = canvas_h // tile, canvas_w // tile
        # the canvas cut into tiles row by row: [rows * tile, cols * tile, 3] -> [rows * cols, tile, tile, 3]
        tiles = rearrange(out, "(r h) (c w) ch -> (r c) h w ch", r=rows, c=cols)
        record = np.zeros((), input_dtype(self.max_image_tiles, tile))
        record["pixel_values"][: rows * cols] = tiles
        record["aspect_ratio_ids"] = supported_aspect_ratios(self.max_image_tiles).index((rows, cols)) + 1
        record["aspect_ratio_mask"][: rows * cols] = 1
        return record


@functools.lru_cache(maxsize=16)
def supported_aspect_ratios(max_image_tiles: int) -> tuple[tuple[int, int], ...]:
    """Every (tiles high, tiles wide) arrangement of at most `max_image_tiles` tiles, in
    transformers' order; aspect_ratio_id k is entry k - 1."""
    return tuple((a, b) for a in range(1, max_image_tiles + 1) for b in range(1, max_image_tiles + 1)
                 if a * b <= max_image_tiles)


def optimal_canvas(height: int, width: int, max_image_tiles: int, tile_size: int) -> tuple[int, int]:
    """The canvas (height, width) in pixels that transformers picks for an image."""
    canvases = np.array(supported_aspect_ratios(max_image_tiles)) * tile_size  # [R, 2] (h, w)
    scale_h, scale_w = canvases[:, 0] / height, canvases[:, 1] / width
    scales = np.where(scale_w > scale_h, scale_h, scale_w)  # the scale that fits both sides
    upscaling = scales[scales >= 1]
    chosen = np.min(upscaling) if len(upscaling) else np.max(scales[scales < 1])
    candidates = canvases[scales == chosen]
    best = candidates[np.argmin(candidates[:, 0] * candidates[:, 1])]  # ties: the smallest area
    return int(best[0]), int(best[1])


def fit_to_canvas(height: int, width: int, canvas_h: int, canvas_w: int, tile_size: int) -> tuple[int, int]:
    """The resized (height, width): aspect ratio kept, each side clipped to [tile_size, canvas]."""
    target_w = int(np.clip(width, tile_size, canvas_w))
    target_h = int(np.clip(height, tile_size, canvas_h))
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


def input_dtype(num_tiles: int, tile_size: int, num_channels: int = 3) -> np.dtype:
    """The structured dtype of one preprocessed image (see the module docstring)."""
    return np.dtype([("pixel_values", np.float32, (num_tiles, tile_size, tile_size, num_channels)),
                     ("aspect_ratio_ids", np.int32),
                     ("aspect_ratio_mask", np.int32, (num_tiles,))])


def mllama_inputs(pixel_values: Any, aspect_ratio_ids: Any, aspect_ratio_mask: Any) -> np.ndarray:
    """Pack separate arrays (pixel_values [B, N, H, W, C] NHWC, aspect_ratio_ids [B],
    aspect_ratio_mask [B, N]) into the structured batch [B] that the Mllama encoder takes."""
    pixel_values = np.asarray(pixel_values, np.float32)
    if pixel_values.ndim != 5 or pixel_values.shape[2] != pixel_values.shape[3]:
        raise InputError(f"pixel_values must be [B, N, H, W, C] with square tiles, got shape {pixel_values.shape}")
    b, n, s, _, c = pixel_values.shape
    ids, mask = np.asarray(aspect_ratio_ids), np.asarray(aspect_ratio_mask)
    if ids.shape != (b,):
        raise InputError(f"aspect_ratio_ids must have shape ({b},) for {b} images, got {ids.shape}")
    if mask.shape != (b, n):
        raise InputError(f"aspect_ratio_mask must have shape ({b}, {n}), got {mask.shape}")
    out = np.zeros(b, input_dtype(n, s, c))
    out["pixel_values"], out["aspect_ratio_ids"], out["aspect_ratio_mask"] = pixel_values, ids, mask
    return out
