"""ConceptWorld's concepts, scene specs and seeded sampling (what an image holds, not how it looks).

Five domains as in the paper's Table 1. An image is a scene (a sport-like background) with one
or two large items side by side; an item is either a drawn object (a shape) or a face (an
emotion), and every item has a color and a material. Its labels are every concept present.
Sampling is seeded with numpy's PCG64 from integer keys only (names go through crc32), so the
same seed gives the same specs on any machine and Python version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sauce_jax.errors import ConfigError
from sauce_jax.seeds import rng_for

DOMAINS: dict[str, tuple[str, ...]] = {
    "object": ("star", "circle", "square", "triangle", "heart", "cross", "moon", "arrow"),
    "scene": ("court", "field", "pool", "track", "rink", "beach"),
    "color": ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white"),
    "emotion": ("happy", "sad", "angry", "surprised"),
    "material": ("wood", "metal", "glass", "fabric", "stone"),
}
TASKS = {"concrete": ("object", "scene"), "abstract": ("color", "emotion", "material")}
CONCEPTS: tuple[str, ...] = tuple(c for names in DOMAINS.values() for c in names)
DOMAIN_OF: dict[str, str] = {c: d for d, names in DOMAINS.items() for c in names}
SPLITS = ("train", "val", "test")
FACE_PROBABILITY = 0.3  # share of items that are faces (carrying an emotion) rather than objects


@dataclasses.dataclass(frozen=True)
class Item:
    """One drawn item: an object `shape` or, when `emotion` is set, a face."""

    shape: str | None  # one of DOMAINS["object"], or None for a face
    emotion: str | None  # one of DOMAINS["emotion"], or None for an object
    color: str
    material: str

    @property
    def concepts(self) -> tuple[str, ...]:
        return tuple(c for c in (self.shape, self.emotion, self.color, self.material) if c is not None)


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything an image shows: its scene, items left to right, and the seed of its texture noise."""

    scene: str
    items: tuple[Item, ...]
    noise_seed: int

    @property
    def concepts(self) -> frozenset[str]:
        return frozenset((self.scene, *(c for item in self.items for c in item.concepts)))

    def has(self, concept: str) -> bool:
        return concept in self.concepts


def check_concepts(concepts: Sequence[str]) -> list[str]:
    """The names, validated: each must be a ConceptWorld concept."""
    unknown = [c for c in concepts if c not in DOMAIN_OF]
    if unknown:
        raise ConfigError(f"unknown ConceptWorld concept(s) {unknown}; known: {', '.join(CONCEPTS)}")
    if not concepts:
        raise ConfigError("no concepts given")
    return list(concepts)


def parse_concepts(text: str) -> tuple[str, ...]:
    """A comma-separated concept list ("star, red,happy"), blanks dropped, each name checked."""
    return tuple(check_concepts([c.strip() for c in text.split(",") if c.strip()]))


def _random_item(rng: np.random.Generator) -> Item:
    color = DOMAINS["color"][rng.integers(len(DOMAINS["color"]))]
    material = DOMAINS["material"][rng.integers(len(DOMAINS["material"]))]
    if rng.random() < FACE_PROBABILITY:
        return Item(None, DOMAINS["emotion"][rng.integers(4)], color, material)
    return Item(DOMAINS["object"][rng.integers(len(DOMAINS["object"]))], None, color, material)


def random_spec(rng: np.random.Generator) -> Spec:
    """Any image: uniform scene, one or two items."""
    scene = DOMAINS["scene"][rng.integers(len(DOMAINS["scene"]))]
    items = tuple(_random_item(rng) for _ in range(1 + int(rng.random() < 0.5)))
    return Spec(scene, items, int(rng.integers(2**31)))


def _force(spec: Spec, concept: str, rng: np.random.Generator) -> Spec:
    domain = DOMAIN_OF[concept]
    if domain == "scene":
        return dataclasses.replace(spec, scene=concept)
    items = list(spec.items)
    i = int(rng.integers(len(items)))
    item = items[i]
    if domain == "object":
        item = dataclasses.replace(item, shape=concept, emotion=None)
    elif domain == "emotion":
        item = dataclasses.replace(item, shape=None, emotion=concept)
    else:
        item = dataclasses.replace(item, **{domain: concept})
    items[i] = item
    return dataclasses.replace(spec, items=tuple(items))


def spec_with(concept: str, rng: np.random.Generator) -> Spec:
    """A random image that shows `concept` (on a random item, or as the scene)."""
    return _force(random_spec(rng), concept, rng)


def spec_without(concept: str, rng: np.random.Generator) -> Spec:
    """A random image that does not show `concept` (rejection sampling; at worst ~1 in 2 tries)."""
    while True:
        spec = random_spec(rng)
        if not spec.has(concept):
            return spec


def concept_split(concept: str, split: str, n: int, *, seed: int = 0, positive: bool = True,
                  stream: str = "split") -> list[Spec]:
    """The paper's per-concept split: `n` images with (`positive`) or without the concept.

    Splits and signs draw from disjoint seed streams, so train, val and test never share a spec
    stream and a change of `n` only appends or truncates. `stream` names another family of
    streams (the evaluation's retain pool uses "pool"), so no two seeds or uses share images.
    """
    check_concepts([concept])
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not one of {SPLITS}")
    if n < 0:
        raise ConfigError(f"n={n} images must be >= 0")
    make = spec_with if positive else spec_without
    return [make(concept, rng_for(seed, stream, concept, split, int(positive), i)) for i in range(n)]


def generic_stream(n: int, *, seed: int = 0, start: int = 0, stream: str = "generic") -> list[Spec]:
    """Images `start .. start+n` of a named stream of random images: "generic" is the ImageNet
    stand-in for SAE training; the VLM's training and validation use streams of their own."""
    if n < 0 or start < 0:
        raise ConfigError(f"{stream} stream range start={start}, n={n} must be >= 0")
    return [random_spec(rng_for(seed, stream, start + i)) for i in range(n)]
