"""SAUCE on ConceptWorld through the LLaVA bridge: evaluation sets, answers of the clean and the
unlearned model, and the paper's metrics per concept.

The images of one seed form a `Suite`: per concept its test (or val) positives (the forget
set), one shared retain pool (a few positives of every concept), and perception images for
utility. The clean model answers once; each unlearned variant answers the same questions, and
`score` turns the two into UA_d, UA_g, IRA, CRA (each over the cases the clean model had
right) and the MME-style utility.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from sauce_jax.eval.metrics import (
    Rate,
    clean_accuracy,
    mme_score,
    retain_accuracy,
    unlearning_accuracy,
    utility,
)

from . import text as T
from .answers import describe, says_yes
from .render import render_many
from .world import CONCEPTS, DOMAIN_OF, TASKS, Spec, concept_split, generic_stream


@dataclasses.dataclass
class Suite:
    """The evaluation images of one seed and split."""

    forget: dict[str, list[Spec]]  # concept -> images that show it
    pool: list[Spec]  # retain pool, a few images per concept
    perception: list[Spec]
    split: str
    seed: int


def make_suite(concepts, *, seed: int, split: str = "test", n_forget: int = 50, n_pool_per_concept: int = 8,
               n_perception: int = 100) -> Suite:
    forget = {c: concept_split(c, split, n_forget, seed=seed) for c in concepts}
    pool = [s for c in CONCEPTS for s in concept_split(c, split, n_pool_per_concept, seed=seed + 1)]
    perception = generic_stream(n_perception, seed=seed, stream=f"perception-{split}")
    return Suite(forget, pool, perception, split, seed)


class Model:
    """The ConceptWorld LLaVA with its vision tower in JAX: features from a clean or unlearned
    `VisionEncoder`, language model in PyTorch."""

    def __init__(self, model, processor, encoder, batch_size: int = 256):
        self.model, self.tokenizer, self.encoder = model, processor.tokenizer, encoder
        self.batch_size = batch_size
        self._pixels: dict[int, Any] = {}

    def with_language_model(self, llava) -> Model:
        """The same JAX tower (clean, and its pixel cache) in front of another PyTorch LLaVA's
        projector and language model: how a weight-editing baseline's unlearned model is scored."""
        other = copy.copy(self)
        other.model = llava
        return other

    def pixels(self, specs: list[Spec]):
        from sauce_jax.image_processor import preprocess

        key = id(specs)
        if key not in self._pixels:  # the same list object is asked about many times
            self._pixels[key] = (specs, preprocess(list(render_many(specs)), self.encoder))
        return self._pixels[key][1]

    def features(self, specs: list[Spec], unlearned=None):
        """Projected image features [N, T, D_text] (torch)."""
        import torch

        from sauce_jax.eval.vlm.llava_bridge import llava_image_features

        px = self.pixels(specs)
        parts = []
        for start in range(0, len(specs), self.batch_size):
            chunk = px[start:start + self.batch_size]
            # Pad to a power of two: a handful of batch shapes, so the JAX tower compiles a few times only.
            bucket = min(self.batch_size, 1 << max(0, len(chunk) - 1).bit_length())
            padded = jnp.concatenate([chunk, jnp.zeros((bucket - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            parts.append(llava_image_features(self.model, self.encoder, padded, unlearned=unlearned)[:len(chunk)])
        return torch.cat(parts) if parts else torch.zeros(0)

    def answers(self, specs: list[Spec], concepts_of, language: str = "en", unlearned=None,
                generative: bool = True) -> dict:
        """Yes/no answers about `concepts_of(spec)` for each image, and its description's mentions
        of those concepts: {"asked": [(image, concept)], "yes": [bool], "named": [bool], "texts": [...]}.
        With `generative=False` no description is generated ("named" is then all False, "texts" empty)."""
        feats = self.features(specs, unlearned)
        asked = [(i, c) for i, spec in enumerate(specs) for c in concepts_of(spec)]
        questions = [T.question(c, language) for _, c in asked]
        rows = feats[[i for i, _ in asked]] if asked else feats[:0]
        yes = says_yes(self.model, self.tokenizer, rows, questions, self.batch_size)
        texts = describe(self.model, self.tokenizer, feats, language) if generative else []
        named = np.array([T.mentions(texts[i], c) for i, c in asked] if generative else [False] * len(asked), bool)
        return {"asked": asked, "yes": yes, "named": named, "texts": texts}

    def perception(self, specs: list[Spec], language: str = "en", unlearned=None) -> dict[str, dict]:
        feats = self.features(specs, unlearned)
        out = {}
        for subtask in T.PERCEPTION:
            pairs = [T.perception_questions(spec, subtask, language) for spec in specs]
            right = says_yes(self.model, self.tokenizer, feats.repeat_interleave(2, dim=0),
                             [q for pair in pairs for q, _ in pair], self.batch_size)
            right = right == np.array([t for pair in pairs for _, t in pair])
            out[subtask] = mme_score(right, np.repeat(np.arange(len(specs)), 2))
        return out


def _retain(pool_answers: dict, clean: dict, concept: str, same_domain: bool) -> tuple[Rate, Rate]:
    keep = np.array([(DOMAIN_OF[c] == DOMAIN_OF[concept]) == same_domain for _, c in pool_answers["asked"]], bool)
    return (retain_accuracy(clean["yes"][keep], pool_answers["yes"][keep]),
            retain_accuracy(clean["named"][keep], pool_answers["named"][keep]))


class Evaluation:
    """Clean answers computed once per suite; `run(concept, unlearned)` scores one variant."""

    def __init__(self, model: Model, suite: Suite, language: str = "en", generative: bool = True):
        # generative=False skips the descriptions (UA_g and the _g retain rates have no support):
        # the cheap objective the demo's validation grid uses.
        self.model, self.suite, self.language, self.generative = model, suite, language, generative
        self._clean_forget: dict[str, dict] = {}
        self._pool_without: dict[str, list[Spec]] = {}
        self._clean_pool: dict[str, dict] = {}
        self.clean_perception = model.perception(suite.perception, language)

    def _forget(self, concept: str, unlearned=None, model: Model | None = None) -> dict:
        return (model or self.model).answers(self.suite.forget[concept], lambda s: [concept], self.language,
                                             unlearned, self.generative)

    def _pool(self, concept: str, unlearned=None, model: Model | None = None) -> dict:
        if concept not in self._pool_without:
            self._pool_without[concept] = [s for s in self.suite.pool if not s.has(concept)]
        return (model or self.model).answers(self._pool_without[concept], lambda s: sorted(s.concepts),
                                             self.language, unlearned, self.generative)

    def clean(self, concept: str) -> tuple[dict, dict]:
        if concept not in self._clean_forget:
            self._clean_forget[concept] = self._forget(concept)
            self._clean_pool[concept] = self._pool(concept)
        return self._clean_forget[concept], self._clean_pool[concept]

    def run(self, concept: str, unlearned=None, model: Model | None = None) -> dict:
        """Metrics of one variant: an unlearned JAX tower (`unlearned`), an edited PyTorch side
        (`model`, e.g. `Model.with_language_model(edited)`), both, or neither (the clean model)."""
        clean_forget, clean_pool = self.clean(concept)
        edited = unlearned is not None or model is not None
        forget = self._forget(concept, unlearned, model) if edited else clean_forget
        pool = self._pool(concept, unlearned, model) if edited else clean_pool
        ira_d, ira_g = _retain(pool, clean_pool, concept, same_domain=True)
        cra_d, cra_g = _retain(pool, clean_pool, concept, same_domain=False)
        perception = (model or self.model).perception(self.suite.perception, self.language, unlearned) \
            if edited else self.clean_perception
        return {
            "concept": concept, "domain": DOMAIN_OF[concept],
            "UA_d": unlearning_accuracy(clean_forget["yes"], forget["yes"]).as_dict(),
            "UA_g": unlearning_accuracy(clean_forget["named"], forget["named"]).as_dict(),
            "IRA_d": ira_d.as_dict(), "IRA_g": ira_g.as_dict(), "CRA_d": cra_d.as_dict(), "CRA_g": cra_g.as_dict(),
            "clean_d": clean_accuracy(clean_forget["yes"]).as_dict(),
            "clean_g": clean_accuracy(clean_forget["named"]).as_dict(),
            "utility": utility(perception), "perception": perception,
            "examples": [{"truth": T.description(s, self.language), "clean": c, "edited": e}
                         for s, c, e in zip(self.suite.forget[concept][:3], clean_forget["texts"][:3],
                                            forget["texts"][:3])],
        }


def headline(result: dict) -> dict[str, float]:
    """The paper's columns for one concept: UA_g, UA_d, IRA and CRA (each the mean of its
    discriminative and generative rate), utility."""
    def mean_of(*names):
        values = [result[n]["value"] for n in names if result[n]["value"] is not None]
        return float(np.mean(values)) if values else float("nan")

    return {"UA_g": mean_of("UA_g"), "UA_d": mean_of("UA_d"), "IRA": mean_of("IRA_d", "IRA_g"),
            "CRA": mean_of("CRA_d", "CRA_g"), "utility": result["utility"]}


def _nanmean(values) -> float:
    kept = [v for v in values if not np.isnan(v)]
    return round(float(np.mean(kept)), 4) if kept else float("nan")


def task_table(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per task (concrete, abstract): the mean of each headline column over its concepts."""
    table = {}
    for task, domains in TASKS.items():
        rows = [headline(r) for r in results if r["domain"] in domains]
        if rows:
            table[task] = {k: _nanmean([row[k] for row in rows]) for k in rows[0]}
    return table
