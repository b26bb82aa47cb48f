"""MkDocs hooks: the reference pages that are generated at build time, so they cannot drift.

- `reference/cli.md`: every command of `sauce_jax.cli.build_parser()`, nested subcommands
  included (`experiment table2`, `conceptworld train`), each with its `--help` text.
- `reference/api.md`: one mkdocstrings block per public name of `sauce_jax.__all__`, taken
  from the module that defines it.
- mkdocstrings reads the sources from a mirror of the installed layout (a temporary folder
  whose `sauce_jax/` links to `sauce_jax/*`, `ports/`, `train/` and `eval/`, removed after the
  build): in the repository the last three sit beside `sauce_jax/`, where griffe, which reads
  files rather than importing them, would not find them.
- `reference/layout.md`: the layering rule, read from `tests/test_layout.py` (the test that
  enforces it), replaces the page's `<!-- layering-rule -->` marker, and a table of every
  module with the first paragraph of its docstring replaces `<!-- modules -->`.

Nothing here is a page of its own (mkdocs.yml excludes this file from the site).
"""

from __future__ import annotations

import argparse
import ast
import atexit
import os
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
CLI_PAGE, API_PAGE, LAYOUT_PAGE = "reference/cli.md", "reference/api.md", "reference/layout.md"
LAYER_MARKER, MODULES_MARKER = "<!-- layering-rule -->", "<!-- modules -->"
# the folder of each package of the namespace (as tests/test_layout.py and setup.py map them)
FOLDERS = {"sauce_jax": ROOT / "sauce_jax", "sauce_jax.ports": ROOT / "ports",
           "sauce_jax.train": ROOT / "train", "sauce_jax.eval": ROOT / "eval"}
HELP_WIDTH = "100"


# ------------------------------------------------------------------------------ command line

def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand of `parser`, in the order it lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias of a command already listed
                    continue
                seen.add(id(sub))
                found.append((name, helps.get(name, ""), sub))
    return found


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand under `parser`, as tuples of names: ("experiment", "table2")."""
    paths = []
    for name, _, sub in _subcommands(parser):
        paths.append((*prefix, name))
        paths += command_paths(sub, (*prefix, name))
    return paths


def _help_text(parser: argparse.ArgumentParser) -> str:
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps to the terminal's width: fix it
    try:
        return parser.format_help().rstrip()
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def _cli_sections(parser, prefix: tuple[str, ...], level: int) -> list[str]:
    out = []
    for name, help_line, sub in _subcommands(parser):
        path = (*prefix, name)
        out += [f"{'#' * level} sauce-jax {' '.join(path)}", ""]
        if help_line:
            out += [help_line[0].upper() + help_line[1:] + ".", ""]
        out += ["```text", _help_text(sub), "```", ""]
        out += _cli_sections(sub, path, min(level + 1, 4))
    return out


def cli_markdown() -> str:
    from sauce_jax.cli import build_parser

    parser = build_parser()
    lines = ["# Command line", "",
             "Generated from `sauce_jax.cli.build_parser()` when the site is built: every command "
             "and subcommand with its `--help`. Errors are one line on stderr and exit status 2.", "",
             "| command | what it does |", "|---|---|"]
    for path in command_paths(parser):
        sub = parser
        for name in path:
            sub = dict((n, s) for n, _, s in _subcommands(sub))[name]
        helps = dict((n, h) for n, h, _ in _subcommands(_parent(parser, path)))
        anchor = "sauce-jax-" + "-".join(path)
        lines.append(f"| [`sauce-jax {' '.join(path)}`](#{anchor}) | {helps.get(path[-1], '')} |")
    lines += ["", "```text", _help_text(parser), "```", ""]
    lines += _cli_sections(parser, (), 2)
    return "\n".join(lines)


def _parent(parser, path):
    for name in path[:-1]:
        parser = dict((n, s) for n, _, s in _subcommands(parser))[name]
    return parser


# ------------------------------------------------------------------------------ Python API

def public_api() -> list[tuple[str, str]]:
    """(name, dotted path of its definition) for every public name of `sauce_jax.__all__`."""
    import sauce_jax

    lazy = getattr(sauce_jax, "_LAZY", {})
    found = []
    for name in sauce_jax.__all__:
        if name.startswith("__"):
            continue
        module = lazy.get(name) or getattr(sauce_jax, name).__module__
        found.append((name, f"{module}.{name}"))
    return found


def api_markdown() -> str:
    lines = ["# Python API", "",
             "Every name below is importable from `sauce_jax` (`import sauce_jax; sauce_jax.unlearn(...)`); "
             "`import sauce_jax` loads each submodule on first use. Generated from `sauce_jax.__all__` "
             "and the docstrings when the site is built.", "",
             "| name | defined in |", "|---|---|"]
    api = public_api()
    for name, path in api:
        lines.append(f"| [`{name}`](#{path}) | `{path.rsplit('.', 1)[0]}` |")
    lines.append("")
    for _, path in api:
        lines += [f"::: {path}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ layout

def layering_rule() -> str:
    """The docstring of tests/test_layout.py and its LAYERS, as Markdown."""
    tree = ast.parse((ROOT / "tests" / "test_layout.py").read_text())
    doc = ast.get_docstring(tree) or ""
    layers = next((ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", None) == "LAYERS" for t in node.targets)), ())
    chain = "  <-  ".join(layers)
    return f"{doc}\n\n```text\n{chain}\n```\n\n(From the docstring of `tests/test_layout.py`, which enforces it.)"


def modules() -> list[tuple[str, str, str]]:
    """(dotted name, file relative to the repository, first paragraph of its docstring) of every module."""
    found = []
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            first = " ".join(doc.split("\n\n")[0].split())
            found.append((".".join([package, *parts]), path.relative_to(ROOT).as_posix(), first))
    return found


def modules_markdown() -> str:
    lines = ["| module | file | what it holds |", "|---|---|---|"]
    for name, file, doc in modules():
        lines.append(f"| `{name}` | `{file}` | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ hooks

_MIRRORS: list[str] = []


def _remove_mirrors():
    while _MIRRORS:
        shutil.rmtree(_MIRRORS.pop(), ignore_errors=True)


atexit.register(_remove_mirrors)


def installed_layout() -> Path:
    """A new temporary folder holding `sauce_jax/` as it installs: links to the core's entries
    and to the three folders `setup.py` maps into it. Returns the folder to search."""
    root = Path(tempfile.mkdtemp(prefix="sauce-jax-docs-src-"))
    _MIRRORS.append(str(root))
    package = root / "sauce_jax"
    package.mkdir()
    for entry in FOLDERS["sauce_jax"].iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in FOLDERS.items():
        if name != "sauce_jax":
            (package / name.rsplit(".", 1)[1]).symlink_to(folder)
    return root


@event_priority(100)  # before mkdocstrings' own on_config creates the handler
def on_config(config):
    _remove_mirrors()  # a rebuild under `mkdocs serve` starts from a fresh mirror
    handlers = config.plugins["mkdocstrings"].config.handlers
    handlers.setdefault("python", {})["paths"] = [str(installed_layout())]
    return config


def on_files(files, config):
    for path, content in ((CLI_PAGE, cli_markdown), (API_PAGE, api_markdown)):
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=content()))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == LAYOUT_PAGE:
        if LAYER_MARKER not in markdown:
            raise ValueError(f"{LAYOUT_PAGE} lost its {LAYER_MARKER} marker")
        if MODULES_MARKER not in markdown:
            raise ValueError(f"{LAYOUT_PAGE} lost its {MODULES_MARKER} marker")
        markdown = markdown.replace(LAYER_MARKER, layering_rule()).replace(MODULES_MARKER, modules_markdown())
    return markdown
