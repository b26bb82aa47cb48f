"""`sauce-jax eval`: the paper's metrics for unlearned concepts, on a fresh ConceptWorld seed
(`--model conceptworld` or a ConceptWorld LLaVA directory) or on a local LLaVA checkpoint with a
folder of concept images (`--model DIR --concepts-dir DIR`).

On a checkpoint the SAE is `--sae PATH` (SAELens format, e.g. from `sauce-jax train-sae`), or
trained here on every token of the layer LLaVA reads over the concepts' train images (or
`--sae-images DIR`), once: the run folder under `--work` is keyed by checkpoint, images and SAE
settings, and a rerun reuses (or resumes) it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from sauce_jax.errors import ConfigError
from sauce_jax.eval.llava_eval import EvalConfig
from sauce_jax.modes import PAPER_MODES
from sauce_jax.sae_config import ARCHITECTURES
from sauce_jax.train.config import TrainConfig

from .common import add_tower_argument, comma_list, field_default, pct

# Where an SAE is trained once and reused, per kind of --model.
CONCEPTWORLD_WORK = Path.home() / ".cache" / "sauce-jax" / "conceptworld"
CHECKPOINT_WORK = Path.home() / ".cache" / "sauce-jax" / "checkpoint-eval"


def cmd_eval(args) -> int:
    if args.tower and args.model != "conceptworld":
        raise ConfigError(f"--tower names a shipped ConceptWorld model; it cannot go with --model {args.model}")
    if args.model != "conceptworld":
        if not Path(args.model, "config.json").is_file():
            raise ConfigError(f"--model must be 'conceptworld' or a checkpoint directory with config.json, "
                              f"got {args.model!r}")
        # A real checkpoint with a concept folder; a ConceptWorld LLaVA (it has training.json) without one.
        if args.concepts_dir or not Path(args.model, "training.json").is_file():
            return _eval_checkpoint(args)
    if args.concepts_dir:
        raise ConfigError("--concepts-dir needs --model DIR, a LLaVA checkpoint directory")
    if not args.concepts:
        raise ConfigError("ConceptWorld evaluation needs --concepts, e.g. --concepts star,red,happy")
    return _eval_conceptworld(args)


# ------------------------------------------------------------------------------ ConceptWorld


def _eval_conceptworld(args) -> int:
    from sauce_jax.loading import load_encoder
    from sauce_jax.eval.conceptworld import vlm
    from sauce_jax.eval.conceptworld.benchmark import Evaluation, Model, headline, make_suite, selectivity, task_table
    from sauce_jax.eval.conceptworld.sauce import DemoConfig, sae_only, select_all, train_concept_sae
    from sauce_jax.eval.conceptworld.world import parse_concepts
    from sauce_jax.eval.conceptworld.towers import resolve_model_dir
    from sauce_jax.intervention import unlearn

    model_dir = resolve_model_dir(None if args.model == "conceptworld" else args.model, args.tower)
    config = DemoConfig(concepts=parse_concepts(args.concepts), seed=args.sae_seed, n_test=args.n_images,
                        **({"sae_steps": args.sae_steps} if args.sae_steps is not None else {}))
    llava, processor = vlm.load(model_dir)
    encoder = load_encoder(llava)
    layer = encoder.layer_index(llava.config.vision_feature_layer)
    # One SAE per model: another model's tower has other activations (the default keeps its old name).
    model_key = "" if model_dir is None else hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:8]
    model_key += "-" if model_key else ""
    # An SAE trained for a step budget has its own folder (the epochs-derived one keeps the old name).
    steps_key = "" if config.sae_steps is None else f"-steps{config.sae_steps}"
    work = Path(args.work or CONCEPTWORLD_WORK) / f"sae-{model_key}seed{args.sae_seed}{steps_key}"
    sae = train_concept_sae(encoder, work, config, layer, progress=not args.no_progress)
    sets = select_all(sae, encoder, dataclasses.replace(config, k_grid=(args.k,)), layer, progress=not args.no_progress)
    suite = make_suite(config.concepts, seed=args.seed, split="test", n_forget=args.n_images,
                       n_pool_per_concept=max(1, args.n_images // 8), n_perception=args.n_images)
    evaluation = Evaluation(Model(llava, processor, encoder), suite, language=args.language)
    def line(label: str, result: dict) -> None:
        h = headline(result) | selectivity(result)
        print(f"{label:10s} " + "  ".join(f"{k} {100 * v:5.1f}" if k != "utility" else f"{k} {v:5.1f}"
                                         for k, v in h.items()))

    results, alone = [], []
    for concept in config.concepts:
        clean = evaluation.run(concept)
        edited = unlearn(encoder, sae, sets[concept].top(args.k, args.gamma), layer=layer, gamma=args.gamma,
                         mode=args.mode)
        result = evaluation.run(concept, edited)
        result["clean_utility"] = clean["utility"]
        results.append(result)
        line(concept, result)
        if not args.no_sae_only:  # the SAE reconstructing at gamma 1, nothing edited
            alone.append(evaluation.run(concept, sae_only(encoder, sae, sets[concept], layer)))
            line("  SAE only", alone[-1])

    def mean(rows):
        # The paper's columns, then selectivity (COR, BA, HAL and its split, DEG) and UA_d under the old logit rule.
        columns = [headline(r) | selectivity(r) for r in rows]
        return {k: float(np.nanmean([c[k] for c in columns])) for k in columns[0]}

    summary = {"seed": args.seed, "mode": args.mode, "k": args.k, "gamma": args.gamma, "language": args.language,
               "n_images": args.n_images, "per_concept": results, "by_task": task_table(results),
               "mean": mean(results)}
    if alone:
        summary["sae_only"] = {"per_concept": alone, "by_task": task_table(alone), "mean": mean(alone)}
    print("mean       " + "  ".join(f"{k} {v:.3f}" for k, v in summary["mean"].items()))
    if alone:
        print("SAE only   " + "  ".join(f"{k} {v:.3f}" for k, v in summary["sae_only"]["mean"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return 0


# ------------------------------------------------------------------------- LLaVA checkpoint


def _judge(args):
    from sauce_jax.eval.judges import make_judge

    if args.judge == "words":
        if args.judge_model or args.judge_base_url or args.judge_cache:
            raise ConfigError("--judge-model, --judge-base-url and --judge-cache need --judge chat")
        return make_judge("words", args.synonyms)
    options = {"model": args.judge_model, "base_url": args.judge_base_url}
    if args.judge_cache:
        options["cache"] = args.judge_cache
    return make_judge("chat", args.synonyms, **options)


def obtain_sae(args, answerer, dirs, progress: bool):
    """`--sae`, or an SAE trained once per (checkpoint, images, settings) under `--work`."""
    from sauce_jax.sae import SAEConfig
    from sauce_jax.sae_io import load_sae

    if args.sae:
        return load_sae(args.sae)
    from sauce_jax.train import train_or_load
    from sauce_jax.train.reuse import finished_sae

    images = args.sae_images or [p for c in dirs.concepts.values() for p in c.images("train")]
    d = answerer.encoder.config.hidden_size
    sae_config = SAEConfig(d_in=d, d_sae=args.sae_expansion * d, architecture=args.sae_architecture,
                           k=args.sae_k if args.sae_architecture != "standard" else None)
    train_config = TrainConfig(batch_size=args.sae_batch_size, steps=args.sae_steps, epochs=args.sae_epochs, lr=1e-3,
                               lr_warmup_steps=50, seed=args.sae_seed, log_every=50, checkpoint_every=500)
    key = json.dumps([str(Path(args.model).resolve()), str(images if isinstance(images, str) else
                                                           [str(p) for p in images]),
                      answerer.layer, repr(sae_config), repr(train_config)])
    out = Path(args.work or CHECKPOINT_WORK) / f"sae-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if finished_sae(out) is None:
        print(f"training an SAE on hidden state {answerer.layer} -> {out}")
    return train_or_load(out, sae_config=sae_config, train_config=train_config, encoder=answerer.encoder,
                         images=images, layer=answerer.layer, token="all", progress=progress)


def _eval_checkpoint(args) -> int:
    """The `eval` command for `--model DIR`."""
    from sauce_jax.eval.concept_dirs import load_concept_dirs
    from sauce_jax.eval.vlm.llava_answerer import LlavaAnswerer
    from sauce_jax.eval.llava_eval import DISCRIMINATIVE_PROMPTS, GENERATIVE_PROMPTS, evaluate
    from sauce_jax.eval.mme import check_subtasks, find_root, load_mme

    if not args.concepts_dir:
        raise ConfigError(f"--model {args.model!r} is a directory: give --concepts-dir DIR "
                          "(DOMAIN/CONCEPT/{train,val,test}/ images); a ConceptWorld LLaVA directory is recognised "
                          "by its training.json")
    if args.language != "en":
        raise ConfigError("--language applies to ConceptWorld; give your own prompts with --generative-prompt "
                          "and --discriminative-prompt")
    config = EvalConfig(k=args.k, gamma=args.gamma, mode=args.mode, n_test=args.n_images, n_retain=args.n_retain,
                        n_select=args.n_select, max_new_tokens=args.max_new_tokens, seed=args.sae_seed,
                        generative=tuple(args.generative_prompt or GENERATIVE_PROMPTS),
                        discriminative=tuple(args.discriminative_prompt or DISCRIMINATIVE_PROMPTS))
    mme_subtasks = check_subtasks(comma_list(args.mme_subtasks)) if args.mme_subtasks else None
    mme_root = find_root(args.mme) if args.mme else None
    if mme_root is not None:
        load_mme(mme_root, mme_subtasks)  # a broken MME folder fails now, not after the clean answers
    dirs = load_concept_dirs(args.concepts_dir)
    targets = dirs.check_names(comma_list(args.concepts)) if args.concepts else None
    judge = _judge(args)
    answerer = LlavaAnswerer(args.model, batch_size=args.batch_size, dtype=args.dtype, device=args.device)
    sae = obtain_sae(args, answerer, dirs, progress=not args.no_progress)
    summary = evaluate(answerer, sae, dirs, judge, config, targets=targets, mme_root=mme_root,
                       mme_subtasks=mme_subtasks, answers_path=args.answers)
    summary.update(model=str(args.model), concepts_dir=str(args.concepts_dir), judge=args.judge,
                   sae=str(args.sae) if args.sae else "trained")
    mean = summary["mean"]
    print(f"{'mean':20s} UA_d {pct(mean['UA_d']['value'])}  UA_g {pct(mean['UA_g']['value'])}  "
          f"IRA {pct(mean['IRA'])}  CRA {pct(mean['CRA'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=str))
    return 0


# ----------------------------------------------------------------------------------- parser


def add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="the paper's metrics for unlearned concepts: on a fresh ConceptWorld seed, "
                                     "or a LLaVA checkpoint directory with a folder of concept images",
                        description="UA_d, UA_g, IRA, CRA (and utility) of SAUCE. --model conceptworld (default): "
                                    "the shipped ConceptWorld LLaVA on fresh images; --model DIR --concepts-dir DIR: "
                                    "a local LLaVA-1.5-style checkpoint on DOMAIN/CONCEPT/{train,val,test} images.")
    ev.add_argument("--model", default="conceptworld",
                    help="'conceptworld' (shipped), a ConceptWorld LLaVA dir, or a LLaVA checkpoint dir (with "
                         "--concepts-dir)")
    add_tower_argument(ev)
    ev.add_argument("--concepts", help="comma-separated concepts to unlearn, e.g. star,red,happy (required for "
                                       "ConceptWorld; default with --concepts-dir: every concept)")
    ev.add_argument("--seed", type=int, default=1, help="seed of the test images")
    ev.add_argument("--sae-seed", type=int, default=field_default(EvalConfig, "seed"),
                    help="seed of the SAE's training images and selection split")
    ev.add_argument("--n-images", type=int, default=field_default(EvalConfig, "n_test"), help="test images per concept")
    ev.add_argument("--mode", default=field_default(EvalConfig, "mode"), choices=PAPER_MODES)
    ev.add_argument("--k", type=int, default=field_default(EvalConfig, "k"))
    # ConceptWorld's validation-chosen gamma; EvalConfig keeps the paper's -0.5 for library callers.
    ev.add_argument("--gamma", type=float, default=-1.0)
    ev.add_argument("--language", default="en", choices=["en", "es"], help="language of the prompts")
    ev.add_argument("--work", help="where the SAE is trained once and reused (default ~/.cache/sauce-jax/"
                                   "conceptworld, or .../checkpoint-eval for a checkpoint dir)")
    ev.add_argument("--sae-steps", type=int, help="optimizer steps of the SAE trained here, whatever its image "
                                                 "count (default: its epochs, --sae-epochs on a checkpoint, 2 on "
                                                 "ConceptWorld); an SAE of another budget gets its own folder")
    ev.add_argument("--no-sae-only", action="store_true",
                    help="ConceptWorld: skip the 'SAE only' rows (the SAE reconstructing at gamma 1, nothing edited)")
    ev.add_argument("--json", help="write the metrics to this file")
    ev.add_argument("--no-progress", action="store_true")
    _add_checkpoint_arguments(ev)
    ev.set_defaults(func=cmd_eval)


def _add_checkpoint_arguments(ev) -> None:
    """The options that apply to a LLaVA checkpoint directory only."""
    g = ev.add_argument_group("a LLaVA checkpoint directory (--model DIR --concepts-dir DIR)")
    g.add_argument("--concepts-dir", help="concept images as DOMAIN/CONCEPT/{train,val,test}/*.jpg|png")
    g.add_argument("--sae", help="a trained SAE directory (SAELens format); default: train one on the train images")
    g.add_argument("--judge", default="words", choices=["words", "chat"],
                   help="UA_g judge: concept-word matching, or an LLM at $SAUCE_JUDGE_BASE_URL (OpenAI-compatible)")
    g.add_argument("--synonyms", help='JSON file {"concept": ["synonym", ...]} for the judge')
    g.add_argument("--judge-model", help="chat judge model (default $SAUCE_JUDGE_MODEL)")
    g.add_argument("--judge-base-url", help="chat judge API root, e.g. http://localhost:8000/v1 "
                                            "(default $SAUCE_JUDGE_BASE_URL; the key is read from $SAUCE_JUDGE_API_KEY)")
    g.add_argument("--judge-cache", help="verdict cache file (default $SAUCE_JUDGE_CACHE or ~/.cache/sauce-jax/judge/)")
    g.add_argument("--n-retain", type=int, help="test images per other concept for IRA/CRA (default --n-images)")
    g.add_argument("--n-select", type=int, default=field_default(EvalConfig, "n_select"),
                   help="train images per concept for feature selection")
    g.add_argument("--generative-prompt", action="append", metavar="TEXT",
                   help="a describe prompt (repeat for several; default: the paper's and two more)")
    g.add_argument("--discriminative-prompt", action="append", metavar="TEXT",
                   help="a yes/no prompt with {concept} (repeat for several; default: the paper's and two more)")
    g.add_argument("--max-new-tokens", type=int, default=field_default(EvalConfig, "max_new_tokens"),
                   help="tokens per description")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="the PyTorch language model's dtype")
    g.add_argument("--device", default="cpu", help="the PyTorch language model's device (cpu, cuda, ...)")
    g.add_argument("--mme", help="MME_Benchmark_release_version folder: score MME clean and per unlearned concept")
    g.add_argument("--mme-subtasks", help="comma-separated MME subtasks (default all 14)")
    g.add_argument("--answers", help="write every answer and verdict to this JSON-lines file")
    s = ev.add_argument_group("SAE training when no --sae is given")
    s.add_argument("--sae-images", help="image folder to train on (default: the concepts' train images)")
    s.add_argument("--sae-architecture", default="topk", choices=ARCHITECTURES)
    s.add_argument("--sae-k", type=int, default=32, help="active latents per token (topk, batchtopk)")
    s.add_argument("--sae-expansion", type=int, default=16)
    s.add_argument("--sae-epochs", type=float, default=field_default(TrainConfig, "epochs"))
    s.add_argument("--sae-batch-size", type=int, default=field_default(TrainConfig, "batch_size"))
