"""`EncoderSource` encodes each batch as soon as its images are decoded (decoding overlaps the
tower): every chunk equals the plain decode-all-then-encode version kept here."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from sauce_jax.encoder import pad_batch
from sauce_jax.tokens import select_tokens
from sauce_jax.train.activations import EncoderSource, _rng


def plain_chunks(source: EncoderSource, epoch: int, index: int, layers) -> tuple[np.ndarray, ...]:
    """The chunk as it was computed before: decode every image of the chunk, then encode."""
    order = _rng(source.seed, epoch).permutation(len(source.items)) if source.shuffle else np.arange(len(source.items))
    wanted = [int(i) for i in order[index * source.chunk_images:(index + 1) * source.chunk_images]]
    pixels = [px for px in (source._load(i)[1] for i in wanted) if px is not None]
    outputs = [[] for _ in layers]
    key = jax.random.key(source.seed)
    for start in range(0, len(pixels), source.encode_batch):
        batch = np.stack(pixels[start:start + source.encode_batch])
        n = len(batch)
        batch = pad_batch(batch, source.encode_batch)
        hidden = source.encoder.hidden_states_at(batch, layers)
        sub = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, epoch), index), start)
        for out, h in zip(outputs, hidden):
            out.append(np.asarray(select_tokens(h[:n], source.token, sub), np.float32))
    result = []
    shuffle = None
    for out in outputs:
        acts = np.concatenate(out)
        if source.shuffle:
            shuffle = _rng(source.seed, epoch, index, 1).permutation(len(acts)) if shuffle is None else shuffle
            acts = acts[shuffle]
        result.append(acts)
    return tuple(result)


@pytest.mark.parametrize("token,shuffle", [("random-3", True), ("all", False)])
def test_overlapped_extraction_equals_the_plain_one(tmp_path, small_encoder, token, shuffle):
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 256, (20 + i % 5, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "05b.png").write_bytes(b"not a png")  # an unreadable image inside a chunk
    source = EncoderSource(small_encoder, tmp_path, layer=-2, token=token, chunk_images=5, encode_batch=2,
                           shuffle=shuffle, num_threads=2)
    for epoch in (0, 1):
        for index in range(source.num_chunks()):
            for layers in ((-2,), (1, -2)):
                got = source.chunks(epoch, index, layers)
                want = plain_chunks(source, epoch, index, tuple(small_encoder.layer_index(l) for l in layers))
                assert len(got) == len(want)
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g, w)
    assert len(source.skipped) == 1


def test_grain_names_the_loader_without_printing_its_images(small_encoder):
    """grain names every transform by `getattr(f, "__name__", repr(f))`, which builds the repr
    even when a name exists: the loader's repr stays short however many in-memory images it
    holds (a `functools.partial` over them printed every pixel, seconds per chunk)."""
    from grain._src.core.transforms import get_pretty_transform_name

    images = [np.full((24, 24, 3), i, np.uint8) for i in range(64)]
    source = EncoderSource(small_encoder, images, layer=-2, chunk_images=8, encode_batch=4)
    assert len(repr(source._load)) < 100, repr(source._load)[:200]
    assert len(get_pretty_transform_name(source._load)) < 100
    index, pixels = source._load(3)  # still the decode + preprocess of image 3
    assert index == 3 and pixels.ndim == 3
