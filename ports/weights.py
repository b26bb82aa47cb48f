"""Reading checkpoint directories written by transformers' `save_pretrained`.

Everything here returns plain numpy arrays keyed by the checkpoint's own tensor names; the
per-model rule tables (`ports/clip.py`, ...) decide what those names mean. Safetensors files
are parsed and memory-mapped here directly (no torch, bfloat16 through `ml_dtypes`), so every
way a file can be broken is caught and reported with its name. `pytorch_model.bin` files are
read with `torch.load(weights_only=True)`, which never runs pickled code.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from sauce_jax.errors import CheckpointError

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

# A header larger than this is not a header: safetensors itself caps it at 100 MB.
_MAX_HEADER_BYTES = 100_000_000


def resolve_checkpoint_dir(source: str | os.PathLike) -> Path:
    """Return the local directory of a checkpoint given as a path or as a Hub id.

    A Hub id (``org/name``) resolves only to a snapshot already in the local Hugging Face
    cache: nothing is downloaded at run time.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not any(path.iterdir()):
            raise CheckpointError(f"checkpoint directory {str(path)!r} is empty")
        return path
    if path.exists():
        raise CheckpointError(f"{str(path)!r} is a file; pass the checkpoint directory that holds config.json")
    text = str(source)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if looks_like_hub_id:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, local_files_only=True))
        except Exception as exc:  # any failure here means: not in the local cache
            raise CheckpointError(
                f"Hub id {text!r} is not on disk (not a local directory and not in the Hugging Face cache); "
                "sauce-jax never downloads at run time: download it first "
                f"(`hf download {text} --local-dir DIR`) and pass DIR"
            ) from exc
    raise CheckpointError(f"checkpoint directory {text!r} does not exist")


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object from `path`, naming the file in any error."""
    if not path.is_file():
        raise CheckpointError(f"{path.name} is missing from {str(path.parent)!r}")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{str(path)!r} holds a JSON {type(value).__name__}, expected an object")
    return value


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of one safetensors file as a read-only numpy array."""
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{str(path)!r} is truncated: {size} bytes, no safetensors header")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{str(path)!r} is corrupt or truncated: header claims {header_len} bytes, file has {size}"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{str(path)!r} has a corrupt safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{str(path)!r} has a corrupt safetensors header (not a JSON object)")
    data_start = 8 + header_len
    data_size = size - data_start
    header.pop("__metadata__", None)
    buffer = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_size,)) if data_size else None
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{str(path)!r}: tensor {name!r} has a malformed header entry {info!r}") from exc
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(
                f"{str(path)!r}: tensor {name!r} spans bytes [{begin}, {end}) but shape {shape} "
                f"of {info['dtype']} needs {nbytes}"
            )
        if end > data_size:
            raise CheckpointError(
                f"{str(path)!r} is truncated: tensor {name!r} ends at byte {end} of the data section, "
                f"which has only {data_size}"
            )
        raw = buffer[begin:end] if nbytes else np.zeros(0, np.uint8)
        tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


def read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """Load a `pytorch_model.bin` with `weights_only=True` (no pickled code runs)."""
    try:
        import torch
    except ImportError as exc:
        raise CheckpointError(
            f"{str(path)!r} is a PyTorch pickle; reading it needs torch (pip install 'sauce-jax[torch]'), "
            "or convert the checkpoint to safetensors"
        ) from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} could not be loaded as a weights-only PyTorch file: {exc}") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(state).__name__}, expected a state dict")
    return {name: torch_to_numpy(t) for name, t in state.items()}


def torch_to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as numpy, bfloat16 kept as `ml_dtypes.bfloat16`."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _read_sharded(directory: Path, index_name: str, reader) -> dict[str, np.ndarray]:
    index = read_json(directory / index_name)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{str(directory / index_name)!r} has no 'weight_map'")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = directory / shard
        if not shard_path.is_file():
            raise CheckpointError(f"shard {shard!r} named in {index_name} is missing from {str(directory)!r}")
        tensors.update(reader(shard_path))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(
            f"{index_name} lists {len(missing)} tensor(s) that no shard holds, first {missing[0]!r} "
            f"(expected in {weight_map[missing[0]]!r})"
        )
    return tensors


def read_checkpoint_tensors(directory: Path) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of a checkpoint directory and a word saying where they came from.

    Looks for, in order: `model.safetensors`, `model.safetensors.index.json` (sharded),
    `pytorch_model.bin`, `pytorch_model.bin.index.json`.
    """
    if (directory / "model.safetensors").is_file():
        return read_safetensors(directory / "model.safetensors"), "safetensors"
    if (directory / "model.safetensors.index.json").is_file():
        return _read_sharded(directory, "model.safetensors.index.json", read_safetensors), "sharded safetensors"
    if (directory / "pytorch_model.bin").is_file():
        return read_torch_bin(directory / "pytorch_model.bin"), "pytorch_model.bin"
    if (directory / "pytorch_model.bin.index.json").is_file():
        return _read_sharded(directory, "pytorch_model.bin.index.json", read_torch_bin), "sharded pytorch_model.bin"
    present = sorted(p.name for p in directory.iterdir())[:10]
    raise CheckpointError(
        f"no weights in {str(directory)!r}: expected model.safetensors, model.safetensors.index.json or "
        f"pytorch_model.bin; found {present}"
    )
