"""The README: short, its links lead somewhere, its test command is CI's, and its Python example runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def section(text: str, name: str) -> str:
    """The README's block between `--8<-- [start:NAME]` and `--8<-- [end:NAME]` (the markers
    docs/index.md includes), without its code fence."""
    found = re.search(rf"--8<-- \[start:{name}\][^\n]*\n(.*?)\n[^\n]*--8<-- \[end:{name}\]", text, re.S)
    assert found, f"README.md has no {name} section"
    lines = found.group(1).strip().splitlines()
    assert lines[0].startswith("```") and lines[-1] == "```", lines
    return "\n".join(lines[1:-1]) + "\n"


def test_the_readme_fits_on_a_screen():
    assert len(README.read_text().splitlines()) <= 150


def broken_links(markdown: str, base: Path) -> list[str]:
    """Relative Markdown links whose file does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", markdown):
        url = urlparse(target)
        if url.scheme or url.netloc or not url.path:
            continue
        if not (base / url.path).exists():
            broken.append(target)
    return broken


def test_the_readme_links_lead_to_files():
    text = README.read_text()
    assert re.search(r"\]\(docs/", text)  # it does link into the site's pages
    assert broken_links(text, ROOT) == []
    assert broken_links(text + "[x](docs/no-such-page.md)", ROOT) == ["docs/no-such-page.md"]  # control


def test_the_readme_test_command_is_ci_s():
    """.ci/run holds its own copy of set-up command 2: both install the docs extra and build
    the site strictly before the tests."""
    readme = [line for line in section(README.read_text(), "setup").splitlines() if line.startswith("apt-get")]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("apt-get")]
    assert len(readme) == len(ci) == 1 and readme == ci
    assert re.search(r'-e "\.\[[^\]]*\bdocs\b[^\]]*\]"', ci[0])
    assert ci[0].index("mkdocs build --strict") < ci[0].index("pytest")


def _images(folder: Path, n: int, seed: int, size: int = 32) -> None:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys):
    """The README's example, exactly as written, on a tiny random LLaVA saved under the name
    the example loads and random images in its folders: it trains the SAE, selects the
    features, edits the tower and writes an export that transformers loads."""
    from tiny_models import SMALL, make_llava, transformers

    code = section(README.read_text(), "example")
    make_llava(SMALL, seed=5).save_pretrained(tmp_path / "llava-1.5-7b-hf")
    (tmp_path / "llava-1.5-7b-hf" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32}))
    _images(tmp_path / "images", 64, seed=0)  # 64 images x 17 tokens: just over one batch of 1024
    _images(tmp_path / "cats", 6, seed=1)
    _images(tmp_path / "not_cats", 6, seed=2)
    monkeypatch.chdir(tmp_path)

    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})

    printed = capsys.readouterr().out
    edit = float(re.search(r"edit at layer -2: ([0-9.eE+-]+)", printed).group(1))
    assert edit > 0  # the unlearned tower changes the hidden state it hooks
    assert json.loads((tmp_path / "cat.json").read_text())["concept"] == "cat"
    exported = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "llava-no-cat", trust_remote_code=True)
    assert type(exported).__name__ == "SauceLlavaForConditionalGeneration"
    assert exported.config.sauce["concepts"] == ["cat"]


TOP = ("sauce_jax/", "ports/", "train/", "eval/", "tests/", "benchmarks/", "docs/", "mutation/", ".ci/")


def stale_paths(markdown: str) -> list[str]:
    """Repository files named in backticks (`eval/metrics.py`) that do not exist."""
    named = re.findall(r"`([\w./-]+\.(?:py|md|sh|json|toml|yml))`", markdown)
    return sorted({p for p in named if p.startswith(TOP) and not (ROOT / p).exists()})


def test_the_files_the_documentation_names_exist():
    """A module moved or renamed without its documentation fails here."""
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    stale = {page.relative_to(ROOT).as_posix(): stale_paths(page.read_text()) for page in pages}
    assert {page: paths for page, paths in stale.items() if paths} == {}
    assert stale_paths("see `eval/no_such_module.py` and `eval/metrics.py`") == ["eval/no_such_module.py"]  # control
