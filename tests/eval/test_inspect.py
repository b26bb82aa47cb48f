"""`sauce-jax inspect`: the feature browser's numbers against the library's own functions, the
site opened in headless Chromium (every page, image, link and script), and bad input refused
before anything is written."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from tiny_models import SMALL, make_llava, make_llava_processor

from sauce_jax import cli
from sauce_jax.errors import ConfigError, InputError, SauceError
from sauce_jax.eval.inspect import InspectConfig, build_site
from sauce_jax.eval.inspect.activations import patch_grid, run_pass
from sauce_jax.eval.inspect.output import MARKER

LAYER = 1  # of the tiny CLIP's 3 hidden states


def _pictures(folder: Path, n: int, seed: int, classes=("a", "b")) -> Path:
    """n small RGB images: a coloured square on noise, in class subfolders (or flat if no classes)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        a = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        r, c = rng.integers(0, 20, 2)
        a[r:r + 20, c:c + 20] = (250, 30, 30) if i % 2 else (30, 30, 250)
        Image.fromarray(a).save(sub / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory, small_clip_dir):
    """A tiny random CLIP, a random SAE on its hidden state 1, two FeatureSets sharing one
    feature, 12 images in two classes and 5 negatives, all on disk."""
    import jax

    import sauce_jax
    from sauce_jax.sae import SAE, SAEConfig, init_params
    from sauce_jax.scoring import top_features

    root = tmp_path_factory.mktemp("inspect")
    config = SAEConfig(d_in=SMALL["hidden_size"], d_sae=48)
    sae = SAE(init_params(jax.random.key(1), config), config, {"layer": LAYER, "token": "all"})
    sauce_jax.save_sae(sae, root / "sae")
    scores = np.random.default_rng(0).standard_normal(config.d_sae)
    kw = dict(layer=LAYER, sae_fingerprint=sae.fingerprint(), token="all", gamma=0.0)
    red = top_features(scores, 5, concept="red square", **kw)
    blue = top_features(-scores, 4, concept="blue", **kw)
    blue = type(blue)(**{**blue.__dict__, "feature_ids": blue.feature_ids[:3] + red.feature_ids[:1],
                         "scores": blue.scores})  # one shared feature: an overlap to show
    red.save(root / "red.json")
    blue.save(root / "blue.json")
    return {"root": root, "sae": sae, "sets": [red, blue], "clip": small_clip_dir[0],
            "images": _pictures(root / "images", 12, 0), "negatives": _pictures(root / "negatives", 5, 1, ())}


def _args(world, out, *extra, encoder=None) -> list[str]:
    r = world["root"]
    return ["inspect", "--sae", str(r / "sae"), "--encoder", str(encoder or world["clip"]), "--features", str(r / "red.json"),
            str(r / "blue.json"), "--images", str(world["images"]), "--negatives", str(world["negatives"]),
            "--out", str(out), "--top", "4", "--before-after", "3", "--batch-size", "8", "--no-progress", *extra]


# ------------------------------------------------------------------------------ the numbers

def test_one_pass_matches_the_library(world, small_encoder):
    """Per-image activations equal `scoring.image_activations` (the selection's), the top images
    `top_images.top_activating`'s, and a top image's patch map the SAE code of its patch tokens."""
    import jax.numpy as jnp

    from sauce_jax import sae as sae_lib
    from sauce_jax.eval.top_images import top_activating
    from sauce_jax.image_processor import preprocess
    from sauce_jax.images import list_images
    from sauce_jax.scoring import image_activations

    sae, ids = world["sae"], [3, 17, 40, 5]
    items = list_images(world["images"])
    p = run_pass(small_encoder, sae, items, layer=LAYER, token="all", ids=ids, n_top=3, batch_size=5, progress=False)
    z = image_activations(sae, small_encoder, items, layer=LAYER, token="all", progress=False)  # [N, d_sae]
    np.testing.assert_allclose(p.values, z[:, ids], rtol=1e-5, atol=1e-6)
    tops = top_activating(z, ids, 3)
    for j, f in enumerate(ids):
        assert list(p.top_rows[:, j]) == tops[f], f
    g = patch_grid(small_encoder)
    assert g == SMALL["image_size"] // SMALL["patch_size"]
    j, i = 1, int(p.top_rows[0, 1])
    hidden = small_encoder.hidden_state(preprocess([Image.open(items[i])], small_encoder), LAYER)  # [1, T, D]
    direct = np.asarray(sae_lib.encode(sae.params, jnp.asarray(hidden), sae.config))[0, 1:, ids[j]]  # [g * g]
    np.testing.assert_allclose(p.top_maps[0, :, :, j], direct.reshape(g, g), rtol=1e-5, atol=1e-6)


def test_probe_labels_from_class_folders(world):
    """Class subfolders give labels (a flat folder none); the ridge probe labels held-out points
    of separable classes."""
    from sauce_jax.eval.inspect.before_after import fit_probe, folder_labels
    from sauce_jax.images import list_images

    items = list_images(world["images"])
    assert folder_labels(items, world["images"]) == [p.parent.name for p in items]
    assert folder_labels(list_images(world["negatives"]), world["negatives"]) is None
    rng = np.random.default_rng(0)
    labels = ["cat", "dog", "red"] * 20
    centres = {c: 3.0 * np.eye(5)[i] for i, c in enumerate(("cat", "dog", "red"))}  # one direction per class
    x = rng.standard_normal((60, 5)) + np.array([centres[c] for c in labels])
    probe = fit_probe(x, labels)
    assert probe.classes == ("cat", "dog", "red") and probe.train_accuracy >= 0.9
    held = rng.standard_normal((30, 5)) + np.array([centres[c] for c in labels[:30]])
    assert np.mean([p == t for p, t in zip(probe.predict(held), labels[:30])]) >= 0.85


# ------------------------------------------------------------------------------ the browser

def _chromium():
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs the test extra (selenium)")
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (see the README's test command)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


REFS = """return [Array.from(document.images).map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : 0]),
  Array.from(document.querySelectorAll('a[href], link[href], script[src]')).map(e => e.getAttribute('href') || e.getAttribute('src')),
  Array.from(document.querySelectorAll('img.heat')).map(i => i.style.opacity)];"""


def _problems(driver, site: Path) -> list[str]:
    """Open every page of `site`; everything wrong: console errors, images that did not load,
    references that are not relative or lead to no file, a script that did not run."""
    found = []
    for page in sorted(site.glob("*.html")):
        driver.get(page.as_uri())
        found += [f"{page.name}: console {e['message']}" for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        images, refs, heat = driver.execute_script(REFS)
        found += [f"{page.name}: image {src} did not load" for src, width in images if not width]
        for ref in [src for src, _ in images] + refs:
            url = urlparse(ref)
            if url.scheme or url.netloc or ref.startswith("/"):
                found.append(f"{page.name}: {ref} is not a relative path")
            elif not (page.parent / unquote(url.path)).resolve().is_file():
                found.append(f"{page.name}: {ref} leads to no file")
        found += [f"{page.name}: the script did not style the heatmaps" for o in heat if o == ""]
    return found


def test_the_site_opens_in_chromium(world, tmp_path, capsys):
    """The command's site, moved elsewhere (so nothing may point back to where it was written),
    opens in headless Chromium with no console error, every image and link resolving and the
    script running; the concept page's screenshot is taken. Control: the same check on a copy
    with an absolute image path and a script error finds both."""
    assert cli.main(_args(world, tmp_path / "written")) == 0
    assert "index.html" in capsys.readouterr().out
    site = tmp_path / "moved"
    os.rename(tmp_path / "written", site)
    pages = sorted(p.name for p in site.glob("*.html"))
    ids = {f for s in world["sets"] for f in s.feature_ids}
    assert pages == sorted(["index.html", "concept-red-square.html", "concept-blue.html",
                            *(f"feature-{f}.html" for f in ids)])
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    concept = (broken / "concept-blue.html").read_text()
    (broken / "concept-blue.html").write_text(concept.replace('src="img/', f'src="{broken}/img/', 1))
    index = (broken / "index.html").read_text()
    (broken / "index.html").write_text(index.replace("</body>", "<script>notDefined();</script></body>"))

    driver = _chromium()
    try:
        assert _problems(driver, site) == []
        control = _problems(driver, broken)
        driver.get((site / "concept-blue.html").as_uri())
        shot = tmp_path / "concept.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert any("is not a relative path" in p and "concept-blue" in p for p in control), control
    assert any("notDefined" in p for p in control), control
    with Image.open(shot) as image:
        assert image.size[0] >= 800 and len(np.unique(np.asarray(image.convert("L")))) > 10  # a rendered page, not blank

    # What the pages say: the sets' parameters, every feature, the overlap and the probe.
    text = (site / "concept-blue.html").read_text()
    red, blue = world["sets"]
    assert "k = 4 features, gamma = 0" in text and "Jaccard" in text
    shared = red.feature_ids[0]
    assert re.search(rf'href="feature-{shared}.html">{shared}</a>.*?href="concept-red-square.html"', text, re.S)
    assert "probe label clean" in text and "answer clean" not in text  # a CLIP: no language model
    assert json.loads((site / MARKER).read_text())["concepts"] == ["red square", "blue"]


# ------------------------------------------------------------------------------ bad input

def test_bad_input_writes_nothing(world, tmp_path, capsys):
    """A FeatureSet of another SAE, sets of two layers, an empty image folder, an output folder
    that is not a site:
    a one-line error naming the culprit, and the folder as it was."""
    import dataclasses

    other = dataclasses.replace(world["sets"][0], sae_fingerprint="0123456789abcdef")
    other.save(tmp_path / "other.json")
    dataclasses.replace(world["sets"][0], layer=2).save(tmp_path / "deeper.json")
    (tmp_path / "empty").mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    cases = [(_args(world, tmp_path / "a") + ["--features", str(tmp_path / "other.json")], "belongs to SAE"),
             (_args(world, tmp_path / "a") + ["--features", str(tmp_path / "deeper.json"), str(world["root"] / "blue.json")],
              "disagree on layer"),
             (_args(world, tmp_path / "b") + ["--images", str(tmp_path / "empty")], "holds no images"),
             (_args(world, mine), "not a sauce-jax inspect site")]
    for args, message in cases:
        before = sorted(tmp_path.rglob("*"))
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing removed
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="n_top"):
        InspectConfig(n_top=0)


def test_a_previous_site_is_replaced_whole_or_kept(world, small_encoder, tmp_path, monkeypatch):
    """A rerun replaces a previous site; a run that fails while writing leaves the previous site
    untouched and no temporary folder behind."""
    from sauce_jax.eval.inspect import pages

    out = tmp_path / "site"
    kw = dict(sae=world["sae"], encoder=small_encoder, feature_sets=world["sets"][:1], images=world["images"],
              config=InspectConfig(n_top=2, n_before_after=1, batch_size=8), progress=False)
    build_site(out, **kw)
    first = {p.name for p in out.glob("*.html")}
    build_site(out, **{**kw, "feature_sets": world["sets"]})  # a second set: more pages
    second = {p.name for p in out.glob("*.html")}
    assert first < second

    def crash(*args, **kwargs):
        raise InputError("disk full")

    monkeypatch.setattr(pages, "feature_page", crash)
    with pytest.raises(SauceError, match="disk full"):
        build_site(out, **kw)
    assert {p.name for p in out.glob("*.html")} == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


# ------------------------------------------------------------------------------ LLaVA answers

def test_llava_answers_clean_and_unlearned(world, tmp_path, one_torch_thread):
    """With a LLaVA checkpoint as the encoder, the before/after view holds the model's answers,
    clean and unlearned, exactly as `LlavaAnswerer.ask` gives them."""
    from sauce_jax.eval.inspect.before_after import before_after
    from sauce_jax.eval.vlm.llava_answerer import LlavaAnswerer
    from sauce_jax.images import list_images
    from sauce_jax.intervention import unlearn
    from sauce_jax.scoring import image_activations

    words = ["<unk>", "<pad>", "<s>", "</s>", "USER", "ASSISTANT", ":", "describe", "it"] + [f"w{i}" for i in range(100)]
    make_llava(SMALL, seed=2).save_pretrained(tmp_path / "llava")
    make_llava_processor(words).save_pretrained(tmp_path / "llava")
    answerer = LlavaAnswerer(tmp_path / "llava", batch_size=2)
    items = list_images(world["images"])[:2]
    red = world["sets"][0]
    rows = before_after(answerer.encoder, world["sae"], red, items, token="all", answerer=answerer,
                        prompt="describe it", max_new_tokens=4)
    clean = answerer.ask(items, [["describe it"]] * 2, max_new_tokens=4)
    edited = answerer.ask(items, [["describe it"]] * 2, max_new_tokens=4,
                          unlearned=unlearn(answerer.encoder, world["sae"], red))
    assert [r["clean"]["answer"] for r in rows] == [a[0] for a in clean]
    assert [r["unlearned"]["answer"] for r in rows] == [a[0] for a in edited]
    z = image_activations(world["sae"], answerer.encoder, items, layer=LAYER, token="all", progress=False)
    np.testing.assert_allclose([r["clean"]["set_activation"] for r in rows], z[:, list(red.feature_ids)].sum(1),
                               rtol=1e-5)

    # the checkpoint's path is enough: build_site loads the LLaVA and asks it
    out = build_site(tmp_path / "site", sae=world["root"] / "sae", encoder=tmp_path / "llava", feature_sets=[red],
                     images=items, config=InspectConfig(n_top=1, n_before_after=1, max_new_tokens=2), progress=False)
    assert "answer clean" in (out / "concept-red-square.html").read_text()


def test_an_mllama_tower_gets_a_site_without_heatmaps(world, tmp_path):
    """Mllama's tiles are not one patch grid: its site has the numbers and images but no heatmap,
    and per-image activations still equal the selection's (`scoring.image_activations`)."""
    import jax

    import sauce_jax
    from tiny_models import MLLAMA_SMALL, make_mllama
    from sauce_jax.sae import SAE, SAEConfig, init_params
    from sauce_jax.scoring import image_activations, top_features

    make_mllama(MLLAMA_SMALL).save_pretrained(tmp_path / "mllama")
    encoder = sauce_jax.load_encoder(tmp_path / "mllama")
    config = SAEConfig(d_in=MLLAMA_SMALL["hidden_size"], d_sae=32)
    sae = SAE(init_params(jax.random.key(2), config), config)
    scores = np.random.default_rng(1).standard_normal(config.d_sae)
    fs = top_features(scores, 3, concept="tiles", layer=2, sae_fingerprint=sae.fingerprint(), token="all")
    images = sorted(world["images"].rglob("*.png"))[:4]
    out = build_site(tmp_path / "site", sae=sae, encoder=encoder, feature_sets=[fs], images=images,
                     config=InspectConfig(n_top=2, n_before_after=1, batch_size=4), progress=False)
    assert not list((out / "heat").iterdir())
    z = image_activations(sae, encoder, images, layer=2, token="all", progress=False)  # [4, d_sae]
    best = int(np.argmax(z[:, fs.feature_ids[0]]))
    text = (out / f"feature-{fs.feature_ids[0]}.html").read_text()
    assert f'src="img/p{best}.png"' in text and f"{z[best, fs.feature_ids[0]]:.4g}" in text
