"""Concept image folders for evaluating unlearning on real checkpoints.

Layout: `ROOT/DOMAIN/CONCEPT/{train,val,test}/*.{jpg,png,...}`, e.g.
`concepts/object/golden_retriever/test/0001.jpg`. The domain groups concepts for the retain
metrics (IRA: same domain, CRA: other domains); a concept's name is its folder name, and its
word in prompts is that name with underscores as spaces ("golden retriever"). `train` images
select the concept's SAE features, `test` images score the unlearning, `val` is optional
(for choosing k and gamma). Hidden entries (".DS_Store") and loose files next to the folders
are ignored; everything else that does not fit the layout is an `InputError` naming it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from sauce_jax.eval.judges.base import concept_word
from sauce_jax.errors import ConfigError, InputError
from sauce_jax.images import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Concept:
    """One concept's image files per split (sorted paths)."""

    name: str
    domain: str
    folder: Path
    splits: dict[str, tuple[Path, ...]]

    @property
    def word(self) -> str:
        return concept_word(self.name)

    def images(self, split: str) -> tuple[Path, ...]:
        if split not in self.splits:
            raise InputError(f"concept {self.name!r} has no {split!r} split in {str(self.folder)!r}")
        return self.splits[split]


@dataclasses.dataclass(frozen=True)
class ConceptDirs:
    """Every concept of a concept folder, in (domain, concept) order."""

    root: Path
    concepts: dict[str, Concept]

    @property
    def domains(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, list[str]] = {}
        for c in self.concepts.values():
            out.setdefault(c.domain, []).append(c.name)
        return {d: tuple(names) for d, names in out.items()}

    def __getitem__(self, name: str) -> Concept:
        if name not in self.concepts:
            raise ConfigError(f"concept {name!r} is not in {str(self.root)!r} (concepts: {', '.join(self.concepts)})")
        return self.concepts[name]

    def check_names(self, names: Iterable[str]) -> tuple[str, ...]:
        """The given concept names, each checked to exist."""
        names = tuple(names)
        if not names:
            raise ConfigError("no concepts chosen")
        for name in names:
            self[name]
        return names

    def others(self, name: str, same_domain: bool) -> tuple[str, ...]:
        """The other concepts of `name`'s domain (same_domain) or of the other domains."""
        domain = self[name].domain
        return tuple(c.name for c in self.concepts.values() if c.name != name and (c.domain == domain) == same_domain)


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise InputError(f"folder {str(folder)!r} cannot be read: {exc}") from exc


def _check_image(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(f"image {str(path)!r} cannot be read: {exc}") from exc


def _split_images(folder: Path, verify: bool) -> tuple[Path, ...]:
    entries = _visible(folder)
    images = tuple(p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"split folder {str(folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if verify:
        for path in images:
            _check_image(path)
    return images


def load_concept_dirs(root: str | os.PathLike, required: Sequence[str] = ("train", "test"),
                      verify: bool = True) -> ConceptDirs:
    """Read and check `ROOT/DOMAIN/CONCEPT/{train,val,test}/`.

    Args:
      required: splits every concept must have (others present are checked too).
      verify: open every image (PIL `verify`) so an unreadable file fails here, by name.
    """
    unknown = [s for s in required if s not in SPLITS]
    if unknown:
        raise ConfigError(f"unknown split(s) {unknown}; splits are {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"concept folder {str(root)!r} does not exist or is not a directory")
    domains = [p for p in _visible(root) if p.is_dir()]
    if not domains:
        raise InputError(f"concept folder {str(root)!r} holds no DOMAIN/CONCEPT/{{train,val,test}} folders")
    concepts: dict[str, Concept] = {}
    for domain in domains:
        folders = [p for p in _visible(domain) if p.is_dir()]
        if not folders:
            raise InputError(f"domain folder {str(domain)!r} holds no concept folders")
        for folder in folders:
            if folder.name in concepts:
                raise InputError(f"concept {folder.name!r} appears twice: {str(concepts[folder.name].folder)!r} "
                                 f"and {str(folder)!r}")
            subfolders = {p.name: p for p in _visible(folder) if p.is_dir()}
            stray = sorted(set(subfolders) - set(SPLITS))
            if stray:
                raise InputError(f"concept folder {str(folder)!r} has unexpected folder {stray[0]!r} "
                                 f"(splits are {', '.join(SPLITS)})")
            missing = [s for s in required if s not in subfolders]
            if missing:
                raise InputError(f"concept folder {str(folder)!r} lacks the {', '.join(missing)} split"
                                 f"{'s' if len(missing) > 1 else ''} (has: {', '.join(sorted(subfolders)) or 'none'})")
            splits = {s: _split_images(subfolders[s], verify) for s in SPLITS if s in subfolders}
            concepts[folder.name] = Concept(folder.name, domain.name, folder, splits)
    return ConceptDirs(root, concepts)
