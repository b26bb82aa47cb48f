"""Activation sources for SAE training: in-memory arrays, or images streamed through the
encoder, with an in-memory or on-disk cache so epochs after the first skip the encoder.

Every source is a deterministic function of (epoch, chunk index): chunk c of epoch e is a
fixed set of activations in a fixed shuffled order, derived from the seed. The training
stream is these chunks in order, so a position (epoch, chunk, offset) is the whole
iterator state: resuming re-reads one chunk and lands on exactly the same batches.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np

from sauce_jax.encoder import pad_batch
from sauce_jax.errors import ConfigError, InputError
from sauce_jax.image_processor import preprocess_one
from sauce_jax.images import as_image_items, open_image
from sauce_jax.tokens import check_token_choice, select_tokens, tokens_per_image


class _LoadPreprocessed:
    """Decode + preprocess image `index` of `items` (a top-level class: grain pickles it to worker
    processes). Its repr is short: grain names every transform by `getattr(f, "__name__",
    repr(f))`, which builds the repr even when a name exists, and a `functools.partial`'s repr
    printed every in-memory image it held (seconds per chunk)."""

    def __init__(self, items, preprocess_config):
        self.items, self.preprocess_config = items, preprocess_config

    def __call__(self, index: int):
        image = open_image(self.items[index])
        if image is None:
            return index, None
        return index, preprocess_one(image, self.preprocess_config, index)

    def __repr__(self) -> str:
        return f"load_preprocessed({len(self.items)} images)"


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


class ArraySource:
    """Activations already in memory, [N, d_in]; this process reads rows p::P."""

    def __init__(self, activations: Any, *, chunk_size: int = 65536, seed: int = 0,
                 process_index: int = 0, process_count: int = 1):
        acts = np.asarray(activations)
        if acts.ndim != 2 or acts.shape[0] == 0:
            raise InputError(f"activations must be [N, d_in] with N > 0, got shape {acts.shape}")
        if not np.issubdtype(acts.dtype, np.floating):
            raise InputError(f"activations must be floating point, got {acts.dtype}")
        self.acts = acts[process_index::process_count]
        self.d_in = acts.shape[1]
        self.chunk_size, self.seed = chunk_size, seed

    def num_chunks(self) -> int:
        return -(-len(self.acts) // self.chunk_size)

    def tokens_per_epoch(self) -> int:
        return len(self.acts)

    def chunk(self, epoch: int, index: int) -> np.ndarray:
        order = _rng(self.seed, epoch).permutation(len(self.acts))
        rows = order[index * self.chunk_size : (index + 1) * self.chunk_size]
        return np.asarray(self.acts[np.sort(rows)][_rng(self.seed, epoch, index, 1).permutation(len(rows))], np.float32)

    def describe(self) -> dict:
        return {"kind": "array", "rows": len(self.acts), "d_in": self.d_in, "chunk_size": self.chunk_size}


class EncoderSource:
    """Images -> grain (decode + the encoder's preprocess, threads or worker processes) -> jitted encoder stopped at
    `layer` -> token choice. Chunk c of epoch e holds `chunk_images` images of this process's
    shard, in the epoch's seeded order, and its tokens are shuffled together. With
    `shuffle=False`, chunk c holds images c * chunk_images, ... in their given order, their
    tokens in order too (image-major): a per-image activation cache for evaluation."""

    def __init__(self, encoder, images: Any, *, layer: int = -2, token: str = "last", chunk_images: int = 1024,
                 encode_batch: int = 64, seed: int = 0, num_threads: int = 8, workers: int = 0,
                 process_index: int = 0, process_count: int = 1, shuffle: bool = True):
        self.encoder = encoder
        self.shuffle = shuffle
        self.layer = encoder.layer_index(layer)
        self.token = check_token_choice(token)
        self.per_image = tokens_per_image(self.token, encoder.config.num_tokens)
        items = as_image_items(images)
        self.items = items[process_index::process_count]
        if not self.items:
            raise InputError(f"process {process_index} of {process_count} got no images ({len(items)} in all)")
        self.total_images = len(items)
        self.d_in = encoder.config.hidden_size
        self.chunk_images, self.encode_batch = chunk_images, encode_batch
        self.seed, self.num_threads, self.workers = seed, num_threads, workers
        self._load = _LoadPreprocessed(self.items, encoder.preprocess_config)
        self.skipped: set[int] = set()  # indices of unreadable images

    def num_chunks(self) -> int:
        return -(-len(self.items) // self.chunk_images)

    def tokens_per_epoch(self) -> int:
        return len(self.items) * self.per_image

    def chunk(self, epoch: int, index: int) -> np.ndarray:
        return self.chunks(epoch, index, (self.layer,))[0]

    def chunks(self, epoch: int, index: int, layers: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """Chunk (epoch, index) at each hidden-state index in `layers`, from one pass of its images
        through the tower: each equals the chunk of a source made for that layer alone (the same
        images, token draws and shuffle)."""
        order = _rng(self.seed, epoch).permutation(len(self.items)) if self.shuffle else np.arange(len(self.items))
        wanted = [int(i) for i in order[index * self.chunk_images : (index + 1) * self.chunk_images]]
        dataset = grain.MapDataset.source(wanted).map(self._load)
        loaded = dataset.to_iter_dataset(grain.ReadOptions(num_threads=self.num_threads,
                                                           prefetch_buffer_size=2 * self.num_threads))
        if self.workers:  # decode in worker processes; order is kept, so results do not change
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain reads absl flags, which a library never parses
                flags.FLAGS.mark_as_parsed()
            loaded = loaded.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        # Encode each batch as soon as its images are decoded: grain's threads decode the next
        # batch while the tower runs (XLA releases the GIL), and nothing waits for the host copy
        # until the chunk is complete.
        outputs: list[list[Any]] = [[] for _ in layers]
        key = jax.random.key(self.seed)
        pending: list[np.ndarray] = []
        start = 0  # index of the batch's first readable image in the chunk

        def encode(pixels: list[np.ndarray]) -> None:
            batch = pad_batch(np.stack(pixels), self.encode_batch)  # [B, H, W, C]: one compiled shape for the run
            n = len(pixels)
            if len(layers) == 1:
                hidden = (self.encoder.hidden_state(batch, layers[0]),)
            else:  # one forward keeps every requested state; no block past the deepest runs
                hidden = self.encoder.hidden_states_at(batch, layers)
            # the same key for every layer: the same tokens as separate single-layer runs
            sub = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, epoch), index), start)
            for out, h in zip(outputs, hidden):  # h: [B, T, D]
                out.append(select_tokens(h[:n], self.token, sub))

        for i, px in loaded:
            if px is None:
                self.skipped.add(i)
                continue
            pending.append(px)
            if len(pending) == self.encode_batch:
                encode(pending)
                start += len(pending)
                pending = []
        if pending:
            encode(pending)
            start += len(pending)
        if not start:
            return tuple(np.zeros((0, self.d_in), np.float32) for _ in layers)
        outputs = [[np.asarray(part, np.float32) for part in out] for out in outputs]
        shuffle = None
        result = []
        for out in outputs:
            acts = np.concatenate(out)
            if not self.shuffle:
                result.append(acts)
                continue
            if shuffle is None:
                shuffle = _rng(self.seed, epoch, index, 1).permutation(len(acts))
            result.append(acts[shuffle])
        return tuple(result)

    def describe(self) -> dict:
        described = {"kind": "encoder", "encoder": self.encoder.config.source, "layer": self.layer,
                     "token": self.token, "images": self.total_images, "d_in": self.d_in,
                     "chunk_images": self.chunk_images, "seed": self.seed}
        if not self.shuffle:  # only then, so caches written before the option existed still match
            described["shuffle"] = False
        return described


class SharedPass:
    """Several layers read from one EncoderSource: each chunk's images go through the tower once
    for all of them (`EncoderSource.chunks`), and each layer's `view` is a source of its own.

    A chunk encoded for one layer waits for the others until each has read it once, so runs
    that step in lockstep (`train_saes`) or sample the same first chunks never encode twice.
    At most `max_pending` chunks wait (the oldest is dropped first: a layer that comes for it
    later encodes it again, with the same result), so memory stays bounded.
    """

    def __init__(self, source: EncoderSource, layers, *, max_pending: int = 8):
        self.source = source
        self.layers = tuple(dict.fromkeys(source.encoder.layer_index(layer) for layer in layers))
        self.pending: dict[tuple[int, int], dict[int, np.ndarray]] = {}
        self.max_pending = max_pending
        self.passes = 0  # chunks encoded, for tests and benchmarks

    def take(self, epoch: int, index: int, layer: int) -> np.ndarray:
        waiting = self.pending.get((epoch, index))
        if waiting is None or layer not in waiting:
            waiting = dict(zip(self.layers, self.source.chunks(epoch, index, self.layers)))
            self.pending.pop((epoch, index), None)
            self.pending[(epoch, index)] = waiting
            self.passes += 1
            while len(self.pending) > self.max_pending:
                del self.pending[next(iter(self.pending))]
        acts = waiting.pop(layer)
        if not waiting:
            del self.pending[(epoch, index)]
        return acts

    def view(self, layer) -> "LayerView":
        return LayerView(self, self.source.encoder.layer_index(layer))


class LayerView:
    """One layer of a SharedPass with EncoderSource's interface (CachedSource wraps it; its
    `describe` is the one a single-layer EncoderSource gives, so caches are interchangeable).
    The last chunk read is kept, so runs on the same layer at the same position share it."""

    def __init__(self, shared: SharedPass, layer: int):
        if layer not in shared.layers:
            raise ConfigError(f"hidden state {layer} is not one of the shared pass's {shared.layers}")
        self.shared, self.layer = shared, layer
        self.d_in, self.seed = shared.source.d_in, shared.source.seed
        self._last: tuple[tuple[int, int], np.ndarray] | None = None

    @property
    def skipped(self) -> set[int]:
        return self.shared.source.skipped

    def num_chunks(self) -> int:
        return self.shared.source.num_chunks()

    def tokens_per_epoch(self) -> int:
        return self.shared.source.tokens_per_epoch()

    def chunk(self, epoch: int, index: int) -> np.ndarray:
        if self._last is None or self._last[0] != (epoch, index):
            self._last = ((epoch, index), self.shared.take(epoch, index, self.layer))
        return self._last[1]

    def describe(self) -> dict:
        return {**self.shared.source.describe(), "layer": self.layer}


class CachedSource:
    """An EncoderSource whose epoch-0 chunks are kept (memory, or a folder with a manifest),
    so later epochs, and reruns on the same folder, read activations instead of images.
    Later epochs visit cached chunks in a new seeded order and reshuffle inside each."""

    def __init__(self, inner: EncoderSource | LayerView, directory: str | os.PathLike | None = None,
                 dtype: str = "float32"):
        self.inner, self.d_in = inner, inner.d_in
        self.dtype = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}.get(dtype)
        if self.dtype is None:
            raise ConfigError(f"cache dtype {dtype!r} is not 'float32' or 'bfloat16'")
        self.memory: dict[int, np.ndarray] = {}
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            manifest = self._read_manifest()
            if manifest and manifest["source"] != inner.describe():
                differing = sorted(k for k in inner.describe() if manifest["source"].get(k) != inner.describe()[k])
                raise ConfigError(f"activation cache {str(self.directory)!r} was made for other settings: {differing}")

    def num_chunks(self) -> int:
        return self.inner.num_chunks()

    def tokens_per_epoch(self) -> int:
        return self.inner.tokens_per_epoch()

    def describe(self) -> dict:
        return self.inner.describe()

    @property
    def skipped(self):
        return self.inner.skipped

    # -- storage ---------------------------------------------------------------------------
    def _read_manifest(self) -> dict | None:
        path = self.directory / "manifest.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"activation cache manifest {str(path)!r} is corrupt: {exc}") from exc

    def _atomic_write(self, path: Path, write) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _stored(self, index: int) -> np.ndarray | None:
        if index in self.memory:
            return self.memory[index]
        if self.directory is None:
            return None
        manifest = self._read_manifest() or {}
        entry = manifest.get("chunks", {}).get(str(index))
        if entry is None:
            return None
        array = np.load(self.directory / entry["file"])
        if array.shape != (entry["tokens"], self.d_in):
            raise InputError(f"activation cache chunk {entry['file']!r} has shape {array.shape}, manifest says "
                             f"({entry['tokens']}, {self.d_in})")
        return array

    def _store(self, index: int, acts: np.ndarray) -> None:
        acts = acts.astype(self.dtype)
        if self.directory is None:
            self.memory[index] = acts
            return
        name = f"chunk_{index:06d}.npy"
        self._atomic_write(self.directory / name, lambda f: np.save(f, acts))
        # The manifest is written last, so it never names a chunk that is not complete on disk.
        manifest = self._read_manifest() or {"source": self.inner.describe(), "d_in": self.d_in,
                                             "dtype": str(np.dtype(self.dtype)), "chunks": {}}
        manifest["chunks"][str(index)] = {"file": name, "tokens": int(len(acts))}
        manifest["complete"] = len(manifest["chunks"]) == self.num_chunks()
        self._atomic_write(self.directory / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))

    def chunk(self, epoch: int, index: int) -> np.ndarray:
        base = index if epoch == 0 else int(_rng(self.inner.seed, epoch, 2).permutation(self.num_chunks())[index])
        acts = self._stored(base)
        if acts is None:
            acts = self.inner.chunk(0, base)
            self._store(base, acts)
        acts = np.asarray(acts, np.float32)
        if epoch == 0:
            return acts
        return acts[_rng(self.inner.seed, epoch, base, 3).permutation(len(acts))]


def batches(source, batch_size: int, position: tuple[int, int, int]) -> Iterator[tuple[np.ndarray, tuple[int, int, int]]]:
    """Endless batches [batch_size, d_in] from `position` = (epoch, chunk, offset), each with the
    position right after it. Chunks follow one another across epoch boundaries."""
    epoch, index, offset = position
    pending: list[np.ndarray] = []
    have = 0
    empty_epochs = 0
    while True:
        if index >= source.num_chunks():
            epoch, index = epoch + 1, 0
        acts = source.chunk(epoch, index)[offset:]
        start_offset = offset
        offset = 0
        if len(acts) == 0 and start_offset == 0:
            empty_epochs += index == 0
            if empty_epochs > 1:
                raise InputError("the activation source yields nothing: every image is unreadable")
        used = 0
        while have + len(acts) - used >= batch_size:
            take = batch_size - have
            pending.append(acts[used : used + take])
            used += take
            batch = np.concatenate(pending)
            pending, have = [], 0
            yield batch, (epoch, index, start_offset + used)
        if used < len(acts):
            pending.append(acts[used:])
            have += len(acts) - used
        index += 1
