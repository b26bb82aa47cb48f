"""Our Mllama vision tower against transformers' `MllamaVisionModel`: every local and global
hidden state and the final output, loaded from disk through `sauce_jax.load_encoder`, in
both checkpoint layouts; the input checks; and the preprocessing against
`MllamaImageProcessor` on real photos."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

import sauce_jax
import transformers
from tiny_models import MLLAMA_CONFIGS, MLLAMA_SMALL as SMALL, make_mllama, make_mllama_cg, relative_error
from parity import BF16_TOL, F32_TOL, assert_bfloat16, assert_outputs_close, edit_config, save_and_load
from sauce_jax.errors import CheckpointError, ConfigError, InputError
from sauce_jax.mllama_encoder import MllamaEncoder
from sauce_jax.mllama_processor import MllamaPreprocessConfig, mllama_inputs, supported_aspect_ratios

def all_inputs(fields: dict, seed: int = 0) -> np.ndarray:
    """One image per aspect ratio (1 to max_num_tiles tiles), plus a padding row (id 0)."""
    ratios = fields.get("supported_aspect_ratios") or supported_aspect_ratios(fields["max_num_tiles"])
    n, s = fields["max_num_tiles"], fields["image_size"]
    ids = np.arange(len(ratios) + 1)[::-1]  # the padding row first and last-but-all ids too
    mask = np.zeros((len(ids), n), np.int64)
    for row, k in enumerate(ids):
        mask[row, : (ratios[k - 1][0] * ratios[k - 1][1]) if k else 1] = 1
    pixels = np.random.default_rng(seed).standard_normal((len(ids), n, s, s, 3)).astype(np.float32)
    pixels *= mask[:, :, None, None, None]  # padded tiles are zeros, as the processor makes them
    return mllama_inputs(pixels, ids, mask)


def reference(model, inputs):
    """transformers' forward on our structured batch, with every local and global hidden state
    captured by forward hooks (MllamaVisionModel does not return them)."""
    states = []
    pre = model.transformer.layers[0].register_forward_pre_hook(
        lambda mod, args, kwargs: states.append(kwargs["hidden_states"].clone()), with_kwargs=True)
    posts = [layer.register_forward_hook(lambda mod, args, kwargs, out: states.append(out.clone()), with_kwargs=True)
             for layer in list(model.transformer.layers) + list(model.global_transformer.layers)]
    try:
        with torch.no_grad():
            out = model(pixel_values=torch.from_numpy(inputs["pixel_values"]).permute(0, 1, 4, 2, 3)[:, None],
                        aspect_ratio_ids=torch.from_numpy(inputs["aspect_ratio_ids"]).long()[:, None],
                        aspect_ratio_mask=torch.from_numpy(inputs["aspect_ratio_mask"]).long()[:, None])
    finally:
        for h in [pre] + posts:
            h.remove()
    return out.last_hidden_state[:, 0], states


def check_outputs(encoder, model, inputs, tol):
    ours = encoder(inputs)
    last, states = reference(model, inputs)
    assert len(ours.hidden_states) == encoder.config.num_layers + 1
    assert ours.pooler_output is None and ours.image_embeds is None
    assert_outputs_close(ours, states, tol, pairs=[(ours.last_hidden_state, last)])
    return ours


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(MLLAMA_CONFIGS))
def test_mllama_vision_model_from_disk_float32(tmp_path, name, seed):
    fields = MLLAMA_CONFIGS[name]
    model = make_mllama(fields, seed)
    encoder = save_and_load(model, tmp_path)
    assert isinstance(encoder, MllamaEncoder)
    c = encoder.config
    assert (c.model_type, c.checkpoint_type) == ("mllama_vision_model", "mllama_vision_model")
    assert c.num_layers == fields["num_hidden_layers"] + fields["num_global_layers"]
    tokens = (fields["image_size"] // fields["patch_size"]) ** 2 + 1
    assert c.num_tokens == fields["max_num_tiles"] * (-(-tokens // 8) * 8)  # each tile padded to 8k tokens
    ours = check_outputs(encoder, model, all_inputs(fields, seed), F32_TOL)
    k = len(fields["intermediate_layers_indices"])
    assert ours.last_hidden_state.shape[-2:] == (tokens, fields["hidden_size"] * (1 + k))


def test_mllama_bfloat16(tmp_path):
    model = make_mllama(SMALL, 3)
    encoder = save_and_load(model, tmp_path, dtype="bfloat16")
    ours = check_outputs(encoder, model, all_inputs(SMALL, 3)[::3], BF16_TOL)  # against the float32 reference
    assert_bfloat16(ours.hidden_states)


# transformers 5 nests the tower as `model.vision_model.` in memory but saves the 4.x layout
# (`vision_model.`, `language_model.model.`, `language_model.lm_head.`, `multi_modal_projector.`);
# checkpoints written with the nested names exist too. Both, whole and sharded.
_NESTED = (("vision_model.", "model.vision_model."), ("language_model.model.", "model.language_model."),
           ("multi_modal_projector.", "model.multi_modal_projector."), ("language_model.lm_head.", "lm_head."))


def _layout_nested(name):
    for old, new in _NESTED:
        if name.startswith(old):
            return new + name.removeprefix(old)
    raise AssertionError(f"unexpected key {name!r} in a saved MllamaForConditionalGeneration")


@pytest.mark.parametrize("layout", ["saved", "nested", "saved-sharded", "nested-sharded"])
def test_mllama_for_conditional_generation(tmp_path, layout):
    fields = MLLAMA_CONFIGS["w48-h3-p8-i24-l4g1-t2"]
    model = make_mllama_cg(fields, seed=2)
    model.save_pretrained(tmp_path, max_shard_size="40KB" if "sharded" in layout else "5GB")
    files = sorted(tmp_path.glob("*.safetensors"))
    assert (len(files) > 1) == ("sharded" in layout)
    assert any(k.startswith("vision_model.") for f in files for k in load_file(f))
    if layout.startswith("nested"):
        for f in files:
            save_file({_layout_nested(k): v for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
        index = tmp_path / "model.safetensors.index.json"
        if index.is_file():
            data = json.loads(index.read_text())
            data["weight_map"] = {_layout_nested(k): v for k, v in data["weight_map"].items()}
            index.write_text(json.dumps(data))
        # transformers itself reads the nested layout into the same model.
        reloaded = transformers.MllamaForConditionalGeneration.from_pretrained(tmp_path)
        ref_state = model.state_dict()
        assert all(torch.equal(v, ref_state[k]) for k, v in reloaded.state_dict().items())
    encoder = sauce_jax.load_encoder(tmp_path)
    assert (encoder.config.model_type, encoder.config.checkpoint_type) == ("mllama_vision_model", "mllama")
    check_outputs(encoder, model.model.vision_model, all_inputs(fields), F32_TOL)


def test_in_memory_mllama_models():
    fields = MLLAMA_CONFIGS["w40-h5-p7-i30-l2g2-t1"]
    model = make_mllama_cg(fields, seed=4)  # its state_dict has the nested names
    check_outputs(sauce_jax.load_encoder(model), model.model.vision_model, all_inputs(fields), F32_TOL)
    tower = make_mllama(fields, seed=4)
    check_outputs(sauce_jax.load_encoder(tower), tower, all_inputs(fields), F32_TOL)


def test_language_model_tensors_are_ignored_explicitly(tmp_path):
    from sauce_jax.ports import mllama
    from sauce_jax.ports.weights import read_checkpoint_tensors

    model = make_mllama_cg(MLLAMA_CONFIGS["w48-h3-p8-i24-l4g1-t2"], seed=0)
    model.save_pretrained(tmp_path)
    tensors, _ = read_checkpoint_tensors(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    _, prefix, ignored = mllama.load("mllama", hf, tensors, dtype=np.float32, origin="t")
    assert prefix == "vision_model."
    assert set(ignored) == {k for k in tensors if not k.startswith(prefix)}
    assert {k.split(".")[0] for k in ignored} == {"language_model", "multi_modal_projector"}
    assert "language_model.lm_head.weight" in ignored
    # An unknown tensor beside the tower is named, not silently dropped.
    tensors = dict(tensors, **{"vision_model.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'vision_model\.extra\.weight'"):
        mllama.load("mllama", hf, tensors, dtype=np.float32, origin="t")


# -- hooks, indices ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = make_mllama(SMALL, 5)
    path = tmp_path_factory.mktemp("mllama")
    model.save_pretrained(path)
    return path, model, sauce_jax.load_encoder(path)


def test_hook_keys(small):
    _, _, encoder = small
    L, G = SMALL["num_hidden_layers"], SMALL["num_global_layers"]
    assert [encoder.layer_index(("local", i)) for i in (0, L, -1)] == [0, L, L]
    assert [encoder.layer_index(("global", j)) for j in (1, G, -1, -G)] == [L + 1, L + G, L + G, L + 1]
    assert encoder.layer_index(-2) == L + G - 1  # the default SAE layer: the penultimate global block's output
    for bad, match in [(("global", 0), "global transformer's input"), (("global", G + 1), "out of range"),
                       (("local", L + 1), "out of range"), (("middle", 1), "not \\('local', i\\)"),
                       (L + G + 1, "out of range")]:
        with pytest.raises(ConfigError, match=match):
            encoder.layer_index(bad)


def test_hooks_on_local_and_global_layers(small):
    _, model, encoder = small
    inputs = all_inputs(SMALL, 1)
    plain = encoder(inputs)
    L = SMALL["num_hidden_layers"]
    identity = lambda h, a: h
    hooked = encoder(inputs, hooks={("local", 0): identity, ("local", L): identity, ("global", -1): identity})
    for a, b in zip(plain.hidden_states + (plain.last_hidden_state,), hooked.hidden_states + (hooked.last_hidden_state,)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A local hook feeds the next block.
    hs = encoder.hidden_states(inputs, hooks={("local", 1): (lambda h, a: h * a, 2.0)})
    _, ref = reference(model, inputs)
    assert relative_error(hs[1], 2 * ref[1]) <= F32_TOL
    from transformers.models.mllama.modeling_mllama import _prepare_aspect_ratio_attention_mask

    mask = _prepare_aspect_ratio_attention_mask(torch.from_numpy(inputs["aspect_ratio_mask"]).long(),
                                                num_patches=model.num_patches, target_length=24, dtype=torch.float32)
    with torch.no_grad():
        expected = model.transformer.layers[1](2 * ref[1], attention_mask=mask)
    assert relative_error(hs[2], expected) <= F32_TOL
    # (that a global hook leaves the intermediate channels alone is checked in test_mllama_e2e)
    # Early stop: a hook past the requested index is never traced.
    traced = []
    encoder.hidden_state(inputs, ("local", 1), hooks={("global", 1): lambda h, a: traced.append(1) or h})
    assert not traced


# -- bad inputs and configs ----------------------------------------------------------------
def test_bad_inputs(small):
    _, _, encoder = small
    good = all_inputs(SMALL)
    px, ids, mask = (good[f] for f in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"))
    n = SMALL["max_num_tiles"]
    cases = [
        ((np.concatenate([px, px[:, :1]], 1), ids, np.concatenate([mask, mask[:, :1] * 0], 1)),
         "5 tiles per image, the encoder takes at most max_num_tiles=4"),
        ((px, np.where(ids == 1, 6, ids), mask), r"aspect_ratio_mask \[1, 0, 0, 0\] does not match aspect_ratio_id 6"),
        ((px, ids + 20, mask), "aspect_ratio_id 2[0-9] is outside"),
        ((px, ids[:-1], mask), r"aspect_ratio_ids must have shape"),
        ((px, ids, mask[:, :2]), r"aspect_ratio_mask must have shape"),
        ((px, ids, mask * 3), "0 and 1 only"),
        ((px.transpose(0, 1, 4, 2, 3), ids, mask), "look NCHW"),
        ((px[:, :, :8], ids, mask), "tiles are"),
        ((px[:, 0], ids, mask), "rank 5"),
        ((px.astype(np.int32), ids, mask), "floating point"),
        ((np.where(px == px, np.nan, px), ids, mask), "NaN"),
        ((px[:, :2], ids, mask[:, :2]), r"aspect_ratio_id \d \(\dx\d\) means \d tiles, pixel_values hold 2"),
        ({"pixel_values": px}, "lack"),
        ("pixels", "structured batch"),
    ]
    for args, match in cases:
        with pytest.raises(InputError, match=match):
            encoder.hidden_state(args, -2)
    assert n == 4


def test_fewer_tiles_are_padded(small):
    _, _, encoder = small
    inputs = all_inputs(SMALL)
    keep = inputs["aspect_ratio_mask"][:, 2:].sum(1) == 0  # images of at most 2 tiles
    px, ids, mask = (inputs[f][keep] for f in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"))
    np.testing.assert_array_equal(np.asarray(encoder.hidden_state((px[:, :2], ids, mask[:, :2]), -1)),
                                  np.asarray(encoder.hidden_state((px, ids, mask), -1)))


@pytest.mark.parametrize("changes, error, match", [
    (dict(intermediate_layers_indices=[0, 9]), ConfigError, "entry 9 is not a local block"),
    (dict(hidden_act="mish"), ConfigError, "hidden_act='mish'"),
    (dict(max_num_tiles=2, supported_aspect_ratios=[[1, 1], [1, 2], [2, 1]]), CheckpointError, "has shape"),
    (dict(supported_aspect_ratios=[[1, 1], [3, 3]]), ConfigError, r"entry \[3, 3\]"),
])
def test_bad_configs(small, tmp_path, changes, error, match):
    import shutil

    shutil.copytree(small[0], tmp_path / "ckpt")
    edit_config(tmp_path / "ckpt", **changes)
    with pytest.raises(error, match=match):
        sauce_jax.load_encoder(tmp_path / "ckpt")


# -- preprocessing -----------------------------------------------------------------------
skdata = pytest.importorskip("skimage.data")
MllamaImageProcessorPil = getattr(transformers, "MllamaImageProcessorPil", None) or transformers.MllamaImageProcessor


def _photo(name):
    """skimage's photos, and crops of them with extreme aspect ratios."""
    if name == "wide-strip":
        return skdata.astronaut()[200:240]  # 40 x 512
    if name == "tall-strip":
        return skdata.rocket()[:, 300:330]  # 427 x 30
    if name == "tiny":
        return skdata.coffee()[100:109, 200:221]  # 9 x 21, upscaled
    return getattr(skdata, name)()


@pytest.mark.parametrize("tile, tiles", [(56, 4), (64, 2)])
@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea", "rocket", "wide-strip", "tall-strip", "tiny"])
def test_matches_mllama_image_processor(photo, tile, tiles):
    processor = MllamaImageProcessorPil(size={"height": tile, "width": tile}, max_image_tiles=tiles)
    cfg = MllamaPreprocessConfig.from_hf(processor.to_dict())
    assert (cfg.tile_size, cfg.max_image_tiles) == (tile, tiles)
    image = Image.fromarray(_photo(photo))
    expected = processor(images=[[image]], return_tensors="np")
    got = sauce_jax.preprocess([image], cfg)
    assert got.shape == (1,)
    np.testing.assert_array_equal(got["aspect_ratio_ids"], expected["aspect_ratio_ids"][:, 0])
    np.testing.assert_array_equal(got["aspect_ratio_mask"], expected["aspect_ratio_mask"][:, 0])
    reference_px = expected["pixel_values"][:, 0].transpose(0, 1, 3, 4, 2)  # -> NHWC tiles
    assert got["pixel_values"].shape == reference_px.shape
    np.testing.assert_allclose(got["pixel_values"], reference_px, rtol=0, atol=1e-5)


def test_checkpoint_preprocessing_and_forward(small, tmp_path):
    import shutil

    shutil.copytree(small[0], tmp_path / "ckpt")
    model = small[1]
    processor = MllamaImageProcessorPil(size={"height": 16, "width": 16}, max_image_tiles=4)
    processor.save_pretrained(tmp_path / "ckpt")
    encoder = sauce_jax.load_encoder(tmp_path / "ckpt")
    assert encoder.preprocess_config == MllamaPreprocessConfig.from_hf(processor.to_dict())
    images = [skdata.chelsea(), skdata.rocket()[:, :60]]
    inputs = sauce_jax.preprocess(images, encoder)
    expected = processor(images=[[Image.fromarray(i)] for i in images], return_tensors="np")
    np.testing.assert_allclose(inputs["pixel_values"], expected["pixel_values"][:, 0].transpose(0, 1, 3, 4, 2),
                               rtol=0, atol=1e-5)
    check_outputs(encoder, model, inputs, F32_TOL)
