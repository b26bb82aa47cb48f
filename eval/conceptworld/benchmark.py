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
import functools
from collections.abc import Callable

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
from . import selectivity as S
from .answers import ImagePrefixes, describe, yes_no
from .render import render_many
from .world import CONCEPTS, DOMAIN_OF, TASKS, Spec, concept_split, generic_stream, rng_for


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
    # The pool has its own stream family: seed s's pool is no other seed's forget images.
    pool = [s for c in CONCEPTS for s in concept_split(c, split, n_pool_per_concept, seed=seed, stream="pool")]
    perception = generic_stream(n_perception, seed=seed, stream=f"perception-{split}")
    return Suite(forget, pool, perception, split, seed)


@dataclasses.dataclass
class _CleanAnswers:
    """One model's clean answers: (image, question) -> (parsed yes, first-token margin), and
    (image, language) -> description."""

    yes: dict = dataclasses.field(default_factory=dict)
    texts: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _View:
    """Images as the language model sees them under one tower: which the edit changed [N] bool,
    and their features and the clean tower's, each with its cached prompt prefixes
    (`ImagePrefixes`, computed on first use)."""

    changed: np.ndarray
    features: Callable[[], ImagePrefixes]
    clean: Callable[[], ImagePrefixes]


class Model:
    """The ConceptWorld LLaVA with its vision tower in JAX: features from a clean or unlearned
    `VisionEncoder`, language model in PyTorch.

    Three things are computed once per image and reused (each checked against its plain
    version in `tests/eval/test_study_speed.py`): the pixels, the clean tower's hidden states
    (an unlearned tower resumes from the clean state at its first hook, so an edit costs the
    edit, not the tower), and the clean model's answers. An image the edit leaves bit-for-bit
    unchanged is the clean image to the language model, so it gets the clean answers."""

    def __init__(self, model, processor, encoder, batch_size: int = 256):
        self.model, self.tokenizer, self.encoder = model, processor.tokenizer, encoder
        self.batch_size = batch_size
        self._pixels: dict[Spec, np.ndarray] = {}  # [H, W, C] per image
        self._states: dict[tuple[Spec, int], np.ndarray] = {}  # the clean tower's state [T, D] per image and index
        self._memo = _CleanAnswers()

    def with_language_model(self, llava) -> Model:
        """The same JAX tower (clean, and its pixel and state caches) in front of another PyTorch
        LLaVA's projector and language model: how a weight-editing baseline's unlearned model is
        scored."""
        other = copy.copy(self)
        other.model = llava
        other._memo = _CleanAnswers()  # its own clean tower's answers come from its own language model
        return other

    def pixels(self, specs: list[Spec]) -> np.ndarray:
        """Preprocessed images [N, H, W, C]: each image rendered and preprocessed once per model
        (every concept's retain pool shares most of its images with the others')."""
        from sauce_jax.image_processor import preprocess

        missing = [spec for spec in dict.fromkeys(specs) if spec not in self._pixels]
        if missing:
            for spec, px in zip(missing, np.asarray(preprocess(list(render_many(missing)), self.encoder))):
                self._pixels[spec] = px
        return np.stack([self._pixels[spec] for spec in specs]) if specs else np.zeros((0,), np.float32)

    def _chunks(self, n: int):
        """(start, stop, bucket) per batch of n rows: padded to a power of two, so the JAX tower
        compiles for a handful of batch shapes only."""
        for start in range(0, n, self.batch_size):
            stop = min(n, start + self.batch_size)
            yield start, stop, min(self.batch_size, 1 << max(0, stop - start - 1).bit_length())

    def clean_states(self, specs: list[Spec], layer: int) -> np.ndarray:
        """The clean tower's hidden state at index `layer` [N, T, D], each image's computed once."""
        from sauce_jax.encoder import pad_batch

        missing = [spec for spec in dict.fromkeys(specs) if (spec, layer) not in self._states]
        if missing:
            px = self.pixels(missing)
            for start, stop, bucket in self._chunks(len(missing)):
                states = np.asarray(self.encoder.hidden_state(pad_batch(px[start:stop], bucket), layer))
                for spec, state in zip(missing[start:stop], states):
                    self._states[(spec, layer)] = state
        return np.stack([self._states[(spec, layer)] for spec in specs])

    def tower_states(self, specs: list[Spec], unlearned=None) -> list[np.ndarray]:
        """The hidden states LLaVA reads (`feature_layers`), each [N, T, D], of the clean tower
        or of `unlearned`, which resumes from the clean state at its first hook."""
        from sauce_jax.encoder import pad_batch
        from sauce_jax.eval.vlm.llava_bridge import feature_layers

        layers = feature_layers(self.model, self.encoder)
        added = sorted(set(unlearned.hooks) - set(self.encoder.hooks)) if unlearned is not None else []
        if not added or added[0] > max(layers):  # no edit reaches the states LLaVA reads
            return [self.clean_states(specs, layer) for layer in layers]
        if self.encoder.hooks:  # a hooked clean tower: its cached states are past its own hooks
            px = self.pixels(specs)
            return [np.concatenate([np.asarray(unlearned.hidden_state(pad_batch(px[a:b], n), layer))[:b - a]
                                    for a, b, n in self._chunks(len(specs))]) for layer in layers]
        base = self.clean_states(specs, added[0])
        return [np.concatenate([np.asarray(unlearned.hidden_state_from(pad_batch(base[a:b], n), added[0], layer))
                                [:b - a] for a, b, n in self._chunks(len(specs))]) for layer in layers]

    def features(self, specs: list[Spec], unlearned=None):
        """Projected image features [N, T, D_text] (torch)."""
        import torch

        from sauce_jax.eval.vlm.llava_bridge import project_states

        return project_states(self.model, self.tower_states(specs, unlearned)) if specs else torch.zeros(0)

    def answers(self, specs: list[Spec], concepts_of, language: str = "en", unlearned=None,
                generative: bool = True) -> dict:
        """Generated yes/no answers about `concepts_of(spec)` for each image, and its description's
        mentions of those concepts: {"asked": [(image, concept)], "present": [bool], "yes": [bool],
        "margin": [float], "named": [bool], "texts": [...]}. With `generative=False` no
        description is generated ("named" is then all False, "texts" empty)."""
        asked = [(i, c) for i, spec in enumerate(specs) for c in concepts_of(spec)]
        questions = [T.question(c, language) for _, c in asked]
        view = self._view(specs, unlearned)
        said = self._yes_no(specs, [i for i, _ in asked], questions, view)
        texts = self._describe(specs, language, view) if generative else []
        named = np.array([T.mentions(texts[i], c) for i, c in asked] if generative else [False] * len(asked), bool)
        return {"asked": asked, "present": np.array([specs[i].has(c) for i, c in asked], bool),
                "yes": said["yes"], "margin": said["margin"], "named": named, "texts": texts}

    def _view(self, specs: list[Spec], unlearned) -> _View:
        """The images as the language model sees them: which ones the edit changed (none for the
        clean tower), and their features with their prompt prefixes, each computed on first use."""
        def prefixes(features):
            return functools.cache(lambda: ImagePrefixes(self.model, self.tokenizer, features(), self.batch_size))

        clean = prefixes(lambda: self.features(specs))
        if unlearned is None:
            return _View(np.zeros(len(specs), bool), clean, clean)
        edited = self.tower_states(specs, unlearned)
        changed = np.zeros(len(specs), bool)
        for after, before in zip(edited, self.tower_states(specs)):
            changed |= (after != before).reshape(len(specs), -1).any(axis=1)
        from sauce_jax.eval.vlm.llava_bridge import project_states

        return _View(changed, prefixes(lambda: project_states(self.model, edited)), clean)

    def _ask(self, images: ImagePrefixes, rows: list[int], questions: list[str]) -> dict:
        return yes_no(self.model, self.tokenizer, images.projected, questions, self.batch_size, images=rows,
                      prefixes=images)

    def _yes_no(self, specs: list[Spec], rows: list[int], questions: list[str], view: _View) -> dict:
        """`yes_no` of questions[j] about image specs[rows[j]]: {"yes": [J] bool, "margin": [J]};
        images the edit left unchanged get the clean answers, each asked once per model."""
        yes, margin = np.zeros(len(questions), bool), np.zeros(len(questions), np.float32)
        fresh = [j for j, i in enumerate(rows) if view.changed[i]]
        if fresh:
            said = self._ask(view.features(), [rows[j] for j in fresh], [questions[j] for j in fresh])
            yes[fresh], margin[fresh] = said["yes"], said["margin"]
        kept = [j for j, i in enumerate(rows) if not view.changed[i]]
        keys = {j: (specs[rows[j]], questions[j]) for j in kept}
        first: dict = {}  # each missing (image, question) once, at its first row
        for j, key in keys.items():
            if key not in self._memo.yes:
                first.setdefault(key, j)
        missing = list(first.values())
        if missing:
            said = self._ask(view.clean(), [rows[j] for j in missing], [questions[j] for j in missing])
            for n, j in enumerate(missing):
                self._memo.yes[keys[j]] = (bool(said["yes"][n]), float(said["margin"][n]))
        for j, key in keys.items():
            yes[j], margin[j] = self._memo.yes[key]
        return {"yes": yes, "margin": margin}

    def _describe(self, specs: list[Spec], language: str, view: _View) -> list[str]:
        """`describe` of every image of `specs`; images the edit left unchanged get the clean
        description, generated once per model."""
        def described(images: ImagePrefixes, which: list[int]) -> list[str]:
            return describe(self.model, self.tokenizer, images.projected, language, images=which, prefixes=images)

        texts: list[str | None] = [None] * len(specs)
        fresh = [i for i in range(len(specs)) if view.changed[i]]
        if fresh:
            for i, text in zip(fresh, described(view.features(), fresh)):
                texts[i] = text
        missing = list(dict.fromkeys(i for i in range(len(specs)) if not view.changed[i]
                                     and (specs[i], language) not in self._memo.texts))
        if missing:
            for i, text in zip(missing, described(view.clean(), missing)):
                self._memo.texts.setdefault((specs[i], language), text)
        return [text if view.changed[i] else self._memo.texts[(specs[i], language)] for i, text in enumerate(texts)]

    def perception(self, specs: list[Spec], language: str = "en", unlearned=None, exclude=(),
                   seed: int = 0) -> dict[str, dict]:
        """MME scores of every `T.PERCEPTION_SUBTASKS` subtask (those with an image to ask), its
        questions naming no concept in `exclude`; answers generated and parsed like every yes/no."""
        pairs = {sub: [(i, T.utility_questions(spec, sub, language, exclude, seed)) for i, spec in enumerate(specs)]
                 for sub in T.PERCEPTION_SUBTASKS}
        pairs = {sub: [(i, p) for i, p in rows if p] for sub, rows in pairs.items()}
        flat = [(sub, i, q, truth) for sub, rows in pairs.items() for i, pair in rows for q, truth in pair]
        if not flat:
            return {}
        said = self._yes_no(specs, [i for _, i, _, _ in flat], [q for _, _, q, _ in flat],
                            self._view(specs, unlearned))["yes"]
        right = said == np.array([t for *_, t in flat], bool)
        subs = np.array([sub for sub, *_ in flat])
        ids = np.array([i for _, i, _, _ in flat])
        return {sub: mme_score(right[subs == sub], ids[subs == sub]) for sub in T.PERCEPTION_SUBTASKS
                if (subs == sub).any()}


def _retain(pool_answers: dict, clean: dict, concept: str, same_domain: bool) -> tuple[Rate, Rate]:
    keep = np.array([(DOMAIN_OF[c] == DOMAIN_OF[concept]) == same_domain for _, c in pool_answers["asked"]], bool)
    keep &= pool_answers["present"]
    return (retain_accuracy(clean["yes"][keep], pool_answers["yes"][keep]),
            retain_accuracy(clean["named"][keep], pool_answers["named"][keep]))


def _selectivity(concept: str, forget: dict, clean_forget: dict, pool: dict, forget_specs: list[Spec],
                 pool_specs: list[Spec], generative: bool) -> dict:
    """Co-occurring retention on the forget images, yes/no balanced accuracy over every other
    concept asked (present and absent, forget and pool images), and the description rates (HAL_g
    over forget and pool descriptions, and split: `selectivity.hallucination_split`)."""
    other = np.array([c != concept for _, c in forget["asked"]], bool)
    co = other & forget["present"]
    cor_d = retain_accuracy(clean_forget["yes"][co], forget["yes"][co])
    cor_g = retain_accuracy(clean_forget["named"][co], forget["named"][co])
    pool_other = np.array([c != concept for _, c in pool["asked"]], bool)
    yes = np.concatenate([forget["yes"][other], pool["yes"][pool_other]])
    present = np.concatenate([forget["present"][other], pool["present"][pool_other]])
    margin_yes = np.concatenate([forget["margin"][other], pool["margin"][pool_other]]) > 0
    forget_texts, pool_texts = list(zip(forget["texts"], forget_specs)), list(zip(pool["texts"], pool_specs))
    texts = forget_texts + pool_texts
    none = {"value": None, "n": 0}
    split = S.hallucination_split(concept, forget_texts, pool_texts) if generative else \
        dict.fromkeys(("HAL_swap", "HAL_other", "HAL_pool"), none)
    return {
        "COR_d": cor_d.as_dict(), "COR_g": cor_g.as_dict(),
        "BA_d": S.balanced_accuracy(yes, present), "BA_d_logit": S.balanced_accuracy(margin_yes, present),
        "HAL_g": S.rate(bool(S.hallucinated(t, s)) for t, s in texts) if generative else none,
        **split,
        "DEG_g": S.rate(S.degenerate(t) for t, _ in texts) if generative else none,
    }


N_EXAMPLES = 3  # Table 3: forget images described per concept, drawn by `example_indices`


def example_indices(n: int, seed: int, concept: str, k: int = N_EXAMPLES) -> list[int]:
    """Which of a concept's `n` forget images Table 3 shows: a seeded draw, not a choice."""
    rng = rng_for(seed, "examples", concept)
    return sorted(int(i) for i in rng.choice(n, size=min(k, n), replace=False))


class Evaluation:
    """Clean answers computed once per suite; `run(concept, unlearned)` scores one variant.

    Each forget image is asked about the target, every other concept it shows (co-occurring
    retention) and one absent concept per domain (false positives); each pool image about the
    concepts it shows (IRA, CRA) and one absent concept per domain. Utility's questions never
    name the target."""

    def __init__(self, model: Model, suite: Suite, language: str = "en", generative: bool = True):
        # generative=False skips the descriptions (UA_g and the _g retain rates have no support):
        # the cheap objective the demo's validation grid uses.
        self.model, self.suite, self.language, self.generative = model, suite, language, generative
        self._clean_forget: dict[str, dict] = {}
        self._pool_without: dict[str, list[Spec]] = {}
        self._clean_pool: dict[str, dict] = {}
        self._clean_perception: dict[str, dict] = {}

    def _asked(self, spec: Spec, concept: str | None = None) -> list[str]:
        first = [concept] if concept else []
        return first + sorted(spec.concepts - set(first)) + S.absent_concepts(spec, self.suite.seed)

    def _forget(self, concept: str, unlearned=None, model: Model | None = None) -> dict:
        return (model or self.model).answers(self.suite.forget[concept], lambda s: self._asked(s, concept),
                                             self.language, unlearned, self.generative)

    def pool_without(self, concept: str) -> list[Spec]:
        """The retain pool's images that do not show `concept`."""
        if concept not in self._pool_without:
            self._pool_without[concept] = [s for s in self.suite.pool if not s.has(concept)]
        return self._pool_without[concept]

    def _pool(self, concept: str, unlearned=None, model: Model | None = None) -> dict:
        return (model or self.model).answers(self.pool_without(concept), self._asked, self.language, unlearned,
                                             self.generative)

    def _perception(self, concept: str, unlearned=None, model: Model | None = None) -> dict:
        return (model or self.model).perception(self.suite.perception, self.language, unlearned, exclude=(concept,),
                                                seed=self.suite.seed)

    def clean(self, concept: str) -> tuple[dict, dict]:
        if concept not in self._clean_forget:
            self._clean_forget[concept] = self._forget(concept)
            self._clean_pool[concept] = self._pool(concept)
            self._clean_perception[concept] = self._perception(concept)
        return self._clean_forget[concept], self._clean_pool[concept]

    def clean_rates(self, concept: str) -> dict:
        """The clean model's rates that are not relative to it (BA, HAL and its split, DEG, utility)
        on this suite's images of `concept`: what `sauce.selective_objective` compares with."""
        clean_forget, clean_pool = self.clean(concept)
        rates = _selectivity(concept, clean_forget, clean_forget, clean_pool, self.suite.forget[concept],
                             self.pool_without(concept), self.generative)
        return {**{name: rates[name]["value"] for name in ("BA_d", "HAL_g", "HAL_swap", "HAL_other", "HAL_pool",
                                                           "DEG_g")},
                "utility": utility(self._clean_perception[concept])}

    def run(self, concept: str, unlearned=None, model: Model | None = None) -> dict:
        """Metrics of one variant: an unlearned JAX tower (`unlearned`), an edited PyTorch side
        (`model`, e.g. `Model.with_language_model(edited)`), both, or neither (the clean model)."""
        clean_forget, clean_pool = self.clean(concept)
        edited = unlearned is not None or model is not None
        forget = self._forget(concept, unlearned, model) if edited else clean_forget
        pool = self._pool(concept, unlearned, model) if edited else clean_pool
        ira_d, ira_g = _retain(pool, clean_pool, concept, same_domain=True)
        cra_d, cra_g = _retain(pool, clean_pool, concept, same_domain=False)
        perception = self._perception(concept, unlearned, model) if edited else self._clean_perception[concept]
        target = np.array([c == concept for _, c in forget["asked"]], bool)
        specs = self.suite.forget[concept]
        shown = example_indices(len(specs), self.suite.seed, concept)
        return {
            "concept": concept, "domain": DOMAIN_OF[concept],
            "UA_d": unlearning_accuracy(clean_forget["yes"][target], forget["yes"][target]).as_dict(),
            "UA_d_logit": unlearning_accuracy(clean_forget["margin"][target] > 0,
                                              forget["margin"][target] > 0).as_dict(),
            "UA_g": unlearning_accuracy(clean_forget["named"][target], forget["named"][target]).as_dict(),
            "IRA_d": ira_d.as_dict(), "IRA_g": ira_g.as_dict(), "CRA_d": cra_d.as_dict(), "CRA_g": cra_g.as_dict(),
            **_selectivity(concept, forget, clean_forget, pool, specs, self.pool_without(concept), self.generative),
            "clean_d": clean_accuracy(clean_forget["yes"][target]).as_dict(),
            "clean_g": clean_accuracy(clean_forget["named"][target]).as_dict(),
            "clean_rates": self.clean_rates(concept),
            "utility": utility(perception), "perception": perception,
            "clean_perception": self._clean_perception[concept],
            "examples": [{"image": i, "truth": T.description(specs[i], self.language),
                          "clean": clean_forget["texts"][i], "edited": forget["texts"][i]}
                         for i in shown if i < len(forget["texts"])],
        }


def headline(result: dict) -> dict[str, float]:
    """The paper's columns for one concept: UA_g, UA_d, IRA and CRA (each the mean of its
    discriminative and generative rate), utility."""
    def mean_of(*names):
        values = [result[n]["value"] for n in names if result[n]["value"] is not None]
        return float(np.mean(values)) if values else float("nan")

    return {"UA_g": mean_of("UA_g"), "UA_d": mean_of("UA_d"), "IRA": mean_of("IRA_d", "IRA_g"),
            "CRA": mean_of("CRA_d", "CRA_g"), "utility": result["utility"]}


SELECTIVITY = ("COR", "BA", "HAL", "HAL_swap", "HAL_other", "HAL_pool", "DEG", "UA_d_logit")


def selectivity(result: dict) -> dict[str, float]:
    """The selectivity columns of one concept: COR (co-occurring retention, mean of its yes/no
    and description rate), BA (yes/no balanced accuracy over the other concepts, present and
    absent), HAL (descriptions naming an absent concept) and its split HAL_swap / HAL_other /
    HAL_pool (`selectivity.hallucination_split`), DEG (degenerate descriptions) and
    UA_d_logit (UA_d scored by the logit margin, the old rule, as a diagnostic). NaN where a
    rate had no support (e.g. no descriptions)."""
    def value(name):
        v = result.get(name, {}).get("value")
        return float("nan") if v is None else float(v)

    cor = [v for v in (value("COR_d"), value("COR_g")) if not np.isnan(v)]
    return {"COR": float(np.mean(cor)) if cor else float("nan"), "BA": value("BA_d"), "HAL": value("HAL_g"),
            "HAL_swap": value("HAL_swap"), "HAL_other": value("HAL_other"), "HAL_pool": value("HAL_pool"),
            "DEG": value("DEG_g"), "UA_d_logit": value("UA_d_logit")}


def _nanmean(values) -> float:
    kept = [v for v in values if not np.isnan(v)]
    return round(float(np.mean(kept)), 4) if kept else float("nan")


def objectives(result: dict) -> dict[str, float]:
    """The objectives of one concept (`objectives`): "objective" (the compensatory one the v2
    grids maximised), "selective_objective" and "keeps_clean" (1 when every keep term is within
    `objectives.KEEP_MARGIN` of clean); the last two NaN for a result without clean_rates."""
    from .objectives import compensatory_objective, keeps_clean, selective_objective

    clean = result.get("clean_rates") is not None
    return {"objective": compensatory_objective(result),
            "selective_objective": selective_objective(result) if clean else float("nan"),
            "keeps_clean": float(keeps_clean(result)) if clean else float("nan")}


def task_table(results: list[dict]) -> dict[str, dict[str, float]]:
    """Per task (concrete, abstract): the mean of each headline, selectivity and objective column
    over its concepts."""
    table = {}
    for task, domains in TASKS.items():
        rows = [headline(r) | selectivity(r) | objectives(r) for r in results if r["domain"] in domains]
        if rows:
            table[task] = {k: _nanmean([row[k] for row in rows]) for k in rows[0]}
    return table
