"""What several commands share: defaults read from the config dataclasses, comma-separated
lists, the ConceptWorld experiments' common options and their report printing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


SAE_STEPS_HELP = ("optimizer steps of SAUCE's SAE (batch 1,024 tokens), whatever its image count (default: "
                  "5000, the held-out plateau of `experiment sae-curve`; --quick: 108; --study: 2 epochs over its "
                  "1,500 images)")


OBJECTIVE_CHOICES = ("compensatory", "selective")  # `sauce.OBJECTIVES` (the parser stays jax-free)
OBJECTIVE_HELP = ("what every validation grid maximises: 'compensatory' (default; v2's, every committed figure) or "
                  "'selective' (collapse, refusal and doing nothing cannot win it; v3's primary)")


def field_default(config_class: type, name: str) -> Any:
    """The default of one field of a config dataclass, so an option's default is declared once:
    in the config that receives it."""
    field = config_class.__dataclass_fields__[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise TypeError(f"{config_class.__name__}.{name} has no default")


def joined(values) -> str:
    """A tuple of defaults as the option takes it: "1,2,4" or "0.5,0,-1"."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def comma_list(text: str | None) -> list[str] | None:
    """"a, b,,c" -> ["a", "b", "c"]; None or "" -> None (the option was not given)."""
    return None if not text else [c.strip() for c in text.split(",") if c.strip()]


def concepts_arg(args) -> tuple[str, ...] | None:
    """`--concepts` as validated ConceptWorld concepts, or None when not given."""
    from sauce_jax.eval.conceptworld.world import parse_concepts

    return parse_concepts(args.concepts) if getattr(args, "concepts", None) else None


def add_tower_argument(parser) -> None:
    """`--tower NAME`: one of the ConceptWorld models that ship, by how its tower was trained."""
    from sauce_jax.eval.conceptworld.towers import TOWERS

    parser.add_argument("--tower", choices=list(TOWERS),
                        help="a shipped ConceptWorld model by its tower: dense (per-token concept labels at the "
                             "SAE's layer; the default model) or image (class-token image labels only)")


def model_dir_arg(args):
    """The ConceptWorld model folder `--model DIR` / `--tower NAME` name (None: the default)."""
    from sauce_jax.eval.conceptworld.towers import resolve_model_dir

    return resolve_model_dir(getattr(args, "model", None), getattr(args, "tower", None))


def add_common_arguments(parser) -> None:
    """The options every ConceptWorld experiment (multi, robust, transfer, features, ablate) takes."""
    from sauce_jax.eval.conceptworld.sauce import DemoConfig

    parser.add_argument("--out", required=True, help="run folder; rerun the same command to resume")
    parser.add_argument("--model", help="a ConceptWorld LLaVA directory (default: the shipped one)")
    add_tower_argument(parser)
    parser.add_argument("--concepts", help="comma-separated concepts (default: the experiment's own)")
    parser.add_argument("--seed", type=int, default=field_default(DemoConfig, "seed"))
    parser.add_argument("--sae", help="a trained SAE folder to use instead of training one (e.g. a demo run's "
                                      "sae_run/sae)")
    parser.add_argument("--quick", action="store_true", help="a reduced run (fewer images, one grid point)")
    parser.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's choice)")
    parser.add_argument("--no-progress", action="store_true")


def apply_threads(args) -> None:
    """`--threads`: on a shared machine one thread is often faster than oversubscribed cores."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def print_report(out: str | Path, name: str = "report.md",
                 files: str = "report.md, results.json and figures") -> None:
    """Print a finished run's markdown report and say where its files are."""
    out = Path(out)
    print((out / name).read_text())
    print(f"{files} in {out}")


def pct(value) -> str:
    """A rate as a percentage with one decimal, "-" when undefined."""
    return "-" if value is None else f"{100 * value:.1f}"
