"""SAUCE variants beyond the paper, as Table 2 rows (`experiment table2 --variants ...`).

Each variant changes how the features are chosen, how they are edited, or both, and is tuned
like every other row: a 12-point grid on the validation split, moved once off an edge, scored
by the declared objective (`sauce.grid_objective`).

- `gated`: eq. 4's features, the delta edit only at tokens where one of them is active above a
  threshold (`unlearn(mode="gated")`). At threshold 0 that is delta itself, so the threshold is
  a grid axis, set per concept and k as the activation the gate lets through on a fraction
  `open` of the concept's train-negative tokens (`gate_threshold`); grid k {16, 64} x gamma
  {-1, -2} x open {0.1, 0.01, 0.001}.
- `replace`: eq. 4's features set to their mean activation on the concept's train negatives at
  the tokens where one is active (`mode="replace"`): the edited token is moved to where tokens
  without the concept sit instead of past zero; grid k {8, 16, 32, 64} x open (gamma plays no
  part).
- `specific`: features scored against every other concept (`select_features(contrast="others")`,
  a few train images of each) and kept only if no other concept activates them more than their
  own positives do (`specificity=1`); the paper's reconstruct edit; grid k x gamma.
- `specific gated`: the specific features with the gated edit; the gated grid.

`SAUCE per concept` (`per_concept_rows`) chooses per concept instead of per seed: each concept
runs every candidate's grid (`PER_CONCEPT_CANDIDATES`: the paper's edits and the variants, each
with its own axes and move rule) on its own validation images and keeps the candidate and point
with its best objective. Its search budget is the candidates' grids together, per concept; a
baseline's is one 12-point grid per seed.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
from tqdm import tqdm

from sauce_jax.errors import ConfigError
from sauce_jax.scoring import control_sets


from ..controls import mean_results, positives_mean
from ..render import render_many
from ..sauce import grid_objective, k_axis, kept_features, say
from ..tuning import Axis, label, search
from ..world import CONCEPTS, concept_split

# variant -> (selection, intervention mode)
VARIANTS = {"gated": ("eq4", "gated"), "replace": ("eq4", "replace"), "specific": ("specific", "reconstruct"),
            "specific gated": ("specific", "gated")}
# Every recipe a row can tune: the paper's two edits (eq. 4, k x gamma) and the variants.
RECIPES = {"reconstruct": ("eq4", "reconstruct"), "delta": ("eq4", "delta"), **VARIANTS}
PER_CONCEPT = "SAUCE per concept"
PER_CONCEPT_CONTROL = "control per concept matched-random"
PER_CONCEPT_CANDIDATES = tuple(RECIPES)
SPECIFICITY = 1.0  # a feature stays only if no other concept activates it more than the concept does
OTHERS_PER_CONCEPT = 8  # train images of each other concept the specific score contrasts with
# The gated grids (12 configurations each). `open`: the fraction of the concept's train-negative
# tokens on which the gate would open (the threshold is that quantile of their max_F z_i).
GATED_K, GATED_GAMMA, OPEN = (16, 64), (-1.0, -2.0), (0.1, 0.01, 0.001)
REPLACE_K = (8, 16, 32, 64)


def check_variants(names) -> tuple[str, ...]:
    unknown = [n for n in names if n not in VARIANTS and n != "per concept"]
    if unknown:
        raise ConfigError(f"unknown SAUCE variants {unknown}; choose among {', '.join(VARIANTS)}, 'per concept'")
    return tuple(names)


def check_candidates(names) -> tuple[str, ...]:
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not names:
        raise ConfigError(f"per-concept candidates {list(names)}: give some of {', '.join(RECIPES)}")
    return tuple(names)


def row_name(variant: str) -> str:
    return f"SAUCE {variant}"


def specific_sets(sae, encoder, demo, layer: int, progress: bool) -> dict:
    """Each concept's features scored against the other concepts, with the specificity filter."""
    from sauce_jax.scoring import select_features

    others_images = {c: list(render_many(concept_split(c, "train", OTHERS_PER_CONCEPT, seed=demo.seed, stream="others")))
                     for c in CONCEPTS}
    sets = {}
    for concept in tqdm(demo.concepts, desc="specific selection", disable=not progress, leave=False):
        pos = list(render_many(concept_split(concept, "train", demo.n_select, seed=demo.seed)))
        neg = list(render_many(concept_split(concept, "train", demo.n_select, seed=demo.seed, positive=False)))
        others = {c: images for c, images in others_images.items() if c != concept}
        sets[concept] = select_features(sae, encoder, pos, neg, k=kept_features(demo, sae), layer=layer,
                                        concept=concept, token="all", batch_size=demo.n_select, progress=False,
                                        contrast="others", others=others, specificity=SPECIFICITY)
    return sets


def negative_tokens(sae, encoder, demo, layer: int) -> dict:
    """{concept: [N, T, d_sae]} SAE latents of every token of its train negatives (the gate
    thresholds read them per token, replace's targets per image: `negative_activations`)."""
    import jax

    from sauce_jax import sae as sae_lib
    from sauce_jax.image_processor import preprocess

    encode = jax.jit(lambda p, x: sae_lib.encode(p, x, sae.config))
    out = {}
    for c in demo.concepts:
        images = list(render_many(concept_split(c, "train", demo.n_select, seed=demo.seed, positive=False)))
        hidden = encoder.hidden_state(preprocess(images, encoder), layer)  # [N, T, D]
        out[c] = np.asarray(encode(sae.params, hidden))  # [N, T, d_sae]
    return out


def negative_activations(tokens: dict) -> dict:
    """{concept: [N, d_sae]} each negative image's mean latents over its tokens (replace's targets,
    as `image_activations(token="all")` gives them) from `negative_tokens`."""
    return {c: z.mean(axis=1) for c, z in tokens.items()}


def gate_threshold(tokens: np.ndarray, feature_ids, open_fraction: float) -> float:
    """The gate threshold that opens on `open_fraction` of the negative tokens ([..., d_sae]):
    that quantile of max over the features of z_i (0 when the features are silent there)."""
    top = tokens.reshape(-1, tokens.shape[-1])[:, np.asarray(feature_ids)].max(axis=1)  # [M]
    return float(np.quantile(top, 1.0 - open_fraction))


def editor(variant: str, sae, encoder, sets: dict, layer: int, z_neg: dict | None,
           neg_tokens: dict | None = None) -> Callable:
    """(concept, point[, features]) -> the unlearned encoder of `variant` at grid point {k, gamma,
    open} (`open` absent: threshold 0), editing `features` (a FeatureSet; default: the concept's
    top k, the set a control replaces)."""
    from sauce_jax.intervention import unlearn
    from sauce_jax.scoring import replacement_targets

    mode = RECIPES[variant][1]

    def edit(concept: str, point: dict, features=None):
        features = sets[concept].top(point["k"], point.get("gamma")) if features is None else features
        ids = np.asarray(features.feature_ids)
        gate = {}
        if mode in ("gated", "replace"):
            gate["threshold"] = gate_threshold(neg_tokens[concept], ids, point["open"]) if "open" in point else 0.0
        if mode == "replace":
            return unlearn(encoder, sae, features, layer=layer, mode="replace",
                           targets=replacement_targets(z_neg[concept], ids), **gate)
        return unlearn(encoder, sae, features, layer=layer, gamma=point["gamma"], mode=mode, **gate)

    return edit


def axes_for(variant: str, demo, sets: dict) -> list[Axis]:
    mode = RECIPES[variant][1]
    fraction = Axis("open", OPEN, low=1e-5, high=0.5)
    if mode == "replace":
        return [k_axis(REPLACE_K, sets, demo), fraction]
    if mode == "gated":
        return [k_axis(GATED_K, sets, demo), Axis("gamma", GATED_GAMMA), fraction]
    return [k_axis(demo.k_grid, sets, demo), Axis("gamma", tuple(demo.gamma_grid))]


def _editors(names, ctx, prepared, progress: bool) -> dict:
    """{recipe: (edit, its feature sets)} for `names`, sharing what they need: the specific
    selection and the negatives' latents are computed once, only when a recipe reads them."""
    demo, sae, eq4_sets = ctx.config.demo, prepared[0], prepared[1]
    modes = {RECIPES[n][1] for n in names}
    specific = specific_sets(sae, ctx.encoder, demo, ctx.layer, progress) \
        if any(RECIPES[n][0] == "specific" for n in names) else None
    neg_tokens = negative_tokens(sae, ctx.encoder, demo, ctx.layer) if modes & {"gated", "replace"} else None
    z_neg = negative_activations(neg_tokens) if "replace" in modes else None  # the same images, encoded once
    out = {}
    for name in names:
        sets = specific if RECIPES[name][0] == "specific" else eq4_sets
        out[name] = (editor(name, sae, ctx.encoder, sets, ctx.layer, z_neg, neg_tokens), sets)
    return out


def _test_result(ctx, concept: str, edited, features: int) -> dict:
    result = ctx.test.run(concept, edited)
    result["retain_examples"] = ctx.retain_examples(concept, unlearned=edited)
    result["features"] = features
    return result


def variant_row(variant: str, ctx, prepared, progress: bool) -> dict:
    """One variant's row: its grid on the validation split (mean over the seed's concepts), then
    the test split once."""
    demo = ctx.config.demo
    start = time.time()
    selection, mode = VARIANTS[variant]
    edit, sets = _editors([variant], ctx, prepared, progress)[variant]

    def score(point):
        value = float(np.mean([grid_objective(ctx.val.run(c, edit(c, point)), demo) for c in demo.concepts]))
        say(progress, f"  val {row_name(variant)} {label(point)}: {value:.3f}")
        return value

    found = search(axes_for(variant, demo, sets), score, moves=demo.grid_moves)
    results = [_test_result(ctx, c, edit(c, found["best"]), len(sets[c].top(found["best"]["k"]).feature_ids))
               for c in tqdm(demo.concepts, desc=row_name(variant), disable=not progress, leave=False)]
    hyper = dict(found["best"], mode=mode, selection=selection, val_objective=round(found["score"], 4))
    if selection == "specific":
        hyper["specificity"] = SPECIFICITY
    return {"hyperparameters": hyper, "val_grid": found["grid"], "grids": found["grids"], "moved": found["moved"],
            "edge": found["edge"], "per_concept": results, "seconds": time.time() - start}


def per_concept_rows(ctx, prepared, progress: bool, candidates=PER_CONCEPT_CANDIDATES,
                     control_draws: int = 0) -> dict:
    """{PER_CONCEPT: row[, PER_CONCEPT_CONTROL: row]}. `SAUCE per concept`: for each concept,
    every candidate recipe's grid searched on that concept's validation objective alone
    (`tuning.search`, the same axes and move rule as the recipe's own row); the best candidate
    and point (ties: the earlier candidate) is read on the test split once. With
    `control_draws`, its control in the same run: the chosen recipe and point applied to that
    many draws of matched-random features (`sauce_jax.scoring.control_sets`) in place of the chosen ones."""
    demo = ctx.config.demo
    start = time.time()
    editors = _editors(check_candidates(candidates), ctx, prepared, progress)
    chosen, grids, results, controls = {}, {}, [], []
    for concept in tqdm(demo.concepts, desc=PER_CONCEPT, disable=not progress, leave=False):
        best = None
        for name, (edit, sets) in editors.items():
            def score(point, edit=edit, name=name):
                value = grid_objective(ctx.val.run(concept, edit(concept, point)), demo)
                say(progress, f"  val {PER_CONCEPT} {concept} {name} {label(point)}: {value:.3f}")
                return value

            found = search(axes_for(name, demo, sets), score, moves=demo.grid_moves)
            grids.setdefault(concept, {})[name] = {key: found[key] for key in ("grid", "moved", "edge")}
            if best is None or found["score"] > best[1]["score"]:
                best = (name, found)
        name, found = best
        edit, sets = editors[name]
        chosen[concept] = {"recipe": name, **found["best"], "val_objective": round(found["score"], 4),
                           "moved": found["moved"], "edge": found["edge"]}
        features = sets[concept].top(found["best"]["k"], found["best"].get("gamma"))
        results.append(_test_result(ctx, concept, edit(concept, found["best"]), len(features.feature_ids)))
        if control_draws:
            controls.append(_matched_random(ctx, prepared[0], concept, features, control_draws,
                                            lambda f: edit(concept, found["best"], f)))
    hyper = {"per_concept": chosen, "candidates": list(editors),
             "val_objective": round(float(np.mean([c["val_objective"] for c in chosen.values()])), 4)}
    rows = {PER_CONCEPT: {"hyperparameters": hyper, "val_grids": grids, "per_concept": results,
                          "seconds": time.time() - start}}
    if control_draws:
        rows[PER_CONCEPT_CONTROL] = {"hyperparameters": {"draws": control_draws, "val_objective": None},
                                     "per_concept": controls}
    return rows


def _matched_random(ctx, sae, concept: str, features, draws: int, edit: Callable) -> dict:
    """The concept's test result averaged over `draws` matched-random replacements of `features`."""
    demo = ctx.config.demo
    mean = positives_mean(sae, ctx.encoder, demo, ctx.layer, concept)  # [d_sae]
    drawn = control_sets(features, mean, draws, demo.seed)["matched-random"]
    return mean_results([ctx.test.run(concept, edit(f)) for f in drawn])
