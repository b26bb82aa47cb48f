"""The core commands: `info`, `selfcheck`, `train-sae`, `select` and `unlearn`."""

from __future__ import annotations

import json
import sys

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.modes import MODES, WHERE
from sauce_jax.sae_config import ARCHITECTURES, SAEConfig
from sauce_jax.train.config import COMPUTE_DTYPES, LR_DECAYS, TrainConfig

from .common import field_default

# ------------------------------------------------------------------------------------- info


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for package in ("sauce-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "torch"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    return out


def initialize_distributed() -> None:
    """`jax.distributed.initialize()` for `--distributed`. On Cloud TPU slices, SLURM, Open MPI and
    Kubernetes JAX finds the coordinator, process count and id itself; elsewhere (several GPU
    hosts) set JAX_COORDINATOR_ADDRESS=host:port (read by JAX), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (read here) on every host."""
    import os

    import jax

    kwargs = {}
    for variable, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        value = os.environ.get(variable)
        if value:
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ConfigError(f"{variable}={value!r} is not an integer") from None
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"--distributed: jax.distributed.initialize() failed ({exc}); outside Cloud TPU, SLURM, "
                          "Open MPI and Kubernetes set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and "
                          "JAX_PROCESS_ID on every host") from exc


def cmd_info(args) -> int:
    if args.distributed:
        initialize_distributed()
    for name, version in _versions().items():
        print(f"{name:18s} {version}")
    import jax

    print(f"{'backend':18s} {jax.default_backend()}")
    print(f"{'processes':18s} {jax.process_count()} (this is process {jax.process_index()})")
    print(f"{'devices':18s} {jax.device_count()} in all, {jax.local_device_count()} here: "
          f"{', '.join(str(d) for d in jax.local_devices())}")
    if args.checkpoint is None:
        return 0
    from sauce_jax.loading import load_encoder
    from sauce_jax.ports.weights import read_checkpoint_tensors, read_json, resolve_checkpoint_dir

    directory = resolve_checkpoint_dir(args.checkpoint)
    hf = read_json(directory / "config.json")
    tensors, fmt = read_checkpoint_tensors(directory)
    dtypes = sorted({str(t.dtype) for t in tensors.values()})
    count = sum(int(t.size) for t in tensors.values())
    print(f"\ncheckpoint         {directory}")
    print(f"files              {', '.join(sorted(p.name for p in directory.iterdir()))}")
    print(f"model_type         {hf.get('model_type')}  architectures {hf.get('architectures')}")
    print(f"weights            {fmt}: {len(tensors)} tensors, {count:,} values, dtypes {dtypes}")
    encoder = load_encoder(directory)
    c = encoder.config
    print(f"vision encoder     {c.model_type}: {c.num_layers} blocks, width {c.hidden_size}, "
          f"{c.image_size}px / patch {c.patch_size} -> {c.num_tokens} tokens, projection {c.projection_dim}")
    print(f"feature layer      {c.feature_layer} (hidden states 0..{c.num_layers})")
    print(f"preprocess         {encoder.preprocess_config}")
    return 0


def add_info(sub) -> None:
    info = sub.add_parser("info", help="versions, devices, and what a checkpoint directory holds")
    info.add_argument("checkpoint", nargs="?", help="a checkpoint directory (save_pretrained layout)")
    info.add_argument("--distributed", action="store_true",
                      help="join the multi-host job first (as train-sae --distributed) and count every host's devices")
    info.set_defaults(func=cmd_info)


# -------------------------------------------------------------------------------- selfcheck


def cmd_selfcheck(args) -> int:
    from sauce_jax.selfcheck import run

    return 0 if run(tolerance=args.tolerance, seed=args.seed) else 1


def add_selfcheck(sub) -> None:
    check = sub.add_parser("selfcheck", help="compare small random CLIP, SigLIP, DINOv2 and Mllama towers "
                                             "against transformers, layer by layer")
    check.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed relative error")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_selfcheck)


# -------------------------------------------------------------------------------- train-sae


def cmd_train_sae(args) -> int:
    import numpy as np

    from sauce_jax.train import sweep_settings, train_sae, train_saes

    if args.distributed:
        initialize_distributed()
    cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, steps=args.steps, epochs=args.epochs,
                      lr_warmup_steps=args.lr_warmup_steps, lr_decay=args.lr_decay,
                      l1_warmup_steps=args.l1_warmup_steps, compute_dtype=args.compute_dtype,
                      normalize_decoder=args.normalize_decoder, seed=args.seed, log_every=args.log_every,
                      checkpoint_every=args.checkpoint_every, model_parallel=args.model_parallel,
                      sparse_decode=args.sparse_decode)
    if args.activations:
        try:
            acts = np.load(args.activations, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read activations {args.activations!r}: {exc}") from exc
        source_kwargs = {"activations": acts}
        d_in = acts.shape[-1]
    else:
        if not (args.encoder and args.images):
            raise ConfigError("train-sae needs --encoder and --images, or --activations")
        from sauce_jax.loading import load_encoder

        encoder = load_encoder(args.encoder, dtype=args.encoder_dtype)
        source_kwargs = {"encoder": encoder, "images": args.images, "token": args.token,
                         "cache": args.cache, "cache_dir": args.cache_dir, "chunk_images": args.chunk_images,
                         "encode_batch": args.encode_batch, "workers": args.workers}
        d_in = encoder.config.hidden_size
    settings = sweep_settings(d_in, args.layer, args.expansion, args.k, architecture=args.architecture,
                              l1_coefficient=args.l1_coefficient, l1_decoder_norm=args.l1_decoder_norm)
    if len(settings) > 1:
        if args.activations:
            raise ConfigError("several --layer/--expansion/--k values need --encoder and --images (one pass of the "
                              "images trains them all); with --activations, run train-sae once per setting")
        trained = train_saes(args.out, settings, train_config=cfg, resume=args.resume, progress=not args.no_progress,
                             tensorboard=args.tensorboard, **source_kwargs)
        for name, sae in trained.items():
            print(f"{name}: SAE with {sae.config.d_sae} features written to {args.out}/{name}/sae "
                  f"({sae.metadata.get('dead_features', '?')} dead, {sae.metadata['skipped_images']} images skipped)")
        return 0
    if not args.activations:
        source_kwargs["layer"] = args.layer[0]
    sae = train_sae(args.out, sae_config=settings[0].sae_config, train_config=cfg, resume=args.resume,
                    progress=not args.no_progress, tensorboard=args.tensorboard,
                    **source_kwargs)
    print(f"SAE with {sae.config.d_sae} features written to {args.out}/sae "
          f"({sae.metadata.get('dead_features', '?')} dead, {sae.metadata['skipped_images']} images skipped)")
    return 0


def add_train_sae(sub) -> None:
    def default(name):  # the paper's recipe, declared once in TrainConfig
        return field_default(TrainConfig, name)

    train = sub.add_parser("train-sae", help="train an SAE on one layer of a vision encoder (or several at once)",
                           description="Train an SAE on activations of one encoder layer (paper defaults), "
                                       "with checkpoints, a JSONL log and feature statistics in --out.")
    source = train.add_argument_group("activations")
    source.add_argument("--encoder", help="checkpoint directory of the vision encoder")
    source.add_argument("--images", help="image folder (flat or class subfolders)")
    source.add_argument("--activations", help="a .npy file [N, d_in] to train on instead of images")
    source.add_argument("--layer", type=int, nargs="+", default=[-2],
                        help="hidden-state index (default -2, LLaVA's); several train one SAE each from one pass "
                             "of the images, in --out/layer{L}_x{E}[_k{K}]")
    source.add_argument("--token", default="last", help="last | cls | mean | all | random-K")
    source.add_argument("--cache", default="memory", choices=["none", "memory", "disk"])
    source.add_argument("--cache-dir", help="folder of the disk cache (with --cache disk)")
    source.add_argument("--chunk-images", type=int, default=1024, help="images encoded and shuffled together")
    source.add_argument("--encode-batch", type=int, default=64)
    source.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (0: threads)")
    source.add_argument("--encoder-dtype", default="float32", choices=["float32", "bfloat16"])
    model = train.add_argument_group("SAE")
    model.add_argument("--expansion", type=int, nargs="+", default=[64], help="d_sae / d_in (several: one SAE each)")
    model.add_argument("--architecture", default=field_default(SAEConfig, "architecture"), choices=ARCHITECTURES)
    model.add_argument("--k", type=int, nargs="+", help="active latents per token (topk, batchtopk; several: one "
                                                         "SAE each)")
    model.add_argument("--l1-coefficient", type=float, default=field_default(SAEConfig, "l1_coefficient"))
    model.add_argument("--l1-decoder-norm", action="store_true", help="weight the L1 by decoder row norms")
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=default("lr"))
    opt.add_argument("--batch-size", type=int, default=default("batch_size"))
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int)
    length.add_argument("--epochs", type=float, default=default("epochs"))
    opt.add_argument("--lr-warmup-steps", type=int, default=default("lr_warmup_steps"))
    opt.add_argument("--lr-decay", default=default("lr_decay"), choices=LR_DECAYS)
    opt.add_argument("--l1-warmup-steps", type=int, default=default("l1_warmup_steps"))
    opt.add_argument("--compute-dtype", default=default("compute_dtype"), choices=COMPUTE_DTYPES)
    opt.add_argument("--normalize-decoder", action="store_true", help="keep decoder rows at unit norm")
    opt.add_argument("--seed", type=int, default=default("seed"))
    run = train.add_argument_group("run")
    run.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, sae/, feature_stats.*")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    run.add_argument("--log-every", type=int, default=default("log_every"))
    run.add_argument("--checkpoint-every", type=int, default=default("checkpoint_every"))
    opt.add_argument("--model-parallel", type=int, default=default("model_parallel"),
                     help="devices the SAE's features are split over (the rest split the batch)")
    opt.add_argument("--sparse-decode", action="store_true", help="topk/batchtopk: decode from the k active latents")
    run.add_argument("--distributed", action="store_true",
                     help="call jax.distributed.initialize() first (TPU slices, several GPU hosts; see the README)")
    run.add_argument("--tensorboard", action="store_true", help="also log to --out/tensorboard (tensorboardX)")
    run.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train_sae)


# ----------------------------------------------------------------------------------- select


def cmd_select(args) -> int:
    from sauce_jax.loading import load_encoder
    from sauce_jax.sae_io import load_sae
    from sauce_jax.scoring import select_features

    encoder = load_encoder(args.encoder)
    sae = load_sae(args.sae)
    features = select_features(sae, encoder, args.positives, args.negatives, k=args.k, layer=args.layer,
                               concept=args.concept, token=args.token, gamma=args.gamma,
                               progress=not args.no_progress)
    features.save(args.out)
    print(f"{features.concept!r}: features {list(features.feature_ids)} at hidden state {features.layer} "
          f"-> {args.out}")
    return 0


def add_select(sub) -> None:
    select = sub.add_parser("select", help="pick the SAE features of a concept (paper eq. 4)",
                            description="Score every SAE feature on images with and without a concept; "
                                        "write the k best as a FeatureSet JSON.")
    select.add_argument("--sae", required=True, help="SAE directory (SAELens format)")
    select.add_argument("--encoder", required=True, help="vision encoder checkpoint directory")
    select.add_argument("--positives", required=True, help="folder of images with the concept")
    select.add_argument("--negatives", required=True, help="folder of images without it")
    select.add_argument("--concept", required=True)
    select.add_argument("-k", type=int, required=True, help="number of features to keep")
    select.add_argument("--layer", type=int, help="hidden-state index (default: the SAE's, else -2)")
    select.add_argument("--token", help="token choice (default: the SAE's, else last)")
    select.add_argument("--gamma", type=float, default=-0.5, help="scale to apply to the features (eq. 6)")
    select.add_argument("--out", required=True, help="FeatureSet JSON file to write")
    select.add_argument("--no-progress", action="store_true")
    select.set_defaults(func=cmd_select)


# ---------------------------------------------------------------------------------- unlearn


def cmd_unlearn(args) -> int:
    import numpy as np

    from sauce_jax.loading import load_encoder
    from sauce_jax.image_processor import preprocess
    from sauce_jax.images import as_image_items, open_image
    from sauce_jax.intervention import unlearn
    from sauce_jax.sae_io import load_sae
    from sauce_jax.scoring import FeatureSet

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    needs_targets(args)  # before any model is loaded
    # With --prompt the checkpoint is read once, as a transformers LLaVA or Mllama; its JAX tower is built
    # from that model in memory.
    if args.prompt:
        from sauce_jax.eval.vlm.registry import load_answerer

        answerer = load_answerer(args.encoder, what="--prompt", batch_size=args.batch_size)
    else:
        answerer = None
    encoder = answerer.encoder if answerer is not None else load_encoder(args.encoder)
    sae = load_sae(args.sae)
    sets = [FeatureSet.load(path) for path in args.features]
    targets = replace_targets_arg(args, sae, encoder, sets)
    edited = unlearn(encoder, sae, sets, layer=args.layer, gamma=args.gamma, mode=args.mode, where=args.where,
                     threshold=args.threshold, targets=targets)
    layer = encoder.layer_index(args.output_layer if args.output_layer is not None else sets[0].layer)
    items = as_image_items(args.images)
    names, outputs, answers = [], [], []
    for start in range(0, len(items), args.batch_size):
        batch = [(item, open_image(item)) for item in items[start : start + args.batch_size]]
        batch = [(item, image) for item, image in batch if image is not None]
        if batch:
            names += [str(item) for item, _ in batch]
            images = [image for _, image in batch]
            if answerer is not None:
                # Raw greedy answers, as the model writes them (not stripped).
                answers += [a[0] for a in answerer.ask(images, [[args.prompt]] * len(images), unlearned=edited,
                                                       max_new_tokens=args.max_new_tokens, strip=False)]
            else:
                outputs.append(np.asarray(edited.hidden_state(preprocess(images, encoder), layer)))
    if not names:
        raise InputError(f"no readable images in {args.images!r}")
    concepts = "+".join(s.concept for s in sets)
    if answerer is not None:
        with open(args.out, "w") as f:
            f.writelines(json.dumps({"file": name, "prompt": args.prompt, "answer": text}) + "\n"
                         for name, text in zip(names, answers))
        print(f"answers for {len(names)} images without {concepts!r} ({args.mode}) -> {args.out}")
        return 0
    np.savez(args.out, features=np.concatenate(outputs), files=np.array(names), layer=layer)
    print(f"hidden state {layer} of {len(names)} images without {concepts!r} ({args.mode}) -> {args.out}")
    return 0


def needs_targets(args) -> bool:
    """Whether --targets-from is given, checked against --mode (replace needs it, nothing else takes it)."""
    if args.targets_from is None and args.mode == "replace":
        raise ConfigError("--mode replace needs --targets-from NEGATIVES_DIR (images without the concept: the "
                          "selected features are set to their mean activation there)")
    if args.targets_from is not None and args.mode != "replace":
        raise ConfigError(f"--targets-from is for --mode replace, not {args.mode!r}")
    return args.targets_from is not None


def replace_targets_arg(args, sae, encoder, sets):
    """`--targets-from NEGATIVES_DIR` as the targets of `--mode replace`: each selected
    feature's mean activation over the folder's images (every token, or the class token with
    --where cls: where the edit applies), aligned with the united sets' ids. None otherwise."""
    from sauce_jax.intervention import resolve_features
    from sauce_jax.scoring import image_activations, replacement_targets

    if not needs_targets(args):
        return None
    ids, _, set_layer = resolve_features(sets, sae, mode=args.mode)
    layer = args.layer if args.layer is not None else set_layer
    z_neg = image_activations(sae, encoder, args.targets_from, layer=encoder.layer_index(layer), token="cls" if args.where == "cls" else "all",
                              batch_size=args.batch_size, desc=f"--targets-from {args.targets_from}", progress=False)
    return replacement_targets(z_neg, ids)


def add_gate_arguments(parser) -> None:
    """--threshold and --targets-from: the options of the gated modes."""
    parser.add_argument("--threshold", type=float,
                        help="gated, replace: edit a token only where a selected feature exceeds this (default 0)")
    parser.add_argument("--targets-from", metavar="NEGATIVES_DIR",
                        help="replace: folder of images without the concept; the selected features are set to "
                             "their mean activation there")


def add_unlearn(sub) -> None:
    unl = sub.add_parser("unlearn", help="run images through the encoder with concepts unlearned",
                         description="Apply FeatureSets to the encoder and write the edited hidden states "
                                     "of every image to an .npz file (features, files, layer).")
    unl.add_argument("--encoder", required=True)
    unl.add_argument("--sae", required=True)
    unl.add_argument("--features", required=True, nargs="+", help="FeatureSet JSON file(s); several are united")
    unl.add_argument("--images", required=True, help="image folder")
    unl.add_argument("--mode", default="reconstruct", choices=MODES,
                     help="reconstruct (the paper), delta, gated (delta where the concept is active) or replace "
                          "(its features set to --targets-from's mean there)")
    unl.add_argument("--where", default="all", choices=WHERE, help="tokens to edit")
    add_gate_arguments(unl)
    unl.add_argument("--layer", type=int, help="hidden state to edit (default: the FeatureSet's)")
    unl.add_argument("--gamma", type=float, help="default: the FeatureSet's")
    unl.add_argument("--output-layer", type=int, help="hidden state to write (default: the edited one)")
    unl.add_argument("--batch-size", type=int, default=32)
    unl.add_argument("--prompt", help="with a LLaVA or Mllama checkpoint as --encoder: ask this about every image and "
                                      "write the answers (JSON lines) instead of features")
    unl.add_argument("--max-new-tokens", type=int, default=32)
    unl.add_argument("--out", required=True, help=".npz file to write (.jsonl with --prompt)")
    unl.set_defaults(func=cmd_unlearn)
