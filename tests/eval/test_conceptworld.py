"""ConceptWorld's generator: determinism per seed, splits, and labels checked on the rendered pixels."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sauce_jax.eval.conceptworld import text as T
from sauce_jax.eval.conceptworld.render import (
    COLORS,
    DARK_COLORS,
    IMAGE_SIZE,
    TEXTURE_DEPTH,
    render,
    render_with_masks,
)
from sauce_jax.eval.conceptworld.world import (
    CONCEPTS,
    DOMAINS,
    Item,
    Spec,
    concept_split,
    generic_stream,
    rng_for,
    spec_without,
)
from sauce_jax.errors import ConfigError


def _digest(images) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(i).tobytes() for i in images)).hexdigest()


def test_same_seed_same_images_other_seed_other_images():
    a = [render(s) for s in generic_stream(6, seed=3)]
    b = [render(s) for s in generic_stream(6, seed=3)]
    c = [render(s) for s in generic_stream(6, seed=4)]
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert a[0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and a[0].dtype == np.uint8


def test_specs_do_not_depend_on_the_python_process():
    # PCG64 keyed by crc32 of names: these are the same on every machine and Python version.
    specs = generic_stream(3, seed=0)
    assert [T.description(s) for s in specs] == [T.description(s) for s in generic_stream(3, seed=0)]
    assert rng_for(0, "generic", 0).integers(1 << 30) == rng_for(0, "generic", 0).integers(1 << 30)
    assert generic_stream(2, seed=0, start=1)[0] == specs[1]


_FINGERPRINT = """
import hashlib, numpy as np
from sauce_jax.eval.conceptworld.render import render
from sauce_jax.eval.conceptworld.world import concept_split, generic_stream
specs = generic_stream(4, seed=11) + concept_split("red", "test", 2, seed=11)
digest = hashlib.sha256(repr(specs).encode())
for spec in specs:
    digest.update(np.ascontiguousarray(render(spec)).tobytes())
print(digest.hexdigest())
"""


def test_the_same_seed_renders_the_same_bytes_in_another_process():
    """Python salts `hash()` of strings per process: a key derived from it would give other
    specs and pixels in a process started with another PYTHONHASHSEED."""
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", _FINGERPRINT], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        runs.append(run.stdout.strip())
    namespace = {}
    from contextlib import redirect_stdout
    from io import StringIO

    with redirect_stdout(StringIO()) as printed:
        exec(_FINGERPRINT, namespace)
    assert runs[0] == runs[1] == printed.getvalue().strip()


def test_splits_hold_the_concept_or_not_and_differ_between_splits():
    for concept in ("star", "pool", "red", "happy", "glass"):
        pos = concept_split(concept, "train", 20, seed=0)
        neg = concept_split(concept, "train", 20, seed=0, positive=False)
        assert all(s.has(concept) for s in pos) and not any(s.has(concept) for s in neg)
        assert concept_split(concept, "test", 20, seed=0) != pos
        assert concept_split(concept, "train", 5, seed=0) == pos[:5]  # n only truncates


def test_bad_split_arguments():
    with pytest.raises(ConfigError, match="unknown ConceptWorld concept"):
        concept_split("unicorn", "train", 3)
    with pytest.raises(ConfigError, match="split"):
        concept_split("star", "holdout", 3)
    with pytest.raises(ConfigError, match=">= 0"):
        concept_split("star", "train", -1)


def test_every_concept_appears_in_the_generic_stream():
    seen = set().union(*(s.concepts for s in generic_stream(400, seed=0)))
    assert seen == set(CONCEPTS)


# ---------------------------------------------------------------- labels, read off the pixels

def _foreground(spec: Spec) -> np.ndarray:
    """Pixels that differ from the same scene drawn without items: [S, S] bool."""
    empty = render(Spec(spec.scene, (), spec.noise_seed)).astype(int)
    return np.abs(render(spec).astype(int) - empty).sum(-1) > 60


def _normalised(mask: np.ndarray, size: int = 32) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
    return np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)) > 127


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_object_shapes_are_recognisable_from_pixels():
    # Templates: each shape drawn white on the same scene; every test image's foreground (found
    # by comparing with the empty scene) must match its own shape's template best.
    shapes = DOMAINS["object"]
    templates = {s: _normalised(_foreground(Spec("pool", (Item(s, None, "white", "metal"),), 1))) for s in shapes}
    for i, shape in enumerate(shapes):
        for color, material in (("red", "wood"), ("black", "stone"), ("yellow", "fabric")):
            spec = Spec(("court", "field", "track")[i % 3], (Item(shape, None, color, material),), 100 + i)
            found = _normalised(_foreground(spec))
            best = max(shapes, key=lambda s: _iou(found, templates[s]))
            assert best == shape, f"{shape} ({color} {material}) looks most like {best}"


def _segment_distance(pixels: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each pixel [N, 3] to the RGB segment a..b."""
    t = np.clip(((pixels - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(pixels - (a + t[:, None] * (b - a)), axis=1)


def test_item_colors_are_the_labelled_ones():
    # A textured pixel lies between the colour and its stroke colour (at most TEXTURE_DEPTH of the
    # way): each pixel votes for the palette colour whose segment it is nearest to.
    palette = {name: np.array(rgb, float) for name, rgb in COLORS.items()}
    stroke = {name: np.array((200, 200, 200) if name in DARK_COLORS else (0, 0, 0), float) for name in COLORS}
    ends = {name: palette[name] + TEXTURE_DEPTH * (stroke[name] - palette[name]) for name in COLORS}
    for i, color in enumerate(DOMAINS["color"]):
        for material in ("wood", "metal", "fabric", "stone"):
            spec = Spec("rink", (Item("square", None, color, material),), i)
            image, coverage = render_with_masks(spec)
            inside = coverage[0] > 0.99
            inside &= np.roll(inside, 3, 0) & np.roll(inside, -3, 0) & np.roll(inside, 3, 1) & np.roll(inside, -3, 1)
            pixels = image[inside].reshape(-1, 3).astype(float)
            names = list(COLORS)
            dist = np.stack([_segment_distance(pixels, palette[n], ends[n]) for n in names])  # [10, N]
            votes = np.bincount(dist.argmin(0), minlength=len(names))
            assert names[int(votes.argmax())] == color, f"{color} {material}: votes {dict(zip(names, votes))}"


def test_scenes_are_the_labelled_ones():
    # The border strip never holds items: its dominant colour identifies the scene.
    base = {}
    for scene in DOMAINS["scene"]:
        img = render(Spec(scene, (), 0))
        base[scene] = np.median(img[-6:].reshape(-1, 3), axis=0)
    for spec in generic_stream(40, seed=5):
        strip = np.median(render(spec)[-6:].reshape(-1, 3), axis=0)
        nearest = min(base, key=lambda s: np.abs(base[s] - strip).sum())
        assert nearest == spec.scene


def _mouth_curvature(spec: Spec) -> float:
    """Mean height of the mouth's ends minus its middle (positive: corners up, a smile)."""
    image, coverage = render_with_masks(spec)
    inside = coverage[0] > 0.99
    inside &= np.roll(inside, 4, 0) & np.roll(inside, -4, 0) & np.roll(inside, 4, 1) & np.roll(inside, -4, 1)
    ink = (image.sum(-1) < 60) & inside
    ys, xs = np.nonzero(inside)
    cy, cx, r = ys.mean(), xs.mean(), (xs.max() - xs.min()) / 2
    my, mx = np.nonzero(ink & (np.arange(image.shape[0])[:, None] > cy + 0.1 * r))
    middle = my[np.abs(mx - cx) < 0.15 * r].mean()
    ends = my[np.abs(mx - cx) > 0.3 * r].mean()
    return float(middle - ends)


def test_face_expressions_are_drawn_as_labelled():
    for color in ("yellow", "pink", "white"):
        faces = {e: Spec("pool", (Item(None, e, color, "metal"),), 7) for e in DOMAINS["emotion"]}
        assert _mouth_curvature(faces["happy"]) > 1.5  # corners up
        assert _mouth_curvature(faces["sad"]) < -1.5  # corners down
        assert abs(_mouth_curvature(faces["angry"])) < 1.0  # a flat line
        # Surprised: the open mouth is a filled blob, far more ink than the flat angry line.
        ink = {e: int((render(s).sum(-1) < 60).sum()) for e, s in faces.items()}
        assert ink["surprised"] > ink["sad"] and ink["angry"] != ink["happy"]


def _gradients(spec: Spec) -> tuple[float, float]:
    image, coverage = render_with_masks(spec)
    inside = coverage[0] > 0.99
    inside &= np.roll(inside, 3, 0) & np.roll(inside, -3, 0) & np.roll(inside, 3, 1) & np.roll(inside, -3, 1)
    g = image.astype(float).mean(-1)
    dy = np.abs(np.diff(g, axis=0))[inside[1:] & inside[:-1]].mean()
    dx = np.abs(np.diff(g, axis=1))[inside[:, 1:] & inside[:, :-1]].mean()
    return float(dy), float(dx)


def test_materials_have_their_textures():
    for color in ("red", "blue", "green"):
        wood = _gradients(Spec("rink", (Item("square", None, color, "wood"),), 2))
        metal = _gradients(Spec("rink", (Item("square", None, color, "metal"),), 2))
        fabric = _gradients(Spec("rink", (Item("square", None, color, "fabric"),), 2))
        assert wood[0] > 2 * wood[1]  # horizontal grain: changes going down
        assert max(metal) < min(fabric)  # smooth sheen vs a fine weave
        assert fabric[0] > 0.5 * fabric[1] and fabric[1] > 0.5 * fabric[0]  # checks both ways
        image, coverage = render_with_masks(Spec("rink", (Item("square", None, color, "glass"),), 2))
        streaks = (image.min(-1) > 200) & (coverage[0] > 0.99)
        assert streaks.sum() > 0.05 * (coverage[0] > 0.99).sum()  # bright streaks across the glass


def test_negatives_never_show_the_concept_in_the_description():
    rng = np.random.default_rng(0)
    for concept in ("moon", "beach", "pink", "angry", "stone"):
        spec = spec_without(concept, rng)
        assert not T.mentions(T.description(spec), concept)
        assert not T.mentions(T.description(spec, "es"), concept)


def test_descriptions_name_every_concept_in_both_languages():
    for spec in generic_stream(50, seed=2):
        for language in T.LANGUAGES:
            said = T.description(spec, language)
            assert all(T.mentions(said, c, (language,)) for c in spec.concepts), (said, spec)


@pytest.mark.slow
def test_the_vlm_recipe_runs_resumes_and_refuses_another_recipe(tmp_path):
    import torch

    from sauce_jax.eval.conceptworld.training import RecipeConfig, train

    config = RecipeConfig(images=64, val_images=4, tower_steps=3, lm_steps=3, focus_steps=2, tower_batch=4,
                          lm_batch=4, checkpoint_every=2, workers=1)
    target = train(tmp_path, config, log=lambda message: None)
    assert {p.name for p in tmp_path.iterdir()} >= {"tower.pt", "language.pt", "focus.pt", "train_images.npz"}
    first = (target / "model.safetensors").read_bytes()
    said = []
    train(tmp_path, config, log=said.append)  # every stage is finished: nothing is trained again
    assert not any(line.startswith(("tower step", "stage")) for line in said)
    assert (target / "model.safetensors").read_bytes() == first
    assert torch.load(tmp_path / "focus.pt", weights_only=False)["step"] == 2
    with pytest.raises(ConfigError, match="another recipe"):
        train(tmp_path, RecipeConfig(images=64, tower_steps=5), log=lambda message: None)
