"""`sauce-jax unlearn --prompt` with an Mllama checkpoint: the answers are those of the
exported unlearned model (`sauce-jax export`) run natively by transformers, processor and all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import sauce_jax
from sauce_jax import cli
from sauce_jax.eval.vlm.mllama_answerer import MllamaAnswerer
from tiny_models import MLLAMA_SMALL, make_mllama_cg, make_mllama_processor, relative_error
from tiny_saes import busiest_features, make_sae

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def test_unlearn_answers_with_an_mllama_checkpoint(tmp_path):
    model = make_mllama_cg(MLLAMA_SMALL, seed=7)
    processor = make_mllama_processor(["what", "is", "this"] + [f"w{i}" for i in range(80)])
    model.save_pretrained(tmp_path / "mllama")
    processor.save_pretrained(tmp_path / "mllama")
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(20, 50), (60, 15), (30, 30)]):  # several aspect ratios: 1 to 4 tiles
        Image.fromarray(rng.integers(0, 256, shape + (3,), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    encoder = sauce_jax.load_encoder(model)
    sae = make_sae("standard", MLLAMA_SMALL["hidden_size"], seed=2)
    inputs = sauce_jax.preprocess([Image.open(tmp_path / "imgs" / "0.png")], encoder)
    ids = busiest_features(sae, encoder.hidden_state(inputs, -2))
    sauce_jax.save_sae(sae, tmp_path / "sae")
    sauce_jax.FeatureSet("cat", tuple(int(i) for i in ids), (1.0,) * len(ids), layer=-2,
                         sae_fingerprint=sae.fingerprint(), gamma=-1.0).save(tmp_path / "cat.json")
    common = ["--sae", str(tmp_path / "sae"), "--features", str(tmp_path / "cat.json")]
    assert cli.main(["unlearn", "--encoder", str(tmp_path / "mllama"), *common, "--images", str(tmp_path / "imgs"),
                     "--prompt", "what is this", "--max-new-tokens", "4", "--batch-size", "2",
                     "--out", str(tmp_path / "a.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["prompt"] == "what is this" for r in rows)

    assert cli.main(["export", "--checkpoint", str(tmp_path / "mllama"), *common, "--out", str(tmp_path / "out")]) == 0
    exported = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "out", trust_remote_code=True)
    native_processor = transformers.AutoProcessor.from_pretrained(tmp_path / "out")  # travelled with the export
    native_processor.tokenizer.padding_side = "left"
    images = [[Image.open(r["file"]).convert("RGB")] for r in rows]
    batch = native_processor(images=images, text=["<|image|>what is this"] * 3, return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = exported.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
        edited, plain = (m(**batch).logits for m in (exported, model))
    expected = native_processor.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [r["answer"] for r in rows] == expected
    assert any(answer.strip() for answer in expected)
    # The answerer tokenizes and masks exactly as the processor: ids, padding, which tile each token sees.
    answerer = MllamaAnswerer(tmp_path / "mllama")
    tiles = sauce_jax.preprocess([image for [image] in images], answerer.encoder)["aspect_ratio_mask"]
    assert len(set(map(int, tiles.sum(axis=1)))) > 1  # the images have different tile counts
    ours = answerer.text_inputs(["what is this"] * 3, tiles)
    for key in ("input_ids", "attention_mask", "cross_attention_mask"):
        assert torch.equal(ours[key], batch[key]), key
    assert relative_error(edited.numpy(), plain) > 1e-3  # the edit reaches what the model answers from
