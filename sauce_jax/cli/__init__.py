"""The `sauce-jax` command line: the whole command tree, built in one place.

Each command's options sit next to its handler in a submodule: `core` (info, selfcheck,
train-sae, select, unlearn), `export`, `experiments` (experiment real, table2, multi, robust, transfer,
features, ablate), `conceptworld` (demo, conceptworld train/render), `eval`, `inspect` and `fetch`. Handlers import
the heavy parts (transformers, torch, models) only when they run, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from sauce_jax.errors import SauceError

from . import conceptworld, core, experiments, fetch, inspect
from . import export as exporting
from . import eval as evaluation  # not to shadow the builtin
from .sae_eval import add_sae_eval


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sauce-jax",
        description="Selective concept unlearning in vision encoders with sparse autoencoders (SAUCE), in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    core.add_info(sub)
    core.add_selfcheck(sub)
    core.add_train_sae(sub)
    core.add_select(sub)
    core.add_unlearn(sub)
    exporting.add_export(sub)
    exp = sub.add_parser("experiment", help="run a benchmark experiment end to end")
    experiments.add_experiments(exp.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT"))
    conceptworld.add_demo(sub)
    evaluation.add_eval(sub)
    conceptworld.add_conceptworld(sub)
    inspect.add_inspect(sub)
    fetch.add_fetch(sub)
    add_sae_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a `SauceError` becomes a one-line message and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SauceError as exc:
        print(f"sauce-jax {args.command}: error: {exc}", file=sys.stderr)
        return 2
