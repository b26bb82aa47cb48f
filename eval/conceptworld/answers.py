"""Asking the ConceptWorld VLM: yes/no answers and descriptions for images given as features.

Everything here takes the images as projected features [B, N, D_text] (from the PyTorch tower
for the clean reference, or from `sauce_jax.eval.vlm.llava_bridge.llava_image_features` with a
JAX encoder, clean or unlearned), so the same prompts and decoding run on every variant of the
model; the features enter the prompt through `llava_bridge.inputs_embeds_with_features`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import numpy as np

from . import text as T
from . import vlm


def prompt_batch(tokenizer, texts: Sequence[str]):
    """Left-padded ids [B, S] and attention mask for `USER: <image>...\n{text} ASSISTANT:` prompts."""
    import torch

    rows = [_prompt_ids(tokenizer, T.prompt(t)) for t in texts]
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


def yes_no(model, tokenizer, projected, questions: Sequence[str], batch_size: int = 256,
           images: Sequence[int] | None = None) -> dict:
    """The model's generated answers to `questions[j]` about image `images[j]` (default: image
    j) of `projected` [N, T, D_text]: greedy `YES_NO_TOKENS` tokens, parsed by `parse_yes_no`.
    Returns {"yes": [J] bool (parsed "yes"), "parsed": [J] str, "texts": [J] str, "margin": [J]
    float (first-token logit of yes minus no: the secondary, logit-based diagnostic that the
    generated answer replaces)}.

    Every prompt starts with the image ("USER: <image>..."), so the language model runs that
    prefix once per image and each question only over its own tokens, attending to the cached
    prefix: the same logits as the whole prompt (rotary positions are relative), at a fraction
    of the work when an image is asked several questions."""
    import torch

    images = list(range(len(questions))) if images is None else [int(i) for i in images]
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} image indices for {len(questions)} questions")
    if not questions:
        return {"yes": np.zeros(0, bool), "parsed": [], "texts": [], "margin": np.zeros(0, np.float32)}
    yes_ids = {lang: tokenizer.convert_tokens_to_ids(T.YES[lang]) for lang in T.LANGUAGES}
    no_id = tokenizer.convert_tokens_to_ids(T.NO["en"])
    decided = {yes_ids["en"], yes_ids["es"], no_id}
    prefix, tails = _split_prompts(tokenizer, questions)
    used = sorted(set(images))
    caches = _prefix_caches(model, prefix, projected[used], batch_size)  # per layer (keys, values) [U, H, P, d]
    slot = {image: n for n, image in enumerate(used)}
    texts, margins = [], []
    for start in range(0, len(questions), batch_size):
        rows = range(start, min(start + batch_size, len(questions)))
        first = _first_logits(model, caches, [slot[images[j]] for j in rows], [tails[j] for j in rows],
                              len(prefix))  # [B, V]
        yes = torch.tensor([yes_ids[_language(questions[j])] for j in rows], device=first.device)
        margins.append((first.gather(1, yes[:, None])[:, 0] - first[:, no_id]).cpu().numpy())
        # Greedy decoding's first token is the argmax. A word-level "yes", "sí" or "no" decides
        # the parse whatever follows (MME reads the first four characters), so only the other
        # rows are decoded further: the same parse as generating YES_NO_TOKENS for every row.
        top = first.argmax(-1).tolist()
        chunk_texts = [tokenizer.decode([t], skip_special_tokens=True) for t in top]
        rest = [n for n, t in enumerate(top) if t not in decided]
        if rest:
            from ..vlm.llava_bridge import inputs_embeds_with_features

            chunk = [questions[start + n] for n in rest]
            ids, mask = (t.to(projected.device) for t in prompt_batch(tokenizer, chunk))
            feats = projected[[images[start + n] for n in rest]]
            with torch.no_grad():
                embeds = inputs_embeds_with_features(model, ids, feats)
                out = model.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=mask,
                                     max_new_tokens=YES_NO_TOKENS, do_sample=False)
            for n, text in zip(rest, tokenizer.batch_decode(out[:, ids.shape[1]:].cpu(), skip_special_tokens=True)):
                chunk_texts[n] = text
        texts += chunk_texts
    parsed = [parse_yes_no(t, _language(q)) for t, q in zip(texts, questions)]
    return {"yes": np.array([p == "yes" for p in parsed], bool), "parsed": parsed,
            "texts": [t.strip() for t in texts],
            "margin": np.concatenate(margins) if margins else np.zeros(0, np.float32)}


def _split_prompts(tokenizer, questions: Sequence[str]) -> tuple[list[int], list[list[int]]]:
    """The token ids every prompt shares (BOS, "USER:", the image tokens) and each prompt's own
    rest, checked: the two together are exactly the whole prompt's ids."""
    head = T.prompt("\x00").split("\x00")[0]  # the template up to the question: "USER: <image>\n"
    prefix = list(_prompt_ids(tokenizer, head))
    return prefix, [list(_tail_ids(tokenizer, question, len(prefix))) for question in questions]


@functools.lru_cache(maxsize=1 << 16)
def _prompt_ids(tokenizer, text: str) -> tuple[int, ...]:
    """The ids of `text` with its image token expanded, tokenized once per tokenizer and text (a
    study asks the same few hundred questions about thousands of images)."""
    return tuple(tokenizer(text.replace(T.IMAGE_TOKEN, T.IMAGE_TOKEN * vlm.num_image_tokens()))["input_ids"])


@functools.lru_cache(maxsize=1 << 16)
def _tail_ids(tokenizer, question: str, prefix_length: int) -> tuple[int, ...]:
    head = T.prompt("\x00").split("\x00")[0]
    ids = _prompt_ids(tokenizer, T.prompt(question))
    if ids[:prefix_length] != _prompt_ids(tokenizer, head):
        raise ValueError(f"the prompt for {question!r} does not start with the shared image prefix")
    return ids[prefix_length:]


def _prefix_caches(model, prefix: list[int], projected, batch_size: int) -> list[tuple]:
    """The language model's keys and values of the shared prefix for each image of `projected`
    [U, T, D_text]: per layer (keys, values), each [U, heads, P, head_dim]."""
    import torch

    from ..vlm.llava_bridge import inputs_embeds_with_features

    parts = []
    for start in range(0, len(projected), batch_size):
        feats = projected[start:start + batch_size]
        ids = torch.tensor([prefix] * len(feats), device=feats.device)
        with torch.no_grad():
            embeds = inputs_embeds_with_features(model, ids, feats)
            out = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), use_cache=True)
        cache = out["cache"] if "cache" in out else out.past_key_values  # transformers 5 names it "cache"
        parts.append([(layer.keys, layer.values) for layer in cache.layers])
    return [(torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts])) for i in range(len(parts[0]))]


def _first_logits(model, caches: list[tuple], slots: list[int], tails: list[list[int]], prefix_length: int):
    """The next-token logits [B, V] after each prompt: row b's own tokens `tails[b]` (right-padded;
    each row read at its last real token) on top of the cached prefix of image `slots[b]`."""
    import torch
    from transformers import DynamicCache

    width = max(len(t) for t in tails)
    device = caches[0][0].device
    ids = torch.zeros((len(tails), width), dtype=torch.long, device=device)  # padding after the real tokens: masked
    mask = torch.zeros((len(tails), prefix_length + width), dtype=torch.long, device=device)
    mask[:, :prefix_length] = 1
    for b, tail in enumerate(tails):
        ids[b, :len(tail)] = torch.tensor(tail)
        mask[b, prefix_length:prefix_length + len(tail)] = 1
    index = torch.tensor(slots, device=device)
    cache = DynamicCache()
    for layer, (keys, values) in enumerate(caches):
        cache.update(keys[index], values[index], layer)
    positions = torch.arange(prefix_length, prefix_length + width, device=device)[None].expand(len(tails), -1)
    with torch.no_grad():
        try:  # transformers 5 takes the cache as `cache`, earlier versions as `past_key_values`
            logits = model(input_ids=ids, attention_mask=mask, cache=cache, position_ids=positions,
                           use_cache=False).logits  # [B, W, V]
        except TypeError:
            logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache, position_ids=positions,
                           use_cache=False).logits
    last = torch.tensor([len(t) - 1 for t in tails], device=device)
    return logits[torch.arange(len(tails), device=device), last].float()


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
