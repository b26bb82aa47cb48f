"""The forget, retain and refusal sets of one ConceptWorld concept, as the paper builds them,
for the weight-update baselines of `sauce_jax.eval.baselines`.

Forget set: the concept's train-split images, each with the generative prompt (the description)
and the discriminative prompt (the concept's yes/no question), answered as the clean model
answers when it is right: its own greedy description when that names the concept (the
reference description otherwise), and "yes". Retain set: train-split images of the other
concepts of the same domain (none showing the forgotten concept), with the same two prompts
about their own concept. Refusal set (PO): the forget prompts with a refusal as the answer.
The tower is frozen, so its features are computed once per image (`vlm.tower_features`).
"""

from __future__ import annotations

from sauce_jax.errors import ConfigError

from ..baselines.data import UnlearnData, check_vocabulary, make_set
from . import text as T
from .answers import describe
from .render import render_many
from .training import encode_example
from .vlm import tower_features
from .world import DOMAIN_OF, DOMAINS, check_concepts, concept_split

# ConceptWorld's word-level vocabulary has no "I don't know."; this is the refusal it can say
# (it names no concept and starts with neither "yes" nor "no").
REFUSAL = "there is no image ."


def _examples(model, tokenizer, specs, concepts, language: str):
    """Tower features [M, T, D] of `specs`, and (image, Example) pairs asking about `concepts[i]`
    with the clean model's correct answers."""
    import torch

    features = tower_features(model, render_many(specs)).float()
    with torch.no_grad():
        projected = model.model.multi_modal_projector(features)
    said = describe(model, tokenizer, projected, language)
    pairs = []
    for i, (spec, concept, text) in enumerate(zip(specs, concepts, said)):
        answer = text if T.mentions(text, concept, (language,)) else T.description(spec, language)
        pairs.append((i, T.Example(T.DESCRIBE[language], answer, "describe")))
        pairs.append((i, T.Example(T.question(concept, language), T.YES[language], "yes_no")))
    return features, pairs


def _encoded(tokenizer, features, pairs):
    return make_set(features, [(i, *encode_example(tokenizer, example)) for i, example in pairs])


def build_data(model, tokenizer, concept: str, *, seed: int = 0, n_forget: int = 40, n_retain_per_concept: int = 8,
               split: str = "train", refusal: str = REFUSAL, language: str = "en") -> UnlearnData:
    """`UnlearnData` for unlearning `concept` from the ConceptWorld LLaVA `model` (see the module doc).

    `n_forget` images of the concept; `n_retain_per_concept` images of each other concept of its
    domain, less those that also show the forgotten concept."""
    check_concepts([concept])
    if n_forget < 1 or n_retain_per_concept < 1:
        raise ConfigError(f"n_forget={n_forget} and n_retain_per_concept={n_retain_per_concept} must be >= 1")
    if language not in T.LANGUAGES:
        raise ConfigError(f"language={language!r} is not one of {T.LANGUAGES}")
    check_vocabulary(tokenizer, refusal, "refusal")
    forget_specs = concept_split(concept, split, n_forget, seed=seed)
    features, forget_pairs = _examples(model, tokenizer, forget_specs, [concept] * n_forget, language)
    retain = [(spec, other) for other in DOMAINS[DOMAIN_OF[concept]] if other != concept
              for spec in concept_split(other, split, n_retain_per_concept, seed=seed) if not spec.has(concept)]
    retain_features, retain_pairs = _examples(model, tokenizer, [s for s, _ in retain], [c for _, c in retain],
                                              language)
    refusal_pairs = [(i, T.Example(example.prompt, refusal, "refusal")) for i, example in forget_pairs]
    return UnlearnData(forget=_encoded(tokenizer, features, forget_pairs),
                       retain=_encoded(tokenizer, retain_features, retain_pairs),
                       refusal=_encoded(tokenizer, features, refusal_pairs),
                       pad_id=tokenizer.convert_tokens_to_ids("<pad>"))
