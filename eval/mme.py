"""The MME benchmark (Fu et al., 2023) from its released folder, scored with MME's own rules.

Layout read (`MME_Benchmark_release_version/`, or the folder above it):

    existence/000000006040.jpg + existence/000000006040.txt        images and questions side by side
    artwork/images/10002.jpg   + artwork/questions_answers_YN/10002.txt

Each `.txt` holds one `question<TAB>Yes|No` line per question, two per image. `run_mme` asks
any answerer (images + questions -> texts), writes MME's result files (`SUBTASK.txt`, lines
`image<TAB>question<TAB>gt<TAB>pred`) and scores them; `score_results` scores result files
written by any other tool. Scoring is MME's `eval_tool/calculation.py`: a prediction is yes
when "yes" occurs in its first four characters (lower-cased), else no when "no" does, else
"other" (wrong); per subtask accuracy over questions plus accuracy+ over images (both
questions right), in percent (max 200); perception and cognition totals are sums of their
subtasks' scores (max 2000 and 800).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from sauce_jax.eval.metrics import mme_score
from sauce_jax.errors import ConfigError, InputError

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
RELEASE_FOLDER = "MME_Benchmark_release_version"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

# images [PIL] + questions [str] -> answers [str], one per (image, question) pair
Answerer = Callable[[list, list[str]], Sequence[str]]


@dataclasses.dataclass(frozen=True)
class MMEQuestion:
    """One question of one image; `answer` is "yes" or "no"; `source` is "file:line"."""

    subtask: str
    image: str  # the image's file name, as MME's result files name it
    image_path: Path
    question: str
    answer: str
    source: str


def parse_answer(text: str) -> str:
    """MME's answer parsing: "yes", "no" or "other" (counted wrong)."""
    pred = text.lower()
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def check_subtasks(subtasks: Iterable[str] | None) -> tuple[str, ...]:
    if subtasks is None:
        return SUBTASKS
    chosen = tuple(subtasks)
    unknown = [s for s in chosen if s not in SUBTASKS]
    if unknown or not chosen:
        raise ConfigError(f"unknown MME subtask(s) {unknown or chosen!r}; known: {', '.join(SUBTASKS)}")
    return chosen


def find_root(path: str | os.PathLike) -> Path:
    """The folder holding the subtask folders: `path` itself or its `MME_Benchmark_release_version/`."""
    root = Path(path)
    if (root / RELEASE_FOLDER).is_dir():
        root = root / RELEASE_FOLDER
    if not root.is_dir():
        raise InputError(f"MME folder {str(root)!r} does not exist or is not a directory")
    return root


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"MME file {str(path)!r} cannot be read: {exc}") from exc


def _yes_no(value: str, where: str, what: str) -> str:
    label = value.strip().lower()
    if label not in ("yes", "no"):
        raise InputError(f"{where}: {what} must be Yes or No, got {value.strip()!r}")
    return label


def _image_for(stem: str, folder: Path, txt: Path) -> Path:
    for suffix in IMAGE_SUFFIXES:
        for candidate in (folder / (stem + suffix), folder / (stem + suffix.upper())):
            if candidate.is_file():
                return candidate
    raise InputError(f"{str(txt)!r} has no image {stem}.jpg/.png/... in {str(folder)!r}")


def load_subtask(root: str | os.PathLike, subtask: str) -> list[MMEQuestion]:
    """Every question of one subtask, images in file-name order, questions in file order."""
    root = find_root(root)
    folder = root / subtask
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise InputError(f"MME subtask folder {str(folder)!r} is missing (found: {', '.join(present) or 'nothing'})")
    if (folder / "questions_answers_YN").is_dir():
        txt_folder, image_folder = folder / "questions_answers_YN", folder / "images"
    else:
        txt_folder = image_folder = folder
    texts = sorted(txt_folder.glob("*.txt"))
    if not texts:
        raise InputError(f"MME subtask {subtask!r} has no question files (*.txt) in {str(txt_folder)!r}")
    questions = []
    for txt in texts:
        image = _image_for(txt.stem, image_folder, txt)
        rows = []
        for number, line in enumerate(_read_lines(txt), 1):
            if not line.strip():
                continue
            where = f"{txt}:{number}"
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip():
                raise InputError(f"{where}: expected 'question<TAB>Yes|No', got {line[:120]!r}")
            rows.append(MMEQuestion(subtask, image.name, image, parts[0].strip(),
                                    _yes_no(parts[1], where, "the answer"), where))
        if len(rows) != 2:
            raise InputError(f"{str(txt)!r} has {len(rows)} questions; MME asks two per image")
        questions += rows
    return questions


def load_mme(root: str | os.PathLike, subtasks: Iterable[str] | None = None) -> dict[str, list[MMEQuestion]]:
    """{subtask: questions} for the chosen subtasks (default all 14)."""
    return {s: load_subtask(root, s) for s in check_subtasks(subtasks)}


def score_subtask(gts: Sequence[str], preds: Sequence[str], images: Sequence[str]) -> dict:
    """MME's acc, acc+ and score of one subtask; `other` counts predictions that are neither
    yes nor no. `gts` are "yes"/"no", `preds` raw answers, `images` the image of each."""
    if not (len(gts) == len(preds) == len(images)):
        raise InputError(f"{len(gts)} ground truths, {len(preds)} predictions and {len(images)} images differ")
    parsed = [parse_answer(p) for p in preds]
    correct = np.array([g == p for g, p in zip(gts, parsed)], dtype=bool)
    out = mme_score(correct, np.asarray(images, dtype=object).astype(str))
    return {**out, "other": parsed.count("other"), "questions": len(gts), "images": len(set(images))}


def summarize(scores: dict[str, dict]) -> dict:
    """Per-subtask scores plus MME's perception and cognition totals over the subtasks present."""
    out: dict = {"subtasks": scores}
    for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [s for s in group if s in scores]
        out[name] = {"score": round(sum(scores[s]["score"] for s in present), 2), "subtasks": present,
                     "missing": [s for s in group if s not in scores]}
    return out


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """One line of an MME result file."""

    image: str
    question: str
    gt: str
    pred: str


def _clean(text: str) -> str:
    return " ".join(text.replace("\t", " ").splitlines()).strip()


def write_results(results_dir: str | os.PathLike, subtask: str, questions: Sequence[MMEQuestion],
                  preds: Sequence[str]) -> Path:
    """MME's result file `results_dir/SUBTASK.txt` (tabs and newlines in answers become spaces)."""
    if len(questions) != len(preds):
        raise InputError(f"{len(questions)} questions but {len(preds)} answers for {subtask!r}")
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path, tmp = out / f"{subtask}.txt", out / f".{subtask}.txt.tmp"
    lines = [f"{q.image}\t{q.question}\t{q.answer.capitalize()}\t{_clean(p)}\n" for q, p in zip(questions, preds)]
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_results(results_dir: str | os.PathLike, subtask: str) -> list[ResultRow]:
    """The rows of `results_dir/SUBTASK.txt`; every image must have two questions."""
    path = Path(results_dir) / f"{subtask}.txt"
    if not path.is_file():
        raise InputError(f"MME result file {str(path)!r} does not exist")
    rows, per_image = [], {}
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        parts = line.split("\t", 3)
        if len(parts) != 4:
            raise InputError(f"{path}:{number}: expected 'image<TAB>question<TAB>gt<TAB>pred', got {line[:120]!r}")
        image, question, gt, pred = parts
        rows.append(ResultRow(image, question, _yes_no(gt, f"{path}:{number}", "the ground truth"), pred))
        per_image[image] = per_image.get(image, 0) + 1
    if not rows:
        raise InputError(f"MME result file {str(path)!r} is empty")
    odd = [(image, n) for image, n in per_image.items() if n != 2]
    if odd:
        raise InputError(f"{str(path)!r}: image {odd[0][0]!r} has {odd[0][1]} questions; MME asks two per image")
    return rows


def score_results(results_dir: str | os.PathLike, subtasks: Iterable[str] | None = None) -> dict:
    """Score MME result files. With `subtasks` None, every `SUBTASK.txt` present is scored."""
    folder = Path(results_dir)
    if not folder.is_dir():
        raise InputError(f"MME results folder {str(folder)!r} does not exist")
    chosen = check_subtasks(subtasks) if subtasks is not None else [s for s in SUBTASKS
                                                                      if (folder / f"{s}.txt").is_file()]
    if not chosen:
        raise InputError(f"MME results folder {str(folder)!r} holds no SUBTASK.txt file ({', '.join(SUBTASKS)})")
    scores = {}
    for subtask in chosen:
        rows = read_results(folder, subtask)
        scores[subtask] = score_subtask([r.gt for r in rows], [r.pred for r in rows], [r.image for r in rows])
    return summarize(scores)


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"MME image {str(path)!r} cannot be read: {exc}") from exc


def answer_all(questions: Sequence[MMEQuestion], answerer: Answerer, batch_size: int = 8) -> list[str]:
    """The answerer's (stripped) answer to every question, `batch_size` pairs per call."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        images = [_open_rgb(q.image_path) for q in chunk]
        out = list(answerer(images, [q.question for q in chunk]))
        if len(out) != len(chunk) or not all(isinstance(a, str) for a in out):
            raise InputError(f"the answerer returned {len(out)} answers for {len(chunk)} questions, "
                             f"or answers that are not strings")
        answers += [a.strip() for a in out]
    return answers


def run_mme(root: str | os.PathLike, answerer: Answerer, *, subtasks: Iterable[str] | None = None,
            results_dir: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = False) -> dict:
    """Ask `answerer` every question of the chosen subtasks and score the answers with MME's
    rules; with `results_dir`, also write MME's result files there."""
    from tqdm import tqdm

    benchmark = load_mme(root, subtasks)
    scores = {}
    for subtask, questions in tqdm(benchmark.items(), desc="MME", disable=not progress, leave=False):
        preds = answer_all(questions, answerer, batch_size)
        if results_dir is not None:
            write_results(results_dir, subtask, questions, preds)
        scores[subtask] = score_subtask([q.answer for q in questions], preds, [q.image for q in questions])
    return summarize(scores)


def format_summary(summary: dict) -> str:
    lines = [f"{'subtask':24s} {'acc':>7s} {'acc+':>7s} {'score':>7s} {'other':>5s}"]
    for name, s in summary["subtasks"].items():
        lines.append(f"{name:24s} {s['acc']:7.2f} {s['acc_plus']:7.2f} {s['score']:7.2f} {s['other']:5d}")
    for group in ("perception", "cognition"):
        g = summary[group]
        if g["subtasks"]:
            note = f" (missing: {', '.join(g['missing'])})" if g["missing"] else ""
            lines.append(f"{group} total {g['score']:.2f}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m sauce_jax.eval.mme RESULTS_DIR`: score MME result files."""
    import argparse

    from sauce_jax.errors import SauceError

    parser = argparse.ArgumentParser(prog="python -m sauce_jax.eval.mme", description="Score MME result files (SUBTASK.txt).")
    parser.add_argument("results_dir")
    args = parser.parse_args(argv)
    try:
        print(format_summary(score_results(args.results_dir)))
    except SauceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
