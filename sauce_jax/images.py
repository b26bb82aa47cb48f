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


def open_image(item: Any) -> Image.Image | np.ndarray | None:
    """Decode one item; a corrupt or unreadable file gives None (the caller counts and skips it)."""
    if not isinstance(item, (str, os.PathLike)):
        return item
    try:
        with Image.open(item) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("skipping unreadable image %s: %s", item, exc)
        return None
