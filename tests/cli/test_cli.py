"""The `sauce-jax` command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sauce_jax import cli


def test_building_the_parser_loads_no_jax():
    """`sauce-jax --help` answers at once: the parser (every command, nested subcommands too)
    takes its choices and defaults from jax-free modules; jax loads only in a handler."""
    code = ("import sys; from sauce_jax.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('jax', 'jaxlib', 'flax', 'torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_help_lists_subcommands():
    result = subprocess.run([sys.executable, "-m", "sauce_jax.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "info" in result.stdout and "selfcheck" in result.stdout


@pytest.mark.parametrize("command", ["info", "selfcheck"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: sauce-jax " + command in capsys.readouterr().out


def test_info_describes_a_checkpoint(small_clip_dir, capsys):
    assert cli.main(["info", str(small_clip_dir[0])]) == 0
    out = capsys.readouterr().out
    assert "jax" in out and "devices" in out
    assert "clip_vision_model" in out and "2 blocks, width 32" in out
    assert "safetensors:" in out


def test_info_on_a_bad_directory_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_selfcheck_passes(capsys):
    assert cli.main(["selfcheck"]) == 0
    out = capsys.readouterr().out
    assert out.count("ok") == 5 and "FAIL" not in out
    assert "dinov2" in out and "mllama" in out


def test_selfcheck_fails_at_an_impossible_tolerance(capsys):
    assert cli.main(["selfcheck", "--tolerance", "1e-30"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_train_select_unlearn_from_the_command_line(small_clip_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    import sauce_jax

    rng = np.random.default_rng(0)
    for name, n in (("train", 12), ("pos", 4), ("neg", 4)):
        (tmp_path / name).mkdir()
        for i in range(n):
            image = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
            if name == "pos":
                image[8:28, 8:28] = (255, 0, 0)
            Image.fromarray(image).save(tmp_path / name / f"{i}.png")
    ckpt = str(small_clip_dir[0])
    assert cli.main(["train-sae", "--encoder", ckpt, "--images", str(tmp_path / "train"), "--out",
                     str(tmp_path / "run"), "--expansion", "2", "--token", "all", "--batch-size", "32",
                     "--epochs", "1", "--lr", "1e-3", "--no-progress"]) == 0
    assert cli.main(["select", "--sae", str(tmp_path / "run/sae"), "--encoder", ckpt, "--positives",
                     str(tmp_path / "pos"), "--negatives", str(tmp_path / "neg"), "--concept", "red", "-k", "3",
                     "--out", str(tmp_path / "red.json"), "--no-progress"]) == 0
    features = sauce_jax.FeatureSet.load(tmp_path / "red.json")
    assert features.k == 3 and features.layer == 1 and features.token == "all"
    assert cli.main(["unlearn", "--encoder", ckpt, "--sae", str(tmp_path / "run/sae"), "--features",
                     str(tmp_path / "red.json"), "--images", str(tmp_path / "pos"), "--mode", "delta",
                     "--out", str(tmp_path / "out.npz")]) == 0
    out = np.load(tmp_path / "out.npz")
    assert out["features"].shape == (4, 17, 32) and len(out["files"]) == 4
    # The written features are the unlearned encoder's.
    encoder = sauce_jax.load_encoder(ckpt)
    sae = sauce_jax.load_sae(tmp_path / "run/sae")
    images = [Image.open(f) for f in out["files"]]
    expected = sauce_jax.unlearn(encoder, sae, features, mode="delta").hidden_state(
        sauce_jax.preprocess(images, encoder), 1)
    np.testing.assert_allclose(out["features"], np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert cli.main(["select", "--sae", str(tmp_path / "run/sae"), "--encoder", ckpt, "--positives",
                     str(tmp_path / "nothing"), "--negatives", str(tmp_path / "neg"), "--concept", "red", "-k",
                     "3", "--out", str(tmp_path / "x.json"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def tiny_llava_with_processor(directory):
    """A tiny random LLaVA saved with a word-level tokenizer and a CLIP image processor."""
    from tiny_models import SMALL, make_llava, make_llava_processor

    words = ["<unk>", "<pad>", "<s>", "</s>", "USER", "ASSISTANT", ":", "what", "is", "this"]
    processor = make_llava_processor(words + [f"w{i}" for i in range(100)])
    model = make_llava(SMALL, seed=3)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def test_unlearn_answers_with_a_llava_checkpoint(tmp_path, monkeypatch):
    import json

    import numpy as np
    import torch
    from PIL import Image

    import sauce_jax
    from sauce_jax.sae import SAE, SAEConfig, init_params

    model, processor = tiny_llava_with_processor(tmp_path / "llava")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    config = SAEConfig(d_in=32, d_sae=64)
    params = init_params(jax_key(0), config)
    sae = SAE(params, config)
    sauce_jax.save_sae(sae, tmp_path / "sae")
    sae = sauce_jax.load_sae(tmp_path / "sae")
    identity = sauce_jax.FeatureSet("nothing", (1, 2), (0.0, 0.0), layer=1, sae_fingerprint=sae.fingerprint(),
                                    gamma=1.0)
    identity.save(tmp_path / "identity.json")
    with monkeypatch.context() as patch:
        loads, towers = count_llava_loads(patch)
        assert cli.main(["unlearn", "--encoder", str(tmp_path / "llava"), "--sae", str(tmp_path / "sae"),
                         "--features", str(tmp_path / "identity.json"), "--images", str(tmp_path / "imgs"),
                         "--mode", "delta", "--prompt", "what is this", "--max-new-tokens", "4",
                         "--out", str(tmp_path / "a.jsonl")]) == 0
    # The checkpoint is read once: the JAX tower is built from the loaded model, not from the files.
    assert len(loads) == 1 and towers == ["LlavaForConditionalGeneration"]
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["prompt"] == "what is this" for r in rows)
    # gamma = 1 in delta mode is the identity: the answers are the native transformers model's.
    images = [Image.open(r["file"]) for r in rows]
    text = "USER: <image>\nwhat is this ASSISTANT:"
    inputs = processor(images=images, text=[text] * 3, return_tensors="pt", padding=True)
    with torch.no_grad():
        native = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    expected = processor.batch_decode(native[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert [r["answer"] for r in rows] == expected
    assert any(answer.strip() for answer in expected)


def count_llava_loads(patch):
    """Record every LLaVA read from disk and the source of every JAX tower built, and fail if the
    processor prepares pixels (the JAX tower preprocesses the images itself)."""
    import transformers

    import sauce_jax.loading

    loads, towers = [], []
    from_pretrained = transformers.LlavaForConditionalGeneration.from_pretrained.__func__
    load_encoder = sauce_jax.loading.load_encoder

    def counted_from_pretrained(cls, *args, **kwargs):
        loads.append(args[0])
        return from_pretrained(cls, *args, **kwargs)

    def counted_load_encoder(source, *args, **kwargs):
        towers.append(type(source).__name__)
        return load_encoder(source, *args, **kwargs)

    def no_pixels(*args, **kwargs):
        raise AssertionError("the processor prepared pixels that are not used")

    patch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", classmethod(counted_from_pretrained))
    patch.setattr(sauce_jax.loading, "load_encoder", counted_load_encoder)
    patch.setattr(transformers.LlavaProcessor, "__call__", no_pixels)
    return loads, towers


def test_every_experiment_module_has_a_command():
    from sauce_jax.eval.conceptworld.experiments import NAMES

    parser = cli.build_parser()
    experiments = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["experiment"]
    names = next(a for a in experiments._subparsers._group_actions if a.dest == "experiment").choices
    assert set(NAMES) <= set(names) and {"real", "table2"} <= set(names)


def test_defaults_come_from_the_configs():
    from sauce_jax.cli.common import field_default
    from sauce_jax.eval.emoji import EmojiConfig
    from sauce_jax.train import TrainConfig

    args = cli.build_parser().parse_args(["train-sae", "--out", "x"])
    for name in ("lr", "batch_size", "epochs", "lr_warmup_steps", "lr_decay", "l1_warmup_steps", "compute_dtype",
                 "seed", "log_every", "checkpoint_every"):
        assert getattr(args, name) == field_default(TrainConfig, name)
    from sauce_jax.eval.fashion import FashionConfig

    args = cli.build_parser().parse_args(["experiment", "real", "--out", "x"])
    assert args.per_category == str(field_default(EmojiConfig, "per_category"))
    for config, command in ((EmojiConfig, "real"), (FashionConfig, "fashion")):
        args = cli.build_parser().parse_args(["experiment", command, "--out", "x"])
        for name in ("image_size", "layer", "expansion", "architecture", "sae_k", "epochs", "k", "gamma", "mode",
                     "random_draws", "bootstrap", "seed"):
            assert getattr(args, name) == field_default(config, name), (command, name)


def jax_key(seed):
    import jax

    return jax.random.key(seed)


def test_answers_need_a_llava_checkpoint(small_clip_dir, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    import sauce_jax
    from sauce_jax.sae import SAE, SAEConfig, init_params

    sae = SAE(init_params(jax_key(0), SAEConfig(d_in=32, d_sae=64)), SAEConfig(d_in=32, d_sae=64))
    sauce_jax.save_sae(sae, tmp_path / "sae")
    sauce_jax.FeatureSet("x", (1,), (0.0,), layer=1, sae_fingerprint=sauce_jax.load_sae(tmp_path / "sae").fingerprint()
                         ).save(tmp_path / "x.json")
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "0.png")
    assert cli.main(["unlearn", "--encoder", str(small_clip_dir[0]), "--sae", str(tmp_path / "sae"), "--features",
                     str(tmp_path / "x.json"), "--images", str(tmp_path / "imgs"), "--prompt", "what is this",
                     "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "needs a LLaVA or Mllama checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv, module, check", [
    (["experiment", "multi", "--quick", "--counts", "1,2", "--draws", "2", "--mode", "delta"], "multi",
     lambda c: c.counts == (1, 2) and c.draws == 2 and c.mode == "delta"),
    (["experiment", "multi", "--seed", "3", "--concepts", "star,red"], "multi",
     lambda c: c.demo.seed == 3 and c.demo.concepts == ("star", "red") and c.counts == (1, 2, 4, 8)),
    (["experiment", "robust", "--quick", "--methods", "GA", "--modes", "delta", "--no-descriptions"], "robust",
     lambda c: c.table2.methods == ("GA",) and c.sauce_modes == ("delta",) and not c.generative),
    (["experiment", "transfer", "--quick", "--concepts", "star"], "transfer", lambda c: c.demo.concepts == ("star",)),
    (["experiment", "features", "--images", "50", "--all-concepts"], "features",
     lambda c: c.n_images == 50 and c.demo.k_grid == (16,) and len(c.demo.concepts) > 10),
    (["experiment", "ablate", "--quick", "--ablations", "mode", "--layers", "1,3", "--gamma-values", "0,-1",
      "--n-test", "5"], "ablate",
     lambda c: c.ablations == ("mode",) and c.layers == (1, 3) and c.gamma_values == (0.0, -1.0)
     and c.demo.n_test == 5),
])
def test_experiment_options_become_their_config(argv, module, check, monkeypatch, tmp_path):
    """Each experiment command turns its options into the experiment's config (its run is not started)."""
    import importlib

    seen = []
    experiment = importlib.import_module(f"sauce_jax.eval.conceptworld.experiments.{module}")
    monkeypatch.setattr(experiment, "run", lambda out, config, **kwargs: seen.append(config))
    monkeypatch.setattr("sauce_jax.cli.experiments.print_report", lambda out: None)
    assert cli.main([*argv, "--out", str(tmp_path)]) == 0
    assert len(seen) == 1 and check(seen[0])
    assert cli.main([*argv, "--out", str(tmp_path), "--concepts", "unicorn"]) == 2
