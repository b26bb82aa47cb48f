"""The baselines' losses on answer tokens: NLL, KL to the frozen original, and each method's objective."""

from __future__ import annotations

from typing import Any

from sauce_jax.errors import ConfigError


def _projector(model):
    # transformers >= 4.52 keep the projector on the inner LlavaModel, older versions on the top model.
    for owner in (getattr(model, "model", None), model):
        projector = getattr(owner, "multi_modal_projector", None)
        if projector is not None:
            return projector
    raise ConfigError(f"{type(model).__name__} has no multi_modal_projector: not a LLaVA model")


def answer_logits(model, batch) -> tuple[Any, Any]:
    """Next-token logits [B, S-1, V] and their targets [B, S-1] (-100 outside the answers) for a
    batch from `UnlearnSet.batch`: the prompt embedded with the projected cached features in the
    image-token positions (gradients reach the projector and the language model, not the tower)."""
    ids, labels, mask, features = batch
    device = next(model.parameters()).device
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    embeds = model.get_input_embeddings()(ids)  # [B, S, D]
    projected = _projector(model)(features.to(device=device, dtype=embeds.dtype))  # [B, T, D]
    token = getattr(model.config, "image_token_id", None)
    token = model.config.image_token_index if token is None else token
    where = (ids == token)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(where, projected.to(embeds.dtype))
    logits = model(inputs_embeds=embeds, attention_mask=mask).logits
    return logits[:, :-1].float(), labels[:, 1:]


def token_nll(logits, targets):
    """Mean NLL over the answer tokens (targets != -100)."""
    import torch

    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100)


def token_kl(logits, reference_logits, targets):
    """Mean KL(reference || current) of the next-token distributions over the answer positions."""
    import torch

    keep = targets != -100
    log_p = torch.log_softmax(reference_logits[keep], dim=-1)
    log_q = torch.log_softmax(logits[keep], dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def nll(model, batch):
    return token_nll(*answer_logits(model, batch))


def objective(method: str, model, reference, batches: dict, config) -> tuple[Any, dict[str, float]]:
    """The loss one step minimises, and its parts (floats) for logging.

    GA: -NLL(forget). GD: -NLL(forget) + w_r NLL(retain). KL: -NLL(forget) + w_kl KL(original ||
    current) on retain. PO: NLL(refusal answers to the forget prompts) + w_r NLL(retain).
    `reference` is the frozen original model (read by KL only)."""
    import torch

    parts = {}
    if method == "PO":
        loss = nll(model, batches["refusal"])
        parts["refusal_nll"] = loss.item()
    else:
        forget = nll(model, batches["forget"])
        parts["forget_nll"] = forget.item()
        loss = -forget
    if method in ("GD", "PO"):
        retain = nll(model, batches["retain"])
        parts["retain_nll"] = retain.item()
        loss = loss + config.retain_weight * retain
    elif method == "KL":
        logits, targets = answer_logits(model, batches["retain"])
        with torch.no_grad():
            reference_logits, _ = answer_logits(reference, batches["retain"])
        kl = token_kl(logits, reference_logits, targets)
        parts["retain_kl"] = kl.item()
        loss = loss + config.kl_weight * kl
    parts["loss"] = loss.item()
    return loss, parts
