"""ConceptWorld's own commands: `sauce-jax demo` and `sauce-jax conceptworld train|render`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sauce_jax.eval.conceptworld.sauce import DemoConfig
from sauce_jax.eval.conceptworld.training import TOWER_LABELS, RecipeConfig

from .common import (
    OBJECTIVE_CHOICES,
    OBJECTIVE_HELP,
    SAE_STEPS_HELP,
    add_tower_argument,
    concepts_arg,
    field_default,
    model_dir_arg,
    print_report,
)

# ------------------------------------------------------------------------------------- demo


def cmd_demo(args) -> int:
    from sauce_jax.eval.conceptworld.experiments.demo import run
    from sauce_jax.eval.conceptworld.sauce import quick_demo

    concepts = concepts_arg(args)
    if args.quick:  # the CI-sized run: fewer images everywhere, one point of the grid
        config = quick_demo(concepts, seed=args.seed)
    else:
        config = DemoConfig(seed=args.seed, **({"concepts": concepts} if concepts else {}))
    if args.sae_steps is not None:
        config = dataclasses.replace(config, sae_steps=args.sae_steps)
    if args.objective:
        config = dataclasses.replace(config, objective=args.objective)
    results = run(args.out, config, model_dir=model_dir_arg(args), progress=not args.no_progress)
    print_report(args.out, "report.md", "report, results.json and table2.png")
    return 0 if results else 1


def add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="SAUCE end to end on ConceptWorld: Table 2 and Table 3 (the main job)",
                          description="Train an SAE on ConceptWorld, select features, unlearn each concept "
                                      "through the shipped LLaVA, and report the paper's metrics.")
    demo.add_argument("--out", default="sauce-jax-demo", help="report folder (default ./sauce-jax-demo)")
    demo.add_argument("--model", help="a ConceptWorld LLaVA directory (default: the shipped one)")
    add_tower_argument(demo)
    demo.add_argument("--concepts", help="comma-separated concepts (default: two per domain)")
    demo.add_argument("--seed", type=int, default=field_default(DemoConfig, "seed"))
    demo.add_argument("--quick", action="store_true", help="a reduced run (fewer images, no grid search)")
    demo.add_argument("--sae-steps", type=int, help=SAE_STEPS_HELP)
    demo.add_argument("--objective", choices=OBJECTIVE_CHOICES, help=OBJECTIVE_HELP)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)


# ---------------------------------------------------------------------- conceptworld train


def cmd_train(args) -> int:
    from sauce_jax.eval.conceptworld.training import train

    config = RecipeConfig(seed=args.seed, images=args.images, tower_steps=args.tower_steps, lm_steps=args.lm_steps,
                          focus_steps=args.focus_steps, workers=args.workers, tower_labels=args.tower_labels,
                          language_init=args.language_init, val_images=args.val_images)
    target = train(args.out, config, threads=args.threads, device=args.device)
    print(f"ConceptWorld LLaVA written to {target}")
    return 0


def _add_train(cw_sub) -> None:
    def default(name):  # the recipe of the shipped model, declared once in RecipeConfig
        return field_default(RecipeConfig, name)

    tr = cw_sub.add_parser("train", help="train the ConceptWorld LLaVA (seeded, resumable)")
    tr.add_argument("--out", required=True, help="run folder; rerun the same command to resume")
    tr.add_argument("--seed", type=int, default=default("seed"))
    tr.add_argument("--images", type=int, default=default("images"))
    tr.add_argument("--tower-steps", type=int, default=default("tower_steps"))
    tr.add_argument("--lm-steps", type=int, default=default("lm_steps"))
    tr.add_argument("--focus-steps", type=int, default=default("focus_steps"), help="stage 3: mostly yes/no questions")
    tr.add_argument("--workers", type=int, default=default("workers"), help="rendering processes")
    tr.add_argument("--val-images", type=int, default=default("val_images"),
                    help="held-out images of the clean accuracy in training.json")
    tr.add_argument("--tower-labels", default=default("tower_labels"), choices=TOWER_LABELS,
                    help="stage 1's targets: every patch token and the class token (tokens), or the class token only")
    tr.add_argument("--language-init", default=default("language_init"),
                    help="start projector and language model from this model folder ('shipped': the packaged one)")
    tr.add_argument("--device", default="cpu", help="PyTorch device, e.g. cuda")
    tr.add_argument("--threads", type=int, help="PyTorch threads (default: all cores)")
    tr.set_defaults(func=cmd_train)


# --------------------------------------------------------------------- conceptworld render


def cmd_render(args) -> int:
    from PIL import Image

    from sauce_jax.eval.conceptworld.render import render
    from sauce_jax.eval.conceptworld.text import description
    from sauce_jax.eval.conceptworld.world import concept_split, generic_stream, parse_concepts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.concept:
        specs = concept_split(parse_concepts(args.concept)[0], args.split, args.n, seed=args.seed,
                              positive=not args.negatives)
    else:
        specs = generic_stream(args.n, seed=args.seed)
    with open(out / "labels.jsonl", "w") as f:
        for i, spec in enumerate(specs):
            Image.fromarray(render(spec)).save(out / f"{i:05d}.png")
            f.write(json.dumps({"file": f"{i:05d}.png", "concepts": sorted(spec.concepts),
                                "description": description(spec)}) + "\n")
    print(f"{len(specs)} images and labels.jsonl in {out}")
    return 0


def _add_render(cw_sub) -> None:
    rd = cw_sub.add_parser("render", help="write ConceptWorld images and their labels")
    rd.add_argument("--out", required=True)
    rd.add_argument("--concept", help="a concept split instead of the generic stream")
    rd.add_argument("--split", default="test", choices=["train", "val", "test"])
    rd.add_argument("--negatives", action="store_true", help="images without the concept")
    rd.add_argument("-n", type=int, default=16)
    rd.add_argument("--seed", type=int, default=0)
    rd.set_defaults(func=cmd_render)


def add_conceptworld(sub) -> None:
    cw = sub.add_parser("conceptworld", help="ConceptWorld's generator and VLM training")
    cw_sub = cw.add_subparsers(dest="conceptworld_command", required=True, metavar="ACTION")
    _add_train(cw_sub)
    _add_render(cw_sub)
