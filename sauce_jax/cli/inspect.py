"""`sauce-jax inspect`: a static feature browser of concepts' SAE features (`sauce_jax.eval.inspect`)."""

from __future__ import annotations

from .common import field_default


def cmd_inspect(args) -> int:
    from sauce_jax.eval.inspect import InspectConfig, build_site

    config = InspectConfig(n_top=args.top, n_before_after=args.before_after, batch_size=args.batch_size,
                           mode=args.mode, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                           answers=not args.no_answers)
    out = build_site(args.out, sae=args.sae, encoder=args.encoder, feature_sets=args.features, images=args.images,
                     negatives=args.negatives, config=config, progress=not args.no_progress)
    print(f"feature browser of {len(args.features)} FeatureSet(s) -> {out / 'index.html'}")
    return 0


def add_inspect(sub) -> None:
    from sauce_jax.eval.inspect.config import InspectConfig
    from sauce_jax.modes import PAPER_MODES

    def default(name):
        return field_default(InspectConfig, name)

    ins = sub.add_parser("inspect", help="write a static site to browse concepts' SAE features",
                         description="One page per FeatureSet (scores, FS/FMAV, overlaps, before/after "
                                     "unlearning) and per feature (top images with patch heatmaps, histogram, "
                                     "false alarms among --negatives); opens from disk, no server.")
    ins.add_argument("--sae", required=True, help="SAE directory")
    ins.add_argument("--encoder", required=True, help="vision encoder checkpoint (a LLaVA or Mllama one also answers --prompt)")
    ins.add_argument("--features", required=True, nargs="+", help="FeatureSet JSON file(s) of this SAE")
    ins.add_argument("--images", required=True, help="image folder (class subfolders give the probe its labels)")
    ins.add_argument("--negatives", help="folder of images without the concept(s): each feature's false alarms")
    ins.add_argument("--out", required=True, help="site folder to write (a previous site there is replaced)")
    ins.add_argument("--top", type=int, default=default("n_top"), help="top images per feature")
    ins.add_argument("--before-after", type=int, default=default("n_before_after"),
                     help="images per FeatureSet in the before/after view")
    ins.add_argument("--batch-size", type=int, default=default("batch_size"))
    ins.add_argument("--mode", default=default("mode"), choices=PAPER_MODES)
    ins.add_argument("--prompt", default=default("prompt"), help="what a LLaVA or Mllama checkpoint is asked")
    ins.add_argument("--max-new-tokens", type=int, default=default("max_new_tokens"))
    ins.add_argument("--no-answers", action="store_true", help="do not load a LLaVA or Mllama checkpoint's language model")
    ins.add_argument("--no-progress", action="store_true")
    ins.set_defaults(func=cmd_inspect)
