"""The DOMAIN/CONCEPT/{train,val,test} loader: what it reads and every layout error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sauce_jax.eval.concept_dirs import load_concept_dirs
from sauce_jax.errors import ConfigError, InputError

LAYOUT = {"animal": ("cat", "golden_retriever"), "color": ("red",)}


def build(root: Path, splits=("train", "val", "test"), n=2) -> Path:
    for domain, concepts in LAYOUT.items():
        for concept in concepts:
            for split in splits:
                folder = root / domain / concept / split
                folder.mkdir(parents=True)
                for i in range(n):
                    Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return root


def test_reads_the_layout(tmp_path):
    root = build(tmp_path / "c")
    (root / "README.md").write_text("loose files are ignored")
    (root / "animal" / "cat" / "test" / ".DS_Store").write_text("hidden")
    (root / "animal" / "cat" / "test" / "labels.csv").write_text("not an image")
    Image.new("RGB", (4, 4)).save(root / "animal" / "cat" / "test" / "extra.JPG")
    dirs = load_concept_dirs(root)
    assert list(dirs.concepts) == ["cat", "golden_retriever", "red"]
    assert dirs.domains == {"animal": ("cat", "golden_retriever"), "color": ("red",)}
    cat = dirs["cat"]
    assert cat.domain == "animal" and set(cat.splits) == {"train", "val", "test"}
    assert [p.name for p in cat.images("test")] == ["0.png", "1.png", "extra.JPG"]
    assert dirs["golden_retriever"].word == "golden retriever"
    assert dirs.others("cat", same_domain=True) == ("golden_retriever",)
    assert dirs.others("cat", same_domain=False) == ("red",)
    assert dirs.check_names(["red", "cat"]) == ("red", "cat")
    with pytest.raises(ConfigError, match="'dog' is not in"):
        dirs.check_names(["cat", "dog"])
    with pytest.raises(ConfigError, match="no concepts"):
        dirs.check_names([])


def test_val_is_optional_unless_required(tmp_path):
    root = build(tmp_path / "c", splits=("train", "test"))
    dirs = load_concept_dirs(root)
    with pytest.raises(InputError, match="no 'val' split"):
        dirs["cat"].images("val")
    with pytest.raises(InputError, match=r"cat' lacks the val split \(has: test, train\)"):
        load_concept_dirs(root, required=("train", "val", "test"))
    with pytest.raises(ConfigError, match="unknown split"):
        load_concept_dirs(root, required=("dev",))


def test_layout_errors_name_the_culprit(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_concept_dirs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no DOMAIN/CONCEPT"):
        load_concept_dirs(tmp_path / "empty")

    root = build(tmp_path / "a")
    (root / "scene").mkdir()
    with pytest.raises(InputError, match=r"domain folder .*scene' holds no concept folders"):
        load_concept_dirs(root)

    root = build(tmp_path / "b")
    for image in (root / "color" / "red" / "train").iterdir():
        image.unlink()
    with pytest.raises(InputError, match=r"red/train' holds no images"):
        load_concept_dirs(root)

    root = build(tmp_path / "c")
    (root / "animal" / "cat" / "test" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match=r"cat/test/broken\.png' cannot be read"):
        load_concept_dirs(root)
    assert len(load_concept_dirs(root, verify=False)["cat"].images("test")) == 3

    root = build(tmp_path / "d")
    for split in ("train", "test"):
        (root / "color" / "red" / split / "0.png").unlink()
        (root / "color" / "red" / split / "1.png").unlink()
        (root / "color" / "red" / split).rmdir()
    with pytest.raises(InputError, match=r"red' lacks the train, test splits \(has: val\)"):
        load_concept_dirs(root)

    root = build(tmp_path / "e")
    (root / "animal" / "cat" / "testing").mkdir()
    with pytest.raises(InputError, match="unexpected folder 'testing'"):
        load_concept_dirs(root)

    root = build(tmp_path / "g")
    (root / "pets" / "cat" / "train").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "pets" / "cat" / "train" / "0.png")
    with pytest.raises(InputError, match="concept 'cat' appears twice"):
        load_concept_dirs(root)
