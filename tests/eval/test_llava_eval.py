"""`sauce-jax eval --model DIR --concepts-dir DIR` end to end on a tiny random LLaVA.

A random model's numbers mean nothing, so the tests check what must hold: every answer is the
native model's, counts equal the cases the clean model got right, rates lie in [0, 1], an
identity unlearning forgets nothing and keeps everything, and bad inputs fail by name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from tiny_models import SMALL, make_llava, make_llava_processor

from sauce_jax.eval.judges import WordMatchJudge
from sauce_jax.eval.llava_eval import DISCRIMINATIVE_PROMPTS, EvalConfig, fill_prompt
from sauce_jax.eval.mme import parse_answer
from sauce_jax import cli
from sauce_jax.errors import ConfigError

CONCEPTS = {"animal": {"cat": (220, 60, 40), "dog": (40, 200, 60)},
            "color": {"red": (30, 30, 230), "blue_sky": (200, 200, 30)}}
SPLITS = {"train": 3, "val": 1, "test": 3}
WORDS = ["<unk>", "<pad>", "<s>", "</s>", "USER", "ASSISTANT", ":", "yes", "no", "cat", "dog", "red", "blue", "sky"]
FILLERS = [f"w{i}" for i in range(127 - len(WORDS))]
# Each concept owns a quarter of the filler words, so a random description names some concepts.
SYNONYMS = {c: FILLERS[i::4] for i, c in enumerate(["cat", "dog", "red", "blue_sky"])}


def make_concepts(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for domain, concepts in CONCEPTS.items():
        for concept, colour in concepts.items():
            for split, n in SPLITS.items():
                folder = root / domain / concept / split
                folder.mkdir(parents=True)
                for i in range(n):
                    a = np.zeros((32, 32, 3), np.uint8)
                    a[:] = rng.integers(0, 256, 3)
                    r, c = rng.integers(0, 16, 2)
                    a[r:r + 16, c:c + 16] = colour
                    Image.fromarray(a).save(folder / f"{i}.png")
    return root


def tiny_llava(directory: Path, images: list):
    """A tiny random LLaVA with a word-level tokenizer, made to look at the image (its attention
    output scaled up) and to answer "yes" first to about half of the images (its "yes" row of
    the output layer shifted along the mean final hidden state), so that yes/no answers and
    descriptions vary from image to image."""
    processor = make_llava_processor(WORDS + FILLERS)
    vocab = processor.tokenizer.get_vocab()
    model = make_llava(SMALL, seed=3)
    yes = vocab["yes"]
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.o_proj.weight.mul_(5)
        prompt = f"USER: <image>\n{fill_prompt(DISCRIMINATIVE_PROMPTS[0], 'cat')} ASSISTANT:"
        inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt")
        h = model.model(**inputs).last_hidden_state[:, -1]  # [B, D] after the final norm
        logits = model.lm_head(h)  # [B, V]
        others = logits.clone()
        others[:, yes] = -torch.inf
        u = h.mean(0) / h.mean(0).norm()
        s = h @ u  # [B]: the yes logit moves by alpha * s
        needed = (others.max(-1).values - logits[:, yes]) / s
        model.lm_head.weight[yes] += needed.median() * u
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import jax

    import sauce_jax
    from sauce_jax.sae import SAE, SAEConfig, init_params

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a shared 2-core machine
    root = tmp_path_factory.mktemp("llava_eval")
    concepts = make_concepts(root / "concepts")
    tests = [Image.open(p) for p in sorted(concepts.rglob("test/*.png"))]
    model, processor = tiny_llava(root / "llava", tests)
    (root / "synonyms.json").write_text(json.dumps(SYNONYMS))
    config = SAEConfig(d_in=32, d_sae=64)
    sauce_jax.save_sae(SAE(init_params(jax.random.key(0), config), config), root / "sae")
    yield {"root": root, "concepts": concepts, "llava": root / "llava", "model": model, "processor": processor}
    torch.set_num_threads(threads)


def eval_args(world, *extra) -> list[str]:
    return ["eval", "--model", str(world["llava"]), "--concepts-dir", str(world["concepts"]), "--synonyms",
            str(world["root"] / "synonyms.json"), "--k", "4", "--n-images", "3", "--max-new-tokens", "6",
            "--batch-size", "8", "--no-progress", *extra]


def read_answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def shown(rows, variant, kind, concept) -> list[bool]:
    return [r["shows"] for r in rows if r["variant"] == variant and r["kind"] == kind and r["concept"] == concept]


def test_identity_unlearning_forgets_nothing(world, tmp_path):
    """delta mode with gamma = 1 leaves the tower unchanged: UA 0 and IRA = CRA = 1 wherever
    the clean model showed a concept, with counts equal to those cases."""
    out, answers = tmp_path / "out.json", tmp_path / "answers.jsonl"
    assert cli.main(eval_args(world, "--sae", str(world["root"] / "sae"), "--mode", "delta", "--gamma", "1",
                              "--json", str(out), "--answers", str(answers))) == 0
    summary = json.loads(out.read_text())
    rows = read_answers(answers)
    assert [r["concept"] for r in summary["per_concept"]] == ["cat", "dog", "blue_sky", "red"]
    assert summary["judge"] == "words" and summary["layer"] == 1 and summary["sae"].endswith("sae")
    judge = WordMatchJudge(SYNONYMS)
    clean = [r for r in rows if r["variant"] == "clean"]
    assert len(clean) == 4 * 3 * (3 + 3)  # concepts x test images x (yes/no + describe prompts)
    # Every verdict is the judge's / MME's parse of the answer written beside it.
    for r in rows:
        expected = judge.judge(r["concept"], [r["answer"]])[0] if r["kind"] == "generative" \
            else parse_answer(r["answer"]) == "yes"
        assert r["shows"] == expected, r
    # The bridge changes nothing: the clean answers are the native transformers model's.
    model, processor = world["model"], world["processor"]
    first = [r for r in clean if r["kind"] == "generative" and r["prompt"] == "Describe all the objects in this image."]
    images = [Image.open(r["image"]).convert("RGB") for r in first[:4]]
    inputs = processor(images=images, text=["USER: <image>\nDescribe all the objects in this image. ASSISTANT:"] * 4,
                       return_tensors="pt")
    with torch.no_grad():
        native = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert processor.batch_decode(native[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True) == \
        [r["answer"] for r in first[:4]]

    supported = {"d": 0, "g": 0}
    for result in summary["per_concept"]:
        c = result["concept"]
        edited = [r for r in rows if r["variant"] == f"unlearn:{c}"]
        assert [r["answer"] for r in edited] == [r["answer"] for r in clean]  # identical answers
        assert result["UA_d"]["n"] == sum(shown(rows, "clean", "discriminative", c))
        assert result["UA_g"]["n"] == sum(shown(rows, "clean", "generative", c))
        same = [o for o in CONCEPTS[result["domain"]] if o != c]
        assert result["IRA_g"]["n"] == sum(sum(shown(rows, "clean", "generative", o)) for o in same)
        assert result["images"] == {"forget": 3, "in_domain": 3, "cross_domain": 6}
        for name in ("UA_d", "UA_g"):
            assert result[name]["value"] == (0.0 if result[name]["n"] else None)
        for name in ("IRA_d", "IRA_g", "CRA_d", "CRA_g"):
            assert result[name]["value"] == (1.0 if result[name]["n"] else None)
        supported["d"] += result["UA_d"]["n"]
        supported["g"] += result["UA_g"]["n"]
        assert len(result["features"]) == 4
    # Not vacuous: the clean model said yes, and named concepts, in some cases but not all.
    assert 0 < supported["d"] < 4 * 9 and 0 < supported["g"] < 4 * 9, supported


def test_trained_sae_chat_judge_and_mme(world, tmp_path, monkeypatch):
    """No --sae: one is trained on the train images; the chat judge (a local fake endpoint that
    matches words) and MME on a miniature run too."""
    from test_judges import FakeChat
    from test_mme import make_mini

    judge = WordMatchJudge(SYNONYMS)

    def rule(message: str) -> str:
        concept = re.search(r'refers to the concept "([^"]+)"', message).group(1)
        description = message.split("<<<\n", 1)[1].split("\n>>>", 1)[0]
        return "Yes." if judge.judge(concept.replace(" ", "_"), [description])[0] else "no"

    server = FakeChat(rule)
    try:
        monkeypatch.setenv("SAUCE_JUDGE_BASE_URL", server.url)
        monkeypatch.setenv("SAUCE_JUDGE_MODEL", "fake-judge")
        make_mini(tmp_path / "mme")
        out, answers = tmp_path / "out.json", tmp_path / "answers.jsonl"
        assert cli.main(eval_args(world, "--judge", "chat", "--judge-cache", str(tmp_path / "verdicts.jsonl"),
                                  "--concepts", "cat,red", "--n-retain", "2", "--mode", "reconstruct", "--gamma",
                                  "-0.5", "--work", str(tmp_path / "work"), "--sae-expansion", "2", "--sae-k", "4",
                                  "--sae-epochs", "1", "--sae-batch-size", "64", "--mme", str(tmp_path / "mme"),
                                  "--mme-subtasks", "existence,code_reasoning", "--json", str(out), "--answers",
                                  str(answers))) == 0
        requests = server.count
    finally:
        server.close()
    summary = json.loads(out.read_text())
    rows = read_answers(answers)
    assert summary["sae"] == "trained" and list((tmp_path / "work").glob("sae-*/sae/cfg.json"))
    assert [r["concept"] for r in summary["per_concept"]] == ["cat", "red"]
    # The chat verdicts are the fake's word matching; repeated answers were asked once.
    generative = [r for r in rows if r["kind"] == "generative"]
    for r in generative:
        assert r["shows"] == judge.judge(r["concept"], [r["answer"]])[0]
    assert 0 < requests <= len({(r["concept"], r["answer"]) for r in generative})
    for result in summary["per_concept"]:
        c = result["concept"]
        for name in ("UA_d", "UA_g", "IRA_d", "IRA_g", "CRA_d", "CRA_g"):
            value = result[name]["value"]
            assert value is None or 0.0 <= value <= 1.0
        assert result["UA_g"]["n"] == sum(shown(rows, "clean", "generative", c))
        # n_retain=2: two images of each other concept, all three of the target.
        assert result["images"] == {"forget": 3, "in_domain": 2, "cross_domain": 4}
        h = result["headline"]
        ira = [result[n]["value"] for n in ("IRA_d", "IRA_g") if result[n]["value"] is not None]
        assert h["IRA"] == (pytest.approx(np.mean(ira), abs=1e-4) if ira else None)
        assert set(result["mme"]) == {"perception", "cognition", "subtasks"}
        assert 0 <= result["mme"]["perception"] <= 200 and 0 <= result["mme"]["cognition"] <= 200
    assert set(summary["clean_mme"]["subtasks"]) == {"existence", "code_reasoning"}


def test_prompts_and_config():
    assert fill_prompt("Does this image contain a {concept}? Answer yes or no.", "apple") == \
        "Does this image contain an apple? Answer yes or no."
    assert fill_prompt("A {concept} here?", "owl") == "An owl here?"
    assert fill_prompt("Is there a {concept}?", "golden retriever") == "Is there a golden retriever?"
    with pytest.raises(ConfigError, match="no {concept}"):
        EvalConfig(discriminative=("Is it there?",))
    with pytest.raises(ConfigError, match="must not name"):
        EvalConfig(generative=("Describe the {concept}.",))
    with pytest.raises(ConfigError, match="mode"):
        EvalConfig(mode="erase")
    with pytest.raises(ConfigError, match="n_test"):
        EvalConfig(n_test=0)


def test_errors_name_the_culprit(world, tmp_path, small_clip_dir, capsys, monkeypatch):
    def fails(args, match):
        assert cli.main(args) == 2
        assert re.search(match, capsys.readouterr().err), match

    llava, concepts = str(world["llava"]), str(world["concepts"])
    fails(["eval", "--model", llava, "--concepts", "cat"], "give --concepts-dir")
    fails(["eval", "--model", str(tmp_path / "none"), "--concepts-dir", concepts], "checkpoint directory with config")
    fails(["eval", "--concepts-dir", concepts, "--concepts", "star"], "--concepts-dir needs --model DIR")
    fails(["eval"], "needs --concepts")
    fails(eval_args(world, "--concepts", "cat,unicorn"), "'unicorn' is not in")
    fails(eval_args(world, "--judge-model", "m"), "need --judge chat")
    for name in ("SAUCE_JUDGE_BASE_URL", "SAUCE_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    fails(eval_args(world, "--judge", "chat"), "SAUCE_JUDGE_BASE_URL")
    fails(eval_args(world, "--synonyms", str(tmp_path / "nope.json")), r"nope\.json' does not exist")
    fails(eval_args(world, "--mme-subtasks", "existence,smell"), "'smell'")
    fails(eval_args(world, "--mme", str(tmp_path / "no-mme")), r"no-mme' does not exist")
    (tmp_path / "mme" / "existence").mkdir(parents=True)
    fails(eval_args(world, "--mme", str(tmp_path / "mme"), "--mme-subtasks", "existence"),
          "'existence' has no question files")
    fails(eval_args(world, "--language", "es"), "--language applies to ConceptWorld")
    broken = tmp_path / "broken"
    for domain, names in CONCEPTS.items():
        for name in names:
            for split in ("train", "test"):
                (broken / domain / name / split).mkdir(parents=True)
                Image.new("RGB", (8, 8)).save(broken / domain / name / split / "0.png")
    (broken / "color" / "red" / "test" / "0.png").unlink()
    fails(["eval", "--model", llava, "--concepts-dir", str(broken)], r"red/test' holds no images")
    fails(["eval", "--model", str(small_clip_dir[0]), "--concepts-dir", concepts], "'clip_vision_model' checkpoint")
    import jax

    import sauce_jax
    from sauce_jax.sae import SAE, SAEConfig, init_params

    narrow = SAEConfig(d_in=16, d_sae=32)
    sauce_jax.save_sae(SAE(init_params(jax.random.key(0), narrow), narrow), tmp_path / "narrow")
    fails(eval_args(world, "--sae", str(tmp_path / "narrow")), "d_in=16 differs from the vision tower's width 32")
