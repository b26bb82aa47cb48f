"""Clean-model accuracy on ConceptWorld: yes/no accuracy per domain and concept recall in descriptions."""

from __future__ import annotations

import numpy as np

from . import text as T
from .answers import describe, says_yes, torch_features
from .render import render_many
from .world import CONCEPTS, DOMAINS


def clean_accuracy(model, tokenizer, specs, *, projected=None, languages=T.LANGUAGES) -> dict:
    """Balanced yes/no accuracy per domain (mean of the accuracy on images with and without each
    concept, every concept asked about every image), concept recall of the descriptions, and the
    perception questions' MME scores, for each language."""
    from sauce_jax.eval.metrics import mme_score, utility

    if projected is None:
        projected = torch_features(model, render_many(specs))
    n = len(specs)
    truth = np.array([[spec.has(c) for c in CONCEPTS] for spec in specs])  # [N, C]
    result: dict = {"images": n}
    for language in languages:
        questions = [T.question(c, language) for _ in range(n) for c in CONCEPTS]
        feats = projected.repeat_interleave(len(CONCEPTS), dim=0)
        yes = says_yes(model, tokenizer, feats, questions).reshape(n, len(CONCEPTS))
        correct = yes == truth
        per_domain = {}
        for domain, names in DOMAINS.items():
            cols = [CONCEPTS.index(c) for c in names]
            pos = correct[:, cols][truth[:, cols]].mean()
            neg = correct[:, cols][~truth[:, cols]].mean()
            per_domain[domain] = round(float((pos + neg) / 2), 4)
        texts = describe(model, tokenizer, projected, language)
        named = [[T.mentions(t, c, (language,)) for c in CONCEPTS] for t in texts]
        named = np.array(named)
        recall = {d: round(float(named[:, [CONCEPTS.index(c) for c in names]][
            truth[:, [CONCEPTS.index(c) for c in names]]].mean()), 4) for d, names in DOMAINS.items()}
        false_mentions = float(named[~truth].mean())
        subtasks = {}
        for subtask in T.PERCEPTION:
            pairs = [T.perception_questions(spec, subtask, language) for spec in specs]
            qs = [q for pair in pairs for q, _ in pair]
            answers = says_yes(model, tokenizer, projected.repeat_interleave(2, dim=0), qs)
            right = answers == np.array([t for pair in pairs for _, t in pair])
            subtasks[subtask] = mme_score(right, np.repeat(np.arange(n), 2))
        result[language] = {
            "yes_no_balanced_accuracy": per_domain,
            "description_recall": recall,
            "description_recall_all": round(float(named[truth].mean()), 4),
            "description_false_mentions": round(false_mentions, 4),
            "perception": subtasks,
            "utility": utility(subtasks),
            "examples": [{"truth": T.description(s, language), "said": t} for s, t in zip(specs[:3], texts[:3])],
        }
    return result
