"""Asking the ConceptWorld VLM: yes/no answers and descriptions for images given as features.

Everything here takes the images as projected features [B, N, D_text] (from the PyTorch tower
for the clean reference, or from `sauce_jax.eval.vlm.llava_bridge.llava_image_features` with a
JAX encoder, clean or unlearned), so the same prompts and decoding run on every variant of the
model; the features enter the prompt through `llava_bridge.inputs_embeds_with_features`.
"""

from __future__ import annotations

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


def says_yes(model, tokenizer, projected, questions: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """[B] bool: does the model answer yes (its 'yes' logit above its 'no' logit, in the question's
    language) to `questions[i]` about image i?"""
    import torch

    from ..vlm.llava_bridge import inputs_embeds_with_features

    yes_ids = {lang: tokenizer.convert_tokens_to_ids(T.YES[lang]) for lang in T.LANGUAGES}
    no_id = tokenizer.convert_tokens_to_ids(T.NO["en"])
    out = []
    for start in range(0, len(questions), batch_size):
        chunk = list(questions[start:start + batch_size])
        ids, mask = (t.to(projected.device) for t in prompt_batch(tokenizer, chunk))
        with torch.no_grad():
            embeds = inputs_embeds_with_features(model, ids, projected[start:start + len(chunk)])
            logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]  # [B, V]
        yes = torch.tensor([yes_ids["es" if q.startswith("¿") else "en"] for q in chunk], device=logits.device)
        out.append((logits.gather(1, yes[:, None])[:, 0] > logits[:, no_id]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, bool)


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
