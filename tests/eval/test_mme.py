"""The MME harness on a generated miniature of the released layout, with hand-checked scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sauce_jax.eval import mme
from sauce_jax.errors import ConfigError, InputError

# subtask -> image -> (colour, [(question, ground truth, scripted answer)])
MINI = {
    "existence": {  # side-by-side layout
        "a.png": ((255, 0, 0), [("Is there a dog?", "Yes", "Yes, there is."), ("Is there a cat?", "No", "No")]),
        "b.jpg": ((0, 255, 0), [("Is there a car?", "Yes", "Not at all"), ("Is there a bus?", "No", "I think no")]),
        "c.png": ((0, 0, 255), [("Is there a tree?", "Yes", "yes"), ("Is there a boat?", "No", "no")]),
    },
    "artwork": {  # images/ + questions_answers_YN/
        "10002.jpg": ((200, 200, 0), [("Is it by Monet?", "Yes", "yes"), ("Is it by Dali?", "No", "yes")]),
        "10003.png": ((0, 200, 200), [("Is it a fresco?", "No", "no."), ("Is it an oil painting?", "Yes", "YES!")]),
    },
    "code_reasoning": {
        "0001.png": ((90, 90, 90), [("Does it print 3?", "Yes", "Yes"), ("Does it print 4?", "No", "Nope")]),
    },
}
# Hand-checked. existence: right = a: 2, b: 0 ("Not at all" parses as no, "I think no" is other), c: 2
# -> acc 4/6, acc+ 2/3 -> 66.67, 66.67, score 133.33; artwork: 3/4 right, one image fully -> 75 + 50;
# code_reasoning: 100 + 100.
EXPECTED = {"existence": (66.67, 66.67, 133.33, 1), "artwork": (75.0, 50.0, 125.0, 0),
            "code_reasoning": (100.0, 100.0, 200.0, 0)}


def make_mini(root: Path, mini=MINI) -> Path:
    release = root / "MME_Benchmark_release_version"
    for subtask, images in mini.items():
        nested = subtask in ("artwork", "celebrity", "landmark", "posters", "scene")
        image_dir = release / subtask / "images" if nested else release / subtask
        txt_dir = release / subtask / "questions_answers_YN" if nested else release / subtask
        image_dir.mkdir(parents=True, exist_ok=True)
        txt_dir.mkdir(parents=True, exist_ok=True)
        for name, (colour, questions) in images.items():
            Image.new("RGB", (12, 10), colour).save(image_dir / name)
            (txt_dir / (Path(name).stem + ".txt")).write_text("".join(f"{q}\t{gt}\n" for q, gt, _ in questions))
    return release


class ScriptedAnswerer:
    """Answers from MINI by question text, checking each question came with its own image."""

    def __init__(self):
        self.table = {q: (colour, answer) for images in MINI.values() for colour, qs in images.values()
                      for q, _, answer in qs}
        self.calls = 0

    def __call__(self, images, questions):
        self.calls += 1
        assert len(images) == len(questions) <= 3
        out = []
        for image, question in zip(images, questions):
            colour, answer = self.table[question]
            assert image.mode == "RGB" and image.size == (12, 10)
            pixel = np.asarray(image)[5, 6]
            assert np.abs(pixel.astype(int) - colour).max() <= 8, (question, pixel)  # jpg is lossy
            out.append(" " + answer + "\n")  # answers are stripped, as LLaVA's MME script does
        return out


@pytest.mark.parametrize("text,label", [
    ("yes", "yes"), ("no", "no"), ("Yes.", "yes"), ("YES, it is", "yes"), ("No, it is not", "no"),
    (" yes", "yes"), ("  yes", "other"), ("Not sure", "no"), ("None", "no"), ("I think yes", "other"),
    ("", "other"), ("The answer is yes", "other"), ("noyes", "no"), ("ayes", "yes"),
])
def test_parse_answer_is_mmes_rule(text, label):
    assert mme.parse_answer(text) == label


def test_run_scores_and_writes_mme_result_files(tmp_path):
    release = make_mini(tmp_path)
    answerer = ScriptedAnswerer()
    summary = mme.run_mme(tmp_path, answerer, subtasks=list(MINI), results_dir=tmp_path / "results", batch_size=3)
    assert answerer.calls == 2 + 2 + 1  # 6, 4 and 2 questions in batches of 3
    for subtask, (acc, acc_plus, score, other) in EXPECTED.items():
        got = summary["subtasks"][subtask]
        assert (got["acc"], got["acc_plus"], got["score"], got["other"]) == (acc, acc_plus, score, other)
        assert got["questions"] == 2 * len(MINI[subtask]) and got["images"] == len(MINI[subtask])
    assert summary["perception"]["score"] == 258.33 and summary["perception"]["subtasks"] == ["existence", "artwork"]
    assert len(summary["perception"]["missing"]) == 8
    assert summary["cognition"] == {"score": 200.0, "subtasks": ["code_reasoning"],
                                    "missing": ["commonsense_reasoning", "numerical_calculation", "text_translation"]}
    # MME's result format, answers stripped; reading the files back gives the same scores.
    lines = (tmp_path / "results" / "existence.txt").read_text().splitlines()
    assert lines[0] == "a.png\tIs there a dog?\tYes\tYes, there is."
    assert lines[3] == "b.jpg\tIs there a bus?\tNo\tI think no"
    assert mme.score_results(tmp_path / "results") == summary
    # The release folder itself works as the root too.
    assert mme.load_mme(release, ["artwork"])["artwork"][0].image == "10002.jpg"


def test_loaded_questions(tmp_path):
    make_mini(tmp_path)
    questions = mme.load_mme(tmp_path, ["artwork", "existence"])
    art = questions["artwork"]
    assert [q.image for q in art] == ["10002.jpg", "10002.jpg", "10003.png", "10003.png"]
    assert [q.answer for q in art] == ["yes", "no", "no", "yes"]
    assert art[0].image_path.parent.name == "images" and art[0].source.endswith("10002.txt:1")
    assert [q.question for q in questions["existence"]][:2] == ["Is there a dog?", "Is there a cat?"]


def test_results_from_another_tool(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    # CRLF line ends, a tab inside a prediction, a lower-case ground truth, a blank line.
    (folder / "OCR.txt").write_bytes(b"x.jpg\tIs it 'STOP'?\tYes\tyes\tindeed\r\nx.jpg\tIs it 'GO'?\tno\tNo\r\n\r\n"
                                     b"y.jpg\tRed?\tYes\tno\r\ny.jpg\tBlue?\tNo\tno\r\n")
    (folder / "text_translation.txt").write_text("t.png\tQ1\tYes\tYes\nt.png\tQ2\tNo\tyes\n")
    summary = mme.score_results(folder)
    assert summary["subtasks"]["OCR"] == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0, "other": 0,
                                          "questions": 4, "images": 2}
    assert summary["perception"]["score"] == 125.0 and summary["cognition"]["score"] == 50.0
    assert mme.main([str(folder)]) == 0


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_layout_errors_name_the_culprit(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        mme.load_mme(tmp_path / "nowhere", ["count"])
    release = make_mini(tmp_path)
    with pytest.raises(InputError, match=r"subtask folder .*count' is missing \(found: artwork, code_reasoning"):
        mme.load_mme(tmp_path, ["count"])
    (release / "color").mkdir()
    with pytest.raises(InputError, match="'color' has no question files"):
        mme.load_subtask(tmp_path, "color")
    with pytest.raises(ConfigError, match="'colour'"):
        mme.load_mme(tmp_path, ["colour"])

    Image.new("RGB", (4, 4)).save(release / "color" / "p.png")
    write(release / "color" / "p.txt", "Is it red?\tYes\nIs it blue? No\n")
    with pytest.raises(InputError, match=r"p\.txt:2: expected 'question<TAB>Yes\|No'"):
        mme.load_subtask(tmp_path, "color")
    write(release / "color" / "p.txt", "Is it red?\tYes\nIs it blue?\tMaybe\n")
    with pytest.raises(InputError, match=r"p\.txt:2: the answer must be Yes or No, got 'Maybe'"):
        mme.load_subtask(tmp_path, "color")
    write(release / "color" / "p.txt", "Is it red?\tYes\n")
    with pytest.raises(InputError, match=r"p\.txt' has 1 questions; MME asks two"):
        mme.load_subtask(tmp_path, "color")
    write(release / "color" / "q.txt", "A?\tYes\nB?\tNo\n")
    write(release / "color" / "p.txt", "A?\tYes\nB?\tNo\n")
    with pytest.raises(InputError, match=r"q\.txt' has no image q\.jpg"):
        mme.load_subtask(tmp_path, "color")


def test_unreadable_image_and_bad_answerer(tmp_path):
    release = make_mini(tmp_path)
    (release / "code_reasoning" / "0001.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"0001\.png' cannot be read"):
        mme.run_mme(tmp_path, ScriptedAnswerer(), subtasks=["code_reasoning"])
    with pytest.raises(InputError, match="returned 1 answers for 2 questions"):
        mme.run_mme(tmp_path, lambda images, questions: ["yes"], subtasks=["existence"], batch_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        mme.run_mme(tmp_path, ScriptedAnswerer(), subtasks=["existence"], batch_size=0)


def test_result_file_errors(tmp_path):
    folder = tmp_path / "res"
    with pytest.raises(InputError, match="does not exist"):
        mme.score_results(folder)
    folder.mkdir()
    with pytest.raises(InputError, match="holds no SUBTASK.txt"):
        mme.score_results(folder)
    with pytest.raises(InputError, match=r"count\.txt' does not exist"):
        mme.score_results(folder, ["count"])
    write(folder / "count.txt", "a.jpg\tTwo?\tYes\n")
    with pytest.raises(InputError, match=r"count\.txt:1: expected 'image<TAB>question<TAB>gt<TAB>pred'"):
        mme.score_results(folder)
    write(folder / "count.txt", "a.jpg\tTwo?\tyep\tyes\n")
    with pytest.raises(InputError, match=r"count\.txt:1: the ground truth must be Yes or No, got 'yep'"):
        mme.score_results(folder)
    write(folder / "count.txt", "a.jpg\tTwo?\tYes\tyes\na.jpg\tThree?\tNo\tno\nb.jpg\tOne?\tYes\tyes\n")
    with pytest.raises(InputError, match="image 'b.jpg' has 1 questions"):
        mme.score_results(folder)
    write(folder / "count.txt", "\n")
    with pytest.raises(InputError, match="is empty"):
        mme.score_results(folder)
    assert mme.main([str(folder)]) == 2
