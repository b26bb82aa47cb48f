"""Image preprocessing that reproduces a checkpoint's own `CLIPImageProcessor` (PIL path).

`SiglipImageProcessor` is the same pipeline with other defaults: resize to a fixed
height x width (bicubic), no crop, mean = std = 0.5. `BitImageProcessor` (DINOv2's) is the
CLIP pipeline itself; DINOv2 checkpoints save shortest edge 256, crop 224 and ImageNet's
mean and std.

LLaVA-1.5 was trained with the PIL pipeline: RGB conversion, shortest-side resize with PIL's
bicubic filter, center crop, rescale by 1/255 in float64 then float32, and normalization in
float32. `preprocess` follows those steps operation by operation and returns NHWC float32,
the layout the encoders take.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.images import to_rgb_array
from sauce_jax.ports import clip, dinov2, siglip
from sauce_jax.ports.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from sauce_jax.ports.siglip import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD  # SigLIP's


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """The fields of a `preprocessor_config.json` that the CLIP pipeline reads."""

    shortest_edge: int | None = 224  # resize so the shorter side has this length ...
    resize_hw: tuple[int, int] | None = None  # ... or to exactly (height, width)
    resample: int = 3  # a PIL resampling filter; 3 = bicubic
    crop_hw: tuple[int, int] | None = (224, 224)  # center crop; None skips it
    rescale_factor: float | None = 1 / 255  # None skips rescaling
    image_mean: tuple[float, ...] | None = OPENAI_CLIP_MEAN  # None skips normalization
    image_std: tuple[float, ...] | None = OPENAI_CLIP_STD
    do_convert_rgb: bool = True
    do_resize: bool = True

    @classmethod
    def for_image_size(cls, size: int) -> "PreprocessConfig":
        """CLIP's defaults scaled to a model that takes `size` x `size` images."""
        return cls(**clip.preprocess_defaults(size))

    @classmethod
    def siglip_defaults(cls, size: int) -> "PreprocessConfig":
        """`SiglipImageProcessor`'s defaults for a model that takes `size` x `size` images."""
        return cls(**siglip.preprocess_defaults(size))

    @classmethod
    def dinov2_defaults(cls, size: int) -> "PreprocessConfig":
        """What DINOv2 checkpoints save (`BitImageProcessor`: shortest edge 256, crop 224, ImageNet
        mean and std), scaled to a model that takes `size` x `size` images."""
        return cls(**dinov2.preprocess_defaults(size))

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], origin: str = "preprocessor_config.json") -> "PreprocessConfig":
        """Read a transformers image-processor dict (`preprocessor_config.json`)."""
        def hw(value, name):
            if isinstance(value, int):
                return (value, value)
            if isinstance(value, Mapping) and {"height", "width"} <= set(value):
                return (int(value["height"]), int(value["width"]))
            raise ConfigError(f"{origin}: {name!r} must be an int or have 'height' and 'width', got {value!r}")

        kind = str(hf.get("image_processor_type", "CLIPImageProcessor"))
        siglip = kind.startswith("SiglipImageProcessor")
        if not (kind.startswith(("CLIPImageProcessor", "BitImageProcessor")) or siglip):
            raise ConfigError(
                f"{origin}: image_processor_type {kind!r} is not implemented; "
                "CLIPImageProcessor, BitImageProcessor and SiglipImageProcessor are"
            )
        # SigLIP: fixed-size resize, no center crop, mean = std = 0.5 unless the config says otherwise.
        mean_default = IMAGENET_STANDARD_MEAN if siglip else OPENAI_CLIP_MEAN
        std_default = IMAGENET_STANDARD_STD if siglip else OPENAI_CLIP_STD
        size = hf.get("size", {"height": 224, "width": 224} if siglip else {"shortest_edge": 224})
        shortest, resize_hw = None, None
        if isinstance(size, Mapping) and "shortest_edge" in size:
            shortest = int(size["shortest_edge"])
        else:
            resize_hw = hw(size, "size")
        return cls(
            shortest_edge=shortest,
            resize_hw=resize_hw,
            resample=int(hf.get("resample", 3)),
            crop_hw=(hw(hf.get("crop_size", 224), "crop_size")
                     if hf.get("do_center_crop", not siglip) else None),
            rescale_factor=float(hf.get("rescale_factor", 1 / 255)) if hf.get("do_rescale", True) else None,
            image_mean=tuple(hf.get("image_mean", mean_default)) if hf.get("do_normalize", True) else None,
            image_std=tuple(hf.get("image_std", std_default)) if hf.get("do_normalize", True) else None,
            do_convert_rgb=bool(hf.get("do_convert_rgb", True)),
            do_resize=bool(hf.get("do_resize", True)),
        )

    def apply(self, image: Any, index: int = 0) -> np.ndarray:
        """One image -> float32 [H, W, C] exactly as the checkpoint's image processor makes it."""
        array = to_rgb_array(image, index)  # [H, W, 3] uint8
        if self.do_resize:
            new_h, new_w = _resize_hw(array.shape[0], array.shape[1], self)
            resized = Image.fromarray(array).resize((new_w, new_h), resample=Image.Resampling(self.resample))
            array = np.asarray(resized)
        if self.crop_hw is not None:
            array = _center_crop(array, *self.crop_hw)
        if self.rescale_factor is not None:
            out = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            out = array.astype(np.float32)
        if self.image_mean is not None:
            mean = np.asarray(self.image_mean, np.float32)
            std = np.asarray(self.image_std, np.float32)
            out = (out - mean) / std
        return out


def _resize_hw(height: int, width: int, cfg: PreprocessConfig) -> tuple[int, int]:
    if cfg.resize_hw is not None:
        return cfg.resize_hw
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _center_crop(image: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    if top >= 0 and left >= 0:
        return image[top : top + crop_h, left : left + crop_w]
    # Smaller than the crop: zero-pad (centred, ceil) and take the window, as transformers does.
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((new_h, new_w, image.shape[2]), image.dtype)
    pad_top, pad_left = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    padded[pad_top : pad_top + h, pad_left : pad_left + w] = image
    top, left = top + pad_top, left + pad_left
    return padded[max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


def preprocess_one(image: Any, cfg: Any, index: int = 0) -> np.ndarray:
    """One image -> what the checkpoint's image processor makes of it: `cfg.apply(image, index)`
    (float32 [H, W, C] for a `PreprocessConfig`, one tiled record for an `MllamaPreprocessConfig`)."""
    return cfg.apply(image, index)


def _is_preprocess_config(value: Any) -> bool:
    # A preprocessing config is a dataclass with `apply`; a VisionEncoder is neither.
    return dataclasses.is_dataclass(value) and callable(getattr(value, "apply", None))


def preprocess(images: Any, config: Any) -> np.ndarray:
    """Images -> the encoder's input, float32 NHWC [B, H, W, C].

    Args:
      images: one image or a sequence of them: PIL images (any mode; alpha is blended onto
        white) or uint8 numpy arrays of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
      config: a `VisionEncoder` (uses the checkpoint's own processor settings), a
        `PreprocessConfig` or an `MllamaPreprocessConfig` (which returns a structured batch [B]
        of tiled records: see `sauce_jax.mllama_processor`); any preprocessing config is an
        object with an `apply(image, index)` method.
    """
    cfg = config if _is_preprocess_config(config) else getattr(config, "preprocess_config", None)
    if not _is_preprocess_config(cfg):
        raise ConfigError(f"preprocess needs a VisionEncoder or a PreprocessConfig, got {type(config).__name__}")
    if isinstance(images, (Image.Image, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        images = [images]
    if not isinstance(images, (Sequence, np.ndarray)) or len(images) == 0:
        raise InputError("preprocess got no images")
    return np.stack([preprocess_one(image, cfg, i) for i, image in enumerate(images)])
