"""ConceptWorld's drawing: a `Spec` to a uint8 RGB image, and to the pixel mask of each item.

Drawn with PIL at twice the size and box-downsampled (anti-aliasing that is identical on every
machine). Items are large and outlined (each material with its own rim) so that shape, color, material and facial
expression are all readable by a small ViT at 12-pixel patches: one item fills the middle, two
items take the left and right halves.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw

from .world import Item, Spec, rng_for

IMAGE_SIZE = 96
SUPERSAMPLE = 2

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (30, 70, 225), "green": (30, 170, 50), "yellow": (245, 220, 30),
    "purple": (140, 40, 185), "orange": (255, 140, 0), "pink": (255, 130, 195), "brown": (125, 70, 25),
    "black": (25, 25, 25), "white": (245, 245, 245),
}
# Texture strokes go towards black on light colors and towards light grey on dark ones, so that
# a black or brown item still shows its material.
DARK_COLORS = ("black", "brown", "purple", "blue")
TEXTURE_DEPTH = 0.4  # the most a texture moves a pixel towards its stroke colour


def item_boxes(n_items: int, size: int, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(center x, center y, diameter) of each item, in pixels of a `size` image."""
    if n_items == 1:
        jitter = rng.uniform(-0.03, 0.03, size=3) * size
        return [(0.5 * size + jitter[0], 0.5 * size + jitter[1], 0.62 * size + jitter[2])]
    jitter = rng.uniform(-0.02, 0.02, size=(2, 3)) * size
    return [((0.26 + 0.48 * i) * size + jitter[i, 0], 0.5 * size + jitter[i, 1], 0.44 * size + jitter[i, 2])
            for i in range(2)]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def at(points):
        return [(cx + r * x, cy + r * y) for x, y in points]

    if shape == "star":
        return at([(math.sin(a) * (1.0 if k % 2 == 0 else 0.42), -math.cos(a) * (1.0 if k % 2 == 0 else 0.42))
                   for k, a in ((k, k * math.pi / 5) for k in range(10))])
    if shape == "triangle":
        return at([(0, -0.95), (0.95, 0.8), (-0.95, 0.8)])
    if shape == "square":
        return at([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)])
    if shape == "cross":
        a, b = 0.3, 0.95
        return at([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
                   (-a, -a)])
    if shape == "arrow":
        return at([(-0.95, -0.28), (0.1, -0.28), (0.1, -0.75), (0.95, 0), (0.1, 0.75), (0.1, 0.28), (-0.95, 0.28)])
    if shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 60, endpoint=False)
        xs = 16 * np.sin(ts) ** 3
        ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
        return at(list(zip(xs / 17.0, (ys + 2.5) / 17.0)))
    raise ValueError(shape)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Max over a (2 radius + 1)^2 square, separably, as running maxima of shifted views (PIL's
    MaxFilter is 10x slower here); outside the image counts as 0."""
    out = mask
    for axis in (0, 1):
        n = out.shape[axis]
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        window = [slice(None), slice(None)]
        result = None
        for k in range(2 * radius + 1):
            window[axis] = slice(k, k + n)
            view = padded[tuple(window)]
            result = view.copy() if result is None else np.maximum(result, view, out=result)
        out = result
    return out


def _mask(item: Item, cx: float, cy: float, r: float, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    shape = item.shape if item.emotion is None else "circle"
    if shape == "circle":
        draw.ellipse((cx - 0.95 * r, cy - 0.95 * r, cx + 0.95 * r, cy + 0.95 * r), fill=255)
    elif shape == "moon":
        draw.ellipse((cx - 0.95 * r, cy - 0.95 * r, cx + 0.95 * r, cy + 0.95 * r), fill=255)
        draw.ellipse((cx - 0.45 * r, cy - 1.05 * r, cx + 1.25 * r, cy + 0.65 * r), fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=255)
    return mask


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> np.ndarray:
    """[2, size, size] float32 row and column indices, read-only (every texture shares them)."""
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    grid.flags.writeable = False
    return grid


def _texture(material: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """[size, size] in [0, 1]: how far each pixel moves towards the stroke colour."""
    y, x = _grid(size)
    phase = rng.uniform(0, 2 * math.pi)
    s = size / (IMAGE_SIZE * SUPERSAMPLE)  # patterns scale with the image
    if material == "wood":  # bold wavy horizontal grain
        return (np.sin(2 * math.pi * (y + 4 * s * np.sin(x / (9 * s) + phase)) / (12 * s)) > 0.2).astype(np.float32)
    if material == "metal":  # smooth vertical sheen
        return 0.5 + 0.5 * np.sin(2 * math.pi * x / (40 * s) + phase)
    if material == "fabric":  # fine checked weave
        return (((x // (6 * s)).astype(int) + (y // (6 * s)).astype(int)) % 2).astype(np.float32)
    if material == "stone":  # blotchy speckle
        cells = max(1, round(size / (8 * s)))
        coarse = rng.random((cells, cells)).astype(np.float32)
        blotches = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.NEAREST))
        return 0.6 * (blotches / 255.0) + 0.4 * rng.random((size, size)).astype(np.float32)
    if material == "glass":  # handled in _fill: pale and see-through with bright streaks
        return (((x - y) % (28 * s)) < 5 * s).astype(np.float32)
    raise ValueError(material)


# Each material also has its own rim, the way a wooden board, a metal plate, a glass pane, a
# stitched cloth and a stone slab differ at their edges; a rim is a colour a patch embedding
# reads at once, where the fill's textures need second-order statistics a small ViT learns slowly.
EDGES = {"wood": (110, 60, 20), "metal": (160, 165, 180), "glass": (235, 245, 255), "stone": (60, 60, 60)}


def _edge(material: str, size: int) -> np.ndarray:
    """[S, S, 3] rim colour of `material` (fabric: black and white stitches)."""
    if material == "fabric":
        y, x = np.mgrid[0:size, 0:size]
        stitch = (((x + y) // (4 * SUPERSAMPLE)) % 2).astype(np.float32)[..., None]
        return stitch * 255.0
    return np.broadcast_to(np.array(EDGES[material], np.float32), (size, size, 3))


def _fill(item: Item, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = background.shape[0]
    color = np.array(COLORS[item.color], np.float32)
    texture = _texture(item.material, size, rng)[..., None]  # [S, S, 1]
    if item.material == "glass":
        pale = 0.7 * color + 0.3 * background  # see-through tint
        return pale * (1 - 0.8 * texture) + 255.0 * 0.8 * texture
    stroke = np.array((200, 200, 200) if item.color in DARK_COLORS else (0, 0, 0), np.float32)
    return color * (1 - TEXTURE_DEPTH * texture) + stroke * TEXTURE_DEPTH * texture


def _face(draw: ImageDraw.ImageDraw, emotion: str, cx: float, cy: float, r: float, ink: tuple[int, int, int]) -> None:
    w = max(2, int(0.14 * r))  # bold strokes
    eye_r = 0.13 * r
    for side in (-1, 1):
        ex, ey = cx + side * 0.38 * r, cy - 0.25 * r
        if emotion == "surprised":
            draw.ellipse((ex - 1.5 * eye_r, ey - 1.7 * eye_r, ex + 1.5 * eye_r, ey + 1.7 * eye_r), outline=ink, width=w)
        else:
            draw.ellipse((ex - eye_r, ey - eye_r, ex + eye_r, ey + eye_r), fill=ink)
        if emotion == "angry":  # brows slanting down to the middle
            draw.line((ex + side * 0.28 * r, ey - 0.42 * r, ex - side * 0.22 * r, ey - 0.2 * r), fill=ink, width=w)
    if emotion == "happy":
        draw.arc((cx - 0.5 * r, cy - 0.35 * r, cx + 0.5 * r, cy + 0.6 * r), 20, 160, fill=ink, width=w)
    elif emotion == "sad":
        draw.arc((cx - 0.5 * r, cy + 0.3 * r, cx + 0.5 * r, cy + 1.1 * r), 200, 340, fill=ink, width=w)
    elif emotion == "angry":
        draw.line((cx - 0.4 * r, cy + 0.45 * r, cx + 0.4 * r, cy + 0.45 * r), fill=ink, width=w)
    elif emotion == "surprised":
        draw.ellipse((cx - 0.2 * r, cy + 0.2 * r, cx + 0.2 * r, cy + 0.7 * r), fill=ink)


def _scene(scene: str, size: int, rng: np.random.Generator) -> Image.Image:
    s = size / IMAGE_SIZE
    img = Image.new("RGB", (size, size))
    d = ImageDraw.Draw(img)
    lw = max(1, int(2 * s))
    if scene == "court":
        d.rectangle((0, 0, size, size), fill=(205, 120, 60))
        d.rectangle((6 * s, 6 * s, size - 6 * s, size - 6 * s), outline=(255, 255, 255), width=lw)
        d.line((size / 2, 0, size / 2, size), fill=(255, 255, 255), width=lw)
        d.ellipse((size / 2 - 12 * s, size / 2 - 12 * s, size / 2 + 12 * s, size / 2 + 12 * s), outline=(255, 255, 255), width=lw)
    elif scene == "field":
        for k in range(8):  # mowing stripes
            d.rectangle((k * size / 8, 0, (k + 1) * size / 8, size), fill=(60, 150, 60) if k % 2 else (45, 125, 45))
        d.rectangle((3 * s, 20 * s, 18 * s, size - 20 * s), outline=(255, 255, 255), width=lw)
        d.rectangle((size - 18 * s, 20 * s, size - 3 * s, size - 20 * s), outline=(255, 255, 255), width=lw)
    elif scene == "pool":
        d.rectangle((0, 0, size, size), fill=(60, 150, 220))
        for k in range(1, 4):  # lane ropes, red and white dashes
            y = k * size / 4
            for j in range(0, size, int(8 * s)):
                d.rectangle((j, y - lw, j + 4 * s, y + lw), fill=(230, 40, 40) if (j // int(8 * s)) % 2 else (255, 255, 255))
    elif scene == "track":
        d.rectangle((0, 0, size, size), fill=(185, 75, 55))
        for k in range(1, 6):
            y = k * size / 6
            d.line((0, y, size, y), fill=(255, 255, 255), width=lw)
    elif scene == "rink":
        d.rectangle((0, 0, size, size), fill=(225, 235, 245))
        d.line((size / 2, 0, size / 2, size), fill=(210, 30, 30), width=2 * lw)
        for x in (size / 4, 3 * size / 4):
            d.line((x, 0, x, size), fill=(40, 80, 200), width=2 * lw)
    elif scene == "beach":
        d.rectangle((0, 0, size, size), fill=(232, 210, 150))
        d.rectangle((0, 0, size, 12 * s), fill=(120, 190, 240))  # sky
        d.line((0, 12 * s, size, 12 * s), fill=(250, 250, 250), width=lw)  # surf
        ys, xs = rng.integers(13 * s, size, 300), rng.integers(0, size, 300)
        for x, y in zip(xs, ys):
            d.point((int(x), int(y)), fill=(190, 165, 110))
    else:
        raise ValueError(scene)
    return img


def render_with_masks(spec: Spec, size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The image [size, size, 3] uint8 and each item's coverage [n_items, size, size] in [0, 1]."""
    return _render(spec, size, with_masks=True)


def _render(spec: Spec, size: int, with_masks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The image and, with `with_masks`, the items' coverage (None without: the image alone skips
    the coverage's dilation and downsampling)."""
    big = size * SUPERSAMPLE
    rng = rng_for(spec.noise_seed, "render")
    canvas = _scene(spec.scene, big, rng)
    pixels = np.asarray(canvas, np.float32)  # [S, S, 3]
    masks = [] if with_masks else None
    for item, (cx, cy, diameter) in zip(spec.items, item_boxes(len(spec.items), big, rng)):
        r = diameter / 2
        inside = np.asarray(_mask(item, cx, cy, r, big), np.float32) / 255  # [S, S]
        outline = _dilate(inside, max(1, int(2 * SUPERSAMPLE * size / IMAGE_SIZE)))[..., None]
        if masks is not None:
            masks.append(_dilate(inside, 1))
        inside = inside[..., None]
        pixels = pixels * (1 - outline) + _edge(item.material, big) * outline
        pixels = pixels * (1 - inside) + _fill(item, pixels, rng) * inside
        if item.emotion is not None:
            layer = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            ink = (235, 235, 235) if item.color in ("black", "brown") else (0, 0, 0)
            _face(ImageDraw.Draw(layer), item.emotion, cx, cy, r, ink)
            pixels = np.asarray(layer, np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).reduce(SUPERSAMPLE)
    if masks is None:
        return np.asarray(image), None
    coverage = np.stack([m.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)) for m in masks]) \
        if masks else np.zeros((0, size, size), np.float32)
    return np.asarray(image), coverage


def render(spec: Spec, size: int = IMAGE_SIZE) -> np.ndarray:
    """The image of `spec`: [size, size, 3] uint8."""
    return _render(spec, size, with_masks=False)[0]


def render_many(specs, size: int = IMAGE_SIZE) -> np.ndarray:
    """[N, size, size, 3] uint8."""
    return np.stack([render(spec, size) for spec in specs]) if specs else np.zeros((0, size, size, 3), np.uint8)
