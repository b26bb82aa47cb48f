"""Fashion-MNIST's idx files: the reader, its errors, and the Debian package's real files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from sauce_jax import cli
from sauce_jax.errors import ConfigError, InputError
from sauce_jax.eval.fashion_mnist import CLASSES, DEFAULT_DIR, FILES, load_split, parse_idx, read_idx


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_split(folder, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image_name, label_name = FILES[split]
    (folder / image_name).write_bytes(gzip.compress(idx_bytes(images)))
    (folder / label_name).write_bytes(gzip.compress(idx_bytes(labels)))


def test_parse_idx_reads_what_was_written_and_refuses_damage():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(images)
    np.testing.assert_array_equal(parse_idx(data), images)
    with pytest.raises(InputError, match="truncated: shape"):
        parse_idx(data[:-1])
    with pytest.raises(InputError, match="longer than its header says"):
        parse_idx(data + b"\0")
    with pytest.raises(InputError, match="truncated inside its header"):
        parse_idx(data[:9])
    with pytest.raises(InputError, match="bad magic"):
        parse_idx(b"\x1f\x8b" + data[2:])
    with pytest.raises(InputError, match="type code 0x0d"):
        parse_idx(data[:2] + b"\x0d" + data[3:])


def test_load_split_errors_name_the_file_and_the_package(tmp_path):
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        load_split("test", tmp_path / "nowhere")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.arange(5, dtype=np.uint8)
    write_split(tmp_path, "test", images, labels)
    got_x, got_y = load_split("test", tmp_path)
    np.testing.assert_array_equal(got_x, images)
    assert got_y.tolist() == [0, 1, 2, 3, 4]
    # A cut gzip stream (a download or copy that stopped early) is an InputError naming the file.
    path = tmp_path / FILES["test"][0]
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputError, match=FILES["test"][0]):
        load_split("test", tmp_path)
    write_split(tmp_path, "test", images, labels[:4])
    with pytest.raises(InputError, match="5 images but .* 4 labels"):
        load_split("test", tmp_path)
    write_split(tmp_path, "test", images, np.full(5, 10, np.uint8))
    with pytest.raises(InputError, match="label 10"):
        load_split("test", tmp_path)
    with pytest.raises(ConfigError, match="'val'"):
        load_split("val", tmp_path)


def test_cli_names_the_debian_package_when_the_files_are_missing(tmp_path, capsys):
    code = cli.main(["experiment", "fashion", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path),
                     "--encoder", str(tmp_path / "unused.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "dataset-fashion-mnist" in err and len(err.strip().splitlines()) == 1, err


def test_the_debian_package_files():
    # The README's test command and .ci/run install the package: its files are the real data set.
    train_x, train_y = load_split("train", DEFAULT_DIR)
    test_x, test_y = load_split("test", DEFAULT_DIR)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28) and train_x.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [6000] * len(CLASSES)
    assert np.bincount(test_y).tolist() == [1000] * len(CLASSES)
    # The benchmark takes the first N images of each split: they must hold every class evenly.
    assert np.bincount(test_y[:2000], minlength=10).min() >= 150
    assert read_idx(f"{DEFAULT_DIR}/{FILES['test'][1]}").shape == (10000,)
