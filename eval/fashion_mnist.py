"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`: the four gzipped idx files
(`train-images-idx3-ubyte.gz`, ...) read into uint8 arrays, checked for damage on the way.

The idx format: a big-endian header (two zero bytes, a type code, the number of dimensions,
then each dimension as uint32) and the values, row-major. Images are [N, 28, 28] uint8
(0 = background), labels [N] uint8 in 0..9.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError, InputError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_UBYTE = 0x08  # the idx type code of unsigned bytes, the only one Fashion-MNIST uses


def parse_idx(data: bytes, name: str = "idx data") -> np.ndarray:
    """One decompressed idx file -> its uint8 array; damage is an InputError naming `name`."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InputError(f"{name} is not an idx file (bad magic number {data[:4].hex() or 'empty'})")
    if data[2] != _UBYTE:
        raise InputError(f"{name} holds idx type code 0x{data[2]:02x}, expected unsigned bytes (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise InputError(f"{name} is truncated inside its header ({len(data)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4"))
    want = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != want:
        what = "truncated" if len(data) - header < want else "longer than its header says"
        raise InputError(f"{name} is {what}: shape {shape} needs {want} values, the file holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """A gzipped (`.gz`) or plain idx file -> uint8 array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (EOFError, OSError, zlib.error) as exc:  # gzip raises EOFError on a cut stream, BadGzipFile (OSError)
        raise InputError(f"{path} cannot be read as a gzipped idx file: {exc}") from exc
    return parse_idx(data, str(path))


def load_split(split: str, directory: str | Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 28, 28] uint8, labels [N] int64) of the "train" (60,000) or "test" (10,000) split."""
    if split not in FILES:
        raise ConfigError(f"Fashion-MNIST split {split!r} is not 'train' or 'test'")
    directory = Path(directory)
    paths = [directory / name for name in FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"Fashion-MNIST files {missing} are not in {str(directory)!r}: install the Debian package "
                          f"{DEBIAN_PACKAGE} (`apt-get install {DEBIAN_PACKAGE}`) or pass the folder holding them")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1:
        raise InputError(f"{paths[0]} must hold [N, H, W] images and {paths[1]} [N] labels, got {images.shape} "
                         f"and {labels.shape}")
    if len(images) != len(labels):
        raise InputError(f"{paths[0]} holds {len(images)} images but {paths[1]} {len(labels)} labels")
    if labels.size and labels.max() >= len(CLASSES):
        raise InputError(f"{paths[1]} holds label {int(labels.max())}; Fashion-MNIST has {len(CLASSES)} classes")
    return images, labels.astype(np.int64)
