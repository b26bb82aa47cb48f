"""The study's speed-ups give the same numbers: each is checked against its plain version,
kept here (not in the package), on reduced inputs. Answers and rates must be identical; the
yes-minus-no logit margins, which the shared image prefix computes in another order, enter
them only through their sign."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from sauce_jax.eval.conceptworld import text as T
from sauce_jax.eval.conceptworld.answers import YES_NO_TOKENS, _language, _prompt_ids, parse_yes_no
from sauce_jax.eval.conceptworld.benchmark import Evaluation, Model, make_suite
from sauce_jax.eval.metrics import mme_score

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


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


def plain_describe(model, tokenizer, projected, language="en", max_new_tokens=28, batch_size=128) -> list[str]:
    """`answers.describe` as it was before the image prefix was shared: `model.generate` on the
    whole prompt, every row decoded to the end of the longest."""
    import torch

    from sauce_jax.eval.vlm.llava_bridge import inputs_embeds_with_features

    texts = []
    for start in range(0, len(projected), batch_size):
        feats = projected[start:start + batch_size]
        ids, mask = prompt_batch(tokenizer, [T.DESCRIBE[language]] * len(feats))
        with torch.no_grad():
            embeds = inputs_embeds_with_features(model, ids, feats)
            out = model.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=mask,
                                 max_new_tokens=max_new_tokens, do_sample=False)
        texts += tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in texts]


def plain_yes_no(model, tokenizer, projected, questions, batch_size=256) -> dict:
    """`answers.yes_no` as it was before the image prefix was shared: every question's whole
    prompt (image tokens included) through the language model, row j about image j."""
    import torch

    from sauce_jax.eval.vlm.llava_bridge import inputs_embeds_with_features

    yes_ids = {lang: tokenizer.convert_tokens_to_ids(T.YES[lang]) for lang in T.LANGUAGES}
    no_id = tokenizer.convert_tokens_to_ids(T.NO["en"])
    decided = {yes_ids["en"], yes_ids["es"], no_id}
    texts, margins = [], []
    for start in range(0, len(questions), batch_size):
        chunk = list(questions[start:start + batch_size])
        ids, mask = prompt_batch(tokenizer, chunk)
        feats = projected[start:start + len(chunk)]
        with torch.no_grad():
            embeds = inputs_embeds_with_features(model, ids, feats)
            first = model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1].float()
        yes = torch.tensor([yes_ids[_language(q)] for q in chunk])
        margins.append((first.gather(1, yes[:, None])[:, 0] - first[:, no_id]).numpy())
        top = first.argmax(-1).tolist()
        chunk_texts = [tokenizer.decode([t], skip_special_tokens=True) for t in top]
        rest = [i for i, t in enumerate(top) if t not in decided]
        if rest:
            with torch.no_grad():
                out = model.generate(input_ids=ids[rest], inputs_embeds=embeds[rest], attention_mask=mask[rest],
                                     max_new_tokens=YES_NO_TOKENS, do_sample=False)
            for i, text in zip(rest, tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)):
                chunk_texts[i] = text
        texts += chunk_texts
    parsed = [parse_yes_no(t, _language(q)) for t, q in zip(texts, questions)]
    return {"yes": np.array([p == "yes" for p in parsed], bool), "parsed": parsed, "texts": [t.strip() for t in texts],
            "margin": np.concatenate(margins) if margins else np.zeros(0, np.float32)}


class PlainModel(Model):
    """`Model` as it answered before the clean tower's answers, each image's pixels and its
    clean hidden states were remembered: every call renders again, runs the whole (clean or
    unlearned) tower again and asks the language model again."""

    def pixels(self, specs):
        from sauce_jax.eval.conceptworld.render import render_many
        from sauce_jax.image_processor import preprocess

        return preprocess(list(render_many(specs)), self.encoder)

    def features(self, specs, unlearned=None):
        import jax.numpy as jnp
        import torch

        from sauce_jax.eval.vlm.llava_bridge import llava_image_features

        px = self.pixels(specs)
        parts = []
        for start in range(0, len(specs), self.batch_size):
            chunk = px[start:start + self.batch_size]
            bucket = min(self.batch_size, 1 << max(0, len(chunk) - 1).bit_length())
            padded = jnp.concatenate([chunk, jnp.zeros((bucket - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            parts.append(llava_image_features(self.model, self.encoder, padded, unlearned=unlearned)[:len(chunk)])
        return torch.cat(parts) if parts else torch.zeros(0)

    def answers(self, specs, concepts_of, language="en", unlearned=None, generative=True):
        feats = self.features(specs, unlearned)
        asked = [(i, c) for i, spec in enumerate(specs) for c in concepts_of(spec)]
        questions = [T.question(c, language) for _, c in asked]
        rows = feats[[i for i, _ in asked]] if asked else feats[:0]
        said = plain_yes_no(self.model, self.tokenizer, rows, questions, self.batch_size)
        texts = plain_describe(self.model, self.tokenizer, feats, language) if generative else []
        named = np.array([T.mentions(texts[i], c) for i, c in asked] if generative else [False] * len(asked), bool)
        return {"asked": asked, "present": np.array([specs[i].has(c) for i, c in asked], bool),
                "yes": said["yes"], "margin": said["margin"], "named": named, "texts": texts}

    def perception(self, specs, language="en", unlearned=None, exclude=(), seed=0):
        feats = self.features(specs, unlearned)
        pairs = {sub: [(i, T.utility_questions(spec, sub, language, exclude, seed)) for i, spec in enumerate(specs)]
                 for sub in T.PERCEPTION_SUBTASKS}
        pairs = {sub: [(i, p) for i, p in rows if p] for sub, rows in pairs.items()}
        flat = [(sub, i, q, truth) for sub, rows in pairs.items() for i, pair in rows for q, truth in pair]
        if not flat:
            return {}
        said = plain_yes_no(self.model, self.tokenizer, feats[[i for _, i, _, _ in flat]], [q for _, _, q, _ in flat],
                            self.batch_size)["yes"]
        right = said == np.array([t for *_, t in flat], bool)
        subs = np.array([sub for sub, *_ in flat])
        ids = np.array([i for _, i, _, _ in flat])
        return {sub: mme_score(right[subs == sub], ids[subs == sub]) for sub in T.PERCEPTION_SUBTASKS
                if (subs == sub).any()}


def _equal(a, b, path=""):
    """Nested results equal: numbers to 1e-6, everything else exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert (a is None and b is None) or abs(a - b) <= 1e-6, (path, a, b)
    else:
        assert a == b, (path, a, b)


def _rarely_active(model, sae, layer, specs, k=4) -> list[int]:
    """k features active on the fewest of `specs` but on at least one (a delta edit with them
    changes some images and leaves the others bit-for-bit alone)."""
    from sauce_jax.sae import encode

    z = np.asarray(encode(sae.params, model.clean_states(specs, layer), sae.config))  # [N, T, d_sae]
    images = (z > 0).any(axis=1).sum(axis=0)  # [d_sae]
    order = [int(i) for i in np.argsort(images) if images[i] > 0]
    return order[:k]


def test_remembered_answers_and_states_give_the_plain_results(conceptworld_sae):
    """Every concept's evaluation, clean and unlearned (reconstruct and delta at the SAE's layer,
    delta at the layer before it, whose edit runs a block), equals the plain model's, while the
    remembered pixels, states and answers ask the tower and the language model less; and some
    images are left unchanged by the delta edit, so the clean answers stand in for them."""
    from sauce_jax.intervention import unlearn
    from sauce_jax.sae_io import load_sae
    from sauce_jax.eval.conceptworld.sauce import load_model

    llava, processor, encoder, layer, _ = load_model()
    sae = load_sae(conceptworld_sae)
    concepts = ("star", "court", "red")
    suite = make_suite(concepts, seed=6, split="val", n_forget=3, n_pool_per_concept=1, n_perception=3)
    fast, plain = Model(llava, processor, encoder), PlainModel(llava, processor, encoder)
    runs = {"fast": Evaluation(fast, suite), "plain": Evaluation(plain, suite)}
    rarely = _rarely_active(fast, sae, layer, [*suite.pool, *suite.perception, *suite.forget["star"]])
    edits = [unlearn(encoder, sae, list(range(16)), layer=layer, gamma=-1.0),
             unlearn(encoder, sae, rarely, layer=layer, gamma=-1.0, mode="delta"),
             unlearn(encoder, sae, rarely, layer=layer - 1, gamma=-1.0, mode="delta")]
    unchanged = []
    original_view = fast._view

    def view(specs, unlearned):
        seen = original_view(specs, unlearned)
        if unlearned is not None:
            unchanged.append(int((~seen.changed).sum()))
        return seen
    fast._view = view
    for concept in concepts:
        for edited in (None, *edits) if concept == concepts[0] else (None,):
            _equal(runs["fast"].run(concept, edited), runs["plain"].run(concept, edited), concept)
    assert sum(unchanged) > 0, unchanged  # the clean answers stood in for unchanged images
    assert len(fast._states) <= 2 * len({*suite.pool, *suite.perception, *suite.forget["star"],
                                         *suite.forget["court"], *suite.forget["red"]})


def test_greedy_decoding_from_the_image_prefix_gives_generates_texts():
    """Descriptions and the yes/no answers decoded past their first token come from each image's
    cached prefix and a greedy loop that drops finished rows: the same texts as `model.generate`
    over the whole prompts. Noisy image features make rows finish at different steps; a
    description prompt among the questions needs decoding past the first token."""
    import torch

    from sauce_jax.eval.conceptworld import vlm
    from sauce_jax.eval.conceptworld.answers import describe, yes_no

    llava, processor = vlm.load()
    tokenizer = processor.tokenizer
    torch.manual_seed(0)
    width = llava.config.text_config.hidden_size
    projected = 3.0 * torch.randn(12, vlm.num_image_tokens(), width)
    fast, plain = describe(llava, tokenizer, projected, batch_size=8), plain_describe(llava, tokenizer, projected,
                                                                                     batch_size=8)
    assert fast == plain
    assert len({len(t.split()) for t in plain}) > 1  # rows finished at different steps
    questions = [T.question(c) for c in ("star", "court", "red", "happy", "wood", "moon")] + [T.DESCRIBE["en"]] * 6
    fast = yes_no(llava, tokenizer, projected, questions, batch_size=8)
    plain = plain_yes_no(llava, tokenizer, projected, questions, batch_size=8)
    assert fast["texts"] == plain["texts"] and fast["parsed"] == plain["parsed"]
    assert sum(len(t.split()) > 1 for t in plain["texts"]) >= 6, plain["texts"]


def test_phases_time_wall_and_cpu_in_order():
    import time

    from sauce_jax.eval.conceptworld.runs import Phases

    phases = Phases()
    with phases("sleep"):
        time.sleep(0.2)
    with phases("work"):
        sum(i * i for i in range(2_000_000))
    assert list(phases.seconds) == ["sleep", "work"]
    assert phases.seconds["sleep"]["wall_s"] >= 0.2 > phases.seconds["sleep"]["cpu_s"]
    assert phases.seconds["work"]["cpu_s"] > 0.05


def test_the_study_report_names_every_phase_without_machine_paths(tmp_path, monkeypatch):
    """`benchmarks/study.py` writes its figures under a relative --out, one table row a phase."""
    import json

    from benchmarks import study

    fake = {"what": "sauce-jax demo --quick", "phases": {"sae": {"wall_s": 2.0, "cpu_s": 3.5}},
            "total": {"wall_s": 2.5, "cpu_s": 4.0}}
    monkeypatch.setattr(study, "time_demo", lambda work, size: fake)
    monkeypatch.chdir(tmp_path)
    report = study.main(["--demo", "quick", "--out", "results"])
    written = list((tmp_path / "results").glob("study-*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text()) == report
    text = written[0].with_suffix(".md").read_text()
    assert "| sauce-jax demo --quick | sae | 2.0 | 3.5 |" in text and "| total | 2.5 | 4.0 |" in text
    assert str(tmp_path) not in text and str(tmp_path) not in written[0].read_text()


def plain_dilate(mask, radius):
    """`render._dilate` as it was: a stack of shifted copies per axis, then their maximum."""
    out = mask
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        n = out.shape[axis]
        out = np.max([np.take(padded, np.arange(k, k + n), axis=axis) for k in range(2 * radius + 1)], axis=0)
    return out


def test_rendering_without_masks_gives_the_same_pixels(monkeypatch):
    """`render` (no coverage masks, running maxima, a shared index grid) draws the pixels that
    `render_with_masks` with the plain dilation draws, and the masks stay the same."""
    from sauce_jax.eval.conceptworld import render as R
    from sauce_jax.eval.conceptworld.world import generic_stream

    specs = generic_stream(40, seed=2, stream="render-check")
    fast = [(R.render(s), R.render_with_masks(s)) for s in specs]
    monkeypatch.setattr(R, "_dilate", plain_dilate)
    plain = [R.render_with_masks(s) for s in specs]
    for (image, (again, masks)), (want, want_masks) in zip(fast, plain):
        np.testing.assert_array_equal(image, want)
        np.testing.assert_array_equal(again, want)
        np.testing.assert_array_equal(masks, want_masks)
