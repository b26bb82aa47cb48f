"""Image sources for activation extraction: folders (flat or ImageNet-style) and arrays."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from sauce_jax.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
log = logging.getLogger(__name__)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file under `folder` (class subfolders or flat), in a stable sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"image folder {str(root)!r} does not exist or is not a directory")
    try:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise InputError(f"image folder {str(root)!r} cannot be read: {exc}") from exc
    if not files:
        raise InputError(f"image folder {str(root)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def as_image_items(images: Any) -> Sequence[Any]:
    """A folder path, a list of paths / PIL images / uint8 arrays, or a uint8 array [N, H, W(, C)]."""
    if isinstance(images, (str, os.PathLike)):
        return list_images(images)
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise InputError(f"an image array must be uint8 [N, H, W] or [N, H, W, C], got {images.dtype} {images.shape}")
        items = list(images)
    else:
        items = list(images)
    if not items:
        raise InputError("no images given")
    return items


def open_image(item: Any, *, rgb: bool = False, strict: bool = False) -> Image.Image | np.ndarray | None:
    """Decode one item: a path is opened (fully read, the file closed); a PIL image or an array
    is passed through unchanged.

    Args:
      item: a path, a PIL image or a uint8 array.
      rgb: convert an opened file to RGB with PIL (`image.convert("RGB")`, which drops alpha)
        instead of keeping its mode (preprocessing then blends alpha onto white).
      strict: an unreadable or corrupt file raises InputError; otherwise it is logged and gives
        None (the caller counts and skips it).
    """
    if not isinstance(item, (str, os.PathLike)):
        return item
    try:
        with Image.open(item) as image:
            if rgb:
                return image.convert("RGB")
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        if strict:
            raise InputError(f"image {str(item)!r} cannot be read: {exc}") from exc
        log.warning("skipping unreadable image %s: %s", item, exc)
        return None


def to_rgb_array(image: Any, index: int) -> np.ndarray:
    """One input image as uint8 [H, W, 3], converted the way transformers converts it."""
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise InputError(f"image {index}: expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image {index}: numpy images must be uint8 in [0, 255] (HWC), got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"image {index}: expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}"
        )
    if min(image.shape[:2]) < 1:
        raise InputError(f"image {index}: empty image of shape {image.shape}")
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 4:  # blended onto white, rounding as transformers' numpy path does
        alpha = image[..., 3:4] / 255
        return np.round(alpha * image[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return image
