"""The site folder, written atomically: a temporary folder next to the target, renamed into
place at the end, so a crash leaves either the previous site or the new one, never half of one.

A marker file identifies a folder as a site this module wrote; only such a folder (or an empty
one) may be replaced, so a mistyped `--out` cannot delete a user's data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sauce_jax.errors import ConfigError
from sauce_jax.permissions import as_if_new

MARKER = "sauce-jax-site.json"


def check_target(out: str | os.PathLike) -> Path:
    """Refuse an output path that exists and is not a previous site (or an empty folder)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise ConfigError(f"output {str(out)!r} exists and is not a folder; choose another --out")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise ConfigError(f"output folder {str(out)!r} exists and is not a sauce-jax inspect site "
                              f"(no {MARKER}); choose another --out or remove it")
    if not out.parent.is_dir():
        raise ConfigError(f"the parent folder of output {str(out)!r} does not exist")
    return out


def write_site(out: str | os.PathLike, write: Callable[[Path], None], marker: dict) -> Path:
    """Call `write(folder)` on a fresh temporary folder next to `out`, add the marker, then move
    it to `out` (replacing a previous site). On any error the temporary folder is removed and
    `out` is left as it was."""
    out = check_target(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        as_if_new(tmp)  # mkdtemp's 0o700 would hide the site from other users
        if out.exists():
            # Rename the old site aside first: two renames on one file system, then the delete.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "site")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
