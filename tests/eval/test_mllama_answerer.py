"""`MllamaAnswerer`: an Mllama checkpoint's greedy answers with its tower in JAX equal the native
model's (token ids, pixels and cross-attention mask from the checkpoint's own
MllamaProcessor), and an identity edit changes no answer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tiny_models import MLLAMA_SMALL, make_mllama_cg

torch = pytest.importorskip("torch")


def _tiny_checkpoint(directory):
    """make_mllama_cg's model with a word-level tokenizer: <|image|> at its image token id 95, and
    a BOS token before every prompt (which must not see the image)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import MllamaImageProcessorPil, PreTrainedTokenizerFast

    model = make_mllama_cg(MLLAMA_SMALL, seed=5)
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(91)]
    vocab = {w: i for i, w in enumerate(words)}
    vocab["<|image|>"] = 95
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>", extra_special_tokens=["<|image|>"])
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=4).save_pretrained(directory)
    return model, tokenizer


def test_answers_match_the_native_model(tmp_path, one_torch_thread):
    from transformers import AutoProcessor

    import sauce_jax
    from sauce_jax.eval.vlm.mllama_answerer import MllamaAnswerer
    from sauce_jax.sae import SAE, SAEConfig, init_params

    import jax

    model, tokenizer = _tiny_checkpoint(tmp_path / "mllama")
    answerer = MllamaAnswerer(tmp_path / "mllama")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape + (3,), dtype=np.uint8) for shape in ((20, 50), (33, 33))]
    prompt = "w5 w7 w9"
    answers = answerer.ask(images, [[prompt]] * 2, max_new_tokens=5)

    native = AutoProcessor.from_pretrained(tmp_path / "mllama")  # the checkpoint's own MllamaProcessor
    for image, answer in zip(images, answers):
        reference = native(images=[[Image.fromarray(image)]], text=["<|image|>" + prompt], return_tensors="pt")
        ids = reference["input_ids"]
        assert 1 in ids[0].tolist() and 95 in ids[0].tolist()  # begin-of-text and the image token
        ours = answerer.text_inputs([prompt], reference["aspect_ratio_mask"][0].numpy())
        assert torch.equal(ours["input_ids"], ids)
        assert torch.equal(ours["cross_attention_mask"], reference["cross_attention_mask"].long())
        with torch.no_grad():
            out = model.generate(**reference, max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert answer[0] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert all(len(a[0].split()) == 5 for a in answers), answers  # five words each: nothing trivially empty

    config = SAEConfig(d_in=MLLAMA_SMALL["hidden_size"], d_sae=16)
    sae = SAE(init_params(jax.random.key(0), config), config)
    identity = sauce_jax.unlearn(answerer.encoder, sae, [0, 1, 2], layer=2, gamma=1.0, mode="delta")
    assert answerer.ask(images, [[prompt]] * 2, max_new_tokens=5, unlearned=identity) == answers


def test_inspect_shows_mllama_answers(tmp_path, one_torch_thread):
    """`build_site` on an Mllama checkpoint's path: its before/after view holds the answers."""
    import jax

    from sauce_jax.eval.inspect import InspectConfig, build_site
    from sauce_jax.sae import SAE, SAEConfig, init_params
    from sauce_jax.scoring import top_features

    _tiny_checkpoint(tmp_path / "mllama")
    config = SAEConfig(d_in=MLLAMA_SMALL["hidden_size"], d_sae=16)
    sae = SAE(init_params(jax.random.key(0), config), config)
    fs = top_features(np.arange(16.0), 3, concept="thing", layer=2, sae_fingerprint=sae.fingerprint(), token="all")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (24, 40, 3), dtype=np.uint8) for _ in range(2)]
    out = build_site(tmp_path / "site", sae=sae, encoder=tmp_path / "mllama", feature_sets=[fs], images=images,
                     config=InspectConfig(n_top=1, n_before_after=1, max_new_tokens=3, prompt="w1 w2"),
                     progress=False)
    text = (out / "concept-thing.html").read_text()
    assert "answer clean" in text and "asked &#x27;w1 w2&#x27;" in text
