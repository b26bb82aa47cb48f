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
           images: Sequence[int] | None = None, prefixes: ImagePrefixes | None = None) -> dict:
    """The model's generated answers to `questions[j]` about image `images[j]` (default: image
    j) of `projected` [N, T, D_text]: greedy `YES_NO_TOKENS` tokens, parsed by `parse_yes_no`.
    Returns {"yes": [J] bool (parsed "yes"), "parsed": [J] str, "texts": [J] str, "margin": [J]
    float (first-token logit of yes minus no: the secondary, logit-based diagnostic that the
    generated answer replaces)}.

    Every prompt starts with the image ("USER: <image>..."), so the language model runs that
    prefix once per image (`ImagePrefixes`; pass `prefixes` to share it with `describe`) and
    each question only over its own tokens, attending to the cached prefix: the same logits as
    the whole prompt (rotary positions are relative), at a fraction of the work when an image
    is asked several questions."""
    import torch

    images = list(range(len(questions))) if images is None else [int(i) for i in images]
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} image indices for {len(questions)} questions")
    if not questions:
        return {"yes": np.zeros(0, bool), "parsed": [], "texts": [], "margin": np.zeros(0, np.float32)}
    prefixes = prefixes or ImagePrefixes(model, tokenizer, projected, batch_size)
    yes_ids = {lang: tokenizer.convert_tokens_to_ids(T.YES[lang]) for lang in T.LANGUAGES}
    no_id = tokenizer.convert_tokens_to_ids(T.NO["en"])
    decided = {yes_ids["en"], yes_ids["es"], no_id}
    tails = [_tail_ids(tokenizer, question, len(prefixes.ids)) for question in questions]
    texts, margins = [], []
    for start in range(0, len(questions), batch_size):
        rows = range(start, min(start + batch_size, len(questions)))
        cache = prefixes.cache([images[j] for j in rows])
        first, _ = _extend(model, cache, [tails[j] for j in rows], prefixes.length)  # [B, V]
        yes = torch.tensor([yes_ids[_language(questions[j])] for j in rows], device=first.device)
        margins.append((first.gather(1, yes[:, None])[:, 0] - first[:, no_id]).cpu().numpy())
        # Greedy decoding's first token is the argmax. A word-level "yes", "sí" or "no" decides
        # the parse whatever follows (MME reads the first four characters), so only the other
        # rows are decoded further: the same parse as generating YES_NO_TOKENS for every row.
        top = first.argmax(-1).tolist()
        chunk_texts = [tokenizer.decode([t], skip_special_tokens=True) for t in top]
        rest = [start + n for n, t in enumerate(top) if t not in decided]
        if rest:
            said = _greedy(model, tokenizer, prefixes, [images[j] for j in rest], [tails[j] for j in rest],
                           YES_NO_TOKENS)
            for j, text in zip(rest, said):
                chunk_texts[j - start] = text
        texts += chunk_texts
    parsed = [parse_yes_no(t, _language(q)) for t, q in zip(texts, questions)]
    return {"yes": np.array([p == "yes" for p in parsed], bool), "parsed": parsed,
            "texts": [t.strip() for t in texts],
            "margin": np.concatenate(margins) if margins else np.zeros(0, np.float32)}


@functools.lru_cache(maxsize=1 << 16)
def _prompt_ids(tokenizer, text: str) -> tuple[int, ...]:
    """The ids of `text` with its image token expanded, tokenized once per tokenizer and text (a
    study asks the same few hundred questions about thousands of images)."""
    return tuple(tokenizer(text.replace(T.IMAGE_TOKEN, T.IMAGE_TOKEN * vlm.num_image_tokens()))["input_ids"])


def _prefix_ids(tokenizer) -> tuple[int, ...]:
    """The ids every prompt shares: BOS, "USER:" and the image tokens."""
    return _prompt_ids(tokenizer, T.prompt("\x00").split("\x00")[0])  # the template up to the question


@functools.lru_cache(maxsize=1 << 16)
def _tail_ids(tokenizer, question: str, prefix_length: int) -> tuple[int, ...]:
    """The ids of the prompt for `question` after the shared prefix, checked: prefix and tail
    together are exactly the whole prompt's ids."""
    ids = _prompt_ids(tokenizer, T.prompt(question))
    if ids[:prefix_length] != _prefix_ids(tokenizer):
        raise ValueError(f"the prompt for {question!r} does not start with the shared image prefix")
    return ids[prefix_length:]


class ImagePrefixes:
    """The language model's keys and values of the prompt prefix every question and description
    shares (BOS, "USER:", the image tokens), per image of `projected` [N, T, D_text]; each
    image's computed on first use, then reused by every prompt about it."""

    def __init__(self, model, tokenizer, projected, batch_size: int = 256):
        self.model, self.projected, self.batch_size = model, projected, batch_size
        self.ids = list(_prefix_ids(tokenizer))
        self.length = len(self.ids)
        self._layers: list[tuple] = []  # per layer (keys, values), each [N, heads, P, head_dim]
        self._done = np.zeros(len(projected), bool)

    def cache(self, images: Sequence[int]):
        """A `DynamicCache` holding image `images[b]`'s prefix in row b."""
        import torch
        from transformers import DynamicCache

        self._compute([i for i in dict.fromkeys(images) if not self._done[i]])
        index = torch.tensor(list(images), device=self.projected.device)
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(self._layers):
            cache.update(keys[index], values[index], layer)
        return cache

    def _compute(self, missing: list[int]) -> None:
        import torch

        from ..vlm.llava_bridge import inputs_embeds_with_features

        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            feats = self.projected[chunk]
            ids = torch.tensor([self.ids] * len(chunk), device=feats.device)
            out = _forward(self.model, inputs_embeds=inputs_embeds_with_features(self.model, ids, feats),
                           attention_mask=torch.ones_like(ids), use_cache=True)
            cache = out["cache"] if "cache" in out else out.past_key_values  # transformers 5 names it "cache"
            if not self._layers:
                self._layers = [(layer.keys.new_zeros((len(self.projected), *layer.keys.shape[1:])),
                                 layer.values.new_zeros((len(self.projected), *layer.values.shape[1:])))
                                for layer in cache.layers]
            index = torch.tensor(chunk, device=feats.device)
            for (keys, values), layer in zip(self._layers, cache.layers):
                keys[index], values[index] = layer.keys, layer.values
            self._done[chunk] = True


def _forward(model, **inputs):
    """The model's forward without gradients; transformers 5 takes a cache as `cache`, earlier
    versions as `past_key_values`."""
    import torch

    with torch.no_grad():
        if "cache" not in inputs:
            return model(**inputs)
        try:
            return model(**inputs)
        except TypeError:
            inputs["past_key_values"] = inputs.pop("cache")
            return model(**inputs)


def _extend(model, cache, tails: Sequence[Sequence[int]], prefix_length: int, *, keep: bool = False):
    """Row b's own tokens `tails[b]` (right-padded, the padding masked) on top of `cache`, which
    holds row b's prefix of `prefix_length` tokens: (the next-token logits after each row's last
    real token [B, V], and the attention mask over the cache [B, P + W] when `keep`, which then
    keeps the tails' keys and values in `cache` for decoding further)."""
    import torch

    width = max(len(t) for t in tails)
    device = cache.layers[0].keys.device
    ids = torch.zeros((len(tails), width), dtype=torch.long, device=device)  # padding after the real tokens: masked
    mask = torch.zeros((len(tails), prefix_length + width), dtype=torch.long, device=device)
    mask[:, :prefix_length] = 1
    for b, tail in enumerate(tails):
        ids[b, :len(tail)] = torch.tensor(tail)
        mask[b, prefix_length:prefix_length + len(tail)] = 1
    positions = torch.arange(prefix_length, prefix_length + width, device=device)[None].expand(len(tails), -1)
    logits = _forward(model, input_ids=ids, attention_mask=mask, cache=cache, position_ids=positions,
                      use_cache=keep).logits  # [B, W, V]
    last = torch.tensor([len(t) - 1 for t in tails], device=device)
    return logits[torch.arange(len(tails), device=device), last].float(), mask if keep else None


def _greedy(model, tokenizer, prefixes: ImagePrefixes, images: Sequence[int], tails: Sequence[Sequence[int]],
            max_new_tokens: int) -> list[str]:
    """Greedy decoding of up to `max_new_tokens` tokens after each prompt (image `images[b]`'s
    cached prefix, then `tails[b]`), each row stopped at the end of sequence: the texts
    `model.generate(do_sample=False)` gives for the whole prompts. A finished row is dropped
    from the batch once half of it has finished (its further tokens would be padding)."""
    import torch
    from transformers import DynamicCache

    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
    cache = prefixes.cache(images)
    logits, mask = _extend(model, cache, tails, prefixes.length, keep=True)
    device = mask.device
    tokens: list[list[int]] = [[] for _ in images]
    rows = list(range(len(images)))  # the original row of each batch row
    position = torch.tensor([prefixes.length + len(t) for t in tails], device=device)
    for step in range(max_new_tokens):
        top = logits.argmax(-1)  # [A]
        alive = []
        for b, token in enumerate(top.tolist()):
            if tokens[rows[b]] and tokens[rows[b]][-1] in eos:
                continue
            tokens[rows[b]].append(token)
            if token not in eos:
                alive.append(b)
        if not alive or step == max_new_tokens - 1:
            break
        if 2 * len(alive) <= len(rows):  # drop the finished rows
            keep = torch.tensor(alive, device=device)
            layers = [(layer.keys[keep], layer.values[keep]) for layer in cache.layers]
            cache = DynamicCache()
            for layer, (keys, values) in enumerate(layers):
                cache.update(keys, values, layer)
            rows, top, mask, position = [rows[b] for b in alive], top[keep], mask[keep], position[keep]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        logits = _forward(model, input_ids=top[:, None], attention_mask=mask, cache=cache,
                          position_ids=position[:, None], use_cache=True).logits[:, -1].float()
        position = position + 1
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


def _language(question: str) -> str:
    return "es" if question.startswith("¿") else "en"


def says_yes(model, tokenizer, projected, questions: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """[B] bool: does the model's generated answer to `questions[i]` about image i parse as yes
    (`yes_no`)?"""
    return yes_no(model, tokenizer, projected, questions, batch_size)["yes"]


def describe(model, tokenizer, projected, language: str = "en", max_new_tokens: int = 28,
             batch_size: int = 128, images: Sequence[int] | None = None,
             prefixes: ImagePrefixes | None = None) -> list[str]:
    """Greedy descriptions of images `images` (default: all) of `projected` [N, T, D_text] (the
    generative prompt), decoded from each image's cached prefix (`ImagePrefixes`; pass
    `prefixes` to share it with `yes_no`)."""
    images = list(range(len(projected))) if images is None else [int(i) for i in images]
    prefixes = prefixes or ImagePrefixes(model, tokenizer, projected, batch_size)
    tail = _tail_ids(tokenizer, T.DESCRIBE[language], prefixes.length)
    texts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        texts += _greedy(model, tokenizer, prefixes, chunk, [tail] * len(chunk), max_new_tokens)
    return [t.strip() for t in texts]


def torch_features(model, images: np.ndarray):
    """Projected features [B, N, D_text] from the model's own PyTorch tower (the clean reference)."""
    import torch

    with torch.no_grad():
        return model.model.multi_modal_projector(vlm.tower_features(model, images).float())
