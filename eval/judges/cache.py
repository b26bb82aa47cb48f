"""An append-only on-disk cache of judge verdicts (JSON lines).

Each verdict is one line `{"key": ..., "verdict": true, ...}` written by a single `write` on
a file opened for appending, then flushed and fsynced. A crash mid-write can leave only a torn
last line: reading skips lines that do not parse (and counts them), and the next append starts
on a fresh line, so every complete verdict survives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from .base import JudgeError

log = logging.getLogger(__name__)


def cache_key(*parts: object) -> str:
    """sha256 of the JSON of `parts` (model, instruction, concept, synonyms, answer)."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


class VerdictCache:
    """{key: bool} backed by a JSON-lines file; safe to share between threads."""

    def __init__(self, path: str | os.PathLike, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self.skipped = 0  # lines that did not parse (a torn write)
        self._verdicts: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise JudgeError(f"judge cache {str(self.path)!r} cannot be read: {exc}") from exc
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, verdict = row["key"], row["verdict"]
                if not isinstance(key, str) or not isinstance(verdict, bool):
                    raise TypeError("key must be a string and verdict a boolean")
            except (ValueError, KeyError, TypeError) as exc:
                self.skipped += 1
                log.warning("judge cache %s line %d skipped: %s", self.path, number, exc)
                continue
            self._verdicts[key] = verdict

    def __len__(self) -> int:
        return len(self._verdicts)

    def __contains__(self, key: str) -> bool:
        return key in self._verdicts

    def get(self, key: str) -> bool | None:
        return self._verdicts.get(key)

    def put(self, key: str, verdict: bool, **info) -> None:
        """Record a verdict (`info`: readable context such as model, concept, answer)."""
        line = json.dumps({"key": key, "verdict": bool(verdict), **info}, ensure_ascii=False) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    if size and not self._ends_with_newline(size):
                        line = "\n" + line  # a torn line from a crash: start afresh
                    os.write(fd, line.encode("utf-8"))
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise JudgeError(f"judge cache {str(self.path)!r} cannot be written: {exc}") from exc
            self._verdicts[key] = bool(verdict)

    def _ends_with_newline(self, size: int) -> bool:
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"
