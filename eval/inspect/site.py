"""`build_site`: a static feature browser for one or more concepts' FeatureSets.

Everything is computed in one pass over the images (and one over the negatives): the jitted
tower up to the SAE's layer, the jitted SAE, and the per-image activations, top images and
patch maps of every feature the sets hold. Then a few images per set go through the tower
clean and unlearned for the before/after view. The site (HTML, CSS, a small script, PNGs) is
written into a temporary folder and renamed into place (`.output`).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.images import as_image_items, open_image
from sauce_jax.scoring import FeatureSet
from sauce_jax.statistics import image_statistics

from ..conceptworld.experiments.features import overlaps
from . import pages
from .activations import Pass, model_view, run_pass
from .before_after import before_after, fit_probe, folder_labels
from .config import InspectConfig
from .graphics import heat_overlay, histogram_svg
from .output import check_target, write_site

THUMB = 128  # pixels of every picture on the site
def _load_sets(feature_sets, sae) -> list[FeatureSet]:
    sets = [s if isinstance(s, FeatureSet) else FeatureSet.load(s) for s in feature_sets]
    if not sets:
        raise InputError("no FeatureSet given")
    for s in sets:
        s.check_sae(sae)
    for name in ("layer", "token"):
        values = {getattr(s, name) for s in sets}
        if len(values) > 1:
            raise ConfigError(f"the FeatureSets disagree on {name} ({sorted(map(str, values))}); a site shows "
                              "sets of one layer and token choice")
    return sets


def _load_model(encoder, answers: bool):
    """(encoder, answerer or None) from a VisionEncoder or a checkpoint path; a LLaVA or Mllama
    checkpoint is read once, as a transformers model whose tower becomes the JAX encoder."""
    if not isinstance(encoder, (str, os.PathLike)):
        return encoder, None
    from sauce_jax.eval.vlm.registry import answerer_family
    from sauce_jax.loading import load_encoder

    family = answerer_family(encoder) if answers else None
    if family is not None:
        answerer = family.load(encoder)
        return answerer.encoder, answerer
    return load_encoder(encoder), None


def _slugs(concepts: list[str]) -> list[str]:
    out = []
    for c in concepts:
        slug = re.sub(r"[^a-z0-9]+", "-", c.lower()).strip("-") or "concept"
        while slug in out:
            slug += "-2"
        out.append(slug)
    return out


def _name(item, i: int) -> str:
    return Path(item).name if isinstance(item, (str, os.PathLike)) else f"image {i}"


class Assets:
    """The PNGs a site links, each made once when written: images as the encoder sees them
    (`img/`) and the patch heatmaps over them (`heat/`)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.files: dict[str, Any] = {}  # relative path -> a function making its PIL image

    def image(self, kind: str, p: Pass, i: int) -> str:
        """The path of image i of pass `p` ("p": the images, "n": the negatives)."""
        path = f"img/{kind}{i}.png"
        self.files.setdefault(path, lambda: Image.fromarray(model_view(self.encoder, open_image(p.items[i]), THUMB)))
        return path

    def cells(self, kind: str, p: Pass, f: int, j: int) -> list[dict]:
        """Feature f's (column j's) top images where it fires, best first, with their heatmaps
        on one scale: the feature's largest patch value over them."""
        scale = float(p.top_maps[..., j].max()) if p.top_maps is not None else 0.0
        out = []
        for r, (i, v) in enumerate(zip(p.top_rows[:, j], p.top_values[:, j])):
            if i < 0 or v <= 0:
                continue
            i = int(i)
            cell = {"image": self.image(kind, p, i), "name": _name(p.items[i], i), "caption": f"{v:.4g}"}
            if p.top_maps is not None:
                cell["heat"] = f"heat/f{f}-{kind}{i}.png"
                self.files[cell["heat"]] = lambda m=p.top_maps[r, :, :, j]: heat_overlay(m, scale, THUMB)
            out.append(cell)
        return out

    def write(self, folder: Path) -> None:
        for path, make in self.files.items():
            make().save(folder / path)


def build_site(out: str | os.PathLike, *, sae: Any, encoder: Any, feature_sets, images: Any, negatives: Any = None,
               config: InspectConfig | None = None, progress: bool = True) -> Path:
    """Write the feature browser of `feature_sets` to the folder `out` and return its path.

    Args:
      out: the site folder; it must not exist, be empty, or hold a previous site (replaced).
      sae: an `SAE` or its folder. encoder: a `VisionEncoder` or a checkpoint (a LLaVA or
        Mllama checkpoint also answers `config.prompt` in the before/after view).
      feature_sets: FeatureSets or their JSON files, all of this SAE, one layer and token choice.
      images: a folder (class subfolders give the probe its labels), a list of images or a
        uint8 array. negatives: optional images without the concept (false alarms).
    Bad input raises a `SauceError` before anything is written.
    """
    from sauce_jax.sae import SAE
    from sauce_jax.sae_io import load_sae

    config = config or InspectConfig()
    t0 = time.time()
    check_target(out)
    sae = sae if isinstance(sae, SAE) else load_sae(sae)
    sets = _load_sets(feature_sets, sae)
    items = list(as_image_items(images))
    neg_items = list(as_image_items(negatives)) if negatives is not None else None
    encoder, answerer = _load_model(encoder, config.answers)
    if sae.config.d_in != encoder.config.hidden_size:
        raise InputError(f"SAE d_in={sae.config.d_in} differs from the encoder width {encoder.config.hidden_size}")
    layer, token = encoder.layer_index(sets[0].layer), sets[0].token
    ids = list(dict.fromkeys(i for s in sets for i in s.feature_ids))  # [F], first occurrence order
    labels_wanted = folder_labels(items, images if isinstance(images, (str, os.PathLike)) else None) is not None

    common = dict(layer=layer, token=token, ids=ids, n_top=config.n_top, batch_size=config.batch_size,
                  progress=progress)
    t_pass = time.time()
    pos = run_pass(encoder, sae, items, pooled=labels_wanted, desc="images", **common)
    if not pos.items:
        raise InputError(f"none of the {len(items)} images could be read")
    neg = run_pass(encoder, sae, neg_items, desc="negatives", **common) if neg_items else None
    neg = neg if neg is not None and neg.items else None  # unreadable negatives count as none
    t_pass = time.time() - t_pass
    labels = folder_labels(pos.items, images) if labels_wanted else None
    probe = fit_probe(pos.pooled, labels) if labels else None

    slugs = _slugs([s.concept for s in sets])
    column = {f: j for j, f in enumerate(ids)}
    assets = Assets(encoder)

    fs, fmav = image_statistics(pos.values)  # [F] each
    fs_neg = image_statistics(neg.values)[0] if neg is not None else None
    membership = {f: [{"concept": s.concept, "page": f"concept-{slug}.html", "rank": s.feature_ids.index(f) + 1}
                      for s, slug in zip(sets, slugs) if f in s.feature_ids] for f in ids}
    features = {}
    for f in ids:
        j = column[f]
        series = [("images", pos.values[:, j], "#3a6ea5")]
        if neg is not None:
            series.append(("negatives", neg.values[:, j], "#c0392b"))
        features[f] = {"id": f, "page": f"feature-{f}.html", "fs": float(fs[j]), "fmav": float(fmav[j]),
                       "sets": membership[f], "top": assets.cells("p", pos, f, column[f]),
                       "top_neg": assets.cells("n", neg, f, column[f]) if neg is not None else [],
                       "histogram": histogram_svg(series, title=f"feature {f}")}

    overlap = overlaps({slug: list(s.feature_ids) for s, slug in zip(sets, slugs)})
    site_sets, t_before_after = [], time.time()
    for s, slug in zip(sets, slugs):
        cols = [column[f] for f in s.feature_ids]
        rows = []
        for f, score in zip(s.feature_ids, s.scores):
            j = column[f]
            rows.append({**features[f], "score": score, "mean": float(pos.values[:, j].mean()),
                         "fs_neg": None if fs_neg is None else float(fs_neg[j]),
                         "mean_neg": float(neg.values[:, j].mean()) if fs_neg is not None else None})
        strength = pos.values[:, cols].sum(axis=1)  # [N] the set's activation per image
        chosen = [int(i) for i in np.argsort(-strength, kind="stable")[:config.n_before_after] if strength[i] > 0]
        ba = []
        if chosen:
            results = before_after(encoder, sae, s, [pos.items[i] for i in chosen], token=token, mode=config.mode,
                                   probe=probe, answerer=answerer, prompt=config.prompt,
                                   max_new_tokens=config.max_new_tokens)
            for i, r in zip(chosen, results):
                truth = f" (label {labels[i]})" if labels else ""
                ba.append({**r, "cell": {"image": assets.image("p", pos, i), "name": _name(pos.items[i], i) + truth,
                                         "caption": ""}})
        note = (f"The {len(chosen)} images where the set fires most, through the tower clean and with the set "
                f"unlearned ({config.mode}, gamma {s.gamma:g}). Set activation: the sum of its features' activations.")
        if probe is not None:
            note += (f" Probe: a linear probe on the clean tower's output over {len(probe.classes)} classes "
                     f"(training accuracy {probe.train_accuracy:.2f}).")
        if answerer is not None:
            note += f" Answers: the checkpoint's language model asked {config.prompt!r}."
        site_sets.append({"concept": s.concept, "page": f"concept-{slug}.html", "k": s.k, "gamma": s.gamma,
                          "layer": s.layer, "token": s.token, "sae_fingerprint": s.sae_fingerprint, "features": rows,
                          "overlap": [{"concept": sets[slugs.index(o)].concept, "page": f"concept-{o}.html", **v}
                                      for o, v in sorted(overlap[slug].items(), key=lambda kv: -kv[1]["jaccard"])],
                          "before_after": ba, "before_after_note": note})

    meta = {"SAE": f"{sae.fingerprint()} ({sae.config.architecture}, d_sae {sae.config.d_sae})",
            "encoder": encoder.config.source, "hidden state": layer, "token choice": token,
            "images": len(pos.items), "negatives": len(neg.items) if neg is not None else "-",
            "probe labels": ", ".join(probe.classes) if probe is not None else "- (no class subfolders)",
            "computed in": f"{time.time() - t0:.1f} s (the pass over the images and negatives {t_pass:.1f} s, "
                           f"before/after {time.time() - t_before_after:.1f} s)"}
    site = {"meta": meta, "sets": site_sets, "has_negatives": neg is not None}

    def write(folder: Path) -> None:
        for sub in ("assets", "img", "heat"):
            (folder / sub).mkdir()
        (folder / "assets" / "style.css").write_text(pages.CSS)
        (folder / "assets" / "site.js").write_text(pages.JS)
        (folder / "index.html").write_text(pages.index_page(site))
        for s in site_sets:
            (folder / s["page"]).write_text(pages.concept_page(s, site))
        for f in features.values():
            (folder / f["page"]).write_text(pages.feature_page(f, site))
        assets.write(folder)

    marker = {"tool": "sauce-jax inspect", "sae": sae.fingerprint(), "concepts": [s.concept for s in sets],
              "images": len(pos.items)}
    return write_site(out, write, marker)
