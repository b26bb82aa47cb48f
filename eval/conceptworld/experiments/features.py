"""`sauce-jax experiment features`: what the SAE's features are (the paper's Figure 4, Figure 5)
and an audit card for each concept's selected features.

On `n_images` generic-stream images the SAE never trained on (the stream's images after the
SAE's `sae_images`):

- Figure 4 (`figure4.png`): log10 histograms over the SAE's features of FS_i (eq. 7: the share
  of images where feature i fires, i.e. is non-zero on at least one of the image's tokens) and
  FMAV_i (eq. 8: its mean non-zero activation; per image the activation is the mean over the
  image's tokens, as in selection). `figure4_tokens.png`: the same per token (the unit the SAE
  is trained on).
- Figure 5 (`figure5.png`): for each of `figure_concepts`, its `figure_features` best features
  (eq. 4), each over its `n_top` top-activating images (rendered from their ConceptWorld specs,
  captioned with the concepts the spec holds).
- One card per concept (`cards/<concept>.md` and `cards/<concept>.png`): its k selected features
  with their eq. 4 score, FS and FMAV, top images with their ground truth, the top-image
  precision (the share of top images that hold the concept, against its base rate among all the
  images) and the overlap of its set with every other concept's (Jaccard, shared ids).

Parts: `parts/sets.json` (the selection) and `parts/statistics.json` (FS, FMAV, top images of
every feature); a rerun with both loads no model.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import numpy as np

from sauce_jax.eval.top_images import plot_image_rows, precision, top_activating
from sauce_jax.errors import ConfigError

from ..sauce import DemoConfig, prepare, quick_demo
from ..render import render_many
from ..world import generic_stream
from ..runs import (
    cached,
    check_same_run,
    say,
    write_outputs,
)

NAME = "features"


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    """The experiment. `demo` sets the concepts, the seed, the SAE (and how many generic images it
    trained on: the images here come after those) and the selection sizes; k = max(demo.k_grid)."""

    demo: DemoConfig = dataclasses.field(default_factory=lambda: DemoConfig(k_grid=(16,)))
    n_images: int = 3000  # held-out generic-stream images for FS, FMAV and the top images
    n_top: int = 4  # top-activating images per feature
    figure_concepts: tuple[str, ...] | None = None  # Figure 5's concepts (default: every concept)
    figure_features: int = 2  # best features per concept in Figure 5
    card_features: int = 8  # features drawn in each card's PNG (the card's table lists all k)

    def __post_init__(self):
        for name in ("n_images", "n_top", "figure_features", "card_features"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"features {name}={value!r} must be an integer >= 1")
        if self.n_top > self.n_images:
            raise ConfigError(f"features n_top={self.n_top} exceeds n_images={self.n_images}")
        unknown = [c for c in self.figure_concepts or () if c not in self.demo.concepts]
        if unknown:
            raise ConfigError(f"figure_concepts {unknown} are not among the concepts {self.demo.concepts}")

    @property
    def k(self) -> int:
        return max(self.demo.k_grid)


def quick_config(concepts=None, seed: int = 0) -> FeaturesConfig:
    """The CI-sized run: few images, three concepts."""
    demo = dataclasses.replace(quick_demo(concepts or ("star", "pool", "red"), seed), k_grid=(8,))
    return FeaturesConfig(demo=demo, n_images=300, card_features=3)


def images_of(config: FeaturesConfig):
    """The generic-stream specs the statistics are taken on: after the SAE's training images."""
    return generic_stream(config.n_images, seed=config.demo.seed, start=config.demo.sae_images)


# ------------------------------------------------------------------------------------ statistics

def feature_statistics(prepared, specs, n_top: int, progress: bool) -> dict:
    """FS and FMAV per image and per token, and the top images of every feature (JSON-able)."""
    from sauce_jax.image_processor import preprocess
    from sauce_jax.scoring import image_activations
    from sauce_jax.statistics import feature_statistics as token_statistics, image_statistics

    images = list(render_many(specs))
    encoder, sae, layer = prepared.encoder, prepared.sae, prepared.layer
    z = image_activations(sae, encoder, images, layer=layer, token="all", batch_size=64, progress=progress)
    fs, fmav = image_statistics(z)  # per image: z is the mean over the image's tokens

    def token_rows():  # every token of `layer`, [b * T, D] per batch
        for start in range(0, len(images), 64):
            hidden = encoder.hidden_state(preprocess(images[start:start + 64], encoder), layer)
            yield np.asarray(hidden, np.float32).reshape(-1, encoder.config.hidden_size)

    fs_tok, fmav_tok, tokens = token_statistics(sae.params, sae.config, token_rows())
    tops = top_activating(z, range(z.shape[1]), n_top, active_only=True)
    return {"images": len(images), "tokens": int(tokens), "fs": fs, "fmav": fmav, "fs_tokens": fs_tok,
            "fmav_tokens": fmav_tok, "top": {str(f): rows for f, rows in tops.items()},
            "top_values": {str(f): [round(float(z[i, f]), 5) for i in rows] for f, rows in tops.items()}}


def overlaps(sets: dict[str, list[int]]) -> dict[str, dict[str, dict]]:
    """concept -> other concept -> Jaccard of their feature sets and the shared ids."""
    out = {}
    for c, ids in sets.items():
        out[c] = {}
        for other, other_ids in sets.items():
            if other != c:
                shared = sorted(set(ids) & set(other_ids))
                union = set(ids) | set(other_ids)
                out[c][other] = {"jaccard": round(len(shared) / len(union), 4) if union else 0.0, "shared": shared}
    return out


def audit(concept: str, selected: dict, stats: dict, specs, overlap: dict) -> dict:
    """One concept's card: each selected feature with its score, FS, FMAV and top images (their
    ground truth and whether they hold the concept), the precision against the base rate, the
    overlap with the other concepts."""
    holds = np.array([s.has(concept) for s in specs], bool)  # [N]
    features = []
    for f, score in zip(selected["ids"], selected["scores"]):
        top = stats["top"][str(f)]
        features.append({"id": f, "score": score, "fs": stats["fs"][f], "fmav": stats["fmav"][f],
                         "fs_tokens": stats["fs_tokens"][f], "fmav_tokens": stats["fmav_tokens"][f],
                         "top_images": [{"index": i, "value": v, "concepts": sorted(specs[i].concepts),
                                         "holds": bool(holds[i])} for i, v in zip(top, stats["top_values"][str(f)])],
                         "precision": precision({f: top}, holds)})
    tops = {feature["id"]: stats["top"][str(feature["id"])] for feature in features}
    shared = {other: o for other, o in sorted(overlap.items(), key=lambda kv: -kv[1]["jaccard"]) if o["shared"]}
    return {"concept": concept, "k": len(features), "features": features, "precision": precision(tops, holds),
            "base_rate": round(float(holds.mean()), 4), "overlap": shared,
            "max_jaccard": max((o["jaccard"] for o in overlap.values()), default=0.0)}


# ------------------------------------------------------------------------------------ run

def run(out_dir: str | Path, config: FeaturesConfig | None = None, *, model_dir=None, sae_dir=None,
        progress: bool = True) -> dict:
    """The whole experiment; returns what `out_dir/results.json` holds."""
    config = config or FeaturesConfig()
    out = Path(out_dir)
    check_same_run(out, NAME, config)
    t0 = time.time()
    specs = images_of(config)

    @functools.cache
    def prepared():  # the model, the SAE and the selection: only if a part is missing
        return prepare(out, config.demo, model_dir=model_dir, sae_dir=sae_dir, progress=progress, choose=False)

    def selection():
        return {c: {"ids": [int(i) for i in s.feature_ids], "scores": [round(float(v), 6) for v in s.scores]}
                for c, s in prepared().sets.items()}

    say(progress, f"[features] selection for {len(config.demo.concepts)} concepts, statistics on {len(specs)} images")
    sets = cached(out / "parts" / "sets.json", selection)
    stats = cached(out / "parts" / "statistics.json",
                   lambda: {**feature_statistics(prepared(), specs, config.n_top, progress),
                            "sae": {"d_sae": prepared().sae.config.d_sae, "fingerprint": prepared().sae.fingerprint()}})
    overlap = overlaps({c: s["ids"] for c, s in sets.items()})
    cards = {c: audit(c, sets[c], stats, specs, overlap[c]) for c in sets}

    fs, fmav = np.asarray(stats["fs"]), np.asarray(stats["fmav"])
    summary = {"d_sae": len(fs), "images": stats["images"], "tokens": stats["tokens"],
               "fire_on_some_image": int((fs > 0).sum()),
               "median_log10_fs": _median_log10(fs), "median_log10_fmav": _median_log10(fmav),
               "median_log10_fs_tokens": _median_log10(np.asarray(stats["fs_tokens"])),
               "median_log10_fmav_tokens": _median_log10(np.asarray(stats["fmav_tokens"])),
               "mean_precision": _mean([c["precision"] for c in cards.values()]),
               "mean_base_rate": _mean([c["base_rate"] for c in cards.values()]),
               "mean_max_jaccard": _mean([c["max_jaccard"] for c in cards.values()]),
               # Does eq. 4's order find the monosemantic features first? Mean precision at each rank.
               "precision_by_rank": [_mean([c["features"][r]["precision"] for c in cards.values()
                                            if r < len(c["features"])]) for r in range(config.k)]}
    write_figures(out, config, stats, sets, cards, specs)
    results = {"config": dataclasses.asdict(config), "summary": summary, "cards": cards,
               "meta": {"seconds_this_call": round(time.time() - t0, 1)}}
    write_outputs(out, results, markdown_report(results, config))
    return results


def _median_log10(values: np.ndarray) -> float | None:
    live = values[values > 0]
    return round(float(np.median(np.log10(live))), 3) if live.size else None


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def write_figures(out: Path, config: FeaturesConfig, stats: dict, sets: dict, cards: dict, specs) -> None:
    """figure4.png, figure4_tokens.png, figure5.png and each card's PNG."""
    from sauce_jax.statistics import plot_feature_statistics

    plot_feature_statistics(np.asarray(stats["fs"]), np.asarray(stats["fmav"]), out / "figure4.png")
    plot_feature_statistics(np.asarray(stats["fs_tokens"]), np.asarray(stats["fmav_tokens"]),
                            out / "figure4_tokens.png")
    images = {}

    def rows_of(concept: str, n_features: int):
        rows, captions = [], []
        for f in sets[concept]["ids"][:n_features]:
            top = stats["top"][str(f)]
            for i in top:
                if i not in images:
                    images[i] = next(iter(render_many([specs[i]])))
            rows.append((f"{concept[:12]}\n#{f}", [images[i] for i in top]))
            captions.append([", ".join(sorted(specs[i].concepts)) for i in top])
        return rows, captions

    figure = [rows_of(c, config.figure_features) for c in (config.figure_concepts or sets)]
    plot_image_rows([r for rows, _ in figure for r in rows], out / "figure5.png",
                    captions=[c for _, caps in figure for c in caps])
    (out / "cards").mkdir(exist_ok=True)
    for concept, card in cards.items():
        rows, captions = rows_of(concept, config.card_features)
        plot_image_rows(rows, out / "cards" / f"{concept}.png", captions=captions)
        (out / "cards" / f"{concept}.md").write_text(card_markdown(card))


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def card_markdown(card: dict) -> str:
    """The audit card of one concept."""
    c = card["concept"]
    lines = [f"# Audit card: {c}", "",
             (f"{card['k']} features selected by eq. 4. Top-image precision {_num(card['precision'])} "
             f"(share of the features' top images that hold *{c}*; base rate among all the images "
             f"{_num(card['base_rate'])}). ![top images]({c}.png)"), "",
             ("| feature | eq. 4 score | FS (images) | FMAV (images) | FS (tokens) | FMAV (tokens) | precision | "
             "top images (concepts; * = holds the concept) |"), "|---|---|---|---|---|---|---|---|"]
    for f in card["features"]:
        tops = "<br>".join(f"{'*' if t['holds'] else ''}#{t['index']} ({t['value']:.3g}): {', '.join(t['concepts'])}"
                           for t in f["top_images"]) or "never fires"
        lines.append(f"| {f['id']} | {f['score']:.4f} | {_num(f['fs'])} | {_num(f['fmav'])} | {_num(f['fs_tokens'])} "
                     f"| {_num(f['fmav_tokens'])} | {_num(f['precision'], 2)} | {tops} |")
    lines += ["", "## Overlap with the other concepts' feature sets", ""]
    if card["overlap"]:
        lines += ["| concept | Jaccard | shared ids |", "|---|---|---|"]
        lines += [f"| {other} | {o['jaccard']:.3f} | {', '.join(map(str, o['shared']))} |"
                  for other, o in card["overlap"].items()]
    else:
        lines.append("No feature is shared with another concept's set.")
    return "\n".join(lines) + "\n"


def markdown_report(results: dict, config: FeaturesConfig) -> str:
    s = results["summary"]
    lines = ["# The SAE's features: statistics (Figure 4), top images (Figure 5), audit cards", "",
             (f"{s['images']} held-out generic-stream images ({s['tokens']} tokens), seed {config.demo.seed}; "
              f"{s['fire_on_some_image']} of {s['d_sae']} features fire on some image."),
             (f"Median log10 FS: {s['median_log10_fs']} per image, {s['median_log10_fs_tokens']} per token; median "
              f"log10 FMAV: {s['median_log10_fmav']} per image (token mean), {s['median_log10_fmav_tokens']} per "
              "token (over the features that fire). Histograms: figure4.png (images), figure4_tokens.png."),
             "", (f"k = {config.k} features per concept; top {config.n_top} images per feature. Mean top-image "
                  f"precision {_num(s['mean_precision'])} against a mean base rate {_num(s['mean_base_rate'])}; mean "
                  f"largest Jaccard overlap with another concept's set {_num(s['mean_max_jaccard'])}."), "",
             "Mean top-image precision by eq. 4 rank (1 = best feature): " + ", ".join(
                 f"{r + 1}: {_num(v, 2)}" for r, v in enumerate(s["precision_by_rank"])) + ".", "",
             ("| concept | precision | base rate | mean FS (images) | features that never fire | most overlapping "
             "concept (Jaccard) | card |"), "|---|---|---|---|---|---|---|"]
    for c, card in results["cards"].items():
        mean_fs = float(np.mean([f["fs"] for f in card["features"]]))
        silent = sum(1 for f in card["features"] if not f["top_images"])
        top = next(iter(card["overlap"].items()), None)
        most = f"{top[0]} ({top[1]['jaccard']:.2f})" if top else "-"
        lines.append(f"| {c} | {_num(card['precision'])} | {card['base_rate']:.3f} | {mean_fs:.3g} | {silent} | "
                     f"{most} | [cards/{c}.md](cards/{c}.md) |")
    lines += ["", f"This call: {results['meta']['seconds_this_call']:.0f} s."]
    return "\n".join(lines) + "\n"
