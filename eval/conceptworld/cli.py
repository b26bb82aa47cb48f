"""ConceptWorld's commands: `sauce-jax demo`, `sauce-jax eval`, `sauce-jax conceptworld ...` and
`sauce-jax experiment table2`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sauce_jax.errors import ConfigError

DEFAULT_WORK = Path.home() / ".cache" / "sauce-jax" / "conceptworld"


def _concepts(text: str) -> tuple[str, ...]:
    from .world import check_concepts

    return tuple(check_concepts([c.strip() for c in text.split(",") if c.strip()]))


def cmd_demo(args) -> int:
    from .demo import run
    from .sauce import DemoConfig

    config = DemoConfig(seed=args.seed)
    if args.concepts:
        config = dataclasses.replace(config, concepts=_concepts(args.concepts))
    if args.quick:  # the CI-sized run: fewer images everywhere, one point of the grid
        config = dataclasses.replace(config, sae_images=1500, n_select=40, n_val=8, n_test=16, n_pool=2,
                                     n_perception=30, k_grid=(32,), gamma_grid=(-1.0,))
    results = run(args.out, config, model_dir=args.model, progress=not args.no_progress)
    print((Path(args.out) / "report.md").read_text())
    print(f"report, results.json and table2.png in {args.out}")
    return 0 if results else 1


def cmd_table2(args) -> int:
    from .sauce import DemoConfig
    from .table2 import Table2Config, quick_config, run

    if args.threads:  # on a shared machine one thread is often faster than oversubscribed cores
        import torch

        torch.set_num_threads(args.threads)
    concepts = _concepts(args.concepts) if args.concepts else None
    if args.quick:
        config = quick_config(concepts, seed=args.seed)
    else:
        demo = DemoConfig(seed=args.seed, **({"concepts": concepts} if concepts else {}))
        config = Table2Config(demo=demo)
    if args.methods:
        config = dataclasses.replace(config, methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()))
    if args.lora:
        config = dataclasses.replace(config, lora=True)
    run(args.out, config, model_dir=args.model, progress=not args.no_progress)
    print((Path(args.out) / "table2.md").read_text())
    print(f"table2.md, results.json, table2.png and rows/ in {args.out}")
    return 0


def add_experiments(exp_sub) -> None:
    """`sauce-jax experiment table2` and the experiments of `eval/conceptworld/experiments/`
(registered next to `experiment real`)."""
    t2 = exp_sub.add_parser("table2", help="the paper's Table 2 on ConceptWorld: SAUCE against GA, GD, KL, PO",
                            description="Unlearn each concept with the weight-update baselines (GA, GD, KL, PO; "
                                        "learning rate and steps chosen on the validation split) and with SAUCE "
                                        "(reconstruct, delta), score all on the same test images, and write "
                                        "table2.md (Table 2, Table 3), results.json and table2.png. Finished rows "
                                        "are kept in OUT/rows/; rerunning the command resumes.")
    t2.add_argument("--out", required=True, help="run folder; rerun the same command to resume")
    t2.add_argument("--model", help="a ConceptWorld LLaVA directory (default: the shipped one)")
    t2.add_argument("--concepts", help="comma-separated concepts (default: two per domain)")
    t2.add_argument("--seed", type=int, default=0)
    t2.add_argument("--methods", help="comma-separated baselines among GA,GD,KL,PO (default: all)")
    t2.add_argument("--lora", action="store_true", help="train LoRA adapters instead of every weight (needs peft)")
    t2.add_argument("--quick", action="store_true", help="a reduced run (fewer images, one grid point)")
    t2.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's choice)")
    t2.add_argument("--no-progress", action="store_true")
    t2.set_defaults(func=cmd_table2)
    import importlib

    from .experiments import NAMES

    for name in NAMES:  # each experiment module registers its own `sauce-jax experiment NAME`
        importlib.import_module(f".experiments.{name}", __package__).register(exp_sub)


def cmd_eval(args) -> int:
    if args.model != "conceptworld":
        if not Path(args.model, "config.json").is_file():
            raise ConfigError(f"--model must be 'conceptworld' or a checkpoint directory with config.json, "
                              f"got {args.model!r}")
        # A real checkpoint with a concept folder; a ConceptWorld LLaVA (it has training.json) without one.
        if args.concepts_dir or not Path(args.model, "training.json").is_file():
            from sauce_jax.eval.llava_eval_cli import cmd_eval_checkpoint

            return cmd_eval_checkpoint(args)
    if args.concepts_dir:
        raise ConfigError("--concepts-dir needs --model DIR, a LLaVA checkpoint directory")
    if not args.concepts:
        raise ConfigError("ConceptWorld evaluation needs --concepts, e.g. --concepts star,red,happy")
    return _eval_conceptworld(args)


def _eval_conceptworld(args) -> int:
    from sauce_jax.encoder import load_encoder
    from sauce_jax.intervention import unlearn

    from . import vlm
    from .benchmark import Evaluation, Model, headline, make_suite, task_table
    from .sauce import DemoConfig, select_all, top_features, train_concept_sae

    model_dir = None if args.model == "conceptworld" else args.model
    config = DemoConfig(concepts=_concepts(args.concepts), seed=args.sae_seed, n_test=args.n_images)
    llava, processor = vlm.load(model_dir)
    encoder = load_encoder(llava)
    layer = encoder.layer_index(llava.config.vision_feature_layer)
    work = Path(args.work or DEFAULT_WORK) / f"sae-seed{args.sae_seed}"
    sae = train_concept_sae(encoder, work, config, layer, progress=not args.no_progress)
    sets = select_all(sae, encoder, dataclasses.replace(config, k_grid=(args.k,)), layer, progress=not args.no_progress)
    suite = make_suite(config.concepts, seed=args.seed, split="test", n_forget=args.n_images,
                       n_pool_per_concept=max(1, args.n_images // 8), n_perception=args.n_images)
    evaluation = Evaluation(Model(llava, processor, encoder), suite, language=args.language)
    results = []
    for concept in config.concepts:
        clean = evaluation.run(concept)
        edited = unlearn(encoder, sae, top_features(sets[concept], args.k, args.gamma), layer=layer, gamma=args.gamma,
                         mode=args.mode)
        result = evaluation.run(concept, edited)
        result["clean_utility"] = clean["utility"]
        results.append(result)
        h = headline(result)
        print(f"{concept:10s} " + "  ".join(f"{k} {100 * v:5.1f}" if k != "utility" else f"{k} {v:5.1f}"
                                           for k, v in h.items()))
    summary = {"seed": args.seed, "mode": args.mode, "k": args.k, "gamma": args.gamma, "language": args.language,
               "n_images": args.n_images, "per_concept": results, "by_task": task_table(results),
               "mean": {k: float(sum(headline(r)[k] for r in results) / len(results)) for k in headline(results[0])}}
    print("mean       " + "  ".join(f"{k} {v:.3f}" for k, v in summary["mean"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_train(args) -> int:
    from .training import RecipeConfig, train

    config = RecipeConfig(seed=args.seed, images=args.images, tower_steps=args.tower_steps, lm_steps=args.lm_steps,
                          focus_steps=args.focus_steps, workers=args.workers)
    target = train(args.out, config, threads=args.threads, device=args.device)
    print(f"ConceptWorld LLaVA written to {target}")
    return 0


def cmd_render(args) -> int:
    from PIL import Image

    from .render import render
    from .text import description
    from .world import concept_split, generic_stream

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.concept:
        specs = concept_split(_concepts(args.concept)[0], args.split, args.n, seed=args.seed,
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


def add_commands(sub) -> None:
    demo = sub.add_parser("demo", help="SAUCE end to end on ConceptWorld: Table 2 and Table 3 (the main job)",
                          description="Train an SAE on ConceptWorld, select features, unlearn each concept "
                                      "through the shipped LLaVA, and report the paper's metrics.")
    demo.add_argument("--out", default="sauce-jax-demo", help="report folder (default ./sauce-jax-demo)")
    demo.add_argument("--model", help="a ConceptWorld LLaVA directory (default: the shipped one)")
    demo.add_argument("--concepts", help="comma-separated concepts (default: two per domain)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="a reduced run (fewer images, no grid search)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="the paper's metrics for unlearned concepts: on a fresh ConceptWorld seed, "
                                     "or a LLaVA checkpoint directory with a folder of concept images",
                        description="UA_d, UA_g, IRA, CRA (and utility) of SAUCE. --model conceptworld (default): "
                                    "the shipped ConceptWorld LLaVA on fresh images; --model DIR --concepts-dir DIR: "
                                    "a local LLaVA-1.5-style checkpoint on DOMAIN/CONCEPT/{train,val,test} images.")
    ev.add_argument("--model", default="conceptworld",
                    help="'conceptworld' (shipped), a ConceptWorld LLaVA dir, or a LLaVA checkpoint dir (with "
                         "--concepts-dir)")
    ev.add_argument("--concepts", help="comma-separated concepts to unlearn, e.g. star,red,happy (required for "
                                       "ConceptWorld; default with --concepts-dir: every concept)")
    ev.add_argument("--seed", type=int, default=1, help="seed of the test images")
    ev.add_argument("--sae-seed", type=int, default=0, help="seed of the SAE's training images and selection split")
    ev.add_argument("--n-images", type=int, default=50, help="test images per concept")
    ev.add_argument("--mode", default="reconstruct", choices=["reconstruct", "delta"])
    ev.add_argument("--k", type=int, default=32)
    ev.add_argument("--gamma", type=float, default=-1.0)
    ev.add_argument("--language", default="en", choices=["en", "es"], help="language of the prompts")
    ev.add_argument("--work", help="where the SAE is trained once and reused (default ~/.cache/sauce-jax/"
                                   "conceptworld, or .../checkpoint-eval for a checkpoint dir)")
    ev.add_argument("--json", help="write the metrics to this file")
    ev.add_argument("--no-progress", action="store_true")
    from sauce_jax.eval.llava_eval_cli import add_arguments

    add_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    cw = sub.add_parser("conceptworld", help="ConceptWorld's generator and VLM training")
    cw_sub = cw.add_subparsers(dest="conceptworld_command", required=True, metavar="ACTION")
    tr = cw_sub.add_parser("train", help="train the ConceptWorld LLaVA (seeded, resumable)")
    tr.add_argument("--out", required=True, help="run folder; rerun the same command to resume")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--images", type=int, default=16000)
    tr.add_argument("--tower-steps", type=int, default=2000)
    tr.add_argument("--lm-steps", type=int, default=10000)
    tr.add_argument("--focus-steps", type=int, default=4000, help="stage 3: mostly yes/no questions")
    tr.add_argument("--workers", type=int, default=2, help="rendering processes")
    tr.add_argument("--device", default="cpu", help="PyTorch device, e.g. cuda")
    tr.add_argument("--threads", type=int, help="PyTorch threads (default: all cores)")
    tr.set_defaults(func=cmd_train)
    rd = cw_sub.add_parser("render", help="write ConceptWorld images and their labels")
    rd.add_argument("--out", required=True)
    rd.add_argument("--concept", help="a concept split instead of the generic stream")
    rd.add_argument("--split", default="test", choices=["train", "val", "test"])
    rd.add_argument("--negatives", action="store_true", help="images without the concept")
    rd.add_argument("-n", type=int, default=16)
    rd.add_argument("--seed", type=int, default=0)
    rd.set_defaults(func=cmd_render)
