"""The activation cache's read speed: `CachedSource` reading a later epoch from its disk cache
(load, then the epoch's shuffle), cold and warm, against a plain `np.load` of the same files.

    python -m benchmarks.cache_read                                   # 128 MiB
    python -m benchmarks.cache_read --d-in 1024 --chunk-tokens 65536 --chunks 8   # 2 GiB

Cold means the files' pages were dropped from the page cache with posix_fadvise(DONTNEED)
after an fsync (no root needed); where that is unavailable only the warm figure exists.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


class RandomChunks:
    """Stands in for an EncoderSource: chunk i of epoch 0 is [chunk_tokens, d_in] of noise."""

    def __init__(self, d_in: int, chunk_tokens: int, chunks: int, seed: int = 0):
        self.d_in, self.chunk_tokens, self.chunks, self.seed = d_in, chunk_tokens, chunks, seed
        self.skipped: set[int] = set()

    def num_chunks(self) -> int:
        return self.chunks

    def tokens_per_epoch(self) -> int:
        return self.chunks * self.chunk_tokens

    def chunk(self, epoch: int, index: int) -> np.ndarray:
        # Uniform noise: as incompressible as activations for the reader, and fast to make.
        return np.random.default_rng([self.seed, index]).random((self.chunk_tokens, self.d_in), dtype=np.float32)

    def describe(self) -> dict:
        return {"kind": "random", "d_in": self.d_in, "chunk_tokens": self.chunk_tokens, "chunks": self.chunks}


def evict(files) -> bool:
    """Drop the files' pages from the page cache; False where the OS has no posix_fadvise."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def filesystem(path: Path) -> str:
    """The mount holding `path`, as 'TYPE at MOUNTPOINT' (Linux; 'unknown' elsewhere)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    path = str(Path(path).resolve())
    best = max((m for m in mounts if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return f"{best[1]} at {best[0]}" if best else "unknown"


def measure_cache_read(directory: Path, *, d_in: int, chunk_tokens: int, chunks: int) -> dict:
    """Fill a disk cache, then time one later epoch read through CachedSource cold and warm, and
    np.load of the same files warm. Rates in GB/s (1e9 bytes) of float32 activations."""
    from sauce_jax.train.activations import CachedSource

    cached = CachedSource(RandomChunks(d_in, chunk_tokens, chunks), directory)
    for i in range(chunks):
        cached.chunk(0, i)
    files = sorted(Path(directory).glob("chunk_*.npy"))
    nbytes = chunks * chunk_tokens * d_in * 4

    def epoch(e: int) -> float:
        start = time.perf_counter()
        for i in range(chunks):
            cached.chunk(e, i)
        return time.perf_counter() - start

    evicted = evict(files)
    cold = epoch(1) if evicted else None
    warm = epoch(2)
    start = time.perf_counter()
    for f in files:
        np.load(f)
    raw = time.perf_counter() - start
    return {"bytes": nbytes, "evicted": evicted, "filesystem": filesystem(Path(directory)),
            "cold_gb_per_s": nbytes / cold / 1e9 if cold else None, "warm_gb_per_s": nbytes / warm / 1e9,
            "raw_gb_per_s": nbytes / raw / 1e9}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--chunk-tokens", type=int, default=16384)
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--dir", help="where to write the cache (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        r = measure_cache_read(Path(tmp) / "cache", d_in=args.d_in, chunk_tokens=args.chunk_tokens,
                               chunks=args.chunks)
    print(f"activation cache: {r['bytes'] / 2**30:.2f} GiB on {r['filesystem']}")
    if r["cold_gb_per_s"] is not None:
        print(f"  CachedSource, page cache cold  {r['cold_gb_per_s']:6.2f} GB/s")
    print(f"  CachedSource, page cache warm  {r['warm_gb_per_s']:6.2f} GB/s")
    print(f"  np.load of the files, warm     {r['raw_gb_per_s']:6.2f} GB/s")
    return r


if __name__ == "__main__":
    main()
