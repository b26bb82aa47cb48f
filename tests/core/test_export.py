"""`sauce-jax export` / `export_unlearned`: the exported transformers directory, loaded with
`trust_remote_code=True`, is the unlearned model: its logits and greedy generations equal our
JAX path through the bridge (LLaVA, Mllama), its vision-only hidden states equal our unlearned
encoder's (CLIP, SigLIP, DINOv2); `save_pretrained` round-trips; bad inputs fail before
anything is written; an interrupted export leaves nothing behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import sauce_jax
from tiny_models import (DINOV2_SMALL, MLLAMA_SMALL, SIGLIP_SMALL, SMALL, make_clip, make_dinov2_model, make_llava,
                         make_mllama_cg, make_siglip_vision, mllama_random_inputs, mllama_torch_inputs, random_pixels,
                         relative_error)
from tiny_saes import busiest_features, make_sae
from sauce_jax import CheckpointError, ConfigError, InputError
from sauce_jax.cli import main
from sauce_jax.eval.vlm.llava_bridge import generate_with_features, llava_image_features, logits_with_features
from sauce_jax.eval.vlm.mllama_bridge import generate_with_states, logits_with_states, mllama_cross_attention_states
from sauce_jax.export import export_unlearned
from sauce_jax.sae_io import save_sae
from sauce_jax.scoring import FeatureSet

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest
GREEDY = dict(max_new_tokens=4, do_sample=False)


def feature_set(sae, ids, layer, gamma, concept="cat") -> FeatureSet:
    return FeatureSet(concept=concept, feature_ids=tuple(int(i) for i in ids), scores=(1.0,) * len(ids),
                      layer=layer, sae_fingerprint=sae.fingerprint(), gamma=gamma)


def saved(tmp_path, sae, sets):
    """The SAE directory and FeatureSet files, as the CLI takes them."""
    save_sae(sae, tmp_path / "sae")
    files = []
    for s in sets:
        files.append(tmp_path / f"{s.concept}.json")
        s.save(files[-1])
    return tmp_path / "sae", files


def load(directory, auto=transformers.AutoModelForImageTextToText):
    return auto.from_pretrained(directory, trust_remote_code=True).eval()


# -- LLaVA ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llava_export(tmp_path_factory):
    """A tiny LLaVA checkpoint (with a processor file to carry over), its SAE and two concepts,
    exported through the CLI."""
    tmp = tmp_path_factory.mktemp("llava")
    model = make_llava(SMALL, seed=3)
    model.save_pretrained(tmp / "ckpt")
    (tmp / "ckpt" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 32}))
    encoder = sauce_jax.load_encoder(model)
    pixels = random_pixels(SMALL, seed=3)
    sae = make_sae("topk", SMALL["hidden_size"])
    busy = busiest_features(sae, encoder.hidden_state(pixels, -2))
    sets = [feature_set(sae, busy[:3], -2, -1.0, "cat"), feature_set(sae, busy[3:], -2, -1.0, "dog")]
    sae_dir, files = saved(tmp, sae, sets)
    assert main(["export", "--checkpoint", str(tmp / "ckpt"), "--sae", str(sae_dir), "--features", *map(str, files),
                 "--out", str(tmp / "out"), "--mode", "delta", "--where", "patch"]) == 0
    unlearned = sauce_jax.unlearn(encoder, sae, sets, mode="delta", where="patch")
    return tmp, model, encoder, unlearned, pixels


def llava_prompt():
    n = (SMALL["image_size"] // SMALL["patch_size"]) ** 2
    ids = torch.tensor([[1, 5] + [127] * n + [7, 9, 11], [0, 1, 6] + [127] * n + [8, 10]])
    mask = torch.ones_like(ids)
    mask[1, 0] = 0  # the second prompt is left-padded
    return {"input_ids": ids, "attention_mask": mask}


def test_llava_export_is_the_unlearned_model(llava_export):
    tmp, model, encoder, unlearned, pixels = llava_export
    exported = load(tmp / "out")
    assert isinstance(exported, transformers.LlavaForConditionalGeneration)
    assert (tmp / "out" / "preprocessor_config.json").is_file()  # the processor travels with the weights
    assert json.loads((tmp / "out" / "config.json").read_text())["sauce"]["concepts"] == ["cat", "dog"]
    prompt = llava_prompt()
    pixel_values = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    features = llava_image_features(model, encoder, pixels, unlearned=unlearned)
    ours = logits_with_features(model, prompt["input_ids"], prompt["attention_mask"], features)
    with torch.no_grad():
        logits = exported(**prompt, pixel_values=pixel_values).logits
        plain = model(**prompt, pixel_values=pixel_values).logits
    assert relative_error(ours.numpy(), logits) <= 1e-4
    assert relative_error(logits.numpy(), plain) > 1e-3  # control: the export is not the original model
    generated = exported.generate(**prompt, pixel_values=pixel_values, **GREEDY)
    assert torch.equal(generated, generate_with_features(model, prompt, features, **GREEDY))

    # save_pretrained of the loaded model round-trips: same weights, buffers, modeling file.
    exported.save_pretrained(tmp / "again")
    again = load(tmp / "again")
    assert type(again).__name__ == "SauceLlavaForConditionalGeneration"
    with torch.no_grad():
        assert torch.equal(again(**prompt, pixel_values=pixel_values).logits, logits)
    assert torch.equal(again.generate(**prompt, pixel_values=pixel_values, **GREEDY), generated)


def test_llava_with_siglip_tower(tmp_path):
    model = make_llava(dict(SIGLIP_SMALL, model_type="siglip_vision_model"), seed=2)
    model.save_pretrained(tmp_path / "ckpt")
    encoder = sauce_jax.load_encoder(model)
    pixels = random_pixels(SIGLIP_SMALL, seed=2)
    sae = make_sae("standard", SIGLIP_SMALL["hidden_size"], seed=1)
    features = busiest_features(sae, encoder.hidden_state(pixels, -2))
    exported = load(export_unlearned(tmp_path / "ckpt", sae, features, tmp_path / "out", gamma=-1.0))
    image_features = llava_image_features(model, encoder, pixels,
                                          unlearned=sauce_jax.unlearn(encoder, sae, features, gamma=-1.0))
    n = image_features.shape[1]  # "default" drops the first token: 15 of SigLIP's 16
    ids = torch.tensor([[1, 5] + [127] * n + [7, 9, 11]] * 2)
    prompt = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        logits = exported(**prompt, pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).logits
        plain = model(**prompt, pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).logits
    ours = logits_with_features(model, prompt["input_ids"], prompt["attention_mask"], image_features)
    assert relative_error(ours.numpy(), logits) <= 1e-4
    assert relative_error(logits.numpy(), plain) > 1e-3


def test_sae_stays_float32_in_low_precision_models(tmp_path):
    """A float16 checkpoint exports a float32 SAE, which stays float32 when the export is
    loaded in bfloat16; the bfloat16 model then edits as the float32 one does, to bfloat16
    precision."""
    from safetensors import safe_open

    make_llava(SMALL, seed=1).half().save_pretrained(tmp_path / "ckpt")
    sae = make_sae("topk", SMALL["hidden_size"])
    out = export_unlearned(tmp_path / "ckpt", sae, [1, 2, 3], tmp_path / "out", gamma=-1.0)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys() if k.startswith("sauce.W_")} == {"F32"}
    low = transformers.AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True, dtype=torch.bfloat16)
    assert low.sauce.W_enc.dtype == torch.float32 and low.lm_head.weight.dtype == torch.bfloat16
    hidden = torch.randn(2, 17, SMALL["hidden_size"])
    full = low.sauce(hidden)
    assert low.sauce(hidden.bfloat16()).dtype == torch.bfloat16
    assert relative_error(low.sauce(hidden.bfloat16()).float().numpy(), full) < 2e-2
    assert relative_error(full.numpy(), hidden) > 1e-2


# -- Mllama --------------------------------------------------------------------------------
def test_mllama_export_is_the_unlearned_model(tmp_path):
    model = make_mllama_cg(MLLAMA_SMALL, seed=7)
    model.save_pretrained(tmp_path / "ckpt")
    encoder = sauce_jax.load_encoder(model)
    inputs = mllama_random_inputs(MLLAMA_SMALL, seed=7)
    sae = make_sae("standard", MLLAMA_SMALL["hidden_size"], seed=2)
    features = busiest_features(sae, encoder.hidden_state(inputs, -2))
    out = sauce_jax.export_unlearned(tmp_path / "ckpt", sae, feature_set(sae, features, -2, -1.0),
                                     tmp_path / "out")
    exported = load(out)
    assert isinstance(exported, transformers.MllamaForConditionalGeneration)
    ids = torch.tensor([[95, 5, 9, 14, 3, 22], [95, 7, 7, 30, 41, 8]])  # the image token first
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "cross_attention_mask": torch.from_numpy(np.asarray(inputs["aspect_ratio_mask"])).long()[:, None, None, :]
            .expand(2, ids.shape[1], 1, -1).contiguous()}
    states = mllama_cross_attention_states(model, encoder, inputs,
                                           unlearned=sauce_jax.unlearn(encoder, sae, features, gamma=-1.0))
    with torch.no_grad():
        logits = exported(**text, **mllama_torch_inputs(inputs)).logits
        plain = model(**text, **mllama_torch_inputs(inputs)).logits
    assert relative_error(logits_with_states(model, text, states).numpy(), logits) <= 1e-4
    assert relative_error(logits.numpy(), plain) > 1e-3
    greedy = dict(GREEDY, pad_token_id=0)
    generated = exported.generate(**text, **mllama_torch_inputs(inputs), **greedy)
    assert torch.equal(generated, generate_with_states(model, text, states, **greedy))
    exported.save_pretrained(tmp_path / "again")
    assert torch.equal(load(tmp_path / "again").generate(**text, **mllama_torch_inputs(inputs), **greedy), generated)


# -- vision-only towers --------------------------------------------------------------------
# Each family with its own hook point: a block's output (CLIP), the embeddings' output
# (SigLIP's state 0) and the penultimate block, delta mode on the patch tokens (DINOv2); the
# gated modes with their threshold and targets as buffers.
@pytest.mark.parametrize("family,layer,mode,where", [("clip", 1, "reconstruct", "all"),
                                                     ("siglip", 0, "reconstruct", "all"),
                                                     ("dinov2", -2, "delta", "patch"),
                                                     ("clip", -2, "replace", "patch"),
                                                     ("siglip", 1, "gated", "all")])
def test_vision_only_export(tmp_path, family, layer, mode, where):
    fields, make = {"clip": (SMALL, make_clip), "siglip": (SIGLIP_SMALL, make_siglip_vision),
                    "dinov2": (DINOV2_SMALL, make_dinov2_model)}[family]
    model = make(fields, seed=4)
    model.save_pretrained(tmp_path / "ckpt")
    encoder = sauce_jax.load_encoder(model)
    pixels = random_pixels(fields, seed=4)
    sae = make_sae("batchtopk", fields["hidden_size"], seed=3)
    features = busiest_features(sae, encoder.hidden_state(pixels, layer))
    extra = {"threshold": 0.05} if mode in ("gated", "replace") else {}
    if mode == "replace":
        extra["targets"] = {int(i): 0.1 * n for n, i in enumerate(features)}
    out = export_unlearned(tmp_path / "ckpt", sae, features, tmp_path / "out", layer=layer, gamma=0.25, mode=mode,
                           where=where, **extra)
    exported = load(out, transformers.AutoModel)
    assert isinstance(exported, type(model))
    assert exported.config.sauce["mode"] == mode
    if mode == "replace":  # the targets travel as a buffer, in the ids' order
        np.testing.assert_allclose(exported.sauce.targets.numpy(), 0.1 * np.arange(len(features)), rtol=1e-6)
    ours = sauce_jax.unlearn(encoder, sae, features, layer=layer, gamma=0.25, mode=mode, where=where,
                             **extra)(pixels)
    with torch.no_grad():
        ref = exported(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
        base = model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    assert len(ours.hidden_states) == len(ref.hidden_states)
    assert max(relative_error(a, b) for a, b in zip(ours.hidden_states, ref.hidden_states)) <= 1e-5
    assert relative_error(ours.pooler_output, ref.pooler_output) <= 1e-5
    # Not vacuous: the hooked state moved, the states before it did not.
    assert relative_error(ref.hidden_states[layer].numpy(), base.hidden_states[layer]) > 1e-2
    for i in range(encoder.layer_index(layer)):
        assert torch.equal(ref.hidden_states[i], base.hidden_states[i])
    exported.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        again = load(tmp_path / "again", transformers.AutoModel)(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert torch.equal(again.last_hidden_state, ref.last_hidden_state)


# -- bad inputs and interruptions ----------------------------------------------------------
def test_bad_inputs_write_nothing(llava_export, tmp_path, capsys):
    tmp, model, _, _, _ = llava_export
    ckpt = tmp / "ckpt"
    sae = make_sae("topk", SMALL["hidden_size"])
    good = feature_set(sae, [1, 2], -2, -1.0)
    other = make_sae("topk", SMALL["hidden_size"], seed=9)
    text_only = tmp_path / "llama"
    transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                             vocab_size=64).save_pretrained(text_only)
    cases = [
        (dict(sae=make_sae("topk", 48), features=[1, 2]), InputError, "d_in=48 differs from the width 32"),
        (dict(sae=other, features=good), ConfigError, "belongs to SAE"),
        (dict(checkpoint=text_only, features=good), ConfigError, "'llama' checkpoint without a vision tower"),
        (dict(checkpoint=tmp_path / "nowhere", features=good), CheckpointError, "no config.json"),
        (dict(features=good, layer=3), ConfigError, "out of range"),
        (dict(features=good, mode="scale"), ConfigError, "'scale'"),
        (dict(features=good, mode="replace"), ConfigError, "needs targets"),
        (dict(features=good, out=tmp / "out"), ConfigError, "exists"),
        (dict(checkpoint=tmp / "out", features=good, out=tmp_path / "twice"), ConfigError, "already a sauce-jax export"),
    ]
    for overrides, error, message in cases:
        kwargs = {"checkpoint": ckpt, "sae": sae, "out": tmp_path / "out", **overrides}
        with pytest.raises(error, match=message):
            export_unlearned(kwargs.pop("checkpoint"), kwargs.pop("sae"), kwargs.pop("features"), kwargs.pop("out"),
                             **kwargs)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["llama"], overrides  # nothing written
    # The CLI: one line, exit status 2.
    sae_dir, files = saved(tmp_path / "cli", other, [feature_set(other, [1], -2, -1.0)])
    code = main(["export", "--checkpoint", str(text_only), "--sae", str(sae_dir), "--features", str(files[0]),
                 "--out", str(tmp_path / "cli" / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "without a vision tower" in err
    assert not (tmp_path / "cli" / "out").exists()


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_export_leaves_nothing(llava_export, tmp_path, monkeypatch, existing):
    """Interrupted after the weights are written: no half-written directory, and with
    --overwrite the previous export survives intact."""
    tmp = llava_export[0]
    sae = make_sae("topk", SMALL["hidden_size"])
    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "config.json").write_text("{}")

    def interrupt(source, target):
        assert (Path(target).parent / "model.safetensors").is_file()  # the weights are written
        raise KeyboardInterrupt

    monkeypatch.setattr("sauce_jax.export.shutil.copyfile", interrupt)  # the modeling file, after the weights
    with pytest.raises(KeyboardInterrupt):
        export_unlearned(tmp / "ckpt", sae, [1, 2], out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else [])
    if existing:
        assert [p.name for p in out.iterdir()] == ["config.json"]


# -- permissions ---------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_export_is_readable_as_the_umask_allows(tmp_path, umask):
    """The exported folder and every file in it get what the umask gives a new folder or file
    (0o755 / 0o644 under 022), not mkdtemp's 0o700 nor safetensors' 0o600: a server running as
    another user can load it."""
    model = make_clip(SMALL, seed=5)
    model.save_pretrained(tmp_path / "ckpt")
    sae = make_sae("topk", SMALL["hidden_size"])
    old = os.umask(umask)
    try:
        out = export_unlearned(tmp_path / "ckpt", sae, [1, 2], tmp_path / "out", layer=1, gamma=-1.0)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert "model.safetensors" in modes and len(modes) >= 4, modes
    assert modes[out.name] == 0o777 & ~umask
    assert all(mode == 0o666 & ~umask for name, mode in modes.items() if name != out.name), modes
