"""Asking the ConceptWorld VLM: yes/no answers and descriptions for images given as features.

Everything here takes the images as projected features [B, N, D_text] (from the PyTorch tower
for the clean reference, or from `sauce_jax.eval.vlm.llava_bridge.llava_image_features` with a
JAX encoder, clean or unlearned), so the same prompts and decoding run on every variant of the
model; the features enter the prompt through `llava_bridge.inputs_embeds_with_features`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from . import text as T
from . import vlm


def prompt_batch(tokenizer, texts: Sequence[str]):
    """Left-padded ids [B, S] and attention mask for `USER: <image>...\n{text} ASSISTANT:` prompts."""
    import torch

    expand = T.IMAGE_TOKEN * vlm.num_image_tokens()
    rows = [tokenizer(T.prompt(t).replace(T.IMAGE_TOKEN, expand))["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.convert_tokens_to_ids("<pad>")
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


YES_NO_TOKENS = 3  # greedy tokens generated for a yes/no answer: enough for MME's 4-character rule


def parse_yes_no(text: str, language: str = "en") -> str:
    """"yes", "no" or "other": MME's rule (`sauce_jax.eval.mme.parse_answer`, the one the
    real-checkpoint path uses), with the Spanish "sí" read as "yes". A refusal or garbage is
    "other", which is neither yes nor a right answer."""
    from ..mme import parse_answer

    text = text.strip()
    if language == "es":
        text = re.sub(r"^sí\b", "yes", text.lower())
    return parse_answer(text)


def yes_no(model, tokenizer, projected, questions: Sequence[str], batch_size: int = 256) -> dict:
    """The model's generated answers to `questions[i]` about image i: greedy `YES_NO_TOKENS`
    tokens, parsed by `parse_yes_no`. Returns {"yes": [B] bool (parsed "yes"), "parsed": [B] str,
    "texts": [B] str, "margin": [B] float (first-token logit of yes minus no: the secondary,
    logit-based diagnostic that the generated answer replaces)}."""
    import torch

    from ..vlm.llava_bridge import inputs_embeds_with_features

    yes_ids = {lang: tokenizer.convert_tokens_to_ids(T.YES[lang]) for lang in T.LANGUAGES}
    no_id = tokenizer.convert_tokens_to_ids(T.NO["en"])
    decided = {yes_ids["en"], yes_ids["es"], no_id}
    texts, margins = [], []
    for start in range(0, len(questions), batch_size):
        chunk = list(questions[start:start + batch_size])
        ids, mask = (t.to(projected.device) for t in prompt_batch(tokenizer, chunk))
        feats = projected[start:start + len(chunk)]
        with torch.no_grad():
            embeds = inputs_embeds_with_features(model, ids, feats)
            first = model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1].float()  # [B, V]
        yes = torch.tensor([yes_ids[_language(q)] for q in chunk], device=first.device)
        margins.append((first.gather(1, yes[:, None])[:, 0] - first[:, no_id]).cpu().numpy())
        # Greedy decoding's first token is the argmax. A word-level "yes", "sí" or "no" decides
        # the parse whatever follows (MME reads the first four characters), so only the other
        # rows are decoded further: the same parse as generating YES_NO_TOKENS for every row.
        top = first.argmax(-1).tolist()
        chunk_texts = [tokenizer.decode([t], skip_special_tokens=True) for t in top]
        rest = [i for i, t in enumerate(top) if t not in decided]
        if rest:
            with torch.no_grad():
                out = model.generate(input_ids=ids[rest], inputs_embeds=embeds[rest], attention_mask=mask[rest],
                                     max_new_tokens=YES_NO_TOKENS, do_sample=False)
            for i, text in zip(rest, tokenizer.batch_decode(out[:, ids.shape[1]:].cpu(), skip_special_tokens=True)):
                chunk_texts[i] = text
        texts += chunk_texts
    parsed = [parse_yes_no(t, _language(q)) for t, q in zip(texts, questions)]
    return {"yes": np.array([p == "yes" for p in parsed], bool), "parsed": parsed,
            "texts": [t.strip() for t in texts],
            "margin": np.concatenate(margins) if margins else np.zeros(0, np.float32)}


def _language(question: str) -> str:
    return "es" if question.startswith("¿") else "en"


def says_yes(model, tokenizer, projected, questions: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """[B] bool: does the model's generated answer to `questions[i]` about image i parse as yes
    (`yes_no`)?"""
    return yes_no(model, tokenizer, projected, questions, batch_size)["yes"]


def describe(model, tokenizer, projected, language: str = "en", max_new_tokens: int = 28,
             batch_size: int = 128) -> list[str]:
    """Greedy descriptions of each image (the generative prompt)."""
    import torch

    from ..vlm.llava_bridge import inputs_embeds_with_features

    texts = []
    for start in range(0, len(projected), batch_size):
        feats = projected[start:start + batch_size]
        ids, mask = (t.to(feats.device) for t in prompt_batch(tokenizer, [T.DESCRIBE[language]] * len(feats)))
        with torch.no_grad():
            embeds = inputs_embeds_with_features(model, ids, feats)
            out = model.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=mask,
                                 max_new_tokens=max_new_tokens, do_sample=False)
        texts += tokenizer.batch_decode(out[:, ids.shape[1]:].cpu(), skip_special_tokens=True)
    return [t.strip() for t in texts]


def torch_features(model, images: np.ndarray):
    """Projected features [B, N, D_text] from the model's own PyTorch tower (the clean reference)."""
    import torch

    with torch.no_grad():
        return model.model.multi_modal_projector(vlm.tower_features(model, images).float())
