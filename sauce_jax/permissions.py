"""Give a folder written under a private temporary name the permissions a plain new file or
folder would have had: `tempfile.mkdtemp` makes 0o700 folders and some writers (safetensors)
make 0o600 files, which a server running as another user cannot read."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so no thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_if_new(folder: str | os.PathLike) -> None:
    """Set `folder`, every folder under it to 0o777 & ~umask and every file to 0o666 & ~umask
    (executable files keep their x bits), as `mkdir` and `open` would have made them."""
    mask = current_umask()
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(Path(root) / name, 0o777 & ~mask)
        for name in files:
            path = Path(root) / name
            if path.is_symlink():
                continue
            executable = path.stat().st_mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)
