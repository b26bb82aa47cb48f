"""The shipped ConceptWorld LLaVA: loads in transformers and sauce-jax alike, knows its world on
images nobody trained or tuned on, and SAUCE unlearns through it (a reduced demo)."""

import json

import numpy as np
import pytest
import torch

import sauce_jax
from sauce_jax.eval.conceptworld import vlm
from sauce_jax.eval.conceptworld.evaluate import clean_accuracy
from sauce_jax.eval.conceptworld.render import render_many
from sauce_jax.eval.conceptworld.world import generic_stream
from sauce_jax.errors import CheckpointError

FRESH_SEED = 20261128  # never used by training, validation or the demo


@pytest.fixture(scope="module")
def shipped():
    model, processor = vlm.load()
    return model, processor


def test_shipped_checkpoint_is_small_float16_and_a_llava(shipped):
    model, _ = shipped
    weights = vlm.SHIPPED / "model.safetensors"
    assert weights.stat().st_size < 25e6
    header = json.loads(weights.read_bytes()[8: 8 + int.from_bytes(weights.read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    assert type(model).__name__ == "LlavaForConditionalGeneration"


def test_shipped_tower_equals_in_transformers_and_sauce_jax(shipped):
    model, processor = shipped
    images = list(render_many(generic_stream(4, seed=FRESH_SEED)))
    encoder = sauce_jax.load_encoder(vlm.SHIPPED)
    ours = encoder.hidden_states(sauce_jax.preprocess(images, encoder))
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        theirs = model.model.vision_tower(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        a, b = np.asarray(a), b.numpy()
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), f"hidden state {i}"


def test_shipped_model_answers_through_the_processor_like_the_bridge(shipped):
    # The native path (processor + generate with pixel_values) and ours (JAX tower through the
    # bridge) give the same description.
    from sauce_jax.eval.conceptworld import text as T
    from sauce_jax.eval.conceptworld.benchmark import Model

    model, processor = shipped
    specs = generic_stream(3, seed=FRESH_SEED + 1)
    images = list(render_many(specs))
    inputs = processor(images=images, text=[T.prompt(T.DESCRIBE["en"])] * 3, return_tensors="pt", padding=True)
    with torch.no_grad():
        native = model.generate(**inputs, max_new_tokens=28, do_sample=False)
    native = [t.strip() for t in processor.tokenizer.batch_decode(native[:, inputs["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)]
    ours = Model(model, processor, sauce_jax.load_encoder(model)).answers(specs, lambda s: [], "en")["texts"]
    assert native == ours


def test_shipped_model_meets_the_clean_accuracy_bar_on_unseen_images(shipped):
    # On a seed nobody trained or tuned on, in both languages: yes/no questions about every
    # concept are answered right >= 95% of the time in every domain (balanced over images with
    # and without the concept), descriptions name >= 90% of the concepts present and almost
    # never one that is absent, and the perception questions (MME-style) are answered.
    model, processor = shipped
    result = clean_accuracy(model, processor.tokenizer, generic_stream(100, seed=FRESH_SEED))
    for language in ("en", "es"):
        for domain, accuracy in result[language]["yes_no_balanced_accuracy"].items():
            assert accuracy >= 0.95, f"{language} {domain} yes/no balanced accuracy {accuracy}"
        for domain, recall in result[language]["description_recall"].items():
            assert recall >= 0.90, f"{language} {domain} description recall {recall}"
        assert result[language]["description_false_mentions"] <= 0.02
        assert result[language]["utility"] >= 95


def test_missing_model_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json missing"):
        vlm.load(tmp_path)
