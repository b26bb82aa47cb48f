"""The `sauce-jax` command line."""

from __future__ import annotations

import argparse
import sys

from sauce_jax.errors import SauceError


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
    from ports.weights import read_checkpoint_tensors, read_json, resolve_checkpoint_dir
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sauce-jax",
        description="Selective concept unlearning in vision encoders with sparse autoencoders (SAUCE), in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="versions, devices, and what a checkpoint directory holds")
    info.add_argument("checkpoint", nargs="?", help="a checkpoint directory (save_pretrained layout)")
    info.set_defaults(func=cmd_info)
    check = sub.add_parser("selfcheck", help="compare a small random CLIP against transformers, layer by layer")
    check.add_argument("--tolerance", type=float, default=1e-5, help="largest allowed relative error")
    check.add_argument("--seed", type=int, default=0)
    check.set_defaults(func=cmd_selfcheck)
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
