"""The controls every SAUCE row is compared with in the same run: features drawn at random
among those as active on the concept's positives as the selected ones ("matched-random"), and
the most active ones without eq. 4's contrast ("no-contrast")."""

from __future__ import annotations

import numpy as np

from .benchmark import headline


def positives_mean(sae, encoder, demo, layer: int, concept: str) -> np.ndarray:
    """[d_sae] every SAE feature's mean activation (all tokens) on the concept's train positives."""
    from sauce_jax.scoring import image_activations

    from .render import render_many
    from .world import concept_split

    pos = list(render_many(concept_split(concept, "train", demo.n_select, seed=demo.seed)))
    return image_activations(sae, encoder, pos, layer=layer, token="all", batch_size=demo.n_select,
                             progress=False).mean(axis=0)


def control_sets(features, positives_mean: np.ndarray, draws: int, seed: int) -> dict:
    """The controls' feature sets for one concept, from its SAUCE set `features` (k ids, gamma)
    and every SAE feature's mean activation on the concept's train positives [d_sae]:
    "no-contrast", the k most active on positives (eq. 4 without its negative term), and
    "matched-random", `draws` sets each replacing every selected feature by one drawn at random
    among the 10 unselected features nearest to it in that activation's rank."""
    import dataclasses as dc

    from .world import rng_for

    k, chosen = features.k, set(features.feature_ids)
    order = np.argsort(-positives_mean, kind="stable")  # most active first
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    others = np.array([f for f in order if f not in chosen])  # unselected, most active first
    others_rank = rank[others]
    random_sets = []
    for d in range(draws):
        rng = rng_for(seed, "matched-random", features.concept, d)
        taken: set[int] = set()
        ids = []
        for f in features.feature_ids:
            near = [int(o) for o in others[np.argsort(np.abs(others_rank - rank[f]), kind="stable")[:10 + k]]
                    if int(o) not in taken][:10]
            pick = near[int(rng.integers(len(near)))]
            taken.add(pick)
            ids.append(pick)
        random_sets.append(dc.replace(features, feature_ids=tuple(ids), scores=(0.0,) * k))
    top = tuple(int(f) for f in order[:k])
    return {"no-contrast": dc.replace(features, feature_ids=top, scores=tuple(float(positives_mean[f]) for f in top)),
            "matched-random": random_sets}


def mean_results(results: list[dict]) -> dict:
    """One result from several draws of the same concept: each rate's value averaged over the
    draws that had support (n summed), utility averaged; the draws' own values are kept."""
    first = results[0]
    out = {"concept": first["concept"], "domain": first["domain"]}
    for name, value in first.items():
        if isinstance(value, dict) and "value" in value and "n" in value:
            kept = [r[name]["value"] for r in results if r[name]["value"] is not None]
            out[name] = {"value": round(float(np.mean(kept)), 4) if kept else None,
                         "n": int(sum(r[name]["n"] for r in results))}
    out["utility"] = round(float(np.mean([r["utility"] for r in results])), 2)
    out["examples"] = first.get("examples", [])
    out["draws"] = [{**headline(r), "COR": r["COR_d"]["value"], "BA": r["BA_d"]["value"]} for r in results]
    return out
