"""SAUCE's metrics on a real LLaVA checkpoint and a folder of concept images.

For every target concept c (features selected on the train split, eq. 4), the clean and the
unlearned model answer the same prompts about the test images of every concept, each image
asked about its own concept:

- discriminative prompts ("Does this image contain a {concept}? Answer yes or no.", ...): the
  model shows the concept when its answer parses as yes (MME's rule, `sauce_jax.eval.mme.parse_answer`);
- generative prompts ("Describe all the objects in this image.", ...): the model shows the
  concept when the judge (`sauce_jax.eval.judges`) finds it in the description.

UA_d / UA_g: among c's test cases (image x prompt) the clean model showed, the share the
unlearned model no longer shows. IRA_* / CRA_*: among the cases of the other concepts of c's
domain / of the other domains that the clean model showed, the share still shown. The headline
IRA and CRA average their discriminative and generative rates, as ConceptWorld's do.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sauce_jax.eval.concept_dirs import ConceptDirs
from sauce_jax.eval.metrics import Rate, clean_accuracy, mean_rate, retain_accuracy, unlearning_accuracy
from sauce_jax.errors import ConfigError

# The paper's generative and discriminative prompts, first, then two more phrasings of each.
GENERATIVE_PROMPTS = ("Describe all the objects in this image.", "Describe this image in detail.",
                      "What can you see in this image?")
DISCRIMINATIVE_PROMPTS = ("Does this image contain a {concept}? Answer yes or no.",
                          "Is there a {concept} in this image? Answer yes or no.",
                          "Can you see a {concept} in this picture? Answer yes or no.")


def fill_prompt(template: str, word: str) -> str:
    """`template` with {concept} replaced by `word`; "a {concept}" becomes "an" before a vowel."""
    if word[:1].lower() in "aeiou":
        template = re.sub(r"\b([aA]) \{concept\}", lambda m: ("an" if m.group(1) == "a" else "An") + " {concept}",
                          template)
    return template.replace("{concept}", word)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What `evaluate` runs: the intervention, the image counts and the prompts."""

    k: int = 32
    gamma: float = -0.5
    mode: str = "reconstruct"
    where: str = "all"
    n_test: int | None = 50  # test images per concept (None: all)
    n_retain: int | None = None  # test images per other concept for IRA/CRA (None: n_test)
    n_select: int | None = 100  # train images per concept for feature selection (None: all)
    generative: tuple[str, ...] = GENERATIVE_PROMPTS
    discriminative: tuple[str, ...] = DISCRIMINATIVE_PROMPTS
    max_new_tokens: int = 64  # per description
    yes_no_tokens: int = 8  # per yes/no answer
    seed: int = 0  # which train images are drawn for selection

    def __post_init__(self):
        if self.mode not in ("reconstruct", "delta"):
            raise ConfigError(f"mode must be 'reconstruct' or 'delta', got {self.mode!r}")
        for name in ("k", "max_new_tokens", "yes_no_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_test", "n_retain", "n_select"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if not self.generative and not self.discriminative:
            raise ConfigError("give at least one generative or discriminative prompt")
        for template in self.discriminative:
            if "{concept}" not in template:
                raise ConfigError(f"discriminative prompt {template!r} has no {{concept}} placeholder")
        for template in self.generative:
            if "{concept}" in template:
                raise ConfigError(f"generative prompt {template!r} must not name the concept")


@dataclasses.dataclass
class Answers:
    """One variant's answers about a list of images, each asked about its own concept."""

    texts_d: list[list[str]]  # [image][discriminative prompt]
    texts_g: list[list[str]]  # [image][generative prompt]
    yes: np.ndarray  # [N, P_d] bool: the yes/no answer parsed as yes
    named: np.ndarray  # [N, P_g] bool: the judge found the concept in the description


def ask_all(answerer, judge, images: Sequence[Path], concepts: Sequence[str], words: dict[str, str],
            config: EvalConfig, unlearned=None) -> Answers:
    """Every prompt about every image (image i about concept `concepts[i]`), judged."""
    from sauce_jax.eval.mme import parse_answer

    prompts = [[fill_prompt(t, words[c]) for t in config.discriminative] for c in concepts]
    texts_d = answerer.ask(images, prompts, unlearned=unlearned, max_new_tokens=config.yes_no_tokens) \
        if config.discriminative else [[] for _ in images]
    texts_g = answerer.ask(images, [list(config.generative)] * len(images), unlearned=unlearned,
                           max_new_tokens=config.max_new_tokens) if config.generative else [[] for _ in images]
    yes = np.array([[parse_answer(a) == "yes" for a in row] for row in texts_d], bool).reshape(len(images), -1)
    named = np.zeros((len(images), len(config.generative)), bool)
    for concept in dict.fromkeys(concepts):  # one judge call per concept: a chat judge batches it
        rows = [i for i, c in enumerate(concepts) if c == concept]
        if config.generative and rows:
            verdicts = judge.judge(concept, [a for i in rows for a in texts_g[i]])  # [len(rows) * P_g]
            named[rows] = verdicts.reshape(len(rows), len(config.generative))
    return Answers(texts_d, texts_g, yes, named)


def _subset(answers: Answers, rows: np.ndarray) -> Answers:
    return Answers([answers.texts_d[i] for i in rows], [answers.texts_g[i] for i in rows], answers.yes[rows],
                   answers.named[rows])


def _rates(clean: Answers, edited: Answers, mask: np.ndarray, fn) -> tuple[Rate, Rate]:
    return (fn(clean.yes[mask].ravel(), edited.yes[mask].ravel()),
            fn(clean.named[mask].ravel(), edited.named[mask].ravel()))


def _mean_of(*rates: Rate) -> float | None:
    values = [r.value for r in rates if r.n > 0 and not np.isnan(r.value)]
    return round(float(np.mean(values)), 4) if values else None


def score(clean: Answers, edited: Answers, image_concepts: Sequence[str], target: str, dirs: ConceptDirs) -> dict:
    """UA_d, UA_g, IRA_d, IRA_g, CRA_d, CRA_g (each over the cases the clean model showed) and
    the clean rates, for one target concept; `image_concepts[i]` is image i's concept."""
    of = np.asarray(image_concepts)
    forget = of == target
    same = np.isin(of, dirs.others(target, same_domain=True))
    cross = np.isin(of, dirs.others(target, same_domain=False))
    ua_d, ua_g = _rates(clean, edited, forget, unlearning_accuracy)
    ira_d, ira_g = _rates(clean, edited, same, retain_accuracy)
    cra_d, cra_g = _rates(clean, edited, cross, retain_accuracy)
    rates = {"UA_d": ua_d, "UA_g": ua_g, "IRA_d": ira_d, "IRA_g": ira_g, "CRA_d": cra_d, "CRA_g": cra_g,
             "clean_d": clean_accuracy(clean.yes[forget].ravel()), "clean_g": clean_accuracy(clean.named[forget].ravel())}
    out: dict[str, Any] = {"concept": target, "domain": dirs[target].domain}
    out.update({name: rate.as_dict() for name, rate in rates.items()})
    out["headline"] = {"UA_d": _mean_of(ua_d), "UA_g": _mean_of(ua_g), "IRA": _mean_of(ira_d, ira_g),
                       "CRA": _mean_of(cra_d, cra_g)}
    out["images"] = {"forget": int(forget.sum()), "in_domain": int(same.sum()), "cross_domain": int(cross.sum())}
    return out


def _first(paths: Sequence[Path], n: int | None) -> list[Path]:
    return list(paths if n is None else paths[:n])


def _draw(paths: Sequence[Path], n: int | None, rng: np.random.Generator) -> list[Path]:
    if n is None or n >= len(paths):
        return list(paths)
    return [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]


def select_all(sae, answerer, dirs: ConceptDirs, targets: Sequence[str], config: EvalConfig, layer: int,
               token: str | None = None) -> dict:
    """Each target's k features (eq. 4): its train images against every other concept's. The
    train images are encoded once for all targets, in batches padded to the answerer's batch
    size through the forward its answers use, so the tower compiles once."""
    from sauce_jax.scoring import image_activations, select_one_vs_rest

    if config.k > sae.config.d_sae:
        raise ConfigError(f"k={config.k} exceeds the SAE's {sae.config.d_sae} features")
    token = token or sae.metadata.get("token") or "last"
    rng = np.random.default_rng(config.seed)
    train = {name: _draw(c.images("train"), config.n_select, rng) for name, c in dirs.concepts.items()}
    owner = np.array([name for name, paths in train.items() for _ in paths])
    batch = answerer.batch_size
    z = image_activations(sae, answerer.encoder, [p for paths in train.values() for p in paths], layer=layer,
                          token=token, batch_size=batch, pad_to=batch, upto=max(layer, answerer.layer), rgb=True,
                          strict=True, progress=False)  # [N, d_sae]
    return select_one_vs_rest(z, owner, targets, config.k, layer=layer, sae_fingerprint=sae.fingerprint(),
                              gamma=config.gamma, token=token)


def evaluate(answerer, sae, dirs: ConceptDirs, judge, config: EvalConfig, *, targets: Sequence[str] | None = None,
             layer: int | None = None, mme_root=None, mme_subtasks=None, answers_path=None, log=print) -> dict:
    """The metrics of unlearning each target concept in turn (default: every concept).

    `answerer` is an `sauce_jax.eval.vlm.llava_answerer.LlavaAnswerer`; `sae` an SAE trained on `layer` of
    its tower (default: the SAE's metadata, else the layer LLaVA reads); `judge` an
    `sauce_jax.eval.judges.Judge`. With `mme_root`, MME (perception + cognition) is scored for the clean
    model and for each unlearned one. With `answers_path`, every answer is written there
    (JSON lines) with its verdict. `log` receives one line per concept.
    """
    from sauce_jax.intervention import unlearn

    targets = dirs.check_names(targets if targets is not None else list(dirs.concepts))
    if len(dirs.concepts) < 2:
        raise ConfigError(f"{str(dirs.root)!r} has one concept; selection needs other concepts as negatives")
    encoder = answerer.encoder
    if sae.config.d_in != encoder.config.hidden_size:
        raise ConfigError(f"the SAE's d_in={sae.config.d_in} differs from the vision tower's width "
                          f"{encoder.config.hidden_size}")
    layer = encoder.layer_index(layer if layer is not None else sae.metadata.get("layer", answerer.layer))
    words = {name: c.word for name, c in dirs.concepts.items()}
    n_test = config.n_test
    n_retain = config.n_retain if config.n_retain is not None else n_test
    n_clean = None if n_test is None or n_retain is None else max(n_test, n_retain)
    # The clean model answers about the first n_clean test images of every concept; each target
    # then uses its first n_test (forget) and the first n_retain of every other concept.
    test = {name: _first(c.images("test"), n_clean) for name, c in dirs.concepts.items()}
    images = [p for paths in test.values() for p in paths]
    image_concepts = [name for name, paths in test.items() for _ in paths]
    position = np.array([i for paths in test.values() for i in range(len(paths))])  # index within its concept
    log(f"clean model: {len(images)} test images x {len(config.discriminative)} yes/no + "
        f"{len(config.generative)} describe prompts")
    clean = ask_all(answerer, judge, images, image_concepts, words, config)
    dump = _Dump(answers_path)
    dump.write("clean", images, image_concepts, config, clean)
    clean_mme = _mme(answerer, None, mme_root, mme_subtasks) if mme_root is not None else None
    sets = select_all(sae, answerer, dirs, targets, config, layer)
    results = []
    for target in targets:
        # This target's forget images, and n_retain images of every other concept.
        limit = np.array([(n_test if c == target else n_retain) or len(images) for c in image_concepts])
        rows = np.flatnonzero(position < limit)
        edited_encoder = unlearn(encoder, sae, sets[target], layer=layer, gamma=config.gamma, mode=config.mode,
                                 where=config.where)
        sub_images, sub_concepts = [images[i] for i in rows], [image_concepts[i] for i in rows]
        edited = ask_all(answerer, judge, sub_images, sub_concepts, words, config, unlearned=edited_encoder)
        dump.write(f"unlearn:{target}", sub_images, sub_concepts, config, edited)
        result = score(_subset(clean, rows), edited, sub_concepts, target, dirs)
        result["features"] = list(sets[target].feature_ids)
        if mme_root is not None:
            result["mme"] = _mme(answerer, edited_encoder, mme_root, mme_subtasks)
        results.append(result)
        h = result["headline"]
        log(f"{target:20s} " + "  ".join(f"{k} {'  -  ' if v is None else f'{100 * v:5.1f}'}" for k, v in h.items()))
    summary = {"layer": layer, "config": dataclasses.asdict(config), "targets": list(targets),
               "per_concept": results, "mean": _means(results)}
    if clean_mme is not None:
        summary["clean_mme"] = clean_mme
    return summary


def _means(results: list[dict]) -> dict:
    out = {}
    for name in ("UA_d", "UA_g", "IRA_d", "IRA_g", "CRA_d", "CRA_g"):
        rates = [Rate(r[name]["value"] if r[name]["value"] is not None else float("nan"), r[name]["n"])
                 for r in results]
        out[name] = mean_rate(rates).as_dict()
    for name in ("IRA", "CRA"):
        values = [r["headline"][name] for r in results if r["headline"][name] is not None]
        out[name] = round(float(np.mean(values)), 4) if values else None
    return out


def _mme(answerer, unlearned, root, subtasks) -> dict:
    from sauce_jax.eval.mme import run_mme

    summary = run_mme(root, answerer.mme_answerer(unlearned), subtasks=subtasks, batch_size=answerer.batch_size)
    return {"perception": summary["perception"]["score"], "cognition": summary["cognition"]["score"],
            "subtasks": {k: v["score"] for k, v in summary["subtasks"].items()}}


class _Dump:
    """Every answer with its verdict, as JSON lines (no file: nothing written)."""

    def __init__(self, path):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def write(self, variant: str, images, concepts, config: EvalConfig, answers: Answers) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for i, (image, concept) in enumerate(zip(images, concepts)):
                for j, template in enumerate(config.discriminative):
                    f.write(json.dumps({"variant": variant, "image": str(image), "concept": concept,
                                        "kind": "discriminative", "prompt": template, "answer": answers.texts_d[i][j],
                                        "shows": bool(answers.yes[i, j])}, ensure_ascii=False) + "\n")
                for j, prompt in enumerate(config.generative):
                    f.write(json.dumps({"variant": variant, "image": str(image), "concept": concept,
                                        "kind": "generative", "prompt": prompt, "answer": answers.texts_g[i][j],
                                        "shows": bool(answers.named[i, j])}, ensure_ascii=False) + "\n")
