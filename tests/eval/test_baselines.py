"""The weight-update baselines (GA, GD, KL, PO): what each does to its losses, on the shipped
ConceptWorld LLaVA (which knows its forget and retain sets) and on a tiny random LLaVA through
the generic path (any checkpoint's tokenizer, LoRA)."""

import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sauce_jax.eval.baselines import METHODS, BaselineConfig, UnlearnData, Unlearner, unlearn
from sauce_jax.eval.baselines.data import encode_llava, make_set, tower_features
from sauce_jax.eval.baselines.trainer import set_losses
from sauce_jax.errors import ConfigError

STEPS, LR = 12, 3e-4


@pytest.fixture(scope="module")
def shipped():
    from sauce_jax.eval.conceptworld import vlm

    torch.set_num_threads(1)  # the CI machine's 2 cores are shared; one thread is faster there
    model, processor = vlm.load()
    return model, processor.tokenizer


@pytest.fixture(scope="module")
def star_data(shipped):
    from sauce_jax.eval.conceptworld.baseline_data import build_data

    model, tokenizer = shipped
    return build_data(model, tokenizer, "star", n_forget=6, n_retain_per_concept=2)


@pytest.fixture(scope="module")
def runs(shipped, star_data):
    """Each method run STEPS steps at the same learning rate; the losses before and after."""
    model, _ = shipped
    before = set_losses(model, star_data)
    after = {}
    for method in METHODS:
        run = Unlearner(model, star_data, BaselineConfig(method=method, lr=LR, steps=STEPS, batch_size=8))
        after[method] = set_losses(run.train_to(STEPS).model_now(), star_data)
    return before, after


def test_conceptworld_sets_follow_the_paper(shipped, star_data):
    model, tokenizer = shipped
    forget, retain, refusal = star_data.forget, star_data.retain, star_data.refusal
    assert len(forget) == 12 and len(refusal) == 12  # 6 images x (description, yes/no question)
    assert len(retain) == 2 * len(retain.features) and len(retain.features) <= 2 * 7  # 7 other objects
    texts = [tokenizer.decode(ids[at:], skip_special_tokens=True) for ids, at in zip(forget.ids, forget.answer_at)]
    assert all("star" in t for t in texts[::2]), texts[::2]  # the clean model's correct descriptions
    assert texts[1::2] == ["yes"] * 6
    prompts = [tokenizer.decode(ids[:at], skip_special_tokens=True) for ids, at in zip(retain.ids, retain.answer_at)]
    assert not any("star" in p for p in prompts)  # retain asks about the other objects
    assert {tokenizer.decode(ids[at:], skip_special_tokens=True) for ids, at in
            zip(refusal.ids, refusal.answer_at)} == {"there is no image ."}
    assert forget.features.shape[1:] == (36, model.config.vision_config.hidden_size)


@pytest.mark.parametrize("method", METHODS)
def test_every_baseline_makes_the_forget_answers_less_likely(runs, method):
    # The forget answers' mean likelihood falls by more than 10% (NLL up by > ln(1/0.9)).
    # Measured on the shipped model, NLL 0.008 before: GA, GD and KL rise far more, PO (which
    # aims at the refusal and only pushes the forget answers aside) to 0.14.
    before, after = runs
    assert after[method]["forget"] > before["forget"] + np.log(1 / 0.9), (method, before, after[method])


def test_gd_and_kl_keep_the_retain_loss_below_ga(runs):
    before, after = runs
    assert after["GA"]["retain"] > before["retain"] + 0.2  # plain ascent drags the retain set along
    for method in ("GD", "KL"):
        assert after[method]["retain"] < after["GA"]["retain"], (method, after)


def test_po_raises_the_refusal_likelihood_on_forget(runs):
    before, after = runs
    assert after["PO"]["refusal"] < 0.5 * before["refusal"], (before, after["PO"])
    assert after["PO"]["refusal"] < min(after[m]["refusal"] for m in ("GA", "GD", "KL"))


def test_runs_are_seeded_continue_exactly_and_leave_the_input_alone(shipped, star_data):
    model, _ = shipped
    original = {k: v.clone() for k, v in model.state_dict().items()}
    config = BaselineConfig(method="GD", lr=LR, steps=6, batch_size=4, seed=3)
    staged = Unlearner(model, star_data, config).train_to(2).train_to(6).model_now()
    direct = unlearn(model, star_data, config)
    for (name, a), b in zip(staged.state_dict().items(), direct.state_dict().values()):
        assert torch.equal(a, b), name
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name]), name
    tower = [n for n in original if "vision_tower" in n]
    assert all(torch.equal(direct.state_dict()[n], original[n]) for n in tower)  # the tower is frozen
    assert not torch.equal(direct.state_dict()["model.multi_modal_projector.linear_1.weight"],
                           original["model.multi_modal_projector.linear_1.weight"])
    with pytest.raises(ConfigError, match="step"):
        Unlearner(model, star_data, config).train_to(3).train_to(2)


def test_an_edited_language_model_is_scored_behind_the_clean_jax_tower(shipped):
    # A copy of the clean model, run as the "edited" PyTorch side, scores exactly as the clean one;
    # GA's model scores through the same path and differs.
    from sauce_jax.eval.conceptworld import vlm
    from sauce_jax.eval.conceptworld.benchmark import Evaluation, Model, make_suite
    from sauce_jax.loading import load_encoder

    model, tokenizer = shipped
    _, processor = vlm.load()
    clean = Model(model, processor, load_encoder(model))
    suite = make_suite(["red"], seed=5, split="val", n_forget=4, n_pool_per_concept=1, n_perception=4)
    evaluation = Evaluation(clean, suite)
    same = evaluation.run("red", model=clean.with_language_model(copy.deepcopy(model)))
    assert same["UA_g"]["value"] == 0.0 and same["IRA_g"]["value"] == 1.0 and same["CRA_g"]["value"] == 1.0
    assert same["utility"] == evaluation.run("red")["utility"]
    from sauce_jax.eval.conceptworld.baseline_data import build_data

    data = build_data(model, tokenizer, "red", n_forget=4, n_retain_per_concept=1)
    ga = unlearn(model, data, BaselineConfig(method="GA", lr=1e-3, steps=10, batch_size=8))
    edited = evaluation.run("red", model=clean.with_language_model(ga))
    assert edited["examples"] != same["examples"]


# ------------------------------------------------------------------ any LLaVA, LoRA


def _tiny_llava(tokenizer):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2)
    return LlavaForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def tiny():
    from sauce_jax.eval.conceptworld import vlm

    tokenizer = vlm.make_tokenizer()
    model = _tiny_llava(tokenizer)
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32))
    features = tower_features(model, pixels)  # [6, 16, 32]: CLS dropped
    rows = [(i, *encode_llava(tokenizer, "is there a red star in this image ?", answer, features.shape[1]))
            for i, answer in enumerate(["yes", "no", "a red star .", "yes", "a blue moon .", "no"])]
    data = UnlearnData(forget=make_set(features, rows[:3]), retain=make_set(features, rows[3:]),
                       refusal=make_set(features, [(i, *encode_llava(tokenizer, "describe .", "no", features.shape[1]))
                                                   for i in range(3)]),
                       pad_id=tokenizer.convert_tokens_to_ids("<pad>"))
    return model, tokenizer, data


def test_generic_encoding_and_tower_features(tiny):
    model, tokenizer, data = tiny
    assert data.forget.features.shape == (6, 16, 32)
    ids, at = data.forget.ids[0], data.forget.answer_at[0]
    assert ids.count(model.config.image_token_id) == 16
    assert tokenizer.decode(ids[at:]) == "yes </s>"


def test_llava_set_reads_images_through_the_checkpoints_processor(tiny):
    from transformers import CLIPImageProcessor

    from sauce_jax.eval.baselines.data import llava_set

    model, tokenizer, _ = tiny
    processor = type("Processor", (), {})()  # what a LlavaProcessor offers: its image processor and tokenizer
    processor.image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.tokenizer, processor.image_token = tokenizer, "<image>"
    images = np.random.default_rng(1).integers(0, 255, (3, 40, 48, 3), dtype=np.uint8)
    data = llava_set(model, processor, images, [(0, "describe .", "a red star ."), (2, "describe .", "no")])
    assert data.features.shape == (3, 16, 32) and data.image == [0, 2]
    assert tokenizer.decode(data.ids[0][data.answer_at[0]:]) == "a red star . </s>"


@pytest.mark.parametrize("lora", [False, True])
def test_ga_on_a_tiny_llava_full_and_lora(tiny, lora):
    if lora:
        pytest.importorskip("peft", reason="LoRA needs the lora extra: pip install 'sauce-jax[lora]'")
    model, _, data = tiny
    config = BaselineConfig(method="GA", lr=1e-2, steps=5, batch_size=3, lora=lora, lora_rank=4)
    edited = unlearn(model, data, config)
    assert type(edited) is type(model)  # adapters merged: a plain transformers model comes back
    assert set(edited.state_dict()) == set(model.state_dict())
    assert set_losses(edited, data)["forget"] > set_losses(model, data)["forget"] + 0.1
    changed = {n for n, v in edited.state_dict().items() if not torch.equal(v, model.state_dict()[n])}
    assert changed and not any("vision_tower" in n for n in changed)
    if lora:  # only the language model's linear layers (and the projector) move
        assert all("language_model" in n or "multi_modal_projector" in n for n in changed), changed
        assert not any("embed_tokens" in n for n in changed)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize("field, value", [
    ("method", "NPO"), ("lr", 0.0), ("lr", -1e-3), ("steps", 0), ("steps", 2.5), ("batch_size", 0),
    ("retain_weight", -1.0), ("kl_weight", -0.1), ("max_grad_norm", 0.0), ("lora_rank", 0),
    ("lora_dropout", 1.0), ("refusal", "  "), ("seed", 1.5), ("weight_decay", -0.01),
])
def test_bad_config_values_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        BaselineConfig(**{field: value})


def test_sets_a_method_needs_and_words_a_vocabulary_lacks(shipped, star_data):
    from sauce_jax.eval.conceptworld.baseline_data import build_data

    model, tokenizer = shipped
    with pytest.raises(ConfigError, match="retain"):
        Unlearner(model, dataclasses.replace(star_data, retain=None), BaselineConfig(method="GD"))
    with pytest.raises(ConfigError, match="refusal"):
        Unlearner(model, dataclasses.replace(star_data, refusal=None), BaselineConfig(method="PO"))
    with pytest.raises(ConfigError, match="vocabulary"):
        build_data(model, tokenizer, "star", n_forget=2, n_retain_per_concept=1, refusal="I don't know.")
    with pytest.raises(ConfigError, match="unicorn"):
        build_data(model, tokenizer, "unicorn")
