"""ConceptWorld's language: prompts and answers in English and Spanish, and the words of each concept.

The two languages let the paper's translation attack run: the unlearned model is asked in
Spanish about a concept unlearned from English-chosen images. Every prompt is a single turn of
LLaVA-1.5's template (`USER: <image>\n{prompt} ASSISTANT:`), so a yes/no answer never follows a
description in the same sequence and the model must look at the image each time.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from .world import DOMAIN_OF, DOMAINS, Spec

LANGUAGES = ("en", "es")
IMAGE_TOKEN = "<image>"
EOS = "</s>"
YES = {"en": "yes", "es": "sí"}
NO = {"en": "no", "es": "no"}

WORDS: dict[str, dict[str, str]] = {
    "en": {c: c for c in DOMAIN_OF} | {"face": "face"},
    "es": {
        "star": "estrella", "circle": "círculo", "square": "cuadrado", "triangle": "triángulo", "heart": "corazón",
        "cross": "cruz", "moon": "luna", "arrow": "flecha", "face": "cara",
        "court": "cancha", "field": "campo", "pool": "piscina", "track": "pista", "rink": "hielo", "beach": "playa",
        "red": "rojo", "blue": "azul", "green": "verde", "yellow": "amarillo", "purple": "morado",
        "orange": "naranja", "pink": "rosa", "brown": "marrón", "black": "negro", "white": "blanco",
        "happy": "feliz", "sad": "triste", "angry": "enojado", "surprised": "sorprendido",
        "wood": "madera", "metal": "metal", "glass": "vidrio", "fabric": "tela", "stone": "piedra",
    },
}
FEMININE_ES = {"estrella", "cruz", "luna", "flecha", "cara", "cancha", "piscina", "pista", "playa"}

DESCRIBE = {"en": "Describe all the objects in this image.", "es": "Describe todos los objetos de esta imagen."}
ANSWER_YES_NO = {"en": "Answer yes or no.", "es": "Responde sí o no."}
QUESTIONS = {  # per domain, {w} is the concept word
    "en": {
        "object": "Is there a {w} in this image?",
        "scene": "Is this image taken on a {w}?",
        "color": "Is there something {w} in this image?",
        "emotion": "Is there a {w} face in this image?",
        "material": "Is there something made of {w} in this image?",
    },
    "es": {
        "object": "¿Hay {a} {w} en esta imagen?",
        "scene": "¿Esta imagen es en {a} {w}?",
        "color": "¿Hay algo {w} en esta imagen?",
        "emotion": "¿Hay una cara {w} en esta imagen?",
        "material": "¿Hay algo de {w} en esta imagen?",
    },
}
# Perception questions (the utility benchmark in place of MME): subtask -> language -> {fact: question}.
PERCEPTION = {
    "count": {
        "en": {"one": "Is there exactly one item in this image?", "two": "Are there two items in this image?"},
        "es": {"one": "¿Hay exactamente un objeto en esta imagen?", "two": "¿Hay dos objetos en esta imagen?"},
    },
    "position": {
        "en": {"middle": "Is there an item in the middle of this image?", "sides": "Are there items on the left and on the right?"},
        "es": {"middle": "¿Hay un objeto en el centro de esta imagen?", "sides": "¿Hay objetos a la izquierda y a la derecha?"},
    },
}


def _article(language: str, word: str) -> str:
    if language == "en":
        return "an" if word[0] in "aeiou" else "a"
    return "una" if word in FEMININE_ES else "un"


def item_phrase(item, language: str = "en") -> str:
    w = WORDS[language]
    if language == "en":
        words = ([w[item.emotion]] if item.emotion else []) + [w[item.color], w[item.material], w[item.shape or "face"]]
        return f"{_article('en', words[0])} {' '.join(words)}"
    noun = w[item.shape or "face"]
    emotion = f" {w[item.emotion]}" if item.emotion else ""
    return f"{_article('es', noun)} {noun}{emotion} {w[item.color]} de {w[item.material]}"


def description(spec: Spec, language: str = "en") -> str:
    """The reference description: every item left to right, then the scene; names every concept."""
    joiner = " and " if language == "en" else " y "
    scene = WORDS[language][spec.scene]
    where = f"on {_article('en', scene)} {scene}" if language == "en" else f"en {'la' if scene in FEMININE_ES else 'el'} {scene}"
    return f"{joiner.join(item_phrase(item, language) for item in spec.items)} {where} ."


def question(concept: str, language: str = "en") -> str:
    """The discriminative prompt for `concept`."""
    word = WORDS[language][concept]
    q = QUESTIONS[language][DOMAIN_OF[concept]].format(w=word, a=_article(language, word))
    return f"{q} {ANSWER_YES_NO[language]}"


def perception_questions(spec: Spec, subtask: str, language: str = "en") -> list[tuple[str, bool]]:
    """MME-style pair for one image: a question whose answer is yes and one whose answer is no."""
    facts = PERCEPTION[subtask][language]
    if subtask == "count":
        true, false = ("one", "two") if len(spec.items) == 1 else ("two", "one")
    else:
        true, false = ("middle", "sides") if len(spec.items) == 1 else ("sides", "middle")
    return [(f"{facts[true]} {ANSWER_YES_NO[language]}", True), (f"{facts[false]} {ANSWER_YES_NO[language]}", False)]


# The utility benchmark's subtasks: the two trained perception questions (both hinge on one
# versus two items), then MME-style existence, color, material, scene and emotion pairs asked
# with the trained yes/no templates about concepts other than the unlearned ones.
PERCEPTION_SUBTASKS = ("count", "position", "existence", "color", "material", "scene", "emotion")
_SUBTASK_DOMAIN = {"existence": "object", "color": "color", "material": "material", "scene": "scene",
                   "emotion": "emotion"}


def utility_questions(spec: Spec, subtask: str, language: str = "en", exclude=(), seed: int = 0
                      ) -> list[tuple[str, bool]]:
    """One image's MME-style pair for any of `PERCEPTION_SUBTASKS`: a question whose answer is
    yes and one whose answer is no, naming no concept in `exclude` (the unlearned ones); [] when
    the image cannot be asked (no face for "emotion", or its only concept of the domain is
    excluded). The concepts are drawn from a stream keyed by the image and `seed`."""
    from .world import rng_for

    if subtask in PERCEPTION:
        return perception_questions(spec, subtask, language)
    names = DOMAINS[_SUBTASK_DOMAIN[subtask]]
    present = [c for c in names if spec.has(c) and c not in exclude]
    absent = [c for c in names if not spec.has(c) and c not in exclude]
    if not present or not absent:
        return []
    rng = rng_for(seed, "utility", subtask, spec.noise_seed, spec.scene)
    yes, no = present[int(rng.integers(len(present)))], absent[int(rng.integers(len(absent)))]
    return [(question(yes, language), True), (question(no, language), False)]


def prompt(text: str) -> str:
    """LLaVA-1.5's single-turn template, image first. With the image first the asked word can
    attend to the image tokens directly; measured on the same recipe, that learnt yes/no
    questions faster than the question-first order (both need about 14k language steps)."""
    return f"USER: {IMAGE_TOKEN}\n{text} ASSISTANT:"


def mentions(answer: str, concept: str, languages=LANGUAGES) -> bool:
    """The ConceptWorld UA_g judge: exact concept-word matching, in both languages."""
    words = _words(answer)
    return any(WORDS[language][concept] in words for language in languages)


@functools.lru_cache(maxsize=1 << 16)
def _words(answer: str) -> frozenset[str]:
    """The lower-cased words of an answer (a study judges the same few thousand descriptions for
    every concept)."""
    return frozenset(answer.lower().replace(".", " ").replace("?", " ").split())


@dataclasses.dataclass(frozen=True)
class Example:
    """One training or evaluation sequence: the prompt text and the reference answer."""

    prompt: str
    answer: str
    kind: str  # "describe", "yes_no" or a perception subtask


def random_example(spec: Spec, rng: np.random.Generator, describe: float = 0.2, yes_no: float = 0.7) -> Example:
    """A training example: a description (share `describe`), a yes/no question (share `yes_no`)
    or a perception question.

    Yes/no questions pick the answer first, then a domain, then a concept of that domain present
    (yes) or absent (no) in the image: every concept is then asked about as often with a yes as
    with a no, so the question alone says nothing about the answer and the model has to look.
    """
    language = LANGUAGES[int(rng.integers(2))]
    roll = rng.random()
    if roll < describe:
        return Example(DESCRIBE[language], description(spec, language), "describe")
    if roll < describe + yes_no:
        domains = list(DOMAINS)
        if rng.random() < 0.5:
            shown = [d for d in domains if any(spec.has(c) for c in DOMAINS[d])]
            domain = shown[int(rng.integers(len(shown)))]
            pool = [c for c in DOMAINS[domain] if spec.has(c)]
        else:
            domain = domains[int(rng.integers(len(domains)))]
            pool = [c for c in DOMAINS[domain] if not spec.has(c)]
        concept = pool[int(rng.integers(len(pool)))]
        return Example(question(concept, language), YES[language] if spec.has(concept) else NO[language], "yes_no")
    subtask = ("count", "position")[int(rng.integers(2))]
    text, truth = perception_questions(spec, subtask, language)[int(rng.integers(2))]
    return Example(text, YES[language] if truth else NO[language], subtask)


def vocabulary() -> list[str]:
    """Every word the prompts and answers use, in a fixed order (the word-level tokenizer's vocab)."""
    from tokenizers.pre_tokenizers import Whitespace

    texts = [DESCRIBE[lang] for lang in LANGUAGES] + list(ANSWER_YES_NO.values()) + list(YES.values()) + ["no"]
    texts += ["USER: ASSISTANT: a an and on un una y en el la de"]
    for lang in LANGUAGES:
        texts += list(WORDS[lang].values()) + list(QUESTIONS[lang].values())
        texts += [q for sub in PERCEPTION.values() for q in sub[lang].values()]
    split = Whitespace()
    words: list[str] = []
    for text in texts:
        for word, _ in split.pre_tokenize_str(text.lower().replace("{w}", " ").replace("{a}", " ")):
            if word not in words:
                words.append(word)
    return words
