"""The second shipped ConceptWorld model (`--tower image`): its tower never saw a per-token
concept label, it loads and answers, and the option selects it everywhere a model is chosen."""

import json

import numpy as np
import pytest
import torch

from sauce_jax.errors import ConfigError
from sauce_jax.eval.conceptworld import vlm
from sauce_jax.eval.conceptworld.towers import TOWERS, resolve_model_dir, tower_dir
from sauce_jax.eval.conceptworld.world import CONCEPTS, generic_stream

FRESH_SEED = 20261130  # never used by training, validation or the demo


@pytest.fixture(scope="module")
def fresh_model():
    model = vlm.make_model(vlm.make_tokenizer(), seed=0)
    return model, {k: v.clone() for k, v in model.model.vision_tower.state_dict().items()}


def _tower_after_stage_1(fresh_model, tmp_path, tower_labels: str, tokens: np.ndarray):
    from sauce_jax.eval.conceptworld.training import RecipeConfig, train_tower

    model, initial = fresh_model
    model.model.vision_tower.load_state_dict(initial)  # every call starts from the same tower
    rng = np.random.default_rng(0)
    n, size = len(tokens), vlm.VISION["image_size"]
    data = {"images": rng.integers(0, 255, (n, size, size, 3), np.uint8), "tokens": tokens,
            "labels": rng.integers(0, 2, (n, len(CONCEPTS))).astype(np.uint8)}
    config = RecipeConfig(tower_steps=2, tower_batch=2, tower_labels=tower_labels, checkpoint_every=1000)
    ckpt = tmp_path / f"{tower_labels}-{int(tokens.max())}.pt"
    torch.manual_seed(0)  # the heads stage 1 adds are initialised alike in every call
    train_tower(model, data, config, ckpt, log=lambda message: None)
    return torch.cat([p.detach().flatten().clone() for p in model.model.vision_tower.parameters()])


def test_the_image_recipe_never_reads_per_token_labels(fresh_model, tmp_path):
    # Two sets of per-token labels: with tower_labels="image" the trained tower is bit-identical
    # (they never reach a loss); the shipped recipe ("tokens") is the control that they would.
    shape = (4, vlm.num_image_tokens(), len(CONCEPTS))
    zeros, ones = np.zeros(shape, np.uint8), np.ones(shape, np.uint8)

    def tower(labels, tokens):
        return _tower_after_stage_1(fresh_model, tmp_path, labels, tokens)

    assert torch.equal(tower("image", zeros), tower("image", ones))
    assert not torch.equal(tower("tokens", zeros), tower("tokens", ones))
    with pytest.raises(ConfigError, match="tower_labels"):
        from sauce_jax.eval.conceptworld.training import RecipeConfig

        RecipeConfig(tower_labels="patches")


def test_the_image_tower_ships_small_float16_with_its_recipe():
    folder = tower_dir("image")
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 25e6
    header = json.loads(weights.read_bytes()[8: 8 + int.from_bytes(weights.read_bytes()[:8], "little")])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}
    training = json.loads((folder / "training.json").read_text())
    assert training["recipe"]["tower_labels"] == "image"
    assert TOWERS["dense"] == vlm.SHIPPED


@pytest.fixture(scope="module")
def image_model():
    from sauce_jax.eval.conceptworld.sauce import load_model

    return load_model(tower="image")


def test_the_option_selects_the_image_model(image_model):
    llava, _, encoder, layer, _ = image_model
    chosen, _ = vlm.load(TOWERS["image"])
    dense, _ = vlm.load()

    def tower(model):
        return torch.cat([p.detach().flatten() for p in model.model.vision_tower.parameters()])

    assert torch.equal(tower(llava), tower(chosen))
    assert not torch.equal(tower(llava), tower(dense))
    assert layer == encoder.layer_index(-1)
    assert resolve_model_dir(None, None) is None and resolve_model_dir("x", None) == "x"
    with pytest.raises(ConfigError, match="not both"):
        resolve_model_dir("some/dir", "image")
    with pytest.raises(ConfigError, match="unknown ConceptWorld tower"):
        tower_dir("patch")


def test_the_image_model_answers_its_world(image_model):
    # Yes/no questions about each image's own concepts against the same number about absent
    # ones (the control): a model that ignored the image would say yes to both alike. Its
    # descriptions name each image's scene, the concept it knows best.
    from sauce_jax.eval.conceptworld import text as T

    _, _, _, _, model = image_model
    specs = generic_stream(12, seed=FRESH_SEED)
    present = model.answers(specs, lambda s: sorted(s.concepts), "en")
    absent = model.answers(specs, lambda s: [c for c in CONCEPTS if c not in s.concepts][:len(s.concepts)], "en",
                           generative=False)
    yes_present, yes_absent = present["yes"].mean(), absent["yes"].mean()
    assert yes_present - yes_absent >= 0.25, (yes_present, yes_absent)
    assert all(T.mentions(text, s.scene, ("en",)) for text, s in zip(present["texts"], specs))


@pytest.mark.parametrize("argv", [
    ["demo", "--tower", "image"],
    ["experiment", "table2", "--out", "o", "--tower", "image"],
    ["experiment", "ablate", "--out", "o", "--tower", "image"],
    ["experiment", "multi", "--out", "o", "--tower", "image"],
])
def test_every_conceptworld_command_takes_the_tower(argv):
    from sauce_jax.cli import build_parser
    from sauce_jax.cli.common import model_dir_arg

    args = build_parser().parse_args(argv)
    assert model_dir_arg(args) == TOWERS["image"]
    args = build_parser().parse_args([a for a in argv if a not in ("--tower", "image")])
    assert model_dir_arg(args) is None  # the default model is unchanged


def test_eval_refuses_a_tower_with_a_checkpoint(tmp_path, capsys):
    from sauce_jax.cli import main

    assert main(["eval", "--model", str(tmp_path), "--tower", "image", "--concepts", "star"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tower" in err[0]
