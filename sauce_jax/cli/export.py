"""`sauce-jax export`: a checkpoint with concepts unlearned, as a transformers model directory."""

from __future__ import annotations

from sauce_jax.modes import MODES, WHERE

from .core import add_gate_arguments, needs_targets


def cmd_export(args) -> int:
    from sauce_jax.export import export_unlearned

    targets = None
    if needs_targets(args):
        # The targets are the checkpoint tower's SAE activations: computed in JAX, on this checkpoint.
        from sauce_jax.loading import load_encoder
        from sauce_jax.sae_io import load_sae
        from sauce_jax.scoring import FeatureSet

        from .core import replace_targets_arg

        sae = args.sae = load_sae(args.sae)
        sets = [FeatureSet.load(path) for path in args.features]
        targets = replace_targets_arg(args, sae, load_encoder(args.checkpoint), sets)
    out = export_unlearned(args.checkpoint, args.sae, args.features, args.out, layer=args.layer, gamma=args.gamma,
                           mode=args.mode, where=args.where, threshold=args.threshold, targets=targets,
                           overwrite=args.overwrite)
    loader = "AutoModel" if _vision_only(out) else "AutoModelForImageTextToText"
    print(f"unlearned model -> {out}\nload it with transformers.{loader}.from_pretrained({str(out)!r}, "
          "trust_remote_code=True)")
    return 0


def _vision_only(out) -> bool:
    """Whether the export is a vision tower alone (loaded with AutoModel), from its auto_map."""
    import json

    auto_map = json.loads((out / "config.json").read_text()).get("auto_map", {})
    return "AutoModelForImageTextToText" not in auto_map


def add_export(sub) -> None:
    exp = sub.add_parser(
        "export", help="write the unlearned model as a transformers directory (trust_remote_code)",
        description="From a LLaVA or Mllama checkpoint (or a vision-only CLIP, SigLIP or DINOv2 one), an SAE and "
                    "FeatureSets, write a transformers model directory that applies the intervention in PyTorch: "
                    "the original weights, the SAE and feature ids as buffers, and a modeling file named by "
                    "config.json's auto_map.")
    exp.add_argument("--checkpoint", required=True, help="checkpoint directory (save_pretrained layout)")
    exp.add_argument("--sae", required=True, help="SAE directory (trained on this checkpoint's tower)")
    exp.add_argument("--features", required=True, nargs="+", help="FeatureSet JSON file(s); several are united")
    exp.add_argument("--out", required=True, help="directory to create")
    exp.add_argument("--mode", default="reconstruct", choices=MODES)
    exp.add_argument("--where", default="all", choices=WHERE, help="tokens to edit")
    add_gate_arguments(exp)
    exp.add_argument("--batch-size", type=int, default=32, help="images per batch for --targets-from")
    exp.add_argument("--layer", type=int, help="hidden state to edit (default: the FeatureSet's)")
    exp.add_argument("--gamma", type=float, help="default: the FeatureSet's")
    exp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    exp.set_defaults(func=cmd_export)
