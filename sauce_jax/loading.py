"""`load_encoder`: any supported checkpoint -> a `VisionEncoder`, by the registry of encoder families.

The loader reads the checkpoint (a directory, a Hub id in the local cache, an in-memory
transformers model, or a DINOv2 ONNX export), asks `sauce_jax.ports.registry.FAMILIES` which port reads
its `config.json`, lets that port build the model, and wraps it in the core encoder the
family's `runner` names. It is the only core module that knows `MllamaEncoder`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from sauce_jax.encoder import EncoderConfig, VisionEncoder
from sauce_jax.errors import ConfigError
from sauce_jax.image_processor import PreprocessConfig
from sauce_jax.ports import dinov2
from sauce_jax.ports.family import EncoderFamily
from sauce_jax.ports.registry import FAMILIES, supported_checkpoint_types
from sauce_jax.ports.weights import read_checkpoint_tensors, read_json, resolve_checkpoint_dir, torch_to_numpy

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _checkpoint_preprocess_config(directory: Path, parse=PreprocessConfig.from_hf):
    """The image processor saved beside the weights: `preprocessor_config.json`, or the
    `image_processor` entry of a transformers 5 `processor_config.json`, read by `parse`."""
    path = directory / "preprocessor_config.json"
    if path.is_file():
        return parse(read_json(path), origin=str(path))
    path = directory / "processor_config.json"
    if path.is_file():
        entry = read_json(path).get("image_processor")
        if isinstance(entry, dict):
            return parse(entry, origin=f"{path} (image_processor)")
    return None


def _input_size(cfg, preprocess_config: PreprocessConfig) -> int:
    """The square side a DINOv2 encoder takes: what its preprocessing crops to, else the config's."""
    final = preprocess_config.crop_hw or (preprocess_config.resize_hw if preprocess_config.do_resize else None)
    if final is not None and final[0] == final[1]:
        return final[0]
    return cfg.image_size


def _is_onnx_source(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike)) and (str(source).startswith("onnx:") or
                                                       str(source).lower().endswith(".onnx"))


def _is_torch_model(source: Any) -> bool:
    return hasattr(source, "state_dict") and hasattr(source, "config") and hasattr(source.config, "to_dict")


def _vit_config(family: EncoderFamily, cfg, *, checkpoint_type: str, image_size: int, dtype: str,
                feature_layer: Any, source: str) -> EncoderConfig:
    """The `EncoderConfig` of a one-image-per-row tower (CLIP, SigLIP, DINOv2, ...)."""
    return EncoderConfig(
        model_type=family.model_type,
        checkpoint_type=checkpoint_type,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        image_size=image_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.num_channels,
        num_tokens=family.num_tokens(cfg, image_size),
        dtype=dtype,
        projection_dim=getattr(cfg, "projection_dim", None),
        feature_layer=tuple(feature_layer) if isinstance(feature_layer, list) else feature_layer,
        source=source,
    )


def _load_onnx_encoder(source: str | os.PathLike, dtype: str, attention: str) -> VisionEncoder:
    """A DINOv2 encoder from an ONNX export: weights recovered by `sauce_jax.ports.onnx_import`."""
    from sauce_jax.ports.onnx_import import load_onnx_dinov2

    path = Path(str(source).removeprefix("onnx:")).expanduser()
    model, found = load_onnx_dinov2(path, dtype=DTYPES[dtype], attention_impl=attention)
    cfg = model.config
    size = found.input_size or cfg.image_size
    config = _vit_config(dinov2.FAMILY, cfg, checkpoint_type="onnx", image_size=size, dtype=dtype,
                         feature_layer=-2, source=str(path))
    return VisionEncoder(model, config, PreprocessConfig(**dinov2.FAMILY.preprocess_defaults(cfg, size)))


def _vit_encoder(family: EncoderFamily, model, hf_config: dict, *, checkpoint_type: str, directory: Path | None,
                 dtype: str, origin: str) -> VisionEncoder:
    """The "vit" runner: a `VisionEncoder` with the checkpoint's preprocessing, else the family's defaults."""
    cfg = model.config
    preprocess_config = _checkpoint_preprocess_config(directory) if directory is not None else None
    if preprocess_config is None:
        preprocess_config = PreprocessConfig(**family.preprocess_defaults(cfg, cfg.image_size))
    size = _input_size(cfg, preprocess_config) if family.input_size_from_preprocessing else cfg.image_size
    config = _vit_config(family, cfg, checkpoint_type=checkpoint_type, image_size=size, dtype=dtype,
                         feature_layer=hf_config.get("vision_feature_layer", -2), source=origin)
    return VisionEncoder(model, config, preprocess_config)


def _mllama_encoder(family: EncoderFamily, model, hf_config: dict, *, checkpoint_type: str,
                    directory: Path | None, dtype: str, origin: str) -> VisionEncoder:
    """The "mllama" runner: an `MllamaEncoder` on tiled inputs, with `MllamaImageProcessor` preprocessing."""
    from sauce_jax import mllama_encoder
    from sauce_jax.mllama_processor import MllamaPreprocessConfig

    preprocess_config = (_checkpoint_preprocess_config(directory, MllamaPreprocessConfig.from_hf)
                         if directory is not None else None)
    if preprocess_config is None:
        preprocess_config = MllamaPreprocessConfig(**family.preprocess_defaults(model.config, model.config.image_size))
    return mllama_encoder.build(model, checkpoint_type=checkpoint_type, dtype=dtype, source=origin,
                                preprocess_config=preprocess_config)


# EncoderFamily.runner -> the core encoder that wraps the port's model
RUNNERS = {"vit": _vit_encoder, "mllama": _mllama_encoder}


def load_encoder(source: str | os.PathLike | Any, dtype: str = "float32", attention: str = "auto") -> VisionEncoder:
    """Load the vision tower of a CLIP, SigLIP, DINOv2, LLaVA or Mllama checkpoint into JAX.

    Args:
      source: a checkpoint directory written by `save_pretrained` (`config.json` with
        `model.safetensors`, sharded safetensors or `pytorch_model.bin`), a Hub id already in
        the local Hugging Face cache, or an in-memory transformers model (`CLIPVisionModel`,
        `CLIPVisionModelWithProjection`, `CLIPModel`, `SiglipVisionModel`, `SiglipModel`,
        `LlavaForConditionalGeneration` with a CLIP or SigLIP tower, `MllamaVisionModel`,
        `MllamaForConditionalGeneration`; an Mllama checkpoint gives a
        `sauce_jax.mllama_encoder.MllamaEncoder`), `Dinov2Model`,
        `Dinov2WithRegistersModel`, `Dinov2ForImageClassification`). A DINOv2 encoder takes
        the images its preprocessing makes (the saved processor's crop size, else the
        config's image_size) and resamples its position embeddings to that grid. A path
        ending in `.onnx` (or written `onnx:PATH`) is an ONNX export of a transformers DINOv2
        model, alone or under a task head; see `sauce_jax.ports.onnx_import` (needs the onnx extra).
      dtype: "float32" (default) or "bfloat16", for parameters and compute.
      attention: "auto" (cuDNN-eligible `jax.nn.dot_product_attention` on GPU, the einsum
        path elsewhere), or force "einsum", "xla" or "cudnn".
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; choose one of {sorted(DTYPES)}")
    directory = None
    if not _is_torch_model(source) and _is_onnx_source(source):
        return _load_onnx_encoder(source, dtype, attention)
    if _is_torch_model(source):
        hf_config = source.config.to_dict()
        tensors = {name: torch_to_numpy(t) for name, t in source.state_dict().items()}
        origin = f"in-memory {type(source).__name__}"
    else:
        directory = resolve_checkpoint_dir(source)
        origin = str(directory)
        hf_config = read_json(directory / "config.json")
        tensors, _ = read_checkpoint_tensors(directory)
    model_type = hf_config.get("model_type")
    family = next((f for f in FAMILIES if f.reads(hf_config)), None)
    if family is None:
        raise ConfigError(
            f"{origin}: config model_type {model_type!r} is not a supported vision encoder; "
            f"supported: {list(supported_checkpoint_types())}"
        )
    model, _, _ = family.load(model_type, hf_config, tensors, dtype=DTYPES[dtype], attention_impl=attention,
                              origin=origin)
    return RUNNERS[family.runner](family, model, hf_config, checkpoint_type=model_type, directory=directory,
                                  dtype=dtype, origin=origin)
