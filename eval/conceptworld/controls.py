"""What ConceptWorld's controls need beyond their definition (`sauce_jax.scoring.control_sets`):
each concept's positives' mean activation, and one result from several control draws."""

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
